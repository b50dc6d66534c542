"""The broker's pre-trade risk stage seen from Python: a rejected order raises
CallError("risk_rejected") naming the rule, its limit and the order's value."""

from __future__ import annotations

import pytest
from conftest import Cluster

import tradeplex
from tradeplex import Direction


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
