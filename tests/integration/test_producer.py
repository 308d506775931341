"""producer.py end to end: a real process, a fake Binance over HTTP and a real Kafka-protocol
broker, read back with a plain KafkaConsumer. Timing is checked only as tolerant bounds on the
request times the fake Binance recorded."""

from __future__ import annotations

import itertools
import json
import re
import signal
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import pytest
from kafka import KafkaConsumer
from kafka.errors import KafkaTimeoutError

from btcpipe.backoff import Backoff
from btcpipe.contract import make_event
from pricefeed.kafka_sink import KafkaSink
from pricefeed.kafka_sink.clients import close_internals, force_close, has_producer_id
from tests.harness import FakeBinance, Fault, TansuBroker, free_port, wait_until
from tests.harness.fake_binance import MISSING, RecordedRequest, listed_pairs
from tests.harness.scripts import Script, run_script
from tests.producer_runs import (
    BTC,
    ETH,
    answered,
    by_poll,
    message,
    messages,
    poll_args,
    printed,
    producer_args,
    read_topic,
    stop_cleanly,
)

GRID_TOLERANCE = 0.09  # seconds off its grid point (scheduling noise; < half of every interval)


def wait_for_requests(
    producer: Script, binance: FakeBinance, n: int, timeout: float
) -> list[RecordedRequest]:
    """The first `n` ticker requests, failing at once if the producer exits first."""

    def arrived() -> list[RecordedRequest] | None:
        if producer.process.poll() is not None:
            raise AssertionError(f"producer exited early:\n{producer.output()[-3000:]}")
        requests = binance.ticker_requests()
        return requests[:n] if len(requests) >= n else None

    return wait_until(arrived, timeout, f"{n} ticker/price requests")


def partition_count(bootstrap: str, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        return len(wait_until(lambda: consumer.partitions_for_topic(topic), 15, topic))
    finally:
        consumer.close()


def grid_ticks(requests: Sequence[RecordedRequest], interval: float) -> list[int]:
    """Each request's tick number counted from the first, asserting it is on the grid."""
    start = requests[0].monotonic
    ticks = []
    for request in requests:
        offset = request.monotonic - start
        tick = round(offset / interval)
        assert abs(offset - tick * interval) <= GRID_TOLERANCE, (
            f"request at +{offset:.3f} s is off the {interval} s grid (tick {tick})"
        )
        ticks.append(tick)
    return ticks


def gaps(requests: Sequence[RecordedRequest]) -> list[float]:
    return [b.monotonic - a.monotonic for a, b in itertools.pairwise(requests)]


# --- the happy path --------------------------------------------------------------------------


def test_publishes_every_price_as_a_contract_message(
    broker: TansuBroker, binance: FakeBinance, topic: str
) -> None:
    with Script("producer", producer_args(binance, broker.bootstrap, topic)) as producer:
        wait_for_requests(producer, binance, 3, timeout=20)
        binance.set_price("BTCUSDT", "43251.00000001")
        producer.wait_for_output('"price":"43251.00000001"', timeout=10)
        output = stop_cleanly(producer)

    requests = binance.ticker_requests()
    # The first poll asks for every pair, holding SYMBOLS against what Binance lists.
    assert requests[0].query == {}
    assert all(r.query == {"symbols": '["BTCUSDT","ETHUSDT"]'} for r in requests[1:])
    assert all(r.status == 200 for r in requests)

    records = read_topic(broker.bootstrap, topic)
    bodies = messages(records)
    polls = by_poll(bodies)
    assert len(polls) == len(requests) >= 4  # one poll per request, none lost at SIGTERM
    assert all(set(poll) == {"BTCUSDT", "ETHUSDT"} for poll in polls)  # one per symbol
    assert {poll["ETHUSDT"] for poll in polls} == {ETH}
    assert {poll["BTCUSDT"] for poll in polls} == {BTC, "43251.00000001"}
    assert {body["source"] for body in bodies} == {"binance"}
    # event_time is the UTC epoch ms when the answer came in.
    for request, event_time in zip(
        requests, sorted({b["event_time"] for b in bodies}), strict=True
    ):
        assert request.wall * 1000 - 1 <= event_time <= request.wall * 1000 + 1000

    assert partition_count(broker.bootstrap, topic) == 3
    for symbol in ("BTCUSDT", "ETHUSDT"):  # keyed: one symbol stays in one partition
        assert len({r.partition for r in records if r.key == symbol.encode()}) == 1
    assert sorted(printed(output), key=str) == sorted(bodies, key=str)
    assert "Created topic" in output
    # Identity: per symbol one stream of this run, numbered 1, 2, 3... in the topic's order.
    (run,) = re.findall(r"\(run (\S+): each symbol's events numbered from 1\)", output)
    for symbol in ("BTCUSDT", "ETHUSDT"):
        mine = [body for body in bodies if body["symbol"] == symbol]
        by_offset = sorted((r.offset, message(r)) for r in records if r.key == symbol.encode())
        assert {body["stream"] for body in mine} == {f"binance/{symbol}/{run}"}
        assert [body["seq"] for _, body in by_offset] == list(range(1, len(mine) + 1))


def test_configured_by_environment_alone(
    broker: TansuBroker, binance: FakeBinance, topic: str
) -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "KAFKA_TOPIC": topic,
        "KAFKA_TOPIC_PARTITIONS": "5",
        "SYMBOLS": "ethusdt",
        "POLL_INTERVAL_SECONDS": "0.2",
        "BINANCE_BASE_URL": binance.base_url,
    }
    with Script("producer", env=env) as producer:
        producer.wait_for_output("Produced:", timeout=20, count=3)
        stop_cleanly(producer)

    requests = binance.ticker_requests()
    assert requests[0].query == {}  # the listing check: every pair
    assert all(r.query == {"symbol": "ETHUSDT"} for r in requests[1:])  # one symbol: `symbol=`
    bodies = messages(read_topic(broker.bootstrap, topic))
    assert [b["price"] for b in bodies] == [ETH] * len(requests)
    assert partition_count(broker.bootstrap, topic) == 5


def test_simulated_source_is_a_seeded_walk_at_the_same_cadence(
    broker: TansuBroker, binance: FakeBinance, topic: str
) -> None:
    """Three runs at once: two with seed 7, one with seed 8. BINANCE_BASE_URL names the fake
    Binance, which the simulated source does not use: said once at start, and never asked."""
    seeds = {"a": "7", "b": "7", "c": "8"}
    topics = {name: f"{topic}_{name}" for name in seeds}
    env = {"BINANCE_BASE_URL": binance.base_url}
    with ExitStack() as running:
        scripts = {
            name: running.enter_context(
                Script(
                    "producer",
                    [
                        *poll_args(broker.bootstrap, topics[name], interval=0.25),
                        *("--source", "simulated", "--seed", seed),
                    ],
                    env=env,
                )
            )
            for name, seed in seeds.items()
        }
        for script in scripts.values():
            script.wait_for_output("Produced:", timeout=20, count=12)
        output = stop_cleanly(scripts["a"], signal.SIGINT)  # Ctrl-C stops as cleanly as SIGTERM
        stop_cleanly(scripts["b"])
        stop_cleanly(scripts["c"])
    unused = "BINANCE_BASE_URL is set but --source simulated does not use it"
    assert output.count(unused) == 1
    assert output.index(unused) < output.index("Polling simulated every 0.25 s")

    walks = {name: by_poll(messages(read_topic(broker.bootstrap, t))) for name, t in topics.items()}
    for polls in walks.values():
        assert len(polls) >= 6
        assert all(set(poll) == {"BTCUSDT", "ETHUSDT"} for poll in polls)
        for price in (p for poll in polls for p in poll.values()):
            assert re.fullmatch(r"[1-9][0-9]*\.[0-9]{8}", price), price
    assert walks["a"][:6] == walks["b"][:6]
    assert walks["a"][:6] != walks["c"][:6]
    # Same cadence as live polling: event times 0.25 s apart (the simulated source asks no one).
    times = sorted({b["event_time"] for b in messages(read_topic(broker.bootstrap, topics["a"]))})
    for earlier, later in itertools.pairwise(times):
        assert abs((later - earlier) / 1000 - 0.25) <= GRID_TOLERANCE
    assert binance.ticker_requests() == []


def test_producer_is_idempotent_with_acks_all(broker: TansuBroker, topic: str) -> None:
    """The sink's producer against the real broker: idempotence really granted, not dropped."""
    sink = KafkaSink(broker.bootstrap, topic, 3, threading.Event(), Backoff(0.2, 2), echo=False)
    assert sink.connect()
    try:
        now = int(time.time() * 1000)
        sink.publish([make_event("BTCUSDT", BTC, now, "binance", "binance/BTCUSDT/test", 1)])
        sink.flush(10)
        producer = sink.client
        assert producer is not None
        assert producer.config["acks"] == -1  # "all"
        assert producer.config["enable_idempotence"] is True
        assert has_producer_id(producer)  # the broker gave it an id
        assert sink.delivered == 1
    finally:
        sink.close()
    assert [message(r)["price"] for r in read_topic(broker.bootstrap, topic)] == [BTC]


def test_a_client_with_a_record_stuck_on_a_hung_broker_is_closed_at_once(topic: str) -> None:
    """kafka-python 3.0.12's public close() gives up half-way while a record is stuck: its
    flush raises before the sender thread is stopped. clients.force_close finishes the close
    with the private parts close_internals names; this fails if an upgrade removes them, or
    makes the public close enough (then force_close can go)."""
    with TansuBroker() as hung:
        sink = KafkaSink(hung.bootstrap, topic, 1, threading.Event(), Backoff(0.2, 2), echo=False)
        assert sink.connect()
        producer = sink.client
        assert producer is not None
        internals = close_internals(producer)
        now = int(time.time() * 1000)
        events = [
            make_event("BTCUSDT", BTC, now, "binance", "binance/BTCUSDT/test", n) for n in (1, 2)
        ]
        sink.publish(events[:1])  # the client learns the topic's partitions
        sink.flush(10)
        assert sink.delivered == 1
        hung.freeze()
        try:
            sink.publish(events[1:])
            with pytest.raises(KafkaTimeoutError):
                producer.close(timeout=0)  # the public close, as bounded as it gets
            assert internals.sender.is_alive() and not internals.closed
            started = time.monotonic()
            force_close(producer)
            internals.sender.join(5)
            assert not internals.sender.is_alive() and internals.closed
            assert time.monotonic() - started < 5
            producer.close(timeout=1)  # what __del__ does: now a no-op, not a second flush
        finally:
            hung.thaw()
    assert sink.backlog() == 1  # still the sink's to re-send: nothing was counted delivered


# --- the fixed-rate schedule -----------------------------------------------------------------


def test_polls_stay_on_the_grid_and_skip_the_tick_a_slow_request_missed(
    broker: TansuBroker, binance: FakeBinance, topic: str
) -> None:
    interval = 0.2
    # Request 3 is slow but within its interval; request 6 takes longer than an interval.
    binance.fail_next(Fault(), Fault(), Fault(), Fault.slow(0.1), Fault(), Fault(), Fault.slow(0.3))
    args = producer_args(binance, broker.bootstrap, topic, symbols=["BTCUSDT"])
    with Script("producer", args) as producer:
        wait_for_requests(producer, binance, 21, timeout=30)
        stop_cleanly(producer)

    ticks = grid_ticks(binance.ticker_requests()[:21], interval)
    # Request 6 (at tick 6) answers at +1.5 s: tick 7 (+1.4 s) is skipped, tick 8 is on time.
    assert ticks == [*range(7), *range(8, 22)]


def test_fifty_symbols_are_one_request_per_tick(broker: TansuBroker, topic: str) -> None:
    prices = {f"C{i:02d}USDT": f"{100 + i}.{i:08d}" for i in range(50)}
    interval = 0.3
    with FakeBinance(prices) as binance:
        env = {"SYMBOLS": ",".join(prices)}
        args = producer_args(binance, broker.bootstrap, topic, symbols=None, interval=interval)
        with Script("producer", args, env=env) as producer:
            wait_for_requests(producer, binance, 6, timeout=20)
            stop_cleanly(producer)
        requests = binance.ticker_requests()

    assert len(requests) >= 6
    assert requests[0].query == {}  # every pair: the listing check
    assert all(json.loads(r.query["symbols"]) == list(prices) for r in requests[1:])
    assert grid_ticks(requests, interval) == list(range(len(requests)))
    polls = by_poll(messages(read_topic(broker.bootstrap, topic)))
    assert len(polls) == len(requests)
    assert all(poll == prices for poll in polls)


def test_symbols_all_polls_every_listed_pair_in_one_request(
    broker: TansuBroker, topic: str
) -> None:
    prices = listed_pairs(3000)
    with FakeBinance(prices) as binance:
        args = producer_args(binance, broker.bootstrap, topic, "--symbols", "ALL", symbols=None)
        with Script("producer", args) as producer:
            wait_for_requests(producer, binance, 3, timeout=20)
            output = stop_cleanly(producer)
        requests = binance.ticker_requests()

    assert all(r.query == {} and r.status == 200 for r in requests)  # no symbol parameter
    polls = by_poll(messages(read_topic(broker.bootstrap, topic, timeout=30)))
    assert len(polls) == len(requests) >= 3
    assert all(poll == prices for poll in polls)
    # One line per tick, not one per price.
    assert len(re.findall(r"Produced: 3000 prices in \d+ ms", output)) == len(requests)
    assert not printed(output)


# --- symbols Binance does not list -----------------------------------------------------------


def test_a_symbol_binance_does_not_list_stops_the_producer_at_start_naming_it(
    broker: TansuBroker, binance: FakeBinance, topic: str
) -> None:
    symbols = ["BTCUSDT", "NOTAPAIR"]
    with Script("producer", producer_args(binance, broker.bootstrap, topic, symbols=symbols)) as p:
        assert p.wait(30) == 2
        output = p.output()
    assert [r.query for r in binance.ticker_requests()] == [{}]
    errors = [line for line in output.splitlines() if "ERROR" in line]
    assert len(errors) == 1, output
    assert errors[0].endswith("SYMBOLS names a pair that Binance does not list: NOTAPAIR.")
    assert "Traceback" not in output
    assert not read_topic(broker.bootstrap, topic)


def test_a_symbol_delisted_while_polling_is_dropped_and_the_others_go_on(
    broker: TansuBroker, binance: FakeBinance, topic: str
) -> None:
    args = producer_args(binance, broker.bootstrap, topic)
    with Script("producer", args) as producer:
        producer.wait_for_output("Produced:", timeout=20, count=4)
        binance.delist("ETHUSDT")
        producer.wait_for_output("Binance no longer lists ETHUSDT", timeout=10)
        shown = producer.output().count('"symbol":"BTCUSDT"')
        producer.wait_for_output('"symbol":"BTCUSDT"', timeout=10, count=shown + 3)
        binance.delist("BTCUSDT")
        assert producer.wait(30) == 2
        output = producer.output()

    refused = [r for r in binance.ticker_requests() if r.status == 400]
    assert [r.query for r in refused] == [
        {"symbols": '["BTCUSDT","ETHUSDT"]'},
        {"symbol": "BTCUSDT"},
    ]
    warning = [line for line in output.splitlines() if "no longer lists ETHUSDT" in line]
    assert len(warning) == 1 and "WARNING" in warning[0], output
    assert warning[0].endswith("dropped, polling BTCUSDT")
    (stopped,) = [line for line in output.splitlines() if "nothing to poll" in line]
    assert "ERROR" in stopped
    assert stopped.endswith("Binance no longer lists any of SYMBOLS (BTCUSDT): nothing to poll.")
    polls = by_poll(messages(read_topic(broker.bootstrap, topic)))
    assert set(polls[0]) == {"BTCUSDT", "ETHUSDT"} and set(polls[-1]) == {"BTCUSDT"}
    *priced, last = answered(binance)  # the last answer, for every pair, lists neither
    assert last.query == {}
    assert len(polls) == len(priced)


# --- Binance faults --------------------------------------------------------------------------


def test_rate_limit_and_ban_wait_for_retry_after(
    broker: TansuBroker, binance: FakeBinance, topic: str
) -> None:
    binance.fail_next(Fault.rate_limited(retry_after=1), Fault.banned(retry_after=1))
    with Script("producer", producer_args(binance, broker.bootstrap, topic)) as producer:
        producer.wait_for_output("Produced:", timeout=20, count=4)
        output = stop_cleanly(producer)

    limited, banned, after = binance.ticker_requests()[:3]
    assert (limited.status, banned.status, after.status) == (429, 418, 200)
    for earlier, later in ((limited, banned), (banned, after)):
        waited = later.monotonic - earlier.monotonic
        assert 1.0 <= waited <= 1.0 + 0.2 + GRID_TOLERANCE  # Retry-After, then the next tick
    assert re.search(r"rate limit: HTTP 429.*; Retry-After 1 s, next poll in 1\.[0-2] s", output)
    assert re.search(r"IP banned: HTTP 418.*; Retry-After 1 s, next poll in 1\.[0-2] s", output)
    # The ban's end as an ISO UTC time, Binance's epoch milliseconds after it.
    (until, epoch_ms) = re.findall(r"banned until (\S+Z) \((\d{13})\)\.", output)[0]
    assert until == datetime.fromtimestamp(int(epoch_ms) / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert abs(int(epoch_ms) / 1000 - banned.wall - 1) < 5  # Retry-After 1 s from then
    polls = by_poll(messages(read_topic(broker.bootstrap, topic)))
    assert len(polls) == len(answered(binance)) >= 2


def test_restricted_location_names_the_fix_and_keeps_running(
    broker: TansuBroker, binance: FakeBinance, topic: str
) -> None:
    binance.fail_next(Fault.restricted_location())
    with Script("producer", producer_args(binance, broker.bootstrap, topic)) as producer:
        producer.wait_for_output("Produced:", timeout=20, count=4)
        output = stop_cleanly(producer)

    assert binance.ticker_requests()[0].status == 451
    lines = [line for line in output.splitlines() if "HTTP 451" in line]
    assert len(lines) == 1
    assert "restricted location" in lines[0]
    assert "BINANCE_BASE_URL" in lines[0] and "data-api.binance.vision" in lines[0]
    polls = by_poll(messages(read_topic(broker.bootstrap, topic)))
    assert len(polls) == len(answered(binance)) >= 2


def test_server_errors_back_off_exponentially_then_recover(
    broker: TansuBroker, binance: FakeBinance, topic: str
) -> None:
    statuses = [500, 502, 503, 504]
    binance.fail_next(*(Fault.server_error(status) for status in statuses))
    with Script("producer", producer_args(binance, broker.bootstrap, topic)) as producer:
        producer.wait_for_output("Produced:", timeout=30, count=6)
        output = stop_cleanly(producer)

    requests = binance.ticker_requests()
    assert [r.status for r in requests[:5]] == [*statuses, 200]
    waits = gaps(requests[:5])
    for attempt, waited in enumerate(waits):  # delay in [0.2 * 2**n / 2, 0.2 * 2**n], then a tick
        assert 0.1 * 2**attempt - 0.02 <= waited <= 0.2 * 2**attempt + 0.2 + GRID_TOLERANCE
    assert waits[3] > waits[0] + 0.3  # growth, not noise
    assert gaps(requests[4:7]) == pytest.approx([0.2, 0.2], abs=GRID_TOLERANCE)  # back to normal
    for status in statuses:
        assert f"Binance unavailable: HTTP {status}" in output
    assert output.count("Binance unavailable") == 4
    # Each line announces when the next poll really came (the grid tick after the backoff).
    announced = [
        float(s) for s in re.findall(r"Binance unavailable.*next poll in ([0-9.]+) s", output)
    ]
    assert announced == pytest.approx(waits, abs=0.05 + GRID_TOLERANCE)
    polls = by_poll(messages(read_topic(broker.bootstrap, topic)))
    assert len(polls) == len(answered(binance)) >= 3


def test_timeouts_back_off_exponentially_then_recover(
    broker: TansuBroker, binance: FakeBinance, topic: str
) -> None:
    binance.fail_next(*[Fault.slow(2)] * 4)
    args = producer_args(binance, broker.bootstrap, topic, "--timeout", "0.3")
    with Script("producer", args) as producer:
        producer.wait_for_output("Produced:", timeout=30, count=4)
        output = stop_cleanly(producer)

    requests = binance.ticker_requests()
    waits = gaps(requests[:5])
    for attempt, waited in enumerate(waits):  # timeout, delay, then the next tick
        low, high = 0.3 + 0.1 * 2**attempt, 0.3 + 0.2 * 2**attempt + 0.2
        assert low - 0.02 <= waited <= high + GRID_TOLERANCE, (attempt, waits)
    assert waits[3] > waits[0] + 0.3
    assert output.count("Binance unavailable: no answer within 0.3 s") == 4
    polls = by_poll(messages(read_topic(broker.bootstrap, topic)))
    assert len(polls) == len(requests) - 4 >= 2  # every request after the slow ones
    assert all(poll == {"BTCUSDT": BTC, "ETHUSDT": ETH} for poll in polls)


def test_invalid_bodies_are_logged_and_skipped(
    broker: TansuBroker, binance: FakeBinance, topic: str
) -> None:
    bodies = [
        Fault.invalid_json(),  # truncated
        Fault.html_page(),
        Fault.invalid_json('[{"symbol":["BTCUSDT"],"price":"1.00000000"}]'),
        Fault.invalid_json('{"code":0,"msg":"OK"}'),
    ]
    binance.fail_next(*bodies)
    with Script("producer", producer_args(binance, broker.bootstrap, topic)) as producer:
        producer.wait_for_output("Produced:", timeout=20, count=4)
        output = stop_cleanly(producer)

    assert output.count("Skipped poll: Binance sent an invalid body") == len(bodies)
    assert "<html>" in output  # the log shows what came instead
    polls = by_poll(messages(read_topic(broker.bootstrap, topic)))
    assert len(polls) == len(answered(binance)) - len(bodies) >= 2
    assert all(poll == {"BTCUSDT": BTC, "ETHUSDT": ETH} for poll in polls)


BAD_PRICES: list[object] = ["0", "0.00000000", "-1", "NaN", "1e5", " 5", "", 5.0, None, MISSING]


def test_bad_prices_skip_only_the_bad_symbol(
    broker: TansuBroker, binance: FakeBinance, topic: str
) -> None:
    binance.fail_next(
        *(Fault.bad_price(value, symbol="ETHUSDT") for value in BAD_PRICES),
        Fault.bad_price("abc"),  # every symbol of one response
    )
    with Script("producer", producer_args(binance, broker.bootstrap, topic)) as producer:
        producer.wait_for_output(f'"price":"{ETH}"', timeout=30, count=2)
        output = stop_cleanly(producer)

    assert output.count("Skipped invalid price for ETHUSDT") == len(BAD_PRICES) + 1
    assert output.count("Skipped invalid price for BTCUSDT") == 1
    polls = by_poll(messages(read_topic(broker.bootstrap, topic)))
    # Every answer but the all-bad one gave a poll; the first ones lack only ETHUSDT.
    assert len(polls) == len(answered(binance)) - 1
    bad = len(BAD_PRICES)
    assert polls[:bad] == [{"BTCUSDT": BTC}] * bad
    assert polls[bad:] == [{"BTCUSDT": BTC, "ETHUSDT": ETH}] * (len(polls) - bad)
    assert len(polls) > bad


# --- Kafka faults ----------------------------------------------------------------------------


def test_kafka_unreachable_at_start_is_retried_and_sigterm_exits_0(
    binance: FakeBinance, topic: str
) -> None:
    bootstrap = f"127.0.0.1:{free_port()}"
    with Script("producer", producer_args(binance, bootstrap, topic)) as producer:
        output = producer.wait_for_output(f"Kafka not reachable at {bootstrap}", timeout=30)
        assert re.search(rf"Kafka not reachable at {bootstrap} .*; retrying in [0-9.]+ s", output)
        output = stop_cleanly(producer)
    assert "Produced:" not in output


def test_kafka_appearing_later_is_connected_to(binance: FakeBinance, topic: str) -> None:
    port = free_port()
    with Script("producer", producer_args(binance, f"127.0.0.1:{port}", topic)) as producer:
        producer.wait_for_output("Kafka not reachable", timeout=30)
        with TansuBroker(port=port) as late_broker:
            producer.wait_for_output("Produced:", timeout=30, count=4)
            output = stop_cleanly(producer)
            polls = by_poll(messages(read_topic(late_broker.bootstrap, topic)))
    assert output.index("Kafka not reachable") < output.index("Connected to Kafka")
    assert len(polls) == len(answered(binance)) >= 2
    assert all(poll == {"BTCUSDT": BTC, "ETHUSDT": ETH} for poll in polls)


def test_kafka_going_away_mid_run_is_said_and_undelivered_events_make_exit_1(
    binance: FakeBinance, topic: str
) -> None:
    with (
        TansuBroker() as doomed,
        Script(
            "producer", producer_args(binance, doomed.bootstrap, topic, interval=0.5)
        ) as producer,
    ):
        producer.wait_for_output("Produced:", timeout=30, count=2)
        doomed.stop()
        # The client retries on its own; the producer must say that Kafka stopped answering
        # (after max(5 s, two intervals) without an acknowledgement), and keep polling.
        output = producer.wait_for_output("has acknowledged nothing for", timeout=30)
        polls_when_warned = len(answered(binance))
        wait_for_requests(producer, binance, polls_when_warned + 2, timeout=10)
        producer.signal(signal.SIGTERM)
        # Stopped with events Kafka never took: counted, said, and a non-zero exit code so
        # that a supervisor knows.
        assert producer.wait(30) == 1
        output = producer.output()
    assert re.search(rf"Kafka at {doomed.bootstrap} has acknowledged nothing for \d+ s", output)
    lost = re.search(r"Stopping with (\d+) events Kafka did not acknowledge", output)
    assert lost, output[-2000:]
    produced = output.count("Produced:")
    assert int(lost[1]) == 2 * len(answered(binance)) - produced
    assert "Traceback" not in output


# --- the command line ------------------------------------------------------------------------


def test_a_bad_setting_stops_before_the_topic_is_created(broker: TansuBroker, topic: str) -> None:
    """POLL_INTERVAL_SECONDS=inf once published a message, then died with a traceback; now it
    stops at start, and the broker never hears of the topic."""
    args = ["--source", "simulated", "--bootstrap-servers", broker.bootstrap, "--topic", topic]
    result = run_script("producer", args, env={"POLL_INTERVAL_SECONDS": "inf"})
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("producer.py: error: POLL_INTERVAL_SECONDS (--interval)")
    assert topic not in broker_topics(broker)
    # The same run with a good interval creates it: the check above could have seen it.
    with Script("producer", [*args, "--interval", "0.2"]) as producer:
        producer.wait_for_output("Produced:", timeout=30)
        assert producer.stop() == 0
    assert topic in broker_topics(broker)


@pytest.mark.parametrize("flag", [[], ["--compression", "zstd"]])
def test_a_codec_whose_library_is_missing_is_one_sentence_and_exit_2(
    tmp_path: Path, flag: list[str]
) -> None:
    """The default codec too: a Python without zstandard (a package that fails to import, as
    a missing one does) stops at start, not at the first batch."""
    missing = tmp_path / "zstandard"
    missing.mkdir()
    (missing / "__init__.py").write_text("raise ImportError('zstandard is not installed')\n")
    args = ["--source", "simulated", "--no-check-hosts", *flag]
    result = run_script("producer", args, env={"PYTHONPATH": str(tmp_path)})
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        "producer.py: error: KAFKA_COMPRESSION=zstd needs the zstandard package, which is not "
        "installed here: pip install -r producer/requirements.txt, or choose another codec.\n"
    )


def broker_topics(broker: TansuBroker) -> set[str]:
    watcher = KafkaConsumer(bootstrap_servers=broker.bootstrap)
    try:
        return watcher.topics()
    finally:
        watcher.close()


ENVIRONMENT_VARIABLES = [
    "PRODUCER_SOURCE",
    "KAFKA_BOOTSTRAP_SERVERS",
    "KAFKA_TOPIC",
    "KAFKA_TOPIC_PARTITIONS",
    "SYMBOLS",
    "POLL_INTERVAL_SECONDS",
    "POLL_JITTER_SECONDS",
    "BINANCE_BASE_URL",
    "BINANCE_WS_URL",
    "TRADES_SINCE",
    "HTTP_TIMEOUT_SECONDS",
    "BACKOFF_BASE_SECONDS",
    "BACKOFF_MAX_SECONDS",
    "SIMULATION_SEED",
]


def test_help_lists_every_environment_variable() -> None:
    result = run_script("producer", ["--help"])
    assert result.returncode == 0
    for var in ENVIRONMENT_VARIABLES:
        assert var in result.stdout, var
    for flag in ("--source", "--seed", "--interval", "--jitter", "--symbols", "--binance-url"):
        assert flag in result.stdout


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--symbols", "BTC/USDT"], {}, "SYMBOLS"),
        (["--interval", "0"], {}, "POLL_INTERVAL_SECONDS"),
        ([], {"POLL_INTERVAL_SECONDS": "-1"}, "POLL_INTERVAL_SECONDS"),
        (["--interval", "soon"], {}, "POLL_INTERVAL_SECONDS"),
        (["--binance-url", "https://nothing.invalid"], {}, "BINANCE_BASE_URL"),
        ([], {"KAFKA_BOOTSTRAP_SERVERS": "nothing.invalid:9092"}, "KAFKA_BOOTSTRAP_SERVERS"),
        ([], {"POLL_INTERVAL_SECONDS": "inf"}, "POLL_INTERVAL_SECONDS"),
        ([], {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:99999"}, "KAFKA_BOOTSTRAP_SERVERS"),
        (["--topic", "bad topic!"], {}, "KAFKA_TOPIC"),
        (["--source", "simulated", "--replay-symbol", "BTCUSDT"], {}, "REPLAY_SYMBOL"),
        (["--speed", "2"], {}, "--speed (REPLAY_SPEED) is only used with --source replay"),
        (["--resume"], {}, "--resume is only used with --source replay, not binance"),
        (["--since", "2026-01-01T00:00:00Z"], {}, "--since (TRADES_SINCE) is only used with"),
        (
            ["--source", "binance-trades", "--ws-url", "wss://nothing.invalid"],
            {},
            "BINANCE_WS_URL",
        ),
        (["--source", "binance-trades", "--since", "soon"], {}, "TRADES_SINCE"),
    ],
    ids=[
        "symbol",
        "interval-0",
        "interval-negative",
        "interval-text",
        "binance-dns",
        "kafka-dns",
        "interval-inf",
        "kafka-port",
        "topic",
        "replay-symbol-live",
        "speed-live",
        "resume-live",
        "since-ticker",
        "ws-dns",
        "since-text",
    ],
)
def test_bad_config_stops_with_one_sentence_and_exit_2(
    args: list[str], env: dict[str, str], named: str
) -> None:
    base = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092", "BINANCE_BASE_URL": "http://127.0.0.1:1"}
    result = run_script("producer", args, env={**base, **env})
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("producer.py: error: ")
    assert named in lines[0]
    assert lines[0].endswith(".")
