"""Faults every deployment meets, walked with the real scripts against the real servers:
a broker or PostgreSQL frozen (SIGSTOP, not refused) for longer than the clients' timeouts."""

from __future__ import annotations

import random
import time

import pytest

from tests.harness import FakeBinance, PostgresServer, TansuBroker, wait_until
from tests.harness.freeze import cpu_seconds
from tests.harness.scripts import Script
from tests.pipeline import (
    BASE_TIME_MS,
    WINDOW_MS,
    assert_tables_equal_truth,
    consumer_env,
    create_topic,
    group_member,
    produce,
    random_stream,
    start_consumer,
    wait_for_total,
)
from tests.producer_runs import (
    BTC,
    ETH,
    answered,
    by_poll,
    messages,
    producer_args,
    read_topic,
    stop_cleanly,
)

DELIVERY_TIMEOUT_MS = 4000  # short, to keep the test short; the slow test uses the default


def frozen_broker_then_thawed(
    binance: FakeBinance, topic: str, freeze_seconds: float, delivery_timeout_ms: int | None
) -> None:
    """Publish through a broker frozen for longer than the delivery timeout: publishing must
    resume by itself after the thaw, without a busy loop meanwhile, and every poll that was
    answered must be on the topic in the end."""
    extra = (
        [] if delivery_timeout_ms is None else ["--delivery-timeout-ms", str(delivery_timeout_ms)]
    )
    with (
        TansuBroker() as broker,
        Script(
            "producer", producer_args(binance, broker.bootstrap, topic, *extra, interval=0.5)
        ) as producer,
    ):
        producer.wait_for_output("Produced:", timeout=30, count=4)
        broker.freeze()
        frozen_at, cpu_at_freeze = time.monotonic(), cpu_seconds(producer.process.pid)
        producer.wait_for_output("Kafka did not acknowledge in time", timeout=freeze_seconds + 30)
        wait_until(
            lambda: time.monotonic() - frozen_at >= freeze_seconds,
            freeze_seconds + 5,
            "the freeze to last",
            interval=0.2,
        )
        cpu = cpu_seconds(producer.process.pid) - cpu_at_freeze
        frozen_for = time.monotonic() - frozen_at
        broker.thaw()
        produced_before = producer.output().count("Produced:")
        polls_at_thaw = len(answered(binance))
        # Publishing resumes: polls made after the thaw are acknowledged within 30 s.
        thawed_at = time.monotonic()
        producer.wait_for_output("Produced:", timeout=30, count=produced_before + 4)
        print(f"publishing again within {time.monotonic() - thawed_at:.1f} s of the thaw")
        wait_until(lambda: len(answered(binance)) >= polls_at_thaw + 2, 10, "two more polls")
        output = stop_cleanly(producer)
        bodies = messages(read_topic(broker.bootstrap, topic))
    print(f"CPU while frozen: {cpu:.2f} s in {frozen_for:.1f} s ({cpu / frozen_for:.1%} of a core)")
    assert cpu / frozen_for < 0.1, f"{cpu:.2f} s of CPU in {frozen_for:.1f} s frozen: busy loop"
    assert "sending" in output and "again, in order" in output
    # Every answered poll is on the topic, and nothing else is. A re-sent event may be there
    # twice, as an exact repeat: the consumer counts each event's identity once.
    distinct = list({tuple(sorted(body.items())): body for body in bodies}.values())
    polls = by_poll(distinct)
    assert len(polls) == len(answered(binance))
    assert all(poll == {"BTCUSDT": BTC, "ETHUSDT": ETH} for poll in polls)


def test_producer_recovers_from_a_broker_frozen_past_the_delivery_timeout(
    binance: FakeBinance, topic: str
) -> None:
    frozen_broker_then_thawed(binance, topic, 2.5 * DELIVERY_TIMEOUT_MS / 1000, DELIVERY_TIMEOUT_MS)


def test_consumer_recovers_from_a_broker_frozen_past_its_session(postgres, database, topic):
    """The broker hangs for longer than the consumer's session and request timeouts: the
    consumer must idle (no busy loop), then consume again by itself once the broker answers."""
    rng = random.Random(8)
    before, after = (
        random_stream(rng, 2000),
        random_stream(rng, 2000, start_ms=BASE_TIME_MS + 7 * WINDOW_MS),
    )
    dsn = postgres.dsn(database)
    with TansuBroker() as broker:
        create_topic(broker.bootstrap, topic)
        env = consumer_env(broker, postgres, database, topic)
        produce(broker.bootstrap, topic, before)
        with start_consumer(env) as consumer:
            wait_for_total(dsn, len(before), 60, [consumer])
            broker.freeze()
            frozen_at, cpu_at_freeze = time.monotonic(), cpu_seconds(consumer.process.pid)
            wait_until(lambda: time.monotonic() - frozen_at >= 20, 25, "20 s frozen", interval=0.2)
            cpu = cpu_seconds(consumer.process.pid) - cpu_at_freeze
            frozen_for = time.monotonic() - frozen_at
            broker.thaw()
            thawed_at = time.monotonic()
            produce(broker.bootstrap, topic, after)
            wait_for_total(dsn, len(before) + len(after), 30, [consumer])
            resumed_after = time.monotonic() - thawed_at
            assert consumer.stop() == 0
    print(f"CPU while frozen: {cpu:.2f} s in {frozen_for:.1f} s ({cpu / frozen_for:.1%} of a core)")
    assert cpu / frozen_for < 0.1, f"{cpu:.2f} s of CPU in {frozen_for:.1f} s frozen: busy loop"
    print(f"consuming again {resumed_after:.1f} s after the thaw")
    assert resumed_after < 30
    assert_tables_equal_truth(dsn, before + after)


def test_consumer_holds_its_interval_through_a_hung_postgres_and_a_rebalance(broker, topic):
    """PostgreSQL hangs (SIGSTOP of every server process) for over 30 s while events arrive and
    another member joins the group and leaves: the consumer says so within about 15 s, holds or
    re-reads what it had, never blocks heartbeats past the session timeout, and ends exact."""
    rng = random.Random(9)
    before, during = (
        random_stream(rng, 3000),
        random_stream(rng, 3000, start_ms=BASE_TIME_MS + 9 * WINDOW_MS),
    )
    create_topic(broker.bootstrap, topic)
    with PostgresServer() as postgres:
        database = postgres.create_database("hung")
        dsn = postgres.dsn(database)
        env = {
            **consumer_env(broker, postgres, database, topic),
            "KAFKA_MAX_POLL_INTERVAL_MS": "30000",
        }
        produce(broker.bootstrap, topic, before)
        with start_consumer(env) as consumer:
            wait_for_total(dsn, len(before), 60, [consumer])
            postgres.freeze()
            try:
                frozen_at = time.monotonic()
                produce(broker.bootstrap, topic, during)
                consumer.wait_for_output("PostgreSQL did not answer within", timeout=20)
                said_after = time.monotonic() - frozen_at
                # Another member joins while PostgreSQL hangs: the consumer's flush before
                # giving up partitions runs where heartbeats are sent, so it must give up fast.
                with group_member(broker.bootstrap, topic, env["KAFKA_CONSUMER_GROUP"]):
                    consumer.wait_for_output("Could not flush before rebalance", timeout=30)
                # The member left: partitions assigned back while PostgreSQL still hangs wait,
                # paused, for their stored offsets, retried with the flush's backoff.
                consumer.wait_for_output("assigned partitions wait; retrying in", timeout=45)
                wait_until(
                    lambda: time.monotonic() - frozen_at >= 30, 35, "30 s hung", interval=0.2
                )
                assert consumer.process.poll() is None, consumer.output()[-3000:]
            finally:
                postgres.thaw()
            wait_for_total(dsn, len(before) + len(during), 60, [consumer])
            assert consumer.stop() == 0
            output = consumer.output()
        assert_tables_equal_truth(dsn, before + during)
    print(f"hung PostgreSQL named {said_after:.1f} s after the freeze")
    assert said_after < 20
    assert "Lost partitions" not in output, "evicted: heartbeats were held up"


@pytest.mark.slow
def test_producer_recovers_from_a_broker_frozen_past_the_default_delivery_timeout(
    binance: FakeBinance, topic: str
) -> None:
    """The same at kafka-python's default delivery timeout (120 s), as users run it."""
    frozen_broker_then_thawed(binance, topic, 130, None)
