//! Following the active broker of a pair (Binary Star): the ordered endpoint list, which
//! one the client uses, what the sockets' monitors say of each, and when to move on. The
//! connection thread owns the sockets and asks this plain state what to do; with one
//! endpoint it never switches, so a single broker behaves exactly as before.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tradeplex_proto::ErrorCode;

/// Most endpoints in one list (a pair needs two; the bound keeps every per-endpoint
/// table small and the poll set fixed).
pub const MAX_ENDPOINTS: usize = 8;

/// How a passive broker's refusal begins: the request was not queued there, so it may be
/// sent to the other broker whatever its idempotency.
pub const PASSIVE_PREFIX: &str = "passive broker";

/// A passive broker that refused a request is asked again no sooner than this (while
/// both brokers of a pair are passive, i.e. the takeover window has not yet passed).
pub(crate) const PASSIVE_BACKOFF: Duration = Duration::from_millis(50);

/// Why an endpoint list was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointsError {
    /// Nothing but commas and blanks.
    #[error("no endpoint given")]
    Empty,
    /// More than [`MAX_ENDPOINTS`].
    #[error("{0} endpoints given, at most {MAX_ENDPOINTS}")]
    TooMany(usize),
    /// The same endpoint twice.
    #[error("endpoint {0} is listed twice")]
    Repeated(String),
}

/// Splits `tcp://h1:5555,tcp://h2:5555` into its endpoints, in order (first = primary);
/// one endpoint is a list of one. Blanks around commas are ignored.
pub fn split_endpoints(list: &str) -> Result<Vec<String>, EndpointsError> {
    let eps: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if eps.is_empty() {
        return Err(EndpointsError::Empty);
    }
    if eps.len() > MAX_ENDPOINTS {
        return Err(EndpointsError::TooMany(eps.len()));
    }
    for (i, e) in eps.iter().enumerate() {
        if eps[..i].contains(e) {
            return Err(EndpointsError::Repeated(e.clone()));
        }
    }
    Ok(eps)
}

/// Whether an ERROR is a passive broker's refusal (`unavailable`, `passive broker…`).
pub fn is_passive_refusal(code: u16, message: &str) -> bool {
    code == ErrorCode::Unavailable as u16 && message.starts_with(PASSIVE_PREFIX)
}

/// What a socket monitor last said about one endpoint's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    /// Nothing yet (connecting).
    Unknown,
    /// Connected.
    Up,
    /// The connection dropped (or its heartbeats expired).
    Lost,
    /// The last connection attempt failed (refused, no route).
    Refused,
}

impl Health {
    fn usable(self) -> bool {
        matches!(self, Health::Unknown | Health::Up)
    }
}

/// Why the client moved to another broker (the warn line says it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// A passive broker refused a request.
    Passive,
    /// The connection to the broker dropped or could not be made.
    Lost,
}

impl Why {
    fn text(self) -> &'static str {
        match self {
            Why::Passive => "passive broker refused a request",
            Why::Lost => "connection to the broker lost",
        }
    }
}

/// Counters shared with the handles ([`crate::Client::stats`]).
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub switches: AtomicU64,
    pub current: AtomicUsize,
}

/// The endpoint in use and the health of each.
pub(crate) struct Failover {
    endpoints: Vec<String>,
    health: Vec<Health>,
    /// When each endpoint last refused as passive.
    refused_at: Vec<Option<Instant>>,
    current: usize,
    shared: Arc<Shared>,
}

impl Failover {
    pub fn new(endpoints: Vec<String>, shared: Arc<Shared>) -> Failover {
        let n = endpoints.len();
        Failover {
            endpoints,
            health: vec![Health::Unknown; n],
            refused_at: vec![None; n],
            current: 0,
            shared,
        }
    }

    /// The endpoint requests go to.
    pub fn current(&self) -> usize {
        self.current
    }

    /// More than one endpoint: the pair rules apply.
    pub fn is_pair(&self) -> bool {
        self.endpoints.len() > 1
    }

    pub fn endpoint(&self, i: usize) -> &str {
        self.endpoints.get(i).map_or("?", String::as_str)
    }

    pub fn health(&self, i: usize) -> Health {
        self.health.get(i).copied().unwrap_or(Health::Lost)
    }

    /// Every endpoint's last connection attempt failed.
    pub fn all_refused(&self) -> bool {
        self.health.iter().all(|h| *h == Health::Refused)
    }

    /// Records a monitor event; true when the endpoint in use has just become unusable
    /// (the caller then settles what was in flight there and switches).
    pub fn set_health(&mut self, i: usize, h: Health) -> bool {
        let Some(slot) = self.health.get_mut(i) else {
            return false;
        };
        let was = *slot;
        *slot = h;
        was.usable() && !h.usable() && i == self.current
    }

    /// A passive refusal came from endpoint `i`; moves on if that is the one in use.
    pub fn on_passive(&mut self, i: usize, now: Instant) {
        if let Some(t) = self.refused_at.get_mut(i) {
            *t = Some(now);
        }
        if i == self.current {
            self.switch(Why::Passive);
        }
    }

    /// When a request refused as passive may go out again: at once to a broker that has
    /// not just refused, else after [`PASSIVE_BACKOFF`].
    pub fn resend_at(&self, now: Instant) -> Instant {
        self.refused_at
            .get(self.current)
            .copied()
            .flatten()
            .map_or(now, |t| (t + PASSIVE_BACKOFF).max(now))
    }

    /// Moves to the next usable endpoint (wrapping), if there is one other than the
    /// current; logs one warn line and counts the switch.
    pub fn switch(&mut self, why: Why) -> bool {
        let n = self.endpoints.len();
        let Some(next) = (1..n)
            .map(|k| (self.current + k) % n)
            .find(|&i| self.health(i).usable())
        else {
            return false;
        };
        tracing::warn!(
            from = %self.endpoint(self.current),
            to = %self.endpoint(next),
            why = why.text(),
            "switching broker"
        );
        self.current = next;
        self.shared.switches.fetch_add(1, Ordering::Relaxed);
        self.shared.current.store(next, Ordering::Relaxed);
        true
    }

    /// Before sending: if the endpoint in use is unusable and another is not, move.
    pub fn ensure_usable(&mut self) {
        if self.is_pair() && !self.health(self.current).usable() {
            self.switch(Why::Lost);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> Failover {
        Failover::new(vec!["tcp://a:1".into(), "tcp://b:1".into()], Arc::default())
    }

    #[test]
    fn endpoint_lists_split_on_commas_and_are_checked() {
        assert_eq!(split_endpoints("tcp://a:1").unwrap(), vec!["tcp://a:1"]);
        assert_eq!(
            split_endpoints(" tcp://a:1 , tcp://b:1,").unwrap(),
            vec!["tcp://a:1", "tcp://b:1"]
        );
        assert_eq!(split_endpoints(" , "), Err(EndpointsError::Empty));
        assert!(matches!(
            split_endpoints("tcp://a:1,tcp://a:1"),
            Err(EndpointsError::Repeated(_))
        ));
        let many = (0..9)
            .map(|i| format!("tcp://h:1{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(split_endpoints(&many), Err(EndpointsError::TooMany(9)));
    }

    #[test]
    fn passive_refusals_are_told_from_other_unavailable_errors() {
        let u = ErrorCode::Unavailable as u16;
        assert!(is_passive_refusal(u, "passive broker (pair backup): …"));
        assert!(!is_passive_refusal(u, "worker is draining"));
        assert!(!is_passive_refusal(
            ErrorCode::WorkerLost as u16,
            "passive broker"
        ));
    }

    #[test]
    fn a_passive_refusal_moves_on_and_backs_off_when_both_refuse() {
        let mut f = pair();
        let t0 = Instant::now();
        f.on_passive(0, t0);
        assert_eq!(f.current(), 1);
        // b has not refused yet: re-send at once.
        assert_eq!(f.resend_at(t0), t0);
        f.on_passive(1, t0);
        assert_eq!(f.current(), 0);
        assert_eq!(f.resend_at(t0), t0 + PASSIVE_BACKOFF);
        // A late refusal from the broker not in use does not move the client.
        f.on_passive(1, t0);
        assert_eq!(f.current(), 0);
        assert_eq!(f.shared.switches.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_lost_connection_moves_to_a_usable_endpoint_only() {
        let mut f = pair();
        assert!(!f.set_health(0, Health::Up));
        assert!(!f.set_health(1, Health::Up));
        assert!(f.set_health(0, Health::Lost));
        assert!(f.switch(Why::Lost));
        assert_eq!(f.current(), 1);
        // The other is down too: stay.
        assert!(f.set_health(1, Health::Refused));
        assert!(!f.switch(Why::Lost));
        assert_eq!(f.current(), 1);
        assert!(!f.all_refused());
        f.set_health(0, Health::Refused);
        assert!(f.all_refused());
        // A passive refusal from the only live broker keeps the client there.
        f.set_health(1, Health::Up);
        f.on_passive(1, Instant::now());
        assert_eq!(f.current(), 1);
    }

    #[test]
    fn one_endpoint_never_switches() {
        let mut f = Failover::new(vec!["tcp://a:1".into()], Arc::default());
        f.set_health(0, Health::Lost);
        f.ensure_usable();
        f.on_passive(0, Instant::now());
        assert_eq!(f.current(), 0);
        assert_eq!(f.shared.switches.load(Ordering::Relaxed), 0);
    }
}
