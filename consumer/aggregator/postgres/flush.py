"""The statements of one flush, each a function over the flush's cursor, with named
parameters. Store.write runs them in one transaction: the exactly-once unit.

A new pipeline_metrics column is its migration, its counter in core/accumulator.py
(IntervalMetrics) and one line of `metrics_row` here."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg2
from psycopg2.extensions import cursor as Cursor

from aggregator.core.accumulator import PendingFlush
from aggregator.core.windows import MERGE_INTO_ROW_SQL, merge_params
from aggregator.postgres.errors import NotOwner, OffsetsMoved

log = logging.getLogger("consumer")

# Marks of live streams (one per symbol and producer run) are dropped this long after their
# last event: repeats come from a producer's re-send within minutes. Replay marks stay: a file
# may be re-run any time.
LIVE_MARK_RETENTION = "30 days"


@dataclass(frozen=True)
class FlushContext:
    """What a flush writes besides the pending state: who writes, and what it expects."""

    group_id: str
    topic: str
    instance_id: str
    interval_seconds: float
    offset_lag: int | None
    expected_offsets: dict[int, int | None]  # partition -> what we believe is stored
    topic_id: str | None = None  # Kafka's id of the topic the offsets point into


def check_owner(cur: Cursor, group_id: str) -> None:
    """Raise NotOwner unless `group_id` still owns the tables; waits for a take-over in
    progress (its row lock)."""
    cur.execute("SELECT group_id FROM table_owner FOR SHARE")
    row = cur.fetchone()
    if row is None or row[0] != group_id:
        raise NotOwner(row[0] if row else "(none)", group_id, running=True)


def advance_offsets(cur: Cursor, pending: PendingFlush, ctx: FlushContext) -> None:
    """Store the next offsets, but only where the stored value is still the one we started
    from (compare-and-set): a consumer that lost its partitions cannot overwrite the owner.
    Raises OffsetsMoved where it is not."""
    known = {
        p: n for p, n in pending.next_offsets.items() if ctx.expected_offsets.get(p) is not None
    }
    new = {p: n for p, n in pending.next_offsets.items() if p not in known}
    moved: list[int] = []
    if known:
        cur.execute(
            "UPDATE consumer_offsets AS o SET next_offset = u.next_offset, "
            "topic_id = %(topic_id)s::uuid, updated_at = now() "
            "FROM unnest(%(partition)s::int[], %(expected)s::bigint[], "
            "%(next_offset)s::bigint[]) AS u(partition, expected, next_offset) "
            "WHERE o.group_id = %(group_id)s AND o.topic = %(topic)s "
            "AND o.partition = u.partition AND o.next_offset = u.expected "
            "RETURNING o.partition",
            {
                "partition": list(known),
                "expected": [ctx.expected_offsets[p] for p in known],
                "next_offset": list(known.values()),
                "group_id": ctx.group_id,
                "topic": ctx.topic,
                "topic_id": ctx.topic_id,
            },
        )
        moved += sorted(set(known) - {row[0] for row in cur.fetchall()})
    if new:
        cur.execute(
            "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset, topic_id) "
            "SELECT %(group_id)s, %(topic)s, p, n, %(topic_id)s::uuid "
            "FROM unnest(%(partition)s::int[], %(next_offset)s::bigint[]) AS u(p, n) "
            "ON CONFLICT DO NOTHING RETURNING partition",
            {
                "group_id": ctx.group_id,
                "topic": ctx.topic,
                "partition": list(new),
                "next_offset": list(new.values()),
                "topic_id": ctx.topic_id,
            },
        )
        moved += sorted(set(new) - {row[0] for row in cur.fetchall()})
    if moved:
        raise OffsetsMoved(
            f"offsets of partition(s) {moved} were stored by another consumer; "
            "dropping this consumer's unflushed state"
        )


def store_marks(cur: Cursor, pending: PendingFlush, topic: str) -> None:
    """The high-water marks of the streams that advanced. Marks only grow (GREATEST): a stale
    writer can never lower one."""
    marks = pending.advanced_marks()
    if not marks:
        return
    cur.execute(
        "INSERT INTO stream_marks AS m (stream, last_seq, source, topic, partition) "
        "SELECT s, q, src, %(topic)s, p FROM unnest(%(stream)s::text[], "
        "%(last_seq)s::bigint[], %(source)s::text[], %(partition)s::int[]) "
        "AS u(s, q, src, p) ON CONFLICT (stream) DO UPDATE SET "
        "last_seq = GREATEST(m.last_seq, EXCLUDED.last_seq), topic = EXCLUDED.topic, "
        "partition = EXCLUDED.partition, updated_at = now()",
        {
            "topic": topic,
            "stream": [stream for stream, _, _, _ in marks],
            "last_seq": [seq for _, seq, _, _ in marks],
            "source": [source for _, _, source, _ in marks],
            "partition": [partition for _, _, _, partition in marks],
        },
    )


# The ranges a flush counted, joined with the stream's stored ranges into as few as cover
# them (islands: a range starts one where it neither overlaps nor touches those before it).
STORE_RANGES_SQL = """
WITH old AS (
    DELETE FROM stream_ranges WHERE stream = ANY(%(streams)s::text[])
    RETURNING stream, first_seq, last_seq
), joined AS (
    SELECT stream, first_seq, last_seq FROM old
    UNION ALL
    SELECT * FROM unnest(%(stream)s::text[], %(first_seq)s::bigint[], %(last_seq)s::bigint[])
), ordered AS (
    SELECT stream, first_seq, last_seq,
           max(last_seq) OVER (PARTITION BY stream ORDER BY first_seq, last_seq
                               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reach
    FROM joined
), islands AS (
    SELECT stream, first_seq, last_seq,
           count(*) FILTER (WHERE reach IS NULL OR first_seq > reach + 1)
               OVER (PARTITION BY stream ORDER BY first_seq, last_seq) AS island
    FROM ordered
)
INSERT INTO stream_ranges AS r (stream, first_seq, last_seq)
SELECT stream, min(first_seq), max(last_seq) FROM islands GROUP BY stream, island
ON CONFLICT (stream, first_seq) DO UPDATE SET last_seq = GREATEST(r.last_seq, EXCLUDED.last_seq)
"""


def store_ranges(cur: Cursor, pending: PendingFlush) -> None:
    """What each stream counted in this interval, joined into its stored ranges. Ranges only
    grow (a union): a stale writer can never take one away."""
    ranges = pending.counted_ranges()
    if not ranges:
        return
    cur.execute(
        STORE_RANGES_SQL,
        {
            "streams": sorted(pending.counted),
            "stream": [stream for stream, _, _ in ranges],
            "first_seq": [first for _, first, _ in ranges],
            "last_seq": [last for _, _, last in ranges],
        },
    )


def merge_windows(cur: Cursor, pending: PendingFlush) -> None:
    """Every window delta into its row, by the SQL merge of core/windows.py's STATISTICS."""
    if len(pending.windows):
        cur.execute(MERGE_INTO_ROW_SQL, merge_params(pending.windows.deltas))


def insert_dead_letters(cur: Cursor, pending: PendingFlush, topic: str) -> None:
    letters = pending.dead_letters
    if not letters:
        return
    cur.execute(
        'INSERT INTO dead_letter_events (topic, partition, "offset", raw_key, raw_value, '
        "raw_size, error, received_at) SELECT %(topic)s, p, o, k, v, s, e, "
        "to_timestamp(0) + r * interval '1 millisecond' FROM unnest(%(partition)s::int[], "
        "%(offset)s::bigint[], %(raw_key)s::bytea[], %(raw_value)s::bytea[], "
        "%(raw_size)s::int[], %(error)s::text[], %(received_ms)s::bigint[]) "
        "AS u(p, o, k, v, s, e, r) "
        # Read again (offsets rewound by an operator): the letter is there already. No
        # conflict target: naming one would need SELECT on its columns, which the writer
        # role does not have (the only other unique key is the id, which never conflicts).
        "ON CONFLICT DO NOTHING",
        {
            "topic": topic,
            "partition": [d.partition for d in letters],
            "offset": [d.offset for d in letters],
            "raw_key": [_binary(d.key) for d in letters],
            "raw_value": [_binary(d.value) for d in letters],
            "raw_size": [d.size for d in letters],
            "error": [d.error for d in letters],
            "received_ms": [d.received_ms for d in letters],
        },
    )


def prune_marks(cur: Cursor) -> None:
    """Drop the marks of live streams idle for LIVE_MARK_RETENTION."""
    cur.execute(
        "WITH pruned AS (DELETE FROM stream_marks WHERE source <> 'replay' "
        f"AND updated_at < now() - interval '{LIVE_MARK_RETENTION}' RETURNING stream) "
        "DELETE FROM stream_ranges WHERE stream IN (SELECT stream FROM pruned)"
    )
    if cur.rowcount:
        log.info(
            "Dropped %d high-water marks of live streams idle for %s",
            cur.rowcount,
            LIVE_MARK_RETENTION,
        )


def metrics_row(pending: PendingFlush, ctx: FlushContext, duration_ms: float) -> dict[str, object]:
    """The flush's pipeline_metrics row: each column's value under the column's name."""
    m = pending.metrics
    return {
        "metric_timestamp": datetime.now(UTC),
        "instance_id": ctx.instance_id,
        "interval_seconds": ctx.interval_seconds,
        "events_processed": m.events,
        "live_events": m.live_events,
        "replayed_events": m.replayed_events,
        "events_per_second": m.events / ctx.interval_seconds if ctx.interval_seconds > 0 else 0.0,
        "processing_lag_seconds": m.lag_avg_seconds,
        "max_processing_lag_seconds": m.lag_max_seconds,
        "data_size_kb": m.bytes,  # bytes: rounded to KB in SQL (METRICS_SQL_VALUES)
        "consumer_offset_lag": ctx.offset_lag,
        "late_events": m.late_events,
        "invalid_events": m.invalid_events,
        "windows_updated": len(pending.windows),
        "flush_duration_ms": duration_ms,
        "duplicate_events": m.duplicate_events,
        "skipped_offsets": m.skipped_offsets,
    }


# The columns whose value SQL computes from their parameter; every other column takes its
# parameter as it is.
METRICS_SQL_VALUES = {"data_size_kb": "round(%(data_size_kb)s / 1024.0, 3)"}


def insert_metrics(cur: Cursor, row: dict[str, object]) -> None:
    columns = ", ".join(row)
    values = ", ".join(METRICS_SQL_VALUES.get(column, f"%({column})s") for column in row)
    cur.execute(f"INSERT INTO pipeline_metrics ({columns}) VALUES ({values})", row)


def _binary(data: bytes | None) -> psycopg2.Binary | None:
    return None if data is None else psycopg2.Binary(data)
