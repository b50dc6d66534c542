//! The Tradeplex client library for strategies: a cloneable [`Client`] handle over a
//! connection driven by whichever thread needs it — a caller sending ([`Client::send`]) or
//! waiting for its answer ([`Client::call`], [`PendingCall::wait`]) while no other thread
//! drives it does the work itself (no hand-off: two thread wake-ups fewer per call), a
//! background connection thread the rest. Many calls may be in flight at once from many threads;
//! each has a timeout; idempotent calls are re-sent when no answer comes (a broker
//! restart loses what it held); the connection re-establishes itself (ZeroMQ reconnects).
//! Given both endpoints of a broker pair (`tcp://h1:5555,tcp://h2:5555`) it follows the
//! active one ([`failover`]).
//!
//! ```no_run
//! use tradeplex_client::{Client, ClientOptions, CallOptions};
//! let client = Client::connect("tcp://127.0.0.1:5555", ClientOptions::default()).unwrap();
//! let reply = client.call("echo", b"\x80".to_vec(), CallOptions::query()).unwrap();
//! ```
#![deny(missing_docs)]

mod answer;
mod connection;
pub mod curve;
mod driver;
pub mod error;
pub mod events;
pub mod failover;
pub mod json;
pub mod trading;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
pub use error::ClientError;
use tradeplex_proto::client::RequestHeader;
use tradeplex_proto::{RequestId, ServiceName, WorkerId};

use crate::answer::Answer;
use crate::connection::{Call, Connection, Link};
use crate::driver::Driver;
use crate::failover::Failover;

/// How a client connects.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Default call timeout.
    pub timeout: Duration,
    /// Largest reply body accepted.
    pub max_body_bytes: usize,
    /// Reconnect interval of the underlying socket.
    pub reconnect: Duration,
    /// CURVE settings (the broker's public key and ours); None = plaintext.
    pub curve: Option<crate::curve::ClientCurve>,
    /// End a call that could not be sent `unavailable` as soon as a connection attempt
    /// to the broker is refused, instead of retrying the send until the call's deadline.
    /// Off by default: a strategy's calls then ride out a broker restart; the CLI turns
    /// it on so a script learns at once that nothing listens.
    pub fail_fast: bool,
    /// The name this client declares in every request (`client` header field): what the
    /// broker's per-client risk limits and audit journal know it by. Honoured from
    /// loopback without CURVE; with CURVE the key names the client and this must match.
    pub name: Option<String>,
    /// With several endpoints (a broker pair): the ZMTP heartbeat interval on each
    /// connection, so a broker that falls silent (its host cut off) is noticed.
    pub heartbeat: Duration,
    /// With several endpoints: silence after which a connection counts as lost and the
    /// client moves to the next broker.
    pub heartbeat_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            timeout: Duration::from_secs(5),
            max_body_bytes: tradeplex_proto::DEFAULT_MAX_BODY_BYTES,
            reconnect: Duration::from_millis(100),
            curve: None,
            fail_fast: false,
            name: None,
            heartbeat: Duration::from_millis(250),
            heartbeat_timeout: Duration::from_secs(1),
        }
    }
}

impl ClientOptions {
    /// Sets the default call timeout.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// Sets [`ClientOptions::fail_fast`].
    pub fn fail_fast(mut self, on: bool) -> Self {
        self.fail_fast = on;
        self
    }

    /// Sets [`ClientOptions::name`].
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets [`ClientOptions::heartbeat`] and [`ClientOptions::heartbeat_timeout`].
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.heartbeat = interval;
        self.heartbeat_timeout = timeout;
        self
    }

    /// Encrypts and authenticates with CURVE.
    pub fn curve(mut self, curve: crate::curve::ClientCurve) -> Self {
        self.curve = Some(curve);
        self
    }
}

/// Per-call options.
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Overrides the client's default timeout (the request's time to live).
    pub timeout: Option<Duration>,
    /// Safe to execute more than once: retried on worker loss and on silence.
    pub idempotent: bool,
    /// Deliver only to this worker.
    pub target: Option<WorkerId>,
    /// Keep requests with this key on one worker.
    pub affinity: Option<String>,
    /// Re-send an idempotent call after this long without an answer (default: a third
    /// of the timeout, at least 500 ms). Ignored for non-idempotent calls.
    pub retry_every: Option<Duration>,
}

impl CallOptions {
    /// Options for a query: idempotent.
    pub fn query() -> CallOptions {
        CallOptions {
            idempotent: true,
            ..CallOptions::default()
        }
    }

    /// Options for an order-type request: never repeated.
    pub fn command() -> CallOptions {
        CallOptions::default()
    }

    /// Sets the timeout.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }

    /// Sets the target worker.
    pub fn target(mut self, w: WorkerId) -> Self {
        self.target = Some(w);
        self
    }

    /// Sets the affinity key.
    pub fn affinity(mut self, key: impl Into<String>) -> Self {
        self.affinity = Some(key.into());
        self
    }
}

/// A successful reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The reply body (MessagePack by convention).
    pub body: Vec<u8>,
    /// The worker that served it (the broker's id for `tpx.*` services).
    pub worker: WorkerId,
}

impl Reply {
    /// The body decoded from MessagePack.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, ClientError> {
        rmp_serde::from_slice(&self.body).map_err(|e| ClientError::Decode(e.to_string()))
    }
}

/// The moment calls are built at, on both clocks: the wall clock for the deadline the
/// broker enforces, the monotonic one for the client's own timer.
struct Clock {
    now: Instant,
    unix_ms: u64,
}

impl Clock {
    fn now() -> Clock {
        Clock {
            now: Instant::now(),
            unix_ms: tradeplex_proto::now_unix_ms(),
        }
    }
}

/// A serde value as a request body (a MessagePack map, field names kept).
fn encode_body<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ClientError> {
    rmp_serde::to_vec_named(value).map_err(|e| ClientError::Encode(e.to_string()))
}

/// What a client has done about a broker pair ([`Client::stats`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientStats {
    /// Times the client moved to another broker (a passive refusal, a lost connection).
    pub switches: u64,
    /// The endpoint requests go to now.
    pub endpoint: String,
    /// Calls answered on their caller's own thread: it drove the connection until its
    /// answer came ([`Client::call`], or [`PendingCall::wait`] for an answer not in yet,
    /// while no other thread drove it), without a hand-off to the connection thread.
    pub direct_calls: u64,
}

/// A call in flight; [`PendingCall::wait`] blocks for its answer.
pub struct PendingCall {
    answer: Answer,
    driver: Arc<Driver>,
    /// The request id the call was sent with.
    pub id: RequestId,
}

impl PendingCall {
    /// Blocks until the answer (the timeout is enforced whoever drives the connection).
    /// While nobody else drives it, this thread does: a pipeline waited on from one
    /// thread costs no thread hand-off.
    pub fn wait(self) -> Result<Reply, ClientError> {
        self.driver.wait(&self.answer)
    }

    /// Whether the answer is already in, so [`PendingCall::wait`] returns at once. It
    /// does not drive the connection: answers arrive while some thread drives it (a
    /// `wait` reads every answer that came with the one it waited for, a BATCH's worth).
    pub fn is_ready(&self) -> bool {
        self.answer.is_ready()
    }
}

struct Inner {
    calls: Sender<Call>,
    driver: Arc<Driver>,
    next_id: AtomicU64,
    options: ClientOptions,
    endpoints: Vec<String>,
    failover: Arc<failover::Shared>,
    _ctx: zmq::Context,
}

/// A handle to a broker connection; clone it freely across threads.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Connects to the broker's frontend (returns at once; the socket connects and
    /// reconnects in the background). `endpoints` is one endpoint or the comma-separated
    /// endpoints of a broker pair, primary first: the client then uses one at a time and
    /// follows the active broker (docs/protocol.md, "Broker pair").
    pub fn connect(endpoints: &str, options: ClientOptions) -> Result<Client, ClientError> {
        let list = failover::split_endpoints(endpoints)
            .map_err(|e| ClientError::Connect(format!("{endpoints}: {e}")))?;
        let ctx = zmq::Context::new();
        let pair = list.len() > 1;
        let links = list
            .iter()
            .map(|ep| open_link(&ctx, ep, &options, pair))
            .collect::<Result<Vec<Link>, ClientError>>()?;
        let (tx, rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(failover::Shared::default());
        let conn = Connection::new(
            links,
            Failover::new(list.clone(), shared.clone()),
            options.fail_fast,
            rx.clone(),
            options.max_body_bytes,
        );
        let driver =
            Arc::new(Driver::new(conn, rx).map_err(|e| ClientError::Connect(e.to_string()))?);
        let thread = driver.clone();
        std::thread::Builder::new()
            .name("tpx-client".into())
            .spawn(move || thread.run())
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        Ok(Client {
            inner: Arc::new(Inner {
                calls: tx,
                driver,
                // Start ids at a random point so a restarted client never reuses the
                // ids its previous incarnation left in flight.
                next_id: AtomicU64::new(uuid::Uuid::new_v4().as_u64_pair().0 >> 16),
                options,
                endpoints: list,
                failover: shared,
                _ctx: ctx,
            }),
        })
    }

    /// Broker switches so far and the endpoint in use.
    pub fn stats(&self) -> ClientStats {
        let current = self.inner.failover.current.load(Ordering::Relaxed);
        ClientStats {
            switches: self.inner.failover.switches.load(Ordering::Relaxed),
            endpoint: self
                .inner
                .endpoints
                .get(current)
                .cloned()
                .unwrap_or_default(),
            direct_calls: self.inner.driver.direct_calls.load(Ordering::Relaxed),
        }
    }

    /// Calls `service` and blocks for the answer. While no other thread drives this
    /// client's connection the call is sent and answered on this thread (no hand-off to
    /// the connection thread: two thread wake-ups fewer); otherwise it goes to whoever
    /// drives it. Timeouts, re-sends and failover are the same either way.
    pub fn call(
        &self,
        service: &str,
        body: Vec<u8>,
        opts: CallOptions,
    ) -> Result<Reply, ClientError> {
        let (call, answer) = self.prepare(service, body, opts, &Clock::now())?;
        self.inner.driver.call(&self.inner.calls, call, &answer)
    }

    /// Sends a call without waiting: pipeline many, then `wait` each. Sent from this
    /// thread while no other thread drives the connection, else queued (in order) for
    /// whoever does.
    pub fn send(
        &self,
        service: &str,
        body: Vec<u8>,
        opts: CallOptions,
    ) -> Result<PendingCall, ClientError> {
        let (call, answer) = self.prepare(service, body, opts, &Clock::now())?;
        let pending = self.pending(&call, answer);
        self.inner.driver.send(&self.inner.calls, call)?;
        Ok(pending)
    }

    /// Sends several calls at once, in order, without waiting — a basket of orders, a
    /// burst of queries: to a broker that reads them they leave in as few BATCH messages
    /// as the protocol's limits allow (256 calls, 64 KiB), one system call and, with
    /// CURVE, one encryption per message instead of per call. Each call is answered,
    /// timed out and (if idempotent) re-sent on its own, exactly as if sent by
    /// [`Client::send`]. Every call is checked before any is sent: one that cannot be
    /// built (bad service name, body over the limit) fails the whole basket, nothing sent.
    pub fn send_many<'a>(
        &self,
        calls: impl IntoIterator<Item = (&'a str, Vec<u8>, CallOptions)>,
    ) -> Result<Vec<PendingCall>, ClientError> {
        let mut prepared = Vec::new();
        let mut handles = Vec::new();
        // One reading of the clocks for the basket: its calls are built within
        // microseconds, and two clock reads a call were a twentieth of a pipeline's thread.
        let clock = Clock::now();
        for (service, body, opts) in calls {
            let (call, answer) = self.prepare(service, body, opts, &clock)?;
            handles.push(self.pending(&call, answer));
            prepared.push(call);
        }
        self.inner.driver.send_many(&self.inner.calls, prepared)?;
        Ok(handles)
    }

    /// The handle of `call`, its answer to come in `answer`.
    fn pending(&self, call: &Call, answer: Answer) -> PendingCall {
        PendingCall {
            answer,
            driver: self.inner.driver.clone(),
            id: call.header.id,
        }
    }

    /// Checks and builds a call, with the slot its answer comes in; its deadline counts
    /// from `clock`.
    fn prepare(
        &self,
        service: &str,
        body: Vec<u8>,
        opts: CallOptions,
        clock: &Clock,
    ) -> Result<(Call, Answer), ClientError> {
        let service = service_name(service)?;
        if body.len() > self.inner.options.max_body_bytes {
            return Err(ClientError::TooLarge {
                size: body.len(),
                limit: self.inner.options.max_body_bytes,
            });
        }
        let timeout = opts.timeout.unwrap_or(self.inner.options.timeout);
        let id = RequestId(self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let header = RequestHeader {
            id,
            service,
            deadline_ms: clock.unix_ms + timeout.as_millis() as u64,
            idempotent: opts.idempotent,
            target: opts.target,
            affinity: opts.affinity,
            client: self.inner.options.name.clone(),
            // This library reads BATCH: a pipeline's answers may come several at once.
            batch: true,
        };
        let retry_every = opts.idempotent.then(|| {
            opts.retry_every
                .unwrap_or((timeout / 3).max(Duration::from_millis(500)))
        });
        let (done, answer) = answer::slot();
        let call = Call {
            header,
            body,
            deadline: clock.now + timeout,
            timeout,
            retry_every,
            done,
        };
        Ok((call, answer))
    }

    /// Calls with a serde body (MessagePack map) and decodes the reply.
    pub fn call_typed<Req: serde::Serialize, Rep: serde::de::DeserializeOwned>(
        &self,
        service: &str,
        req: &Req,
        opts: CallOptions,
    ) -> Result<Rep, ClientError> {
        self.call(service, encode_body(req)?, opts)?.decode()
    }

    /// Halts `account` (None = every account): the broker refuses its new orders
    /// (`risk_rejected`, `halted: <reason>`) and cancels its working orders (`tpx.halt`).
    pub fn halt(
        &self,
        account: Option<&str>,
        reason: &str,
    ) -> Result<tradeplex_proto::mgmt::HaltReply, ClientError> {
        let req = tradeplex_proto::mgmt::HaltRequest {
            account: account.unwrap_or_default().to_string(),
            reason: reason.to_string(),
        };
        self.call_typed(
            tradeplex_proto::mgmt::HALT_SERVICE,
            &req,
            CallOptions::default(),
        )
    }

    /// Lifts the halt of `account`, or every halt (None) (`tpx.resume`).
    pub fn resume(
        &self,
        account: Option<&str>,
    ) -> Result<tradeplex_proto::mgmt::ResumeReply, ClientError> {
        let req = tradeplex_proto::mgmt::ResumeRequest {
            account: account.unwrap_or_default().to_string(),
        };
        self.call_typed(
            tradeplex_proto::mgmt::RESUME_SERVICE,
            &req,
            CallOptions::default(),
        )
    }

    /// The events `from_seq..=to_seq` of one (source, topic) that the broker still holds
    /// (`tpx.replay`); a reply that is not `complete` was cut to fit: ask again from the
    /// last event's seq + 1. Subscribers with [`events::Repair`] do this by themselves.
    pub fn replay(
        &self,
        req: &tradeplex_proto::mgmt::ReplayRequest,
        timeout: Duration,
    ) -> Result<tradeplex_proto::mgmt::ReplayReply, ClientError> {
        self.call_typed(
            tradeplex_proto::mgmt::REPLAY_SERVICE,
            req,
            CallOptions::query().timeout(timeout),
        )
    }

    /// The broker's status (`tpx.status`).
    pub fn status(&self) -> Result<tradeplex_proto::mgmt::StatusReply, ClientError> {
        let reply = self.call(
            tradeplex_proto::mgmt::STATUS_SERVICE,
            Vec::new(),
            CallOptions::query(),
        )?;
        reply.decode()
    }
}

/// The DEALER to one endpoint and its monitor. With `pair`, ZMTP heartbeats make a
/// silent broker's connection drop (and so count as lost) within the heartbeat timeout.
fn open_link(
    ctx: &zmq::Context,
    endpoint: &str,
    options: &ClientOptions,
    pair: bool,
) -> Result<Link, ClientError> {
    let err = |e: zmq::Error| ClientError::Connect(format!("{endpoint}: {e}"));
    let ms = |d: Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
    let dealer = ctx.socket(zmq::DEALER).map_err(err)?;
    dealer.set_linger(0).map_err(err)?;
    // Queue nothing on a connection that is not complete: with no broker a send fails
    // (EAGAIN), so a call never handed to a connection ends `unavailable` (certainly
    // not executed), not `timeout` (outcome unknown).
    dealer.set_immediate(true).map_err(err)?;
    dealer.set_sndhwm(100_000).map_err(err)?;
    dealer.set_rcvhwm(100_000).map_err(err)?;
    dealer
        .set_reconnect_ivl(ms(options.reconnect))
        .map_err(err)?;
    dealer.set_reconnect_ivl_max(1000).map_err(err)?;
    dealer
        .set_maxmsgsize((options.max_body_bytes as i64).saturating_mul(2) + 64 * 1024)
        .map_err(err)?;
    if pair {
        dealer
            .set_heartbeat_ivl(ms(options.heartbeat))
            .map_err(err)?;
        dealer
            .set_heartbeat_timeout(ms(options.heartbeat_timeout))
            .map_err(err)?;
    }
    if let Some(curve) = &options.curve {
        curve
            .apply(&dealer)
            .map_err(|e| ClientError::Connect(e.to_string()))?;
    }
    // The connection thread learns of connections made, lost and refused from the
    // socket's monitor (local inproc events, not network input).
    let monitor_ep = format!(
        "inproc://tpx-client-monitor-{}",
        uuid::Uuid::new_v4().simple()
    );
    let events = zmq::SocketEvent::CONNECTED as i32
        | zmq::SocketEvent::CONNECT_RETRIED as i32
        | zmq::SocketEvent::DISCONNECTED as i32;
    dealer.monitor(&monitor_ep, events).map_err(err)?;
    let monitor = ctx.socket(zmq::PAIR).map_err(err)?;
    monitor.set_linger(0).map_err(err)?;
    monitor.connect(&monitor_ep).map_err(err)?;
    dealer.connect(endpoint).map_err(err)?;
    Ok(Link {
        dealer,
        monitor,
        monitor_off: format!("{monitor_ep}-off"),
        reads_batches: false,
    })
}

/// `service` checked and shared: a strategy's thread calls the same service call after
/// call, so the last name each thread used is kept and cloned (a reference count) instead
/// of being validated and allocated again.
fn service_name(service: &str) -> Result<ServiceName, ClientError> {
    thread_local! {
        static LAST: std::cell::RefCell<Option<ServiceName>> = const { std::cell::RefCell::new(None) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some(name) = last.as_ref().filter(|n| n.as_str() == service) {
            return Ok(name.clone());
        }
        let name = ServiceName::new(service).map_err(|e| ClientError::Encode(e.to_string()))?;
        *last = Some(name.clone());
        Ok(name)
    })
}

#[cfg(test)]
mod tests {
    use super::service_name;

    #[test]
    fn the_kept_service_name_is_the_one_asked_for_and_a_bad_one_is_still_refused() {
        assert_eq!(service_name("echo").unwrap().as_str(), "echo");
        assert_eq!(service_name("echo").unwrap().as_str(), "echo");
        assert_eq!(service_name("SIM").unwrap().as_str(), "SIM");
        assert!(service_name("not a name").is_err());
        assert_eq!(service_name("SIM").unwrap().as_str(), "SIM");
        assert!(service_name("").is_err());
        assert_eq!(service_name("echo").unwrap().as_str(), "echo");
    }
}
