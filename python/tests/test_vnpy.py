"""TradeplexGateway in a vn.py MainEngine against Rust SIM workers (skipped without vn.py).

Tests that need SIM's vn.py data model (vn.py exchanges, price limits, `history_data`,
`query_trades`) skip against an older worker, saying so.
"""

from __future__ import annotations

import itertools
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from conftest import Broker, Cluster, RustWorker, wait_for

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
if "vnpy" not in sys.modules:
    # vn.py picks its data folder (~/.vntrader: strategy settings, sqlite database, risk
    # settings) when first imported: keep the tests' files out of the user's.
    os.environ["HOME"] = tempfile.mkdtemp(prefix="tpx-vnpy-home-")
pytest.importorskip("vnpy")

from vnpy.event import EventEngine
from vnpy.trader.constant import Direction, Exchange, Interval, Offset, OrderType, Status
from vnpy.trader.engine import MainEngine
from vnpy.trader.event import (
    EVENT_ACCOUNT,
    EVENT_CONTRACT,
    EVENT_LOG,
    EVENT_ORDER,
    EVENT_POSITION,
    EVENT_TICK,
    EVENT_TRADE,
)
from vnpy.trader.object import (
    CancelRequest,
    ContractData,
    HistoryRequest,
    OrderData,
    OrderRequest,
    SubscribeRequest,
    TickData,
)

import tradeplex
from tradeplex import model
from tradeplex.vnpy import TradeplexGateway, mapping
from tradeplex.vnpy import gateway as gateway_module

GW = "TRADEPLEX"


@dataclass
class Env:
    """A broker with two SIM workers, a client, and a MainEngine connected to them."""

    cluster: Cluster
    broker: Broker
    workers: list[RustWorker]
    client: tradeplex.Client
    me: MainEngine
    logs: list[str]


def _engine(b: Broker, logs: list[str], **setting: Any) -> MainEngine:
    me = MainEngine(EventEngine())
    me.event_engine.register(EVENT_LOG, lambda e: logs.append(e.data.msg))
    me.add_gateway(TradeplexGateway)
    me.connect(
        {**TradeplexGateway.default_setting, "broker": b.frontend, "events": b.xpub, **setting},
        GW,
    )
    return me


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    c = Cluster(tmp_path_factory.mktemp("vnpy"))
    try:
        b = c.broker()
        workers = [c.worker(b, "SIM"), c.worker(b, "SIM")]
        client = b.client(timeout_ms=3000)
        c.closers.append(client.close)
        logs: list[str] = []
        me = _engine(b, logs)
        # vn.py's pre-trade risk manager sits in front of every order, as users run it.
        from vnpy_riskmanager import RiskManagerApp

        me.add_app(RiskManagerApp)
        c.closers.append(me.close)
        yield Env(c, b, workers, client, me, logs)
    finally:
        c.close()


def _gateway(me: MainEngine) -> TradeplexGateway:
    gw = me.get_gateway(GW)
    assert isinstance(gw, TradeplexGateway)
    return gw


def _contract(me: MainEngine, symbol: str) -> ContractData:
    k: ContractData = wait_for(
        lambda: next((k for k in me.get_all_contracts() if k.symbol == symbol), None),
        10,
        f"contract {symbol}",
    )
    return k


def _vnpy_sim(me: MainEngine) -> None:
    """Skips unless SIM speaks vn.py's data model (issue 11 §4: exchanges, limits, …)."""
    if _contract(me, "IF2412").exchange != Exchange.CFFEX:
        pytest.skip("this SIM worker predates vn.py exchanges and price limits (issue 11 §4)")


def _tick(me: MainEngine, k: ContractData) -> TickData:
    me.subscribe(SubscribeRequest(k.symbol, k.exchange), GW)
    tick: TickData = wait_for(lambda: me.get_tick(k.vt_symbol), 10, f"tick {k.vt_symbol}")
    return tick


def _limit(k: ContractData, price: float, direction: Direction = Direction.LONG) -> OrderRequest:
    return OrderRequest(
        k.symbol, k.exchange, direction, OrderType.LIMIT, 1, price=price, offset=Offset.OPEN
    )


# --- mapping (no cluster) ------------------------------------------------------------


def test_mapping_covers_every_vnpy_member_both_ways() -> None:
    for vn_enum, wire_enum, to_wire, from_wire in mapping.TABLES:
        wire_values = {w.value for w in wire_enum}
        for member in vn_enum:
            assert member in to_wire, f"{vn_enum.__name__}.{member.name} has no wire name"
            assert to_wire[member] in wire_values, f"{member} maps to {to_wire[member]!r}"
            assert from_wire[to_wire[member]] is member
        for w in wire_enum:
            assert w.value in from_wire, f"wire {wire_enum.__name__} {w.value!r} has no member"
    # By member, never by vn.py's translated values.
    assert mapping.INTERVAL_FROM_WIRE["minute"] is Interval.MINUTE
    assert mapping.INTERVAL_TO_WIRE[Interval.WEEKLY] == "weekly"
    assert mapping.ORDER_TYPE_TO_WIRE[OrderType.STOP] == "stop"
    assert mapping.STATUS_FROM_WIRE["not_traded"] is Status.NOTTRADED
    for e in Exchange:
        assert mapping.exchange_from_wire(e.value) is e


def test_order_ids_map_to_and_from_the_wire() -> None:
    wire = "SIM.0ff4810d-1a6f-4bb8-913f-a9b4ac206675.17"
    assert "." not in mapping.orderid_from_wire(wire)
    assert mapping.orderid_to_wire(mapping.orderid_from_wire(wire)) == wire
    assert mapping.exchange_from_wire("nowhere") == Exchange.GLOBAL
    assert tradeplex.OrderId.parse(wire).n == 17
    with pytest.raises(ValueError):
        mapping.orderid_to_wire("abc")


def _wire_order(status: str, traded: float, **kw: Any) -> model.Order:
    fields: dict[str, Any] = {
        "order_id": "SIM.0ff4810d-1a6f-4bb8-913f-a9b4ac206675.1",
        "symbol": "IF2412",
        "exchange": "CFFEX",
        "gateway": "SIM",
        "account": "sim",
        "direction": "long",
        "volume": 2.0,
        "price": 3900.0,
        "traded": traded,
        "status": status,
        **kw,
    }
    return model.Order.from_wire(fields)


def test_an_older_order_state_never_overwrites_a_newer_one() -> None:
    gw = TradeplexGateway(EventEngine())
    pushed: list[OrderData] = []
    gw.on_order = pushed.append  # type: ignore[method-assign]
    gw._push_order(_wire_order("not_traded", 0), event=True)
    gw._push_order(_wire_order("all_traded", 2), event=True)
    gw._push_order(_wire_order("part_traded", 1), event=True)  # late
    gw._push_order(_wire_order("not_traded", 0), event=True)  # late
    gw._push_order(_wire_order("all_traded", 2), event=True)  # repeat
    assert [(o.status, o.traded) for o in pushed] == [
        (Status.NOTTRADED, 0),
        (Status.ALLTRADED, 2),
    ]
    assert pushed[-1].orderid == "SIM_0ff4810d-1a6f-4bb8-913f-a9b4ac206675_1"
    assert pushed[-1].gateway_name == GW and pushed[-1].exchange == Exchange.CFFEX


def test_a_fill_that_overtakes_its_order_waits_for_the_mapping() -> None:
    gw = TradeplexGateway(EventEngine())
    orders: list[OrderData] = []
    trades: list[Any] = []
    gw.on_order = orders.append  # type: ignore[method-assign]
    gw.on_trade = trades.append  # type: ignore[method-assign]
    local = "abcd1234x1"
    with gw._lock:
        gw._remember(gateway_module._Tracked(local, True, progress=(0.0, 0), reference="r"))
        gw._unmapped.add(local)
    wire_id = "SIM.0ff4810d-1a6f-4bb8-913f-a9b4ac206675.9"
    trade = model.Trade.from_wire(
        {
            "trade_id": "SIM.0ff4810d-1a6f-4bb8-913f-a9b4ac206675.t1",
            "order_id": wire_id,
            "symbol": "IF2412",
            "exchange": "CFFEX",
            "gateway": "SIM",
            "account": "sim",
            "direction": "long",
            "price": 3900.0,
            "volume": 2.0,
        }
    )
    gw._push_trade(trade, event=True)
    assert trades == []  # held: it may belong to our unanswered order
    gw._push_order(_wire_order("all_traded", 2, order_id=wire_id, reference=local), event=True)
    assert [t.orderid for t in trades] == [local]  # booked under the order vn.py knows
    assert orders[-1].orderid == local and orders[-1].reference == "r"
    gw._push_trade(trade, event=True)  # the same fill again (event and query_trades)
    assert len(trades) == 1


# --- against the cluster -------------------------------------------------------------


def test_connect_pushes_contracts_accounts_positions_orders_trades_in_order(env: Env) -> None:
    _vnpy_sim(env.me)
    c = env.client
    k = c.query_contract("SIM", "IF2412", "CFFEX")
    c.subscribe("SIM", "IF2412", "CFFEX")
    tick = wait_for(lambda: _query_tick(c, k), 10, "SIM has a tick")
    # An order that fills (a trade and a position) and one that rests, before connecting.
    filled = c.send_order(
        "SIM",
        symbol=k.symbol,
        exchange=k.exchange,
        direction="long",
        volume=1,
        price=tick.limit_up,
        offset="open",
    )
    resting = c.send_order(
        "SIM",
        symbol=k.symbol,
        exchange=k.exchange,
        direction="long",
        volume=1,
        price=tick.limit_down,
        offset="open",
    )
    assert resting.status == model.Status.NOT_TRADED
    wait_for(lambda: c.query_order(filled.order_id).is_final, 10, "filled")

    ee = EventEngine()
    seen: list[tuple[str, Any]] = []
    kinds = (EVENT_CONTRACT, EVENT_ACCOUNT, EVENT_POSITION, EVENT_ORDER, EVENT_TRADE)
    ee.register_general(lambda e: seen.append((e.type, e.data)) if e.type in kinds else None)
    me = MainEngine(ee)
    try:
        me.add_gateway(TradeplexGateway)
        b = env.broker
        me.connect({**TradeplexGateway.default_setting, "broker": b.frontend, "events": b.xpub}, GW)
        rest_vt = f"{GW}.{mapping.orderid_from_wire(resting.order_id)}"
        wait_for(lambda: me.get_order(rest_vt), 10, "active order pushed")
        wait_for(
            lambda: any(
                t.orderid == mapping.orderid_from_wire(filled.order_id) for t in me.get_all_trades()
            ),
            10,
            "today's trades pushed",
        )
        types = [t for t, _ in seen]
        firsts = [types.index(kind) for kind in kinds]
        assert firsts == sorted(firsts), f"push order was {[kinds[i] for i in firsts]}"
        # Every contract as the wire has it, mapped field by field.
        for w in c.query_contracts("SIM"):
            v = me.get_contract(f"{w.symbol}.{w.exchange}")
            assert v is not None and v.gateway_name == GW
            assert (v.name, v.size, v.pricetick, v.min_volume, v.max_volume) == (
                w.name,
                w.size,
                w.pricetick,
                w.min_volume,
                w.max_volume,
            )
            assert (v.history_data, v.stop_supported, v.net_position) == (
                w.history_data,
                w.stop_supported,
                w.net_position,
            )
            assert v.product is mapping.PRODUCT_FROM_WIRE[mapping.wire_name(w.product)]
            assert v.option_strike == w.option_strike
        assert me.get_contract(f"{k.symbol}.{k.exchange}").history_data  # type: ignore[union-attr]
    finally:
        me.close()
        c.cancel_order(resting.order_id)


def _query_tick(c: tradeplex.Client, k: model.Contract) -> model.Tick | None:
    try:
        return c.query_tick("SIM", k.symbol, k.exchange)
    except tradeplex.CallError:
        return None


def test_ticks_carry_every_field_and_arrive_once_from_two_workers(env: Env) -> None:
    _vnpy_sim(env.me)
    me, c = env.me, env.client
    gw = _gateway(me)
    k = _contract(me, "IF2412")
    got: list[TickData] = []
    me.event_engine.register(EVENT_TICK + k.vt_symbol, lambda e: got.append(e.data))
    wire: dict[tuple[str, int], model.Tick] = {}
    with c.subscriber(f"tick.SIM.{k.symbol}") as raw:
        assert raw.wait_connected(5)
        _tick(me, k)
        # Both workers publish the symbol (as after an affinity reset).
        for w in env.workers:
            c.call(
                "SIM",
                {"op": "subscribe", "symbol": k.symbol, "exchange": "CFFEX"},
                idempotent=True,
                target=w.id,
            )
        both: set[int] = set()
        until = time.monotonic() + 15
        while time.monotonic() < until and len(both) < 4:
            ev = raw.recv(1)
            if ev is None:
                continue
            t = ev.data()
            assert isinstance(t, model.Tick)
            wire[(ev.source, t.datetime_ns)] = t
            if {(w.id, t.datetime_ns) for w in env.workers} <= wire.keys():
                both.add(t.datetime_ns)
        assert len(both) >= 4, "both workers published the same ticks"
    wait_for(lambda: gw.duplicate_ticks > 0, 5, "a second worker's copy dropped")
    times = [t.datetime for t in got]
    assert times == sorted(set(times)), "each exchange time reaches vn.py once, in order"
    # A tick both workers published, as vn.py got it and as the wire had it.
    last, w = next(
        (v, t)
        for v in reversed(got)
        for (_, ns), t in wire.items()
        if ns in both and abs(ns - mapping.ns_from_datetime(v.datetime)) < 1000
    )
    assert last.datetime.tzinfo is not None and last.gateway_name == GW
    assert last.name == w.name != ""
    assert (last.limit_up, last.limit_down) == (w.limit_up, w.limit_down)
    assert last.limit_down < last.last_price < last.limit_up
    for f in (
        "last_price",
        "last_volume",
        "volume",
        "turnover",
        "open_interest",
        "open_price",
        "high_price",
        "low_price",
        "pre_close",
    ):
        assert getattr(last, f) == getattr(w, f), f
    for i in range(5):
        assert last.__dict__[f"bid_price_{i + 1}"] == w.bid_price[i]
        assert last.__dict__[f"ask_price_{i + 1}"] == w.ask_price[i]
        assert last.__dict__[f"bid_volume_{i + 1}"] == w.bid_volume[i]
        assert last.__dict__[f"ask_volume_{i + 1}"] == w.ask_volume[i]
    assert last.localtime == mapping.optional_datetime(w.localtime_ns)


def test_orders_fill_rest_and_cancel(env: Env) -> None:
    _vnpy_sim(env.me)
    me = env.me
    # rb2501: a lot of IF2412 at its lower limit is over RiskManager's default order value.
    k = _contract(me, "rb2501")
    tick = _tick(me, k)
    vt = me.send_order(
        OrderRequest(
            k.symbol,
            k.exchange,
            Direction.LONG,
            OrderType.MARKET,
            1,
            offset=Offset.OPEN,
            reference="test",
        ),
        GW,
    )
    assert vt.startswith(f"{GW}.") and vt.count(".") == 1
    wait_for(lambda: (o := me.get_order(vt)) and o.status == Status.ALLTRADED, 10, "filled")
    assert me.get_order(vt).reference == "test"
    wait_for(lambda: [t for t in me.get_all_trades() if t.vt_orderid == vt], 10, "trade")
    wait_for(
        lambda: [p for p in me.get_all_positions() if p.symbol == k.symbol and p.volume >= 1],
        10,
        "position",
    )
    # At the lower price limit an order rests; it is cancelled at its worker.
    vt2 = me.send_order(_limit(k, tick.limit_down), GW)
    # OmsEngine records orders on the event engine thread: wait for it, not for the call.
    wait_for(lambda: (o := me.get_order(vt2)) and o.status == Status.NOTTRADED, 10, "resting")
    me.cancel_order(me.get_order(vt2).create_cancel_request(), GW)
    wait_for(lambda: me.get_order(vt2).status == Status.CANCELLED, 10, "cancelled")
    # A cancel sent before the order's reply came back waits for its id, then goes out.
    vt3 = me.send_order(_limit(k, tick.limit_down), GW)
    me.cancel_order(CancelRequest(vt3.split(".", 1)[1], k.symbol, k.exchange), GW)
    wait_for(lambda: (o := me.get_order(vt3)) and o.status == Status.CANCELLED, 10, "cancelled")
    gw = _gateway(me)
    wire_id = gw.wire_order_id(vt3.split(".", 1)[1])
    assert wire_id is not None
    assert env.client.query_order(wire_id).status == model.Status.CANCELLED


def test_query_history_returns_bars(env: Env) -> None:
    me = env.me
    k = _contract(me, "rb2501")
    end = datetime.now().astimezone()
    bars = me.query_history(
        HistoryRequest(k.symbol, k.exchange, end - timedelta(hours=1), end, Interval.MINUTE), GW
    )
    assert len(bars) >= 55 and bars[0].interval == Interval.MINUTE and bars[0].datetime.tzinfo
    assert all(a.datetime < b.datetime for a, b in itertools.pairwise(bars))
    assert bars[0].gateway_name == GW and bars[0].exchange == k.exchange


def test_the_risk_manager_saw_every_order(env: Env) -> None:
    me = env.me
    k = _contract(me, "AAPL")
    risk = me.get_engine("RiskManager")
    daily = next(r for r in risk.rules.values() if hasattr(r, "total_order_count"))
    before = daily.total_order_count
    vt = me.send_order(OrderRequest(k.symbol, k.exchange, Direction.LONG, OrderType.MARKET, 1), GW)
    assert vt
    wait_for(lambda: daily.total_order_count > before, 10, "risk manager counted the order")
    wait_for(
        lambda: daily.total_order_count == len(me.get_all_orders()),
        10,
        "risk manager and OmsEngine agree on the orders",
    )


# --- unknown outcomes, through a worker that loses its answers -----------------------


class LossyProxy:
    """A Python worker offering service ``LOSSY`` in front of SIM: it forwards every op
    (naming the gateway ``LOSSY`` in replies) and records what it got; a `send_order` is
    placed at SIM and then left unanswered past its deadline (outcome unknown). With
    `announce`, the order's state is first published as an event (its id becomes known)."""

    def __init__(self, b: Broker) -> None:
        self.client = b.client(timeout_ms=3000)
        self.bodies: list[dict[str, Any]] = []
        self.announce = False
        self.lock = threading.Lock()
        self.worker = tradeplex.Worker(
            b.backend, b.xsub, services={"LOSSY": self.handle}, capacity=4, heartbeat_ms=100
        )

    def ops(self, op: str) -> list[dict[str, Any]]:
        with self.lock:
            return [b for b in self.bodies if b.get("op") == op]

    def handle(self, body: Any) -> Any:
        assert isinstance(body, dict)
        with self.lock:
            self.bodies.append(body)
        op = body.get("op")
        account = str(body.get("account", ""))
        try:
            r = self.client.call(
                "SIM", body, idempotent=op != "send_order", affinity=f"acct.{account}"
            )
        except tradeplex.CallError as e:
            raise tradeplex.HandlerError(e.code, e.message) from None
        r = _renamed(r)
        if op == "send_order":
            if self.announce:
                self.worker.publish(f"order.{r['account']}", r)
            req = tradeplex.current_request()
            assert req is not None
            time.sleep(max(0.0, req.deadline_ms / 1000 - time.time()) + 0.5)
        return r

    def close(self) -> None:
        self.worker.stop()
        self.client.close()


def _renamed(r: Any) -> Any:
    if isinstance(r, list):
        return [_renamed(x) for x in r]
    if isinstance(r, dict) and r.get("gateway") == "SIM":
        return {**r, "gateway": "LOSSY"}
    return r


def test_an_unknown_outcome_is_settled_by_query_never_re_sent(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    _vnpy_sim(env.me)
    c = env.client
    k = c.query_contract("SIM", "IF2412", "CFFEX")
    c.subscribe("SIM", "IF2412", "CFFEX")
    tick = wait_for(lambda: _query_tick(c, k), 10, "SIM has a tick")
    proxy = LossyProxy(env.broker)
    proxy.worker.start()
    logs: list[str] = []
    monkeypatch.setattr(gateway_module, "CALL_TIMEOUT_MS", 1500)
    me = None
    try:
        assert proxy.worker.wait_registered(5)
        me = _engine(env.broker, logs, service="LOSSY", account="sim")
        vk = _contract(me, "IF2412")
        wait_for(lambda: any("connected to LOSSY" in m for m in logs), 10, "loaded")

        # By reference: nothing tells the gateway the order's id; query_orders finds it.
        vt = me.send_order(_limit(vk, tick.limit_down), GW)
        local = vt.split(".", 1)[1]
        wait_for(lambda: any(f"order {local}: outcome unknown" in m for m in logs), 10, "unknown")
        wait_for(lambda: me.get_order(vt).status == Status.NOTTRADED, 10, "settled by reference")
        assert any(f"order {local}: outcome settled" in m for m in logs)
        assert proxy.ops("query_orders"), "looked up among the account's active orders"
        at_sim = [o for o in c.query_orders("SIM", "sim") if o.reference == local]
        assert len(at_sim) == 1 and len(proxy.ops("send_order")) == 1  # never re-sent

        # By id: an event told the id before the answer was lost; query_order settles it.
        proxy.announce = True
        lookups = len(proxy.ops("query_orders"))
        vt2 = me.send_order(_limit(vk, tick.limit_down), GW)
        local2 = vt2.split(".", 1)[1]
        wait_for(lambda: any(f"order {local2}: outcome settled" in m for m in logs), 10, "by id")
        assert len(proxy.ops("query_orders")) == lookups  # asked SIM's worker by id instead
        assert me.get_order(vt2).status == Status.NOTTRADED
        assert len(proxy.ops("send_order")) == 2
        assert len([o for o in c.query_orders("SIM", "sim") if o.reference == local2]) == 1

        # The `account` setting went out in every order and account query.
        for op in ("send_order", "query_account", "query_position", "query_orders", "query_trades"):
            assert proxy.ops(op), f"no {op} seen"
            assert {b["account"] for b in proxy.ops(op)} == {"sim"}, op
        for o in c.query_orders("SIM", "sim"):
            if o.reference in (local, local2):
                c.cancel_order(o.order_id)
    finally:
        if me is not None:
            me.close()
        proxy.close()


# --- reconnects and shutdown ---------------------------------------------------------


def test_a_broker_restart_is_reported_through_on_log(cluster: Cluster) -> None:
    b = cluster.broker()
    cluster.worker(b, "SIM")
    logs: list[str] = []
    me = _engine(b, logs)
    cluster.closers.append(me.close)
    wait_for(lambda: any("connected to SIM" in m for m in logs), 10, "connected")
    b.proc.kill()
    b2 = cluster.broker(b)
    assert b2.frontend == b.frontend
    wait_for(lambda: any("event stream reconnected" in m for m in logs), 15, "reconnect logged")


def test_main_engine_close_returns_promptly(cluster: Cluster) -> None:
    b = cluster.broker()
    cluster.worker(b, "SIM")
    logs: list[str] = []
    me = _engine(b, logs)
    closed = []
    cluster.closers.append(lambda: None if closed else me.close())
    k = _contract(me, "AAPL")
    gw = _gateway(me)
    assert gw._tasks is not None
    threads = [*gw._threads, gw._tasks._thread]
    b.proc.kill()  # calls in flight will never be answered
    assert me.send_order(
        OrderRequest(k.symbol, k.exchange, Direction.LONG, OrderType.MARKET, 1), GW
    )
    gw.query_account()
    start = time.monotonic()
    me.close()
    closed.append(True)
    took = time.monotonic() - start
    assert took < 5, f"MainEngine.close() took {took:.1f} s"
    assert threads and all(t.daemon for t in threads)
    wait_for(lambda: not any(t.is_alive() for t in threads), 5, "gateway threads ended")
