"""Producer configuration: environment variables, with command-line flags over them.

Every setting has its own parser, which converts the text and checks its range; a bad value
stops the producer at start, before anything is created, with one sentence naming the
variable and what it allows. The consumer's config.py applies the same rules to the settings
both scripts share (tests/test_config_rules.py holds them to that).
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
from urllib.parse import urlparse

from pricefeed.contract import ContractError, check_symbol
from pricefeed.registry import SOURCE_NAMES, sources_help

DEFAULT_REPLAY_STATE_DIR = Path("~/.cache/btc-pipeline/replay").expanduser()
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
MAX_SECONDS = 86_400.0  # one day: longer waits are typos, and would overflow timed waits
MAX_PARTITIONS = 2**31 - 1  # Kafka's int32
TOPIC_PATTERN = re.compile(r"[a-zA-Z0-9._-]{1,249}")  # Kafka's own rule (clients' Topic.java)
HOST_PATTERN = re.compile(r"[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]")  # name, IPv4 or [IPv6]
PORT_PATTERN = re.compile(r"[0-9]{1,5}")  # ASCII digits: int() also reads other scripts


class ConfigError(ValueError):
    """A setting that stops the producer at start, said in one sentence."""


class Invalid(ValueError):
    """Raised by a parser: the text is not allowed; the message says what is."""


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
    delivery_timeout_ms: int = 120_000
    seed: int | None = None
    replay_files: tuple[Path, ...] = ()
    replay_speed: float | None = None  # None: as fast as the broker takes it
    replay_symbol: str | None = None  # None: from each file's name
    replay_state_dir: Path = DEFAULT_REPLAY_STATE_DIR  # notes of what Kafka acknowledged
    resume: bool = False  # --resume only: skip lines acknowledged in an earlier run
    log_level: str = "INFO"


# (flag, environment variable, field, help). Every default is the Settings default above.
_OPTIONS = [
    ("--source", "PRODUCER_SOURCE", "source", sources_help()),
    ("--bootstrap-servers", "KAFKA_BOOTSTRAP_SERVERS", "bootstrap_servers", "Kafka brokers"),
    ("--topic", "KAFKA_TOPIC", "topic", "topic to publish to"),
    ("--partitions", "KAFKA_TOPIC_PARTITIONS", "topic_partitions", "partitions if it is created"),
    ("--symbols", "SYMBOLS", "symbols", "comma-separated Binance symbols, or ALL pairs"),
    ("--interval", "POLL_INTERVAL_SECONDS", "poll_interval", "seconds between polls"),
    ("--jitter", "POLL_JITTER_SECONDS", "poll_jitter", "random extra delay per tick, seconds"),
    ("--binance-url", "BINANCE_BASE_URL", "binance_base_url", "Binance REST base URL"),
    ("--timeout", "HTTP_TIMEOUT_SECONDS", "http_timeout", "HTTP timeout per request, seconds"),
    ("--backoff-base", "BACKOFF_BASE_SECONDS", "backoff_base", "first retry delay, seconds"),
    ("--backoff-max", "BACKOFF_MAX_SECONDS", "backoff_max", "longest retry delay, seconds"),
    (
        "--delivery-timeout-ms",
        "KAFKA_DELIVERY_TIMEOUT_MS",
        "delivery_timeout_ms",
        "how long Kafka may take to acknowledge a message before it is sent again",
    ),
    ("--seed", "SIMULATION_SEED", "seed", "random seed of --source simulated"),
    ("--speed", "REPLAY_SPEED", "replay_speed", "replay N times real time, or 'max'"),
    (
        "--replay-symbol",
        "REPLAY_SYMBOL",
        "replay_symbol",
        "symbol of every replayed file, for files whose name does not say it",
    ),
    (
        "--replay-state-dir",
        "REPLAY_STATE_DIR",
        "replay_state_dir",
        "where a replay notes how far Kafka acknowledged each file",
    ),
    ("--log-level", "LOG_LEVEL", "log_level", "DEBUG, INFO, WARNING or ERROR"),
]
_SHOWN_DEFAULTS = {
    "replay_speed": "max",
    "replay_symbol": "from the file name",
    "seed": "random",
    "replay_state_dir": "~/.cache/btc-pipeline/replay",
}


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


seconds = number(float, "a finite number of seconds", 0, MAX_SECONDS, low_open=True)


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


def kafka_hosts(bootstrap_servers: str) -> list[tuple[str, int]]:
    """(host, port) of each `host:port` in a comma-separated list; IPv6 as [addr]:port."""
    hosts = []
    for server in bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        valid_port = PORT_PATTERN.fullmatch(port) and 0 < int(port) < 65536
        if not HOST_PATTERN.fullmatch(host) or not valid_port:
            raise Invalid("a comma-separated list of host:port, each port 1-65535")
        hosts.append((host.strip("[]"), int(port)))
    return hosts


def bootstrap_servers(text: str) -> str:
    kafka_hosts(text)
    return text


def symbol_list(text: str) -> tuple[str, ...]:
    rule = "comma-separated distinct Binance symbols like BTCUSDT,ETHUSDT (1-20 of A-Z 0-9 - _ .)"
    try:
        symbols = tuple(binance_symbol(symbol) for symbol in text.split(","))
    except Invalid:
        raise Invalid(rule) from None
    if len(set(symbols)) != len(symbols):
        raise Invalid(rule)
    return symbols


def binance_symbol(text: str) -> str:
    try:
        return check_symbol(text.strip().upper())
    except ContractError:
        raise Invalid("a Binance symbol like BTCUSDT (1-20 of A-Z 0-9 - _ .)") from None


def http_url(text: str) -> str:
    url = urlparse(text.strip())
    try:
        url.port  # noqa: B018 - raises ValueError for a port outside 0-65535
    except ValueError:
        raise Invalid("an http(s) URL like https://api.binance.com, with a port 1-65535") from None
    if url.scheme not in ("http", "https") or not url.hostname or url.port == 0:
        raise Invalid("an http(s) URL like https://api.binance.com, with a port 1-65535")
    return text.strip()


def replay_speed(text: str) -> float | None:
    if text.strip().lower() == "max":
        return None
    try:
        speed = float(text)
    except ValueError:
        speed = math.nan
    if not (math.isfinite(speed) and speed > 0):
        raise Invalid("max, or a finite number greater than 0 (times real time)")
    return speed


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise Invalid("a whole number") from None


_PARSERS: dict[str, Callable[[str], object]] = {
    "source": one_of(SOURCE_NAMES, lambda text: text.strip().lower()),
    "bootstrap_servers": bootstrap_servers,
    "topic": topic_name,
    "topic_partitions": number(int, "a whole number", 1, MAX_PARTITIONS),
    "symbols": symbol_list,
    "poll_interval": seconds,
    "poll_jitter": number(float, "a finite number of seconds", 0, MAX_SECONDS),
    "binance_base_url": http_url,
    "http_timeout": seconds,
    "backoff_base": seconds,
    "backoff_max": seconds,
    "delivery_timeout_ms": number(int, "a whole number of milliseconds", 1000, 2**31 - 1),
    "seed": whole_number,
    "replay_speed": replay_speed,
    "replay_symbol": binance_symbol,
    "replay_state_dir": lambda text: Path(text.strip()).expanduser(),
    "log_level": one_of(LOG_LEVELS, lambda text: text.strip().upper()),
}


# --- the command line ------------------------------------------------------------------------


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
        shown = _SHOWN_DEFAULTS.get(field, default)
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
    values: dict[str, object] = {"replay_files": tuple(args.files), "resume": args.resume}
    for flag, var, field, _ in _OPTIONS:
        text = getattr(args, field) or env.get(var)
        if not text:
            continue  # unset or empty: the default
        try:
            values[field] = _PARSERS[field](text)
        except Invalid as rule:
            raise ConfigError(f"{var} ({flag}) must be {rule}, not {text!r}.") from None
    settings = Settings(**values)
    _check_together(settings)
    if args.check_hosts:
        _check_hosts_resolve(settings)
    return settings


def _check_together(s: Settings) -> None:
    """Rules between settings, once each is valid on its own."""
    if "ALL" in s.symbols and (len(s.symbols) > 1 or s.source == "simulated"):
        raise ConfigError("SYMBOLS=ALL (every pair Binance lists) stands alone, with Binance.")
    if s.backoff_max < s.backoff_base:
        raise ConfigError(
            f"BACKOFF_MAX_SECONDS ({s.backoff_max:g}) must not be below "
            f"BACKOFF_BASE_SECONDS ({s.backoff_base:g})."
        )
    if s.poll_jitter >= s.poll_interval:
        raise ConfigError(
            f"POLL_JITTER_SECONDS ({s.poll_jitter:g}) must be below "
            f"POLL_INTERVAL_SECONDS ({s.poll_interval:g})."
        )
    if s.source == "replay" and not s.replay_files:
        raise ConfigError("--source replay needs at least one file to replay.")
    if s.source != "replay" and s.replay_files:
        raise ConfigError("Files are only read with --source replay.")
    if s.source != "replay" and s.replay_symbol is not None:
        raise ConfigError("REPLAY_SYMBOL (--replay-symbol) is only used with --source replay.")


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
