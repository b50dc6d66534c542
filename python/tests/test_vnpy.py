"""TradeplexGateway in a vn.py MainEngine against Rust SIM workers (skipped without vn.py)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from conftest import Cluster, wait_for

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("vnpy")

from vnpy.event import EventEngine
from vnpy.trader.constant import Direction, Exchange, Interval, OrderType, Status
from vnpy.trader.engine import MainEngine
from vnpy.trader.object import (
    CancelRequest,
    HistoryRequest,
    OrderRequest,
    SubscribeRequest,
)

import tradeplex
from tradeplex.vnpy import (
    TradeplexGateway,
    mapping,
)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MainEngine, Any]]:
    c = Cluster(tmp_path_factory.mktemp("vnpy"))
    b = c.broker()
    c.worker(b, "SIM")
    c.worker(b, "SIM")
    ee = EventEngine()
    me = MainEngine(ee)
    me.add_gateway(TradeplexGateway)
    try:  # vn.py's pre-trade risk manager sits in front of every order, as users run it
        from vnpy_riskmanager import RiskManagerApp

        me.add_app(RiskManagerApp)
    except ImportError:
        pass
    setting = {**TradeplexGateway.default_setting, "broker": b.frontend, "events": b.xpub}
    me.connect(setting, "TRADEPLEX")
    try:
        yield me, b
    finally:
        me.close()
        c.close()


def _contract(me: MainEngine, symbol: str) -> Any:
    return wait_for(
        lambda: next((k for k in me.get_all_contracts() if k.symbol == symbol), None),
        10,
        f"contract {symbol}",
    )


def test_connect_pushes_contracts_and_account(engine: tuple[MainEngine, Any]) -> None:
    me, _ = engine
    k = _contract(me, "IF2412")
    assert k.gateway_name == "TRADEPLEX" and k.history_data and k.pricetick > 0
    wait_for(lambda: me.get_all_accounts(), 10, "account pushed")


def test_ticks_orders_fills_and_cancels(engine: tuple[MainEngine, Any]) -> None:
    me, _ = engine
    k = _contract(me, "IF2412")
    me.subscribe(SubscribeRequest(k.symbol, k.exchange), "TRADEPLEX")
    tick = wait_for(lambda: me.get_tick(k.vt_symbol), 10, "tick")
    assert tick.datetime.tzinfo is not None and tick.bid_price_1 > 0
    vt = me.send_order(
        OrderRequest(k.symbol, k.exchange, Direction.LONG, OrderType.MARKET, 1, reference="test"),
        "TRADEPLEX",
    )
    assert vt.startswith("TRADEPLEX.") and vt.count(".") == 1
    wait_for(lambda: (o := me.get_order(vt)) and o.status == Status.ALLTRADED, 10, "filled")
    assert me.get_order(vt).reference == "test"
    wait_for(lambda: [t for t in me.get_all_trades() if t.vt_orderid == vt], 10, "trade")
    wait_for(
        lambda: [p for p in me.get_all_positions() if p.symbol == k.symbol and p.volume >= 1],
        10,
        "position",
    )
    # A limit order far below the market rests, then is cancelled at its worker. On
    # NASDAQ (no price limits, unlike SIM's CFFEX and SHFE futures, which reject orders
    # outside their band) any price on the tick is accepted.
    aapl = _contract(me, "AAPL")
    vt2 = me.send_order(
        OrderRequest(
            aapl.symbol, aapl.exchange, Direction.LONG, OrderType.LIMIT, 1, price=aapl.pricetick
        ),
        "TRADEPLEX",
    )
    # OmsEngine records orders on the event engine thread: wait for it, not for the call.
    wait_for(lambda: (o := me.get_order(vt2)) and o.status == Status.NOTTRADED, 10, "resting")
    me.cancel_order(me.get_order(vt2).create_cancel_request(), "TRADEPLEX")
    wait_for(lambda: me.get_order(vt2).status == Status.CANCELLED, 10, "cancelled")


def test_query_history_returns_bars(engine: tuple[MainEngine, Any]) -> None:
    me, _ = engine
    k = _contract(me, "rb2501")
    end = datetime.now().astimezone()
    bars = me.query_history(
        HistoryRequest(k.symbol, k.exchange, end - timedelta(hours=1), end, Interval.MINUTE),
        "TRADEPLEX",
    )
    assert bars and bars[0].interval == Interval.MINUTE and bars[0].datetime.tzinfo


def test_order_ids_map_to_and_from_the_wire() -> None:
    wire = "SIM.0ff4810d-1a6f-4bb8-913f-a9b4ac206675.17"
    assert "." not in mapping.orderid_from_wire(wire)
    assert mapping.orderid_to_wire(mapping.orderid_from_wire(wire)) == wire
    assert mapping.exchange_from_wire("CFFEX") == Exchange.CFFEX
    assert mapping.exchange_from_wire("nowhere") == Exchange.GLOBAL
    assert tradeplex.OrderId.parse(wire).n == 17
    _ = CancelRequest


def test_a_shipped_cta_strategy_initialises_from_cluster_history(
    engine: tuple[MainEngine, Any],
) -> None:
    cta_mod = pytest.importorskip("vnpy_ctastrategy")
    pytest.importorskip("vnpy_sqlite")
    me, _ = engine
    k = _contract(me, "IF2412")
    cta = me.add_app(cta_mod.CtaStrategyApp)
    cta.init_engine()
    # A fresh name: CtaEngine restores a known strategy's variables from its data file.
    name = f"dma_{uuid.uuid4().hex[:8]}"
    cta.add_strategy("DoubleMaStrategy", name, k.vt_symbol, {})
    cta.init_strategy(name).result(60)
    s = cta.strategies[name]
    # Ten days of minute bars came through query_history (in pages): the averages are set.
    assert s.inited and s.am.inited and s.fast_ma0 > 0 and s.slow_ma0 > 0
    cta.start_strategy(name)
    assert s.trading
    cta.stop_strategy(name)
    cta.remove_strategy(name)


def test_the_risk_manager_saw_every_order(engine: tuple[MainEngine, Any]) -> None:
    pytest.importorskip("vnpy_riskmanager")
    me, _ = engine
    k = _contract(me, "AAPL")
    risk = me.get_engine("RiskManager")
    daily = next(r for r in risk.rules.values() if hasattr(r, "total_order_count"))
    before = daily.total_order_count
    vt = me.send_order(
        OrderRequest(k.symbol, k.exchange, Direction.LONG, OrderType.MARKET, 1), "TRADEPLEX"
    )
    assert vt
    wait_for(lambda: daily.total_order_count > before, 10, "risk manager counted the order")
