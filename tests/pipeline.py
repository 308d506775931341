"""Helpers shared by the tests: known event streams, their ground truth computed offline with
Decimal (independently of the consumer's code; the consumer's own Python merge sits beside it,
to be held to it), table readers, and publishing to and reading from Kafka."""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import random
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Context, Decimal, localcontext
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from aggregator.core.windows import STATISTICS, Statistic, WindowKey, WindowStats, window_start
from btcpipe.contract.decoding import DecodedKline
from tests.harness import PostgresServer, TansuBroker
from tests.harness.net import wait_until
from tests.harness.scripts import Script

WINDOW_MS = 300_000

# Real files of Binance's public data (data.binance.vision: daily spot klines in ms and in µs,
# the first 5,000 lines of a daily aggTrades file), for the tests that read real files. The
# project does not ship them: Binance states no licence for its data files. The tests look in
# BINANCE_SAMPLE_DIR, else in ../shared/binance-data/ beside the checkout, and skip saying so.
SHARED_DATA = Path(
    os.environ.get("BINANCE_SAMPLE_DIR")
    or Path(__file__).resolve().parents[2] / "shared" / "binance-data"
)
SAMPLE_FILES = (
    "BTCUSDT-1m-2020-01-01.csv",
    "BTCUSDT-1h-2026-05-08.csv",
    "BTCUSDT-aggTrades-2026-01-01.head5000.csv",
)
MISSING_SAMPLES = [name for name in SAMPLE_FILES if not (SHARED_DATA / name).is_file()]
SAMPLES_MISSING = (
    f"real Binance files {', '.join(MISSING_SAMPLES)} missing from {SHARED_DATA}. "
    "The project does not ship Binance's public data files (their licence is not stated); "
    "set BINANCE_SAMPLE_DIR to a folder holding them"
)
needs_shared_data = pytest.mark.skipif(
    bool(MISSING_SAMPLES), reason=f"NOT RUN: {SAMPLES_MISSING} to run this test."
)
BASE_TIME_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: old but valid history
NOW_MS = BASE_TIME_MS + 10 * WINDOW_MS  # "now" for validation: after every test event

# A valid message as another producer might send it, and variations of it.
VALID = {"symbol": "BTCUSDT", "price": "43250.75000000", "event_time": NOW_MS, "source": "binance"}


def message(**changes: object) -> bytes:
    return json.dumps({**VALID, **changes}).encode()


@dataclass(frozen=True)
class Event:
    symbol: str
    price: str
    event_time: int
    source: str = "simulated"
    stream: str | None = None  # identity; None: a message as the previous release sent it
    seq: int | None = None
    # A trade: its quantity and raw trade ids (contract: trades); else a price sample.
    quantity: str | None = None
    first_trade_id: int | None = None
    last_trade_id: int | None = None
    kline: dict[str, Any] | None = None  # a candle (contract: klines), as the message has it

    @property
    def feed(self) -> str:
        return "klines" if self.kline else "trades" if self.quantity is not None else "samples"

    def message(self) -> bytes:
        body: dict[str, Any] = {
            "symbol": self.symbol,
            "price": self.price,
            "event_time": self.event_time,
            "source": self.source,
        }
        if self.stream is not None:
            body |= {"stream": self.stream, "seq": self.seq}
        if self.quantity is not None:
            body |= {
                "quantity": self.quantity,
                "first_trade_id": self.first_trade_id,
                "last_trade_id": self.last_trade_id,
            }
        if self.kline is not None:
            body["kline"] = self.kline
        return json.dumps(body).encode()


_runs = itertools.count(1)


def with_identity(events: Iterable[Event], run: str | None = None) -> list[Event]:
    """The events as one producer run numbers them: per symbol a stream, seq 1, 2, 3..."""
    run = run or f"test-{next(_runs)}"
    seqs: dict[str, int] = {}
    numbered = []
    for e in events:
        seqs[e.symbol] = seqs.get(e.symbol, 0) + 1
        stream = f"{e.source}/{e.symbol}/{run}"
        numbered.append(Event(e.symbol, e.price, e.event_time, e.source, stream, seqs[e.symbol]))
    return numbered


def random_stream(
    rng: random.Random,
    count: int,
    symbols: Sequence[str] = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT"),
    start_ms: int = BASE_TIME_MS,
    step_ms: int = 97,
    disorder: float = 0.02,
) -> list[Event]:
    """`count` events spread over many windows; a fraction arrive out of order (some into
    windows that have moved on), and some share event times (to pin the tie rules)."""
    events = []
    prices = {s: Decimal(rng.randint(100, 90_000)) for s in symbols}
    time_ms = start_ms
    for _ in range(count):
        symbol = rng.choice(symbols)
        prices[symbol] = max(
            Decimal("0.00000001"),
            (prices[symbol] * Decimal(1 + rng.gauss(0, 0.001))).quantize(Decimal("1E-8")),
        )
        if rng.random() >= 0.05:  # else: the same event time as the previous event
            time_ms += rng.randint(0, 2 * step_ms)
        event_time = time_ms
        if rng.random() < disorder:
            event_time -= rng.randint(1, 3 * WINDOW_MS)
        events.append(Event(symbol, format(prices[symbol], "f"), event_time))
    return with_identity(events)


def random_trades(
    rng: random.Random,
    count: int,
    symbols: Sequence[str] = ("BTCUSDT", "ETHUSDT"),
    start_ms: int = BASE_TIME_MS,
    source: str = "binance",
) -> list[Event]:
    """Aggregate trades as the exchange numbers them: per symbol, aggregate ids 1, 2, 3...,
    raw ids contiguous (each trade's first = the previous one's last + 1), trade times that
    never go back and often repeat (several trades in one millisecond), in id order."""
    state = {s: (rng.randint(1, 10**6), Decimal(rng.randint(100, 90_000))) for s in symbols}
    agg_ids = dict.fromkeys(symbols, 0)
    time_ms = dict.fromkeys(symbols, start_ms)
    trades = []
    for _ in range(count):
        symbol = rng.choice(symbols)
        next_raw, price = state[symbol]
        price = max(
            Decimal("0.00000001"),
            (price * Decimal(1 + rng.gauss(0, 0.001))).quantize(Decimal("1E-8")),
        )
        raw_count = rng.choice((1, 1, 1, 2, 5))
        if rng.random() >= 0.3:  # else: the same millisecond as the trade before
            time_ms[symbol] += rng.randint(1, 4_000)
        agg_ids[symbol] += 1
        quantity = format(Decimal(rng.randint(1, 10**9)).scaleb(-8), "f")
        trades.append(
            Event(
                symbol, format(price, "f"), time_ms[symbol], source,
                f"aggtrades/{symbol}", agg_ids[symbol],
                quantity, next_raw, next_raw + raw_count - 1,
            )
        )  # fmt: skip
        state[symbol] = (next_raw + raw_count, price)
    return trades


def random_klines(
    rng: random.Random, count: int, symbol: str = "BTCUSDT", start_ms: int = BASE_TIME_MS
) -> list[Event]:
    """Consecutive 1-minute candles of one symbol, as a replayed klines file carries them:
    each the event of its close time at its close price."""
    price = Decimal(rng.randint(100, 90_000))
    candles = []
    for n in range(count):
        steps = [
            (price * Decimal(1 + rng.gauss(0, 0.001))).quantize(Decimal("1E-8")) for _ in range(4)
        ]
        open_, close = steps[0], steps[-1]
        high, low = max(steps) + Decimal("0.5"), min(steps) - Decimal("0.25")
        open_time, close_text = start_ms + n * 60_000, format(close, "f")
        kline = {
            "interval": "1m", "open_time": open_time, "open": format(open_, "f"),
            "high": format(high, "f"), "low": format(low, "f"), "close": close_text,
            "volume": format(Decimal(rng.randint(0, 10**10)).scaleb(-8), "f"),
            "quote_volume": format(Decimal(rng.randint(0, 10**12)).scaleb(-8), "f"),
            "trade_count": rng.randint(0, 5_000),
        }  # fmt: skip
        candles.append(
            Event(
                symbol, close_text, open_time + 59_999, "replay",
                f"klines/{symbol}/1m", open_time, kline=kline,
            )
        )  # fmt: skip
        price = close
    return candles


LONG_PRICE = "12345678901234567890.12345678901234567890"  # the longest the contract admits


def tie_heavy_stream(rng: random.Random, count: int, windows: int = 3) -> list[Event]:
    """Events on a few instants (many equal event times, out of order, on window edges) with
    prices of mixed scale ("3.5" and "3.50" are equal numbers written differently) and now
    and then the longest price."""
    instants = [0, WINDOW_MS - 1, WINDOW_MS, *rng.sample(range(windows * WINDOW_MS), 5)]
    events = []
    for _ in range(count):
        if rng.random() < 0.02:
            price = LONG_PRICE
        else:
            price = str(rng.randint(1, 4)) + rng.choice(["", ".5", ".50", ".500", ".00000001"])
        symbol = rng.choice(("BTCUSDT", "ETHUSDT"))
        events.append(Event(symbol, price, BASE_TIME_MS + rng.choice(instants)))
    return events


def truth_from_csv(path: Path) -> list[Event]:
    """The events a replay of this file must produce, read independently of the producer.
    Times in µs (>= 1e15) become ms.
    - aggTrades (8 columns): trades at their time (column 5), price 1, quantity 2, raw ids 3
      and 4, under stream aggtrades/<symbol> numbered by the aggregate id (column 0); rows
      with raw ids -1 (Binance's placeholders) are no trades;
    - trades (7 columns): one raw trade each, trades/<symbol> numbered by its id;
    - klines (12 columns) of 1s, 1m or 5m: candles at their close (column 6), the whole
      kline, klines/<symbol>/<interval> numbered by the open time (column 0);
    - klines of other intervals: price samples at the close with the close price (column
      4), in the file's stream (SHA-256 of its bytes) numbered by the line."""
    symbol = path.name.split("-")[0]
    stream = f"replay/{symbol}/{hashlib.sha256(path.read_bytes()).hexdigest()[:32]}"

    def ms(raw: str) -> int:
        return int(raw) // 1000 if int(raw) >= 10**15 else int(raw)

    events = []
    with path.open(newline="") as rows:
        for line, row in enumerate(csv.reader(rows), start=1):
            if len(row) == 8:
                if row[3] == row[4] == "-1":
                    continue
                events.append(
                    Event(symbol, row[1], ms(row[5]), "replay", f"aggtrades/{symbol}",
                          int(row[0]), row[2], int(row[3]), int(row[4]))
                )  # fmt: skip
            elif len(row) == 7:
                events.append(
                    Event(symbol, row[1], ms(row[4]), "replay", f"trades/{symbol}",
                          int(row[0]), row[2], int(row[0]), int(row[0]))
                )  # fmt: skip
            else:
                open_ms, close_ms = ms(row[0]), ms(row[6])
                interval = {1000: "1s", 60_000: "1m", WINDOW_MS: "5m"}.get(close_ms - open_ms + 1)
                if interval is None:
                    events.append(Event(symbol, row[4], close_ms, "replay", stream, line))
                    continue
                kline = {
                    "interval": interval, "open_time": open_ms, "open": row[1], "high": row[2],
                    "low": row[3], "close": row[4], "volume": row[5], "quote_volume": row[7],
                    "trade_count": int(row[8]),
                }  # fmt: skip
                events.append(
                    Event(symbol, row[4], close_ms, "replay", f"klines/{symbol}/{interval}",
                          open_ms, kline=kline)
                )  # fmt: skip
    return events


WindowTruthKey = tuple[str, int, str]  # symbol, window start (epoch ms), feed


def expected_windows(events: Iterable[Event]) -> dict[WindowTruthKey, dict[str, Any]]:
    """Every column of five_min_bitcoin_event, computed offline, per symbol, window and feed.
    `events` in stream order per symbol: for samples on equal event times the first seen
    opens and the last seen closes; trades open and close by (trade time, trade id), as the
    exchange orders them; a candle spans its open to its close time. Sums are exact (100
    digits), whatever the caller's decimal context."""
    with localcontext(Context(prec=100)):
        return _windows(events)


KLINE_LENGTH_MS = {"1s": 1000, "1m": 60_000, "5m": WINDOW_MS}
NO_TRADES = dict.fromkeys(
    ("volume", "quote_volume", "trade_count", "first_trade_id", "last_trade_id")
)


def _windows(events: Iterable[Event]) -> dict[WindowTruthKey, dict[str, Any]]:
    by_key: dict[WindowTruthKey, list[Event]] = {}
    for e in events:
        by_key.setdefault((e.symbol, e.event_time // WINDOW_MS * WINDOW_MS, e.feed), []).append(e)
    truth = {"samples": _samples_window, "trades": _trades_window, "klines": _klines_window}
    return {key: truth[key[2]](members) for key, members in by_key.items()}


def _samples_window(events: list[Event]) -> dict[str, Any]:
    prices = [Decimal(e.price) for e in events]
    first = min(range(len(events)), key=lambda i: events[i].event_time)  # the first of a tie
    last = max(range(len(events)), key=lambda i: (events[i].event_time, i))  # the last of one
    return {
        "event_count": len(events),
        "price_sum": sum(prices, Decimal(0)),
        "min_value": min(prices),
        "max_value": max(prices),
        "open_value": prices[first],
        "first_event_at": events[first].event_time,
        "close_value": prices[last],
        "last_event_at": events[last].event_time,
        **NO_TRADES,
    }


def _trade_ids(e: Event) -> tuple[int, int]:
    assert e.first_trade_id is not None and e.last_trade_id is not None, e
    return e.first_trade_id, e.last_trade_id


def _trades_window(events: list[Event]) -> dict[str, Any]:
    ids = [_trade_ids(e) for e in events]
    first = min(events, key=lambda e: (e.event_time, _trade_ids(e)[0]))
    last = max(events, key=lambda e: (e.event_time, _trade_ids(e)[1]))
    prices = [Decimal(e.price) for e in events]
    quantities = [Decimal(e.quantity or "") for e in events]
    return {
        "event_count": len(events),
        "price_sum": sum(prices, Decimal(0)),
        "min_value": min(prices),
        "max_value": max(prices),
        "open_value": Decimal(first.price),
        "first_event_at": first.event_time,
        "close_value": Decimal(last.price),
        "last_event_at": last.event_time,
        "volume": sum(quantities, Decimal(0)),
        "quote_volume": sum((p * q for p, q in zip(prices, quantities, strict=True)), Decimal(0)),
        "trade_count": sum(last - first + 1 for first, last in ids),
        "first_trade_id": min(first for first, _ in ids),
        "last_trade_id": max(last for _, last in ids),
    }


def _klines_window(events: list[Event]) -> dict[str, Any]:
    candles = [e.kline for e in events if e.kline]
    first = min(candles, key=lambda k: k["open_time"])
    last = max(candles, key=lambda k: k["open_time"])
    return {
        "event_count": len(candles),
        "price_sum": sum((Decimal(k["close"]) for k in candles), Decimal(0)),
        "min_value": min(Decimal(k["low"]) for k in candles),
        "max_value": max(Decimal(k["high"]) for k in candles),
        "open_value": Decimal(first["open"]),
        "first_event_at": first["open_time"],
        "close_value": Decimal(last["close"]),
        "last_event_at": last["open_time"] + KLINE_LENGTH_MS[last["interval"]] - 1,
        "volume": sum((Decimal(k["volume"]) for k in candles), Decimal(0)),
        "quote_volume": sum((Decimal(k["quote_volume"]) for k in candles), Decimal(0)),
        "trade_count": sum(k["trade_count"] for k in candles),
        "first_trade_id": None,
        "last_trade_id": None,
    }


def window_deltas(events: Iterable[Event]) -> dict[WindowKey, WindowStats]:
    """The consumer's Python merge (aggregator.windows): events folded in stream order, per
    (symbol, window, feed), for the tests that hold it to expected_windows and to the SQL
    merge (samples and trades by `add` and `add_trade`, candles by `merge`)."""
    deltas: dict[WindowKey, WindowStats] = {}
    for e in events:
        key = (e.symbol, window_start(e.event_time), e.feed)
        stats = _stats_of(e)
        if key not in deltas:
            deltas[key] = stats
        elif e.quantity is not None:
            assert e.first_trade_id is not None and e.last_trade_id is not None
            deltas[key].add_trade(
                Decimal(e.price),
                Decimal(e.quantity),
                e.event_time,
                e.first_trade_id,
                e.last_trade_id,
            )
        elif e.kline is None:
            deltas[key].add(Decimal(e.price), e.event_time)
        else:
            deltas[key].merge(stats)
    return deltas


def _stats_of(e: Event) -> WindowStats:
    if e.quantity is not None:
        assert e.first_trade_id is not None and e.last_trade_id is not None
        return WindowStats.of_trade(
            Decimal(e.price), Decimal(e.quantity), e.event_time, e.first_trade_id, e.last_trade_id
        )
    if e.kline is not None:
        k = e.kline
        return WindowStats.of_kline(
            DecodedKline(
                k["interval"], k["open_time"], Decimal(k["open"]), Decimal(k["high"]),
                Decimal(k["low"]), Decimal(k["close"]), Decimal(k["volume"]),
                Decimal(k["quote_volume"]), k["trade_count"],
            )
        )  # fmt: skip
    return WindowStats.of(Decimal(e.price), e.event_time)


def _as_truth_has_it(statistic: Statistic) -> str:
    """A statistic's column as the truth holds it: times as epoch ms."""
    if statistic.sql_type == "timestamptz":
        return f"(extract(epoch FROM {statistic.column}) * 1000)::bigint"
    return statistic.column


def stored_windows(dsn: str) -> dict[WindowTruthKey, dict[str, Any]]:
    """Every row of five_min_bitcoin_event: each declared statistic's column (STATISTICS),
    the window's length and its average, by (symbol, start in epoch ms, feed)."""
    columns = [s.column for s in STATISTICS]
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT symbol, (extract(epoch FROM five_min_start) * 1000)::bigint, "
            "(extract(epoch FROM five_min_end - five_min_start) * 1000)::bigint, avg_value, "
            "feed, "
            + ", ".join(_as_truth_has_it(s) for s in STATISTICS)
            + " FROM five_min_bitcoin_event"
        )
        rows = cur.fetchall()
    conn.close()
    return {
        (r[0], r[1], r[4]): {
            "length_ms": r[2],
            "avg_value": r[3],
            **dict(zip(columns, r[5:], strict=True)),
        }
        for r in rows
    }


def assert_every_statistic_has_a_truth(stored: dict[str, Any], truth: dict[str, Any]) -> None:
    """A statistic declared without its offline truth in expected_windows fails here."""
    declared = stored.keys() - {"length_ms", "avg_value"}
    assert declared == truth.keys(), (
        f"no truth for {sorted(declared - truth.keys())}, "
        f"truth of undeclared {sorted(truth.keys() - declared)}"
    )


def assert_tables_equal_truth(dsn: str, events: Iterable[Event], note: str = "") -> None:
    """Every row and every column equals the offline computation, to the last digit. `note`
    heads the failure message (a seed, say)."""
    truth = expected_windows(events)
    stored = stored_windows(dsn)
    assert stored.keys() == truth.keys(), (
        f"{note} windows differ: missing {sorted(truth.keys() - stored.keys())[:5]}, "
        f"unexpected {sorted(stored.keys() - truth.keys())[:5]}"
    )
    for key, want in truth.items():
        got = stored[key]
        assert_every_statistic_has_a_truth(got, want)
        assert got["length_ms"] == WINDOW_MS, key
        for column, value in want.items():
            assert got[column] == value, (
                f"{note} {key} {column}: stored {got[column]}, truth {value}"
            )
        assert got["avg_value"] == exact_average_at_scale(
            want["price_sum"], want["event_count"], got["avg_value"]
        ), key


def exact_average_at_scale(total: Decimal, count: int, stored: Decimal) -> Decimal:
    """sum / count, exactly, rounded (half away from zero, as PostgreSQL does) to the number
    of decimals PostgreSQL chose for the stored average."""
    exponent = stored.as_tuple().exponent
    assert isinstance(exponent, int), f"{stored} is not a finite number"
    with localcontext(Context(prec=100)):
        exact = total / Decimal(count)
        return exact.quantize(Decimal(1).scaleb(exponent), rounding=ROUND_HALF_UP)


def total_events(dsn: str) -> int:
    try:
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT coalesce(sum(event_count), 0) FROM five_min_bitcoin_event")
            (total,) = cur.fetchone()
        conn.close()
        return int(total)
    except psycopg2.Error:  # not created yet, or the server is down right now
        return -1


def query(dsn: str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        rows = cur.fetchall()
    conn.close()
    return rows


def execute(dsn: str, sql: str, params: Sequence[Any] | None = None) -> None:
    """One statement (or a script: without params nothing is %-formatted), committed."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
    conn.close()


def create_topic(bootstrap: str, topic: str, partitions: int = 3) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        admin.close()


def new_producer(bootstrap: str) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )


def produce(bootstrap: str, topic: str, events: Iterable[Event]) -> set[int]:
    """Publish events keyed by symbol, as producer.py does; returns the partitions used."""
    producer = new_producer(bootstrap)
    futures = [
        producer.send(topic, key=e.symbol.encode(), value=e.message(), timestamp_ms=e.event_time)
        for e in events
    ]
    producer.flush()
    partitions = {f.get(timeout=30).partition for f in futures}
    producer.close()
    return partitions


def messages_in(bootstrap: str, topic: str, timeout: float = 60) -> int:
    """Messages on the topic, read to the high watermark of every partition (Tansu's
    ListOffsets answers the last batch's base offset + 1, so end_offsets() would say less)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)

        def at_end() -> bool:
            consumer.poll(timeout_ms=200)
            marks = [consumer.highwater(tp) for tp in partitions]
            return None not in marks and all(
                consumer.position(tp) >= mark for tp, mark in zip(partitions, marks, strict=True)
            )

        wait_until(at_end, timeout, f"the end of {topic}", interval=0)
        return sum(consumer.highwater(tp) for tp in partitions)
    finally:
        consumer.close()


def wait_until_all_read(dsn: str, bootstrap: str, topic: str, timeout: float) -> None:
    """Wait until the stored offsets reach the end of every partition, once everything is
    sent: nothing on the topic is left to count (or to count twice)."""

    def stored() -> int:
        try:
            rows = query(
                dsn, "SELECT sum(next_offset) FROM consumer_offsets WHERE topic = %s", (topic,)
            )
        except psycopg2.Error:
            return -1
        return int(rows[0][0] or 0)

    end = messages_in(bootstrap, topic)
    try:
        wait_until(lambda: stored() == end, timeout, "", interval=0.2)
    except TimeoutError:
        raise AssertionError(f"{stored()} of the {end} messages of {topic} read") from None


def produce_raw(bootstrap: str, topic: str, values: Iterable[bytes | None], key: bytes) -> None:
    producer = new_producer(bootstrap)
    for value in values:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


class StreamWriter(threading.Thread):
    """Publishes events in chunks over time, so that faults can strike mid-stream."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        events: Sequence[Event],
        chunk: int,
        pause: float,
        until: threading.Event | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.events = bootstrap, topic, events
        self.chunk, self.pause = chunk, pause
        self.sent = 0
        self.halt = threading.Event()
        # Once this is set, the rest goes out without pauses: a test that has seen what it
        # needed mid-stream need not wait for the stream's natural end.
        self.until = until

    def run(self) -> None:
        producer = new_producer(self.bootstrap)
        try:
            for start in range(0, len(self.events), self.chunk):
                for e in self.events[start : start + self.chunk]:
                    producer.send(
                        self.topic,
                        key=e.symbol.encode(),
                        value=e.message(),
                        timestamp_ms=e.event_time,
                    )
                producer.flush()
                self.sent = min(len(self.events), start + self.chunk)
                if self.until is not None and self.until.is_set():
                    continue
                if self.halt.wait(self.pause):  # paces the stream; not a synchronisation
                    return
        finally:
            producer.close()


def consumer_env(
    broker: TansuBroker,
    postgres: PostgresServer,
    database: str,
    topic: str,
    group: str | None = None,
    flush_interval: float = 0.5,
) -> dict[str, str]:
    """The consumer's settings for a test: short flushes, a short session timeout so a killed
    member's partitions move on quickly."""
    return {
        **postgres.env(database),
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "KAFKA_TOPIC": topic,
        "KAFKA_CONSUMER_GROUP": group or f"aggregator-{topic}",  # no member left by another test
        "FLUSH_INTERVAL_SECONDS": str(flush_interval),
        "KAFKA_SESSION_TIMEOUT_MS": "6000",
        "KAFKA_MAX_POLL_INTERVAL_MS": "5000",
    }


def start_consumer(env: dict[str, str], instance: str = "c1") -> Script:
    return Script("consumer", env={**env, "CONSUMER_INSTANCE_ID": instance})


def wait_for_total(dsn: str, expected: int, timeout: float, consumers: Sequence[Script] = ()):
    """Wait until the windows hold `expected` events; show consumer output on failure."""

    def done() -> bool:
        for script in consumers:
            if script.process.poll() is not None:
                raise AssertionError(f"consumer exited:\n{script.output()[-3000:]}")
        return total_events(dsn) == expected

    try:
        wait_until(done, timeout, f"{expected} events in five_min_bitcoin_event", interval=0.2)
    except TimeoutError:
        logs = "\n".join(s.output()[-2000:] for s in consumers)
        raise AssertionError(f"stored {total_events(dsn)} of {expected} events\n{logs}") from None


@contextmanager
def group_member(
    bootstrap: str, topic: str, group: str, until: Callable[[], object] | None = None
) -> Iterator[None]:
    """A plain member of the group that joins (rebalancing the others) until it has partitions
    or `until()` is true, reads nothing, then leaves."""
    member = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        session_timeout_ms=6000,
        max_poll_interval_ms=30000,
    )
    member.subscribe([topic])

    def joined() -> object:
        if until is not None and until():
            return True
        member.poll(timeout_ms=100)  # drives the join; what it reads is ignored
        return member.assignment()

    try:
        wait_until(joined, 30, "the member to get partitions", interval=0)
        member.pause(*member.assignment())
        yield
    finally:
        member.close()


END_MARKER = b"__end_of_test__"


def read_all_records(bootstrap: str, topic: str, timeout: float = 30) -> dict[int, list[Any]]:
    """Every record of every partition, in offset order, up to an end marker appended now
    (Tansu's end offsets cannot be trusted for multi-record batches)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = sorted(
            wait_until(lambda: consumer.partitions_for_topic(topic), timeout, topic)
        )
        marker = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        for partition in partitions:
            marker.send(topic, key=END_MARKER, value=b"", partition=partition)
        marker.flush(timeout=timeout)
        marker.close()
        assigned = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        records: dict[int, list[Any]] = {p: [] for p in partitions}
        ended: set[int] = set()

        def read() -> bool:
            for tp, batch in consumer.poll(timeout_ms=200).items():
                for record in batch:
                    if record.key == END_MARKER:
                        ended.add(tp.partition)
                    elif tp.partition not in ended:
                        records[tp.partition].append(record)
            return len(ended) == len(partitions)

        wait_until(read, timeout, "the end markers", interval=0)
        return records
    finally:
        consumer.close()
