"""Following the active broker of a pair: the endpoint list and the decision to switch.

A broker pair (Binary Star) has one active broker; the passive one answers every request
but ``tpx.status`` with ERROR ``unavailable`` ``passive broker (pair …)`` (and a worker's
READY with DISCONNECT ``unavailable: passive broker …``) without queueing it, unless its
peer has been silent past the pair's window, in which case that very request makes it take
over. `Client`, `Worker` and `Subscriber` take an ordered list of endpoints (first =
primary) and use one broker at a time; this module holds what they share:

- `parse_endpoints`: a list, or a comma-separated string, checked.
- `Failover`: which endpoint is current, and the decisions "move on?" and "how long to
  wait before trying again", as plain methods taking ``now`` (no sockets), so they are
  tested alone.
- `ConnectionWatch`: a libzmq socket monitor, read into "connected or not" and "the
  connection dropped" (the broker is gone: killed, or silent past the ZMTP heartbeat).

With one endpoint none of this is used: the callers keep their single-broker behaviour.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

import zmq

log = logging.getLogger("tradeplex.failover")

#: ZMTP heartbeats on a client's DEALER when several endpoints are given: a peer silent
#: for the timeout (a dead host, a cut link) is disconnected, which the monitor reports.
HEARTBEAT_IVL_MS = 250
HEARTBEAT_TIMEOUT_MS = 1000
#: How long a request may wait for a connection to the current broker before the client
#: moves on (a broker that is down when the client starts, or does not come back).
CONNECT_TIMEOUT_S = 1.0
#: An endpoint left because it was gone is not turned to again (on a passive refusal
#: elsewhere) for this long: the other broker is about to take over.
GONE_MEMORY_S = 3.0
#: Re-sends after passive refusals wait ``0, MIN, 2*MIN, …, MAX`` seconds.
RETRY_MIN_S = 0.01
RETRY_MAX_S = 0.2

_PASSIVE = "passive broker"
_PASSIVE_DISCONNECT = "unavailable: " + _PASSIVE

#: What every endpoint argument takes: one endpoint, a comma-separated string, or a list.
Endpoints: TypeAlias = "str | Sequence[str]"


def parse_endpoints(value: Endpoints, what: str = "endpoint") -> tuple[str, ...]:
    """``"tcp://a:1,tcp://b:1"`` or ``["tcp://a:1", "tcp://b:1"]`` → the endpoints, in
    order. Raises ValueError for an empty list, a repeat or an endpoint that is not
    ``tcp://`` / ``ipc://`` (``inproc://`` is allowed too, for tests in one process)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"{what}: {item!r} is not a string")
        ep = item.strip()
        if not ep.startswith(("tcp://", "ipc://", "inproc://")) or len(ep) <= len("ipc://"):
            raise ValueError(f"{what}: {ep!r} must be a tcp:// or ipc:// endpoint")
        if ep in out:
            raise ValueError(f"{what}: {ep} given twice")
        out.append(ep)
    if not out:
        raise ValueError(f"{what}: no endpoint given")
    return tuple(out)


def is_passive_refusal(code: str, message: str) -> bool:
    """Whether a request's ERROR says the broker is the pair's passive one (the request
    was not queued: re-sending it elsewhere is safe, even for an order)."""
    return code == "unavailable" and message.startswith(_PASSIVE)


def is_passive_disconnect(reason: str) -> bool:
    """Whether a worker's DISCONNECT refuses its READY because the broker is passive."""
    return reason.startswith(_PASSIVE_DISCONNECT)


def retry_delay(refusals: int) -> float:
    """The wait before sending again after `refusals` passive refusals in a row (0 for
    the first: the other broker is asked at once)."""
    return 0.0 if refusals <= 0 else min(RETRY_MAX_S, RETRY_MIN_S * 2 ** (refusals - 1))


@dataclass(frozen=True)
class Switch:
    """A decision: the endpoint to use now and how long to wait before sending there."""

    endpoint: str
    moved: bool
    delay: float


class Failover:
    """The ordered endpoints of a pair and which one is current.

    Args:
        endpoints: at least two (with one, callers do not make a `Failover`).
        name: what follows the broker (``client``, ``worker``), for the log line.
    """

    def __init__(self, endpoints: Sequence[str], name: str = "client") -> None:
        if len(endpoints) < 2:
            raise ValueError("a failover needs at least two endpoints")
        self.endpoints = tuple(endpoints)
        self.name = name
        self.index = 0
        #: Times the current endpoint changed.
        self.switches = 0
        #: Passive refusals in a row (no other answer since); sets the retry delay.
        self.refusals = 0
        self._gone: dict[int, float] = {}

    @property
    def current(self) -> str:
        """The endpoint in use."""
        return self.endpoints[self.index]

    def on_gone(self, now: float, why: str) -> Switch:
        """The current broker is gone (its connection dropped, or none for too long):
        move to the next endpoint at once."""
        self._gone[self.index] = now
        self._move(self._next(self.index), why)
        return Switch(self.current, True, 0.0)

    def on_passive(self, now: float, why: str) -> Switch:
        """The current broker refused as passive. Move to another endpoint unless every
        other one was found gone lately (then the current one is about to take over: stay).
        The delay grows with the refusals in a row, so two passive brokers (or one that
        has not taken over yet) are not hammered."""
        delay = retry_delay(self.refusals)
        self.refusals += 1
        nxt = self._next(self.index)
        while nxt != self.index:
            seen = self._gone.get(nxt)
            if seen is None or now - seen > GONE_MEMORY_S:
                # Two passive brokers (a takeover not yet made) are asked in turn: the
                # first moves of a run are warnings, the rest debug lines.
                self._move(nxt, why, logging.WARNING if self.refusals <= 2 else logging.DEBUG)
                return Switch(self.current, True, delay)
            nxt = self._next(nxt)
        return Switch(self.current, False, delay)

    def on_served(self) -> None:
        """An answer other than a passive refusal arrived: the current broker is active."""
        self.refusals = 0

    def on_connected(self, index: int) -> None:
        """Endpoint `index` connected: it is not gone."""
        self._gone.pop(index, None)

    def _next(self, i: int) -> int:
        return (i + 1) % len(self.endpoints)

    def _move(self, to: int, why: str, level: int = logging.WARNING) -> None:
        log.log(
            level,
            "%s switching broker %s -> %s: %s",
            self.name,
            self.current,
            self.endpoints[to],
            why,
        )
        self.index = to
        self.switches += 1


# --- the socket monitor ----------------------------------------------------------------

_UP = zmq.EVENT_HANDSHAKE_SUCCEEDED
_DOWN = zmq.EVENT_DISCONNECTED
_WATCHED = _UP | _DOWN
_EVENT = struct.Struct("=HI")


class ConnectionWatch:
    """The monitor of one socket connected to one endpoint: `poll_events` reads what
    happened. Belongs to the thread that owns the socket (like the socket itself)."""

    def __init__(self, socket: zmq.Socket[bytes]) -> None:
        self.monitor: zmq.Socket[bytes] = socket.get_monitor_socket(_WATCHED)
        #: A ZMTP handshake has succeeded and the connection not dropped since.
        self.up = False
        #: The connection was up once and dropped (cleared by the reader).
        self.dropped = False
        #: Since when (monotonic) the connection has not been up (reset by the reader).
        self.down_since = time.monotonic()

    def poll_events(self) -> bool:
        """Reads the events waiting (without blocking); true if any changed `up`."""
        changed = False
        mon = self.monitor
        while True:
            try:
                frames = mon.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return changed
            except zmq.ZMQError:
                return changed
            if not frames or len(frames[0]) < _EVENT.size:
                continue
            event, _value = _EVENT.unpack_from(frames[0])
            if event == _UP:
                self.up = True
                changed = True
            elif event == _DOWN and self.up:
                self.up = False
                self.dropped = True
                changed = True

    def close(self, socket: zmq.Socket[bytes]) -> None:
        """Stops monitoring `socket` and closes the monitor (before `socket` is closed)."""
        with contextlib.suppress(zmq.ZMQError):
            socket.disable_monitor()
        self.monitor.close(linger=0)
