//! Scenario 2, events: one publisher sends 215-byte tick events (the `TPXE01` wire format)
//! to an XSUB, subscribers read them from the XPUB; paced, flat out, or stepped up to find
//! the lossless rate. The same publisher and subscribers run against the Tradeplex broker's
//! relay and against a bare XSUB/XPUB proxy with the same high-water mark. Subscribers
//! use the client library (its gap count is what is reported) on both sides.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use hdrhistogram::Histogram;
use tradeplex_client::events::{EventOptions, Subscriber};
use tradeplex_proto::event::{self, EventHeader};
use tradeplex_proto::WorkerId;

use super::cluster::ScratchDir;
use crate::runner::interrupted;

/// Event body size, bytes (a tick's worth).
pub const BODY_BYTES: usize = 215;
/// The topic every bench event is published on; subscribers subscribe to [`PREFIX`].
const TOPIC: &[u8] = b"tick.SIM.BENCH";
const PREFIX: &str = "tick.";
/// How long subscriptions may take to reach the publisher before the run fails.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the trailer (end-of-run marker events) is sent before giving up on a
/// subscriber that does not see it.
const TRAILER_TIMEOUT: Duration = Duration::from_secs(5);

/// How fast to publish.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// Events a second, spread evenly.
    Rate(f64),
    /// As fast as the publisher can send.
    FlatOut,
}

/// One events run.
#[derive(Debug, Clone)]
pub struct EventSpec {
    pub subscribers: usize,
    /// Extra subscribers that read one event, then nothing until the run ends.
    pub stalled: usize,
    pub pace: Pace,
    /// Stop after this many measured events...
    pub count: u64,
    /// ...or after this long, whichever comes first.
    pub duration: Duration,
    pub hwm: i32,
}

/// What one (reading) subscriber saw of the measured events.
#[derive(Debug, Clone, Default)]
pub struct SubStats {
    pub received: u64,
    /// Events missing according to the client library's sequence-gap count.
    pub gaps: u64,
    /// Events the client library dropped because its queue to the caller was full.
    pub local_drops: u64,
    /// Events missing in truth (published minus received).
    pub missing: u64,
    /// Received per second over the publishing time.
    pub rate: f64,
}

/// The result of one run.
#[derive(Debug)]
pub struct EventRun {
    pub published: u64,
    pub publish_rate: f64,
    pub subs: Vec<SubStats>,
    /// Publish-to-receive latency, ns, all reading subscribers merged.
    pub latency: Histogram<u64>,
}

impl EventRun {
    pub fn mean_rate(&self) -> f64 {
        self.subs.iter().map(|s| s.rate).sum::<f64>() / self.subs.len().max(1) as f64
    }
    pub fn missing(&self) -> u64 {
        self.subs.iter().map(|s| s.missing).sum()
    }
    pub fn gaps(&self) -> u64 {
        self.subs.iter().map(|s| s.gaps).sum()
    }
    pub fn local_drops(&self) -> u64 {
        self.subs.iter().map(|s| s.local_drops).sum()
    }
    pub fn loss_pct(&self) -> f64 {
        let expected = self.published * self.subs.len() as u64;
        100.0 * self.missing() as f64 / expected.max(1) as f64
    }
    pub fn latency_us(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

/// What a subscriber thread returns (`None` for a stalled one).
type SubResult = anyhow::Result<Option<(SubStats, Histogram<u64>)>>;

/// State the publisher and its subscribers share.
struct Shared {
    source: WorkerId,
    /// First measured sequence number (u64::MAX while warming up).
    from: AtomicU64,
    /// Last measured sequence number (u64::MAX until publishing ends).
    to: AtomicU64,
    /// When the measured publishing began.
    started: OnceLock<Instant>,
    /// Subscribers that have received an event of this run.
    seen: AtomicUsize,
    /// Reading subscribers that have received an event past `to`.
    finished: AtomicUsize,
    stop: AtomicBool,
}

/// Runs one publisher against `xsub` and the subscribers against `xpub`.
pub fn run(xsub: &str, xpub: &str, spec: &EventSpec) -> anyhow::Result<EventRun> {
    let shared = Arc::new(Shared {
        source: WorkerId::random(),
        from: AtomicU64::new(u64::MAX),
        to: AtomicU64::new(u64::MAX),
        started: OnceLock::new(),
        seen: AtomicUsize::new(0),
        finished: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
    });
    let mut subs: Vec<JoinHandle<SubResult>> = Vec::new();
    for i in 0..spec.subscribers + spec.stalled {
        let stalled = i >= spec.subscribers;
        let (shared, xpub, hwm) = (shared.clone(), xpub.to_string(), spec.hwm);
        subs.push(
            std::thread::Builder::new()
                .name(format!("bench-sub-{i}"))
                .spawn(move || subscriber(&xpub, hwm, &shared, stalled))?,
        );
    }
    let published = publisher(xsub, spec, &shared);
    shared.stop.store(true, Ordering::SeqCst);
    let mut latency = super::report::latency_histogram();
    let mut stats = Vec::new();
    for s in subs {
        if let Some((st, h)) = s.join().map_err(|_| anyhow!("subscriber panicked"))?? {
            latency.add(&h)?;
            stats.push(st);
        }
    }
    let (published, secs) = published?;
    for s in &mut stats {
        s.missing = published.saturating_sub(s.received);
    }
    Ok(EventRun {
        published,
        publish_rate: published as f64 / secs.max(1e-9),
        subs: stats,
        latency,
    })
}

/// Publishes warm-up events until every subscriber has one, then the measured events,
/// then trailer events until every reading subscriber has seen the end. Returns the
/// measured count and how long publishing it took.
fn publisher(xsub: &str, spec: &EventSpec, shared: &Shared) -> anyhow::Result<(u64, f64)> {
    let ctx = zmq::Context::new();
    let pubs = ctx.socket(zmq::PUB)?;
    pubs.set_linger(0)?;
    pubs.set_sndhwm(spec.hwm)?;
    pubs.connect(xsub)?;
    let mut header = EventHeader {
        source: shared.source,
        seq: 0,
        ts_ns: 0,
        kind: "tick".into(),
    };
    let body = [0x5au8; BODY_BYTES];
    let send = |header: &mut EventHeader| -> anyhow::Result<()> {
        header.seq += 1;
        header.ts_ns = tradeplex_proto::now_unix_ns();
        let h = tradeplex_proto::frame::encode_header(&*header);
        pubs.send(TOPIC, zmq::SNDMORE)?;
        pubs.send(event::PROTOCOL.frame, zmq::SNDMORE)?;
        pubs.send(h, zmq::SNDMORE)?;
        pubs.send(&body[..], 0)?;
        Ok(())
    };
    let total = spec.subscribers + spec.stalled;
    let until = Instant::now() + SUBSCRIBE_TIMEOUT;
    while shared.seen.load(Ordering::SeqCst) < total {
        if Instant::now() >= until || interrupted() {
            bail!("subscriptions did not reach the publisher within {SUBSCRIBE_TIMEOUT:?}");
        }
        send(&mut header)?;
        std::thread::sleep(Duration::from_millis(1));
    }
    shared.from.store(header.seq + 1, Ordering::SeqCst);
    let started = Instant::now();
    let _ = shared.started.set(started);
    let end = started + spec.duration;
    let mut sent = 0u64;
    while sent < spec.count {
        let now = Instant::now();
        if now >= end || (sent & 1023 == 0 && interrupted()) {
            break;
        }
        if let Pace::Rate(rate) = spec.pace {
            let due = started + Duration::from_secs_f64(sent as f64 / rate);
            if due > now {
                let wait = due - now;
                if wait >= Duration::from_micros(10) {
                    std::thread::sleep(wait);
                } else {
                    std::hint::spin_loop();
                }
                continue;
            }
        }
        send(&mut header)?;
        sent += 1;
    }
    let secs = started.elapsed().as_secs_f64();
    shared.to.store(header.seq, Ordering::SeqCst);
    let until = Instant::now() + TRAILER_TIMEOUT;
    while shared.finished.load(Ordering::SeqCst) < spec.subscribers
        && Instant::now() < until
        && !interrupted()
    {
        send(&mut header)?;
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok((sent, secs))
}

/// Reads events until the publisher's trailer (or the stop flag) through the client
/// library's [`Subscriber`], whose gap count is reported; a stalled subscriber is a raw SUB
/// socket that reads one event and then nothing (a consumer stuck at the socket, which is
/// what a high-water mark must contain). Returns `None` for a stalled one.
fn subscriber(xpub: &str, hwm: i32, shared: &Shared, stalled: bool) -> SubResult {
    if stalled {
        stalled_subscriber(xpub, hwm, shared)?;
        return Ok(None);
    }
    let options = EventOptions {
        hwm,
        // The bare proxy sends no broker heartbeat: never treat it as a dead broker.
        liveness: u32::MAX / 2,
        ..EventOptions::default()
    };
    let sub = Subscriber::connect(xpub, &[PREFIX], options)?;
    let mut hist = super::report::latency_histogram();
    let mut stats = SubStats::default();
    let (mut seen, mut last_rx) = (false, None::<Instant>);
    // The library counts every sequence jump; the events it skipped outside the measured
    // range (lost warm-up or trailer events) are taken off its count below.
    let (mut prev, mut skipped_outside, mut trailers) = (None::<u64>, 0u64, 0u64);
    loop {
        let Some(ev) = sub.recv_timeout(Duration::from_millis(20)) else {
            // Stop once the publisher is done and the library has nothing more to hand
            // over, so its gap count is final.
            if shared.stop.load(Ordering::SeqCst) {
                break;
            }
            continue;
        };
        if ev.source != shared.source {
            continue; // e.g. the relay's last-value copy of an earlier run's tick
        }
        if !seen {
            seen = true;
            shared.seen.fetch_add(1, Ordering::SeqCst);
        }
        let (from, to) = (
            shared.from.load(Ordering::SeqCst),
            shared.to.load(Ordering::SeqCst),
        );
        if let Some(p) = prev.filter(|p| ev.seq > p + 1) {
            skipped_outside += skipped_outside_range(p, ev.seq, from, to);
        }
        prev = Some(ev.seq);
        if ev.seq < from {
            continue; // warm-up
        }
        if ev.seq > to {
            if trailers == 0 {
                shared.finished.fetch_add(1, Ordering::SeqCst);
            }
            trailers += 1;
            continue;
        }
        stats.received += 1;
        hist.saturating_record(tradeplex_proto::now_unix_ns().saturating_sub(ev.ts_ns));
        last_rx = Some(Instant::now());
    }
    stats.gaps = sub.gaps().saturating_sub(skipped_outside);
    stats.local_drops = sub.stats().local_drops.load(Ordering::Relaxed);
    if let (Some(started), Some(last_rx)) = (shared.started.get(), last_rx) {
        let secs = last_rx.duration_since(*started).as_secs_f64();
        stats.rate = stats.received as f64 / secs.max(1e-6);
    }
    Ok(Some((stats, hist)))
}

/// How many of the sequence numbers a jump from `prev` to `seq` skipped lie outside the
/// measured range `from..=to`.
fn skipped_outside_range(prev: u64, seq: u64, from: u64, to: u64) -> u64 {
    let (lo, hi) = (prev + 1, seq - 1);
    let skipped = hi - lo + 1;
    let (a, b) = (lo.max(from), hi.min(to));
    let inside = if a <= b { b - a + 1 } else { 0 };
    skipped - inside
}

fn stalled_subscriber(xpub: &str, hwm: i32, shared: &Shared) -> anyhow::Result<()> {
    let ctx = zmq::Context::new();
    let sub = ctx.socket(zmq::SUB)?;
    sub.set_linger(0)?;
    sub.set_rcvhwm(hwm)?;
    sub.connect(xpub)?;
    sub.set_subscribe(PREFIX.as_bytes())?;
    while !shared.stop.load(Ordering::SeqCst) {
        if sub.poll(zmq::POLLIN, 20)? == 0 {
            continue;
        }
        let frames = sub.recv_multipart(0)?;
        if event::decode(&frames).is_ok_and(|e| e.header.source == shared.source) {
            shared.seen.fetch_add(1, Ordering::SeqCst);
            // Stalled from here on: the socket stays open and is never read again.
            while !shared.stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    Ok(())
}

/// The lossless capacity search: doubles the paced rate from `start` until a run loses
/// events (or the publisher cannot keep the pace, or `max` is passed), then bisects
/// `refine` times. Returns the highest publish rate achieved without loss (0 if none).
pub fn lossless_capacity(
    xsub: &str,
    xpub: &str,
    base: &EventSpec,
    start: f64,
    max: f64,
    step: Duration,
    refine: usize,
) -> anyhow::Result<f64> {
    let mut best = 0.0f64;
    let mut try_rate = |rate: f64| -> anyhow::Result<bool> {
        let spec = EventSpec {
            pace: Pace::Rate(rate),
            count: ((rate * step.as_secs_f64()) as u64).max(1000),
            duration: step * 4,
            ..base.clone()
        };
        let r = run(xsub, xpub, &spec)?;
        let kept_pace = r.published == spec.count && r.publish_rate >= 0.95 * rate;
        let ok = r.missing() == 0 && kept_pace;
        if r.missing() == 0 {
            best = best.max(r.publish_rate);
        }
        Ok(ok)
    };
    let (mut good, mut bad) = (0.0, None);
    let mut rate = start;
    while rate <= max {
        if try_rate(rate)? {
            good = rate;
            rate *= 2.0;
        } else {
            bad = Some(rate);
            break;
        }
    }
    if let Some(mut bad) = bad {
        for _ in 0..refine {
            let mid = if good == 0.0 {
                bad / 2.0
            } else {
                (good + bad) / 2.0
            };
            if try_rate(mid)? {
                good = mid;
            } else {
                bad = mid;
            }
        }
    }
    Ok(best)
}

/// The baseline relay: `zmq_proxy_steerable` between an XSUB and an XPUB with the same
/// high-water marks as the broker's relay, terminated through its control socket.
pub struct BaselineProxy {
    pub xsub: String,
    pub xpub: String,
    control: zmq::Socket,
    thread: Option<JoinHandle<zmq::Result<()>>>,
    _ctx: zmq::Context,
}

impl BaselineProxy {
    pub fn start(hwm: i32, ipc: Option<&ScratchDir>) -> anyhow::Result<BaselineProxy> {
        let ctx = zmq::Context::new();
        let ep = |name: &str| match ipc {
            Some(d) => d.endpoint(name, true),
            None => "tcp://127.0.0.1:*".to_string(),
        };
        let mut xsub = ctx.socket(zmq::XSUB)?;
        xsub.set_linger(0)?;
        xsub.set_rcvhwm(hwm)?;
        xsub.bind(&ep("base-xsub"))?;
        let mut xpub = ctx.socket(zmq::XPUB)?;
        xpub.set_linger(0)?;
        xpub.set_sndhwm(hwm)?;
        xpub.bind(&ep("base-xpub"))?;
        let name = |s: &zmq::Socket| -> anyhow::Result<String> {
            s.get_last_endpoint()?
                .map_err(|_| anyhow!("endpoint is not UTF-8"))
        };
        let (xsub_ep, xpub_ep) = (name(&xsub)?, name(&xpub)?);
        let inproc = format!("inproc://bench-proxy-{}", uuid::Uuid::new_v4().simple());
        let mut theirs = ctx.socket(zmq::PAIR)?;
        theirs.bind(&inproc)?;
        let control = ctx.socket(zmq::PAIR)?;
        control.connect(&inproc)?;
        let thread = std::thread::Builder::new()
            .name("base-proxy".into())
            .spawn(move || zmq::proxy_steerable(&mut xsub, &mut xpub, &mut theirs))
            .context("starting the baseline proxy")?;
        Ok(BaselineProxy {
            xsub: xsub_ep,
            xpub: xpub_ep,
            control,
            thread: Some(thread),
            _ctx: ctx,
        })
    }
}

impl Drop for BaselineProxy {
    fn drop(&mut self) {
        if self.control.send("TERMINATE", 0).is_ok() {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_are_split_at_the_measured_range() {
        // Range 10..=20.
        assert_eq!(skipped_outside_range(3, 6, 10, 20), 2); // warm-up only
        assert_eq!(skipped_outside_range(8, 13, 10, 20), 1); // 9 outside, 10-12 inside
        assert_eq!(skipped_outside_range(12, 15, 10, 20), 0); // inside only
        assert_eq!(skipped_outside_range(18, 24, 10, 20), 3); // 19-20 inside, 21-23 out
        assert_eq!(skipped_outside_range(21, 25, 10, 20), 3); // trailer only
        assert_eq!(skipped_outside_range(5, 30, 10, u64::MAX), 4); // range still open
    }
}
