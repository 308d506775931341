"""sources/replay/files.py: Binance public-data files (CSV or zip) read as replay price events."""

from __future__ import annotations

import hashlib
import itertools
import zipfile
from itertools import pairwise
from pathlib import Path

import pytest

from btcpipe.clock import wall_clock_ms
from btcpipe.contract import MAX_FUTURE_MS, PriceEvent
from pricefeed.sources.replay.files import (
    MAX_KEPT_ERRORS,
    PLACEHOLDER_ROW,
    ReplayFileError,
    ReplayStats,
    count_lines,
    detect_layout,
    read_events,
    to_epoch_ms,
)
from tests.pipeline import SHARED_DATA, needs_shared_data

KLINES_HEADER = (
    "open_time,open,high,low,close,volume,close_time,quote_volume,count,"
    "taker_buy_volume,taker_buy_quote_volume,ignore"
)
AGG_TRADES_HEADER = (
    "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,"
    "is_buyer_maker,is_best_match"
)


def kline(close_time: int | str, close: str = "7186.68000000", open_time: int | None = None) -> str:
    """A 1-minute candle closing then (its open a minute before, unless given), whose high and
    low hold any close a test gives it."""
    if open_time is None and str(close_time).isdigit():
        closes = int(close_time)
        micro = closes >= 10**15  # µs files: the open is whole milliseconds
        open_time = ((closes // 1000 - 59_999) * 1000) if micro else closes - 59_999
    elif open_time is None:
        open_time = 0
    return (
        f"{open_time},7195.24000000,99999999.00000000,0.00000001,{close},51.64281200,"
        f"{close_time},371233.51835535,493,19.59823000,140888.41428273,0"
    )


_ids = itertools.count(1)  # ids grow along a file, as in Binance's


def agg_trade(
    timestamp: int | str, price: str = "87648.21000000", trade_id: int | None = None
) -> str:
    trade_id = next(_ids) if trade_id is None else trade_id
    return f"{trade_id},{price},0.08185000,5723703861,5723703861,{timestamp},True,True"


def trade(time: int | str, price: str = "87648.21000000", trade_id: int | None = None) -> str:
    trade_id = next(_ids) if trade_id is None else trade_id
    return f"{trade_id},{price},0.00100000,87.64821000,{time},False,True"


def write(folder: Path, name: str, *lines: str, newline: str = "\n") -> Path:
    path = folder / name
    path.write_text("".join(line + newline for line in lines), encoding="utf-8")
    return path


def times_and_prices(events: list[PriceEvent]) -> list[tuple[int, str]]:
    return [(event.event_time, event.price) for event in events]


# --- the real files -----------------------------------------------------------------------------


@needs_shared_data
@pytest.mark.parametrize(
    ("name", "layout", "count", "first", "last"),
    [
        (
            "BTCUSDT-1m-2020-01-01.csv",
            "klines",
            1440,
            (1577836859999, "7186.68000000"),
            (1577923199999, "7200.85000000"),
        ),
        (
            "BTCUSDT-1h-2026-05-08.csv",  # microseconds: close 1778201999999999
            "klines",
            24,
            (1778201999999, "79831.99000000"),
            (1778284799999, "80193.17000000"),
        ),
        (
            "BTCUSDT-aggTrades-2026-01-01.head5000.csv",  # microseconds: 1767225600039409
            "aggTrades",
            5000,
            (1767225600039, "87648.21000000"),
            (1767226339347, "87759.14000000"),
        ),
    ],
)
def test_real_files_give_every_event_with_exact_times_and_prices(
    name: str, layout: str, count: int, first: tuple[int, str], last: tuple[int, str]
) -> None:
    path = SHARED_DATA / name
    stats = ReplayStats()
    events = list(read_events(path, stats=stats))

    assert detect_layout(path) == layout
    assert len(events) == count
    assert (stats.events, stats.skipped, stats.first_errors) == (count, 0, [])
    assert stats.line == count  # the last line handed out
    assert times_and_prices(events[:1] + events[-1:]) == [first, last]
    # 1m candles and aggregate trades are the exchange's own, under its identities; 1h
    # klines tile no 5-minute window: price samples of the file.
    feeds = {(event.feed, event.stream.rsplit("/", 1)[0]) for event in events}
    assert (
        feeds
        == {
            "BTCUSDT-1m-2020-01-01.csv": {("klines", "klines/BTCUSDT")},
            "BTCUSDT-1h-2026-05-08.csv": {("samples", "replay/BTCUSDT")},
            "BTCUSDT-aggTrades-2026-01-01.head5000.csv": {("trades", "aggtrades")},
        }[name]
    )
    assert {(event.symbol, event.source) for event in events} == {("BTCUSDT", "replay")}
    times = [event.event_time for event in events]
    assert times == sorted(times)  # file order, and these files are in time order
    assert count_lines(path) == count


@needs_shared_data
def test_real_klines_close_one_minute_apart() -> None:
    events = list(read_events(SHARED_DATA / "BTCUSDT-1m-2020-01-01.csv"))
    gaps = {later.event_time - earlier.event_time for earlier, later in pairwise(events)}
    assert gaps == {60_000}


# --- time units ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1577836859999", 1577836859999),  # ms, 2020
        ("1735689600000000", 1735689600000),  # µs, 2025-01-01, the switch
        ("1778201999999999", 1778201999999),  # µs floor-divided, not rounded up
        ("1230768000000", 1230768000000),  # ms, first plausible instant (2009-01-01)
        ("1230768000000000", 1230768000000),  # µs, same instant
        ("4102444799999", 4102444799999),  # ms, last plausible instant
    ],
)
def test_to_epoch_ms_reads_milliseconds_and_microseconds(raw: str, expected: int) -> None:
    assert to_epoch_ms(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "1230767999999",  # ms in 2008
        "4102444800000",  # ms in 2100
        "1230767999999999",  # µs in 2008
        "4102444800000000",  # µs in 2100
        "1577836859",  # seconds
        "1767225600039409000",  # nanoseconds
        "100000000000000",  # 1e14: between the two ranges
        "0",
        "",
        "abc",
        "-1577836859999",
        "+1577836859999",
        " 1577836859999",
        "1_577_836_859_999",
        "1577836859999.0",
        "١٥٧٧٨٣٦٨٥٩٩٩٩",  # Arabic-Indic digits: int() would accept them
    ],
)
def test_to_epoch_ms_refuses_what_is_neither_plausible_ms_nor_us(raw: str) -> None:
    with pytest.raises(ValueError, match="time"):
        to_epoch_ms(raw)


def test_milliseconds_and_microseconds_mix_in_one_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "BTCUSDT-1m-2024-12-31.csv",
        kline(1735689599999, "93576.00000000"),
        kline(1735689659999999, "93500.01000000"),
    )
    assert times_and_prices(list(read_events(path))) == [
        (1735689599999, "93576.00000000"),
        (1735689659999, "93500.01000000"),
    ]


# --- layouts ------------------------------------------------------------------------------------


def test_trades_file_gives_one_event_per_trade(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "BTCUSDT-trades-2026-01-01.csv",
        trade(1767225600039409, "87648.21000000", 1),
        trade(1767225600272386, "87648.22000000", 2),
        trade(1767225601000000, "87650.00000000", 3),
    )
    assert detect_layout(path) == "trades"
    assert times_and_prices(list(read_events(path))) == [
        (1767225600039, "87648.21000000"),
        (1767225600272, "87648.22000000"),
        (1767225601000, "87650.00000000"),
    ]


def test_layout_comes_from_columns_when_the_name_does_not_say(tmp_path: Path) -> None:
    klines = write(tmp_path, "prices-a.csv", kline(1577836859999))
    agg_trades = write(tmp_path, "prices-b.csv", agg_trade(1577836859999))
    trades = write(tmp_path, "prices-c.csv", trade(1577836859999))
    assert [detect_layout(path) for path in (klines, agg_trades, trades)] == [
        "klines",
        "aggTrades",
        "trades",
    ]


@pytest.mark.parametrize(
    ("name", "content", "expected_message"),
    [
        ("BTCUSDT-1m-2020-01-01.csv", "1,2,3,4,5\n", "5 column"),
        ("BTCUSDT-1m-2020-01-01.csv", '{"symbol": "BTCUSDT", "price": "1.0"}\n', "2 column"),
        ("BTCUSDT-1m-2020-01-01.csv", '[\n  {"symbol": "BTCUSDT"}\n]\n', "1 column"),
        ("BTCUSDT-aggTrades-2026-01-01.csv", kline(1577836859999) + "\n", "named as aggTrades"),
        ("BTCUSDT-trades-2026-01-01.csv", agg_trade(1577836859999) + "\n", "named as trades"),
        ("BTCUSDT-1h-2026-01-01.csv", trade(1577836859999) + "\n", "named as klines"),
        ("BTCUSDT-1m-2020-01-01.csv", "", "no data lines"),
        ("BTCUSDT-1m-2020-01-01.csv", KLINES_HEADER + "\n\n", "no data lines"),
    ],
)
def test_file_of_another_layout_is_a_clear_error(
    tmp_path: Path, name: str, content: str, expected_message: str
) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    for attempt in (lambda: detect_layout(path), lambda: read_events(path)):
        with pytest.raises(ReplayFileError, match=expected_message) as caught:
            attempt()
        assert name in str(caught.value)


def test_unknown_layout_error_says_what_was_expected(tmp_path: Path) -> None:
    path = write(tmp_path, "BTCUSDT-1m-2020-01-01.csv", "1,2,3,4,5")
    with pytest.raises(ReplayFileError) as caught:
        read_events(path)
    assert "12 columns (klines), 8 (aggTrades) or 7 (trades)" in str(caught.value)


def test_a_truncated_first_line_does_not_hide_the_layout(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "BTCUSDT-1m-2020-01-01.csv",
        "1577836800000,7195.24000000,7196.25",  # cut short, as by a broken download
        kline(1577836919999, "7184.03000000"),
    )
    stats = ReplayStats()
    assert times_and_prices(list(read_events(path, stats=stats))) == [
        (1577836919999, "7184.03000000")
    ]
    assert stats.skipped == 1
    assert stats.first_errors == ["line 1: 3 columns, expected 12"]


def test_binary_garbage_is_a_replay_error_not_a_decode_error(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSDT-1m-2020-01-01.csv"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ReplayFileError, match=r"BTCUSDT-1m-2020-01-01\.csv"):
        list(read_events(path))


# --- header, blank lines, line endings ----------------------------------------------------------


def test_header_row_is_skipped(tmp_path: Path) -> None:
    klines = write(
        tmp_path,
        "BTCUSDT-1m-2020-01-01.csv",
        KLINES_HEADER,
        kline(1577836859999, "7186.68000000"),
        kline(1577836919999, "7184.03000000"),
    )
    agg_trades = write(
        tmp_path,
        "BTCUSDT-aggTrades-2026-01-01.csv",
        AGG_TRADES_HEADER,
        agg_trade(1767225600039409, "87648.21000000"),
    )
    klines_stats, agg_stats = ReplayStats(), ReplayStats()

    assert times_and_prices(list(read_events(klines, stats=klines_stats))) == [
        (1577836859999, "7186.68000000"),
        (1577836919999, "7184.03000000"),
    ]
    assert times_and_prices(list(read_events(agg_trades, stats=agg_stats))) == [
        (1767225600039, "87648.21000000")
    ]
    assert klines_stats.skipped == agg_stats.skipped == 0
    assert detect_layout(klines) == "klines"


def test_only_the_first_line_may_be_a_header(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "BTCUSDT-1m-2020-01-01.csv",
        kline(1577836859999),
        KLINES_HEADER,  # in the middle: a malformed line, not a header
    )
    stats = ReplayStats()
    assert len(list(read_events(path, stats=stats))) == 1
    assert stats.skipped == 1
    assert stats.first_errors[0] == "line 2: column 1 (open time) is not a time: 'open_time'"


def test_blank_lines_crlf_and_a_missing_last_newline_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSDT-1m-2020-01-01.csv"
    path.write_bytes(
        (
            "\r\n" + kline(1577836859999, "7186.68000000") + "\r\n\r\n"
            f"{kline(1577836919999, '7184.03000000')}"
        ).encode()
    )
    stats = ReplayStats()
    assert times_and_prices(list(read_events(path, stats=stats))) == [
        (1577836859999, "7186.68000000"),
        (1577836919999, "7184.03000000"),
    ]
    assert stats.skipped == 0
    assert count_lines(path) == 4


# --- zip files ----------------------------------------------------------------------------------


def make_zip(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return path


def test_zip_is_read_directly(tmp_path: Path) -> None:
    text = "".join(
        kline(close_time, price) + "\n"
        for close_time, price in [(1735689659999999, "93500.01000000"), (1735689719999999, "2")]
    )
    path = make_zip(tmp_path / "BTCUSDT-1m-2025-01-01.zip", {"BTCUSDT-1m-2025-01-01.csv": text})

    assert detect_layout(path) == "klines"
    assert times_and_prices(list(read_events(path))) == [
        (1735689659999, "93500.01000000"),
        (1735689719999, "2"),
    ]
    assert count_lines(path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["BTCUSDT-1m-2025-01-01.zip"]


@needs_shared_data
def test_zip_of_a_real_file_gives_the_same_events_as_the_csv(tmp_path: Path) -> None:
    csv_path = SHARED_DATA / "BTCUSDT-aggTrades-2026-01-01.head5000.csv"
    zip_path = make_zip(
        tmp_path / "BTCUSDT-aggTrades-2026-01-01.zip",
        {"BTCUSDT-aggTrades-2026-01-01.csv": csv_path.read_text()},
    )
    assert list(read_events(zip_path)) == list(read_events(csv_path))


def test_zip_with_the_csv_named_like_it_among_others(tmp_path: Path) -> None:
    path = make_zip(
        tmp_path / "BTCUSDT-1m-2020-01-01.zip",
        {
            "notes.csv": "not,prices\n",
            "BTCUSDT-1m-2020-01-01.csv": kline(1577836859999) + "\n",
        },
    )
    assert times_and_prices(list(read_events(path))) == [(1577836859999, "7186.68000000")]


@pytest.mark.parametrize(
    ("members", "expected_message"),
    [
        ({}, "holds 0 CSV"),
        ({"a.csv": "1\n", "b.csv": "2\n"}, "holds 2 CSV"),
    ],
)
def test_zip_without_one_clear_csv_is_an_error(
    tmp_path: Path, members: dict[str, str], expected_message: str
) -> None:
    path = make_zip(tmp_path / "BTCUSDT-1m-2020-01-01.zip", members)
    with pytest.raises(ReplayFileError, match=expected_message):
        read_events(path)


def test_broken_zip_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSDT-1m-2020-01-01.zip"
    path.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(ReplayFileError, match="not a readable zip"):
        read_events(path)


def test_corrupt_zip_data_is_an_error_when_reached(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSDT-1m-2020-01-01.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("BTCUSDT-1m-2020-01-01.csv", kline(1577836859999, "7186.68000000"))
    data = path.read_bytes()
    path.write_bytes(data.replace(b"7186.68000000", b"7186.68000001"))  # CRC no longer matches
    with pytest.raises(ReplayFileError, match="could not be read"):
        list(read_events(path))


def test_checksum_file_is_refused_with_a_message(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "BTCUSDT-1m-2020-01-01.zip.CHECKSUM",
        f"{'3b' * 32}  BTCUSDT-1m-2020-01-01.zip",  # sha256sum's format
    )
    for attempt in (lambda: read_events(path), lambda: detect_layout(path)):
        with pytest.raises(ReplayFileError, match="checksum file, not price data: skipped"):
            attempt()


# --- malformed lines ----------------------------------------------------------------------------


def test_malformed_lines_are_skipped_counted_and_explained(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "BTCUSDT-1m-2020-01-01.csv",
        kline(1577836859999, "7186.68000000"),  # line 1: good
        kline(1577836919999, "7184.03000000") + ",extra",  # 2: 13 columns
        kline("soon", "7184.03000000"),  # 3: non-numeric time
        kline(1577836979999, "-5.00000000"),  # 4: negative price
        kline(1577837039999, "0.00000000"),  # 5: zero price
        kline(1577837099999, "abc"),  # 6: not a number
        kline(1577837159, "7190.00000000"),  # 7: seconds, implausible
        kline(1577837219999, "NaN"),  # 8: not finite
        kline(1577837279999, "7191.00000000"),  # 9: good
    )
    stats = ReplayStats()
    events = list(read_events(path, stats=stats))

    assert times_and_prices(events) == [
        (1577836859999, "7186.68000000"),
        (1577837279999, "7191.00000000"),
    ]
    assert (stats.events, stats.skipped) == (2, 7)
    assert len(stats.first_errors) == MAX_KEPT_ERRORS
    assert [error.split(":")[0] for error in stats.first_errors] == [
        "line 2",
        "line 3",
        "line 4",
        "line 5",
        "line 6",
    ][:MAX_KEPT_ERRORS]
    assert stats.first_errors[0] == "line 2: 13 columns, expected 12"
    assert "'soon'" in stats.first_errors[1]
    assert "-5.00000000" in stats.first_errors[2]
    assert stats.summary(path) == (
        "skipped 7 malformed lines in BTCUSDT-1m-2020-01-01.csv "
        "(first: line 2: 13 columns, expected 12)"
    )


def test_lines_further_ahead_than_the_consumer_takes_are_skipped(tmp_path: Path) -> None:
    """A time in the future (a broken file, a clock gone wrong) would be dead-lettered by the
    consumer, so the replay does not send it: in milliseconds or microseconds alike."""
    soon = wall_clock_ms() + 60_000  # within MAX_FUTURE_MS: taken
    late = wall_clock_ms() + MAX_FUTURE_MS + 60_000
    path = write(
        tmp_path,
        "BTCUSDT-aggTrades-2026-01-01.csv",
        agg_trade(soon * 1000, "1.5"),  # µs: the hot path
        agg_trade(late * 1000, "1.6"),
        agg_trade(soon, "1.7"),  # ms
        agg_trade(late, "1.8"),
        agg_trade(4_102_444_799_999, "1.9"),  # the last millisecond of 2099
    )
    stats = ReplayStats()
    assert times_and_prices(list(read_events(path, stats=stats))) == [
        (soon, "1.5"),
        (soon, "1.7"),
    ]
    assert stats.skipped == 3
    assert [error.split(":")[0] for error in stats.first_errors] == ["line 2", "line 4", "line 5"]
    assert all("more than 5 minutes in the future" in e for e in stats.first_errors), stats


# One bad value per column a layout defines (the event's own time and price columns are the
# contract's, above): (layout's line maker, column number, bad value).
def fields_of(line: str) -> list[str]:
    return line.split(",")


def with_field(line: str, column: int, value: str) -> str:
    fields = fields_of(line)
    fields[column - 1] = value
    return ",".join(fields)


def good_line(name: str, time: int, number: int = 1) -> str:
    """The `number`th good line of a layout: candles a minute apart, trades with growing ids."""
    kind = name.split("-")[1]
    if kind == "1m":
        return kline(time + (number - 1) * 60_000 * (1000 if time >= 10**15 else 1))
    return {"aggTrades": agg_trade, "trades": trade}[kind](time, trade_id=number)


BAD_FIELDS = [
    # klines: 1 open time, 2 open, 3 high, 4 low, 6 volume, 8 quote volume, 9 trades,
    # 10 taker buy base, 11 taker buy quote (5 close and 7 close time: the event's)
    ("BTCUSDT-1m-2020-01-01.csv", 1, "-1", "open time", "time"),
    ("BTCUSDT-1m-2020-01-01.csv", 2, "abc", "open", "decimal"),
    ("BTCUSDT-1m-2020-01-01.csv", 3, "1e5", "high", "decimal"),
    ("BTCUSDT-1m-2020-01-01.csv", 4, "-7183.1", "low", "decimal"),
    ("BTCUSDT-1m-2020-01-01.csv", 6, "", "volume", "decimal"),
    ("BTCUSDT-1m-2020-01-01.csv", 8, "NaN", "quote asset volume", "decimal"),
    ("BTCUSDT-1m-2020-01-01.csv", 9, "493.5", "number of trades", "count"),
    ("BTCUSDT-1m-2020-01-01.csv", 10, " 19.5", "taker buy base volume", "decimal"),
    ("BTCUSDT-1m-2020-01-01.csv", 11, "1x", "taker buy quote volume", "decimal"),
    # aggTrades: 1 id, 3 quantity, 4 first id, 5 last id, 7 and 8 booleans
    ("BTCUSDT-aggTrades-2020-01-01.csv", 1, "-3", "aggregate trade id", "count"),
    ("BTCUSDT-aggTrades-2020-01-01.csv", 3, "0.1.2", "quantity", "decimal"),
    ("BTCUSDT-aggTrades-2020-01-01.csv", 4, "12a", "first trade id", "trade id"),
    ("BTCUSDT-aggTrades-2020-01-01.csv", 5, "--1", "last trade id", "trade id"),
    ("BTCUSDT-aggTrades-2020-01-01.csv", 7, "yes", "was the buyer the maker", "boolean"),
    ("BTCUSDT-aggTrades-2020-01-01.csv", 8, "1", "was the trade the best price match", "boolean"),
    # trades: 1 id, 3 qty, 4 quote qty, 6 and 7 booleans
    ("BTCUSDT-trades-2020-01-01.csv", 1, "x", "trade id", "count"),
    ("BTCUSDT-trades-2020-01-01.csv", 3, "+0.001", "qty", "decimal"),
    ("BTCUSDT-trades-2020-01-01.csv", 4, "inf", "quote qty", "decimal"),
    ("BTCUSDT-trades-2020-01-01.csv", 6, "Falsy", "is buyer maker", "boolean"),
    ("BTCUSDT-trades-2020-01-01.csv", 7, "", "is best match", "boolean"),
]


@pytest.mark.parametrize(
    ("name", "column", "value", "column_name", "kind"),
    BAD_FIELDS,
    ids=[f"{name.split('-')[1]}-{column}" for name, column, *_ in BAD_FIELDS],
)
@pytest.mark.parametrize("time", [1577836859999, 1577836859999000], ids=["ms", "us"])
def test_a_bad_value_in_any_column_skips_and_counts_the_line(
    tmp_path: Path, name: str, column: int, value: str, column_name: str, kind: str, time: int
) -> None:
    """In milliseconds (the checked path) and microseconds (a replay's hot path) alike."""
    first, bad, third = (good_line(name, time, number) for number in (1, 2, 3))
    path = write(tmp_path, name, first, with_field(bad, column, value), third)
    stats = ReplayStats()
    events = list(read_events(path, stats=stats))
    (tmp_path / "control").mkdir()
    control = write(tmp_path / "control", name, first, third)
    assert events == list(read_events(control, symbol="BTCUSDT"))  # lines 1 and 3
    assert stats.skipped == 1
    assert stats.first_errors == [
        f"line 2: column {column} ({column_name}) is not a {kind}: {value!r}"
    ]


def test_the_values_the_files_hold_pass_every_column_check(tmp_path: Path) -> None:
    """Placeholder ids (-1), lower-case booleans and an integer price pass the columns' checks;
    a placeholder row (Binance's repair left some: price 0, quantity 0, f = l = -1) is no
    trade, skipped and counted as such."""
    lines = [
        "1,0,0,-1,-1,1577836859999,true,false",
        "2,87648,0.5,5723703861,5723703862,1577836859999,FALSE,TRUE",
    ]
    path = write(tmp_path, "BTCUSDT-aggTrades-2020-01-01.csv", *lines)
    stats = ReplayStats()
    assert [event.price for event in read_events(path, stats=stats)] == ["87648"]
    assert stats.first_errors == [f"line 1: {PLACEHOLDER_ROW}"]


def test_summary_is_none_without_skipped_lines() -> None:
    assert ReplayStats(events=3).summary("x.csv") is None
    assert ReplayStats(events=3, skipped=1, first_errors=["line 4: bad"]).summary("a/x.csv") == (
        "skipped 1 malformed line in x.csv (first: line 4: bad)"
    )


def test_all_malformed_file_is_an_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "BTCUSDT-aggTrades-2026-01-01.csv",
        agg_trade(17, "87648.21000000"),
        agg_trade(1767225600039409, "-1"),
    )
    events = read_events(path)  # the layout is fine: the problem shows while reading
    with pytest.raises(ReplayFileError, match="has no valid aggTrades line") as caught:
        list(events)
    assert "BTCUSDT-aggTrades-2026-01-01.csv" in str(caught.value)
    assert "first: line 1: time 17" in str(caught.value)


def test_stats_can_be_shared_by_several_files(tmp_path: Path) -> None:
    first = write(tmp_path, "BTCUSDT-1m-2020-01-01.csv", kline(1577836859999), "1,2")
    second = write(tmp_path, "BTCUSDT-1m-2020-01-02.csv", "3,4", kline(1577923259999))
    stats = ReplayStats()
    events = [*read_events(first, stats=stats), *read_events(second, stats=stats)]
    assert len(events) == 2
    assert (stats.events, stats.skipped) == (2, 2)
    assert stats.first_errors == [
        "line 2: 2 columns, expected 12",
        "line 1: 2 columns, expected 12",
    ]


# --- symbol -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "symbol"),
    [
        ("BTCUSDT-1m-2020-01-01.csv", "BTCUSDT"),
        ("ETHUSDT-1h-2024-03.csv", "ETHUSDT"),
        ("1000SATSUSDT-1d-2024-03-01.csv", "1000SATSUSDT"),
        ("BNBBTC-1mo-2024-03.csv", "BNBBTC"),
    ],
)
def test_symbol_comes_from_the_file_name(tmp_path: Path, name: str, symbol: str) -> None:
    path = write(tmp_path, name, kline(1577836859999))
    assert [event.symbol for event in read_events(path)] == [symbol]


def test_explicit_symbol_overrides_the_file_name(tmp_path: Path) -> None:
    path = write(tmp_path, "BTCUSDT-1m-2020-01-01.csv", kline(1577836859999))
    assert [event.symbol for event in read_events(path, symbol="BTCUSDC")] == ["BTCUSDC"]


def test_explicit_symbol_for_a_file_named_otherwise(tmp_path: Path) -> None:
    path = write(tmp_path, "history.csv", agg_trade(1767225600039409))
    assert [event.symbol for event in read_events(path, symbol="ETHUSDT")] == ["ETHUSDT"]


@pytest.mark.parametrize(
    ("name", "symbol", "expected_message"),
    [
        ("history.csv", None, "does not say its symbol"),
        ("2024-01-01-1m.csv", None, "does not say its symbol"),  # not symbol "2024"
        ("btcusdt-1m-2020-01-01.csv", None, "does not say its symbol"),
        ("BTCUSDT-1m-2020-01-01.csv", "btc/usdt", "not a Binance symbol"),
        ("BTCUSDT-1m-2020-01-01.csv", "", "not a Binance symbol"),
    ],
)
def test_no_valid_symbol_is_a_clear_error(
    tmp_path: Path, name: str, symbol: str | None, expected_message: str
) -> None:
    path = write(tmp_path, name, kline(1577836859999))
    with pytest.raises(ReplayFileError, match=expected_message) as caught:
        read_events(path, symbol=symbol)
    assert name in str(caught.value)


# --- streaming ----------------------------------------------------------------------------------


def test_events_stream_lazily(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "BTCUSDT-1m-2020-01-01.csv",
        *(kline(1577836859999 + 60_000 * minute) for minute in range(1000)),
    )
    stats = ReplayStats()
    events = read_events(path, stats=stats)
    assert stats.events == 0  # nothing read before asked
    assert next(events).event_time == 1577836859999
    assert stats.events == 1
    events.close()  # stopping early is allowed and closes the file


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ReplayFileError, match="does not exist"):
        read_events(tmp_path / "BTCUSDT-1m-2020-01-01.csv")
    with pytest.raises(ReplayFileError, match="is a directory"):
        read_events(tmp_path)


# --- identity -----------------------------------------------------------------------------------


def test_events_of_a_file_are_its_content_digest_and_line_numbers(tmp_path: Path) -> None:
    hour = 3_599_999  # 1h klines tile no 5-minute window: price samples of the file
    lines = [
        "open_time,x",
        kline(1577836859999, "7186.68", open_time=1577836859999 - hour),
        "bad",
        kline(1577840459999, "7", open_time=1577840459999 - hour),
    ]
    text = "\n".join(lines) + "\n"
    path = tmp_path / "BTCUSDT-1h-2020-01-01.csv"
    path.write_text(text)
    digest = hashlib.sha256(text.encode()).hexdigest()
    events = list(read_events(path))
    assert [(e.stream, e.seq) for e in events] == [
        (f"replay/BTCUSDT/{digest[:32]}", 2),
        (f"replay/BTCUSDT/{digest[:32]}", 4),
    ]
    # The same content under another name or zipped: the same identities, so a re-run of
    # either is counted once. Other content: another stream.
    renamed = tmp_path / "copy" / "BTCUSDT-1h-2020-01-01.csv"
    renamed.parent.mkdir()
    renamed.write_text(text)
    zipped = make_zip(tmp_path / "BTCUSDT-1h-2020-01-01.zip", {path.name: text})
    assert list(read_events(renamed)) == events == list(read_events(zipped))
    path.write_text(text + kline(1577844059999, "8", open_time=1577844059999 - hour) + "\n")
    assert {e.stream for e in read_events(path)}.isdisjoint({e.stream for e in events})


def test_trades_and_candles_of_overlapping_files_carry_the_exchange_s_identities(
    tmp_path: Path,
) -> None:
    """Two files that share some rows without being byte-identical: the rows they share are
    the same events (same stream and seq), so the consumer counts each once."""
    rows = [agg_trade(1577836859999 + k, trade_id=100 + k) for k in range(6)]
    early = write(tmp_path, "BTCUSDT-aggTrades-2020-01-01.csv", *rows[:4])
    (tmp_path / "other").mkdir()
    late = write(tmp_path / "other", "BTCUSDT-aggTrades-2020-01-01.csv", *rows[2:])
    a, b = list(read_events(early)), list(read_events(late))
    assert [e.seq for e in a] == [100, 101, 102, 103] and [e.seq for e in b] == [102, 103, 104, 105]
    assert a[2:] == b[:2]  # the shared rows: equal events, trade fields included
    assert {(e.stream, e.feed, e.quantity) for e in a} == {
        ("aggtrades/BTCUSDT", "trades", "0.08185000")
    }
    candles = [kline(1577836859999 + k * 60_000, "7186.68000000") for k in range(5)]
    one = list(read_events(write(tmp_path, "BTCUSDT-1m-2020-01-01.csv", *candles[:3])))
    two = list(read_events(write(tmp_path / "other", "BTCUSDT-1m-2020-01-01.csv", *candles[1:])))
    assert one[1:] == two[:2]
    assert one[0].stream == "klines/BTCUSDT/1m" and one[0].seq == 1577836800000
    assert one[0].kline is not None and one[0].kline.trade_count == 493


def test_ids_that_do_not_grow_along_a_file_are_skipped(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "BTCUSDT-trades-2020-01-01.csv",
        trade(1577836859999, trade_id=7),
        trade(1577836859999, trade_id=7),
        trade(1577836859999, trade_id=5),
        trade(1577836859999, trade_id=8),
    )
    stats = ReplayStats()
    assert [e.seq for e in read_events(path, stats=stats)] == [7, 8]
    assert [error.split(":")[0] for error in stats.first_errors] == ["line 2", "line 3"]
    assert "trades/BTCUSDT 5 does not follow 7" in stats.first_errors[1]
