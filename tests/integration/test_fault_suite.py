"""The fault suite: one bounded run of the whole pipeline, real processes and servers, through
every fault class at once, ending exactly equal to a Decimal ground truth.

A live stream (producer.py, simulated source, 25 symbols every 20 ms: about 1,250 events/s)
flows into two consumers of one group while the run, in turn: injects poison messages,
SIGKILLs each consumer at a random moment with events pending, stops PostgreSQL, freezes
PostgreSQL past the consumers' answer deadline, freezes the broker past the producer's
delivery timeout, SIGKILLs and restarts the producer, and injects poison again. Then the
producer stops, the consumers drain the topic, and the tables are compared with what the topic
holds: every event identity counted once, every poison message dead-lettered once.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from tests.harness import PostgresServer, TansuBroker, wait_until
from tests.harness.scripts import Script
from tests.pipeline import (
    END_MARKER,
    Event,
    assert_tables_equal_truth,
    consumer_env,
    create_topic,
    produce_raw,
    query,
    read_all_records,
    start_consumer,
    total_events,
)

SYMBOLS = [f"S{n:02d}USDT" for n in range(25)]
INTERVAL = "0.02"
POISON = [
    b"\xff\xfe not utf-8",
    b"{not json",
    b'{"symbol": "BTCUSDT"}',
    b'{"symbol": "BTCUSDT", "price": "-1", "event_time": 1767225600000, "source": "simulated"}',
    b'{"symbol": "BTCUSDT", "price": "1", "event_time": 1767225600000, "source": "elsewhere"}',
    b"[" * 5000,
]


class Pipeline:
    """The running processes, restartable one at a time."""

    def __init__(self, stack: ExitStack, broker: TansuBroker, postgres: PostgresServer) -> None:
        self.stack, self.broker, self.postgres = stack, broker, postgres
        self.topic = "btc_price"
        create_topic(broker.bootstrap, self.topic)
        self.dsn = postgres.dsn(postgres.create_database("faults"))
        self.env = {
            **consumer_env(broker, postgres, "faults", self.topic),
            "KAFKA_MAX_POLL_INTERVAL_MS": "30000",
        }
        self.consumers: dict[str, Script] = {}
        self.producers: list[Script] = []
        self.killed_with_pending = 0

    def start_producer(self) -> Script:
        producer = Script(
            "producer",
            [
                "--source", "simulated",
                "--symbols", ",".join(SYMBOLS),
                "--interval", INTERVAL,
                "--bootstrap-servers", self.broker.bootstrap,
                "--topic", self.topic,
                "--delivery-timeout-ms", "4000",
                "--backoff-base", "0.2",
                "--backoff-max", "2",
                "--log-level", "WARNING",
            ],
        )  # fmt: skip
        self.stack.callback(producer.close)
        self.producers.append(producer)
        return producer

    def start_consumer(self, name: str) -> Script:
        consumer = start_consumer(self.env, name)
        self.stack.callback(consumer.close)
        self.consumers[name] = consumer
        return consumer

    def kill_consumer_mid_interval(self, name: str, rng: random.Random) -> None:
        """SIGKILL a consumer at a random moment after it has consumed unflushed events."""
        consumer = self.consumers[name]
        seen = consumer.output().count("Consumed:")
        consumer.wait_for_output("Consumed:", timeout=60, count=seen + 1)
        time.sleep(rng.uniform(0, 0.4))  # the random moment of the crash, not a sync
        consumer.signal(signal.SIGKILL)
        assert consumer.wait() == -signal.SIGKILL
        self.killed_with_pending += 1
        self.start_consumer(name).wait_for_output("Consuming", timeout=60)

    def progress(self, timeout: float = 60) -> None:
        """Wait until the tables grow: the pipeline is flowing again."""
        before = total_events(self.dsn)
        wait_until(lambda: total_events(self.dsn) > before, timeout, "the tables to grow")

    def streams(self) -> int:
        """Streams the tables have counted events of (a producer run adds one per symbol)."""
        return query(self.dsn, "SELECT count(*) FROM stream_marks")[0][0]

    def wait_for_streams_beyond(self, counted: int, timeout: float = 60) -> None:
        """Wait until events of a stream not counted before are in the tables."""
        wait_until(lambda: self.streams() > counted, timeout, "a new producer run's events")

    def inject_poison(self) -> None:
        produce_raw(self.broker.bootstrap, self.topic, POISON, key=b"POISON")


def counted_once(records_by_partition) -> tuple[list[Event], list[tuple[int, int]]]:
    """The ground truth, offline: every valid event of the topic, each identity (stream, seq)
    once, in partition order; and where the poison messages are (partition, offset). Also
    checks that the contract's high-water-mark rule loses nothing: a copy is only ever a repeat
    of an identity already seen."""
    events: list[Event] = []
    poison: list[tuple[int, int]] = []
    seen: set[tuple[str, int]] = set()
    for partition, records in records_by_partition.items():
        marks: dict[str, int] = {}
        for record in records:
            if record.key == b"POISON":
                poison.append((partition, record.offset))
                continue
            body = json.loads(record.value)
            identity = (body["stream"], body["seq"])
            if body["seq"] <= marks.get(body["stream"], 0):
                assert identity in seen, f"{identity} skipped by its mark but never counted"
                continue
            marks[body["stream"]] = body["seq"]
            seen.add(identity)
            events.append(Event(body["symbol"], body["price"], body["event_time"], body["source"]))
    return events, poison


@pytest.fixture
def pipeline() -> Iterator[Pipeline]:
    with ExitStack() as stack:
        broker = stack.enter_context(TansuBroker())
        postgres = stack.enter_context(PostgresServer())
        yield Pipeline(stack, broker, postgres)


def test_every_fault_class_at_once_ends_exact(pipeline: Pipeline) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    p = pipeline
    producer = p.start_producer()
    p.start_consumer("a")
    p.start_consumer("b")
    p.progress()
    p.inject_poison()

    p.kill_consumer_mid_interval("a", rng)
    p.progress()

    p.postgres.stop()  # refused: connections fail at once
    wait_until(
        lambda: all("PostgreSQL unavailable" in c.output() for c in p.consumers.values()),
        30,
        "both consumers to notice",
    )
    p.postgres.start()
    p.progress()

    p.kill_consumer_mid_interval("b", rng)
    p.progress()

    p.postgres.freeze()  # hung: past the consumers' 12 s answer deadline
    try:
        wait_until(
            lambda: all("PostgreSQL did not answer" in c.output() for c in p.consumers.values()),
            40,
            "both consumers to notice the hang",
        )
    finally:
        p.postgres.thaw()
    p.progress()

    p.broker.freeze()  # hung: past the producer's 4 s delivery timeout
    try:
        producer.wait_for_output("Kafka did not acknowledge in time", timeout=30)
    finally:
        p.broker.thaw()
    p.progress()

    producer.signal(signal.SIGKILL)
    assert producer.wait() == -signal.SIGKILL
    streams = p.streams()
    producer = p.start_producer()
    p.wait_for_streams_beyond(streams)  # the new run publishes (events of the old may be late)
    p.inject_poison()
    p.progress()

    assert producer.stop() == 0, producer.output()[-3000:]
    records = read_all_records(p.broker.bootstrap, p.topic)
    truth, poison = counted_once(records)
    wait_until(lambda: total_events(p.dsn) == len(truth), 120, f"{len(truth)} events stored")
    for consumer in p.consumers.values():
        assert consumer.stop() == 0, consumer.output()[-3000:]

    assert p.killed_with_pending == 2
    assert len(truth) > 20_000, f"only {len(truth)} events: the stream was too thin"
    assert_tables_equal_truth(p.dsn, truth, note=f"seed {seed}")
    # The end markers read_all_records appended are dead letters too, when read in time.
    letters = query(
        p.dsn,
        'SELECT partition, "offset" FROM dead_letter_events WHERE raw_key IS DISTINCT FROM %s '
        "ORDER BY 1, 2",
        (END_MARKER,),
    )
    assert letters == sorted(poison) and len(poison) == 2 * len(POISON)
