"""The PostgreSQL edge: schema, stored offsets, and the one-transaction flush."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg2
import psycopg2.extensions

from aggregator.batch import PendingFlush
from aggregator.windows import MERGE_INTO_ROW_SQL, merge_params

log = logging.getLogger("consumer")

REQUIRED_TABLES = (
    "five_min_bitcoin_event",
    "pipeline_metrics",
    "consumer_offsets",
    "dead_letter_events",
    "rolling_avg_30min",
)
SCHEMA_LOCK_ID = 0x6274635F73716C  # any constant shared by all consumers ("btc_sql")


class StoreUnavailable(Exception):
    """PostgreSQL cannot be reached or failed mid-transaction; nothing was written."""


class OffsetsMoved(Exception):
    """Another consumer stored offsets for our partitions since we read them: we are a
    zombie of an older generation, and our pending state must be dropped, not written."""


@dataclass(frozen=True)
class FlushContext:
    group_id: str
    topic: str
    instance_id: str
    interval_seconds: float
    offset_lag: int | None
    expected_offsets: dict[int, int | None]  # partition -> what we believe is stored


class Store:
    def __init__(self, dsn: str, schema_path: Path) -> None:
        self.dsn = dsn
        self.schema_path = schema_path
        self._conn: psycopg2.extensions.connection | None = None

    def _connection(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            try:
                # statement_timeout bounds a flush, which may run inside a rebalance callback.
                self._conn = psycopg2.connect(
                    self.dsn, connect_timeout=5, options="-c statement_timeout=15000"
                )
            except psycopg2.OperationalError as exc:
                raise StoreUnavailable(_one_line(exc)) from None
        return self._conn

    def _fail(self, exc: Exception) -> StoreUnavailable:
        """Close a connection that failed: the next call reconnects."""
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
        self._conn = None
        return StoreUnavailable(_one_line(exc))

    def ensure_schema(self) -> bool:
        """Apply infra/init_db.sql if a table or view is missing. True if it was applied."""
        conn = self._connection()
        try:
            with conn, conn.cursor() as cur:
                # Consumers starting together must not create the same tables at once.
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_ID,))
                cur.execute(
                    "SELECT count(*) FROM unnest(%s::text[]) AS t(name) "
                    "WHERE to_regclass(t.name) IS NULL",
                    (list(REQUIRED_TABLES),),
                )
                if cur.fetchone()[0] == 0:
                    return False
                cur.execute(self.schema_path.read_text())
                return True
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            raise self._fail(exc) from None

    def stored_offsets(self, group_id: str, topic: str, partitions: list[int]) -> dict[int, int]:
        conn = self._connection()
        try:
            with conn, conn.cursor() as cur:
                cur.execute(
                    "SELECT partition, next_offset FROM consumer_offsets "
                    "WHERE group_id = %s AND topic = %s AND partition = ANY(%s)",
                    (group_id, topic, partitions),
                )
                return dict(cur.fetchall())
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            raise self._fail(exc) from None

    def write(self, pending: PendingFlush, ctx: FlushContext) -> float:
        """Write windows, dead letters, metrics and offsets in ONE transaction.

        Returns the flush duration in ms. Raises StoreUnavailable (retry later) or
        OffsetsMoved (drop the pending state); either way nothing was written.
        """
        started = time.perf_counter()
        conn = self._connection()
        try:
            with conn, conn.cursor() as cur:
                _advance_offsets(cur, pending, ctx)  # first: it locks the rows that fence us
                if len(pending.windows):
                    cur.execute(MERGE_INTO_ROW_SQL, merge_params(pending.windows.deltas))
                if pending.dead_letters:
                    _insert_dead_letters(cur, pending, ctx.topic)
                duration_ms = (time.perf_counter() - started) * 1000
                _insert_metrics(cur, pending, ctx, duration_ms)
            return duration_ms
        except OffsetsMoved:
            raise
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            raise self._fail(exc) from None

    def close(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.close()
        self._conn = None


def _advance_offsets(cur: psycopg2.extensions.cursor, pending: PendingFlush, ctx: FlushContext):
    """Store the next offsets, but only where the stored value is still the one we started
    from (compare-and-set): a consumer that lost its partitions cannot overwrite the owner."""
    known = {
        p: n for p, n in pending.next_offsets.items() if ctx.expected_offsets.get(p) is not None
    }
    new = {p: n for p, n in pending.next_offsets.items() if p not in known}
    moved: list[int] = []
    if known:
        cur.execute(
            "UPDATE consumer_offsets AS o SET next_offset = u.next_offset, updated_at = now() "
            "FROM unnest(%s::int[], %s::bigint[], %s::bigint[]) AS u(partition, expected, "
            "next_offset) WHERE o.group_id = %s AND o.topic = %s AND o.partition = u.partition "
            "AND o.next_offset = u.expected RETURNING o.partition",
            (
                list(known),
                [ctx.expected_offsets[p] for p in known],
                list(known.values()),
                ctx.group_id,
                ctx.topic,
            ),
        )
        moved += sorted(set(known) - {row[0] for row in cur.fetchall()})
    if new:
        cur.execute(
            "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset) "
            "SELECT %s, %s, p, n FROM unnest(%s::int[], %s::bigint[]) AS u(p, n) "
            "ON CONFLICT DO NOTHING RETURNING partition",
            (ctx.group_id, ctx.topic, list(new), list(new.values())),
        )
        moved += sorted(set(new) - {row[0] for row in cur.fetchall()})
    if moved:
        raise OffsetsMoved(
            f"offsets of partition(s) {moved} were stored by another consumer; "
            "dropping this consumer's unflushed state"
        )


def _insert_dead_letters(cur: psycopg2.extensions.cursor, pending: PendingFlush, topic: str):
    letters = pending.dead_letters
    cur.execute(
        'INSERT INTO dead_letter_events (topic, partition, "offset", raw_key, raw_value, '
        "raw_size, error, received_at) SELECT %s, p, o, k, v, s, e, "
        "to_timestamp(0) + r * interval '1 millisecond' FROM unnest(%s::int[], %s::bigint[], "
        "%s::bytea[], %s::bytea[], %s::int[], %s::text[], %s::bigint[]) AS u(p, o, k, v, s, e, r)",
        (
            topic,
            [d.partition for d in letters],
            [d.offset for d in letters],
            [_binary(d.key) for d in letters],
            [_binary(d.value) for d in letters],
            [d.size for d in letters],
            [d.error for d in letters],
            [d.received_ms for d in letters],
        ),
    )


def _insert_metrics(
    cur: psycopg2.extensions.cursor, pending: PendingFlush, ctx: FlushContext, duration_ms: float
) -> None:
    m = pending.metrics
    cur.execute(
        "INSERT INTO pipeline_metrics (metric_timestamp, instance_id, interval_seconds, "
        "events_processed, live_events, replayed_events, events_per_second, "
        "processing_lag_seconds, max_processing_lag_seconds, data_size_kb, consumer_offset_lag, "
        "late_events, invalid_events, windows_updated, flush_duration_ms) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, round(%s / 1024.0, 3), %s, %s, %s, %s, %s)",
        (
            datetime.now(UTC),
            ctx.instance_id,
            ctx.interval_seconds,
            m.events,
            m.live_events,
            m.replayed_events,
            m.events / ctx.interval_seconds if ctx.interval_seconds > 0 else 0.0,
            m.lag_avg_seconds,
            m.lag_max_seconds,
            m.bytes,
            ctx.offset_lag,
            m.late_events,
            m.invalid_events,
            len(pending.windows),
            duration_ms,
        ),
    )


def _binary(data: bytes | None) -> psycopg2.Binary | None:
    return None if data is None else psycopg2.Binary(data)


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or exc.__class__.__name__
