"""Producer configuration: environment variables, with command-line flags over them."""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlparse

from pricefeed.contract import ContractError, check_symbol

SOURCES = ("binance", "simulated", "replay")
DEFAULT_REPLAY_STATE_DIR = Path("~/.cache/btc-pipeline/replay").expanduser()


class ConfigError(ValueError):
    """A setting that stops the producer at start, said in one sentence."""


@dataclass(frozen=True)
class Settings:
    source: str = "binance"
    bootstrap_servers: str = "localhost:9092"
    topic: str = "btc_price"
    topic_partitions: int = 3
    symbols: tuple[str, ...] = ("BTCUSDT",)
    poll_interval: float = 10.0
    poll_jitter: float = 0.0
    binance_base_url: str = "https://api.binance.com"
    http_timeout: float = 5.0
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    seed: int | None = None
    replay_files: tuple[Path, ...] = ()
    replay_speed: float | None = None  # None: as fast as the broker takes it
    replay_state_dir: Path = DEFAULT_REPLAY_STATE_DIR  # notes of what Kafka acknowledged
    resume: bool = False  # --resume only: skip lines acknowledged in an earlier run
    log_level: str = "INFO"


# (flag, environment variable, field, help). Every default is the Settings default above.
_OPTIONS = [
    ("--source", "PRODUCER_SOURCE", "source", "binance, simulated (seeded random walk) or replay"),
    ("--bootstrap-servers", "KAFKA_BOOTSTRAP_SERVERS", "bootstrap_servers", "Kafka brokers"),
    ("--topic", "KAFKA_TOPIC", "topic", "topic to publish to"),
    ("--partitions", "KAFKA_TOPIC_PARTITIONS", "topic_partitions", "partitions if it is created"),
    ("--symbols", "SYMBOLS", "symbols", "comma-separated Binance symbols"),
    ("--interval", "POLL_INTERVAL_SECONDS", "poll_interval", "seconds between polls"),
    ("--jitter", "POLL_JITTER_SECONDS", "poll_jitter", "random extra delay per tick, seconds"),
    ("--binance-url", "BINANCE_BASE_URL", "binance_base_url", "Binance REST base URL"),
    ("--timeout", "HTTP_TIMEOUT_SECONDS", "http_timeout", "HTTP timeout per request, seconds"),
    ("--backoff-base", "BACKOFF_BASE_SECONDS", "backoff_base", "first retry delay, seconds"),
    ("--backoff-max", "BACKOFF_MAX_SECONDS", "backoff_max", "longest retry delay, seconds"),
    ("--seed", "SIMULATION_SEED", "seed", "random seed of --source simulated"),
    ("--speed", "REPLAY_SPEED", "replay_speed", "replay N times real time, or 'max'"),
    (
        "--replay-state-dir",
        "REPLAY_STATE_DIR",
        "replay_state_dir",
        "where a replay notes how far Kafka acknowledged each file",
    ),
    ("--log-level", "LOG_LEVEL", "log_level", "DEBUG, INFO, WARNING or ERROR"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="producer.py",
        description="Publish Binance spot prices to Kafka, one JSON message per symbol per poll.",
        epilog="Each flag overrides its environment variable; defaults in brackets.",
    )
    defaults = Settings()
    for flag, env, field, text in _OPTIONS:
        default = getattr(defaults, field)
        if isinstance(default, tuple):
            default = ",".join(default)
        shown = {"replay_speed": "max", "replay_state_dir": "~/.cache/btc-pipeline/replay"}.get(
            field, default
        )
        parser.add_argument(flag, dest=field, metavar=env, help=f"{text} [{env}={shown}]")
    parser.add_argument(
        "files", nargs="*", type=Path, help="Binance public-data CSV or zip files (--source replay)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="replay: skip the lines of a file that Kafka acknowledged in an earlier run to the "
        "same topic (without it they are sent again, and the consumer counts them once)",
    )
    parser.add_argument(
        "--check-hosts",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="resolve the Binance and Kafka host names at start [on]",
    )
    return parser


def load_settings(argv: Sequence[str], env: Mapping[str, str] = os.environ) -> Settings:
    """Parse flags over environment; raise ConfigError for any bad value."""
    args = build_parser().parse_args(argv)
    raw = {field: getattr(args, field) or env.get(var) for _, var, field, _ in _OPTIONS}
    settings = _convert({k: v for k, v in raw.items() if v not in (None, "")}, args.files)
    settings = replace(settings, resume=args.resume)
    _validate(settings)
    if args.check_hosts:
        _check_hosts_resolve(settings)
    return settings


def _convert(raw: dict[str, str], files: list[Path]) -> Settings:
    values: dict[str, object] = {"replay_files": tuple(files)}
    for field, text in raw.items():
        values[field] = _convert_one(field, text)
    return Settings(**values)


def _convert_one(field: str, text: str) -> object:
    env = next(var for _, var, f, _ in _OPTIONS if f == field)
    try:
        if field == "symbols":
            return tuple(s.strip().upper() for s in text.split(",") if s.strip())
        if field == "replay_speed":
            return None if text.strip().lower() == "max" else float(text)
        if field == "replay_state_dir":
            return Path(text.strip()).expanduser()
        if field in ("topic_partitions", "seed"):
            return int(text)
        if field in ("poll_interval", "poll_jitter", "http_timeout", "backoff_base", "backoff_max"):
            return float(text)
    except ValueError:
        raise ConfigError(f"{env}={text!r} is not a number.") from None
    return text.strip()


def _validate(s: Settings) -> None:
    if s.source not in SOURCES:
        raise ConfigError(f"PRODUCER_SOURCE={s.source!r} must be one of {', '.join(SOURCES)}.")
    if not s.symbols:
        raise ConfigError("SYMBOLS is empty: give at least one symbol, like BTCUSDT.")
    for symbol in s.symbols:
        try:
            check_symbol(symbol)
        except ContractError:
            raise ConfigError(
                f"SYMBOLS contains {symbol!r}, which is not a Binance symbol (like BTCUSDT)."
            ) from None
    if len(set(s.symbols)) != len(s.symbols):
        raise ConfigError(f"SYMBOLS={','.join(s.symbols)} names a symbol twice.")
    _require_positive("POLL_INTERVAL_SECONDS", s.poll_interval)
    _require_positive("HTTP_TIMEOUT_SECONDS", s.http_timeout)
    _require_positive("BACKOFF_BASE_SECONDS", s.backoff_base)
    _require_positive("KAFKA_TOPIC_PARTITIONS", s.topic_partitions)
    if s.backoff_max < s.backoff_base:
        raise ConfigError("BACKOFF_MAX_SECONDS must not be below BACKOFF_BASE_SECONDS.")
    if not 0 <= s.poll_jitter < s.poll_interval:
        raise ConfigError("POLL_JITTER_SECONDS must be at least 0 and below the poll interval.")
    if s.replay_speed is not None:
        _require_positive("REPLAY_SPEED", s.replay_speed)
    kafka_hosts(s.bootstrap_servers)
    if not s.topic or len(s.topic) > 249:
        raise ConfigError(f"KAFKA_TOPIC={s.topic!r} is not a valid topic name.")
    url = urlparse(s.binance_base_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(
            f"BINANCE_BASE_URL={s.binance_base_url!r} is not an http(s) URL "
            "like https://api.binance.com."
        )
    if s.source == "replay" and not s.replay_files:
        raise ConfigError("--source replay needs at least one file to replay.")
    if s.source != "replay" and s.replay_files:
        raise ConfigError("Files are only read with --source replay.")
    if s.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"LOG_LEVEL={s.log_level!r} must be DEBUG, INFO, WARNING or ERROR.")


def _require_positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be greater than 0 (got {value:g}).")


def kafka_hosts(bootstrap_servers: str) -> list[tuple[str, int]]:
    hosts = []
    for server in bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(
                f"KAFKA_BOOTSTRAP_SERVERS={bootstrap_servers!r} is not a list of host:port."
            )
        hosts.append((host.strip("[]"), int(port)))
    return hosts


def _check_hosts_resolve(s: Settings) -> None:
    """Unknown host names are configuration mistakes: say so now, not in a retry loop."""
    names = [(host, "KAFKA_BOOTSTRAP_SERVERS") for host, _ in kafka_hosts(s.bootstrap_servers)]
    if s.source == "binance":
        names.append((urlparse(s.binance_base_url).hostname or "", "BINANCE_BASE_URL"))
    for host, var in names:
        try:
            socket.getaddrinfo(host, None)
        except socket.gaierror:
            raise ConfigError(f"{var} names host {host!r}, which cannot be resolved.") from None
