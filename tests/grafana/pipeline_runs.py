"""The real pipeline filling a database for the Grafana tests, and what it stored.

History replayed by producer.py (Binance klines files) and live messages in the message
contract, published to a real Kafka-protocol broker and aggregated by consumer.py. `Pipeline`
remembers what it published; expected windows come from tests.pipeline.expected_windows
(independent of the consumer's code), metrics from the pipeline_metrics rows the consumer wrote."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import psycopg2

from aggregator.report import PER_MESSAGE_LIMIT  # consumer/ is on sys.path (conftest.py)
from btcpipe.clock import wall_clock_ms
from tests.harness import PostgresServer, TansuBroker
from tests.harness.net import wait_until
from tests.harness.scripts import Script, run_script
from tests.pipeline import (
    WINDOW_MS,
    Event,
    assert_tables_equal_truth,
    consumer_env,
    create_topic,
    expected_windows,
    produce,
    produce_raw,
    random_trades,
    start_consumer,
    wait_for_total,
)
from tests.pipeline import (
    query as superuser_query,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

SYMBOLS = {
    "BTCUSDT": Decimal("67250.00"),
    "ETHUSDT": Decimal("3480.00"),
    "SOLUSDT": Decimal("152.40"),
}
LIVE = "binance"  # the producer's source for live prices
REPLAY = "replay"  # replayed history: in its windows and in throughput, never processing lag
WINDOW = timedelta(minutes=5)
MINUTE = timedelta(minutes=1)
MILLISECOND = timedelta(milliseconds=1)
POLL = timedelta(seconds=10)  # the producer's poll interval: one live event per symbol
BUCKET = timedelta(seconds=30)  # the KPI panels group pipeline_metrics rows by 30 s
FAST_FLUSH = 0.5  # seconds: many metrics rows in little time
# No timer flush: everything a consumer reads is written by its final flush on SIGTERM, as ONE
# pipeline_metrics row, which is then that instance's latest flush.
HELD_FLUSH = 3600.0
HELD_LIMIT = PER_MESSAGE_LIMIT  # the consumer logs one `Consumed:` line per message up to this
IDLE_FLUSHES = 2


@dataclass(frozen=True)
class Window:
    """One candle of five_min_candles (a window's row of the best feed it has), as computed
    offline from the published events."""

    symbol: str
    start: datetime
    count: int
    price_sum: Decimal
    low: Decimal
    high: Decimal
    open: Decimal
    close: Decimal
    last_event_at: datetime
    volume: Decimal | None = None  # None: a window of price samples only
    quote_volume: Decimal | None = None
    trade_count: int | None = None
    first_trade_id: int | None = None  # None: no trades (samples, candles)
    last_trade_id: int | None = None


@dataclass(frozen=True)
class MetricRow:
    """One row of pipeline_metrics, read back as written by consumer.py."""

    timestamp: datetime
    instance_id: str
    events_processed: int
    live_events: int
    replayed_events: int
    events_per_second: float
    lag: float | None
    max_lag: float | None
    data_size_kb: Decimal
    consumer_offset_lag: int | None
    late_events: int
    invalid_events: int
    skipped_offsets: int

    def lags(self) -> tuple[float, float]:
        """(mean, max) processing lag of a flush that had live events."""
        assert self.lag is not None and self.max_lag is not None, f"no live events: {self}"
        return self.lag, self.max_lag


METRIC_COLUMNS = (
    "metric_timestamp, instance_id, events_processed, live_events, replayed_events, "
    "events_per_second, processing_lag_seconds, max_processing_lag_seconds, data_size_kb, "
    "consumer_offset_lag, late_events, invalid_events, skipped_offsets"
)


@dataclass
class PipelineData:
    windows: list[Window] = field(default_factory=list)
    metrics: list[MetricRow] = field(default_factory=list)


def from_ms(epoch_ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=epoch_ms)


def to_ms(moment: datetime) -> int:
    return (moment - EPOCH) // MILLISECOND


def floor_time(moment: datetime, step: timedelta) -> datetime:
    return EPOCH + (moment - EPOCH) // step * step


FEED_PRECEDENCE = ("trades", "klines", "samples")  # the candle of a window: the first there


def truth_windows(events: Sequence[Event]) -> list[Window]:
    """The candles of `events` from tests.pipeline.expected_windows (independent of the
    consumer's code): per symbol and window, the row of the first feed of FEED_PRECEDENCE."""
    rows = expected_windows(events)
    candles: dict[tuple[str, int], dict] = {}
    for (symbol, start, _), w in sorted(
        rows.items(), key=lambda item: FEED_PRECEDENCE.index(item[0][2]), reverse=True
    ):
        candles[(symbol, start)] = w  # the preferred feed comes last and stays
    return [
        Window(
            symbol=symbol,
            start=from_ms(start),
            count=w["event_count"],
            price_sum=w["price_sum"],
            low=w["min_value"],
            high=w["max_value"],
            open=w["open_value"],
            close=w["close_value"],
            last_event_at=from_ms(w["last_event_at"]),
            volume=w["volume"],
            quote_volume=w["quote_volume"],
            trade_count=w["trade_count"],
            first_trade_id=w["first_trade_id"],
            last_trade_id=w["last_trade_id"],
        )
        for (symbol, start), w in sorted(candles.items())
    ]


def stored_metrics(dsn: str) -> list[MetricRow]:
    """pipeline_metrics as the consumer wrote it, read as the superuser."""
    rows = superuser_query(dsn, f"SELECT {METRIC_COLUMNS} FROM pipeline_metrics ORDER BY 1, 2")
    return [MetricRow(*row) for row in rows]


def count_late(events: Sequence[Event]) -> int:
    """Events one consumer process must count as late: older than the newest window it has
    already read of the same stream (without identity: the same symbol and kind of source,
    live or replayed)."""
    newest: dict[object, int] = {}
    late = 0
    for event in events:
        stream = event.stream or (event.symbol, event.source == REPLAY)
        start = event.event_time - event.event_time % WINDOW_MS
        if stream in newest and start < newest[stream]:
            late += 1
        else:
            newest[stream] = start
    return late


def price_walk(rng: random.Random, start: Decimal, steps: int, places: int) -> list[str]:
    prices, price, quantum = [], start, Decimal(1).scaleb(-places)
    for _ in range(steps):
        price = (price * Decimal(repr(1 + rng.gauss(0, 0.0006)))).quantize(quantum)
        prices.append(format(price, "f"))
    return prices


def klines(rng: random.Random, symbol: str, opens: Sequence[datetime]) -> list[Event]:
    """Replayed 1-minute klines: one event per kline at its close time with its close price,
    as producer.py --source replay reads them (8 decimals, like Binance's files)."""
    prices = price_walk(rng, SYMBOLS[symbol], len(opens), 8)
    return [
        Event(symbol, price, to_ms(start + MINUTE) - 1, REPLAY)
        for start, price in zip(opens, prices, strict=True)
    ]


def minutes(first: datetime, last: datetime) -> list[datetime]:
    """Kline open times from `first` to `last` (both floored to the minute)."""
    first, last = floor_time(first, MINUTE), floor_time(last, MINUTE)
    return [first + k * MINUTE for k in range((last - first) // MINUTE + 1)]


def live_events(rng: random.Random, times: Mapping[str, Sequence[int]]) -> list[Event]:
    """Live prices (2 decimals, like Binance's ticker) at the given event times per symbol,
    in event-time order across symbols, as the producer publishes them poll by poll."""
    events = []
    for symbol, stamps in times.items():
        prices = price_walk(rng, SYMBOLS[symbol], len(stamps), 2)
        events += [Event(symbol, p, t, LIVE) for t, p in zip(stamps, prices, strict=True)]
    return sorted(events, key=lambda e: e.event_time)


def polls(last: datetime, span: timedelta, offset: timedelta = timedelta(0)) -> list[int]:
    """Event times of polls every POLL up to `last` - `offset`, over `span`. Live times end
    in .500 s, kline close times in .999 s: no two events share an event time."""
    newest = to_ms(floor_time(last - offset, timedelta(seconds=1))) + 500
    return [newest - k * (POLL // MILLISECOND) for k in range(span // POLL + 1)][::-1]


def write_klines_file(folder: Path, events: Sequence[Event]) -> tuple[Path, list[Event]]:
    """A Binance spot 1-minute klines CSV of one symbol (12 columns, no header, times in µs as
    since 2025), one candle per event closing at its time at its price, and the candles as
    producer.py replays them (the exchange's identity: klines/<symbol>/1m, the open time)."""
    symbol = events[0].symbol
    path = folder / f"{symbol}-1m-{from_ms(events[0].event_time):%Y-%m-%d}.csv"
    candles = []
    with path.open("w") as out:
        for e in events:
            open_ms = e.event_time - 59_999
            quote = f"{Decimal(e.price) * Decimal('1.5')}"
            out.write(
                f"{open_ms * 1000},{e.price},{e.price},{e.price},{e.price},1.50000000,"
                f"{e.event_time * 1000 + 999},{quote},42,0.75000000,0.75,0\n"
            )
            kline = {
                "interval": "1m", "open_time": open_ms, "open": e.price, "high": e.price,
                "low": e.price, "close": e.price, "volume": "1.50000000",
                "quote_volume": quote, "trade_count": 42,
            }  # fmt: skip
            candles.append(
                Event(symbol, e.price, e.event_time, REPLAY, f"klines/{symbol}/1m", open_ms,
                      kline=kline)
            )  # fmt: skip
    return path, candles


@dataclass
class Pipeline:
    """One deployment of the pipeline for a test: its own topic and database, the real
    producer.py (for replays) and consumer.py. Remembers what it published, for expectations."""

    broker: TansuBroker
    postgres: PostgresServer
    database: str
    topic: str
    workdir: Path
    events: list[Event] = field(default_factory=list)  # valid events published, in order
    invalid: int = 0  # messages published that fail validation
    late: int = 0  # events the consumers must have counted as late
    unread: list[Event] = field(default_factory=list)  # published, not yet read by a consumer
    replays: int = 0

    @classmethod
    def create(
        cls, broker: TansuBroker, postgres: PostgresServer, database: str, topic: str, workdir: Path
    ) -> Pipeline:
        create_topic(broker.bootstrap, topic)
        return cls(broker, postgres, database, topic, workdir)

    @property
    def dsn(self) -> str:
        return self.postgres.dsn(self.database)

    def _published(self, events: Sequence[Event]) -> None:
        self.events += events
        self.unread += events

    def publish(self, events: Sequence[Event]) -> None:
        """Live messages in the contract, keyed by symbol, as the producer sends them."""
        produce(self.broker.bootstrap, self.topic, events)
        self._published(events)

    def publish_invalid(self, values: Sequence[bytes], symbol: str) -> None:
        produce_raw(self.broker.bootstrap, self.topic, values, key=symbol.encode())
        self.invalid += len(values)

    def replay(self, events: Sequence[Event]) -> None:
        """Write `events` as Binance klines files (one per symbol) and publish them with
        `producer.py --source replay`, which sends them in file order."""
        self.replays += 1
        folder = self.workdir / f"replay-{self.replays}"
        folder.mkdir()
        by_symbol: dict[str, list[Event]] = defaultdict(list)
        for event in events:
            by_symbol[event.symbol].append(event)
        written = [write_klines_file(folder, batch) for batch in by_symbol.values()]
        files = [path for path, _ in written]
        result = run_script(
            "producer",
            [
                *("--source", REPLAY, "--bootstrap-servers", self.broker.bootstrap),
                *("--topic", self.topic, *map(str, files)),
            ],
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"Replay done: {len(events)} events" in result.stdout, result.stdout
        self._published([candle for _, candles in written for candle in candles])

    def consumer(self, instance: str, flush_interval: float) -> Script:
        env = consumer_env(
            self.broker, self.postgres, self.database, self.topic, flush_interval=flush_interval
        )
        return start_consumer(env, instance)

    def _read(self) -> None:
        self.late += count_late(self.unread)
        self.unread = []

    def metrics_of(self, instance: str) -> list[MetricRow]:
        return [row for row in stored_metrics(self.dsn) if row.instance_id == instance]

    def run_until_idle(self, instance: str, publish: Callable[[], None] = lambda: None) -> None:
        """consumer.py flushing every FAST_FLUSH s; `publish` runs while it joins the group.
        Once every published message is accounted for in pipeline_metrics and IDLE_FLUSHES
        more flushes found nothing, SIGTERM: the consumer must exit with 0."""
        with self.consumer(instance, FAST_FLUSH) as consumer:
            publish()
            wait_for_total(self.dsn, len(self.events), 60, [consumer])

            def accounted() -> list[MetricRow]:
                """The metrics rows once they account for every message; none before."""
                if consumer.process.poll() is not None:
                    raise AssertionError(f"consumer exited:\n{consumer.output()[-3000:]}")
                try:
                    rows = stored_metrics(self.dsn)
                except psycopg2.Error:  # the consumer has not created the schema yet
                    return []
                processed = sum(row.events_processed for row in rows)
                invalid = sum(row.invalid_events for row in rows)
                return rows if (processed, invalid) == (len(self.events), self.invalid) else []

            busy = len(wait_until(accounted, 30, "every message in pipeline_metrics"))
            wait_until(
                lambda: len(stored_metrics(self.dsn)) >= busy + IDLE_FLUSHES,
                30,
                f"{IDLE_FLUSHES} idle flushes of {instance}",
            )
            assert consumer.stop() == 0, consumer.output()[-3000:]
        self._read()
        newest = self.metrics_of(instance)[-1]
        assert newest.events_processed == 0 and newest.lag is None, newest

    def run_held(self, instance: str, publish: Callable[[], None]) -> MetricRow:
        """consumer.py without timer flushes: `publish` runs once it owns the partitions;
        when it has read every message, SIGTERM makes its final flush write them all as ONE
        pipeline_metrics row (returned), which is then that instance's latest flush."""
        before = len(self.events)
        with self.consumer(instance, HELD_FLUSH) as consumer:
            consumer.wait_for_output("Resuming from stored offsets")
            publish()
            sent = len(self.events) - before
            assert 0 < sent <= HELD_LIMIT
            consumer.wait_for_output("Consumed: ", count=sent)
            assert consumer.stop() == 0, consumer.output()[-3000:]
        self._read()
        flush = self.metrics_of(instance)[-1]
        assert flush.events_processed == sent, (flush, consumer.output()[-3000:])
        return flush

    def data(self) -> PipelineData:
        return PipelineData(truth_windows(self.events), stored_metrics(self.dsn))

    def assert_stored_exactly_what_was_published(self) -> None:
        assert not self.unread
        assert_tables_equal_truth(self.dsn, self.events)
        rows = stored_metrics(self.dsn)
        replayed = sum(event.source == REPLAY for event in self.events)
        assert (
            sum(r.events_processed for r in rows),
            sum(r.live_events for r in rows),
            sum(r.replayed_events for r in rows),
            sum(r.invalid_events for r in rows),
            sum(r.late_events for r in rows),
        ) == (len(self.events), len(self.events) - replayed, replayed, self.invalid, self.late)


def fresh(rng: random.Random, age: timedelta = timedelta(0)) -> list[Event]:
    """One live event per symbol, `age` old right now."""
    stamp = wall_clock_ms() - age // MILLISECOND
    return live_events(rng, {symbol: [stamp] for symbol in SYMBOLS})


# --- the healthy run: hours of history, minutes of live feed, a late event, invalid messages

HISTORY = {  # how far back each symbol's replayed history starts
    "BTCUSDT": timedelta(hours=7),  # before the price dashboard's 6 h range
    "ETHUSDT": timedelta(hours=3),  # starts later
    "SOLUSDT": timedelta(hours=6),  # with a gap, see GAP
}
GAP = timedelta(minutes=30)  # SOLUSDT's history has no klines for 30 minutes, 3 h ago
LIVE_SPAN = timedelta(minutes=4)  # minutes of the live feed after the history ...
NEWEST_AGE = timedelta(seconds=20)  # ... up to this long ago
LATE_AGE = timedelta(minutes=9)  # a live ETHUSDT price that arrives after newer ones
INVALID = [b"not json", b'{"symbol": "BTCUSDT", "price": "67250.00"}']  # no event_time
LAG = timedelta(seconds=90)


def history_events(rng: random.Random, now: datetime) -> list[Event]:
    """Hours of 1-minute klines per symbol, up to 5 minutes ago."""
    last = now - WINDOW
    gap = floor_time(now - timedelta(hours=3), WINDOW)
    events = []
    for symbol, span in HISTORY.items():
        opens = minutes(last - span, last)
        if symbol == "SOLUSDT":
            opens = [start for start in opens if not gap <= start < gap + GAP]
        events += klines(rng, symbol, opens)
    return events


TRADED = "ETHUSDT"  # the pair a trade stream follows beside its poller
TRADE_SPAN = timedelta(minutes=40)  # of trades, up to the newest live price
HOLE_AGE = timedelta(minutes=22)  # one aggregate trade missing then: its window is incomplete


def trade_feed(rng: random.Random, newest: datetime) -> list[Event]:
    """Aggregate trades of TRADED over TRADE_SPAN up to `newest`, as a trade stream publishes
    them (exchange identities, in id order), but for one trade the stream never delivered."""
    first = newest - TRADE_SPAN
    trades = random_trades(rng, 600, symbols=(TRADED,), start_ms=to_ms(first))
    span = to_ms(newest) - to_ms(first)
    last = trades[-1].event_time - to_ms(first)
    trades = [
        Event(e.symbol, e.price, to_ms(first) + (e.event_time - to_ms(first)) * span // last,
              LIVE, e.stream, e.seq, e.quantity, e.first_trade_id, e.last_trade_id)
        for e in trades
    ]  # fmt: skip

    # A trade with a neighbour on each side in its own window: a window's first or last trade
    # missing would leave its ids contiguous, the window complete.
    def inside(i: int) -> bool:
        return len({t.event_time // WINDOW_MS for t in trades[i - 1 : i + 2]}) == 1

    hole = min(
        (i for i in range(1, len(trades) - 1) if inside(i)),
        key=lambda i: abs(trades[i].event_time - to_ms(newest - HOLE_AGE)),
    )
    return trades[:hole] + trades[hole + 1 :]


def live_feed(rng: random.Random, newest: datetime, span: timedelta) -> list[Event]:
    """A poll of every symbol every POLL over `span` up to `newest`; BTCUSDT polled last."""
    offsets = {symbol: k * timedelta(seconds=3) for k, symbol in enumerate(SYMBOLS)}
    return live_events(rng, {s: polls(newest, span, offset) for s, offset in offsets.items()})


@dataclass(frozen=True)
class HealthyRun:
    pipeline: Pipeline
    data: PipelineData
    fresh: MetricRow  # consumer-b's one flush: a poll of every symbol, read at once
    fresh_bound: float  # seconds from before that poll was published to after it was flushed


def healthy_run(broker: TansuBroker, postgres: PostgresServer, workdir: Path) -> HealthyRun:
    """A healthy pipeline: hours of history replayed by producer.py, then minutes of the live
    feed (with a late event and invalid messages), read by consumer-a, which flushes every
    FAST_FLUSH s until it idles and stops; then consumer-b reads a fresh poll of every
    symbol the moment it is published (its only flush)."""
    rng = random.Random(20240412)
    now = datetime.now(UTC)
    name = workdir.name.replace("-", "_").lower()  # one database and topic per run
    pipeline = Pipeline.create(
        broker, postgres, postgres.create_database(name), f"btc_price_{name}", workdir
    )
    late_price = price_walk(rng, SYMBOLS["ETHUSDT"], 1, 2)[0]
    late = Event("ETHUSDT", late_price, to_ms(floor_time(now - LATE_AGE, MINUTE)) + 250, LIVE)

    def publish() -> None:
        pipeline.replay(history_events(rng, now))
        pipeline.publish_invalid(INVALID, "BTCUSDT")
        pipeline.publish(live_feed(rng, now - NEWEST_AGE, LIVE_SPAN - NEWEST_AGE))
        pipeline.publish(trade_feed(rng, now - NEWEST_AGE))
        pipeline.publish([late])

    pipeline.run_until_idle("consumer-a", publish)
    started = wall_clock_ms()
    flush = pipeline.run_held("consumer-b", lambda: pipeline.publish(fresh(rng)))
    return HealthyRun(pipeline, pipeline.data(), flush, (wall_clock_ms() - started) / 1000)
