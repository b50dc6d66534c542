"""Tradeplex for Python: a client, an event subscriber and a worker for the Tradeplex
ZeroMQ trading broker, written from docs/protocol.md.

>>> import tradeplex
>>> with tradeplex.Client("tcp://127.0.0.1:5555") as c:      # doctest: +SKIP
...     c.call("echo", {"hi": 1})
{'hi': 1}
"""

from .client import Client, Reply
from .curve import KeyPair
from .errors import (
    CallError,
    HandlerError,
    OrderOutcomeUnknown,
    ProtocolError,
    TradeplexError,
)
from .model import (
    Account,
    Bar,
    Contract,
    Direction,
    HistoryRequest,
    Interval,
    Log,
    Offset,
    OptionType,
    Order,
    OrderId,
    OrderRequest,
    OrderType,
    Position,
    Product,
    Status,
    Tick,
    Trade,
)
from .subscriber import Event, Subscriber
from .wire import ErrorCode
from .worker import Request, Worker, current_request

__version__ = "0.1.0"

__all__ = [
    "Account",
    "Bar",
    "CallError",
    "Client",
    "Contract",
    "Direction",
    "ErrorCode",
    "Event",
    "HandlerError",
    "HistoryRequest",
    "Interval",
    "KeyPair",
    "Log",
    "Offset",
    "OptionType",
    "Order",
    "OrderId",
    "OrderOutcomeUnknown",
    "OrderRequest",
    "OrderType",
    "Position",
    "Product",
    "ProtocolError",
    "Reply",
    "Request",
    "Status",
    "Subscriber",
    "Tick",
    "Trade",
    "TradeplexError",
    "Worker",
    "__version__",
    "current_request",
]
