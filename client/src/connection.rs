//! The client's connection thread: it alone owns the DEALER to the broker's frontend.
//! Handles hand it calls over a channel (and a wake-up byte on a socketpair it polls
//! beside the DEALER); it sends them, matches replies by request id, times calls out and
//! re-sends idempotent calls that got no answer (e.g. lost in a broker restart).

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use tradeplex_proto::client::{self as cp, RequestHeader};
use tradeplex_proto::{ErrorCode, RequestId};

use crate::{ClientError, Reply};

/// What a handle sends to the connection thread.
pub(crate) struct Call {
    pub header: RequestHeader,
    pub body: Vec<u8>,
    pub deadline: Instant,
    pub retry_every: Option<Duration>,
    pub done: Sender<Result<Reply, ClientError>>,
}

struct Pending {
    call: Call,
    /// When to send again: an unsent call retries soon; an idempotent one after
    /// `retry_every` without an answer.
    next_send: Option<Instant>,
    /// Whether any copy reached the socket. A call never sent was never delivered, so it
    /// ends `unavailable` rather than `timeout` (outcome unknown).
    sent: bool,
    timeout_ms: u64,
}

/// How soon a call the socket would not take (no connection to the broker) is tried again.
const UNSENT_RETRY: Duration = Duration::from_millis(20);

/// Extra wait past the request's deadline for the broker's own `deadline_exceeded`
/// answer, so a request that was never delivered is reported as such, not as a timeout.
const ANSWER_SLACK: Duration = Duration::from_millis(250);
const MAX_POLL: Duration = Duration::from_millis(50);

/// Set by the connection thread while it waits in poll; a handle that queues a call
/// writes a wake-up byte only then, so a busy connection costs no system call per call.
pub(crate) type Sleeping = std::sync::Arc<std::sync::atomic::AtomicBool>;

/// How often pending calls are scanned for timeouts and re-sends at most.
const TIMER_PERIOD: Duration = Duration::from_millis(2);

/// The DEALER's monitor: tells whether the last connection attempt was refused.
pub(crate) struct Monitor {
    /// PAIR connected to the DEALER's monitor endpoint.
    pub socket: zmq::Socket,
    /// Fail unsent calls at once while the broker refuses connections.
    pub fail_fast: bool,
}

pub(crate) struct Connection {
    dealer: zmq::Socket,
    monitor: Monitor,
    /// The last connection attempt was refused and none has succeeded since.
    refused: bool,
    calls: Receiver<Call>,
    wake: UnixStream,
    sleeping: Sleeping,
    /// Earliest time a pending call needs attention (timeout or re-send), cached so the
    /// loop does not walk every pending call on every message.
    next_due: Option<Instant>,
    last_scan: Instant,
    pending: HashMap<RequestId, Pending>,
    max_body: usize,
}

impl Connection {
    pub fn new(
        dealer: zmq::Socket,
        monitor: Monitor,
        calls: Receiver<Call>,
        wake: UnixStream,
        sleeping: Sleeping,
        max_body: usize,
    ) -> Connection {
        Connection {
            dealer,
            monitor,
            refused: false,
            calls,
            wake,
            sleeping,
            next_due: None,
            last_scan: Instant::now(),
            pending: HashMap::new(),
            max_body,
        }
    }

    /// Runs until every handle is dropped and nothing is pending.
    pub fn run(mut self) {
        let mut open = true;
        while open || !self.pending.is_empty() {
            let timeout = self.next_due.map_or(MAX_POLL, |t| {
                t.saturating_duration_since(Instant::now()).min(MAX_POLL)
            });
            // Announce the sleep, then look once more for calls queued meanwhile: a handle
            // that saw `sleeping` false relies on this look.
            self.sleeping.store(true, Ordering::SeqCst);
            let wait_ms = if self.calls.is_empty() {
                timeout.as_micros().div_ceil(1000) as i64
            } else {
                0
            };
            let mut items = [
                self.dealer.as_poll_item(zmq::POLLIN),
                zmq::PollItem::from_fd(self.wake.as_raw_fd(), zmq::POLLIN),
                self.monitor.socket.as_poll_item(zmq::POLLIN),
            ];
            let polled = zmq::poll(&mut items, wait_ms);
            self.sleeping.store(false, Ordering::SeqCst);
            if let Err(e) = polled {
                if e != zmq::Error::EINTR {
                    tracing::error!(error = %e, "client poll failed");
                    break;
                }
            }
            let (replies, woken) = (items[0].is_readable(), items[1].is_readable());
            if items[2].is_readable() {
                self.read_monitor();
            }
            if woken {
                let mut buf = [0u8; 256];
                while matches!(self.wake.read(&mut buf), Ok(n) if n > 0) {}
            }
            open = self.take_calls();
            if replies {
                self.read_replies();
            }
            let now = Instant::now();
            if self.next_due.is_some_and(|t| now >= t) || now >= self.last_scan + TIMER_PERIOD {
                self.fire_timers();
            }
        }
        for (_, p) in self.pending.drain() {
            let _ = p.call.done.send(Err(ClientError::Closed));
        }
    }

    /// Sends every queued call; false once every handle is gone.
    fn take_calls(&mut self) -> bool {
        loop {
            match self.calls.try_recv() {
                Ok(call) => self.start(call),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn start(&mut self, call: Call) {
        let id = call.header.id;
        let timeout_ms = call
            .header
            .deadline_ms
            .saturating_sub(tradeplex_proto::now_unix_ms());
        let mut p = Pending {
            call,
            next_send: None,
            sent: false,
            timeout_ms,
        };
        self.try_send(&mut p, Instant::now());
        if !p.sent && self.refused && self.monitor.fail_fast {
            let _ = p.call.done.send(Err(ClientError::Refused));
            return;
        }
        self.note_due(&p);
        self.pending.insert(id, p);
    }

    /// Sends without blocking and schedules the next attempt.
    fn try_send(&self, p: &mut Pending, now: Instant) {
        if send_request(&self.dealer, &p.call) {
            p.sent = true;
            p.next_send = p.call.retry_every.map(|d| now + d);
        } else {
            p.next_send = Some(now + UNSENT_RETRY);
        }
    }

    /// Follows the DEALER's connection state; with `fail_fast`, a refused attempt ends
    /// every call not sent yet `unavailable` (it never reached a socket).
    fn read_monitor(&mut self) {
        while let Ok(frames) = self.monitor.socket.recv_multipart(zmq::DONTWAIT) {
            let event = frames
                .first()
                .and_then(|f| f.get(0..2))
                .and_then(|b| <[u8; 2]>::try_from(b).ok())
                .map(u16::from_le_bytes);
            match event {
                Some(e) if e == zmq::SocketEvent::CONNECT_RETRIED.to_raw() => self.refused = true,
                Some(e) if e == zmq::SocketEvent::CONNECTED.to_raw() => self.refused = false,
                _ => {}
            }
        }
        if self.refused && self.monitor.fail_fast {
            let unsent: Vec<RequestId> = self
                .pending
                .iter()
                .filter(|(_, p)| !p.sent)
                .map(|(id, _)| *id)
                .collect();
            for id in unsent {
                if let Some(p) = self.pending.remove(&id) {
                    let _ = p.call.done.send(Err(ClientError::Refused));
                }
            }
        }
    }

    fn read_replies(&mut self) {
        loop {
            let frames = match self.dealer.recv_multipart(zmq::DONTWAIT) {
                Ok(f) => f,
                Err(_) => return,
            };
            match cp::decode(&frames) {
                Ok(cp::Message::Reply(h)) => {
                    let body = frames.into_iter().nth(1).unwrap_or_default();
                    let result = if body.len() > self.max_body {
                        Err(ClientError::Decode(format!(
                            "reply body {} bytes over limit",
                            body.len()
                        )))
                    } else {
                        Ok(Reply {
                            body,
                            worker: h.worker,
                        })
                    };
                    self.answer(h.id, result);
                }
                Ok(cp::Message::Error(h)) => {
                    let err = ClientError::Remote {
                        code: ErrorCode::from_u16(h.code),
                        name: h.name,
                        message: h.message,
                        worker: h.worker,
                    };
                    self.answer(h.id, Err(err));
                }
                Ok(cp::Message::Request(_)) => tracing::warn!("broker sent a REQUEST to a client"),
                Err(e) => tracing::warn!(error = %e, "bad message from broker"),
            }
        }
    }

    /// Delivers an answer; repeats (a retried call answered twice) are dropped.
    fn answer(&mut self, id: RequestId, result: Result<Reply, ClientError>) {
        if let Some(p) = self.pending.remove(&id) {
            let _ = p.call.done.send(result);
        }
    }

    /// When `p` next needs attention.
    fn due(p: &Pending) -> Instant {
        let end = p.call.deadline + ANSWER_SLACK;
        p.next_send.map_or(end, |r| r.min(end))
    }

    fn note_due(&mut self, p: &Pending) {
        let due = Self::due(p);
        self.next_due = Some(self.next_due.map_or(due, |t| t.min(due)));
    }

    /// Times out, re-sends, and recomputes the earliest due time (one walk of the calls).
    fn fire_timers(&mut self) {
        let now = Instant::now();
        self.last_scan = now;
        let mut expired = Vec::new();
        let mut due = Vec::new();
        for (id, p) in self.pending.iter() {
            if now >= p.call.deadline + ANSWER_SLACK || (!p.sent && now >= p.call.deadline) {
                expired.push(*id);
            } else if p.next_send.is_some_and(|at| now >= at) && now < p.call.deadline {
                due.push(*id);
            }
        }
        for id in due {
            if let Some(mut p) = self.pending.remove(&id) {
                if p.sent {
                    tracing::debug!(id = %id, "idempotent call re-sent after no answer");
                }
                self.try_send(&mut p, now);
                self.pending.insert(id, p);
            }
        }
        for id in expired {
            if let Some(p) = self.pending.remove(&id) {
                let err = if p.sent {
                    ClientError::Timeout(p.timeout_ms)
                } else {
                    ClientError::NotSent(p.timeout_ms)
                };
                let _ = p.call.done.send(Err(err));
            }
        }
        self.next_due = self.pending.values().map(Self::due).min();
    }
}

/// Sends a request without blocking; false when the socket would block (no broker
/// connection, or its queue is full). The connection thread must never block.
fn send_request(dealer: &zmq::Socket, call: &Call) -> bool {
    let head = cp::encode(cp::Command::Request, &call.header);
    // Only the first frame can refuse (EAGAIN); a multipart message is then queued whole.
    let r = dealer
        .send(head, zmq::SNDMORE | zmq::DONTWAIT)
        .and_then(|_| dealer.send(&call.body[..], zmq::DONTWAIT));
    match r {
        Ok(()) => true,
        Err(zmq::Error::EAGAIN) => false,
        Err(e) => {
            tracing::warn!(error = %e, id = %call.header.id, "request not sent");
            false
        }
    }
}
