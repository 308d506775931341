"""`producer.py --source binance-trades` end to end: a real process, the fake Binance's
WebSocket streams and REST aggTrades serving one trade tape per symbol, a real Kafka-protocol
broker read back with a plain consumer. The topic must hold every trade of the tape exactly
once, in id order per symbol, as Binance sent it, whatever happened to the connections."""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from kafka import KafkaConsumer, TopicPartition

from btcpipe.backoff import Backoff
from btcpipe.clock import wall_clock_ms
from btcpipe.contract import agg_trade_stream, make_event
from pricefeed.binance.rest import BinanceClient
from pricefeed.binance.ws import Message, StreamConnection
from pricefeed.kafka_sink import KafkaSink
from pricefeed.kafka_tail import TopicTail, partition_of
from pricefeed.sources.registry import TradeLog
from pricefeed.sources.streaming import StreamRunner
from pricefeed.sources.trades.source import TradeStreamSource
from tests.harness import FakeBinance, Fault, TansuBroker, wait_until
from tests.harness.fake_binance import listed_pairs
from tests.harness.market_data import AGG_TRADES_PATH
from tests.harness.scripts import Script
from tests.pipeline import read_all_records
from tests.producer_runs import (
    FAST_BACKOFF,
    cut_twice_then_announce_a_shutdown,
    expected,
    grow,
    stop_cleanly,
    tape_sizes,
    trade_args,
)
from tests.producer_runs import TRADE_SYMBOLS as SYMBOLS

TRADE_KEYS = {
    "symbol", "price", "event_time", "source", "stream", "seq",
    "quantity", "first_trade_id", "last_trade_id",
}  # fmt: skip
FOLLOWS = re.compile(r"(\w+) follows the live stream: (\d+) trades? fetched from REST")


def published(bootstrap: str, topic: str) -> dict[str, list[dict[str, Any]]]:
    """The trade messages on the topic per symbol, in offset order: read once, after the
    producer stopped (reading stops at the end marker it appends)."""
    by_symbol: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for batch in read_all_records(bootstrap, topic).values():
        for record in batch:
            body = json.loads(record.value)
            assert set(body) == TRADE_KEYS, body
            assert record.key == body["symbol"].encode()
            assert record.timestamp == body["event_time"]  # windows go by trade time
            by_symbol[body["symbol"]].append(body)
    return by_symbol


class Counting:
    """Counts the messages on a topic per key as they arrive (no end markers: records
    appended after one would be missed by the final read)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        partitions = wait_until(lambda: self.consumer.partitions_for_topic(topic), 30, topic)
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        self.consumer.assign(assigned)
        self.consumer.seek_to_beginning(*assigned)
        self.counts: Counter[str] = Counter()

    def at_least(self, goal: Mapping[str, int]) -> bool:
        for batch in self.consumer.poll(timeout_ms=200).values():
            self.counts.update(record.key.decode() for record in batch)
        return all(self.counts[symbol] >= count for symbol, count in goal.items())

    def close(self) -> None:
        self.consumer.close()


def wait_for(
    bootstrap: str, topic: str, goal: Mapping[str, int], script: Script, timeout: float = 60
) -> None:
    """Until the topic holds at least `goal[symbol]` messages of each symbol."""
    counting = Counting(bootstrap, topic)
    try:
        script.wait_until(lambda: counting.at_least(goal), timeout, f"{goal} on the topic", 0)
    finally:
        counting.close()


def assert_tape_once_in_order(bootstrap: str, topic: str, binance: FakeBinance) -> None:
    on_topic = published(bootstrap, topic)
    for symbol in binance.tape_symbols():
        assert on_topic[symbol] == expected(binance.trades(symbol), symbol), symbol


def test_every_trade_once_in_order_through_cuts_a_shutdown_and_a_kill(
    broker: TansuBroker, topic: str
) -> None:
    since = wall_clock_ms() - 1000  # before the first trade: the whole tape
    with FakeBinance(prices={}) as binance:
        for symbol in SYMBOLS:
            binance.add_trades(symbol, 2500)  # before the start: three pages of REST
            binance.set_trade_rate(symbol, 20)
        args = trade_args(binance, broker.bootstrap, topic)
        with Script("producer", [*args, "--since", str(since)]) as first:
            first.wait_for_output("follows the live stream", count=2)
            cut_twice_then_announce_a_shutdown(binance, first, 10)
            first.kill()  # SIGKILL: what the sink held is lost, Kafka keeps the rest
            before = first.output()
        grow(binance, 40)  # traded while no producer ran
        with Script("producer", args) as again:  # no --since: it resumes from the topic
            again.wait_for_output("follows the live stream", count=2)
            grow(binance, 10)
            binance.cut_streams()
            again.wait_for_output("Connected to Binance's trade streams", count=2)
            grow(binance, 10)
            for symbol in SYMBOLS:
                binance.set_trade_rate(symbol, 0)
            wait_for(broker.bootstrap, topic, tape_sizes(binance), again)
            after = stop_cleanly(again)
        assert_tape_once_in_order(broker.bootstrap, topic, binance)

    for output in (before, after):
        assert "Traceback" not in output and "Skipped" not in output and "Gap" not in output
    # The first run caught up 2,500 trades a symbol through REST, pages of 1,000.
    assert {(s, int(n) >= 2500) for s, n in FOLLOWS.findall(before)[:2]} == {
        (s, True) for s in SYMBOLS
    }
    # The two cuts reconnected; the shutdown notice replaced its connection first.
    assert before.count("reconnecting in") == 2
    assert before.count("Connected to Binance's trade streams") == 3
    # The second run found where the first one's trades end on the topic, and fetched what
    # was traded since from REST.
    for symbol in SYMBOLS:
        assert re.search(rf"{symbol} resumes after aggregate trade \d+, the last", after)
    assert all(int(n) > 0 for _, n in FOLLOWS.findall(after)[:2])
    assert "start at the first trade" not in after


def test_holes_and_placeholders_are_said_never_published_and_rest_faults_waited_out(
    broker: TansuBroker, topic: str
) -> None:
    with FakeBinance(prices={}) as binance:
        binance.add_trades("BTCUSDT", 30)
        history_hole = binance.skip_ids("BTCUSDT", 3)
        placeholder = binance.add_placeholder("BTCUSDT")
        binance.add_trades("BTCUSDT", 30)
        binance.add_trades("ETHUSDT", 30)
        binance.fail_next(
            Fault.rate_limited(retry_after=1),
            Fault.server_error(503),
            Fault.invalid_json(),
            path=AGG_TRADES_PATH,
        )
        since = binance.trades("BTCUSDT")[0].time_ms
        args = trade_args(binance, broker.bootstrap, topic, "--since", str(since))
        with Script("producer", args) as producer:
            producer.wait_for_output("follows the live stream", count=2)
            live_hole = binance.skip_ids("BTCUSDT", 2)  # the stream jumps over it
            binance.add_trades("BTCUSDT", 5)
            binance.add_trades("ETHUSDT", 5)
            wait_for(broker.bootstrap, topic, tape_sizes(binance), producer)
            output = stop_cleanly(producer)
        assert_tape_once_in_order(broker.bootstrap, topic, binance)
        trades = binance.trades("BTCUSDT")

    assert "Binance rate limit: HTTP 429" in output and "Retry-After 1 s" in output
    assert "HTTP 503" in output
    assert "Binance sent an invalid aggTrades answer (body is not JSON: " in output
    assert (
        f"Skipped trade input: BTCUSDT aggregate trade {placeholder.agg_id} is an invalid "
        "placeholder (f = l = -1) (1 skipped so far)"
    ) in output
    for first, last in (history_hole, live_hole):
        before = next(t for t in trades if t.agg_id == first - 1)
        after = next(t for t in trades if t.agg_id == last + 1)
        windows = sorted({window(before.time_ms), window(after.time_ms)})
        where = (
            f"in the window of {windows[0]}"
            if len(windows) == 1
            else f"between the windows of {windows[0]} and {windows[1]}"
        )
        assert (
            f"Gap in the trades: BTCUSDT: aggregate trade ids {first}-{last} served neither "
            f"live nor by REST, {where}"
        ) in output
    assert output.count("Gap in the trades") == 2


def window(time_ms: int) -> str:
    start = time_ms - time_ms % 300_000
    return datetime.fromtimestamp(start / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_since_starts_at_the_first_trade_at_or_after_that_time(
    broker: TansuBroker, topic: str
) -> None:
    start = wall_clock_ms() - 600_000
    with FakeBinance(prices={}) as binance:
        for symbol in SYMBOLS:
            for i in range(100):
                binance.add_trade(symbol, f"{100 + i}.5", "0.25", time_ms=start + i * 1000)
        since = datetime.fromtimestamp((start + 50_500) / 1000, UTC)
        iso = since.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        args = trade_args(binance, broker.bootstrap, topic, "--since", iso)
        with Script("producer", args) as producer:
            producer.wait_for_output("follows the live stream", count=2)
            output = stop_cleanly(producer)
        on_topic = published(broker.bootstrap, topic)
        for symbol in SYMBOLS:
            assert on_topic[symbol] == expected(binance.trades(symbol)[51:], symbol)
    assert f"start at the first trade at or after {iso[:19]}Z" in output


def test_a_symbol_binance_does_not_list_stops_it_at_start(broker: TansuBroker, topic: str) -> None:
    with FakeBinance(prices={"BTCUSDT": "43250.75000000"}) as binance:
        args = trade_args(binance, broker.bootstrap, topic)
        with Script("producer", args) as producer:
            assert producer.wait(30) == 2
            output = producer.output()
    assert "SYMBOLS names a pair that Binance does not list: ETHUSDT." in output
    assert "Traceback" not in output


@contextmanager
def running_source(
    binance: FakeBinance, bootstrap: str, topic: str, **options: float
) -> Iterator[KafkaSink]:
    """The trade source of SYMBOLS run in this process into a real KafkaSink, from before the
    first trade, with short backoffs and `options` (TradeStreamSource's); stopped after,
    having lost nothing."""
    source = TradeStreamSource(
        BinanceClient(binance.base_url, 5.0),
        binance.ws_url,
        TradeLog(bootstrap, topic),
        SYMBOLS,
        wall_clock_ms() - 1000,
        5.0,
        Backoff(0.2, 2),
        **options,
    )
    stop = threading.Event()
    sink = KafkaSink(bootstrap, topic, 3, stop, Backoff(0.2, 2), echo=False)
    assert sink.connect()
    running = threading.Thread(target=StreamRunner(source, Backoff(0.2, 2)).run, args=(sink, stop))
    running.start()
    try:
        yield sink
    finally:
        stop.set()
        running.join(15)
        lost = sink.close()
    assert not running.is_alive() and lost == 0


def test_a_connection_is_replaced_before_its_age_limit_and_answers_the_servers_pings(
    broker: TansuBroker, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    """In process, with the age limit shortened: each connection is replaced (make before
    break) before the server's limit closes it, so the stream is never interrupted."""
    fake = FakeBinance(prices={}, max_connection_age=6.0, ping_interval=0.5, pong_timeout=3.0)
    with fake as binance, caplog.at_level(logging.INFO, "producer"):
        for symbol in SYMBOLS:
            binance.set_trade_rate(symbol, 20)
        with running_source(binance, broker.bootstrap, topic, replace_after=1.5) as sink:
            wait_until(lambda: caplog.text.count("replacing it before") >= 4, 30, "4 replacements")
            wait_until(
                lambda: any(c.pongs_received >= 2 for c in binance.stream_connections()),
                10,
                "pings answered",
            )
            for symbol in SYMBOLS:
                binance.set_trade_rate(symbol, 0)
            total = sum(len(binance.trades(s)) for s in SYMBOLS)
            wait_until(lambda: sink.delivered >= total, 30, "every trade acknowledged")
        assert_tape_once_in_order(broker.bootstrap, topic, binance)
    assert "reconnecting in" not in caplog.text  # never cut off: replaced before the limit
    assert "Skipped" not in caplog.text and "Gap" not in caplog.text


def test_a_silent_connection_is_cut_reconnected_and_what_it_held_back_fetched(
    broker: TansuBroker, topic: str, caplog: pytest.LogCaptureFixture
) -> None:
    """In process, our pings shortened: a stalled connection (no event, ping or pong) is
    given up after a ping goes unanswered, and the trades it held back come from REST."""
    with FakeBinance(prices={}) as binance, caplog.at_level(logging.INFO, "producer"):
        for symbol in SYMBOLS:
            binance.set_trade_rate(symbol, 20)
        with running_source(binance, broker.bootstrap, topic, keepalive=1.0) as sink:
            wait_until(lambda: "follows the live stream" in caplog.text, 15, "the first fill")
            assert binance.stall_streams(30) == 1
            wait_until(lambda: "keepalive ping timeout" in caplog.text, 15, "the stall noticed")
            wait_until(
                lambda: caplog.text.count("Connected to Binance's trade streams") == 2,
                15,
                "a new connection",
            )
            grow(binance, 20)
            for symbol in SYMBOLS:
                binance.set_trade_rate(symbol, 0)
            total = sum(len(binance.trades(s)) for s in SYMBOLS)
            wait_until(lambda: sink.delivered >= total, 30, "every trade acknowledged")
        assert_tape_once_in_order(broker.bootstrap, topic, binance)
    assert caplog.text.count("reconnecting in") >= 1
    assert "Skipped" not in caplog.text and "Gap" not in caplog.text


def test_every_pair_goes_over_connections_of_at_most_1024_streams_within_the_message_rate(
    broker: TansuBroker, topic: str
) -> None:
    pairs = listed_pairs(1100)
    traded = sorted(pairs)[::500]  # three of them get trades
    with FakeBinance(prices=pairs) as binance:
        args = [
            "--source", "binance-trades", "--symbols", "ALL",
            "--binance-url", binance.base_url, "--ws-url", binance.ws_url,
            "--bootstrap-servers", broker.bootstrap, "--topic", topic, *FAST_BACKOFF,
        ]  # fmt: skip
        streams = {f"{symbol.lower()}@aggTrade" for symbol in pairs}
        with Script("producer", args) as producer:
            producer.wait_for_output("1100 symbols over 2 connections")

            def subscribed() -> bool:
                held = [s for c in binance.stream_connections() for s in c.streams]
                return len(held) == len(streams) and set(held) == streams

            producer.wait_until(subscribed, 30, "every stream subscribed")
            connections = binance.stream_connections()
            for symbol in traded:
                binance.add_trades(symbol, 5)
            wait_for(broker.bootstrap, topic, dict.fromkeys(traded, 5), producer)
            output = stop_cleanly(producer)
        assert_tape_once_in_order(broker.bootstrap, topic, binance)
    assert len(connections) == 2
    for connection in connections:
        assert connection.combined and len(connection.streams) == 550
        assert len(connection.path) < 8192  # the streams past the URL were subscribed
    # More than 5 incoming messages within a second would have closed a connection (1008).
    assert "reconnecting in" not in output and "Too many requests" not in output


def test_the_topics_tail_gives_each_symbols_last_trade_behind_other_events(
    broker: TansuBroker, topic: str
) -> None:
    """Where a restart resumes: the last trade of each symbol's aggtrades stream, found behind
    more events of other streams in its partition than the first look back covers."""
    assert TopicTail(broker.bootstrap, topic).last_seqs({"BTCUSDT": "aggtrades/BTCUSDT"}) == {}
    now = wall_clock_ms()
    trades = [
        make_event(
            "BTCUSDT", "1.5", now - 60_000, "binance", "aggtrades/BTCUSDT", seq,
            quantity="0.1", first_trade_id=seq, last_trade_id=seq,
        )
        for seq in range(1, 3001)
    ]  # fmt: skip
    samples = [
        make_event(symbol, "2.5", now - 30_000, "binance", f"binance/{symbol}/run", seq)
        for seq in range(1, 2501)
        for symbol in ("BTCUSDT", "ETHUSDT")
    ]
    stop = threading.Event()
    sink = KafkaSink(broker.bootstrap, topic, 1, stop, Backoff(0.2, 2), echo=False)
    assert sink.connect()
    try:
        sink.publish(trades)
        sink.publish(samples)  # 5,000 newer events in the one partition
        sink.flush(30)
        assert sink.backlog() == 0
    finally:
        sink.close()
    streams = {"BTCUSDT": "aggtrades/BTCUSDT", "ETHUSDT": "aggtrades/ETHUSDT"}
    assert TopicTail(broker.bootstrap, topic).last_seqs(streams) == {"BTCUSDT": 3000}
    assert partition_of(b"BTCUSDT", 1) == 0
    assert {partition_of(f"S{i}".encode(), 3) for i in range(30)} == {0, 1, 2}


def test_the_topics_tail_passes_over_empty_partitions(broker: TansuBroker, topic: str) -> None:
    """A partition that holds nothing is not read (an empty fetch waits for data to come):
    a symbol whose partition is empty starts afresh, one whose partition holds a single
    batch (Tansu's ListOffsets answers its base offset + 1) resumes after its last trade."""
    other = next(f"S{i}USDT" for i in range(100) if partition_of(f"S{i}USDT".encode(), 3) != 0)
    symbol = next(f"T{i}USDT" for i in range(100) if partition_of(f"T{i}USDT".encode(), 3) == 0)
    now = wall_clock_ms()
    trades = [
        make_event(
            symbol, "1.5", now - 60_000, "binance", agg_trade_stream(symbol), seq,
            quantity="0.1", first_trade_id=seq, last_trade_id=seq,
        )
        for seq in range(1, 501)
    ]  # fmt: skip
    stop = threading.Event()
    sink = KafkaSink(broker.bootstrap, topic, 3, stop, Backoff(0.2, 2), echo=False)
    assert sink.connect()
    try:
        sink.publish(trades)
        sink.flush(30)
        assert sink.backlog() == 0
    finally:
        sink.close()
    streams = {name: agg_trade_stream(name) for name in (symbol, other)}
    assert TopicTail(broker.bootstrap, topic).last_seqs(streams) == {symbol: 500}


def test_a_full_inbox_holds_the_socket_back_and_closing_frees_its_reader() -> None:
    """The WebSocket edge on its own: while nobody reads (Kafka away), what arrives waits in
    the socket, not in memory; closing the connection then ends its reader thread."""
    inbox: queue.Queue[tuple[int, Message]] = queue.Queue(3)
    with FakeBinance(prices={}) as binance:
        binance.add_tape("BTCUSDT")
        connection = StreamConnection(1, binance.ws_url, ["btcusdt@aggTrade"], inbox, 5.0)
        try:
            binance.add_trades("BTCUSDT", 50)
            wait_until(inbox.full, 10, "a full inbox")
            assert inbox.qsize() == 3
        finally:
            connection.close()
        assert not connection.reader_alive()
    assert [number for number, _ in [inbox.get_nowait() for _ in range(3)]] == [1, 1, 1]


def test_no_page_is_asked_for_while_the_minutes_weight_is_spent(
    broker: TansuBroker, topic: str
) -> None:
    """Other clients of the IP spend the minute's weight: the first page's answer says so,
    and the next page, fetched ahead or not, waits for the next minute (up to a minute)."""
    with FakeBinance(prices={}) as binance:
        for symbol in SYMBOLS:
            binance.add_trades(symbol, 1500)  # two pages each
        since = min(binance.trades(symbol)[0].time_ms for symbol in SYMBOLS)
        binance.set_weight_load(4796)  # every aggTrades answer reports 4,800 or more
        args = trade_args(binance, broker.bootstrap, topic, "--since", str(since))
        with Script("producer", args) as producer:
            producer.wait_for_output("used this minute: next page in")
            binance.set_weight_load(0)  # the next minute is the source's own
            # The pause lasts up to a minute, a second one if the first ended in a loaded minute.
            wait_for(broker.bootstrap, topic, tape_sizes(binance), producer, timeout=150)
            output = stop_cleanly(producer)
        assert_tape_once_in_order(broker.bootstrap, topic, binance)
        pages = binance.requests_to(AGG_TRADES_PATH)
    assert re.search(r"Binance REST weight 4[89]\d\d used this minute: next page in", output)
    first_minute = int(pages[0].wall // 60)
    assert int(pages[1].wall // 60) > first_minute, [(p.wall, p.query) for p in pages]
