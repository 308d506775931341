"""What the producer's unit tests share: a live run's stream, a valid event time, and random
generators pinned to either end of their range."""

from __future__ import annotations

import random

RUN = "binance/BTCUSDT/20260101T000000Z-1a2b3c4d"
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z: a valid event time


class Lowest(random.Random):
    """An rng whose uniform() always picks the lower bound."""

    def uniform(self, a: float, b: float) -> float:
        return a


class Highest(random.Random):
    """An rng whose uniform() always picks the upper bound."""

    def uniform(self, a: float, b: float) -> float:
        return b
