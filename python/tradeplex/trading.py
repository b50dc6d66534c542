"""Typed trading calls on a gateway service (``SIM``, ``CTP`` …), mixed into `Client`.

Each op is routed as docs/protocol.md says (mirroring client/src/trading.rs): an
account's orders and queries carry the affinity key ``acct.<account>`` (an account lives
on one gateway session), cancels and order queries target the worker named in the order
id, market-data subscriptions keep one worker per symbol (``md.<symbol>``).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterable
from concurrent.futures import Future, InvalidStateError
from typing import Any

from .errors import CallError, OrderOutcomeUnknown, ProtocolError
from .model import (
    Account,
    Bar,
    Contract,
    Direction,
    HistoryRequest,
    Offset,
    Order,
    OrderId,
    OrderRequest,
    OrderType,
    Position,
    Tick,
    Trade,
)


def account_key(account: str) -> str:
    """The affinity key of an account's requests, exactly as written."""
    return f"acct.{account}"


def _typed(result: Any, convert: Any) -> Any:
    try:
        return convert(result)
    except ProtocolError as e:
        raise CallError("bad_reply", str(e)) from None


def _order_future(call: Future[Any], gateway: str, req: OrderRequest) -> Future[Order]:
    """The order `call` places, typed as `send_order` types it."""
    order: Future[Order] = Future()

    def done(f: Future[Any]) -> None:
        error: BaseException | None = None
        try:
            result = _typed(f.result(), Order.from_wire)
        except CallError as e:
            outcome_unknown = e.outcome_unknown
            error = (
                OrderOutcomeUnknown(e, gateway, req.account, req.reference)
                if outcome_unknown
                else e
            )
        except BaseException as e:  # closed, cancelled: never leave the order pending
            error = e
        # The caller may have cancelled `order`: that must not break the I/O thread.
        with contextlib.suppress(InvalidStateError):
            if error is None:
                order.set_result(result)
            else:
                order.set_exception(error)

    call.add_done_callback(done)
    return order


class TradingMixin:
    """The trading ops of docs/protocol.md; needs a `call` method (see `Client`)."""

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
        raise NotImplementedError

    def call_many_async(
        self,
        service: str,
        bodies: Iterable[Any],
        *,
        idempotent: bool = False,
        timeout_ms: int | None = None,
        target: str | None = None,
        affinity: str | None = None,
        raw: bool = False,
    ) -> list[Future[Any]]:
        raise NotImplementedError

    def subscribe(self, gateway: str, symbol: str, exchange: str = "") -> Contract:
        """Starts ticks for `symbol` (events ``tick.<gateway>.<symbol>``); returns its contract."""
        body = {"op": "subscribe", "symbol": symbol, "exchange": exchange}
        r = self.call(gateway, body, idempotent=True, affinity=f"md.{symbol}")
        return _typed(r, Contract.from_wire)  # type: ignore[no-any-return]

    def send_order(
        self,
        gateway: str,
        req: OrderRequest | None = None,
        *,
        symbol: str = "",
        direction: Direction | str = Direction.LONG,
        volume: float = 0.0,
        price: float = 0.0,
        order_type: OrderType | str = OrderType.LIMIT,
        offset: Offset | str = Offset.NONE,
        exchange: str = "",
        account: str = "",
        reference: str = "",
        timeout_ms: int | None = None,
    ) -> Order:
        """Places an order; returns its first state (its id names the worker holding it).

        Pass an `OrderRequest`, or its fields as keywords. Never re-sent: if no definite
        answer comes (``worker_lost``, ``timeout``) it raises `OrderOutcomeUnknown`, whose
        ``.reference`` (filled in here when empty) settles it through `find_order`.
        """
        if req is None:
            req = OrderRequest(
                symbol=symbol,
                direction=Direction(direction),
                volume=volume,
                price=price,
                order_type=OrderType(order_type),
                offset=Offset(offset),
                exchange=exchange,
                account=account,
                reference=reference,
            )
        if not req.reference:
            req.reference = f"tpx-{uuid.uuid4().hex[:20]}"
        body = {"op": "send_order", **req.to_wire()}
        try:
            r = self.call(gateway, body, affinity=account_key(req.account), timeout_ms=timeout_ms)
        except CallError as e:
            if e.outcome_unknown:
                raise OrderOutcomeUnknown(e, gateway, req.account, req.reference) from e
            raise
        return _typed(r, Order.from_wire)  # type: ignore[no-any-return]

    def send_orders_async(
        self, gateway: str, reqs: Iterable[OrderRequest], *, timeout_ms: int | None = None
    ) -> list[Future[Order]]:
        """A basket of orders sent at once: a future per request, in order, each giving
        the order's first state or raising as `send_order` would (`OrderOutcomeUnknown`
        with the request's reference, filled in here when empty, or `CallError`).

        Each account's orders leave together, in as few BATCH messages as the protocol
        allows (`Client.call_many_async`), with that account's affinity; each order is
        still answered, refused by risk or timed out on its own, and never re-sent.
        Callbacks on the futures run on the client's I/O thread: keep them short.
        """
        reqs = list(reqs)
        by_account: dict[str, list[int]] = {}
        for i, req in enumerate(reqs):
            if not req.reference:
                req.reference = f"tpx-{uuid.uuid4().hex[:20]}"
            by_account.setdefault(req.account, []).append(i)
        out: dict[int, Future[Order]] = {}
        for account, indices in by_account.items():
            bodies = [{"op": "send_order", **reqs[i].to_wire()} for i in indices]
            calls = self.call_many_async(
                gateway, bodies, affinity=account_key(account), timeout_ms=timeout_ms
            )
            for i, call in zip(indices, calls, strict=True):
                out[i] = _order_future(call, gateway, reqs[i])
        return [out[i] for i in range(len(reqs))]

    def cancel_order(self, order_id: str, *, symbol: str = "", exchange: str = "") -> Order:
        """Cancels an order at the worker that placed it (never re-sent)."""
        oid = OrderId.parse(order_id)
        body = {"op": "cancel_order", "order_id": order_id, "symbol": symbol, "exchange": exchange}
        r = self.call(oid.gateway, body, target=oid.worker)
        return _typed(r, Order.from_wire)  # type: ignore[no-any-return]

    def query_order(self, order_id: str) -> Order:
        """One order's current state, from the worker that placed it."""
        oid = OrderId.parse(order_id)
        r = self.call(
            oid.gateway,
            {"op": "query_order", "order_id": order_id},
            idempotent=True,
            target=oid.worker,
        )
        return _typed(r, Order.from_wire)  # type: ignore[no-any-return]

    def query_orders(self, gateway: str, account: str = "") -> list[Order]:
        """Active orders of `account` ("" = the gateway's default account(s))."""
        r = self.call(
            gateway,
            {"op": "query_orders", "account": account},
            idempotent=True,
            affinity=account_key(account),
        )
        return _typed(r, Order.list_from_wire)  # type: ignore[no-any-return]

    def find_order(self, gateway: str, reference: str, account: str = "") -> Order | None:
        """The active order with `reference`, or None (it never arrived, or is final).

        The protocol has no lookup of final orders by reference: an order that filled or
        was cancelled meanwhile shows on ``order.<account>`` events instead.
        """
        for o in self.query_orders(gateway, account):
            if o.reference == reference:
                return o
        return None

    def query_account(self, gateway: str, account: str = "") -> list[Account]:
        """Account funds ("" = all accounts of the worker serving the default account)."""
        r = self.call(
            gateway,
            {"op": "query_account", "account": account},
            idempotent=True,
            affinity=account_key(account),
        )
        return _typed(r, Account.list_from_wire)  # type: ignore[no-any-return]

    def query_position(self, gateway: str, account: str = "") -> list[Position]:
        """Positions of `account`."""
        r = self.call(
            gateway,
            {"op": "query_position", "account": account},
            idempotent=True,
            affinity=account_key(account),
        )
        return _typed(r, Position.list_from_wire)  # type: ignore[no-any-return]

    def query_trades(self, gateway: str, account: str = "") -> list[Trade]:
        """Today's trades of `account`, oldest first (recovery after a restart)."""
        r = self.call(
            gateway,
            {"op": "query_trades", "account": account},
            idempotent=True,
            affinity=account_key(account),
        )
        return _typed(r, Trade.list_from_wire)  # type: ignore[no-any-return]

    def query_contract(self, gateway: str, symbol: str, exchange: str = "") -> Contract:
        """One contract (``exchange=""``: the gateway's only contract with that symbol)."""
        body = {"op": "query_contract", "symbol": symbol, "exchange": exchange}
        r = self.call(gateway, body, idempotent=True)
        return _typed(r, Contract.from_wire)  # type: ignore[no-any-return]

    def query_tick(self, gateway: str, symbol: str, exchange: str = "") -> Tick:
        """The last tick the gateway has for `symbol` (``worker_error`` before the first)."""
        body = {"op": "query_tick", "symbol": symbol, "exchange": exchange}
        r = self.call(gateway, body, idempotent=True, affinity=f"md.{symbol}")
        return _typed(r, Tick.from_wire)  # type: ignore[no-any-return]

    def query_contracts(self, gateway: str) -> list[Contract]:
        """Tradable contracts."""
        r = self.call(gateway, {"op": "query_contracts"}, idempotent=True)
        return _typed(r, Contract.list_from_wire)  # type: ignore[no-any-return]

    def query_history(self, gateway: str, req: HistoryRequest) -> list[Bar]:
        """Historical bars."""
        r = self.call(gateway, {"op": "query_history", **req.to_wire()}, idempotent=True)
        return _typed(r, Bar.list_from_wire)  # type: ignore[no-any-return]
