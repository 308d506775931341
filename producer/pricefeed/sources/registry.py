"""Every source the producer can run, by its `--source` name: the one place a source is added.

Each entry says which Settings fields the source uses (`options`: a flag outside them is
refused at start, settings.py reads them from here) and builds the source from ONLY those
values, so that no source ever sees Settings. Among the options, EVERY_SOURCE are the app's
and its Kafka sink's, which every source runs with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from btcpipe.backoff import Backoff
from pricefeed.binance.rest import BinanceClient
from pricefeed.kafka_tail import TopicTail, TopicUnreadable
from pricefeed.settings import ALL_SYMBOLS, Settings
from pricefeed.sources.base import Source
from pricefeed.sources.polling import FixedRatePoller, PollTiming
from pricefeed.sources.replay.ledger import ReplayLedger
from pricefeed.sources.replay.source import ReplaySource, open_replay
from pricefeed.sources.simulated import SimulatedSource
from pricefeed.sources.streaming import StreamRunner
from pricefeed.sources.ticker import TickerSource
from pricefeed.sources.trades.source import TradeStreamSource

EVERY_SOURCE = frozenset(
    {
        "source",
        "bootstrap_servers",
        "topic",
        "topic_partitions",
        "delivery_timeout_ms",
        "compression",
        "backoff_base",  # the sink's reconnects, and the sources' retries
        "backoff_max",
        "log_level",
    }
)
POLLED = frozenset({"poll_interval", "poll_jitter"})  # the fixed-rate clock's


def poll_timing(settings: Settings) -> PollTiming:
    return PollTiming(
        settings.poll_interval, settings.poll_jitter, settings.backoff_base, settings.backoff_max
    )


def binance_ticker(settings: Settings) -> Source:
    client = BinanceClient(settings.binance_base_url, settings.http_timeout)
    symbols = None if settings.symbols == ALL_SYMBOLS else settings.symbols  # None: every pair
    return FixedRatePoller(TickerSource(client, symbols), poll_timing(settings))


class TradeLog(TopicTail):
    """The topic's tail as the trade source reads it (sources.trades.source.TradeLog)."""

    unavailable = TopicUnreadable


def binance_trades(settings: Settings) -> Source:
    client = BinanceClient(settings.binance_base_url, settings.http_timeout)
    symbols = None if settings.symbols == ALL_SYMBOLS else settings.symbols  # None: every pair
    source = TradeStreamSource(
        client,
        settings.binance_ws_url,
        TradeLog(settings.bootstrap_servers, settings.topic),
        symbols,
        settings.trades_since,
        settings.http_timeout,
        Backoff(settings.backoff_base, settings.backoff_max),
    )
    return StreamRunner(source, Backoff(settings.backoff_base, settings.backoff_max))


def simulated_walk(settings: Settings) -> Source:
    return FixedRatePoller(SimulatedSource(settings.symbols, settings.seed), poll_timing(settings))


def replay(settings: Settings) -> Source:
    """Raises ReplayFileError (a SourceError) for a file that cannot be replayed."""
    files = open_replay(settings.replay_files, settings.replay_symbol)
    ledger = ReplayLedger(settings.replay_state_dir, settings.bootstrap_servers, settings.topic)
    return ReplaySource(files, ledger, settings.replay_speed, settings.resume)


@dataclass(frozen=True)
class Registered:
    build: Callable[[Settings], Source]  # may raise SourceError: the producer stops with exit 2
    options: frozenset[str]  # every Settings field it uses, EVERY_SOURCE among them
    note: str = ""  # a few words for --help
    emits: str = ""  # the contract's `source` of its events; "": its own name


SOURCES: dict[str, Registered] = {
    "binance": Registered(
        binance_ticker, EVERY_SOURCE | POLLED | {"symbols", "binance_base_url", "http_timeout"}
    ),
    "binance-trades": Registered(
        binance_trades,
        EVERY_SOURCE
        | {"symbols", "binance_base_url", "binance_ws_url", "http_timeout", "trades_since"},
        "every aggregate trade, over WebSocket",
        emits="binance",
    ),
    "simulated": Registered(
        simulated_walk, EVERY_SOURCE | POLLED | {"symbols", "seed"}, "seeded random walk"
    ),
    "replay": Registered(
        replay,
        EVERY_SOURCE
        | {"replay_files", "replay_speed", "replay_symbol", "replay_state_dir", "resume"},
    ),
}
SOURCE_NAMES = tuple(SOURCES)


def emitted_source(name: str) -> str:
    """The contract's `source` value of the events `--source name` publishes."""
    return SOURCES[name].emits or name


def open_source(settings: Settings) -> Source:
    """The source `settings.source` names, ready to run; raises SourceError (bad input)."""
    return SOURCES[settings.source].build(settings)
