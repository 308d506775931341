"""Window arithmetic: window_start, and WindowStats' add and merge against the ground truth."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from aggregator.core.windows import STATISTICS, WINDOW_MS, WindowStats, column_values, window_start
from btcpipe.contract import EARLIEST_EVENT_MS
from tests.pipeline import (
    BASE_TIME_MS,
    LONG_PRICE,
    NOW_MS,
    Event,
    expected_windows,
    tie_heavy_stream,
    window_deltas,
)


def stats_of(events: list[Event]) -> WindowStats:
    """The statistics of events of one window, by `add` in stream order."""
    first, *rest = events
    stats = WindowStats.of(Decimal(first.price), first.event_time)
    for e in rest:
        stats.add(Decimal(e.price), e.event_time)
    return stats


def exactly(stats: WindowStats) -> tuple[Any, ...]:
    """Every statistic, Decimals with their written form: 3.5 and 3.50 differ here."""
    values = (getattr(stats, s.field) for s in STATISTICS)
    return tuple(str(v) if isinstance(v, Decimal) else v for v in values)


# -- window_start ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_time", "start"),
    [
        (BASE_TIME_MS, BASE_TIME_MS),  # exactly on a boundary: opens that window
        (BASE_TIME_MS + 1, BASE_TIME_MS),
        (BASE_TIME_MS + WINDOW_MS - 1, BASE_TIME_MS),  # 1 ms before the next boundary
        (BASE_TIME_MS + WINDOW_MS, BASE_TIME_MS + WINDOW_MS),
        (BASE_TIME_MS - 1, BASE_TIME_MS - WINDOW_MS),  # 1 ms before: the previous window
    ],
)
def test_window_start_edges(event_time: int, start: int) -> None:
    assert window_start(event_time) == start


def test_window_start_is_a_utc_five_minute_boundary() -> None:
    rng = random.Random(5)
    for _ in range(500):
        event_time = rng.randint(EARLIEST_EVENT_MS, NOW_MS)
        start = window_start(event_time)
        assert start <= event_time < start + WINDOW_MS
        moment = datetime.fromtimestamp(start / 1000, UTC)
        assert (moment.minute % 5, moment.second, moment.microsecond) == (0, 0, 0), moment


# -- WindowStats: the merge ------------------------------------------------------------------


def test_add_equals_merge_of_a_single_event() -> None:
    for seed in range(300):
        rng = random.Random(seed)
        events = tie_heavy_stream(rng, rng.randint(1, 30), windows=1)
        first = events[0]
        merged = WindowStats.of(Decimal(first.price), first.event_time)
        for e in events[1:]:
            merged.merge(WindowStats.of(Decimal(e.price), e.event_time))
        assert exactly(stats_of(events)) == exactly(merged), f"seed {seed}"


def test_merge_of_prefix_and_suffix_equals_the_whole_at_any_split() -> None:
    for seed in range(300):
        rng = random.Random(seed)
        events = tie_heavy_stream(rng, rng.randint(2, 25), windows=1)
        whole = exactly(stats_of(events))
        for split in range(1, len(events)):
            merged = stats_of(events[:split])
            merged.merge(stats_of(events[split:]))
            assert exactly(merged) == whole, f"seed {seed}, split at {split}"


def test_merge_is_associative_over_three_parts() -> None:
    for seed in range(200):
        rng = random.Random(seed)
        events = tie_heavy_stream(rng, rng.randint(3, 25), windows=1)
        i, j = sorted(rng.sample(range(1, len(events)), 2))
        a, b, c = events[:i], events[i:j], events[j:]
        left = stats_of(a)  # (a + b) + c
        left.merge(stats_of(b))
        left.merge(stats_of(c))
        right_tail = stats_of(b)  # a + (b + c)
        right_tail.merge(stats_of(c))
        right = stats_of(a)
        right.merge(right_tail)
        assert exactly(left) == exactly(right) == exactly(stats_of(events)), f"seed {seed}"


def test_ties_first_seen_opens_last_seen_closes() -> None:
    t = BASE_TIME_MS + 1000
    events = [
        Event("BTCUSDT", "2", t + 5),
        Event("BTCUSDT", "10", t),  # earliest time: opens
        Event("BTCUSDT", "11", t),  # same time, later: does not open
        Event("BTCUSDT", "20", t + 9),  # latest time: closes...
        Event("BTCUSDT", "21", t + 9),  # ...unless a later one has the same time
        Event("BTCUSDT", "3", t + 1),
    ]
    stats = stats_of(events)
    assert (stats.open, stats.open_time) == (Decimal("10"), t)
    assert (stats.close, stats.close_time) == (Decimal("21"), t + 9)
    # The same across a split between the tied events.
    merged = stats_of(events[:4])
    merged.merge(stats_of(events[4:]))
    assert exactly(merged) == exactly(stats)
    merged = stats_of(events[:2])
    merged.merge(stats_of(events[2:]))
    assert exactly(merged) == exactly(stats)


def test_sums_are_exact_for_the_longest_prices() -> None:
    stats = WindowStats.of(Decimal(LONG_PRICE), BASE_TIME_MS)
    for _ in range(999):
        stats.add(Decimal(LONG_PRICE), BASE_TIME_MS)
    assert str(stats.price_sum) == "12345678901234567890123.45678901234567890000"  # exact
    other = WindowStats.of(Decimal("0.00000000000000000001"), BASE_TIME_MS)
    other.merge(stats)
    assert str(other.price_sum) == "12345678901234567890123.45678901234567890001"


def test_window_stats_equal_the_offline_ground_truth() -> None:
    for seed in range(300):
        rng = random.Random(seed)
        events = tie_heavy_stream(rng, rng.randint(1, 60))
        got = {key: column_values(stats) for key, stats in window_deltas(events).items()}
        assert got == expected_windows(events), f"seed {seed}"
