"""The consumer's pure core, without servers: windows and their merge, message validation,
the accumulator of one flush, log formatting and configuration."""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from psycopg2.extensions import parse_dsn

from aggregator import report
from aggregator.batch import Accumulator, DeadLetter, IntervalMetrics
from aggregator.config import _OPTIONS as CONFIG_OPTIONS
from aggregator.config import DEFAULT_MIGRATIONS, ConfigError, Settings, load_settings, psycopg_dsn
from aggregator.kafka_edge import CatchUpWatch
from aggregator.report import ConsumedLog, money
from aggregator.shared.contract import (
    EARLIEST_EVENT_MS,
    MAX_MESSAGE_BYTES,
    ContractError,
    DecodedEvent,
    decode_event,
)
from aggregator.windows import STATISTICS, WINDOW_MS, WindowStats, column_values, window_start
from tests.pipeline import (
    BASE_TIME_MS,
    LONG_PRICE,
    Event,
    expected_windows,
    random_stream,
    tie_heavy_stream,
    window_deltas,
)

NOW_MS = BASE_TIME_MS + 10 * WINDOW_MS  # "now" for validation: after every test event

# -- streams ---------------------------------------------------------------------------------


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


# -- decode_event ----------------------------------------------------------------------------

VALID = {"symbol": "BTCUSDT", "price": "43250.75000000", "event_time": NOW_MS, "source": "binance"}


def message(**changes: object) -> bytes:
    return json.dumps({**VALID, **changes}).encode()


def without(field: str) -> bytes:
    return json.dumps({k: v for k, v in VALID.items() if k != field}).encode()


def test_decode_accepts_a_message_of_exactly_the_size_limit() -> None:
    padded = message().ljust(MAX_MESSAGE_BYTES)  # JSON allows trailing whitespace
    assert len(padded) == MAX_MESSAGE_BYTES
    assert decode_event(padded, NOW_MS).price == Decimal("43250.75000000")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "no value"),
        (b"", "invalid JSON"),
        (b"{not json", "invalid JSON"),
        (b"\xff\xfe\x00garbage", "invalid JSON"),
        (b"[" * 5000, "invalid JSON"),  # deeper than Python's recursion limit
        (message().ljust(MAX_MESSAGE_BYTES + 1), f"exceeds {MAX_MESSAGE_BYTES}"),
        (b"[1, 2]", "not a JSON object"),
        (b'"BTCUSDT"', "not a JSON object"),
        (b"42", "not a JSON object"),
        (b"null", "not a JSON object"),
        (without("symbol"), "missing field 'symbol'"),
        (without("price"), "missing field 'price'"),
        (without("event_time"), "missing field 'event_time'"),
        (without("source"), "missing field 'source'"),
        # The rules of each field: tests/test_contract.py, on both sides.
    ],
    ids=lambda x: f"{len(x)} bytes: {x[:40]!r}" if isinstance(x, bytes) else None,
)
def test_decode_rejects_with_a_reason_naming_the_problem(value: bytes | None, reason: str):
    with pytest.raises(ContractError) as caught:
        decode_event(value, NOW_MS)
    text = str(caught.value)
    assert reason in text, text
    assert "\n" not in text and len(text) < 200, text


# -- Accumulator -----------------------------------------------------------------------------


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
    whole file. Either way seq <= the stream's mark: skipped, counted as duplicates."""
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
    acc.load_marks({"replay/BTCUSDT/f": 3, "other": 9})
    events = [in_stream("replay/BTCUSDT/f", seq, 1) for seq in range(1, 6)]
    acc.process_batch(0, [record(i, e) for i, e in enumerate(events)], NOW_MS)
    assert (acc.pending.metrics.events, acc.pending.metrics.duplicate_events) == (2, 3)
    assert acc.marks == {"replay/BTCUSDT/f": 5, "other": 9}
    acc.process_batch(1, [record(0, in_stream("new", 1, 1))], NOW_MS)
    acc.discard()  # read again from the stored offsets: the marks go back to the stored ones
    assert acc.marks == {"replay/BTCUSDT/f": 3, "other": 9}
    acc.load_marks({"replay/BTCUSDT/f": 3, "other": 10})  # moved on under another member
    assert acc.marks == {"replay/BTCUSDT/f": 3, "other": 10}
    acc.process_batch(0, [record(i, e) for i, e in enumerate(events)], NOW_MS)
    acc.load_marks({"other": 10})  # a reset of f by an operator: what this interval did stays
    assert acc.marks == {"replay/BTCUSDT/f": 5, "other": 10}
    acc.take()  # flushed: the marks stay, and the next interval starts from them
    assert acc.pending.advanced_marks() == [] and acc.marks["replay/BTCUSDT/f"] == 5
    acc.process_batch(0, [record(9, events[-1])], NOW_MS)
    assert acc.pending.metrics.duplicate_events == 1


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


# -- report ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("price", "text"),
    [
        ("43250.75000000", "43250.75"),
        ("43250.00000000", "43250.00"),
        ("43250", "43250.00"),
        ("100", "100.00"),  # normalize() makes this 1E+2: must not print as such
        ("0.5", "0.50"),
        ("0.00000001", "0.00000001"),
        ("43250.12345678", "43250.12345678"),
    ],
)
def test_money(price: str, text: str) -> None:
    assert money(Decimal(price)) == text


def consumed_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    lines = [r.getMessage() for r in caplog.records if r.name == "consumer"]
    caplog.clear()
    return lines


def test_consumed_log_goes_from_each_message_to_summaries_and_back(monkeypatch, caplog):
    clock = [1000.0]
    monkeypatch.setattr(report, "time", type("Clock", (), {"monotonic": lambda: clock[0]}))
    caplog.set_level(logging.INFO, logger="consumer")
    log = ConsumedLog()
    btc = decode_event(message(), NOW_MS)
    eth = decode_event(message(symbol="ETHUSDT", price="2000.5"), NOW_MS)

    assert log.wants_each(report.PER_MESSAGE_LIMIT)
    log.each([(btc, False), (eth, True)])
    assert consumed_lines(caplog) == [
        "Consumed: BTCUSDT = $43250.75",
        "Consumed: ETHUSDT = $2000.50 (late)",
    ]

    assert not log.wants_each(report.PER_MESSAGE_LIMIT + 1)  # a backlog: count instead
    log.count(500)
    assert consumed_lines(caplog) == []
    assert not log.wants_each(1)  # until the summary is out, small polls are counted too
    clock[0] += 3
    log.count(1)
    log.summarise_if_due()
    assert consumed_lines(caplog) == []
    clock[0] += 2
    log.summarise_if_due()
    assert consumed_lines(caplog) == ["Consumed: 501 messages in 5 s (100/s)"]
    log.summarise_if_due()
    assert consumed_lines(caplog) == []

    assert log.wants_each(1)  # the backlog is over: one line per message again
    log.each([(btc, False)])
    assert consumed_lines(caplog) == ["Consumed: BTCUSDT = $43250.75"]


# -- config ----------------------------------------------------------------------------------


def test_defaults_without_environment_or_flags() -> None:
    settings = load_settings(["--no-check-hosts"], {})
    assert settings.bootstrap_servers == "localhost:9092"
    assert settings.topic == "btc_price"
    assert settings.flush_interval == 30.0
    assert (settings.postgres_host, settings.postgres_port) == ("localhost", 5432)
    assert (settings.postgres_db, settings.postgres_user) == ("eventsdb", "postgres")
    assert settings.auto_offset_reset == "earliest"
    assert settings.migrations_dir == DEFAULT_MIGRATIONS and DEFAULT_MIGRATIONS.is_dir()
    assert settings.take_over is False


def test_environment_then_flags_over_it() -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "kafka:29092",
        "FLUSH_INTERVAL_SECONDS": "10",
        "POSTGRES_PORT": "5433",
        "POSTGRES_DB": "fromenv",
        "KAFKA_AUTO_OFFSET_RESET": "latest",
    }
    settings = load_settings(["--no-check-hosts"], env)
    assert settings.bootstrap_servers == "kafka:29092"
    assert settings.flush_interval == 10.0
    assert settings.postgres_port == 5433
    assert settings.postgres_db == "fromenv"
    assert settings.auto_offset_reset == "latest"
    flags = ["--flush-interval", "0.5", "--postgres-port", "6000", "--bootstrap-servers", "a:1"]
    settings = load_settings([*flags, "--no-check-hosts"], env)
    assert settings.flush_interval == 0.5
    assert settings.postgres_port == 6000
    assert settings.bootstrap_servers == "a:1"
    assert settings.postgres_db == "fromenv"  # no flag: the environment still counts


def test_an_empty_variable_means_the_default() -> None:
    assert (
        load_settings(["--no-check-hosts"], {"FLUSH_INTERVAL_SECONDS": ""}).flush_interval == 30.0
    )


MS = "a whole number of milliseconds"
FLUSH = "a finite number of seconds greater than 0 and at most 3600"
# (environment, what the one sentence must say is allowed)
BAD_VALUES = [
    ({"KAFKA_BOOTSTRAP_SERVERS": "localhost"}, "host:port"),
    ({"KAFKA_BOOTSTRAP_SERVERS": "localhost:port"}, "host:port"),
    ({"KAFKA_BOOTSTRAP_SERVERS": "a:1,:2"}, "host:port"),
    ({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:99999"}, "each port 1-65535"),
    ({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:0"}, "each port 1-65535"),
    ({"KAFKA_TOPIC": "bad topic!"}, "a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -"),
    ({"KAFKA_TOPIC": "t" * 250}, "a Kafka topic name (1-249"),
    ({"KAFKA_TOPIC": ".."}, "but not . or .."),
    ({"KAFKA_CONSUMER_GROUP": "   "}, "a non-blank name"),
    ({"FLUSH_INTERVAL_SECONDS": "0"}, FLUSH),
    ({"FLUSH_INTERVAL_SECONDS": "-1"}, FLUSH),
    ({"FLUSH_INTERVAL_SECONDS": "nan"}, FLUSH),
    ({"FLUSH_INTERVAL_SECONDS": "inf"}, FLUSH),
    ({"FLUSH_INTERVAL_SECONDS": "3601"}, FLUSH),
    ({"FLUSH_INTERVAL_SECONDS": "abc"}, FLUSH),
    ({"POSTGRES_HOST": " "}, "a non-blank name"),
    ({"POSTGRES_PORT": "70000"}, "a whole number from 1 to 65535"),
    ({"POSTGRES_PORT": "0"}, "a whole number from 1 to 65535"),
    ({"POSTGRES_PORT": "5432x"}, "a whole number from 1 to 65535"),
    ({"POSTGRES_PORT": "5432.0"}, "a whole number from 1 to 65535"),
    ({"POSTGRES_DB": " "}, "a non-blank name"),
    ({"POSTGRES_USER": " "}, "a non-blank name"),
    ({"CONSUMER_INSTANCE_ID": " "}, "a non-blank name"),
    ({"KAFKA_AUTO_OFFSET_RESET": "newest"}, "earliest or latest"),
    ({"KAFKA_AUTO_OFFSET_RESET": "smallest"}, "earliest or latest"),  # kafka-python's old name
    ({"KAFKA_SESSION_TIMEOUT_MS": "1"}, f"{MS} (a default broker's range) from 6000 to 1,800,000"),
    ({"KAFKA_SESSION_TIMEOUT_MS": "5999"}, "from 6000 to 1,800,000"),
    ({"KAFKA_SESSION_TIMEOUT_MS": "1800001"}, "from 6000 to 1,800,000"),
    ({"KAFKA_SESSION_TIMEOUT_MS": "10s"}, "from 6000 to 1,800,000"),
    ({"KAFKA_MAX_POLL_INTERVAL_MS": "0"}, f"{MS} from 1000 to 2,147,483,647"),
    ({"KAFKA_MAX_POLL_INTERVAL_MS": "2147483648"}, f"{MS} from 1000 to 2,147,483,647"),
    ({"MIGRATIONS_DIR": "/nonexistent/migrations"}, "an existing folder"),
    ({"LOG_LEVEL": "loud"}, "DEBUG, INFO, WARNING or ERROR"),
]
VARIABLE_FLAGS = {option.env: option.flag for option in CONFIG_OPTIONS}


@pytest.mark.parametrize(("env", "allowed"), BAD_VALUES, ids=[str(e)[:60] for e, _ in BAD_VALUES])
def test_bad_values_stop_with_one_sentence(env: dict[str, str], allowed: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(["--no-check-hosts"], env)
    [(var, value)] = env.items()
    text = str(caught.value)
    assert text.startswith(f"{var} ({VARIABLE_FLAGS[var]}) must be "), text
    assert allowed in text, text
    assert text.endswith(f", not {value!r}."), text
    assert "\n" not in text


def test_kafka_session_timeout_of_1_ms_is_one_sentence() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(["--no-check-hosts"], {"KAFKA_SESSION_TIMEOUT_MS": "1"})
    assert str(caught.value) == (
        "KAFKA_SESSION_TIMEOUT_MS (--session-timeout-ms) must be a whole number of milliseconds "
        "(a default broker's range) from 6000 to 1,800,000, not '1'."
    )


def test_every_rule_of_the_table_is_exercised() -> None:
    tested = {var for env, _ in BAD_VALUES for var in env}
    untested = set(VARIABLE_FLAGS) - tested
    assert untested == {"POSTGRES_PASSWORD"}  # any text is a password


# The edges of every range are accepted, and each value is converted by its own parser.
ACCEPTED = [
    ({"KAFKA_BOOTSTRAP_SERVERS": "[::1]:9092, kafka:29092"}, "bootstrap_servers", None),
    ({"KAFKA_BOOTSTRAP_SERVERS": "b:65535"}, "bootstrap_servers", None),
    ({"KAFKA_TOPIC": "t" * 249}, "topic", None),
    ({"FLUSH_INTERVAL_SECONDS": "0.001"}, "flush_interval", 0.001),
    ({"FLUSH_INTERVAL_SECONDS": "3600"}, "flush_interval", 3600.0),
    ({"POSTGRES_PORT": "1"}, "postgres_port", 1),
    ({"POSTGRES_PORT": "65535"}, "postgres_port", 65535),
    ({"POSTGRES_PASSWORD": " p w "}, "postgres_password", " p w "),
    ({"KAFKA_AUTO_OFFSET_RESET": "Latest"}, "auto_offset_reset", "latest"),
    ({"KAFKA_SESSION_TIMEOUT_MS": "6000"}, "session_timeout_ms", 6000),
    ({"KAFKA_SESSION_TIMEOUT_MS": "1800000"}, "session_timeout_ms", 1_800_000),
    ({"KAFKA_MAX_POLL_INTERVAL_MS": "1000"}, "max_poll_interval_ms", 1000),
    ({"LOG_LEVEL": "warning"}, "log_level", "WARNING"),
]


@pytest.mark.parametrize(
    ("env", "field", "expected"), ACCEPTED, ids=[str(e)[:60] for e, _, _ in ACCEPTED]
)
def test_values_at_the_edge_of_each_rule_are_accepted(
    env: dict[str, str], field: str, expected: object
) -> None:
    value = getattr(load_settings(["--no-check-hosts"], env), field)
    assert value == (next(iter(env.values())) if expected is None else expected)
    assert type(value) is type(getattr(Settings(), field))  # converted, never left as text


def test_a_bad_flag_is_as_bad_as_a_bad_variable() -> None:
    with pytest.raises(ConfigError, match="--postgres-port"):
        load_settings(["--postgres-port", "70000", "--no-check-hosts"], {"POSTGRES_PORT": "5432"})


@pytest.mark.parametrize(
    "password", ["postgres", "with spaces", "it's", 'say "hi"', "back\\slash\\", "", " a b "]
)
def test_psycopg_dsn_keeps_any_password_whole(password: str) -> None:
    dsn = psycopg_dsn(host="db host", port="5432", dbname="events db", password=password)
    parsed = parse_dsn(dsn)  # libpq's own parser
    assert parsed == {
        "host": "db host",
        "port": "5432",
        "dbname": "events db",
        "password": password,
    }


def test_settings_dsn_carries_every_connection_setting(tmp_path: Path) -> None:
    settings = load_settings(
        ["--postgres-password", "p w'd", "--no-check-hosts", "--take-over"],
        {"POSTGRES_HOST": "pg", "POSTGRES_PORT": "5433", "MIGRATIONS_DIR": str(tmp_path)},
    )
    assert isinstance(settings, Settings) and settings.migrations_dir == tmp_path
    assert settings.take_over is True
    parsed = parse_dsn(settings.dsn())
    assert parsed["host"] == "pg" and parsed["port"] == "5433"
    assert parsed["password"] == "p w'd"
    assert parsed["dbname"] == "eventsdb" and parsed["user"] == "postgres"


def test_catching_up_with_a_backlog_is_told_once_and_live_traffic_never_is():
    watch = CatchUpWatch()
    backlog = CatchUpWatch.BACKLOG_MESSAGES
    # Live: a few messages behind now and then, never a backlog.
    assert not any(watch.caught_up(lag) for lag in [3, 0, 2999, 0, backlog - 1, 0])
    # A backlog read down to the end: told once, when it reaches 0.
    verdicts = [watch.caught_up(lag) for lag in [backlog * 10, backlog, 500, 1, 0, 0, 5, 0]]
    assert verdicts == [False, False, False, False, True, False, False, False]
