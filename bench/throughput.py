"""Consumer throughput benchmark. Prints figures; asserts nothing about time.

In one run, on one broker: fill a topic with N events (several symbols and partitions), then
(a) the ceiling: a bare kafka-python consumer that polls and JSON-decodes every message;
(b) the whole path: consumer.py decoding, validating, windowing and flushing to PostgreSQL
    with offsets, until every event is in the tables (checked against the ground truth).
Then events/s of both, the ratio (b)/(a), the consumer's peak RSS, and how long a fresh live
event takes to show in its window once the consumer has caught up.

Events carry their identity (stream, seq), so (b) includes the high-water-mark check of every
event; --without-identity sends them as the previous release did, to measure what it costs.

Run: bench/run.sh [--events 500000] [--partitions 3] [--symbols 8] [--flush-interval 0.5]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg2
from kafka import KafkaConsumer, TopicPartition

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]

from tests.harness import PostgresServer, TansuBroker  # noqa: E402
from tests.harness.net import wait_until  # noqa: E402
from tests.pipeline import (  # noqa: E402
    Event,
    assert_tables_equal_truth,
    consumer_env,
    create_topic,
    new_producer,
    start_consumer,
    with_identity,
)

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT", "TRXUSDT")


@dataclass
class Figures:
    events: int
    fill_rate: float
    ceiling_rate: float
    consumer_rate: float
    peak_rss_mb: float
    visible_after_s: float

    def print(self) -> None:
        ratio = self.consumer_rate / self.ceiling_rate
        print(
            f"\nevents                      {self.events:>12,}\n"
            f"fill (kafka-python producer) {self.fill_rate:>11,.0f} events/s\n"
            f"(a) bare consumer + JSON     {self.ceiling_rate:>11,.0f} events/s\n"
            f"(b) consumer.py to Postgres  {self.consumer_rate:>11,.0f} events/s\n"
            f"ratio (b)/(a)                {ratio:>11.2f}\n"
            f"consumer peak RSS            {self.peak_rss_mb:>11.1f} MB\n"
            f"live event -> visible        {self.visible_after_s:>11.2f} s"
        )


def backlog(count: int, symbols: int, seed: int, identity: bool) -> list[Event]:
    """Live-looking events ending now, so none is rejected as implausible; with identity, as
    one producer run numbers them."""
    rng = random.Random(seed)
    names = (
        SYMBOLS[:symbols] if symbols <= len(SYMBOLS) else [f"SYM{i}USDT" for i in range(symbols)]
    )
    start = time.time_ns() // 1_000_000 - count  # one event per ms, up to now
    prices = {s: 40_000.0 for s in names}
    events = []
    for i in range(count):
        symbol = names[i % len(names)]
        prices[symbol] *= 1 + rng.gauss(0, 0.0005)
        events.append(Event(symbol, f"{prices[symbol]:.8f}", start + i, "binance"))
    return with_identity(events, run="bench") if identity else events


def fill(bootstrap: str, topic: str, events: list[Event]) -> float:
    producer = new_producer(bootstrap)
    started = time.perf_counter()
    for e in events:
        producer.send(topic, key=e.symbol.encode(), value=e.message(), timestamp_ms=e.event_time)
    producer.flush()
    elapsed = time.perf_counter() - started
    producer.close()
    return len(events) / elapsed


def bare_consumer_rate(bootstrap: str, topic: str, partitions: int, expected: int) -> float:
    """The ceiling: poll and decode, nothing else, with the consumer's fetch settings."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_poll_records=2000,
        fetch_max_bytes=16 * 1024 * 1024,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    consumer.seek_to_beginning()
    seen = 0
    started = time.perf_counter()
    while seen < expected:
        for messages in consumer.poll(timeout_ms=1000).values():
            for m in messages:
                json.loads(m.value)
                seen += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    return seen / elapsed


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--symbols", type=int, default=8)
    parser.add_argument("--flush-interval", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-verify", action="store_true", help="skip the ground-truth check")
    parser.add_argument(
        "--without-identity", action="store_true", help="messages without (stream, seq)"
    )
    args = parser.parse_args()

    events = backlog(args.events, args.symbols, args.seed, not args.without_identity)
    with TansuBroker() as broker, PostgresServer(durable=True) as postgres:
        topic, database = "btc_price_bench", postgres.create_database("bench")
        dsn = postgres.dsn(database)
        create_topic(broker.bootstrap, topic, args.partitions)
        print(
            f"Filling {topic} with {args.events:,} events ({args.symbols} symbols, "
            f"{args.partitions} partitions)...",
            flush=True,
        )
        fill_rate = fill(broker.bootstrap, topic, events)
        print("(a) bare consumer...", flush=True)
        ceiling = bare_consumer_rate(broker.bootstrap, topic, args.partitions, len(events))
        print("(b) consumer.py...", flush=True)
        env = consumer_env(broker, postgres, database, topic, flush_interval=args.flush_interval)
        with start_consumer(env, "bench") as consumer:
            consumer.wait_for_output("Resuming from stored offsets", timeout=120)
            started = time.perf_counter()
            with StoredCount(dsn) as stored:
                wait_until(lambda: stored() >= len(events), 3600, "the backlog", 0.05)
                consumer_rate = len(events) / (time.perf_counter() - started)
                marker, visible_after = live_event_latency(
                    broker.bootstrap, topic, stored, not args.without_identity
                )
            rss = peak_rss_mb(consumer.process.pid)
            consumer.stop()
        if not args.no_verify:
            assert_tables_equal_truth(dsn, [*events, marker])
            print("verified: every window equals the ground truth", flush=True)
    Figures(len(events), fill_rate, ceiling, consumer_rate, rss, visible_after).print()
    print(f"identity (stream, seq)       {'off' if args.without_identity else 'on':>11}")


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


def live_event_latency(
    bootstrap: str, topic: str, stored: StoredCount, identity: bool
) -> tuple[Event, float]:
    """Produce one live event into a caught-up pipeline; seconds until its window shows it."""
    marker = Event("BTCUSDT", "40000.00000001", time.time_ns() // 1_000_000, "binance")
    if identity:
        (marker,) = with_identity([marker], run="bench-live")
    producer = new_producer(bootstrap)
    producer.partitions_for(topic)  # connect first: time the pipeline, not our start-up
    sent = time.perf_counter()
    producer.send(topic, key=b"BTCUSDT", value=marker.message(), timestamp_ms=marker.event_time)
    producer.flush()
    producer.close()
    before = stored()
    wait_until(lambda: stored() > before, 120, "the live event", 0.01)
    return marker, time.perf_counter() - sent


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
