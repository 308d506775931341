"""`--source replay FILE...`: publish history from Binance public-data files, in file order,
at N times real time (`--speed N`) or as fast as the broker takes it (`--speed max`): the
streaming source (source.Source)."""

from __future__ import annotations

import itertools
import logging
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING

from btcpipe.contract import PriceEvent
from pricefeed.sources.replay.files import (
    FileContent,
    ReplayFileError,
    ReplayStats,
    read_events,
    scan_content,
)
from pricefeed.sources.replay.ledger import ReplayLedger
from pricefeed.sources.base import SourceError

if TYPE_CHECKING:
    from pricefeed.settings import Settings
    from pricefeed.kafka_sink.sink import KafkaSink

log = logging.getLogger("producer")

CHUNK = 1000  # events handed to the sink at once: bounded memory, few calls
PROGRESS_EVERY_SECONDS = 2.0
NOTE_FLUSH_TIMEOUT = 5.0  # wait this long for acknowledgements before noting progress


@dataclass
class Progress:
    """Events, rate and ETA of a long replay: a live line on a terminal, log lines elsewhere."""

    total: int
    sent: int = 0
    started: float = 0.0
    last_shown: float = 0.0
    on_terminal: bool = False
    skipped: int = 0  # acknowledged in an earlier run, not sent again (--resume)

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.sent / elapsed
        done = self.sent + self.skipped
        left = max(self.total - done, 0)
        eta = f"{left / rate:.0f} s" if rate > 0 else "?"
        share = f"{100 * done / self.total:.0f}%" if self.total else "-"
        skipped = f", {self.skipped:,} skipped (sent before)" if self.skipped else ""
        return (
            f"Replayed {self.sent:,}/~{self.total:,} events ({share}){skipped}, "
            f"{rate:,.0f}/s, ETA {eta}"
        )

    def update(self, sent: int, now: float) -> bool:
        """True when a line was shown (every PROGRESS_EVERY_SECONDS)."""
        self.sent = sent
        if now - self.last_shown < PROGRESS_EVERY_SECONDS:
            return False
        self.last_shown = now
        if self.on_terminal:
            print("\r" + self.line(now), end="", flush=True)
        else:
            log.info(self.line(now))
        return True

    def finish(self, now: float) -> None:
        if self.on_terminal:
            print()
        elapsed = max(now - self.started, 1e-9)
        skipped = f", {self.skipped} skipped (sent before)" if self.skipped else ""
        log.info(
            "Replay done: %d events in %.1f s (%.0f/s)%s",
            self.sent,
            elapsed,
            self.sent / elapsed,
            skipped,
        )


def paced(events: Iterator[PriceEvent], speed: float | None, stop: threading.Event):
    """Yield events no earlier than their event time allows at `speed` x real time."""
    if speed is None:
        yield from events
        return
    first_ms: int | None = None
    started = time.monotonic()
    for event in events:
        if first_ms is None:
            first_ms = event.event_time
        due = started + (event.event_time - first_ms) / 1000 / speed
        delay = due - time.monotonic()
        if delay > 0 and stop.wait(delay):
            return
        yield event


@dataclass
class ReplayFiles:
    """The files, checked, ready to be read: each one's events, line statistics and content."""

    streams: list[Iterator[PriceEvent]]
    stats: dict[Path, ReplayStats]
    contents: dict[Path, FileContent]


class ReplaySource:
    """The replay as a Source. Its progress lines replace one `Produced:` line per event,
    which would be the bottleneck."""

    echoes_each_event = False

    def __init__(self, replay: ReplayFiles, settings: Settings) -> None:
        self.replay = replay
        self.settings = settings

    @classmethod
    def open(cls, settings: Settings) -> ReplaySource:
        """Raises ReplayFileError (a SourceError) for a file that cannot be replayed."""
        return cls(open_replay(settings.replay_files, settings.replay_symbol), settings)

    def run(self, sink: KafkaSink, stop: threading.Event) -> None:
        try:
            run_replay(self.replay, self.settings, sink, stop)
        except ReplayFileError as exc:  # known only at a file's end: nothing valid in it
            raise SourceError(f"Replay stopped: {exc}") from exc


def open_replay(files: tuple[Path, ...], symbol: str | None = None) -> ReplayFiles:
    """Check every file before anything is sent: a bad one stops the replay at the start
    with ReplayFileError's one-sentence reason. `symbol`, if given, is every file's symbol;
    otherwise each file's name says it."""
    stats = {path: ReplayStats() for path in files}
    contents = {path: scan_content(path) for path in files}
    streams = [
        read_events(path, symbol, stats=stats[path], digest=contents[path].digest) for path in files
    ]
    return ReplayFiles(streams, stats, contents)


def run_replay(
    replay: ReplayFiles, settings: Settings, sink: KafkaSink, stop: threading.Event
) -> None:
    """Publish every file in order; raises ReplayFileError if a file turns out to hold no
    valid line (known only at its end)."""
    streams, stats = replay.streams, replay.stats
    speed = "max" if settings.replay_speed is None else f"{settings.replay_speed:g}x"
    total = sum(replay.contents[path].lines for path in settings.replay_files)
    log.info("Replaying %d file(s), ~%d events, at speed %s", len(streams), total, speed)
    now = time.monotonic()
    progress = Progress(total, started=now, last_shown=now, on_terminal=sys.stdout.isatty())
    ledger = ReplayLedger(settings.replay_state_dir, settings.bootstrap_servers, settings.topic)
    sent = 0
    # At a real-time pace, each event is handed over at once; at full speed, in chunks.
    pace = settings.replay_speed
    size = CHUNK if pace is None else 1
    for path, stream in zip(settings.replay_files, streams, strict=True):
        events = resume_point(path, stream, ledger, settings.resume, progress)
        if pace is not None:
            events = paced(events, pace, stop)
        noted = None  # (stream, line) to note once Kafka has acknowledged it
        while chunk := list(islice(events, size)):
            sink.publish(chunk)
            sink.wait_for_room()
            sent += len(chunk)
            noted = (chunk[-1].stream, chunk[-1].seq)
            if progress.update(sent, time.monotonic()):
                note_delivered(ledger, sink, noted, path)
            if stop.is_set():
                break
        note_delivered(ledger, sink, noted, path)
        summary = stats[path].summary(path)
        if summary:
            log.warning("Replay %s", summary)
        if stop.is_set():
            log.info("Replay stopped after %d events", sent)
            break
    progress.sent = sent
    progress.finish(time.monotonic())


def resume_point(
    path: Path,
    events: Iterator[PriceEvent],
    ledger: ReplayLedger,
    resume: bool,
    progress: Progress,
) -> Iterator[PriceEvent]:
    """The file's events, from where an earlier run's acknowledged lines end if `resume`;
    says either way what it knows was sent before."""
    first = next(events, None)
    if first is None:
        return iter(())
    events = itertools.chain([first], events)
    before = ledger.delivered(first.stream)
    if before is None:
        log.info("Replaying %s as stream %s", path.name, first.stream)
        return events
    if not resume:
        log.info(
            "%s was sent to %s before (lines up to %d, acknowledged %s): sending it again; the "
            "consumer counts each line once (--resume skips them)",
            path.name,
            ledger.topic,
            before.line,
            before.at,
        )
        return events
    log.info(
        "Skipping lines up to %d of %s: Kafka acknowledged them in an earlier run (%s)",
        before.line,
        path.name,
        before.at,
    )
    return _skip_through(events, before.line, progress)


def _skip_through(
    events: Iterator[PriceEvent], line: int, progress: Progress
) -> Iterator[PriceEvent]:
    for event in events:
        if event.seq <= line:
            progress.skipped += 1
        else:
            yield event


def note_delivered(
    ledger: ReplayLedger, sink: KafkaSink, sent: tuple[str, int] | None, path: Path
) -> None:
    """Note the last line sent once Kafka has acknowledged everything sent so far."""
    if sent is None:
        return
    sink.flush(NOTE_FLUSH_TIMEOUT)
    if sink.backlog() == 0:
        ledger.note(sent[0], sent[1], path.name)
