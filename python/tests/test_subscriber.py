"""Subscriber: last value on subscribe, gaps, repeats and bad frames, via the real broker."""

from __future__ import annotations

import time
import uuid

import zmq
from conftest import LIVENESS, Broker, Cluster, Shared, wait_for

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


class _Publisher:
    """A raw PUB on the broker's XSUB, numbering one topic's events itself."""

    def __init__(self, xsub: str) -> None:
        self.source = str(uuid.uuid4())
        self.seq = 0
        self.sock = zmq.Context.instance().socket(zmq.PUB)
        self.sock.linger = 0
        self.sock.connect(xsub)

    def publish(self, topic: str, body: object) -> int:
        self.seq += 1
        event = wire.encode_event(topic, self.source, self.seq, 1, wire.pack(body))
        self.sock.send_multipart(event)
        return self.seq


def _miss_events(
    b: Broker, pub: _Publisher, sub: tradeplex.Subscriber, prefix: str, n: int
) -> None:
    """Makes `sub` miss `n` events for certain: it unsubscribes (seen by the broker), `n`
    events are published and stored by the broker, it subscribes again (seen too)."""
    subs = b.metric("tradeplex_subscriptions")
    held = b.metric("tradeplex_replay_events")
    sub.unsubscribe(prefix)
    wait_for(lambda: b.metric("tradeplex_subscriptions") == subs - 1, 10, "unsubscribed")
    for i in range(n):
        pub.publish(prefix + "x", {"missed": i})
    wait_for(lambda: b.metric("tradeplex_replay_events") >= held + n, 10, "stored")
    sub.subscribe(prefix)
    wait_for(lambda: b.metric("tradeplex_subscriptions") == subs, 10, "subscribed again")


def test_a_gap_is_repaired_from_the_broker_in_order(cluster: Cluster) -> None:
    b = cluster.broker(http=True)
    pub = _Publisher(b.xsub)
    try:
        with b.client() as c, c.subscriber("log.rp.") as sub:
            wait_for(lambda: pub.publish("log.rp.x", "warm") and sub.recv(0.05), 10, "relay path")
            while sub.recv(0.2) is not None:
                pass
            first = pub.seq + 1
            _miss_events(b, pub, sub, "log.rp.", 12)
            after = pub.publish("log.rp.x", "after")
            seqs = []
            while not seqs or seqs[-1] != after:
                ev = sub.recv(5)
                assert ev is not None, f"got {seqs}"
                seqs.append(ev.seq)
            assert seqs == list(range(first, after + 1))
            assert (sub.repaired, sub.gaps) == (12, 0)
    finally:
        pub.sock.close()


def test_without_repair_a_gap_is_only_counted(cluster: Cluster) -> None:
    b = cluster.broker(http=True)
    pub = _Publisher(b.xsub)
    try:
        with tradeplex.Subscriber(b.xpub, ["log.nr."]) as sub:
            wait_for(lambda: pub.publish("log.nr.x", "warm") and sub.recv(0.05), 10, "relay path")
            while sub.recv(0.2) is not None:
                pass
            _miss_events(b, pub, sub, "log.nr.", 5)
            after = pub.publish("log.nr.x", "after")
            ev = sub.recv(5)
            assert ev is not None and ev.seq == after
            assert (sub.repaired, sub.gaps) == (0, 5)
    finally:
        pub.sock.close()
