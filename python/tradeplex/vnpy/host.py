"""`GatewayHost`: any vn.py gateway class served as a Tradeplex worker.

The gateway runs in its own vn.py `EventEngine`; what it pushes (contracts, ticks, orders,
trades, positions, accounts, logs) is cached and published as Tradeplex events; requests
become gateway calls, and queries are answered from the caches (vn.py gateways push, they
do not answer). Order ids are ``<gateway>.<worker uuid>.<n>`` and map to the gateway's own
``vt_orderid`` so cancels and queries reach the right session.
"""

from __future__ import annotations

import itertools
import threading
from datetime import datetime
from typing import Any

from vnpy.event import Event, EventEngine
from vnpy.trader.constant import Direction, Offset, OrderType, Status
from vnpy.trader.event import (
    EVENT_ACCOUNT,
    EVENT_CONTRACT,
    EVENT_LOG,
    EVENT_ORDER,
    EVENT_POSITION,
    EVENT_TICK,
    EVENT_TRADE,
)
from vnpy.trader.gateway import BaseGateway
from vnpy.trader.object import (
    AccountData,
    CancelRequest,
    ContractData,
    HistoryRequest,
    LogData,
    OrderData,
    OrderRequest,
    PositionData,
    SubscribeRequest,
    TickData,
    TradeData,
)

import tradeplex
from tradeplex import HandlerError

from . import mapping as m


def _ns(dt: datetime | None) -> int:
    return m.ns_from_datetime(dt) if dt is not None else tradeplex.wire.now_ns()


class GatewayHost:
    """Hosts one vn.py gateway instance as a Tradeplex worker serving its name."""

    def __init__(
        self,
        gateway_class: type[BaseGateway],
        setting: dict[str, Any],
        broker: str = "tcp://127.0.0.1:5556",
        events: str = "tcp://127.0.0.1:5557",
        capacity: int = 4,
        **worker_options: Any,
    ) -> None:
        self.name = gateway_class.default_name
        self.setting = setting
        self.worker = tradeplex.Worker(
            broker, events, {self.name: self.handle}, capacity, **worker_options
        )
        # Offered only once the gateway has shown it is connected (its first contract).
        self.worker.set_available(self.name, False)
        self.event_engine = EventEngine()
        self.gateway = gateway_class(self.event_engine, self.name)
        self._lock = threading.Lock()
        self._n = itertools.count(1)
        self.contracts: dict[str, ContractData] = {}
        self.orders: dict[str, dict[str, Any]] = {}  # wire id -> wire Order
        self._vt_to_wire: dict[str, str] = {}
        self._wire_to_vt: dict[str, str] = {}
        self.positions: dict[tuple[str, str], dict[str, Any]] = {}
        self.accounts: dict[str, dict[str, Any]] = {}
        for kind, fn in (
            (EVENT_CONTRACT, self._on_contract),
            (EVENT_TICK, self._on_tick),
            (EVENT_ORDER, self._on_order),
            (EVENT_TRADE, self._on_trade),
            (EVENT_POSITION, self._on_position),
            (EVENT_ACCOUNT, self._on_account),
            (EVENT_LOG, self._on_log),
        ):
            self.event_engine.register(kind, fn)

    # --- life -----------------------------------------------------------------------

    def start(self) -> GatewayHost:
        """Starts the event engine, connects the gateway and starts the worker."""
        self.event_engine.start()
        self.worker.start()
        self.gateway.connect(self.setting)
        return self

    def stop(self) -> None:
        """Drains the worker, closes the gateway and the event engine."""
        self.worker.stop()
        self.gateway.close()
        self.event_engine.stop()

    def account_name(self) -> str:
        """Events' account: the gateway's only account id, or its name."""
        return next(iter(self.accounts)) if len(self.accounts) == 1 else self.name

    # --- wire objects ----------------------------------------------------------------

    def _contract_wire(self, c: ContractData) -> dict[str, Any]:
        return {
            "symbol": c.symbol,
            "exchange": c.exchange.value,
            "gateway": self.name,
            "name": c.name,
            "product": m.PRODUCT_TO_WIRE.get(c.product, "futures"),
            "size": c.size,
            "pricetick": c.pricetick,
            "min_volume": c.min_volume,
        }

    def _order_wire(self, o: OrderData, wire_id: str) -> dict[str, Any]:
        return {
            "order_id": wire_id,
            "symbol": o.symbol,
            "exchange": o.exchange.value,
            "gateway": self.name,
            "account": self.account_name(),
            "direction": m.DIRECTION_TO_WIRE.get(o.direction or Direction.LONG, "long"),
            "offset": m.OFFSET_TO_WIRE.get(o.offset, "none"),
            "order_type": m.ORDER_TYPE_TO_WIRE.get(o.type, "limit"),
            "price": o.price,
            "volume": o.volume,
            "traded": o.traded,
            "status": m.STATUS_TO_WIRE.get(o.status, "submitting"),
            "datetime_ns": _ns(o.datetime),
            "reference": o.reference,
        }

    def _wire_id(self, vt_orderid: str) -> str:
        with self._lock:
            wid = self._vt_to_wire.get(vt_orderid)
            if wid is None:
                wid = f"{self.name}.{self.worker.id}.{next(self._n)}"
                self._vt_to_wire[vt_orderid] = wid
                self._wire_to_vt[wid] = vt_orderid
            return wid

    # --- gateway events (event engine thread) ----------------------------------------

    def _on_contract(self, e: Event) -> None:
        c: ContractData = e.data
        self.contracts[c.vt_symbol] = c
        self.worker.publish(f"contract.{self.name}", self._contract_wire(c))
        self.worker.set_available(self.name, True)

    def _on_tick(self, e: Event) -> None:
        t: TickData = e.data
        body: dict[str, Any] = {
            "symbol": t.symbol,
            "exchange": t.exchange.value,
            "gateway": self.name,
            "datetime_ns": _ns(t.datetime),
            "last_price": t.last_price,
            "last_volume": t.last_volume,
            "volume": t.volume,
            "turnover": t.turnover,
            "open_interest": t.open_interest,
            "open_price": t.open_price,
            "high_price": t.high_price,
            "low_price": t.low_price,
            "pre_close": t.pre_close,
        }
        for side in ("bid_price", "bid_volume", "ask_price", "ask_volume"):
            body[side] = [float(getattr(t, f"{side}_{i}")) for i in range(1, 6)]
        self.worker.publish(f"tick.{self.name}.{t.symbol}", body)

    def _on_order(self, e: Event) -> None:
        o: OrderData = e.data
        wid = self._wire_id(o.vt_orderid)
        body = self._order_wire(o, wid)
        self.orders[wid] = body
        self.worker.publish(f"order.{self.account_name()}", body)

    def _on_trade(self, e: Event) -> None:
        t: TradeData = e.data
        body = {
            "trade_id": f"{self.name}.{self.worker.id}.T{t.tradeid}",
            "order_id": self._wire_id(t.vt_orderid),
            "symbol": t.symbol,
            "exchange": t.exchange.value,
            "gateway": self.name,
            "account": self.account_name(),
            "direction": m.DIRECTION_TO_WIRE.get(t.direction or Direction.LONG, "long"),
            "offset": m.OFFSET_TO_WIRE.get(t.offset, "none"),
            "price": t.price,
            "volume": t.volume,
            "datetime_ns": _ns(t.datetime),
        }
        self.worker.publish(f"trade.{self.account_name()}", body)

    def _on_position(self, e: Event) -> None:
        p: PositionData = e.data
        body = {
            "symbol": p.symbol,
            "exchange": p.exchange.value,
            "gateway": self.name,
            "account": self.account_name(),
            "direction": m.DIRECTION_TO_WIRE.get(p.direction, "long"),
            "volume": p.volume,
            "frozen": p.frozen,
            "price": p.price,
            "pnl": p.pnl,
            "yd_volume": p.yd_volume,
        }
        self.positions[(p.vt_symbol, str(body["direction"]))] = body
        self.worker.publish(f"position.{self.account_name()}", body)

    def _on_account(self, e: Event) -> None:
        a: AccountData = e.data
        body = {
            "account": a.accountid,
            "gateway": self.name,
            "balance": a.balance,
            "frozen": a.frozen,
            "available": a.available,
        }
        self.accounts[a.accountid] = body
        self.worker.publish(f"account.{self.account_name()}", body)

    def _on_log(self, e: Event) -> None:
        log: LogData = e.data
        self.worker.publish(
            f"log.{self.name}",
            {"gateway": self.name, "level": "info", "msg": log.msg, "datetime_ns": _ns(None)},
        )

    # --- requests (worker pool threads) -----------------------------------------------

    # Queries run on pool threads while the event engine thread inserts into the caches:
    # they iterate over copies (list() of a dict view copies in one step under the GIL).

    def _find_contract(self, symbol: str, exchange: str) -> ContractData:
        found = [
            c
            for c in list(self.contracts.values())
            if c.symbol == symbol and (not exchange or c.exchange.value == exchange)
        ]
        if len(found) != 1:
            why = "unknown" if not found else "ambiguous (name the exchange)"
            raise HandlerError("bad_request", f"contract {symbol} {exchange}: {why}")
        return found[0]

    def handle(self, body: Any) -> Any:
        """Serves one trading request (docs/protocol.md, Trading services)."""
        if not isinstance(body, dict) or not isinstance(body.get("op"), str):
            raise HandlerError("bad_request", "body must be a map with an op")
        op = body["op"]
        fn = getattr(self, f"_op_{op}", None)
        if fn is None:
            raise HandlerError("bad_request", f"unknown op {op!r}")
        return fn(body)

    def _op_subscribe(self, b: dict[str, Any]) -> Any:
        c = self._find_contract(str(b.get("symbol", "")), str(b.get("exchange", "")))
        self.gateway.subscribe(SubscribeRequest(c.symbol, c.exchange))
        return self._contract_wire(c)

    def _op_send_order(self, b: dict[str, Any]) -> Any:
        c = self._find_contract(str(b.get("symbol", "")), str(b.get("exchange", "")))
        try:
            req = OrderRequest(
                symbol=c.symbol,
                exchange=c.exchange,
                direction=m.DIRECTION_FROM_WIRE[b["direction"]],
                type=m.ORDER_TYPE_FROM_WIRE.get(b.get("order_type", "limit"), OrderType.LIMIT),
                volume=float(b["volume"]),
                price=float(b.get("price", 0.0)),
                offset=m.OFFSET_FROM_WIRE.get(b.get("offset", "none"), Offset.NONE),
                reference=str(b.get("reference", "")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise HandlerError("bad_request", f"bad order: {e}") from None
        vt = self.gateway.send_order(req)
        if not vt:
            raise HandlerError("worker_error", "the gateway refused the order")
        wid = self._wire_id(vt)
        # vn.py reports through its event engine, later: answer what is known now, and
        # keep it so a cancel arriving before the first order event can be routed.
        order = req.create_order_data(vt.split(".", 1)[-1], self.name)
        return self.orders.setdefault(wid, self._order_wire(order, wid))

    def _known_order(self, b: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        wid = str(b.get("order_id", ""))
        if wid not in self.orders and wid not in self._wire_to_vt:
            raise HandlerError("worker_error", f"unknown order {wid}")
        return wid, self.orders.get(wid, {})

    def _op_cancel_order(self, b: dict[str, Any]) -> Any:
        wid, order = self._known_order(b)
        vt = self._wire_to_vt[wid]
        c = self._find_contract(order.get("symbol", ""), order.get("exchange", ""))
        self.gateway.cancel_order(CancelRequest(vt.split(".", 1)[-1], c.symbol, c.exchange))
        return self.orders.get(wid, order)

    def _op_query_order(self, b: dict[str, Any]) -> Any:
        return self._known_order(b)[1]

    def _op_query_orders(self, b: dict[str, Any]) -> Any:
        final = {m.STATUS_TO_WIRE[s] for s in (Status.ALLTRADED, Status.CANCELLED, Status.REJECTED)}
        return [o for o in list(self.orders.values()) if o["status"] not in final]

    def _op_query_account(self, b: dict[str, Any]) -> Any:
        acct = b.get("account", "")
        return [a for a in list(self.accounts.values()) if not acct or a["account"] == acct]

    def _op_query_position(self, b: dict[str, Any]) -> Any:
        return list(self.positions.values())  # one copy

    def _op_query_contracts(self, b: dict[str, Any]) -> Any:
        return [self._contract_wire(c) for c in list(self.contracts.values())]

    def _op_query_history(self, b: dict[str, Any]) -> Any:
        c = self._find_contract(str(b.get("symbol", "")), str(b.get("exchange", "")))
        interval = m.INTERVAL_FROM_WIRE.get(str(b.get("interval", "minute")))
        start = m.datetime_from_ns(int(b.get("start_ns", 0)))
        end_ns = int(b.get("end_ns", 0))
        end = m.datetime_from_ns(end_ns) if end_ns else None
        bars = (
            self.gateway.query_history(HistoryRequest(c.symbol, c.exchange, start, end, interval))
            or []
        )
        return [
            {
                "symbol": x.symbol,
                "exchange": x.exchange.value,
                "gateway": self.name,
                "interval": str(b.get("interval", "minute")),
                "datetime_ns": _ns(x.datetime),
                "open_price": x.open_price,
                "high_price": x.high_price,
                "low_price": x.low_price,
                "close_price": x.close_price,
                "volume": x.volume,
                "turnover": x.turnover,
                "open_interest": x.open_interest,
            }
            for x in bars
        ]
