"""Exactly once from the source to the table, with the real scripts as processes: a replay run
twice, a replay killed midway and run again, a live stream re-sent from its first
unacknowledged event, and a second consumer group refused, then taking over. In every case
the windows equal the Decimal ground truth of the source, computed once."""

from __future__ import annotations

import os
import random
import re
import signal

import pytest

from tests.harness import FakeBinance, TansuBroker
from tests.harness.net import wait_until
from tests.harness.scripts import Script, run_script
from tests.pipeline import (
    SHARED_DATA,
    Event,
    assert_tables_equal_truth,
    consumer_env,
    create_topic,
    messages_in,
    needs_shared_data,
    produce,
    produce_raw,
    query,
    random_stream,
    start_consumer,
    total_events,
    truth_from_csv,
    wait_for_total,
    wait_until_all_read,
)
from tests.producer_runs import BTC, ETH, printed, producer_args, stop_cleanly

AGG_TRADES = SHARED_DATA / "BTCUSDT-aggTrades-2026-01-01.head5000.csv"
KLINES = SHARED_DATA / "BTCUSDT-1m-2020-01-01.csv"


@pytest.fixture
def dsn(postgres, database):
    return postgres.dsn(database)


def replay_args(broker, topic: str, *files, speed: str = "max") -> list[str]:
    return [
        "--source",
        "replay",
        "--speed",
        speed,
        "--bootstrap-servers",
        broker.bootstrap,
        "--topic",
        topic,
        *(str(path) for path in files),
    ]


def replay(broker, topic: str, *files, resume: bool = False) -> str:
    args = replay_args(broker, topic, *files) + (["--resume"] if resume else [])
    done = run_script("producer", args, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def metric_sums(dsn: str) -> tuple[int, int, int]:
    """(events counted, repeats skipped, late events) over every flush."""
    (row,) = query(
        dsn,
        "SELECT coalesce(sum(events_processed), 0), coalesce(sum(duplicate_events), 0), "
        "coalesce(sum(late_events), 0) FROM pipeline_metrics",
    )
    return tuple(int(n) for n in row)  # type: ignore[return-value]


@needs_shared_data
def test_the_same_real_file_replayed_twice_is_counted_once(broker, postgres, database, dsn, topic):
    truth = truth_from_csv(KLINES) + truth_from_csv(AGG_TRADES)
    create_topic(broker.bootstrap, topic)
    with start_consumer(consumer_env(broker, postgres, database, topic)) as consumer:
        replay(broker, topic, KLINES, AGG_TRADES)
        wait_for_total(dsn, len(truth), 90, [consumer])
        # Again, in the other order: 2020 after 2026 is history, not thousands of late events.
        again = replay(broker, topic, AGG_TRADES, KLINES)
        for path, lines in ((AGG_TRADES, 5000), (KLINES, 1440)):
            assert f"{path.name} was sent to {topic} before (lines up to {lines}, " in again
        wait_until_all_read(dsn, broker.bootstrap, topic, 90)
        assert consumer.stop() == 0
        output = consumer.output()
    assert_tables_equal_truth(dsn, truth)
    assert metric_sums(dsn) == (len(truth), len(truth), 0)
    assert "repeats skipped" in output


@needs_shared_data
def test_a_replay_killed_midway_and_run_again_ends_exact(
    broker, postgres, database, dsn, topic, replay_notes
):
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    truth = truth_from_csv(AGG_TRADES)
    create_topic(broker.bootstrap, topic)
    with start_consumer(consumer_env(broker, postgres, database, topic)) as consumer:
        # 12 minutes of trades at 120x: about 6 s, killed somewhere in the middle.
        with Script("producer", replay_args(broker, topic, AGG_TRADES, speed="120")) as first:
            kill_after = rng.randint(200, len(truth) - 1000)
            wait_until(lambda: total_events(dsn) >= kill_after, 60, f"{kill_after} events counted")
            first.signal(signal.SIGKILL)
            assert first.wait() == -signal.SIGKILL
        counted_before = total_events(dsn)
        assert counted_before < len(truth), f"the replay finished before the kill (seed {seed})"
        again = replay(broker, topic, AGG_TRADES, resume=True)
        wait_for_total(dsn, len(truth), 90, [consumer])
        wait_until_all_read(dsn, broker.bootstrap, topic, 90)
        assert consumer.stop() == 0
    assert_tables_equal_truth(dsn, truth, note=f"seed {seed}")
    # The re-run skipped what Kafka had acknowledged before the kill, and sent the rest; what
    # was sent after the last note went twice, and was counted once.
    (skipped,) = re.findall(r"Skipping lines up to (\d+) of ", again)
    assert f"Replay done: {len(truth) - int(skipped)} events" in again
    assert f"{skipped} skipped (sent before)" in again
    events, repeats, late = metric_sums(dsn)
    assert events == len(truth) and late == 0, f"seed {seed}"
    assert repeats == messages_in(broker.bootstrap, topic) - len(truth)


def test_a_live_stream_resent_from_its_first_unacknowledged_event_is_counted_once(
    broker, postgres, database, dsn, topic
):
    """What the producer does after a delivery timeout: it sends every unacknowledged event
    again, in order, so the topic holds a repeated run of each stream (here: of four symbols,
    cut at random points), followed by what comes next."""
    rng = random.Random(21)
    events = random_stream(rng, 4000, disorder=0)
    create_topic(broker.bootstrap, topic)
    cut, resend_from = 2500, 1700  # acknowledged up to 1700, sent up to 2500
    produce(broker.bootstrap, topic, events[:cut])
    produce(broker.bootstrap, topic, events[resend_from:])
    with start_consumer(consumer_env(broker, postgres, database, topic)) as consumer:
        wait_until_all_read(dsn, broker.bootstrap, topic, 90)
        assert consumer.stop() == 0
    assert_tables_equal_truth(dsn, events)
    assert metric_sums(dsn)[:2] == (len(events), cut - resend_from)


def test_the_producers_resend_after_a_kafka_outage_is_counted_once(postgres, database, topic):
    """The real producer, its broker frozen past a short delivery timeout: it makes a new client
    and sends every unacknowledged event again, in order, so the topic may hold some twice.
    Ground truth: every event it reports delivered, once by identity."""
    dsn = postgres.dsn(database)
    with FakeBinance({"BTCUSDT": BTC, "ETHUSDT": ETH}) as binance, TansuBroker() as broker:
        args = producer_args(binance, broker.bootstrap, topic, "--delivery-timeout-ms", "4000")
        with Script("producer", args) as producer:
            producer.wait_for_output("Produced:", timeout=30, count=6)
            broker.freeze()
            try:
                producer.wait_for_output("Kafka did not acknowledge in time", timeout=40)
            finally:
                broker.thaw()
            before = producer.output().count("Produced:")
            producer.wait_for_output("Produced:", timeout=30, count=before + 6)
            output = stop_cleanly(producer)
        assert "again, in order" in output
        delivered = {(body["stream"], body["seq"]): body for body in printed(output)}
        truth = [Event(**body) for body in delivered.values()]  # type: ignore[arg-type]
        with start_consumer(consumer_env(broker, postgres, database, topic)) as consumer:
            wait_until_all_read(dsn, broker.bootstrap, topic, 90)
            assert consumer.stop() == 0
        on_topic = messages_in(broker.bootstrap, topic)
    assert_tables_equal_truth(dsn, truth)
    events, repeats, _ = metric_sums(dsn)
    assert (events, repeats) == (len(truth), on_topic - len(truth))


def test_a_second_group_is_refused_then_takes_over_exactly(broker, postgres, database, dsn, topic):
    rng = random.Random(8)
    first, second = random_stream(rng, 2000), random_stream(rng, 1500)
    create_topic(broker.bootstrap, topic)
    produce(broker.bootstrap, topic, first[:1000])
    produce_raw(broker.bootstrap, topic, [b"{bad"], key=b"BTCUSDT")  # a dead letter exists
    produce(broker.bootstrap, topic, first[1000:])
    env_a = consumer_env(broker, postgres, database, topic, group=f"old-{topic}")
    env_b = consumer_env(broker, postgres, database, topic, group=f"new-{topic}")
    with start_consumer(env_a, "a") as old:
        wait_for_total(dsn, len(first), 90, [old])

        refused = run_script("consumer", [], env={**env_b, "CONSUMER_INSTANCE_ID": "b"})
        assert refused.returncode == 2, refused.stdout + refused.stderr
        (sentence,) = refused.stderr.strip().splitlines()
        assert sentence.startswith("consumer.py: error: the tables are filled by consumer group")
        assert f"'old-{topic}'" in sentence and f"--group new-{topic} --take-over" in sentence
        assert "Traceback" not in refused.stdout + refused.stderr
        assert total_events(dsn) == len(first)

        taken = Script("consumer", ["--take-over"], env={**env_b, "CONSUMER_INSTANCE_ID": "b"})
        with taken:
            taken.wait_for_output("Took the tables over from group old-", timeout=60)
            # The old group stops at its next flush, writing nothing more.
            assert old.wait(60) == 2, old.output()[-2000:]
            produce(broker.bootstrap, topic, second)
            wait_for_total(dsn, len(first) + len(second), 90, [taken])
            wait_until_all_read(dsn, broker.bootstrap, topic, 90)
            assert taken.stop() == 0
        old_output = old.output()
    assert f"group 'old-{topic}' no longer fills the tables: group 'new-{topic}' took them" in (
        old_output
    )
    assert_tables_equal_truth(dsn, first + second)
    assert query(dsn, "SELECT DISTINCT group_id FROM consumer_offsets") == [(f"new-{topic}",)]
    assert query(dsn, "SELECT group_id FROM table_owner") == [(f"new-{topic}",)]
    assert query(dsn, "SELECT count(*) FROM dead_letter_events") == [(1,)]
