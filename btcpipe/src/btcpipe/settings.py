"""Settings from environment variables, with command-line flags over them: the machinery and
the rules both scripts share (each script's config.py lists its own options).

Every option names its own parser, which converts the text and checks its range; a bad value
stops the script at start with one sentence naming the variable, its flag and what is allowed.
"""

from __future__ import annotations

import argparse
import math
import re
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
TOPIC_PATTERN = re.compile(r"[a-zA-Z0-9._-]{1,249}")  # Kafka's own rule (clients' Topic.java)
HOST_PATTERN = re.compile(r"[A-Za-z0-9._-]+|\[[0-9A-Fa-f:.]+\]")  # name, IPv4 or [IPv6]
PORT_PATTERN = re.compile(r"[0-9]{1,5}")  # ASCII digits: int() also reads other scripts


class ConfigError(ValueError):
    """A setting that stops the script at start, said in one sentence."""


class Invalid(ValueError):
    """Raised by a parser: the text is not allowed; the message says what is."""


class Option(NamedTuple):
    flag: str
    env: str
    field: str  # of the script's Settings, whose default is the option's default
    help: str
    parse: Callable[[str], object]  # text -> value, or Invalid


def command_line(
    prog: str,
    description: str,
    options: Sequence[Option],
    defaults: object,
    shown: Mapping[str, str],
    hosts: str,
) -> argparse.ArgumentParser:
    """A script's parser: a flag per option, its help ending in `[ENV=default]` (`shown`
    overrides a default's text where the value itself would mislead), and --check-hosts."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="Each flag overrides its environment variable; defaults in brackets.",
    )
    for option in options:
        default = getattr(defaults, option.field)
        if isinstance(default, tuple):
            default = ",".join(default)
        text = shown.get(option.field, default)
        parser.add_argument(
            option.flag,
            dest=option.field,
            metavar=option.env,
            help=f"{option.help} [{option.env}={text}]",
        )
    parser.add_argument(
        "--check-hosts",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"resolve the {hosts} host names at start [on]",
    )
    return parser


def read_options(
    args: argparse.Namespace, env: Mapping[str, str], options: Sequence[Option]
) -> dict[str, object]:
    """The value of each option that is set (flag over environment); unset or empty keeps
    the default. Raises ConfigError for the first text its parser refuses."""
    values: dict[str, object] = {}
    for option in options:
        text = getattr(args, option.field) or env.get(option.env)
        if not text:
            continue
        try:
            values[option.field] = option.parse(text)
        except Invalid as rule:
            raise ConfigError(
                f"{option.env} ({option.flag}) must be {rule}, not {text!r}."
            ) from None
    return values


def check_hosts_resolve(names: Iterable[tuple[str, str]]) -> None:
    """(host, variable) pairs. Unknown host names are configuration mistakes: say so now, not
    in a retry loop."""
    for host, var in names:
        try:
            socket.getaddrinfo(host, None)
        except socket.gaierror:
            raise ConfigError(f"{var} names host {host!r}, which cannot be resolved.") from None


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


log_level = one_of(LOG_LEVELS, lambda text: text.strip().upper())


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


def kafka_host_names(bootstrap_servers: str) -> list[tuple[str, str]]:
    """The brokers' host names, as check_hosts_resolve takes them."""
    return [(host, "KAFKA_BOOTSTRAP_SERVERS") for host, _ in kafka_hosts(bootstrap_servers)]


# --- the options both scripts have -------------------------------------------------------------

KAFKA_BROKERS = Option(
    "--bootstrap-servers", "KAFKA_BOOTSTRAP_SERVERS", "bootstrap_servers", "Kafka brokers",
    bootstrap_servers,
)  # fmt: skip
LOG_LEVEL = Option(
    "--log-level", "LOG_LEVEL", "log_level", "DEBUG, INFO, WARNING or ERROR", log_level
)


def kafka_topic(help: str) -> Option:
    return Option("--topic", "KAFKA_TOPIC", "topic", help, topic_name)
