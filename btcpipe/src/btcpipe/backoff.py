"""One backoff for every retry: pure arithmetic, no I/O."""

from __future__ import annotations

import random


class Backoff:
    """Exponential backoff with 'equal jitter': attempt n waits between d/2 and d,
    d = min(cap, base * 2**n). Jitter spreads clients apart; the floor keeps growth certain."""

    def __init__(self, base: float = 1.0, cap: float = 30.0, rng: random.Random | None = None):
        self.base = base
        self.cap = cap
        self.attempts = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * 2 ** min(self.attempts, 60))
        self.attempts += 1
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self.attempts = 0
