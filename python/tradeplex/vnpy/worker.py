"""``python -m tradeplex.vnpy.worker --gateway MODULE:CLASS [--setting FILE.json]
[--broker EP] [--events EP] [--capacity N]``: hosts a vn.py gateway as a Tradeplex worker
whose service is the gateway's name. Prints ``worker <uuid> broker=<ep> http=off`` like
``tradeplex-worker``; stops cleanly (drains) on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import importlib
import json
import signal
import sys
import threading
from typing import Any

from .host import GatewayHost


def main(argv: list[str] | None = None) -> int:
    """Runs the worker host until a signal."""
    ap = argparse.ArgumentParser(prog="python -m tradeplex.vnpy.worker")
    ap.add_argument("--gateway", required=True, help="MODULE:CLASS of a vn.py BaseGateway")
    ap.add_argument("--setting", help="JSON file with the gateway's own settings")
    ap.add_argument("--broker", default="tcp://127.0.0.1:5556", help="the broker's backend")
    ap.add_argument("--events", default="tcp://127.0.0.1:5557", help="the broker's XSUB")
    ap.add_argument("--capacity", type=int, default=4)
    ap.add_argument("--heartbeat-ms", type=int, default=1000)
    ap.add_argument("--liveness", type=int, default=3)
    a = ap.parse_args(argv)
    module, _, cls = a.gateway.partition(":")
    gateway_class: Any = getattr(importlib.import_module(module), cls)
    setting: dict[str, Any] = {}
    if a.setting:
        with open(a.setting) as f:
            setting = json.load(f)
    host = GatewayHost(
        gateway_class,
        setting,
        a.broker,
        a.events,
        a.capacity,
        heartbeat_ms=a.heartbeat_ms,
        liveness=a.liveness,
    )
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    host.start()
    print(f"worker {host.worker.id} broker={a.broker} http=off", flush=True)
    done.wait()
    host.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
