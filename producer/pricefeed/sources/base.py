"""The source seam: what a source promises the producer, what it may count on from the sink,
and the failures its runner retries. Pure: protocols and exceptions, no I/O.

A source drives its own pace and hands events to the sink (as a Quix Streams source runs its
own loop): `Source.run(sink, stop)` publishes until `stop` is set or it has nothing more.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Protocol, Self

from btcpipe.backoff import Backoff
from btcpipe.contract import PriceEvent

TEND_EVERY_SECONDS = 1.0  # the sink's upkeep, while a source is not publishing
# How long Kafka may acknowledge nothing, while events wait, before the sink says it stalled,
# for a source whose events flow all the time (a poll source allows a couple of its ticks).
STALL_WARNING_SECONDS = 20.0


class Sink(Protocol):
    """Where a source hands its events (the producer's is kafka_sink.KafkaSink). The whole
    contract, what a source may count on and what it owes:

    - `publish(events)` sends the events after everything published before, in that order;
      per symbol (one key, so one partition) the topic holds them in publish order. It does
      not wait for acknowledgements and never raises for a Kafka failure; while Kafka is away
      a call may take a few seconds (a full client buffer, or a probe for a new client), never
      the length of the outage. One thread publishes: the source's `run`.
    - `tend()` is the sink's upkeep (warn of a stall, retire a stalled client, send what waits
      once Kafka answers again). A source calls it at least once a second whenever it is not
      publishing: while it waits for its next poll, while its stream is quiet, while it waits
      to reconnect (`wait_tending` does so). Publishing tends too.
    - `wait_for_room()` blocks, tending, while too many events wait to be handed to Kafka, and
      returns at once otherwise, or as soon as the producer is stopped. A source that publishes
      in a fast loop (a replay, a catch-up after a gap) calls it after each publish: it then
      reads no faster than Kafka takes it, and its memory stays bounded through an outage.
    - `flush(timeout)` waits up to `timeout` seconds for acknowledgements; `backlog()` then
      says how many events published so far Kafka has not acknowledged (waiting or sent). Only
      when it is 0 are they all durably in Kafka: a source notes its progress anywhere that
      outlives the process (the replay's ledger) only after `flush` and `backlog() == 0`.
    - When Kafka is down, hung or unreachable, the sink takes care of it: `publish` keeps
      taking events, which wait in memory in order; the sink warns, makes a new client as soon
      as Kafka answers, and sends every event Kafka did not acknowledge again, in its original
      order, before anything newer. A source never publishes an event twice and needs to know
      nothing of the outage, except that `backlog()` grows and `wait_for_room()` may block.
      Events still unacknowledged when the producer stops are lost, and said (exit 1).
    """

    def publish(self, events: Iterable[PriceEvent]) -> None: ...

    def tend(self) -> None: ...

    def wait_for_room(self) -> None: ...

    def flush(self, timeout: float) -> None: ...

    def backlog(self) -> int: ...


class StopSignal(Protocol):
    """How a running source learns that the producer is stopping (a threading.Event)."""

    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


class Source(Protocol):
    """Anything `--source` can name (sources.registry builds it from the settings)."""

    @property
    def echoes_each_event(self) -> bool:
        """Whether the sink logs one `Produced:` line per acknowledged event (few events)."""
        ...

    @property
    def stall_warning_after(self) -> float:
        """Seconds without an acknowledgement, while events wait, before the sink warns that
        Kafka stalled: longer than the source's own silences."""
        ...

    def run(self, sink: Sink, stop: StopSignal) -> None:
        """Publish until `stop` is set or the source has no more events; raise SourceError
        for a failure that must stop the producer."""
        ...


class SourceError(Exception):
    """A permanent failure of a source (a bad file, say), in one sentence: retrying cannot
    help, so the producer stops with exit 2."""


class RetryReason(Protocol):
    """An edge's own account of a failure that may pass (binance.rest.BinanceError): when to
    try again, and how to say it."""

    @property
    def retry_after(self) -> float | None: ...

    @property
    def level(self) -> int: ...

    def explain(self, then: str) -> str: ...


class Retryable(Exception):
    """A failure its runner retries: after `retry_after` seconds (None: after the next backoff
    delay), logging `explain(...)` at `level`."""

    retry_after: float | None = None
    level: int = logging.WARNING
    reason: RetryReason | None = None  # the edge's failure this one stands for (`because`)

    def explain(self, then: str) -> str:
        """The log line; `then` says what comes next, and when ("next poll in 4.0 s")."""
        if self.reason is not None:
            return self.reason.explain(then)
        return f"{self}; {then}"

    @classmethod
    def because(cls, reason: RetryReason) -> Self:
        """This failure, timed and told as the edge's `reason` says (raise it `from` it)."""
        failure = cls(str(reason))
        failure.reason, failure.retry_after, failure.level = (
            reason,
            reason.retry_after,
            reason.level,
        )
        return failure


class PollFailed(Retryable):
    """A poll that gave no events: the fixed-rate clock polls again at its first tick after
    the delay (polling.FixedRatePoller)."""


class StreamInterrupted(Retryable):
    """A stream that broke off or could not be opened (a cut connection, a server closing it,
    a refused connect, a failed catch-up request): its runner connects again after the delay
    (streaming.StreamRunner); retry_after 0 reconnects at once (a server that said it closes)."""


def retry_delay(failure: Retryable, backoff: Backoff) -> float:
    """The least wait before trying again: the failure's own, else the next backoff delay."""
    return backoff.next_delay() if failure.retry_after is None else failure.retry_after


def wait_tending(sink: Sink, due: float, stop: StopSignal, clock: Callable[[], float]) -> bool:
    """Wait until `due` (on `clock`), tending the sink every second meanwhile (so that a
    stalled Kafka client is replaced within a second, not a wait later); True if stopped."""
    while True:
        left = due - clock()
        if stop.wait(max(0.0, min(TEND_EVERY_SECONDS, left))):
            return True
        if left <= TEND_EVERY_SECONDS:
            return False
        sink.tend()
