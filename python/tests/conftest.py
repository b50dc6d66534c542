"""Fixtures that start the real Rust broker and workers on 127.0.0.1 with OS-chosen ports.

Binaries come from ``$TRADEPLEX_BIN_DIR`` or the workspace's ``target/release`` (then
``target/debug``); build them with ``cargo build --release --workspace``. Every process
started here is killed at the end of its test (or module).
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import tradeplex
from tradeplex.curve import KeyPair

REPO = Path(__file__).resolve().parents[2]
HEARTBEAT_MS = 100  # fast heartbeats, and a killed worker is noticed within 1 s ...
LIVENESS = 10  # ... not 0.3 s: on a loaded 2-core machine a thread can stall that long


def _bin_dir() -> Path:
    env = os.environ.get("TRADEPLEX_BIN_DIR")
    candidates = [Path(env)] if env else [REPO / "target" / "release", REPO / "target" / "debug"]
    for d in candidates:
        if all((d / b).exists() for b in ("tradeplex-broker", "tradeplex-worker", "tradeplex")):
            return d
    pytest.exit(
        "Rust binaries not found: run `cargo build --release --workspace` "
        "(or set TRADEPLEX_BIN_DIR)",
        returncode=2,
    )


BIN = _bin_dir()


def wait_for(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Polls `pred` until it returns something truthy (an awaited state, not a fixed sleep)."""
    until = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > until:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


class Proc:
    """A child process whose stdout lines are collected by a thread; stderr goes to a file."""

    def __init__(
        self, args: list[str], log: Path, cwd: Path | None = None, env: dict[str, str] | None = None
    ) -> None:
        self.args = args
        self.log = log
        self._err = log.open("ab")
        self.p = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=self._err,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "NO_COLOR": "1", **(env or {})},
            cwd=cwd,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.put(line.rstrip("\n"))

    def line(self, prefix: str, timeout: float = 15.0) -> str:
        """The first stdout line starting with `prefix`."""
        until = time.monotonic() + timeout
        while True:
            left = until - time.monotonic()
            try:
                line = self.lines.get(timeout=max(0.01, left))
            except queue.Empty:
                line = None
            if line is not None and line.startswith(prefix):
                return line
            if time.monotonic() > until or (line is None and self.p.poll() is not None):
                raise AssertionError(
                    f"{self.args[0]} printed no {prefix!r} line; stderr:\n"
                    + self.log.read_text()[-3000:]
                )

    def kill(self) -> None:
        """SIGKILL: no goodbye to the broker."""
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
        self._err.close()


@dataclass
class Broker:
    """A running broker and its endpoints."""

    proc: Proc
    frontend: str
    backend: str
    xsub: str
    xpub: str
    #: host:port of /metrics, or "off".
    http: str = "off"

    def client(self, **kw: Any) -> tradeplex.Client:
        return tradeplex.Client(self.frontend, self.xpub, **kw)

    def metric(self, name: str) -> float:
        """The sum of every series of metric `name` on the broker's /metrics."""
        with urllib.request.urlopen(f"http://{self.http}/metrics", timeout=5) as r:
            text = r.read().decode()
        total = 0.0
        for line in text.splitlines():
            key, _, value = line.rpartition(" ")
            if key == name or key.startswith(name + "{"):
                total += float(value)
        return total


def free_port() -> int:
    """A loopback port that was free a moment ago (for endpoints a broker must be told
    in advance, like a pair's state link). Drawn below the kernel's ephemeral range: a
    port ``bind(0)`` hands out is also handed out as the source port of outgoing
    connections (clients and workers reconnecting meanwhile), which could take it before
    the broker binds it."""
    low = _ephemeral_low()
    for _ in range(1000):
        port = random.randrange(_FIRST_FIXED, max(low, _FIRST_FIXED + 1000))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port on 127.0.0.1 below {low}")


_FIRST_FIXED = 10_000


def _ephemeral_low() -> int:
    """First port of the kernel's ephemeral range (Linux's default if unreadable)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


#: A pair's silence window (`peer_timeout_ms`): long enough that a stall of a loaded
#: 2-core machine never looks like a dead peer (heartbeats are 100 ms).
PAIR_WINDOW_MS = 1500


@dataclass
class BrokerPair:
    """A primary/backup broker pair (Binary Star); the endpoint properties list both,
    comma-separated, primary first: what clients and workers are given."""

    primary: Broker
    backup: Broker

    @property
    def frontends(self) -> str:
        return f"{self.primary.frontend},{self.backup.frontend}"

    @property
    def backends(self) -> str:
        return f"{self.primary.backend},{self.backup.backend}"

    @property
    def xsubs(self) -> str:
        return f"{self.primary.xsub},{self.backup.xsub}"

    @property
    def xpubs(self) -> str:
        return f"{self.primary.xpub},{self.backup.xpub}"


def pair_state(b: Broker) -> str:
    """The broker's pair state (``primary``, ``backup``, ``active``, ``passive``) from
    ``tradeplex_pair_state`` on its /metrics; ``gone`` if it does not answer."""
    try:
        with urllib.request.urlopen(f"http://{b.http}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return "gone"
    for line in text.splitlines():
        if line.startswith('tradeplex_pair_state{state="') and line.endswith(" 1"):
            state: str = line.split('"')[1]
            return state
    return "none"


@dataclass
class RustWorker:
    """A running tradeplex-worker."""

    proc: Proc
    id: str
    journal: Path | None


def keygen(path: Path) -> KeyPair:
    """A key pair from `tradeplex keygen`, written to `path`."""
    out = subprocess.run(
        [str(BIN / "tradeplex"), "keygen"], capture_output=True, text=True, check=True, timeout=10
    )
    path.write_text(out.stdout)
    return KeyPair.from_file(path)


@dataclass
class CurveKeys:
    """The key pairs of `Cluster.curve_broker`."""

    broker: KeyPair
    client: KeyPair
    worker: KeyPair


class Cluster:
    """Starts brokers and workers for one test (or module) and stops them all after."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[Proc] = []
        self.closers: list[Callable[[], None]] = []
        self.n = 0

    def curve_broker(self) -> tuple[Broker, CurveKeys]:
        """A broker with CURVE on and an allow-list of one client key and one worker key
        (keys from `tradeplex keygen`, files ``broker.key``/``client.key``/``worker.key``)."""
        keys = CurveKeys(*(keygen(self.tmp / f"{n}.key") for n in ("broker", "client", "worker")))
        (self.tmp / "broker.toml").write_text(
            f'[curve]\nkey_file = "{self.tmp / "broker.key"}"\n'
            f'allow_clients = ["{keys.client.public_key}"]\n'
            f'allow_workers = ["{keys.worker.public_key}"]\n'
        )
        return self.broker(None, "--config", str(self.tmp / "broker.toml")), keys

    def broker(self, ports: Broker | None = None, *extra: str, http: bool = False) -> Broker:
        """Starts a broker; with `ports`, on the same endpoints as that one (a restart);
        with `http`, serving /metrics on a free port (`Broker.metric`)."""
        eps = ports or Broker(None, *(["tcp://127.0.0.1:*"] * 4))  # type: ignore[arg-type]
        self.n += 1
        proc = Proc(
            [
                str(BIN / "tradeplex-broker"),
                "--frontend",
                eps.frontend,
                "--backend",
                eps.backend,
                "--xsub",
                eps.xsub,
                "--xpub",
                eps.xpub,
                "--http",
                "127.0.0.1:0" if http else "off",
                "--heartbeat-ms",
                str(HEARTBEAT_MS),
                "--liveness",
                str(LIVENESS),
                *extra,
            ],
            self.tmp / f"broker{self.n}.log",
        )
        self.procs.append(proc)
        fields = dict(kv.split("=", 1) for kv in proc.line("ready ").split()[1:])
        eps = [fields[k] for k in ("frontend", "backend", "xsub", "xpub", "http")]
        return Broker(proc, *eps)

    def worker(
        self,
        broker: Broker,
        *services: str,
        capacity: int = 4,
        journal: bool = False,
        wait: bool = True,
    ) -> RustWorker:
        """Starts a tradeplex-worker (echo plus `services`) and waits until it serves."""
        self.n += 1
        args = [
            str(BIN / "tradeplex-worker"),
            "--broker",
            broker.backend,
            "--events",
            broker.xsub,
            "--capacity",
            str(capacity),
            "--heartbeat-ms",
            str(HEARTBEAT_MS),
            "--liveness",
            str(LIVENESS),
            "--http",
            "off",
        ]
        for s in services:
            args += ["--service", s]
        path = None
        if journal:
            path = self.tmp / f"journal{self.n}.jsonl"
            args += ["--journal", str(path)]
        proc = Proc(args, self.tmp / f"worker{self.n}.log")
        self.procs.append(proc)
        wid = proc.line("worker ").split()[1]
        w = RustWorker(proc, wid, path)
        if wait:
            self.wait_registered(broker, wid)
        return w

    def pair(self, *extra: str) -> BrokerPair:
        """Starts a broker pair (each with /metrics) and waits until the primary is active
        and the backup passive. Requests for a service with no worker wait 5 s for one
        (``--grace-ms``), the time workers take to re-register after a failover."""
        pstate, bstate = (f"tcp://127.0.0.1:{free_port()}" for _ in range(2))
        members = []
        for role, bind, peer in (("primary", pstate, bstate), ("backup", bstate, pstate)):
            path = self.tmp / f"pair-{role}.toml"
            path.write_text(
                f'[pair]\nrole = "{role}"\nbind = "{bind}"\npeer = "{peer}"\n'
                f"peer_timeout_ms = {PAIR_WINDOW_MS}\n"
            )
            members.append(
                self.broker(None, "--config", str(path), "--grace-ms", "5000", *extra, http=True)
            )
        p = BrokerPair(*members)
        wait_for(
            lambda: (pair_state(p.primary), pair_state(p.backup)) == ("active", "passive"),
            20,
            "primary active, backup passive",
        )
        return p

    def wait_registered(self, broker: Broker, worker_id: str, present: bool = True) -> None:
        with broker.client(timeout_ms=1000) as c:

            def seen() -> bool:
                try:
                    st = c.call("tpx.status", idempotent=True)
                except tradeplex.CallError:
                    return False
                ids = {w["worker"] for w in st["workers"] if w["services"]}
                return (worker_id in ids) == present

            wait_for(seen, 15, f"worker {worker_id} {'up' if present else 'gone'}")

    def close(self) -> None:
        for f in reversed(self.closers):
            with contextlib.suppress(Exception):
                f()
        for p in reversed(self.procs):
            p.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A fresh, empty cluster for tests that kill or restart processes."""
    c = Cluster(tmp_path)
    yield c
    c.close()


@dataclass
class Shared:
    """A broker with one SIM worker, shared by a module's tests that harm nothing."""

    cluster: Cluster
    broker: Broker
    worker: RustWorker
    client: tradeplex.Client


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    c = Cluster(tmp_path_factory.mktemp("shared"))
    try:
        b = c.broker()
        w = c.worker(b, "SIM")
        client = b.client(timeout_ms=3000)
        c.closers.append(client.close)
        yield Shared(c, b, w, client)
    finally:
        c.close()
