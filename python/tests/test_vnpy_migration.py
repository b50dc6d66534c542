"""Migration from vn.py's RpcService: an existing RpcServer (vnpy_rpcservice's RpcEngine
serving a MainEngine with the fake gateway, in its own process) joins the cluster as a
worker by hosting vnpy_rpcservice's own `RpcGateway`, with its own setting keys. Reached
from the Rust CLI and from a TradeplexGateway (skipped without vnpy_rpcservice)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BIN, LIVENESS, Broker, Cluster, Proc, wait_for

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("vnpy")
pytest.importorskip("vnpy_rpcservice")

from vnpy.event import EventEngine
from vnpy.trader.constant import Direction, OrderType, Status
from vnpy.trader.engine import MainEngine
from vnpy.trader.object import OrderRequest

import tradeplex
from tradeplex.vnpy import TradeplexGateway

HERE = Path(__file__).parent


def _env() -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])}


def _old_server(cluster: Cluster) -> tuple[Proc, str, str]:
    """The seeds' deployment: RpcServiceApp in a MainEngine running the fake gateway."""
    home = cluster.tmp / "old"
    (home / ".vntrader").mkdir(parents=True)  # vn.py keeps its files here, not in ~
    proc = Proc(
        [sys.executable, str(HERE / "rpc_server.py")], cluster.tmp / "rpc.log", home, _env()
    )
    cluster.procs.append(proc)
    fields = dict(kv.split("=", 1) for kv in proc.line("rpc ", 30).split()[1:])
    return proc, fields["rep"], fields["pub"]


def _host(cluster: Cluster, b: Broker, rep: str, pub: str) -> tuple[Proc, str]:
    setting = cluster.tmp / "rpc.json"
    # RpcGateway's own setting keys, as in vn.py's connect dialog.
    setting.write_text(json.dumps({"主动请求地址": rep, "推送订阅地址": pub}, ensure_ascii=False))
    home = cluster.tmp / "host"
    (home / ".vntrader").mkdir(parents=True)
    proc = Proc(
        [
            sys.executable,
            "-m",
            "tradeplex.vnpy.worker",
            "--gateway",
            "vnpy_rpcservice:RpcGateway",
            "--setting",
            str(setting),
            "--broker",
            b.backend,
            "--events",
            b.xsub,
            "--heartbeat-ms",
            "100",
            "--liveness",
            str(LIVENESS),
        ],
        cluster.tmp / "host.log",
        home,
        _env(),
    )
    cluster.procs.append(proc)
    wid = proc.line("worker ", 30).split()[1]
    cluster.wait_registered(b, wid)
    return proc, wid


def _cli(b: Broker, *args: str) -> str:
    out = subprocess.run(
        [str(BIN / "tradeplex"), "--broker", b.frontend, "--events", b.xpub, *args],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_an_rpc_service_joins_the_cluster_through_the_worker_host(cluster: Cluster) -> None:
    old, rep, pub = _old_server(cluster)
    b = cluster.broker()
    _, wid = _host(cluster, b, rep, pub)

    # The Rust CLI: an order through broker → host → RpcGateway → RpcServer → FAKE.
    lines = _cli(b, "order", "IF2412", "buy", "2", "--price", "101", "--service", "RPC")
    order_id = lines.split()[0]
    assert order_id.startswith(f"RPC.{wid}.")
    assert f"{order_id} all_traded 2/2" in lines
    positions = json.loads(_cli(b, "positions", "--service", "RPC", "--json"))
    assert [(p["symbol"], p["direction"], p["volume"], p["account"]) for p in positions] == [
        ("IF2412", "long", 2, "rpc1")
    ]
    (acct,) = json.loads(_cli(b, "account", "--service", "RPC", "--json"))
    assert (acct["account"], acct["gateway"]) == ("rpc1", "RPC")

    # A strategy's MainEngine: TradeplexGateway instead of RpcGateway, nothing else changes.
    me = MainEngine(EventEngine())
    try:
        me.add_gateway(TradeplexGateway)
        me.connect(
            {
                **TradeplexGateway.default_setting,
                "broker": b.frontend,
                "events": b.xpub,
                "service": "RPC",
            },
            "TRADEPLEX",
        )
        k = wait_for(lambda: me.get_contract("IF2412.CFFEX"), 10, "contract")
        assert k.gateway_name == "TRADEPLEX" and k.history_data
        filled = me.send_order(
            OrderRequest(k.symbol, k.exchange, Direction.LONG, OrderType.LIMIT, 1, price=100),
            "TRADEPLEX",
        )
        wait_for(lambda: (o := me.get_order(filled)) and o.status == Status.ALLTRADED, 10, "fill")
        resting = me.send_order(
            OrderRequest(k.symbol, k.exchange, Direction.LONG, OrderType.LIMIT, 1, price=95),
            "TRADEPLEX",
        )
        wait_for(lambda: (o := me.get_order(resting)) and o.is_active(), 10, "resting")
        me.cancel_order(me.get_order(resting).create_cancel_request(), "TRADEPLEX")
        wait_for(
            lambda: (o := me.get_order(resting)) and o.status == Status.CANCELLED, 10, "cancelled"
        )
        wait_for(
            lambda: [
                p
                for p in me.get_all_positions()
                if p.symbol == "IF2412" and p.direction == Direction.LONG and p.volume == 3
            ],
            10,
            "the position of all three fills",
        )
    finally:
        me.close()

    # The old server's gateway disconnecting reaches the host through RpcEngine's event
    # stream: the service is withdrawn, and offered again when it logs in again.
    with b.client(timeout_ms=2000) as c:
        trades = c.query_trades("RPC")
        assert [t.volume for t in trades] == [2, 1]
        old.p.send_signal(signal.SIGUSR1)
        cluster.wait_registered(b, wid, present=False)
        with pytest.raises(tradeplex.CallError) as e:
            c.query_contracts("RPC")
        assert e.value.code in ("unknown_service", "unavailable")
        old.p.send_signal(signal.SIGUSR2)
        cluster.wait_registered(b, wid)
        assert {x.symbol for x in c.query_contracts("RPC")} >= {"IF2412", "XY2412"}


def test_a_silent_rpc_server_withdraws_the_hosted_rpc_gateway(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vnpy.rpc.client
    from vnpy_rpcservice import RpcGateway

    from tradeplex.vnpy.host import GatewayHost

    # vn.py waits 30 s for heartbeats that come every 10 s: shortened on both sides.
    monkeypatch.setattr(vnpy.rpc.client, "HEARTBEAT_TOLERANCE", 2)
    env = {**_env(), "TPX_TEST_RPC_HEARTBEAT_S": "0.1"}
    home = cluster.tmp / "old"
    (home / ".vntrader").mkdir(parents=True)
    server = Proc([sys.executable, str(HERE / "rpc_server.py")], cluster.tmp / "rpc.log", home, env)
    cluster.procs.append(server)
    fields = dict(kv.split("=", 1) for kv in server.line("rpc ", 30).split()[1:])
    b = cluster.broker()
    setting = {"主动请求地址": fields["rep"], "推送订阅地址": fields["pub"]}
    host = GatewayHost(RpcGateway, setting, b.backend, b.xsub, heartbeat_ms=100, liveness=LIVENESS)
    cluster.closers.append(host.stop)
    host.start()
    cluster.wait_registered(b, host.worker.id)
    server.kill()  # no goodbye: only the missing heartbeats tell
    wait_for(lambda: not host.connected, 10, "RpcGateway's silence noticed")
    cluster.wait_registered(b, host.worker.id, present=False)
    again = Proc(
        [sys.executable, str(HERE / "rpc_server.py"), fields["rep"], fields["pub"]],
        cluster.tmp / "rpc2.log",
        home,
        env,
    )
    cluster.procs.append(again)
    again.line("rpc ", 30)
    wait_for(lambda: host.connected, 10, "heartbeats again")
    cluster.wait_registered(b, host.worker.id)
    with b.client() as c:
        o = c.send_order("RPC", symbol="IF2412", direction="long", volume=1, price=100)
        assert o.order_id.startswith(f"RPC.{host.worker.id}.")
