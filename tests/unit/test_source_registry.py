"""The source registry: the --source names, their help, and the source each opens."""

from __future__ import annotations

from pathlib import Path

import pytest

from btcpipe import contract
from pricefeed.binance.rest import ALL_SYMBOLS
from pricefeed.settings import Settings, build_parser
from pricefeed.sources.ticker import (
    BinanceSource,
    SimulatedSource,
)
from pricefeed.sources.polling import FixedRatePoller
from pricefeed.sources.registry import SOURCE_NAMES, open_source, sources_help
from pricefeed.sources.replay.source import ReplaySource
from pricefeed.sources.base import SourceError


def test_every_runnable_source_is_one_the_contract_admits() -> None:
    assert set(SOURCE_NAMES) == set(contract.SOURCES)


def test_help_names_every_registered_source() -> None:
    assert sources_help() == "binance, simulated (seeded random walk) or replay"
    help_text = " ".join(build_parser().format_help().split())
    assert all(name in help_text for name in SOURCE_NAMES)


@pytest.mark.parametrize(
    ("name", "runs", "echoes"),
    [("binance", BinanceSource, True), ("simulated", SimulatedSource, True)],
)
def test_a_poll_source_runs_on_the_fixed_rate_clock(name: str, runs: type, echoes: bool) -> None:
    source = open_source(Settings(source=name, symbols=("BTCUSDT", "ETHUSDT")))
    assert isinstance(source, FixedRatePoller)
    assert isinstance(source.source, runs)
    assert source.source.symbols == ("BTCUSDT", "ETHUSDT")
    assert source.source.sequencer.source == name  # the start line and the events say it
    assert source.echoes_each_event is echoes


def test_many_symbols_are_summarised_per_tick_not_echoed_per_price() -> None:
    many = tuple(f"S{i}USDT" for i in range(21))
    assert open_source(Settings(source="simulated", symbols=many)).echoes_each_event is False
    assert open_source(Settings(source="binance", symbols=ALL_SYMBOLS)).echoes_each_event is False


def test_the_replay_source_checks_its_files_when_opened(tmp_path: Path) -> None:
    good = tmp_path / "BTCUSDT-aggTrades-2026-01-01.csv"
    good.write_text(
        "1,87648.21000000,0.08185000,5723703861,5723703861,1767225600039409,True,True\n"
    )
    source = open_source(Settings(source="replay", replay_files=(good,)))
    assert isinstance(source, ReplaySource)
    assert source.echoes_each_event is False  # progress lines instead: one per event is slow
    with pytest.raises(SourceError, match="does not exist"):
        open_source(Settings(source="replay", replay_files=(tmp_path / "missing.csv",)))
