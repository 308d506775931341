"""The benchmark compares like with like: its bare producer sends byte for byte what
producer.py sends for the same file, and its ground truth is the windows' own arithmetic."""

from __future__ import annotations

import itertools
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from bench.data import agg_trades, file_windows, tape_trade_totals, write_agg_trades
from bench.throughput import replay_messages, tape_messages, tape_rows
from btcpipe.clock import wall_clock_ms
from pricefeed.sources.replay.files import detect_layout, read_events
from pricefeed.sources.trades.frames import parse_rest_rows
from tests.harness.trade_generator import RandomWalk, append_steps
from tests.harness.trade_tape import Tape

ROOT = Path(__file__).resolve().parents[2]


def test_bare_producer_messages_are_what_producer_py_sends(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSDT-aggTrades-2026-01-01.csv"
    write_agg_trades(path, 5000)
    assert detect_layout(path) == "aggTrades"
    sent = [(e.key(), e.to_json_bytes(), e.event_time) for e in read_events(path)]
    assert replay_messages(path) == sent
    prices = [price for price, _ in agg_trades(path)]
    repeated = sum(a == b for a, b in itertools.pairwise(prices)) / len(prices)
    assert 0.3 < repeated < 0.5  # like Binance's own aggTrades


def test_bare_trade_messages_are_what_the_trade_source_sends() -> None:
    tape, now_ms = Tape("ETHUSDT", "2300.10000000"), wall_clock_ms()
    start_ms = now_ms - now_ms % 300_000 - 299_000  # a second into the window before
    append_steps(tape, RandomWalk(0, "ETHUSDT", "2300.10000000"), 3000, start_ms * 1000)
    parsed = parse_rest_rows("ETHUSDT", [t.binance_row() for t in tape.trades()], now_ms)
    assert parsed is not None and not parsed[1]
    events = [row.event for row in parsed[0] if row.event is not None]
    assert len(events) == len(tape.trades())
    sent = [(e.key(), e.to_json_bytes(), e.event_time) for e in events]
    rows = tape_rows(tape.trades())
    assert tape_messages({"ETHUSDT": rows}) == sent
    ((volume, count),) = tape_trade_totals({"ETHUSDT": rows}).values()  # one burst, one window
    assert volume == sum(Decimal(t.quantity) for t in tape.trades())
    assert count == tape.trades()[-1].last_id - tape.trades()[0].first_id + 1


def test_file_windows_follow_the_window_rules(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSDT-aggTrades-2026-01-01.csv"
    path.write_text(
        "1,3.50000000,1,1,1,1767225600000000,True,True\n"  # window 0, opens
        "2,1.00000000,1,2,2,1767225899999000,True,True\n"  # window 0, its last instant
        "3,2.00000000,1,3,3,1767225900000000,True,True\n"  # window 1
        "4,4.00000000,1,4,4,1767225899999000,True,True\n"  # window 0 again, same time: closes
    )
    start = 1_767_225_600_000
    windows = file_windows(path, "BTCUSDT", [("9", start)])  # a later event at the open time
    first = windows["BTCUSDT", start]
    assert (first.count, first.total) == (4, Decimal("17.5"))
    assert (first.low, first.high) == (Decimal(1), Decimal(9))
    assert (first.open, first.open_ms) == (Decimal("3.5"), start)  # ties: the first opens
    assert (first.close, first.close_ms) == (Decimal(4), start + 299_999)  # the last closes
    assert windows["BTCUSDT", start + 300_000].count == 1


def test_the_bench_imports_the_harness_and_nothing_else_of_the_tests() -> None:
    """The bench runs the scripts against the harness's servers, and needs neither a test
    module nor pytest: what its modules import, transitively, in a fresh interpreter."""
    modules = ["bench.throughput", "bench.identity_cost", "bench.data"]  # quix_peer: optional
    probe = (
        f"import sys, {', '.join(modules)}; "
        "print(' '.join(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('pytest', '_pytest', 'tests'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = result.stdout.split()
    assert "tests.harness" in loaded  # the probe sees the bench's imports
    assert [m for m in loaded if m != "tests" and not m.startswith("tests.harness")] == []
