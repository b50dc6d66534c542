"""vn.py's RpcClient/RpcServer echo calls/s on this machine (not a test): the baseline of
the Python client's bench (`tradeplex bench --scenarios python`, and `calls.py`).

Starts an `RpcServer` with one registered ``echo`` function in a child process on free
loopback ports, connects an `RpcClient` and times `--count` calls after a warm-up, one in
flight at a time (vn.py's client holds a lock around each REQ/REP round trip: it cannot
pipeline). The body is the one `calls.py` sends.

    python python/bench/vnpy_rpc.py --count 10000 [--json]

Prints ``window 1: N calls/s p50 X µs p99 Y µs``, or with ``--json`` one JSON object:
``{"peer": "vnpy", "vnpy": "4.5.0", "window": 1, "calls": N, "calls_per_s": R,
"p50_us": X, "p99_us": Y}``. Exits 3 with a one-line message when vn.py is not installed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import time
from typing import Any

#: The body of every call, as in calls.py (a 64-byte MessagePack map on the Tradeplex side).
BODY: dict[str, Any] = {"pad": "0123456789012345678901234567890123456789012345"}
#: How long the server child may take to print its endpoints.
START_TIMEOUT_S = 20.0


def free_port() -> int:
    """A loopback port the OS says is free now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def serve() -> None:
    """The child: an RpcServer serving ``echo`` until stdin closes (or SIGTERM)."""
    from vnpy.rpc import RpcServer

    def echo(body: Any) -> Any:
        return body

    for attempt in range(3):
        rep = f"tcp://127.0.0.1:{free_port()}"
        pub = f"tcp://127.0.0.1:{free_port()}"
        server = RpcServer()
        server.register(echo)
        try:
            server.start(rep, pub)
        except Exception as e:  # a port taken between free_port() and bind: try others
            if attempt == 2:
                raise SystemExit(f"vnpy_rpc: RpcServer could not bind: {e}") from None
            continue
        break
    print(f"ready rep={rep} pub={pub}", flush=True)
    # The parent keeps our stdin open; its end (or its death) stops us.
    with contextlib.suppress(Exception):
        sys.stdin.read()
    server.stop()
    server.join()


def percentile(sorted_ns: list[int], q: float) -> float:
    """The `q` quantile of sorted nanosecond samples, in microseconds."""
    if not sorted_ns:
        return float("nan")
    i = min(len(sorted_ns) - 1, int(q * len(sorted_ns)))
    return sorted_ns[i] / 1000.0


def start_server() -> tuple[subprocess.Popen[str], str, str]:
    """Starts the server child and returns it with its REP and PUB endpoints."""
    child = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "QT_QPA_PLATFORM": "offscreen"},
    )
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], START_TIMEOUT_S)
    line = child.stdout.readline() if ready else ""
    fields = dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
    if not line.startswith("ready ") or "rep" not in fields or "pub" not in fields:
        stop_server(child)
        raise SystemExit(f"vnpy_rpc: the RpcServer child printed {line!r}, not its endpoints")
    return child, fields["rep"], fields["pub"]


def stop_server(child: subprocess.Popen[str]) -> None:
    """Stops the server child by its pid: stdin closed, then SIGTERM, then SIGKILL."""
    with contextlib.suppress(OSError):
        if child.stdin is not None:
            child.stdin.close()
    try:
        child.wait(timeout=3)
    except subprocess.TimeoutExpired:
        child.terminate()
        try:
            child.wait(timeout=3)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def measure(count: int, warmup: int) -> dict[str, Any]:
    """Times `count` window-1 echo calls of an RpcClient against the server child."""
    import vnpy
    from vnpy.rpc import RpcClient

    child, rep, pub = start_server()
    try:
        client = RpcClient()
        client.start(rep, pub)
        try:
            for _ in range(warmup):
                client.echo(BODY, timeout=10_000)
            lat: list[int] = []
            clock = time.perf_counter_ns
            t0 = clock()
            for _ in range(count):
                t = clock()
                client.echo(BODY, timeout=10_000)
                lat.append(clock() - t)
            took = (clock() - t0) / 1e9
        finally:
            client.stop()
    finally:
        stop_server(child)
    lat.sort()
    return {
        "peer": "vnpy",
        "vnpy": getattr(vnpy, "__version__", "?"),
        "window": 1,
        "calls": count,
        "calls_per_s": count / took,
        "p50_us": percentile(lat, 0.5),
        "p99_us": percentile(lat, 0.99),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=10_000, help="timed calls")
    ap.add_argument("--warmup", type=int, default=500, help="untimed calls first")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        serve()
        return
    try:
        import vnpy.rpc  # noqa: F401
    except ImportError as e:
        print(f"vnpy_rpc: vn.py is not installed ({e})", file=sys.stderr)
        sys.exit(3)
    r = measure(a.count, a.warmup)
    if a.json:
        print(json.dumps(r), flush=True)
    else:
        print(
            f"vn.py RpcClient window 1: {r['calls_per_s']:.0f} calls/s "
            f"p50 {r['p50_us']:.1f} µs p99 {r['p99_us']:.1f} µs",
            flush=True,
        )
    # vn.py's RpcClient thread is not a daemon and wakes only every 30 s to see stop():
    # leave at once instead of waiting for it (everything is printed and the child gone).
    os._exit(0)


if __name__ == "__main__":
    main()
