"""The broker's pre-trade risk stage seen from Python: a rejected order raises
CallError("risk_rejected") naming the rule, its limit and the order's value."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Broker, Cluster, wait_for

import tradeplex
from tradeplex import Direction


@contextlib.contextmanager
def _vnpy_engine(
    broker: Broker, account: str = "", client_name: str = ""
) -> Iterator[tuple[Any, list[str]]]:
    """A vn.py MainEngine with TradeplexGateway connected to `broker`, its log lines
    collected; closed on exit."""
    from vnpy.event import EventEngine
    from vnpy.trader.engine import MainEngine
    from vnpy.trader.event import EVENT_LOG

    from tradeplex.vnpy import TradeplexGateway

    ee = EventEngine()
    logs: list[str] = []
    ee.register(EVENT_LOG, lambda e: logs.append(e.data.msg))
    me = MainEngine(ee)
    try:
        me.add_gateway(TradeplexGateway)
        setting = {**TradeplexGateway.default_setting, "broker": broker.frontend}
        setting["events"] = broker.xpub
        setting["account"] = account
        setting["client_name"] = client_name
        me.connect(setting, "TRADEPLEX")
        wait_for(lambda: me.get_all_contracts(), 10, "contracts")
        yield me, logs
    finally:
        me.close()


def test_an_order_over_the_size_limit_raises_risk_rejected(cluster: Cluster) -> None:
    config = cluster.tmp / "risk.toml"
    config.write_text('[risk]\n[[risk.account]]\nname = "sim"\norder_size_limit = 10\n')
    broker = cluster.broker(None, "--config", str(config))
    cluster.worker(broker, "SIM")
    with broker.client() as c:
        ok = c.send_order(
            "SIM",
            symbol="AAPL",
            direction=Direction.LONG,
            volume=10,
            order_type="market",
            account="sim",
        )
        assert ok.volume == 10
        with pytest.raises(tradeplex.CallError) as e:
            c.send_order(
                "SIM",
                symbol="AAPL",
                direction=Direction.LONG,
                volume=12,
                order_type="market",
                account="sim",
            )
        assert e.value.code == tradeplex.errors.RISK_REJECTED == "risk_rejected"
        assert e.value.message == "order_size_limit: limit 10, value 12"
        assert e.value.number == 11


def test_tradeplex_gateway_gets_a_risk_reject_as_a_rejected_order_with_the_reason(
    cluster: Cluster,
) -> None:
    pytest.importorskip("vnpy")
    from vnpy.trader.constant import Direction as VnDirection
    from vnpy.trader.constant import Exchange, OrderType, Status
    from vnpy.trader.object import OrderRequest

    config = cluster.tmp / "risk.toml"
    config.write_text("[risk]\n[risk.default]\norder_size_limit = 10\n")
    broker = cluster.broker(None, "--config", str(config))
    cluster.worker(broker, "SIM")
    with _vnpy_engine(broker) as (me, logs):
        req = OrderRequest("AAPL", Exchange.NASDAQ, VnDirection.LONG, OrderType.MARKET, 12)
        vt = me.send_order(req, "TRADEPLEX")
        order = wait_for(
            lambda: (o := me.get_order(vt)) is not None and o.status == Status.REJECTED and o,
            10,
            "rejected order",
        )
        assert order.volume == 12
        reason = "risk_rejected: order_size_limit: limit 10, value 12"
        wait_for(lambda: any(reason in m for m in logs), 10, "the reason in the log")


def test_a_halt_refuses_orders_and_tradeplex_gateway_gets_them_as_rejected(
    cluster: Cluster,
) -> None:
    pytest.importorskip("vnpy")
    from vnpy.trader.constant import Direction as VnDirection
    from vnpy.trader.constant import Exchange, OrderType, Status
    from vnpy.trader.object import OrderRequest

    # No [risk] section: the kill switch works without one.
    broker = cluster.broker(None)
    cluster.worker(broker, "SIM")
    with _vnpy_engine(broker, "sim") as (me, logs):
        with broker.client() as c:
            reply = c.halt("sim", reason="end of day")
            assert reply["account"] == "sim"
            assert reply["reason"] == "end of day"
            assert [h["account"] for h in c.status()["halts"]] == ["sim"]
            with pytest.raises(tradeplex.CallError) as e:
                c.send_order(
                    "SIM",
                    symbol="AAPL",
                    direction=Direction.LONG,
                    volume=1,
                    order_type="market",
                    account="sim",
                )
            assert e.value.code == "risk_rejected"
            assert e.value.message == "halted: end of day"
        req = OrderRequest("AAPL", Exchange.NASDAQ, VnDirection.LONG, OrderType.MARKET, 1)
        vt = me.send_order(req, "TRADEPLEX")
        wait_for(
            lambda: (o := me.get_order(vt)) is not None and o.status == Status.REJECTED,
            10,
            "rejected order",
        )
        reason = "risk_rejected: halted: end of day"
        wait_for(lambda: any(reason in m for m in logs), 10, "the reason in the log")
        with broker.client() as c:
            assert c.resume()["resumed"] == ["sim"]
        vt = me.send_order(req, "TRADEPLEX")
        wait_for(
            lambda: (
                (o := me.get_order(vt)) is not None
                and o.status not in (Status.REJECTED, Status.SUBMITTING)
            ),
            10,
            "an accepted order after resume",
        )


def test_a_declared_client_name_meets_its_limits_and_tpx_risk_and_halts_are_for_admins_only(
    cluster: Cluster,
) -> None:
    config = cluster.tmp / "risk-clients.toml"
    config.write_text('[risk]\nadmins = ["ops"]\n[risk.clients.alpha]\norder_size_limit = 5\n')
    broker = cluster.broker(None, "--config", str(config))
    cluster.worker(broker, "SIM")
    order = {"symbol": "AAPL", "direction": Direction.LONG, "order_type": "market"}
    with broker.client(client_name="alpha") as alpha, broker.client(client_name="ops") as ops:
        assert alpha.send_order("SIM", volume=5, account="sim", **order).volume == 5
        with pytest.raises(tradeplex.CallError) as e:
            alpha.send_order("SIM", volume=6, account="sim", **order)
        assert e.value.code == tradeplex.errors.RISK_REJECTED
        assert e.value.message == "order_size_limit: limit 5, value 6 (client alpha)"
        with pytest.raises(tradeplex.CallError) as e:
            alpha.call("tpx.risk", {"op": "show"})
        assert e.value.code == tradeplex.errors.FORBIDDEN == "forbidden"
        assert e.value.number == 12
        shown = ops.call("tpx.risk", {"op": "set", "clients": {"alpha": {"order_size_limit": 7}}})
        assert shown["clients"]["alpha"] == {"order_size_limit": 7.0}
        assert alpha.send_order("SIM", volume=6, account="sim", **order).volume == 6
        # With an admin configured, the kill switch is for admins too; who halted is shown.
        with pytest.raises(tradeplex.CallError) as e:
            alpha.halt("sim", reason="not mine")
        assert e.value.code == tradeplex.errors.FORBIDDEN
        ops.halt("sim", reason="desk closed")
        assert [(h["account"], h["by"]) for h in alpha.status()["halts"]] == [("sim", "ops")]
        assert ops.resume()["resumed"] == ["sim"]


def test_tradeplex_gateway_declares_its_client_name_and_meets_its_clients_limit(
    cluster: Cluster,
) -> None:
    pytest.importorskip("vnpy")
    from vnpy.trader.constant import Direction as VnDirection
    from vnpy.trader.constant import Exchange, OrderType, Status
    from vnpy.trader.object import OrderRequest

    config = cluster.tmp / "risk-gw.toml"
    config.write_text("[risk]\n[risk.clients.cta1]\norder_size_limit = 3\n")
    broker = cluster.broker(None, "--config", str(config))
    cluster.worker(broker, "SIM")
    with _vnpy_engine(broker, client_name="cta1") as (me, logs):
        req = OrderRequest("AAPL", Exchange.NASDAQ, VnDirection.LONG, OrderType.MARKET, 4)
        vt = me.send_order(req, "TRADEPLEX")
        wait_for(
            lambda: (o := me.get_order(vt)) is not None and o.status == Status.REJECTED,
            10,
            "rejected order",
        )
        reason = "risk_rejected: order_size_limit: limit 3, value 4 (client cta1)"
        wait_for(lambda: any(reason in m for m in logs), 10, "the reason in the log")
