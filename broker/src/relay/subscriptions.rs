//! Who subscribed to what on the XPUB side: per-subscriber prefix sets with a bound per
//! subscriber and in total, freed when the subscriber leaves. Plain data, no sockets.
//!
//! libzmq reports every subscribe (XPUB verbose) but a subscriber's repeated subscribes
//! to one prefix are one subscription to it, and its departure is reported per pipe
//! without saying whose; counting messages therefore drifts. Keeping a set per
//! subscriber (identified by its connection, see `peers.rs`) makes repeats idempotent
//! and lets a departure release exactly what that subscriber held.

use std::collections::{HashMap, HashSet};

use tradeplex_proto::event::MAX_TOPIC;

/// One subscriber connection on the XPUB socket (libzmq's file descriptor for it; unique
/// among live connections, reused after a disconnect — see `peers.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer(pub i32);

/// Bounds on what the relay keeps for subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Prefixes one subscriber may hold.
    pub per_subscriber: usize,
    /// Prefixes all subscribers together may hold.
    pub total: usize,
}

/// Why a subscription was refused (the `reason` label of
/// `tradeplex_subscriptions_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Longer than any topic, so it can never match.
    TooLong,
    /// The subscriber already holds `per_subscriber` prefixes.
    PerSubscriber,
    /// All subscribers together hold `total` prefixes.
    Total,
    /// libzmq attached no connection identity to the message (not tcp:// or ipc://).
    Unidentified,
}

/// Every [`Refusal`] label, exported at 0 from the start.
pub const REFUSAL_REASONS: [&str; 4] = ["too_long", "per_subscriber", "total", "unidentified"];

impl Refusal {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::TooLong => "too_long",
            Refusal::PerSubscriber => "per_subscriber",
            Refusal::Total => "total",
            Refusal::Unidentified => "unidentified",
        }
    }
}

/// What a subscribe did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new prefix for this subscriber.
    Added,
    /// The subscriber already held it (still worth a last-value re-send).
    Repeated,
    /// Not kept; see the reason.
    Refused(Refusal),
}

/// The subscriptions of every connected subscriber.
#[derive(Debug)]
pub struct Subscriptions {
    limits: Limits,
    peers: HashMap<Peer, HashSet<Box<[u8]>>>,
    total: usize,
}

impl Subscriptions {
    /// An empty table with these bounds.
    pub fn new(limits: Limits) -> Subscriptions {
        Subscriptions {
            limits,
            peers: HashMap::new(),
            total: 0,
        }
    }

    /// Records `peer`'s subscription to `prefix` if the bounds allow it.
    pub fn subscribe(&mut self, peer: Option<Peer>, prefix: &[u8]) -> Outcome {
        if prefix.len() > MAX_TOPIC {
            return Outcome::Refused(Refusal::TooLong);
        }
        let Some(peer) = peer else {
            return Outcome::Refused(Refusal::Unidentified);
        };
        let held = self.peers.get(&peer);
        if held.is_some_and(|set| set.contains(prefix)) {
            return Outcome::Repeated;
        }
        if held.map_or(0, HashSet::len) >= self.limits.per_subscriber {
            return Outcome::Refused(Refusal::PerSubscriber);
        }
        if self.total >= self.limits.total {
            return Outcome::Refused(Refusal::Total);
        }
        self.peers.entry(peer).or_default().insert(prefix.into());
        self.total += 1;
        Outcome::Added
    }

    /// Drops `peer`'s subscription to `prefix`; false if it held none (e.g. it had been
    /// refused).
    pub fn unsubscribe(&mut self, peer: Peer, prefix: &[u8]) -> bool {
        let Some(set) = self.peers.get_mut(&peer) else {
            return false;
        };
        let removed = set.remove(prefix);
        if removed {
            self.total -= 1;
        }
        if set.is_empty() {
            self.peers.remove(&peer);
        }
        removed
    }

    /// Forgets everything `peer` held; returns how many prefixes that was.
    pub fn peer_left(&mut self, peer: Peer) -> usize {
        let freed = self.peers.remove(&peer).map_or(0, |set| set.len());
        self.total -= freed;
        freed
    }

    /// Subscriptions held, all subscribers together.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Subscribers holding at least one subscription.
    pub fn subscribers(&self) -> usize {
        self.peers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Option<Peer> = Some(Peer(7));
    const B: Option<Peer> = Some(Peer(8));

    fn table(per_subscriber: usize, total: usize) -> Subscriptions {
        Subscriptions::new(Limits {
            per_subscriber,
            total,
        })
    }

    #[test]
    fn two_subscribers_on_one_prefix_both_leaving_return_the_count_to_zero() {
        let mut t = table(10, 100);
        assert_eq!(t.subscribe(A, b"tick."), Outcome::Added);
        assert_eq!(t.subscribe(B, b"tick."), Outcome::Added);
        assert_eq!(t.total(), 2);
        assert_eq!(t.peer_left(Peer(7)), 1);
        assert_eq!(t.peer_left(Peer(8)), 1);
        assert_eq!((t.total(), t.subscribers()), (0, 0));
    }

    #[test]
    fn a_hundred_identical_subscribes_count_once_and_leave_nothing() {
        let mut t = table(10, 100);
        assert_eq!(t.subscribe(A, b"order."), Outcome::Added);
        for _ in 1..100 {
            assert_eq!(t.subscribe(A, b"order."), Outcome::Repeated);
        }
        assert_eq!(t.total(), 1);
        t.peer_left(Peer(7));
        assert_eq!(t.total(), 0);
    }

    #[test]
    fn unsubscribe_releases_only_what_the_subscriber_held() {
        let mut t = table(10, 100);
        t.subscribe(A, b"a");
        t.subscribe(B, b"a");
        assert!(t.unsubscribe(Peer(7), b"a"));
        assert!(!t.unsubscribe(Peer(7), b"a"));
        assert!(!t.unsubscribe(Peer(9), b"a"));
        assert_eq!((t.total(), t.subscribers()), (1, 1));
    }

    #[test]
    fn bounds_per_subscriber_and_in_total_refuse_new_prefixes() {
        let mut t = table(2, 3);
        assert_eq!(t.subscribe(A, b"1"), Outcome::Added);
        assert_eq!(t.subscribe(A, b"2"), Outcome::Added);
        assert_eq!(
            t.subscribe(A, b"3"),
            Outcome::Refused(Refusal::PerSubscriber)
        );
        // A held prefix is still a repeat at the bound.
        assert_eq!(t.subscribe(A, b"1"), Outcome::Repeated);
        assert_eq!(t.subscribe(B, b"1"), Outcome::Added);
        assert_eq!(t.subscribe(B, b"2"), Outcome::Refused(Refusal::Total));
        // Freed room is usable again.
        t.peer_left(Peer(7));
        assert_eq!(t.subscribe(B, b"2"), Outcome::Added);
        assert_eq!(t.total(), 2);
    }

    #[test]
    fn prefixes_longer_than_a_topic_and_anonymous_ones_are_refused() {
        let mut t = table(10, 10);
        let long = vec![b'x'; MAX_TOPIC + 1];
        assert_eq!(t.subscribe(A, &long), Outcome::Refused(Refusal::TooLong));
        assert_eq!(t.subscribe(A, &long[..MAX_TOPIC]), Outcome::Added);
        assert_eq!(
            t.subscribe(None, b"x"),
            Outcome::Refused(Refusal::Unidentified)
        );
        for r in [
            Refusal::TooLong,
            Refusal::PerSubscriber,
            Refusal::Total,
            Refusal::Unidentified,
        ] {
            assert!(REFUSAL_REASONS.contains(&r.label()));
        }
    }
}
