"""The Worker's reconnect schedule: jittered delays under a doubling ceiling."""

from __future__ import annotations

import random

from tradeplex.backoff import Backoff


def test_delays_stay_under_a_ceiling_that_doubles_up_to_max() -> None:
    b = Backoff(0.1, 5.0, random.Random(1))
    expected = 0.1
    for _ in range(20):
        assert b.ceiling == expected
        d = b.next_delay()
        assert 0.0 <= d <= expected
        expected = min(expected * 2, 5.0)
    assert b.ceiling == 5.0
    b.reset()
    assert b.ceiling == 0.1


def test_delays_are_spread_not_all_equal() -> None:
    rng = random.Random(7)
    delays = []
    for _ in range(200):
        b = Backoff(0.1, 5.0, rng)
        b.next_delay()
        delays.append(b.next_delay())  # second step: ceiling 0.2 s
    assert max(delays) <= 0.2
    assert min(delays) < 0.05 and max(delays) > 0.15, (min(delays), max(delays))
    assert len(set(delays)) > 100
