"""The consumer end to end: real broker, real PostgreSQL, consumer.py as a process."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time

import pytest

from tests.harness.net import free_port, wait_until
from tests.harness.scripts import run_script
from tests.pipeline import (
    BASE_TIME_MS,
    WINDOW_MS,
    Event,
    StreamWriter,
    assert_tables_equal_truth,
    consumer_env,
    create_topic,
    execute,
    group_member,
    produce,
    produce_raw,
    query,
    random_klines,
    random_stream,
    random_trades,
    start_consumer,
    total_events,
    wait_for_total,
)


@pytest.fixture
def env(broker, postgres, database, topic):
    create_topic(broker.bootstrap, topic)
    return consumer_env(broker, postgres, database, topic)


@pytest.fixture
def dsn(postgres, database):
    return postgres.dsn(database)


def wait_for_progress(dsn: str, beyond: int) -> None:
    wait_until(lambda: total_events(dsn) > beyond, 60, "progress", interval=0.01)


def test_windows_equal_ground_truth_in_every_column(broker, env, dsn, topic):
    rng = random.Random(1)
    events = random_stream(rng, 3000)
    # Equal event times inside one window pin the tie rules: first seen opens, last closes.
    tie = BASE_TIME_MS + 7 * WINDOW_MS + 1234
    events += [
        Event("BTCUSDT", "50000.00000001", tie),
        Event("BTCUSDT", "49999.5", tie),
        Event("BTCUSDT", "50001.12345678", tie),
    ]
    produce(broker.bootstrap, topic, events)
    with start_consumer(env) as consumer:
        wait_for_total(dsn, len(events), 60, [consumer])
        assert consumer.stop() == 0
        output = consumer.output()
    assert_tables_equal_truth(dsn, events)
    assert "Flushed: " in output and "Metrics: " in output
    # Offsets stored with the windows: all of them, exactly the partition ends.
    stored = query(dsn, "SELECT sum(next_offset) FROM consumer_offsets WHERE topic = %s", (topic,))
    assert stored == [(len(events),)]
    processed = query(
        dsn, "SELECT sum(events_processed), sum(invalid_events) FROM pipeline_metrics"
    )
    assert processed == [(len(events), 0)]


def test_trades_candles_and_samples_of_one_symbol_fill_their_own_rows_exactly(
    broker, env, dsn, topic
):
    """A trade stream, a replayed klines file and a poller for the same pairs at once: each
    kind of feed its own row per window, every column equal to the Decimal truth, and the
    dashboards' candle is the trades' one wherever there are trades."""
    rng = random.Random(20)
    trades = random_trades(rng, 2_000)
    candles = random_klines(rng, 40) + random_klines(rng, 40, symbol="ETHUSDT")
    samples = random_stream(rng, 300, symbols=("BTCUSDT", "ETHUSDT"))
    events = trades + candles + samples
    produce(broker.bootstrap, topic, events)
    with start_consumer(env) as consumer:
        wait_for_total(dsn, len(events), 90, [consumer])
        assert consumer.stop() == 0
        output = consumer.output()
    assert_tables_equal_truth(dsn, events)
    assert "Traceback" not in output
    shown = query(dsn, "SELECT DISTINCT feed FROM five_min_candles ORDER BY feed")
    assert shown == [("klines",), ("samples",), ("trades",)]
    covered = query(
        dsn,
        "SELECT count(*) FROM five_min_candles c JOIN five_min_bitcoin_event t "
        "USING (symbol, five_min_start) WHERE t.feed = 'trades' AND c.feed <> 'trades'",
    )
    assert covered == [(0,)]
    complete = query(
        dsn, "SELECT DISTINCT complete FROM five_min_bitcoin_event WHERE feed = 'trades'"
    )
    assert complete == [(True,)]  # random_trades leaves no hole in the raw trade ids


def test_sigkill_at_random_moments_loses_and_doubles_nothing(broker, env, dsn, topic):
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    # The stream keeps arriving while the consumer is killed and restarted: 80 s of it, with
    # room for a slow machine; after the fifth kill the rest goes out at once.
    events = random_stream(rng, 80_000)
    kills_done = threading.Event()
    writer = StreamWriter(broker.bootstrap, topic, events, chunk=1000, pause=1.0, until=kills_done)
    writer.start()
    env = {**env, "FLUSH_INTERVAL_SECONDS": "0.2"}  # many flushes: some kills land inside one
    kills_mid_stream = 0
    try:
        for life in range(8):
            with start_consumer(env, f"crash-{life}") as consumer:
                consumer.wait_for_output("Resuming from stored offsets", timeout=60)
                wait_for_progress(dsn, total_events(dsn))
                time.sleep(rng.uniform(0, 0.5))  # the random moment of the crash, not a sync
                streaming = writer.is_alive()
                consumer.signal(signal.SIGKILL)
                assert consumer.wait() == -signal.SIGKILL
                kills_mid_stream += streaming
            if kills_mid_stream >= 5:
                break
    finally:
        kills_done.set()
        if kills_mid_stream < 5:
            writer.halt.set()  # failing anyway: do not wait for the rest of the stream
        writer.join()
    assert kills_mid_stream >= 5, f"only {kills_mid_stream} kills while streaming (seed {seed})"
    with start_consumer(env, "final") as consumer:
        wait_for_total(dsn, len(events), 180, [consumer])
        assert consumer.stop() == 0
    assert_tables_equal_truth(dsn, events, note=f"seed {seed}")


def test_postgres_outage_mid_stream_pauses_and_resumes_without_loss(
    broker, postgres, env, dsn, topic
):
    events = random_stream(random.Random(2), 12_000)
    writer = StreamWriter(broker.bootstrap, topic, events, chunk=500, pause=0.5)
    with start_consumer(env) as consumer:
        writer.start()
        wait_until(lambda: total_events(dsn) > 0, 60, "the first flush")
        postgres.stop()
        down_at = time.monotonic()
        consumer.wait_for_output("PostgreSQL unavailable", timeout=30)
        # Down for at least 10 s while events keep arriving.
        wait_until(lambda: time.monotonic() - down_at >= 10, 15, "10 s of outage", interval=0.2)
        assert consumer.process.poll() is None, consumer.output()[-2000:]
        postgres.start()
        writer.join()
        wait_for_total(dsn, len(events), 120, [consumer])
        output = consumer.wait_for_output("PostgreSQL is back")
        assert consumer.stop() == 0
    assert "consumption paused" in output
    assert_tables_equal_truth(dsn, events)


def test_two_consumers_one_killed_midway(broker, env, dsn, topic):
    symbols = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT")
    events = random_stream(random.Random(3), 20_000, symbols=symbols)
    writer = StreamWriter(broker.bootstrap, topic, events, chunk=1000, pause=0.5)
    with start_consumer(env, "a") as first, start_consumer(env, "b") as second:
        writer.start()
        for member in (first, second):
            member.wait_for_output("Assigned partitions", timeout=60)
        # Both members share the topic: each has its own partitions.
        wait_until(lambda: _each_owns_partitions(first, second), 60, "a split assignment")
        wait_until(lambda: total_events(dsn) > 2000, 60, "progress by both")
        first.signal(signal.SIGKILL)
        first.wait()
        writer.join()
        wait_for_total(dsn, len(events), 120, [second])
        output = second.output()
        assert second.stop() == 0
    assert "Assigned partitions [0, 1, 2]" in output  # the survivor took over everything
    assert_tables_equal_truth(dsn, events)
    instances = {row[0] for row in query(dsn, "SELECT DISTINCT instance_id FROM pipeline_metrics")}
    assert instances == {"a", "b"}


def _each_owns_partitions(first, second) -> bool:
    def latest_assignment(output: str) -> str:
        lines = [line for line in output.splitlines() if "Assigned partitions" in line]
        return lines[-1] if lines else ""

    a, b = latest_assignment(first.output()), latest_assignment(second.output())
    return bool(a and b) and "[0, 1, 2]" not in a + b


def test_late_events_merge_into_flushed_windows_and_are_counted(broker, env, dsn, topic):
    on_time = [Event("BTCUSDT", "100.5", BASE_TIME_MS + WINDOW_MS + i * 1000) for i in range(5)]
    late = [
        Event("BTCUSDT", "90.25", BASE_TIME_MS + 10),
        Event("BTCUSDT", "200", BASE_TIME_MS + 20),
    ]
    with start_consumer(env) as consumer:
        produce(broker.bootstrap, topic, on_time)
        wait_for_total(dsn, len(on_time), 60, [consumer])
        produce(broker.bootstrap, topic, late)
        wait_for_total(dsn, len(on_time) + len(late), 60, [consumer])
        output = consumer.output()
        assert consumer.stop() == 0
    assert_tables_equal_truth(dsn, on_time + late)
    assert query(dsn, "SELECT sum(late_events) FROM pipeline_metrics") == [(2,)]
    assert "Consumed: BTCUSDT = $90.25 (late)" in output


def test_idle_consumer_still_flushes_metrics(env, dsn):
    with start_consumer({**env, "FLUSH_INTERVAL_SECONDS": "0.3"}) as consumer:
        consumer.wait_for_output("Metrics: 0 events", timeout=60, count=3)
        assert consumer.stop() == 0
    rows = query(dsn, "SELECT events_processed, processing_lag_seconds FROM pipeline_metrics")
    assert len(rows) >= 3
    assert all(events == 0 and lag is None for events, lag in rows)
    assert query(dsn, "SELECT count(*) FROM five_min_bitcoin_event") == [(0,)]


def test_a_backlog_is_flushed_as_soon_as_it_is_read_not_at_the_next_tick(broker, env, dsn, topic):
    # More than a backlog (CatchUpWatch.BACKLOG_MESSAGES) waits in one partition (one symbol);
    # the timer alone would first flush after an hour.
    events = random_stream(random.Random(7), 25_000, symbols=["BTCUSDT"])
    produce(broker.bootstrap, topic, events)
    with start_consumer({**env, "FLUSH_INTERVAL_SECONDS": "3600"}) as consumer:
        wait_for_total(dsn, len(events), 120, [consumer])
        consumer.wait_for_output("Caught up with the backlog: flushing now", timeout=10)
        assert consumer.stop() == 0
    assert_tables_equal_truth(dsn, events)


BAD_MESSAGES: dict[str, bytes | None] = {
    "invalid JSON": b'{"symbol": "BTCUSDT", "pri',
    "not an object": b'["BTCUSDT", "43250.75"]',
    "missing field": json.dumps({"symbol": "BTCUSDT", "price": "1.5", "source": "x"}).encode(),
    "zero price": Event("BTCUSDT", "0.00000000", BASE_TIME_MS).message(),
    "negative price": Event("BTCUSDT", "-1.5", BASE_TIME_MS).message(),
    "NaN price": Event("BTCUSDT", "NaN", BASE_TIME_MS).message(),
    "infinite price": Event("BTCUSDT", "Infinity", BASE_TIME_MS).message(),
    "exponent price": Event("BTCUSDT", "1e999999", BASE_TIME_MS).message(),
    "price as a number": json.dumps(
        {"symbol": "BTCUSDT", "price": 43250.75, "event_time": BASE_TIME_MS, "source": "x"}
    ).encode(),
    "time in seconds": Event("BTCUSDT", "1.5", BASE_TIME_MS // 1000).message(),
    "time before 2009": Event("BTCUSDT", "1.5", 1_200_000_000_000).message(),
    "time in the future": Event("BTCUSDT", "1.5", 4_000_000_000_000).message(),
    "time as a string": json.dumps(
        {"symbol": "BTCUSDT", "price": "1.5", "event_time": str(BASE_TIME_MS), "source": "x"}
    ).encode(),
    "bad symbol": Event("btc/usdt", "1.5", BASE_TIME_MS).message(),
    "oversized": b'{"symbol": "BTCUSDT", "pad": "' + b"x" * 20_000 + b'"}',
    "no value (tombstone)": None,
}


def test_each_kind_of_bad_message_goes_to_the_dead_letter_table(broker, env, dsn, topic):
    good = [Event("BTCUSDT", "43250.75", BASE_TIME_MS + i) for i in range(3)]
    produce(broker.bootstrap, topic, good[:1])
    produce_raw(broker.bootstrap, topic, BAD_MESSAGES.values(), key=b"BTCUSDT")
    produce(broker.bootstrap, topic, good[1:])
    with start_consumer(env) as consumer:
        wait_for_total(dsn, len(good), 60, [consumer])
        wait_until(
            lambda: (
                query(dsn, "SELECT sum(invalid_events) FROM pipeline_metrics")
                == [(len(BAD_MESSAGES),)]
            ),
            30,
            "every bad message counted",
        )
        assert consumer.stop() == 0
    assert_tables_equal_truth(dsn, good)
    letters = query(
        dsn, 'SELECT "offset", raw_value, raw_size, error FROM dead_letter_events ORDER BY 1'
    )
    assert [row[0] for row in letters] == list(range(1, 1 + len(BAD_MESSAGES)))
    for (name, sent), (_, raw, size, error) in zip(BAD_MESSAGES.items(), letters, strict=True):
        assert error, name
        if sent is None:
            assert raw is None and size == 0, name
        else:
            assert size == len(sent), name
            assert bytes(raw) == sent[: len(bytes(raw))] and len(bytes(raw)) <= 16 * 1024, name
    assert (
        "oversized"
        in dict(zip(BAD_MESSAGES, (row[3] for row in letters), strict=True))["oversized"]
        or "exceeds" in letters[list(BAD_MESSAGES).index("oversized")][3]
    )


def test_offsets_moved_under_the_consumer_are_followed_not_fought(broker, env, dsn, topic):
    """When the stored offsets change under a running consumer (a lost commit answer, a
    zombie, an operator's reset), PostgreSQL is the truth: drop what is pending, carry on
    from the stored offsets and marks. Here an operator rewinds to 0, empties the windows and
    forgets what was counted, to count it all again."""
    rng = random.Random(4)
    first, second = random_stream(rng, 400), random_stream(rng, 300)
    with start_consumer(env) as consumer:
        produce(broker.bootstrap, topic, first)
        wait_for_total(dsn, len(first), 60, [consumer])
        query(
            dsn,
            "WITH w AS (DELETE FROM five_min_bitcoin_event RETURNING 1), "
            "m AS (DELETE FROM stream_marks RETURNING 1), "
            "r AS (DELETE FROM stream_ranges RETURNING 1) "
            "UPDATE consumer_offsets SET next_offset = 0 RETURNING 1",
        )
        produce(broker.bootstrap, topic, second)
        wait_for_total(dsn, len(first) + len(second), 60, [consumer])
        output = consumer.wait_for_output("were stored by another consumer")
        assert consumer.stop() == 0
    assert_tables_equal_truth(dsn, first + second)
    assert "Resuming from stored offsets" in output.split("were stored by another consumer")[1]


def test_kafka_unreachable_at_start_is_retried_and_sigterm_exits_0(env):
    env = {**env, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"}
    with start_consumer(env) as consumer:
        consumer.wait_for_output("Kafka unreachable at 127.0.0.1:", timeout=30)
        assert consumer.stop() == 0
        output = consumer.output()
    assert "retrying in" in output and "Traceback" not in output


@pytest.mark.parametrize(
    ("args", "env", "sentence"),
    [
        (
            ["--flush-interval", "0"],
            {},
            "FLUSH_INTERVAL_SECONDS (--flush-interval) must be a finite number of seconds "
            "greater than 0 and at most 3600, not '0'.",
        ),
        (
            [],
            {"FLUSH_INTERVAL_SECONDS": "inf"},
            "FLUSH_INTERVAL_SECONDS (--flush-interval) must be a finite number of seconds "
            "greater than 0 and at most 3600, not 'inf'.",
        ),
        (
            [],
            {"KAFKA_SESSION_TIMEOUT_MS": "1"},
            "KAFKA_SESSION_TIMEOUT_MS (--session-timeout-ms) must be a whole number of "
            "milliseconds (a default broker's range) from 6000 to 1,800,000, not '1'.",
        ),
        (
            [],
            {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:99999"},
            "KAFKA_BOOTSTRAP_SERVERS (--bootstrap-servers) must be a comma-separated list of "
            "host:port, each port 1-65535, not '127.0.0.1:99999'.",
        ),
        (
            ["--topic", "bad topic!"],
            {},
            "KAFKA_TOPIC (--topic) must be a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -, "
            "but not . or ..), not 'bad topic!'.",
        ),
        (
            [],
            {"KAFKA_BOOTSTRAP_SERVERS": "no-such-broker.invalid:9092"},
            "KAFKA_BOOTSTRAP_SERVERS names host 'no-such-broker.invalid', which cannot be "
            "resolved.",
        ),
        (
            [],
            {"POSTGRES_HOST": "no-such-db.invalid"},
            "POSTGRES_HOST names host 'no-such-db.invalid', which cannot be resolved.",
        ),
    ],
    ids=["flush-0", "flush-inf", "session-1ms", "kafka-port", "topic", "kafka-host", "pg-host"],
)
def test_bad_configuration_stops_with_one_sentence(args, env, sentence):
    result = run_script("consumer", args, env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == f"consumer.py: error: {sentence}\n"


@pytest.mark.parametrize(
    ("setting", "said"),
    [
        ({"POSTGRES_PASSWORD": "wrong"}, "password authentication failed"),
        ({"POSTGRES_DB": "no_such_database"}, 'database "no_such_database" does not exist'),
        ({"POSTGRES_USER": "nobody"}, "nobody"),
    ],
    ids=["password", "database", "user"],
)
def test_permanent_postgres_errors_stop_at_once_with_exit_2(env, setting, said):
    """No retry can fix a wrong password, database or user: one sentence, exit 2."""
    with start_consumer({**env, **setting}) as consumer:
        assert consumer.wait(30) == 2
        output = consumer.output()
    (line,) = [line for line in output.splitlines() if "ERROR" in line]
    assert "Cannot use PostgreSQL:" in line and said in line, output
    assert "Fix the POSTGRES_* settings" in line
    assert "retrying" not in output and "Traceback" not in output


def test_refused_flush_before_a_rebalance_stops_with_its_real_cause(broker, env, dsn, topic):
    """A database error that is not an outage (here: a trigger refuses offset writes) hit in
    the flush before a rebalance is named in PostgreSQL's own words, not as 'Kafka
    unreachable', and stops the consumer instead of looping."""
    produce(broker.bootstrap, topic, random_stream(random.Random(4), 200))
    with start_consumer({**env, "FLUSH_INTERVAL_SECONDS": "600"}) as consumer:
        consumer.wait_for_output("Resuming from stored offsets", timeout=60)
        execute(
            dsn,
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$BEGIN RAISE EXCEPTION 'offsets are read-only today'; END$$; "
            "CREATE TRIGGER refuse BEFORE UPDATE OR INSERT ON consumer_offsets "
            "FOR EACH ROW EXECUTE FUNCTION refuse()",
        )
        consumer.wait_for_output("Consumed:", timeout=30)  # pending, not flushed
        exited = lambda: consumer.process.poll() is not None  # noqa: E731
        with group_member(broker.bootstrap, topic, env["KAFKA_CONSUMER_GROUP"], until=exited):
            assert consumer.wait(60) == 1
        output = consumer.output()
    assert "PostgreSQL refused the work: RaiseException: offsets are read-only today" in output
    assert "Kafka unreachable" not in output and "Traceback" not in output


def test_help_lists_the_settings():
    help_text = run_script("consumer", ["--help"]).stdout
    for variable in ("KAFKA_BOOTSTRAP_SERVERS", "KAFKA_CONSUMER_GROUP", "POSTGRES_DB"):
        assert variable in help_text
