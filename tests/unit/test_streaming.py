"""The reconnecting stream's runner on a simulated clock, with an in-memory sink: what it
publishes, how long it waits before reconnecting, that it tends the sink meanwhile, and that
it stops promptly."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pytest

from btcpipe.backoff import Backoff
from btcpipe.contract import PriceEvent, make_event
from pricefeed.sources.base import Sink, SourceError, StreamInterrupted
from pricefeed.sources.streaming import StreamRunner, run_stream
from tests.producer_parts import RUN, T0, Highest


class Clock:
    """Simulated seconds; also the producer's stop signal, which comes at `stop_at`."""

    def __init__(self, stop_at: float = float("inf")) -> None:
        self.now = 0.0
        self.stop_at = stop_at

    def __call__(self) -> float:
        return self.now

    def is_set(self) -> bool:
        return self.now >= self.stop_at

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None and timeout >= 0
        self.now = min(self.now + timeout, max(self.now, self.stop_at))
        return self.is_set()


@dataclass
class MemorySink:
    """A Sink that keeps what it is given, and when it was tended (publishing tends too)."""

    clock: Clock
    published: list[PriceEvent] = field(default_factory=list)
    tended_at: list[float] = field(default_factory=list)
    published_at: list[float] = field(default_factory=list)
    room_asked: int = 0

    def publish(self, events: Iterable[PriceEvent]) -> None:
        self.published.extend(events)
        self.published_at.append(self.clock.now)

    def tend(self) -> None:
        self.tended_at.append(self.clock.now)

    def wait_for_room(self) -> None:
        self.room_asked += 1

    def flush(self, timeout: float) -> None:
        """Everything is delivered at once."""

    def backlog(self) -> int:
        return 0


Read = list[PriceEvent] | Exception  # one read of a connection: its events, or what it raises


class ScriptedConnection:
    """Reads as scripted; a quiet read ([]) takes its whole timeout (a socket's read does not
    see the stop signal). Once the script is done, the stream stays quiet."""

    def __init__(self, clock: Clock, reads: Sequence[Read]) -> None:
        self.clock = clock
        self.reads = list(reads)
        self.closed = False

    def read(self, timeout: float) -> list[PriceEvent]:
        assert not self.closed
        step: Read = self.reads.pop(0) if self.reads else []
        if isinstance(step, Exception):
            raise step
        if not step:
            self.clock.now += timeout
        return step

    def close(self) -> None:
        self.closed = True


class ScriptedSource:
    """Each connect takes the next script: an exception to raise, or a connection's reads."""

    label = "scripted prices"
    echoes_each_event = False

    def __init__(self, clock: Clock, connections: Sequence[Sequence[Read] | Exception]) -> None:
        self.clock = clock
        self.scripts = list(connections)
        self.connected_at: list[float] = []
        self.connections: list[ScriptedConnection] = []

    def connect(self) -> ScriptedConnection:
        self.connected_at.append(self.clock.now)
        script = self.scripts.pop(0) if self.scripts else []
        if isinstance(script, Exception):
            raise script
        self.connections.append(ScriptedConnection(self.clock, script))
        return self.connections[-1]


def events(*seqs: int) -> list[PriceEvent]:
    return [make_event("BTCUSDT", "1.5", T0 + seq, "binance", RUN, seq) for seq in seqs]


def run(
    connections: Sequence[Sequence[Read] | Exception], stop_at: float, base_delay: float = 4.0
) -> tuple[ScriptedSource, MemorySink, Clock]:
    clock = Clock(stop_at)
    source, sink = ScriptedSource(clock, connections), MemorySink(clock)
    run_stream(source, sink, Backoff(base_delay, 60.0, Highest()), clock, clock=clock)
    return source, sink, clock


def test_a_broken_stream_is_reconnected_after_the_backoff_delay_tending_meanwhile(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cut = StreamInterrupted("connection reset by peer")
    with caplog.at_level(logging.INFO, logger="producer"):
        source, sink, _ = run([[events(1, 2), [], cut], [events(3)]], stop_at=20.0)
    assert sink.published == events(1, 2, 3)  # in order, each once
    assert source.connected_at == [0.0, 5.0]  # cut at 1.0 (after a quiet second), then 4 s
    assert source.connections[0].closed
    assert "connection reset by peer; reconnecting in 4.0 s" in caplog.text
    waited = [t for t in sink.tended_at if 1.0 < t < 5.0]
    assert waited == [2.0, 3.0, 4.0]  # every second of the wait
    upkeep = sorted(sink.tended_at + sink.published_at)
    assert upkeep[0] == 0.0 and all(b - a <= 1.0 for a, b in itertools.pairwise(upkeep))
    assert sink.room_asked == 2  # after each publish


def test_a_failures_retry_after_is_waited_instead_of_the_backoff() -> None:
    closing = StreamInterrupted("the server is closing")
    closing.retry_after = 0.0
    source, sink, _ = run([[events(1), closing], [events(2), closing], [events(3)]], 10.0)
    assert source.connected_at == [0.0, 0.0, 0.0]  # at once, and no backoff used up
    assert sink.published == events(1, 2, 3)


def test_the_backoff_grows_while_connects_fail_and_restarts_once_events_flow() -> None:
    refused = StreamInterrupted("connection refused")
    script: list[Sequence[Read] | Exception] = [refused, refused, refused, [events(1), refused]]
    source, sink, _ = run([*script, refused], stop_at=100.0, base_delay=1.0)
    # Delays of 1, 2, 4 s (the upper end of each backoff step), then events: 1 s again.
    assert source.connected_at[:5] == [0.0, 1.0, 3.0, 7.0, 8.0]
    assert sink.published == events(1)


def test_a_stop_during_the_wait_ends_it_at_once_without_reconnecting() -> None:
    source, _, clock = run([[StreamInterrupted("cut")]], stop_at=2.5, base_delay=30.0)
    assert source.connected_at == [0.0]
    assert clock.now == 2.5


def test_a_stop_while_the_stream_is_quiet_ends_within_a_read() -> None:
    source, sink, clock = run([[[], [], [], [], []]], stop_at=3.5)
    assert clock.now == 4.0  # the read under way, at most a second, then stopped
    assert source.connections[0].closed
    assert sink.tended_at == [1.0, 2.0, 3.0, 4.0]  # tended after each quiet second


def test_a_permanent_failure_stops_the_source_and_closes_its_connection() -> None:
    with pytest.raises(SourceError, match="bad credentials"):
        run([SourceError("bad credentials")], stop_at=10.0)
    clock = Clock(10.0)
    source = ScriptedSource(clock, [[events(1), SourceError("undecodable message")]])
    sink = MemorySink(clock)
    with pytest.raises(SourceError, match="undecodable"):
        run_stream(source, sink, Backoff(1.0, 60.0), clock, clock=clock)
    assert source.connections[0].closed
    assert sink.published == events(1)


def test_the_runner_is_a_source_that_says_what_it_streams(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock(stop_at=1.0)
    source = ScriptedSource(clock, [[events(1)]])
    runner = StreamRunner(source, Backoff(1.0, 60.0))
    sink: Sink = MemorySink(clock)
    with caplog.at_level(logging.INFO, logger="producer"):
        runner.run(sink, clock)
    assert "Streaming scripted prices" in caplog.text
    assert runner.echoes_each_event is False
    assert runner.stall_warning_after > 0
