"""CURVE end to end: keys from `tradeplex keygen`, a broker with an allow-list."""

from __future__ import annotations

import pytest
from conftest import LIVENESS, Cluster

import tradeplex


def test_allow_listed_client_and_worker_talk_others_do_not(cluster: Cluster) -> None:
    tmp = cluster.tmp
    b, keys = cluster.curve_broker()
    broker = keys.broker
    w = tradeplex.Worker(
        b.backend,
        b.xsub,
        {"sec": lambda body: {"secret": body}},
        heartbeat_ms=100,
        liveness=LIVENESS,
        curve_server_key=broker.public_key,
        curve_key_file=tmp / "worker.key",
    )
    cluster.closers.append(w.stop)
    w.start()
    assert w.wait_registered(5)
    with tradeplex.Client(
        b.frontend, b.xpub, curve_server_key=broker.public_key, curve_key_file=tmp / "client.key"
    ) as c:
        assert c.call("sec", 1) == {"secret": 1}
        with c.subscriber("hb.") as sub:
            assert sub.wait_connected(5)
    # A key the broker does not know gets nowhere: never sent, so `unavailable`.
    with tradeplex.Client(
        b.frontend,
        curve_server_key=broker.public_key,
        curve_key_file=tmp / "worker.key",
        timeout_ms=500,
    ) as c:
        with pytest.raises(tradeplex.CallError) as e:
            c.call("sec", 1)
        assert e.value.code in ("unavailable", "timeout")
