"""Consumer configuration: environment variables, with command-line flags over them."""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

DEFAULT_MIGRATIONS = Path(__file__).resolve().parents[2] / "infra" / "migrations"


class ConfigError(ValueError):
    """A setting that stops the consumer at start, said in one sentence."""


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
_NUMBERS = {f.name: f.type for f in fields(Settings) if f.type in ("int", "float")}


def psycopg_dsn(**parts: str) -> str:
    """A libpq key=value string, quoting values so passwords with spaces or quotes work."""

    def quote(value: str) -> str:
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return " ".join(f"{key}={quote(value)}" for key, value in parts.items())


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
        "offsets to it in one transaction, then run (stop the old group first)",
    )
    return parser


def load_settings(argv: Sequence[str], env: Mapping[str, str] = os.environ) -> Settings:
    args = build_parser().parse_args(argv)
    values: dict[str, object] = {}
    for _, var, field, _ in _OPTIONS:
        text = getattr(args, field) or env.get(var)
        if text in (None, ""):
            continue
        values[field] = _convert(field, var, text)
    settings = Settings(**values, take_over=args.take_over)
    _validate(settings)
    return settings


def _convert(field: str, var: str, text: str) -> object:
    kind = _NUMBERS.get(field)
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise ConfigError(f"{var}={text!r} is not a number.") from None
    if field == "migrations_dir":
        return Path(text)
    # A password is taken as given: spaces may be part of it.
    return text if field == "postgres_password" else text.strip()


def _validate(s: Settings) -> None:
    if not s.flush_interval > 0:
        raise ConfigError(
            f"FLUSH_INTERVAL_SECONDS must be greater than 0 (got {s.flush_interval:g})."
        )
    if not 0 < s.postgres_port < 65536:
        raise ConfigError(f"POSTGRES_PORT={s.postgres_port} is not a TCP port.")
    if s.auto_offset_reset not in ("earliest", "latest"):
        raise ConfigError("KAFKA_AUTO_OFFSET_RESET must be earliest or latest.")
    if s.session_timeout_ms <= 0 or s.max_poll_interval_ms <= 0:
        raise ConfigError("Kafka timeouts must be greater than 0.")
    for server in s.bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"KAFKA_BOOTSTRAP_SERVERS={s.bootstrap_servers!r} is not host:port.")
    if not s.migrations_dir.is_dir():
        raise ConfigError(f"MIGRATIONS_DIR={s.migrations_dir} is not a folder.")
    if s.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"LOG_LEVEL={s.log_level!r} must be DEBUG, INFO, WARNING or ERROR.")
