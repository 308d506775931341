"""The whole trade path with the real scripts: `producer.py --source binance-trades` following
the fake Binance's trade streams (cut twice, a shutdown notice), a ticker poller beside it for
the same pairs, `consumer.py` writing the windows. Every window of trades must equal the candle
the fake's REST klines computes from the same tape by Binance's rules: open, high, low, close,
volume, quote volume and trade count, also for trades sharing a millisecond, whatever order
they travelled in."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import requests

from btcpipe.clock import wall_clock_ms
from tests.harness import FakeBinance, PostgresServer, TansuBroker
from tests.harness.market_data import KLINES_PATH
from tests.harness.scripts import Script, run_script
from tests.pipeline import consumer_env, query, start_consumer
from tests.producer_runs import (
    TRADE_SYMBOLS,
    cut_twice_then_announce_a_shutdown,
    grow,
    producer_args,
    stop_cleanly,
    tape_sizes,
    trade_args,
)

WINDOW_MS = 300_000


def exchange_candles(binance: FakeBinance, symbol: str) -> dict[int, tuple]:
    """The 5m klines the fake's REST answers, by open time, for intervals with trades."""
    answer = requests.get(
        binance.base_url + KLINES_PATH,
        params={"symbol": symbol, "interval": "5m", "limit": "1000"},
        timeout=10,
    )
    answer.raise_for_status()
    return {
        row[0]: (
            Decimal(row[1]),
            Decimal(row[2]),
            Decimal(row[3]),
            Decimal(row[4]),
            Decimal(row[5]),
            Decimal(row[7]),
            row[8],
        )
        for row in answer.json()
        if row[8] > 0
    }


def stored_candles(dsn: str, symbol: str) -> dict[int, tuple]:
    rows = query(
        dsn,
        "SELECT (extract(epoch FROM five_min_start) * 1000)::bigint, open_value, max_value, "
        "min_value, close_value, volume, quote_volume, trade_count FROM five_min_bitcoin_event "
        "WHERE feed = 'trades' AND symbol = %s",
        (symbol,),
    )
    return {row[0]: row[1:] for row in rows}


def repeats(dsn: str) -> int:
    return int(query(dsn, "SELECT coalesce(sum(duplicate_events), 0) FROM pipeline_metrics")[0][0])


def trades_stored(dsn: str) -> int:
    rows = query(
        dsn,
        "SELECT coalesce(sum(event_count), 0) FROM five_min_bitcoin_event WHERE feed = 'trades'",
    )
    return int(rows[0][0])


def stop_the_tapes_and_wait_for_every_trade(
    binance: FakeBinance, consumer: Script, dsn: str, timeout: float
) -> None:
    for symbol in TRADE_SYMBOLS:
        binance.set_trade_rate(symbol, 0)
    total = sum(tape_sizes(binance).values())
    consumer.wait_until(lambda: trades_stored(dsn) == total, timeout, f"{total} trades")


def test_live_trade_windows_equal_the_exchange_s_own_candles(
    broker: TansuBroker, postgres: PostgresServer, database: str, topic: str, tmp_path: Path
) -> None:
    dsn = postgres.dsn(database)
    since = wall_clock_ms() - 1000  # before the first trade: the whole tape
    with FakeBinance(prices={}) as binance:
        for symbol in TRADE_SYMBOLS:
            binance.add_trades(symbol, 1500)  # a burst: many trades share each millisecond
            binance.set_trade_rate(symbol, 20)
        args = trade_args(binance, broker.bootstrap, topic, "--since", str(since))
        poll = producer_args(binance, broker.bootstrap, topic, symbols=TRADE_SYMBOLS)
        with Script("producer", args) as producer, Script("producer", poll) as poller:
            producer.wait_for_output("follows the live stream", count=2)
            poller.wait_for_output("Produced: ")  # the ticker poll beside, the same pairs
            with start_consumer(consumer_env(broker, postgres, database, topic)) as consumer:
                cut_twice_then_announce_a_shutdown(binance, producer, 20)
                # The poller stops while trades go on, so that no window holds samples alone.
                stop_cleanly(poller)
                grow(binance, 20)
                stop_the_tapes_and_wait_for_every_trade(binance, consumer, dsn, 90)
                assert consumer.stop() == 0
            stop_cleanly(producer)
        for symbol in TRADE_SYMBOLS:
            exchange = exchange_candles(binance, symbol)
            assert exchange, symbol
            assert stored_candles(dsn, symbol) == exchange, symbol
    # The poller's samples have rows of their own, which the dashboards' candle passes over.
    feeds = query(dsn, "SELECT DISTINCT feed FROM five_min_bitcoin_event ORDER BY 1")
    assert feeds == [("samples",), ("trades",)]
    shown = query(dsn, "SELECT DISTINCT feed FROM five_min_candles")
    assert shown == [("trades",)]
    complete = query(dsn, "SELECT bool_and(complete) FROM five_min_bitcoin_event")
    assert complete == [(True,)]
    # The same trades again from a public-data file that overlaps the live run (its second
    # half and beyond its end: nothing new): counted once, the candles unchanged.
    tape = binance.trades("BTCUSDT")
    file = tmp_path / "BTCUSDT-aggTrades-2026-12-02.csv"
    file.write_text(
        "".join(
            f"{t.agg_id},{t.price},{t.quantity},{t.first_id},{t.last_id},{t.time_us},"
            f"{t.buyer_is_maker},{t.best_match}\n"
            for t in tape[len(tape) // 2 :]
        )
    )
    before = {symbol: stored_candles(dsn, symbol) for symbol in TRADE_SYMBOLS}
    replay = run_script(
        "producer",
        [
            "--source",
            "replay",
            "--bootstrap-servers",
            broker.bootstrap,
            "--topic",
            topic,
            str(file),
        ],
        timeout=60,
    )
    assert replay.returncode == 0, replay.stdout + replay.stderr
    with start_consumer(consumer_env(broker, postgres, database, topic), "c2") as again:
        again.wait_until(
            lambda: repeats(dsn) == len(tape) - len(tape) // 2, 60, "the file's rows as repeats"
        )
        assert again.stop() == 0
    assert {symbol: stored_candles(dsn, symbol) for symbol in TRADE_SYMBOLS} == before


def test_trade_candles_stay_exact_through_a_frozen_broker_and_a_stopped_and_frozen_postgres(
    postgres: PostgresServer, topic: str
) -> None:
    """Trades flowing while the broker hangs past the producer's delivery timeout (it re-sends
    what was not acknowledged, with a new session), then PostgreSQL is stopped and started,
    then hangs: every window of trades still equals the exchange's candle."""
    since = wall_clock_ms() - 1000
    with (
        TansuBroker() as broker,
        PostgresServer() as own_postgres,
        FakeBinance(prices={}) as binance,
    ):
        database = own_postgres.create_database("trade_faults")
        dsn = own_postgres.dsn(database)
        for symbol in TRADE_SYMBOLS:
            binance.add_trades(symbol, 300)
            binance.set_trade_rate(symbol, 20)
        args = trade_args(
            binance, broker.bootstrap, topic, "--since", str(since), "--delivery-timeout-ms", "4000"
        )
        with Script("producer", args) as producer:
            producer.wait_for_output("follows the live stream", count=2)
            env = consumer_env(broker, own_postgres, database, topic)
            with start_consumer(env) as consumer:
                consumer.wait_for_output("Resuming from stored offsets", timeout=60)
                consumer.wait_until(lambda: trades_stored(dsn) > 0, 60, "trades stored")
                broker.freeze()
                try:
                    producer.wait_for_output("Kafka did not acknowledge in time", timeout=40)
                finally:
                    broker.thaw()
                producer.wait_for_output("again, in order", timeout=40)
                grow(binance, 40)
                own_postgres.stop()
                consumer.wait_for_output("PostgreSQL unavailable", timeout=30)
                own_postgres.start()
                consumer.wait_for_output("PostgreSQL is back", timeout=60)
                own_postgres.freeze()
                try:
                    consumer.wait_for_output("did not answer within", timeout=40)
                finally:
                    own_postgres.thaw()
                grow(binance, 40)
                stop_the_tapes_and_wait_for_every_trade(binance, consumer, dsn, 120)
                assert consumer.stop() == 0
            stop_cleanly(producer)
        for symbol in TRADE_SYMBOLS:
            assert stored_candles(dsn, symbol) == exchange_candles(binance, symbol), symbol
        assert query(dsn, "SELECT bool_and(complete) FROM five_min_bitcoin_event") == [(True,)]
