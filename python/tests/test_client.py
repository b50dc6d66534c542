"""Client calls through the real broker to real Rust workers."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future

import pytest
from conftest import Cluster, Shared, wait_for

import tradeplex


def test_echo_returns_the_body(shared: Shared) -> None:
    body = {"hello": "world", "n": [1, 2.5, None], "bin": b"\x00\x01"}
    assert shared.client.call("echo", body) == body


def test_reply_names_the_worker(shared: Shared) -> None:
    r = shared.client.call_reply("echo", 1)
    assert r.body == 1 and r.worker == shared.worker.id


def test_status_is_served_by_the_broker(shared: Shared) -> None:
    st = shared.client.call("tpx.status", idempotent=True)
    assert shared.worker.id in {w["worker"] for w in st["workers"]}


def test_unknown_service_is_an_error_at_once(shared: Shared) -> None:
    t = time.monotonic()
    with pytest.raises(tradeplex.CallError) as e:
        shared.client.call("no.such.service", {})
    assert e.value.code == "unknown_service" and e.value.number == 2
    assert time.monotonic() - t < 1.0


def test_many_calls_in_flight_from_several_threads(shared: Shared) -> None:
    errors: list[BaseException] = []

    def run(t: int) -> None:
        try:
            futs = [shared.client.call_async("echo", {"t": t, "i": i}) for i in range(500)]
            for i, f in enumerate(futs):
                assert f.result(10) == {"t": t, "i": i}
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors


def test_call_async_returns_a_future(shared: Shared) -> None:
    fut = shared.client.call_async("echo", {"sleep_ms": 50, "x": 1})
    assert isinstance(fut, Future)
    assert fut.result(5) == {"sleep_ms": 50, "x": 1}
    failed = shared.client.call_async("nope.nope", {})
    assert isinstance(failed.exception(5), tradeplex.CallError)


def test_a_call_without_answer_in_time_times_out(shared: Shared) -> None:
    # Delivered at once, but the worker takes longer than the call may wait.
    with pytest.raises(tradeplex.CallError) as e:
        shared.client.call("echo", {"sleep_ms": 1500}, timeout_ms=300)
    assert e.value.code == "timeout" and e.value.outcome_unknown


def test_a_request_queued_past_its_deadline_is_never_delivered(shared: Shared) -> None:
    # Fill the worker's capacity (4), so the next request waits in the broker's queue.
    busy = [shared.client.call_async("echo", {"sleep_ms": 1000}) for _ in range(4)]
    wait_for(lambda: _in_flight(shared) == 4, 5, "worker busy")
    with pytest.raises(tradeplex.CallError) as e:
        shared.client.call("echo", {"late": True}, timeout_ms=200)
    assert e.value.code == "deadline_exceeded"
    for f in busy:
        f.result(5)


def _in_flight(shared: Shared) -> int:
    st = shared.client.call("tpx.status", idempotent=True)
    return sum(w["in_flight"] for w in st["workers"])


def test_no_broker_means_unavailable_not_sent() -> None:
    # Nothing listens on this ipc path, so the DEALER never has a peer to send to.
    with (
        tradeplex.Client("ipc:///tmp/tradeplex-nobody-here", timeout_ms=200) as c,
        pytest.raises(tradeplex.CallError) as e,
    ):
        c.call("echo", 1)
    assert e.value.code == "unavailable" and not e.value.outcome_unknown


def test_bad_arguments_fail_before_sending(shared: Shared) -> None:
    with pytest.raises(ValueError):
        shared.client.call("bad service!", {})
    with pytest.raises(ValueError):
        shared.client.call("echo", {}, target="not-a-uuid")
    with pytest.raises(ValueError):
        shared.client.call("echo", {}, affinity="")
    with pytest.raises(tradeplex.CallError) as e:
        shared.client.call("echo", b"x" * (2 << 20))
    assert e.value.code == "too_large"


def test_raw_bodies_pass_untouched(shared: Shared) -> None:
    assert shared.client.call("echo", b"\x81\xa1a\x01", raw=True) == b"\x81\xa1a\x01"


def test_targeting_an_unknown_worker_is_an_error(shared: Shared) -> None:
    with pytest.raises(tradeplex.CallError) as e:
        shared.client.call("echo", 1, target="00000000-0000-4000-8000-000000000000")
    assert e.value.code == "unknown_worker"


def test_closed_client_fails_calls(shared: Shared) -> None:
    c = shared.broker.client()
    assert c.call("echo", 1) == 1
    c.close()
    with pytest.raises(tradeplex.CallError) as e:
        c.call("echo", 1)
    assert e.value.code == "closed"


def test_acall_awaits_many_calls_at_once(shared: Shared) -> None:
    import asyncio

    async def many() -> list[int]:
        return await asyncio.gather(*(shared.client.acall("echo", i) for i in range(100)))

    assert asyncio.run(many()) == list(range(100))


# --- direct calls (the caller's thread owns the socket while nothing else is in flight) ---


def test_sync_calls_on_an_idle_client_are_answered_on_the_calling_thread(shared: Shared) -> None:
    with shared.broker.client() as c:
        # Until the DEALER is connected, calls are handed to the I/O thread (it retries).
        wait_for(lambda: c.call("echo", 0) == 0 and c.stats["direct"] > 0, 5, "a direct call")
        st = c.stats
        for i in range(5):
            assert c.call("echo", {"i": i}) == {"i": i}
        r = c.call_reply("echo", 7)
        assert r.body == 7 and r.worker == shared.worker.id
        after = c.stats
        assert after["direct"] == st["direct"] + 6 and after["handovers"] == st["handovers"]
        assert after["in_flight"] == 0
        # Errors come back the same way.
        with pytest.raises(tradeplex.CallError) as e:
            c.call("no.such.service", {})
        assert e.value.code == "unknown_service" and c.stats["direct"] == after["direct"] + 1


def test_a_call_queued_during_a_slow_direct_call_is_not_held_behind_it(shared: Shared) -> None:
    with shared.broker.client(timeout_ms=5000) as c:
        slow: list[object] = []
        t = threading.Thread(target=lambda: slow.append(c.call("echo", {"sleep_ms": 1500})))
        t.start()
        wait_for(lambda: _in_flight(shared) == 1, 5, "slow direct call in flight")
        started = time.monotonic()
        assert c.call_async("echo", {"quick": 1}).result(5) == {"quick": 1}
        assert c.call("echo", {"quick": 2}) == {"quick": 2}
        assert time.monotonic() - started < 1.0  # not behind the 1.5 s call
        t.join(5)
        assert slow == [{"sleep_ms": 1500}]
        assert c.stats["handovers"] >= 1 and c.stats["in_flight"] == 0
        # Idle again (once the I/O thread has seen nothing left): sync calls are direct.
        before = c.stats["direct"]
        wait_for(lambda: c.call("echo", 3) == 3 and c.stats["direct"] > before, 5, "direct")


def test_many_threads_mixing_sync_and_async_calls(shared: Shared) -> None:
    errors: list[BaseException] = []
    with shared.broker.client(timeout_ms=5000) as c:

        def run(t: int) -> None:
            try:
                for i in range(150):
                    body = {"t": t, "i": i}
                    if (i + t) % 3 == 0:
                        assert c.call_async("echo", body).result(5) == body
                    elif (i + t) % 3 == 1:
                        assert c.call_reply("echo", body).body == body
                    else:
                        assert c.call("echo", body, idempotent=True) == body
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=run, args=(t,)) for t in range(6)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert not errors, errors[:3]
        st = c.stats
        assert st["in_flight"] == 0 and st["bad_frames"] == 0
        # Quiet again: sync calls go direct.
        wait_for(lambda: c.call("echo", 1) == 1 and c.stats["direct"] > st["direct"], 5, "direct")


def test_close_ends_a_direct_call_promptly(shared: Shared) -> None:
    c = shared.broker.client(timeout_ms=5000)
    got: list[BaseException] = []

    def run() -> None:
        try:
            c.call("echo", {"sleep_ms": 3000})
        except BaseException as e:
            got.append(e)

    t = threading.Thread(target=run)
    t.start()
    wait_for(lambda: _in_flight(shared) == 1, 5, "direct call in flight")
    started = time.monotonic()
    c.close()
    t.join(5)
    assert time.monotonic() - started < 1.0
    assert len(got) == 1 and isinstance(got[0], tradeplex.CallError)
    assert got[0].code == "closed"
    # Let the worker finish the abandoned call before the next test counts in-flight calls.
    wait_for(lambda: _in_flight(shared) == 0, 5, "worker idle")


def test_a_pipelines_answers_may_come_in_one_batch_and_each_settles_its_call(
    cluster: Cluster,
) -> None:
    broker = cluster.broker(None, "--grace-ms", "10000", http=True)
    client = broker.client()
    try:
        # Queued before any worker serves echo: its first delivery is a batch, it answers
        # in batches, and the broker passes them on to this client (it reads BATCH).
        futs = [client.call_async("echo", {"i": i}) for i in range(40)]
        wait_for(lambda: broker.metric("tradeplex_queue_depth") == 40, what="40 queued")
        cluster.worker(broker)
        assert [f.result(10) for f in futs] == [{"i": i} for i in range(40)]
        assert broker.metric('tradeplex_batches_total{direction="to_clients"}') >= 1
        assert broker.metric("tradeplex_bad_frames_total") == 0
    finally:
        client.close()


def test_a_basket_rides_batches_once_the_broker_has_sent_one_and_each_order_runs_once(
    cluster: Cluster,
) -> None:
    broker = cluster.broker(None, "--grace-ms", "10000", http=True)
    client = broker.client()
    sent = 'tradeplex_batched_messages_total{direction="from_clients"}'
    try:
        # Before any BATCH from the broker, a basket goes call by call.
        first = client.call_many_async("echo", [{"n": i} for i in range(40)])
        wait_for(lambda: broker.metric("tradeplex_queue_depth") == 40, what="40 queued")
        assert broker.metric(sent) == 0
        w = cluster.worker(broker, capacity=64, journal=True)
        assert [f.result(10) for f in first] == [{"n": i} for i in range(40)]
        assert broker.metric('tradeplex_batches_total{direction="to_clients"}') >= 1
        # Now it has: the next basket leaves in BATCHes (300 calls: at least two).
        second = client.call_many_async("echo", [{"n": i} for i in range(40, 340)])
        assert [f.result(10) for f in second] == [{"n": i} for i in range(40, 340)]
        assert broker.metric('tradeplex_batches_total{direction="from_clients"}') >= 2
        assert broker.metric(sent) == 300
        assert broker.metric("tradeplex_bad_frames_total") == 0
        # Orders (not idempotent): each of the 340 executed exactly once.
        assert w.journal is not None
        starts = [
            json.loads(line)
            for line in w.journal.read_text().splitlines()
            if json.loads(line)["event"] == "start"
        ]
        assert len(starts) == 340 and len({s["job"] for s in starts}) == 340
        # A basket that cannot be built is refused whole, nothing sent.
        with pytest.raises(ValueError):
            client.call_many_async("bad service!", [{}, {}])
        with pytest.raises(tradeplex.CallError) as e:
            client.call_many_async("echo", [b"x", b"y" * (2 << 20)], raw=True)
        assert e.value.code == "too_large"
        assert broker.metric(sent) == 300
    finally:
        client.close()
