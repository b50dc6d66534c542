"""`Worker`: serves services to the broker's backend (``TPXW03``) and publishes events.

Three kinds of thread, because ZeroMQ sockets are not thread-safe: the session thread owns
the DEALER (register, heartbeats both ways, reconnect with backoff, drain); a pool of
`capacity` threads runs handlers and hands results back over a deque plus a wake-up byte;
the publisher thread owns the PUB socket. Mirrors worker/src/session.rs and publisher.rs.

Given a broker pair's two endpoints, the session uses one at a time and moves to the next
when the broker goes silent or refuses our READY as the pair's passive broker
(DISCONNECT ``unavailable: passive broker …``), then registers there; the publisher
moves with it (tradeplex.failover).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from . import wire
from .backoff import Backoff
from .curve import ClientCurve
from .errors import HandlerError, ProtocolError
from .failover import Endpoints, Failover, is_passive_disconnect, parse_endpoints
from .model import WireObject
from .wakeup import Wakeup
from .wire import ErrorCode, WorkerCommand

log = logging.getLogger("tradeplex.worker")

DEFAULT_BACKEND = "tcp://127.0.0.1:5556"
DEFAULT_XSUB = "tcp://127.0.0.1:5557"

#: A handler takes the decoded request body and returns the reply (MessagePack-able).
Handler = Callable[[Any], Any]

_MAX_POLL_MS = 50
_PUBLISH_QUEUE = 65_536
#: How a BATCH from the broker starts (docs/protocol.md, BATCH).
_BATCH_ID = wire.WORKER_PROTOCOL + bytes([WorkerCommand.BATCH])


@dataclass(frozen=True)
class Request:
    """The request a handler is running, from `current_request()`."""

    job: int
    id: int
    service: str
    deadline_ms: int
    idempotent: bool


_local = threading.local()


def current_request() -> Request | None:
    """The request the calling handler thread is serving (None outside a handler)."""
    return getattr(_local, "request", None)


class Worker:
    """A Tradeplex worker in Python.

    Args:
        broker: the broker's backend endpoint; for a broker pair both (a list, or one
            comma-separated string; the first is the primary): the worker serves the
            active one and follows it (`switches` counts the moves).
        events: the broker's XSUB endpoint (for `publish`); with a pair one per broker,
            in the same order (or one, used whatever the broker).
        services: service name → handler. A handler gets the decoded body and returns the
            reply; raising `HandlerError(code, message)` answers that error (``unavailable``
            refuses without executing, so the broker re-dispatches), any other exception
            answers ``worker_error``.
        capacity: requests executed at once (the thread pool's size; the broker never sends
            more).
        worker_id: a uuid string; random by default (stable for the life of the object).
        heartbeat_ms, liveness: heartbeat interval, and intervals of broker silence before
            reconnecting.
        reconnect_min_ms, reconnect_max_ms: the reconnect schedule's first and highest
            ceiling; each delay is drawn uniformly in ``[0, ceiling]`` and the ceiling doubles
            per attempt (full jitter, so workers do not all return at once).
        drain_ms: how long `stop` waits for in-flight requests.
        observer: called after each request a handler thread finished, with the service,
            the outcome (``"ok"`` or the error code name, e.g. ``"deadline_exceeded"``) and
            the seconds it took (for metrics; it must not block).
    """

    def __init__(
        self,
        broker: Endpoints = DEFAULT_BACKEND,
        events: Endpoints = DEFAULT_XSUB,
        services: Mapping[str, Handler] | None = None,
        capacity: int = 4,
        *,
        worker_id: str | None = None,
        heartbeat_ms: int = 1000,
        liveness: int = 3,
        drain_ms: int = 5000,
        reconnect_min_ms: int = 100,
        reconnect_max_ms: int = 5000,
        curve_server_key: str | None = None,
        curve_key_file: str | Path | None = None,
        max_body_bytes: int = wire.DEFAULT_MAX_BODY,
        observer: Callable[[str, str, float], None] | None = None,
    ) -> None:
        self.handlers: dict[str, Handler] = dict(services or {})
        if len(self.handlers) > wire.MAX_SERVICES:
            raise ValueError(f"at most {wire.MAX_SERVICES} services")
        for name in self.handlers:
            if not wire.valid_service(name) or name.startswith("tpx."):
                raise ValueError(f"invalid service name {name!r}")
        if not 1 <= capacity <= wire.MAX_CAPACITY:
            raise ValueError(f"capacity must be 1-{wire.MAX_CAPACITY}")
        self.id = worker_id or str(uuid.uuid4())
        if not wire.valid_uuid(self.id):
            raise ValueError("worker_id must be a uuid string")
        self.endpoints = parse_endpoints(broker, "broker")
        self.event_endpoints = parse_endpoints(events, "events")
        if len(self.event_endpoints) not in (1, len(self.endpoints)):
            raise ValueError("events: one endpoint, or one per broker endpoint")
        #: The endpoints as one string (comma-separated when several).
        self.broker = ",".join(self.endpoints)
        self.events = ",".join(self.event_endpoints)
        self._failover = Failover(self.endpoints, "worker") if len(self.endpoints) > 1 else None
        #: Where the publisher sends (the current broker's XSUB); set by the session.
        self._event_target = self.event_endpoints[0]
        #: Set when a passive broker refused us and the session moves on, after this delay.
        self._move: float | None = None
        #: When to send READY again after a passive broker refused it (we stay there: the
        #: other broker is gone, so this one is about to take over).
        self._ready_at: float | None = None
        self.capacity = capacity
        self._hb_s = heartbeat_ms / 1000
        self._window_s = heartbeat_ms * liveness / 1000
        self._drain_s = drain_ms / 1000
        self._backoff = (reconnect_min_ms / 1000, reconnect_max_ms / 1000)
        self._max_body = max_body_bytes
        self._observer = observer
        self._connections = 0
        self._curve = ClientCurve.from_options(curve_server_key, curve_key_file)
        self._available: set[str] = set(self.handlers)
        self._ctx = zmq.Context()
        self._wakeup = Wakeup()
        self._results: collections.deque[list[bytes]] = collections.deque()
        #: The broker has sent a BATCH on this connection (so it reads them): results
        #: ready together leave together. Reset at each connection.
        self._broker_batches = False
        self._pool = ThreadPoolExecutor(capacity, thread_name_prefix="tpx-handler")
        self._in_flight = 0
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._registered = threading.Event()
        self._seq: dict[str, int] = {}
        self._seq_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._outbox: queue.Queue[list[bytes]] = queue.Queue(_PUBLISH_QUEUE)
        self._session: threading.Thread | None = None
        self._publisher: threading.Thread | None = None
        #: Counters: requests served, refused while draining, bad frames, reconnects,
        #: events published and events dropped (each dropped event still used its number).
        self.served = 0
        self.refused = 0
        self.bad_frames = 0
        self.reconnects = 0
        self.published = 0
        self.publish_drops = 0
        #: Events sent to the broker, by kind (first topic segment).
        self.published_by_kind: collections.Counter[str] = collections.Counter()
        #: READY messages sent (at every connection, change of services and re-register).
        self.ready_sent = 0

    # --- life -----------------------------------------------------------------------

    def start(self) -> Worker:
        """Starts the session and publisher threads; returns self."""
        if self._session is None:
            self._publisher = threading.Thread(
                target=self._publish_loop, name="tpx-publisher", daemon=True
            )
            self._publisher.start()
            self._session = threading.Thread(
                target=self._session_loop, name="tpx-worker", daemon=True
            )
            self._session.start()
        return self

    def run(self) -> None:
        """Starts and blocks until `stop` is called (from a signal handler or thread)."""
        self.start()
        self._stopped.wait()

    def stop(self, timeout: float | None = None) -> None:
        """Drains: withdraws from the broker, waits for in-flight requests (at most
        `drain_ms`), says DISCONNECT, then stops the threads."""
        self._stop.set()
        self._wakeup.force()
        if self._session is not None:
            self._session.join(timeout)
        if self._publisher is not None:
            self._publisher.join(timeout)
        self._pool.shutdown(wait=False)
        if not (self._session and self._session.is_alive()):
            self._stopped.set()

    def wait_registered(self, timeout: float = 5.0) -> bool:
        """Waits until the broker has acknowledged our READY."""
        return self._registered.wait(timeout)

    @property
    def registered(self) -> bool:
        """Whether the broker currently knows us."""
        return self._registered.is_set()

    @property
    def current_broker(self) -> str:
        """The broker endpoint the session uses now."""
        return self.endpoints[0] if self._failover is None else self._failover.current

    @property
    def switches(self) -> int:
        """Moves to another broker of a pair."""
        return 0 if self._failover is None else self._failover.switches

    @property
    def in_flight(self) -> int:
        """Requests being executed."""
        return self._in_flight

    def set_available(self, service: str, available: bool) -> None:
        """Offers or withdraws `service` (e.g. its gateway disconnected); the broker is
        told at the next heartbeat."""
        if service not in self.handlers:
            raise KeyError(service)
        if available:
            self._available.add(service)
        else:
            self._available.discard(service)

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- events ---------------------------------------------------------------------

    def publish(self, topic: str, body: Any) -> int:
        """Publishes `body` (a model object or MessagePack-able value) on `topic`.

        Returns the event's sequence number (per topic, from 1). Thread-safe. An event
        dropped because the queue is full still uses its number, so subscribers see a gap.
        """
        if not 0 < len(topic.encode()) <= wire.MAX_TOPIC_BYTES or wire.kind_of(topic) is None:
            raise ValueError(f"topic {topic!r}: 1-256 bytes, first segment a known kind")
        data = wire.pack(body.to_wire() if isinstance(body, WireObject) else body)
        # Number and enqueue under one lock so events of a topic leave in number order.
        with self._seq_lock:
            seq = self._seq.get(topic, 0) + 1
            self._seq[topic] = seq
            frames = wire.encode_event(topic, self.id, seq, wire.now_ns(), data)
            try:
                self._outbox.put_nowait(frames)
            except queue.Full:
                self.publish_drops += 1
        return seq

    def _publish_loop(self) -> None:
        pub = self._ctx.socket(zmq.PUB)
        pub.sndhwm = 100_000
        if self._curve is not None:
            self._curve.apply(pub)
        target = self._event_target
        pub.connect(target)
        try:
            while not (self._stopped.is_set() and self._outbox.empty()):
                if self._event_target != target:
                    # The session moved to the other broker of the pair: follow it.
                    with contextlib.suppress(zmq.ZMQError):
                        pub.disconnect(target)
                    target = self._event_target
                    pub.connect(target)
                try:
                    frames = self._outbox.get(timeout=0.05)
                except queue.Empty:
                    if self._stop.is_set() and not (self._session and self._session.is_alive()):
                        break
                    continue
                try:
                    pub.send_multipart(frames, zmq.NOBLOCK)
                    self.published += 1
                    self.published_by_kind[frames[0].split(b".", 1)[0].decode()] += 1
                except zmq.ZMQError:
                    self.publish_drops += 1
        finally:
            pub.close(linger=500)  # give queued events a moment to reach the broker

    # --- the session ----------------------------------------------------------------

    def _session_loop(self) -> None:
        backoff = Backoff(*self._backoff)
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                if self._serve_connection():
                    break
                if time.monotonic() - started > self._window_s * 2:
                    backoff.reset()  # a session that lived a while resets it
                if self._move is not None:
                    delay, self._move = self._move, None  # refused by a passive broker
                else:
                    delay = backoff.next_delay()
                    if self._failover is not None:
                        self._failover.on_gone(
                            time.monotonic(), f"broker silent for {self._window_s:.1f} s"
                        )
                    log.warning("broker silent; reconnecting in %.2f s", delay)
                self.reconnects += 1
                if self._stop.wait(delay):
                    break
        except Exception:
            log.exception("worker session failed")
        finally:
            self._registered.clear()
            self._stopped.set()

    def _offer(self) -> list[str]:
        return sorted(self._available)

    def _send(self, dealer: zmq.Socket[bytes], frames: list[bytes]) -> None:
        try:
            dealer.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError as e:  # a lost heartbeat is harmless; a lost reply is late
            log.debug("message to broker not sent: %s", e)

    def _ready(self, dealer: zmq.Socket[bytes], services: list[str], capacity: int) -> None:
        # `session` (the connection number) lets the broker ignore a READY that arrives late
        # on a connection this worker has already abandoned.
        header = {
            "worker": self.id,
            "services": services,
            "capacity": capacity,
            "session": self._connections,
            # This worker reads BATCH: a round's requests may come in one message.
            "batch": True,
        }
        self._send(dealer, wire.encode_worker(WorkerCommand.READY, header))
        self.ready_sent += 1

    def _serve_connection(self) -> bool:
        """One connection's life; true when stopped, false when the broker went silent."""
        dealer = self._ctx.socket(zmq.DEALER)
        dealer.linger = 500
        dealer.sndhwm = dealer.rcvhwm = 100_000
        dealer.maxmsgsize = self._max_body * 2 + 64 * 1024
        if self._curve is not None:
            self._curve.apply(dealer)
        index = 0 if self._failover is None else self._failover.index
        self._event_target = self.event_endpoints[index % len(self.event_endpoints)]
        dealer.connect(self.endpoints[index])
        self._connections += 1
        self._broker_batches = False
        poller = zmq.Poller()
        poller.register(dealer, zmq.POLLIN)
        poller.register(self._wakeup, zmq.POLLIN)
        self._registered.clear()
        offered = self._offer()
        self._ready(dealer, offered, self.capacity)
        last_heard = time.monotonic()
        next_hb = last_heard + self._hb_s
        drain_until: float | None = None
        self._ready_at = None
        try:
            while True:
                now = time.monotonic()
                if drain_until is None and self._stop.is_set():
                    log.info("draining (%d in flight)", self._in_flight)
                    self._ready(dealer, [], 0)
                    self._registered.clear()
                    drain_until = now + self._drain_s
                if drain_until is not None and (self._in_flight == 0 or now >= drain_until):
                    self._send(
                        dealer,
                        wire.encode_worker(
                            WorkerCommand.DISCONNECT, {"reason": "worker shutting down"}
                        ),
                    )
                    return True
                if self._ready_at is not None and now >= self._ready_at and drain_until is None:
                    self._ready_at = None
                    self._ready(dealer, offered, self.capacity)
                if now >= next_hb:
                    self._send(dealer, wire.encode_worker(WorkerCommand.HEARTBEAT, {}))
                    next_hb = now + self._hb_s
                    if drain_until is None and self._offer() != offered:
                        offered = self._offer()
                        log.info("services changed to %s; updating broker", offered)
                        self._ready(dealer, offered, self.capacity)
                timeout = max(0, min(_MAX_POLL_MS, int((next_hb - now) * 1000) + 1))
                self._wakeup.sleeping = True
                if self._results:
                    timeout = 0
                ready = dict(poller.poll(timeout))
                self._wakeup.sleeping = False
                if self._wakeup in ready:
                    self._wakeup.drain()
                self._forward_results(dealer)
                if dealer in ready and self._read_broker(dealer, offered, drain_until is not None):
                    last_heard = time.monotonic()
                if self._move is not None:
                    return False
                # Judged after reading what waits, so a stalled process does not mistake
                # unread heartbeats for silence.
                if time.monotonic() - last_heard > self._window_s:
                    self._registered.clear()
                    return False
        finally:
            dealer.close()

    def _forward_results(self, dealer: zmq.Socket[bytes]) -> None:
        results = self._results
        if len(results) < 2 or not self._broker_batches:
            while results:
                self._send(dealer, results.popleft())
            return
        # Several ready: in BATCHes within the protocol's limits (docs/protocol.md); one
        # frame per worker-protocol message.
        ready = [results.popleft()[0] for _ in range(len(results))]
        for group in wire.batch_groups(ready, len):
            self._send_group(dealer, group)

    def _send_group(self, dealer: zmq.Socket[bytes], group: list[bytes]) -> None:
        if len(group) == 1:
            self._send(dealer, group)
        else:
            self._send(
                dealer, [wire.encode_batch(wire.WORKER_PROTOCOL, WorkerCommand.BATCH, group)]
            )

    def _read_broker(self, dealer: zmq.Socket[bytes], offered: list[str], draining: bool) -> bool:
        heard = False
        while True:
            try:
                frames = dealer.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return heard
            heard = True
            if len(frames) == 1 and frames[0][: len(_BATCH_ID)] == _BATCH_ID:
                self._broker_batches = True
                messages = self._open_batch(frames[0])
            else:
                messages = [frames]
            for m in messages:
                try:
                    msg = wire.decode_worker_message(m)
                except ProtocolError as e:
                    self._bad_frame(e)
                    continue
                self._on_message(dealer, msg, offered, draining)
                if self._move is not None:
                    return heard

    def _open_batch(self, frame: bytes) -> list[list[bytes]]:
        """The messages of a broker's BATCH, each read as if it had come alone; a break
        in its layout is a bad frame (the messages before it still count)."""
        try:
            _, header, body = wire.split_message(frame, wire.WORKER_PROTOCOL)
            messages, broken = wire.batch_messages(wire.decode_header(header), body)
        except ProtocolError as e:
            self._bad_frame(e)
            return []
        if broken is not None:
            self._bad_frame(ProtocolError(broken))
        nested = [m for m in messages if m[: len(_BATCH_ID)] == _BATCH_ID]
        if nested:
            self._bad_frame(ProtocolError("a batch inside a batch"))
        return [[m] for m in messages if m[: len(_BATCH_ID)] != _BATCH_ID]

    def _bad_frame(self, e: ProtocolError) -> None:
        self.bad_frames += 1
        if self.bad_frames <= 10 or self.bad_frames % 1000 == 0:
            log.warning("bad message from broker (%d so far): %s", self.bad_frames, e)

    def _on_message(
        self, dealer: zmq.Socket[bytes], msg: wire.WorkerMessage, offered: list[str], draining: bool
    ) -> None:
        """One message from the broker (alone, or out of a BATCH)."""
        if msg.command == WorkerCommand.HEARTBEAT:
            if not draining:
                self._registered.set()  # the broker heartbeats only workers it knows
                if self._failover is not None:
                    self._failover.on_served()
                    self._failover.on_connected(self._failover.index)
        elif (
            msg.command == WorkerCommand.DISCONNECT
            and self._failover is not None
            and is_passive_disconnect(msg.reason)
        ):
            self._registered.clear()
            if not draining:
                self._on_passive(msg.reason)
                if self._move is not None:
                    return
        elif msg.command == WorkerCommand.DISCONNECT and wire.is_refusal(msg.reason):
            # One of our messages was refused; sending READY again would not fix it.
            log.error("broker refused a message from this worker: %s", msg.reason)
        elif msg.command == WorkerCommand.DISCONNECT:
            # "I do not know you" (it restarted) or "I am shutting down": register again.
            log.info("broker asked us to register again: %s", msg.reason)
            self._registered.clear()
            if not draining:
                self._ready(dealer, offered, self.capacity)
        elif msg.request is not None:
            if not draining:
                self._registered.set()
            self._on_request(dealer, msg.request, draining)

    def _on_passive(self, reason: str) -> None:
        """Our READY was refused by a passive broker: move to the other one, or (if that
        was found gone) send READY here again shortly — it is a vote for a takeover."""
        fo = self._failover
        assert fo is not None
        now = time.monotonic()
        switch = fo.on_passive(now, reason)
        if switch.moved:
            self._move = switch.delay
        elif self._ready_at is None:
            self._ready_at = now + max(switch.delay, 0.01)

    def _error(self, job: int, code: ErrorCode, message: str) -> list[bytes]:
        header = {"job": job, "code": int(code), "message": message}
        return wire.encode_worker(WorkerCommand.ERROR, header)

    def _on_request(
        self, dealer: zmq.Socket[bytes], req: wire.WorkerRequest, draining: bool
    ) -> None:
        if draining or req.service not in self._available:
            # Refused without executing: the broker delivers it elsewhere, even an order.
            self.refused += 1
            why = "worker is draining" if draining else f"service {req.service} not offered"
            self._send(dealer, self._error(req.job, ErrorCode.UNAVAILABLE, why))
            return
        if wire.now_ms() >= req.deadline_ms:
            self._send(
                dealer,
                self._error(
                    req.job, ErrorCode.DEADLINE_EXCEEDED, "deadline passed before execution"
                ),
            )
            return
        with self._count_lock:
            self._in_flight += 1
        try:
            self._pool.submit(self._execute, req)
        except RuntimeError:  # pool shut down
            with self._count_lock:
                self._in_flight -= 1
            self._send(dealer, self._error(req.job, ErrorCode.UNAVAILABLE, "worker stopping"))

    def _execute(self, req: wire.WorkerRequest) -> None:
        started = time.monotonic()
        try:
            frames = self._run_handler(req)
        except Exception as e:  # never lose an answer
            frames = self._error(req.job, ErrorCode.WORKER_ERROR, f"internal: {e}")
        if self._observer is not None:
            try:
                self._observer(req.service, _outcome(frames), time.monotonic() - started)
            except Exception:
                log.exception("request observer failed")
        self._results.append(frames)
        # `+=` is not atomic across threads, even under the GIL.
        with self._count_lock:
            self._in_flight -= 1
            self.served += 1
        self._wakeup.wake()

    def _run_handler(self, req: wire.WorkerRequest) -> list[bytes]:
        # Checked again: the request may have waited for a pool thread.
        if wire.now_ms() >= req.deadline_ms:
            return self._error(
                req.job, ErrorCode.DEADLINE_EXCEEDED, "deadline passed before execution"
            )
        try:
            body = wire.unpack_body(req.body)
        except ProtocolError as e:
            return self._error(req.job, ErrorCode.BAD_REQUEST, str(e))
        _local.request = Request(req.job, req.id, req.service, req.deadline_ms, req.idempotent)
        try:
            result = self.handlers[req.service](body)
        except HandlerError as e:
            code = ErrorCode.from_name(e.code) or ErrorCode.WORKER_ERROR
            return self._error(req.job, code, e.message)
        except Exception as e:
            return self._error(req.job, ErrorCode.WORKER_ERROR, f"{type(e).__name__}: {e}")
        finally:
            _local.request = None
        try:
            data = wire.pack(result.to_wire() if isinstance(result, WireObject) else result)
        except Exception as e:
            return self._error(req.job, ErrorCode.WORKER_ERROR, f"reply not encodable: {e}")
        if len(data) > self._max_body:
            return self._error(req.job, ErrorCode.TOO_LARGE, f"reply of {len(data)} bytes")
        return wire.encode_worker(WorkerCommand.REPLY, {"job": req.job}, data)


def _outcome(frames: list[bytes]) -> str:
    """``"ok"`` for a REPLY, else the ERROR's code name (frames we encoded ourselves)."""
    try:
        cmd, header, _ = wire.split_message(frames[0], wire.WORKER_PROTOCOL)
        if cmd == WorkerCommand.REPLY:
            return "ok"
        code = wire.decode_header(header).get("code")
    except ProtocolError:  # a header over the limit (a long message)
        code = None
    known = ErrorCode.from_number(code) if isinstance(code, int) else None
    return known.wire_name if known is not None else "worker_error"
