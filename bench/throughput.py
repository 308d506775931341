"""Pipeline throughput benchmark. Prints figures and ratios; asserts nothing about time.

One run, one Kafka-protocol broker (Tansu), one PostgreSQL, this machine:
 0. kafka-python must use the `crc32c` C extension: the bench stops if it fell back to its
    pure-Python CRC32C (about half of either client's time).
 1. Replay producer: (d) a bare kafka-python idempotent producer sending the messages of an
    aggTrades file (same client settings and codec as producer.py), (e) `producer.py
    --source replay`.
 2. Consumer, on the topic (e) filled: (a) a bare kafka-python consumer, poll + json.loads
    (same fetch settings), (b) `consumer.py` until every event is in PostgreSQL (then checked
    exact: the file's lines are trades, so their windows' volume and trade count too), (c)
    Quix Streams doing the same windows with no sink (optional peer).
 3. Backfill end to end: `producer.py --source replay` and `consumer.py` at the same time,
    from the file to visible in PostgreSQL, checked exact.
 4. Many symbols: `SYMBOLS=ALL` against a fake Binance listing 3,000 pairs: the producer's
    tick duration and the consumer's flush duration.
 5. The trade source (`producer.py --source binance-trades`) against the fake Binance's
    tapes, pre-filled before it starts and caught up through REST aggTrades pages (the
    WebSocket connections open, and stay quiet): (g) into Kafka until the topic holds every
    trade, next to the bare idempotent producer sending the same messages; (h) end to end
    with `consumer.py` until every trade is in PostgreSQL, checked against the tapes; (g)
    live: trades pushed over the WebSocket at `--live-rate`, what reaches the topic and the
    CPU of each process; then `SYMBOLS=ALL` against a fake listing `--trade-pairs` pairs,
    each with a tape, caught up the same way and then sent a live burst over the WebSocket
    connections.

Run: bench/run.sh [--events 500000] [--partitions 3] [--flush-interval 30]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import orjson
import psycopg2
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "producer"), str(ROOT / "consumer")]

from aggregator.kafka_reader.client import FETCH_SETTINGS  # noqa: E402
from bench.data import (  # noqa: E402
    TapeRow,
    check_tables,
    check_trade_totals,
    file_trade_totals,
    file_windows,
    tape_trade_totals,
    tape_windows,
    trade_messages,
    write_agg_trades,
)
from btcpipe.contract import agg_trade_stream  # noqa: E402
from pricefeed.kafka_sink.clients import (  # noqa: E402
    CLIENT_SETTINGS,
    DEFAULT_COMPRESSION,
    compression_type,
)

# The real servers of the test harness (a Kafka-protocol broker, PostgreSQL, a fake Binance):
# the bench measures the scripts against the same servers the tests use.
from tests.harness import AggTrade, FakeBinance, PostgresServer, TansuBroker  # noqa: E402
from tests.harness.fake_binance import listed_pairs  # noqa: E402
from tests.harness.market_data import AGG_TRADES_PATH  # noqa: E402
from tests.harness.net import wait_until  # noqa: E402
from tests.harness.scripts import Script  # noqa: E402

SYMBOL = "BTCUSDT"
TRADE_SYMBOLS = ("BTCUSDT", "ETHUSDT")  # the trade source's (g) and (h): the events split
CONNECTED = "Connected to Binance's trade streams"
LIVE_SECONDS = 8.0  # the live row's measuring period
LOOK_POLLS = 40  # short polls a topic count waits for its fetch, then it says what it has
PEERS_REQUIREMENTS = "bench/requirements-peers.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=500_000, help="trades in the file")
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument(
        "--flush-interval",
        type=float,
        default=30.0,
        help="consumer.py's in (b), as it runs by default (it flushes on catching up)",
    )
    parser.add_argument(
        "--backfill-flush-interval",
        type=float,
        default=0.5,
        help="consumer.py's in the backfill, where it keeps up and has no backlog to catch up "
        "with: the last events wait for the next flush",
    )
    parser.add_argument("--pairs", type=int, default=3000, help="pairs for SYMBOLS=ALL")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each compared pair")
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["replay", "quix", "backfill", "pairs", "trade-source"],
        help="sections to leave out (replay: 1 and 2, the replay producer and the consumers)",
    )
    parser.add_argument(
        "--live-rate",
        type=float,
        default=10_000,
        help="trades a second the fake Binance pushes live for the trade source's live row",
    )
    parser.add_argument(
        "--trade-pairs", type=int, default=2700, help="pairs for the trade source's SYMBOLS=ALL"
    )
    parser.add_argument(
        "--trades-per-pair",
        type=int,
        default=20,
        help="on each pair's tape before the SYMBOLS=ALL run, and again as its live burst",
    )
    args = parser.parse_args()

    require_crc32c_extension()
    report = Report()
    report.line(f"machine: {os.cpu_count()} cores, load {load()} at start (shared machine)")
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(TansuBroker())
        postgres = stack.enter_context(PostgresServer(durable=True))
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        bench = Bench(broker, postgres, folder, args, report)
        if "replay" not in args.skip:
            bench.producers()
            bench.consumers("quix" not in args.skip)
        if "backfill" not in args.skip:
            bench.backfill()
        if "pairs" not in args.skip:
            bench.many_pairs()
        if "trade-source" not in args.skip:
            bench.trade_source()
    report.line(f"machine: load {load()} at the end")
    report.print()


def require_crc32c_extension() -> None:
    """kafka-python picks up `crc32c` by itself, and silently falls back without it."""
    from kafka.record import util

    try:
        import crc32c
    except ImportError:
        sys.exit("bench: the crc32c package is not installed: run tests/setup.sh (or bench/run.sh)")
    if util.calc_crc32c.__defaults__[0] is not crc32c.crc32c:
        sys.exit("bench: kafka-python fell back to its pure-Python CRC32C despite crc32c")
    print(
        f"kafka-python uses the crc32c C extension (hardware-accelerated: {crc32c.hardware_based})",
        flush=True,
    )


class Report:
    def __init__(self) -> None:
        self.rows: list[str] = []

    def line(self, text: str) -> None:
        print(text, flush=True)
        self.rows.append(text)

    def rates(self, label: str, events: int, seconds: list[float]) -> list[float]:
        """The best run's rate (the least disturbed by other work), then every run's."""
        rates = [events / s for s in seconds]
        runs = ", ".join(f"{rate:,.0f}" for rate in rates)
        self.line(f"{label:<52} {max(rates):>10,.0f} events/s  (runs: {runs}; {events:,} events)")
        return rates

    def ratios(self, label: str, ours: list[float], theirs: list[float]) -> None:
        pairs = ", ".join(f"{a / b:.2f}" for a, b in zip(ours, theirs, strict=False))
        self.line(
            f"    {label:<48} {max(ours) / max(theirs):>10.2f}  (best/best; run by run: {pairs})"
        )

    def print(self) -> None:
        print("\n" + "\n".join(self.rows))


class Bench:
    def __init__(
        self,
        broker: TansuBroker,
        postgres: PostgresServer,
        folder: Path,
        args: argparse.Namespace,
        report: Report,
    ) -> None:
        self.broker, self.postgres, self.folder = broker, postgres, folder
        self.args, self.report = args, report
        self.file = folder / f"{SYMBOL}-aggTrades-2026-01-01.csv"
        print(f"Writing {args.events:,} aggTrades lines to {self.file.name}...", flush=True)
        write_agg_trades(self.file, args.events)
        self.replay_topic = ""

    # -- 1. the replay producer ---------------------------------------------------------------

    def producers(self) -> None:
        """Bare and replay alternate `--repeat` times: the machine is shared, so each is
        reported at its best run, next to the ratio of each pair of runs."""
        n, bare, replay, rss = self.args.events, [], [], 0.0
        for run in range(1, self.args.repeat + 1):
            topic = self.topic(f"bench_bare_producer_{run}")
            print(f"(d) bare idempotent producer, run {run}...", flush=True)
            bare.append(bare_producer_seconds(self.broker.bootstrap, topic, self.file))
            topic = self.topic(f"bench_replay_{run}")
            self.replay_topic = self.replay_topic or topic
            print(f"(e) producer.py --source replay, run {run}...", flush=True)
            args = ["--source", "replay", str(self.file)]
            script = self.script("producer", args, self.kafka_env(topic))
            rss = max(rss, script.finish(wait=True))
            script.expect_success()
            replay.append(script.seconds_between("Connected to Kafka", "Producer stopped"))
        d = self.report.rates("(d) bare kafka-python idempotent producer", n, bare)
        e = self.report.rates("(e) producer.py --source replay", n, replay)
        self.report.ratios("(e)/(d)", e, d)
        self.report.line(f"    producer.py peak RSS {rss:.0f} MB (file of {n:,} lines)")

    # -- 2. the consumers ---------------------------------------------------------------------

    def consumers(self, with_quix: bool) -> None:
        n, topic = self.args.events, self.replay_topic
        bare, ours, rss, cpu_shares = [], [], 0.0, []
        markers: list[tuple[str, int]] = []
        for run in range(1, self.args.repeat + 1):
            print(f"(a) bare consumer, run {run}...", flush=True)
            seconds, cpu_share = bare_consumer_seconds(
                self.broker.bootstrap, topic, self.args.partitions, n
            )
            bare.append(seconds)
            cpu_shares.append(cpu_share)
            print(f"(b) consumer.py, run {run}...", flush=True)
            dsn, env = self.database(f"bench_consumer_{run}", topic, self.args.flush_interval)
            consumer = self.script("consumer", [], env)
            consumer.wait_for("Resuming from stored offsets")
            started = time.perf_counter()
            with StoredCount(dsn) as stored:
                # The topic also holds the live events of the runs before.
                consumer.wait_until(lambda: stored() >= n + len(markers), 3600, "the backlog")
                ours.append(time.perf_counter() - started)
                marker, visible_after = live_event_latency(self.broker.bootstrap, topic, stored)
                markers.append(marker)
            rss = max(rss, consumer.finish())
            # The live markers are price samples: rows of their own, beside the file's trades.
            check_tables(dsn, file_windows(self.file, SYMBOL))
            check_trade_totals(dsn, file_trade_totals(self.file, SYMBOL))
        a = self.report.rates("(a) bare kafka-python consumer, poll + json.loads", n, bare)
        b = self.report.rates("(b) consumer.py into PostgreSQL (checked exact)", n, ours)
        self.report.ratios("(b)/(a)", b, a)
        shares = ", ".join(f"{share:.2f}" for share in cpu_shares)
        self.report.line(f"    (a) used a CPU for this share of its time: {shares}")
        self.report.line(
            f"    consumer.py peak RSS {rss:.0f} MB; a live event visible after "
            f"{visible_after:.2f} s (flush every {self.args.flush_interval:g} s)"
        )
        if not with_quix:
            return
        if importlib.util.find_spec("quixstreams") is None:
            self.report.line(
                f"(c) Quix Streams: skipped, not installed (pip install -r {PEERS_REQUIREMENTS})"
            )
            return
        print("(c) Quix Streams...", flush=True)
        quix = quix_seconds(self.broker.bootstrap, topic, n)
        c = self.report.rates("(c) Quix Streams, same windows, no sink", n, [quix])
        self.report.ratios("(b)/(c)", b, c)

    # -- 3. backfill end to end ---------------------------------------------------------------

    def backfill(self) -> None:
        n, topic = self.args.events, self.topic("bench_backfill")
        dsn, env = self.database("bench_backfill", topic, self.args.backfill_flush_interval)
        print("Backfill: producer.py --source replay and consumer.py together...", flush=True)
        consumer = self.script("consumer", [], env)
        consumer.wait_for("Resuming from stored offsets")
        started = time.perf_counter()
        producer = self.script("producer", ["--source", "replay", str(self.file)], env)
        with StoredCount(dsn) as stored:
            consumer.wait_until(lambda: stored() >= n, 3600, "the backfill in PostgreSQL")
        seconds = time.perf_counter() - started
        producer_rss = producer.finish(wait=True)
        producer.expect_success()
        consumer_rss = consumer.finish()
        check_tables(dsn, file_windows(self.file, SYMBOL))
        self.report.rates("backfill: file -> visible in PostgreSQL (checked exact)", n, [seconds])
        self.report.line(
            f"    peak RSS producer.py {producer_rss:.0f} MB, consumer.py {consumer_rss:.0f} MB; "
            f"consumer.py flushing every {self.args.backfill_flush_interval:g} s"
        )

    # -- 4. many symbols ----------------------------------------------------------------------

    def many_pairs(self) -> None:
        pairs, interval = self.args.pairs, 2.0
        topic = self.topic("bench_all_pairs")
        dsn, env = self.database("bench_all_pairs", topic, interval)
        print(f"SYMBOLS=ALL with {pairs:,} pairs, a tick and a flush every {interval:g} s...")
        with FakeBinance(listed_pairs(pairs)) as binance:
            consumer = self.script("consumer", [], env)
            consumer.wait_for("Resuming from stored offsets")
            producer = self.script(
                "producer",
                [
                    "--symbols",
                    "ALL",
                    "--interval",
                    str(interval),
                    "--binance-url",
                    binance.base_url,
                ],
                env,
            )
            producer.wait_for(f"Produced: {pairs} prices", count=8, timeout=120)
            with StoredCount(dsn) as stored:
                consumer.wait_until(lambda: stored() >= 6 * pairs, 120, "six ticks in PostgreSQL")
            producer.finish()
            consumer.finish()
        ticks = [
            float(ms)
            for ms in re.findall(rf"Produced: {pairs} prices in (\d+) ms", producer.output())
        ]
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT flush_duration_ms FROM pipeline_metrics WHERE windows_updated >= %s",
                (pairs,),
            )
            flushes = [float(row[0]) for row in cur.fetchall()]
        conn.close()
        self.report.line(
            f"SYMBOLS=ALL, {pairs:,} pairs: producer tick {spread(ticks)} ms "
            f"(request to hand-over), consumer flush of {pairs:,} windows "
            f"{spread(flushes)} ms; cadence {interval:g} s (default 10 s)"
        )

    # -- 5. the trade source -----------------------------------------------------------------

    def trade_source(self) -> None:
        """One fake Binance whose tapes hold `--events` trades (split over TRADE_SYMBOLS,
        added before any connection: no WebSocket pushes them), each run catching up all of
        them from REST: `--since` is before the first."""
        per_symbol = self.args.events // len(TRADE_SYMBOLS)
        since = time.time_ns() // 1_000_000 - 1000
        with FakeBinance(prices={}) as binance:
            print(f"Trade tapes: {per_symbol:,} trades of each of {TRADE_SYMBOLS}...", flush=True)
            for symbol in TRADE_SYMBOLS:
                binance.add_trades(symbol, per_symbol)
            tapes = {symbol: tape_rows(binance.trades(symbol)) for symbol in TRADE_SYMBOLS}
            args = trade_source_args(binance, since, ",".join(TRADE_SYMBOLS))
            self.trade_source_producers(tapes, args)
            self.trade_source_end_to_end(tapes, args)
        self.trade_source_live()
        self.trade_source_all_pairs()

    def trade_source_producers(self, tapes: Mapping[str, list[TapeRow]], args: list[str]) -> None:
        messages = tape_messages(tapes)
        n, bare, ours, rss = len(messages), [], [], 0.0
        for run in range(1, self.args.repeat + 1):
            topic = self.topic(f"bench_bare_trades_{run}")
            print(f"(g) bare idempotent producer, trade messages, run {run}...", flush=True)
            bare.append(bare_send_seconds(self.broker.bootstrap, topic, messages))
            topic = self.topic(f"bench_trade_source_{run}")
            print(f"(g) producer.py --source binance-trades, run {run}...", flush=True)
            producer = self.script("producer", args, self.kafka_env(topic))
            producer.wait_for(CONNECTED)
            started = time.perf_counter()
            with TopicCount(self.broker.bootstrap, topic) as on_topic:
                producer.wait_until(lambda: on_topic() >= n, 3600, "every trade on the topic")
                ours.append(time.perf_counter() - started)
                rss = max(rss, producer.finish())
                producer.expect_success()
                held = on_topic()
            if held != n:
                raise RuntimeError(f"{topic} holds {held:,} messages, the tapes {n:,} trades")
            expect_no_gaps(producer)
        bare_rates = self.report.rates("(g) bare kafka-python idempotent producer, trades", n, bare)
        our_rates = self.report.rates("(g) producer.py --source binance-trades (REST)", n, ours)
        self.report.ratios("(g)/bare", our_rates, bare_rates)
        self.report.line(
            f"    from its stream connection to the last trade on the topic (high watermarks); "
            f"{len(tapes)} symbols, {n // 1000:,} REST pages; peak RSS {rss:.0f} MB"
        )

    def trade_source_end_to_end(self, tapes: Mapping[str, list[TapeRow]], args: list[str]) -> None:
        n, topic = sum(len(rows) for rows in tapes.values()), self.topic("bench_trades_e2e")
        flush = self.args.backfill_flush_interval
        dsn, env = self.database("bench_trades_e2e", topic, flush)
        print("(h) producer.py --source binance-trades and consumer.py together...", flush=True)
        consumer = self.script("consumer", [], env)
        consumer.wait_for("Resuming from stored offsets")
        launched = time.perf_counter()
        producer = self.script("producer", args, env)
        with StoredCount(dsn) as stored:
            producer.wait_for(CONNECTED)
            connected = time.perf_counter()
            consumer.wait_until(lambda: stored() >= n, 3600, "the trades in PostgreSQL")
        done = time.perf_counter()
        producer_rss, consumer_rss = producer.finish(), consumer.finish()
        producer.expect_success()
        expect_no_gaps(producer)
        check_trade_totals(dsn, tape_trade_totals(tapes))
        check_tables(dsn, tape_windows(tapes))
        self.report.rates("(h) trades: tapes -> PostgreSQL (checked exact)", n, [done - launched])
        self.report.line(
            f"    from producer.py's launch; from its stream connection "
            f"{n / (done - connected):,.0f} trades/s; peak RSS producer.py "
            f"{producer_rss:.0f} MB, consumer.py {consumer_rss:.0f} MB; flushing every {flush:g} s"
        )

    def trade_source_live(self) -> None:
        """Trades pushed over the WebSocket as they are made, at `--live-rate`: how much of
        it reaches the topic, and the CPU each process used meanwhile. The fake Binance runs
        in this process: its share says whether it, rather than the source, set the pace."""
        rate, seconds = self.args.live_rate, LIVE_SECONDS
        topic = self.topic("bench_trades_live")
        print(f"(g) live: {rate:,.0f} trades/s over the WebSocket for {seconds:g} s...", flush=True)
        with FakeBinance(prices={}) as binance:
            for symbol in TRADE_SYMBOLS:
                binance.add_tape(symbol)
            since = time.time_ns() // 1_000_000
            args = trade_source_args(binance, since, ",".join(TRADE_SYMBOLS))
            producer = self.script("producer", args, self.kafka_env(topic))
            producer.wait_for("follows the live stream", count=len(TRADE_SYMBOLS))
            with TopicReader(self.broker.bootstrap, topic) as on_topic:
                for symbol in TRADE_SYMBOLS:
                    binance.set_trade_rate(symbol, rate / len(TRADE_SYMBOLS))
                producer.wait_until(lambda: on_topic() >= rate, 60, "a second of live trades")
                first = (
                    time.perf_counter(),
                    on_topic(),
                    cpu_seconds(producer),
                    time.process_time(),
                )
                made = sum(len(binance.trades(symbol)) for symbol in TRADE_SYMBOLS)
                ends = first[0] + seconds
                while time.perf_counter() < ends:  # the measuring period: reading as it comes
                    on_topic()
                last = (time.perf_counter(), on_topic(), cpu_seconds(producer), time.process_time())
                made = sum(len(binance.trades(symbol)) for symbol in TRADE_SYMBOLS) - made
            producer.finish()
            producer.expect_success()
            expect_no_gaps(producer)
        elapsed = last[0] - first[0]
        self.report.rates(
            f"(g) live at {rate:,.0f}/s: onto the topic", last[1] - first[1], [elapsed]
        )
        self.report.line(
            f"    the fake made {made / elapsed:,.0f} trades/s; CPU: producer.py "
            f"{(last[2] - first[2]) / elapsed:.2f}, the bench with the fake "
            f"{(last[3] - first[3]) / elapsed:.2f} (1: a core)"
        )

    def trade_source_all_pairs(self) -> None:
        """Every pair's tape caught up through REST (a page each at least: Binance's weight
        budget paces them), then a live burst of as many trades over the WebSocket
        connections, each measured to visible in PostgreSQL."""
        pairs, per_pair = listed_pairs(self.args.trade_pairs), self.args.trades_per_pair
        topic = self.topic("bench_trades_all")
        dsn, env = self.database("bench_trades_all", topic, self.args.backfill_flush_interval)
        since = time.time_ns() // 1_000_000 - 1000
        print(f"(h) SYMBOLS=ALL, {len(pairs):,} pairs with {per_pair} trades each...", flush=True)
        with FakeBinance(pairs) as binance:
            for symbol in pairs:
                binance.add_trades(symbol, per_pair)
            n = len(pairs) * per_pair
            consumer = self.script("consumer", [], env)
            consumer.wait_for("Resuming from stored offsets")
            producer = self.script("producer", trade_source_args(binance, since, "ALL"), env)
            with StoredCount(dsn) as stored:
                producer.wait_for(CONNECTED, timeout=300)
                connected = time.perf_counter()
                consumer.wait_until(lambda: stored() >= n, 3600, "the caught-up trades")
                caught_up = time.perf_counter() - connected
                pages = len(binance.requests_to(AGG_TRADES_PATH))
                burst = time.perf_counter()
                for symbol in pairs:
                    binance.add_trades(symbol, per_pair)
                consumer.wait_until(lambda: stored() >= 2 * n, 3600, "the live burst")
                live = time.perf_counter() - burst
            producer.finish()
            consumer.finish()
            producer.expect_success()
            expect_no_gaps(producer)
            tapes = {symbol: tape_rows(binance.trades(symbol)) for symbol in pairs}
        check_trade_totals(dsn, tape_trade_totals(tapes))
        check_tables(dsn, tape_windows(tapes))
        output = producer.output()
        connections = re.search(r"\d+ symbols? over \d+ connections?", output)
        pauses = output.count("next page in")
        self.report.rates(f"(h) SYMBOLS=ALL, {len(pairs):,} pairs: REST catch-up", n, [caught_up])
        self.report.line(
            f"    {pages:,} aggTrades pages, {pauses} pause(s) for Binance's weight budget; "
            f"{connections[0] if connections else 'connections: not logged'}"
        )
        self.report.rates(f"(h) SYMBOLS=ALL, {len(pairs):,} pairs: live burst over WS", n, [live])

    # -- helpers ------------------------------------------------------------------------------

    def topic(self, name: str) -> str:
        admin = KafkaAdminClient(bootstrap_servers=self.broker.bootstrap)
        try:
            admin.create_topics([NewTopic(name, self.args.partitions, 1)])
        finally:
            admin.close()
        return name

    def script(self, name: str, args: list[str], env: Mapping[str, str]) -> MeasuredScript:
        return MeasuredScript(name, args, env, self.folder)

    def kafka_env(self, topic: str) -> dict[str, str]:
        return {"KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap, "KAFKA_TOPIC": topic}

    def database(self, name: str, topic: str, flush_interval: float) -> tuple[str, dict[str, str]]:
        database = self.postgres.create_database(name)
        env = {
            **self.postgres.env(database),
            **self.kafka_env(topic),
            "KAFKA_CONSUMER_GROUP": name,
            "CONSUMER_INSTANCE_ID": name,
            "FLUSH_INTERVAL_SECONDS": str(flush_interval),
        }
        return self.postgres.dsn(database), env


def spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"median {statistics.median(values):.0f}, max {max(values):.0f} (n={len(values)})"


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# -- the bare clients and the peer ----------------------------------------------------------


def replay_messages(path: Path) -> list[tuple[bytes, bytes, int]]:
    """(key, value, timestamp) of every line, byte for byte what producer.py sends: each an
    aggregate trade under the exchange's identity (aggtrades/<SYMBOL>, its id)."""
    return trade_messages(path)


def bare_producer_seconds(bootstrap: str, topic: str, path: Path) -> float:
    return bare_send_seconds(bootstrap, topic, replay_messages(path))


def bare_send_seconds(
    bootstrap: str, topic: str, messages: list[tuple[bytes, bytes, int]]
) -> float:
    """The ceiling: kafka-python's idempotent producer (default partitioner), prepared
    messages, producer.py's client settings and default codec; from the first send to the
    last acknowledgement."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        compression_type=compression_type(DEFAULT_COMPRESSION),
        **CLIENT_SETTINGS,
    )
    producer.partitions_for(topic)  # connected, metadata known: time the sending only
    started = time.perf_counter()
    for key, value, timestamp in messages:
        producer.send(topic, key=key, value=value, timestamp_ms=timestamp)
    producer.flush()
    seconds = time.perf_counter() - started
    producer.close()
    return seconds


def tape_rows(trades: list[AggTrade]) -> list[TapeRow]:
    """A fake exchange's trades as the ground truth takes them; placeholders are no trades."""
    return [
        (t.agg_id, t.price, t.quantity, t.first_id, t.last_id, t.time_ms)
        for t in trades
        if not t.is_placeholder
    ]


def tape_messages(tapes: Mapping[str, list[TapeRow]]) -> list[tuple[bytes, bytes, int]]:
    """(key, value, timestamp) of every trade, byte for byte what the trade source sends:
    the exchange's identity (aggtrades/<SYMBOL>, the aggregate id), quantity, raw trade ids."""
    messages = []
    for symbol, rows in tapes.items():
        key, stream = symbol.encode(), agg_trade_stream(symbol)
        for agg_id, price, quantity, first, last, event_ms in rows:
            body = {
                "symbol": symbol,
                "price": price,
                "event_time": event_ms,
                "source": "binance",
                "stream": stream,
                "seq": agg_id,
                "quantity": quantity,
                "first_trade_id": first,
                "last_trade_id": last,
            }
            messages.append((key, orjson.dumps(body), event_ms))
    return messages


def trade_source_args(binance: FakeBinance, since_ms: int, symbols: str) -> list[str]:
    return [
        "--source",
        "binance-trades",
        "--symbols",
        symbols,
        "--binance-url",
        binance.base_url,
        "--ws-url",
        binance.ws_url,
        "--since",
        str(since_ms),
    ]


def cpu_seconds(script: MeasuredScript) -> float:
    """The CPU time a running script used so far (user + system)."""
    fields = Path(f"/proc/{script.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def expect_no_gaps(script: MeasuredScript) -> None:
    output = script.output()
    if "Gap in the trades" in output or "Skipped" in output:
        raise RuntimeError(f"{script.name} reported gaps or skipped input:\n{output[-3000:]}")


class TopicCount:
    """Messages on a topic from the high watermarks that fetches return (Tansu's ListOffsets
    answers the last batch's base offset + 1: less than it holds). Each look seeks to the
    last message it knew of and polls until a fetch from there landed: a fetch returns the
    batches from there on, decoded only as far as one poll takes, and the mark."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        found = wait_until(lambda: self.consumer.partitions_for_topic(topic), 30, topic)
        self.partitions = [TopicPartition(topic, p) for p in sorted(found)]
        self.consumer.assign(self.partitions)
        self.marks = dict.fromkeys(self.partitions, 0)

    def __call__(self) -> int:
        for tp, mark in self.marks.items():
            self.consumer.seek(tp, max(0, mark - 1))
        for _ in range(LOOK_POLLS):
            self.consumer.poll(timeout_ms=50)
            if self._fetched():
                break
        return sum(self.marks.values())

    def _fetched(self) -> bool:
        """Whether every partition was fetched since the seek (its position moved past the
        message sought, or it is empty); the marks of those that were are kept."""
        fetched = True
        for tp, mark in self.marks.items():
            high = self.consumer.highwater(tp)
            if high is not None and (self.consumer.position(tp) or 0) > max(0, mark - 1):
                self.marks[tp] = max(mark, high)
            elif not (high == 0 and mark == 0):
                fetched = False
        return fetched

    def __enter__(self) -> TopicCount:
        return self

    def __exit__(self, *exc: object) -> None:
        self.consumer.close()


class TopicReader:
    """Messages on a topic as read, from its start: for a topic that keeps growing, where a
    high watermark seen once a look may lag (the reading costs this process about 8 µs a
    message). A count lags the topic by what its last poll had not fetched yet."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, **FETCH_SETTINGS
        )
        found = wait_until(lambda: self.consumer.partitions_for_topic(topic), 30, topic)
        partitions = [TopicPartition(topic, p) for p in sorted(found)]
        self.consumer.assign(partitions)
        self.consumer.seek_to_beginning(*partitions)
        self.read = 0

    def __call__(self) -> int:
        for records in self.consumer.poll(timeout_ms=50).values():
            self.read += len(records)
        return self.read

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.consumer.close()


def bare_consumer_seconds(
    bootstrap: str, topic: str, partitions: int, expected: int
) -> tuple[float, float]:
    """The ceiling: poll and decode, nothing else, with consumer.py's fetch settings. Returns
    the seconds and the share of them the process used a CPU: well under 1, the client waited
    on its broker (as with kafka-python's fetches left waiting on idle partitions)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, **FETCH_SETTINGS
    )
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    consumer.seek_to_beginning()
    seen = 0
    started, cpu = time.perf_counter(), time.process_time()
    while seen < expected:
        for messages in consumer.poll(timeout_ms=1000).values():
            for m in messages:
                json.loads(m.value)
                seen += 1
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu
    consumer.close()
    return seconds, cpu / seconds


def quix_seconds(bootstrap: str, topic: str, events: int) -> float:
    out = subprocess.run(
        [
            sys.executable,
            "-W",
            "ignore",
            str(ROOT / "bench" / "quix_peer.py"),
            "--bootstrap-servers",
            bootstrap,
            "--topic",
            topic,
            "--events",
            str(events),
        ],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"Quix Streams peer failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def live_event_latency(
    bootstrap: str, topic: str, stored: StoredCount
) -> tuple[tuple[str, int], float]:
    """Produce one live event into a caught-up pipeline; seconds until its window shows it."""
    now_ms = time.time_ns() // 1_000_000
    price = "40000.00000001"
    body = {
        "symbol": SYMBOL,
        "price": price,
        "event_time": now_ms,
        "source": "binance",
        "stream": f"binance/{SYMBOL}/bench-live-{now_ms}",  # a new stream: never a repeat
        "seq": 1,
    }
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    producer.partitions_for(topic)  # connect first: time the pipeline, not our start-up
    before = stored()
    sent = time.perf_counter()
    producer.send(topic, key=SYMBOL.encode(), value=orjson.dumps(body), timestamp_ms=now_ms)
    producer.flush()
    producer.close()
    wait_until(lambda: stored() > before, 120, "the live event", interval=0.01)
    return (price, now_ms), time.perf_counter() - sent


class StoredCount:
    """Events in the windows, read over one connection: the bench must not load the machine
    it measures (a new connection is a new server process)."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg2.connect(dsn)
        self.conn.autocommit = True

    def __call__(self) -> int:
        with self.conn.cursor() as cur:
            cur.execute("SELECT coalesce(sum(event_count), 0) FROM five_min_bitcoin_event")
            return int(cur.fetchone()[0])

    def __enter__(self) -> StoredCount:
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.close()


# -- the scripts as real processes ------------------------------------------------------------


LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ", re.MULTILINE)


class MeasuredScript(Script):
    """producer.py or consumer.py as the tests run it (tests.harness.scripts), with its peak
    RSS (VmHWM, sampled while it runs: the rusage of a child also counts the bench's own memory
    from before its exec)."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], logs: Path) -> None:
        super().__init__(name, args, env, log_dir=logs)
        self.peak_rss_mb = 0.0
        self._sampler = threading.Thread(target=self._sample_rss, daemon=True)
        self._sampler.start()

    def _sample_rss(self) -> None:
        status = Path(f"/proc/{self.process.pid}/status")
        while self.process.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_rss_mb = max(self.peak_rss_mb, int(line.split()[1]) / 1024)
            time.sleep(0.02)  # a sampling period, not a synchronisation

    def wait_for(self, text: str, count: int = 1, timeout: float = 120) -> None:
        self.wait_for_output(text, timeout, count)

    def finish(self, wait: bool = False) -> float:
        """Stop (SIGTERM) or, with `wait`, let it end; returns its peak RSS in MB."""
        if not wait:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait()
        self._sampler.join()
        return self.peak_rss_mb

    def expect_success(self) -> None:
        if self.process.returncode != 0:
            raise RuntimeError(
                f"{self.name} exited {self.process.returncode}:\n{self.output()[-3000:]}"
            )

    def seconds_between(self, first: str, last: str) -> float:
        """Between two of its own log lines, by their timestamps (ms)."""
        times: dict[str, datetime] = {}
        for line in self.output().splitlines():
            for text in (first, last):
                if text in line and (match := LOG_TIME.match(line)):
                    times.setdefault(text, datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f"))
        return (times[last] - times[first]).total_seconds()


if __name__ == "__main__":
    main()
