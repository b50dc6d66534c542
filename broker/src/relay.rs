//! The event relay: its own thread owns the XSUB (workers publish) and XPUB (clients
//! subscribe) sockets and forwards events, counting them by kind; it keeps the last tick
//! of every tick topic for late subscribers and publishes the broker's heartbeat.
//!
//! A loop of our own rather than `zmq::proxy`, so it can count, validate and cache, and
//! bound what subscribers cost: `subscriptions` keeps each subscriber's prefixes within
//! limits, `peers` tells whose they are and when they leave, `memory` gives the freed
//! heap back. Each loop turn handles a bounded amount of events and of subscription
//! traffic, so a storm on one side never stalls the other.

mod last_ticks;
mod memory;
pub mod peers;
pub mod replay;
pub mod subscriptions;

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
use last_ticks::LastTicks;
pub use memory::set_heap_release;
use memory::Trimmer;
use peers::Departures;
use subscriptions::{Limits, Outcome, Peer, Subscriptions};
use tradeplex_ops::Shutdown;

/// Events read per wake-up before checking the subscription side and the clock.
const BATCH: usize = 4096;
/// Subscription work per loop turn (messages read plus last values re-sent) before the
/// relay goes back to forwarding events.
const SUB_BUDGET: usize = 1024;
/// Largest message accepted on the XPUB side: a subscription is one byte and a prefix,
/// and no prefix longer than a topic can match. libzmq drops a peer that sends more.
const XPUB_MAX_MSG: i64 = 1024;

/// Each relay's monitor gets its own inproc name (several brokers may share a process
/// in tests).
static MONITOR_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The bound relay sockets, not yet running.
pub struct Relay {
    xsub: zmq::Socket,
    xpub: zmq::Socket,
    monitor: zmq::Socket,
    /// A fresh inproc endpoint the XPUB's monitor is re-pointed at, with no events, on drop.
    monitor_off: String,
    heartbeat: Duration,
    limits: Limits,
    /// `tick_cache_bytes`: the bound of the last-tick cache.
    tick_cache_bytes: usize,
    metrics: Arc<Metrics>,
    /// The risk stage's event side (with `[risk]`): fed the kinds it reads.
    risk: Option<crate::risk::Feed>,
    /// The gap-recovery store (unless `replay_bytes = 0`): fed every forwarded event.
    replay: Option<replay::Replay>,
    /// Bound XSUB endpoint.
    pub xsub_endpoint: String,
    /// Bound XPUB endpoint.
    pub xpub_endpoint: String,
}

impl Drop for Relay {
    /// Turns the XPUB's monitor off before the XPUB and the monitor's reader close:
    /// libzmq (4.3.4) sends monitor events with a blocking send from its I/O thread, so an
    /// event of the closing XPUB (a subscriber accepted or gone meanwhile) with the reader
    /// gone would block that thread for good, and the broker's exit with it (the same
    /// guard as the client's and the worker's). Re-monitoring with no events stops the old
    /// monitor under libzmq's lock.
    fn drop(&mut self) {
        let _ = self.xpub.monitor(&self.monitor_off, 0);
    }
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
        let mut xpub = sock(zmq::XPUB, &config.xpub)?;
        curve.secure(&xpub, crate::auth::DOMAIN_XPUB, &config.xpub)?;
        wire::common_options(&xpub, XPUB_MAX_MSG).map_err(err("configure", &config.xpub))?;
        // Bounded per-subscriber queue: a stalled subscriber loses events (seen by its
        // client as sequence gaps) instead of growing the broker's memory.
        xpub.set_sndhwm(config.event_hwm)
            .map_err(err("configure", &config.xpub))?;
        // Hear every subscription, even repeated ones, so each gets the last value, and
        // every unsubscription, so each subscriber's own set stays exact.
        set_xpub_verboser(&mut xpub).map_err(err("configure", &config.xpub))?;
        let monitor_ep = format!(
            "inproc://tpx-relay-xpub-monitor-{}",
            MONITOR_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        xpub.monitor(&monitor_ep, peers::MONITORED)
            .map_err(err("monitor", &config.xpub))?;
        let monitor = sock(zmq::PAIR, &monitor_ep)?;
        monitor
            .connect(&monitor_ep)
            .map_err(err("connect", &monitor_ep))?;
        xpub.bind(&config.xpub).map_err(err("bind", &config.xpub))?;
        Ok(Relay {
            xsub_endpoint: wire::bound_endpoint(&xsub, &config.xsub),
            xpub_endpoint: wire::bound_endpoint(&xpub, &config.xpub),
            xsub,
            xpub,
            monitor,
            monitor_off: format!("{monitor_ep}-off"),
            heartbeat: Duration::from_millis(config.heartbeat_ms),
            limits: Limits {
                per_subscriber: config.max_subscriptions_per_subscriber,
                total: config.max_subscriptions,
            },
            tick_cache_bytes: config.tick_cache_bytes,
            metrics,
            risk: None,
            replay: None,
        })
    }

    /// Feeds every event the risk stage reads to `feed` (before it is forwarded).
    pub fn set_risk(&mut self, feed: crate::risk::Feed) {
        self.risk = Some(feed);
    }

    /// Records every forwarded event in `store` for `tpx.replay`.
    pub fn set_replay(&mut self, store: replay::Replay) {
        self.replay = Some(store);
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
    last_ticks: LastTicks,
    subscriptions: Subscriptions,
    departures: Departures,
    trimmer: Trimmer,
    frames: Frames,
    relayed: HashMap<&'static str, prometheus::IntCounter>,
    bad_log: LogLimiter,
    refused_log: LogLimiter,
}

impl RelayLoop {
    fn new(r: Relay, broker: WorkerId) -> RelayLoop {
        let relayed = event::KINDS
            .into_iter()
            .map(|k| (k, r.metrics.events_relayed.with_label_values(&[k])))
            .collect();
        let subscriptions = Subscriptions::new(r.limits);
        let last_ticks = LastTicks::new(r.tick_cache_bytes, r.metrics.last_ticks.clone());
        RelayLoop {
            r,
            broker,
            seq: 0,
            next_heartbeat: Instant::now(),
            last_ticks,
            subscriptions,
            departures: Departures::default(),
            trimmer: Trimmer::new(Instant::now()),
            frames: Frames::default(),
            relayed,
            bad_log: LogLimiter::new(10),
            refused_log: LogLimiter::new(10),
        }
    }

    fn run(mut self, shutdown: &Shutdown) {
        // Set when a turn ended with work left over: poll without waiting.
        let mut backlog = false;
        while !shutdown.is_triggered() {
            let now = Instant::now();
            if now >= self.next_heartbeat {
                self.publish_heartbeat();
                self.maybe_trim(now);
            }
            // Departures wait out a short grace; come back for them soon.
            let cap = if self.departures.is_empty() { 50 } else { 10 };
            let timeout = if backlog {
                Duration::ZERO
            } else {
                self.next_heartbeat
                    .saturating_duration_since(now)
                    .min(Duration::from_millis(cap))
            };
            let mut items = [
                self.r.xsub.as_poll_item(zmq::POLLIN),
                self.r.xpub.as_poll_item(zmq::POLLIN),
                self.r.monitor.as_poll_item(zmq::POLLIN),
            ];
            let ms = timeout.as_micros().div_ceil(1000) as i64;
            if let Err(e) = zmq::poll(&mut items, ms) {
                if e != zmq::Error::EINTR {
                    tracing::error!(error = %e, "relay poll failed");
                    return;
                }
            }
            let (events, subs, conns) = (
                items[0].is_readable(),
                items[1].is_readable(),
                items[2].is_readable(),
            );
            if conns {
                self.drain_monitor();
            }
            let mut more = false;
            if subs || backlog {
                more |= !self.drain_subscriptions();
            }
            if events || backlog {
                more |= !self.drain_events();
            }
            if !more {
                self.apply_departures();
            }
            backlog = more;
        }
    }

    /// Forwards up to [`BATCH`] events; true when none is left waiting.
    fn drain_events(&mut self) -> bool {
        for _ in 0..BATCH {
            match self.frames.recv(&mut self.r.xsub) {
                Ok(true) => self.forward_event(),
                Ok(false) => return true,
                Err(e) => {
                    tracing::warn!(error = %e, "relay receive failed");
                    return true;
                }
            }
        }
        false
    }

    fn forward_event(&mut self) {
        let kind = if self.frames.overflow {
            None
        } else {
            event::check(self.frames.as_slice()).ok()
        };
        let Some(kind) = kind else {
            self.drop_event("malformed");
            return;
        };
        if kind == "hb" {
            // Only the broker publishes `hb.`: a publisher's heartbeat would make every
            // client believe the broker restarted.
            self.drop_event("forged_heartbeat");
            return;
        }
        if kind == "tick" {
            self.cache_tick();
        }
        if let (Some(feed), Some(body)) = (&self.r.risk, self.frames.as_slice().get(3)) {
            feed.on_event(tradeplex_proto::now_unix_ms(), kind, body);
        }
        if let Some(store) = &self.r.replay {
            store.record(self.frames.as_slice());
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

    fn drop_event(&mut self, reason: &'static str) {
        self.r
            .metrics
            .event_drops
            .with_label_values(&[reason])
            .inc();
        if let Some(suppressed) = self.bad_log.allow() {
            tracing::warn!(reason, suppressed, "dropped event from a publisher");
        }
    }

    fn cache_tick(&mut self) {
        let f = self.frames.as_slice();
        if let (Some(t), Some(p), Some(h), Some(b)) = (f.first(), f.get(1), f.get(2), f.get(3)) {
            self.last_ticks.record([t, p, h, b]);
        }
    }

    /// Handles up to [`SUB_BUDGET`] units of subscription traffic; true when the XPUB
    /// has nothing left waiting.
    fn drain_subscriptions(&mut self) -> bool {
        let mut msg = zmq::Message::new();
        let mut spent = 0;
        let mut drained = false;
        while spent < SUB_BUDGET {
            let xpub = &self.r.xpub;
            if tradeplex_ops::uninterrupted(|| xpub.recv(&mut msg, zmq::DONTWAIT)).is_err() {
                drained = true;
                break;
            }
            spent += 1 + self.on_subscription_message(&mut msg);
        }
        self.trimmer.add_work(spent as u64);
        self.update_gauges();
        drained
    }

    /// Applies one message from a subscriber; returns the last values it re-sent.
    fn on_subscription_message(&mut self, msg: &mut zmq::Message) -> usize {
        let peer = peers::peer_of(msg);
        match msg.split_first() {
            Some((1, prefix)) => match self.subscriptions.subscribe(peer, prefix) {
                Outcome::Added => self.send_last_values(prefix),
                // It has had the last values; re-sending on every repeat would let one
                // peer flood everyone subscribed to those topics.
                Outcome::Repeated => 0,
                Outcome::Refused(why) => {
                    self.refused(why, peer, prefix.len());
                    0
                }
            },
            Some((0, prefix)) => {
                // Without a peer it is libzmq reporting a closed pipe; the monitor's
                // DISCONNECTED releases that subscriber's whole set instead.
                if let Some(peer) = peer {
                    self.subscriptions.unsubscribe(peer, prefix);
                }
                0
            }
            _ => {
                self.r.metrics.bad_frame("xpub", "not_subscription");
                if let Some(suppressed) = self.bad_log.allow() {
                    tracing::warn!(
                        suppressed,
                        "dropped a message on the XPUB that is not a subscription"
                    );
                }
                0
            }
        }
    }

    fn refused(&mut self, why: subscriptions::Refusal, peer: Option<Peer>, len: usize) {
        self.r
            .metrics
            .subscriptions_refused
            .with_label_values(&[why.label()])
            .inc();
        if let Some(suppressed) = self.refused_log.allow() {
            tracing::warn!(
                reason = why.label(),
                peer = peer.map(|p| p.0),
                prefix_len = len,
                suppressed,
                "subscription refused"
            );
        }
    }

    fn drain_monitor(&mut self) {
        let now = Instant::now();
        let monitor = &self.r.monitor;
        while let Ok(frames) =
            tradeplex_ops::uninterrupted(|| monitor.recv_multipart(zmq::DONTWAIT))
        {
            if let Some(event) = frames.first().and_then(|f| peers::parse_event(f)) {
                self.departures.on_event(event, now);
            }
        }
    }

    /// Releases the subscriptions of subscribers that left, once the XPUB is drained
    /// (their last messages may still be queued behind others).
    fn apply_departures(&mut self) {
        if self.departures.is_empty() {
            return;
        }
        // Reading ZMQ_EVENTS makes libzmq process pending commands (new messages); if
        // that made the XPUB readable, wait for the next drain.
        if self
            .r
            .xpub
            .get_events()
            .is_ok_and(|e| e.contains(zmq::POLLIN))
        {
            return;
        }
        let mut freed = 0;
        for peer in self.departures.due(Instant::now()) {
            freed += self.subscriptions.peer_left(peer);
        }
        if freed > 0 {
            self.trimmer.subscriber_left();
            self.update_gauges();
        }
    }

    fn update_gauges(&self) {
        let m = &self.r.metrics;
        m.subscriptions.set(self.subscriptions.total() as i64);
        m.subscribers.set(self.subscriptions.subscribers() as i64);
    }

    fn maybe_trim(&mut self, now: Instant) {
        if self.trimmer.tick(now) {
            self.trimmer.trim(now);
            tracing::debug!(
                took_us = now.elapsed().as_micros() as u64,
                "returned free heap to the OS"
            );
        }
    }

    /// Re-sends the last tick of every cached topic matching a new subscription; returns
    /// how many. Other subscribers of those topics see it again with an old sequence
    /// number; the client library drops such repeats.
    fn send_last_values(&self, prefix: &[u8]) -> usize {
        let mut sent = 0;
        for frames in self.last_ticks.matching(prefix) {
            let _ = send_all(&self.r.xpub, frames);
            sent += 1;
        }
        sent
    }

    fn publish_heartbeat(&mut self) {
        self.last_ticks.update_gauges();
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

/// Makes `buf` a copy of `bytes`, in its own allocation when that fits without holding
/// much more than `bytes` needs (what is kept is counted by its length), else in a new one.
fn refill(buf: &mut Vec<u8>, bytes: &[u8]) {
    if buf.capacity() >= bytes.len() && buf.capacity() <= 2 * bytes.len() + 64 {
        buf.clear();
        buf.extend_from_slice(bytes);
    } else {
        *buf = bytes.to_vec();
    }
}

fn send_all(socket: &zmq::Socket, frames: &[Vec<u8>]) -> zmq::Result<()> {
    let n = frames.len();
    for (i, f) in frames.iter().enumerate() {
        let flags = if i + 1 < n { zmq::SNDMORE } else { 0 };
        tradeplex_ops::uninterrupted(|| socket.send(&f[..], flags | zmq::DONTWAIT))?;
    }
    Ok(())
}

/// ZMQ_XPUB_VERBOSER, which the zmq crate does not wrap: pass every subscribe and every
/// unsubscribe up to the relay, not only a prefix's first and last.
fn set_xpub_verboser(socket: &mut zmq::Socket) -> zmq::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: the socket pointer is live for the duration of the call (we hold the
    // socket mutably) and the option value is a c_int of the size passed.
    let rc = unsafe {
        zmq_sys::zmq_setsockopt(
            socket.as_mut_ptr(),
            zmq_sys::ZMQ_XPUB_VERBOSER as libc::c_int,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        // SAFETY: zmq_errno has no preconditions.
        Err(zmq::Error::from_raw(unsafe { zmq_sys::zmq_errno() }))
    }
}

#[cfg(test)]
mod tests {
    use super::refill;

    #[test]
    fn refill_reuses_a_fitting_buffer_and_replaces_an_oversized_one() {
        let mut buf = Vec::with_capacity(300);
        let kept = buf.as_ptr();
        refill(&mut buf, &[1; 200]);
        assert_eq!((buf.as_slice(), buf.as_ptr()), (&[1u8; 200][..], kept));
        refill(&mut buf, &[2; 10]);
        assert_eq!(buf, [2; 10]);
        assert!(
            buf.capacity() <= 2 * 10 + 64,
            "a 300-byte buffer kept for 10 bytes"
        );
        refill(&mut buf, &[3; 1000]);
        assert_eq!(buf, [3; 1000]);
    }
}
