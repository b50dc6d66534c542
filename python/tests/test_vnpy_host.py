"""A vn.py gateway hosted as a Tradeplex worker: from the Rust CLI, the Python client and a
TradeplexGateway (skipped without vn.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BIN, Cluster, Proc, wait_for

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("vnpy")

from vnpy.event import EventEngine
from vnpy.trader.constant import Direction, OrderType, Status
from vnpy.trader.engine import MainEngine
from vnpy.trader.object import OrderRequest

import tradeplex
from tradeplex.vnpy import TradeplexGateway
from tradeplex.vnpy.host import GatewayHost

HERE = Path(__file__).parent


def test_hosted_gateway_serves_orders_and_events(cluster: Cluster) -> None:
    from fake_gateway import FakeGateway

    b = cluster.broker()
    host = GatewayHost(FakeGateway, {"account": "acct1"}, b.backend, b.xsub, heartbeat_ms=100)
    cluster.closers.append(host.stop)
    host.start()
    cluster.wait_registered(b, host.worker.id)
    with b.client() as c, c.subscriber(["order.", "trade."]) as sub:
        assert sub.wait_connected(5)
        assert {k.symbol for k in c.query_contracts("FAKE")} == {"IF2412", "IH2412"}
        assert c.query_account("FAKE")[0].account == "acct1"
        assert c.subscribe("FAKE", "IF2412").exchange == "CFFEX"
        filled = c.send_order("FAKE", symbol="IF2412", direction="long", volume=1, price=100)
        assert filled.order_id.startswith(f"FAKE.{host.worker.id}.")
        assert "." not in filled.order_id.split(".", 1)[0]
        wait_for(lambda: c.query_order(filled.order_id).status == "all_traded", 5, "filled")
        resting = c.send_order("FAKE", symbol="IF2412", direction="long", volume=1, price=90)
        # vn.py gateways report through their event engine: the reply may precede the event.
        assert resting.status in (tradeplex.Status.SUBMITTING, tradeplex.Status.NOT_TRADED)
        c.cancel_order(resting.order_id)
        wait_for(lambda: c.query_order(resting.order_id).status == "cancelled", 5, "cancelled")
        kinds = set()
        while len(kinds) < 2:
            ev = sub.recv(5)
            assert ev is not None
            kinds.add(ev.kind)
            assert ev.topic.endswith(".acct1")
        bars = c.query_history("FAKE", tradeplex.HistoryRequest("IF2412", "minute", 10**18))
        assert [x.close_price for x in bars] == [100, 101, 102]


def test_worker_host_process_reached_from_cli_and_a_tradeplex_gateway(cluster: Cluster) -> None:
    b = cluster.broker()
    setting = cluster.tmp / "fake.json"
    setting.write_text(json.dumps({"account": "acct2"}))
    proc = Proc(
        [
            sys.executable,
            "-m",
            "tradeplex.vnpy.worker",
            "--gateway",
            "fake_gateway:FakeGateway",
            "--setting",
            str(setting),
            "--broker",
            b.backend,
            "--events",
            b.xsub,
            "--heartbeat-ms",
            "100",
        ],
        cluster.tmp / "host.log",
        cwd=HERE,
        env={"PYTHONPATH": str(HERE)},  # where fake_gateway lives
    )
    cluster.procs.append(proc)
    wid = proc.line("worker ").split()[1]
    cluster.wait_registered(b, wid)
    out = subprocess.run(
        [
            str(BIN / "tradeplex"),
            "--broker",
            b.frontend,
            "call",
            "FAKE",
            '{"op":"query_contracts"}',
            "--idempotent",
        ],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert out.returncode == 0, out.stderr
    assert {k["symbol"] for k in json.loads(out.stdout)} == {"IF2412", "IH2412"}
    me = MainEngine(EventEngine())
    try:
        me.add_gateway(TradeplexGateway)
        me.connect(
            {
                **TradeplexGateway.default_setting,
                "broker": b.frontend,
                "events": b.xpub,
                "service": "FAKE",
            },
            "TRADEPLEX",
        )
        k = wait_for(lambda: me.get_contract("IF2412.CFFEX"), 10, "contract")
        vt = me.send_order(
            OrderRequest(k.symbol, k.exchange, Direction.LONG, OrderType.LIMIT, 2, price=101),
            "TRADEPLEX",
        )
        wait_for(lambda: (o := me.get_order(vt)) and o.status == Status.ALLTRADED, 10, "fill")
        wait_for(lambda: [t for t in me.get_all_trades() if t.vt_orderid == vt], 10, "trade")
    finally:
        me.close()
