"""The PostgreSQL edge: migrations, the owning group, stored offsets and high-water marks,
and the one-transaction flush.

Every call either succeeds, or raises one of three errors that say what the caller can do:
StoreUnavailable (transient: retry later), StoreMisconfigured (permanent: a person must fix a
setting) or StoreFailed (the database refused the work: stop and show the cause).
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2.extensions import parse_dsn

from aggregator.core.accumulator import PendingFlush
from aggregator.core.migrations import MigrationError, migrations_in, missing
from aggregator.core.windows import MERGE_INTO_ROW_SQL, merge_params
from btcpipe.process import one_line

log = logging.getLogger("consumer")

SCHEMA_LOCK_ID = 0x6274635F73716C  # any constant shared by all consumers ("btc_sql")
# Marks of live streams (one per symbol and producer run) are dropped this long after their
# last event: repeats come from a producer's re-send within minutes. Replay marks stay: a file
# may be re-run any time.
LIVE_MARK_RETENTION = "30 days"
PRUNE_EVERY_SECONDS = 3600.0


ANSWER_TIMEOUT_SECONDS = 12.0  # a healthy flush takes milliseconds; a hung server, forever
STATEMENT_TIMEOUT_MS = 10_000  # the server's own limit, below the client's


class StoreUnavailable(Exception):
    """PostgreSQL cannot be reached, does not answer, or failed mid-transaction; nothing was
    written. Transient: retry later."""


class StoreMisconfigured(Exception):
    """A setting is wrong (password, database, user, host name): retrying cannot help."""


class StoreFailed(Exception):
    """PostgreSQL refused the work itself (a bug, a schema out of step): stop, show why."""


class NotOwner(Exception):
    """The tables belong to another consumer group; the message says how to take over."""

    def __init__(self, owner: str, group: str, running: bool = False) -> None:
        if running:
            text = (
                f"consumer group {group!r} no longer fills the tables: group {owner!r} took "
                f"them over (consumer.py --group {group} --take-over takes them back)."
            )
        else:
            text = (
                f"the tables are filled by consumer group {owner!r}, not {group!r}: to hand "
                f"them over (with their stored offsets, so nothing is counted twice), stop "
                f"group {owner!r} and run consumer.py --group {group} --take-over."
            )
        super().__init__(text)
        self.owner = owner


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


# -- a client-side deadline for every answer ------------------------------------------------
# statement_timeout is enforced by the server, so it cannot fire when the server itself hangs
# (a stalled disk or VM, SIGSTOP), and libpq would wait forever. psycopg2 hands every wait for
# the server to a callback: this one gives up at a deadline, set per call by the Store.

_deadline = threading.local()


def _wait_until_deadline(conn: psycopg2.extensions.connection) -> None:
    """psycopg2's wait callback: psycopg2.extras.wait_select, with a deadline. The callback is
    process-wide: a connection used outside the Store's calls keeps libpq's own rule."""
    at: float | None = getattr(_deadline, "at", None)
    in_store_call = at is not None
    if not in_store_call:
        at = _connect_deadline(conn)
    while True:
        state = conn.poll()
        if state == psycopg2.extensions.POLL_OK:
            return
        timeout = None if at is None else at - time.monotonic()
        if timeout is not None and timeout <= 0:
            if not in_store_call:
                raise psycopg2.OperationalError("timeout expired")  # libpq's words
            # psycopg2 then closes the connection, and what the caller catches may be about
            # that ("connection already closed"): keep the real reason where it can be found.
            _deadline.missed = f"PostgreSQL did not answer within {_deadline.seconds:g} s"
            raise psycopg2.OperationalError(_deadline.missed)
        fd = conn.fileno()
        if state == psycopg2.extensions.POLL_READ:
            select.select([fd], [], [], timeout)
        elif state == psycopg2.extensions.POLL_WRITE:
            select.select([], [fd], [], timeout)
        else:  # pragma: no cover - psycopg2 documents no other state
            raise psycopg2.OperationalError(f"unexpected poll state {state}")


def _connect_deadline(conn: psycopg2.extensions.connection) -> float | None:
    """libpq's limit for a connection outside the Store's calls: its `connect_timeout` while
    it connects, none after."""
    if conn.status != psycopg2.extensions.STATUS_SETUP:
        return None
    seconds = int(parse_dsn(conn.dsn).get("connect_timeout") or 0)
    return time.monotonic() + seconds if seconds > 0 else None


@contextlib.contextmanager
def _answer_within(seconds: float):
    _deadline.at, _deadline.seconds = time.monotonic() + seconds, seconds
    _deadline.missed = None
    try:
        yield
    finally:
        _deadline.at = None


class Connection:
    """One connection to PostgreSQL, opened on demand: every call answered within a deadline,
    every failure sorted into what the caller can do (the three errors above)."""

    def __init__(self, dsn: str, answer_timeout: float) -> None:
        self.dsn = dsn
        self.answer_timeout = answer_timeout
        self.started = False  # after the first success, a host name failing to resolve is DNS
        self._conn: psycopg2.extensions.connection | None = None
        psycopg2.extensions.set_wait_callback(_wait_until_deadline)

    @contextlib.contextmanager
    def call(self, timeout: float | None = None):
        """One store call: a connection, a deadline, and errors sorted by what can be done."""
        with _answer_within(timeout or self.answer_timeout):
            try:
                yield self._connection()
                self.started = True
            except (StoreUnavailable, StoreMisconfigured, OffsetsMoved):
                raise
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                raise self._fail(exc) from None
            except psycopg2.Error as exc:
                self.close()
                raise StoreFailed(_describe(exc)) from None

    def _connection(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            try:
                # statement_timeout: the server's own bound, below the client's deadline.
                self._conn = psycopg2.connect(
                    self.dsn,
                    connect_timeout=5,
                    options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
                )
            except psycopg2.OperationalError as exc:
                reason = one_line(exc)
                if _is_permanent(reason, at_start=not self.started):
                    raise StoreMisconfigured(reason) from None
                raise StoreUnavailable(reason) from None
        return self._conn

    def _fail(self, exc: Exception) -> StoreUnavailable:
        """The error of a failed connection, closed: the next call reconnects."""
        self.close()
        missed = getattr(_deadline, "missed", None)
        return StoreUnavailable(f"{missed} (server hung?)" if missed else one_line(exc))

    def close(self) -> None:
        """Close the connection (also one that failed): the next call reconnects."""
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
        self._conn = None


class Store:
    """The consumer's work in PostgreSQL, each method one transaction over one Connection."""

    def __init__(
        self, dsn: str, migrations_dir: Path, answer_timeout: float = ANSWER_TIMEOUT_SECONDS
    ) -> None:
        self.migrations_dir = migrations_dir
        self._db = Connection(dsn, answer_timeout)
        self._pruned_at: float | None = None

    def migrate(self) -> list[str]:
        """Apply the migrations this database has not had, in order, in one transaction under
        an advisory lock (consumers starting together wait for each other). Returns their
        names. Raises MigrationError for a folder or database it cannot work with."""
        migrations = migrations_in(self.migrations_dir)
        # A long migration may take longer than a flush: the server's statement_timeout and
        # a generous deadline still bound it.
        with (
            self._db.call(timeout=max(60.0, self._db.answer_timeout)) as conn,
            conn,
            conn.cursor() as cur,
        ):
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_ID,))
            cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
            applied: set[int] = set()
            if cur.fetchone()[0]:
                cur.execute("SELECT version FROM schema_migrations")
                applied = {row[0] for row in cur.fetchall()}
            todo = missing(migrations, applied)
            try:
                for migration in todo:
                    cur.execute(migration.path.read_text())
                    cur.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (migration.version, migration.name),
                    )
            except psycopg2.errors.InsufficientPrivilege:
                raise MigrationError(
                    f"the database lacks migration(s) {', '.join(m.name for m in todo)}, "
                    f"and user {conn.info.user!r} may not change the schema: apply them as its "
                    "owner (in docker compose: docker compose exec postgres bash "
                    "/docker-entrypoint-initdb.d/00-migrate.sh), then start the consumer again."
                ) from None
        return [m.name for m in todo]

    def claim(self, group_id: str) -> None:
        """Become the owning group of empty tables; raise NotOwner if another group owns them."""
        with self._db.call() as conn, conn, conn.cursor() as cur:
            cur.execute(
                "INSERT INTO table_owner (group_id) VALUES (%s) ON CONFLICT DO NOTHING",
                (group_id,),
            )
            cur.execute("SELECT group_id FROM table_owner")
            (owner,) = cur.fetchone()
        if owner != group_id:
            raise NotOwner(owner, group_id)

    def take_over(self, group_id: str) -> tuple[str | None, int]:
        """Make `group_id` the owner, moving the owner's stored offsets to it, all in one
        transaction: the new group continues exactly where the old one stopped. The marks
        belong to the tables, not to a group, so they stay as they are. Returns the previous
        owner and how many partition offsets moved."""
        with self._db.call() as conn, conn, conn.cursor() as cur:
            cur.execute("SELECT group_id FROM table_owner FOR UPDATE")
            row = cur.fetchone()
            previous = row[0] if row else None
            if previous == group_id:
                return previous, 0
            moved = 0
            if previous is not None:
                # Offsets the new group stored in an earlier turn are out of date.
                cur.execute("DELETE FROM consumer_offsets WHERE group_id = %s", (group_id,))
                cur.execute(
                    "UPDATE consumer_offsets SET group_id = %s, updated_at = now() "
                    "WHERE group_id = %s",
                    (group_id, previous),
                )
                moved = cur.rowcount
            cur.execute(
                "INSERT INTO table_owner (group_id) VALUES (%s) ON CONFLICT (singleton) "
                "DO UPDATE SET group_id = EXCLUDED.group_id, since = now()",
                (group_id,),
            )
        return previous, moved

    def stream_marks(self, timeout: float | None = None) -> dict[str, int]:
        """Every stream's high-water mark: what the tables have counted."""
        with self._db.call(timeout) as conn, conn, conn.cursor() as cur:
            cur.execute("SELECT stream, last_seq FROM stream_marks")
            return dict(cur.fetchall())

    def stored_offsets(
        self, group_id: str, topic: str, partitions: list[int], timeout: float | None = None
    ) -> dict[int, int]:
        with self._db.call(timeout) as conn, conn, conn.cursor() as cur:
            cur.execute(
                "SELECT partition, next_offset FROM consumer_offsets "
                "WHERE group_id = %s AND topic = %s AND partition = ANY(%s)",
                (group_id, topic, partitions),
            )
            return dict(cur.fetchall())

    def write(
        self, pending: PendingFlush, ctx: FlushContext, timeout: float | None = None
    ) -> float:
        """Write windows, marks, dead letters, metrics and offsets in ONE transaction, with an
        answer due within `timeout` seconds (default: answer_timeout).

        Returns the flush duration in ms. Raises StoreUnavailable (retry later), OffsetsMoved
        (drop the pending state), NotOwner or StoreFailed; in every case nothing was written.
        """
        started = time.perf_counter()
        with self._db.call(timeout) as conn, conn, conn.cursor() as cur:
            _check_owner(cur, ctx.group_id)  # waits for a take-over in progress
            _advance_offsets(cur, pending, ctx)  # it locks the rows that fence us
            marks = pending.advanced_marks()
            if marks:
                _store_marks(cur, marks, ctx.topic)
            if len(pending.windows):
                cur.execute(MERGE_INTO_ROW_SQL, merge_params(pending.windows.deltas))
            if pending.dead_letters:
                _insert_dead_letters(cur, pending, ctx.topic)
            if self._prune_due():
                _prune_marks(cur)
            duration_ms = (time.perf_counter() - started) * 1000
            _insert_metrics(cur, pending, ctx, duration_ms)
        return duration_ms

    def _prune_due(self) -> bool:
        now = time.monotonic()
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY_SECONDS:
            return False
        self._pruned_at = now
        return True

    def close(self) -> None:
        self._db.close()


def _check_owner(cur: psycopg2.extensions.cursor, group_id: str) -> None:
    cur.execute("SELECT group_id FROM table_owner FOR SHARE")
    row = cur.fetchone()
    if row is None or row[0] != group_id:
        raise NotOwner(row[0] if row else "(none)", group_id, running=True)


def _store_marks(
    cur: psycopg2.extensions.cursor, marks: list[tuple[str, int, str, int]], topic: str
) -> None:
    """Marks only grow (GREATEST): a stale writer can never lower one."""
    cur.execute(
        "INSERT INTO stream_marks AS m (stream, last_seq, source, topic, partition) "
        "SELECT s, q, src, %s, p FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::int[]) "
        "AS u(s, q, src, p) ON CONFLICT (stream) DO UPDATE SET "
        "last_seq = GREATEST(m.last_seq, EXCLUDED.last_seq), topic = EXCLUDED.topic, "
        "partition = EXCLUDED.partition, updated_at = now()",
        (
            topic,
            [m[0] for m in marks],
            [m[1] for m in marks],
            [m[2] for m in marks],
            [m[3] for m in marks],
        ),
    )


def _prune_marks(cur: psycopg2.extensions.cursor) -> None:
    cur.execute(
        "DELETE FROM stream_marks WHERE source <> 'replay' "
        f"AND updated_at < now() - interval '{LIVE_MARK_RETENTION}'"
    )
    if cur.rowcount:
        log.info(
            "Dropped %d high-water marks of live streams idle for %s",
            cur.rowcount,
            LIVE_MARK_RETENTION,
        )


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
        "%s::bytea[], %s::bytea[], %s::int[], %s::text[], %s::bigint[]) AS u(p, o, k, v, s, e, r) "
        # Read again (offsets rewound by an operator): the letter is there already. No
        # conflict target: naming one would need SELECT on its columns, which the writer
        # role does not have (the only other unique key is the id, which never conflicts).
        "ON CONFLICT DO NOTHING",
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
        "late_events, invalid_events, windows_updated, flush_duration_ms, duplicate_events) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, round(%s / 1024.0, 3), %s, %s, %s, %s, %s, "
        "%s)",
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
            m.duplicate_events,
        ),
    )


def _binary(data: bytes | None) -> psycopg2.Binary | None:
    return None if data is None else psycopg2.Binary(data)


def _describe(exc: psycopg2.Error) -> str:
    """The server's own words and SQLSTATE, e.g. for a constraint a flush violated."""
    code = f" [SQLSTATE {exc.pgcode}]" if exc.pgcode else ""
    return f"{exc.__class__.__name__}: {one_line(exc)}{code}"


# libpq's messages for settings that no retry can fix (it gives no SQLSTATE for a failed
# connection). A host name that does not resolve is a mistake at start, a DNS hiccup later.
_PERMANENT = ("password authentication failed", "does not exist", "no password supplied")
_PERMANENT_AT_START = ("could not translate host name",)


def _is_permanent(reason: str, at_start: bool) -> bool:
    return any(text in reason for text in _PERMANENT) or (
        at_start and any(text in reason for text in _PERMANENT_AT_START)
    )
