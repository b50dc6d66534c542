"""``python -m tradeplex.vnpy.worker --gateway MODULE:CLASS [--setting FILE.json]
[--config FILE] [--broker EP] [--events EP] [--capacity N] [--http ADDR]
[--heartbeat-ms N] [--liveness N] [--curve-server-key KEY --curve-key-file FILE]
[--log-level LEVEL] [--log-json]``:
hosts a vn.py gateway as a Tradeplex worker whose service is the gateway's name.

The flags are ``tradeplex-worker``'s (same names, defaults, ranges and TOML keys; flags
override the file; CURVE also from ``TRADEPLEX_CURVE_SERVER_KEY`` /
``TRADEPLEX_CURVE_KEY_FILE``), plus the gateway's and the connection patterns. Prints
``worker <uuid> broker=<ep> http=<addr|off>`` like ``tradeplex-worker``; logs go to
stderr; stops cleanly (drains) on SIGINT/SIGTERM.

For a broker pair, ``--broker`` and ``--events`` (and the TOML keys) take both endpoints,
comma-separated (``tcp://h1:5556,tcp://h2:5556``; TOML also a list): the worker serves the
active broker and follows it (tradeplex.failover).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..curve import check_key
from ..failover import parse_endpoints
from .connection import ConnectionRule
from .host import GatewayHost

#: Keys of the TOML file (the Rust worker's that apply, plus the host's own).
_KEYS = {
    "broker",
    "events",
    "capacity",
    "http",
    "heartbeat_ms",
    "liveness",
    "curve",
    "gateway",
    "setting",
    "connection",
}
_RANGES = {"capacity": (1, 1024), "heartbeat_ms": (10, 60_000), "liveness": (1, 100)}


class ConfigError(ValueError):
    """A bad flag or config value; the message names the field."""


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m tradeplex.vnpy.worker",
        description="Hosts a vn.py gateway class as a Tradeplex worker.",
    )
    ap.add_argument("--gateway", help="MODULE:CLASS of a vn.py BaseGateway")
    ap.add_argument("--setting", help="JSON file with the gateway's own settings")
    ap.add_argument("--config", help="TOML config file; flags override it")
    ap.add_argument(
        "--broker", help="the broker's backend endpoint (a pair's two, comma-separated)"
    )
    ap.add_argument(
        "--events", help="the broker's XSUB (events) endpoint (a pair's two, comma-separated)"
    )
    ap.add_argument("--capacity", type=int, help="requests executed at once (1-1024)")
    ap.add_argument(
        "--http",
        help='HTTP address for /metrics, /healthz, /readyz ("" or "off" disables; port 0 = any)',
    )
    ap.add_argument("--heartbeat-ms", type=int, help="heartbeat interval in ms (10-60000)")
    ap.add_argument(
        "--liveness", type=int, help="heartbeats the broker may miss before reconnecting"
    )
    ap.add_argument(
        "--curve-server-key",
        default=os.environ.get("TRADEPLEX_CURVE_SERVER_KEY"),
        help="the broker's CURVE public key (z85); enables CURVE (with --curve-key-file)",
    )
    ap.add_argument(
        "--curve-key-file",
        default=os.environ.get("TRADEPLEX_CURVE_KEY_FILE"),
        help="this worker's CURVE key file (from `tradeplex keygen`)",
    )
    for kind, example in (
        ("down", "交易服务器连接断开"),
        ("login", "交易服务器登录成功"),
        ("connect", "行情服务器连接成功"),
    ):
        ap.add_argument(
            f"--{kind}-pattern",
            action="append",
            metavar="REGEX",
            help=f"log line meaning a session is {kind} (like {example!r}; repeatable; "
            "replaces the defaults; group 'part' names the session; '' = none)",
        )
    ap.add_argument(
        "--log-level", default=os.environ.get("TRADEPLEX_LOG", "info"), help="log level"
    )
    ap.add_argument(
        "--log-json", action="store_true", help="log to stderr as one JSON object per line"
    )
    return ap


#: Python's level names as the Rust binaries spell them.
_RUST_LEVELS = {"WARNING": "WARN", "CRITICAL": "ERROR"}


class JsonLogFormatter(logging.Formatter):
    """One JSON object per line, shaped like the Rust binaries' ``--log-json``:
    ``timestamp`` (UTC, µs), ``level`` (``INFO``, ``WARN``, …), ``message`` at the top
    level and ``target`` (the logger's name); a traceback goes in ``error``."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, tz=timezone.utc)
        line: dict[str, Any] = {
            "timestamp": ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": _RUST_LEVELS.get(record.levelname, record.levelname),
            "message": record.getMessage(),
            "target": record.name,
        }
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def _load_toml(path: str) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        raise ConfigError("--config needs Python 3.11 or later (tomllib)") from None
    try:
        with open(path, "rb") as f:
            data: dict[str, Any] = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"config {path}: {e}") from None
    unknown = set(data) - _KEYS
    if unknown:
        raise ConfigError(f"config {path}: unknown field {sorted(unknown)[0]!r}")
    return data


def resolve(a: argparse.Namespace) -> dict[str, Any]:
    """Defaults, then the TOML file, then the flags; validated (errors name the field)."""
    c: dict[str, Any] = {
        "broker": "tcp://127.0.0.1:5556",
        "events": "tcp://127.0.0.1:5557",
        "capacity": 4,
        "http": "",
        "heartbeat_ms": 1000,
        "liveness": 3,
        "curve": {},
        "gateway": None,
        "setting": None,
        "connection": {},
    }
    if a.config:
        c.update(_load_toml(a.config))
    for key in ("broker", "events", "capacity", "http", "heartbeat_ms", "liveness"):
        v = getattr(a, key)
        if v is not None:
            c[key] = v
    if a.gateway:
        c["gateway"] = a.gateway
    if a.setting:
        c["setting"] = a.setting
    curve = dict(c["curve"])
    if a.curve_server_key:
        curve["server_key"] = a.curve_server_key
    if a.curve_key_file:
        curve["key_file"] = a.curve_key_file
    c["curve"] = curve
    conn = dict(c["connection"])
    for kind in ("down", "login", "connect"):
        flags = getattr(a, f"{kind}_pattern")
        if flags is not None:
            conn[kind] = [p for p in flags if p]
    c["connection"] = conn
    if c["http"] == "off":
        c["http"] = ""
    for key, (lo, hi) in _RANGES.items():
        v = c[key]
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ConfigError(f"{key}: must be {lo}-{hi}")
    for key in ("broker", "events"):
        c[key] = _endpoints(key, c[key])
    if len(c["events"].split(",")) not in (1, len(c["broker"].split(","))):
        raise ConfigError("events: one endpoint, or one per broker endpoint")
    if not c["gateway"] or ":" not in str(c["gateway"]):
        raise ConfigError("gateway: must be MODULE:CLASS (--gateway or the config's gateway)")
    if curve:
        try:
            check_key("curve.server_key", str(curve.get("server_key", "")))
        except ValueError as e:
            raise ConfigError(f"curve.server_key: {e}") from None
        if not curve.get("key_file") or not Path(str(curve["key_file"])).is_file():
            raise ConfigError("curve.key_file: must name this worker's key file")
    if set(curve) - {"server_key", "key_file"}:
        raise ConfigError(
            f"curve: unknown field {sorted(set(curve) - {'server_key', 'key_file'})[0]!r}"
        )
    if set(conn) - {"down", "login", "connect"}:
        raise ConfigError("connection: fields are down, login and connect (lists of regexes)")
    return c


def _endpoints(key: str, value: Any) -> str:
    """One endpoint, a comma-separated string or (TOML) a list → the checked endpoints,
    comma-separated."""
    if not isinstance(value, (str, list)):
        raise ConfigError(f"{key}: must be a tcp:// or ipc:// endpoint (or a list of them)")
    try:
        eps = parse_endpoints(value, key)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if any(ep.startswith("inproc://") for ep in eps):
        raise ConfigError(f"{key}: must be a tcp:// or ipc:// endpoint")
    return ",".join(eps)


def _gateway_class(spec: str) -> Any:
    module, _, cls = spec.partition(":")
    try:
        found = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"gateway: cannot load {spec}: {e}") from None
    if not isinstance(found, type) or not hasattr(found, "default_name"):
        raise ConfigError(f"gateway: {spec} is not a vn.py BaseGateway class")
    return found


def _setting(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"setting: {path}: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"setting: {path} must hold a JSON object")
    return data


#: Flags whose value may start with ``-`` (a z85 key does, about one in 85), which
#: argparse would take for a flag; such a value is joined to its flag before parsing.
_KEY_FLAGS = ("--curve-server-key",)
_Z85_KEY_LEN = 40


def join_key_values(argv: list[str]) -> list[str]:
    """``argv`` with ``--curve-server-key -KEY`` as ``--curve-server-key=-KEY`` (a 40
    character value starting with ``-``), so argparse reads the key as the flag's value,
    as the Rust binaries do."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else ""
        if arg in _KEY_FLAGS and nxt.startswith("-") and len(nxt) == _Z85_KEY_LEN:
            out.append(f"{arg}={nxt}")
            i += 2
        else:
            out.append(arg)
            i += 1
    return out


def build(argv: list[str] | None = None) -> GatewayHost:
    """The host the command line describes (not started)."""
    a = _parser().parse_args(join_key_values(sys.argv[1:] if argv is None else argv))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonLogFormatter()
        if a.log_json
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=str(a.log_level).upper(), handlers=[handler])
    c = resolve(a)
    conn = c["connection"]
    try:
        rule = ConnectionRule.from_patterns(
            conn.get("down"), conn.get("login"), conn.get("connect")
        )
    except ValueError as e:
        raise ConfigError(f"connection: {e}") from None
    curve = c["curve"]
    return GatewayHost(
        _gateway_class(str(c["gateway"])),
        _setting(c["setting"]),
        c["broker"],
        c["events"],
        c["capacity"],
        connection_rule=rule,
        http=c["http"] or None,
        heartbeat_ms=c["heartbeat_ms"],
        liveness=c["liveness"],
        curve_server_key=curve.get("server_key"),
        curve_key_file=curve.get("key_file"),
    )


def main(argv: list[str] | None = None) -> int:
    """Runs the worker host until a signal."""
    try:
        host = build(argv)
    except (ValueError, OSError) as e:  # ConfigError, the Worker's own checks (CURVE keys …)
        print(f"error: {e}", file=sys.stderr)
        return 2
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    try:
        host.start()
    except Exception as e:
        logging.getLogger("tradeplex.vnpy.worker").exception("start failed")
        print(f"error: {e}", file=sys.stderr)
        host.stop()
        return 1
    http = host.http.addr if host.http is not None else "off"
    # One write, so that a gateway printing from another thread cannot split the line.
    sys.stdout.write(f"worker {host.worker.id} broker={host.worker.broker} http={http}\n")
    sys.stdout.flush()
    done.wait()
    host.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
