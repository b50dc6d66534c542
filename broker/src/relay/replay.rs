//! Gap recovery: a bounded store of recent events per (source, topic), so a subscriber
//! that lost events (its queue in the broker overflowed, or it was briefly not
//! subscribed) asks the broker for them (`tpx.replay`) instead of living with the gap.
//!
//! Bounded in bytes twice: per stream, so one flat-out topic cannot push every other
//! topic's history out, and in total, where the oldest event anywhere goes first. The
//! bytes counted are the body plus a fixed per-event overhead, so a storm of empty bodies
//! is bounded as well. The relay thread appends; the request thread reads (`tpx.replay`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use rustc_hash::FxHashMap;
use tradeplex_proto::event;
use tradeplex_proto::mgmt::{ReplayReply, ReplayRequest, ReplayedEvent, MAX_REPLAY_SPAN};
use tradeplex_proto::{ErrorCode, WorkerId};

use crate::metrics::ReplayMetrics;

/// Bytes charged per stored event beyond its body: the entry, its slot in the eviction
/// order and the map overhead, rounded up.
pub const EVENT_OVERHEAD: usize = 64;
/// Most (source, topic) streams held; events of further streams are not stored.
pub const MAX_STREAMS: usize = 100_000;
/// MessagePack bytes per event in a reply beyond its body (map keys, seq, ts_ns).
const REPLY_EVENT_OVERHEAD: usize = 48;

/// How much the store may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayLimits {
    /// All streams together, bytes (0 = the store is off).
    pub total_bytes: usize,
    /// One (source, topic) stream, bytes.
    pub stream_bytes: usize,
    /// Largest reply body, bytes; events larger than this are never stored, so every
    /// stored event fits in a reply.
    pub reply_bytes: usize,
}

/// The store shared by the relay thread, which records every event it forwards, and the
/// request thread, which answers `tpx.replay`; with its metrics.
#[derive(Clone)]
pub struct Replay {
    store: Arc<Mutex<ReplayStore>>,
    metrics: ReplayMetrics,
}

impl Replay {
    /// An empty shared store.
    pub fn new(limits: ReplayLimits, metrics: ReplayMetrics) -> Replay {
        Replay {
            store: Arc::new(Mutex::new(ReplayStore::new(limits))),
            metrics,
        }
    }

    /// Records one event (frames already checked by the relay). An event whose header
    /// does not decode is forwarded by the relay but not kept: it has no (source, seq).
    pub fn record<F: std::ops::Deref<Target = [u8]>>(&self, frames: &[F]) {
        let (Some(topic), Some(header), Some(body)) =
            (frames.first(), frames.get(2), frames.get(3))
        else {
            return;
        };
        let Ok(h) = event::decode_header(header) else {
            return;
        };
        let mut store = self.lock();
        match store.push(h.source, topic, h.seq, h.ts_ns, body) {
            Pushed::Stored { evicted } => self.metrics.evicted.inc_by(evicted as u64),
            Pushed::TooLarge => self
                .metrics
                .not_stored
                .with_label_values(&["too_large"])
                .inc(),
            Pushed::TooManyStreams => self
                .metrics
                .not_stored
                .with_label_values(&["too_many_streams"])
                .inc(),
        }
        self.metrics.bytes.set(store.bytes() as i64);
        self.metrics.events.set(store.len() as i64);
    }

    /// Answers a `tpx.replay` request.
    pub fn answer(&self, r: &ReplayRequest) -> Result<ReplayReply, (ErrorCode, String)> {
        let reply = self.lock().read(r)?;
        self.metrics.served.inc_by(reply.events.len() as u64);
        Ok(reply)
    }

    /// The store; a panic elsewhere while it was held leaves it usable (every push keeps
    /// it consistent before it can panic), so poisoning is ignored rather than spread.
    fn lock(&self) -> MutexGuard<'_, ReplayStore> {
        self.store.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a push did, for the relay's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Stored.
    Stored {
        /// Older events evicted to make room.
        evicted: usize,
    },
    /// Not stored: the body alone is larger than a reply may be.
    TooLarge,
    /// Not stored: [`MAX_STREAMS`] streams are held already.
    TooManyStreams,
}

struct Stored {
    seq: u64,
    ts_ns: u64,
    body: Vec<u8>,
}

impl Stored {
    fn cost(&self) -> usize {
        self.body.len() + EVENT_OVERHEAD
    }
}

struct Stream {
    source: WorkerId,
    topic: Vec<u8>,
    events: VecDeque<Stored>,
    bytes: usize,
}

/// The store. Streams have ids so the global eviction order holds 16 bytes per event
/// rather than a copy of each topic.
///
/// Every forwarded event passes through [`ReplayStore::push`] on the relay thread, so its
/// common case avoids the allocator and the keyed hash: a run of events of one stream
/// finds it through `last` (one comparison), and a stream at its limit reuses the buffer of
/// the event it evicts (`spare`).
pub struct ReplayStore {
    limits: ReplayLimits,
    /// source → topic → stream id. Nested so a lookup borrows the topic bytes. Keyed by
    /// what publishers send, so it keeps std's keyed hasher.
    index: HashMap<WorkerId, HashMap<Vec<u8>, u64>>,
    /// Our own sequential ids: an unkeyed hasher is safe here.
    streams: FxHashMap<u64, Stream>,
    /// The stream pushed to last.
    last: Option<u64>,
    /// An evicted event's body buffer, reused by the next push of a similar size.
    spare: Option<Vec<u8>>,
    /// (stream id, seq) in arrival order, oldest first. Entries whose event already went
    /// (evicted by its stream's own limit) are skipped, and compacted away in bulk.
    order: VecDeque<(u64, u64)>,
    next_id: u64,
    bytes: usize,
    events: usize,
}

impl ReplayStore {
    /// An empty store.
    pub fn new(limits: ReplayLimits) -> ReplayStore {
        ReplayStore {
            limits,
            index: HashMap::new(),
            streams: FxHashMap::default(),
            last: None,
            spare: None,
            order: VecDeque::new(),
            next_id: 0,
            bytes: 0,
            events: 0,
        }
    }

    /// Bytes held (bodies plus [`EVENT_OVERHEAD`] each).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Events held.
    pub fn len(&self) -> usize {
        self.events
    }

    /// Streams held.
    #[cfg(test)]
    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// Stores one event. A `seq` at or below the stream's last one means the publisher
    /// started numbering again: the stream's old history no longer matches and goes.
    pub fn push(
        &mut self,
        source: WorkerId,
        topic: &[u8],
        seq: u64,
        ts_ns: u64,
        body: &[u8],
    ) -> Pushed {
        let cost = body.len() + EVENT_OVERHEAD;
        if body.len() + REPLY_EVENT_OVERHEAD > self.limits.reply_bytes
            || cost > self.limits.stream_bytes
            || cost > self.limits.total_bytes
        {
            return Pushed::TooLarge;
        }
        let Some(id) = self.stream_for(source, topic, seq) else {
            return Pushed::TooManyStreams;
        };
        let mut evicted = self.trim_stream(id, cost);
        let event = Stored {
            seq,
            ts_ns,
            body: self.buffer_for(body),
        };
        self.bytes += cost;
        self.events += 1;
        if let Some(s) = self.streams.get_mut(&id) {
            s.bytes += cost;
            s.events.push_back(event);
        }
        self.order.push_back((id, seq));
        evicted += self.trim_total();
        self.compact();
        Pushed::Stored { evicted }
    }

    /// Answers a `tpx.replay` request from what is held.
    pub fn read(&self, r: &ReplayRequest) -> Result<ReplayReply, (ErrorCode, String)> {
        check_request(r)?;
        let stream = self
            .index
            .get(&r.source)
            .and_then(|t| t.get(r.topic.as_bytes()))
            .and_then(|id| self.streams.get(id));
        let Some(stream) = stream else {
            return Ok(ReplayReply {
                events: Vec::new(),
                held_from: 0,
                held_to: 0,
                complete: true,
            });
        };
        let start = stream.events.partition_point(|e| e.seq < r.from_seq);
        let mut events = Vec::new();
        let mut size = 64;
        let mut complete = true;
        for e in stream
            .events
            .range(start..)
            .take_while(|e| e.seq <= r.to_seq)
        {
            size += e.body.len() + REPLY_EVENT_OVERHEAD;
            if size > self.limits.reply_bytes {
                complete = false;
                break;
            }
            events.push(ReplayedEvent {
                seq: e.seq,
                ts_ns: e.ts_ns,
                body: e.body.clone(),
            });
        }
        Ok(ReplayReply {
            events,
            held_from: stream.events.front().map_or(0, |e| e.seq),
            held_to: stream.events.back().map_or(0, |e| e.seq),
            complete,
        })
    }

    /// A copy of `body`, in the spare buffer when its size suits (a stream's events are
    /// mostly alike). The spare is at most one body, outside the limits' count.
    fn buffer_for(&mut self, body: &[u8]) -> Vec<u8> {
        let mut buf = self.spare.take().unwrap_or_default();
        super::refill(&mut buf, body);
        buf
    }

    /// The stream id for (source, topic), made if new (or made anew if `seq` went back).
    fn stream_for(&mut self, source: WorkerId, topic: &[u8], seq: u64) -> Option<u64> {
        let existing = self
            .last
            .filter(|id| {
                self.streams
                    .get(id)
                    .is_some_and(|s| s.source == source && s.topic == topic)
            })
            .or_else(|| self.index.get(&source).and_then(|t| t.get(topic)).copied());
        self.last = existing;
        if let Some(id) = existing {
            let restarted = self
                .streams
                .get(&id)
                .and_then(|s| s.events.back())
                .is_some_and(|last| seq <= last.seq);
            if !restarted {
                return Some(id);
            }
            self.drop_stream(id);
        }
        if self.streams.len() >= MAX_STREAMS {
            return None;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.streams.insert(
            id,
            Stream {
                source,
                topic: topic.to_vec(),
                events: VecDeque::new(),
                bytes: 0,
            },
        );
        self.index
            .entry(source)
            .or_default()
            .insert(topic.to_vec(), id);
        self.last = Some(id);
        Some(id)
    }

    /// Makes room in one stream for `incoming` more bytes; returns the events evicted.
    fn trim_stream(&mut self, id: u64, incoming: usize) -> usize {
        let Some(s) = self.streams.get_mut(&id) else {
            return 0;
        };
        let mut evicted = 0;
        while s.bytes + incoming > self.limits.stream_bytes {
            let Some(old) = s.events.pop_front() else {
                break;
            };
            s.bytes -= old.cost();
            self.bytes -= old.cost();
            self.events -= 1;
            evicted += 1;
            self.spare = Some(old.body);
        }
        evicted
    }

    /// Evicts the oldest events anywhere until the total is within its limit.
    fn trim_total(&mut self) -> usize {
        let mut evicted = 0;
        while self.bytes > self.limits.total_bytes {
            let Some((id, seq)) = self.order.pop_front() else {
                break;
            };
            let Some(s) = self.streams.get_mut(&id) else {
                continue;
            };
            if s.events.front().is_none_or(|e| e.seq != seq) {
                continue; // already evicted by its stream's own limit
            }
            if let Some(old) = s.events.pop_front() {
                s.bytes -= old.cost();
                self.bytes -= old.cost();
                self.events -= 1;
                evicted += 1;
                self.spare = Some(old.body);
            }
            if s.events.is_empty() {
                self.drop_stream(id);
            }
        }
        evicted
    }

    /// Drops the eviction order's stale entries once they outnumber the live ones, so the
    /// order stays within twice the events held (amortised O(1) per push).
    fn compact(&mut self) {
        if self.order.len() <= 2 * self.events + 1024 {
            return;
        }
        let streams = &self.streams;
        self.order.retain(|(id, seq)| {
            streams
                .get(id)
                .and_then(|s| s.events.front())
                .is_some_and(|front| *seq >= front.seq)
        });
    }

    fn drop_stream(&mut self, id: u64) {
        let Some(s) = self.streams.remove(&id) else {
            return;
        };
        self.bytes -= s.bytes;
        self.events -= s.events.len();
        if let Some(topics) = self.index.get_mut(&s.source) {
            topics.remove(&s.topic);
            if topics.is_empty() {
                self.index.remove(&s.source);
            }
        }
    }
}

fn check_request(r: &ReplayRequest) -> Result<(), (ErrorCode, String)> {
    let bad = |m: String| Err((ErrorCode::BadRequest, m));
    if r.topic.is_empty() || r.topic.len() > tradeplex_proto::event::MAX_TOPIC {
        return bad(format!(
            "topic must be 1-{} bytes",
            tradeplex_proto::event::MAX_TOPIC
        ));
    }
    if r.from_seq == 0 || r.to_seq < r.from_seq {
        return bad(format!(
            "need 1 <= from_seq <= to_seq (got {}..{})",
            r.from_seq, r.to_seq
        ));
    }
    if r.to_seq - r.from_seq >= MAX_REPLAY_SPAN {
        return bad(format!(
            "at most {MAX_REPLAY_SPAN} events per request (asked {}..{})",
            r.from_seq, r.to_seq
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, stream: usize) -> ReplayLimits {
        ReplayLimits {
            total_bytes: total,
            stream_bytes: stream,
            reply_bytes: 1 << 20,
        }
    }

    fn ask(s: &ReplayStore, src: WorkerId, topic: &str, from: u64, to: u64) -> ReplayReply {
        s.read(&ReplayRequest {
            source: src,
            topic: topic.into(),
            from_seq: from,
            to_seq: to,
        })
        .unwrap()
    }

    fn seqs(r: &ReplayReply) -> Vec<u64> {
        r.events.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn returns_the_range_it_holds() {
        let mut s = ReplayStore::new(limits(1 << 20, 1 << 20));
        let src = WorkerId::random();
        for seq in 1..=10 {
            s.push(src, b"tick.SIM.A", seq, seq * 100, &[seq as u8; 10]);
        }
        let r = ask(&s, src, "tick.SIM.A", 3, 5);
        assert_eq!(seqs(&r), vec![3, 4, 5]);
        assert_eq!(r.events[0].body, vec![3u8; 10]);
        assert_eq!(r.events[0].ts_ns, 300);
        assert_eq!((r.held_from, r.held_to, r.complete), (1, 10, true));
        assert!(ask(&s, src, "tick.SIM.B", 1, 5).events.is_empty());
        assert!(ask(&s, WorkerId::random(), "tick.SIM.A", 1, 5)
            .events
            .is_empty());
    }

    #[test]
    fn a_stream_keeps_within_its_own_limit() {
        let per = 10 + EVENT_OVERHEAD;
        let mut s = ReplayStore::new(limits(1 << 20, 3 * per));
        let src = WorkerId::random();
        for seq in 1..=10 {
            s.push(src, b"t.a", seq, 0, &[0; 10]);
        }
        s.push(src, b"t.b", 1, 0, &[0; 10]);
        assert_eq!(seqs(&ask(&s, src, "t.a", 1, 10)), vec![8, 9, 10]);
        assert_eq!(seqs(&ask(&s, src, "t.b", 1, 10)), vec![1]);
        assert_eq!(s.bytes(), 4 * per);
        assert_eq!(s.len(), 4);
    }

    #[test]
    fn the_total_evicts_the_oldest_anywhere() {
        let per = 10 + EVENT_OVERHEAD;
        let mut s = ReplayStore::new(limits(4 * per, 1 << 20));
        let src = WorkerId::random();
        s.push(src, b"t.a", 1, 0, &[0; 10]);
        s.push(src, b"t.b", 1, 0, &[0; 10]);
        s.push(src, b"t.a", 2, 0, &[0; 10]);
        s.push(src, b"t.b", 2, 0, &[0; 10]);
        let pushed = s.push(src, b"t.c", 1, 0, &[0; 10]);
        assert_eq!(pushed, Pushed::Stored { evicted: 1 });
        assert_eq!(seqs(&ask(&s, src, "t.a", 1, 9)), vec![2]);
        assert_eq!(seqs(&ask(&s, src, "t.b", 1, 9)), vec![1, 2]);
        assert!(s.bytes() <= 4 * per);
    }

    #[test]
    fn reused_buffers_hold_each_event_s_own_body() {
        // A stream at its limit reuses the evicted event's buffer: bodies of varying size
        // must come back exactly, whichever buffer they landed in.
        let mut s = ReplayStore::new(limits(1 << 20, 3 * (40 + EVENT_OVERHEAD)));
        let src = WorkerId::random();
        let body = |seq: u64| vec![seq as u8; 10 + (seq as usize * 7) % 30];
        for seq in 1..=50 {
            s.push(src, b"t.a", seq, seq, &body(seq));
        }
        let r = ask(&s, src, "t.a", 1, 50);
        assert!(r.events.len() >= 3);
        for e in &r.events {
            assert_eq!(e.body, body(e.seq), "seq {}", e.seq);
        }
        assert_eq!(r.held_to, 50);
    }

    #[test]
    fn interleaved_streams_and_sources_stay_apart() {
        // The last-stream shortcut must not mix a topic of two sources, or two topics.
        let mut s = ReplayStore::new(limits(1 << 20, 1 << 20));
        let (a, b) = (WorkerId::random(), WorkerId::random());
        for seq in 1..=4 {
            s.push(a, b"t.x", seq, 0, b"ax");
            s.push(b, b"t.x", seq, 0, b"bx");
            s.push(a, b"t.y", seq, 0, b"ay");
        }
        for (src, topic, want) in [(a, "t.x", b"ax"), (b, "t.x", b"bx"), (a, "t.y", b"ay")] {
            let r = ask(&s, src, topic, 1, 9);
            assert_eq!(seqs(&r), vec![1, 2, 3, 4], "{topic}");
            assert!(r.events.iter().all(|e| e.body == want), "{topic}");
        }
        assert!(ask(&s, b, "t.y", 1, 9).events.is_empty());
    }

    #[test]
    fn a_restarted_publisher_replaces_its_history() {
        let mut s = ReplayStore::new(limits(1 << 20, 1 << 20));
        let src = WorkerId::random();
        for seq in 1..=5 {
            s.push(src, b"t.a", seq, 0, b"old");
        }
        s.push(src, b"t.a", 1, 0, b"new");
        let r = ask(&s, src, "t.a", 1, 5);
        assert_eq!(seqs(&r), vec![1]);
        assert_eq!(r.events[0].body, b"new");
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn replies_stay_within_the_body_limit() {
        let mut s = ReplayStore::new(ReplayLimits {
            total_bytes: 1 << 20,
            stream_bytes: 1 << 20,
            reply_bytes: 1000,
        });
        let src = WorkerId::random();
        for seq in 1..=20 {
            s.push(src, b"t.a", seq, 0, &[0; 100]);
        }
        assert_eq!(s.push(src, b"t.a", 21, 0, &[0; 1000]), Pushed::TooLarge);
        let r = ask(&s, src, "t.a", 1, 20);
        assert!(!r.complete);
        assert!(!r.events.is_empty() && r.events.len() < 20);
        let encoded = rmp_serde::to_vec_named(&r).unwrap();
        assert!(encoded.len() <= 1000, "{} bytes", encoded.len());
        let next = r.events.last().unwrap().seq + 1;
        assert_eq!(ask(&s, src, "t.a", next, 20).events[0].seq, next);
    }

    #[test]
    fn the_eviction_order_stays_bounded() {
        let per = 10 + EVENT_OVERHEAD;
        // One stream capped far below the total: evictions are by the stream's limit, and
        // the global order must not keep an entry per event ever pushed.
        let mut s = ReplayStore::new(limits(1 << 30, 10 * per));
        let src = WorkerId::random();
        for seq in 1..=100_000 {
            s.push(src, b"t.a", seq, 0, &[0; 10]);
        }
        assert_eq!(s.len(), 10);
        assert!(s.order.len() <= 2 * s.len() + 1024 + 1, "{}", s.order.len());
    }

    #[test]
    fn streams_are_bounded_and_emptied_ones_go() {
        let per = 1 + EVENT_OVERHEAD;
        let mut s = ReplayStore::new(limits(2 * per, 1 << 20));
        let src = WorkerId::random();
        for i in 0..10u32 {
            s.push(src, format!("t.{i}").as_bytes(), 1, 0, &[0]);
        }
        assert_eq!(
            s.streams(),
            2,
            "streams whose events were evicted are dropped"
        );
        assert_eq!(s.index.values().map(HashMap::len).sum::<usize>(), 2);
    }

    #[test]
    fn bad_requests_are_refused() {
        let s = ReplayStore::new(limits(1 << 20, 1 << 20));
        let mut r = ReplayRequest {
            source: WorkerId::random(),
            topic: "t.a".into(),
            from_seq: 0,
            to_seq: 5,
        };
        assert_eq!(s.read(&r).unwrap_err().0, ErrorCode::BadRequest);
        r.from_seq = 6;
        assert_eq!(s.read(&r).unwrap_err().0, ErrorCode::BadRequest);
        r.from_seq = 1;
        r.to_seq = MAX_REPLAY_SPAN + 1;
        assert_eq!(s.read(&r).unwrap_err().0, ErrorCode::BadRequest);
        r.to_seq = 5;
        r.topic = String::new();
        assert_eq!(s.read(&r).unwrap_err().0, ErrorCode::BadRequest);
    }
}
