"""CURVE settings for client-side sockets (client, subscriber, worker).

Key files are what ``tradeplex keygen`` writes (proto/src/keys.rs)::

    public_key = "<40 z85 characters>"
    secret_key = "<40 z85 characters>"

The broker admits only allow-listed public keys, so a client needs its own key file as
well as the broker's public key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.utils import z85

_LINE = re.compile(r'^\s*(public_key|secret_key)\s*=\s*"([^"]*)"\s*(#.*)?$')


def check_key(field: str, key: str) -> None:
    """Raises `ValueError` unless `key` is a 40-character z85 key."""
    try:
        ok = len(key) == 40 and len(z85.decode(key)) == 32
    except Exception:
        ok = False
    if not ok:
        raise ValueError(f"invalid CURVE key in {field!r}: must be 40 z85 characters")


@dataclass(frozen=True)
class KeyPair:
    """A z85 CURVE key pair."""

    public_key: str
    secret_key: str

    @classmethod
    def generate(cls) -> KeyPair:
        """A new key pair (needs a libzmq with CURVE)."""
        require_curve()
        public, secret = zmq.curve_keypair()
        return cls(public.decode(), secret.decode())

    @classmethod
    def from_file(cls, path: str | Path) -> KeyPair:
        """Reads a key file written by ``tradeplex keygen``."""
        found: dict[str, str] = {}
        text = Path(path).read_text()
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            m = _LINE.match(line)
            if m is None:
                raise ValueError(f'{path}:{n}: expected public_key/secret_key = "..."')
            found[m.group(1)] = m.group(2)
        for k in ("public_key", "secret_key"):
            if k not in found:
                raise ValueError(f"{path}: missing {k}")
            check_key(k, found[k])
        return cls(found["public_key"], found["secret_key"])

    def to_toml(self) -> str:
        """The key file's text."""
        return f'public_key = "{self.public_key}"\nsecret_key = "{self.secret_key}"\n'


def require_curve() -> None:
    """Raises `RuntimeError` if the linked libzmq has no CURVE."""
    if not zmq.has("curve"):
        raise RuntimeError("CURVE is configured but this libzmq has no CURVE support")


@dataclass(frozen=True)
class ClientCurve:
    """The broker's public key and our own key pair."""

    server_key: str
    keys: KeyPair

    @classmethod
    def from_options(
        cls, server_key: str | None, key_file: str | Path | None
    ) -> ClientCurve | None:
        """None when neither is given; `ValueError` when only one is."""
        if server_key is None and key_file is None:
            return None
        if server_key is None or key_file is None:
            raise ValueError(
                "CURVE needs both curve_server_key (the broker's public key) and "
                "curve_key_file (our key pair, allow-listed at the broker)"
            )
        check_key("curve_server_key", server_key)
        return cls(server_key, KeyPair.from_file(key_file))

    def apply(self, socket: zmq.Socket[bytes]) -> None:
        """Makes `socket` a CURVE client (before connect)."""
        require_curve()
        socket.curve_serverkey = self.server_key.encode()
        socket.curve_publickey = self.keys.public_key.encode()
        socket.curve_secretkey = self.keys.secret_key.encode()
