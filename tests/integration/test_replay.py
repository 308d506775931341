"""Backfill end to end: producer.py --source replay -> Kafka -> consumer.py -> PostgreSQL."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from kafka import KafkaConsumer, TopicPartition

from btcpipe.contract import make_event
from pricefeed.sources.replay.files import read_events
from pricefeed.sources.replay.source import Progress, paced
from tests.harness.net import wait_until
from tests.harness.sample_files import write_agg_trades, write_klines
from tests.harness.scripts import run_script
from tests.pipeline import (
    SHARED_DATA,
    Event,
    assert_tables_equal_truth,
    consumer_env,
    create_topic,
    needs_shared_data,
    query,
    start_consumer,
    truth_from_csv,
    wait_for_total,
)


@needs_shared_data
def test_replayed_history_lands_in_its_windows_exactly_and_is_not_lag(
    broker, postgres, database, topic
):
    files = [
        SHARED_DATA / "BTCUSDT-1m-2020-01-01.csv",  # milliseconds
        SHARED_DATA / "BTCUSDT-1h-2026-05-08.csv",  # microseconds
        SHARED_DATA / "BTCUSDT-aggTrades-2026-01-01.head5000.csv",  # microseconds
    ]
    events = [event for path in files for event in truth_from_csv(path)]
    assert len(events) == 1440 + 24 + 5000
    create_topic(broker.bootstrap, topic)
    dsn = postgres.dsn(database)
    replay = run_script(
        "producer",
        ["--source", "replay", "--bootstrap-servers", broker.bootstrap, "--topic", topic]
        + [str(path) for path in files],
        timeout=120,
    )
    assert replay.returncode == 0, replay.stdout + replay.stderr
    assert f"Replay done: {len(events)} events" in replay.stdout
    with start_consumer(consumer_env(broker, postgres, database, topic)) as consumer:
        wait_for_total(dsn, len(events), 90, [consumer])
        assert consumer.stop() == 0
    assert_tables_equal_truth(dsn, events)
    replayed, live, lag = query(
        dsn,
        "SELECT sum(replayed_events), sum(live_events), max(processing_lag_seconds) "
        "FROM pipeline_metrics",
    )[0]
    assert (replayed, live, lag) == (len(events), 0, None)
    # The real aggTrades sample: its windows' volume and trade count are its rows' sums.
    rows = [line.split(",") for line in files[2].read_text().splitlines()]
    stored = query(
        dsn,
        "SELECT sum(volume), sum(trade_count), bool_and(complete) FROM five_min_bitcoin_event "
        "WHERE feed = 'trades'",
    )[0]
    assert stored == (
        sum((Decimal(row[2]) for row in rows), Decimal(0)),
        sum(int(row[4]) - int(row[3]) + 1 for row in rows),
        True,
    )


def test_a_file_of_another_layout_stops_the_replay_with_one_sentence(tmp_path):
    wrong = tmp_path / "BTCUSDT-1m-2024-01-01.csv"
    wrong.write_text("1,2,3,4,5\n6,7,8,9,10\n")
    result = run_script(
        "producer",
        ["--source", "replay", "--no-check-hosts", "--bootstrap-servers", "x:1", str(wrong)],
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("producer.py: error: ")
    assert wrong.name in lines[0]


def test_a_file_without_one_valid_line_stops_the_running_replay_with_exit_2(
    broker, tmp_path, topic
):
    """Known only at the file's end, after Kafka was connected: said in the log, exit 2."""
    bad = tmp_path / "BTCUSDT-aggTrades-2026-01-01.csv"
    bad.write_text("1,-1,0.08185000,5723703861,5723703861,1767225600039409,True,True\n")
    args = ["--source", "replay", "--bootstrap-servers", broker.bootstrap, "--topic", topic]
    result = run_script("producer", [*args, str(bad)])
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    stopped = [line for line in result.stdout.splitlines() if "Replay stopped: " in line]
    assert len(stopped) == 1 and "ERROR" in stopped[0], result.stdout
    assert f"{bad.name} has no valid aggTrades line" in stopped[0]


def test_a_file_named_without_its_symbol_is_replayed_with_replay_symbol(broker, tmp_path, topic):
    kline = "1577836800000,7195.24,7196.25,7183.14,{close},51.6,{close_time},3.5,493,19.5,140.4,0"
    path = tmp_path / "history.csv"
    path.write_text(
        kline.format(close="7186.68000000", close_time=1577836859999)
        + "\n"
        + kline.format(close="7184.03000000", close_time=1577836919999)
        + "\n"
    )
    args = ["--source", "replay", "--bootstrap-servers", broker.bootstrap, "--topic", topic]
    refused = run_script("producer", [*args, str(path)])
    assert refused.returncode == 2
    assert "history.csv does not say its symbol" in refused.stderr
    assert "--replay-symbol (REPLAY_SYMBOL)" in refused.stderr  # the advice names a real flag
    create_topic(broker.bootstrap, topic)
    result = run_script("producer", [*args, str(path)], env={"REPLAY_SYMBOL": "ethusdt"})
    assert result.returncode == 0, result.stdout + result.stderr
    records = read_records(broker.bootstrap, topic, 2)
    assert [(r.key, json.loads(r.value)["symbol"]) for r in records] == [
        (b"ETHUSDT", "ETHUSDT"),
        (b"ETHUSDT", "ETHUSDT"),
    ]
    assert sorted(json.loads(r.value)["price"] for r in records) == [
        "7184.03000000",
        "7186.68000000",
    ]


def read_records(bootstrap: str, topic: str, count: int) -> list:
    """The first `count` records of the topic, from every partition."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = wait_until(lambda: consumer.partitions_for_topic(topic), 15, topic)
        assigned = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        records: list = []

        def enough() -> bool:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
            return len(records) >= count

        wait_until(enough, 30, f"{count} records on {topic}")
        return records
    finally:
        consumer.close()


def test_replay_with_malformed_lines_skips_and_counts_them(broker, tmp_path, topic):
    good = "1577836800000,7195.24,7196.25,7183.14,{close},51.6,{close_time},3.5,493,19.5,140.4,0"
    lines = [
        good.format(close="7186.68000000", close_time=1577836859999),
        "garbage line",
        good.format(close="-5", close_time=1577836919999),
        good.format(close="7184.03000000", close_time=1577836979999),
    ]
    path = tmp_path / "BTCUSDT-1m-2020-01-01.csv"
    path.write_text("\n".join(lines) + "\n")
    create_topic(broker.bootstrap, topic)
    result = run_script(
        "producer",
        [
            "--source",
            "replay",
            "--bootstrap-servers",
            broker.bootstrap,
            "--topic",
            topic,
            str(path),
        ],
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Replay done: 2 events" in result.stdout
    assert "skipped 2 malformed lines" in result.stdout


def test_speed_paces_events_by_their_event_time():
    start = 1_778_198_400_000
    hourly = [
        make_event("BTCUSDT", "1.5", start + k * 3_600_000, "replay", "replay/f", k + 1)
        for k in range(6)
    ]
    began = time.monotonic()
    replayed = list(paced(iter(hourly), speed=36_000.0, stop=threading.Event()))  # 1 h -> 0.1 s
    elapsed = time.monotonic() - began
    assert replayed == hourly
    assert elapsed >= 0.5  # five hours of event time at 36,000x: no event ahead of its time


def test_stop_interrupts_a_paced_replay():
    far = [
        make_event(
            "BTCUSDT", "1.5", 1_778_198_400_000 + k * 86_400_000, "replay", "replay/f", k + 1
        )
        for k in range(3)
    ]
    stop = threading.Event()
    stop.set()
    assert list(paced(iter(far), speed=1.0, stop=stop)) == far[:1]


def test_long_replays_show_progress_with_rate_and_eta(caplog):
    progress = Progress(total=10_000, started=100.0, last_shown=100.0)
    with caplog.at_level(logging.INFO, logger="producer"):
        progress.update(1_000, now=101.0)  # too soon after the last line: nothing shown
        progress.update(4_000, now=102.0)
    assert caplog.messages == ["Replayed 4,000/~10,000 events (40%), 2,000/s, ETA 3 s"]


@pytest.mark.parametrize(
    "day", [datetime(2024, 3, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC)]
)
def test_generated_sample_files_read_like_binance_files(tmp_path, day):
    """The demo files (ms before 2025, µs after) replay to what their columns say."""
    rng = random.Random(5)
    klines = tmp_path / f"BTCUSDT-1m-{day:%Y-%m-%d}.csv"
    trades = tmp_path / f"BTCUSDT-aggTrades-{day:%Y-%m-%d}.csv"
    write_klines(klines, day, rng, Decimal("43000"))
    write_agg_trades(trades, day, rng, Decimal("43000"))
    for path in (klines, trades):
        replayed = [
            Event(
                e.symbol, e.price, e.event_time, e.source, e.stream, e.seq, e.quantity,
                e.first_trade_id, e.last_trade_id, None if e.kline is None else e.kline._asdict(),
            )
            for e in read_events(path)
        ]  # fmt: skip
        assert replayed == truth_from_csv(path)
    first_close = truth_from_csv(klines)[0].event_time
    assert first_close == int(day.timestamp() * 1000) + 59_999
