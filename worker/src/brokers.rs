//! Which broker of a pair the worker serves: the ordered backend endpoints (first =
//! primary) and the XSUB endpoint that goes with each, the one in use, and the move to the
//! next (wrapping) when the broker in use refuses as passive or is lost. The publisher
//! thread reads the index in use, so the worker's events follow its registration. One
//! endpoint never moves: a single broker behaves as it always has.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tradeplex_client::failover::split_endpoints;

use crate::WorkerError;

/// Whether a DISCONNECT reason is a passive broker's refusal of READY
/// (`unavailable: passive broker…`).
pub fn is_passive_refusal(reason: &str) -> bool {
    reason.strip_prefix("unavailable:").is_some_and(|rest| {
        rest.trim_start()
            .starts_with(tradeplex_client::failover::PASSIVE_PREFIX)
    })
}

/// Why the worker moves to the next broker (its warn line says it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// The broker answered READY with `unavailable: passive broker…`.
    Passive,
    /// The broker went silent past the liveness window.
    Silent,
    /// The connection dropped or could not be made.
    Lost,
}

impl Why {
    fn text(self) -> &'static str {
        match self {
            Why::Passive => "passive broker refused READY",
            Why::Silent => "broker heartbeats silent",
            Why::Lost => "connection to the broker lost",
        }
    }
}

/// The endpoints of the broker (or pair) and the one in use.
#[derive(Debug, Clone)]
pub struct Brokers {
    backends: Vec<String>,
    events: Vec<String>,
    current: Arc<AtomicUsize>,
}

impl Brokers {
    /// From the backend endpoint (list) and the XSUB endpoint (list), which, if given,
    /// must name as many endpoints, in the same order.
    pub fn new(broker: &str, events: Option<&str>) -> Result<Brokers, WorkerError> {
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            WorkerError::Endpoints(format!("{what} {broker:?}: {e}"))
        };
        let backends = split_endpoints(broker).map_err(|e| bad("broker", &e))?;
        let events = match events {
            Some(ev) => split_endpoints(ev).map_err(|e| bad("events", &e))?,
            None => Vec::new(),
        };
        if !events.is_empty() && events.len() != backends.len() {
            return Err(WorkerError::Endpoints(format!(
                "{} broker endpoints but {} events endpoints: give one events endpoint per broker, in the same order",
                backends.len(),
                events.len()
            )));
        }
        Ok(Brokers {
            backends,
            events,
            current: Arc::default(),
        })
    }

    /// More than one broker: the pair rules apply.
    pub fn is_pair(&self) -> bool {
        self.backends.len() > 1
    }

    fn index(&self) -> usize {
        self.current.load(Ordering::Relaxed) % self.backends.len().max(1)
    }

    /// The backend endpoint in use.
    pub fn backend(&self) -> &str {
        self.backends.get(self.index()).map_or("", String::as_str)
    }

    /// Every XSUB endpoint, in order (empty: events are not published).
    pub fn events(&self) -> &[String] {
        &self.events
    }

    /// The index in use, shared with the publisher thread.
    pub fn shared_index(&self) -> Arc<AtomicUsize> {
        self.current.clone()
    }

    /// Moves to the next broker (wrapping) and logs the move; nothing with one broker.
    pub fn next(&mut self, why: Why) {
        if !self.is_pair() {
            return;
        }
        let from = self.backend().to_string();
        let next = (self.index() + 1) % self.backends.len();
        self.current.store(next, Ordering::Relaxed);
        tracing::warn!(from = %from, to = %self.backend(), why = why.text(), "switching broker");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_moves_in_order_and_wraps_and_events_follow() {
        let mut b = Brokers::new("tcp://a:1,tcp://b:1", Some("tcp://a:2,tcp://b:2")).unwrap();
        let shared = b.shared_index();
        assert!(b.is_pair());
        assert_eq!(b.backend(), "tcp://a:1");
        b.next(Why::Passive);
        assert_eq!(b.backend(), "tcp://b:1");
        assert_eq!(shared.load(Ordering::Relaxed), 1);
        b.next(Why::Lost);
        assert_eq!(b.backend(), "tcp://a:1");
    }

    #[test]
    fn passive_refusals_are_recognised() {
        assert!(is_passive_refusal(
            "unavailable: passive broker (pair backup): …"
        ));
        assert!(!is_passive_refusal("unavailable: draining"));
        assert!(!is_passive_refusal("forbidden: passive broker"));
    }

    #[test]
    fn one_broker_never_moves() {
        let mut b = Brokers::new("tcp://a:1", None).unwrap();
        b.next(Why::Silent);
        assert_eq!(b.backend(), "tcp://a:1");
        assert!(!b.is_pair());
    }

    #[test]
    fn events_endpoints_must_match_the_brokers() {
        assert!(Brokers::new("tcp://a:1,tcp://b:1", Some("tcp://a:2")).is_err());
        assert!(Brokers::new(" , ", None).is_err());
    }
}
