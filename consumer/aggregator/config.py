"""Consumer configuration: environment variables, with command-line flags over them.

Every setting has its own parser, which converts the text and checks its range; a bad value
stops the consumer at start, before it connects anywhere, with one sentence naming the
variable and what it allows. The settings both scripts share follow the same rules as in the
producer's config.py (tests/test_config_rules.py holds them to that).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MIGRATIONS = Path(__file__).resolve().parents[2] / "infra" / "migrations"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
OFFSET_RESETS = ("earliest", "latest")
MAX_FLUSH_SECONDS = 3600.0  # an hour: a longer interval holds too much in memory to be meant
# A default broker refuses session timeouts outside group.min.session.timeout.ms (6 s) and
# group.max.session.timeout.ms (30 min); kafka_edge derives the heartbeat as a third of it.
SESSION_TIMEOUT_MS = (6_000, 1_800_000)
MAX_POLL_INTERVAL_MS = (1_000, 2**31 - 1)  # Kafka's int32
TOPIC_PATTERN = re.compile(r"[a-zA-Z0-9._-]{1,249}")  # Kafka's own rule (clients' Topic.java)
HOST_PATTERN = re.compile(r"[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]")  # name, IPv4 or [IPv6]
PORT_PATTERN = re.compile(r"[0-9]{1,5}")  # ASCII digits: int() also reads other scripts


class ConfigError(ValueError):
    """A setting that stops the consumer at start, said in one sentence."""


class Invalid(ValueError):
    """Raised by a parser: the text is not allowed; the message says what is."""


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


# (flag, environment variable, field, help). Every default is the Settings default above.
_OPTIONS = [
    ("--bootstrap-servers", "KAFKA_BOOTSTRAP_SERVERS", "bootstrap_servers", "Kafka brokers"),
    ("--topic", "KAFKA_TOPIC", "topic", "topic to read"),
    ("--group", "KAFKA_CONSUMER_GROUP", "group_id", "consumer group"),
    ("--flush-interval", "FLUSH_INTERVAL_SECONDS", "flush_interval", "seconds between flushes"),
    ("--postgres-host", "POSTGRES_HOST", "postgres_host", "PostgreSQL host"),
    ("--postgres-port", "POSTGRES_PORT", "postgres_port", "PostgreSQL port"),
    ("--postgres-db", "POSTGRES_DB", "postgres_db", "database"),
    ("--postgres-user", "POSTGRES_USER", "postgres_user", "user"),
    ("--postgres-password", "POSTGRES_PASSWORD", "postgres_password", "password"),
    ("--instance-id", "CONSUMER_INSTANCE_ID", "instance_id", "name in pipeline_metrics"),
    (
        "--auto-offset-reset",
        "KAFKA_AUTO_OFFSET_RESET",
        "auto_offset_reset",
        "where to start with no stored offset: earliest or latest",
    ),
    (
        "--session-timeout-ms",
        "KAFKA_SESSION_TIMEOUT_MS",
        "session_timeout_ms",
        "how long a silent member keeps its partitions",
    ),
    (
        "--max-poll-interval-ms",
        "KAFKA_MAX_POLL_INTERVAL_MS",
        "max_poll_interval_ms",
        "longest pause between polls before the group moves on",
    ),
    (
        "--migrations-dir",
        "MIGRATIONS_DIR",
        "migrations_dir",
        "numbered schema migrations, applied at start",
    ),
    ("--log-level", "LOG_LEVEL", "log_level", "DEBUG, INFO, WARNING or ERROR"),
]


def psycopg_dsn(**parts: str) -> str:
    """A libpq key=value string, quoting values so passwords with spaces or quotes work."""

    def quote(value: str) -> str:
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return " ".join(f"{key}={quote(value)}" for key, value in parts.items())


# --- parsers: text -> value, or Invalid saying what is allowed --------------------------------


def number(
    kind: type[int] | type[float], what: str, low: float, high: float, low_open: bool = False
) -> Callable[[str], float]:
    """A parser of finite ints or floats in [low, high], or in (low, high] with low_open."""
    bound = f"greater than {low:g} and at most" if low_open else f"from {low:g} to"
    rule = f"{what} {bound} {high:g}" if high < 1e6 else f"{what} {bound} {high:,.0f}"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise Invalid(rule) from None
        if not (math.isfinite(value) and low <= value <= high) or (low_open and value == low):
            raise Invalid(rule)
        return value

    return parse


def one_of(choices: Sequence[str], normalise: Callable[[str], str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = normalise(text)
        if value not in choices:
            raise Invalid(f"{', '.join(choices[:-1])} or {choices[-1]}")
        return value

    return parse


def topic_name(text: str) -> str:
    if not TOPIC_PATTERN.fullmatch(text) or text in (".", ".."):
        raise Invalid("a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -, but not . or ..)")
    return text


def bootstrap_servers(text: str) -> str:
    """A comma-separated list of host:port; IPv6 as [addr]:port."""
    for server in text.split(","):
        host, _, port = server.strip().rpartition(":")
        valid_port = PORT_PATTERN.fullmatch(port) and 0 < int(port) < 65536
        if not HOST_PATTERN.fullmatch(host) or not valid_port:
            raise Invalid("a comma-separated list of host:port, each port 1-65535")
    return text


def name(text: str) -> str:
    if not text.strip():
        raise Invalid("a non-blank name")
    return text.strip()


def folder(text: str) -> Path:
    path = Path(text.strip())
    if not path.is_dir():
        raise Invalid("an existing folder")
    return path


_PARSERS: dict[str, Callable[[str], object]] = {
    "bootstrap_servers": bootstrap_servers,
    "topic": topic_name,
    "group_id": name,
    "flush_interval": number(
        float, "a finite number of seconds", 0, MAX_FLUSH_SECONDS, low_open=True
    ),
    "postgres_host": name,
    "postgres_port": number(int, "a whole number", 1, 65535),
    "postgres_db": name,
    "postgres_user": name,
    "postgres_password": str,  # taken as given: spaces may be part of it
    "instance_id": name,
    "auto_offset_reset": one_of(OFFSET_RESETS, lambda text: text.strip().lower()),
    "session_timeout_ms": number(
        int, "a whole number of milliseconds (a default broker's range)", *SESSION_TIMEOUT_MS
    ),
    "max_poll_interval_ms": number(int, "a whole number of milliseconds", *MAX_POLL_INTERVAL_MS),
    "migrations_dir": folder,
    "log_level": one_of(LOG_LEVELS, lambda text: text.strip().upper()),
}


# --- the command line ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="consumer.py",
        description="Aggregate btc_price events into exact 5-minute windows in PostgreSQL.",
        epilog="Each flag overrides its environment variable; defaults in brackets.",
    )
    defaults = Settings()
    for flag, env, field, text in _OPTIONS:
        shown = "<host>-<pid>" if field == "instance_id" else getattr(defaults, field)
        if field == "postgres_password":
            shown = "postgres"
        if field == "migrations_dir":
            shown = "../infra/migrations"
        parser.add_argument(flag, dest=field, metavar=env, help=f"{text} [{env}={shown}]")
    parser.add_argument(
        "--take-over",
        action="store_true",
        help="make --group the group that fills the tables, moving the owning group's stored "
        "offsets to it in one transaction, then run (see README: One owning group)",
    )
    parser.add_argument(
        "--check-hosts",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="resolve the Kafka and PostgreSQL host names at start [on]",
    )
    return parser


def load_settings(argv: Sequence[str], env: Mapping[str, str] = os.environ) -> Settings:
    """Parse flags over environment; raise ConfigError for any bad value."""
    args = build_parser().parse_args(argv)
    values: dict[str, object] = {}
    for flag, var, field, _ in _OPTIONS:
        text = getattr(args, field) or env.get(var)
        if not text:
            continue  # unset or empty: the default
        try:
            values[field] = _PARSERS[field](text)
        except Invalid as rule:
            raise ConfigError(f"{var} ({flag}) must be {rule}, not {text!r}.") from None
    settings = Settings(**values, take_over=args.take_over)
    if args.check_hosts:
        _check_hosts_resolve(settings)
    return settings


def _check_hosts_resolve(s: Settings) -> None:
    """Unknown host names are configuration mistakes: say so now, not in a retry loop."""
    names = [
        (server.strip().rpartition(":")[0].strip("[]"), "KAFKA_BOOTSTRAP_SERVERS")
        for server in s.bootstrap_servers.split(",")
    ]
    names.append((s.postgres_host, "POSTGRES_HOST"))
    for host, var in names:
        try:
            socket.getaddrinfo(host, None)
        except socket.gaierror:
            raise ConfigError(f"{var} names host {host!r}, which cannot be resolved.") from None
