"""Every source the producer can run, by its `--source` name: the one place a new source is
added (its module, one line here, its test, its README row)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pricefeed.sources.ticker import BinanceSource, SimulatedSource
from pricefeed.sources.polling import FixedRatePoller
from pricefeed.sources.replay.source import ReplaySource
from pricefeed.sources.base import PollSource, Source

if TYPE_CHECKING:
    from pricefeed.settings import Settings

SourceFactory = Callable[["Settings"], Source]


def polled(make: Callable[[Settings], PollSource]) -> SourceFactory:
    """The factory of a poll source, run on the fixed-rate clock."""
    return lambda settings: FixedRatePoller(make(settings), settings)


@dataclass(frozen=True)
class Registered:
    open: SourceFactory  # may raise SourceError: the producer stops with exit 2
    note: str = ""  # a few words for --help


SOURCES: dict[str, Registered] = {
    "binance": Registered(polled(BinanceSource.from_settings)),
    "simulated": Registered(polled(SimulatedSource.from_settings), "seeded random walk"),
    "replay": Registered(ReplaySource.open),
}
SOURCE_NAMES = tuple(SOURCES)


def sources_help() -> str:
    """'binance, simulated (seeded random walk) or replay'."""
    named = [f"{name} ({entry.note})" if entry.note else name for name, entry in SOURCES.items()]
    return f"{', '.join(named[:-1])} or {named[-1]}"


def open_source(settings: Settings) -> Source:
    """The source `settings.source` names, ready to run; raises SourceError (bad input)."""
    return SOURCES[settings.source].open(settings)
