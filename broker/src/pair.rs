//! The primary/backup broker pair (ZeroMQ's Binary Star): the `[pair]` config, the state
//! link with the peer (PUB bound here, SUB connected to the peer; one small message per
//! heartbeat) and the gate the socket loop asks before serving a client or a worker.
//!
//! A state message is one frame of [`MESSAGE_LEN`] bytes: `TPXP01`, the sender's role
//! (1 primary, 2 backup), its state (1 primary, 2 backup, 3 active, 4 passive) and its
//! 16-byte broker instance id. The same link carries the audit journal's replication
//! ([`replication`]: numbered lines one way, acks the other). Anything else is counted as
//! a bad frame and ignored.

pub mod fsm;
pub mod replication;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tradeplex_ops::config::{check, check_endpoint, ConfigError};
use tradeplex_proto::mgmt::PairStatus;
use tradeplex_proto::WorkerId;

use crate::metrics::Metrics;
use crate::server::{BrokerError, Curve};
use crate::wire::LogLimiter;
use fsm::{Event, Fsm, Outcome, Why};
pub use fsm::{Role, State};

/// The `[pair]` table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairConfig {
    /// `"primary"` or `"backup"`.
    pub role: RoleName,
    /// This broker's state endpoint (the peer connects here).
    pub bind: String,
    /// The peer's state endpoint.
    pub peer: String,
    /// How long the peer may be silent before a client turning to this broker makes it
    /// take over, ms; default 4 heartbeats.
    #[serde(default)]
    pub peer_timeout_ms: Option<u64>,
    /// The peer broker's CURVE public key (z85); required with `[curve]`. This broker's
    /// own public key must be in the peer's `curve.allow_workers`.
    #[serde(default)]
    pub peer_public_key: Option<String>,
    /// Bytes of this broker's audit journal lines held for the peer until it confirms them
    /// (the replication's buffer; older lines are dropped past it); default 16 MiB.
    #[serde(default)]
    pub replication_bytes: Option<usize>,
}

/// The replication buffer's default size.
pub const DEFAULT_REPLICATION_BYTES: usize = 16 << 20;

/// The role as written in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RoleName {
    /// `"primary"`.
    Primary,
    /// `"backup"`.
    Backup,
}

impl PairConfig {
    /// Checks every field (`curve` says whether `[curve]` is configured).
    pub fn validate(&self, curve: bool) -> Result<(), ConfigError> {
        check_endpoint("pair.bind", &self.bind, false)?;
        check_endpoint("pair.peer", &self.peer, false)?;
        check("pair.peer", self.peer != self.bind, "must not be pair.bind")?;
        if let Some(ms) = self.peer_timeout_ms {
            check(
                "pair.peer_timeout_ms",
                (20..=600_000).contains(&ms),
                "must be 20-600000",
            )?;
        }
        if let Some(b) = self.replication_bytes {
            check(
                "pair.replication_bytes",
                (64 << 10..=4 << 30).contains(&b),
                "must be 65536 to 4294967296",
            )?;
        }
        match &self.peer_public_key {
            Some(k) => {
                check(
                    "pair.peer_public_key",
                    tradeplex_ops::curve::check_key("pair.peer_public_key", k).is_ok(),
                    "must be a 40-character z85 public key",
                )?;
                check(
                    "pair.peer_public_key",
                    curve,
                    "needs [curve] (the state link is encrypted only with CURVE on)",
                )
            }
            None => check(
                "pair.peer_public_key",
                !curve,
                "must name the peer broker's public key when [curve] is on",
            ),
        }
    }

    /// The silence window: `peer_timeout_ms`, or 4 heartbeats.
    pub fn window(&self, heartbeat_ms: u64) -> Duration {
        Duration::from_millis(self.peer_timeout_ms.unwrap_or(4 * heartbeat_ms))
    }

    fn role(&self) -> Role {
        match self.role {
            RoleName::Primary => Role::Primary,
            RoleName::Backup => Role::Backup,
        }
    }
}

/// Length of a state message.
pub const MESSAGE_LEN: usize = 24;
const MAGIC: &[u8; 6] = b"TPXP01";

/// One state message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateMessage {
    /// The sender's role.
    pub role: Role,
    /// The sender's state.
    pub state: State,
    /// The sender's broker instance id.
    pub broker: WorkerId,
}

impl StateMessage {
    /// The bytes on the wire.
    pub fn encode(&self) -> [u8; MESSAGE_LEN] {
        let mut b = [0u8; MESSAGE_LEN];
        b[..6].copy_from_slice(MAGIC);
        b[6] = match self.role {
            Role::Primary => 1,
            Role::Backup => 2,
        };
        b[7] = self.state.to_wire();
        b[8..].copy_from_slice(self.broker.0.as_bytes());
        b
    }

    /// Decodes one frame; the error is the `reason` label of the bad-frame counter.
    pub fn decode(b: &[u8]) -> Result<StateMessage, &'static str> {
        let b: &[u8; MESSAGE_LEN] = b.try_into().map_err(|_| "bad_length")?;
        let (magic, rest) = b.split_at(6);
        if magic != MAGIC {
            return Err("bad_magic");
        }
        let (fields, id) = rest.split_at(2);
        let role = match fields.first() {
            Some(1) => Role::Primary,
            Some(2) => Role::Backup,
            _ => return Err("bad_role"),
        };
        let state = fields
            .get(1)
            .and_then(|s| State::from_wire(*s))
            .ok_or("bad_state")?;
        let broker = uuid::Uuid::from_slice(id).map_err(|_| "bad_length")?;
        Ok(StateMessage {
            role,
            state,
            broker: WorkerId(broker),
        })
    }
}

/// What `tpx.status` reports about the pair (cheap to copy every loop turn).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairView {
    /// Configured role.
    pub role: Role,
    /// Current state.
    pub state: State,
    /// What the peer last said, and when.
    pub peer: Option<(State, Instant)>,
}

impl PairView {
    /// The `pair` object of `tpx.status`, ages measured at `now`.
    pub fn status(&self, now: Instant) -> PairStatus {
        PairStatus {
            role: self.role.name().to_string(),
            state: self.state.name().to_string(),
            peer_state: self.peer.map(|(s, _)| s.name().to_string()),
            peer_age_ms: self
                .peer
                .map(|(_, t)| now.saturating_duration_since(t).as_millis() as u64),
        }
    }
}

/// The pair's metrics.
struct PairMetrics {
    state: prometheus::IntGaugeVec,
    peer_age: prometheus::Gauge,
    takeovers: prometheus::IntCounter,
    dual_active: prometheus::IntCounter,
    refused: prometheus::IntCounterVec,
}

impl PairMetrics {
    fn new(r: &prometheus::Registry) -> Result<PairMetrics, prometheus::Error> {
        let state = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "tradeplex_pair_state",
                "1 for this broker's current pair state (primary, backup, active, passive)",
            ),
            &["state"],
        )?;
        let peer_age = prometheus::Gauge::new(
            "tradeplex_pair_peer_age_seconds",
            "Seconds since the pair peer's last state message (since start if never heard)",
        )?;
        let takeovers = prometheus::IntCounter::new(
            "tradeplex_pair_takeovers_total",
            "Failovers: this broker became active because its peer was silent past the window",
        )?;
        let dual_active = prometheus::IntCounter::new(
            "tradeplex_pair_dual_active_total",
            "Times both brokers of the pair were active (the backup stepped down)",
        )?;
        let refused = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "tradeplex_pair_refused_total",
                "Client requests and worker READYs refused because this broker is not active",
            ),
            &["kind"],
        )?;
        r.register(Box::new(state.clone()))?;
        r.register(Box::new(peer_age.clone()))?;
        r.register(Box::new(takeovers.clone()))?;
        r.register(Box::new(dual_active.clone()))?;
        r.register(Box::new(refused.clone()))?;
        for s in State::ALL {
            state.with_label_values(&[s.name()]).set(0);
        }
        for k in ["request", "ready"] {
            refused.with_label_values(&[k]);
        }
        Ok(PairMetrics {
            state,
            peer_age,
            takeovers,
            dual_active,
            refused,
        })
    }
}

/// Most messages read per loop turn (a flooding peer cannot starve the loop); a window of
/// journal lines fits.
const MAX_READ: usize = 1024;

/// This broker's side of the pair: the state link and the machine.
pub struct Pair {
    fsm: Fsm,
    publisher: zmq::Socket,
    subscriber: zmq::Socket,
    peer_endpoint: String,
    me: WorkerId,
    heartbeat: Duration,
    window: Duration,
    next_send: Instant,
    started: Instant,
    metrics: PairMetrics,
    broker_metrics: Arc<Metrics>,
    ready: Option<Arc<AtomicBool>>,
    log: LogLimiter,
    peer_id: Option<WorkerId>,
    /// The audit journal's replication (with a journal).
    replication: Option<replication::Replication>,
    replication_bytes: usize,
}

impl Pair {
    /// Binds the state endpoint and connects to the peer's (CURVE when `[curve]` is on).
    pub fn bind(
        ctx: &zmq::Context,
        config: &crate::Config,
        pair: &PairConfig,
        curve: &Curve,
        metrics: Arc<Metrics>,
    ) -> Result<Pair, BrokerError> {
        let sock_err = |what, endpoint: &str| {
            let endpoint = endpoint.to_string();
            move |source| BrokerError::Socket {
                what,
                endpoint,
                source,
            }
        };
        let publisher = ctx
            .socket(zmq::PUB)
            .map_err(sock_err("create socket for", &pair.bind))?;
        // Room for the replication's window of journal lines; a state message queued behind
        // them waits at most that long (the window is bounded in lines and bytes).
        publisher
            .set_sndhwm(2048)
            .and_then(|()| publisher.set_linger(0))
            .map_err(sock_err("configure socket for", &pair.bind))?;
        curve.secure(&publisher, crate::auth::DOMAIN_BACKEND, &pair.bind)?;
        publisher
            .bind(&pair.bind)
            .map_err(sock_err("bind", &pair.bind))?;
        let subscriber = ctx
            .socket(zmq::SUB)
            .map_err(sock_err("create socket for", &pair.peer))?;
        subscriber
            .set_rcvhwm(1024)
            .and_then(|()| subscriber.set_linger(0))
            // Bounds what a hostile publisher can make us allocate (a journal line at its
            // longest); room for the ZMTP handshake's commands too.
            .and_then(|()| subscriber.set_maxmsgsize(replication::MAX_MESSAGE.max(4096) as i64))
            .and_then(|()| subscriber.set_subscribe(b""))
            .map_err(sock_err("configure socket for", &pair.peer))?;
        if let (Some(c), Some(key)) = (&config.curve, &pair.peer_public_key) {
            let own = tradeplex_ops::curve::KeyPair::from_file(&c.key_file)
                .map_err(tradeplex_ops::curve::CurveError::from)?;
            tradeplex_ops::curve::make_client(&subscriber, key, &own)?;
        }
        subscriber
            .connect(&pair.peer)
            .map_err(sock_err("connect", &pair.peer))?;
        let now = Instant::now();
        let metrics_err = |e: prometheus::Error| ConfigError::Field {
            field: "pair",
            reason: format!("metrics: {e}"),
        };
        Ok(Pair {
            fsm: Fsm::new(pair.role(), pair.window(config.heartbeat_ms), now),
            publisher,
            subscriber,
            peer_endpoint: pair.peer.clone(),
            me: WorkerId::random(),
            heartbeat: Duration::from_millis(config.heartbeat_ms),
            window: pair.window(config.heartbeat_ms),
            next_send: now,
            started: now,
            metrics: PairMetrics::new(&metrics.registry).map_err(metrics_err)?,
            broker_metrics: metrics,
            ready: None,
            log: LogLimiter::new(5),
            peer_id: None,
            replication: None,
            replication_bytes: pair.replication_bytes.unwrap_or(DEFAULT_REPLICATION_BYTES),
        })
    }

    /// Replicates `stage`'s audit journal with the peer (call after [`Pair::start`]).
    /// Without a journal nothing is replicated: the risk state then does not survive a
    /// failover (nor a restart).
    pub fn replicate(&mut self, stage: crate::risk::Stage) -> Result<(), BrokerError> {
        let r = replication::Replication::new(
            stage,
            self.me,
            self.replication_bytes,
            self.heartbeat,
            &self.broker_metrics.registry,
        );
        match r {
            None => tracing::warn!(
                "broker pair: no [risk] journal, so risk counters and halts are not replicated \
                 to the peer and do not survive a failover"
            ),
            Some(Err(e)) => {
                return Err(BrokerError::Config(ConfigError::Field {
                    field: "pair",
                    reason: format!("metrics: {e}"),
                }))
            }
            Some(Ok(r)) => {
                tracing::info!(
                    buffer_bytes = self.replication_bytes,
                    "broker pair: replicating the audit journal with the peer"
                );
                self.replication = Some(r);
                self.publish_state();
            }
        }
        Ok(())
    }

    /// Names this broker on the link (its instance id) and gives it the `/readyz` flag,
    /// which is true only while active.
    pub fn start(&mut self, me: WorkerId, ready: Option<Arc<AtomicBool>>) {
        self.me = me;
        self.ready = ready;
        self.publish_state();
        tracing::info!(
            role = self.fsm.role().name(),
            peer = %self.peer_endpoint,
            window_ms = self.window.as_millis() as u64,
            "broker pair: waiting for the peer"
        );
    }

    /// The state link's receiving side, for the main loop's poll.
    pub fn poll_item(&self) -> zmq::PollItem<'_> {
        self.subscriber.as_poll_item(zmq::POLLIN)
    }

    /// What `tpx.status` shows.
    pub fn view(&self) -> PairView {
        PairView {
            role: self.fsm.role(),
            state: self.fsm.state(),
            peer: self.fsm.peer(),
        }
    }

    /// Reads what the peer sent and sends our state when due. Call every loop turn.
    pub fn tick(&mut self, now: Instant) {
        for _ in 0..MAX_READ {
            let subscriber = &self.subscriber;
            match tradeplex_ops::uninterrupted(|| subscriber.recv_bytes(zmq::DONTWAIT)) {
                Ok(bytes) => self.on_message(&bytes, now),
                Err(zmq::Error::EAGAIN) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "broker pair: state link read failed");
                    break;
                }
            }
        }
        if now >= self.next_send {
            self.send(now);
        }
        if let Some(r) = &mut self.replication {
            r.tick(now, &self.publisher);
        }
        let age = match self.fsm.peer() {
            Some((_, seen)) => now.saturating_duration_since(seen),
            None => now.saturating_duration_since(self.started),
        };
        self.metrics.peer_age.set(age.as_secs_f64());
    }

    /// Whether a client REQUEST (or, with `worker`, a worker READY) may be served now: a
    /// vote that may make a passive broker take over. `Err` carries the refusal message.
    pub fn admit(&mut self, now: Instant, worker: bool) -> Result<(), String> {
        let out = self.fsm.on(Event::ClientRequest, now);
        self.apply(out, now);
        if self.fsm.state() == State::Active {
            return Ok(());
        }
        let kind = if worker { "ready" } else { "request" };
        self.metrics.refused.with_label_values(&[kind]).inc();
        Err(self.refusal())
    }

    /// The refusal text: starts with `passive broker` (clients switch brokers on it).
    fn refusal(&self) -> String {
        let state = self.fsm.state().name();
        match self.fsm.peer() {
            Some((State::Active, _)) => format!(
                "passive broker (pair {state}): the active broker is the peer at {}",
                self.peer_endpoint
            ),
            _ => format!(
                "passive broker (pair {state}): not serving; the peer at {} may be active",
                self.peer_endpoint
            ),
        }
    }

    fn on_message(&mut self, bytes: &[u8], now: Instant) {
        if bytes.len() != MESSAGE_LEN {
            return self.on_replication(bytes, now);
        }
        let msg = match StateMessage::decode(bytes) {
            Ok(m) => m,
            Err(reason) => return self.bad(reason, "malformed state message"),
        };
        if msg.broker == self.me {
            return self.bad("own_state", "pair.peer is this broker's own pair.bind");
        }
        if msg.role == self.fsm.role() {
            // Both configured the same: take no lead on its word, but do not take over
            // either while it talks (never two active).
            self.fsm.keepalive(now);
            return self.bad(
                "same_role",
                "the peer has the same pair role; fix pair.role",
            );
        }
        if self.peer_id.is_some_and(|id| id != msg.broker) {
            tracing::info!(peer = %msg.broker, state = msg.state.name(), "broker pair: the peer restarted");
        }
        self.peer_id = Some(msg.broker);
        let out = self.fsm.on(Event::Peer(msg.state), now);
        self.apply(out, now);
    }

    /// A journal line or an ack (any other frame is bad).
    fn on_replication(&mut self, bytes: &[u8], now: Instant) {
        let Some(r) = &mut self.replication else {
            // Replication is off here (no journal): the peer's lines are not ours to keep.
            return match bytes.get(..6) {
                Some(b"TPXJ01" | b"TPXA01") => {}
                _ => self.bad("bad_length", "malformed state message"),
            };
        };
        let out = match bytes.get(..6) {
            Some(b"TPXJ01") => r.on_line(bytes),
            Some(b"TPXA01") => r.on_ack(bytes, now),
            _ => replication::Received::Bad("bad_length", "malformed state message".into()),
        };
        if let replication::Received::Bad(reason, what) = out {
            self.bad(reason, &what);
        }
    }

    fn bad(&mut self, reason: &'static str, what: &str) {
        self.broker_metrics.bad_frame("pair", reason);
        if let Some(suppressed) = self.log.allow() {
            tracing::error!(
                socket = "pair",
                reason,
                suppressed,
                "broker pair: {what}; ignored"
            );
        }
    }

    fn apply(&mut self, out: Outcome, now: Instant) {
        let Outcome::Changed { from, to, why } = out else {
            return;
        };
        match why {
            Why::Takeover => {
                self.metrics.takeovers.inc();
                tracing::warn!(from = from.name(), "broker pair: peer silent past the window and a client turned here; taking over as active");
            }
            Why::DualActive => {
                self.metrics.dual_active.inc();
                tracing::error!(
                    "broker pair: both brokers were active; this backup steps down to passive"
                );
            }
            Why::DualPassive => {
                tracing::warn!(
                    "broker pair: both brokers were passive; this primary becomes active"
                )
            }
            Why::Peer => {
                tracing::info!(
                    from = from.name(),
                    to = to.name(),
                    "broker pair: state changed"
                )
            }
        }
        self.publish_state();
        // Tell the peer at once rather than at the next heartbeat.
        self.send(now);
    }

    fn publish_state(&mut self) {
        self.replication_follow();
        let state = self.fsm.state();
        for s in State::ALL {
            let v = i64::from(s == state);
            self.metrics.state.with_label_values(&[s.name()]).set(v);
        }
        if let Some(r) = &self.ready {
            r.store(state == State::Active, Ordering::SeqCst);
        }
    }

    /// Keeps the risk stage in step with the state: rebuilt from the journal (with the
    /// peer's lines) before this broker serves as active. Called before `/readyz` turns
    /// ready and before the request that made it take over is served.
    fn replication_follow(&mut self) {
        if let Some(r) = &mut self.replication {
            if self.fsm.state() == State::Active {
                r.on_active();
            } else {
                r.on_inactive();
            }
        }
    }

    fn send(&mut self, now: Instant) {
        let msg = StateMessage {
            role: self.fsm.role(),
            state: self.fsm.state(),
            broker: self.me,
        };
        // A full queue (peer gone) drops the message: only the latest state matters.
        let encoded = msg.encode();
        let publisher = &self.publisher;
        if let Err(e) = tradeplex_ops::uninterrupted(|| publisher.send(&encoded[..], zmq::DONTWAIT))
        {
            if e != zmq::Error::EAGAIN {
                tracing::warn!(error = %e, "broker pair: state not sent");
            }
        }
        self.next_send = now + self.heartbeat;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> StateMessage {
        StateMessage {
            role: Role::Backup,
            state: State::Passive,
            broker: WorkerId::random(),
        }
    }

    #[test]
    fn state_messages_round_trip() {
        let m = msg();
        assert_eq!(StateMessage::decode(&m.encode()), Ok(m));
    }

    #[test]
    fn malformed_state_messages_are_named() {
        let good = msg().encode();
        assert_eq!(StateMessage::decode(&good[..23]), Err("bad_length"));
        assert_eq!(StateMessage::decode(&[]), Err("bad_length"));
        let mut b = good;
        b[0] = b'X';
        assert_eq!(StateMessage::decode(&b), Err("bad_magic"));
        let mut b = good;
        b[6] = 9;
        assert_eq!(StateMessage::decode(&b), Err("bad_role"));
        let mut b = good;
        b[7] = 0;
        assert_eq!(StateMessage::decode(&b), Err("bad_state"));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for len in 0..64 {
            let _ = StateMessage::decode(&noise(&mut x, len));
        }
    }

    /// `len` pseudo-random bytes (xorshift from `state`): hostile input for the decoders.
    pub(super) fn noise(state: &mut u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                *state ^= *state << 13;
                *state ^= *state >> 7;
                *state ^= *state << 17;
                *state as u8
            })
            .collect()
    }

    fn config(text: &str) -> Result<crate::Config, ConfigError> {
        crate::Config::from_toml(text)
    }

    #[test]
    fn the_pair_table_is_checked_with_field_names() {
        let ok = "[pair]\nrole = \"primary\"\nbind = \"tcp://127.0.0.1:5560\"\npeer = \"tcp://127.0.0.1:5561\"\n";
        let c = config(ok).unwrap();
        let p = c.pair.unwrap();
        assert_eq!(p.role, RoleName::Primary);
        assert_eq!(p.window(250), Duration::from_millis(1000));
        for (text, field) in [
            (ok.replace("primary", "leader"), "role"),
            (ok.replace("5561", "5560"), "pair.peer"),
            (ok.replace("tcp://127.0.0.1:5560", "udp://x"), "pair.bind"),
            (format!("{ok}peer_timeout_ms = 1\n"), "pair.peer_timeout_ms"),
            (format!("{ok}surprise = 1\n"), "surprise"),
            (
                format!("{ok}replication_bytes = 10\n"),
                "pair.replication_bytes",
            ),
            (
                format!("{ok}peer_public_key = \"short\"\n"),
                "pair.peer_public_key",
            ),
            (
                ok.replace("tcp://127.0.0.1:5560", "tcp://0.0.0.0:5560"),
                "pair.bind",
            ),
        ] {
            let e = config(&text).unwrap_err().to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
        let e = config(&format!("{ok}[curve]\nkey_file = \"/k\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("pair.peer_public_key"), "{e}");
    }
}
