//! The broker's socket loop: one thread owns the frontend and backend ROUTER sockets,
//! drains every ready message per wake-up, feeds the [`Dispatcher`] and sends what it
//! returns. Bad input is answered where possible, counted and logged (rate-limited).
//!
//! Here: binding, the loop, reading a message off either socket. [`frontend`]: the
//! clients' input; [`backend`]: the workers' input; [`outbox`]: what is sent, a round's
//! messages to one BATCH-reading peer gathered.

mod backend;
mod frontend;
mod outbox;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tradeplex_proto::client;
use tradeplex_proto::{worker, ErrorCode, ProtoError};

use crate::batches::Batches;
use crate::body::Body;

use crate::config::Config;
use crate::dispatch::{Clock, DispatchConfig, Dispatcher, Out};
use crate::metrics::Metrics;
use crate::wire::{self, Frames, LogLimiter};
use tradeplex_ops::{HttpServer, Shutdown};

/// Why the broker could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A socket could not be created, configured or bound.
    #[error("cannot {what} {endpoint}: {source}")]
    Socket {
        /// What was being done.
        what: &'static str,
        /// The endpoint.
        endpoint: String,
        /// libzmq's error.
        source: zmq::Error,
    },
    /// The HTTP endpoint could not start.
    #[error("cannot serve http on {addr}: {source}")]
    Http {
        /// The address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// CURVE could not be set up (no CURVE in libzmq, bad keys).
    #[error(transparent)]
    Curve(#[from] tradeplex_ops::curve::CurveError),
    /// The audit journal could not be read (replay) or opened.
    #[error("audit journal {path}: {source}")]
    Audit {
        /// The journal's path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A thread could not be started.
    #[error("cannot start thread: {0}")]
    Thread(std::io::Error),
    /// A socket failed while running.
    #[error("socket error: {0}")]
    Io(#[from] zmq::Error),
}

/// The endpoints the broker actually bound (wildcard ports resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// Clients' ROUTER.
    pub frontend: String,
    /// Workers' ROUTER.
    pub backend: String,
    /// Workers' event publishing side.
    pub xsub: String,
    /// Clients' event subscribing side.
    pub xpub: String,
    /// The HTTP address, if serving.
    pub http: Option<String>,
}

impl std::fmt::Display for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "frontend={} backend={} xsub={} xpub={} http={}",
            self.frontend,
            self.backend,
            self.xsub,
            self.xpub,
            self.http.as_deref().unwrap_or("off")
        )
    }
}

/// A broker whose sockets are bound, ready to [`Broker::run`].
pub struct Broker {
    config: Config,
    frontend: zmq::Socket,
    backend: zmq::Socket,
    relay: crate::relay::Relay,
    http: Option<HttpServer>,
    console: Option<Console>,
    endpoints: Endpoints,
    metrics: Arc<Metrics>,
    curve: Curve,
    stage: crate::risk::Stage,
    identities: crate::risk::Identities,
    pair: Option<crate::pair::Pair>,
    _ctx: zmq::Context,
}

fn socket(
    ctx: &zmq::Context,
    kind: zmq::SocketType,
    endpoint: &str,
) -> Result<zmq::Socket, BrokerError> {
    ctx.socket(kind).map_err(|source| BrokerError::Socket {
        what: "create socket for",
        endpoint: endpoint.to_string(),
        source,
    })
}

fn bind(s: &zmq::Socket, endpoint: &str) -> Result<String, BrokerError> {
    s.bind(endpoint).map_err(|source| BrokerError::Socket {
        what: "bind",
        endpoint: endpoint.to_string(),
        source,
    })?;
    Ok(wire::bound_endpoint(s, endpoint))
}

fn configure(
    s: &zmq::Socket,
    endpoint: &str,
    f: impl FnOnce(&zmq::Socket) -> zmq::Result<()>,
) -> Result<(), BrokerError> {
    f(s).map_err(|source| BrokerError::Socket {
        what: "configure socket for",
        endpoint: endpoint.to_string(),
        source,
    })
}

impl Broker {
    /// Validates the config and binds every socket (and the HTTP endpoint).
    pub fn bind(config: Config) -> Result<Broker, BrokerError> {
        config.validate()?;
        let ctx = zmq::Context::new();
        let metrics = Arc::new(Metrics::new());
        // Frames above this are cut off by libzmq (connection dropped, no reply possible);
        // bodies between max_body_bytes and this are answered `too_large`.
        let hard_limit = (config.max_body_bytes as i64).saturating_mul(2) + 64 * 1024;

        // Always in the order path: without [risk] it runs no rule but keeps the book of
        // working orders and answers the kill switch (tpx.halt / tpx.resume).
        let stage = match &config.risk {
            Some(risk) => crate::risk::Stage::new(risk.clone(), &metrics.registry)
                .map_err(BrokerError::Config)?,
            None => crate::risk::Stage::without_rules(&metrics.registry),
        };
        let identities = crate::risk::Identities::new(&config, stage.forbidden_counter())?;
        let curve = Curve::start(&ctx, &config, identities.clone(), metrics.clone())?;
        let frontend = socket(&ctx, zmq::ROUTER, &config.frontend)?;
        curve.secure(&frontend, crate::auth::DOMAIN_FRONTEND, &config.frontend)?;
        configure(&frontend, &config.frontend, |s| {
            wire::common_options(s, hard_limit)?;
            s.set_sndhwm(100_000)?;
            s.set_rcvhwm(100_000)
        })?;
        let frontend_ep = bind(&frontend, &config.frontend)?;

        let backend = socket(&ctx, zmq::ROUTER, &config.backend)?;
        curve.secure(&backend, crate::auth::DOMAIN_BACKEND, &config.backend)?;
        configure(&backend, &config.backend, |s| {
            wire::common_options(s, hard_limit)?;
            // Capacity bounds what we queue to one worker; leave room for heartbeats.
            s.set_sndhwm(2 * worker::MAX_CAPACITY as i32 + 1000)?;
            s.set_rcvhwm(100_000)?;
            // Report sends to a vanished worker instead of dropping them silently, so the
            // request can be requeued rather than lost.
            s.set_router_mandatory(true)
        })?;
        let backend_ep = bind(&backend, &config.backend)?;

        let relay = crate::relay::Relay::bind(&ctx, &config, metrics.clone(), &curve)?;
        let pair = match &config.pair {
            Some(p) => Some(crate::pair::Pair::bind(
                &ctx,
                &config,
                p,
                &curve,
                metrics.clone(),
            )?),
            None => None,
        };
        let (http, console) = if config.http.is_empty() {
            (None, None)
        } else {
            let (http, console) =
                serve_http(&config, &metrics).map_err(|source| BrokerError::Http {
                    addr: config.http.clone(),
                    source,
                })?;
            (Some(http), Some(console))
        };
        // Ready means "sockets bound", which they are from here on (in a pair: and active,
        // which the pair sets).
        if let Some(h) = &http {
            h.set_ready(pair.is_none());
        }
        let endpoints = Endpoints {
            frontend: frontend_ep,
            backend: backend_ep,
            xsub: relay.xsub_endpoint.clone(),
            xpub: relay.xpub_endpoint.clone(),
            http: http.as_ref().map(|h| h.addr.to_string()),
        };
        Ok(Broker {
            config,
            frontend,
            backend,
            relay,
            http,
            console,
            endpoints,
            metrics,
            curve,
            stage,
            identities,
            pair,
            _ctx: ctx,
        })
    }

    /// What applies a re-read config file (SIGHUP) to this broker while it runs.
    pub fn reloader(&self) -> crate::risk::manage::Reloader {
        crate::risk::manage::Reloader::new(
            self.stage.clone(),
            self.identities.clone(),
            &self.config,
        )
    }

    /// The endpoints bound.
    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// The broker's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Runs until `shutdown` is triggered, then drains and stops cleanly.
    pub fn run(self, shutdown: Shutdown) -> Result<(), BrokerError> {
        let Broker {
            config,
            frontend,
            backend,
            relay,
            http,
            console,
            metrics,
            curve,
            stage,
            identities,
            mut pair,
            ..
        } = self;
        let zap = match curve.authenticator {
            Some(a) => Some(a.spawn(shutdown.clone()).map_err(BrokerError::Thread)?),
            None => None,
        };
        let dispatch_cfg = DispatchConfig {
            heartbeat: Duration::from_millis(config.heartbeat_ms),
            liveness: config.liveness,
            grace_ms: config.unknown_service_grace_ms,
            max_queue: config.max_queue,
            in_flight_grace: Duration::from_millis(config.in_flight_grace_ms),
            max_services: config.max_services,
            service_retention: Duration::from_secs(config.service_retention_s),
        };
        let mut dispatcher = Dispatcher::new(dispatch_cfg, metrics.clone(), Instant::now());
        let mut relay = relay;
        if let Some(risk) = &config.risk {
            open_audit(risk, &stage)?;
        }
        relay.set_risk(stage.feed());
        let pair_stage = pair.is_some().then(|| stage.clone());
        dispatcher.set_risk(stage);
        if config.replay_bytes > 0 {
            let store = crate::relay::replay::Replay::new(
                crate::relay::replay::ReplayLimits {
                    total_bytes: config.replay_bytes,
                    stream_bytes: config.replay_stream_bytes,
                    reply_bytes: config.max_body_bytes,
                },
                metrics.replay.clone(),
            );
            relay.set_replay(store.clone());
            dispatcher.set_replay(store);
        }
        let relay = relay.spawn(dispatcher.broker_id(), shutdown.clone())?;
        if let (Some(p), Some(stage)) = (&mut pair, pair_stage) {
            p.start(
                dispatcher.broker_id(),
                http.as_ref().map(|h| h.ready_flag()),
            );
            p.replicate(stage)?;
        }
        let mut lp = Loop {
            frontend,
            backend,
            dispatcher,
            metrics,
            max_body: config.max_body_bytes,
            frames: Frames::default(),
            bad_log: LogLimiter::new(10),
            backend_refusals: LogLimiter::new(100),
            spare: Vec::new(),
            to_workers: Batches::new(),
            to_clients: Batches::new(),
            idle_spin: Duration::from_micros(config.idle_spin_us),
            console: console.as_ref().map(|c| c.feed.publisher()),
            identities,
            forbidden_log: LogLimiter::new(10),
            head: Vec::with_capacity(256),
            pair,
        };
        let stop = Stop {
            grace: Duration::from_millis(config.shutdown_grace_ms),
            farewell: Duration::from_millis(config.shutdown_farewell_ms),
        };
        let result = lp.serve(&shutdown, stop);
        shutdown.trigger();
        let _ = relay.join();
        if let Some(z) = zap {
            let _ = z.join();
        }
        drop(http);
        drop(console);
        result
    }
}

/// The HTTP side's console: its shared state and the thread sampling the counters.
struct Console {
    feed: Arc<crate::console::Console>,
    _sampler: crate::console::Sampler,
}

/// Starts the HTTP endpoint with the console's pages and the configured credentials.
fn serve_http(config: &Config, metrics: &Arc<Metrics>) -> std::io::Result<(HttpServer, Console)> {
    let feed = crate::console::Console::new(metrics.clone());
    let sampler = feed.start_sampler()?;
    let options = tradeplex_ops::HttpOptions {
        auth: config.http_auth.clone(),
        routes: Some(feed.routes()),
        public: crate::console::Console::PUBLIC,
    };
    let http = HttpServer::start_with(&config.http, metrics.registry.clone(), options)?;
    Ok((
        http,
        Console {
            feed,
            _sampler: sampler,
        },
    ))
}

/// CURVE state while binding: the broker's secret key and the ZAP handler to start.
pub struct Curve {
    secret_key: Option<String>,
    authenticator: Option<crate::auth::Authenticator>,
}

impl Curve {
    /// Loads the key and binds the ZAP handler when `[curve]` is configured.
    fn start(
        ctx: &zmq::Context,
        config: &Config,
        identities: crate::risk::Identities,
        metrics: Arc<Metrics>,
    ) -> Result<Curve, BrokerError> {
        let Some(c) = &config.curve else {
            return Ok(Curve {
                secret_key: None,
                authenticator: None,
            });
        };
        tradeplex_ops::curve::require_curve()?;
        let keys = tradeplex_ops::curve::KeyPair::from_file(&c.key_file)
            .map_err(tradeplex_ops::curve::CurveError::from)?;
        let auth = crate::auth::Authenticator::bind(ctx, identities.clone(), metrics)?;
        let clients = identities.read().clients.len();
        tracing::info!(public_key = %keys.public_key, clients, workers = c.allow_workers.len(), "CURVE enabled");
        Ok(Curve {
            secret_key: Some(keys.secret_key),
            authenticator: Some(auth),
        })
    }

    /// Makes `socket` a CURVE server authenticated under `domain`, if CURVE is on.
    pub fn secure(
        &self,
        socket: &zmq::Socket,
        domain: &str,
        endpoint: &str,
    ) -> Result<(), BrokerError> {
        let Some(secret) = &self.secret_key else {
            return Ok(());
        };
        tradeplex_ops::curve::make_server(socket, secret, domain).map_err(|e| match e {
            tradeplex_ops::curve::CurveError::Socket(source) => BrokerError::Socket {
                what: "enable CURVE on",
                endpoint: endpoint.to_string(),
                source,
            },
            other => BrokerError::Curve(other),
        })
    }
}

/// Binds and runs a broker until `shutdown` (the library entry point the binary calls).
pub fn run(config: Config, shutdown: Shutdown) -> Result<(), BrokerError> {
    Broker::bind(config)?.run(shutdown)
}

/// Most messages read from one socket per wake-up before turning to the other (fairness).
const BATCH: usize = 1024;
/// Most rounds of reading both sockets per wake-up before timers get their turn.
const DRAIN_ROUNDS: usize = 16;
/// Longest poll, so a shutdown request is seen promptly.
const MAX_POLL: Duration = Duration::from_millis(50);

/// How a shutdown proceeds: in-flight requests get `grace` to finish; then the broker
/// stays up `farewell` longer, refusing new requests, so clients read the last replies
/// before their connections drop (a dropped connection discards what they had not read).
#[derive(Clone, Copy)]
struct Stop {
    grace: Duration,
    farewell: Duration,
}

#[derive(Clone, Copy)]
enum Side {
    Frontend,
    Backend,
}

struct Loop {
    frontend: zmq::Socket,
    backend: zmq::Socket,
    dispatcher: Dispatcher,
    metrics: Arc<Metrics>,
    max_body: usize,
    frames: Frames,
    bad_log: LogLimiter,
    /// Bounds the DISCONNECT answers to bad backend input (per second).
    backend_refusals: LogLimiter,
    /// The outbox's twin, swapped in on each flush so neither reallocates.
    spare: Vec<Out>,
    /// A flush's deliveries to workers that read BATCH, gathered per worker.
    to_workers: Batches,
    /// A flush's answers to clients that read BATCH, gathered per client.
    to_clients: Batches,
    /// How long to spin before blocking when idle.
    idle_spin: Duration,
    /// Hands the console a dispatcher snapshot (with HTTP on).
    console: Option<crate::console::Publisher>,
    /// Who is who: names each request's client.
    identities: crate::risk::Identities,
    forbidden_log: LogLimiter,
    /// The head frame being sent, reused so encoding one allocates nothing.
    head: Vec<u8>,
    /// The primary/backup pair; only the active broker serves.
    pair: Option<crate::pair::Pair>,
}

impl Loop {
    fn serve(&mut self, shutdown: &Shutdown, stop: Stop) -> Result<(), BrokerError> {
        let mut draining_until: Option<Instant> = None;
        let mut closing_at: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if draining_until.is_none() && shutdown.is_triggered() {
                tracing::info!(
                    pending = self.dispatcher.pending(),
                    "shutting down: draining in-flight requests"
                );
                self.dispatcher.begin_shutdown();
                draining_until = Some(now + stop.grace);
            }
            if let (Some(until), None) = (draining_until, closing_at) {
                if self.dispatcher.pending() == 0 || now >= until {
                    self.dispatcher.finish_shutdown();
                    self.flush();
                    tracing::info!(
                        farewell_ms = stop.farewell.as_millis() as u64,
                        "nothing in flight; refusing new requests until closing"
                    );
                    closing_at = Some(now + stop.farewell);
                }
            }
            if closing_at.is_some_and(|t| now >= t) {
                tracing::info!("broker stopped");
                return Ok(());
            }
            let wake = self.dispatcher.next_wake(Clock::real());
            let timeout = wake.saturating_duration_since(now).min(MAX_POLL);
            self.poll(timeout)?;
            self.dispatcher.tick(Clock::real());
            self.pair_tick();
            self.flush();
            self.publish_status();
        }
    }

    /// Gives the console a fresh snapshot when the last is [`crate::console::PUBLISH_EVERY`]
    /// old: a few allocations per worker and service, at most four times a second.
    fn publish_status(&mut self) {
        let Some(p) = &mut self.console else { return };
        let now = Instant::now();
        if p.due(now) {
            p.publish(now, self.dispatcher.status(Clock::real()));
        }
    }

    fn poll(&mut self, timeout: Duration) -> Result<(), BrokerError> {
        // Spin-then-block idle strategy: check without sleeping for `idle_spin`, then block.
        let spin_until = Instant::now() + self.idle_spin.min(timeout);
        let mut ready = false;
        while !self.idle_spin.is_zero() && Instant::now() < spin_until {
            // ZMQ_EVENTS answers from the socket's own state, without a system call.
            let has_input = |s: &zmq::Socket| s.get_events().is_ok_and(|e| e.contains(zmq::POLLIN));
            if has_input(&self.frontend) || has_input(&self.backend) {
                ready = true;
                break;
            }
            std::hint::spin_loop();
        }
        if !ready {
            let mut items = [
                self.frontend.as_poll_item(zmq::POLLIN),
                self.backend.as_poll_item(zmq::POLLIN),
            ];
            // Round up so a sub-millisecond wait does not become a busy loop.
            let ms = timeout.as_micros().div_ceil(1000) as i64;
            // The pair's link wakes the loop too (its tick follows the poll): a passive
            // broker takes the active's journal lines as they come, not at the next timer.
            let polled = match &self.pair {
                Some(p) => {
                    let [f, b] = items;
                    let mut with_pair = [f, b, p.poll_item()];
                    let r = zmq::poll(&mut with_pair, ms);
                    let [f, b, _] = with_pair;
                    items = [f, b];
                    r
                }
                None => zmq::poll(&mut items, ms),
            };
            match polled {
                Ok(_) | Err(zmq::Error::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
            if !items[0].is_readable() && !items[1].is_readable() {
                return Ok(());
            }
        }
        // Keep reading both sockets until neither has anything (bounded, so timers still
        // run): under load this saves a poll system call per message.
        for _ in 0..DRAIN_ROUNDS {
            // Replies first: they free capacity for the requests read next.
            let n = self.drain(Side::Backend)? + self.drain(Side::Frontend)?;
            self.flush();
            if n == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Reads and handles up to [`BATCH`] messages from one side without blocking; returns
    /// how many it read.
    fn drain(&mut self, side: Side) -> Result<usize, BrokerError> {
        // One clock read per batch: deadlines are milliseconds, a batch is microseconds.
        let clock = Clock::real();
        let mut read = 0;
        for _ in 0..BATCH {
            let socket = match side {
                Side::Frontend => &mut self.frontend,
                Side::Backend => &mut self.backend,
            };
            if !self.frames.recv(socket)? {
                break;
            }
            read += 1;
            match side {
                Side::Frontend => self.on_frontend(clock),
                Side::Backend => self.on_backend(clock),
            }
            if self.dispatcher.out.len() >= BATCH {
                self.flush();
            }
        }
        Ok(read)
    }

    /// The message just read: its sender's routing id, and its other frames decoded by
    /// `decode` (`expected` frames; one over the read limit is a frame-count error).
    fn read_routed<M>(
        &self,
        expected: usize,
        decode: impl FnOnce(&[Body]) -> Result<M, ProtoError>,
    ) -> Option<(Vec<u8>, Result<M, ProtoError>)> {
        let (identity, rest) = self.frames.as_slice().split_first()?;
        let decoded = if self.frames.overflow {
            Err(ProtoError::FrameCount {
                expected,
                got: wire::MAX_FRAMES,
            })
        } else {
            decode(rest)
        };
        Some((identity.to_vec(), decoded))
    }

    /// The messages of a BATCH read from either socket, as byte ranges of `frame` (its
    /// body starts at `body_start`): each `Ok` until a break in the layout (one `Err`).
    /// Counted once per batch in `direction` (no label lookup per message): the messages
    /// it carries, the break not among them.
    fn open_batch(
        &self,
        direction: &str,
        frame: &Body,
        body_start: usize,
        h: &tradeplex_proto::batch::BatchHeader,
    ) -> Vec<Result<std::ops::Range<usize>, ProtoError>> {
        let body = frame.get(body_start..).unwrap_or(&[]);
        let items: Vec<_> = tradeplex_proto::batch::items(body, h.count)
            .map(|r| r.map(|r| body_start + r.start..body_start + r.end))
            .collect();
        let carried = items.iter().filter(|i| i.is_ok()).count() as u64;
        self.metrics.batches.with_label_values(&[direction]).inc();
        let counter = self
            .metrics
            .batched_messages
            .with_label_values(&[direction]);
        counter.inc_by(carried);
        items
    }

    /// The older version's layout the message read is in, if any: its frame after the
    /// routing id is exactly version 01's id, or starts with version 02's.
    fn old_layout(&self, v1: &[u8], v2: &[u8]) -> Option<OldLayout> {
        let first = self.frames.as_slice().get(1)?;
        if &first[..] == v1 {
            Some(OldLayout::V1)
        } else if first.starts_with(v2) {
            Some(OldLayout::V2)
        } else {
            None
        }
    }

    /// The header of a message in an old layout: version 01 carried it in frame 2 (frame
    /// 3 after the routing id), version 02 in its head frame after id and command.
    fn old_header(&self, old: OldLayout) -> &[u8] {
        let frames = self.frames.as_slice();
        let (frame, from) = match old {
            OldLayout::V1 => (frames.get(3), 0),
            OldLayout::V2 => (frames.get(1), client::V2_ID.len() + 1),
        };
        frame.and_then(|f| f.get(from..)).unwrap_or(&[])
    }

    /// Sends a refusal in an old layout (rare: no buffer reuse).
    fn send_old(&mut self, side: Side, to: &[u8], frames: &[Vec<u8>]) {
        let socket = match side {
            Side::Frontend => &mut self.frontend,
            Side::Backend => &mut self.backend,
        };
        if let Err(e) = wire::send_frames(socket, to, frames) {
            tracing::debug!(error = %e, "answer to a peer of an old version not sent");
        }
    }

    /// Reads the peer's state, sends ours when due, and shows the pair in `tpx.status`.
    fn pair_tick(&mut self) {
        if let Some(p) = &mut self.pair {
            p.tick(Instant::now());
            self.dispatcher.set_pair(p.view());
        }
    }

    /// True (and the worker told `unavailable: passive broker…`) when a READY may not
    /// register here now.
    fn pair_refuses_ready(&mut self, identity: &[u8]) -> bool {
        let Some(p) = &mut self.pair else {
            return false;
        };
        let Err(message) = p.admit(Instant::now(), true) else {
            return false;
        };
        self.dispatcher
            .refuse_worker_message(identity.to_vec(), ErrorCode::Unavailable, &message);
        true
    }

    fn bad_input(&mut self, socket: &'static str, reason: &str, detail: &str) {
        self.metrics.bad_frame(socket, reason);
        if let Some(suppressed) = self.bad_log.allow() {
            tracing::warn!(socket, reason, suppressed, "bad message: {detail}");
        }
    }
}

/// An older protocol version's layout, answered in kind (`unsupported_version`).
#[derive(Debug, Clone, Copy)]
enum OldLayout {
    /// Version 01: id, command, header and body in four frames.
    V1,
    /// Version 02: a head frame (id, command, header) and a body frame.
    V2,
}

impl OldLayout {
    /// What the refusal says, e.g. `this broker speaks TPXC03; the client speaks TPXC01:
    /// upgrade it`.
    fn refusal(self, ours: &tradeplex_proto::frame::Protocol, who: &str) -> String {
        let version = match self {
            OldLayout::V1 => "01",
            OldLayout::V2 => "02",
        };
        let speaks = std::str::from_utf8(ours.frame).unwrap_or(ours.version);
        format!(
            "this broker speaks {speaks}; the {who} speaks {}{version}: upgrade it",
            ours.name
        )
    }
}

/// Replays the audit journal into `stage` (today's counters, the halts in force), then
/// opens it for appending. Without `journal` in `[risk]`, nothing.
fn open_audit(
    risk: &crate::risk::RiskConfig,
    stage: &crate::risk::Stage,
) -> Result<(), BrokerError> {
    use crate::risk::audit;
    let Some(opts) = risk.journal_options().map_err(BrokerError::Config)? else {
        return Ok(());
    };
    let err = |source| BrokerError::Audit {
        path: opts.path.display().to_string(),
        source,
    };
    let started = Instant::now();
    let read = audit::read(&opts.path, opts.keep, audit::MAX_REPLAY_BYTES).map_err(err)?;
    let now_ms = tradeplex_proto::now_unix_ms();
    let r = stage.replay(now_ms, &read.lines);
    tracing::info!(
        journal = %opts.path.display(),
        lines = read.lines.len(),
        bad_lines = read.bad,
        truncated = read.truncated,
        orders = r.orders,
        cancels = r.cancels,
        trades = r.trades,
        halts_in_force = r.halts_in_force,
        ms = started.elapsed().as_millis() as u64,
        "audit journal replayed"
    );
    if read.truncated {
        tracing::warn!(
            budget_bytes = audit::MAX_REPLAY_BYTES,
            "audit journal: older files not replayed (over the replay budget)"
        );
    }
    let a = audit::Audit::open(opts.clone(), now_ms).map_err(err)?;
    stage.set_audit(a);
    Ok(())
}
