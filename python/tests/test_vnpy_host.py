"""A vn.py gateway hosted as a Tradeplex worker: from the Rust CLI, the Python client and a
TradeplexGateway; its ops, its connection state (withdrawn on disconnect), its flags,
metrics and CURVE (skipped without vn.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, LIVENESS, Cluster, Proc, wait_for

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("vnpy")

from fake_gateway import MD, TD, FakeGateway
from vnpy.event import EventEngine
from vnpy.trader.constant import Direction, OrderType, Status
from vnpy.trader.engine import MainEngine
from vnpy.trader.object import OrderRequest

import tradeplex
from tradeplex.vnpy import TradeplexGateway
from tradeplex.vnpy.connection import ConnectionRule, ConnectionState
from tradeplex.vnpy.host import GatewayHost

HERE = Path(__file__).parent
SYMBOLS = {"IF2412", "IH2412", "XY2412", "IO2412-C-4000"}


def _host(cluster: Cluster, b: object, account: str = "acct1", **setting: object) -> GatewayHost:
    host = GatewayHost(
        FakeGateway,
        {"account": account, **setting},
        b.backend,  # type: ignore[attr-defined]
        b.xsub,  # type: ignore[attr-defined]
        heartbeat_ms=100,
        liveness=LIVENESS,
    )
    cluster.closers.append(host.stop)
    host.start()
    cluster.wait_registered(b, host.worker.id)  # type: ignore[arg-type]
    return host


def _host_proc(cluster: Cluster, b: object, *extra: str, account: str = "acct2") -> Proc:
    setting = cluster.tmp / f"fake-{account}.json"
    setting.write_text(json.dumps({"account": account}))
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
            b.backend,  # type: ignore[attr-defined]
            "--events",
            b.xsub,  # type: ignore[attr-defined]
            "--heartbeat-ms",
            "100",
            "--liveness",
            str(LIVENESS),
            *extra,
        ],
        cluster.tmp / f"host-{account}.log",
        cwd=HERE,
        env={"PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])},  # fake_gateway, ours
    )
    cluster.procs.append(proc)
    return proc


def _offered(c: tradeplex.Client, worker: str) -> bool:
    st = c.call("tpx.status", idempotent=True)
    return any(w["worker"] == worker and w["services"] == ["FAKE"] for w in st["workers"])


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _metric(text: str, name: str) -> float:
    """The value of one sample line `name{labels}` (exactly as exposed)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no sample {name} in:\n{text}")


def _probe_until_heard(host: GatewayHost, sub: tradeplex.Subscriber) -> None:
    """Publishes probes until one arrives: a PUB drops what it sends before the relay's
    subscription has reached it, so the first fill's events could otherwise be lost."""

    def heard() -> bool:
        host.worker.publish("log.probe", {"probe": True})
        ev = sub.recv(0.05)
        return ev is not None and ev.kind == "log"

    wait_for(heard, 10, "events from the host reach the subscriber")


def test_hosted_gateway_serves_orders_and_events(cluster: Cluster) -> None:
    b = cluster.broker()
    host = _host(cluster, b)
    with b.client() as c, c.subscriber(["order.", "trade.", "log.probe"]) as sub:
        assert sub.wait_connected(5)
        _probe_until_heard(host, sub)
        assert {k.symbol for k in c.query_contracts("FAKE")} == SYMBOLS
        assert c.query_account("FAKE")[0].account == "acct1"
        assert c.subscribe("FAKE", "IF2412").exchange == "CFFEX"
        filled = c.send_order("FAKE", symbol="IF2412", direction="long", volume=1, price=100)
        assert filled.order_id.startswith(f"FAKE.{host.worker.id}.")
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
            if ev.kind == "log":  # a late probe
                continue
            kinds.add(ev.kind)
            assert ev.topic.endswith(".acct1")
        bars = c.query_history("FAKE", tradeplex.HistoryRequest("IF2412", "minute", 10**18))
        assert [x.close_price for x in bars] == [100, 101, 102]
        trades = wait_for(lambda: c.query_trades("FAKE"), 5, "trade")
        assert [(t.order_id, t.volume, t.price) for t in trades] == [(filled.order_id, 1, 100)]
        assert c.query_trades("FAKE", "acct1") == trades
        assert c.query_trades("FAKE", "someone-else") == []
        pos = wait_for(lambda: c.query_position("FAKE", "acct1"), 5, "position")
        assert [(p.symbol, p.direction, p.volume) for p in pos] == [("IF2412", "long", 1)]


def test_new_ops_answer_from_what_the_gateway_pushed(cluster: Cluster) -> None:
    b = cluster.broker()
    _host(cluster, b)
    with b.client() as c:
        k = c.query_contract("FAKE", "IF2412")  # exchange "": the only IF2412
        assert (k.exchange, k.history_data, k.max_volume, k.net_position) == (
            "CFFEX",
            True,
            20,
            False,
        )
        assert c.query_contract("FAKE", "XY2412", "SHFE").net_position is True
        with pytest.raises(tradeplex.CallError) as e:
            c.query_contract("FAKE", "XY2412")
        assert e.value.code == "bad_request" and "CFFEX, SHFE" in e.value.message
        with pytest.raises(tradeplex.CallError) as e:
            c.send_order("FAKE", symbol="XY2412", direction="long", volume=1, price=100)
        assert e.value.code == "bad_request"
        with pytest.raises(tradeplex.CallError) as e:
            c.query_contract("FAKE", "NOPE")
        assert e.value.code == "worker_error" and "unknown symbol" in e.value.message
        opt = c.query_contract("FAKE", "IO2412-C-4000", "CFFEX")
        assert (opt.product, opt.option_type, opt.option_strike, opt.stop_supported) == (
            "option",
            "call",
            4000.0,
            True,
        )
        assert opt.option_underlying == "IF2412.CFFEX" and opt.option_index == "4000"
        assert opt.option_portfolio == "IO"
        assert opt.option_listed_ns is not None and opt.option_expiry_ns is not None
        assert opt.option_expiry_ns > opt.option_listed_ns
        with pytest.raises(tradeplex.CallError) as e:
            c.query_tick("FAKE", "IH2412")
        assert e.value.code == "worker_error" and "no tick" in e.value.message
        c.subscribe("FAKE", "IH2412")
        t = wait_for(lambda: _tick_or_none(c, "IH2412"), 5, "tick")
        assert (t.name, t.limit_up, t.limit_down, t.last_price) == ("IH2412 future", 110, 90, 100)
        assert t.localtime_ns is not None and t.localtime_ns > 0
        assert t.bid_price[0] == 99.8 and t.ask_volume[0] == 4


def _tick_or_none(c: tradeplex.Client, symbol: str) -> tradeplex.Tick | None:
    try:
        return c.query_tick("FAKE", symbol)
    except tradeplex.CallError:
        return None


def test_a_disconnected_gateway_is_withdrawn_and_offered_again_on_reconnect(
    cluster: Cluster,
) -> None:
    b = cluster.broker()
    a = _host(cluster, b, "acctA")
    other = _host(cluster, b, "acctB")
    gw = a.gateway
    assert isinstance(gw, FakeGateway)
    with b.client(timeout_ms=3000) as c:
        gw.drop(TD)  # "交易服务器连接断开，原因4097", as vnpy_ctp writes it
        wait_for(lambda: not a.connected, 5, "host sees the disconnect")
        # Before the broker has the new offer, a request reaching A is refused, not run.
        with pytest.raises(tradeplex.CallError) as e:
            c.call("FAKE", {"op": "query_contracts"}, idempotent=True, target=a.worker.id)
        assert e.value.code in ("unavailable", "unknown_worker")
        wait_for(lambda: not _offered(c, a.worker.id), 5, "A withdrawn")
        orders = [
            c.send_order("FAKE", symbol="IF2412", direction="long", volume=1, price=90)
            for _ in range(8)
        ]
        assert all(o.order_id.startswith(f"FAKE.{other.worker.id}.") for o in orders)
        assert gw.sent == 0  # nothing reached the disconnected gateway
        with pytest.raises(tradeplex.CallError) as e:
            c.call(
                "FAKE",
                {"op": "send_order", "symbol": "IF2412", "direction": "long", "volume": 1},
                target=a.worker.id,
            )
        assert e.value.code in ("unknown_worker", "unavailable")
        assert gw.sent == 0
        # The market-data session dropping too, then only the trading one coming back:
        gw.drop(MD)
        gw.restore(TD)
        assert not a.connected  # MD still down
        gw.restore(MD, log_in=False)  # CTP's front answering is not enough: it logs in
        assert not a.connected
        gw.restore(MD)
        wait_for(lambda: a.connected, 5, "host sees the reconnect")
        wait_for(lambda: _offered(c, a.worker.id), 5, "A offered again")
        o = c.call(
            "FAKE",
            {"op": "send_order", "symbol": "IF2412", "direction": "long", "volume": 1},
            target=a.worker.id,
        )
        assert o["order_id"].startswith(f"FAKE.{a.worker.id}.") and gw.sent == 1


def test_explicit_reports_win_over_the_log(cluster: Cluster) -> None:
    b = cluster.broker()
    a = _host(cluster, b, "acctX", explicit=True)
    gw = a.gateway
    assert isinstance(gw, FakeGateway) and a.connected
    with b.client() as c, c.subscriber(["log.FAKE"]) as sub:
        assert sub.wait_connected(5)
        gw.write_log(f"{TD}连接断开，原因4097")  # ignored: this gateway reports explicitly
        ev = sub.recv(5)  # the host publishes a log line after reading it
        assert ev is not None and "连接断开" in ev.body["msg"]
        assert a.connected
        gw.drop("td")
        wait_for(lambda: not a.connected, 5, "explicit disconnect")
        wait_for(lambda: not _offered(c, a.worker.id), 5, "withdrawn")
        gw.restore("td")
        wait_for(lambda: _offered(c, a.worker.id), 5, "offered again")


def test_connection_rule_reads_ctp_and_english_logs() -> None:
    s = ConnectionState()
    assert not s.connected and s.gauge() == 0
    assert s.on_log("交易服务器连接成功") is None
    assert s.on_contract() is True and s.gauge() == 1
    assert s.on_log("行情服务器连接断开，原因4097") is False and s.gauge() == 2
    assert s.down_parts == ["行情服务器"]
    assert s.on_log("交易服务器登录成功") is None  # another session
    assert s.on_log("行情服务器连接成功") is True  # never logged in: connecting is enough
    assert s.on_log("交易服务器连接断开，原因0") is False
    assert s.on_log("交易服务器连接成功") is None  # it logs in, so it must log in again
    assert s.on_log("交易服务器登录成功") is True
    assert s.on_log("Trade API disconnected") is False
    assert s.on_log("Trade API connected") is True
    assert s.on_log("委托 5 状态更新，已撤销") is None
    custom = ConnectionState(ConnectionRule.from_patterns(down=[r"^LOST (?P<part>\w+)"], login=[]))
    custom.on_contract()
    assert custom.on_log("交易服务器连接断开") is None  # the defaults replaced
    assert custom.on_log("LOST md") is False
    assert custom.on_log("md connected") is True
    with pytest.raises(ValueError, match="down pattern"):
        ConnectionRule.from_patterns(down=["("])


def test_worker_host_process_reached_from_cli_and_a_tradeplex_gateway(cluster: Cluster) -> None:
    b = cluster.broker()
    proc = _host_proc(cluster, b, "--http", "127.0.0.1:0", "--capacity", "2")
    line = proc.line("worker ")
    fields = dict(kv.split("=", 1) for kv in line.split()[2:])
    wid = line.split()[1]
    assert fields["broker"] == b.backend and fields["http"].startswith("127.0.0.1:")
    url = f"http://{fields['http']}"
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
    assert {k["symbol"] for k in json.loads(out.stdout)} == SYMBOLS
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
    # /metrics, with the Rust worker's names.
    assert _get(url + "/healthz") == (200, "ok\n")
    assert _get(url + "/readyz") == (200, "ready\n")
    assert _get(url + "/nope")[0] == 404
    text = wait_for(
        lambda: (
            (t := _get(url + "/metrics")[1])
            and 'tradeplex_gateway_orders_total{gateway="FAKE",result="filled"} 1.0' in t
            and t
        ),
        5,
        "filled order counted",
    )
    assert _metric(text, 'tradeplex_gateway_orders_total{gateway="FAKE",result="sent"}') == 1
    assert _metric(text, 'tradeplex_gateway_connected{gateway="FAKE"}') == 1
    assert _metric(text, "tradeplex_worker_registered") == 1
    # At least the READY offering FAKE (one more if the gateway connected after the first
    # READY had gone out without it).
    assert _metric(text, "tradeplex_worker_ready_sent_total") >= 1
    assert _metric(text, "tradeplex_worker_in_flight") == 0
    assert _metric(text, 'tradeplex_worker_requests_total{outcome="ok",service="FAKE"}') >= 3
    assert _metric(text, 'tradeplex_worker_events_published_total{kind="order"}') >= 2
    assert _metric(text, 'tradeplex_worker_events_published_total{kind="contract"}') == 5
    assert "tradeplex_worker_handler_duration_seconds_bucket" in text
    assert _metric(text, "tradeplex_worker_events_dropped_total") == 0
    version = tradeplex.__version__
    assert _metric(text, f'tradeplex_build_info{{commit="unknown",version="{version}"}}') == 1
    assert _metric(text, "process_resident_memory_bytes") > 0
    assert _metric(text, "process_open_fds") > 0


def test_worker_host_logs_json_lines_with_a_top_level_message(cluster: Cluster) -> None:
    b = cluster.broker()
    proc = _host_proc(cluster, b, "--log-json", account="acct-json")
    wid = proc.line("worker ").split()[1]
    cluster.wait_registered(b, wid)

    def lines() -> list[dict[str, Any]]:
        text = proc.log.read_text(encoding="utf-8")
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    # The gateway's connection is logged once it logs in; every line is one JSON object.
    logged = wait_for(
        lambda: [v for v in lines() if "connected" in v.get("message", "")], 10, "a log line"
    )
    for v in lines():
        assert isinstance(v["message"], str) and v["level"] in {
            "DEBUG",
            "INFO",
            "WARN",
            "ERROR",
        }, v
        assert v["timestamp"].endswith("Z") and isinstance(v["target"], str), v
    assert "\x1b[" not in proc.log.read_text(encoding="utf-8")
    assert logged[0]["target"] == "tradeplex.vnpy.host", logged[0]


def test_worker_host_flags_are_validated_by_name(cluster: Cluster) -> None:
    for flags, field in (
        (["--capacity", "0"], "capacity"),
        (["--heartbeat-ms", "5"], "heartbeat_ms"),
        (["--liveness", "101"], "liveness"),
        (["--broker", "localhost:1"], "broker"),
        (["--down-pattern", "("], "connection"),
        (["--curve-server-key", "short", "--curve-key-file", "/nonexistent"], "curve"),
        # A z85 key may start with "-": taken as the key (then the missing file is the
        # error), not as an unknown flag.
        (["--curve-server-key", "-" + "a" * 39, "--curve-key-file", "/nonexistent"], "curve"),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "tradeplex.vnpy.worker", "--gateway", "x:Y", *flags],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=HERE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])},
        )
        assert out.returncode == 2, (flags, out.stderr)
        assert out.stderr.startswith("error: ") and field in out.stderr, (flags, out.stderr)
        assert "expected one argument" not in out.stderr, (flags, out.stderr)
    toml = cluster.tmp / "host.toml"
    toml.write_text('capacity = 3\nhttp = "off"\njournal = "x"\n')
    out = subprocess.run(
        [sys.executable, "-m", "tradeplex.vnpy.worker", "--config", str(toml)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "unknown field 'journal'" in out.stderr, out.stderr


def test_worker_host_over_curve_from_a_config_file(cluster: Cluster) -> None:
    tmp = cluster.tmp
    b, keys = cluster.curve_broker()
    broker = keys.broker
    (tmp / "host.toml").write_text(
        f'broker = "{b.backend}"\nevents = "{b.xsub}"\nheartbeat_ms = 100\nliveness = 10\n'
        f'gateway = "fake_gateway:FakeGateway"\n'
        f'[curve]\nserver_key = "{broker.public_key}"\nkey_file = "{tmp / "worker.key"}"\n'
    )
    proc = Proc(
        [sys.executable, "-m", "tradeplex.vnpy.worker", "--config", str(tmp / "host.toml")],
        tmp / "host-curve.log",
        cwd=HERE,
        env={"PYTHONPATH": os.pathsep.join([str(HERE), *sys.path])},
    )
    cluster.procs.append(proc)
    wid = proc.line("worker ").split()[1]
    with tradeplex.Client(
        b.frontend, b.xpub, curve_server_key=broker.public_key, curve_key_file=tmp / "client.key"
    ) as c:
        wait_for(lambda: _offered(c, wid), 10, "host registered over CURVE")
        with c.subscriber(["order."]) as sub:
            assert sub.wait_connected(5)
            o = c.send_order("FAKE", symbol="IF2412", direction="long", volume=1, price=100)
            ev = sub.recv(5)  # events too travel over CURVE
            assert ev is not None and ev.body["order_id"] == o.order_id


def test_final_orders_are_forgotten_beyond_the_cap_active_ones_never(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tradeplex.vnpy.host as host_module

    monkeypatch.setattr(host_module, "MAX_ORDERS", 10)
    b = cluster.broker()
    _host(cluster, b)
    with b.client() as c:
        resting = c.send_order("FAKE", symbol="IF2412", direction="long", volume=1, price=90)
        filled = [
            c.send_order("FAKE", symbol="IF2412", direction="long", volume=1, price=100)
            for _ in range(15)
        ]
        wait_for(lambda: c.query_order(filled[-1].order_id).status == "all_traded", 5, "fill")
        assert c.query_order(resting.order_id).status == "not_traded"
        with pytest.raises(tradeplex.CallError) as e:
            c.query_order(filled[0].order_id)
        assert e.value.code == "worker_error" and "unknown order" in e.value.message
        assert c.query_order(filled[-1].order_id).status == "all_traded"
