"""A moving-average crossover on SIM ticks, in Python, against a running cluster
(``scripts/cluster.sh``): buys when the fast average crosses above the slow one, sells
when it crosses below, one lot at a time, and prints orders, fills, position and account.

    python python/examples/ma_cross.py --symbol IF2412 --duration-s 60
"""

from __future__ import annotations

import argparse
import time
from collections import deque

import tradeplex
from tradeplex import Direction, OrderType


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--broker", default="tcp://127.0.0.1:5555")
    ap.add_argument("--events", default="tcp://127.0.0.1:5558")
    ap.add_argument("--service", default="SIM")
    ap.add_argument("--symbol", default="IF2412")
    ap.add_argument("--fast", type=int, default=5)
    ap.add_argument("--slow", type=int, default=20)
    ap.add_argument("--duration-s", type=float, default=60)
    a = ap.parse_args()
    with (
        tradeplex.Client(a.broker, a.events) as c,
        c.subscriber([f"tick.{a.service}.{a.symbol}", "trade."]) as events,
    ):
        c.subscribe(a.service, a.symbol)
        prices: deque[float] = deque(maxlen=a.slow)
        position, last_side = 0, 0
        until = time.monotonic() + a.duration_s
        while time.monotonic() < until:
            ev = events.recv(1)
            data = None if ev is None else ev.data()
            if isinstance(data, tradeplex.Trade):
                print(f"fill {data.direction.value} {data.volume:g} @ {data.price:g}")
                continue
            if not isinstance(data, tradeplex.Tick):
                continue
            prices.append(data.last_price)
            if len(prices) < a.slow:
                continue
            fast = sum(list(prices)[-a.fast :]) / a.fast
            slow = sum(prices) / len(prices)
            side = 1 if fast > slow else -1
            if side == last_side:
                continue
            last_side = side
            if (side > 0 and position <= 0) or (side < 0 and position >= 0):
                direction = Direction.LONG if side > 0 else Direction.SHORT
                try:
                    o = c.send_order(
                        a.service,
                        symbol=a.symbol,
                        direction=direction,
                        volume=1,
                        order_type=OrderType.MARKET,
                    )
                except tradeplex.OrderOutcomeUnknown as e:
                    print(f"order outcome unknown ({e.code}); settling by reference")
                    found = c.find_order(e.gateway, e.reference, e.account)
                    print("found" if found else "not active", found)
                    continue
                position += side
                print(f"{o.order_id} {o.status.value} fast={fast:.2f} slow={slow:.2f}")
        print(
            "positions:",
            [(p.symbol, p.direction.value, p.volume) for p in c.query_position(a.service)],
        )
        print("account:", [(x.account, x.balance, x.available) for x in c.query_account(a.service)])
        print(f"events: gaps={events.gaps} repeats={events.repeats}")


if __name__ == "__main__":
    main()
