"""Translation between the wire's values and vn.py's enums, by member (vn.py's enum values
are translated display strings, so they are never used), and between order ids.

Wire order ids are ``<gateway>.<worker uuid>.<n>``; vn.py splits ``vt_orderid`` on ``.``,
so its ``orderid`` is the wire id with ``.`` replaced by ``_`` (reversible: the uuid holds
no ``_`` and `n` is digits, so the last two ``_`` separate them).
"""

from __future__ import annotations

from datetime import datetime, timezone

from vnpy.trader.constant import Direction, Exchange, Interval, Offset, OrderType, Product, Status

DIRECTION_TO_WIRE = {Direction.LONG: "long", Direction.SHORT: "short", Direction.NET: "net"}
DIRECTION_FROM_WIRE = {v: k for k, v in DIRECTION_TO_WIRE.items()}

OFFSET_TO_WIRE = {
    Offset.NONE: "none",
    Offset.OPEN: "open",
    Offset.CLOSE: "close",
    Offset.CLOSETODAY: "close_today",
    Offset.CLOSEYESTERDAY: "close_yesterday",
}
OFFSET_FROM_WIRE = {v: k for k, v in OFFSET_TO_WIRE.items()}

ORDER_TYPE_TO_WIRE = {
    OrderType.LIMIT: "limit",
    OrderType.MARKET: "market",
    OrderType.FAK: "fak",
    OrderType.FOK: "fok",
}
ORDER_TYPE_FROM_WIRE = {v: k for k, v in ORDER_TYPE_TO_WIRE.items()}

STATUS_FROM_WIRE = {
    "submitting": Status.SUBMITTING,
    "not_traded": Status.NOTTRADED,
    "part_traded": Status.PARTTRADED,
    "all_traded": Status.ALLTRADED,
    "cancelled": Status.CANCELLED,
    "rejected": Status.REJECTED,
}

PRODUCT_FROM_WIRE = {
    "futures": Product.FUTURES,
    "equity": Product.EQUITY,
    "spot": Product.SPOT,
    "option": Product.OPTION,
    "index": Product.INDEX,
    "forex": Product.FOREX,
    "etf": Product.ETF,
    "bond": Product.BOND,
    "warrant": Product.WARRANT,
    "spread": Product.SPREAD,
    "fund": Product.FUND,
    "cfd": Product.CFD,
    "swap": Product.SWAP,
}

INTERVAL_TO_WIRE = {
    Interval.MINUTE: "minute",
    Interval.HOUR: "hour",
    Interval.DAILY: "daily",
    Interval.WEEKLY: "weekly",
    Interval.TICK: "tick",
}
INTERVAL_FROM_WIRE = {v: k for k, v in INTERVAL_TO_WIRE.items()}

_EXCHANGES = {e.value: e for e in Exchange}


def exchange_from_wire(value: str) -> Exchange:
    """vn.py's Exchange for a wire value; ``GLOBAL`` for one vn.py does not list."""
    return _EXCHANGES.get(value, Exchange.GLOBAL)


def orderid_from_wire(order_id: str) -> str:
    """The vn.py orderid (no ``.``) of a wire order id."""
    return order_id.replace(".", "_")


def orderid_to_wire(orderid: str) -> str:
    """The wire order id of a vn.py orderid made by `orderid_from_wire`."""
    parts = orderid.rsplit("_", 2)
    if len(parts) != 3:
        raise ValueError(f"{orderid!r} is not a Tradeplex order id")
    return ".".join(parts)


def datetime_from_ns(ns: int) -> datetime:
    """A timezone-aware datetime (local zone) from Unix ns."""
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).astimezone()


def ns_from_datetime(dt: datetime | None) -> int:
    """Unix ns of `dt` (naive means local time); 0 for None."""
    return 0 if dt is None else int(dt.timestamp() * 1_000_000_000)


STATUS_TO_WIRE = {v: k for k, v in STATUS_FROM_WIRE.items()}
PRODUCT_TO_WIRE = {v: k for k, v in PRODUCT_FROM_WIRE.items()}
