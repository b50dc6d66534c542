"""Frames, commands and error codes of docs/protocol.md, with checked decoders.

Protocol version 03: every client (``TPXC03``) and worker (``TPXW03``) message is one
frame: bytes 0-5 the protocol id, byte 6 the command, bytes 7-8 the header length H
(big-endian), bytes 9 .. 9+H the MessagePack header map, the rest of the frame the body
(empty = no value). Events (``TPXE01``) keep their four frames.

Everything here is pure (no sockets). Decoders take frames straight from the network and
raise `ProtocolError` on anything malformed, never another exception, so the I/O threads
can count and drop bad input without crashing.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, TypeVar

import msgpack

from .errors import ProtocolError

T = TypeVar("T")

CLIENT_PROTOCOL = b"TPXC03"
WORKER_PROTOCOL = b"TPXW03"
EVENT_PROTOCOL = b"TPXE01"
#: Bytes of a message before its header: the protocol id, the command byte and the
#: header's length (2 bytes, big-endian).
HEAD_PREFIX = 9
#: The first bytes of an older broker's refusal in the version-02 layout (two frames:
#: protocol id, command byte and header; an empty body): an ERROR to a client, a
#: DISCONNECT to a worker. Read as the refusal it is (docs/protocol.md, protocol ids).
V2_CLIENT_ERROR = b"TPXC02\x03"
V2_WORKER_DISCONNECT = b"TPXW02\x06"

#: Headers are at most this long (docs/protocol.md, Conventions).
MAX_HEADER_BYTES = 4096
MAX_TOPIC_BYTES = 256
MAX_AFFINITY_BYTES = 128
MAX_SERVICES = 64
MAX_CAPACITY = 10_000
#: Default body limit of the broker (``max_body_bytes``).
DEFAULT_MAX_BODY = 1 << 20

BROKER_HEARTBEAT_TOPIC = "hb.broker"
EVENT_KINDS = frozenset(
    {"tick", "bar", "order", "trade", "position", "account", "contract", "log", "hb"}
)

_SERVICE_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


class ClientCommand(IntEnum):
    """Command byte of the client protocol (``TPXC03``, byte 6 of a message)."""

    REQUEST = 0x01
    REPLY = 0x02
    ERROR = 0x03
    #: Broker -> client: several answers in one message (to a client whose requests say
    #: ``batch``), see `batch_messages`.
    BATCH = 0x04


class WorkerCommand(IntEnum):
    """Command byte of the worker protocol (``TPXW03``, byte 6 of a message)."""

    READY = 0x01
    REQUEST = 0x02
    REPLY = 0x03
    ERROR = 0x04
    HEARTBEAT = 0x05
    DISCONNECT = 0x06
    #: Several whole messages in one (docs/protocol.md, BATCH): this package's worker
    #: declares it in READY, reads the broker's and answers in them once it has one.
    BATCH = 0x07


#: Most messages in one BATCH.
MAX_BATCH = 256
#: Most bytes in a BATCH's body that a sender puts in one (any peer accepts that much).
MAX_BATCH_BYTES = 64 * 1024


def batch_groups(items: Iterable[T], size: Callable[[T], int]) -> Iterator[list[T]]:
    """`items` in order, in groups one BATCH may carry: at most `MAX_BATCH` each, and
    `MAX_BATCH_BYTES` of body (an item `size` bytes long takes 4 more); an item over the
    limit by itself is a group of its own (sent alone, as itself)."""
    group: list[T] = []
    used = 0
    for item in items:
        n = 4 + size(item)
        if group and (len(group) == MAX_BATCH or used + n > MAX_BATCH_BYTES):
            yield group
            group, used = [], 0
        group.append(item)
        used += n
    if group:
        yield group


def encode_batch(protocol: bytes, command: int, messages: list[bytes]) -> bytes:
    """One BATCH carrying `messages` (2 to `MAX_BATCH` whole encoded messages, each
    prefixed with its u32 big-endian length)."""
    if not 2 <= len(messages) <= MAX_BATCH:
        raise ValueError(f"a BATCH carries 2-{MAX_BATCH} messages, not {len(messages)}")
    parts = [head(protocol, command, pack({"count": len(messages)}))]
    for m in messages:
        parts.append(len(m).to_bytes(4, "big"))
        parts.append(m)
    return b"".join(parts)


def batch_messages(header: dict[str, Any], body: bytes) -> tuple[list[bytes], str | None]:
    """The whole messages in a BATCH's body (each a u32 big-endian length and that many
    bytes), and what is wrong with the rest if its layout breaks (the messages before the
    break are returned; docs/protocol.md)."""
    count = header.get("count")
    if type(count) is not int or not 2 <= count <= MAX_BATCH:
        return [], f"bad field count: must be 2-{MAX_BATCH}"
    out: list[bytes] = []
    at = 0
    for _ in range(count):
        if at + 4 > len(body):
            return out, f"bad field count: {count - len(out)} more messages announced than sent"
        n = int.from_bytes(body[at : at + 4], "big")
        start, at = at + 4, at + 4 + n
        if at > len(body):
            return out, f"bad field count: a {n}-byte message runs past the end of the batch"
        out.append(body[start:at])
    if at != len(body):
        return out, f"bad field count: {len(body) - at} bytes after the last message"
    return out, None


def is_refusal(reason: str) -> bool:
    """Whether a broker DISCONNECT `reason` refuses one of the worker's messages
    (`<error code name>: <detail>`) rather than asking it to register again."""
    code, sep, _ = reason.partition(":")
    return bool(sep) and code.upper() in ErrorCode.__members__


class ErrorCode(IntEnum):
    """Wire error codes: stable numbers, names are the lowercase member names."""

    BAD_REQUEST = 1
    UNKNOWN_SERVICE = 2
    DEADLINE_EXCEEDED = 3
    WORKER_LOST = 4
    WORKER_ERROR = 5
    UNSUPPORTED_VERSION = 6
    TOO_LARGE = 7
    OVERLOADED = 8
    UNKNOWN_WORKER = 9
    UNAVAILABLE = 10
    RISK_REJECTED = 11
    FORBIDDEN = 12

    @property
    def wire_name(self) -> str:
        """The documented name, e.g. ``"worker_lost"``."""
        return self.name.lower()

    @classmethod
    def from_name(cls, name: str) -> ErrorCode | None:
        """The code named `name`, or None."""
        return cls.__members__.get(name.upper())

    @classmethod
    def from_number(cls, n: int) -> ErrorCode | None:
        """The code numbered `n`, or None (unknown numbers are a generic failure)."""
        try:
            return cls(n)
        except ValueError:
            return None


def now_ms() -> int:
    """Wall-clock Unix time in milliseconds (deadlines are wall-clock)."""
    return time.time_ns() // 1_000_000


def now_ns() -> int:
    """Wall-clock Unix time in nanoseconds."""
    return time.time_ns()


def valid_service(name: str) -> bool:
    """Whether `name` is a valid service name (1-64 of ``[A-Za-z0-9_.-]``)."""
    return _SERVICE_RE.fullmatch(name) is not None


def valid_uuid(s: object) -> bool:
    """Whether `s` is a hyphenated UUID string."""
    if not isinstance(s, str) or len(s) != 36:
        return False
    try:
        uuid.UUID(s)
    except ValueError:
        return False
    return True


def pack(obj: Any) -> bytes:
    """MessagePack-encodes `obj` (str as str, bytes as bin)."""
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def unpack_body(data: bytes) -> Any:
    """Decodes a MessagePack body; an empty body is None."""
    if not data:
        return None
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as e:  # msgpack raises several types on garbage
        raise ProtocolError(f"body is not MessagePack: {e}") from None


def decode_header(frame: bytes) -> dict[str, Any]:
    """Decodes a header (a message's bytes 9 .. 9+H, or an event's frame 2): a MessagePack
    map with string keys, at most 4096 bytes."""
    if len(frame) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header is {len(frame)} bytes, limit {MAX_HEADER_BYTES}")
    try:
        h = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except Exception as e:
        raise ProtocolError(f"header is not MessagePack: {e}") from None
    if not isinstance(h, dict):
        raise ProtocolError("header is not a map")
    return h


def check_protocol(frame0: bytes, expected: bytes) -> None:
    """Raises `ProtocolError` unless `frame0` is the protocol id `expected`: ``unsupported
    protocol version`` for our protocol's name with another version, ``not <id>`` else."""
    if frame0 == expected:
        return
    if frame0[:4] == expected[:4]:
        raise ProtocolError(f"unsupported protocol version {frame0[4:20]!r}")
    raise ProtocolError(f"not {expected.decode()}: {frame0[:16]!r}")


def _u64(h: dict[str, Any], name: str) -> int:
    v = h.get(name)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0 or v >= 1 << 64:
        raise ProtocolError(f"field {name!r} is not an unsigned integer")
    return v


def _str(h: dict[str, Any], name: str, default: str | None = None) -> str:
    v = h.get(name, default)
    if not isinstance(v, str):
        raise ProtocolError(f"field {name!r} is not a string")
    return v


def split_message(message: bytes, expected: bytes) -> tuple[int, bytes, bytes]:
    """The command byte, header and body of a one-frame message (protocol id `expected`,
    command byte, header length, MessagePack header, body); raises `ProtocolError` on
    another protocol or version, a frame too short for the command byte or the header
    length, a header length over 4096, or one running past the end of the frame. The
    header is returned undecoded; the body is the rest of the frame (may be empty)."""
    check_protocol(message[: len(expected)], expected)
    if len(message) < HEAD_PREFIX - 2:
        raise ProtocolError("unknown command (no byte 6)")
    if len(message) < HEAD_PREFIX:
        raise ProtocolError("no header length (bytes 7-8)")
    n = int.from_bytes(message[HEAD_PREFIX - 2 : HEAD_PREFIX], "big")
    if n > MAX_HEADER_BYTES:
        raise ProtocolError(f"header is {n} bytes, limit {MAX_HEADER_BYTES}")
    end = HEAD_PREFIX + n
    if end > len(message):
        raise ProtocolError(
            f"header length {n} runs past the end of the {len(message)}-byte message"
        )
    return message[HEAD_PREFIX - 3], message[HEAD_PREFIX:end], message[end:]


def head(protocol: bytes, command: int, header: bytes) -> bytes:
    """A message's head: protocol id, command byte, header length, encoded header (the
    body follows it in the same frame)."""
    if len(header) > MAX_HEADER_BYTES:
        raise ValueError(f"header of {len(header)} bytes over {MAX_HEADER_BYTES}")
    return protocol + bytes([command]) + len(header).to_bytes(2, "big") + header


def _old_refusal(frames: list[bytes], prefix: bytes) -> dict[str, Any] | None:
    """The header of an older broker's version-02 refusal (two frames: `prefix` + the
    MessagePack header, then the empty body), or None if `frames` is not one."""
    if len(frames) == 2 and frames[0][: len(prefix)] == prefix:
        return decode_header(frames[0][len(prefix) :])
    return None


# --- client protocol ---------------------------------------------------------------


def encode_request(
    id: int,
    service: str,
    deadline_ms: int,
    idempotent: bool,
    target: str | None,
    affinity: str | None,
    client: str | None = None,
    body: bytes = b"",
    batch: bool = False,
) -> bytes:
    """A whole client REQUEST, one frame (head, then `body`); `client` is the declared
    client name, `batch` says the client reads BATCH answers (docs/protocol.md)."""
    h: dict[str, Any] = {
        "id": id,
        "service": service,
        "deadline_ms": deadline_ms,
        "idempotent": idempotent,
    }
    if target is not None:
        h["target"] = target
    if affinity is not None:
        h["affinity"] = affinity
    if client is not None:
        h["client"] = client
    if batch:
        h["batch"] = True
    return head(CLIENT_PROTOCOL, ClientCommand.REQUEST, pack(h)) + body


@dataclass(frozen=True)
class ClientAnswer:
    """A REPLY or ERROR from the broker's frontend."""

    id: int
    ok: bool
    worker: str | None
    body: bytes
    code: int = 0
    name: str = ""
    message: str = ""


def decode_client_answer(frames: list[bytes]) -> ClientAnswer:
    """Decodes a REPLY or ERROR as the client's DEALER receives it: one frame (or an
    older broker's version-02 refusal, read as the error it carries)."""
    if not frames:
        raise ProtocolError("expected 1 frame, got 0")
    old = _old_refusal(frames, V2_CLIENT_ERROR)
    if old is not None:
        return _client_answer(ClientCommand.ERROR, old, b"")
    # The protocol first: an older version's message (more frames) is told as such.
    check_protocol(frames[0][: len(CLIENT_PROTOCOL)], CLIENT_PROTOCOL)
    if len(frames) != 1:
        raise ProtocolError(f"expected 1 frame, got {len(frames)}")
    cmd, header, body = split_message(frames[0], CLIENT_PROTOCOL)
    return _client_answer(cmd, decode_header(header), body)


def _client_answer(cmd: int, h: dict[str, Any], body: bytes) -> ClientAnswer:
    id = _u64(h, "id")
    worker = h.get("worker")
    if worker is not None and not isinstance(worker, str):
        raise ProtocolError("field 'worker' is not a string")
    if cmd == ClientCommand.REPLY:
        return ClientAnswer(id=id, ok=True, worker=worker, body=body)
    if cmd == ClientCommand.ERROR:
        code = h.get("code", 0)
        if not isinstance(code, int):
            raise ProtocolError("field 'code' is not an integer")
        return ClientAnswer(
            id=id,
            ok=False,
            worker=worker,
            body=b"",
            code=code,
            name=_str(h, "name", ""),
            message=_str(h, "message", ""),
        )
    raise ProtocolError(f"unexpected command 0x{cmd:02x} from broker")


# --- worker protocol ---------------------------------------------------------------


def encode_worker(command: WorkerCommand, header: dict[str, Any], body: bytes = b"") -> list[bytes]:
    """A worker-protocol message as the frames to send: one frame, head then body."""
    return [head(WORKER_PROTOCOL, command, pack(header)) + body]


@dataclass(frozen=True)
class WorkerRequest:
    """A REQUEST the broker sent to a worker."""

    job: int
    id: int
    service: str
    deadline_ms: int
    idempotent: bool
    body: bytes


@dataclass(frozen=True)
class WorkerMessage:
    """A decoded message from the broker's backend."""

    command: WorkerCommand
    request: WorkerRequest | None = None
    reason: str = ""


def decode_worker_message(frames: list[bytes]) -> WorkerMessage:
    """Decodes what a worker's DEALER receives from the broker: one frame (or an older
    broker's version-02 DISCONNECT, read as the refusal it carries)."""
    if not frames:
        raise ProtocolError("expected 1 frame, got 0")
    old = _old_refusal(frames, V2_WORKER_DISCONNECT)
    if old is not None:
        return WorkerMessage(WorkerCommand.DISCONNECT, reason=str(old.get("reason", "")))
    # The protocol first: an older version's message (more frames) is told as such.
    check_protocol(frames[0][: len(WORKER_PROTOCOL)], WORKER_PROTOCOL)
    if len(frames) != 1:
        raise ProtocolError(f"expected 1 frame, got {len(frames)}")
    cmd, header, body = split_message(frames[0], WORKER_PROTOCOL)
    h = decode_header(header)
    if cmd == WorkerCommand.REQUEST:
        idem = h.get("idempotent", False)
        req = WorkerRequest(
            job=_u64(h, "job"),
            id=_u64(h, "id"),
            service=_str(h, "service"),
            deadline_ms=_u64(h, "deadline_ms"),
            idempotent=bool(idem),
            body=body,
        )
        return WorkerMessage(WorkerCommand.REQUEST, request=req)
    if cmd == WorkerCommand.HEARTBEAT:
        return WorkerMessage(WorkerCommand.HEARTBEAT)
    if cmd == WorkerCommand.DISCONNECT:
        reason = h.get("reason", "")
        return WorkerMessage(WorkerCommand.DISCONNECT, reason=str(reason))
    raise ProtocolError(f"unexpected command 0x{cmd:02x} from broker")


# --- events ------------------------------------------------------------------------


def kind_of(topic: str) -> str | None:
    """The event kind (first topic segment) if it is a known kind."""
    first = topic.split(".", 1)[0]
    return first if first in EVENT_KINDS else None


def encode_event(topic: str, source: str, seq: int, ts_ns: int, body: bytes) -> list[bytes]:
    """The four frames of an event."""
    kind = topic.split(".", 1)[0]
    header = {"source": source, "seq": seq, "ts_ns": ts_ns, "kind": kind}
    return [topic.encode(), EVENT_PROTOCOL, pack(header), body]


@dataclass(frozen=True)
class EventHeader:
    """The decoded frames 0-2 of an event."""

    topic: str
    source: str
    seq: int
    ts_ns: int
    kind: str


def decode_event(frames: list[bytes]) -> EventHeader:
    """Decodes an event's topic and header (the body stays bytes)."""
    if len(frames) != 4:
        raise ProtocolError(f"expected 4 frames, got {len(frames)}")
    raw_topic = frames[0]
    if not raw_topic or len(raw_topic) > MAX_TOPIC_BYTES:
        raise ProtocolError("topic must be 1-256 bytes")
    try:
        topic = raw_topic.decode()
    except UnicodeDecodeError:
        raise ProtocolError("topic is not UTF-8") from None
    check_protocol(frames[1], EVENT_PROTOCOL)
    h = decode_header(frames[2])
    source = _str(h, "source")
    return EventHeader(
        topic=topic,
        source=source,
        seq=_u64(h, "seq"),
        ts_ns=_u64(h, "ts_ns"),
        kind=_str(h, "kind", topic.split(".", 1)[0]),
    )
