"""The consumer's PostgreSQL side of the loop: every interval, the pending state in one
transaction; new partitions started at the offsets stored there; an outage ridden out.

While PostgreSQL is unavailable, consumption pauses and the pending interval is held and
retried with backoff; when a flush goes through, consumption resumes. Raises what no retry
can fix (StoreMisconfigured, StoreFailed, NotOwner) to the caller.
"""

from __future__ import annotations

import logging
import time

from aggregator.core.accumulator import Accumulator
from aggregator.kafka_reader.positions import Positions
from aggregator.postgres.errors import OffsetsMoved, StoreUnavailable
from aggregator.postgres.flush import FlushContext
from aggregator.postgres.store import Store
from aggregator.report import report_flush
from aggregator.settings import Settings
from btcpipe.backoff import Backoff

log = logging.getLogger("consumer")


class Flusher:
    def __init__(
        self, settings: Settings, store: Store, accumulator: Accumulator, positions: Positions
    ) -> None:
        self.settings = settings
        self.store = store
        self.accumulator = accumulator
        self.positions = positions
        self.interval_started = time.monotonic()
        self.next_flush = self.interval_started + settings.flush_interval
        self.store_down_since: float | None = None
        # One backoff for both retries, of a flush and of reading stored offsets: one outage.
        self.backoff = Backoff(cap=10.0)  # PostgreSQL back: resume within seconds
        self.resolve_at = 0.0  # monotonic time of the next try to read stored offsets

    @property
    def consuming(self) -> bool:
        """False while PostgreSQL is down: consumption stays paused until a flush goes in."""
        return self.store_down_since is None

    def flush_on_timer(self) -> None:
        try:
            self.flush()
        except StoreUnavailable as exc:
            self.on_store_down(exc)
            return
        except OffsetsMoved as exc:
            # Another member wrote our partitions' offsets, or our own last commit went through
            # although its answer was lost: either way PostgreSQL holds the truth. Drop what is
            # pending and carry on from the offsets stored there.
            log.warning("%s", exc)
            self.drop_pending()
            self.positions.reread_all()
            self.resolve_positions()
        self.next_flush = time.monotonic() + self.settings.flush_interval

    def flush(self, timeout: float | None = None) -> None:
        """Write what is pending in one transaction, then tell Kafka (for lag tooling)."""
        pending = self.accumulator.pending
        now = time.monotonic()
        ctx = FlushContext(
            group_id=self.settings.group_id,
            topic=self.settings.topic,
            instance_id=self.settings.instance_id,
            interval_seconds=now - self.interval_started,
            offset_lag=self.positions.lag(pending.next_offsets),
            expected_offsets=dict(self.positions.stored),
            topic_id=self.positions.topic_id,
        )
        duration_ms = self.store.write(pending, ctx, timeout)
        self.accumulator.take()
        self.interval_started = now
        self.positions.advance(pending.next_offsets)
        report_flush(pending, duration_ms)
        if self.store_down_since is not None:
            log.info(
                "PostgreSQL is back after %.0f s: resuming consumption",
                time.monotonic() - self.store_down_since,
            )
            self.store_down_since = None
            self.backoff.reset()
            self.positions.resume_all()

    def flush_soon(self, why: str) -> None:
        """Flush at the loop's next turn rather than at the timer's, unless an outage's
        backoff is running (that wait stands)."""
        if self.store_down_since is None:
            log.info("%s: flushing now", why)
            self.next_flush = time.monotonic()

    def on_store_down(self, exc: StoreUnavailable) -> None:
        """Keep what is pending, stop reading more, and try again with backoff."""
        delay = self.backoff.next_delay()
        if self.store_down_since is None:
            self.store_down_since = time.monotonic()
            self.positions.pause_all()
        log.error(
            "PostgreSQL unavailable (%s): consumption paused, %d events held; retrying in %.1f s",
            exc,
            self.accumulator.pending.metrics.events,
            delay,
        )
        self.next_flush = time.monotonic() + delay

    def flush_final(self) -> bool:
        """The flush before exit. False if it could not be written (they are read again)."""
        try:
            self.flush()
            return True
        except (StoreUnavailable, OffsetsMoved) as exc:
            log.error(
                "Final flush failed (%s): %d unflushed events will be read again on restart",
                exc,
                self.accumulator.pending.metrics.events,
            )
            self.drop_pending()
            return False

    def drop_pending(self) -> None:
        """Forget unflushed state and rewind to where it began, so it is read again."""
        self.positions.rewind(self.accumulator.discard().first_offsets)

    def forget_outage(self) -> None:
        """With a new Kafka client, partitions start unpaused and are resolved at once."""
        self.store_down_since = None
        self.resolve_at = 0.0

    def resolve_due(self) -> bool:
        """New partitions wait for their stored offsets, and a failed try is not yet retried."""
        return bool(self.positions.unresolved) and time.monotonic() >= self.resolve_at

    def resolve_positions(self, timeout: float | None = None) -> None:
        """Start each new partition at its offset stored in PostgreSQL (Positions.start_at),
        with the streams' marks as they are there now; the loop then checks those offsets
        against the logs. Until PostgreSQL answers, the new partitions stay paused, and the
        try is repeated with backoff."""
        partitions = sorted(self.positions.unresolved)
        try:
            stored = self.store.stored_offsets(
                self.settings.group_id, self.settings.topic, partitions, timeout
            )
            topic_ids = self.store.stored_topic_ids(
                self.settings.group_id, self.settings.topic, timeout
            )
            # The new partitions' streams may have advanced under another member.
            self.accumulator.load_marks(self.store.stream_coverage(timeout))
        except StoreUnavailable as exc:
            delay = self.backoff.next_delay()
            self.resolve_at = time.monotonic() + delay
            log.error(
                "PostgreSQL unavailable (%s): assigned partitions wait; retrying in %.1f s",
                exc,
                delay,
            )
            self.positions.hold_unresolved()
            return
        if self.store_down_since is None:
            self.backoff.reset()  # no flush waits: the next outage starts with short waits
        self.positions.stored_topic_ids = topic_ids
        starts = self.positions.start_at(stored)
        log.info("Resuming from stored offsets %s", starts)
