"""Reconnect delays: exponential growth with full jitter (a uniform draw between zero and
the current ceiling), so workers cut off by one broker restart do not all return at once."""

from __future__ import annotations

import random


class Backoff:
    """Ceilings ``min_s, 2*min_s, 4*min_s, ... max_s``; each delay is drawn in ``[0, ceiling]``."""

    def __init__(self, min_s: float, max_s: float, rng: random.Random | None = None) -> None:
        self._min = min_s
        self._max = max(max_s, min_s)
        self._ceiling = min_s
        self._rng = rng or random.Random()

    @property
    def ceiling(self) -> float:
        """The ceiling the next delay is drawn under."""
        return self._ceiling

    def next_delay(self) -> float:
        """The next delay in seconds; the ceiling then doubles (up to the maximum)."""
        ceiling = self._ceiling
        self._ceiling = min(ceiling * 2, self._max)
        return self._rng.uniform(0.0, ceiling)

    def reset(self) -> None:
        """Back to the first ceiling (after a session that lived a while)."""
        self._ceiling = self._min
