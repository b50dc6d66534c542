//! Event subscription: a background thread owns a SUB socket on the broker's XPUB,
//! subscribes to topic prefixes (plus the broker heartbeat), detects gaps and repeats per
//! source by sequence number, repairs gaps from the broker's recent-event store when told
//! where the broker's frontend is ([`Repair`]), watches the broker's heartbeat, and
//! reconnects when the broker goes silent. Events reach the caller through a bounded
//! channel. Given the events endpoints of a broker pair, the SUB connects to all of them
//! at once: only the active broker relays workers' events, so nothing needs switching.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde::de::DeserializeOwned;
use tradeplex_proto::event::{self, BROKER_HEARTBEAT_TOPIC};
use tradeplex_proto::mgmt::{ReplayRequest, MAX_REPLAY_SPAN};
use tradeplex_proto::WorkerId;

use crate::{Client, ClientError, ClientOptions};

/// One event as received.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Topic, e.g. `tick.SIM.IF2412`.
    pub topic: String,
    /// The publishing worker (or the broker for `hb.broker`).
    pub source: WorkerId,
    /// Per-source sequence number.
    pub seq: u64,
    /// Publish time, Unix ns.
    pub ts_ns: u64,
    /// Kind (`tick`, `order`, …).
    pub kind: String,
    /// Body (MessagePack).
    pub body: Vec<u8>,
}

impl Event {
    /// Decodes the body as `T` (e.g. `model::Tick`).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, ClientError> {
        rmp_serde::from_slice(&self.body).map_err(|e| ClientError::Decode(e.to_string()))
    }
}

/// Counters kept by the subscriber thread.
#[derive(Debug, Default)]
pub struct EventStats {
    /// Events delivered to the caller.
    pub received: AtomicU64,
    /// Events missing according to sequence numbers (lost upstream or at a high-water mark)
    /// and not recovered by gap repair.
    pub gaps: AtomicU64,
    /// Missed events recovered from the broker (`tpx.replay`) and delivered in order.
    pub repaired: AtomicU64,
    /// Repeats dropped (e.g. last-value re-sends).
    pub repeats: AtomicU64,
    /// Events dropped because the caller did not read fast enough (local queue full).
    pub local_drops: AtomicU64,
    /// Times the broker went silent and the socket was rebuilt.
    pub reconnects: AtomicU64,
    /// Times a new broker instance was seen (broker restarted; with a pair, an instance
    /// beyond the one per endpoint already known).
    pub broker_restarts: AtomicU64,
    /// Broker heartbeats seen.
    pub heartbeats: AtomicU64,
}

/// Subscriber options.
#[derive(Debug, Clone)]
pub struct EventOptions {
    /// The broker's heartbeat interval.
    pub heartbeat: Duration,
    /// Heartbeats missed before the broker is considered gone.
    pub liveness: u32,
    /// Events buffered for the caller before new ones are dropped (counted).
    pub queue: usize,
    /// The SUB socket's receive high-water mark.
    pub hwm: i32,
    /// CURVE settings; None = plaintext.
    pub curve: Option<crate::curve::ClientCurve>,
    /// Gap repair: where to ask for missed events; None = gaps are only counted.
    pub repair: Option<Repair>,
}

/// Gap repair: on a jump in a topic's sequence numbers the subscriber asks the broker for
/// the missing events (`tpx.replay`) and delivers them, in order, before the event that
/// showed the gap. What the broker no longer holds is counted in [`EventStats::gaps`].
#[derive(Debug, Clone)]
pub struct Repair {
    /// The broker's frontend endpoint (what [`Client::connect`] takes); CURVE settings are
    /// the subscriber's own.
    pub broker: String,
    /// How long one `tpx.replay` call may take; past it the gap stays a gap.
    pub timeout: Duration,
}

impl Repair {
    /// Repair from the broker frontend at `broker`, 1 s per call.
    pub fn new(broker: &str) -> Repair {
        Repair {
            broker: broker.to_string(),
            timeout: Duration::from_secs(1),
        }
    }
}

/// After a failed repair call (broker gone, gap recovery off), gaps are only counted for
/// this long, so a subscriber does not stall on every gap of an outage.
const REPAIR_PAUSE: Duration = Duration::from_secs(5);

impl Default for EventOptions {
    fn default() -> Self {
        EventOptions {
            heartbeat: Duration::from_secs(1),
            liveness: 3,
            queue: 100_000,
            hwm: 100_000,
            curve: None,
            repair: None,
        }
    }
}

enum Control {
    Subscribe(String),
    Unsubscribe(String),
}

/// A live subscription; dropping it stops the thread.
pub struct Subscriber {
    events: Receiver<Event>,
    control: Sender<Control>,
    stats: Arc<EventStats>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Subscriber {
    /// Connects to the broker's XPUB — or, given a pair's comma-separated endpoints, to
    /// each of them — and subscribes to `prefixes`.
    pub fn connect(
        endpoint: &str,
        prefixes: &[&str],
        options: EventOptions,
    ) -> Result<Subscriber, ClientError> {
        let endpoints = crate::failover::split_endpoints(endpoint)
            .map_err(|e| ClientError::Connect(format!("{endpoint}: {e}")))?;
        let ctx = zmq::Context::new();
        let (tx, rx) = crossbeam_channel::bounded(options.queue.max(1));
        let (ctl_tx, ctl_rx) = crossbeam_channel::unbounded();
        let stats = Arc::new(EventStats::default());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut state = SubState {
            ctx,
            endpoints,
            prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
            options,
            out: tx,
            control: ctl_rx,
            stats: stats.clone(),
            last_seq: HashMap::new(),
            tracked: 0,
            brokers: Vec::new(),
            last_heartbeat: Instant::now(),
            repairer: None,
            repair_paused_until: None,
        };
        let socket = state
            .open()
            .map_err(|e| ClientError::Connect(format!("{endpoint}: {e}")))?;
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tpx-events".into())
            .spawn(move || state.run(socket, &stop2))
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        Ok(Subscriber {
            events: rx,
            control: ctl_tx,
            stats,
            stop,
            thread: Some(thread),
        })
    }

    /// Adds a topic prefix.
    pub fn subscribe(&self, prefix: &str) {
        let _ = self.control.send(Control::Subscribe(prefix.to_string()));
    }

    /// Removes a topic prefix.
    pub fn unsubscribe(&self, prefix: &str) {
        let _ = self.control.send(Control::Unsubscribe(prefix.to_string()));
    }

    /// The next event, waiting up to `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        self.events.recv_timeout(timeout).ok()
    }

    /// The next event if one is waiting.
    pub fn try_recv(&self) -> Option<Event> {
        self.events.try_recv().ok()
    }

    /// The subscriber's counters.
    pub fn stats(&self) -> &EventStats {
        &self.stats
    }

    /// Events known missing (sequence gaps).
    pub fn gaps(&self) -> u64 {
        self.stats.gaps.load(Ordering::Relaxed)
    }

    /// Blocks until a broker heartbeat has been seen, proving the subscription is live.
    pub fn wait_connected(&self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if self.stats.heartbeats.load(Ordering::Relaxed) > 0 {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Most (source, topic) pairs tracked for gap detection.
const MAX_SOURCES: usize = 100_000;

struct SubState {
    ctx: zmq::Context,
    endpoints: Vec<String>,
    prefixes: Vec<String>,
    options: EventOptions,
    out: Sender<Event>,
    control: Receiver<Control>,
    stats: Arc<EventStats>,
    /// Last sequence number per source, then per topic (nested so that the per-event
    /// lookup borrows the topic instead of allocating a key).
    last_seq: HashMap<WorkerId, HashMap<String, u64>>,
    /// (source, topic) pairs tracked, bounded by [`MAX_SOURCES`].
    tracked: usize,
    /// Broker instances heard, least recently heard first; at most one per endpoint.
    brokers: Vec<WorkerId>,
    last_heartbeat: Instant,
    /// The connection gap repair calls on, made at the first gap.
    repairer: Option<Client>,
    repair_paused_until: Option<Instant>,
}

/// Where an event stands in its (source, topic) sequence.
enum Sequence {
    /// The next one (or the first seen).
    Next,
    /// Seen already (a last-value re-send): dropped.
    Repeat,
    /// After a jump: `from..=to` are missing.
    Gap { from: u64, to: u64 },
}

impl SubState {
    fn open(&self) -> zmq::Result<zmq::Socket> {
        let s = self.ctx.socket(zmq::SUB)?;
        s.set_linger(0)?;
        s.set_rcvhwm(self.options.hwm)?;
        s.set_maxmsgsize(4 << 20)?;
        if let Some(curve) = &self.options.curve {
            curve.apply(&s).map_err(|e| match e {
                crate::curve::CurveError::Socket(z) => z,
                _ => zmq::Error::EINVAL,
            })?;
        }
        s.set_subscribe(BROKER_HEARTBEAT_TOPIC.as_bytes())?;
        for p in &self.prefixes {
            s.set_subscribe(p.as_bytes())?;
        }
        for ep in &self.endpoints {
            s.connect(ep)?;
        }
        Ok(s)
    }

    fn run(&mut self, mut socket: zmq::Socket, stop: &std::sync::atomic::AtomicBool) {
        self.last_heartbeat = Instant::now();
        let silence = self.options.heartbeat * self.options.liveness;
        while !stop.load(Ordering::SeqCst) {
            self.apply_control(&socket);
            match socket.poll(zmq::POLLIN, 50) {
                Ok(n) if n > 0 => self.drain(&socket),
                Ok(_) => {}
                Err(zmq::Error::EINTR) => {}
                Err(e) => {
                    tracing::error!(error = %e, "event poll failed");
                    return;
                }
            }
            if self.last_heartbeat.elapsed() > silence {
                // The broker is gone or the connection is half-open: rebuild the socket;
                // its subscriptions are sent again on connect.
                tracing::warn!("broker heartbeat silent; reconnecting event socket");
                self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                match self.open() {
                    Ok(s) => socket = s,
                    Err(e) => tracing::error!(error = %e, "cannot reopen event socket"),
                }
                self.last_heartbeat = Instant::now();
            }
        }
    }

    fn apply_control(&mut self, socket: &zmq::Socket) {
        while let Ok(c) = self.control.try_recv() {
            let r = match c {
                Control::Subscribe(p) => {
                    let r = socket.set_subscribe(p.as_bytes());
                    self.prefixes.push(p);
                    r
                }
                Control::Unsubscribe(p) => {
                    self.prefixes.retain(|x| *x != p);
                    socket.set_unsubscribe(p.as_bytes())
                }
            };
            if let Err(e) = r {
                tracing::warn!(error = %e, "subscription change failed");
            }
        }
    }

    fn drain(&mut self, socket: &zmq::Socket) {
        while let Ok(frames) = socket.recv_multipart(zmq::DONTWAIT) {
            match event::decode(&frames) {
                Ok(e) => {
                    let body = frames.into_iter().nth(3).unwrap_or_default();
                    self.accept(e, body);
                }
                Err(e) => tracing::debug!(error = %e, "malformed event dropped"),
            }
        }
    }

    fn accept(&mut self, e: event::Event, body: Vec<u8>) {
        let h = e.header;
        if e.topic == BROKER_HEARTBEAT_TOPIC {
            self.last_heartbeat = Instant::now();
            self.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
            self.heard_broker(h.source);
        }
        let sequence = self.sequence(h.source, &e.topic, h.seq);
        if matches!(sequence, Sequence::Repeat) {
            return;
        }
        let wanted = self
            .prefixes
            .iter()
            .any(|p| e.topic.starts_with(p.as_str()));
        if let Sequence::Gap { from, to } = sequence {
            let recovered = if wanted {
                self.repair(h.source, &e.topic, &h.kind, from, to)
            } else {
                0
            };
            let missing = to - from + 1;
            self.stats
                .gaps
                .fetch_add(missing.saturating_sub(recovered), Ordering::Relaxed);
        }
        if !wanted {
            return;
        }
        self.deliver(Event {
            topic: e.topic,
            source: h.source,
            seq: h.seq,
            ts_ns: h.ts_ns,
            kind: h.kind,
            body,
        });
    }

    /// Counts a broker instance not heard before as a restart once every endpoint's
    /// broker is known (a pair's two brokers both send heartbeats).
    fn heard_broker(&mut self, id: WorkerId) {
        if self.brokers.last() == Some(&id) {
            return;
        }
        if let Some(pos) = self.brokers.iter().position(|b| *b == id) {
            self.brokers.remove(pos);
        } else if self.brokers.len() >= self.endpoints.len() {
            self.stats.broker_restarts.fetch_add(1, Ordering::Relaxed);
            self.brokers.remove(0);
        }
        self.brokers.push(id);
    }

    fn deliver(&self, ev: Event) {
        match self.out.try_send(ev) {
            Ok(()) => {
                self.stats.received.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) => {
                self.stats.local_drops.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Gap and repeat detection: sequence numbers are contiguous per source and topic,
    /// so any subscription can tell a loss (a jump) from a repeat (a number already seen).
    fn sequence(&mut self, source: WorkerId, topic: &str, seq: u64) -> Sequence {
        match self
            .last_seq
            .get_mut(&source)
            .and_then(|t| t.get_mut(topic))
        {
            Some(last) if seq <= *last => {
                self.stats.repeats.fetch_add(1, Ordering::Relaxed);
                Sequence::Repeat
            }
            Some(last) => {
                let from = *last + 1;
                *last = seq;
                if from == seq {
                    Sequence::Next
                } else {
                    Sequence::Gap { from, to: seq - 1 }
                }
            }
            None => {
                if self.tracked < MAX_SOURCES {
                    self.tracked += 1;
                    self.last_seq
                        .entry(source)
                        .or_default()
                        .insert(topic.to_string(), seq);
                }
                Sequence::Next
            }
        }
    }

    /// Asks the broker for `from..=to` of (source, topic) and delivers what it still
    /// holds, in order; returns how many. Only the newest [`MAX_REPLAY_SPAN`] of a longer
    /// gap are asked for (the broker keeps far fewer per topic anyway).
    fn repair(&mut self, source: WorkerId, topic: &str, kind: &str, from: u64, to: u64) -> u64 {
        let Some(client) = self.repairer() else {
            return 0;
        };
        let timeout = self
            .options
            .repair
            .as_ref()
            .map_or(Duration::ZERO, |r| r.timeout);
        let mut next = from.max((to + 1).saturating_sub(MAX_REPLAY_SPAN));
        let mut recovered = 0;
        while next <= to {
            let req = ReplayRequest {
                source,
                topic: topic.to_string(),
                from_seq: next,
                to_seq: to,
            };
            let reply = match client.replay(&req, timeout) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, topic, "gap repair failed; counting gaps for a while");
                    self.repair_paused_until = Some(Instant::now() + REPAIR_PAUSE);
                    break;
                }
            };
            let Some(last) = reply.events.last().map(|e| e.seq) else {
                break;
            };
            for e in reply
                .events
                .into_iter()
                .filter(|e| (next..=to).contains(&e.seq))
            {
                recovered += 1;
                self.deliver(Event {
                    topic: topic.to_string(),
                    source,
                    seq: e.seq,
                    ts_ns: e.ts_ns,
                    kind: kind.to_string(),
                    body: e.body,
                });
            }
            if reply.complete || last < next {
                break;
            }
            next = last + 1;
        }
        self.repairer = Some(client);
        self.stats.repaired.fetch_add(recovered, Ordering::Relaxed);
        recovered
    }

    /// The repair connection, made on first use; None when repair is off or paused.
    fn repairer(&mut self) -> Option<Client> {
        let repair = self.options.repair.as_ref()?;
        if self.repair_paused_until.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        if let Some(c) = self.repairer.take() {
            return Some(c);
        }
        let mut options = ClientOptions::default().timeout(repair.timeout);
        options.curve = self.options.curve.clone();
        match Client::connect(&repair.broker, options) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(error = %e, "cannot connect for gap repair");
                self.repair_paused_until = Some(Instant::now() + REPAIR_PAUSE);
                None
            }
        }
    }
}
