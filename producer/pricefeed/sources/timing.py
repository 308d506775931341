"""When to poll: pure arithmetic over a clock the caller reads (retries: shared/backoff.py)."""

from __future__ import annotations

import math
import random


class FixedRateSchedule:
    """Tick k is due at start + k * interval (+ its own random jitter), whatever the ticks cost.

    A tick that could not run on time is skipped rather than fired late in a burst, so the
    grid never drifts: after a slow request or a long Retry-After the next tick is the first
    grid point still ahead.
    """

    def __init__(
        self, start: float, interval: float, jitter: float = 0.0, rng: random.Random | None = None
    ) -> None:
        self.start = start
        self.interval = interval
        self.jitter = jitter
        self._rng = rng or random.Random()
        self._last_tick = -1

    def due_at(self, tick: int) -> float:
        return self.start + tick * self.interval

    def next_tick(self, now: float) -> tuple[int, float]:
        """The next tick (number, due time with jitter) not before `now` and after the last one."""
        tick = max(self._last_tick + 1, math.ceil((now - self.start) / self.interval))
        self._last_tick = tick
        offset = self._rng.uniform(0, self.jitter) if self.jitter else 0.0
        return tick, self.due_at(tick) + offset
