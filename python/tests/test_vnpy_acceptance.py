"""The vn.py acceptance run of issue 11 §2.

A vn.py MainEngine with TradeplexGateway, RiskManagerApp and CtaStrategyApp runs two
strategies shipped with vnpy_ctastrategy, unchanged, against two Rust SIM workers (both
publishing the traded symbol): `DoubleMaStrategy` initialises from bars loaded through
`query_history`; `TestStrategy` places a limit order at the upper price limit (fills),
one at the lower limit (rests), cancels all (cancelled) and a local stop order. Then
vn.py's OmsEngine (orders, trades, positions, account) must agree with the real Rust CLI
(`tradeplex positions`, `tradeplex account`, `tradeplex call … query_order/query_trades`)
run against the same broker, and RiskManagerApp must have counted every order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, Broker, Cluster, wait_for

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
if "vnpy" not in sys.modules:
    # vn.py picks its data folder (~/.vntrader) when first imported: keep tests' files apart.
    os.environ["HOME"] = tempfile.mkdtemp(prefix="tpx-vnpy-home-")
pytest.importorskip("vnpy")
pytest.importorskip("vnpy_ctastrategy")
pytest.importorskip("vnpy_sqlite")
pytest.importorskip("vnpy_riskmanager")

from vnpy.event import EventEngine
from vnpy.trader.constant import Exchange, Status
from vnpy.trader.engine import MainEngine
from vnpy.trader.event import EVENT_LOG
from vnpy.trader.object import BarData, HistoryRequest
from vnpy_ctastrategy import CtaStrategyApp
from vnpy_riskmanager import RiskManagerApp

from tradeplex.vnpy import TradeplexGateway, mapping

GW = "TRADEPLEX"


def _cli(b: Broker, *args: str) -> Any:
    """Runs the Rust `tradeplex` CLI against the broker; its stdout as JSON."""
    out = subprocess.run(
        [str(BIN / "tradeplex"), "--broker", b.frontend, "--events", b.xpub, *args],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 0, f"tradeplex {' '.join(args)}: {out.stderr}"
    return json.loads(out.stdout)


def _positions_agree(me: MainEngine, b: Broker) -> bool:
    cli = {
        (p["symbol"], p["exchange"], p["direction"]): (p["volume"], round(p["price"], 6))
        for p in _cli(b, "positions", "--json")
        if p["volume"]
    }
    oms = {
        (p.symbol, p.exchange.value, mapping.DIRECTION_TO_WIRE[p.direction]): (
            p.volume,
            round(p.price, 6),
        )
        for p in me.get_all_positions()
        if p.volume
    }
    return bool(cli) and cli == oms


def _account_agrees(me: MainEngine, b: Broker) -> bool:
    cli = {(a["account"], a["balance"], a["frozen"]) for a in _cli(b, "account", "--json")}
    oms = {(a.accountid, a.balance, a.frozen) for a in me.get_all_accounts()}
    return bool(cli) and cli == oms


def test_a_shipped_cta_strategy_trades_through_the_cluster(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    me: MainEngine | None = None
    try:
        b = c.broker()
        workers = [c.worker(b, "SIM"), c.worker(b, "SIM")]
        logs: list[str] = []
        me = MainEngine(EventEngine())
        me.event_engine.register(EVENT_LOG, lambda e: logs.append(e.data.msg))
        me.add_gateway(TradeplexGateway)
        risk = me.add_app(RiskManagerApp)
        cta = me.add_app(CtaStrategyApp)
        me.connect({**TradeplexGateway.default_setting, "broker": b.frontend, "events": b.xpub}, GW)
        gw = me.get_gateway(GW)
        assert isinstance(gw, TradeplexGateway)
        rb = wait_for(
            lambda: next((k for k in me.get_all_contracts() if k.symbol == "rb2501"), None),
            10,
            "contract rb2501",
        )
        if rb.exchange != Exchange.SHFE:
            pytest.skip("this SIM worker predates vn.py exchanges and price limits")
        aapl = wait_for(lambda: me.get_contract("AAPL.NASDAQ"), 10, "AAPL.NASDAQ")
        assert rb.history_data and aapl.history_data

        # Watch bars come through the gateway's query_history (the database is empty).
        history: list[tuple[str, int]] = []
        query_history = gw.query_history

        def counted(req: HistoryRequest) -> list[BarData]:
            bars = query_history(req)
            history.append((req.vt_symbol, len(bars)))
            return bars

        gw.query_history = counted  # type: ignore[method-assign]
        cta.init_engine()
        dma, test = f"dma_{uuid.uuid4().hex[:8]}", f"test_{uuid.uuid4().hex[:8]}"
        cta.add_strategy("DoubleMaStrategy", dma, aapl.vt_symbol, {})
        cta.add_strategy("TestStrategy", test, rb.vt_symbol, {"test_trigger": 3})
        cta.init_strategy(dma).result(60)
        s_dma = cta.strategies[dma]
        assert s_dma.inited and s_dma.am.inited and s_dma.fast_ma0 > 0
        assert any(sym == aapl.vt_symbol and n > 1000 for sym, n in history), history
        cta.init_strategy(test).result(60)
        cta.start_strategy(dma)
        cta.start_strategy(test)
        st = cta.strategies[test]
        assert st.inited and st.trading

        # Both workers publish rb2501 (as after an affinity reset): ticks arrive once.
        with b.client() as client:
            for w in workers:
                client.call(
                    "SIM",
                    {"op": "subscribe", "symbol": "rb2501", "exchange": "SHFE"},
                    idempotent=True,
                    target=w.id,
                )
        wait_for(lambda: st.test_all_done, 60, "TestStrategy ran all its tests")
        assert gw.duplicate_ticks > 0

        def sent() -> list[str]:
            return [vt for vt, s in list(cta.orderid_strategy_map.items()) if s is st]

        # Market test (buy at limit_up) filled, limit test (buy at limit_down) rested
        # and was cancelled by cancel_all; the local stop order may have triggered.
        cta.stop_strategy(test)  # no new orders from here on (a local stop is cancelled)
        cta.stop_strategy(dma)
        first = sent()
        assert len(first) >= 2

        def final(vt: str) -> bool:  # OmsEngine records orders on vn.py's event thread
            o = me.get_order(vt)
            return o is not None and not o.is_active()

        wait_for(lambda: all(final(vt) for vt in sent()), 20, "the strategy's orders final")
        market, limit = me.get_order(first[0]), me.get_order(first[1])
        assert market.status == Status.ALLTRADED and market.traded == 1
        assert limit.status == Status.CANCELLED and limit.traded == 0
        assert limit.reference == f"CtaStrategy_{test}"
        for vt in sent()[2:]:  # the stop order, triggered: a limit order at limit_up
            assert me.get_order(vt).status == Status.ALLTRADED
        wait_for(lambda: not me.get_all_active_orders(), 20, "no active orders")

        # OmsEngine agrees with the Rust CLI: positions, account, each order, trades.
        wait_for(lambda: _positions_agree(me, b), 15, "positions agree with the CLI")
        wait_for(lambda: _account_agrees(me, b), 15, "account agrees with the CLI")
        orders = me.get_all_orders()
        assert len(orders) >= 2
        for o in orders:
            wire_id = gw.wire_order_id(o.orderid)
            assert wire_id is not None, o.vt_orderid
            w = _cli(
                b,
                "call",
                "SIM",
                json.dumps({"op": "query_order", "order_id": wire_id}),
                "--target",
                wire_id.split(".")[1],
                "--idempotent",
            )
            assert w["status"] == mapping.STATUS_TO_WIRE[o.status], o.vt_orderid
            assert (w["traded"], w["volume"], w["price"]) == (o.traded, o.volume, o.price)
        wire_trades = _cli(
            b,
            "call",
            "SIM",
            json.dumps({"op": "query_trades", "account": ""}),
            "--affinity",
            "acct.",
            "--idempotent",
        )
        cli_trades = {
            t["trade_id"].replace(".", "_"): (t["order_id"], t["volume"], t["price"])
            for t in wire_trades
        }
        oms_trades = {
            t.tradeid: (gw.wire_order_id(t.orderid), t.volume, t.price) for t in me.get_all_trades()
        }
        assert cli_trades == oms_trades and cli_trades
        long_ = sum(
            p["volume"]
            for p in _cli(b, "positions", "--json")
            if p["symbol"] == "rb2501" and p["direction"] == "long"
        )
        assert st.pos == long_ >= 1

        # RiskManagerApp saw every order: its counters match OmsEngine's.
        rules = {type(r).__name__: r for r in risk.rules.values()}
        daily = next(r for n, r in rules.items() if n.startswith("DailyLimitRule"))
        active = next(r for n, r in rules.items() if n.startswith("ActiveOrderRule"))
        duplicate = next(r for n, r in rules.items() if n.startswith("DuplicateOrderRule"))
        assert daily.total_order_count == len(orders)
        assert daily.total_trade_count == len(me.get_all_trades())
        assert daily.total_cancel_count == sum(o.status == Status.CANCELLED for o in orders)
        assert active.active_order_count == 0
        # Every order the strategies sent passed the risk checks once.
        assert sum(duplicate.duplicate_order_count.values()) == len(cta.orderid_strategy_map)
        assert not [m for m in logs if "委托被拦截" in m]
        cta.remove_strategy(test)
        cta.remove_strategy(dma)
    finally:
        if me is not None:
            me.close()
        c.close()
