"""Subscriber: last value on subscribe, gaps, repeats and bad frames, via the real broker."""

from __future__ import annotations

import time
import uuid

import zmq
from conftest import LIVENESS, Shared, wait_for

import tradeplex
from tradeplex import wire


def test_late_subscriber_gets_the_last_tick_at_once(shared: Shared) -> None:
    c = shared.client
    c.subscribe("SIM", "BTCUSDT")
    with c.subscriber("tick.SIM.BTCUSDT") as early:
        first = early.recv(5)
        assert first is not None
        subscribed_at = time.time_ns()
        with c.subscriber("tick.SIM.BTCUSDT") as late:
            ev = late.recv(5)
        # The broker re-published an earlier tick: it predates the late subscription.
        assert ev is not None and ev.ts_ns < subscribed_at
        # The early subscriber saw that re-publication too and dropped it as a repeat.
        wait_for(lambda: early.repeats >= 1, 5, "repeat dropped")
        assert early.gaps == 0


def test_gaps_repeats_and_garbage_are_counted(shared: Shared) -> None:
    source = str(uuid.uuid4())
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.linger = 0
    pub.connect(shared.broker.xsub)
    try:
        with tradeplex.Subscriber(shared.broker.xpub, ["log.gap", "log.warm"]) as sub:
            assert sub.wait_connected(5)
            # Publish on a side topic until the relay delivers one: then the path is up.
            n = 0

            def warm() -> bool:
                nonlocal n
                n += 1
                pub.send_multipart(wire.encode_event("log.warm", source, n, 1, wire.pack({})))
                return sub.recv(0.05) is not None

            wait_for(warm, 10, "relay path")
            for seq in (1, 2, 5, 5, 3, 6):
                pub.send_multipart(wire.encode_event("log.gap", source, seq, 1, wire.pack(seq)))
            pub.send_multipart([b"log.gap", wire.EVENT_PROTOCOL, b"\xc1garbage", b""])
            pub.send_multipart(wire.encode_event("log.gap", source, 7, 1, wire.pack(7)))
            got = []
            while len(got) < 5:
                ev = sub.recv(5)
                assert ev is not None
                if ev.topic == "log.gap":
                    got.append(ev.body)
            assert got == [1, 2, 5, 6, 7]
            assert sub.gaps == 2  # 3 and 4 were never seen in order
            assert sub.repeats == 2  # the second 5, and the late 3
            assert sub.bad_frames == 1
    finally:
        pub.close()


def test_unsubscribe_stops_delivery_and_iteration_ends_on_close(shared: Shared) -> None:
    sub = tradeplex.Subscriber(shared.broker.xpub, ["hb."], heartbeat_ms=100, liveness=LIVENESS)
    ev = next(iter(sub))
    assert ev.topic == "hb.broker" and ev.kind == "hb" and ev.body is None
    sub.close()
    assert list(sub) == []
