"""Runs a reconnecting stream: connect, publish what arrives, and when the stream breaks off
(StreamInterrupted) wait, tending the sink, then connect again; until stopped."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import closing
from typing import Protocol

from btcpipe.backoff import Backoff
from btcpipe.contract import PriceEvent
from pricefeed.sources.base import (
    STALL_WARNING_SECONDS,
    TEND_EVERY_SECONDS,
    Sink,
    StopSignal,
    StreamInterrupted,
    retry_delay,
    wait_tending,
)

log = logging.getLogger("producer")


class StreamConnection(Protocol):
    """One connection of a stream source."""

    def read(self, timeout: float) -> list[PriceEvent]:
        """The events that arrived, in order, waiting at most `timeout` seconds for the first
        ([] if none came); raise StreamInterrupted when the stream broke off."""
        ...

    def close(self) -> None: ...


class StreamSource(Protocol):
    """A source that connects and reads what arrives (a WebSocket, say)."""

    @property
    def label(self) -> str:
        """What it streams, for the start line."""
        ...

    @property
    def echoes_each_event(self) -> bool: ...

    def connect(self) -> StreamConnection:
        """Open the stream where the last connection left off (a source that can catch up
        returns what it missed from the first reads); raise StreamInterrupted if it cannot be
        opened now, SourceError if it never can."""
        ...


class StreamRunner:
    """A stream source as a Source: reconnected after each StreamInterrupted, at the
    failure's retry_after, else after the next delay of `backoff`."""

    def __init__(
        self,
        source: StreamSource,
        backoff: Backoff,
        stall_warning_after: float = STALL_WARNING_SECONDS,
    ) -> None:
        self.source = source
        self.backoff = backoff
        self.echoes_each_event = source.echoes_each_event
        self.stall_warning_after = stall_warning_after

    def run(self, sink: Sink, stop: StopSignal) -> None:
        log.info("Streaming %s", self.source.label)
        run_stream(self.source, sink, self.backoff, stop)


def run_stream(
    source: StreamSource,
    sink: Sink,
    backoff: Backoff,
    stop: StopSignal,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Publish the stream until `stop` is set. After a StreamInterrupted, wait its retry_after
    (else the next backoff delay; the backoff restarts once a connection brings events),
    tending the sink meanwhile, then connect again."""
    while not stop.is_set():
        try:
            publish_connection(source, sink, backoff, stop)
        except StreamInterrupted as exc:
            delay = retry_delay(exc, backoff)
            log.log(exc.level, "%s", exc.explain(f"reconnecting in {delay:.1f} s"))
            if wait_tending(sink, clock() + delay, stop, clock):
                return


def publish_connection(
    source: StreamSource, sink: Sink, backoff: Backoff, stop: StopSignal
) -> None:
    """Publish what one connection brings until `stop` is set (returns) or it breaks off
    (raises StreamInterrupted); the connection is closed either way."""
    with closing(source.connect()) as connection:
        flowing = False
        while not stop.is_set():
            events = connection.read(TEND_EVERY_SECONDS)  # a quiet stream: tend, every second
            if not events:
                sink.tend()
                continue
            sink.publish(events)
            sink.wait_for_room()  # a catch-up comes in a fast loop
            if not flowing:
                backoff.reset()  # it works again: the next failure starts from the first delay
                flowing = True
