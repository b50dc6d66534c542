//! Event publishing: one thread owns the worker's PUB socket (ZeroMQ sockets are not
//! thread-safe), connected to the broker's XSUB, and sends what gateways push into their
//! [`EventSink`]s through a bounded channel, framed per `tradeplex_proto::event`.
//!
//! Sequence numbers are per topic (as `docs/protocol.md` specifies: a subscriber to one
//! prefix sees every event of its topics, so per-topic numbers let it detect gaps) and
//! start at 1. An event dropped before the socket — the queue was full — still uses up a
//! number of its topic, so subscribers see the loss as a gap instead of missing it
//! silently. Events the PUB socket itself drops (high-water mark, broker away) have
//! numbers too: the same gap appears.
//!
//! With a broker pair the thread publishes to the XSUB of the broker the session serves
//! (the index [`crate::brokers::Brokers`] shares) and moves when it moves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use tradeplex_proto::event::{self, EventHeader};
use tradeplex_proto::WorkerId;

use crate::gateway::sink::Unsent;
use crate::gateway::{EventSink, OutEvent};
use crate::metrics::WorkerMetrics;
use crate::WorkerError;

/// Events queued between gateways and the publisher thread before new ones are dropped.
pub const DEFAULT_QUEUE: usize = 65_536;
/// The PUB socket's send high-water mark (messages held for the broker while it is slow
/// or away; beyond that ZeroMQ drops, and subscribers see gaps).
pub const DEFAULT_SNDHWM: i32 = 100_000;
/// How often the thread looks at its stop flag when idle.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// Assigns per-topic sequence numbers: 1, 2, 3… on each topic, skipping numbers for
/// events dropped before they were sent. Keeps one counter per topic ever published, so
/// gateways should use a bounded set of topics (per symbol and account, not per order).
#[derive(Debug, Default)]
pub struct Sequencer {
    last: HashMap<String, u64>,
}

impl Sequencer {
    /// The number of the next event on `topic`, after `skipped` events that were lost.
    pub fn next(&mut self, topic: &str, skipped: u64) -> u64 {
        let last = match self.last.get_mut(topic) {
            Some(n) => n,
            None => self.last.entry(topic.to_string()).or_insert(0),
        };
        *last += skipped + 1;
        *last
    }
}

/// The running publisher; stops (sending what is queued first) when dropped.
pub struct Publisher {
    sink: EventSink,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Publisher {
    /// Connects a PUB socket to `endpoint` (the broker's XSUB) and starts the thread.
    /// Events carry `source` as their worker id.
    pub fn start(
        ctx: &zmq::Context,
        endpoint: &str,
        source: WorkerId,
        metrics: Arc<WorkerMetrics>,
        curve: Option<&tradeplex_client::curve::ClientCurve>,
    ) -> Result<Publisher, WorkerError> {
        let target = Target {
            endpoints: vec![endpoint.to_string()],
            current: Arc::default(),
        };
        Publisher::start_following(ctx, target, source, metrics, curve)
    }

    /// Like [`Publisher::start`], publishing to `target.endpoints[target.current]` and
    /// moving when the index changes.
    pub fn start_following(
        ctx: &zmq::Context,
        target: Target,
        source: WorkerId,
        metrics: Arc<WorkerMetrics>,
        curve: Option<&tradeplex_client::curve::ClientCurve>,
    ) -> Result<Publisher, WorkerError> {
        let connected = target.current.load(Ordering::Relaxed);
        let endpoint = target
            .endpoints
            .get(connected)
            .cloned()
            .ok_or(WorkerError::Internal("publisher target out of range"))?;
        let socket = ctx.socket(zmq::PUB)?;
        if let Some(c) = curve {
            c.apply(&socket)?;
        }
        socket.set_sndhwm(DEFAULT_SNDHWM)?;
        // On shutdown, give queued events a moment to reach the broker.
        socket.set_linger(500)?;
        socket.connect(&endpoint)?;
        let (tx, rx) = crossbeam_channel::bounded(DEFAULT_QUEUE);
        let unsent = Arc::new(Unsent::default());
        let sink = EventSink::new(tx, unsent.clone(), Some(metrics.clone()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut thread = PublishThread {
            socket,
            target,
            connected,
            rx,
            unsent,
            source,
            metrics,
            seq: Sequencer::default(),
            stop: stop.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("tpx-publisher".into())
            .spawn(move || thread.run())?;
        tracing::info!(%endpoint, "publishing events");
        Ok(Publisher {
            sink,
            stop,
            thread: Some(handle),
        })
    }

    /// A sink feeding this publisher (clone it for every gateway).
    pub fn sink(&self) -> EventSink {
        self.sink.clone()
    }

    /// Sends what is queued, then stops the thread.
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.shut();
    }
}

/// Where a publisher sends: the endpoint at index `current` (moved by the session).
#[derive(Debug, Clone)]
pub struct Target {
    /// The XSUB endpoints, one per broker.
    pub endpoints: Vec<String>,
    /// The index in use.
    pub current: Arc<AtomicUsize>,
}

struct PublishThread {
    socket: zmq::Socket,
    target: Target,
    /// The index of the endpoint the socket is connected to.
    connected: usize,
    rx: Receiver<OutEvent>,
    unsent: Arc<Unsent>,
    source: WorkerId,
    metrics: Arc<WorkerMetrics>,
    seq: Sequencer,
    stop: Arc<AtomicBool>,
}

impl PublishThread {
    fn run(&mut self) {
        let mut skipped: HashMap<String, u64> = HashMap::new();
        while !self.stop.load(Ordering::Relaxed) {
            self.follow();
            match self.rx.recv_timeout(IDLE_POLL) {
                Ok(ev) => self.send_counting_losses(ev, &mut skipped),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        // Stopping: send what was queued when asked (gateways are closed by then).
        for _ in 0..self.rx.len() {
            match self.rx.try_recv() {
                Ok(ev) => self.send_counting_losses(ev, &mut skipped),
                Err(_) => break,
            }
        }
    }

    /// Moves the socket to the endpoint the session now serves, if it moved. Events sent
    /// meanwhile went to the old broker (lost if it is gone): subscribers see a gap.
    fn follow(&mut self) {
        let want = self.target.current.load(Ordering::Relaxed);
        if want == self.connected {
            return;
        }
        let (Some(old), Some(new)) = (
            self.target.endpoints.get(self.connected),
            self.target.endpoints.get(want),
        ) else {
            return;
        };
        if let Err(e) = self.socket.disconnect(old) {
            tracing::debug!(error = %e, endpoint = %old, "publisher disconnect");
        }
        match self.socket.connect(new) {
            Ok(()) => tracing::info!(endpoint = %new, "publishing events"),
            Err(e) => tracing::warn!(error = %e, endpoint = %new, "publisher cannot connect"),
        }
        self.connected = want;
    }

    fn send_counting_losses(&mut self, ev: OutEvent, skipped: &mut HashMap<String, u64>) {
        if let Some(lost) = self.unsent.take() {
            for (topic, n) in lost {
                *skipped.entry(topic).or_default() += n;
            }
        }
        let skip = skipped.remove(&ev.topic).unwrap_or(0);
        self.send(ev, skip);
    }

    fn send(&mut self, ev: OutEvent, skipped: u64) {
        let header = EventHeader {
            source: self.source,
            seq: self.seq.next(&ev.topic, skipped),
            ts_ns: tradeplex_proto::now_unix_ns(),
            kind: ev.kind.to_string(),
        };
        let [topic, proto, header] = event::encode(&ev.topic, &header);
        // PUB never blocks: at the high-water mark ZeroMQ drops the message itself.
        // Frame by frame, each again if a signal interrupted it: sending a whole message
        // again after a part of it went out would glue the parts onto the next one.
        let parts: [&[u8]; 4] = [&topic, &proto, &header, &ev.body];
        let last = parts.len() - 1;
        let sent = parts.iter().enumerate().try_for_each(|(i, part)| {
            let more = if i < last { zmq::SNDMORE } else { 0 };
            tradeplex_ops::uninterrupted(|| self.socket.send(*part, more | zmq::DONTWAIT))
        });
        match sent {
            Ok(()) => self
                .metrics
                .events_published
                .with_label_values(&[ev.kind])
                .inc(),
            Err(e) => {
                self.metrics.events_dropped.inc();
                tracing::debug!(error = %e, topic = %ev.topic, "event not sent");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tradeplex_proto::model::Log;

    #[test]
    fn sequence_numbers_are_per_topic_and_skip_losses() {
        let mut s = Sequencer::default();
        assert_eq!(s.next("tick.SIM.A", 0), 1);
        assert_eq!(s.next("tick.SIM.A", 0), 2);
        assert_eq!(s.next("order.sim", 0), 1);
        assert_eq!(s.next("tick.SIM.A", 2), 5);
        assert_eq!(s.next("order.sim", 0), 2);
    }

    #[test]
    fn events_are_framed_with_contiguous_sequence_numbers() {
        let ctx = zmq::Context::new();
        let sub = ctx.socket(zmq::SUB).unwrap();
        sub.set_subscribe(b"").unwrap();
        sub.bind("tcp://127.0.0.1:*").unwrap();
        let ep = sub.get_last_endpoint().unwrap().unwrap();
        let metrics = Arc::new(WorkerMetrics::new());
        let source = WorkerId::random();
        let publisher = Publisher::start(&ctx, &ep, source, metrics.clone(), None).unwrap();
        let sink = publisher.sink();
        // The PUB socket drops until the subscription has arrived: probe until heard.
        sub.set_rcvtimeo(50).unwrap();
        let mut first = None;
        for _ in 0..200 {
            sink.log("SIM", "info", "probe");
            if let Ok(f) = sub.recv_multipart(0) {
                first = Some(f);
                break;
            }
        }
        let first = first.expect("publisher reached the subscriber");
        let e = event::decode(&first).unwrap();
        assert_eq!(
            (e.topic.as_str(), e.header.kind.as_str()),
            ("log.SIM", "log")
        );
        assert_eq!(e.header.source, source);
        let mut last = e.header.seq;
        while let Ok(f) = sub.recv_multipart(zmq::DONTWAIT) {
            last = event::decode(&f).unwrap().header.seq;
        }
        sub.set_rcvtimeo(2000).unwrap();
        for i in 0..10 {
            sink.log("SIM", "info", format!("n{i}"));
        }
        for i in 0..10 {
            let f = sub.recv_multipart(0).unwrap();
            let e = event::decode(&f).unwrap();
            assert_eq!(e.header.seq, last + 1 + i);
            let log: Log = rmp_serde::from_slice(&f[3]).unwrap();
            assert_eq!(log.msg, format!("n{i}"));
        }
        publisher.stop();
        // Counted after sending: read once the thread has stopped.
        assert!(metrics.events_published.with_label_values(&["log"]).get() >= 11);
    }
}
