"""Trading-safe failure semantics: worker death and broker restart, with real processes."""

from __future__ import annotations

import json
import threading
import uuid

import pytest
from conftest import LIVENESS, Cluster, wait_for

import tradeplex


def _journal_ids(*paths: object) -> list[str]:
    """The `mark` of every request the journals show executed."""
    marks = []
    for p in paths:
        if p is None or not p.exists():  # type: ignore[attr-defined]
            continue
        for line in p.read_text().splitlines():  # type: ignore[attr-defined]
            entry = json.loads(line)
            # One `start` line per execution (written before the handler runs); the `done`
            # line after it carries the outcome, not the body.
            if entry.get("event") != "start":
                continue
            body = entry.get("body")
            if isinstance(body, dict) and "mark" in body:
                marks.append(body["mark"])
    return marks


def _in_flight(c: tradeplex.Client) -> int:
    st = c.call("tpx.status", idempotent=True)
    return sum(w["in_flight"] for w in st["workers"])


def test_killed_worker_mid_order_is_worker_lost_and_never_resent(cluster: Cluster) -> None:
    b = cluster.broker()
    doomed = cluster.worker(b, journal=True)
    with b.client(timeout_ms=5000) as c:
        mark = uuid.uuid4().hex
        # A non-idempotent call held in flight stands in for an order at the exchange.
        fut = c.call_async("echo", {"sleep_ms": 3000, "mark": mark})
        wait_for(lambda: _in_flight(c) == 1, 5, "call in flight")
        survivor = cluster.worker(b, journal=True)
        doomed.proc.kill()
        err = fut.exception(5)
        assert isinstance(err, tradeplex.CallError)
        assert err.code == "worker_lost" and err.outcome_unknown
        assert err.worker == doomed.id
        # The survivor serves new calls but never saw the lost one.
        assert c.call("echo", {"after": 1}) == {"after": 1}
        assert _journal_ids(doomed.journal) == [mark]
        assert _journal_ids(survivor.journal) == []


def test_unanswered_order_is_outcome_unknown_and_settled_by_reference(cluster: Cluster) -> None:
    # A Python gateway whose exchange is slow: the order is placed after the client gave up.
    b = cluster.broker()
    orders: dict[str, dict[str, object]] = {}
    release = threading.Event()

    def gateway(body: dict[str, object]) -> object:
        if body["op"] == "send_order":
            release.wait(5)
            order = {
                **body,
                "order_id": f"SLOW.{worker.id}.{len(orders) + 1}",
                "gateway": "SLOW",
                "traded": 0.0,
                "status": "not_traded",
            }
            orders[str(body["reference"])] = order
            return order
        if body["op"] == "query_orders":
            return list(orders.values())
        raise tradeplex.HandlerError("bad_request", "unsupported op")

    worker = tradeplex.Worker(
        b.backend, b.xsub, {"SLOW": gateway}, heartbeat_ms=100, liveness=LIVENESS
    ).start()
    cluster.closers.append(worker.stop)
    assert worker.wait_registered(5)
    with b.client(timeout_ms=3000) as c:
        with pytest.raises(tradeplex.OrderOutcomeUnknown) as e:
            c.send_order(
                "SLOW", symbol="IF2412", direction="long", volume=1, price=3900.0, timeout_ms=300
            )
        assert e.value.code == "timeout" and e.value.reference.startswith("tpx-")
        release.set()
        wait_for(lambda: orders, 5, "order placed late")
        found = c.find_order("SLOW", e.value.reference)
        assert found is not None and found.order_id.startswith("SLOW.")
        assert len(orders) == 1  # never re-sent


def test_idempotent_call_survives_a_broker_restart_but_an_order_does_not(
    cluster: Cluster,
) -> None:
    b1 = cluster.broker()
    w = cluster.worker(b1, journal=True)
    c = b1.client(timeout_ms=4500)
    cluster.closers.append(c.close)
    sub = tradeplex.Subscriber(b1.xpub, ["hb."], heartbeat_ms=100, liveness=LIVENESS)
    cluster.closers.append(sub.close)
    assert sub.wait_connected(5)
    first_broker = sub.broker
    query = c.call_async("echo", {"sleep_ms": 600, "mark": "query"}, idempotent=True)
    order = c.call_async("echo", {"sleep_ms": 600, "mark": "order"})
    wait_for(lambda: _in_flight(c) == 2, 5, "both calls in flight")
    b1.proc.kill()
    b2 = cluster.broker(b1)  # same endpoints
    assert query.result(10) == {"sleep_ms": 600, "mark": "query"}
    err = order.exception(10)
    assert isinstance(err, tradeplex.CallError) and err.code == "timeout"
    # The worker ran the order once (before the restart) and the query twice.
    marks = _journal_ids(w.journal)
    assert marks.count("order") == 1 and marks.count("query") == 2
    assert c.stats["resends"] >= 1
    # The subscriber notices the new broker instance and keeps receiving.
    wait_for(lambda: sub.broker not in (None, first_broker), 10, "new broker heartbeat")
    assert sub.broker_restarts >= 1
    assert c.call("echo", 1) == 1
    assert b2.frontend == b1.frontend


@pytest.mark.parametrize("code", ["worker_lost", "timeout"])
def test_outcome_unknown_codes(code: str) -> None:
    assert tradeplex.CallError(code).outcome_unknown
    assert not tradeplex.CallError("unknown_service").outcome_unknown


def test_broker_restart_during_direct_sync_calls(cluster: Cluster) -> None:
    # Sync calls on idle clients are sent and awaited on the caller's thread; a broker
    # restart meanwhile hands them to the I/O thread, which re-sends only the idempotent one.
    b1 = cluster.broker()
    w = cluster.worker(b1, journal=True)
    results: dict[str, object] = {}
    clients = {m: b1.client(timeout_ms=4500) for m in ("query", "order")}
    for c in clients.values():
        cluster.closers.append(c.close)
        wait_for(lambda c=c: c.call("echo", 0) == 0 and c.stats["direct"] > 0, 5, "direct")

    def run(mark: str) -> None:
        c = clients[mark]
        try:
            results[mark] = c.call(
                "echo", {"sleep_ms": 600, "mark": mark}, idempotent=mark == "query"
            )
        except tradeplex.CallError as e:
            results[mark] = e

    threads = [threading.Thread(target=run, args=(m,)) for m in clients]
    for t in threads:
        t.start()
    with b1.client(timeout_ms=1000) as probe:
        wait_for(lambda: _in_flight(probe) == 2, 5, "both calls in flight")
    b1.proc.kill()
    cluster.broker(b1)  # same endpoints
    for t in threads:
        t.join(10)
    assert results["query"] == {"sleep_ms": 600, "mark": "query"}
    err = results["order"]
    assert isinstance(err, tradeplex.CallError) and err.code == "timeout"
    marks = _journal_ids(w.journal)
    assert marks.count("order") == 1 and marks.count("query") == 2
    assert clients["query"].stats["resends"] >= 1 and clients["order"].stats["resends"] == 0
    assert clients["query"].stats["handovers"] >= 1
