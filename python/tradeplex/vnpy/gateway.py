"""`TradeplexGateway`: a vn.py `BaseGateway` whose exchange is a Tradeplex cluster.

``main_engine.add_gateway(TradeplexGateway)`` then ``main_engine.connect(setting,
"TRADEPLEX")``: every vn.py app then trades through the cluster's workers. Calls go out
through one `tradeplex.Client`; events come in through one `tradeplex.Subscriber`; the
answers of asynchronous calls are handled on one task thread, so the gateway's state has
one writer and vn.py's callbacks never run on the client's I/O thread.
"""

from __future__ import annotations

import itertools
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Any, ClassVar

from vnpy.event import EventEngine
from vnpy.trader.constant import Exchange, Offset, OrderType, Product, Status
from vnpy.trader.gateway import BaseGateway
from vnpy.trader.object import (
    AccountData,
    BarData,
    CancelRequest,
    ContractData,
    HistoryRequest,
    OrderData,
    OrderRequest,
    PositionData,
    SubscribeRequest,
    TickData,
    TradeData,
)

import tradeplex
from tradeplex import model

from . import mapping as m

#: How often accounts and positions are refreshed (vn.py apps expect it), seconds.
QUERY_INTERVAL_S = 2.0
#: Bars asked for in one `query_history` request (gateways cap it; SIM at 4000).
HISTORY_PAGE_BARS = 3000
INTERVAL_NS = {
    "minute": 60 * 10**9,
    "hour": 3600 * 10**9,
    "daily": 86400 * 10**9,
    "weekly": 7 * 86400 * 10**9,
}


class TradeplexGateway(BaseGateway):
    """vn.py gateway over a Tradeplex cluster (successor of vn.py's RpcGateway)."""

    default_name: str = "TRADEPLEX"
    default_setting: ClassVar[dict[str, str | int | float | bool]] = {  # type: ignore[misc]
        "broker": "tcp://127.0.0.1:5555",
        "events": "tcp://127.0.0.1:5558",
        "service": "SIM",
        "account": "",
        "curve_server_key": "",
        "curve_key_file": "",
    }
    exchanges: ClassVar[list[Exchange]] = list(Exchange)  # type: ignore[misc]

    def __init__(self, event_engine: EventEngine, gateway_name: str = "TRADEPLEX") -> None:
        super().__init__(event_engine, gateway_name)
        self.client: tradeplex.Client | None = None
        self.subscriber: tradeplex.Subscriber | None = None
        self.service = "SIM"
        self.account = ""
        self._tasks = ThreadPoolExecutor(1, thread_name_prefix="tpx-gateway")
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._session = uuid.uuid4().hex[:8]
        self._seq = itertools.count(1)
        self._local_to_wire: dict[str, str] = {}
        self._wire_to_local: dict[str, str] = {}
        self._references: dict[str, str] = {}  # local orderid -> the caller's reference
        self._pending_cancels: set[str] = set()
        self._progress: dict[str, tuple[float, int]] = {}  # orderid -> (traded, stage)
        self._wire_exchange: dict[tuple[str, Exchange], str] = {}
        self._last_tick_ns: dict[str, int] = {}

    # --- connection ------------------------------------------------------------------

    def connect(self, setting: dict[str, Any]) -> None:
        """Connects the client and subscriber, then pushes contracts, accounts,
        positions and active orders, in that order."""
        self.service = str(setting.get("service") or "SIM")
        self.account = str(setting.get("account") or "")
        server_key = str(setting.get("curve_server_key") or "") or None
        key_file = str(setting.get("curve_key_file") or "") or None
        broker = str(setting.get("broker") or self.default_setting["broker"])
        events = str(setting.get("events") or self.default_setting["events"])
        self.client = tradeplex.Client(
            broker, events, curve_server_key=server_key, curve_key_file=key_file
        )
        suffix = self.account
        topics = [f"{k}.{suffix}" for k in ("order", "trade", "position", "account")]
        topics.append(f"log.{self.service}")
        self.subscriber = tradeplex.Subscriber(
            events, topics, curve_server_key=server_key, curve_key_file=key_file
        )
        for target, name in (
            (self._event_loop, "tpx-gw-events"),
            (self._timer_loop, "tpx-gw-timer"),
        ):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        self._tasks.submit(self._initial_load)

    def _initial_load(self) -> None:
        c = self.client
        assert c is not None
        try:
            for k in c.query_contracts(self.service):
                self.on_contract(self._contract(k))
            self._push_accounts(c.query_account(self.service, self.account))
            self._push_positions(c.query_position(self.service, self.account))
            for o in c.query_orders(self.service, self.account):
                self._push_order(o)
            self.write_log(f"connected to {self.service} through {c.broker}")
        except tradeplex.CallError as e:
            self.write_log(f"initial query failed: {e}")

    def close(self) -> None:
        """Stops the threads and closes the sockets (returns promptly)."""
        self._stop.set()
        if self.subscriber is not None:
            self.subscriber.close()
        for t in self._threads:
            t.join(2)
        self._tasks.shutdown(wait=False, cancel_futures=True)
        if self.client is not None:
            self.client.close()

    # --- requests --------------------------------------------------------------------

    def _exchange_out(self, symbol: str, exchange: Exchange) -> str:
        return self._wire_exchange.get((symbol, exchange), exchange.value)

    def subscribe(self, req: SubscribeRequest) -> None:
        """Starts ticks for a symbol (topic ``tick.<service>.<symbol>``)."""
        if self.client is None or self.subscriber is None:
            return
        self.subscriber.subscribe(f"tick.{self.service}.{req.symbol}")
        fut = self.client.call_async(
            self.service,
            {
                "op": "subscribe",
                "symbol": req.symbol,
                "exchange": self._exchange_out(req.symbol, req.exchange),
            },
            idempotent=True,
            affinity=f"md.{req.symbol}",
        )
        self._later(fut, lambda r: None, f"subscribe {req.symbol}")

    def send_order(self, req: OrderRequest) -> str:
        """Returns the vt_orderid at once; the status follows as OrderData events."""
        if self.client is None:
            return ""
        local = f"{self._session}x{next(self._seq)}"
        self._references[local] = req.reference
        order = req.create_order_data(local, self.gateway_name)
        order.datetime = datetime.now().astimezone()
        self._progress[local] = (0.0, 0)
        self.on_order(order)
        body = {
            "op": "send_order",
            "symbol": req.symbol,
            "exchange": self._exchange_out(req.symbol, req.exchange),
            "direction": m.DIRECTION_TO_WIRE[req.direction],
            "order_type": m.ORDER_TYPE_TO_WIRE.get(req.type, "limit"),
            "volume": req.volume,
            "price": req.price,
            "offset": m.OFFSET_TO_WIRE[req.offset],
            "account": self.account,
            # The wire reference carries our local id, so events that overtake the
            # reply are matched to the order vn.py already knows.
            "reference": local,
        }
        fut = self.client.call_async(self.service, body, affinity=f"acct.{self.account}")
        fut.add_done_callback(lambda f: self._tasks.submit(self._order_answered, local, order, f))
        return order.vt_orderid

    def _order_answered(self, local: str, order: OrderData, fut: Future[Any]) -> None:
        err = fut.exception()
        if err is None:
            try:
                o = model.Order.from_wire(fut.result())
            except tradeplex.ProtocolError as e:
                self.write_log(f"order {local}: bad reply: {e}")
                return
            self._local_to_wire[local] = o.order_id
            self._wire_to_local[o.order_id] = local
            self._push_order(o)
            if local in self._pending_cancels:
                self._pending_cancels.discard(local)
                self._cancel_wire(o.order_id)
            return
        if isinstance(err, tradeplex.CallError) and err.outcome_unknown:
            # Never re-sent: look for it by reference; events will also tell.
            self.write_log(f"order {local}: outcome unknown ({err.code}); querying it")
            self._tasks.submit(self._resolve, local, order)
            return
        order.status = Status.REJECTED
        order.datetime = datetime.now().astimezone()
        self._progress[local] = (0.0, 3)
        self.on_order(order)
        self.write_log(f"order {local} refused: {err}")

    def _resolve(self, local: str, order: OrderData) -> None:
        assert self.client is not None
        try:
            found = self.client.find_order(self.service, local, self.account)
        except tradeplex.CallError as e:
            self.write_log(f"order {local}: query failed ({e}); state stays unknown")
            return
        if found is not None:
            self._local_to_wire[local] = found.order_id
            self._wire_to_local[found.order_id] = local
            self._push_order(found)
        else:
            self.write_log(f"order {local}: not active at the gateway (never placed, or final)")

    def cancel_order(self, req: CancelRequest) -> None:
        """Cancels at the worker that placed the order (never re-sent)."""
        wire_id = self._local_to_wire.get(req.orderid)
        if wire_id is None:
            if req.orderid in self._references:
                self._pending_cancels.add(req.orderid)  # cancelled once acknowledged
                return
            try:
                wire_id = m.orderid_to_wire(req.orderid)
            except ValueError:
                self.write_log(f"cancel: unknown order {req.orderid}")
                return
        self._cancel_wire(wire_id)

    def _cancel_wire(self, wire_id: str) -> None:
        assert self.client is not None
        oid = model.OrderId.parse(wire_id)
        fut = self.client.call_async(
            oid.gateway, {"op": "cancel_order", "order_id": wire_id}, target=oid.worker
        )
        self._later(fut, lambda r: self._push_order(model.Order.from_wire(r)), f"cancel {wire_id}")

    def query_account(self) -> None:
        """Refreshes accounts (asynchronously)."""
        if self.client is not None:
            fut = self.client.call_async(
                self.service,
                {"op": "query_account", "account": self.account},
                idempotent=True,
                affinity=f"acct.{self.account}",
            )
            self._later(
                fut, lambda r: self._push_accounts(model.Account.list_from_wire(r)), "query_account"
            )

    def query_position(self) -> None:
        """Refreshes positions (asynchronously)."""
        if self.client is not None:
            fut = self.client.call_async(
                self.service,
                {"op": "query_position", "account": self.account},
                idempotent=True,
                affinity=f"acct.{self.account}",
            )
            self._later(
                fut,
                lambda r: self._push_positions(model.Position.list_from_wire(r)),
                "query_position",
            )

    def query_history(self, req: HistoryRequest) -> list[BarData]:
        """Bars from the gateway's history (blocking, as vn.py expects)."""
        if self.client is None:
            return []
        interval = (m.INTERVAL_TO_WIRE.get(req.interval) if req.interval else None) or "minute"
        step = HISTORY_PAGE_BARS * INTERVAL_NS.get(interval, INTERVAL_NS["minute"])
        start_ns = m.ns_from_datetime(req.start)
        end_ns = m.ns_from_datetime(req.end) or tradeplex.wire.now_ns()
        exchange = self._exchange_out(req.symbol, req.exchange)
        bars: dict[int, model.Bar] = {}
        # Gateways cap the bars of one request (SIM: 4000) while CtaEngine asks for days
        # of minutes: ask page by page; pages share their edges, so keep one bar per time.
        while start_ns < end_ns:
            page_end = min(start_ns + step, end_ns)
            body = {
                "op": "query_history",
                "symbol": req.symbol,
                "exchange": exchange,
                "interval": interval,
                "start_ns": start_ns,
                "end_ns": page_end,
            }
            try:
                page = model.Bar.list_from_wire(
                    self.client.call(self.service, body, idempotent=True, timeout_ms=30_000)
                )
            except (tradeplex.CallError, tradeplex.ProtocolError) as e:
                self.write_log(f"query_history {req.symbol}: {e}")
                return []
            bars.update((b.datetime_ns, b) for b in page)
            start_ns = page_end
        return [self._bar(bars[t], req.exchange) for t in sorted(bars)]

    def _later(self, fut: Future[Any], then: Any, what: str) -> None:
        def done(f: Future[Any]) -> None:
            try:
                then(f.result())
            except Exception as e:
                self.write_log(f"{what} failed: {e}")

        fut.add_done_callback(lambda f: self._tasks.submit(done, f))

    # --- events ----------------------------------------------------------------------

    def _event_loop(self) -> None:
        assert self.subscriber is not None
        for ev in self.subscriber:
            try:
                obj = ev.data()
            except tradeplex.ProtocolError:
                continue
            if obj is None:
                continue
            self._tasks.submit(self._on_object, obj)

    def _on_object(self, obj: model.WireObject) -> None:
        if isinstance(obj, model.Tick):
            self._push_tick(obj)
        elif isinstance(obj, model.Order):
            self._push_order(obj)
        elif isinstance(obj, model.Trade):
            self._push_trade(obj)
        elif isinstance(obj, model.Position):
            self._push_positions([obj])
        elif isinstance(obj, model.Account):
            self._push_accounts([obj])
        elif isinstance(obj, model.Log):
            self.write_log(f"[{obj.gateway}] {obj.level}: {obj.msg}")

    def _timer_loop(self) -> None:
        seen = (0, 0)
        while not self._stop.wait(QUERY_INTERVAL_S):
            self.query_account()
            self.query_position()
            s = self.subscriber
            if s is not None and (s.reconnects, s.broker_restarts) != seen:
                seen = (s.reconnects, s.broker_restarts)
                self.write_log(
                    f"event stream reconnected (reconnects={s.reconnects}, "
                    f"broker restarts={s.broker_restarts})"
                )

    # --- conversions (task thread) ---------------------------------------------------

    def _exchange_in(self, symbol: str, wire: str) -> Exchange:
        ex = m.exchange_from_wire(wire)
        self._wire_exchange[(symbol, ex)] = wire
        return ex

    def _contract(self, k: model.Contract) -> ContractData:
        return ContractData(
            symbol=k.symbol,
            exchange=self._exchange_in(k.symbol, k.exchange),
            name=k.name,
            product=m.PRODUCT_FROM_WIRE.get(
                str(getattr(k.product, "value", k.product)), Product.FUTURES
            ),
            size=k.size,
            pricetick=k.pricetick,
            min_volume=k.min_volume,
            history_data=True,
            gateway_name=self.gateway_name,
        )

    def _push_tick(self, t: model.Tick) -> None:
        key = f"{t.symbol}.{t.exchange}"
        # Two workers may publish the same symbol: deliver each tick once, by exchange time.
        if t.datetime_ns <= self._last_tick_ns.get(key, -1):
            return
        self._last_tick_ns[key] = t.datetime_ns
        tick = TickData(
            symbol=t.symbol,
            exchange=self._exchange_in(t.symbol, t.exchange),
            datetime=m.datetime_from_ns(t.datetime_ns),
            gateway_name=self.gateway_name,
            volume=t.volume,
            turnover=t.turnover,
            open_interest=t.open_interest,
            last_price=t.last_price,
            last_volume=t.last_volume,
            open_price=t.open_price,
            high_price=t.high_price,
            low_price=t.low_price,
            pre_close=t.pre_close,
        )
        for side in ("bid_price", "bid_volume", "ask_price", "ask_volume"):
            for i, v in enumerate(getattr(t, side)[:5], 1):
                setattr(tick, f"{side}_{i}", v)
        self.on_tick(tick)

    def _orderid(self, o: model.Order) -> str:
        if o.order_id in self._wire_to_local:
            return self._wire_to_local[o.order_id]
        if o.reference in self._references:  # an event that overtook the reply
            self._wire_to_local[o.order_id] = o.reference
            self._local_to_wire[o.reference] = o.order_id
            return o.reference
        return m.orderid_from_wire(o.order_id)

    def _push_order(self, o: model.Order) -> None:
        if self.account and o.account != self.account:
            return
        orderid = self._orderid(o)
        stage = o.status.stage if isinstance(o.status, model.Status) else 3
        progress = (o.traded, stage)
        # vn.py keeps the last state pushed: never push an older one after a newer one.
        if orderid in self._progress and progress <= self._progress[orderid]:
            return
        self._progress[orderid] = progress
        status = m.STATUS_FROM_WIRE.get(str(getattr(o.status, "value", o.status)))
        self.on_order(
            OrderData(
                symbol=o.symbol,
                exchange=self._exchange_in(o.symbol, o.exchange),
                orderid=orderid,
                type=m.ORDER_TYPE_FROM_WIRE.get(
                    str(getattr(o.order_type, "value", "")), OrderType.LIMIT
                ),
                direction=m.DIRECTION_FROM_WIRE.get(str(getattr(o.direction, "value", ""))),
                offset=m.OFFSET_FROM_WIRE.get(str(getattr(o.offset, "value", "")), Offset.NONE),
                price=o.price,
                volume=o.volume,
                traded=o.traded,
                status=status or Status.SUBMITTING,
                datetime=m.datetime_from_ns(o.datetime_ns),
                reference=self._references.get(orderid, o.reference),
                gateway_name=self.gateway_name,
            )
        )

    def _push_trade(self, t: model.Trade) -> None:
        if self.account and t.account != self.account:
            return
        orderid = self._wire_to_local.get(t.order_id, m.orderid_from_wire(t.order_id))
        self.on_trade(
            TradeData(
                symbol=t.symbol,
                exchange=self._exchange_in(t.symbol, t.exchange),
                orderid=orderid,
                tradeid=t.trade_id.replace(".", "_"),
                direction=m.DIRECTION_FROM_WIRE.get(str(getattr(t.direction, "value", ""))),
                offset=m.OFFSET_FROM_WIRE.get(str(getattr(t.offset, "value", "")), Offset.NONE),
                price=t.price,
                volume=t.volume,
                datetime=m.datetime_from_ns(t.datetime_ns),
                gateway_name=self.gateway_name,
            )
        )

    def _push_positions(self, positions: list[model.Position]) -> None:
        for p in positions:
            direction = m.DIRECTION_FROM_WIRE.get(str(getattr(p.direction, "value", "")))
            if direction is None:
                continue
            self.on_position(
                PositionData(
                    symbol=p.symbol,
                    exchange=self._exchange_in(p.symbol, p.exchange),
                    direction=direction,
                    volume=p.volume,
                    frozen=p.frozen,
                    price=p.price,
                    pnl=p.pnl,
                    yd_volume=p.yd_volume,
                    gateway_name=self.gateway_name,
                )
            )

    def _push_accounts(self, accounts: list[model.Account]) -> None:
        for a in accounts:
            self.on_account(
                AccountData(
                    accountid=a.account,
                    balance=a.balance,
                    frozen=a.frozen,
                    gateway_name=self.gateway_name,
                )
            )

    def _bar(self, b: model.Bar, exchange: Exchange) -> BarData:
        return BarData(
            symbol=b.symbol,
            exchange=exchange,
            datetime=m.datetime_from_ns(b.datetime_ns),
            interval=m.INTERVAL_FROM_WIRE.get(str(getattr(b.interval, "value", b.interval))),
            volume=b.volume,
            turnover=b.turnover,
            open_interest=b.open_interest,
            open_price=b.open_price,
            high_price=b.high_price,
            low_price=b.low_price,
            close_price=b.close_price,
            gateway_name=self.gateway_name,
        )
