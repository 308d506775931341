"""The PostgreSQL edge against a real server: the SQL merge equals the Python merge, the flush
is one compare-and-set transaction, and the rolling view (the migrations: test_migrations.py,
the roles: test_roles.py)."""

from __future__ import annotations

import itertools
import random
import socket
import threading
from collections.abc import Callable, Iterator
from decimal import Context, Decimal, localcontext
from typing import Any

import psycopg2
import pytest

from aggregator.core.accumulator import Accumulator, DeadLetter, IntervalMetrics, PendingFlush
from aggregator.core.coverage import Coverage
from aggregator.core.windows import (
    MERGE_INTO_ROW_SQL,
    STATISTICS,
    WINDOW_MS,
    WindowKey,
    WindowStats,
    column_values,
    merge_params,
    window_start,
)
from aggregator.postgres.errors import NotOwner, OffsetsMoved, StoreFailed, StoreUnavailable
from aggregator.postgres.flush import FlushContext
from aggregator.postgres.store import PRUNE_EVERY_SECONDS, Store
from aggregator.settings import DEFAULT_MIGRATIONS, psycopg_dsn
from tests.harness import PostgresServer
from tests.harness.net import free_port, wait_until
from tests.pipeline import (
    BASE_TIME_MS,
    Event,
    WindowTruthKey,
    assert_every_statistic_has_a_truth,
    exact_average_at_scale,
    execute,
    expected_windows,
    query,
    random_klines,
    random_stream,
    random_trades,
    stored_windows,
    tie_heavy_stream,
    window_deltas,
)

GROUP, TOPIC = "test-group", "btc_price"


@pytest.fixture
def dsn(postgres: PostgresServer, database: str) -> str:
    return postgres.dsn(database)


@pytest.fixture
def store(dsn: str) -> Iterator[Store]:
    store = ready_store(dsn)
    yield store
    store.close()


def ready_store(dsn: str, group: str = GROUP) -> Store:
    """A store on a migrated database whose tables `group` owns."""
    store = Store(dsn, DEFAULT_MIGRATIONS)
    store.migrate()
    store.claim(group)
    return store


# -- building flushes ------------------------------------------------------------------------


def pending_flush(
    windows: dict[WindowKey, WindowStats] | None = None,
    next_offsets: dict[int, int] | None = None,
    metrics: IntervalMetrics | None = None,
    dead_letters: list[DeadLetter] | None = None,
) -> PendingFlush:
    pending = PendingFlush()
    pending.windows.deltas.update(windows or {})
    pending.next_offsets.update(next_offsets or {})
    pending.first_offsets.update(next_offsets or {})
    if metrics is not None:
        pending.metrics = metrics
    pending.dead_letters.extend(dead_letters or [])
    return pending


def context(
    expected: dict[int, int | None],
    instance: str = "test",
    interval: float = 1.0,
    offset_lag: int | None = None,
) -> FlushContext:
    return FlushContext(GROUP, TOPIC, instance, interval, offset_lag, expected)


def split_at_random(rng: random.Random, events: list[Event], parts: int) -> list[list[Event]]:
    cuts = sorted(rng.sample(range(1, len(events)), min(parts - 1, len(events) - 1)))
    bounds = [0, *cuts, len(events)]
    return [events[a:b] for a, b in itertools.pairwise(bounds)]


def assert_rows_equal(
    stored: dict[WindowTruthKey, dict[str, Any]],
    want: dict[WindowTruthKey, dict[str, Any]],
    label: str,
) -> None:
    """Every column, to the last digit and in the same written form (3.5 is not 3.50)."""
    assert stored.keys() == want.keys(), label
    for key, columns in want.items():
        got = stored[key]
        assert_every_statistic_has_a_truth(got, columns)
        assert got["length_ms"] == WINDOW_MS, (label, key)
        for column, value in columns.items():
            assert got[column] == value, f"{label} {key} {column}: {got[column]} != {value}"
            if isinstance(value, Decimal):
                assert str(got[column]) == str(value), f"{label} {key} {column} written form"
        with localcontext(Context(prec=100)):  # quantize() of a 40-digit average needs it
            average = exact_average_at_scale(
                columns["price_sum"], columns["event_count"], got["avg_value"]
            )
        assert got["avg_value"] == average, (label, key)


def clear_tables(dsn: str) -> None:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "TRUNCATE five_min_bitcoin_event, consumer_offsets, pipeline_metrics, "
            "dead_letter_events"
        )
    conn.close()


# -- the key property: the SQL merge equals the Python merge ---------------------------------


def test_flushes_merged_in_sql_equal_the_python_merge_and_the_ground_truth(store, dsn):
    cases = 0
    for seed in range(120):
        rng = random.Random(seed)
        if seed % 4 == 0:  # the end-to-end tests' stream: many windows, some late events
            events = random_stream(rng, rng.randint(20, 200), step_ms=3000, disorder=0.2)
        elif seed % 4 == 1:  # trades (ties within a millisecond) and candles, samples beside
            events = random_trades(rng, rng.randint(5, 150)) + random_klines(rng, 12)
            events += tie_heavy_stream(rng, 10)
            rng.shuffle(events)  # one delta per flush: the order of arrival must not matter
        else:
            events = tie_heavy_stream(rng, rng.randint(2, 40))
        flushes = split_at_random(rng, events, rng.randint(1, 6))
        clear_tables(dsn)
        stored_offset: int | None = None
        offset = 0
        for flush in flushes:
            offset += len(flush)
            store.write(
                pending_flush(window_deltas(flush), {0: offset}), context({0: stored_offset})
            )
            stored_offset = offset
        stored = stored_windows(dsn)
        python = {key: column_values(stats) for key, stats in window_deltas(events).items()}
        label = f"seed {seed}, flushes of {[len(f) for f in flushes]}"
        assert_rows_equal(stored, python, label)
        assert_rows_equal(stored, expected_windows(events), label)
        cases += 1
    assert cases == 120


def test_a_row_merged_with_a_delta_at_any_split_equals_the_whole(dsn):
    """MERGE_INTO_ROW_SQL alone: the row holds a prefix of the stream, the delta the rest."""
    ready_store(dsn).close()
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            for seed in range(40):
                rng = random.Random(seed)
                events = tie_heavy_stream(rng, rng.randint(2, 16))
                if seed % 2:  # trades of a few milliseconds, arriving in any order
                    events = random_trades(rng, rng.randint(2, 16), symbols=("BTCUSDT",))
                    rng.shuffle(events)
                whole = {k: column_values(s) for k, s in window_deltas(events).items()}
                for split in range(1, len(events)):
                    cur.execute("DELETE FROM five_min_bitcoin_event")
                    cur.execute(MERGE_INTO_ROW_SQL, merge_params(window_deltas(events[:split])))
                    cur.execute(MERGE_INTO_ROW_SQL, merge_params(window_deltas(events[split:])))
                    conn.commit()
                    assert_rows_equal(stored_windows(dsn), whole, f"seed {seed} split {split}")
    finally:
        conn.close()


def test_equal_event_times_across_flushes_first_seen_opens_last_seen_closes(store, dsn):
    t = BASE_TIME_MS + 60_000
    flushes = [
        [Event("BTCUSDT", "10", t), Event("BTCUSDT", "20", t + 5)],
        [Event("BTCUSDT", "11", t), Event("BTCUSDT", "21", t + 5)],  # ties with the row
        [Event("BTCUSDT", "22", t + 5), Event("BTCUSDT", "9", t - 1)],
    ]
    for number, flush in enumerate(flushes):
        expected = None if number == 0 else 2 * number
        store.write(
            pending_flush(window_deltas(flush), {0: 2 * number + 2}), context({0: expected})
        )
    row = stored_windows(dsn)[("BTCUSDT", window_start(t), "samples")]
    assert (row["open_value"], row["first_event_at"]) == (Decimal("9"), t - 1)
    assert (row["close_value"], row["last_event_at"]) == (Decimal("22"), t + 5)
    assert row["event_count"] == 6 and row["price_sum"] == Decimal("93")


def test_every_declared_statistic_has_its_column_of_its_type(store, dsn):
    """STATISTICS against the migrated table: a statistic declared without its migration, or
    with another type, fails here (a flush would fail at run time)."""
    types = dict(
        query(
            dsn,
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'five_min_bitcoin_event'",
        )
    )
    in_sql = {"timestamptz": "timestamp with time zone"}
    for statistic in STATISTICS:
        declared = in_sql.get(statistic.sql_type, statistic.sql_type)
        assert types.get(statistic.column) == declared, statistic


# -- one transaction, compare-and-set offsets ------------------------------------------------


def table_counts(dsn: str) -> tuple[int, int, int, int]:
    (counts,) = query(
        dsn,
        "SELECT (SELECT count(*) FROM five_min_bitcoin_event), "
        "(SELECT coalesce(sum(event_count), 0) FROM five_min_bitcoin_event), "
        "(SELECT count(*) FROM pipeline_metrics), (SELECT count(*) FROM dead_letter_events)",
    )
    return tuple(int(n) for n in counts)  # type: ignore[return-value]


def letter(partition: int, offset: int, value: bytes | None = b"{bad") -> DeadLetter:
    size = 0 if value is None else len(value)
    return DeadLetter(partition, offset, b"BTCUSDT", value, size, "invalid JSON", BASE_TIME_MS)


def some_windows(symbol: str = "BTCUSDT") -> dict[WindowKey, WindowStats]:
    return window_deltas([Event(symbol, "100.5", BASE_TIME_MS), Event(symbol, "99", BASE_TIME_MS)])


def test_a_jump_to_a_new_log_is_stored_with_the_topic_id_and_the_skipped_offsets(store, dsn):
    """What LogGuard records: a partition moved back to a replaced log's start (an offset
    lower than stored), under the new topic id, and offsets removed unread, counted in the
    interval's metrics row; nothing else is needed for the flush to take it."""
    old_id, new_id = "8f0c2a52-6d1e-4a51-9d2c-0b9d3e5c1a10", "1b7e9d44-27a3-4c9b-8e6f-5d2a0c4b3e21"
    first = FlushContext(GROUP, TOPIC, "test", 1.0, None, {0: None, 1: None}, old_id)
    store.write(pending_flush(some_windows(), {0: 66, 1: 40}), first)
    assert store.stored_topic_ids(GROUP, TOPIC) == {0: old_id, 1: old_id}
    accumulator = Accumulator()
    accumulator.jump(0, 0, 0)  # replaced: back to the new log's start
    accumulator.jump(1, 55, 15)  # removed unread: 40..54 are gone
    then = FlushContext(GROUP, TOPIC, "test", 1.0, None, {0: 66, 1: 40}, new_id)
    store.write(accumulator.take(), then)
    assert store.stored_offsets(GROUP, TOPIC, [0, 1]) == {0: 0, 1: 55}
    assert store.stored_topic_ids(GROUP, TOPIC) == {0: new_id, 1: new_id}
    rows = query(dsn, "SELECT skipped_offsets FROM pipeline_metrics ORDER BY metric_timestamp")
    assert rows == [(0,), (15,)]


def test_offsets_advance_by_compare_and_set(store, dsn):
    store.write(pending_flush(some_windows(), {0: 5, 1: 3}), context({0: None, 1: None}))
    assert store.stored_offsets(GROUP, TOPIC, [0, 1, 2]) == {0: 5, 1: 3}
    store.write(pending_flush(some_windows(), {0: 9}), context({0: 5, 1: 3}))
    assert store.stored_offsets(GROUP, TOPIC, [0, 1]) == {0: 9, 1: 3}
    assert store.stored_offsets("other-group", TOPIC, [0, 1]) == {}
    assert table_counts(dsn) == (1, 4, 2, 0)


@pytest.mark.parametrize(
    ("stored_before", "stale_expected"),
    [
        ({0: 5, 1: 3}, {0: 4, 1: 3}),  # partition 0 moved on under us; 1 did not
        ({0: 5, 1: 3}, {0: 5, 1: None}),  # we think 1 has no row: another consumer wrote one
        ({0: 5}, {0: 5, 1: 3}),  # we think 1 has a row: it is gone
    ],
)
def test_stale_offsets_raise_and_write_nothing(store, dsn, stored_before, stale_expected):
    store.write(pending_flush(some_windows(), stored_before), context(dict.fromkeys(stored_before)))
    before = table_counts(dsn)
    windows_before = stored_windows(dsn)
    stale = pending_flush(
        some_windows() | some_windows("ETHUSDT"),
        {0: 20, 1: 20},
        IntervalMetrics(events=4, live_events=4, bytes=400),
        [letter(0, 7), letter(1, 8)],
    )
    with pytest.raises(OffsetsMoved, match="another consumer"):
        store.write(stale, context(stale_expected))
    assert table_counts(dsn) == before  # no window, no metrics row, no dead letter
    assert stored_windows(dsn) == windows_before
    assert store.stored_offsets(GROUP, TOPIC, [0, 1]) == stored_before
    # The connection is still good, and the right expectation succeeds.
    store.write(stale, context({0: stored_before[0], 1: stored_before.get(1)}))
    assert store.stored_offsets(GROUP, TOPIC, [0, 1]) == {0: 20, 1: 20}


def blocked_backends(dsn: str) -> int:
    (count,) = query(
        dsn,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock'",
    )[0]
    return int(count)


@pytest.mark.parametrize("expected", [None, 10])
def test_two_writers_racing_for_a_partition_exactly_one_wins(dsn, expected):
    setup = ready_store(dsn)
    if expected is not None:
        setup.write(pending_flush({}, {0: expected}), context({0: None}))
    setup.close()
    before = table_counts(dsn)
    writers = {"A": Store(dsn, DEFAULT_MIGRATIONS), "B": Store(dsn, DEFAULT_MIGRATIONS)}
    outcome: dict[str, str] = {}

    def write(name: str) -> None:
        pending = pending_flush(some_windows(f"{name}USDT"), {0: 100}, dead_letters=[letter(0, 50)])
        try:
            writers[name].write(pending, context({0: expected}, instance=name))
            outcome[name] = "won"
        except OffsetsMoved:
            outcome[name] = "moved"

    # Hold pipeline_metrics locked, so that both flushes are inside their transaction at once:
    # the first holds the offsets row and waits here; the second waits for that row.
    gate = psycopg2.connect(dsn)
    threads = [threading.Thread(target=write, args=(name,)) for name in writers]
    try:
        with gate.cursor() as cur:
            cur.execute("LOCK TABLE pipeline_metrics IN ACCESS EXCLUSIVE MODE")
        for thread in threads:
            thread.start()
        wait_until(lambda: blocked_backends(dsn) == 2, 10, "both writers inside their flush")
        gate.commit()
        for thread in threads:
            thread.join(timeout=20)
    finally:
        gate.close()
        for writer in writers.values():
            writer.close()
    assert sorted(outcome.values()) == ["moved", "won"], outcome
    (winner,) = (name for name, result in outcome.items() if result == "won")
    assert {symbol for symbol, _, _ in stored_windows(dsn)} == {f"{winner}USDT"}
    windows, events, metrics, letters = table_counts(dsn)
    assert (windows, events, metrics - before[2], letters) == (1, 2, 1, 1)
    assert query(dsn, "SELECT instance_id FROM pipeline_metrics WHERE instance_id <> 'test'") == [
        (winner,)
    ]
    assert query(dsn, "SELECT next_offset FROM consumer_offsets") == [(100,)]


# -- what a flush writes besides windows -----------------------------------------------------


def test_metrics_row(store, dsn):
    live = IntervalMetrics(
        events=12,
        live_events=3,
        replayed_events=9,
        lag_sum_ms=4_500,
        lag_max_ms=2_501,
        bytes=64,
        late_events=2,
        invalid_events=1,
    )
    windows = some_windows() | some_windows("ETHUSDT")
    store.write(pending_flush(windows, {0: 13}, live), context({0: None}, "live", 4.0, 77))
    replay_only = IntervalMetrics(events=5, replayed_events=5, bytes=2047)
    store.write(pending_flush({}, {0: 18}, replay_only), context({0: 13}, "replay", 2.0))
    idle = IntervalMetrics(bytes=1)
    store.write(pending_flush({}, {}, idle), context({}, "idle", 0.0))
    rows = query(
        dsn,
        "SELECT instance_id, interval_seconds, events_processed, live_events, replayed_events, "
        "events_per_second, processing_lag_seconds, max_processing_lag_seconds, data_size_kb, "
        "consumer_offset_lag, late_events, invalid_events, windows_updated, "
        "flush_duration_ms >= 0 FROM pipeline_metrics ORDER BY metric_timestamp",
    )
    assert rows == [
        ("live", 4.0, 12, 3, 9, 3.0, 1.5, 2.501, Decimal("0.063"), 77, 2, 1, 2, True),
        ("replay", 2.0, 5, 0, 5, 2.5, None, None, Decimal("1.999"), None, 0, 0, 0, True),
        ("idle", 0.0, 0, 0, 0, 0.0, None, None, Decimal("0.001"), None, 0, 0, 0, True),
    ]


def test_dead_letters_keep_their_bytes(store, dsn):
    every_byte = bytes(range(256))
    odd = "price '５'".encode()
    letters = [
        DeadLetter(0, 10, b"\x00key\xff", every_byte, 256, "invalid JSON: x", BASE_TIME_MS),
        DeadLetter(2, 11, None, None, 0, "message has no value", BASE_TIME_MS + 1),
        DeadLetter(0, 12, b"", b"\x00" * 16384, 20_000, "message of 20000 bytes", BASE_TIME_MS),
        DeadLetter(1, 13, b"k", odd, len(odd), "price '５' is not…", BASE_TIME_MS),
    ]
    store.write(pending_flush({}, {0: 13, 1: 14, 2: 12}, None, letters), context({}))
    rows = query(
        dsn,
        'SELECT topic, partition, "offset", raw_key, raw_value, raw_size, error, '
        "(extract(epoch FROM received_at) * 1000)::bigint FROM dead_letter_events "
        'ORDER BY "offset"',
    )
    stored = [
        DeadLetter(p, o, None if k is None else bytes(k), None if v is None else bytes(v), s, e, r)
        for topic, p, o, k, v, s, e, r in rows
        if topic == TOPIC
    ]
    assert stored == letters


# -- identity, ownership ----------------------------------------------------------------------


def with_marks(pending: PendingFlush, marks: dict[str, int], partition: int = 0) -> PendingFlush:
    """As the accumulator leaves it after counting these seqs of these streams."""
    pending.marks.update(marks)
    for stream, seq in marks.items():
        source = stream.split("/")[0]
        pending.marks_before[stream] = (None, source, partition)
        pending.counted[stream] = Coverage.of(seq)
    return pending


def stored_marks(store: Store) -> dict[str, int]:
    return {stream: coverage.top for stream, coverage in store.stream_coverage().items()}


def test_what_streams_counted_is_stored_as_ranges_joined_across_flushes(store, dsn):
    """History filled in behind a stream joins its ranges; what is stored only grows."""
    first = pending_flush(some_windows(), {0: 5})
    first.counted = {"aggtrades/A": Coverage([(100, 150), (160, 170)]), "b": Coverage([(1, 3)])}
    store.write(first, context({0: None}))
    second = pending_flush({}, {0: 6})
    second.counted = {"aggtrades/A": Coverage([(1, 99), (151, 155), (300, 300)])}
    store.write(second, context({0: 5}))
    assert store.stream_coverage() == {
        "aggtrades/A": Coverage([(1, 155), (160, 170), (300, 300)]),
        "b": Coverage([(1, 3)]),
    }
    rows = query(dsn, "SELECT stream, first_seq, last_seq FROM stream_ranges ORDER BY 1, 2")
    assert rows == [
        ("aggtrades/A", 1, 155),
        ("aggtrades/A", 160, 170),
        ("aggtrades/A", 300, 300),
        ("b", 1, 3),
    ]


def test_marks_are_written_with_the_flush_and_only_grow(store, dsn):
    first = with_marks(pending_flush(some_windows(), {0: 5}), {"replay/A/f": 7, "binance/A/r": 3})
    store.write(first, context({0: None}))
    assert stored_marks(store) == {"replay/A/f": 7, "binance/A/r": 3}
    # A stale writer (its partitions fenced differently, e.g. a topic repartitioned under it)
    # never lowers a mark.
    second = with_marks(pending_flush({}, {0: 6}), {"replay/A/f": 4, "binance/A/r": 9}, 2)
    store.write(second, context({0: 5}))
    assert stored_marks(store) == {"replay/A/f": 7, "binance/A/r": 9}
    assert store.stream_coverage()["replay/A/f"] == Coverage([(4, 4), (7, 7)])
    rows = query(dsn, "SELECT stream, source, topic, partition FROM stream_marks ORDER BY 1")
    assert rows == [("binance/A/r", "binance", TOPIC, 2), ("replay/A/f", "replay", TOPIC, 2)]


def test_a_fenced_flush_writes_no_marks(store):
    store.write(with_marks(pending_flush({}, {0: 5}), {"s/1": 5}), context({0: None}))
    with pytest.raises(OffsetsMoved):
        store.write(with_marks(pending_flush({}, {0: 9}), {"s/1": 9}), context({0: 3}))
    assert stored_marks(store) == {"s/1": 5}


def test_idle_live_marks_are_pruned_and_replay_marks_kept(dsn):
    now = [1000.0]  # the store's clock, moved by the test
    store = Store(dsn, DEFAULT_MIGRATIONS, clock=lambda: now[0])
    store.migrate()
    store.claim(GROUP)
    marks = {"replay/A/old": 1, "binance/A/old": 1, "simulated/A/old": 1, "binance/A/new": 1}
    store.write(with_marks(pending_flush({}, {0: 1}), marks), context({0: None}))  # prunes
    execute(
        dsn,
        "UPDATE stream_marks SET updated_at = now() - interval '31 days' WHERE stream LIKE '%%old'",
    )
    now[0] += PRUNE_EVERY_SECONDS - 1  # within the hour: not yet
    store.write(pending_flush({}, {0: 2}), context({0: 1}))
    assert len(store.stream_coverage()) == 4
    now[0] += 1  # an hour after the first flush pruned
    store.write(pending_flush({}, {0: 3}), context({0: 2}))
    assert stored_marks(store) == {"replay/A/old": 1, "binance/A/new": 1}
    assert len(query(dsn, "SELECT * FROM stream_marks")) == 2
    store.close()


def test_the_tables_have_one_owner_and_a_take_over_moves_the_offsets(dsn):
    owner = ready_store(dsn)  # GROUP claims the empty tables
    owner.write(pending_flush(some_windows(), {0: 5, 1: 7}), context({0: None, 1: None}))
    other = Store(dsn, DEFAULT_MIGRATIONS)
    with pytest.raises(NotOwner) as caught:
        other.claim("other-group")
    text = str(caught.value)
    assert text == (
        "the tables are filled by consumer group 'test-group', not 'other-group': to hand them "
        "over (with their stored offsets, so nothing is counted twice), stop group "
        "'test-group' and run consumer.py --group other-group --take-over."
    )
    owner.claim(GROUP)  # the owner itself may start again, any time
    execute(
        dsn,
        "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset) "
        "VALUES ('other-group', %s, 0, 1)",
        (TOPIC,),
    )  # left from an earlier turn of the other group: out of date
    assert other.take_over("other-group") == (GROUP, 2)
    assert other.take_over("other-group") == ("other-group", 0)
    other.claim("other-group")
    assert other.stored_offsets("other-group", TOPIC, [0, 1]) == {0: 5, 1: 7}
    assert other.stored_offsets(GROUP, TOPIC, [0, 1]) == {}
    # The old owner's next flush is refused, whole.
    before = table_counts(dsn)
    with pytest.raises(NotOwner, match="no longer fills the tables: group 'other-group' took"):
        owner.write(pending_flush(some_windows(), {0: 9}), context({0: 5}))
    assert table_counts(dsn) == before
    owner.close()
    other.close()


def test_a_database_error_a_retry_cannot_fix_names_its_cause(store, dsn):
    execute(
        dsn, "ALTER TABLE pipeline_metrics ADD CONSTRAINT no_flush CHECK (events_processed < 0)"
    )
    with pytest.raises(StoreFailed) as caught:
        store.write(pending_flush(some_windows(), {0: 5}), context({0: None}))
    text = str(caught.value)
    assert text.startswith("CheckViolation: ") and "no_flush" in text and "\n" not in text
    assert table_counts(dsn)[:2] == (0, 0)
    execute(dsn, "ALTER TABLE pipeline_metrics DROP CONSTRAINT no_flush")
    store.write(pending_flush(some_windows(), {0: 5}), context({0: None}))  # reconnects


def test_a_dead_letter_read_again_is_kept_once(store, dsn):
    store.write(pending_flush({}, {0: 51}, dead_letters=[letter(0, 50)]), context({0: None}))
    execute(dsn, "UPDATE consumer_offsets SET next_offset = 0")  # rewound by an operator
    store.write(pending_flush({}, {0: 51}, dead_letters=[letter(0, 50)]), context({0: 0}))
    assert query(dsn, 'SELECT "offset" FROM dead_letter_events') == [(50,)]


# -- the rolling view ------------------------------------------------------------------------


def test_rolling_average_covers_thirty_minutes_of_time_not_six_rows(store, dsn):
    """Over one candle per window (five_min_candles): where a window has trades beside the
    poller's samples, the trades' row is the window's candle."""
    rng = random.Random(30)
    # Window numbers with gaps: a gap shrinks the rolling window instead of reaching back.
    numbers = {"BTCUSDT": [0, 1, 2, 5, 6, 7, 8, 9, 10, 11, 12, 20, 26, 27, 40], "ETHUSDT": [3, 9]}
    windows: dict[WindowKey, WindowStats] = {}
    for symbol, starts in numbers.items():
        for n in starts:
            start = BASE_TIME_MS + n * WINDOW_MS
            stats = WindowStats.of(Decimal(f"{rng.randint(20_000, 90_000)}.{n:08d}"), start)
            for _ in range(rng.randint(0, 6)):
                price = Decimal(rng.randint(1, 10**13)) / 10**8
                stats.add(price, start + rng.randint(0, WINDOW_MS - 1))
            windows[(symbol, start, "samples")] = stats
    candles = dict(windows)
    for n in (1, 6, 12):  # BTCUSDT windows that trades covered too
        start = BASE_TIME_MS + n * WINDOW_MS
        trades = WindowStats.of_trade(
            Decimal(f"{rng.randint(20_000, 90_000)}"), Decimal(1), start, 5, 9
        )
        windows[("BTCUSDT", start, "trades")] = candles[("BTCUSDT", start, "samples")] = trades
    store.write(pending_flush(windows, {0: 1}), context({0: None}))
    shown = query(
        dsn,
        "SELECT symbol, (extract(epoch FROM five_min_start) * 1000)::bigint, feed, price_sum "
        "FROM five_min_candles",
    )
    assert sorted(shown) == sorted(
        (symbol, start, "trades" if stats.volume is not None else "samples", stats.price_sum)
        for (symbol, start, _), stats in candles.items()
    )
    rows = query(
        dsn,
        "SELECT symbol, (extract(epoch FROM five_min_start) * 1000)::bigint, "
        "(extract(epoch FROM five_min_end) * 1000)::bigint, rolling_avg_price, "
        "rolling_event_count, rolling_window_count FROM rolling_avg_30min",
    )
    assert len(rows) == len(candles)
    for symbol, start, end, average, event_count, window_count in rows:
        assert end == start + WINDOW_MS
        covered = [
            stats
            for (other, other_start, _), stats in candles.items()
            if other == symbol and start - 30 * 60_000 < other_start <= start
        ]
        total = sum((s.price_sum for s in covered), Decimal(0))
        count = sum(s.count for s in covered)
        assert (window_count, event_count) == (len(covered), count), (symbol, start)
        assert average == exact_average_at_scale(total, count, average), (symbol, start)
    counts = {(s, start): n for s, start, _, _, _, n in rows}
    assert counts[("BTCUSDT", BASE_TIME_MS + 12 * WINDOW_MS)] == 6  # 7..12
    assert counts[("BTCUSDT", BASE_TIME_MS + 20 * WINDOW_MS)] == 1  # 15..19 are empty
    assert counts[("BTCUSDT", BASE_TIME_MS + 26 * WINDOW_MS)] == 1  # 20 is 30 minutes back
    assert counts[("BTCUSDT", BASE_TIME_MS + 27 * WINDOW_MS)] == 2  # 26, 27
    assert counts[("ETHUSDT", BASE_TIME_MS + 9 * WINDOW_MS)] == 1  # 3 is 30 minutes back


# -- PostgreSQL unreachable ------------------------------------------------------------------


def test_unreachable_store_raises_store_unavailable_in_one_line():
    dead = psycopg_dsn(
        host="127.0.0.1", port=str(free_port()), dbname="eventsdb", user="x", password="y"
    )
    store = Store(dead, DEFAULT_MIGRATIONS)
    calls: list[Callable[[], object]] = [
        store.migrate,
        lambda: store.claim(GROUP),
        store.stream_coverage,
        lambda: store.stored_offsets(GROUP, TOPIC, [0]),
        lambda: store.write(pending_flush(some_windows(), {0: 1}), context({0: None})),
    ]
    for call in calls:
        with pytest.raises(StoreUnavailable) as caught:
            call()
        text = str(caught.value)
        assert text and "\n" not in text, text
        assert caught.value.__cause__ is None and caught.value.__suppress_context__
    store.close()


def test_a_connection_cut_mid_session_fails_one_flush_then_reconnects(store, dsn):
    store.write(pending_flush(some_windows(), {0: 2}), context({0: None}))
    (pid,) = query(
        dsn,
        "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
        "AND datname = current_database() AND backend_type = 'client backend'",
    )[0]
    query(dsn, "SELECT pg_terminate_backend(%s)", (pid,))
    pending = pending_flush(some_windows(), {0: 4})
    with pytest.raises(StoreUnavailable):
        store.write(pending, context({0: 2}))
    assert table_counts(dsn)[:3] == (1, 2, 1)  # nothing of the failed flush
    store.write(pending, context({0: 2}))  # the same flush again, on a new connection
    assert table_counts(dsn)[:3] == (1, 4, 2)
    assert store.stored_offsets(GROUP, TOPIC, [0]) == {0: 4}


def test_a_password_with_spaces_and_quotes_connects(postgres: PostgresServer, database: str):
    user, password = f"odd_user_{database}", "a b 'c' \"d\" \\e "
    execute(postgres.dsn(database), f'CREATE ROLE "{user}" LOGIN PASSWORD %s', (password,))
    dsn = psycopg_dsn(
        host=postgres.host,
        port=str(postgres.port),
        dbname=database,
        user=user,
        password=password,
    )
    assert query(dsn, "SELECT current_user") == [(user,)]
    wrong = psycopg_dsn(
        host=postgres.host, port=str(postgres.port), dbname=database, user=user, password="a b"
    )
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        query(wrong, "SELECT 1")


def test_a_connection_outside_the_store_keeps_its_connect_timeout(store):
    """The Store's wait callback is process-wide; a connection of anyone else in the process
    (a test, the bench) must still give up after its own connect_timeout, as libpq does."""
    raised: list[BaseException] = []

    def connect(port: int) -> None:
        try:
            psycopg2.connect(f"host=127.0.0.1 port={port} dbname=x user=x connect_timeout=1")
        except psycopg2.OperationalError as exc:
            raised.append(exc)

    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        attempt = threading.Thread(target=connect, args=(silent.getsockname()[1],), daemon=True)
        attempt.start()
        attempt.join(timeout=15)  # a deadline for the test itself: it hangs if unbounded
        assert not attempt.is_alive(), "connect_timeout was ignored: still waiting after 15 s"
    assert "timeout expired" in str(raised[0])
