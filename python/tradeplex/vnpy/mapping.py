"""Translation between the wire's values and vn.py's enums, by member (vn.py's enum values
are translated display strings, so they are never used), and between order ids.

Every member of vn.py's `Direction`, `Offset`, `OrderType`, `Status`, `Product`,
`OptionType` and `Interval` has a wire name (docs/protocol.md, Data model) and back; the
tests check both directions member by member. `Exchange` values are venue codes (``CFFEX``),
not translated, and are the wire's values as they are.

Wire order ids are ``<gateway>.<worker uuid>.<n>``; vn.py splits ``vt_orderid`` on ``.``,
so its ``orderid`` for an order this session did not place is the wire id with ``.``
replaced by ``_`` (reversible: the uuid holds no ``_`` and `n` is digits, so the last two
``_`` separate them).
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
from typing import TypeVar

from vnpy.trader.constant import (
    Direction,
    Exchange,
    Interval,
    Offset,
    OptionType,
    OrderType,
    Product,
    Status,
)

from tradeplex import model

E = TypeVar("E", bound=Enum)


def _inverse(table: dict[E, str]) -> dict[str, E]:
    return {v: k for k, v in table.items()}


DIRECTION_TO_WIRE: dict[Direction, str] = {
    Direction.LONG: model.Direction.LONG.value,
    Direction.SHORT: model.Direction.SHORT.value,
    Direction.NET: model.Direction.NET.value,
}
DIRECTION_FROM_WIRE = _inverse(DIRECTION_TO_WIRE)

OFFSET_TO_WIRE: dict[Offset, str] = {
    Offset.NONE: model.Offset.NONE.value,
    Offset.OPEN: model.Offset.OPEN.value,
    Offset.CLOSE: model.Offset.CLOSE.value,
    Offset.CLOSETODAY: model.Offset.CLOSE_TODAY.value,
    Offset.CLOSEYESTERDAY: model.Offset.CLOSE_YESTERDAY.value,
}
OFFSET_FROM_WIRE = _inverse(OFFSET_TO_WIRE)

ORDER_TYPE_TO_WIRE: dict[OrderType, str] = {
    OrderType.LIMIT: model.OrderType.LIMIT.value,
    OrderType.MARKET: model.OrderType.MARKET.value,
    OrderType.STOP: model.OrderType.STOP.value,
    OrderType.FAK: model.OrderType.FAK.value,
    OrderType.FOK: model.OrderType.FOK.value,
    OrderType.RFQ: model.OrderType.RFQ.value,
    OrderType.ETF: model.OrderType.ETF.value,
}
ORDER_TYPE_FROM_WIRE = _inverse(ORDER_TYPE_TO_WIRE)

STATUS_TO_WIRE: dict[Status, str] = {
    Status.SUBMITTING: model.Status.SUBMITTING.value,
    Status.NOTTRADED: model.Status.NOT_TRADED.value,
    Status.PARTTRADED: model.Status.PART_TRADED.value,
    Status.ALLTRADED: model.Status.ALL_TRADED.value,
    Status.CANCELLED: model.Status.CANCELLED.value,
    Status.REJECTED: model.Status.REJECTED.value,
}
STATUS_FROM_WIRE = _inverse(STATUS_TO_WIRE)

PRODUCT_TO_WIRE: dict[Product, str] = {
    Product.FUTURES: model.Product.FUTURES.value,
    Product.EQUITY: model.Product.EQUITY.value,
    Product.SPOT: model.Product.SPOT.value,
    Product.OPTION: model.Product.OPTION.value,
    Product.INDEX: model.Product.INDEX.value,
    Product.FOREX: model.Product.FOREX.value,
    Product.ETF: model.Product.ETF.value,
    Product.BOND: model.Product.BOND.value,
    Product.WARRANT: model.Product.WARRANT.value,
    Product.SPREAD: model.Product.SPREAD.value,
    Product.FUND: model.Product.FUND.value,
    Product.CFD: model.Product.CFD.value,
    Product.SWAP: model.Product.SWAP.value,
}
PRODUCT_FROM_WIRE = _inverse(PRODUCT_TO_WIRE)

OPTION_TYPE_TO_WIRE: dict[OptionType, str] = {
    OptionType.CALL: model.OptionType.CALL.value,
    OptionType.PUT: model.OptionType.PUT.value,
}
OPTION_TYPE_FROM_WIRE = _inverse(OPTION_TYPE_TO_WIRE)

INTERVAL_TO_WIRE: dict[Interval, str] = {
    Interval.MINUTE: model.Interval.MINUTE.value,
    Interval.HOUR: model.Interval.HOUR.value,
    Interval.DAILY: model.Interval.DAILY.value,
    Interval.WEEKLY: model.Interval.WEEKLY.value,
    Interval.TICK: model.Interval.TICK.value,
}
INTERVAL_FROM_WIRE = _inverse(INTERVAL_TO_WIRE)

#: Every table, for the tests: (vn.py enum, wire enum, to wire, from wire).
TABLES: list[tuple[type[Enum], type[Enum], dict[object, str], dict[str, object]]] = [
    (Direction, model.Direction, DIRECTION_TO_WIRE, DIRECTION_FROM_WIRE),  # type: ignore[list-item]
    (Offset, model.Offset, OFFSET_TO_WIRE, OFFSET_FROM_WIRE),  # type: ignore[list-item]
    (OrderType, model.OrderType, ORDER_TYPE_TO_WIRE, ORDER_TYPE_FROM_WIRE),  # type: ignore[list-item]
    (Status, model.Status, STATUS_TO_WIRE, STATUS_FROM_WIRE),  # type: ignore[list-item]
    (Product, model.Product, PRODUCT_TO_WIRE, PRODUCT_FROM_WIRE),  # type: ignore[list-item]
    (OptionType, model.OptionType, OPTION_TYPE_TO_WIRE, OPTION_TYPE_FROM_WIRE),  # type: ignore[list-item]
    (Interval, model.Interval, INTERVAL_TO_WIRE, INTERVAL_FROM_WIRE),  # type: ignore[list-item]
]


def wire_name(value: object) -> str:
    """The wire string of a decoded enum field (a `model` enum, or a string this version
    of the model does not know)."""
    return str(value.value) if isinstance(value, Enum) else str(value)


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


def optional_datetime(ns: int | None) -> datetime | None:
    """`datetime_from_ns`, or None for a time the wire left out (or 0)."""
    return datetime_from_ns(ns) if ns else None


def ns_from_datetime(dt: datetime | None) -> int:
    """Unix ns of `dt` (naive means local time); 0 for None."""
    return 0 if dt is None else int(dt.timestamp() * 1_000_000_000)
