"""The consumer's settings: environment variables, with command-line flags over them.

Every option names its own parser, which converts the text and checks its range; a bad value
stops the consumer at start, before it connects anywhere, with one sentence naming the
variable and what it allows. The settings both scripts share (Kafka brokers, topic, log level)
and the machinery that reads options are in btcpipe.settings, which both scripts install.

A leaf: it imports btcpipe and the standard library only, so every part of the consumer may
import it. OPTIONS and SHOWN_DEFAULTS are public for the docs' configuration reference.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from btcpipe import settings as shared
from btcpipe.settings import ConfigError as ConfigError  # load_settings raises it
from btcpipe.settings import Invalid, Option

DEFAULT_MIGRATIONS = Path(__file__).resolve().parents[2] / "infra" / "migrations"
OFFSET_RESETS = ("earliest", "latest")
MAX_FLUSH_SECONDS = 3600.0  # an hour: a longer interval holds too much in memory to be meant
# A default broker refuses session timeouts outside group.min.session.timeout.ms (6 s) and
# group.max.session.timeout.ms (30 min); kafka_reader/client.py derives the heartbeat from it.
SESSION_TIMEOUT_MS = (6_000, 1_800_000)
MAX_POLL_INTERVAL_MS = (1_000, 2**31 - 1)  # Kafka's int32


@dataclass(frozen=True)
class Settings:
    bootstrap_servers: str = "localhost:9092"
    topic: str = "btc_price"
    group_id: str = "btc-aggregator"
    flush_interval: float = 30.0
    postgres_host: str = "localhost"
    postgres_port: int = 5432
    postgres_db: str = "eventsdb"
    postgres_user: str = "postgres"
    postgres_password: str = "postgres"
    instance_id: str = f"{socket.gethostname()}-{os.getpid()}"
    auto_offset_reset: str = "earliest"
    session_timeout_ms: int = 10_000
    max_poll_interval_ms: int = 300_000
    migrations_dir: Path = DEFAULT_MIGRATIONS
    log_level: str = "INFO"
    take_over: bool = False  # --take-over only: a one-off decision, never an environment value

    def dsn(self) -> str:
        return psycopg_dsn(
            host=self.postgres_host,
            port=str(self.postgres_port),
            dbname=self.postgres_db,
            user=self.postgres_user,
            password=self.postgres_password,
            application_name="btc-consumer",
        )


def psycopg_dsn(**parts: str) -> str:
    """A libpq key=value string, quoting values so passwords with spaces or quotes work."""

    def quote(value: str) -> str:
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return " ".join(f"{key}={quote(value)}" for key, value in parts.items())


# --- parsers of the consumer's own settings: text -> value, or Invalid saying what is allowed -


def name(text: str) -> str:
    if not text.strip():
        raise Invalid("a non-blank name")
    return text.strip()


def folder(text: str) -> Path:
    path = Path(text.strip())
    if not path.is_dir():
        raise Invalid("an existing folder")
    return path


# Every default is the Settings default above.
OPTIONS = [
    shared.KAFKA_BROKERS,
    shared.kafka_topic("topic to read"),
    Option("--group", "KAFKA_CONSUMER_GROUP", "group_id", "consumer group", name),
    Option(
        "--flush-interval",
        "FLUSH_INTERVAL_SECONDS",
        "flush_interval",
        "seconds between flushes",
        shared.number(float, "a finite number of seconds", 0, MAX_FLUSH_SECONDS, low_open=True),
    ),
    Option("--postgres-host", "POSTGRES_HOST", "postgres_host", "PostgreSQL host", name),
    Option(
        "--postgres-port",
        "POSTGRES_PORT",
        "postgres_port",
        "PostgreSQL port",
        shared.number(int, "a whole number", 1, 65535),
    ),
    Option("--postgres-db", "POSTGRES_DB", "postgres_db", "database", name),
    Option("--postgres-user", "POSTGRES_USER", "postgres_user", "user", name),
    # Taken as given: spaces may be part of a password.
    Option("--postgres-password", "POSTGRES_PASSWORD", "postgres_password", "password", str),
    Option(
        "--instance-id", "CONSUMER_INSTANCE_ID", "instance_id", "name in pipeline_metrics", name
    ),
    Option(
        "--auto-offset-reset",
        "KAFKA_AUTO_OFFSET_RESET",
        "auto_offset_reset",
        "where to start with no stored offset: earliest or latest",
        shared.one_of(OFFSET_RESETS, lambda text: text.strip().lower()),
    ),
    Option(
        "--session-timeout-ms",
        "KAFKA_SESSION_TIMEOUT_MS",
        "session_timeout_ms",
        "how long a silent member keeps its partitions",
        shared.number(
            int, "a whole number of milliseconds (a default broker's range)", *SESSION_TIMEOUT_MS
        ),
    ),
    Option(
        "--max-poll-interval-ms",
        "KAFKA_MAX_POLL_INTERVAL_MS",
        "max_poll_interval_ms",
        "longest pause between polls before the group moves on",
        shared.number(int, "a whole number of milliseconds", *MAX_POLL_INTERVAL_MS),
    ),
    Option(
        "--migrations-dir",
        "MIGRATIONS_DIR",
        "migrations_dir",
        "numbered schema migrations, applied at start",
        folder,
    ),
    shared.LOG_LEVEL,
]
# The help shows these instead of the values: computed per machine, a secret, a full path.
SHOWN_DEFAULTS = {
    "instance_id": "<host>-<pid>",
    "postgres_password": "postgres",
    "migrations_dir": "../infra/migrations",
}


# --- the command line ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = shared.command_line(
        "consumer.py",
        "Aggregate btc_price events into exact 5-minute windows in PostgreSQL.",
        OPTIONS,
        Settings(),
        SHOWN_DEFAULTS,
        hosts="Kafka and PostgreSQL",
    )
    parser.add_argument(
        "--take-over",
        action="store_true",
        help="make --group the group that fills the tables, moving the owning group's stored "
        "offsets to it in one transaction, then run (see README: One owning group)",
    )
    return parser


def settings_from(values: Mapping[str, object], take_over: bool = False) -> Settings:
    """Settings of the values the options' parsers returned, by field. A parser is typed to
    return `object`; here each value is checked to be of its field's type (that of the field's
    default), so that a parser returning text instead of a number fails at once, by name."""
    defaults = Settings()
    typed: dict[str, Any] = {}
    for field, value in values.items():
        expected = type(getattr(defaults, field))
        if not isinstance(value, expected):
            raise TypeError(f"the parser of {field} returned {value!r}, not a {expected.__name__}")
        typed[field] = value
    return Settings(**typed, take_over=take_over)


def load_settings(argv: Sequence[str], env: Mapping[str, str] = os.environ) -> Settings:
    """Parse flags over environment; raise ConfigError for any bad value."""
    args = build_parser().parse_args(argv)
    settings = settings_from(shared.read_options(args, env, OPTIONS), take_over=args.take_over)
    if args.check_hosts:
        names = shared.kafka_host_names(settings.bootstrap_servers)
        shared.check_hosts_resolve([*names, (settings.postgres_host, "POSTGRES_HOST")])
    return settings
