"""The trading data model of docs/protocol.md as dataclasses with the wire's field names.

``Order.from_wire(d)`` builds an object from a decoded MessagePack map (unknown fields
ignored, missing ones take their defaults, as the protocol says); ``obj.to_wire()`` gives
the map back. Enum fields are `str` enums whose values are the wire's snake_case strings;
a value this version does not know is kept as the plain string rather than refused, so a
newer worker cannot break an older client.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

from .errors import ProtocolError


class Direction(str, Enum):
    """Order or position side."""

    LONG = "long"
    SHORT = "short"
    NET = "net"


class Offset(str, Enum):
    """Open/close flag (futures)."""

    NONE = "none"
    OPEN = "open"
    CLOSE = "close"
    CLOSE_TODAY = "close_today"
    CLOSE_YESTERDAY = "close_yesterday"


class OrderType(str, Enum):
    """Order type."""

    LIMIT = "limit"
    MARKET = "market"
    STOP = "stop"
    FAK = "fak"
    FOK = "fok"
    RFQ = "rfq"
    ETF = "etf"


class Status(str, Enum):
    """Order status; `is_final` for the last three."""

    SUBMITTING = "submitting"
    NOT_TRADED = "not_traded"
    PART_TRADED = "part_traded"
    ALL_TRADED = "all_traded"
    CANCELLED = "cancelled"
    REJECTED = "rejected"

    @property
    def is_final(self) -> bool:
        """True for all_traded, cancelled and rejected."""
        return self in (Status.ALL_TRADED, Status.CANCELLED, Status.REJECTED)

    @property
    def stage(self) -> int:
        """How far along an order is: later states have higher stages."""
        return {"submitting": 0, "not_traded": 1, "part_traded": 2}.get(self.value, 3)


class Product(str, Enum):
    """Product class."""

    FUTURES = "futures"
    EQUITY = "equity"
    SPOT = "spot"
    OPTION = "option"
    INDEX = "index"
    FOREX = "forex"
    ETF = "etf"
    BOND = "bond"
    WARRANT = "warrant"
    SPREAD = "spread"
    FUND = "fund"
    CFD = "cfd"
    SWAP = "swap"


class OptionType(str, Enum):
    """Call or put (option contracts)."""

    CALL = "call"
    PUT = "put"


class Interval(str, Enum):
    """Bar interval."""

    MINUTE = "minute"
    HOUR = "hour"
    DAILY = "daily"
    WEEKLY = "weekly"
    TICK = "tick"


T = TypeVar("T", bound="WireObject")


class WireObject:
    """Mix-in: conversion between a dataclass and its wire map."""

    @classmethod
    def from_wire(cls: type[T], data: object) -> T:
        """Builds an object from a decoded map; `ProtocolError` if it is not one."""
        if not isinstance(data, dict):
            raise ProtocolError(f"{cls.__name__}: expected a map, got {type(data).__name__}")
        kwargs: dict[str, Any] = {}
        for f, conv in _converters(cls):  # type: ignore[arg-type]
            if f.name in data:
                try:
                    kwargs[f.name] = conv(data[f.name])
                except (TypeError, ValueError) as e:
                    raise ProtocolError(f"{cls.__name__}.{f.name}: {e}") from None
        try:
            return cls(**kwargs)
        except TypeError as e:  # a required field is missing
            raise ProtocolError(f"{cls.__name__}: {e}") from None

    @classmethod
    def list_from_wire(cls: type[T], data: object) -> list[T]:
        """Builds a list of objects from a decoded array of maps."""
        if not isinstance(data, list):
            raise ProtocolError(f"expected an array of {cls.__name__}")
        return [cls.from_wire(d) for d in data]

    def to_wire(self) -> dict[str, Any]:
        """The wire map (enums as their strings; None optionals left out)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if v is None:
                continue
            out[f.name] = v.value if isinstance(v, Enum) else v
        return out


def _lenient_enum(enum: type[Enum]) -> typing.Callable[[Any], Any]:
    def conv(v: Any) -> Any:
        if not isinstance(v, str):
            raise ValueError(f"{v!r} is not a string")
        try:
            return enum(v)
        except ValueError:
            return v  # a member added by a newer peer: keep the string

    return conv


def _number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"{v!r} is not a number")
    return float(v)


def _integer(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{v!r} is not an integer")
    return v


def _string(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError(f"{v!r} is not a string")
    return v


def _boolean(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{v!r} is not a bool")
    return v


def _floats(v: Any) -> list[float]:
    if not isinstance(v, list):
        raise ValueError(f"{v!r} is not an array")
    return [_number(x) for x in v]


def _optional(conv: typing.Callable[[Any], Any]) -> typing.Callable[[Any], Any]:
    return lambda v: None if v is None else conv(v)


def _converter_for(tp: Any) -> typing.Callable[[Any], Any]:
    args = typing.get_args(tp)
    if type(None) in args:  # X | None
        inner = next(a for a in args if a is not type(None))
        return _optional(_converter_for(inner))
    if isinstance(tp, type) and issubclass(tp, Enum):
        return _lenient_enum(tp)
    if tp is float:
        return _number
    if tp is int:
        return _integer
    if tp is bool:
        return _boolean
    if tp is str:
        return _string
    if typing.get_origin(tp) is list:
        return _floats
    raise TypeError(f"no wire converter for {tp!r}")


@functools.cache
def _converters(cls: type) -> list[tuple[dataclasses.Field[Any], typing.Callable[[Any], Any]]]:
    hints = typing.get_type_hints(cls)
    return [(f, _converter_for(hints[f.name])) for f in dataclasses.fields(cls)]


@dataclass
class Contract(WireObject):
    """A tradable instrument."""

    symbol: str
    exchange: str
    gateway: str
    name: str = ""
    product: Product = Product.FUTURES
    size: float = 1.0
    pricetick: float = 0.0
    min_volume: float = 1.0
    max_volume: float | None = None
    stop_supported: bool = False
    net_position: bool = False
    history_data: bool = False
    option_strike: float | None = None
    option_underlying: str | None = None
    option_type: OptionType | None = None
    option_listed_ns: int | None = None
    option_expiry_ns: int | None = None
    option_portfolio: str | None = None
    option_index: str | None = None


@dataclass
class Tick(WireObject):
    """A market-data snapshot; the book arrays are best first (5 levels)."""

    symbol: str
    exchange: str
    gateway: str
    datetime_ns: int = 0
    name: str = ""
    last_price: float = 0.0
    last_volume: float = 0.0
    volume: float = 0.0
    turnover: float = 0.0
    open_interest: float = 0.0
    open_price: float = 0.0
    high_price: float = 0.0
    low_price: float = 0.0
    pre_close: float = 0.0
    limit_up: float = 0.0
    limit_down: float = 0.0
    localtime_ns: int | None = None
    bid_price: list[float] = field(default_factory=list)
    bid_volume: list[float] = field(default_factory=list)
    ask_price: list[float] = field(default_factory=list)
    ask_volume: list[float] = field(default_factory=list)


@dataclass
class Bar(WireObject):
    """An OHLC bar."""

    symbol: str
    exchange: str
    gateway: str
    interval: Interval
    datetime_ns: int = 0
    open_price: float = 0.0
    high_price: float = 0.0
    low_price: float = 0.0
    close_price: float = 0.0
    volume: float = 0.0
    turnover: float = 0.0
    open_interest: float = 0.0


@dataclass
class Order(WireObject):
    """An order's state. `order_id` is ``<gateway>.<worker uuid>.<n>``."""

    order_id: str
    symbol: str
    exchange: str
    gateway: str
    account: str
    direction: Direction
    offset: Offset = Offset.NONE
    order_type: OrderType = OrderType.LIMIT
    price: float = 0.0
    volume: float = 0.0
    traded: float = 0.0
    status: Status = Status.SUBMITTING
    reason: str | None = None
    datetime_ns: int = 0
    reference: str = ""

    @property
    def is_final(self) -> bool:
        """True once the order can no longer change."""
        return isinstance(self.status, Status) and self.status.is_final

    @property
    def is_active(self) -> bool:
        """True while the order can still trade or be cancelled."""
        return not self.is_final

    def supersedes(self, other: Order) -> bool:
        """Whether this state is newer than `other` (same order): more traded, or later stage.

        Events may arrive out of order (a reply and an event race); keep the newest.
        """
        if self.order_id != other.order_id:
            return False
        if self.traded != other.traded:
            return self.traded > other.traded
        return _stage(self.status) > _stage(other.status)


def _stage(s: Status | str) -> int:
    return s.stage if isinstance(s, Status) else 3


@dataclass
class Trade(WireObject):
    """A fill."""

    trade_id: str
    order_id: str
    symbol: str
    exchange: str
    gateway: str
    account: str
    direction: Direction
    offset: Offset = Offset.NONE
    price: float = 0.0
    volume: float = 0.0
    datetime_ns: int = 0


@dataclass
class Position(WireObject):
    """A position (one per symbol and direction)."""

    symbol: str
    exchange: str
    gateway: str
    account: str
    direction: Direction
    volume: float = 0.0
    frozen: float = 0.0
    price: float = 0.0
    pnl: float = 0.0
    yd_volume: float = 0.0


@dataclass
class Account(WireObject):
    """Account funds."""

    account: str
    gateway: str
    balance: float = 0.0
    frozen: float = 0.0
    available: float = 0.0


@dataclass
class Log(WireObject):
    """A gateway log line."""

    gateway: str
    level: str
    msg: str
    datetime_ns: int = 0


@dataclass
class OrderRequest(WireObject):
    """What `send_order` sends. ``account=""`` is the gateway's default account."""

    symbol: str
    direction: Direction
    volume: float
    price: float = 0.0
    order_type: OrderType = OrderType.LIMIT
    offset: Offset = Offset.NONE
    exchange: str = ""
    account: str = ""
    reference: str = ""


@dataclass
class HistoryRequest(WireObject):
    """What `query_history` sends (``end_ns=0`` means now)."""

    symbol: str
    interval: Interval
    start_ns: int
    end_ns: int = 0
    exchange: str = ""


#: The body type of each event kind.
EVENT_TYPES: dict[str, type[WireObject]] = {
    "tick": Tick,
    "bar": Bar,
    "order": Order,
    "trade": Trade,
    "position": Position,
    "account": Account,
    "contract": Contract,
    "log": Log,
}


@dataclass(frozen=True)
class OrderId:
    """A parsed order id: ``<gateway>.<worker uuid>.<n>``."""

    gateway: str
    worker: str
    n: int

    @classmethod
    def parse(cls, order_id: str) -> OrderId:
        """Parses an order id; `ValueError` if it is not ``GATEWAY.WORKER_UUID.N``."""
        from .wire import valid_uuid

        parts = order_id.split(".")
        # The gateway name could itself hold dots; the uuid and n are the last two parts.
        if len(parts) < 3 or not parts[0] or not valid_uuid(parts[-2]) or not parts[-1].isdigit():
            raise ValueError(f"{order_id!r} is not GATEWAY.WORKER_UUID.N")
        return cls(".".join(parts[:-2]), parts[-2], int(parts[-1]))

    def __str__(self) -> str:
        return f"{self.gateway}.{self.worker}.{self.n}"
