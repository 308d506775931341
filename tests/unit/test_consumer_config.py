"""The consumer's settings: defaults, env then flags, bad values in one sentence, the DSN."""

from __future__ import annotations

from pathlib import Path

import pytest
from psycopg2.extensions import parse_dsn

from aggregator.settings import (
    DEFAULT_MIGRATIONS,
    ConfigError,
    Settings,
    load_settings,
    psycopg_dsn,
)
from aggregator.settings import OPTIONS as CONFIG_OPTIONS


def test_defaults_without_environment_or_flags() -> None:
    settings = load_settings(["--no-check-hosts"], {})
    assert settings.bootstrap_servers == "localhost:9092"
    assert settings.topic == "btc_price"
    assert settings.flush_interval == 30.0
    assert (settings.postgres_host, settings.postgres_port) == ("localhost", 5432)
    assert (settings.postgres_db, settings.postgres_user) == ("eventsdb", "postgres")
    assert settings.auto_offset_reset == "earliest"
    assert settings.migrations_dir == DEFAULT_MIGRATIONS and DEFAULT_MIGRATIONS.is_dir()
    assert settings.take_over is False


def test_environment_then_flags_over_it() -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "kafka:29092",
        "FLUSH_INTERVAL_SECONDS": "10",
        "POSTGRES_PORT": "5433",
        "POSTGRES_DB": "fromenv",
        "KAFKA_AUTO_OFFSET_RESET": "latest",
    }
    settings = load_settings(["--no-check-hosts"], env)
    assert settings.bootstrap_servers == "kafka:29092"
    assert settings.flush_interval == 10.0
    assert settings.postgres_port == 5433
    assert settings.postgres_db == "fromenv"
    assert settings.auto_offset_reset == "latest"
    flags = ["--flush-interval", "0.5", "--postgres-port", "6000", "--bootstrap-servers", "a:1"]
    settings = load_settings([*flags, "--no-check-hosts"], env)
    assert settings.flush_interval == 0.5
    assert settings.postgres_port == 6000
    assert settings.bootstrap_servers == "a:1"
    assert settings.postgres_db == "fromenv"  # no flag: the environment still counts


def test_an_empty_variable_means_the_default() -> None:
    assert (
        load_settings(["--no-check-hosts"], {"FLUSH_INTERVAL_SECONDS": ""}).flush_interval == 30.0
    )


MS = "a whole number of milliseconds"
FLUSH = "a finite number of seconds greater than 0 and at most 3600"
# (environment, what the one sentence must say is allowed)
BAD_VALUES = [
    ({"KAFKA_BOOTSTRAP_SERVERS": "localhost"}, "host:port"),
    ({"KAFKA_BOOTSTRAP_SERVERS": "localhost:port"}, "host:port"),
    ({"KAFKA_BOOTSTRAP_SERVERS": "a:1,:2"}, "host:port"),
    ({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:99999"}, "each port 1-65535"),
    ({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:0"}, "each port 1-65535"),
    ({"KAFKA_TOPIC": "bad topic!"}, "a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -"),
    ({"KAFKA_TOPIC": "t" * 250}, "a Kafka topic name (1-249"),
    ({"KAFKA_TOPIC": ".."}, "but not . or .."),
    ({"KAFKA_CONSUMER_GROUP": "   "}, "a non-blank name"),
    ({"FLUSH_INTERVAL_SECONDS": "0"}, FLUSH),
    ({"FLUSH_INTERVAL_SECONDS": "-1"}, FLUSH),
    ({"FLUSH_INTERVAL_SECONDS": "nan"}, FLUSH),
    ({"FLUSH_INTERVAL_SECONDS": "inf"}, FLUSH),
    ({"FLUSH_INTERVAL_SECONDS": "3601"}, FLUSH),
    ({"FLUSH_INTERVAL_SECONDS": "abc"}, FLUSH),
    ({"POSTGRES_HOST": " "}, "a non-blank name"),
    ({"POSTGRES_PORT": "70000"}, "a whole number from 1 to 65535"),
    ({"POSTGRES_PORT": "0"}, "a whole number from 1 to 65535"),
    ({"POSTGRES_PORT": "5432x"}, "a whole number from 1 to 65535"),
    ({"POSTGRES_PORT": "5432.0"}, "a whole number from 1 to 65535"),
    ({"POSTGRES_DB": " "}, "a non-blank name"),
    ({"POSTGRES_USER": " "}, "a non-blank name"),
    ({"CONSUMER_INSTANCE_ID": " "}, "a non-blank name"),
    ({"KAFKA_AUTO_OFFSET_RESET": "newest"}, "earliest or latest"),
    ({"KAFKA_AUTO_OFFSET_RESET": "smallest"}, "earliest or latest"),  # kafka-python's old name
    ({"KAFKA_SESSION_TIMEOUT_MS": "1"}, f"{MS} (a default broker's range) from 6000 to 1,800,000"),
    ({"KAFKA_SESSION_TIMEOUT_MS": "5999"}, "from 6000 to 1,800,000"),
    ({"KAFKA_SESSION_TIMEOUT_MS": "1800001"}, "from 6000 to 1,800,000"),
    ({"KAFKA_SESSION_TIMEOUT_MS": "10s"}, "from 6000 to 1,800,000"),
    ({"KAFKA_MAX_POLL_INTERVAL_MS": "0"}, f"{MS} from 1000 to 2,147,483,647"),
    ({"KAFKA_MAX_POLL_INTERVAL_MS": "2147483648"}, f"{MS} from 1000 to 2,147,483,647"),
    ({"MIGRATIONS_DIR": "/nonexistent/migrations"}, "an existing folder"),
    ({"LOG_LEVEL": "loud"}, "DEBUG, INFO, WARNING or ERROR"),
]
VARIABLE_FLAGS = {option.env: option.flag for option in CONFIG_OPTIONS}


@pytest.mark.parametrize(("env", "allowed"), BAD_VALUES, ids=[str(e)[:60] for e, _ in BAD_VALUES])
def test_bad_values_stop_with_one_sentence(env: dict[str, str], allowed: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(["--no-check-hosts"], env)
    [(var, value)] = env.items()
    text = str(caught.value)
    assert text.startswith(f"{var} ({VARIABLE_FLAGS[var]}) must be "), text
    assert allowed in text, text
    assert text.endswith(f", not {value!r}."), text
    assert "\n" not in text


def test_kafka_session_timeout_of_1_ms_is_one_sentence() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(["--no-check-hosts"], {"KAFKA_SESSION_TIMEOUT_MS": "1"})
    assert str(caught.value) == (
        "KAFKA_SESSION_TIMEOUT_MS (--session-timeout-ms) must be a whole number of milliseconds "
        "(a default broker's range) from 6000 to 1,800,000, not '1'."
    )


def test_every_rule_of_the_table_is_exercised() -> None:
    tested = {var for env, _ in BAD_VALUES for var in env}
    untested = set(VARIABLE_FLAGS) - tested
    assert untested == {"POSTGRES_PASSWORD"}  # any text is a password


# The edges of every range are accepted, and each value is converted by its own parser.
ACCEPTED = [
    ({"KAFKA_BOOTSTRAP_SERVERS": "[::1]:9092, kafka:29092"}, "bootstrap_servers", None),
    ({"KAFKA_BOOTSTRAP_SERVERS": "b:65535"}, "bootstrap_servers", None),
    ({"KAFKA_TOPIC": "t" * 249}, "topic", None),
    ({"FLUSH_INTERVAL_SECONDS": "0.001"}, "flush_interval", 0.001),
    ({"FLUSH_INTERVAL_SECONDS": "3600"}, "flush_interval", 3600.0),
    ({"POSTGRES_PORT": "1"}, "postgres_port", 1),
    ({"POSTGRES_PORT": "65535"}, "postgres_port", 65535),
    ({"POSTGRES_PASSWORD": " p w "}, "postgres_password", " p w "),
    ({"KAFKA_AUTO_OFFSET_RESET": "Latest"}, "auto_offset_reset", "latest"),
    ({"KAFKA_SESSION_TIMEOUT_MS": "6000"}, "session_timeout_ms", 6000),
    ({"KAFKA_SESSION_TIMEOUT_MS": "1800000"}, "session_timeout_ms", 1_800_000),
    ({"KAFKA_MAX_POLL_INTERVAL_MS": "1000"}, "max_poll_interval_ms", 1000),
    ({"LOG_LEVEL": "warning"}, "log_level", "WARNING"),
]


@pytest.mark.parametrize(
    ("env", "field", "expected"), ACCEPTED, ids=[str(e)[:60] for e, _, _ in ACCEPTED]
)
def test_values_at_the_edge_of_each_rule_are_accepted(
    env: dict[str, str], field: str, expected: object
) -> None:
    value = getattr(load_settings(["--no-check-hosts"], env), field)
    assert value == (next(iter(env.values())) if expected is None else expected)
    assert type(value) is type(getattr(Settings(), field))  # converted, never left as text


def test_a_bad_flag_is_as_bad_as_a_bad_variable() -> None:
    with pytest.raises(ConfigError, match="--postgres-port"):
        load_settings(["--postgres-port", "70000", "--no-check-hosts"], {"POSTGRES_PORT": "5432"})


@pytest.mark.parametrize(
    "password", ["postgres", "with spaces", "it's", 'say "hi"', "back\\slash\\", "", " a b "]
)
def test_psycopg_dsn_keeps_any_password_whole(password: str) -> None:
    dsn = psycopg_dsn(host="db host", port="5432", dbname="events db", password=password)
    parsed = parse_dsn(dsn)  # libpq's own parser
    assert parsed == {
        "host": "db host",
        "port": "5432",
        "dbname": "events db",
        "password": password,
    }


def test_settings_dsn_carries_every_connection_setting(tmp_path: Path) -> None:
    settings = load_settings(
        ["--postgres-password", "p w'd", "--no-check-hosts", "--take-over"],
        {"POSTGRES_HOST": "pg", "POSTGRES_PORT": "5433", "MIGRATIONS_DIR": str(tmp_path)},
    )
    assert isinstance(settings, Settings) and settings.migrations_dir == tmp_path
    assert settings.take_over is True
    parsed = parse_dsn(settings.dsn())
    assert parsed["host"] == "pg" and parsed["port"] == "5433"
    assert parsed["password"] == "p w'd"
    assert parsed["dbname"] == "eventsdb" and parsed["user"] == "postgres"
