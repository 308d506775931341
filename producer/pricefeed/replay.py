"""`--source replay FILE...`: publish history from Binance public-data files, in file order,
at N times real time (`--speed N`) or as fast as the broker takes it (`--speed max`)."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pricefeed.config import Settings
from pricefeed.contract import PriceEvent
from pricefeed.replay_files import FileContent, ReplayStats, read_events, scan_content
from pricefeed.sink import KafkaSink

log = logging.getLogger("producer")

CHUNK = 1000  # events handed to the sink at once: bounded memory, few calls
PROGRESS_EVERY_SECONDS = 2.0


@dataclass
class Progress:
    """Events, rate and ETA of a long replay: a live line on a terminal, log lines elsewhere."""

    total: int
    sent: int = 0
    started: float = 0.0
    last_shown: float = 0.0
    on_terminal: bool = False

    def line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.sent / elapsed
        left = max(self.total - self.sent, 0)
        eta = f"{left / rate:.0f} s" if rate > 0 else "?"
        share = f"{100 * self.sent / self.total:.0f}%" if self.total else "-"
        return f"Replayed {self.sent:,}/~{self.total:,} events ({share}), {rate:,.0f}/s, ETA {eta}"

    def update(self, sent: int, now: float) -> None:
        self.sent = sent
        if now - self.last_shown < PROGRESS_EVERY_SECONDS:
            return
        self.last_shown = now
        if self.on_terminal:
            print("\r" + self.line(now), end="", flush=True)
        else:
            log.info(self.line(now))

    def finish(self, now: float) -> None:
        if self.on_terminal:
            print()
        elapsed = max(now - self.started, 1e-9)
        log.info(
            "Replay done: %d events in %.1f s (%.0f/s)", self.sent, elapsed, self.sent / elapsed
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
class Replay:
    files: tuple[Path, ...]
    streams: list[Iterator[PriceEvent]]
    stats: dict[Path, ReplayStats]
    contents: dict[Path, FileContent]


def open_replay(files: tuple[Path, ...]) -> Replay:
    """Check every file before anything is sent: a bad one stops the replay at the start
    with ReplayFileError's one-sentence reason."""
    stats = {path: ReplayStats() for path in files}
    contents = {path: scan_content(path) for path in files}
    streams = [read_events(p, stats=stats[p], digest=contents[p].digest) for p in files]
    return Replay(files, streams, stats, contents)


def run_replay(replay: Replay, settings: Settings, sink: KafkaSink, stop: threading.Event) -> None:
    """Publish every file in order; raises ReplayFileError if a file turns out to hold no
    valid line (known only at its end)."""
    streams, stats = replay.streams, replay.stats
    speed = "max" if settings.replay_speed is None else f"{settings.replay_speed:g}x"
    total = sum(replay.contents[path].lines for path in settings.replay_files)
    log.info("Replaying %d file(s), ~%d events, at speed %s", len(streams), total, speed)
    sink.echo = False  # one line per event would be the bottleneck: progress lines instead
    now = time.monotonic()
    progress = Progress(total, started=now, last_shown=now, on_terminal=sys.stdout.isatty())
    sent = 0
    for path, stream in zip(settings.replay_files, streams, strict=True):
        chunk: list[PriceEvent] = []
        for event in paced(stream, settings.replay_speed, stop):
            chunk.append(event)
            # At a real-time pace, hand each event over at once; at full speed, in chunks.
            if len(chunk) >= CHUNK or settings.replay_speed is not None:
                sink.publish(chunk)
                sent += len(chunk)
                chunk = []
                progress.update(sent, time.monotonic())
            if stop.is_set():
                break
        sink.publish(chunk)
        sent += len(chunk)
        summary = stats[path].summary(path)
        if summary:
            log.warning("Replay %s", summary)
        if stop.is_set():
            log.info("Replay stopped after %d events", sent)
            break
    progress.sent = sent
    progress.finish(time.monotonic())
