"""The producer's settings: environment variables, with command-line flags over them.

Every option names its own parser, which converts the text and checks its range; a bad value
stops the producer at start, before anything is created, with one sentence naming the
variable and what it allows. The settings both scripts share (Kafka brokers, topic, log level)
and the machinery that reads options are in btcpipe.settings, which both scripts install.

Which source uses which option is the source registry's to say (sources/registry.py), and the
registry passes it in (`sources`): this module is a leaf, it imports only btcpipe and the
standard library. A flag the chosen source does not use is refused at start; an environment
variable it does not use is only reported (`unused_variables`), since docker compose passes
the whole .env to the container.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, cast
from urllib.parse import urlparse

from btcpipe import settings as shared
from btcpipe.contract import EARLIEST_EVENT_MS, ContractError, check_symbol
from btcpipe.settings import ConfigError, Invalid, Option

DEFAULT_REPLAY_STATE_DIR = Path("~/.cache/btc-pipeline/replay").expanduser()
MAX_SECONDS = 86_400.0  # one day: longer waits are typos, and would overflow timed waits
MAX_PARTITIONS = 2**31 - 1  # Kafka's int32
MAX_EPOCH_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
ALL_SYMBOLS = ("ALL",)  # SYMBOLS=ALL: every pair Binance lists (no such symbol exists)


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
    binance_ws_url: str = "wss://stream.binance.com:9443"
    trades_since: int | None = None  # None: the start of the current 5-minute window
    http_timeout: float = 5.0
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    delivery_timeout_ms: int = 120_000
    compression: str = "zstd"  # of the record batches (docs/benchmark.md: why this one)
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


def ws_url(text: str) -> str:
    rule = "a ws(s) URL like wss://stream.binance.com:9443, with a port 1-65535"
    url = urlparse(text.strip())
    try:
        url.port  # noqa: B018 - raises ValueError for a port outside 0-65535
    except ValueError:
        raise Invalid(rule) from None
    if url.scheme not in ("ws", "wss") or not url.hostname or url.port == 0:
        raise Invalid(rule)
    return text.strip().rstrip("/")


def utc_time_ms(text: str) -> int:
    """An ISO 8601 UTC time (2026-01-01T00:00:00Z) or epoch milliseconds, as epoch ms."""
    rule = "an ISO 8601 UTC time like 2026-01-01T00:00:00Z, or epoch milliseconds"
    text = text.strip()
    if text.isdigit():
        value = int(text)
    else:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise Invalid(rule) from None
        if when.utcoffset() != timedelta(0):
            raise Invalid(rule)
        value = int(when.timestamp() * 1000)
    if not EARLIEST_EVENT_MS <= value <= MAX_EPOCH_MS:
        raise Invalid(rule + " from 2009 on")
    return value


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


# The codecs of Kafka's record batches, as kafka-python writes them (with the codec libraries
# both scripts' requirements pin); "none" sends batches uncompressed.
COMPRESSIONS = ("none", "gzip", "snappy", "lz4", "zstd")
# The module kafka-python (kafka/codec.py) needs for each codec, and the package bringing it.
CODEC_LIBRARIES = {
    "snappy": ("snappy", "python-snappy"),
    "lz4": ("lz4.frame", "lz4"),
    "zstd": ("zstandard", "zstandard"),
}


compression = shared.one_of(COMPRESSIONS, lambda text: text.strip().lower())


def codec_library_missing(codec: str) -> str | None:
    """The package that `codec` needs and this Python lacks, or None."""
    module, package = CODEC_LIBRARIES.get(codec, ("", ""))
    if not module:
        return None
    try:
        importlib.import_module(module)
    except ImportError:
        return package
    return None


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise Invalid("a whole number") from None


def source_name(text: str) -> str:
    return text.strip().lower()


# --source as declared takes any name: its choices, and their help, are the registry's, bound
# in by `options_for` (which load_settings and build_parser use).
SOURCE_OPTION = Option(
    "--source", "PRODUCER_SOURCE", "source", "where the prices come from", source_name
)

# Every default is the Settings default above.
OPTIONS = [
    SOURCE_OPTION,
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
        "--ws-url",
        "BINANCE_WS_URL",
        "binance_ws_url",
        "Binance WebSocket market streams base URL",
        ws_url,
    ),
    Option(
        "--since",
        "TRADES_SINCE",
        "trades_since",
        "first start: from the first trade at or after this UTC time (ISO 8601 or epoch ms)",
        utc_time_ms,
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
    Option(
        "--compression",
        "KAFKA_COMPRESSION",
        "compression",
        "codec of the record batches: " + " ".join(COMPRESSIONS),
        compression,
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
EVERY_PAIR_SOURCES = ("binance", "binance-trades")  # SYMBOLS=ALL: Binance's listing
RESUME_FLAG = "--resume"  # a switch, with no environment variable: not an Option
SHOWN_DEFAULTS = {
    "replay_speed": "max",
    "replay_symbol": "from the file name",
    "seed": "random",
    "replay_state_dir": "~/.cache/btc-pipeline/replay",
    "trades_since": "the start of the current 5-minute window",
}


# --- the sources, as the registry passes them in --------------------------------------------


class SourceUse(Protocol):
    """What the command line knows of a registered source (sources.registry.Registered)."""

    @property
    def options(self) -> frozenset[str]:
        """The Settings fields the source uses."""
        ...

    @property
    def note(self) -> str:
        """A few words for --help, or ""."""
        ...


Sources = Mapping[str, SourceUse]  # by --source name


def options_for(sources: Sources) -> list[Option]:
    """OPTIONS, with --source naming the registered sources: in its help, and as what it
    allows."""
    choose = SOURCE_OPTION._replace(
        help=sources_help(sources), parse=shared.one_of(tuple(sources), source_name)
    )
    return [choose if option is SOURCE_OPTION else option for option in OPTIONS]


def sources_help(sources: Sources) -> str:
    """'binance, simulated (seeded random walk) or replay'."""
    return alternatives(
        [f"{name} ({use.note})" if use.note else name for name, use in sources.items()]
    )


def alternatives(names: Sequence[str]) -> str:
    """'a', 'a or b', 'a, b or c'."""
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]


def users_of(field: str, sources: Sources) -> str:
    """The sources that use `field`, as alternatives: 'binance or simulated'."""
    return alternatives([name for name, use in sources.items() if field in use.options])


# --- the command line ------------------------------------------------------------------------


def build_parser(sources: Sources) -> argparse.ArgumentParser:
    parser = shared.command_line(
        "producer.py",
        "Publish Binance spot prices to Kafka, one JSON message per symbol per poll.",
        options_for(sources),
        Settings(),
        SHOWN_DEFAULTS,
        hosts="Binance and Kafka",
    )
    parser.add_argument(
        "files", nargs="*", type=Path, help="Binance public-data CSV or zip files (--source replay)"
    )
    parser.add_argument(
        RESUME_FLAG,
        action="store_true",
        help="replay: skip the lines of a file that Kafka acknowledged in an earlier run to the "
        "same topic (without it they are sent again, and the consumer counts them once)",
    )
    return parser


def load_settings(
    argv: Sequence[str], sources: Sources, env: Mapping[str, str] = os.environ
) -> Settings:
    """Parse flags over environment; raise ConfigError for any bad value, for a flag the
    chosen source does not use, and for settings that do not go together."""
    args = build_parser(sources).parse_args(argv)
    values = shared.read_options(args, env, options_for(sources))
    settings = settings_from(values, replay_files=tuple(args.files), resume=args.resume)
    _refuse_unused_flags(args, settings.source, sources)
    _check_together(settings, sources)
    if args.check_hosts:
        shared.check_hosts_resolve(_host_names(settings, sources[settings.source].options))
    return settings


def settings_from(values: Mapping[str, object], **more: object) -> Settings:
    """Settings from values by field name, each made by the parser its Option names. Each
    parser's result has its field's type (the tests read every option back), which a mapping
    of names to values cannot say: this is the one cast."""
    return Settings(**cast("dict[str, Any]", {**values, **more}))


def unused_variables(
    settings: Settings, sources: Sources, env: Mapping[str, str] = os.environ
) -> list[str]:
    """The environment variables set (not empty) for options the chosen source does not use:
    reported at start, never refused (docker compose passes the whole .env to the container)."""
    used = sources[settings.source].options
    return [option.env for option in OPTIONS if env.get(option.env) and option.field not in used]


def _refuse_unused_flags(args: argparse.Namespace, chosen: str, sources: Sources) -> None:
    """A flag says "use this": one the chosen source would ignore is a mistake to say now."""
    given = [(o.field, f"{o.flag} ({o.env})") for o in OPTIONS if getattr(args, o.field)]
    if args.resume:
        given.append(("resume", RESUME_FLAG))
    used = sources[chosen].options
    for field, named in given:
        if field not in used:
            raise ConfigError(
                f"{named} is only used with --source {users_of(field, sources)}, not {chosen}."
            )


def _check_together(s: Settings, sources: Sources) -> None:
    """Rules between settings, once each is valid on its own."""
    used = sources[s.source].options
    # Only Binance's own sources can ask for every pair there is.
    every_pair_elsewhere = "symbols" in used and s.source not in EVERY_PAIR_SOURCES
    if "ALL" in s.symbols and (len(s.symbols) > 1 or every_pair_elsewhere):
        raise ConfigError("SYMBOLS=ALL (every pair Binance lists) stands alone, with Binance.")
    missing = codec_library_missing(s.compression)
    if missing:
        raise ConfigError(
            f"KAFKA_COMPRESSION={s.compression} needs the {missing} package, which is not "
            "installed here: pip install -r producer/requirements.txt, or choose another codec."
        )
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
    reads_files = "replay_files" in used
    if reads_files and not s.replay_files:
        raise ConfigError(f"--source {s.source} needs at least one file to replay.")
    if not reads_files and s.replay_files:
        raise ConfigError(f"Files are only read with --source {users_of('replay_files', sources)}.")


def _host_names(s: Settings, used: frozenset[str]) -> list[tuple[str, str]]:
    names = shared.kafka_host_names(s.bootstrap_servers)
    if "binance_base_url" in used:
        names.append((urlparse(s.binance_base_url).hostname or "", "BINANCE_BASE_URL"))
    if "binance_ws_url" in used:
        names.append((urlparse(s.binance_ws_url).hostname or "", "BINANCE_WS_URL"))
    return names
