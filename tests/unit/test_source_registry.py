"""The source registry: the --source names, their help, the source each builds, and the options
each one says it uses (which decide what is refused at start)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from btcpipe import contract
from pricefeed.settings import ALL_SYMBOLS, OPTIONS, Settings, build_parser, sources_help
from pricefeed.sources.base import SourceError
from pricefeed.sources.polling import FixedRatePoller
from pricefeed.sources.registry import (
    EVERY_SOURCE,
    SOURCE_NAMES,
    SOURCES,
    emitted_source,
    open_source,
)
from pricefeed.sources.replay.source import ReplaySource
from pricefeed.sources.simulated import SimulatedSource
from pricefeed.sources.streaming import StreamRunner
from pricefeed.sources.ticker import TickerSource
from pricefeed.sources.trades.source import TradeStreamSource

FIELDS = {f.name for f in fields(Settings)}


def test_every_runnable_source_is_one_the_contract_admits() -> None:
    assert {emitted_source(name) for name in SOURCE_NAMES} == set(contract.SOURCES)
    assert emitted_source("binance-trades") == "binance"  # the exchange's own trades


HELP = (
    "binance, binance-trades (every aggregate trade, over WebSocket), simulated (seeded "
    "random walk) or replay"
)


def test_help_names_every_registered_source() -> None:
    assert sources_help(SOURCES) == HELP
    help_text = " ".join(build_parser(SOURCES).format_help().split())
    assert f"--source PRODUCER_SOURCE {HELP}" in help_text


@pytest.mark.parametrize(
    ("name", "runs", "echoes"),
    [("binance", TickerSource, True), ("simulated", SimulatedSource, True)],
)
def test_a_poll_source_runs_on_the_fixed_rate_clock(name: str, runs: type, echoes: bool) -> None:
    source = open_source(Settings(source=name, symbols=("BTCUSDT", "ETHUSDT"), poll_interval=4))
    assert isinstance(source, FixedRatePoller)
    assert isinstance(source.source, runs)
    assert source.source.polls_for == "BTCUSDT, ETHUSDT"
    assert source.source.sequencer.source == name  # the start line and the events say it
    assert source.echoes_each_event is echoes
    assert (source.timing.interval, source.stall_warning_after) == (4, 8)  # two silent ticks


def test_the_trade_source_streams_from_the_settings_urls_and_reconnects() -> None:
    settings = Settings(
        source="binance-trades",
        symbols=("BTCUSDT", "ETHUSDT"),
        binance_base_url="http://rest.test",
        binance_ws_url="ws://ws.test:9443",
        trades_since=1_767_225_600_000,
        http_timeout=3.0,
        topic="trades",
    )
    runner = open_source(settings)
    assert isinstance(runner, StreamRunner)
    source = runner.source
    assert isinstance(source, TradeStreamSource)
    assert (source.symbols, source.since_ms, source.ws_url) == (
        ("BTCUSDT", "ETHUSDT"), 1_767_225_600_000, "ws://ws.test:9443"
    )  # fmt: skip
    assert (source.client.base_url, source.client.timeout, source.timeout) == (
        "http://rest.test", 3.0, 3.0
    )  # fmt: skip
    assert runner.echoes_each_event is False  # a Trades: line every 10 s instead
    every_pair = open_source(Settings(source="binance-trades", symbols=ALL_SYMBOLS))
    assert isinstance(every_pair, StreamRunner)
    assert "every pair Binance lists" in every_pair.source.label


def test_many_symbols_are_summarised_per_tick_not_echoed_per_price() -> None:
    many = tuple(f"S{i}USDT" for i in range(21))
    assert open_source(Settings(source="simulated", symbols=many)).echoes_each_event is False
    every_pair = open_source(Settings(source="binance", symbols=ALL_SYMBOLS))
    assert every_pair.echoes_each_event is False
    assert isinstance(every_pair, FixedRatePoller)
    assert every_pair.source.polls_for == "every pair Binance lists"


def test_the_replay_source_checks_its_files_when_opened(tmp_path: Path) -> None:
    good = tmp_path / "BTCUSDT-aggTrades-2026-01-01.csv"
    good.write_text(
        "1,87648.21000000,0.08185000,5723703861,5723703861,1767225600039409,True,True\n"
    )
    source = open_source(Settings(source="replay", replay_files=(good,), replay_speed=2.0))
    assert isinstance(source, ReplaySource)
    assert source.echoes_each_event is False  # progress lines instead: one per event is slow
    assert (source.speed, source.resume) == (2.0, False)
    with pytest.raises(SourceError, match="does not exist"):
        open_source(Settings(source="replay", replay_files=(tmp_path / "missing.csv",)))


class ReadFields(Settings):
    """Settings that note which of their fields are read."""

    read: set[str]

    def __getattribute__(self, name: str) -> object:
        if name in FIELDS:
            object.__getattribute__(self, "read").add(name)
        return object.__getattribute__(self, name)


def fields_read_building(name: str, tmp_path: Path) -> set[str]:
    """The Settings fields the registry's factory of `name` reads."""
    data = tmp_path / "BTCUSDT-aggTrades-2026-01-01.csv"
    data.write_text("1,1.5,0.1,1,1,1767225600039409,True,True\n")
    settings = ReadFields(source=name, replay_files=(data,) if name == "replay" else ())
    object.__setattr__(settings, "read", set())
    SOURCES[name].build(settings)
    return settings.read


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_each_source_is_built_from_exactly_the_options_it_says_it_uses(
    name: str, tmp_path: Path
) -> None:
    """What a source declares decides which flags are refused: it must be what it reads. The
    options of every source (Kafka, topic, log level...) are the app's and the sink's."""
    read = fields_read_building(name, tmp_path)
    declared = SOURCES[name].options
    assert read <= declared, f"{name} reads {read - declared} without declaring it"
    assert declared - EVERY_SOURCE <= read, f"{name} declares {declared - read} it never reads"


def test_every_option_is_used_by_some_source_and_the_common_ones_by_all() -> None:
    used = set().union(*(registered.options for registered in SOURCES.values()))
    assert used == FIELDS
    assert {option.field for option in OPTIONS} | {"replay_files", "resume"} == FIELDS
    assert all(registered.options >= EVERY_SOURCE for registered in SOURCES.values())
