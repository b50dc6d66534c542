"""`Client`: calls services through the broker's frontend (``TPXC03``, one frame a message).

ZeroMQ sockets are not thread-safe, so exactly one thread at a time owns the DEALER; the
owner changes only under a lock (whose acquire/release is the full memory barrier libzmq
asks for when a socket moves between threads). Two ways to call:

- **Direct** (`call` / `call_reply` while nothing else is in flight): the calling thread
  takes the socket, sends, and waits for its own answer on it — no hand-off to another
  thread and back (each costs a thread wake-up). If anything else happens meanwhile
  (another thread submits a call, `close()`, the socket will not take the request, or the
  call's first timer is due: an idempotent re-send or its timeout), the caller hands its
  call to the I/O thread, which does everything below, and waits there like any caller.
- **Through the I/O thread** (`call_async`, and sync calls while others are in flight):
  callers queue calls (a deque plus a wake-up byte); the background thread sends them,
  matches answers by request id (many calls in flight), times calls out, and re-sends
  idempotent calls that got no answer — which is how a broker restart is survived: the new
  broker never saw the request, so only a re-send gets it answered. Non-idempotent calls
  (orders) are never re-sent; without an answer they end ``timeout`` (outcome unknown).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import zmq

from . import failover, wire
from .curve import ClientCurve
from .errors import (
    BAD_REPLY,
    CLOSED,
    TIMEOUT,
    UNAVAILABLE,
    WORKER_LOST,
    CallError,
    ProtocolError,
)
from .failover import ConnectionWatch, Endpoints, Failover, is_passive_refusal
from .trading import TradingMixin
from .wakeup import Wakeup

log = logging.getLogger("tradeplex.client")

DEFAULT_BROKER = "tcp://127.0.0.1:5555"
DEFAULT_EVENTS = "tcp://127.0.0.1:5558"

#: Extra wait past the deadline for the broker's own ``deadline_exceeded``, so a request
#: that was never delivered is reported as such rather than as a timeout.
ANSWER_SLACK_S = 0.25
#: How soon a call the socket would not take (no broker connection yet) is tried again.
UNSENT_RETRY_S = 0.02
#: Longest poll, so a missed wake-up costs at most this much.
MAX_POLL_MS = 100

_SEND, _EXPIRE = 0, 1

# Who uses the DEALER: nobody (a caller may take it), the I/O thread, one direct caller;
# closed once the I/O thread has closed it.
_IDLE, _IO, _DIRECT, _CLOSED = 0, 1, 2, 3

# The first 7 bytes of a REPLY and of a REQUEST: protocol id and command byte.
_REPLY_ID = wire.CLIENT_PROTOCOL + bytes([wire.ClientCommand.REPLY])
_REQUEST_ID = wire.CLIENT_PROTOCOL + bytes([wire.ClientCommand.REQUEST])
_BATCH_ID = wire.CLIENT_PROTOCOL + bytes([wire.ClientCommand.BATCH])
_ID = len(_REPLY_ID)
_HEAD = wire.HEAD_PREFIX
_unpackb = msgpack.unpackb
# Plain ints: pyzmq's flag enums cost an enum operation per frame when or-ed.
_NOBLOCK = int(zmq.NOBLOCK)
_RCVMORE = int(zmq.RCVMORE)
#: Frames kept of one message; a longer one is drained and then rejected as malformed.
_MAX_FRAMES = 8


def _send_request(dealer: zmq.Socket[bytes], message: bytes) -> None:
    """Sends a request (one frame) without waiting (raises `zmq.Again` if the socket
    will not take it)."""
    dealer.send(message, _NOBLOCK)


def _recv_message(dealer: zmq.Socket[bytes]) -> list[bytes]:
    """One whole message, without waiting (raises `zmq.Again` if none is there)."""
    recv = dealer.recv
    parts = [recv(_NOBLOCK)]
    while dealer.getsockopt(_RCVMORE):
        part = recv(_NOBLOCK)
        if len(parts) < _MAX_FRAMES:
            parts.append(part)
    return parts


@dataclass(frozen=True)
class Reply:
    """A successful answer: the decoded body and the worker that served it."""

    body: Any
    worker: str | None


# --- the request header, pre-encoded ---------------------------------------------------

#: Cached header prefixes (service, idempotent) → bytes; cleared when it reaches this size.
_PREFIX_CACHE_MAX = 256
_prefixes: dict[tuple[str, bool, bool], bytes] = {}
_ID_KEY = wire.pack("id") + b"\xcf"  # "id": uint 64
_DEADLINE_KEY = wire.pack("deadline_ms") + b"\xcf"  # "deadline_ms": uint 64
_valid_services: set[str] = set()


def request_header(
    id: int,
    service: str,
    deadline_ms: int,
    idempotent: bool,
    target: str | None = None,
    affinity: str | None = None,
    client: str | None = None,
    batch: bool = False,
) -> bytes:
    """The header of a client REQUEST (its message's bytes after the 9-byte prefix, up
    to the body): the same MessagePack map as `wire.encode_request`.

    The common case (no target, no affinity) joins a cached prefix with the two numbers
    as fixed-width uint 64 (valid MessagePack; every decoder takes any integer width),
    instead of building and packing a dict per call.
    """
    if target is not None or affinity is not None or client is not None:
        head = wire.encode_request(
            id, service, deadline_ms, idempotent, target, affinity, client, batch=batch
        )
        return head[wire.HEAD_PREFIX :]
    prefix = _prefixes.get((service, idempotent, batch))
    if prefix is None:
        prefix = (
            (b"\x85" if batch else b"\x84")  # fixmap, 5 or 4 entries
            + wire.pack("service")
            + wire.pack(service)
            + wire.pack("idempotent")
            + wire.pack(idempotent)
            + (wire.pack("batch") + wire.pack(True) if batch else b"")
            + _ID_KEY
        )
        if len(_prefixes) >= _PREFIX_CACHE_MAX:
            _prefixes.clear()
        _prefixes[(service, idempotent, batch)] = prefix
    return prefix + id.to_bytes(8, "big") + _DEADLINE_KEY + deadline_ms.to_bytes(8, "big")


def _check_service(service: str) -> None:
    if service in _valid_services:
        return
    if not wire.valid_service(service):
        raise ValueError(f"invalid service name {service!r}")
    if len(_valid_services) >= _PREFIX_CACHE_MAX:
        _valid_services.clear()
    _valid_services.add(service)


# --- answers ---------------------------------------------------------------------------


def parse_answer(frames: list[bytes]) -> tuple[int, str | None, bytes, CallError | None]:
    """An answer's request id, worker, body and (for an ERROR) the error to raise.

    A well-formed REPLY is checked here directly (the hot path); anything else goes
    through `wire.decode_client_answer`, which raises `ProtocolError` on bad input.
    """
    if len(frames) == 1 and frames[0][:_ID] == _REPLY_ID:
        message = frames[0]
        end = _HEAD + int.from_bytes(message[_ID:_HEAD], "big")
        if len(message) >= _HEAD and end - _HEAD <= wire.MAX_HEADER_BYTES and end <= len(message):
            header = message[_HEAD:end]
            try:
                h = _unpackb(header, raw=False, strict_map_key=False)
            except Exception:
                h = None
            if type(h) is dict:
                id = h.get("id")
                worker = h.get("worker")
                if (
                    type(id) is int
                    and 0 <= id < 1 << 64
                    and (worker is None or type(worker) is str)
                ):
                    return id, worker, message[end:], None
    ans = wire.decode_client_answer(frames)
    if ans.ok:
        return ans.id, ans.worker, ans.body, None
    code = wire.ErrorCode.from_number(ans.code)
    name = code.wire_name if code else (ans.name or f"error_{ans.code}")
    return ans.id, ans.worker, b"", CallError(name, ans.message, ans.worker, ans.code)


def parse_answers(
    frames: list[bytes],
) -> tuple[list[tuple[int, str | None, bytes, CallError | None]], ProtocolError | None]:
    """The answers in a message (several in a BATCH, else one, see `parse_answer`), and
    what was wrong with the rest of it, if anything: the answers before a break in a
    BATCH, or a bad message inside one, still count."""
    if len(frames) != 1 or frames[0][:_ID] != _BATCH_ID:
        return [parse_answer(frames)], None
    _, header, body = wire.split_message(frames[0], wire.CLIENT_PROTOCOL)
    messages, broken = wire.batch_messages(wire.decode_header(header), body)
    answers = []
    bad = ProtocolError(broken) if broken is not None else None
    for m in messages:
        if m[:_ID] == _BATCH_ID:
            bad = ProtocolError("a batch inside a batch")
            continue
        try:
            answers.append(parse_answer([m]))
        except ProtocolError as e:
            bad = e
    return answers, bad


class _Pending:
    __slots__ = (
        "at",
        "deadline",
        "full",
        "future",
        "id",
        "message",
        "raw",
        "refusal",
        "retry_every",
        "sent",
        "sent_at",
        "timeout_ms",
    )

    def __init__(
        self,
        id: int,
        message: bytes,
        deadline: float,
        retry_every: float | None,
        future: Future[Any] | None,
        raw: bool,
        full: bool,
        timeout_ms: int,
    ) -> None:
        self.id = id
        #: The whole REQUEST, one frame, as it is (re-)sent.
        self.message = message
        self.deadline = deadline
        self.retry_every = retry_every
        #: None while a direct caller waits for it itself.
        self.future = future
        self.raw = raw
        self.full = full
        self.timeout_ms = timeout_ms
        self.sent = False
        self.sent_at = 0.0
        #: The endpoint (index) it was last sent to, with several brokers.
        self.at = 0
        #: The last passive broker's refusal, for the error if none takes it in time.
        self.refusal = ""


def _settle(future: Future[Any], result: Any = None, error: BaseException | None = None) -> None:
    # A caller may have cancelled the future; that must not break the I/O thread.
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


class _Connection:
    """The DEALER, who owns it, the pending calls and their timers.

    `pending` and `timers` belong to the socket's owner of the moment: the I/O thread in
    `_IO`, a direct caller handing its call over in `_DIRECT` (the I/O thread does not
    touch them then).

    With several broker endpoints (a pair) there is one DEALER per endpoint, each with a
    socket monitor (`ConnectionWatch`), all owned together; `dealer` is the current
    one, where calls are sent, and `failover` decides when it changes (tradeplex.failover).
    """

    def __init__(
        self, dealers: list[zmq.Socket[bytes]], endpoints: tuple[str, ...], max_body: int
    ) -> None:
        self.dealers = dealers
        self.dealer = dealers[0]
        self.index = 0
        self.failover: Failover | None = None
        self.watches: list[ConnectionWatch] = []
        #: The current DEALER's watch (None with one endpoint: nothing is watched).
        self.watch: ConnectionWatch | None = None
        if len(dealers) > 1:
            self.failover = Failover(endpoints)
            self.watches = [ConnectionWatch(d) for d in dealers]
            self.watch = self.watches[0]
        self.max_body = max_body
        #: Per DEALER: the broker there has sent a BATCH, so it reads them; calls queued
        #: together then leave together (docs/protocol.md, BATCH). Forgotten when the
        #: connection drops or a broker refuses a BATCH (an older one).
        self.reads_batches = [False] * len(dealers)
        self.mu = threading.Lock()
        self.mode = _IDLE
        self.stopping = False
        #: Calls waiting for the I/O thread.
        self.calls: collections.deque[_Pending] = collections.deque()
        #: Wakes the I/O thread (it polls the read end beside the DEALER).
        self.wakeup = Wakeup()
        #: Wakes a direct caller (it polls the read end beside the DEALER); at most one
        #: byte is written per direct call (`direct_signalled`).
        self.direct_wake = Wakeup()
        self.direct_signalled = False
        self.direct_poller = self._direct_poller()
        self.pending: dict[int, _Pending] = {}
        self.timers: list[tuple[float, int, int]] = []
        self.bad_frames = 0
        self.late_answers = 0
        #: Answers refusing our protocol version that matched no call (an old broker).
        self.refused_versions = 0
        self.resends = 0
        self.direct_calls = 0
        self.handovers = 0

    def _direct_poller(self) -> zmq.Poller:
        poller = zmq.Poller()
        poller.register(self.dealer, zmq.POLLIN)
        poller.register(self.direct_wake, zmq.POLLIN)
        if self.watch is not None:
            poller.register(self.watch.monitor, zmq.POLLIN)
        return poller

    @property
    def switches(self) -> int:
        return 0 if self.failover is None else self.failover.switches

    # --- submitting ---------------------------------------------------------------------

    def enqueue(self, *ps: _Pending) -> bool:
        """Queues `ps` for the I/O thread, together; False if the client is closing."""
        with self.mu:
            if self.stopping:
                return False
            self.calls.extend(ps)
            mode = self.mode
            signal = mode == _DIRECT and not self.direct_signalled
            if signal:
                self.direct_signalled = True
        if mode == _DIRECT:
            if signal:
                # The direct caller hands its call over and lets the I/O thread run.
                self.direct_wake.force()
        else:
            self.wakeup.wake()
        return True

    def claim(self) -> bool:
        """Takes the socket for a direct call if nobody uses it and nothing is queued."""
        with self.mu:
            if self.mode != _IDLE or self.calls or self.stopping:
                return False
            self.mode = _DIRECT
            stale = self.direct_signalled
            self.direct_signalled = False
        if stale:
            self.direct_wake.drain()
        return True

    # --- a direct call (the caller's thread owns the socket) ----------------------------

    def call_direct(self, p: _Pending) -> Any:
        """Sends `p` and waits for its answer on this thread; needs a successful `claim`.

        Returns the result or raises its `CallError`; whatever else happens (see the
        module doc) the call is handed to the I/O thread and awaited through a future.
        """
        owned = True
        try:
            dealer = self.dealer
            watch = self.watch
            now = time.monotonic()
            if watch is not None:
                watch.poll_events()
                if watch.dropped or not watch.up:
                    # The I/O thread moves to another broker or waits for this one.
                    owned = False
                    return self._hand_over(p, now)
            try:
                _send_request(dealer, p.message)
            except zmq.ZMQError as e:
                if not isinstance(e, zmq.Again):
                    log.warning("request %d not sent: %s", p.id, e)
                owned = False
                return self._hand_over(p, now)
            p.sent = True
            p.sent_at = now
            p.at = self.index
            first = p.deadline + ANSWER_SLACK_S
            if p.retry_every is not None and now + p.retry_every < p.deadline:
                first = now + p.retry_every
            poll = self.direct_poller.poll
            # zmq.Poller reports a plain file descriptor by its number.
            wake_fd = self.direct_wake.fileno()
            while True:
                left = first - time.monotonic()
                if left <= 0:
                    break  # a timer is due: the I/O thread fires it
                ready = poll(math.ceil(left * 1000))
                if not ready:
                    continue
                if any(s == wake_fd for s, _ in ready):
                    break  # another call queued, or close(): let the I/O thread run
                if watch is not None and watch.poll_events() and watch.dropped:
                    break  # the broker is gone: the I/O thread settles `p` and moves on
                while True:
                    try:
                        frames = _recv_message(dealer)
                    except zmq.Again:
                        break
                    answers, bad = self._parse(frames, self.index)
                    if bad is not None:
                        self._bad_frame(str(bad))
                    mine = None
                    for answer in answers:
                        if answer[0] != p.id:
                            self._unmatched(answer[3])  # a duplicate, or one after a timeout
                        else:
                            mine = answer
                    if mine is None:
                        continue
                    _, worker, body, err = mine
                    owned = False
                    if (
                        watch is not None
                        and err is not None
                        and is_passive_refusal(err.code, err.message)
                    ):
                        return self._refused_direct(p, err)
                    if watch is not None:
                        self._served()
                    self._release()
                    self.direct_calls += 1
                    if err is not None:
                        raise err
                    return self._result(p, worker, body)
            owned = False
            return self._hand_over(p, time.monotonic())
        finally:
            if owned:
                # Interrupted (KeyboardInterrupt …): the I/O thread settles the call.
                with contextlib.suppress(CallError):
                    self._hand_over(p, time.monotonic(), wait=False)

    def _release(self) -> None:
        """Gives the socket back after a direct call."""
        with self.mu:
            wake = bool(self.calls) or self.stopping
            self.mode = _IO if wake else _IDLE
        if wake:
            self.wakeup.force()

    def _refused_direct(self, p: _Pending, err: CallError) -> Any:
        """A passive broker refused `p` (not queued): choose where to send it again, and
        hand it to the I/O thread to do so after the retry delay."""
        now = time.monotonic()
        send_at = self._refused(p, self.index, now, err)
        return self._hand_over(p, now, send_at=send_at)

    def _hand_over(
        self, p: _Pending, now: float, wait: bool = True, send_at: float | None = None
    ) -> Any:
        """Gives the socket and `p` to the I/O thread, then waits for `p`'s future."""
        future: Future[Any] = Future()
        p.future = future
        with self.mu:
            stopping = self.stopping
            if not stopping:
                self.pending[p.id] = p
                heapq.heappush(self.timers, (p.deadline + ANSWER_SLACK_S, p.id, _EXPIRE))
                if not p.sent:
                    heapq.heappush(self.timers, (send_at or now, p.id, _SEND))
                elif p.retry_every is not None and p.sent_at + p.retry_every < p.deadline:
                    heapq.heappush(self.timers, (p.sent_at + p.retry_every, p.id, _SEND))
            self.mode = _IO
            self.handovers += 1
        self.wakeup.force()
        if stopping:
            raise CallError(CLOSED, "client closed")
        return future.result() if wait else None

    # --- the I/O thread -----------------------------------------------------------------

    def run(self) -> None:
        io_poller = zmq.Poller()
        for d in self.dealers:
            io_poller.register(d, zmq.POLLIN)
        for w in self.watches:
            io_poller.register(w.monitor, zmq.POLLIN)
        io_poller.register(self.wakeup, zmq.POLLIN)
        idle_poller = zmq.Poller()
        idle_poller.register(self.wakeup, zmq.POLLIN)
        try:
            while True:
                with self.mu:
                    if self.stopping and self.mode != _DIRECT:
                        break
                    if self.mode == _IDLE and self.calls:
                        self.mode = _IO
                    mode = self.mode
                if mode == _IO:
                    self._round(io_poller)
                    if not self.pending and not self.calls:
                        self._go_idle()
                else:
                    self._sleep(idle_poller)
        except Exception:  # never leave callers hanging on a dead thread
            log.exception("client I/O thread failed")
        finally:
            self._shut(idle_poller)

    def _go_idle(self) -> None:
        with self.mu:
            if self.pending or self.calls or self.mode != _IO or self.stopping:
                return
            # Only timers of answered calls are left; cleared before a direct caller can
            # hand a call over and push its own.
            self.timers.clear()
            self.mode = _IDLE

    def _sleep(self, poller: zmq.Poller) -> None:
        """Waits for the socket to come back (or work for it) without touching it."""
        self.wakeup.sleeping = True
        with self.mu:
            go = (
                self.mode == _IO
                or (self.mode == _IDLE and self.calls)
                or (self.stopping and self.mode != _DIRECT)
            )
        ready = [] if go else poller.poll(MAX_POLL_MS)
        self.wakeup.sleeping = False
        if ready:
            self.wakeup.drain()

    def _shut(self, poller: zmq.Poller) -> None:
        with self.mu:
            self.stopping = True
        # A direct caller may hold the socket still: it lets go at once when woken.
        self.direct_wake.force()
        while True:
            with self.mu:
                if self.mode != _DIRECT:
                    self.mode = _CLOSED
                    break
            if poller.poll(MAX_POLL_MS):
                self.wakeup.drain()
        for w, d in zip(self.watches, self.dealers, strict=False):
            w.close(d)
        for d in self.dealers:
            d.close(linger=0)
        self._fail_all(CallError(CLOSED, "client closed"))

    def _round(self, poller: zmq.Poller) -> None:
        timeout = MAX_POLL_MS
        if self.timers:
            timeout = min(timeout, max(0, math.ceil((self.timers[0][0] - time.monotonic()) * 1000)))
        # Announce the sleep, then look at the queue once more: a caller that saw
        # `sleeping` false relies on this look.
        self.wakeup.sleeping = True
        if self.calls:
            timeout = 0
        ready = poller.poll(timeout)
        self.wakeup.sleeping = False
        dealer_ready = False
        others: list[zmq.Socket[bytes]] | None = None
        for sock, _ in ready:
            if sock is self.dealer:
                dealer_ready = True
            elif type(sock) is int:  # the wake-up's file descriptor
                self.wakeup.drain()
            elif others is None:
                others = [sock]
            else:
                others.append(sock)
        if self.failover is not None:
            # Answers that arrived before a connection dropped still count: read first.
            for i, d in enumerate(self.dealers):
                if others is not None and d in others:
                    self._read_answers(d, i)
            if dealer_ready:
                self._read_answers(self.dealer, self.index)
                dealer_ready = False
            self._check_watches()
        calls = self.calls
        if calls:
            now = time.monotonic()
            if len(calls) > 1 and self.reads_batches[self.index]:
                self._start_batched(now)
            else:
                while calls:
                    self._start(calls.popleft(), now)
        if dealer_ready:
            self._read_answers(self.dealer, 0)
        self._fire_timers()

    def _start(self, p: _Pending, now: float) -> None:
        self._keep(p)
        self._send(p, now)

    def _keep(self, p: _Pending) -> None:
        self.pending[p.id] = p
        self._push_timer((p.deadline + ANSWER_SLACK_S, p.id, _EXPIRE))

    def _start_batched(self, now: float) -> None:
        """Starts every queued call, in order, in as few BATCHes as the limits allow (the
        current broker reads them). A message is taken by the socket whole or not at
        all, so each call is sent once, or retried alone by its timer."""
        # Popped one by one: other threads may append meanwhile (they are started in the
        # next round).
        calls = self.calls
        queued = [calls.popleft() for _ in range(len(calls))]
        for p in queued:
            self._keep(p)
        for group in wire.batch_groups(queued, lambda p: len(p.message)):
            self._send_group(group, now)

    def _send_group(self, group: list[_Pending], now: float) -> None:
        if len(group) == 1:
            self._send(group[0], now)
            return
        message = wire.encode_batch(
            wire.CLIENT_PROTOCOL, wire.ClientCommand.BATCH, [p.message for p in group]
        )
        try:
            _send_request(self.dealer, message)
        except zmq.ZMQError as e:
            if not isinstance(e, zmq.Again):
                log.warning("%d requests not sent: %s", len(group), e)
            for p in group:
                self._push_timer((now + UNSENT_RETRY_S, p.id, _SEND))
            if isinstance(e, zmq.Again) and self.failover is not None:
                self._check_connecting(now)
            return
        for p in group:
            self._sent(p, now)

    def _push_timer(self, timer: tuple[float, int, int]) -> None:
        timers = self.timers
        heapq.heappush(timers, timer)
        # Answered calls leave their timers behind (removing them from a heap costs more
        # than skipping them); drop them once they outnumber the live ones.
        if len(timers) > 2 * len(self.pending) + 64:
            pending = self.pending
            timers[:] = [t for t in timers if t[1] in pending]
            heapq.heapify(timers)

    def _send(self, p: _Pending, now: float) -> None:
        try:
            _send_request(self.dealer, p.message)
        except zmq.Again:
            # No broker connection (or its queue is full): try again shortly.
            self._push_timer((now + UNSENT_RETRY_S, p.id, _SEND))
            if self.failover is not None:
                self._check_connecting(now)
            return
        except zmq.ZMQError as e:
            log.warning("request %d not sent: %s", p.id, e)
            self._push_timer((now + UNSENT_RETRY_S, p.id, _SEND))
            return
        self._sent(p, now)

    def _sent(self, p: _Pending, now: float) -> None:
        """`p` reached the socket: note where, and when to send it again if idempotent."""
        if p.sent:
            self.resends += 1
        p.sent = True
        p.sent_at = now
        p.at = self.index
        if p.retry_every is not None and now + p.retry_every < p.deadline:
            self._push_timer((now + p.retry_every, p.id, _SEND))

    def _fire_timers(self) -> None:
        timers = self.timers
        if not timers:
            return
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            _, id, kind = heapq.heappop(timers)
            p = self.pending.get(id)
            if p is None:
                continue  # answered already
            if kind == _EXPIRE:
                del self.pending[id]
                self._fail(
                    p, CallError(TIMEOUT, f"no answer within {p.timeout_ms} ms (outcome unknown)")
                )
            elif now >= p.deadline:
                if not p.sent:
                    # Never reached a socket (or refused by a passive broker, which does
                    # not queue), so never delivered: safe to say so.
                    del self.pending[id]
                    why = p.refusal or f"broker unreachable for {p.timeout_ms} ms"
                    self._fail(p, CallError(UNAVAILABLE, f"{why}; not sent"))
            elif p.sent and p.retry_every is None:
                continue  # an order is sent once (a stale timer after a re-queue)
            else:
                self._send(p, now)

    def _read_answers(self, dealer: zmq.Socket[bytes], at: int) -> None:
        while True:
            try:
                frames = _recv_message(dealer)
            except zmq.Again:
                return
            answers, bad = self._parse(frames, at)
            if bad is not None:
                self._bad_frame(str(bad))
            for id, worker, body, err in answers:
                self._on_answer(at, id, worker, body, err)

    def _parse(
        self, frames: list[bytes], at: int
    ) -> tuple[list[tuple[int, str | None, bytes, CallError | None]], Exception | None]:
        """`parse_answers`, noting that the broker at DEALER `at` sends (so reads) BATCH
        and that a message which cannot be read at all is bad."""
        try:
            answers, bad = parse_answers(frames)
        except ProtocolError as e:
            return [], e
        if frames[0][:_ID] == _BATCH_ID:
            self.reads_batches[at] = True
        return answers, bad

    def _on_answer(
        self, at: int, id: int, worker: str | None, body: bytes, err: CallError | None
    ) -> None:
        """One answer read by the I/O thread from endpoint `at`: settles its call."""
        pending = self.pending
        p = pending.pop(id, None)
        if p is None:
            # A second answer to a re-sent idempotent call, or one after its timeout.
            self._unmatched(err)
            return
        future = p.future
        if future is None:  # cannot happen: only handed-over calls are pending
            return
        if self.failover is not None:
            if err is not None and is_passive_refusal(err.code, err.message):
                pending[id] = p
                send_at = self._refused(p, at, time.monotonic(), err)
                self._push_timer((send_at, p.id, _SEND))
                return
            self._served()
        if err is not None:
            _settle(future, error=err)
            return
        try:
            result = self._result(p, worker, body)
        except CallError as e:
            _settle(future, error=e)
            return
        _settle(future, result)

    # --- following the active broker of a pair (several endpoints only) ---------------

    def _served(self) -> None:
        fo = self.failover
        if fo is not None and fo.refusals:
            fo.on_served()

    def _use(self, index: int, now: float) -> None:
        """Makes endpoint `index` the current one (the owner of the sockets only)."""
        self.index = index
        self.dealer = self.dealers[index]
        watch = self.watches[index]
        self.watch = watch
        if not watch.up:
            watch.down_since = now  # it gets its own time to connect
        self.direct_poller = self._direct_poller()

    def _refused(self, p: _Pending, at: int, now: float, err: CallError) -> float:
        """`p` was refused by the passive broker at `at` (not queued, so it may be sent
        again, even an order): moves on if that is the current broker; returns when to
        send it again."""
        fo = self.failover
        assert fo is not None
        p.sent = False
        p.refusal = err.message
        delay = 0.0
        if at == self.index:
            switch = fo.on_passive(now, f"passive broker: {err.message}")
            delay = switch.delay
            if switch.moved:
                self._use(fo.index, now)
        return min(now + delay, p.deadline)

    def _check_watches(self) -> None:
        """Reads the socket monitors; a dropped connection is a broker gone."""
        fo = self.failover
        assert fo is not None
        now = time.monotonic()
        for i, w in enumerate(self.watches):
            if w.poll_events() and w.up:
                fo.on_connected(i)
            if w.dropped:
                w.dropped = False
                w.down_since = now
                self.reads_batches[i] = False
                self._gone(i, now, "connection dropped")

    def _check_connecting(self, now: float) -> None:
        """A call could not be sent: if the current broker has had no connection for too
        long, it is gone (down when we started, or not back)."""
        fo = self.failover
        w = self.watch
        assert fo is not None and w is not None
        if not w.up and now - w.down_since > failover.CONNECT_TIMEOUT_S:
            w.down_since = now
            self._gone(self.index, now, f"no connection for {failover.CONNECT_TIMEOUT_S} s")

    def _gone(self, i: int, now: float, why: str) -> None:
        """Broker `i` is gone. Calls in flight there: an idempotent one is sent again (to
        the new current broker), any other ends ``worker_lost`` — it may have executed,
        so it is never sent again. Calls not yet sent wait for their timers as before."""
        fo = self.failover
        assert fo is not None
        if i == self.index:
            fo.on_gone(now, why)
            self._use(fo.index, now)
        lost = [p for p in self.pending.values() if p.sent and p.at == i]
        for p in lost:
            if p.id not in self.pending:
                continue  # settled meanwhile
            if p.retry_every is None:
                del self.pending[p.id]
                self._fail(
                    p,
                    CallError(
                        WORKER_LOST,
                        f"broker {fo.endpoints[i]} gone ({why}) with the request in flight "
                        "(outcome unknown)",
                    ),
                )
            else:
                self._send(p, now)

    def _result(self, p: _Pending, worker: str | None, body: bytes) -> Any:
        """A REPLY's result for `p`: its body (decoded unless raw), or a `Reply`."""
        if len(body) > self.max_body:
            raise CallError(BAD_REPLY, f"reply of {len(body)} bytes")
        if p.raw:
            value: Any = body
        else:
            try:
                value = wire.unpack_body(body)
            except ProtocolError as e:
                raise CallError(BAD_REPLY, str(e), worker) from None
        return Reply(value, worker) if p.full else value

    def _fail(self, p: _Pending, error: CallError) -> None:
        if p.future is not None:
            _settle(p.future, error=error)

    def _unmatched(self, err: CallError | None) -> None:
        """An answer matching no call in flight. An older (version-02) broker refuses our
        requests with ``unsupported_version`` and request id 0 (it cannot read the id
        from a version-03 message), so no call gets that error: say so in the log."""
        self.late_answers += 1
        if err is not None and err.message.startswith("clients may only send REQUEST"):
            # A broker older than the client's BATCH (restarted in place): none of the
            # batch's requests were served; send one at a time from now on.
            self.reads_batches = [False] * len(self.dealers)
        if err is not None and err.code == "unsupported_version":
            self.refused_versions += 1
            n = self.refused_versions
            if n <= 10 or n % 1000 == 0:
                log.error("broker refused this client's protocol (%d so far): %s", n, err.message)

    def _bad_frame(self, why: str) -> None:
        self.bad_frames += 1
        # Rate-limited: a hostile peer must not flood the log.
        if self.bad_frames <= 10 or self.bad_frames % 1000 == 0:
            log.warning("bad message from broker (%d so far): %s", self.bad_frames, why)

    def _fail_all(self, error: CallError) -> None:
        # Calls still queued (never started) fail too: nobody will send them now.
        with self.mu:
            while self.calls:
                p = self.calls.popleft()
                self.pending[p.id] = p
        for p in self.pending.values():
            self._fail(p, error)
        self.pending.clear()


class Client(TradingMixin):
    """A thread-safe connection to the broker's frontend; also a context manager.

    Args:
        broker: the broker's frontend endpoint (``tcp://…`` or ``ipc://…``); for a broker
            pair, both (a list, or one comma-separated string; the first is the primary):
            calls go to one broker at a time and follow the active one (see below).
        events: the broker's XPUB endpoint(s), used by `subscriber`.
        curve_server_key: the broker's CURVE public key (z85); needs `curve_key_file`.
        curve_key_file: our key pair (``tradeplex keygen`` output), allow-listed at the broker.
        curve: CURVE settings already loaded (instead of the two above).
        timeout_ms: default time to live of a call (its deadline).
        max_body_bytes: bodies above this are refused before sending (the broker's limit).
        client_name: the name declared in every request (``client`` header field): what
            the broker's per-client risk limits and audit journal know this client by.
            Honoured from loopback without CURVE; with CURVE the key names the client and
            a different name is refused ``forbidden`` (docs/risk.md).

    With several broker endpoints the client moves to the next one (wrapping) when the
    current broker refuses a call as the pair's passive broker (the call is sent again
    there: it was not queued) or when its connection drops (libzmq socket monitor; ZMTP
    heartbeats every 250 ms find a silent peer within 1 s) or does not come up within
    1 s. Calls in flight at a broker that is gone: idempotent ones are sent again,
    others end ``worker_lost`` (outcome unknown; never re-sent). ``stats["switches"]``
    counts the moves; each logs one warning.
    """

    def __init__(
        self,
        broker: Endpoints = DEFAULT_BROKER,
        events: Endpoints = DEFAULT_EVENTS,
        *,
        curve_server_key: str | None = None,
        curve_key_file: str | Path | None = None,
        curve: ClientCurve | None = None,
        timeout_ms: int = 5000,
        max_body_bytes: int = wire.DEFAULT_MAX_BODY,
        client_name: str | None = None,
    ) -> None:
        if timeout_ms <= 0:
            raise ValueError("timeout_ms must be positive")
        self.client_name = client_name
        #: The broker endpoints, in order (one, or a pair's two).
        self.endpoints = failover.parse_endpoints(broker, "broker")
        self.event_endpoints = failover.parse_endpoints(events, "events")
        #: The endpoints as one string (comma-separated when several).
        self.broker = ",".join(self.endpoints)
        self.events = ",".join(self.event_endpoints)
        self.timeout_ms = timeout_ms
        self.max_body_bytes = max_body_bytes
        self._curve = curve or ClientCurve.from_options(curve_server_key, curve_key_file)
        self._ctx = zmq.Context()
        pair = len(self.endpoints) > 1
        try:
            dealers = [self._dealer(ep, pair) for ep in self.endpoints]
        except zmq.ZMQError:
            self._ctx.destroy(linger=0)
            raise
        self._ids = itertools.count(1)
        self._conn = _Connection(dealers, self.endpoints, max_body_bytes)
        self._closed = False
        self._thread = threading.Thread(target=self._conn.run, name="tpx-client", daemon=True)
        self._thread.start()

    def _dealer(self, endpoint: str, pair: bool) -> zmq.Socket[bytes]:
        dealer = self._ctx.socket(zmq.DEALER)
        dealer.linger = 0
        # Queue only on a live connection: with no broker, send refuses (EAGAIN) and the
        # call ends `unavailable` (never delivered) instead of sitting in a dead pipe.
        dealer.immediate = True
        dealer.sndhwm = 100_000
        dealer.rcvhwm = 100_000
        dealer.reconnect_ivl = 100
        dealer.reconnect_ivl_max = 1000
        dealer.maxmsgsize = self.max_body_bytes * 2 + 64 * 1024
        if pair:
            # A silent peer (host gone, link cut) is disconnected, which the monitor sees.
            dealer.heartbeat_ivl = failover.HEARTBEAT_IVL_MS
            dealer.heartbeat_timeout = failover.HEARTBEAT_TIMEOUT_MS
        if self._curve is not None:
            self._curve.apply(dealer)
        dealer.connect(endpoint)
        return dealer

    # --- calls ----------------------------------------------------------------------

    def call(
        self,
        service: str,
        body: Any = None,
        *,
        idempotent: bool = False,
        timeout_ms: int | None = None,
        target: str | None = None,
        affinity: str | None = None,
        raw: bool = False,
    ) -> Any:
        """Calls `service` with `body` (MessagePack-encoded) and returns the decoded reply.

        Raises `CallError`: ``.code`` is the wire error's name or ``timeout`` (no answer
        in time: for a non-idempotent call the outcome is unknown), ``unavailable`` (the
        broker was unreachable; not sent) or ``closed``. `idempotent` calls are re-sent
        when unanswered (a third of the timeout, at least 500 ms) and retried by the
        broker on another worker if theirs dies. With ``raw=True`` the body is bytes
        sent as is and the reply comes back as bytes. While no other call is in flight,
        the calling thread sends and waits for the answer itself (see the module doc).
        """
        p = self._prepare(service, body, idempotent, timeout_ms, target, affinity, raw, False)
        return self._call_sync(p)

    def call_async(
        self,
        service: str,
        body: Any = None,
        *,
        idempotent: bool = False,
        timeout_ms: int | None = None,
        target: str | None = None,
        affinity: str | None = None,
        raw: bool = False,
    ) -> Future[Any]:
        """Like `call`, but returns at once with a `concurrent.futures.Future`.

        The future's callbacks run on the client's I/O thread: keep them short.
        """
        return self._submit(service, body, idempotent, timeout_ms, target, affinity, raw, False)

    def call_many_async(
        self,
        service: str,
        bodies: Iterable[Any],
        *,
        idempotent: bool = False,
        timeout_ms: int | None = None,
        target: str | None = None,
        affinity: str | None = None,
        raw: bool = False,
    ) -> list[Future[Any]]:
        """A basket: one call to `service` per body, sent at once, a future each.

        To a broker that reads them (it has sent this client a BATCH) the calls leave in
        as few BATCH messages as the protocol allows (256 calls, 64 KiB); each is still
        answered, timed out and (if idempotent) re-sent on its own, and an order in a
        basket is executed once like any other. Every call is checked before any is
        sent: a basket that cannot be built raises (`ValueError` for a bad service name,
        `CallError` ``too_large`` for a body over the limit) and nothing is sent.
        """
        ps: list[_Pending] = []
        futures: list[Future[Any]] = []
        for body in bodies:
            p = self._prepare(service, body, idempotent, timeout_ms, target, affinity, raw, False)
            future: Future[Any] = Future()
            p.future = future
            ps.append(p)
            futures.append(future)
        if ps and not self._conn.enqueue(*ps):
            for future in futures:
                _settle(future, error=CallError(CLOSED, "client closed"))
        return futures

    async def acall(
        self,
        service: str,
        body: Any = None,
        *,
        idempotent: bool = False,
        timeout_ms: int | None = None,
        target: str | None = None,
        affinity: str | None = None,
        raw: bool = False,
    ) -> Any:
        """`call` for asyncio: awaits the answer without blocking the event loop."""
        fut = self.call_async(
            service,
            body,
            idempotent=idempotent,
            timeout_ms=timeout_ms,
            target=target,
            affinity=affinity,
            raw=raw,
        )
        return await asyncio.wrap_future(fut)

    def call_reply(
        self,
        service: str,
        body: Any = None,
        *,
        idempotent: bool = False,
        timeout_ms: int | None = None,
        target: str | None = None,
        affinity: str | None = None,
        raw: bool = False,
    ) -> Reply:
        """Like `call`, but returns a `Reply` that also names the worker that served it."""
        p = self._prepare(service, body, idempotent, timeout_ms, target, affinity, raw, True)
        reply: Reply = self._call_sync(p)
        return reply

    def _call_sync(self, p: _Pending) -> Any:
        conn = self._conn
        if conn.claim():
            return conn.call_direct(p)
        future: Future[Any] = Future()
        p.future = future
        if not conn.enqueue(p):
            raise CallError(CLOSED, "client closed")
        return future.result()

    def _submit(
        self,
        service: str,
        body: Any,
        idempotent: bool,
        timeout_ms: int | None,
        target: str | None,
        affinity: str | None,
        raw: bool,
        full: bool,
    ) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            p = self._prepare(service, body, idempotent, timeout_ms, target, affinity, raw, full)
        except CallError as e:
            future.set_exception(e)
            return future
        p.future = future
        if not self._conn.enqueue(p):
            future.set_exception(CallError(CLOSED, "client closed"))
        return future

    def _prepare(
        self,
        service: str,
        body: Any,
        idempotent: bool,
        timeout_ms: int | None,
        target: str | None,
        affinity: str | None,
        raw: bool,
        full: bool,
    ) -> _Pending:
        """Checks and encodes a call (ValueError/TypeError for bad arguments, CallError
        for ``closed`` and ``too_large``)."""
        _check_service(service)
        if target is not None and not wire.valid_uuid(target):
            raise ValueError(f"target {target!r} is not a worker uuid")
        if affinity is not None and not 1 <= len(affinity.encode()) <= wire.MAX_AFFINITY_BYTES:
            raise ValueError("affinity must be 1-128 bytes")
        if raw:
            if not isinstance(body, (bytes, bytearray, memoryview)):
                raise TypeError("raw=True needs a bytes body")
            data = bytes(body)
        else:
            data = b"" if body is None else wire.pack(body)
        if self._closed:
            raise CallError(CLOSED, "client closed")
        if len(data) > self.max_body_bytes:
            raise CallError("too_large", f"body of {len(data)} bytes")
        ttl = self.timeout_ms if timeout_ms is None else timeout_ms
        if ttl <= 0:
            raise ValueError("timeout_ms must be positive")
        id = next(self._ids)
        # This client reads BATCH: a pipeline's answers may come several in one message.
        header = request_header(
            id,
            service,
            wire.now_ms() + ttl,
            idempotent,
            target,
            affinity,
            self.client_name,
            batch=True,
        )
        message = _REQUEST_ID + len(header).to_bytes(2, "big") + header + data
        retry = max(ttl / 3000, 0.5) if idempotent else None
        return _Pending(id, message, time.monotonic() + ttl / 1000, retry, None, raw, full, ttl)

    # --- management (the broker's own tpx.* services) --------------------------------

    def status(self) -> dict[str, Any]:
        """The broker's workers, services and halts (`tpx.status`)."""
        reply: dict[str, Any] = self.call("tpx.status", None, idempotent=True)
        return reply

    def halt(self, account: str | None = None, reason: str = "") -> dict[str, Any]:
        """The kill switch (`tpx.halt`): the broker refuses every new order of `account`
        (None = every account) with ``risk_rejected`` ``halted: <reason>`` and cancels its
        working orders; the reply counts ``cancels_sent`` and ``cancels_skipped``."""
        reply: dict[str, Any] = self.call("tpx.halt", {"account": account or "", "reason": reason})
        return reply

    def resume(self, account: str | None = None) -> dict[str, Any]:
        """Lifts the halt of `account`, or every halt (None) (`tpx.resume`); the reply
        lists the halts ``resumed`` and those still in force (``halts``)."""
        reply: dict[str, Any] = self.call("tpx.resume", {"account": account or ""})
        return reply

    # --- events ---------------------------------------------------------------------

    def subscriber(self, topics: list[str] | tuple[str, ...] | str) -> Any:
        """A `Subscriber` on this client's events endpoint, with the same CURVE keys, that
        repairs gaps through this client's broker (``tpx.replay``)."""
        from .subscriber import Subscriber

        return Subscriber(self.event_endpoints, topics, curve=self._curve, repair=self.endpoints)

    # --- life -----------------------------------------------------------------------

    @property
    def current_broker(self) -> str:
        """The broker endpoint calls go to now (changes as the client follows a pair)."""
        return self._conn.failover.current if self._conn.failover else self.endpoints[0]

    @property
    def stats(self) -> dict[str, int]:
        """Counters: bad frames dropped, late (duplicate) answers, re-sends, calls in
        flight through the I/O thread, calls answered on the caller's thread (`direct`),
        direct calls handed to the I/O thread (`handovers`), moves to another broker
        of a pair (`switches`) and an older broker's refusals of our protocol version
        (`refused_versions`)."""
        c = self._conn
        return {
            "switches": c.switches,
            "bad_frames": c.bad_frames,
            "late_answers": c.late_answers,
            "refused_versions": c.refused_versions,
            "resends": c.resends,
            "in_flight": len(c.pending),
            "direct": c.direct_calls,
            "handovers": c.handovers,
        }

    def close(self) -> None:
        """Stops the I/O thread; calls still pending (direct ones too) fail with ``closed``."""
        if self._closed:
            return
        self._closed = True
        conn = self._conn
        with conn.mu:
            conn.stopping = True
        conn.direct_wake.force()
        conn.wakeup.force()
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            conn.wakeup.close()
            conn.direct_wake.close()
            self._ctx.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
