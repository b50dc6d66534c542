"""The Python Worker, served through the real broker to the Rust CLI and the Python Client."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import BIN, LIVENESS, Broker, Cluster, wait_for

import tradeplex


def upper(body: Any) -> Any:
    if not isinstance(body, dict):
        raise tradeplex.HandlerError("bad_request", "body must be a map")
    if body.get("fail"):
        raise RuntimeError("handler blew up")
    req = tradeplex.current_request()
    assert req is not None
    return {k: v.upper() if isinstance(v, str) else v for k, v in body.items()} | {
        "deadline": req.deadline_ms > 0
    }


@pytest.fixture
def pyworker(cluster: Cluster) -> Iterator[tuple[Broker, tradeplex.Worker]]:
    b = cluster.broker()
    w = tradeplex.Worker(
        b.backend, b.xsub, services={"py.upper": upper}, capacity=3, heartbeat_ms=100
    )
    w.start()
    cluster.closers.append(w.stop)
    assert w.wait_registered(5)
    yield b, w


def test_reached_from_the_rust_cli(pyworker: tuple[Broker, tradeplex.Worker]) -> None:
    b, _w = pyworker
    out = subprocess.run(
        [str(BIN / "tradeplex"), "--broker", b.frontend, "call", "py.upper", '{"a":"x"}'],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"a": "X", "deadline": True}
    bad = subprocess.run(
        [str(BIN / "tradeplex"), "--broker", b.frontend, "call", "py.upper", "[1]"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert bad.returncode != 0 and "bad_request" in bad.stderr


def test_reached_from_the_python_client(pyworker: tuple[Broker, tradeplex.Worker]) -> None:
    b, w = pyworker
    with b.client() as c:
        r = c.call_reply("py.upper", {"s": "abc", "n": 1})
        assert r.body == {"s": "ABC", "n": 1, "deadline": True} and r.worker == w.id
        with pytest.raises(tradeplex.CallError) as e:
            c.call("py.upper", {"fail": True})
        assert e.value.code == "worker_error" and "blew up" in e.value.message
        # Pipelined from the client, executed `capacity` at a time.
        futs = [c.call_async("py.upper", {"i": i}) for i in range(300)]
        assert [f.result(10)["i"] for f in futs] == list(range(300))


def test_runs_capacity_handlers_at_once(cluster: Cluster) -> None:
    b = cluster.broker()
    barrier = threading.Barrier(3, timeout=5)

    def meet(body: Any) -> int:
        return barrier.wait()  # passes only when 3 handlers run at the same time

    with tradeplex.Worker(
        b.backend, b.xsub, {"meet": meet}, capacity=3, heartbeat_ms=100, liveness=LIVENESS
    ) as w:
        assert w.wait_registered(5)
        with b.client() as c:
            futs = [c.call_async("meet", None) for _ in range(3)]
            assert sorted(f.result(10) for f in futs) == [0, 1, 2]


def test_drain_finishes_in_flight_and_sends_new_work_elsewhere(cluster: Cluster) -> None:
    b = cluster.broker()
    release = threading.Event()

    def slow(body: Any) -> str:
        release.wait(10)
        return "slow done"

    a = tradeplex.Worker(
        b.backend, b.xsub, {"svc": slow}, heartbeat_ms=100, liveness=LIVENESS
    ).start()
    other = tradeplex.Worker(
        b.backend, b.xsub, {"svc": lambda body: "other"}, heartbeat_ms=100, liveness=LIVENESS
    )
    cluster.closers += [a.stop, other.stop]
    assert a.wait_registered(5)
    with b.client() as c:
        held = c.call_async("svc", None, target=a.id)
        wait_for(lambda: a.in_flight == 1, 5, "call in flight at a")
        other.start()
        assert other.wait_registered(5)
        stopper = threading.Thread(target=a.stop)
        stopper.start()
        cluster.wait_registered(b, a.id, present=False)  # a withdrew its services
        assert c.call_reply("svc", None).worker == other.id
        release.set()
        assert held.result(5) == "slow done"  # answered although a was draining
        stopper.join(5)
        assert not stopper.is_alive()


def test_published_events_carry_per_topic_sequence_numbers(
    pyworker: tuple[Broker, tradeplex.Worker],
) -> None:
    b, w = pyworker
    with tradeplex.Subscriber(b.xpub, ["log.PY"]) as sub:
        assert sub.wait_connected(5)
        wait_for(lambda: w.publish("log.PY", {"msg": "warm"}) and sub.recv(0.05), 10, "path up")
        start = w.publish("log.PY", tradeplex.Log("PY", "info", "first"))
        for i in range(4):
            w.publish("log.PY", {"gateway": "PY", "level": "info", "msg": str(i)})
        seqs = []
        while len(seqs) < 5:
            ev = sub.recv(5)
            assert ev is not None
            if ev.seq >= start:
                seqs.append(ev.seq)
                assert ev.source == w.id and isinstance(ev.data(), tradeplex.Log)
        assert seqs == list(range(start, start + 5)) and sub.gaps == 0
    with pytest.raises(ValueError):
        w.publish("nokind.x", {})


def test_reregisters_after_a_broker_restart(cluster: Cluster) -> None:
    b1 = cluster.broker()
    w = tradeplex.Worker(
        b1.backend, b1.xsub, {"svc": lambda body: body}, heartbeat_ms=100, liveness=LIVENESS
    )
    cluster.closers.append(w.stop)
    w.start()
    assert w.wait_registered(5)
    b1.proc.kill()
    b2 = cluster.broker(b1)
    cluster.wait_registered(b2, w.id)
    with b2.client() as c:
        assert c.call("svc", 5) == 5


def test_reads_the_brokers_batches_and_answers_each_request(cluster: Cluster) -> None:
    b = cluster.broker(None, "--grace-ms", "10000", http=True)
    client = b.client()
    try:
        # Queued before the worker registers: READY releases them in one round, which
        # reaches a worker that declared BATCH in one message.
        futs = [client.call_async("py.upper", {"n": i, "s": f"x{i}"}) for i in range(30)]
        wait_for(lambda: b.metric("tradeplex_queue_depth") == 30, what="30 queued")
        w = tradeplex.Worker(b.backend, b.xsub, services={"py.upper": upper}, capacity=32)
        w.start()
        cluster.closers.append(w.stop)
        got = [f.result(10) for f in futs]
        assert got == [{"n": i, "s": f"X{i}", "deadline": True} for i in range(30)]
        assert b.metric('tradeplex_batches_total{direction="to_workers"}') >= 1
        assert w.bad_frames == 0 and b.metric("tradeplex_bad_frames_total") == 0
    finally:
        client.close()


def test_results_ready_together_leave_in_one_batch_once_the_broker_sent_one() -> None:
    import zmq

    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    w = tradeplex.Worker(f"tcp://127.0.0.1:{port}", "tcp://127.0.0.1:1", services={})
    try:
        replies = [
            tradeplex.wire.encode_worker(tradeplex.wire.WorkerCommand.REPLY, {"job": j}, b"r")
            for j in range(3)
        ]
        # No BATCH from the broker yet: one message per result.
        w._results.extend(replies[:2])
        w._forward_results(dealer)
        assert [router.recv_multipart()[1] for _ in range(2)] == [r[0] for r in replies[:2]]
        w._broker_batches = True
        w._results.extend(replies)
        w._forward_results(dealer)
        _, frame = router.recv_multipart()
        cmd, header, body = tradeplex.wire.split_message(frame, tradeplex.wire.WORKER_PROTOCOL)
        assert cmd == tradeplex.wire.WorkerCommand.BATCH
        messages, broken = tradeplex.wire.batch_messages(tradeplex.wire.decode_header(header), body)
        assert broken is None and messages == [r[0] for r in replies]
        # Nothing else was sent before the next message.
        w._send(dealer, [b"next"])
        assert router.recv_multipart()[1] == b"next"
    finally:
        w.stop()
        dealer.close(0)
        router.close(0)
        ctx.term()
