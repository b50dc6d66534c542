"""Python client calls/s through a running cluster (not a test): window 1 and pipelined.

    python python/bench/calls.py --broker tcp://127.0.0.1:5555 --count 10000 --window 256

Window 1 times `Client.call` one at a time (latency per call); pipelined keeps `--window`
`call_async` futures in flight. Prints one line, or with ``--json`` one JSON object:
``{"peer": "tradeplex", "calls": N, "window": W, "w1_calls_per_s": R, "w1_p50_us": X,
"w1_p99_us": Y, "piped_calls_per_s": R2}``. `tradeplex bench --scenarios python` runs this
beside `vnpy_rpc.py` (vn.py's RpcClient) and prints the ratios.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import deque
from concurrent.futures import Future
from typing import Any

import tradeplex

#: The body of every call: a 64-byte MessagePack map, as in `tradeplex bench`'s rr scenario.
BODY: dict[str, Any] = {"pad": "0123456789012345678901234567890123456789012345"}


def percentile(sorted_ns: list[int], q: float) -> float:
    """The `q` quantile of sorted nanosecond samples, in microseconds."""
    if not sorted_ns:
        return float("nan")
    i = min(len(sorted_ns) - 1, int(q * len(sorted_ns)))
    return sorted_ns[i] / 1000.0


def window1(c: tradeplex.Client, service: str, count: int) -> tuple[float, list[int]]:
    """`count` calls one after the other: calls/s and each call's latency (ns)."""
    lat: list[int] = []
    clock = time.perf_counter_ns
    t0 = clock()
    for _ in range(count):
        t = clock()
        c.call(service, BODY)
        lat.append(clock() - t)
    return count / ((clock() - t0) / 1e9), lat


def pipelined(c: tradeplex.Client, service: str, count: int, window: int) -> float:
    """`count` calls with `window` in flight: calls/s."""
    t = time.perf_counter()
    futures: deque[Future[Any]] = deque()
    for _ in range(count):
        if len(futures) >= window:
            futures.popleft().result()
        futures.append(c.call_async(service, BODY))
    for f in futures:
        f.result()
    return count / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--broker", default="tcp://127.0.0.1:5555")
    ap.add_argument("--service", default="echo")
    ap.add_argument("--count", type=int, default=10_000, help="timed calls per mode")
    ap.add_argument("--warmup", type=int, default=500, help="untimed calls first")
    ap.add_argument("--window", type=int, default=256, help="calls in flight, pipelined")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    a = ap.parse_args()
    with tradeplex.Client(a.broker) as c:
        for _ in range(a.warmup):
            c.call(a.service, BODY)
        w1, lat = window1(c, a.service, a.count)
        piped = pipelined(c, a.service, a.count, a.window)
    lat.sort()
    r = {
        "peer": "tradeplex",
        "calls": a.count,
        "window": a.window,
        "w1_calls_per_s": w1,
        "w1_p50_us": percentile(lat, 0.5),
        "w1_p99_us": percentile(lat, 0.99),
        "piped_calls_per_s": piped,
    }
    if a.json:
        print(json.dumps(r), flush=True)
    else:
        print(
            f"window 1: {w1:.0f} calls/s p50 {r['w1_p50_us']:.1f} µs "
            f"p99 {r['w1_p99_us']:.1f} µs   window {a.window}: {piped:.0f} calls/s",
            flush=True,
        )


if __name__ == "__main__":
    main()
