"""`GatewayHost`: any vn.py gateway class served as a Tradeplex worker.

The gateway runs in its own vn.py `EventEngine`; what it pushes (contracts, ticks, orders,
trades, positions, accounts, logs) is cached and published as Tradeplex events; requests
become gateway calls, and queries are answered from the caches (vn.py gateways push, they
do not answer). Order ids are ``<gateway>.<worker uuid>.<n>`` and map to the gateway's own
``vt_orderid`` so cancels and queries reach the right session.

The service is offered only while the gateway is connected (`connection.ConnectionState`:
it has pushed a contract and has not reported a disconnect, in its log or explicitly);
while it is not, requests are refused ``unavailable`` (the broker delivers them to another
worker of the service) and the offer is withdrawn from the broker at the next heartbeat.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import OrderedDict
from datetime import datetime
from typing import Any

from vnpy.event import EVENT_TIMER, Event, EventEngine
from vnpy.trader.constant import Direction, Offset, OptionType, OrderType, Status
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
from tradeplex.failover import Endpoints

from . import mapping as m
from .connection import (
    EVENT_GATEWAY_CONNECTION,
    ConnectionRule,
    ConnectionState,
    RpcClientWatch,
)
from .metrics import HostMetrics, HttpServer

log = logging.getLogger("tradeplex.vnpy.host")

OPTION_TYPE_TO_WIRE = {OptionType.CALL: "call", OptionType.PUT: "put"}
_FINAL = {Status.ALLTRADED: "filled", Status.CANCELLED: "cancelled", Status.REJECTED: "rejected"}
_FINAL_WIRE = {m.STATUS_TO_WIRE[s] for s in _FINAL}
#: Today's trades kept for `query_trades` (the oldest go first beyond this).
MAX_TRADES = 100_000
#: Orders kept; beyond this the oldest final ones are forgotten (active ones never are).
MAX_ORDERS = 100_000


def _ns(dt: datetime | None) -> int:
    return m.ns_from_datetime(dt) if dt is not None else tradeplex.wire.now_ns()


def _level(level: int) -> str:
    return "error" if level >= logging.ERROR else "warn" if level >= logging.WARNING else "info"


class GatewayHost:
    """Hosts one vn.py gateway instance as a Tradeplex worker serving its name.

    Args:
        gateway_class: a vn.py `BaseGateway` subclass; its ``default_name`` is the service.
        setting: what its ``connect`` takes.
        broker, events, capacity: as for `tradeplex.Worker` (a broker pair's two
            endpoints, as a list or comma-separated, are followed there).
        connection_rule: the log patterns that say the gateway is down or up again.
        http: ``HOST:PORT`` to serve ``/metrics``, ``/healthz`` and ``/readyz`` on (port 0
            = any; `http_addr` tells which); None = off.
        close_timeout: how long `stop` waits for the gateway's ``close``.
        worker_options: `tradeplex.Worker` keywords (heartbeat_ms, liveness, curve_*, …).
    """

    def __init__(
        self,
        gateway_class: type[BaseGateway],
        setting: dict[str, Any],
        broker: Endpoints = "tcp://127.0.0.1:5556",
        events: Endpoints = "tcp://127.0.0.1:5557",
        capacity: int = 4,
        *,
        connection_rule: ConnectionRule | None = None,
        http: str | None = None,
        close_timeout: float = 5.0,
        **worker_options: Any,
    ) -> None:
        self.name = gateway_class.default_name
        self.setting = setting
        self.worker = tradeplex.Worker(
            broker,
            events,
            {self.name: self.handle},
            capacity,
            observer=self._observe,
            **worker_options,
        )
        self.state = ConnectionState(connection_rule)
        # Offered only once the gateway has shown it is connected (its first contract).
        self.worker.set_available(self.name, False)
        self.metrics = HostMetrics(self.worker, self.name, self.state.gauge)
        self._http_addr = http
        self.http: HttpServer | None = None
        self._close_timeout = close_timeout
        self.event_engine = EventEngine()
        self.gateway = gateway_class(self.event_engine, self.name)
        self._lock = threading.Lock()
        self._n = itertools.count(1)
        self.contracts: dict[str, ContractData] = {}
        self.ticks: dict[str, dict[str, Any]] = {}  # vt_symbol -> wire Tick
        self.orders: dict[str, dict[str, Any]] = {}  # wire id -> wire Order
        self.trades: OrderedDict[str, dict[str, Any]] = OrderedDict()  # wire id -> Trade
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
            (EVENT_GATEWAY_CONNECTION, self._on_connection),
        ):
            self.event_engine.register(kind, fn)
        self._rpc_watch = RpcClientWatch.attach(self.gateway)
        if self._rpc_watch is not None:
            self.event_engine.register(EVENT_TIMER, lambda _e: self._rpc_watch_tick())

    # --- life -----------------------------------------------------------------------

    def start(self) -> GatewayHost:
        """Starts the HTTP endpoint, the event engine and the worker, then connects the
        gateway."""
        if self._http_addr:
            self.http = HttpServer(self._http_addr, self.metrics, self.ready)
        self.event_engine.start()
        self.worker.start()
        self.gateway.connect(self.setting)
        return self

    def stop(self) -> None:
        """Drains the worker, closes the gateway (waiting at most `close_timeout`) and
        the event engine."""
        self.worker.stop()
        closer = threading.Thread(target=self.gateway.close, name="tpx-gateway-close", daemon=True)
        closer.start()
        closer.join(self._close_timeout)
        if closer.is_alive():
            log.warning(
                "gateway %s still closing after %.1f s; leaving it", self.name, self._close_timeout
            )
        self.event_engine.stop()
        if self.http is not None:
            self.http.close()

    @property
    def connected(self) -> bool:
        """Whether the gateway is connected (and so its service offered)."""
        return self.state.connected

    def ready(self) -> bool:
        """``/readyz``: registered with the broker and the gateway connected."""
        return self.worker.registered and self.state.connected

    def account_name(self) -> str:
        """Events' account: the gateway's only account id, or its name."""
        return next(iter(self.accounts)) if len(self.accounts) == 1 else self.name

    def _observe(self, service: str, outcome: str, seconds: float) -> None:
        self.metrics.observe(service, outcome, seconds)

    def _apply(self, changed: bool | None, why: str) -> None:
        """Offers or withdraws the service after a connection state change."""
        if changed is None:
            return
        self.worker.set_available(self.name, changed)
        state = "connected" if changed else "reconnecting"
        (log.info if changed else log.warning)("gateway %s %s (%s)", self.name, state, why)
        self.worker.publish(
            f"log.{self.name}",
            {
                "gateway": self.name,
                "level": "info" if changed else "warn",
                "msg": f"connection {state}",
                "datetime_ns": _ns(None),
            },
        )

    # --- wire objects ----------------------------------------------------------------

    def _contract_wire(self, c: ContractData) -> dict[str, Any]:
        d: dict[str, Any] = {
            "symbol": c.symbol,
            "exchange": c.exchange.value,
            "gateway": self.name,
            "name": c.name,
            "product": m.PRODUCT_TO_WIRE.get(c.product, "futures"),
            "size": c.size,
            "pricetick": c.pricetick,
            "min_volume": c.min_volume,
            "stop_supported": bool(c.stop_supported),
            "net_position": bool(c.net_position),
            "history_data": bool(c.history_data),
        }
        optional: dict[str, Any] = {
            "max_volume": c.max_volume,
            "option_strike": c.option_strike,
            "option_underlying": c.option_underlying,
            "option_type": OPTION_TYPE_TO_WIRE.get(c.option_type) if c.option_type else None,
            "option_listed_ns": m.ns_from_datetime(c.option_listed) if c.option_listed else None,
            "option_expiry_ns": m.ns_from_datetime(c.option_expiry) if c.option_expiry else None,
            "option_portfolio": c.option_portfolio,
            "option_index": c.option_index,
        }
        d.update((k, v) for k, v in optional.items() if v is not None)
        return d

    def _tick_wire(self, t: TickData) -> dict[str, Any]:
        body: dict[str, Any] = {
            "symbol": t.symbol,
            "exchange": t.exchange.value,
            "gateway": self.name,
            "datetime_ns": _ns(t.datetime),
            "name": t.name,
            "last_price": t.last_price,
            "last_volume": t.last_volume,
            "volume": t.volume,
            "turnover": t.turnover,
            "open_interest": t.open_interest,
            "open_price": t.open_price,
            "high_price": t.high_price,
            "low_price": t.low_price,
            "pre_close": t.pre_close,
            "limit_up": t.limit_up,
            "limit_down": t.limit_down,
        }
        if t.localtime is not None:
            body["localtime_ns"] = m.ns_from_datetime(t.localtime)
        for side in ("bid_price", "bid_volume", "ask_price", "ask_volume"):
            body[side] = [float(getattr(t, f"{side}_{i}")) for i in range(1, 6)]
        return body

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
        self._apply(self.state.on_contract(), "contracts pushed")

    def _rpc_watch_tick(self) -> None:
        if self._rpc_watch is not None:
            self._rpc_watch.on_timer()

    def _on_connection(self, e: Event) -> None:
        self._apply(self.state.on_report(e.data), f"reported {e.data!r}")

    def _on_tick(self, e: Event) -> None:
        t: TickData = e.data
        body = self._tick_wire(t)
        self.ticks[t.vt_symbol] = body
        self.worker.publish(f"tick.{self.name}.{t.symbol}", body)

    def _on_order(self, e: Event) -> None:
        o: OrderData = e.data
        wid = self._wire_id(o.vt_orderid)
        body = self._order_wire(o, wid)
        before = self.orders.get(wid)
        result = _FINAL.get(o.status)
        if result is not None and (before is None or before["status"] not in _FINAL_WIRE):
            self.metrics.order(result)
        self.orders[wid] = body
        if len(self.orders) > MAX_ORDERS:
            self._forget_final_orders()
        self.worker.publish(f"order.{self.account_name()}", body)

    def _forget_final_orders(self) -> None:
        """Drops the oldest final orders (and their id mappings) down to 90 % of the cap."""
        with self._lock:
            excess = len(self.orders) - MAX_ORDERS * 9 // 10
            old = [w for w, o in list(self.orders.items()) if o["status"] in _FINAL_WIRE]
            for wid in old[:excess]:
                self.orders.pop(wid, None)
                vt = self._wire_to_vt.pop(wid, None)
                if vt is not None:
                    self._vt_to_wire.pop(vt, None)

    def _on_trade(self, e: Event) -> None:
        t: TradeData = e.data
        trade_id = f"{self.name}.{self.worker.id}.T{t.tradeid}"
        body: dict[str, Any] = {
            "trade_id": trade_id,
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
        with self._lock:
            # A gateway re-pushes the day's trades after a reconnect: one entry per trade.
            self.trades[trade_id] = body
            while len(self.trades) > MAX_TRADES:
                self.trades.popitem(last=False)
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
        entry: LogData = e.data
        msg = str(getattr(entry, "msg", entry))
        # The state first: once the line is out, the offer reflects it.
        changed = self.state.on_log(msg)
        self.worker.publish(
            f"log.{self.name}",
            {
                "gateway": self.name,
                "level": _level(int(getattr(entry, "level", logging.INFO))),
                "msg": msg,
                "datetime_ns": _ns(None),
            },
        )
        self._apply(changed, f"log: {msg}")

    # --- requests (worker pool threads) -----------------------------------------------

    # Queries run on pool threads while the event engine thread inserts into the caches:
    # they iterate over copies (list() of a dict view copies in one step under the GIL).

    def _find_contract(self, symbol: str, exchange: str) -> ContractData:
        """The contract `symbol` on `exchange`; ``exchange=""``: the only one with that
        symbol (several → ``bad_request``)."""
        found = [
            c
            for c in list(self.contracts.values())
            if c.symbol == symbol and (not exchange or c.exchange.value == exchange)
        ]
        if not found:
            where = f" on {exchange}" if exchange else ""
            raise HandlerError("worker_error", f"unknown symbol {symbol!r}{where}")
        if len(found) > 1:
            on = ", ".join(sorted(c.exchange.value for c in found))
            raise HandlerError(
                "bad_request", f"symbol {symbol!r} is ambiguous (on {on}): name the exchange"
            )
        return found[0]

    def _contract_of(self, b: dict[str, Any]) -> ContractData:
        return self._find_contract(str(b.get("symbol", "")), str(b.get("exchange", "")))

    def handle(self, body: Any) -> Any:
        """Serves one trading request (docs/protocol.md, Trading services)."""
        if not self.state.connected:
            # The worker refuses requests for a withdrawn service itself; this catches
            # the ones already past that check: nothing reaches a disconnected gateway.
            raise HandlerError("unavailable", f"gateway {self.name} is not connected")
        if not isinstance(body, dict) or not isinstance(body.get("op"), str):
            raise HandlerError("bad_request", "body must be a map with an op")
        op = body["op"]
        fn = getattr(self, f"_op_{op}", None)
        if fn is None:
            raise HandlerError("bad_request", f"unknown op {op!r}")
        return fn(body)

    def _op_subscribe(self, b: dict[str, Any]) -> Any:
        c = self._contract_of(b)
        self.gateway.subscribe(SubscribeRequest(c.symbol, c.exchange))
        return self._contract_wire(c)

    def _op_send_order(self, b: dict[str, Any]) -> Any:
        c = self._contract_of(b)
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
        self.metrics.order("sent")
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

    @staticmethod
    def _of_account(items: list[dict[str, Any]], b: dict[str, Any]) -> list[dict[str, Any]]:
        acct = b.get("account", "")
        return [x for x in items if not acct or x.get("account") == acct]

    def _op_query_orders(self, b: dict[str, Any]) -> Any:
        active = [o for o in list(self.orders.values()) if o["status"] not in _FINAL_WIRE]
        return self._of_account(active, b)

    def _op_query_account(self, b: dict[str, Any]) -> Any:
        return self._of_account(list(self.accounts.values()), b)

    def _op_query_position(self, b: dict[str, Any]) -> Any:
        return self._of_account(list(self.positions.values()), b)

    def _op_query_trades(self, b: dict[str, Any]) -> Any:
        with self._lock:
            trades = list(self.trades.values())
        return self._of_account(trades, b)

    def _op_query_contracts(self, b: dict[str, Any]) -> Any:
        return [self._contract_wire(c) for c in list(self.contracts.values())]

    def _op_query_contract(self, b: dict[str, Any]) -> Any:
        return self._contract_wire(self._contract_of(b))

    def _op_query_tick(self, b: dict[str, Any]) -> Any:
        c = self._contract_of(b)
        tick = self.ticks.get(c.vt_symbol)
        if tick is None:
            raise HandlerError("worker_error", f"no tick for {c.symbol} yet (subscribe first)")
        return tick

    def _op_query_history(self, b: dict[str, Any]) -> Any:
        c = self._contract_of(b)
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
