"""Exceptions raised by the Tradeplex Python package.

`CallError` carries the wire's error name (``worker_lost``, ``unknown_service`` ...) or a
client-side one (``timeout``, ``unavailable``, ``closed``, ``bad_reply``) so callers can
branch on ``.code`` without knowing numbers.
"""

from __future__ import annotations

#: Client-side error names (not on the wire).
TIMEOUT = "timeout"
UNAVAILABLE = "unavailable"
CLOSED = "closed"
BAD_REPLY = "bad_reply"

#: The broker's pre-trade risk stage refused an order (message: ``<rule>: limit <L>, value <V>``);
#: it never reached a worker (docs/risk.md).
RISK_REJECTED = "risk_rejected"

#: The caller may not make this request: ``tpx.risk`` without admin rights, a declared client
#: name from a peer not on loopback, or a CURVE key removed from the allow-list by a reload.
FORBIDDEN = "forbidden"

#: The wire's "worker lost, outcome unknown"; also what a client with several brokers
#: answers for a non-idempotent call in flight at a broker whose connection dropped.
WORKER_LOST = "worker_lost"

#: Codes after which an order's outcome is unknown: it may have reached the exchange.
OUTCOME_UNKNOWN = frozenset({WORKER_LOST, TIMEOUT})


class TradeplexError(Exception):
    """Base class of every error this package raises."""


class ProtocolError(TradeplexError):
    """A message that does not follow docs/protocol.md (bad frames, header or body)."""


class CallError(TradeplexError):
    """A call failed.

    Attributes:
        code: the error name, e.g. ``"worker_lost"`` (wire) or ``"timeout"`` (client side).
        message: human-readable detail.
        worker: the worker involved (uuid string), if known.
        number: the wire's numeric code, or None for client-side failures.
    """

    def __init__(
        self,
        code: str,
        message: str = "",
        worker: str | None = None,
        number: int | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
        self.worker = worker
        self.number = number

    @property
    def outcome_unknown(self) -> bool:
        """True when the request may have executed (``worker_lost``, ``timeout``)."""
        return self.code in OUTCOME_UNKNOWN

    def __reduce__(self) -> tuple[object, ...]:
        # Keep the fields when pickled across processes (e.g. by concurrent.futures).
        return (type(self), (self.code, self.message, self.worker, self.number))


class OrderOutcomeUnknown(CallError):  # noqa: N818 - named for what it says
    """`send_order` got no definite answer: the order may or may not be live.

    Never re-send it blindly. Settle it with `Client.find_order(gateway, reference,
    account)` (the reference is always set: `send_order` fills an empty one), or by
    watching ``order.<account>`` events for that reference.
    """

    def __init__(
        self,
        cause: CallError,
        gateway: str,
        account: str,
        reference: str,
    ) -> None:
        super().__init__(cause.code, cause.message, cause.worker, cause.number)
        self.gateway = gateway
        self.account = account
        self.reference = reference

    def __reduce__(self) -> tuple[object, ...]:
        cause = CallError(self.code, self.message, self.worker, self.number)
        return (type(self), (cause, self.gateway, self.account, self.reference))


class HandlerError(TradeplexError):
    """Raised by a `Worker` handler to answer a specific wire error.

    ``HandlerError("bad_request", "no symbol")`` answers ``bad_request``;
    ``HandlerError("unavailable", ...)`` refuses without executing, so the broker delivers
    the request to another worker. Any other exception answers ``worker_error``.
    """

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message
