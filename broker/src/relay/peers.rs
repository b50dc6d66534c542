//! Subscriber connections on the XPUB socket: which connection sent a subscription
//! message, and when a connection has ended, so its subscriptions can be released.
//!
//! libzmq names neither in its XPUB API. It does attach its connection's file descriptor
//! to every message read from a tcp:// or ipc:// peer (the private `__fd` property), and a
//! socket monitor reports ACCEPTED and DISCONNECTED with the same descriptor. An fd is
//! unique among live connections but reused after a close, and the monitor and the XPUB
//! are separate queues, so a departure is applied a little late (see [`Departures`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::subscriptions::Peer;

/// Monitor events the relay asks for.
pub const MONITORED: i32 =
    zmq::SocketEvent::ACCEPTED as i32 | zmq::SocketEvent::DISCONNECTED as i32;

/// How long a departure waits before it is applied when no new connection reuses the fd:
/// libzmq flushes a connection's last messages just after reporting its disconnect.
pub const DEPARTURE_GRACE: Duration = Duration::from_millis(100);

/// Most departures waiting to be applied; beyond it the oldest is applied at once.
const MAX_PENDING: usize = 65_536;

/// The connection a message read from the XPUB came from, if libzmq said.
pub fn peer_of(msg: &mut zmq::Message) -> Option<Peer> {
    msg.gets("__fd")?.parse().ok().map(Peer)
}

/// A connection event from the XPUB's monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnEvent {
    /// A subscriber connected on this fd.
    Accepted(Peer),
    /// The connection on this fd ended.
    Disconnected(Peer),
}

/// Parses a monitor message's first frame (event number u16, value u32, native endian).
pub fn parse_event(frame: &[u8]) -> Option<ConnEvent> {
    let event = u16::from_ne_bytes(frame.get(0..2)?.try_into().ok()?);
    let value = i32::from_ne_bytes(frame.get(2..6)?.try_into().ok()?);
    let peer = Peer(value);
    match zmq::SocketEvent::from_raw(event) {
        zmq::SocketEvent::ACCEPTED => Some(ConnEvent::Accepted(peer)),
        zmq::SocketEvent::DISCONNECTED => Some(ConnEvent::Disconnected(peer)),
        _ => None,
    }
}

#[derive(Debug)]
struct Departure {
    peer: Peer,
    at: Instant,
    /// A new connection got the same fd: the old one's messages are all visible by now.
    superseded: bool,
}

/// Disconnects waiting to be applied. A departure is due once a new connection reuses
/// its fd (libzmq has then flushed everything the old one sent) or after
/// [`DEPARTURE_GRACE`]; applying it earlier would let the old connection's last
/// subscriptions, read later, be kept for a connection that is gone.
#[derive(Debug, Default)]
pub struct Departures {
    pending: VecDeque<Departure>,
}

impl Departures {
    /// Records a monitor event.
    pub fn on_event(&mut self, event: ConnEvent, now: Instant) {
        match event {
            ConnEvent::Disconnected(peer) => self.pending.push_back(Departure {
                peer,
                at: now,
                superseded: false,
            }),
            ConnEvent::Accepted(peer) => {
                for d in self.pending.iter_mut().filter(|d| d.peer == peer) {
                    d.superseded = true;
                }
            }
        }
    }

    /// Takes the departures due at `now`, oldest first.
    pub fn due(&mut self, now: Instant) -> Vec<Peer> {
        let mut due = Vec::new();
        while self.pending.len() > MAX_PENDING {
            if let Some(d) = self.pending.pop_front() {
                due.push(d.peer);
            }
        }
        self.pending.retain(|d| {
            let ready = d.superseded || now.duration_since(d.at) >= DEPARTURE_GRACE;
            if ready {
                due.push(d.peer);
            }
            !ready
        });
        due
    }

    /// True when none is waiting.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(event: zmq::SocketEvent, value: i32) -> Vec<u8> {
        let mut f = (event as u16).to_ne_bytes().to_vec();
        f.extend_from_slice(&value.to_ne_bytes());
        f
    }

    #[test]
    fn monitor_frames_parse_and_short_or_other_ones_do_not() {
        assert_eq!(
            parse_event(&frame(zmq::SocketEvent::DISCONNECTED, 12)),
            Some(ConnEvent::Disconnected(Peer(12)))
        );
        assert_eq!(
            parse_event(&frame(zmq::SocketEvent::ACCEPTED, 3)),
            Some(ConnEvent::Accepted(Peer(3)))
        );
        assert_eq!(parse_event(&frame(zmq::SocketEvent::LISTENING, 3)), None);
        assert_eq!(parse_event(&[1, 0, 0]), None);
        assert_eq!(parse_event(&[]), None);
    }

    #[test]
    fn a_departure_is_due_after_the_grace_or_when_its_fd_is_reused() {
        let t0 = Instant::now();
        let mut d = Departures::default();
        d.on_event(ConnEvent::Disconnected(Peer(5)), t0);
        d.on_event(ConnEvent::Disconnected(Peer(6)), t0);
        assert!(d.due(t0).is_empty());
        d.on_event(ConnEvent::Accepted(Peer(6)), t0);
        assert_eq!(d.due(t0), vec![Peer(6)]);
        assert_eq!(d.due(t0 + DEPARTURE_GRACE), vec![Peer(5)]);
        assert!(d.is_empty());
    }
}
