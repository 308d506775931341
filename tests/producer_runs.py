"""Running producer.py against a fake Binance and a real broker, and reading back what it
published: shared by the producer's end-to-end tests, its fault tests and the exactly-once
tests."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from kafka.consumer.fetcher import ConsumerRecord

from tests.harness import AggTrade, FakeBinance, wait_until
from tests.harness.fake_binance import RecordedRequest
from tests.harness.scripts import Script
from tests.pipeline import read_all_records

BTC, ETH = "43250.75000000", "2300.10000000"  # the fake Binance's prices
TRADE_SYMBOLS = ("BTCUSDT", "ETHUSDT")  # the trade source's runs: one tape each
CONTRACT_KEYS = {"symbol", "price", "event_time", "source", "stream", "seq"}
FAST_BACKOFF = ["--backoff-base", "0.2", "--backoff-max", "2"]
PRODUCED = re.compile(r"Produced: (\{.*\})$", re.MULTILINE)


def producer_args(
    binance: FakeBinance,
    bootstrap: str,
    topic: str,
    *extra: str,
    symbols: Sequence[str] | None = ("BTCUSDT", "ETHUSDT"),
    interval: float = 0.2,
) -> list[str]:
    """Command-line flags for a run against `binance` and `bootstrap` (symbols None: from env)."""
    polling = poll_args(bootstrap, topic, *extra, symbols=symbols, interval=interval)
    return ["--binance-url", binance.base_url, *polling]


def poll_args(
    bootstrap: str,
    topic: str,
    *extra: str,
    symbols: Sequence[str] | None = ("BTCUSDT", "ETHUSDT"),
    interval: float = 0.2,
) -> list[str]:
    """The flags of any poll source (binance, simulated) publishing to `bootstrap`'s `topic`."""
    args = ["--bootstrap-servers", bootstrap, "--topic", topic]
    if symbols is not None:
        args += ["--symbols", ",".join(symbols)]
    return [*args, "--interval", str(interval), *FAST_BACKOFF, *extra]


def read_topic(bootstrap: str, topic: str, timeout: float = 15) -> list[ConsumerRecord]:
    """Every record the producer wrote, by event time then symbol. Call after the producer has
    stopped (it flushes on SIGTERM): reading up to end markers appended now gives exactly what
    was there before, without trusting end offsets."""
    records = read_all_records(bootstrap, topic, timeout)
    return sorted(
        (r for batch in records.values() for r in batch), key=lambda r: (r.timestamp, r.key)
    )


def message(record: ConsumerRecord) -> dict[str, object]:
    """The record's JSON, after checking it against the contract."""
    body = json.loads(record.value)
    assert set(body) == CONTRACT_KEYS, body
    assert isinstance(body["symbol"], str)
    assert isinstance(body["price"], str)
    assert isinstance(body["event_time"], int) and not isinstance(body["event_time"], bool)
    assert isinstance(body["stream"], str) and isinstance(body["seq"], int)
    assert record.key == body["symbol"].encode()
    assert record.timestamp == body["event_time"]
    assert record.timestamp_type == 0  # CreateTime: the producer's event time, kept as sent
    return body


def messages(records: Sequence[ConsumerRecord]) -> list[dict[str, Any]]:
    return [message(record) for record in records]


def by_poll(bodies: Sequence[Mapping[str, object]]) -> list[dict[str, str]]:
    """{symbol: price} per poll, in order: one poll's messages share one event time."""
    polls: dict[object, dict[str, str]] = defaultdict(dict)
    for body in bodies:
        symbol, price = str(body["symbol"]), str(body["price"])
        assert symbol not in polls[body["event_time"]], f"{symbol} twice in one poll"
        polls[body["event_time"]][symbol] = price
    return [polls[time_] for time_ in sorted(polls)]  # type: ignore[type-var]


def printed(output: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in PRODUCED.findall(output)]


def answered(binance: FakeBinance, status: int = 200) -> list[RecordedRequest]:
    return [r for r in binance.ticker_requests() if r.status == status]


def stop_cleanly(script: Script, signum: int = signal.SIGTERM) -> str:
    """Stop the producer as a user would; it must exit 0 without a traceback."""
    script.signal(signum)
    try:
        exit_code = script.wait(30)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"producer ignored signal {signum}:\n{script.output()}") from None
    assert exit_code == 0, script.output()[-3000:]
    output = script.output()
    assert "Traceback" not in output, output[-3000:]
    return output


# -- the trade source (--source binance-trades) -----------------------------------------


def trade_args(binance: FakeBinance, bootstrap: str, topic: str, *extra: str) -> list[str]:
    return [
        "--source", "binance-trades", "--symbols", ",".join(TRADE_SYMBOLS),
        "--binance-url", binance.base_url, "--ws-url", binance.ws_url,
        "--bootstrap-servers", bootstrap, "--topic", topic, *FAST_BACKOFF, *extra,
    ]  # fmt: skip


def expected(trades: Sequence[AggTrade], symbol: str) -> list[dict[str, Any]]:
    """The messages a tape's trades make, in id order; placeholders are no trades."""
    return [
        {
            "symbol": symbol,
            "price": trade.price,
            "event_time": trade.time_ms,
            "source": "binance",
            "stream": f"aggtrades/{symbol}",
            "seq": trade.agg_id,
            "quantity": trade.quantity,
            "first_trade_id": trade.first_id,
            "last_trade_id": trade.last_id,
        }
        for trade in trades
        if not trade.is_placeholder
    ]


def grow(binance: FakeBinance, by: int) -> None:
    """Wait until every tape has `by` more trades (its walk appending)."""
    goal = {symbol: len(binance.trades(symbol)) + by for symbol in TRADE_SYMBOLS}
    wait_until(
        lambda: all(len(binance.trades(s)) >= goal[s] for s in TRADE_SYMBOLS), 30, f"{by} trades"
    )


def tape_sizes(binance: FakeBinance) -> dict[str, int]:
    """How many trades each tape holds (rates stopped), placeholders left out."""
    return {s: len(expected(binance.trades(s), s)) for s in binance.tape_symbols()}


def cut_twice_then_announce_a_shutdown(
    binance: FakeBinance, producer: Script, between: int
) -> None:
    """Trades `between` each step: two cut connections, each reconnected by `producer` (the
    trade source), then a serverShutdown notice, its connection replaced before it closes,
    and trades past that close."""
    for connects in (2, 3):
        grow(binance, between)
        binance.cut_streams()
        producer.wait_for_output("Connected to Binance's trade streams", count=connects)
    grow(binance, between)
    assert binance.send_shutdown_notice(close_after=1) == 1
    producer.wait_for_output("announced a server shutdown")
    grow(binance, 40)  # past the old connection's close
