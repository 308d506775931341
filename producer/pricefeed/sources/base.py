"""What every source promises the producer's main loop: pure, no I/O.

A source drives its own pace and hands events to the sink (as a Quix Streams source runs its
own loop): `Source.run(sink, stop)` publishes until `stop` is set or it has nothing more.
There are two kinds, both run as a `Source`:

- a *poll source* (`PollSource`: Binance's ticker, the simulated walk) is asked for one
  tick's events at a time; `polling.FixedRatePoller` asks it on the fixed-rate clock, and
  retries a `PollFailed` tick as the failure says;
- a *streaming source* (the replay of files) implements `run` itself and hands events over
  as fast as the sink takes them (or at a pace of its own).

`registry.SOURCES` maps each `--source` name to the factory that builds its Source.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from btcpipe.contract import PriceEvent
    from pricefeed.sources.ticker import Sequencer
    from pricefeed.kafka_sink.sink import KafkaSink


class SourceError(Exception):
    """A permanent failure of a source (a bad file, say), in one sentence: retrying cannot
    help, so the producer stops with exit 2."""


class PollFailed(Exception):
    """A poll that gave no events. The clock polls again at its first tick after
    `retry_after` seconds (None: after the next backoff delay), and logs `explain(...)`."""

    retry_after: float | None = None
    level = logging.WARNING

    def explain(self, then: str) -> str:
        """The log line; `then` says when the next poll comes ("next poll in 4.0 s")."""
        return f"{self}; {then}"


class Source(Protocol):
    """Anything `--source` can name."""

    @property
    def echoes_each_event(self) -> bool:
        """Whether the sink logs one `Produced:` line per acknowledged event (few events)."""
        ...

    def run(self, sink: KafkaSink, stop: threading.Event) -> None:
        """Publish until `stop` is set or the source has no more events; raise SourceError
        for a failure that must stop the producer."""
        ...


class PollSource(Protocol):
    """A source asked for the events of one tick (run by polling.FixedRatePoller)."""

    symbols: tuple[str, ...]
    sequencer: Sequencer  # names the source and the run in the start line

    def poll(self) -> list[PriceEvent]:
        """This tick's events; raise a PollFailed subclass when there are none."""
        ...
