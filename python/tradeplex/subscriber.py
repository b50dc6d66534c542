"""`Subscriber`: events from the broker's XPUB (``TPXE01``).

A background thread owns the SUB socket. It subscribes to the caller's topic prefixes and
always to ``hb.`` (the broker's heartbeat); drops repeats and counts gaps by sequence
number per (source, topic); repairs gaps from the broker's store of recent events
(``tpx.replay``) when given the broker's frontend (`repair`); and when the broker's
heartbeat goes silent it rebuilds the socket, which sends the subscriptions again (mirrors
client/src/events.rs).

With a broker pair's two XPUB endpoints it holds one SUB per endpoint, all subscribed at
once: only the active broker gets workers' events, so nothing switches when the pair
fails over; each socket watches its own broker's heartbeat, and repeats (the same
source, topic and number through both) are dropped.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from . import wire
from .client import DEFAULT_EVENTS, Client
from .curve import ClientCurve
from .errors import CallError, ProtocolError
from .failover import Endpoints, parse_endpoints
from .model import EVENT_TYPES, WireObject

log = logging.getLogger("tradeplex.subscriber")

#: Most (source, topic) pairs tracked for gap detection (bounded memory).
MAX_TRACKED = 100_000
_POLL_MS = 50
#: Most events one ``tpx.replay`` request may ask for (the broker's limit).
MAX_REPLAY_SPAN = 100_000
#: After a failed repair call (broker gone, gap recovery off), gaps are only counted for
#: this long, so the subscriber does not stall on every gap of an outage.
REPAIR_PAUSE_S = 5.0


@dataclass(frozen=True)
class Event:
    """One event. `body` is the decoded MessagePack body (None when empty)."""

    topic: str
    source: str
    seq: int
    ts_ns: int
    kind: str
    body: Any
    raw: bytes = field(repr=False, default=b"")

    def data(self) -> WireObject | None:
        """The body as its model type (`Tick`, `Order` …), or None for ``hb``/unknown kinds.

        Raises `ProtocolError` if the body does not fit the type.
        """
        cls = EVENT_TYPES.get(self.kind)
        return None if cls is None else cls.from_wire(self.body)


class Subscriber:
    """Subscribes to topic prefixes; iterate it for `Event`s (blocks until closed).

    Args:
        events: the broker's XPUB endpoint; for a broker pair both (a list, or one
            comma-separated string).
        topics: topic prefixes, e.g. ``["tick.SIM.", "order."]`` (one string is one prefix).
        heartbeat_ms, liveness: the broker's heartbeat settings; silence for their product
            makes the subscriber reconnect.
        queue_size: events buffered for the caller; beyond it new ones are dropped
            (counted in ``.local_drops``).
        repair: the broker's frontend endpoint(s): on a jump in a topic's sequence numbers the
            missing events the broker still holds are fetched (``tpx.replay``) and
            delivered, in order, before the event that showed the gap (counted in
            ``.repaired``; the rest in ``.gaps``). None: gaps are only counted.
        repair_timeout_ms: how long one repair call may take.
    """

    def __init__(
        self,
        events: Endpoints = DEFAULT_EVENTS,
        topics: Iterable[str] | str = (),
        *,
        curve_server_key: str | None = None,
        curve_key_file: str | Path | None = None,
        curve: ClientCurve | None = None,
        heartbeat_ms: int = 1000,
        liveness: int = 3,
        queue_size: int = 100_000,
        hwm: int = 100_000,
        repair: Endpoints | None = None,
        repair_timeout_ms: int = 1000,
    ) -> None:
        self.endpoints = parse_endpoints(events, "events")
        #: The endpoints as one string (comma-separated when several).
        self.endpoint = ",".join(self.endpoints)
        self.prefixes: list[str] = [topics] if isinstance(topics, str) else list(topics)
        self._curve = curve or ClientCurve.from_options(curve_server_key, curve_key_file)
        self._silence_s = heartbeat_ms * liveness / 1000
        self._hwm = hwm
        self._repair = repair
        self._repair_timeout_ms = repair_timeout_ms
        self._repairer: Client | None = None
        self._repair_paused_until = 0.0
        self._queue: queue.Queue[Event | None] = queue.Queue(maxsize=max(1, queue_size))
        self._control: queue.SimpleQueue[tuple[bool, str]] = queue.SimpleQueue()
        self._last_seq: dict[str, dict[str, int]] = {}
        self._tracked = 0
        self._broker: str | None = None
        #: The broker instance last heard at each endpoint (restarts are per endpoint).
        self._sources: list[str | None] = [None] * len(self.endpoints)
        self._connected = threading.Event()
        self._stop = threading.Event()
        #: Events known missing (sequence gaps: lost upstream or at a high-water mark) and
        #: not recovered by repair.
        self.gaps = 0
        #: Missed events recovered from the broker (``tpx.replay``) and delivered in order.
        self.repaired = 0
        #: Repeats dropped (e.g. last-value re-sends of ticks already seen).
        self.repeats = 0
        #: Events delivered to the caller's queue.
        self.received = 0
        #: Events dropped because the caller read too slowly.
        self.local_drops = 0
        #: Malformed messages dropped.
        self.bad_frames = 0
        #: Times the broker went silent and the socket was rebuilt (with a pair: times a
        #: broker that was heard went silent, e.g. the active one of a failover).
        self.reconnects = 0
        #: Times a new broker instance was seen on ``hb.broker`` (it restarted).
        self.broker_restarts = 0
        #: Broker heartbeats seen.
        self.heartbeats = 0
        self._ctx = zmq.Context()
        try:  # errors (bad endpoint) surface here, in the caller
            sockets = [self._open(ep) for ep in self.endpoints]
        except zmq.ZMQError:
            self._ctx.destroy(linger=0)
            raise
        self._thread = threading.Thread(
            target=self._run, args=(sockets,), name="tpx-events", daemon=True
        )
        self._thread.start()

    # --- caller side -----------------------------------------------------------------

    def subscribe(self, prefix: str) -> None:
        """Adds a topic prefix (the broker then re-sends the last tick of matching topics)."""
        self._control.put((True, prefix))

    def unsubscribe(self, prefix: str) -> None:
        """Removes a topic prefix."""
        self._control.put((False, prefix))

    def recv(self, timeout: float | None = None) -> Event | None:
        """The next event, waiting up to `timeout` seconds (None: forever); None if none."""
        until = None if timeout is None else time.monotonic() + timeout
        while not self._stop.is_set():  # after close(), undelivered events are dropped
            # Wait in slices so a close() is seen even if its sentinel found the queue full.
            left = 0.1 if until is None else min(0.1, until - time.monotonic())
            try:
                ev = self._queue.get(timeout=max(0.0, left))
                break
            except queue.Empty:
                if until is not None and time.monotonic() >= until:
                    return None
        else:
            return None
        if ev is None:  # closed
            self._queue.put_nowait(None)
            return None
        return ev

    def __iter__(self) -> Iterator[Event]:
        while True:
            ev = self.recv()
            if ev is None:
                return
            yield ev

    def wait_connected(self, timeout: float = 5.0) -> bool:
        """Waits for a broker heartbeat, which proves the subscription is live."""
        return self._connected.wait(timeout)

    @property
    def broker(self) -> str | None:
        """The broker instance last seen on ``hb.broker``."""
        return self._broker

    def close(self) -> None:
        """Stops the thread; iteration ends."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=5)
        if self._repairer is not None and not self._thread.is_alive():
            self._repairer.close()
        if not self._thread.is_alive():
            self._ctx.term()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the thread ------------------------------------------------------------------

    def _open(self, endpoint: str) -> zmq.Socket[bytes]:
        s = self._ctx.socket(zmq.SUB)
        s.linger = 0
        s.rcvhwm = self._hwm
        s.maxmsgsize = 4 << 20
        if self._curve is not None:
            self._curve.apply(s)
        s.setsockopt(zmq.SUBSCRIBE, b"hb.")
        for p in self.prefixes:
            s.setsockopt(zmq.SUBSCRIBE, p.encode())
        s.connect(endpoint)
        return s

    def _run(self, sockets: list[zmq.Socket[bytes]]) -> None:
        if len(sockets) == 1:
            self._run_one(sockets)
        else:
            self._run_pair(sockets)

    def _run_one(self, sockets: list[zmq.Socket[bytes]]) -> None:
        last_heartbeat = time.monotonic()
        try:
            while not self._stop.is_set():
                self._apply_control(sockets)
                socket = sockets[0]
                if socket.poll(_POLL_MS, zmq.POLLIN) and self._drain(socket, 0):
                    last_heartbeat = time.monotonic()
                if time.monotonic() - last_heartbeat > self._silence_s:
                    # The broker is gone or the connection half-open: a new socket
                    # connects afresh and sends every subscription again.
                    log.warning("broker heartbeat silent; reconnecting event socket")
                    self.reconnects += 1
                    self._connected.clear()
                    self._reopen(sockets, 0)
                    last_heartbeat = time.monotonic()
        except Exception:
            log.exception("subscriber thread failed")
        finally:
            sockets[0].close(linger=0)

    def _run_pair(self, sockets: list[zmq.Socket[bytes]]) -> None:
        """One SUB per endpoint; each is rebuilt when its broker's heartbeat is silent."""
        now = time.monotonic()
        last = [now] * len(sockets)
        heard = [False] * len(sockets)  # heard from since the last rebuild
        poller = self._poller(sockets)
        try:
            while not self._stop.is_set():
                self._apply_control(sockets)
                for sock, _ in poller.poll(_POLL_MS):
                    i = sockets.index(sock)
                    heard[i] = True  # a broker was there (any message; liveness is by hb)
                    if self._drain(sock, i):
                        last[i] = time.monotonic()
                now = time.monotonic()
                for i in range(len(sockets)):
                    if now - last[i] <= self._silence_s:
                        continue
                    if heard[i]:
                        # Counted once per broker lost, not at every rebuild while it
                        # stays down (the other broker of the pair carries the events).
                        log.warning(
                            "broker heartbeat silent at %s; reconnecting that event socket",
                            self.endpoints[i],
                        )
                        self.reconnects += 1
                    heard[i] = False
                    self._reopen(sockets, i)
                    poller = self._poller(sockets)
                    last[i] = now
                if not any(heard):
                    self._connected.clear()
        except Exception:
            log.exception("subscriber thread failed")
        finally:
            for s in sockets:
                s.close(linger=0)

    @staticmethod
    def _poller(sockets: list[zmq.Socket[bytes]]) -> zmq.Poller:
        poller = zmq.Poller()
        for s in sockets:
            poller.register(s, zmq.POLLIN)
        return poller

    def _reopen(self, sockets: list[zmq.Socket[bytes]], i: int) -> None:
        sockets[i].close(linger=0)
        sockets[i] = self._open(self.endpoints[i])

    def _apply_control(self, sockets: list[zmq.Socket[bytes]]) -> None:
        while True:
            try:
                add, prefix = self._control.get_nowait()
            except queue.Empty:
                return
            if add:
                self.prefixes.append(prefix)
            elif prefix in self.prefixes:
                self.prefixes.remove(prefix)
            for socket in sockets:
                option = zmq.SUBSCRIBE if add else zmq.UNSUBSCRIBE
                socket.setsockopt(option, prefix.encode())

    def _drain(self, socket: zmq.Socket[bytes], at: int) -> bool:
        """Reads what is waiting on the socket of endpoint `at`; true if a broker
        heartbeat was among it."""
        heard = False
        while True:
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return heard
            try:
                h = wire.decode_event(frames)
                body = wire.unpack_body(frames[3])
            except ProtocolError as e:
                self.bad_frames += 1
                if self.bad_frames <= 10 or self.bad_frames % 1000 == 0:
                    log.warning("malformed event dropped (%d so far): %s", self.bad_frames, e)
                continue
            if h.topic == wire.BROKER_HEARTBEAT_TOPIC:
                heard = True
                self._on_heartbeat(h.source, at)
            self._accept(h, body, frames[3])

    def _on_heartbeat(self, source: str, at: int) -> None:
        self.heartbeats += 1
        known = self._sources[at]
        if known is not None and known != source:
            self.broker_restarts += 1
        self._sources[at] = source
        self._broker = source
        self._connected.set()

    def _accept(self, h: wire.EventHeader, body: Any, raw: bytes) -> None:
        first_missing = self._sequence(h.source, h.topic, h.seq)
        if first_missing is None:
            return  # a repeat
        # hb. is always subscribed for liveness; deliver it only if asked for.
        wanted = any(h.topic.startswith(p) for p in self.prefixes)
        if first_missing < h.seq:
            last = h.seq - 1
            recovered = self._repair_gap(h, first_missing, last) if wanted else 0
            self.gaps += last - first_missing + 1 - recovered
        if wanted:
            self._deliver(Event(h.topic, h.source, h.seq, h.ts_ns, h.kind, body, raw))

    def _deliver(self, ev: Event) -> None:
        try:
            self._queue.put_nowait(ev)
            self.received += 1
        except queue.Full:
            self.local_drops += 1

    def _sequence(self, source: str, topic: str, seq: int) -> int | None:
        """Sequence numbers are contiguous per (source, topic): a jump is a gap, a number
        already seen a repeat. Returns None for a repeat (dropped), else the first number
        not seen before `seq` (`seq` itself when nothing is missing)."""
        topics = self._last_seq.get(source)
        last = None if topics is None else topics.get(topic)
        if last is None:
            if self._tracked < MAX_TRACKED:
                self._tracked += 1
                self._last_seq.setdefault(source, {})[topic] = seq
            return seq
        if seq <= last:
            self.repeats += 1
            return None
        self._last_seq[source][topic] = seq
        return last + 1

    def _repair_gap(self, h: wire.EventHeader, first: int, last: int) -> int:
        """Fetches ``first..last`` of (source, topic) from the broker and delivers what it
        still holds, in order; returns how many. Only the newest `MAX_REPLAY_SPAN` of a
        longer gap are asked for."""
        client = self._repair_client()
        if client is None:
            return 0
        nxt = max(first, last + 1 - MAX_REPLAY_SPAN)
        recovered = 0
        while nxt <= last:
            req = {"source": h.source, "topic": h.topic, "from_seq": nxt, "to_seq": last}
            try:
                reply = client.call(
                    "tpx.replay", req, idempotent=True, timeout_ms=self._repair_timeout_ms
                )
                events = reply["events"]
                complete = bool(reply["complete"])
            except (CallError, KeyError, TypeError) as e:
                log.warning("gap repair failed; counting gaps for a while: %s", e)
                self._repair_paused_until = time.monotonic() + REPAIR_PAUSE_S
                break
            got = self._deliver_replayed(h, events, nxt, last)
            recovered += got
            if complete or got == 0:
                break
            nxt = int(events[-1]["seq"]) + 1
        self.repaired += recovered
        return recovered

    def _deliver_replayed(self, h: wire.EventHeader, events: Any, first: int, last: int) -> int:
        delivered = 0
        for e in events:
            try:
                seq, ts_ns, raw = int(e["seq"]), int(e["ts_ns"]), bytes(e["body"])
                body = wire.unpack_body(raw)
            except (KeyError, TypeError, ValueError, ProtocolError) as err:
                self.bad_frames += 1
                log.warning("malformed replayed event dropped: %s", err)
                continue
            if first <= seq <= last:
                self._deliver(Event(h.topic, h.source, seq, ts_ns, h.kind, body, raw))
                delivered += 1
        return delivered

    def _repair_client(self) -> Client | None:
        """The repair connection, made on first use; None when repair is off or paused."""
        if self._repair is None or time.monotonic() < self._repair_paused_until:
            return None
        if self._repairer is None:
            self._repairer = Client(
                self._repair,
                self.endpoint,
                curve=self._curve,
                timeout_ms=self._repair_timeout_ms,
            )
        return self._repairer
