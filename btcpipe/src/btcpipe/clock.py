"""The wall clock both scripts read, in the contract's unit."""

from __future__ import annotations

import time


def wall_clock_ms() -> int:
    """UTC epoch milliseconds now."""
    return time.time_ns() // 1_000_000
