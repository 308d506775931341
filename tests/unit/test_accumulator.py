"""The Accumulator of one flush: offsets, metrics, lateness, duplicates, dead letters, windows."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from aggregator.core.accumulator import Accumulator, DeadLetter, IntervalMetrics
from aggregator.core.coverage import Coverage
from aggregator.core.windows import WINDOW_MS, column_values
from btcpipe.contract import MAX_MESSAGE_BYTES, DecodedEvent
from tests.pipeline import (
    BASE_TIME_MS,
    NOW_MS,
    Event,
    expected_windows,
    message,
    random_stream,
    tie_heavy_stream,
)


@dataclass(frozen=True)
class Record:
    """What the Kafka client hands over, as far as the accumulator reads it."""

    offset: int
    key: bytes | None
    value: bytes | None


def record(offset: int, event: Event | None = None, value: bytes | None = None) -> Record:
    if event is not None:
        return Record(offset, event.symbol.encode(), event.message())
    return Record(offset, b"BTCUSDT", value)


def at_window(symbol: str, window: int, source: str = "binance", price: str = "100") -> Event:
    return Event(symbol, price, BASE_TIME_MS + window * WINDOW_MS + 1234, source)


def test_accumulator_offsets_first_and_next_per_partition() -> None:
    acc = Accumulator()
    e = at_window("BTCUSDT", 0)
    acc.process_batch(0, [record(5, e), record(6, e), record(7, value=b"{bad")], NOW_MS)
    acc.process_batch(1, [record(3, e)], NOW_MS)
    acc.process_batch(0, [record(8, value=None)], NOW_MS)
    acc.process_batch(2, [], NOW_MS)  # nothing read: the partition is not part of the flush
    pending = acc.pending
    assert pending.first_offsets == {0: 5, 1: 3}
    assert pending.next_offsets == {0: 9, 1: 4}  # invalid messages are read, too
    flushed = acc.take()
    assert flushed is pending and acc.pending.is_empty()
    acc.process_batch(0, [record(9, e)], NOW_MS)
    assert (acc.pending.first_offsets, acc.pending.next_offsets) == ({0: 9}, {0: 10})


def test_a_jump_moves_the_next_offset_and_counts_what_was_removed_unread() -> None:
    acc = Accumulator()
    e = at_window("BTCUSDT", 0)
    acc.process_batch(0, [record(60, e), record(61, e)], NOW_MS)
    acc.jump(0, 0, 0)  # a replaced log: read from its start, nothing counted as removed
    acc.jump(1, 120, 20)  # removed unread: stored 100, the log now starts at 120
    acc.process_batch(1, [record(120, e)], NOW_MS)
    pending = acc.pending
    assert pending.next_offsets == {0: 0, 1: 121}
    assert pending.first_offsets == {0: 60, 1: 120}  # a rewind reads the unflushed again
    assert (pending.metrics.skipped_offsets, pending.metrics.events) == (20, 3)
    assert not pending.is_empty()  # a jump alone is flushed, so the new offset is stored


def test_accumulator_metrics_live_replayed_lag_and_bytes() -> None:
    acc = Accumulator()
    live = [
        Event("BTCUSDT", "100", NOW_MS - 3_000),
        Event("BTCUSDT", "101", NOW_MS - 1_000),
        Event("ETHUSDT", "5", NOW_MS + 2_000),  # a clock ahead of ours: no negative lag
    ]
    replayed = Event("BTCUSDT", "90", BASE_TIME_MS, "replay")  # old history: not lag
    batch_one = [record(0, live[0]), record(1, replayed), record(2, value=b"{bad")]
    batch_two = [record(3, live[1]), record(4, live[2]), record(5, value=None)]
    acc.process_batch(0, batch_one, NOW_MS)
    acc.process_batch(0, batch_two, NOW_MS)
    m = acc.pending.metrics
    assert (m.events, m.live_events, m.replayed_events, m.invalid_events) == (4, 3, 1, 2)
    assert m.lag_sum_ms == 3_000 + 1_000 + 0 and m.lag_max_ms == 3_000
    assert m.lag_avg_seconds == pytest.approx(4 / 3) and m.lag_max_seconds == 3.0
    every = batch_one + batch_two
    assert m.bytes == sum(len(r.key or b"") + len(r.value or b"") for r in every)
    assert len(acc.pending.windows) == 3  # BTC now, ETH now, BTC history


def test_accumulator_without_live_events_has_no_lag() -> None:
    acc = Accumulator()
    acc.process_batch(0, [record(0, Event("BTCUSDT", "1", BASE_TIME_MS, "replay"))], NOW_MS)
    assert acc.pending.metrics.lag_avg_seconds is None
    assert acc.pending.metrics.lag_max_seconds is None


def test_late_events_per_symbol_and_kind_of_source_without_identity() -> None:
    acc = Accumulator()
    steps = [  # (event, late?)
        (at_window("BTCUSDT", 5), False),
        (at_window("BTCUSDT", 5), False),  # the same window is not late
        (at_window("BTCUSDT", 4), True),
        (at_window("BTCUSDT", 0, "replay"), False),  # history does not race live events
        (at_window("BTCUSDT", 1, "replay"), False),
        (at_window("BTCUSDT", 0, "replay"), True),  # ...but is late within its own stream
        (at_window("ETHUSDT", 3), False),  # another symbol
        (at_window("BTCUSDT", 6), False),
        (at_window("BTCUSDT", 5), True),
        (at_window("BTCUSDT", 2, "replay"), False),  # live events do not make history late
    ]
    consumed: list[tuple[DecodedEvent, bool]] = []
    for offset, (event, _) in enumerate(steps):
        acc.process_batch(offset % 2, [record(offset, event)], NOW_MS, consumed)
    assert [late for _, late in consumed] == [late for _, late in steps]
    assert [e.event_time for e, _ in consumed] == [e.event_time for e, _ in steps]
    assert acc.pending.metrics.late_events == 3
    acc.take()  # a flush keeps the newest windows seen
    consumed.clear()
    acc.process_batch(0, [record(20, at_window("BTCUSDT", 5))], NOW_MS, consumed)
    assert consumed[0][1] is True
    acc.discard()  # dropping unflushed state forgets them: it will be read again
    consumed.clear()
    acc.process_batch(0, [record(21, at_window("BTCUSDT", 5))], NOW_MS, consumed)
    assert consumed[0][1] is False


def in_stream(stream: str, seq: int, window: int, source: str = "replay") -> Event:
    event = at_window("BTCUSDT", window, source, price=str(seq))
    return Event(event.symbol, event.price, event.event_time, source, stream, seq)


def test_late_is_judged_within_each_stream() -> None:
    """Two files (May, then January) and a live stream: only going back within a stream is
    late, so a backfill of older history after newer is not."""
    acc = Accumulator()
    steps = [  # (event, late?)
        (in_stream("replay/BTCUSDT/may", 1, 5), False),
        (in_stream("replay/BTCUSDT/may", 2, 6), False),
        (in_stream("replay/BTCUSDT/january", 1, 1), False),  # older file: not late
        (in_stream("replay/BTCUSDT/january", 2, 2), False),
        (in_stream("replay/BTCUSDT/january", 3, 1), True),  # back within its own file
        (in_stream("binance/BTCUSDT/run1", 1, 9, "binance"), False),
        (in_stream("binance/BTCUSDT/run1", 2, 8, "binance"), True),  # live late still counts
        (in_stream("binance/BTCUSDT/run2", 1, 7, "binance"), False),  # another run
    ]
    consumed: list[tuple[DecodedEvent, bool]] = []
    for offset, (event, _) in enumerate(steps):
        acc.process_batch(0, [record(offset, event)], NOW_MS, consumed)
    assert [late for _, late in consumed] == [late for _, late in steps]
    assert acc.pending.metrics.late_events == 2


def test_repeats_of_counted_identities_are_skipped() -> None:
    """A producer's re-send repeats a run of its stream in order; a re-run replay repeats the
    whole file. Either way the seqs were counted already: skipped, counted as duplicates."""
    acc = Accumulator()
    a = [in_stream("binance/BTCUSDT/r1", seq, 1, "binance") for seq in range(1, 6)]
    b = [in_stream("replay/BTCUSDT/f", seq, 2) for seq in (2, 3, 5)]  # lines: gaps are fine
    sent = a[:4] + a[2:] + b + b + b[:1]  # 3 and 4 re-sent, then the file twice
    acc.process_batch(0, [record(i, e) for i, e in enumerate(sent)], NOW_MS)
    m = acc.pending.metrics
    assert (m.events, m.duplicate_events) == (len(a) + len(b), len(sent) - len(a) - len(b))
    got = {key: column_values(stats) for key, stats in acc.pending.windows.deltas.items()}
    assert got == expected_windows(a + b)
    assert acc.pending.advanced_marks() == [
        ("binance/BTCUSDT/r1", 5, "binance", 0),
        ("replay/BTCUSDT/f", 5, "replay", 0),
    ]


def test_stored_marks_skip_what_was_counted_before_and_discard_restores_them() -> None:
    acc = Accumulator()
    acc.load_marks({"replay/BTCUSDT/f": Coverage([(1, 3)]), "other": Coverage([(1, 9)])})
    events = [in_stream("replay/BTCUSDT/f", seq, 1) for seq in range(1, 6)]
    acc.process_batch(0, [record(i, e) for i, e in enumerate(events)], NOW_MS)
    assert (acc.pending.metrics.events, acc.pending.metrics.duplicate_events) == (2, 3)
    assert acc.marks == {"replay/BTCUSDT/f": 5, "other": 9}
    acc.process_batch(1, [record(0, in_stream("new", 1, 1))], NOW_MS)
    acc.discard()  # read again from the stored offsets: the marks go back to the stored ones
    assert acc.marks == {"replay/BTCUSDT/f": 3, "other": 9}
    # moved on under another member
    acc.load_marks({"replay/BTCUSDT/f": Coverage([(1, 3)]), "other": Coverage([(1, 10)])})
    assert acc.marks == {"replay/BTCUSDT/f": 3, "other": 10}
    acc.process_batch(0, [record(i, e) for i, e in enumerate(events)], NOW_MS)
    # a reset of f by an operator: what this interval did stays
    acc.load_marks({"other": Coverage([(1, 10)])})
    assert acc.marks == {"replay/BTCUSDT/f": 5, "other": 10}
    acc.take()  # flushed: the marks stay, and the next interval starts from them
    assert acc.pending.advanced_marks() == [] and acc.marks["replay/BTCUSDT/f"] == 5
    acc.process_batch(0, [record(9, events[-1])], NOW_MS)
    assert acc.pending.metrics.duplicate_events == 1


def test_history_filled_in_behind_a_stream_counts_once_in_any_order() -> None:
    """A live trade stream from id 100 on, then a file of ids 1 to 120 (before and into it),
    then the file again: ids 1 to 99 are new, 100 to 120 repeats, the rerun all repeats."""
    acc = Accumulator()
    trade = "aggtrades/BTCUSDT"
    live = [in_stream(trade, seq, 1, "binance") for seq in range(100, 131)]
    file = [in_stream(trade, seq, 1, "replay") for seq in range(1, 121)]
    acc.process_batch(0, [record(i, e) for i, e in enumerate(live + file)], NOW_MS)
    m = acc.pending.metrics
    assert (m.events, m.duplicate_events) == (31 + 99, 21)
    assert acc.pending.counted == {trade: Coverage([(1, 130)])}
    acc.take()  # flushed: stored now
    acc.process_batch(0, [record(i, e) for i, e in enumerate(file)], NOW_MS)
    assert (acc.pending.metrics.events, acc.pending.metrics.duplicate_events) == (0, 120)
    # A hole the stored ranges leave is still new.
    acc.load_marks({trade: Coverage([(1, 50), (60, 130)])})
    acc.process_batch(1, [record(i, e) for i, e in enumerate(file[45:65])], NOW_MS)
    assert acc.pending.counted == {trade: Coverage([(51, 59)])}
    assert acc.marks[trade] == 130


def test_dead_letters_keep_partition_offset_raw_size_and_error() -> None:
    acc = Accumulator()
    huge = b"x" * (MAX_MESSAGE_BYTES + 4000)
    bad_price = message(price="1e5")
    batch = [
        Record(40, b"key", b"{bad"),
        Record(41, None, None),
        Record(42, b"k", huge),
        Record(43, b"BTCUSDT", bad_price),
        record(44, at_window("BTCUSDT", 0)),
    ]
    acc.process_batch(3, batch, NOW_MS)
    letters = acc.pending.dead_letters
    assert [(d.partition, d.offset, d.key, d.received_ms) for d in letters] == [
        (3, 40, b"key", NOW_MS),
        (3, 41, None, NOW_MS),
        (3, 42, b"k", NOW_MS),
        (3, 43, b"BTCUSDT", NOW_MS),
    ]
    assert [(d.value, d.size) for d in letters] == [
        (b"{bad", 4),
        (None, 0),
        (huge[:MAX_MESSAGE_BYTES], len(huge)),  # cut, but the size says how big it was
        (bad_price, len(bad_price)),
    ]
    assert "invalid JSON" in letters[0].error and "no value" in letters[1].error
    assert "exceeds" in letters[2].error and "price '1e5'" in letters[3].error
    assert all(isinstance(d, DeadLetter) for d in letters)
    assert acc.pending.metrics.invalid_events == 4 and acc.pending.metrics.events == 1


def test_discard_resets_everything_pending() -> None:
    acc = Accumulator()
    acc.process_batch(0, [record(0, at_window("BTCUSDT", 1)), record(1, value=b"x")], NOW_MS)
    dropped = acc.discard()
    assert dropped.next_offsets == {0: 2} and len(dropped.windows) == 1
    pending = acc.pending
    assert pending.is_empty() and not pending.first_offsets and len(pending.windows) == 0
    assert pending.dead_letters == [] and pending.metrics == IntervalMetrics()


def test_accumulated_windows_equal_the_offline_ground_truth() -> None:
    for seed in range(20):
        rng = random.Random(seed)
        events = random_stream(rng, 400, step_ms=2000, disorder=0.1)
        events += tie_heavy_stream(rng, 50)
        acc = Accumulator()
        offset = 0
        while offset < len(events):
            size = rng.randint(1, 60)
            batch = [record(offset + i, e) for i, e in enumerate(events[offset : offset + size])]
            acc.process_batch(0, batch, NOW_MS)
            offset += size
        got = {key: column_values(stats) for key, stats in acc.pending.windows.deltas.items()}
        assert got == expected_windows(events), f"seed {seed}"
