"""Producer configuration: environment variables, with command-line flags over them.

Every option names its own parser, which converts the text and checks its range; a bad value
stops the producer at start, before anything is created, with one sentence naming the
variable and what it allows. The settings both scripts share (Kafka brokers, topic, log level)
and the machinery that reads options are in btcpipe.settings, which both scripts install.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from btcpipe import settings as shared
from btcpipe.contract import ContractError, check_symbol
from btcpipe.settings import ConfigError, Invalid, Option
from pricefeed.sources.registry import SOURCE_NAMES, sources_help

DEFAULT_REPLAY_STATE_DIR = Path("~/.cache/btc-pipeline/replay").expanduser()
MAX_SECONDS = 86_400.0  # one day: longer waits are typos, and would overflow timed waits
MAX_PARTITIONS = 2**31 - 1  # Kafka's int32


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


# --- parsers of the producer's own settings: text -> value, or Invalid saying what is allowed --

seconds = shared.number(float, "a finite number of seconds", 0, MAX_SECONDS, low_open=True)


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


# Every default is the Settings default above.
_OPTIONS = [
    Option(
        "--source",
        "PRODUCER_SOURCE",
        "source",
        sources_help(),
        shared.one_of(SOURCE_NAMES, lambda text: text.strip().lower()),
    ),
    shared.KAFKA_BROKERS,
    shared.kafka_topic("topic to publish to"),
    Option(
        "--partitions",
        "KAFKA_TOPIC_PARTITIONS",
        "topic_partitions",
        "partitions if it is created",
        shared.number(int, "a whole number", 1, MAX_PARTITIONS),
    ),
    Option(
        "--symbols",
        "SYMBOLS",
        "symbols",
        "comma-separated Binance symbols, or ALL pairs",
        symbol_list,
    ),
    Option(
        "--interval", "POLL_INTERVAL_SECONDS", "poll_interval", "seconds between polls", seconds
    ),
    Option(
        "--jitter",
        "POLL_JITTER_SECONDS",
        "poll_jitter",
        "random extra delay per tick, seconds",
        shared.number(float, "a finite number of seconds", 0, MAX_SECONDS),
    ),
    Option(
        "--binance-url", "BINANCE_BASE_URL", "binance_base_url", "Binance REST base URL", http_url
    ),
    Option(
        "--timeout",
        "HTTP_TIMEOUT_SECONDS",
        "http_timeout",
        "HTTP timeout per request, seconds",
        seconds,
    ),
    Option(
        "--backoff-base",
        "BACKOFF_BASE_SECONDS",
        "backoff_base",
        "first retry delay, seconds",
        seconds,
    ),
    Option(
        "--backoff-max",
        "BACKOFF_MAX_SECONDS",
        "backoff_max",
        "longest retry delay, seconds",
        seconds,
    ),
    Option(
        "--delivery-timeout-ms",
        "KAFKA_DELIVERY_TIMEOUT_MS",
        "delivery_timeout_ms",
        "how long Kafka may take to acknowledge a message before it is sent again",
        shared.number(int, "a whole number of milliseconds", 1000, 2**31 - 1),
    ),
    Option("--seed", "SIMULATION_SEED", "seed", "random seed of --source simulated", whole_number),
    Option(
        "--speed",
        "REPLAY_SPEED",
        "replay_speed",
        "replay N times real time, or 'max'",
        replay_speed,
    ),
    Option(
        "--replay-symbol",
        "REPLAY_SYMBOL",
        "replay_symbol",
        "symbol of every replayed file, for files whose name does not say it",
        binance_symbol,
    ),
    Option(
        "--replay-state-dir",
        "REPLAY_STATE_DIR",
        "replay_state_dir",
        "where a replay notes how far Kafka acknowledged each file",
        lambda text: Path(text.strip()).expanduser(),
    ),
    shared.LOG_LEVEL,
]
_SHOWN_DEFAULTS = {
    "replay_speed": "max",
    "replay_symbol": "from the file name",
    "seed": "random",
    "replay_state_dir": "~/.cache/btc-pipeline/replay",
}


# --- the command line ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = shared.command_line(
        "producer.py",
        "Publish Binance spot prices to Kafka, one JSON message per symbol per poll.",
        _OPTIONS,
        Settings(),
        _SHOWN_DEFAULTS,
        hosts="Binance and Kafka",
    )
    parser.add_argument(
        "files", nargs="*", type=Path, help="Binance public-data CSV or zip files (--source replay)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="replay: skip the lines of a file that Kafka acknowledged in an earlier run to the "
        "same topic (without it they are sent again, and the consumer counts them once)",
    )
    return parser


def load_settings(argv: Sequence[str], env: Mapping[str, str] = os.environ) -> Settings:
    """Parse flags over environment; raise ConfigError for any bad value."""
    args = build_parser().parse_args(argv)
    values = shared.read_options(args, env, _OPTIONS)
    settings = Settings(**values, replay_files=tuple(args.files), resume=args.resume)
    _check_together(settings)
    if args.check_hosts:
        shared.check_hosts_resolve(_host_names(settings))
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


def _host_names(s: Settings) -> list[tuple[str, str]]:
    names = shared.kafka_host_names(s.bootstrap_servers)
    if s.source == "binance":
        names.append((urlparse(s.binance_base_url).hostname or "", "BINANCE_BASE_URL"))
    return names
