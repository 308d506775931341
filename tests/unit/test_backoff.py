"""Backoff (shared/backoff.py), every retry's delay: exponential, jittered, capped, reset."""

from __future__ import annotations

import random

from btcpipe.backoff import Backoff
from tests.producer_parts import Highest, Lowest


def test_backoff_grows_exponentially_within_half_to_full_ceiling() -> None:
    backoff = Backoff(base=0.5, cap=1_000.0, rng=random.Random(5))
    for attempt in range(10):
        ceiling = 0.5 * 2**attempt
        assert ceiling / 2 <= backoff.next_delay() <= ceiling


def test_backoff_extremes_are_exactly_half_and_full_ceiling() -> None:
    low, high = Backoff(1.0, 60.0, Lowest()), Backoff(1.0, 60.0, Highest())
    assert [low.next_delay() for _ in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert [high.next_delay() for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]


def test_backoff_is_capped_even_after_very_many_attempts() -> None:
    backoff = Backoff(base=1.0, cap=60.0, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(200)]
    assert all(30.0 <= delay <= 60.0 for delay in delays[6:])


def test_backoff_reset_starts_again_from_base() -> None:
    backoff = Backoff(base=2.0, cap=100.0, rng=Highest())
    for _ in range(5):
        backoff.next_delay()
    assert backoff.next_delay() == 64.0
    backoff.reset()
    assert backoff.attempts == 0
    assert backoff.next_delay() == 2.0


def test_backoff_is_jittered() -> None:
    first_delays = {Backoff(1.0, 60.0, random.Random(seed)).next_delay() for seed in range(50)}
    assert len(first_delays) > 40
    assert all(0.5 <= delay <= 1.0 for delay in first_delays)
