"""The producer's pure parts: schedule, backoff, request parameters, contract, config, sources,
and the polling loop driven by a simulated clock (no network, no sleeping)."""

from __future__ import annotations

import itertools
import json
import logging
import random
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import pytest
from kafka.errors import KafkaTimeoutError
from kafka.future import Future
from kafka.partitioner import DefaultPartitioner

from pricefeed.app import report_failure, retry_delay, run_polling
from pricefeed.binance import (
    ALL_SYMBOLS,
    InvalidResponse,
    RateLimited,
    Rejected,
    Restricted,
    Unavailable,
    parse_ticker_prices,
    ticker_price_params,
)
from pricefeed.config import ConfigError, Settings, load_settings
from pricefeed.shared.backoff import Backoff
from pricefeed.shared.contract import PriceEvent, check_price, make_event
from pricefeed.sink import KafkaSink, KeyPartitionCache
from pricefeed.sources import Sequencer, SimulatedSource, events_from_pairs, new_run_id
from pricefeed.timing import FixedRateSchedule
from tests.harness.fake_binance import SYMBOLS_PATTERN

EIGHT_DECIMALS = re.compile(r"[0-9]+\.[0-9]{8}")
FIFTY_SYMBOLS = [f"C{i:02d}USDT" for i in range(50)]


class Lowest(random.Random):
    """An rng whose uniform() always picks the lower bound."""

    def uniform(self, a: float, b: float) -> float:
        return a


class Highest(random.Random):
    """An rng whose uniform() always picks the upper bound."""

    def uniform(self, a: float, b: float) -> float:
        return b


# --- FixedRateSchedule -----------------------------------------------------------------------


def test_schedule_first_tick_is_at_start() -> None:
    schedule = FixedRateSchedule(start=100.0, interval=2.0)
    assert schedule.next_tick(100.0) == (0, 100.0)


def test_schedule_keeps_the_grid_over_many_ticks_whatever_each_tick_costs() -> None:
    start, interval = 1234.567, 0.1
    schedule = FixedRateSchedule(start, interval)
    costs = random.Random(1)
    tick, due = schedule.next_tick(start)
    for expected in range(1, 10_001):
        finished = due + costs.uniform(0, 0.9 * interval)  # any cost below one interval
        tick, due = schedule.next_tick(finished)
        assert tick == expected
        assert due == pytest.approx(start + expected * interval, abs=1e-9)


def test_schedule_skips_ticks_a_slow_request_missed_instead_of_bursting() -> None:
    start, interval = 50.0, 1.0
    schedule = FixedRateSchedule(start, interval)
    assert schedule.next_tick(start) == (0, 50.0)
    # Tick 0 took 2.5 intervals: ticks 1 and 2 are gone, tick 3 is the first still ahead.
    assert schedule.next_tick(52.5) == (3, 53.0)
    assert schedule.next_tick(53.2) == (4, 54.0)
    # A request that took 10.7 intervals: back on the grid, not 10 ticks in a row.
    assert schedule.next_tick(64.7) == (15, 65.0)


def test_schedule_never_gives_the_same_tick_twice() -> None:
    schedule = FixedRateSchedule(start=0.0, interval=1.0)
    ticks = [schedule.next_tick(0.0)[0] for _ in range(5)]
    assert ticks == [0, 1, 2, 3, 4]


def test_schedule_waiting_past_a_retry_delay_lands_on_the_next_grid_point() -> None:
    schedule = FixedRateSchedule(start=10.0, interval=0.5)
    schedule.next_tick(10.0)
    assert schedule.next_tick(10.0 + 2.2) == (5, 12.5)


def test_schedule_jitter_stays_within_bounds_and_does_not_accumulate() -> None:
    start, interval, jitter = 0.0, 1.0, 0.25
    schedule = FixedRateSchedule(start, interval, jitter, random.Random(3))
    offsets = []
    now = start
    for expected in range(2_000):
        tick, due = schedule.next_tick(now)
        assert tick == expected
        offset = due - schedule.due_at(tick)
        assert 0.0 <= offset <= jitter
        offsets.append(offset)
        now = due + 0.01
    assert max(offsets) - min(offsets) > jitter / 2  # jitter is really applied
    assert schedule.due_at(1_999) == start + 1_999 * interval


def test_schedule_jitter_extremes() -> None:
    low = FixedRateSchedule(0.0, 1.0, 0.3, Lowest())
    high = FixedRateSchedule(0.0, 1.0, 0.3, Highest())
    assert low.next_tick(0.0) == (0, 0.0)
    assert high.next_tick(0.0) == (0, pytest.approx(0.3))


# --- Backoff ---------------------------------------------------------------------------------


def test_backoff_grows_exponentially_within_half_to_full_ceiling() -> None:
    backoff = Backoff(base=0.5, cap=1_000.0, rng=random.Random(5))
    for attempt in range(10):
        ceiling = 0.5 * 2**attempt
        assert ceiling / 2 <= backoff.next_delay() <= ceiling


def test_backoff_extremes_are_exactly_half_and_full_ceiling() -> None:
    low, high = Backoff(1.0, 60.0, Lowest()), Backoff(1.0, 60.0, Highest())
    assert [low.next_delay() for _ in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert [high.next_delay() for _ in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]


def test_backoff_is_capped_even_after_very_many_attempts() -> None:
    backoff = Backoff(base=1.0, cap=60.0, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(200)]
    assert all(30.0 <= delay <= 60.0 for delay in delays[6:])


def test_backoff_reset_starts_again_from_base() -> None:
    backoff = Backoff(base=2.0, cap=100.0, rng=Highest())
    for _ in range(5):
        backoff.next_delay()
    assert backoff.next_delay() == 64.0
    backoff.reset()
    assert backoff.attempts == 0
    assert backoff.next_delay() == 2.0


def test_backoff_is_jittered() -> None:
    first_delays = {Backoff(1.0, 60.0, random.Random(seed)).next_delay() for seed in range(50)}
    assert len(first_delays) > 40
    assert all(0.5 <= delay <= 1.0 for delay in first_delays)


# --- the Binance request and response ---------------------------------------------------------


def test_one_symbol_uses_the_symbol_parameter() -> None:
    assert ticker_price_params(["BTCUSDT"]) == {"symbol": "BTCUSDT"}


def test_several_symbols_are_one_compact_json_symbols_parameter() -> None:
    params = ticker_price_params(["BTCUSDT", "ETHUSDT"])
    assert params == {"symbols": '["BTCUSDT","ETHUSDT"]'}


def test_fifty_symbols_stay_one_parameter_binance_accepts() -> None:
    params = ticker_price_params(FIFTY_SYMBOLS)
    assert list(params) == ["symbols"]
    assert json.loads(params["symbols"]) == FIFTY_SYMBOLS
    assert " " not in params["symbols"]
    assert re.fullmatch(SYMBOLS_PATTERN, params["symbols"])


def test_all_symbols_is_the_request_without_parameters() -> None:
    assert ticker_price_params(ALL_SYMBOLS) == {}


def test_symbols_all_in_any_case_means_every_pair_binance_lists() -> None:
    assert load_settings([OFFLINE], env={"SYMBOLS": "all"}).symbols == ALL_SYMBOLS
    assert load_settings([OFFLINE, "--symbols", "ALL"]).symbols == ALL_SYMBOLS


@pytest.mark.parametrize(
    "args", [["--symbols", "ALL,BTCUSDT"], ["--symbols", "ALL", "--source", "simulated"]]
)
def test_symbols_all_stands_alone_with_binance(args: list[str]) -> None:
    with pytest.raises(ConfigError, match="SYMBOLS=ALL"):
        load_settings([OFFLINE, *args])


def test_events_from_pairs_with_all_symbols_takes_every_valid_pair(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pairs = [(f"C{i}USDT", f"{i + 1}.5") for i in range(3000)] + [("BADUSDT", "-1")]
    sequencer = Sequencer("binance", run_id="r")
    events = events_from_pairs(pairs, ALL_SYMBOLS, 1_767_225_600_000, sequencer)
    assert [(e.symbol, e.price) for e in events] == pairs[:-1]
    assert {(e.stream, e.seq) for e in events[:2]} == {
        ("binance/C0USDT/r", 1),
        ("binance/C1USDT/r", 1),
    }
    assert "Skipped invalid price for BADUSDT" in caplog.text
    assert "not asked for" not in caplog.text and "no price for" not in caplog.text


def test_parse_one_object_and_a_list() -> None:
    one = {"symbol": "BTCUSDT", "price": "43250.75000000"}
    two = [one, {"symbol": "ETHUSDT", "price": "2300.10000000"}]
    assert parse_ticker_prices(one) == [("BTCUSDT", "43250.75000000")]
    assert parse_ticker_prices(two) == [
        ("BTCUSDT", "43250.75000000"),
        ("ETHUSDT", "2300.10000000"),
    ]
    assert parse_ticker_prices([]) == []


def test_parse_keeps_bad_prices_for_the_contract_to_judge() -> None:
    payload = [{"symbol": "BTCUSDT", "price": 5.0}, {"symbol": "ETHUSDT"}]
    assert parse_ticker_prices(payload) == [("BTCUSDT", 5.0), ("ETHUSDT", None)]


@pytest.mark.parametrize(
    "payload",
    [
        None,
        "BTCUSDT",
        {"code": -1121, "msg": "Invalid symbol."},
        [{"price": "1.0"}],
        [{"symbol": "BTCUSDT", "price": "1.0"}, 42],
        [{"symbol": ["BTCUSDT"], "price": "1.0"}],
        [{"symbol": None, "price": "1.0"}],
    ],
    ids=[
        "null",
        "string",
        "error-body",
        "no-symbol",
        "not-an-object",
        "list-symbol",
        "null-symbol",
    ],
)
def test_parse_rejects_bodies_that_are_not_ticker_prices(payload: object) -> None:
    with pytest.raises(InvalidResponse):
        parse_ticker_prices(payload)


# --- the message contract --------------------------------------------------------------------


RUN = "binance/BTCUSDT/20260101T000000Z-1a2b3c4d"
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z: a valid event time


def test_make_event_and_its_json() -> None:
    event = make_event("BTCUSDT", "43250.75000000", 1_767_225_600_039, "binance", RUN, 3)
    assert event == PriceEvent("BTCUSDT", "43250.75000000", 1_767_225_600_039, "binance", RUN, 3)
    assert event.key() == b"BTCUSDT"
    assert json.loads(event.to_json_bytes()) == {
        "symbol": "BTCUSDT",
        "price": "43250.75000000",
        "event_time": 1_767_225_600_039,
        "source": "binance",
        "stream": RUN,
        "seq": 3,
    }
    assert b'"price":"43250.75000000"' in event.to_json_bytes()  # a string, never a float


def test_events_from_pairs_skips_only_the_bad_symbol(caplog: pytest.LogCaptureFixture) -> None:
    pairs = [("BTCUSDT", "43250.75000000"), ("ETHUSDT", "NaN"), ("XRPUSDT", "0.5")]
    sequencer = Sequencer("binance", run_id="run-1")
    with caplog.at_level(logging.WARNING, logger="producer"):
        events = events_from_pairs(pairs, ["BTCUSDT", "ETHUSDT", "SOLUSDT"], T0, sequencer)
    stream = "binance/BTCUSDT/run-1"
    assert events == [PriceEvent("BTCUSDT", "43250.75000000", T0, "binance", stream, 1)]
    assert "Skipped invalid price for ETHUSDT" in caplog.text
    assert "'XRPUSDT', which was not asked for" in caplog.text
    assert "no price for SOLUSDT" in caplog.text


def test_live_identity_numbers_each_symbol_from_1_and_skips_no_number() -> None:
    """Every event made is sent in that order, so seq follows the order of the stream; an
    invalid price uses no number (no gap a reader could mistake for a loss)."""
    sequencer = Sequencer("binance", run_id="r")
    made = [
        events_from_pairs(
            [("BTCUSDT", "1.5"), ("ETHUSDT", "2")], ["BTCUSDT", "ETHUSDT"], T0, sequencer
        ),
        events_from_pairs(
            [("BTCUSDT", "-1"), ("ETHUSDT", "3")], ["BTCUSDT", "ETHUSDT"], T0, sequencer
        ),
        events_from_pairs(
            [("BTCUSDT", "1.6"), ("ETHUSDT", "4")], ["BTCUSDT", "ETHUSDT"], T0, sequencer
        ),
    ]
    identities = [(e.stream, e.seq) for events in made for e in events]
    assert identities == [
        ("binance/BTCUSDT/r", 1),
        ("binance/ETHUSDT/r", 1),
        ("binance/ETHUSDT/r", 2),
        ("binance/BTCUSDT/r", 2),
        ("binance/ETHUSDT/r", 3),
    ]


def test_a_producer_restart_starts_new_streams() -> None:
    runs = {new_run_id() for _ in range(100)}
    assert len(runs) == 100  # the same second, still 100 different runs
    one, other = SimulatedSource(["BTCUSDT"], 1), SimulatedSource(["BTCUSDT"], 1)
    first, second = one.poll()[0], other.poll()[0]
    assert first.price == second.price and first.seq == second.seq == 1
    assert first.stream != second.stream
    assert first.stream.startswith("simulated/BTCUSDT/")


# --- configuration ---------------------------------------------------------------------------

OFFLINE = "--no-check-hosts"


def test_defaults() -> None:
    settings = load_settings([OFFLINE], env={})
    assert settings == Settings()
    assert settings.topic == "btc_price"
    assert settings.topic_partitions == 3
    assert settings.symbols == ("BTCUSDT",)
    assert settings.source == "binance"


# (flag, environment variable, env value, flag value, field, value from env, value from flag)
PRECEDENCE = [
    ("--source", "PRODUCER_SOURCE", "simulated", "binance", "source", "simulated", "binance"),
    (
        "--bootstrap-servers",
        "KAFKA_BOOTSTRAP_SERVERS",
        "a:1",
        "b:2",
        "bootstrap_servers",
        "a:1",
        "b:2",
    ),
    ("--topic", "KAFKA_TOPIC", "from_env", "from_flag", "topic", "from_env", "from_flag"),
    ("--partitions", "KAFKA_TOPIC_PARTITIONS", "5", "7", "topic_partitions", 5, 7),
    (
        "--symbols",
        "SYMBOLS",
        "ethusdt, btcusdt",
        "SOLUSDT",
        "symbols",
        ("ETHUSDT", "BTCUSDT"),
        ("SOLUSDT",),
    ),
    ("--interval", "POLL_INTERVAL_SECONDS", "2.5", "0.5", "poll_interval", 2.5, 0.5),
    ("--jitter", "POLL_JITTER_SECONDS", "0.2", "0.1", "poll_jitter", 0.2, 0.1),
    (
        "--binance-url",
        "BINANCE_BASE_URL",
        "http://e.test",
        "http://f.test",
        "binance_base_url",
        "http://e.test",
        "http://f.test",
    ),
    ("--timeout", "HTTP_TIMEOUT_SECONDS", "3", "4", "http_timeout", 3.0, 4.0),
    ("--backoff-base", "BACKOFF_BASE_SECONDS", "0.3", "0.4", "backoff_base", 0.3, 0.4),
    ("--backoff-max", "BACKOFF_MAX_SECONDS", "9", "8", "backoff_max", 9.0, 8.0),
    ("--seed", "SIMULATION_SEED", "11", "12", "seed", 11, 12),
    (
        "--delivery-timeout-ms",
        "KAFKA_DELIVERY_TIMEOUT_MS",
        "5000",
        "6000",
        "delivery_timeout_ms",
        5000,
        6000,
    ),
    (
        "--replay-state-dir",
        "REPLAY_STATE_DIR",
        "/tmp/a",
        "~/b",
        "replay_state_dir",
        Path("/tmp/a"),
        Path("~/b").expanduser(),
    ),
    ("--log-level", "LOG_LEVEL", "DEBUG", "WARNING", "log_level", "DEBUG", "WARNING"),
]


@pytest.mark.parametrize(
    ("flag", "var", "env_value", "flag_value", "field", "from_env", "from_flag"),
    PRECEDENCE,
    ids=[row[1] for row in PRECEDENCE],
)
def test_flag_overrides_its_environment_variable(
    flag: str,
    var: str,
    env_value: str,
    flag_value: str,
    field: str,
    from_env: object,
    from_flag: object,
) -> None:
    default = getattr(Settings(), field)
    assert from_env != default and from_flag != from_env  # each case really changes something
    assert getattr(load_settings([OFFLINE], env={var: env_value}), field) == from_env
    flagged = load_settings([OFFLINE, flag, flag_value], env={var: env_value})
    assert getattr(flagged, field) == from_flag
    assert getattr(load_settings([OFFLINE, flag, flag_value], env={}), field) == from_flag


def test_replay_settings_override_their_environment_variables() -> None:
    replay = [OFFLINE, "--source", "replay", "prices.csv"]
    env = {"REPLAY_SPEED": "60", "REPLAY_SYMBOL": "ethusdt"}
    settings = load_settings(replay, env=env)
    assert (settings.replay_speed, settings.replay_symbol) == (60.0, "ETHUSDT")
    flagged = load_settings([*replay, "--speed", "max", "--replay-symbol", "SOLUSDT"], env=env)
    assert (flagged.replay_speed, flagged.replay_symbol) == (None, "SOLUSDT")
    assert load_settings(replay, env={}).replay_symbol is None  # default: from the file name


def test_every_setting_has_a_precedence_case() -> None:
    covered = {row[4] for row in PRECEDENCE} | {
        "replay_speed",
        "replay_symbol",
        "replay_files",
        "resume",
    }
    assert covered == {f.name for f in fields(Settings)}


def test_empty_environment_variable_means_default() -> None:
    settings = load_settings([OFFLINE], env={"SYMBOLS": "", "KAFKA_TOPIC": ""})
    assert settings.symbols == ("BTCUSDT",)
    assert settings.topic == "btc_price"


SECONDS = "a finite number of seconds greater than 0 and at most 86400"
# (environment, the variable the message must name, what the message must say is allowed)
BAD_VALUES = [
    ({"PRODUCER_SOURCE": "websocket"}, "PRODUCER_SOURCE", "binance, simulated or replay"),
    ({"KAFKA_BOOTSTRAP_SERVERS": "localhost"}, "KAFKA_BOOTSTRAP_SERVERS", "host:port"),
    ({"KAFKA_BOOTSTRAP_SERVERS": "localhost:abc"}, "KAFKA_BOOTSTRAP_SERVERS", "host:port"),
    ({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:99999"}, "KAFKA_BOOTSTRAP_SERVERS", "port 1-65535"),
    ({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:0"}, "KAFKA_BOOTSTRAP_SERVERS", "port 1-65535"),
    ({"KAFKA_BOOTSTRAP_SERVERS": "a:1,"}, "KAFKA_BOOTSTRAP_SERVERS", "host:port"),
    ({"KAFKA_BOOTSTRAP_SERVERS": "a:1,:2"}, "KAFKA_BOOTSTRAP_SERVERS", "host:port"),
    ({"KAFKA_BOOTSTRAP_SERVERS": "kafka://a:1"}, "KAFKA_BOOTSTRAP_SERVERS", "host:port"),
    ({"KAFKA_BOOTSTRAP_SERVERS": "a b:1"}, "KAFKA_BOOTSTRAP_SERVERS", "host:port"),
    ({"KAFKA_TOPIC": "bad topic!"}, "KAFKA_TOPIC", "a-z A-Z 0-9 . _ -"),
    ({"KAFKA_TOPIC": "prices/btc"}, "KAFKA_TOPIC", "a-z A-Z 0-9 . _ -"),
    ({"KAFKA_TOPIC": "t" * 250}, "KAFKA_TOPIC", "1-249"),
    ({"KAFKA_TOPIC": "."}, "KAFKA_TOPIC", "not . or .."),
    ({"KAFKA_TOPIC": ".."}, "KAFKA_TOPIC", "not . or .."),
    ({"KAFKA_TOPIC": "prix_é"}, "KAFKA_TOPIC", "a-z A-Z 0-9 . _ -"),
    ({"KAFKA_TOPIC_PARTITIONS": "0"}, "KAFKA_TOPIC_PARTITIONS", "whole number from 1"),
    ({"KAFKA_TOPIC_PARTITIONS": "-3"}, "KAFKA_TOPIC_PARTITIONS", "whole number from 1"),
    ({"KAFKA_TOPIC_PARTITIONS": "three"}, "KAFKA_TOPIC_PARTITIONS", "whole number from 1"),
    ({"KAFKA_TOPIC_PARTITIONS": "2.5"}, "KAFKA_TOPIC_PARTITIONS", "whole number from 1"),
    ({"KAFKA_TOPIC_PARTITIONS": "2147483648"}, "KAFKA_TOPIC_PARTITIONS", "2,147,483,647"),
    ({"SYMBOLS": "BTC/USDT"}, "SYMBOLS", "Binance symbols like BTCUSDT"),
    ({"SYMBOLS": "BTCUSDT,ETH USDT"}, "SYMBOLS", "Binance symbols like BTCUSDT"),
    ({"SYMBOLS": "A" * 21}, "SYMBOLS", "1-20"),
    ({"SYMBOLS": " , "}, "SYMBOLS", "Binance symbols like BTCUSDT"),
    ({"SYMBOLS": "BTCUSDT,"}, "SYMBOLS", "Binance symbols like BTCUSDT"),
    ({"SYMBOLS": "BTCUSDT,btcusdt"}, "SYMBOLS", "distinct"),
    ({"POLL_INTERVAL_SECONDS": "0"}, "POLL_INTERVAL_SECONDS", SECONDS),
    ({"POLL_INTERVAL_SECONDS": "-1"}, "POLL_INTERVAL_SECONDS", SECONDS),
    ({"POLL_INTERVAL_SECONDS": "nan"}, "POLL_INTERVAL_SECONDS", SECONDS),
    ({"POLL_INTERVAL_SECONDS": "inf"}, "POLL_INTERVAL_SECONDS", SECONDS),
    ({"POLL_INTERVAL_SECONDS": "86401"}, "POLL_INTERVAL_SECONDS", SECONDS),
    ({"POLL_INTERVAL_SECONDS": "soon"}, "POLL_INTERVAL_SECONDS", SECONDS),
    ({"POLL_JITTER_SECONDS": "-0.5"}, "POLL_JITTER_SECONDS", "from 0 to 86400"),
    ({"POLL_JITTER_SECONDS": "inf"}, "POLL_JITTER_SECONDS", "from 0 to 86400"),
    ({"POLL_JITTER_SECONDS": "10"}, "POLL_JITTER_SECONDS", "below POLL_INTERVAL_SECONDS (10)"),
    ({"BINANCE_BASE_URL": "api.binance.com"}, "BINANCE_BASE_URL", "http(s) URL"),
    ({"BINANCE_BASE_URL": "ftp://api.binance.com"}, "BINANCE_BASE_URL", "http(s) URL"),
    ({"BINANCE_BASE_URL": "http://127.0.0.1:99999"}, "BINANCE_BASE_URL", "port 1-65535"),
    ({"BINANCE_BASE_URL": "http://127.0.0.1:0"}, "BINANCE_BASE_URL", "port 1-65535"),
    ({"HTTP_TIMEOUT_SECONDS": "0"}, "HTTP_TIMEOUT_SECONDS", SECONDS),
    ({"HTTP_TIMEOUT_SECONDS": "inf"}, "HTTP_TIMEOUT_SECONDS", SECONDS),
    ({"BACKOFF_BASE_SECONDS": "0"}, "BACKOFF_BASE_SECONDS", SECONDS),
    ({"BACKOFF_BASE_SECONDS": "nan"}, "BACKOFF_BASE_SECONDS", SECONDS),
    ({"BACKOFF_MAX_SECONDS": "inf"}, "BACKOFF_MAX_SECONDS", SECONDS),
    (
        {"BACKOFF_BASE_SECONDS": "5", "BACKOFF_MAX_SECONDS": "2"},
        "BACKOFF_MAX_SECONDS",
        "must not be below BACKOFF_BASE_SECONDS (5)",
    ),
    ({"KAFKA_DELIVERY_TIMEOUT_MS": "999"}, "KAFKA_DELIVERY_TIMEOUT_MS", "from 1000 to"),
    (
        {"KAFKA_DELIVERY_TIMEOUT_MS": "soon"},
        "KAFKA_DELIVERY_TIMEOUT_MS",
        "whole number of milliseconds",
    ),
    ({"KAFKA_DELIVERY_TIMEOUT_MS": "2147483648"}, "KAFKA_DELIVERY_TIMEOUT_MS", "2,147,483,647"),
    ({"SIMULATION_SEED": "lucky"}, "SIMULATION_SEED", "a whole number"),
    ({"REPLAY_SPEED": "0"}, "REPLAY_SPEED", "max, or a finite number greater than 0"),
    ({"REPLAY_SPEED": "inf"}, "REPLAY_SPEED", "max, or a finite number greater than 0"),
    ({"REPLAY_SPEED": "fast"}, "REPLAY_SPEED", "max, or a finite number greater than 0"),
    ({"REPLAY_SYMBOL": "BTC/USDT"}, "REPLAY_SYMBOL", "a Binance symbol like BTCUSDT"),
    ({"REPLAY_SYMBOL": "BTCUSDT"}, "REPLAY_SYMBOL", "only used with --source replay"),
    ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR"),
]


def assert_one_sentence(message: str) -> None:
    assert "\n" not in message
    assert message[0].isupper() or message[0] in "-'", message
    assert message.endswith("."), message
    assert "Traceback" not in message


@pytest.mark.parametrize(
    ("env", "var", "allowed"), BAD_VALUES, ids=[str(env)[:60] for env, _, _ in BAD_VALUES]
)
def test_bad_value_is_one_sentence_naming_the_setting_and_what_it_allows(
    env: dict[str, str], var: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings([OFFLINE], env=env)
    message = str(error.value)
    assert message.startswith(var), message
    assert allowed in message, message
    assert_one_sentence(message)


def test_a_bad_value_is_quoted_back_with_the_flag_and_the_rule() -> None:
    with pytest.raises(ConfigError) as error:
        load_settings([OFFLINE], env={"POLL_INTERVAL_SECONDS": "inf"})
    assert str(error.value) == (
        "POLL_INTERVAL_SECONDS (--interval) must be a finite number of seconds greater than 0 "
        "and at most 86400, not 'inf'."
    )


# The edges of every range are accepted: the rules refuse no value that works.
ACCEPTED = [
    ({"PRODUCER_SOURCE": " Simulated "}, "source", "simulated"),
    ({"KAFKA_BOOTSTRAP_SERVERS": "a:1, b.example:65535"}, "bootstrap_servers", None),
    ({"KAFKA_BOOTSTRAP_SERVERS": "[::1]:9092,10.0.0.1:9092"}, "bootstrap_servers", None),
    ({"KAFKA_TOPIC": "t" * 249}, "topic", None),
    ({"KAFKA_TOPIC": "a.b_c-D9"}, "topic", None),
    ({"KAFKA_TOPIC": "..."}, "topic", None),
    ({"KAFKA_TOPIC_PARTITIONS": "1"}, "topic_partitions", 1),
    ({"SYMBOLS": "btcusdt, eth-usdt"}, "symbols", ("BTCUSDT", "ETH-USDT")),
    ({"POLL_INTERVAL_SECONDS": "0.001"}, "poll_interval", 0.001),
    ({"POLL_INTERVAL_SECONDS": "86400"}, "poll_interval", 86400.0),
    ({"POLL_JITTER_SECONDS": "0"}, "poll_jitter", 0.0),
    ({"POLL_JITTER_SECONDS": "9.999"}, "poll_jitter", 9.999),
    ({"BINANCE_BASE_URL": "http://127.0.0.1:65535"}, "binance_base_url", None),
    ({"BACKOFF_BASE_SECONDS": "60"}, "backoff_base", 60.0),  # equal to the maximum
    ({"KAFKA_DELIVERY_TIMEOUT_MS": "1000"}, "delivery_timeout_ms", 1000),
    ({"SIMULATION_SEED": "-7"}, "seed", -7),
    ({"LOG_LEVEL": "debug"}, "log_level", "DEBUG"),
]


@pytest.mark.parametrize(
    ("env", "field", "expected"), ACCEPTED, ids=[str(env)[:60] for env, _, _ in ACCEPTED]
)
def test_values_at_the_edge_of_each_rule_are_accepted(
    env: dict[str, str], field: str, expected: object
) -> None:
    value = getattr(load_settings([OFFLINE], env=env), field)
    assert value == (next(iter(env.values())) if expected is None else expected)


def test_bad_flag_value_is_a_config_error_too() -> None:
    with pytest.raises(ConfigError, match="POLL_INTERVAL_SECONDS"):
        load_settings([OFFLINE, "--interval", "0"], env={"POLL_INTERVAL_SECONDS": "5"})


def test_files_need_replay_and_replay_needs_files() -> None:
    with pytest.raises(ConfigError, match="replay"):
        load_settings([OFFLINE, "prices.csv"], env={})
    with pytest.raises(ConfigError, match="replay"):
        load_settings([OFFLINE, "--source", "replay"], env={})


@pytest.mark.parametrize(
    ("env", "var"),
    [
        ({"BINANCE_BASE_URL": "https://nothing.invalid"}, "BINANCE_BASE_URL"),
        (
            {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092,nothing.invalid:9092"},
            "KAFKA_BOOTSTRAP_SERVERS",
        ),
    ],
)
def test_unresolvable_host_stops_at_start(env: dict[str, str], var: str) -> None:
    base = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092", "BINANCE_BASE_URL": "http://127.0.0.1"}
    with pytest.raises(ConfigError) as error:
        load_settings([], env={**base, **env})
    assert var in str(error.value)
    assert "'nothing.invalid'" in str(error.value)
    assert_one_sentence(str(error.value))
    # The same settings are accepted when the check is turned off: DNS was the only problem.
    load_settings([OFFLINE], env={**base, **env})


def test_resolvable_hosts_pass_and_simulated_source_ignores_the_binance_host() -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "localhost:9092", "BINANCE_BASE_URL": "http://127.0.0.1:1"}
    assert load_settings([], env=env).bootstrap_servers == "localhost:9092"
    simulated = {**env, "BINANCE_BASE_URL": "https://nothing.invalid"}
    assert load_settings(["--source", "simulated"], env=simulated).source == "simulated"


# --- the simulated source --------------------------------------------------------------------


def simulated_prices(seed: int, ticks: int, symbols: Sequence[str]) -> list[list[str]]:
    source = SimulatedSource(symbols, seed, clock=lambda: 1_767_225_600_000)
    return [[event.price for event in source.poll()] for _ in range(ticks)]


def test_simulated_source_is_deterministic_for_a_seed() -> None:
    symbols = ["BTCUSDT", "ETHUSDT", "DOGEUSDT"]
    assert simulated_prices(42, 200, symbols) == simulated_prices(42, 200, symbols)
    assert simulated_prices(42, 200, symbols) != simulated_prices(43, 200, symbols)


def test_simulated_source_prices_are_positive_eight_decimal_contract_events() -> None:
    times = iter(range(T0, T0 + 10_000))
    source = SimulatedSource(["BTCUSDT", "ETHUSDT", "DOGEUSDT"], 9, clock=lambda: next(times))
    btc = []
    for tick in range(500):
        events = source.poll()
        assert [e.symbol for e in events] == ["BTCUSDT", "ETHUSDT", "DOGEUSDT"]
        assert {e.event_time for e in events} == {T0 + tick}  # one time per tick
        for event in events:
            assert event.source == "simulated"
            assert EIGHT_DECIMALS.fullmatch(event.price), event.price
            assert check_price(event.price) == event.price
        btc.append(float(events[0].price))
    assert min(btc) > 30_000 and max(btc) < 60_000  # a walk near the start price
    assert len(set(btc)) > 400  # that really moves


# --- the polling loop, on a simulated clock --------------------------------------------------


@dataclass
class Step:
    """One poll: how long it takes (simulated seconds) and what it raises, if anything."""

    cost: float = 0.0
    error: Exception | None = None


class LoopRig:
    """Clock, stop event, source and sink for run_polling: waiting advances the simulated
    clock, and the loop is stopped once every scripted step has been polled. Like a real clock,
    every reading is a little later than the one before (1 µs)."""

    def __init__(self, steps: Sequence[Step], start: float = 1_000.0) -> None:
        self.now = start
        self.start = start
        self._steps = list(steps)
        self.poll_times: list[float] = []
        self.published: list[list[PriceEvent]] = []

    def clock(self) -> float:
        self.now += 1e-6
        return self.now

    def wait(self, timeout: float) -> bool:
        assert timeout >= 0
        self.now += timeout
        return not self._steps

    def poll(self) -> list[PriceEvent]:
        self.poll_times.append(self.now)
        step = self._steps.pop(0)
        self.now += step.cost
        if step.error is not None:
            raise step.error
        return [make_event("BTCUSDT", "43250.75000000", T0, "binance", RUN, len(self.poll_times))]

    def publish(self, events: list[PriceEvent]) -> None:
        self.published.append(list(events))

    def tend(self) -> None:
        """The sink's upkeep between polls: nothing to do here."""

    def offsets(self) -> list[float]:
        """Poll times since the start, to the millisecond."""
        return [round(t - self.start, 3) for t in self.poll_times]


def run_loop(steps: Sequence[Step], **settings: float) -> LoopRig:
    rig = LoopRig(steps)
    config = Settings(
        **{"poll_interval": 1.0, "backoff_base": 1.0, "backoff_max": 60.0, **settings}
    )
    run_polling(rig, rig, config, rig, clock=rig.clock)  # type: ignore[arg-type]
    return rig


def test_loop_polls_at_once_then_on_the_grid() -> None:
    rig = run_loop([Step(cost=0.05)] * 10)
    assert rig.offsets() == list(range(10))
    assert len(rig.published) == 10


def test_loop_stays_on_the_grid_after_slow_polls_and_skips_missed_ticks() -> None:
    steps = [Step(), Step(cost=0.9), Step(), Step(cost=2.5), Step(), Step()]
    rig = run_loop(steps)
    # The 0.9 s poll still ends before tick 2; the 2.5 s poll at tick 3 misses ticks 4 and 5.
    assert rig.offsets() == [0, 1, 2, 3, 6, 7]


def test_loop_with_jitter_polls_within_jitter_after_each_grid_point() -> None:
    rig = run_loop([Step(cost=0.01)] * 200, poll_jitter=0.3)
    for tick, offset in enumerate(rig.offsets()):
        assert tick <= offset <= tick + 0.3


def test_loop_waits_for_retry_after_then_rejoins_the_grid() -> None:
    limited = RateLimited(429, 2.5, "HTTP 429: Too many requests")
    banned = RateLimited(418, 2.5, "HTTP 418: banned")
    rig = run_loop([Step(), Step(error=limited), Step(error=banned), Step(), Step()])
    # 429 at 1 s: not before 3.5 s, so 4 s; 418 at 4 s: not before 6.5 s, so 7 s.
    assert rig.offsets() == [0, 1, 4, 7, 8]


def test_loop_skips_an_invalid_body_until_the_next_tick() -> None:
    rig = run_loop([Step(), Step(error=InvalidResponse("body is not JSON")), Step()])
    assert rig.offsets() == [0, 1, 2]
    assert len(rig.published) == 2


def test_loop_backs_off_exponentially_then_resets() -> None:
    down = Unavailable("HTTP 503: overloaded")
    steps = [Step(error=down)] * 5 + [Step()] * 3 + [Step(error=down), Step()]
    rig = run_loop(steps, poll_interval=0.25)
    times = rig.offsets()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    for attempt in range(5):  # delay in [2**n / 2, 2**n], rounded up to the 0.25 s grid
        assert 2**attempt / 2 <= gaps[attempt] <= 2**attempt + 0.25
    assert gaps[5:8] == [0.25, 0.25, 0.25]  # healthy again: every tick
    assert 0.5 <= gaps[8] <= 1.25  # the next failure starts from the base delay again
    assert all((t * 4).is_integer() for t in times)  # every poll on the grid


def test_retry_delay_is_retry_after_or_the_backoff() -> None:
    backoff = Backoff(1.0, 60.0, Highest())
    assert retry_delay(RateLimited(429, 4.0, "HTTP 429: slow down"), backoff) == 4.0
    assert retry_delay(RateLimited(418, 120.0, "HTTP 418: banned"), backoff) == 120.0
    assert retry_delay(RateLimited(429, None, "HTTP 429"), backoff) == 1.0
    assert retry_delay(InvalidResponse("body is not JSON"), backoff) == 0.0
    assert retry_delay(Restricted("HTTP 451: restricted location"), backoff) == 2.0
    assert retry_delay(Rejected("HTTP 400: Invalid symbol."), backoff) == 4.0
    assert retry_delay(Unavailable("no answer within 5 s"), backoff) == 8.0


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (RateLimited(429, 4.0, "HTTP 429: slow down"), "rate limit: HTTP 429: slow down; "),
        (RateLimited(418, 120.0, "HTTP 418: banned"), "IP banned: HTTP 418: banned; "),
        (RateLimited(429, None, "HTTP 429"), "rate limit: HTTP 429, no Retry-After; "),
        (InvalidResponse("body is not JSON"), "invalid body (body is not JSON); "),
        (Restricted("HTTP 451: restricted location"), "data-api.binance.vision"),
        (Rejected("HTTP 400: Invalid symbol."), "check SYMBOLS. Next poll in 7.5 s"),
        (Unavailable("no answer within 5 s"), "Binance unavailable: no answer within 5 s; "),
    ],
)
def test_report_failure_says_what_happened_and_when_the_next_poll_comes(
    caplog: pytest.LogCaptureFixture, error: Exception, words: str
) -> None:
    with caplog.at_level(logging.INFO, logger="producer"):
        report_failure(error, next_poll_in=7.46)  # type: ignore[arg-type]
    [record] = caplog.records
    assert words in record.message
    assert record.message.lower().endswith("next poll in 7.5 s")
    assert "retrying in" not in record.message.lower()


# (the failure, the poll interval, the gap to the next poll it must announce)
ANNOUNCED = [
    # 0.4-0.8 s backoff on a 10 s grid: the next tick, not the backoff, decides.
    (Unavailable("HTTP 503: overloaded"), 10.0, 10.0),
    (Restricted("HTTP 451: restricted location"), 10.0, 10.0),
    (RateLimited(429, 2.5, "HTTP 429"), 1.0, 3.0),  # Retry-After, then the next grid point
    (RateLimited(418, 25.0, "HTTP 418"), 10.0, 30.0),
    (InvalidResponse("body is not JSON"), 10.0, 10.0),
]


@pytest.mark.parametrize(("error", "interval", "gap"), ANNOUNCED)
def test_the_announced_next_poll_is_when_the_loop_polls_again(
    caplog: pytest.LogCaptureFixture, error: Exception, interval: float, gap: float
) -> None:
    with caplog.at_level(logging.INFO, logger="producer"):
        rig = run_loop([Step(), Step(error=error), Step()], poll_interval=interval)
    failed_at, next_poll = rig.poll_times[1:]
    assert next_poll - failed_at == pytest.approx(gap, abs=0.001)
    [announced] = re.findall(r"next poll in ([0-9.]+) s", caplog.text, re.IGNORECASE)
    assert float(announced) == pytest.approx(next_poll - failed_at, abs=0.05)


class FakeCluster:
    """What a partitioner reads of kafka-python's cluster metadata."""

    def __init__(self, partitions: int) -> None:
        self.count = partitions

    def topics(self) -> set[str]:
        return {"btc_price"}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.count))

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.count))


def test_key_partition_cache_places_every_key_as_kafkas_default_partitioner() -> None:
    cache, default, cluster = KeyPartitionCache(), DefaultPartitioner(), FakeCluster(3)
    keys = [f"S{i}USDT".encode() for i in range(300)]
    for count in (3, 7, 3):  # the topic grows, and (another topic of that name) shrinks
        cluster.count = count
        for key in keys * 2:  # the second time from the cache
            want = default.partition("btc_price", key, key, b"v", b"v", cluster)
            assert cache.partition("btc_price", key, key, b"v", b"v", cluster) == want, key


def test_sink_bookkeeping_is_exact_when_partitions_acknowledge_out_of_send_order() -> None:
    """Acknowledgements pop the acknowledged prefix of what was sent; one that arrives behind
    a slower partition's event counts at once, and a retired client's unacknowledged events
    come back in send order (kafka-python's own futures, completed as its network thread
    would)."""
    sink = KafkaSink("127.0.0.1:9", "t", 3, threading.Event(), Backoff(0.2, 2), echo=False)
    sent = sink._sent
    events = [
        make_event("BTCUSDT", "1.5", 1_767_225_600_000 + i, "binance", RUN, i + 1) for i in range(5)
    ]
    futures = [Future() for _ in events]
    for event, future in zip(events, futures, strict=True):  # as KafkaSink._send_waiting does
        sent.queue.append((event, future))
        future.add_callback(sent.on_delivered)
        future.add_errback(sent.on_failed)
    assert sink.backlog() == 5
    futures[1].success("metadata")  # another partition, ahead of event 0's
    assert (sink.backlog(), sink.delivered) == (4, 0)
    futures[0].success("metadata")
    assert (sink.backlog(), sink.delivered) == (3, 2)
    futures[2].failure(KafkaTimeoutError("expired"))
    futures[4].success("metadata")
    assert (sink.backlog(), sink.delivered) == (2, 2)
    assert isinstance(sink._failure, KafkaTimeoutError)
    assert sent.retire() == [events[2], events[3]]
    futures[3].success("metadata")  # late: the retired client's events are sent again anyway
    assert (sink._sent.count(), sink.delivered) == (0, 2)
