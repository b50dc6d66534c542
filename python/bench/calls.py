"""Python client calls/s through a running cluster (not a test): window 1 and pipelined.

python python/bench/calls.py --broker tcp://127.0.0.1:5555 --count 5000 --window 200
"""

from __future__ import annotations

import argparse
import time
from collections import deque
from concurrent.futures import Future
from typing import Any

import tradeplex


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--broker", default="tcp://127.0.0.1:5555")
    ap.add_argument("--service", default="echo")
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--window", type=int, default=200)
    a = ap.parse_args()
    body = {"x": 1}
    with tradeplex.Client(a.broker) as c:
        c.call(a.service, body)
        t = time.perf_counter()
        for _ in range(a.count):
            c.call(a.service, body)
        w1 = a.count / (time.perf_counter() - t)
        t = time.perf_counter()
        window: deque[Future[Any]] = deque()
        for _ in range(a.count):
            if len(window) >= a.window:
                window.popleft().result()
            window.append(c.call_async(a.service, body))
        for f in window:
            f.result()
        piped = a.count / (time.perf_counter() - t)
    print(f"window 1: {w1:.0f} calls/s   window {a.window}: {piped:.0f} calls/s")


if __name__ == "__main__":
    main()
