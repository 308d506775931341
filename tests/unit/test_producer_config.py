"""The producer's settings: defaults, flags over env, bad values in one sentence, host checks,
and what a source does not use: a flag refused, an environment variable reported."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path

import pytest

from pricefeed import settings as producer_settings
from pricefeed.settings import ALL_SYMBOLS, ConfigError, Settings, unused_variables
from pricefeed.sources.registry import EVERY_SOURCE, SOURCES

OFFLINE = "--no-check-hosts"


def load_settings(argv: Sequence[str], env: Mapping[str, str] | None = None) -> Settings:
    """The settings as producer.py loads them, with the registered sources."""
    return producer_settings.load_settings(argv, SOURCES, env={} if env is None else env)


def source_args(name: str) -> list[str]:
    """Flags choosing `name`, with the file a replay needs."""
    return ["--source", name, *(["a.csv"] if name == "replay" else [])]


def test_symbols_all_in_any_case_means_every_pair_binance_lists() -> None:
    assert load_settings([OFFLINE], env={"SYMBOLS": "all"}).symbols == ALL_SYMBOLS
    assert load_settings([OFFLINE, "--symbols", "ALL"]).symbols == ALL_SYMBOLS
    replay = load_settings([OFFLINE, "--source", "replay", "a.csv"], {"SYMBOLS": "ALL"})
    assert replay.source == "replay"  # which does not use SYMBOLS
    trades = load_settings([OFFLINE, "--source", "binance-trades", "--symbols", "all"])
    assert trades.symbols == ALL_SYMBOLS  # Binance's trade streams of every pair


@pytest.mark.parametrize(
    "args",
    [
        ["--symbols", "ALL,BTCUSDT"],
        ["--symbols", "ALL", "--source", "simulated"],
        ["--symbols", "BTCUSDT,ALL", "--source", "binance-trades"],
    ],
)
def test_symbols_all_stands_alone_with_binance(args: list[str]) -> None:
    with pytest.raises(ConfigError, match="SYMBOLS=ALL"):
        load_settings([OFFLINE, *args])


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
    (
        "--ws-url",
        "BINANCE_WS_URL",
        "ws://e.test:9443",
        "wss://f.test",
        "binance_ws_url",
        "ws://e.test:9443",
        "wss://f.test",
    ),
    (
        "--since",
        "TRADES_SINCE",
        "2026-01-01T00:00:00Z",
        "1767225600039",
        "trades_since",
        1_767_225_600_000,
        1_767_225_600_039,
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
    ("--compression", "KAFKA_COMPRESSION", "gzip", "none", "compression", "gzip", "none"),
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
    base = [OFFLINE] if field == "source" else [OFFLINE, *source_args(a_user_of(field))]
    assert getattr(load_settings(base, env={var: env_value}), field) == from_env
    flagged = load_settings([*base, flag, flag_value], env={var: env_value})
    assert getattr(flagged, field) == from_flag
    assert getattr(load_settings([*base, flag, flag_value], env={}), field) == from_flag


def a_user_of(field: str) -> str:
    """The first source that uses the option: where its flag is taken."""
    return next(name for name, registered in SOURCES.items() if field in registered.options)


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
    (
        {"PRODUCER_SOURCE": "websocket"},
        "PRODUCER_SOURCE",
        "binance, binance-trades, simulated or replay",
    ),
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
    ({"BINANCE_WS_URL": "https://stream.binance.com"}, "BINANCE_WS_URL", "ws(s) URL"),
    ({"BINANCE_WS_URL": "stream.binance.com:9443"}, "BINANCE_WS_URL", "ws(s) URL"),
    ({"BINANCE_WS_URL": "wss://127.0.0.1:0"}, "BINANCE_WS_URL", "port 1-65535"),
    ({"BINANCE_WS_URL": "wss://127.0.0.1:70000"}, "BINANCE_WS_URL", "port 1-65535"),
    ({"TRADES_SINCE": "yesterday"}, "TRADES_SINCE", "ISO 8601 UTC time"),
    ({"TRADES_SINCE": "2026-01-01T00:00:00"}, "TRADES_SINCE", "ISO 8601 UTC time"),
    ({"TRADES_SINCE": "2026-01-01T01:00:00+01:00"}, "TRADES_SINCE", "ISO 8601 UTC time"),
    ({"TRADES_SINCE": "1230767999999"}, "TRADES_SINCE", "from 2009 on"),
    ({"TRADES_SINCE": "-5"}, "TRADES_SINCE", "epoch milliseconds"),
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
    ({"KAFKA_COMPRESSION": "brotli"}, "KAFKA_COMPRESSION", "none, gzip, snappy, lz4 or zstd"),
    ({"KAFKA_COMPRESSION": "lz4hc"}, "KAFKA_COMPRESSION", "none, gzip, snappy, lz4 or zstd"),
    ({"REPLAY_SPEED": "0"}, "REPLAY_SPEED", "max, or a finite number greater than 0"),
    ({"REPLAY_SPEED": "inf"}, "REPLAY_SPEED", "max, or a finite number greater than 0"),
    ({"REPLAY_SPEED": "fast"}, "REPLAY_SPEED", "max, or a finite number greater than 0"),
    ({"REPLAY_SYMBOL": "BTC/USDT"}, "REPLAY_SYMBOL", "a Binance symbol like BTCUSDT"),
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
    ({"TRADES_SINCE": "1230768000000"}, "trades_since", 1_230_768_000_000),
    ({"TRADES_SINCE": " 2026-01-01T00:00:00.5+00:00 "}, "trades_since", 1_767_225_600_500),
    (
        {"BINANCE_WS_URL": "wss://stream.binance.com:443/"},
        "binance_ws_url",
        "wss://stream.binance.com:443",
    ),
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
    ({"KAFKA_COMPRESSION": " GZIP "}, "compression", "gzip"),
    ({"KAFKA_COMPRESSION": "snappy"}, "compression", "snappy"),
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


# --- what the chosen source does not use -------------------------------------------------------

# (flag and value, the sentence that refuses it with the default source, binance)
UNUSED_BY_BINANCE = [
    (["--speed", "2"], "--speed (REPLAY_SPEED) is only used with --source replay, not binance."),
    (["--resume"], "--resume is only used with --source replay, not binance."),
    (
        ["--seed", "5"],
        "--seed (SIMULATION_SEED) is only used with --source simulated, not binance.",
    ),
    (
        ["--replay-symbol", "BTCUSDT"],
        "--replay-symbol (REPLAY_SYMBOL) is only used with --source replay, not binance.",
    ),
    (
        ["--replay-state-dir", "/tmp/x"],
        "--replay-state-dir (REPLAY_STATE_DIR) is only used with --source replay, not binance.",
    ),
]


@pytest.mark.parametrize(("args", "sentence"), UNUSED_BY_BINANCE, ids=lambda v: str(v)[:30])
def test_a_flag_the_chosen_source_does_not_use_is_refused_in_one_sentence(
    args: list[str], sentence: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings([OFFLINE, *args])
    assert str(error.value) == sentence
    assert_one_sentence(str(error.value))


OPTIONS = producer_settings.OPTIONS
# A valid text for the flag of every option but --source.
FLAG_VALUES = {
    "--bootstrap-servers": "a:1",
    "--topic": "t",
    "--partitions": "2",
    "--symbols": "ETHUSDT",
    "--interval": "5",
    "--jitter": "1",
    "--binance-url": "http://e.test",
    "--ws-url": "wss://e.test",
    "--since": "2026-01-01T00:05:00+00:00",
    "--timeout": "2",
    "--backoff-base": "0.5",
    "--backoff-max": "9",
    "--delivery-timeout-ms": "5000",
    "--compression": "gzip",
    "--seed": "3",
    "--speed": "2",
    "--replay-symbol": "ETHUSDT",
    "--replay-state-dir": "/tmp/x",
    "--log-level": "DEBUG",
}


def test_every_flag_of_another_source_is_refused_alike_and_its_own_are_taken() -> None:
    """Each flag, given to each source: taken if the registry says the source uses it,
    refused naming the sources that do otherwise."""
    assert set(FLAG_VALUES) == {option.flag for option in OPTIONS} - {"--source"}
    for name, registered in SOURCES.items():
        for option in OPTIONS[1:]:
            args = [OFFLINE, *source_args(name), option.flag, FLAG_VALUES[option.flag]]
            if option.field in registered.options:
                assert getattr(load_settings(args), option.field) is not None
                continue
            with pytest.raises(ConfigError) as error:
                load_settings(args)
            users = [n for n, r in SOURCES.items() if option.field in r.options]
            named = users[0] if len(users) == 1 else f"{', '.join(users[:-1])} or {users[-1]}"
            assert str(error.value) == (
                f"{option.flag} ({option.env}) is only used with --source {named}, not {name}."
            )


def test_the_options_every_source_uses_are_never_refused() -> None:
    common = [o for o in OPTIONS if o.field in EVERY_SOURCE and o.flag != "--source"]
    assert {o.env for o in common} >= {
        "KAFKA_BOOTSTRAP_SERVERS",
        "KAFKA_TOPIC",
        "KAFKA_TOPIC_PARTITIONS",
        "KAFKA_DELIVERY_TIMEOUT_MS",
        "LOG_LEVEL",
    }
    flags = [item for o in common for item in (o.flag, FLAG_VALUES[o.flag])]
    for name in SOURCES:
        assert load_settings([OFFLINE, *source_args(name), *flags]).source == name


def test_an_environment_variable_the_source_does_not_use_is_reported_not_refused() -> None:
    env = {
        "REPLAY_SPEED": "2",
        "REPLAY_SYMBOL": "BTCUSDT",
        "SIMULATION_SEED": "",  # empty: not set
        "POLL_INTERVAL_SECONDS": "5",
        "KAFKA_TOPIC": "t",
    }
    settings = load_settings([OFFLINE], env)
    assert (settings.replay_speed, settings.replay_symbol) == (2.0, "BTCUSDT")  # read, unused
    assert unused_variables(settings, SOURCES, env) == ["REPLAY_SPEED", "REPLAY_SYMBOL"]
    replay = load_settings([OFFLINE, "--source", "replay", "a.csv"], env)
    assert unused_variables(replay, SOURCES, env) == ["POLL_INTERVAL_SECONDS"]
    assert unused_variables(load_settings([OFFLINE], {}), SOURCES, {}) == []


def test_an_environment_variable_of_another_source_is_still_checked() -> None:
    with pytest.raises(ConfigError, match="REPLAY_SPEED"):
        load_settings([OFFLINE], {"REPLAY_SPEED": "fast"})
