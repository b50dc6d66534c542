"""Pure protocol code: decoders never raise anything but ProtocolError; model round trips."""

from __future__ import annotations

import contextlib
import random

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
    with pytest.raises(ProtocolError, match="over 4096"):
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
def test_pre_encoded_request_header_is_the_wire_header(args: tuple) -> None:  # type: ignore[type-arg]
    from tradeplex.client import request_header

    fast = msgpack.unpackb(request_header(*args), raw=False)
    assert fast == msgpack.unpackb(wire.encode_request(*args)[9:], raw=False)


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
