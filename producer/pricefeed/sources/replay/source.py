"""`--source replay FILE...`: publish history from Binance public-data files, in file order,
at N times real time (`--speed N`) or as fast as the broker takes it (`--speed max`). A
Source that runs its own loop: it hands events over as fast as the sink takes them."""

from __future__ import annotations

import itertools
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from btcpipe.contract import PriceEvent, replay_stream
from pricefeed.sources.base import STALL_WARNING_SECONDS, Sink, SourceError, StopSignal
from pricefeed.sources.replay.files import (
    FileContent,
    ReplayFileError,
    ReplayStats,
    read_events,
    scan_content,
)
from pricefeed.sources.replay.ledger import ReplayLedger

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


def paced(
    events: Iterator[PriceEvent], speed: float | None, stop: StopSignal
) -> Iterator[PriceEvent]:
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

    paths: tuple[Path, ...]  # in replay order, as given
    streams: list[Iterator[PriceEvent]]
    stats: dict[Path, ReplayStats]
    contents: dict[Path, FileContent]


class ReplaySource:
    """The replay as a Source. Its progress lines replace one `Produced:` line per event,
    which would be the bottleneck."""

    echoes_each_event = False
    stall_warning_after = STALL_WARNING_SECONDS

    def __init__(
        self,
        files: ReplayFiles,
        ledger: ReplayLedger,
        speed: float | None = None,
        resume: bool = False,
    ) -> None:
        self.files = files
        self.ledger = ledger
        self.speed = speed  # times real time; None: as fast as the broker takes it
        self.resume = resume  # skip the lines the ledger says Kafka acknowledged before

    def run(self, sink: Sink, stop: StopSignal) -> None:
        try:
            run_replay(self.files, self.ledger, sink, stop, self.speed, self.resume)
        except ReplayFileError as exc:  # known only at a file's end: nothing valid in it
            raise SourceError(f"Replay stopped: {exc}") from exc


def open_replay(files: tuple[Path, ...], symbol: str | None = None) -> ReplayFiles:
    """Check every file before anything is sent: a bad one stops the replay at the start
    with ReplayFileError's one-sentence reason. `symbol`, if given, is every file's symbol;
    otherwise each file's name says it."""
    stats = {path: ReplayStats() for path in files}
    contents = {path: scan_content(path) for path in files}
    streams: list[Iterator[PriceEvent]] = [
        read_events(path, symbol, stats=stats[path], digest=contents[path].digest) for path in files
    ]
    return ReplayFiles(files, streams, stats, contents)


def run_replay(
    replay: ReplayFiles,
    ledger: ReplayLedger,
    sink: Sink,
    stop: StopSignal,
    speed: float | None = None,
    resume: bool = False,
) -> None:
    """Publish every file in order, at `speed` times real time (None: as fast as the sink
    takes them), from where the ledger's acknowledged lines end if `resume`; raises
    ReplayFileError if a file turns out to hold no valid line (known only at its end)."""
    streams, stats = replay.streams, replay.stats
    shown_speed = "max" if speed is None else f"{speed:g}x"
    total = sum(replay.contents[path].lines for path in replay.paths)
    log.info("Replaying %d file(s), ~%d events, at speed %s", len(streams), total, shown_speed)
    now = time.monotonic()
    progress = Progress(total, started=now, last_shown=now, on_terminal=sys.stdout.isatty())
    sent = 0
    # At a real-time pace, each event is handed over at once; at full speed, in chunks.
    size = CHUNK if speed is None else 1
    for path, stream in zip(replay.paths, streams, strict=True):
        read = stats[path]
        events = resume_point(path, stream, ledger, resume, progress, replay.contents[path], read)
        if speed is not None:
            events = paced(events, speed, stop)
        noted = None  # (the file's key, line) to note once Kafka has acknowledged it
        while chunk := list(islice(events, size)):
            sink.publish(chunk)
            sink.wait_for_room()
            sent += len(chunk)
            noted = (file_key(chunk[-1].symbol, replay.contents[path]), read.line)
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


def file_key(symbol: str, content: FileContent) -> str:
    """What the ledger knows a file by: its content (the stream its price samples travel in;
    trades and candles travel in the exchange's own streams)."""
    return replay_stream(symbol, content.digest)


def resume_point(
    path: Path,
    events: Iterator[PriceEvent],
    ledger: ReplayLedger,
    resume: bool,
    progress: Progress,
    content: FileContent,
    read: ReplayStats,
) -> Iterator[PriceEvent]:
    """The file's events, from where an earlier run's acknowledged lines end if `resume`;
    says either way what it knows was sent before."""
    first = next(events, None)
    if first is None:
        return iter(())
    events = itertools.chain([first], events)
    before = ledger.delivered(file_key(first.symbol, content))
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
    return _skip_through(events, before.line, progress, read)


def _skip_through(
    events: Iterator[PriceEvent], line: int, progress: Progress, read: ReplayStats
) -> Iterator[PriceEvent]:
    """The events after `line`: `read.line` is the line of each as it comes (the file's
    reader sets it as it hands the event out)."""
    for event in events:
        if read.line <= line:
            progress.skipped += 1
        else:
            yield event


def note_delivered(
    ledger: ReplayLedger, sink: Sink, sent: tuple[str, int] | None, path: Path
) -> None:
    """Note the last line sent once Kafka has acknowledged everything sent so far (the sink's
    contract: flush, then a backlog of 0)."""
    if sent is None:
        return
    sink.flush(NOTE_FLUSH_TIMEOUT)
    if sink.backlog() == 0:
        ledger.note(sent[0], sent[1], path.name)
