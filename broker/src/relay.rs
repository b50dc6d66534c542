//! The event relay: its own thread owns the XSUB (workers publish) and XPUB (clients
//! subscribe) sockets and forwards events, counting them by kind; it keeps the last tick
//! of every tick topic for late subscribers and publishes the broker's heartbeat.
//!
//! A loop of our own rather than `zmq::proxy`, so it can count, validate and cache.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tradeplex_proto::event::{self, EventHeader, BROKER_HEARTBEAT_TOPIC};
use tradeplex_proto::WorkerId;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::server::BrokerError;
use crate::wire::{self, Frames, LogLimiter};
use tradeplex_ops::Shutdown;

/// Most tick topics whose last value is kept for late subscribers.
const MAX_CACHED_TOPICS: usize = 100_000;
/// Events read per wake-up before checking the subscription side and the clock.
const BATCH: usize = 4096;

/// The bound relay sockets, not yet running.
pub struct Relay {
    xsub: zmq::Socket,
    xpub: zmq::Socket,
    heartbeat: Duration,
    metrics: Arc<Metrics>,
    /// Bound XSUB endpoint.
    pub xsub_endpoint: String,
    /// Bound XPUB endpoint.
    pub xpub_endpoint: String,
}

impl Relay {
    /// Binds XSUB and XPUB.
    pub fn bind(
        ctx: &zmq::Context,
        config: &Config,
        metrics: Arc<Metrics>,
        curve: &crate::server::Curve,
    ) -> Result<Relay, BrokerError> {
        let sock = |kind, ep: &str| {
            ctx.socket(kind).map_err(|source| BrokerError::Socket {
                what: "create socket for",
                endpoint: ep.to_string(),
                source,
            })
        };
        let err = |what, ep: &str| {
            let ep = ep.to_string();
            move |source| BrokerError::Socket {
                what,
                endpoint: ep,
                source,
            }
        };
        let max_msg = (config.max_body_bytes as i64).saturating_mul(2) + 64 * 1024;
        let xsub = sock(zmq::XSUB, &config.xsub)?;
        curve.secure(&xsub, crate::auth::DOMAIN_XSUB, &config.xsub)?;
        wire::common_options(&xsub, max_msg).map_err(err("configure", &config.xsub))?;
        xsub.set_rcvhwm(config.event_hwm)
            .map_err(err("configure", &config.xsub))?;
        xsub.bind(&config.xsub).map_err(err("bind", &config.xsub))?;
        // Subscribe to everything upstream: the relay counts every event and caches ticks.
        xsub.send(&[1u8][..], 0)
            .map_err(err("subscribe", &config.xsub))?;
        let xpub = sock(zmq::XPUB, &config.xpub)?;
        curve.secure(&xpub, crate::auth::DOMAIN_XPUB, &config.xpub)?;
        wire::common_options(&xpub, 64 * 1024).map_err(err("configure", &config.xpub))?;
        // Bounded per-subscriber queue: a stalled subscriber loses events (seen by its
        // client as sequence gaps) instead of growing the broker's memory.
        xpub.set_sndhwm(config.event_hwm)
            .map_err(err("configure", &config.xpub))?;
        // Hear every subscription, even repeated ones, so each gets the last value.
        xpub.set_xpub_verbose(true)
            .map_err(err("configure", &config.xpub))?;
        xpub.bind(&config.xpub).map_err(err("bind", &config.xpub))?;
        Ok(Relay {
            xsub_endpoint: wire::bound_endpoint(&xsub, &config.xsub),
            xpub_endpoint: wire::bound_endpoint(&xpub, &config.xpub),
            xsub,
            xpub,
            heartbeat: Duration::from_millis(config.heartbeat_ms),
            metrics,
        })
    }

    /// Starts the relay thread; it stops when `shutdown` is triggered.
    pub fn spawn(
        self,
        broker: WorkerId,
        shutdown: Shutdown,
    ) -> Result<JoinHandle<()>, BrokerError> {
        std::thread::Builder::new()
            .name("tpx-relay".into())
            .spawn(move || RelayLoop::new(self, broker).run(&shutdown))
            .map_err(BrokerError::Thread)
    }
}

struct RelayLoop {
    r: Relay,
    broker: WorkerId,
    seq: u64,
    next_heartbeat: Instant,
    last_ticks: HashMap<Vec<u8>, [Vec<u8>; 4]>,
    subscriptions: HashMap<Vec<u8>, u32>,
    frames: Frames,
    relayed: HashMap<&'static str, prometheus::IntCounter>,
    bad_log: LogLimiter,
}

impl RelayLoop {
    fn new(r: Relay, broker: WorkerId) -> RelayLoop {
        let relayed = event::KINDS
            .into_iter()
            .map(|k| (k, r.metrics.events_relayed.with_label_values(&[k])))
            .collect();
        RelayLoop {
            r,
            broker,
            seq: 0,
            next_heartbeat: Instant::now(),
            last_ticks: HashMap::new(),
            subscriptions: HashMap::new(),
            frames: Frames::default(),
            relayed,
            bad_log: LogLimiter::new(10),
        }
    }

    fn run(mut self, shutdown: &Shutdown) {
        while !shutdown.is_triggered() {
            if Instant::now() >= self.next_heartbeat {
                self.publish_heartbeat();
            }
            let timeout = self
                .next_heartbeat
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50));
            let mut items = [
                self.r.xsub.as_poll_item(zmq::POLLIN),
                self.r.xpub.as_poll_item(zmq::POLLIN),
            ];
            let ms = timeout.as_micros().div_ceil(1000) as i64;
            if let Err(e) = zmq::poll(&mut items, ms) {
                if e != zmq::Error::EINTR {
                    tracing::error!(error = %e, "relay poll failed");
                    return;
                }
            }
            let (events, subs) = (items[0].is_readable(), items[1].is_readable());
            if subs {
                self.drain_subscriptions();
            }
            if events {
                self.drain_events();
            }
        }
    }

    fn drain_events(&mut self) {
        for _ in 0..BATCH {
            match self.frames.recv(&mut self.r.xsub) {
                Ok(true) => self.forward_event(),
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "relay receive failed");
                    return;
                }
            }
        }
    }

    fn forward_event(&mut self) {
        let kind = if self.frames.overflow {
            None
        } else {
            event::check(self.frames.as_slice()).ok()
        };
        let Some(kind) = kind else {
            self.r
                .metrics
                .event_drops
                .with_label_values(&["malformed"])
                .inc();
            if let Some(suppressed) = self.bad_log.allow() {
                tracing::warn!(suppressed, "dropped malformed event");
            }
            return;
        };
        if kind == "tick" {
            self.cache_tick();
        }
        let n = self.frames.as_slice().len();
        let mut ok = true;
        for i in 0..n {
            let flags = if i + 1 < n { zmq::SNDMORE } else { 0 };
            let part = self.frames.take(i);
            ok &= part.send(&mut self.r.xpub, flags | zmq::DONTWAIT).is_ok();
        }
        if ok {
            if let Some(c) = self.relayed.get(kind) {
                c.inc();
            }
        } else {
            self.r
                .metrics
                .event_drops
                .with_label_values(&["send_failed"])
                .inc();
        }
    }

    fn cache_tick(&mut self) {
        let f = self.frames.as_slice();
        let (Some(t), Some(p), Some(h), Some(b)) = (f.first(), f.get(1), f.get(2), f.get(3)) else {
            return;
        };
        if let Some(slot) = self.last_ticks.get_mut(&t[..]) {
            *slot = [t.to_vec(), p.to_vec(), h.to_vec(), b.to_vec()];
        } else if self.last_ticks.len() < MAX_CACHED_TOPICS {
            self.last_ticks
                .insert(t.to_vec(), [t.to_vec(), p.to_vec(), h.to_vec(), b.to_vec()]);
        }
    }

    fn drain_subscriptions(&mut self) {
        let mut msg = zmq::Message::new();
        while self.r.xpub.recv(&mut msg, zmq::DONTWAIT).is_ok() {
            match msg.split_first() {
                Some((1, prefix)) => {
                    *self.subscriptions.entry(prefix.to_vec()).or_default() += 1;
                    self.send_last_values(prefix);
                }
                Some((0, prefix)) => {
                    if let Some(n) = self.subscriptions.get_mut(prefix) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            self.subscriptions.remove(prefix);
                        }
                    }
                }
                _ => {}
            }
            let total: u32 = self.subscriptions.values().sum();
            self.r.metrics.subscriptions.set(i64::from(total));
        }
    }

    /// Re-sends the last tick of every cached topic matching a new subscription. Other
    /// subscribers of those topics see it again with an old sequence number; the client
    /// library drops such repeats.
    fn send_last_values(&self, prefix: &[u8]) {
        for (topic, frames) in &self.last_ticks {
            if topic.starts_with(prefix) {
                let _ = send_all(&self.r.xpub, frames);
            }
        }
    }

    fn publish_heartbeat(&mut self) {
        self.seq += 1;
        self.next_heartbeat = Instant::now() + self.r.heartbeat;
        let header = EventHeader {
            source: self.broker,
            seq: self.seq,
            ts_ns: tradeplex_proto::now_unix_ns(),
            kind: "hb".into(),
        };
        let [t, p, h] = event::encode(BROKER_HEARTBEAT_TOPIC, &header);
        if send_all(&self.r.xpub, &[t, p, h, Vec::new()]).is_ok() {
            if let Some(c) = self.relayed.get("hb") {
                c.inc();
            }
        }
    }
}

fn send_all(socket: &zmq::Socket, frames: &[Vec<u8>]) -> zmq::Result<()> {
    let n = frames.len();
    for (i, f) in frames.iter().enumerate() {
        let flags = if i + 1 < n { zmq::SNDMORE } else { 0 };
        socket.send(&f[..], flags | zmq::DONTWAIT)?;
    }
    Ok(())
}
