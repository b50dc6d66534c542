"""`Client`: calls services through the broker's frontend (``TPXC01``).

One background I/O thread owns the DEALER socket (ZeroMQ sockets are not thread-safe).
Caller threads hand it calls through a deque plus a wake-up byte; it sends them, matches
answers by request id (many calls in flight), times calls out, and re-sends idempotent
calls that got no answer — which is how a broker restart is survived: the new broker
never saw the request, so only a re-send gets it answered. Non-idempotent calls (orders)
are never re-sent; without an answer they end ``timeout`` (outcome unknown).
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import logging
import math
import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from . import wire
from .curve import ClientCurve
from .errors import BAD_REPLY, CLOSED, TIMEOUT, UNAVAILABLE, CallError, ProtocolError
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


@dataclass(frozen=True)
class Reply:
    """A successful answer: the decoded body and the worker that served it."""

    body: Any
    worker: str | None


class _Pending:
    __slots__ = (
        "body",
        "deadline",
        "frames",
        "full",
        "future",
        "id",
        "raw",
        "retry_every",
        "sent",
        "timeout_ms",
    )

    def __init__(
        self,
        id: int,
        frames: list[bytes],
        deadline: float,
        retry_every: float | None,
        future: Future[Any],
        raw: bool,
        full: bool,
        timeout_ms: int,
    ) -> None:
        self.id = id
        self.frames = frames
        self.deadline = deadline
        self.retry_every = retry_every
        self.future = future
        self.raw = raw
        self.full = full
        self.timeout_ms = timeout_ms
        self.sent = False


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
    """The I/O thread's state: the DEALER, pending calls and their timers."""

    def __init__(
        self,
        dealer: zmq.Socket[bytes],
        calls: collections.deque[_Pending],
        wakeup: Wakeup,
        max_body: int,
    ) -> None:
        self.dealer = dealer
        self.calls = calls
        self.wakeup = wakeup
        self.max_body = max_body
        self.pending: dict[int, _Pending] = {}
        self.timers: list[tuple[float, int, int]] = []
        self.stopping = False
        self.bad_frames = 0
        self.late_answers = 0
        self.resends = 0

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.dealer, zmq.POLLIN)
        poller.register(self.wakeup, zmq.POLLIN)
        try:
            while not self.stopping:
                self._round(poller)
        except Exception:  # never leave callers hanging on a dead thread
            log.exception("client I/O thread failed")
        finally:
            self.dealer.close(linger=0)
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
        ready = dict(poller.poll(timeout))
        self.wakeup.sleeping = False
        if self.wakeup in ready:
            self.wakeup.drain()
        while self.calls:
            self._start(self.calls.popleft())
        if self.dealer in ready:
            self._read_answers()
        self._fire_timers()

    def _start(self, p: _Pending) -> None:
        self.pending[p.id] = p
        heapq.heappush(self.timers, (p.deadline + ANSWER_SLACK_S, p.id, _EXPIRE))
        self._send(p, time.monotonic())

    def _send(self, p: _Pending, now: float) -> None:
        try:
            self.dealer.send_multipart(p.frames, zmq.NOBLOCK)
        except zmq.Again:
            # No broker connection (or its queue is full): try again shortly.
            heapq.heappush(self.timers, (now + UNSENT_RETRY_S, p.id, _SEND))
            return
        except zmq.ZMQError as e:
            log.warning("request %d not sent: %s", p.id, e)
            heapq.heappush(self.timers, (now + UNSENT_RETRY_S, p.id, _SEND))
            return
        if p.sent:
            self.resends += 1
        p.sent = True
        if p.retry_every is not None and now + p.retry_every < p.deadline:
            heapq.heappush(self.timers, (now + p.retry_every, p.id, _SEND))

    def _fire_timers(self) -> None:
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, id, kind = heapq.heappop(self.timers)
            p = self.pending.get(id)
            if p is None:
                continue  # answered already
            if kind == _EXPIRE:
                del self.pending[id]
                _settle(
                    p.future,
                    error=CallError(
                        TIMEOUT,
                        f"no answer within {p.timeout_ms} ms (outcome unknown)",
                    ),
                )
            elif now >= p.deadline:
                if not p.sent:
                    # Never reached a socket, so never delivered: safe to say so.
                    del self.pending[id]
                    _settle(
                        p.future,
                        error=CallError(
                            UNAVAILABLE, f"broker unreachable for {p.timeout_ms} ms; not sent"
                        ),
                    )
            else:
                self._send(p, now)

    def _read_answers(self) -> None:
        while True:
            try:
                frames = self.dealer.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                ans = wire.decode_client_answer(frames)
            except ProtocolError as e:
                self._bad_frame(str(e))
                continue
            p = self.pending.pop(ans.id, None)
            if p is None:
                # A second answer to a re-sent idempotent call, or one after its timeout.
                self.late_answers += 1
                continue
            self._answer(p, ans)

    def _answer(self, p: _Pending, ans: wire.ClientAnswer) -> None:
        if not ans.ok:
            code = wire.ErrorCode.from_number(ans.code)
            name = code.wire_name if code else (ans.name or f"error_{ans.code}")
            _settle(p.future, error=CallError(name, ans.message, ans.worker, ans.code))
            return
        if len(ans.body) > self.max_body:
            _settle(p.future, error=CallError(BAD_REPLY, f"reply of {len(ans.body)} bytes"))
            return
        try:
            body = ans.body if p.raw else wire.unpack_body(ans.body)
        except ProtocolError as e:
            _settle(p.future, error=CallError(BAD_REPLY, str(e), ans.worker))
            return
        _settle(p.future, Reply(body, ans.worker) if p.full else body)

    def _bad_frame(self, why: str) -> None:
        self.bad_frames += 1
        # Rate-limited: a hostile peer must not flood the log.
        if self.bad_frames <= 10 or self.bad_frames % 1000 == 0:
            log.warning("bad message from broker (%d so far): %s", self.bad_frames, why)

    def _fail_all(self, error: CallError) -> None:
        # Calls still queued (never started) fail too: nobody will send them now.
        while self.calls:
            p = self.calls.popleft()
            self.pending[p.id] = p
        for p in self.pending.values():
            _settle(p.future, error=error)
        self.pending.clear()


class Client(TradingMixin):
    """A thread-safe connection to the broker's frontend; also a context manager.

    Args:
        broker: the broker's frontend endpoint (``tcp://…`` or ``ipc://…``).
        events: the broker's XPUB endpoint, used by `subscriber`.
        curve_server_key: the broker's CURVE public key (z85); needs `curve_key_file`.
        curve_key_file: our key pair (``tradeplex keygen`` output), allow-listed at the broker.
        timeout_ms: default time to live of a call (its deadline).
        max_body_bytes: bodies above this are refused before sending (the broker's limit).
    """

    def __init__(
        self,
        broker: str = DEFAULT_BROKER,
        events: str = DEFAULT_EVENTS,
        *,
        curve_server_key: str | None = None,
        curve_key_file: str | Path | None = None,
        timeout_ms: int = 5000,
        max_body_bytes: int = wire.DEFAULT_MAX_BODY,
    ) -> None:
        if timeout_ms <= 0:
            raise ValueError("timeout_ms must be positive")
        self.broker = broker
        self.events = events
        self.timeout_ms = timeout_ms
        self.max_body_bytes = max_body_bytes
        self._curve = ClientCurve.from_options(curve_server_key, curve_key_file)
        self._ctx = zmq.Context()
        dealer = self._ctx.socket(zmq.DEALER)
        dealer.linger = 0
        # Queue only on a live connection: with no broker, send refuses (EAGAIN) and the
        # call ends `unavailable` (never delivered) instead of sitting in a dead pipe.
        dealer.immediate = True
        dealer.sndhwm = 100_000
        dealer.rcvhwm = 100_000
        dealer.reconnect_ivl = 100
        dealer.reconnect_ivl_max = 1000
        dealer.maxmsgsize = max_body_bytes * 2 + 64 * 1024
        if self._curve is not None:
            self._curve.apply(dealer)
        dealer.connect(broker)
        self._ids = itertools.count(1)
        self._calls: collections.deque[_Pending] = collections.deque()
        self._wakeup = Wakeup()
        self._conn = _Connection(dealer, self._calls, self._wakeup, max_body_bytes)
        self._closed = False
        self._thread = threading.Thread(target=self._conn.run, name="tpx-client", daemon=True)
        self._thread.start()

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
        sent as is and the reply comes back as bytes.
        """
        return self.call_async(
            service,
            body,
            idempotent=idempotent,
            timeout_ms=timeout_ms,
            target=target,
            affinity=affinity,
            raw=raw,
        ).result()

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
        fut = self._submit(service, body, idempotent, timeout_ms, target, affinity, raw, True)
        reply: Reply = fut.result()
        return reply

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
        if not wire.valid_service(service):
            raise ValueError(f"invalid service name {service!r}")
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
        future: Future[Any] = Future()
        if self._closed:
            future.set_exception(CallError(CLOSED, "client closed"))
            return future
        if len(data) > self.max_body_bytes:
            future.set_exception(CallError("too_large", f"body of {len(data)} bytes"))
            return future
        ttl = self.timeout_ms if timeout_ms is None else timeout_ms
        if ttl <= 0:
            raise ValueError("timeout_ms must be positive")
        id = next(self._ids)
        frames = wire.encode_request(id, service, wire.now_ms() + ttl, idempotent, target, affinity)
        frames.append(data)
        retry = max(ttl / 3000, 0.5) if idempotent else None
        self._calls.append(
            _Pending(id, frames, time.monotonic() + ttl / 1000, retry, future, raw, full, ttl)
        )
        self._wakeup.wake()
        return future

    # --- events ---------------------------------------------------------------------

    def subscriber(self, topics: list[str] | tuple[str, ...] | str) -> Any:
        """A `Subscriber` on this client's events endpoint, with the same CURVE keys."""
        from .subscriber import Subscriber

        return Subscriber(self.events, topics, curve=self._curve)

    # --- life -----------------------------------------------------------------------

    @property
    def stats(self) -> dict[str, int]:
        """Counters: bad frames dropped, late (duplicate) answers, re-sends, in flight."""
        c = self._conn
        return {
            "bad_frames": c.bad_frames,
            "late_answers": c.late_answers,
            "resends": c.resends,
            "in_flight": len(c.pending),
        }

    def close(self) -> None:
        """Stops the I/O thread; calls still pending fail with ``closed``."""
        if self._closed:
            return
        self._closed = True
        self._conn.stopping = True
        self._wakeup.force()
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._wakeup.close()
            self._ctx.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
