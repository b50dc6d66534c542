//! The last tick of every tick topic, re-sent to a subscriber whose new prefix matches it,
//! so a late subscriber has the current price at once.
//!
//! Bounded twice, because every topic name and every tick's size comes from a publisher:
//! at most [`MAX_TOPICS`] topics and at most `max_bytes` held in all (each tick's four
//! frames plus its key and a fixed overhead). A new topic that does not fit is not cached;
//! a cached topic whose new tick does not fit is dropped from the cache rather than kept
//! at an older price — a late subscriber then waits for the next tick instead of trading
//! on a stale one.

use std::collections::BTreeMap;

use super::refill;
use crate::metrics::LastTickMetrics;

/// Most tick topics whose last value is kept.
pub const MAX_TOPICS: usize = 100_000;
/// What one cached topic costs beyond its bytes: the map node and five `Vec` headers,
/// rounded up, so a flood of empty ticks is bounded by `max_bytes` too.
pub const ENTRY_OVERHEAD: usize = 128;

/// The frames of one event: topic, publisher id, header, body.
pub type Frames = [Vec<u8>; 4];

/// The cache; owned by the relay thread.
pub struct LastTicks {
    /// Ordered, so the topics matching a new prefix are one range scan.
    map: BTreeMap<Vec<u8>, Frames>,
    bytes: usize,
    max_bytes: usize,
    metrics: LastTickMetrics,
}

impl LastTicks {
    /// An empty cache holding at most `max_bytes` (0 = keep nothing).
    pub fn new(max_bytes: usize, metrics: LastTickMetrics) -> LastTicks {
        LastTicks {
            map: BTreeMap::new(),
            bytes: 0,
            max_bytes,
            metrics,
        }
    }

    /// Keeps `frames` (topic, publisher, header, body) as the last tick of its topic.
    pub fn record(&mut self, frames: [&[u8]; 4]) {
        let topic = frames[0];
        let cost = cost(&frames);
        if let Some(slot) = self.map.get_mut(topic) {
            let old = cost_of(slot);
            let others = self.bytes - old;
            if others + cost > self.max_bytes {
                self.map.remove(topic);
                self.bytes = others;
                self.metrics.too_large.inc();
                return;
            }
            // Every tick passes here: refill the slot's buffers rather than allocate four.
            for (buf, frame) in slot.iter_mut().zip(frames) {
                refill(buf, frame);
            }
            self.bytes = others + cost;
        } else if self.map.len() >= MAX_TOPICS {
            self.metrics.too_many_topics.inc();
        } else if self.bytes + cost > self.max_bytes {
            self.metrics.too_large.inc();
        } else {
            self.map.insert(topic.to_vec(), frames.map(<[u8]>::to_vec));
            self.bytes += cost;
        }
    }

    /// The cached ticks of every topic starting with `prefix`, in topic order.
    pub fn matching<'a>(&'a self, prefix: &'a [u8]) -> impl Iterator<Item = &'a Frames> + 'a {
        self.map
            .range(prefix.to_vec()..)
            .take_while(move |(topic, _)| topic.starts_with(prefix))
            .map(|(_, frames)| frames)
    }

    /// Bytes held, as counted against `max_bytes`.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Publishes the size gauges (once per heartbeat: not on every tick's path).
    pub fn update_gauges(&self) {
        self.metrics.bytes.set(self.bytes() as i64);
        self.metrics.topics.set(self.map.len() as i64);
    }
}

/// What a tick of these frames is counted as: its frames, its key (the topic again) and
/// the overhead.
fn cost(frames: &[&[u8]; 4]) -> usize {
    frames.iter().map(|f| f.len()).sum::<usize>() + frames[0].len() + ENTRY_OVERHEAD
}

fn cost_of(slot: &Frames) -> usize {
    cost(&[&slot[0], &slot[1], &slot[2], &slot[3]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{IntCounter, IntGauge};

    fn metrics() -> LastTickMetrics {
        let g = |n: &str| IntGauge::new(n, n).unwrap();
        let c = |n: &str| IntCounter::new(n, n).unwrap();
        LastTickMetrics {
            bytes: g("b"),
            topics: g("t"),
            too_many_topics: c("m"),
            too_large: c("l"),
        }
    }

    fn tick<'a>(topic: &'a [u8], body: &'a [u8]) -> [&'a [u8]; 4] {
        [topic, b"pub", b"head", body]
    }

    fn bodies(cache: &LastTicks, prefix: &[u8]) -> Vec<Vec<u8>> {
        cache.matching(prefix).map(|f| f[3].clone()).collect()
    }

    #[test]
    fn keeps_the_latest_tick_per_topic_and_finds_them_by_prefix() {
        let mut c = LastTicks::new(1 << 20, metrics());
        c.record(tick(b"tick.a.SIM", b"1"));
        c.record(tick(b"tick.b.SIM", b"2"));
        c.record(tick(b"tick.a.SIM", b"3"));
        c.record(tick(b"tick.ab.SIM", b"4"));
        assert_eq!(bodies(&c, b"tick.a"), [b"3".to_vec(), b"4".to_vec()]);
        assert_eq!(bodies(&c, b"tick.a."), [b"3".to_vec()]);
        assert_eq!(
            bodies(&c, b"tick."),
            [b"3".to_vec(), b"4".to_vec(), b"2".to_vec()]
        );
        assert!(bodies(&c, b"tick.c").is_empty());
        let expected = [b"tick.a.SIM", b"tick.b.SIM"]
            .iter()
            .map(|t| 2 * t.len() + 3 + 4 + 1 + ENTRY_OVERHEAD)
            .sum::<usize>()
            + 2 * 11
            + 3
            + 4
            + 1
            + ENTRY_OVERHEAD;
        assert_eq!(c.bytes(), expected);
    }

    #[test]
    fn stays_within_its_bytes_refusing_new_topics_once_full() {
        let m = metrics();
        let mut c = LastTicks::new(10_000, m.clone());
        let body = [7u8; 500];
        for i in 0..100 {
            c.record(tick(format!("tick.{i:03}").as_bytes(), &body));
            assert!(c.bytes() <= 10_000);
        }
        let kept = c.matching(b"tick.").count();
        assert!(
            (10..20).contains(&kept),
            "{kept} topics of ~650 bytes in 10 kB"
        );
        assert_eq!(m.too_large.get(), 100 - kept as u64);
        // A topic already held keeps updating at the same size.
        c.record(tick(b"tick.000", &[8u8; 500]));
        assert_eq!(bodies(&c, b"tick.000"), [vec![8u8; 500]]);
        c.update_gauges();
        assert_eq!(
            (m.bytes.get() as usize, m.topics.get()),
            (c.bytes(), kept as i64)
        );
    }

    #[test]
    fn a_tick_that_outgrows_the_budget_drops_its_topic_instead_of_keeping_a_stale_price() {
        let m = metrics();
        let mut c = LastTicks::new(2_000, m.clone());
        c.record(tick(b"tick.a", &[1; 100]));
        c.record(tick(b"tick.b", &[2; 100]));
        let before = c.bytes();
        c.record(tick(b"tick.a", &[3; 1_900]));
        assert_eq!(bodies(&c, b"tick."), [vec![2u8; 100]]);
        assert_eq!(m.too_large.get(), 1);
        assert!(
            c.bytes() < before,
            "the dropped topic's bytes are given back"
        );
        // Back to a normal size, it is cached again.
        c.record(tick(b"tick.a", &[4; 100]));
        assert_eq!(bodies(&c, b"tick.a"), [vec![4u8; 100]]);
        assert_eq!(c.bytes(), before);
    }

    #[test]
    fn holds_at_most_max_topics_however_small_they_are() {
        let m = metrics();
        let mut c = LastTicks::new(usize::MAX / 2, m.clone());
        for i in 0..MAX_TOPICS + 10 {
            c.record(tick(format!("tick.{i}").as_bytes(), b""));
        }
        assert_eq!(c.matching(b"tick.").count(), MAX_TOPICS);
        assert_eq!(m.too_many_topics.get(), 10);
    }

    #[test]
    fn zero_bytes_keeps_nothing() {
        let mut c = LastTicks::new(0, metrics());
        c.record(tick(b"tick.a", b"1"));
        assert_eq!((c.matching(b"").count(), c.bytes()), (0, 0));
    }
}
