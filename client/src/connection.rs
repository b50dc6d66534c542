//! The client's connection: the DEALER to the broker's frontend (one per endpoint of a
//! broker pair, with its monitor), the calls in flight matched to replies by request id,
//! their timeouts and the re-sends of idempotent calls that got no answer (e.g. lost in a
//! broker restart). Whoever drives it — the connection thread or a caller's own thread
//! (`driver.rs`) — runs the same [`Connection::round`]; it sends to one broker at a time
//! and follows the active one as `failover.rs` decides.

use std::io::Read;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use rustc_hash::FxHashMap;
use tradeplex_proto::client::{self as cp, RequestHeader};
use tradeplex_proto::{ErrorCode, RequestId};

use crate::answer::Done;
use crate::failover::{self, Failover, Health, Why};
use crate::{ClientError, Reply};

/// What a handle hands over to be sent.
pub(crate) struct Call {
    pub header: RequestHeader,
    pub body: Vec<u8>,
    pub deadline: Instant,
    /// The call's time to live (for the error that says it ran out).
    pub timeout: Duration,
    pub retry_every: Option<Duration>,
    pub done: Done,
}

struct Pending {
    call: Call,
    /// When to send again: an unsent call retries soon; an idempotent one after
    /// `retry_every` without an answer.
    next_send: Option<Instant>,
    /// Whether any copy reached the socket. A call never sent was never delivered, so it
    /// ends `unavailable` rather than `timeout` (outcome unknown).
    sent: bool,
    /// The endpoint (link) the latest copy went to.
    at: usize,
}

impl Pending {
    fn new(call: Call) -> Pending {
        Pending {
            call,
            next_send: None,
            sent: false,
            at: 0,
        }
    }

    /// Notes a send to link `at` (or its failure) and schedules the next attempt.
    fn mark(&mut self, sent: bool, at: usize, now: Instant) {
        if sent {
            self.sent = true;
            self.at = at;
            self.next_send = self.call.retry_every.map(|d| now + d);
        } else {
            self.next_send = Some(now + UNSENT_RETRY);
        }
    }
}

/// How soon a call the socket would not take (no connection to the broker) is tried again.
const UNSENT_RETRY: Duration = Duration::from_millis(20);

/// Extra wait past the request's deadline for the broker's own `deadline_exceeded`
/// answer, so a request that was never delivered is reported as such, not as a timeout.
const ANSWER_SLACK: Duration = Duration::from_millis(250);
/// Longest wait in one round: a missed wake-up (or a dropped client) costs at most this.
pub(crate) const MAX_POLL: Duration = Duration::from_millis(50);

/// How often pending calls are scanned for timeouts and re-sends at most.
const TIMER_PERIOD: Duration = Duration::from_millis(2);

/// One broker endpoint: the DEALER to its frontend and the DEALER's monitor, which tells
/// whether the connection is up, lost or refused.
pub(crate) struct Link {
    /// DEALER connected to the endpoint.
    pub dealer: zmq::Socket,
    /// PAIR connected to the DEALER's monitor endpoint.
    pub monitor: zmq::Socket,
    /// A fresh inproc endpoint the monitor is re-pointed at, with no events, on drop.
    pub monitor_off: String,
    /// The broker has sent a BATCH on this connection, so it reads them: calls sent
    /// together may go in one. Forgotten when the connection drops (the next broker on
    /// the endpoint may be an older one, which would refuse a BATCH whole).
    pub reads_batches: bool,
}

impl Drop for Link {
    /// Turns the monitor off before the DEALER and the monitor's reader close (in that
    /// order, the fields' order): libzmq (4.3.4) sends monitor events with a blocking send
    /// from its I/O thread, so an event of the closing DEALER (a reconnect retried) with
    /// the reader gone would block that thread for good — and the context's termination
    /// with it. Re-monitoring with no events stops the old monitor under libzmq's lock.
    fn drop(&mut self) {
        let _ = self.dealer.monitor(&self.monitor_off, 0);
    }
}

/// How one round ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Round {
    /// Handles remain (or calls are queued).
    Open,
    /// Every handle is gone and nothing is queued.
    Closed,
    /// Polling failed (the context is gone): nothing more can be sent or received.
    Failed,
}

pub(crate) struct Connection {
    /// One per endpoint, in the order given (first = primary).
    links: Vec<Link>,
    /// Which link requests go to, and the health of each.
    failover: Failover,
    /// Fail unsent calls at once while every broker refuses connections.
    fail_fast: bool,
    /// Calls handed over by handles (shared with them through the driver).
    calls: Receiver<Call>,
    /// Earliest time a pending call needs attention (timeout or re-send), cached so the
    /// loop does not walk every pending call on every message.
    next_due: Option<Instant>,
    last_scan: Instant,
    /// Keyed by our own request ids (no untrusted keys), so a fast unkeyed hash.
    pending: FxHashMap<RequestId, Pending>,
    max_body: usize,
    /// Reused per message: each request as it is sent, the frames of each reply.
    head: Vec<u8>,
    frames: Frames,
    /// Reused per batch of calls sent together.
    batch: tradeplex_proto::batch::BatchBuilder,
}

impl Connection {
    pub fn new(
        links: Vec<Link>,
        failover: Failover,
        fail_fast: bool,
        calls: Receiver<Call>,
        max_body: usize,
    ) -> Connection {
        Connection {
            links,
            failover,
            fail_fast,
            calls,
            next_due: None,
            last_scan: Instant::now(),
            pending: FxHashMap::default(),
            max_body,
            head: Vec::with_capacity(128),
            frames: Frames::default(),
            batch: Default::default(),
        }
    }

    /// Whether no call is in flight (answered, timed out or never started).
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }

    /// One turn: waits (at most `cap`, and never past the next timer) for a reply, a
    /// monitor event or a byte on `wake`, then sends what handles queued, reads what
    /// arrived and fires due timers. `wake` is drained when readable; `on_wake` runs
    /// just before (a direct caller re-arms its signal there).
    pub fn round(&mut self, wake: &UnixStream, cap: Duration, on_wake: impl FnOnce()) -> Round {
        let timeout = self.next_due.map_or(cap, |t| {
            t.saturating_duration_since(Instant::now()).min(cap)
        });
        let wait_ms = if self.calls.is_empty() {
            timeout.as_micros().div_ceil(1000) as i64
        } else {
            0
        };
        let ready = match poll_links(&self.links, wake, wait_ms) {
            Ok(r) => r,
            Err(zmq::Error::EINTR) => Ready::default(),
            Err(e) => {
                tracing::error!(error = %e, "client poll failed");
                return Round::Failed;
            }
        };
        if ready.wake {
            on_wake();
            drain(wake);
        }
        let open = self.take_calls();
        // Replies before monitor events: an answer that arrived before its broker's
        // connection dropped settles its call, it is not counted lost.
        for i in bits(ready.dealers) {
            self.read_replies(i);
        }
        for i in bits(ready.monitors) {
            self.read_monitor(i);
        }
        let now = Instant::now();
        if self.next_due.is_some_and(|t| now >= t) || now >= self.last_scan + TIMER_PERIOD {
            self.fire_timers();
        }
        if open {
            Round::Open
        } else {
            Round::Closed
        }
    }

    /// Ends every call in flight `closed` (the client is shutting down or cannot poll).
    pub fn close(&mut self) {
        for (_, p) in self.pending.drain() {
            p.call.done.send(Err(ClientError::Closed));
        }
    }

    /// Sends every queued call (those queued together in BATCHes, to a broker that reads
    /// them); false once every handle is gone.
    fn take_calls(&mut self) -> bool {
        let mut queued = Vec::new();
        let open = loop {
            match self.calls.try_recv() {
                Ok(call) => queued.push(call),
                Err(TryRecvError::Empty) => break true,
                Err(TryRecvError::Disconnected) => break false,
            }
        };
        self.start_many(queued);
        open
    }

    /// Sends `call` (or schedules its first attempt) and keeps it until it is answered.
    pub fn start(&mut self, call: Call) {
        self.failover.ensure_usable();
        let mut p = Pending::new(call);
        self.try_send(&mut p, Instant::now());
        self.keep(p);
    }

    /// [`Connection::start`] for several calls at once, in order: to a broker that reads
    /// BATCH they leave in as few messages as the batch limits allow (each message is
    /// taken by the socket whole or not at all, so a call is sent once or retried alone).
    pub fn start_many(&mut self, calls: Vec<Call>) {
        self.failover.ensure_usable();
        let at = self.failover.current();
        let batching = self.links.get(at).is_some_and(|l| l.reads_batches);
        if calls.len() < 2 || !batching {
            calls.into_iter().for_each(|c| self.start(c));
            return;
        }
        let now = Instant::now();
        let mut group = Vec::new();
        for call in calls {
            let p = Pending::new(call);
            self.encode_head(&p);
            let size = 4 + self.head.len() + p.call.body.len();
            let full = !self.batch.has_room()
                || self.batch.body_len() + size > tradeplex_proto::batch::MAX_BATCH_BYTES;
            if full && !group.is_empty() {
                self.send_group(&mut group, at, now);
                // Sending used `self.head`: this call's head again.
                self.encode_head(&p);
            }
            self.batch.push_encoded_parts(&self.head, &p.call.body);
            group.push(p);
        }
        self.send_group(&mut group, at, now);
    }

    /// `p`'s REQUEST head (protocol id, command, header) into `self.head`.
    fn encode_head(&mut self, p: &Pending) {
        self.head.clear();
        let request = cp::Command::Request as u8;
        cp::PROTOCOL.encode_head_into(&mut self.head, request, &p.call.header);
    }

    /// Sends the calls collected in `self.batch` (their [`Pending`]s in `group`) to link
    /// `at` as one BATCH (one alone as itself), and keeps them.
    fn send_group(&mut self, group: &mut Vec<Pending>, at: usize, now: Instant) {
        if group.len() == 1 {
            self.reset_batch();
            group.drain(..).for_each(|mut p| {
                self.try_send(&mut p, now);
                self.keep(p);
            });
            return;
        }
        self.head.clear();
        self.batch
            .head_into(&cp::PROTOCOL, cp::Command::Batch as u8, &mut self.head);
        self.head.extend_from_slice(self.batch.body());
        self.reset_batch();
        let sent = self
            .links
            .get(at)
            .is_some_and(|l| send_message(&l.dealer, &self.head, || group.len().to_string()));
        for mut p in group.drain(..) {
            p.mark(sent, at, now);
            self.keep(p);
        }
    }

    /// Empties the batch buffer, keeping at most a batch's worth of memory (whatever was
    /// collected: one large call alone, say).
    fn reset_batch(&mut self) {
        self.batch.clear();
        self.batch
            .shrink_to(tradeplex_proto::batch::MAX_BATCH_BYTES);
    }

    /// Keeps a call just sent (or not) until it is answered; a call that could not be
    /// sent while every broker refuses connections ends at once with `fail_fast`.
    fn keep(&mut self, p: Pending) {
        if !p.sent && self.fail_fast && self.failover.all_refused() {
            p.call.done.send(Err(ClientError::Refused));
            return;
        }
        self.note_due(&p);
        self.pending.insert(p.call.header.id, p);
    }

    /// Sends without blocking and schedules the next attempt.
    fn try_send(&mut self, p: &mut Pending, now: Instant) {
        let at = self.failover.current();
        let head = &mut self.head;
        let sent = self
            .links
            .get(at)
            .is_some_and(|l| send_request(&l.dealer, &p.call, head));
        p.mark(sent, at, now);
    }

    /// Follows link `i`'s connection state. A pair's link in use that drops settles what
    /// was in flight there and moves on; with `fail_fast`, every broker refusing
    /// connections ends every call not sent yet `unavailable` (it never reached a socket).
    fn read_monitor(&mut self, i: usize) {
        let Some(link) = self.links.get(i) else {
            return;
        };
        let mut lost = false;
        let mut dropped = false;
        while let Ok(frames) = link.monitor.recv_multipart(zmq::DONTWAIT) {
            let event = frames
                .first()
                .and_then(|f| f.get(0..2))
                .and_then(|b| <[u8; 2]>::try_from(b).ok())
                .map(u16::from_le_bytes);
            let health = match event {
                Some(e) if e == zmq::SocketEvent::CONNECT_RETRIED.to_raw() => Health::Refused,
                Some(e) if e == zmq::SocketEvent::CONNECTED.to_raw() => Health::Up,
                Some(e) if e == zmq::SocketEvent::DISCONNECTED.to_raw() => {
                    dropped = true;
                    // One endpoint: a drop changes nothing until a reconnect is refused
                    // (a restarting broker), as it always has.
                    if !self.failover.is_pair() {
                        continue;
                    }
                    Health::Lost
                }
                _ => continue,
            };
            lost |= self.failover.set_health(i, health);
        }
        if dropped {
            if let Some(link) = self.links.get_mut(i) {
                link.reads_batches = false;
            }
        }
        // One endpoint: a refused reconnect (a broker exiting after its drain) leaves calls
        // in flight to their replies or deadlines, as it always has; only a pair moves on.
        if lost && self.failover.is_pair() {
            self.on_lost(i);
        }
        if self.fail_fast && self.failover.all_refused() {
            let unsent: Vec<RequestId> = self
                .pending
                .iter()
                .filter(|(_, p)| !p.sent)
                .map(|(id, _)| *id)
                .collect();
            for id in unsent {
                if let Some(p) = self.pending.remove(&id) {
                    p.call.done.send(Err(ClientError::Refused));
                }
            }
        }
    }

    /// The pair's broker in use at link `i` is gone: move to the next, re-send the
    /// idempotent calls in flight there and end the others `worker_lost` (the old broker
    /// may have delivered them: outcome unknown, never re-sent).
    fn on_lost(&mut self, i: usize) {
        self.read_replies(i);
        self.failover.switch(Why::Lost);
        let now = Instant::now();
        let lost: Vec<RequestId> = self
            .pending
            .iter()
            .filter(|(_, p)| p.sent && p.at == i)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            let Some(mut p) = self.pending.remove(&id) else {
                continue;
            };
            if p.call.header.idempotent {
                self.try_send(&mut p, now);
                self.pending.insert(id, p);
            } else {
                let broker = self.failover.endpoint(i).to_string();
                p.call.done.send(Err(ClientError::BrokerLost(broker)));
            }
        }
        self.next_due = self.pending.values().map(Self::due).min();
    }

    /// Link `i` answered `id` as a passive broker: that copy was not queued, so the call
    /// goes out again at the broker the client now uses, whatever its idempotency.
    fn on_passive_refusal(&mut self, i: usize, id: RequestId) {
        let now = Instant::now();
        self.failover.on_passive(i, now);
        let resend = self.failover.resend_at(now);
        let Some(p) = self.pending.get_mut(&id) else {
            return;
        };
        if p.at != i {
            return; // an older copy of an idempotent call; the newer one is elsewhere
        }
        if !p.call.header.idempotent {
            p.sent = false;
        }
        p.next_send = Some(resend);
        let due = Self::due(p);
        self.next_due = Some(self.next_due.map_or(due, |t| t.min(due)));
    }

    fn read_replies(&mut self, i: usize) {
        loop {
            let Some(link) = self.links.get(i) else {
                return;
            };
            match self.frames.recv(&link.dealer) {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!("message from broker with too many frames dropped");
                    continue;
                }
                Err(_) => return,
            }
            // Taken out while its answers are handled (that needs `self`), then put back:
            // its messages are reused for the next read.
            let frames = std::mem::take(&mut self.frames);
            let first = frames.get().first().map_or(&[][..], |f| &f[..]);
            match cp::decode_answer(frames.get()) {
                Ok((cp::Message::Batch(h), body_start)) => {
                    self.on_batch(i, h, first.get(body_start..).unwrap_or(&[]))
                }
                Ok((msg, body_start)) => {
                    self.on_answer(i, msg, first.get(body_start..).unwrap_or(&[]))
                }
                Err(e) => tracing::warn!(error = %e, "bad message from broker"),
            }
            self.frames = frames;
        }
    }

    /// A BATCH of answers: each handled as if it had come alone.
    fn on_batch(&mut self, i: usize, h: tradeplex_proto::batch::BatchHeader, body: &[u8]) {
        if let Some(link) = self.links.get_mut(i) {
            link.reads_batches = true;
        }
        for item in tradeplex_proto::batch::items(body, h.count) {
            let message = match item {
                Ok(range) => body.get(range).unwrap_or(&[]),
                Err(e) => {
                    tracing::warn!(error = %e, "bad batch from broker");
                    return;
                }
            };
            match cp::decode(&[message]) {
                Ok((cp::Message::Batch(_), _)) => {
                    tracing::warn!("a batch inside a batch from broker")
                }
                Ok((msg, at)) => self.on_answer(i, msg, message.get(at..).unwrap_or(&[])),
                Err(e) => tracing::warn!(error = %e, "bad message in a batch from broker"),
            }
        }
    }

    /// A REPLY or ERROR from the broker on link `i`, with its body.
    fn on_answer(&mut self, i: usize, msg: cp::Message, body: &[u8]) {
        match msg {
            cp::Message::Reply(h) => {
                let result = if body.len() > self.max_body {
                    Err(ClientError::Decode(format!(
                        "reply body {} bytes over limit",
                        body.len()
                    )))
                } else {
                    Ok(Reply {
                        body: body.to_vec(),
                        worker: h.worker,
                    })
                };
                self.answer(h.id, result);
            }
            cp::Message::Error(h)
                if self.failover.is_pair() && failover::is_passive_refusal(h.code, &h.message) =>
            {
                self.on_passive_refusal(i, h.id);
            }
            cp::Message::Error(h)
                if h.code == ErrorCode::UnsupportedVersion.as_u16()
                    && !self.pending.contains_key(&h.id) =>
            {
                // An older (version-02) broker cannot read a request's id, so its
                // refusal names id 0 and no call: the calls time out; say why here.
                tracing::error!(message = %h.message, "broker refused this client's protocol version");
            }
            cp::Message::Error(h)
                if h.id == RequestId(0)
                    && h.message.starts_with("clients may only send REQUEST") =>
            {
                // A broker older than the client's BATCH (restarted in place on the
                // endpoint) refused one whole: none of its calls were served, they time
                // out; send one at a time from now on.
                tracing::error!(message = %h.message, "broker refused a BATCH of requests");
                if let Some(link) = self.links.get_mut(i) {
                    link.reads_batches = false;
                }
            }
            cp::Message::Error(h) => {
                let err = ClientError::Remote {
                    code: ErrorCode::from_u16(h.code),
                    name: h.name,
                    message: h.message,
                    worker: h.worker,
                };
                self.answer(h.id, Err(err));
            }
            cp::Message::Request(_) => tracing::warn!("broker sent a REQUEST to a client"),
            cp::Message::Batch(_) => tracing::warn!("unexpected batch from broker"),
        }
    }

    /// Delivers an answer; repeats (a retried call answered twice) are dropped.
    fn answer(&mut self, id: RequestId, result: Result<Reply, ClientError>) {
        if let Some(p) = self.pending.remove(&id) {
            p.call.done.send(result);
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
        if !due.is_empty() {
            self.failover.ensure_usable();
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
                let ms = p.call.timeout.as_millis() as u64;
                let err = if p.sent {
                    ClientError::Timeout(ms)
                } else {
                    ClientError::NotSent(ms)
                };
                p.call.done.send(Err(err));
            }
        }
        self.next_due = self.pending.values().map(Self::due).min();
    }
}

/// What a poll found ready: the wake-up socket, and per link (bit `i`) its DEALER and its
/// monitor.
#[derive(Default)]
struct Ready {
    wake: bool,
    dealers: u8,
    monitors: u8,
}

impl Ready {
    /// Reads a poll set laid out as `[wake, dealer0, monitor0, dealer1, monitor1, …]`.
    fn of(items: &[zmq::PollItem]) -> Ready {
        let mut r = Ready {
            wake: items.first().is_some_and(|w| w.is_readable()),
            ..Ready::default()
        };
        for (i, pair) in items.get(1..).unwrap_or_default().chunks(2).enumerate() {
            let bit = 1u8 << (i % failover::MAX_ENDPOINTS);
            if pair.first().is_some_and(|d| d.is_readable()) {
                r.dealers |= bit;
            }
            if pair.get(1).is_some_and(|m| m.is_readable()) {
                r.monitors |= bit;
            }
        }
        r
    }
}

/// The set bits of `mask`, lowest first.
fn bits(mask: u8) -> impl Iterator<Item = usize> {
    (0..failover::MAX_ENDPOINTS).filter(move |i| mask & (1 << i) != 0)
}

/// Reads every byte waiting on a (non-blocking) wake-up socket.
pub(crate) fn drain(wake: &UnixStream) {
    let mut buf = [0u8; 256];
    let mut r = wake;
    while matches!(r.read(&mut buf), Ok(n) if n > 0) {}
}

/// Polls the wake-up socket and every link. One or two links (one broker, a pair) poll a
/// set on the stack, so the loop allocates nothing per turn.
fn poll_links(links: &[Link], wake: &UnixStream, wait_ms: i64) -> zmq::Result<Ready> {
    let wake = zmq::PollItem::from_fd(wake.as_raw_fd(), zmq::POLLIN);
    match links {
        [a] => {
            let [d, m] = items(a);
            let mut set = [wake, d, m];
            zmq::poll(&mut set, wait_ms)?;
            Ok(Ready::of(&set))
        }
        [a, b] => {
            let ([d0, m0], [d1, m1]) = (items(a), items(b));
            let mut set = [wake, d0, m0, d1, m1];
            zmq::poll(&mut set, wait_ms)?;
            Ok(Ready::of(&set))
        }
        _ => {
            let mut set: Vec<zmq::PollItem> = std::iter::once(wake)
                .chain(links.iter().flat_map(items))
                .collect();
            zmq::poll(&mut set, wait_ms)?;
            Ok(Ready::of(&set))
        }
    }
}

/// A link's DEALER and monitor as poll items.
fn items(l: &Link) -> [zmq::PollItem<'_>; 2] {
    [
        l.dealer.as_poll_item(zmq::POLLIN),
        l.monitor.as_poll_item(zmq::POLLIN),
    ]
}

/// Sends a request without blocking (the whole message encoded into `buf`); false when
/// the socket would block (no broker connection, or its queue is full). Whoever drives
/// the connection must never block.
fn send_request(dealer: &zmq::Socket, call: &Call, buf: &mut Vec<u8>) -> bool {
    cp::encode_into(buf, cp::Command::Request, &call.header, &call.body);
    send_message(dealer, buf, || call.header.id.to_string())
}

/// Sends one encoded message without blocking; false when the socket would not take it
/// (logged unless it would block; `what` names it in the log line).
fn send_message(dealer: &zmq::Socket, message: &[u8], what: impl Fn() -> String) -> bool {
    match uninterrupted(|| dealer.send(message, zmq::DONTWAIT)) {
        Ok(()) => true,
        Err(zmq::Error::EAGAIN) => false,
        Err(e) => {
            tracing::warn!(error = %e, request = what(), "request not sent");
            false
        }
    }
}

/// Runs a libzmq call again while a signal interrupts it (EINTR): a strategy's own signal
/// handler (SIGINT to stop, say) can land inside any socket call, and an interrupted call
/// did nothing, so running it again is exact. (The processes' loops use
/// `tradeplex_ops::uninterrupted`, which a client library does not pull in.)
fn uninterrupted<T>(mut call: impl FnMut() -> zmq::Result<T>) -> zmq::Result<T> {
    loop {
        match call() {
            Err(zmq::Error::EINTR) => continue,
            done => return done,
        }
    }
}

/// The frames of one received message, in ZeroMQ messages reused from one message to the
/// next (no allocation of ours per reply). A message of more frames than any command has
/// is read to its end and dropped.
#[derive(Default)]
struct Frames {
    msgs: Vec<zmq::Message>,
    len: usize,
}

impl Frames {
    /// The most frames kept of one message (a client-protocol message has one, an old
    /// broker's refusal two; a third is kept so the decoder names the error).
    const MAX: usize = 3;

    /// Receives the next message without blocking: Ok(false) if it had too many frames,
    /// Err when none is waiting (or the socket failed).
    fn recv(&mut self, socket: &zmq::Socket) -> zmq::Result<bool> {
        self.len = 0;
        loop {
            if self.msgs.len() <= self.len.min(Self::MAX) {
                self.msgs.push(zmq::Message::new());
            }
            let slot = self.len.min(Self::MAX);
            let Some(msg) = self.msgs.get_mut(slot) else {
                return Err(zmq::Error::EFAULT);
            };
            uninterrupted(|| socket.recv(msg, zmq::DONTWAIT))?;
            self.len += 1;
            if !msg.get_more() {
                return Ok(self.len <= Self::MAX);
            }
        }
    }

    /// The frames received last.
    fn get(&self) -> &[zmq::Message] {
        self.msgs.get(..self.len).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::Frames;

    #[test]
    fn frames_are_reused_and_an_overlong_message_is_read_to_its_end_and_refused() {
        let ctx = zmq::Context::new();
        let (a, b) = (
            ctx.socket(zmq::PAIR).unwrap(),
            ctx.socket(zmq::PAIR).unwrap(),
        );
        a.bind("inproc://frames").unwrap();
        b.connect("inproc://frames").unwrap();
        let mut frames = Frames::default();
        a.send_multipart(["1", "2", "3", "4", "5"], 0).unwrap();
        a.send_multipart(["head", "body"], 0).unwrap();
        a.send("alone", 0).unwrap();
        assert_eq!(frames.recv(&b), Ok(false));
        assert_eq!(frames.recv(&b), Ok(true));
        let got: Vec<&[u8]> = frames.get().iter().map(|m| &m[..]).collect();
        assert_eq!(got, [&b"head"[..], b"body"]);
        assert_eq!(frames.recv(&b), Ok(true));
        assert_eq!(frames.get().len(), 1);
        assert_eq!(frames.recv(&b), Err(zmq::Error::EAGAIN));
        assert!(frames.msgs.len() <= Frames::MAX + 1);
    }
}
