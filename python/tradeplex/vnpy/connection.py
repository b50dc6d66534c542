"""When a hosted vn.py gateway counts as connected.

vn.py has no standard connection event: gateways say it in their log (`write_log`). The
host therefore follows two sources, and the first explicit report wins over the log:

- **Explicit reports**: a gateway calls `report_connection(self, connected, part)` (or
  puts an ``eTradeplexConnection`` event whose data has ``connected`` and ``part``);
  from the first such report on, log lines are no longer read for the connection state.
- **Log patterns** (`ConnectionRule`): three lists of regular expressions, tried on every
  log message in this order — *down* (``交易服务器连接断开``, ``… disconnected``),
  *login* (``交易服务器登录成功``, ``… logged in``) and *connect*
  (``行情Websocket API连接成功``, ``… connected``). A named group ``part`` says which
  session the line is about (CTP has a trading and a market-data session, text before
  ``连接断开``/``登录成功``). A part that went down comes back on a *login* line for it; on a
  *connect* line only if it has never logged a *login* line (CTP logs ``连接成功`` when
  its front answers, before it has logged in again; websocket gateways log in no
  further). An *up* line with an empty part clears every part.

The gateway is **connected** once it has pushed a contract and while no part is down.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vnpy.trader.gateway import BaseGateway

#: The vn.py event type of explicit connection reports.
EVENT_GATEWAY_CONNECTION = "eTradeplexConnection"

#: Defaults: what vnpy_ctp (and the CTP-like gateways: mini, femas, uft, tts …) and the
#: websocket gateways write, in Chinese, plus common English wording.
DEFAULT_DOWN = (
    r"^(?P<part>.*?)(?:连接断开|断开连接)",
    r"(?i)^(?P<part>.*?)\b(?:disconnected|connection (?:lost|closed))\b",
)
DEFAULT_LOGIN = (
    r"^(?P<part>.*?)登录成功",
    r"(?i)^(?P<part>.*?)\b(?:logged in|log ?in (?:succeeded|successful))\b",
)
DEFAULT_CONNECT = (
    r"^(?P<part>.*?)连接成功",
    r"(?i)^(?P<part>.*?)\bconnected\b",
)

_STRIP = " \t:：,，.。-"


@dataclass(frozen=True)
class GatewayConnection:
    """The data of an ``eTradeplexConnection`` event."""

    connected: bool
    part: str = ""


def report_connection(gateway: BaseGateway, connected: bool, part: str = "") -> None:
    """Tells a hosting `GatewayHost` that `gateway` (or one of its sessions, `part`) is
    connected or not. Harmless when the gateway is not hosted."""
    gateway.on_event(EVENT_GATEWAY_CONNECTION, GatewayConnection(connected, part))


def _compile(patterns: Iterable[str], what: str) -> list[re.Pattern[str]]:
    out = []
    for p in patterns:
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise ValueError(f"{what} pattern {p!r}: {e}") from None
    return out


@dataclass
class ConnectionRule:
    """The log patterns (regular expressions; see the module doc)."""

    down: list[re.Pattern[str]] = field(default_factory=lambda: _compile(DEFAULT_DOWN, "down"))
    login: list[re.Pattern[str]] = field(default_factory=lambda: _compile(DEFAULT_LOGIN, "login"))
    connect: list[re.Pattern[str]] = field(
        default_factory=lambda: _compile(DEFAULT_CONNECT, "connect")
    )

    @classmethod
    def from_patterns(
        cls,
        down: Iterable[str] | None = None,
        login: Iterable[str] | None = None,
        connect: Iterable[str] | None = None,
    ) -> ConnectionRule:
        """A rule from pattern strings; None keeps that list's defaults, [] empties it."""
        return cls(
            _compile(DEFAULT_DOWN if down is None else down, "down"),
            _compile(DEFAULT_LOGIN if login is None else login, "login"),
            _compile(DEFAULT_CONNECT if connect is None else connect, "connect"),
        )

    def classify(self, msg: str) -> tuple[str, str] | None:
        """``("down" | "login" | "connect", part)`` for a log line, or None."""
        for kind, patterns in (
            ("down", self.down),
            ("login", self.login),
            ("connect", self.connect),
        ):
            for p in patterns:
                m = p.search(msg)
                if m is not None:
                    part = m.groupdict().get("part") or ""
                    return kind, part.strip(_STRIP)
        return None


class ConnectionState:
    """Thread-safe connection state of one hosted gateway (see the module doc)."""

    def __init__(self, rule: ConnectionRule | None = None) -> None:
        self.rule = rule or ConnectionRule()
        self._lock = threading.Lock()
        self._contracts = False
        self._down: set[str] = set()
        self._logged_in: set[str] = set()
        self._explicit = False
        #: Whether it was connected once (a later loss is "reconnecting").
        self.was_connected = False

    @property
    def connected(self) -> bool:
        """Pushed a contract, and no part is down."""
        return self._contracts and not self._down

    @property
    def down_parts(self) -> list[str]:
        """The parts that reported a disconnect and have not come back."""
        with self._lock:
            return sorted(self._down)

    def gauge(self) -> int:
        """``tradeplex_gateway_connected``: 1 connected, 2 reconnecting, 0 disconnected."""
        if self.connected:
            return 1
        return 2 if self.was_connected else 0

    def _settle(self, before: bool) -> bool | None:
        now = self.connected
        if now:
            self.was_connected = True
        return now if now != before else None

    def on_contract(self) -> bool | None:
        """A contract arrived; returns the new state if it changed."""
        with self._lock:
            before = self.connected
            self._contracts = True
            return self._settle(before)

    def on_log(self, msg: str) -> bool | None:
        """A log line; returns the new state if it changed."""
        with self._lock:
            if self._explicit:
                return None
            found = self.rule.classify(msg)
            if found is None:
                return None
            kind, part = found
            before = self.connected
            if kind == "down":
                self._down.add(part)
            elif kind == "login":
                self._logged_in.add(part)
                self._up(part)
            elif part not in self._logged_in:
                self._up(part)
            return self._settle(before)

    def on_report(self, data: Any) -> bool | None:
        """An explicit report (`GatewayConnection` or anything with ``connected``)."""
        connected = (
            data.get("connected") if isinstance(data, dict) else getattr(data, "connected", None)
        )
        part = data.get("part", "") if isinstance(data, dict) else getattr(data, "part", "")
        if not isinstance(connected, bool):
            return None
        with self._lock:
            before = self.connected
            if not self._explicit:
                self._explicit = True
                self._down.clear()  # what the log said no longer counts
            if connected:
                self._up(str(part or ""))
            else:
                self._down.add(str(part or ""))
            return self._settle(before)

    def _up(self, part: str) -> None:
        if part:
            self._down.discard(part)
        else:
            self._down.clear()


#: The part the RpcClient watch reports on (its log lines start with it).
RPC_PART = "RpcServer"


class RpcClientWatch:
    """Makes a gateway built on vn.py's `RpcClient` (vnpy_rpcservice's `RpcGateway`, held
    in its ``client``) say in its log when the RpcServer goes silent and comes back.

    `RpcClient` only ``print``s when no heartbeat came for ``HEARTBEAT_TOLERANCE`` (30 s);
    the watch turns that into a *down* line, and a heartbeat seen afterwards (checked on
    vn.py's timer, every second) into a *login* line for the part ``RpcServer``.
    """

    def __init__(self, gateway: BaseGateway, client: Any) -> None:
        self.gateway = gateway
        self.client = client
        self._down_ping: object = None
        self._down = False
        original = client.on_disconnected

        def on_disconnected() -> None:
            if not self._down:
                self._down = True
                # RpcClient keeps the server's last heartbeat time here (no public API).
                self._down_ping = getattr(client, "_last_received_ping", None)
                gateway.write_log(f"{RPC_PART}连接断开 (no heartbeat from the RpcServer)")
            original()

        client.on_disconnected = on_disconnected

    @classmethod
    def attach(cls, gateway: BaseGateway) -> RpcClientWatch | None:
        """A watch when `gateway` holds a `vnpy.rpc.RpcClient` as ``client``, else None."""
        try:
            from vnpy.rpc import RpcClient
        except ImportError:  # pragma: no cover (vn.py without its rpc package)
            return None
        client = getattr(gateway, "client", None)
        return cls(gateway, client) if isinstance(client, RpcClient) else None

    def on_timer(self) -> None:
        """vn.py's timer: a heartbeat since the loss means the server is back."""
        if self._down and getattr(self.client, "_last_received_ping", None) != self._down_ping:
            self._down = False
            self.gateway.write_log(f"{RPC_PART}登录成功 (heartbeats again)")
