"""Pure protocol code: decoders never raise anything but ProtocolError; model round trips."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable

import msgpack
import pytest

import tradeplex
from tradeplex import ProtocolError, wire
from tradeplex.curve import KeyPair
from tradeplex.model import Order, OrderId


def msg(id: bytes, cmd: int, header: bytes, body: bytes = b"") -> bytes:
    """A one-frame message built by hand: id, command, header length, header, body."""
    return id + bytes([cmd]) + len(header).to_bytes(2, "big") + header + body


def test_random_frames_only_ever_raise_protocol_errors() -> None:
    rng = random.Random(7)
    decoders = [wire.decode_client_answer, wire.decode_worker_message, wire.decode_event]
    prefixes = [
        wire.CLIENT_PROTOCOL,
        wire.WORKER_PROTOCOL,
        wire.EVENT_PROTOCOL,
        b"TPXC01",
        b"TPXC02\x02",
        b"TPXC02\x03",
        b"TPXW02\x06",
        b"TPXC03\x02",
        b"TPXW03\x02",
        b"TPXC03\x02\x00",
        b"",
    ]
    for _ in range(3000):
        frames = [rng.randbytes(rng.randrange(0, 40)) for _ in range(rng.randrange(0, 6))]
        if frames and rng.random() < 0.6:
            frames[rng.randrange(len(frames))] = rng.choice(prefixes)
        if len(frames) > 2 and rng.random() < 0.5:
            frames[2] = wire.pack({"id": rng.choice([1, -1, "x", None, 1.5, 2**64 - 1]), "job": 1})
        if frames and rng.random() < 0.3:
            h = wire.pack({"id": rng.choice([1, -1, "x", None, 2**64 - 1]), "job": 1})
            n = rng.choice([len(h), len(h) + 1, 0, 5000, 65535])
            frames[0] = rng.choice(prefixes)[:7] + n.to_bytes(2, "big") + h
        for decode in decoders:
            with contextlib.suppress(ProtocolError):
                decode(frames)
        with contextlib.suppress(ProtocolError):
            wire.unpack_body(frames[0] if frames else b"")


def test_request_frames_match_the_documented_example() -> None:
    m = wire.encode_request(7, "echo", 1, True, None, None, body=wire.pack({"hi": 1}))
    assert m[:7] == b"TPXC03\x01"
    n = int.from_bytes(m[7:9], "big")
    assert m[9:].startswith(bytes.fromhex("84a2696407a7736572766963"))
    assert m[9 + n :] == bytes.fromhex("81a2686901")


def test_reply_and_error_decode() -> None:
    reply = msg(b"TPXC03", 2, wire.pack({"id": 3, "worker": "w"}), b"\x01")
    ok = wire.decode_client_answer([reply])
    assert ok.ok and ok.id == 3 and ok.body == b"\x01"
    h = wire.pack({"id": 4, "code": 4, "name": "worker_lost", "message": "m"})
    err = wire.decode_client_answer([msg(b"TPXC03", 3, h)])
    assert not err.ok and err.code == 4
    with pytest.raises(ProtocolError, match="version"):
        wire.decode_client_answer([msg(b"TPXC04", 2, wire.pack({"id": 1}))])
    with pytest.raises(ProtocolError, match="version"):
        # A version-01 answer: four frames, the first exactly `TPXC01`.
        wire.decode_client_answer([b"TPXC01", b"\x02", wire.pack({"id": 1}), b""])
    with pytest.raises(ProtocolError, match="version"):
        # A version-02 REPLY (two frames): not a refusal, so unsupported.
        wire.decode_client_answer([b"TPXC02\x02" + wire.pack({"id": 1}), b""])
    with pytest.raises(ProtocolError, match="not TPXC03"):
        wire.decode_client_answer([msg(b"TPXW03", 2, wire.pack({"id": 1}))])
    with pytest.raises(ProtocolError, match="command"):
        wire.decode_client_answer([b"TPXC03"])
    with pytest.raises(ProtocolError, match="header length"):
        wire.decode_client_answer([b"TPXC03\x02\x00"])
    with pytest.raises(ProtocolError, match="limit 4096"):
        wire.decode_client_answer([b"TPXC03\x02\x13\x88" + b"\x00" * 5000])
    with pytest.raises(ProtocolError, match="past the end"):
        wire.decode_client_answer([msg(b"TPXC03", 2, wire.pack({"id": 1}))[:-1]])
    with pytest.raises(ProtocolError, match="1 frame"):
        wire.decode_client_answer([msg(b"TPXC03", 2, wire.pack({"id": 1})), b""])


def test_an_old_brokers_refusal_is_read_as_its_error() -> None:
    h = {"id": 5, "code": 6, "name": "unsupported_version", "message": "speak TPXC02"}
    ans = wire.decode_client_answer([b"TPXC02\x03" + wire.pack(h), b""])
    assert (ans.ok, ans.id, ans.code, ans.name) == (False, 5, 6, "unsupported_version")
    from tradeplex.client import parse_answer

    _, _, _, e = parse_answer([b"TPXC02\x03" + wire.pack(h), b""])
    assert e is not None and e.code == "unsupported_version"
    d = wire.decode_worker_message(
        [b"TPXW02\x06" + wire.pack({"reason": "unsupported_version: speak TPXW02"}), b""]
    )
    assert d.command == wire.WorkerCommand.DISCONNECT
    assert wire.is_refusal(d.reason)
    with pytest.raises(ProtocolError, match="version"):
        wire.decode_worker_message([b"TPXW02\x05\x80", b""])


def test_worker_messages_are_one_frame() -> None:
    [ready] = wire.encode_worker(wire.WorkerCommand.HEARTBEAT, {})
    assert ready == bytes.fromhex("54505857303305000180")
    h = {"job": 1, "id": 2, "service": "SIM", "deadline_ms": 3, "idempotent": False}
    req = wire.decode_worker_message([msg(b"TPXW03", 2, wire.pack(h), b"body")])
    assert req.request is not None and req.request.body == b"body"
    assert req.request.job == 1
    with pytest.raises(ProtocolError, match="1 frame"):
        wire.decode_worker_message([msg(b"TPXW03", 2, wire.pack(h)), b"body"])
    with pytest.raises(ProtocolError, match="past the end"):
        wire.decode_worker_message([b"TPXW03\x02\x00\x09\x80"])


def test_a_request_round_trips_in_one_frame() -> None:
    target = "00000000-0000-4000-8000-000000000000"
    body = wire.pack({"symbol": "IF2412", "volume": 1.0})
    m = wire.encode_request(9, "SIM", 1_764_633_600_000, False, target, "acct.x", "ops", body)
    assert isinstance(m, bytes)
    cmd, header, rest = wire.split_message(m, wire.CLIENT_PROTOCOL)
    assert cmd == wire.ClientCommand.REQUEST and rest == body
    assert int.from_bytes(m[7:9], "big") == len(header)
    assert wire.decode_header(header) == {
        "id": 9,
        "service": "SIM",
        "deadline_ms": 1_764_633_600_000,
        "idempotent": False,
        "target": target,
        "affinity": "acct.x",
        "client": "ops",
    }
    # Without a body the frame ends with the header ("no value").
    bare = wire.encode_request(9, "SIM", 1, True, None, None)
    assert wire.split_message(bare, wire.CLIENT_PROTOCOL)[2] == b""
    assert bare[:7] == b"TPXC03\x01" and len(bare) == 9 + int.from_bytes(bare[7:9], "big")


def test_answers_round_trip_in_one_frame() -> None:
    worker = "00000000-0000-4000-8000-000000000001"
    p, reply, error = wire.CLIENT_PROTOCOL, wire.ClientCommand.REPLY, wire.ClientCommand.ERROR
    body = wire.pack([1, "two", b"3"])
    ans = wire.decode_client_answer(
        [wire.head(p, reply, wire.pack({"id": 3, "worker": worker})) + body]
    )
    assert (ans.ok, ans.id, ans.worker, ans.body) == (True, 3, worker, body)
    assert wire.unpack_body(ans.body) == [1, "two", b"3"]
    empty = wire.decode_client_answer([wire.head(p, reply, wire.pack({"id": 4}))])
    assert empty.ok and empty.body == b"" and wire.unpack_body(empty.body) is None
    h = {"id": 5, "code": 3, "name": "deadline_exceeded", "message": "late", "worker": worker}
    err = wire.decode_client_answer([wire.head(p, error, wire.pack(h))])
    assert (err.ok, err.id, err.code, err.name, err.message, err.worker) == (
        False,
        5,
        3,
        "deadline_exceeded",
        "late",
        worker,
    )
    # A header of exactly 4096 bytes is allowed.
    big = {"id": 6, "pad": ""}
    big["pad"] = "x" * (4096 - len(wire.pack(big)) - 2)
    assert len(wire.pack(big)) == 4096
    assert (
        wire.decode_client_answer([wire.head(p, reply, wire.pack(big)) + b"\x01"]).body == b"\x01"
    )


def test_worker_messages_round_trip_in_one_frame() -> None:
    cases: list[tuple[wire.WorkerCommand, dict[str, object], bytes]] = [
        (wire.WorkerCommand.READY, {"worker": "w", "services": ["SIM"], "capacity": 2}, b""),
        (wire.WorkerCommand.REPLY, {"job": 7}, wire.pack({"ok": True})),
        (wire.WorkerCommand.ERROR, {"job": 7, "code": 5, "message": "boom"}, b""),
        (wire.WorkerCommand.HEARTBEAT, {}, b""),
        (wire.WorkerCommand.DISCONNECT, {"reason": "worker shutting down"}, b""),
    ]
    for cmd, header, body in cases:
        frames = wire.encode_worker(cmd, header, body)
        assert len(frames) == 1
        got_cmd, got_header, got_body = wire.split_message(frames[0], wire.WORKER_PROTOCOL)
        assert (got_cmd, wire.decode_header(got_header), got_body) == (cmd, header, body)
    h = {"job": 1, "id": 2, "service": "SIM", "deadline_ms": 3, "idempotent": True}
    p = wire.WORKER_PROTOCOL
    req = wire.decode_worker_message([wire.head(p, wire.WorkerCommand.REQUEST, wire.pack(h))])
    assert req.command == wire.WorkerCommand.REQUEST and req.request is not None
    assert (req.request.id, req.request.service, req.request.idempotent) == (2, "SIM", True)
    assert req.request.body == b""
    hb = wire.decode_worker_message(wire.encode_worker(wire.WorkerCommand.HEARTBEAT, {}))
    assert hb.command == wire.WorkerCommand.HEARTBEAT
    d = wire.decode_worker_message(
        wire.encode_worker(wire.WorkerCommand.DISCONNECT, {"reason": "unknown worker"})
    )
    assert (d.command, d.reason) == (wire.WorkerCommand.DISCONNECT, "unknown worker")
    assert not wire.is_refusal(d.reason)
    with pytest.raises(ProtocolError, match="unexpected command"):
        wire.decode_worker_message(wire.encode_worker(wire.WorkerCommand.READY, {}))


_C = wire.CLIENT_PROTOCOL
_W = wire.WORKER_PROTOCOL
_GOOD = {"id": 1, "job": 1, "service": "SIM", "deadline_ms": 1}


@pytest.mark.parametrize("p", [_C, _W], ids=["client", "worker"])
@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: [], "expected 1 frame, got 0"),
        (lambda p: [p], "unknown command"),
        (lambda p: [p + b"\x02"], "no header length"),
        (lambda p: [p + b"\x02\x00"], "no header length"),
        (lambda p: [p + b"\x02\x10\x01" + b"\x80" * 4097], "header is 4097 bytes, limit 4096"),
        (lambda p: [p + b"\x02\xff\xff"], "header is 65535 bytes, limit 4096"),
        (
            lambda p: [p + b"\x02\x00\x05\x80"],
            "header length 5 runs past the end of the 10-byte message",
        ),
        (lambda p: [p + b"\x02\x00\x00"], "not a map|not MessagePack"),
        (lambda p: [msg(p, 2, b"\x91\x01")], "not a map"),
        (lambda p: [msg(p, 2, b"\xc1")], "not MessagePack"),
        (lambda p: [msg(p, 2, wire.pack(_GOOD)), b""], "expected 1 frame, got 2"),
        (lambda p: [msg(p, 2, wire.pack(_GOOD)), b"", b""], "expected 1 frame, got 3"),
        # The frame count is checked before the layout of the first frame.
        (lambda p: [p, b"x"], "expected 1 frame, got 2"),
        (lambda p: [msg(p[:4] + b"04", 2, wire.pack(_GOOD))], "unsupported protocol version"),
        # The protocol id is checked before the frame count.
        (lambda p: [p[:4] + b"04", b"", b""], "unsupported protocol version"),
        (lambda p: [p[:4] + b"02\x02" + wire.pack(_GOOD), b""], "unsupported protocol version"),
        (lambda p: [msg(b"ZMTP03", 2, wire.pack(_GOOD))], "not TPX"),
        (lambda p: [b""], "not TPX"),
        (lambda p: [msg(p, 0x7F, wire.pack(_GOOD))], "unexpected command"),
    ],
)
def test_each_malformed_message_is_a_protocol_error(
    p: bytes, make: Callable[[bytes], list[bytes]], match: str
) -> None:
    decode = wire.decode_client_answer if p == _C else wire.decode_worker_message
    with pytest.raises(ProtocolError, match=match):
        decode(make(p))


def test_the_other_protocol_is_not_ours() -> None:
    with pytest.raises(ProtocolError, match="not TPXC03"):
        wire.decode_client_answer([msg(b"TPXW03", 2, wire.pack({"id": 1}))])
    with pytest.raises(ProtocolError, match="not TPXC03"):
        wire.decode_client_answer(wire.encode_worker(wire.WorkerCommand.REPLY, {"job": 1}))
    with pytest.raises(ProtocolError, match="not TPXW03"):
        wire.decode_worker_message([wire.encode_request(1, "SIM", 1, True, None, None)])
    with pytest.raises(ProtocolError, match="not TPXC03"):
        wire.decode_client_answer(wire.encode_event("log.x", "s", 1, 1, b""))


def test_only_an_old_brokers_refusal_is_read_in_the_old_layout() -> None:
    h = {"id": 0, "code": 6, "name": "unsupported_version", "message": "speak TPXC02"}
    v2_error = wire.V2_CLIENT_ERROR + wire.pack(h)
    ans = wire.decode_client_answer([v2_error, b""])
    assert (ans.ok, ans.id, ans.code, ans.name, ans.message, ans.body) == (
        False,
        0,
        6,
        "unsupported_version",
        "speak TPXC02",
        b"",
    )
    reason = 'unsupported_version: unsupported protocol version "03" (this peer speaks 02)'
    v2_disconnect = wire.V2_WORKER_DISCONNECT + wire.pack({"reason": reason})
    d = wire.decode_worker_message([v2_disconnect, b""])
    assert (d.command, d.reason, d.request) == (wire.WorkerCommand.DISCONNECT, reason, None)
    assert wire.is_refusal(d.reason)
    # Anything else in version 02 is still an unsupported version: one frame, three
    # frames, another command, or a refusal sent to the other side.
    for frames, decode in [
        ([v2_error], wire.decode_client_answer),
        ([v2_error, b"", b""], wire.decode_client_answer),
        ([b"TPXC02\x02" + wire.pack({"id": 1}), b""], wire.decode_client_answer),
        ([v2_disconnect], wire.decode_worker_message),
        ([b"TPXW02\x02" + wire.pack({"job": 1}), b""], wire.decode_worker_message),
        ([b"TPXW02\x03" + wire.pack(h), b""], wire.decode_worker_message),
    ]:
        with pytest.raises(ProtocolError, match="unsupported protocol version"):
            decode(frames)
    with pytest.raises(ProtocolError, match="not TPXC03"):
        wire.decode_client_answer([v2_disconnect, b""])
    with pytest.raises(ProtocolError, match="not TPXW03"):
        wire.decode_worker_message([v2_error, b""])
    # A refusal whose header is garbage is a protocol error too, not a crash.
    with pytest.raises(ProtocolError):
        wire.decode_client_answer([wire.V2_CLIENT_ERROR + b"\xc1", b""])
    with pytest.raises(ProtocolError):
        wire.decode_client_answer([wire.V2_CLIENT_ERROR + wire.pack({"id": -1}), b""])


def test_error_codes_are_stable() -> None:
    names = [
        "bad_request",
        "unknown_service",
        "deadline_exceeded",
        "worker_lost",
        "worker_error",
        "unsupported_version",
        "too_large",
        "overloaded",
        "unknown_worker",
        "unavailable",
        "risk_rejected",
        "forbidden",
    ]
    for n, name in enumerate(names, 1):
        assert wire.ErrorCode(n).wire_name == name
        assert wire.ErrorCode.from_name(name) == n
    assert wire.ErrorCode.from_number(99) is None


def test_model_round_trips_and_tolerates_new_fields() -> None:
    d = {
        "order_id": "SIM.0ff4810d-1a6f-4bb8-913f-a9b4ac206675.17",
        "symbol": "IF2412",
        "exchange": "CFFEX",
        "gateway": "SIM",
        "account": "sim",
        "direction": "long",
        "offset": "open",
        "order_type": "limit",
        "price": 3900,
        "volume": 1.0,
        "traded": 0.0,
        "status": "not_traded",
        "datetime_ns": 5,
        "reference": "r",
        "field_from_the_future": 1,
    }
    o = Order.from_wire(d)
    assert o.price == 3900.0 and o.status == tradeplex.Status.NOT_TRADED and o.is_active
    assert Order.from_wire(o.to_wire()) == o
    assert Order.from_wire({**d, "status": "a_new_status"}).status == "a_new_status"
    later = Order.from_wire({**d, "status": "all_traded", "traded": 1.0})
    assert later.supersedes(o) and not o.supersedes(later)
    with pytest.raises(ProtocolError):
        Order.from_wire({**d, "price": "cheap"})
    with pytest.raises(ProtocolError):
        Order.from_wire({"symbol": "x"})
    with pytest.raises(ProtocolError):
        Order.from_wire([1])


def test_order_ids_name_their_worker() -> None:
    oid = OrderId.parse("SIM.0ff4810d-1a6f-4bb8-913f-a9b4ac206675.17")
    assert (oid.gateway, oid.worker, oid.n) == ("SIM", "0ff4810d-1a6f-4bb8-913f-a9b4ac206675", 17)
    assert str(oid) == "SIM.0ff4810d-1a6f-4bb8-913f-a9b4ac206675.17"
    for bad in [
        "SIM.nope.1",
        "SIM",
        ".0ff4810d-1a6f-4bb8-913f-a9b4ac206675.1",
        "SIM.0ff4810d-1a6f-4bb8-913f-a9b4ac206675.x",
    ]:
        with pytest.raises(ValueError):
            OrderId.parse(bad)


def test_key_files_round_trip(tmp_path: object) -> None:
    import pathlib

    p = pathlib.Path(str(tmp_path)) / "k.key"
    pair = KeyPair.generate()
    p.write_text("# made by a test\n" + pair.to_toml())
    assert KeyPair.from_file(p) == pair
    p.write_text('public_key = "short"\nsecret_key = "short"\n')
    with pytest.raises(ValueError):
        KeyPair.from_file(p)
    with pytest.raises(ValueError):
        tradeplex.Client(curve_server_key=pair.public_key)


@pytest.mark.parametrize(
    "args",
    [
        (1, "echo", 1_764_633_600_000, False, None, None),
        ((1 << 64) - 1, "SIM", 0, True, None, None),
        (300, "a.b-c_d", 2**40, False, None, "acct.x"),
        (5, "SIM", 7, True, "00000000-0000-4000-8000-000000000000", None),
    ],
)
@pytest.mark.parametrize("batch", [False, True])
def test_pre_encoded_request_header_is_the_wire_header(args: tuple, batch: bool) -> None:  # type: ignore[type-arg]
    from tradeplex.client import request_header

    fast = msgpack.unpackb(request_header(*args, batch=batch), raw=False)
    assert fast == msgpack.unpackb(wire.encode_request(*args, batch=batch)[9:], raw=False)
    assert fast.get("batch", False) is batch


def _batch(messages: list[bytes], count: int | None = None) -> bytes:
    body = b"".join(len(m).to_bytes(4, "big") + m for m in messages)
    n = len(messages) if count is None else count
    return msg(wire.CLIENT_PROTOCOL, wire.ClientCommand.BATCH, wire.pack({"count": n}), body)


def test_a_batch_of_answers_is_read_as_if_each_came_alone() -> None:
    from tradeplex.client import parse_answers

    worker = "00000000-0000-4000-8000-000000000001"
    p = wire.CLIENT_PROTOCOL
    ok = msg(p, 2, wire.pack({"id": 9, "worker": worker}), b"\x01")
    err = msg(p, 3, wire.pack({"id": 4, "code": 2, "message": "m"}))
    answers, bad = parse_answers([_batch([ok, err])])
    assert bad is None
    assert answers[0] == (9, worker, b"\x01", None)
    assert answers[1][0] == 4 and answers[1][3] is not None
    assert answers[1][3].code == "unknown_service"
    # A lone answer is itself.
    assert parse_answers([ok]) == ([(9, worker, b"\x01", None)], None)
    # A break: what comes before it counts, the break is reported.
    for broken in (
        _batch([ok, err], count=3),  # fewer messages than announced
        _batch([ok, err]) + b"\x00",  # bytes after the last one
        _batch([ok, err])[:-1],  # the last one runs past the end
        _batch([ok, _batch([ok, err])]),  # a batch inside a batch
        _batch([ok, b"TPXC03\x02"]),  # a message that is not one
    ):
        answers, bad = parse_answers([broken])
        assert answers[0] == (9, worker, b"\x01", None) and isinstance(bad, ProtocolError)
    answers, bad = parse_answers([_batch([ok], count=1)])
    assert answers == [] and bad is not None and "count" in str(bad)


def test_answer_fast_path_agrees_with_the_decoder() -> None:
    from tradeplex.client import parse_answer

    worker = "00000000-0000-4000-8000-000000000001"
    p = wire.CLIENT_PROTOCOL
    ok = [msg(p, 2, wire.pack({"id": 9, "worker": worker}), b"\x01")]
    assert parse_answer(ok) == (9, worker, b"\x01", None)
    err = [msg(p, 3, wire.pack({"id": 4, "code": 2, "message": "m"}))]
    id, _, _, e = parse_answer(err)
    assert id == 4 and e is not None and e.code == "unknown_service"
    for bad in (
        [msg(p, 2, wire.pack({"id": -1}))],
        [msg(p, 2, wire.pack({"id": 1, "worker": 5}))],
        [msg(p, 2, wire.pack([1]))],
        [msg(p, 2, b"\xc1")],
        [msg(b"TPXC01", 2, wire.pack({"id": 1}))],
        [msg(p, 2, wire.pack({"id": 1}))[:-1]],
        [b"TPXC03\x02\x00"],
        [msg(p, 2, wire.pack({"id": 1})), b""],
    ):
        with pytest.raises(ProtocolError):
            parse_answer(bad)


def test_batch_groups_keep_order_and_the_limits() -> None:
    sizes = [len(g) for g in wire.batch_groups([b"x"] * 600, len)]
    assert sizes == [256, 256, 88]
    big = b"y" * (wire.MAX_BATCH_BYTES + 1)
    groups = list(wire.batch_groups([b"a", big, b"b", b"c"], len))
    assert groups == [[b"a"], [big], [b"b", b"c"]]
    # 4 bytes of length prefix count: 16 items of 4,092 bytes fill 64 KiB exactly.
    exact = [b"z" * 4092] * 17
    assert [len(g) for g in wire.batch_groups(exact, len)] == [16, 1]
