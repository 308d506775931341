"""The Kafka edge: a group consumer whose offsets live in PostgreSQL, the bookkeeping of its
partitions' positions, and a guard that gives the client up when it spins."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from aggregator.settings import Settings

log = logging.getLogger("consumer")

# A poll takes every record a fetch brought for a partition. kafka-python 3.0.12 sends its next
# fetch as soon as no fetched response is queued, and leaves out the partition whose records a
# poll is still handing over. When the other partitions have nothing new (one symbol is one
# partition: every backfill), that fetch asks only for them, and the broker holds it for
# fetch_max_wait_ms (500 ms) while the backlog waits behind it: in bench/, half the time was
# spent waiting with 2,000 records a poll. So a poll must hold a partition's whole response:
# MAX_PARTITION_FETCH_BYTES, plus the one producer batch (at most 256 KiB from producer.py) a
# broker may return beyond it, of the smallest valid events (tests/integration/test_kafka_edge.py).
MAX_PARTITION_FETCH_BYTES = 1024 * 1024
FETCH_SETTINGS = {
    "max_poll_records": 25_000,
    "max_partition_fetch_bytes": MAX_PARTITION_FETCH_BYTES,
    "fetch_max_bytes": 16 * 1024 * 1024,
}


def new_consumer(settings: Settings) -> KafkaConsumer:
    """A group member that never commits on its own: offsets are stored with the windows."""
    return KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=settings.group_id,
        client_id=f"btc-consumer-{settings.instance_id}",
        enable_auto_commit=False,
        auto_offset_reset=settings.auto_offset_reset,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=max(100, min(3000, settings.session_timeout_ms // 3)),
        max_poll_interval_ms=settings.max_poll_interval_ms,
        bootstrap_timeout_ms=5_000,
        **FETCH_SETTINGS,
    )


class KafkaUnresponsive(KafkaError):
    """The broker does not answer and the client busy-loops waiting for it: replace it."""


class SpinGuard:
    """`consumer.poll`, watching for kafka-python 3.0.12's busy loop against a hung broker.

    When the broker stops answering (frozen, not refused), the client spins: first in `poll`,
    which returns nothing while keeping a core busy for its whole timeout, later on its own
    network thread, whatever we do. An empty poll that used the CPU for most of its wait is
    that spin; twice in a row, and the client is given up (KafkaUnresponsive), to be replaced
    once the broker answers again (making a client is the probe: it waits quietly).
    """

    # CPU seconds per second of an empty poll that count as spinning: a quiet poll uses about
    # 0.01, a spinning one up to 1 (less when other processes share the core).
    SPIN_SHARE = 0.2
    SPINS_TO_GIVE_UP = 2
    SHORT_POLL_MS = 50

    def __init__(self, bootstrap_servers: str) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.spins = 0

    def poll(self, consumer: KafkaConsumer, timeout_ms: int) -> dict:
        if self.spins:
            timeout_ms = min(timeout_ms, self.SHORT_POLL_MS)  # confirm it quickly
        wall, cpu = time.monotonic(), time.process_time()
        records = consumer.poll(timeout_ms=timeout_ms)
        wall, cpu = time.monotonic() - wall, time.process_time() - cpu
        if records or cpu < self.SPIN_SHARE * wall:
            self.spins = 0
        elif wall >= 0.04:
            self.spins += 1
            if self.spins >= self.SPINS_TO_GIVE_UP:
                self.spins = 0
                raise KafkaUnresponsive(
                    f"Kafka at {self.bootstrap_servers} does not answer and the client "
                    "busy-loops waiting"
                )
        return records


class CatchUpWatch:
    """Tells when the consumer has just read to the end of a backlog (a backfill, or what
    piled up during an outage), so that it can flush at once instead of at the next tick:
    the backlog is then visible as soon as it is read. Live traffic is a few messages per
    poll and never makes a backlog, so there the flush keeps its cadence."""

    BACKLOG_MESSAGES = 20_000  # behind by this many: catching up, not live

    def __init__(self) -> None:
        self.behind = False

    def caught_up(self, lag: int, just_read: int) -> bool:
        """True once, when `lag` (messages behind the partition ends) reaches 0 after a
        backlog. `just_read`: the messages of this poll, which the lag before it included (a
        poll may take a whole backlog at once)."""
        if lag + just_read >= self.BACKLOG_MESSAGES:
            self.behind = True
        if lag == 0 and self.behind:
            self.behind = False
            return True
        return False


class Positions:
    """Where each assigned partition stands, kept beside the Kafka client that reads it.

    `stored` is what we believe PostgreSQL holds per partition (None: no row yet); a flush
    advances it with compare-and-set, which fences out a consumer that lost a partition.
    Newly assigned partitions are unresolved until their stored offsets have been read, and
    stay paused until then: reading them from anywhere else could count events twice.
    """

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.consumer: KafkaConsumer | None = None
        self.stored: dict[int, int | None] = {}
        self.unresolved: set[int] = set()

    def _tps(self, partitions: Iterable[int]) -> list[TopicPartition]:
        return [TopicPartition(self.topic, p) for p in sorted(partitions)]

    def assigned(self, partitions: Iterable[int]) -> None:
        self.unresolved.update(partitions)

    def reread_all(self) -> None:
        """Read every assigned partition's stored offset again (PostgreSQL holds the truth)."""
        assert self.consumer is not None
        self.unresolved.update(tp.partition for tp in self.consumer.assignment())

    def forget(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self.stored.pop(partition, None)
            self.unresolved.discard(partition)

    def clear(self) -> None:
        self.stored.clear()
        self.unresolved.clear()

    def hold_unresolved(self) -> None:
        assert self.consumer is not None
        self.consumer.pause(*self._tps(self.unresolved))

    def start_at(self, stored: dict[int, int], resume: bool) -> dict[int, int | str]:
        """Seek each unresolved partition to its stored offset (without one: Kafka's committed
        offset, then auto_offset_reset) and resume it unless told not to; returns where each
        starts, for the log."""
        assert self.consumer is not None
        tps = self._tps(self.unresolved)
        for tp in tps:
            offset = stored.get(tp.partition)
            self.stored[tp.partition] = offset
            if offset is not None:
                self.consumer.seek(tp, offset)
        starts = {p: stored.get(p, "kafka/auto_offset_reset") for p in sorted(self.unresolved)}
        self.unresolved.clear()
        if resume:
            self.consumer.resume(*tps)
        return starts

    def advance(self, next_offsets: dict[int, int]) -> None:
        """After a flush: PostgreSQL holds these now; tell Kafka too (for lag tooling only)."""
        assert self.consumer is not None
        self.stored.update(next_offsets)
        if not next_offsets:
            return
        offsets = {
            TopicPartition(self.topic, p): OffsetAndMetadata(n, "", -1)
            for p, n in next_offsets.items()
        }
        try:
            self.consumer.commit_async(offsets)
        except KafkaError as exc:  # advisory only: PostgreSQL holds the real offsets
            log.debug("Kafka offset commit failed: %s", exc)

    def rewind(self, first_offsets: dict[int, int]) -> None:
        """Seek back to where dropped, unflushed state began, so that it is read again."""
        assert self.consumer is not None
        assignment = self.consumer.assignment()
        for partition, offset in first_offsets.items():
            tp = TopicPartition(self.topic, partition)
            if tp in assignment:
                self.consumer.seek(tp, offset)

    def lag(self, read_up_to: dict[int, int]) -> int | None:
        """Messages behind the partition ends, from the high watermarks of recent fetches
        (`read_up_to`: next offsets of what is pending, over what is stored); None until
        every assigned partition has been fetched."""
        lags = self._lags(read_up_to)
        return None if None in lags else sum(lags)  # type: ignore[arg-type]

    def known_lag(self, read_up_to: dict[int, int]) -> int:
        """The same over the partitions fetched so far (a busy partition is known long
        before an idle one)."""
        return sum(lag for lag in self._lags(read_up_to) if lag is not None)

    def _lags(self, read_up_to: dict[int, int]) -> list[int | None]:
        assert self.consumer is not None
        lags: list[int | None] = []
        for tp in self.consumer.assignment():
            highwater = self.consumer.highwater(tp)
            position = read_up_to.get(tp.partition)
            if position is None:
                position = self.stored.get(tp.partition)
            if highwater is None:
                lags.append(None)
            else:
                lags.append(max(0, highwater - position) if position is not None else highwater)
        return lags

    def pause_all(self) -> None:
        assert self.consumer is not None
        self.consumer.pause(*self.consumer.assignment())

    def resume_all(self) -> None:
        assert self.consumer is not None
        self.consumer.resume(*self.consumer.assignment())
