"""Read Binance public-data files (data.binance.vision) as price events: pure, no network.

Supported spot layouts (CSV, comma separated, usually no header, or the `.zip` Binance serves
with one CSV of the same base name inside, streamed without extracting):

| layout    | columns | one event per                    | price column | time column    |
| --------- | ------- | -------------------------------- | ------------ | -------------- |
| klines    | 12      | kline, at its close              | 4 (close)    | 6 (close time) |
| aggTrades | 8       | aggregate trade (a trade event)  | 1            | 5 (timestamp)  |
| trades    | 7       | trade (a trade event)            | 1            | 4 (time)       |

Every column is checked (`Layout.fields`): decimals, integer ids and counts, integer times,
true/false booleans; only Binance's "ignore" column of klines is not.

Rules:
- Layout: the column count of the first data line with a known count (among the first
  `LAYOUT_PROBE_LINES`); when the file name says the layout (`-aggTrades-`, `-trades-`, or a
  kline interval such as `-1m-`/`-1h-`/`-1d-`/`-1mo-`), the two must agree.
- Header: only the first non-blank line may be one, recognised by a first field made of
  letters and underscores (`open_time`, `agg_trade_id`, `id`); it is skipped.
- Times: see `to_epoch_ms`; the unit is decided per value by magnitude.
  A line more than 5 minutes ahead of the clock is skipped: the consumer would refuse it.
- Symbol: the explicit argument, else the file name's prefix (`BTCUSDT-1m-2020-01-01.csv`).
- What an event is, and its identity: the exchange's own wherever the line is a trade or a
  candle, so that the same trade or candle from any file (or from the live trade stream)
  is counted once, however files overlap:
  - an aggTrades line is a trade event of stream `aggtrades/<symbol>`, `seq` = its aggregate
    trade id, with its quantity and first and last raw trade ids; Binance's invalid
    placeholder rows (price 0, quantity 0, `f = l = -1`) are no trades: skipped, counted;
  - a trades line is a trade event of `trades/<symbol>`, `seq` = its trade id (one raw trade);
  - a klines line of an interval that tiles 5-minute windows (1s, 1m, 5m) is a candle event
    of `klines/<symbol>/<interval>`, `seq` = its open time (the candle travels whole: open,
    high, low, close, volumes, trade count);
  - a klines line of any other interval (1h, 1d...) is a price sample at its close, of the
    stream `replay/<symbol>/<digest>` (the SHA-256 of the CSV's bytes; for a zip, of the CSV
    inside), `seq` its line number: a re-run of the same content repeats the same identities.
  Ids and open times must grow along a file: a line whose `seq` does not is skipped.
- Prices are passed on as the exact strings in the file; the contract checks them.
- Blank lines are ignored. Any other bad line (a wrong column count, any bad field) is
  skipped and counted in `ReplayStats`, with
  the reasons of the first few; a file with no valid line at all is an error.
- `.CHECKSUM` files (the sha256 Binance publishes next to each zip) carry no prices: passing
  one raises `ReplayFileError` saying it was skipped, so a caller looping over a downloaded
  folder logs the message and moves on (or filters them first with `is_checksum_file`).

File-level problems raise `ReplayFileError` (a `ValueError`) with a one-sentence message.
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
from collections.abc import Generator, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from btcpipe.clock import wall_clock_ms
from btcpipe.contract import (
    EARLIEST_EVENT_MS,
    MAX_FUTURE_MS,
    ContractError,
    PriceEvent,
    agg_trade_stream,
    check_event_time,
    check_identity,
    check_price,
    check_symbol,
    kline_stream,
    make_event,
    make_trade,
    replay_stream,
    trade_stream,
)
from btcpipe.contract.rules import KLINE_INTERVALS_MS, PRICE_PATTERN
from pricefeed.sources.base import SourceError

SOURCE = "replay"

# Plausible event times: Bitcoin exists from 2009; anything from 2100 on is a broken value.
# In milliseconds that is [1.23e12, 4.1e12); in microseconds [1.23e15, 4.1e15). The ranges are
# three orders of magnitude apart, so a value falls in at most one of them, and seconds or
# nanoseconds fall in neither.
MIN_EPOCH_MS = EARLIEST_EVENT_MS  # 2009-01-01T00:00:00Z
MAX_EPOCH_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z (exclusive)
MIN_EPOCH_US = MIN_EPOCH_MS * 1000
MAX_EPOCH_US = MAX_EPOCH_MS * 1000

MAX_KEPT_ERRORS = 5  # reasons kept for the log; the count covers all of them
LAYOUT_PROBE_LINES = 10  # so that one truncated first line does not reject a whole file


class ReplayFileError(SourceError, ValueError):
    """A file that cannot be replayed; the message is one sentence naming the file."""


# What each column of a layout holds, checked on every line: a line with any bad field is
# skipped and counted. The event's own time and price columns are the contract's to check
# (to_epoch_ms, check_price); Binance's "ignore" column is not checked.
DECIMAL = "decimal"  # a plain non-negative decimal: 51.64281200, 0
COUNT = "count"  # a non-negative integer: a trade count, an id
TRADE_ID = "trade id"  # an integer; -1 in Binance's placeholder rows
TIME = "time"  # a non-negative integer (epoch ms or µs)
BOOLEAN = "boolean"  # true or false, in any case (the files say True/False)
IGNORED = "ignored"
KIND_PATTERNS = {
    DECIMAL: r"[0-9]{1,30}(?:\.[0-9]{1,30})?",
    COUNT: r"[0-9]{1,20}",
    TRADE_ID: r"-?[0-9]{1,20}",
    TIME: r"[0-9]{1,20}",
    BOOLEAN: r"(?i:true|false)",
    IGNORED: r"[^,]*",
}


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    kind: str  # one of KIND_PATTERNS


@dataclass(frozen=True, slots=True)
class Layout:
    name: str
    price_column: int
    time_column: int
    fields: tuple[Column, ...]
    line_pattern: re.Pattern[str] = field(init=False)  # a line whose every field is good

    def __post_init__(self) -> None:
        parts = ",".join(f"(?:{KIND_PATTERNS[column.kind]})" for column in self.fields)
        object.__setattr__(self, "line_pattern", re.compile(parts + r"\r?\n?"))

    @property
    def columns(self) -> int:
        return len(self.fields)


def _columns(*named: tuple[str, str]) -> tuple[Column, ...]:
    return tuple(Column(name, kind) for name, kind in named)


KLINES = Layout(
    "klines",
    price_column=4,
    time_column=6,
    fields=_columns(
        ("open time", TIME),
        ("open", DECIMAL),
        ("high", DECIMAL),
        ("low", DECIMAL),
        ("close", DECIMAL),
        ("volume", DECIMAL),
        ("close time", TIME),
        ("quote asset volume", DECIMAL),
        ("number of trades", COUNT),
        ("taker buy base volume", DECIMAL),
        ("taker buy quote volume", DECIMAL),
        ("ignore", IGNORED),
    ),
)
AGG_TRADES = Layout(
    "aggTrades",
    price_column=1,
    time_column=5,
    fields=_columns(
        ("aggregate trade id", COUNT),
        ("price", DECIMAL),
        ("quantity", DECIMAL),
        ("first trade id", TRADE_ID),
        ("last trade id", TRADE_ID),
        ("timestamp", TIME),
        ("was the buyer the maker", BOOLEAN),
        ("was the trade the best price match", BOOLEAN),
    ),
)
TRADES = Layout(
    "trades",
    price_column=1,
    time_column=4,
    fields=_columns(
        ("trade id", COUNT),
        ("price", DECIMAL),
        ("qty", DECIMAL),
        ("quote qty", DECIMAL),
        ("time", TIME),
        ("is buyer maker", BOOLEAN),
        ("is best match", BOOLEAN),
    ),
)
LAYOUTS_BY_COLUMNS = {layout.columns: layout for layout in (KLINES, AGG_TRADES, TRADES)}
EXPECTED_COLUMNS = "12 columns (klines), 8 (aggTrades) or 7 (trades)"

# `BTCUSDT-1m-2020-01-01.csv`, `BTCUSDT-aggTrades-2026-01-01.head5000.zip`, `BTCUSDT-1mo-...`.
# The symbol must contain a letter so that a date-named file (`2024-01-01-x.csv`) is not read
# as symbol "2024".
FILE_NAME_PATTERN = re.compile(
    r"^(?P<symbol>(?=[A-Z0-9]*[A-Z])[A-Z0-9]{2,20})-"
    r"(?P<kind>aggTrades|trades|\d+(?:s|m|h|d|w|M|mo))(?=[-.]|$)"
)


@dataclass
class ReplayStats:
    """Filled in while the events are consumed; complete once the iterator is exhausted."""

    events: int = 0
    skipped: int = 0
    first_errors: list[str] = field(default_factory=list)
    line: int = 0  # the line of the event last handed out (what a replay notes as sent)

    def skip(self, line_number: int, reason: str) -> None:
        self.skipped += 1
        if len(self.first_errors) < MAX_KEPT_ERRORS:
            self.first_errors.append(f"line {line_number}: {reason}")

    def summary(self, path: Path | str) -> str | None:
        """The log line for skipped lines, or None when none were skipped."""
        if not self.skipped:
            return None
        noun = "line" if self.skipped == 1 else "lines"
        return (
            f"skipped {self.skipped} malformed {noun} in {Path(path).name} "
            f"(first: {self.first_errors[0]})"
        )


def to_epoch_ms(raw: str) -> int:
    """Epoch milliseconds from a Binance time field in milliseconds or microseconds.

    Spot files switched to microseconds on 2025-01-01. A value in [MIN_EPOCH_MS, MAX_EPOCH_MS)
    is milliseconds, one in [MIN_EPOCH_US, MAX_EPOCH_US) is microseconds (floor-divided by
    1000, so close time 1778201999999999 becomes 1778201999999); anything else raises
    ValueError rather than guess.
    """
    # isascii+isdigit: int() would also accept " 12", "+12", "1_000" and other digit scripts.
    if not (raw.isascii() and raw.isdigit()):
        raise ValueError(f"time {raw!r} is not an integer")
    value = int(raw)
    if MIN_EPOCH_MS <= value < MAX_EPOCH_MS:
        return value
    if MIN_EPOCH_US <= value < MAX_EPOCH_US:
        return value // 1000
    raise ValueError(f"time {raw} is neither epoch ms nor µs between 2009 and 2100")


def is_checksum_file(path: Path | str) -> bool:
    return Path(path).suffix.upper() == ".CHECKSUM"


def detect_layout(path: Path | str) -> str:
    """The layout name ("klines", "aggTrades", "trades"), checked against the file name."""
    return _detect_layout(Path(path)).name


def read_events(
    path: Path | str,
    symbol: str | None = None,
    stats: ReplayStats | None = None,
    digest: str | None = None,
) -> Generator[PriceEvent, None, None]:
    """Events of a klines, aggTrades or trades file (CSV or zip), in file order.

    File-level problems (missing, unreadable, unknown layout, no symbol) raise ReplayFileError
    here, before iterating; a file without a single valid line raises it at the end of the
    iteration. Memory stays constant whatever the file size. `digest`: the file's
    `scan_content(...).digest`, if the caller has it already.
    """
    path = Path(path)
    layout = _detect_layout(path)
    resolved_symbol = _resolve_symbol(path, symbol)
    if stats is None:
        stats = ReplayStats()
    stream, _ = check_identity(
        replay_stream(resolved_symbol, digest or scan_content(path).digest), 1
    )
    return _stream_events(path, resolved_symbol, layout, stats, stream)


@dataclass(frozen=True, slots=True)
class FileContent:
    lines: int  # header included
    digest: str  # SHA-256 (hex) of the CSV bytes: the identity of the file's events


def scan_content(path: Path | str) -> FileContent:
    """Lines and content digest in one pass over the raw bytes."""
    path = Path(path)
    lines = 0
    last = b"\n"
    digest = hashlib.sha256()
    with _open_binary(path) as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
            lines += chunk.count(b"\n")
            last = chunk[-1:]
    # A last line without a newline still counts.
    return FileContent(lines + (last != b"\n"), digest.hexdigest())


def count_lines(path: Path | str) -> int:
    """Number of lines (header included), reading raw bytes: cheap enough for an ETA."""
    return scan_content(path).lines


# --- internals ---------------------------------------------------------------------------------


CANDLE_INTERVALS = {length: name for name, length in KLINE_INTERVALS_MS.items()}
PLACEHOLDER_ROW = "an invalid placeholder row (f = l = -1: no raw trade): not a trade"


def exchange_event(
    layout: Layout, symbol: str, fields: list[str], now_ms: int
) -> PriceEvent | None:
    """A line as the exchange's own trade or candle, under the exchange's identity; None for a
    kline of an interval that does not tile 5-minute windows (a price sample of the file).
    Raises ValueError (ContractError is one) naming what is wrong."""
    if layout is AGG_TRADES:
        agg_id, price, quantity, first, last, time = fields[:6]
        if first == last == "-1":
            raise ValueError(PLACEHOLDER_ROW)
        return make_trade(
            symbol, price, to_epoch_ms(time), SOURCE, agg_trade_stream(symbol), int(agg_id),
            now_ms, quantity, int(first), int(last),
        )  # fmt: skip
    if layout is TRADES:
        trade_id, price, quantity, _, time = fields[:5]
        raw = int(trade_id)
        return make_trade(
            symbol, price, to_epoch_ms(time), SOURCE, trade_stream(symbol), raw, now_ms,
            quantity, raw, raw,
        )  # fmt: skip
    close_ms = to_epoch_ms(fields[6])  # the event's own time first: its error says most
    open_ms = to_epoch_ms(fields[0])
    interval = CANDLE_INTERVALS.get(close_ms - open_ms + 1)
    if interval is None:
        return None
    kline: dict[str, object] = {
        "interval": interval, "open_time": open_ms, "open": fields[1], "high": fields[2],
        "low": fields[3], "close": fields[4], "volume": fields[5], "quote_volume": fields[7],
        "trade_count": int(fields[8]),
    }  # fmt: skip
    return make_event(
        symbol, fields[4], close_ms, SOURCE, kline_stream(symbol, interval), open_ms, now_ms,
        kline=kline,
    )  # fmt: skip


def _stream_events(
    path: Path, symbol: str, layout: Layout, stats: ReplayStats, stream: str
) -> Generator[PriceEvent, None, None]:
    columns, price_column, time_column = layout.columns, layout.price_column, layout.time_column
    # Counted apart from stats, which the caller may share between several files.
    events_in_file = 0
    errors_before = len(stats.first_errors)
    header_allowed = True
    plain_price = PRICE_PATTERN.fullmatch
    well_formed = layout.line_pattern.fullmatch
    # Trades and candles are the exchange's (exchange_event); the hot path below is for price
    # samples: klines of other intervals, known once the first line has said its interval.
    samples = False
    last_seq = 0  # of the exchange's events: their ids and open times grow along a file
    # The contract's bound on the future, as the consumer will apply it: from the clock at the
    # start of the file, which only moves on while the file is sent (so never too lenient).
    now_ms = wall_clock_ms()
    latest_us = min(MAX_EPOCH_US, (now_ms + MAX_FUTURE_MS + 1) * 1000)  # exclusive
    with _open_text(path) as lines:
        try:
            for line_number, line in enumerate(lines, start=1):
                fields = line.split(",")
                # The hot path of a replay of samples: a well-formed line of a recent file (µs
                # times) becomes an event with the checks of `to_epoch_ms` and `check_price`
                # inlined (the time and price columns are never the last one, which holds
                # the newline).
                if samples and len(fields) == columns and well_formed(line):
                    raw_time, price = fields[time_column], fields[price_column]
                    if raw_time.isascii() and raw_time.isdigit():
                        time_us = int(raw_time)
                        if (
                            MIN_EPOCH_US <= time_us < latest_us
                            and plain_price(price)
                            and price.strip("0.")
                        ):
                            events_in_file += 1
                            stats.events += 1
                            stats.line = line_number
                            yield PriceEvent(
                                symbol, price, time_us // 1000, SOURCE, stream, line_number
                            )
                            continue
                fields = line.rstrip("\r\n").split(",")
                if fields == [""]:
                    continue  # blank line
                if header_allowed:
                    header_allowed = False
                    if _is_header(fields):
                        continue
                if len(fields) != columns:
                    stats.skip(line_number, f"{len(fields)} columns, expected {columns}")
                    continue
                bad = bad_field(layout, fields)
                if bad is not None:
                    stats.skip(line_number, bad)
                    continue
                try:
                    event = None if samples else exchange_event(layout, symbol, fields, now_ms)
                    if event is None:
                        samples = True
                        time_ms = check_event_time(to_epoch_ms(fields[time_column]), now_ms)
                        # make_event's other checks hold already: the symbol and the stream
                        # were checked once, the source is ours, the line number positive (a
                        # replay's hot path).
                        event = PriceEvent(
                            symbol,
                            check_price(fields[price_column]),
                            time_ms,
                            SOURCE,
                            stream,
                            line_number,
                        )
                    elif event.seq <= last_seq:
                        raise ValueError(
                            f"{event.stream} {event.seq} does not follow {last_seq}: ids and "
                            "open times must grow along a file"
                        )
                    else:
                        last_seq = event.seq
                except ValueError as error:  # ContractError is one
                    stats.skip(line_number, str(error))
                    continue
                events_in_file += 1
                stats.events += 1
                stats.line = line_number
                yield event
        except (OSError, EOFError, zipfile.BadZipFile) as error:
            # A zip's CRC is only checked while reading: a corrupt download fails here.
            raise ReplayFileError(f"{path.name} could not be read to the end: {error}.") from None
    if events_in_file == 0:
        own_errors = stats.first_errors[errors_before:]
        first = f" (first: {own_errors[0]})" if own_errors else ""
        raise ReplayFileError(f"{path.name} has no valid {layout.name} line{first}.")


def bad_field(layout: Layout, fields: list[str]) -> str | None:
    """Why the first bad field other than the event's time and price is bad, or None."""
    for number, (column, value) in enumerate(zip(layout.fields, fields, strict=True), start=1):
        if number - 1 in (layout.time_column, layout.price_column):
            continue
        if not re.fullmatch(KIND_PATTERNS[column.kind], value):
            return f"column {number} ({column.name}) is not a {column.kind}: {value[:40]!r}"
    return None


def _is_header(fields: list[str]) -> bool:
    # Column names (`open_time`, `agg_trade_id`, `id`); a data line starts with a number.
    return fields[0].strip().replace("_", "").isalpha()


def _detect_layout(path: Path) -> Layout:
    if is_checksum_file(path):
        raise ReplayFileError(
            f"{path.name} is a checksum file, not price data: skipped (pass the zip it checks)."
        )
    from_name = _layout_from_name(path)
    column_counts = _first_data_column_counts(path)
    if not column_counts:
        raise ReplayFileError(f"{path.name} has no data lines.")
    known = [count for count in column_counts if count in LAYOUTS_BY_COLUMNS]
    if not known:
        raise ReplayFileError(
            f"{path.name} is not a Binance klines, aggTrades or trades CSV: its first data "
            f"line has {column_counts[0]} column(s), expected {EXPECTED_COLUMNS}."
        )
    from_columns = LAYOUTS_BY_COLUMNS[known[0]]
    if from_name is not None and from_name != from_columns:
        raise ReplayFileError(
            f"{path.name} is named as {from_name.name} ({from_name.columns} columns) but its "
            f"data lines have {from_columns.columns} columns ({from_columns.name})."
        )
    return from_columns


def _first_data_column_counts(path: Path) -> list[int]:
    """Column counts of the first few data lines, with the same blank/header rules as reading."""
    counts: list[int] = []
    header_allowed = True
    with _open_text(path) as lines:
        try:
            for line in lines:
                fields = line.rstrip("\r\n").split(",")
                if fields == [""]:
                    continue
                if header_allowed:
                    header_allowed = False
                    if _is_header(fields):
                        continue
                counts.append(len(fields))
                if len(counts) == LAYOUT_PROBE_LINES:
                    break
        except (OSError, EOFError, zipfile.BadZipFile) as error:
            raise ReplayFileError(f"{path.name} could not be read: {error}.") from None
    return counts


def _layout_from_name(path: Path) -> Layout | None:
    match = FILE_NAME_PATTERN.match(path.name)
    if match is None:
        return None
    kind = match["kind"]
    if kind == "aggTrades":
        return AGG_TRADES
    if kind == "trades":
        return TRADES
    return KLINES  # an interval


def _resolve_symbol(path: Path, symbol: str | None) -> str:
    if symbol is None:
        match = FILE_NAME_PATTERN.match(path.name)
        if match is None:
            raise ReplayFileError(
                f"{path.name} does not say its symbol: name it like BTCUSDT-1m-2024-03-01.csv "
                "or pass its symbol with --replay-symbol (REPLAY_SYMBOL)."
            )
        symbol = match["symbol"]
    try:
        return check_symbol(symbol)
    except ContractError as error:
        raise ReplayFileError(f"cannot replay {path.name}: {error}.") from None


@contextmanager
def _open_binary(path: Path) -> Iterator[IO[bytes]]:
    """The file's bytes, or for a zip those of its CSV, streamed (never extracted to disk)."""
    with ExitStack() as stack:
        try:
            if path.suffix.lower() == ".zip":
                archive = stack.enter_context(zipfile.ZipFile(path))
                stream = stack.enter_context(archive.open(_zip_member(path, archive)))
            else:
                stream = stack.enter_context(path.open("rb"))
        except FileNotFoundError:
            raise ReplayFileError(f"{path} does not exist.") from None
        except IsADirectoryError:
            raise ReplayFileError(f"{path} is a directory, not a data file.") from None
        except zipfile.BadZipFile as error:
            raise ReplayFileError(f"{path.name} is not a readable zip file: {error}.") from None
        except OSError as error:
            reason = error.strerror or error
            raise ReplayFileError(f"{path.name} cannot be opened: {reason}.") from None
        yield stream


@contextmanager
def _open_text(path: Path) -> Iterator[io.TextIOWrapper]:
    # errors="replace": binary garbage becomes malformed lines, never a UnicodeDecodeError;
    # utf-8-sig drops a byte-order mark some tools add.
    with _open_binary(path) as stream:
        yield io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace", newline="")


def _zip_member(path: Path, archive: zipfile.ZipFile) -> str:
    """The CSV inside: the one named like the zip, else the only CSV there is."""
    csv_names = [name for name in archive.namelist() if name.lower().endswith(".csv")]
    same_name = [name for name in csv_names if Path(name).stem == path.stem]
    if same_name:
        return same_name[0]
    if len(csv_names) == 1:
        return csv_names[0]
    raise ReplayFileError(
        f"{path.name} should hold one CSV file named {path.stem}.csv, "
        f"but holds {len(csv_names)} CSV file(s)."
    )
