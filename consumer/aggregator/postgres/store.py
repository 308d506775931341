"""The consumer's work in PostgreSQL: migrations, the owning group, stored offsets and
high-water marks, and the one-transaction flush (its statements: flush.py).

Every call either succeeds, or raises one of the errors of errors.py, which say what the
caller can do: StoreUnavailable (retry later), StoreMisconfigured (a person must fix a
setting), StoreFailed (the database refused the work), NotOwner, OffsetsMoved.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psycopg2.errors

from aggregator.core.accumulator import PendingFlush
from aggregator.core.coverage import Coverage
from aggregator.core.migrations import MigrationError, migrations_in, missing
from aggregator.postgres import flush
from aggregator.postgres.connection import ANSWER_TIMEOUT_SECONDS, Connection
from aggregator.postgres.errors import NotOwner
from aggregator.postgres.flush import FlushContext

SCHEMA_LOCK_ID = 0x6274635F73716C  # any constant shared by all consumers ("btc_sql")
PRUNE_EVERY_SECONDS = 3600.0  # how often a flush also drops the marks of idle live streams


class Store:
    """The consumer's work in PostgreSQL, each method one transaction over one Connection."""

    def __init__(
        self,
        dsn: str,
        migrations_dir: Path,
        answer_timeout: float = ANSWER_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock`: the seconds by which pruning is due every PRUNE_EVERY_SECONDS (monotonic;
        a test passes its own to be an hour later at once)."""
        self.migrations_dir = migrations_dir
        self.clock = clock
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
            cur.execute("SELECT pg_advisory_xact_lock(%(lock)s)", {"lock": SCHEMA_LOCK_ID})
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
                        "INSERT INTO schema_migrations (version, name) "
                        "VALUES (%(version)s, %(name)s)",
                        {"version": migration.version, "name": migration.name},
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
                "INSERT INTO table_owner (group_id) VALUES (%(group_id)s) ON CONFLICT DO NOTHING",
                {"group_id": group_id},
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
                cur.execute(
                    "DELETE FROM consumer_offsets WHERE group_id = %(group_id)s",
                    {"group_id": group_id},
                )
                cur.execute(
                    "UPDATE consumer_offsets SET group_id = %(group_id)s, updated_at = now() "
                    "WHERE group_id = %(previous)s",
                    {"group_id": group_id, "previous": previous},
                )
                moved = cur.rowcount
            cur.execute(
                "INSERT INTO table_owner (group_id) VALUES (%(group_id)s) "
                "ON CONFLICT (singleton) DO UPDATE SET group_id = EXCLUDED.group_id, "
                "since = now()",
                {"group_id": group_id},
            )
        return previous, moved

    def stream_coverage(self, timeout: float | None = None) -> dict[str, Coverage]:
        """What the tables have counted of every stream: its ranges of seqs."""
        with self._db.call(timeout) as conn, conn, conn.cursor() as cur:
            cur.execute("SELECT stream, first_seq, last_seq FROM stream_ranges")
            ranges: dict[str, list[tuple[int, int]]] = {}
            for stream, first, last in cur.fetchall():
                ranges.setdefault(stream, []).append((first, last))
        return {stream: Coverage(pairs) for stream, pairs in ranges.items()}

    def stored_offsets(
        self, group_id: str, topic: str, partitions: list[int], timeout: float | None = None
    ) -> dict[int, int]:
        with self._db.call(timeout) as conn, conn, conn.cursor() as cur:
            cur.execute(
                "SELECT partition, next_offset FROM consumer_offsets "
                "WHERE group_id = %(group_id)s AND topic = %(topic)s "
                "AND partition = ANY(%(partitions)s)",
                {"group_id": group_id, "topic": topic, "partitions": partitions},
            )
            return dict(cur.fetchall())

    def stored_topic_ids(
        self, group_id: str, topic: str, timeout: float | None = None
    ) -> dict[int, str | None]:
        """Every partition of `topic` with an offset stored for the group, and the topic id it
        was stored under (None: unknown)."""
        with self._db.call(timeout) as conn, conn, conn.cursor() as cur:
            cur.execute(
                "SELECT partition, topic_id::text FROM consumer_offsets "
                "WHERE group_id = %(group_id)s AND topic = %(topic)s",
                {"group_id": group_id, "topic": topic},
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
            flush.check_owner(cur, ctx.group_id)  # waits for a take-over in progress
            flush.advance_offsets(cur, pending, ctx)  # it locks the rows that fence us
            flush.store_marks(cur, pending, ctx.topic)
            flush.store_ranges(cur, pending)
            flush.merge_windows(cur, pending)
            flush.insert_dead_letters(cur, pending, ctx.topic)
            if self._prune_due():
                flush.prune_marks(cur)
            duration_ms = (time.perf_counter() - started) * 1000
            flush.insert_metrics(cur, flush.metrics_row(pending, ctx, duration_ms))
        return duration_ms

    def _prune_due(self) -> bool:
        now = self.clock()
        if self._pruned_at is not None and now - self._pruned_at < PRUNE_EVERY_SECONDS:
            return False
        self._pruned_at = now
        return True

    def close(self) -> None:
        self._db.close()
