"""Run the whole pipeline without Docker: `python -m tests.harness` starts a Kafka-protocol
broker, PostgreSQL and a fake Binance (REST and WebSocket, trading BTCUSDT and ETHUSDT) on
loopback ports, prints the environment for producer.py and consumer.py, and stops everything
on Ctrl-C.

It also prints how to break things by hand: the fake Binance's fault control URL
(tests/harness/fault_control.py), the pids to freeze the broker or PostgreSQL with, and the
signal that replaces the broker by an empty one. It watches the broker and PostgreSQL: when
either exits, it says so and stops everything with exit code 1."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import psycopg2

from btcpipe.settings import ConfigError, Invalid, Option, number, read_options
from tests.harness import FakeBinance, PostgresServer, TansuBroker
from tests.harness.fake_binance import CONTROL_PREFIX
from tests.harness.postgres import PASSWORD, SUPERUSER

T = TypeVar("T")
D = TypeVar("D")
PROG = "python -m tests.harness"
DATABASE = "eventsdb"
START_PRICES = {"BTCUSDT": "43250.75000000", "ETHUSDT": "2300.10000000"}
WATCH_SECONDS = 0.2  # how soon a dead server or a signal is noticed
LOG_TAIL_LINES = 3


@dataclass(frozen=True)
class HarnessSettings:
    env_file: Path | None = None
    data_dir: Path | None = None
    kafka_port: int = 0
    postgres_port: int = 0
    binance_port: int = 0
    binance_ws_port: int = 0
    trades_per_second: float = 5.0


def port_number(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise Invalid("a port number from 0 (a free port) to 65535")
    return int(text)


def folder(text: str) -> Path:
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise Invalid("a folder (made if missing)")
    return path.resolve()


def writable_file(text: str) -> Path:
    path = Path(text).expanduser()
    if path.is_dir() or not path.parent.is_dir():
        raise Invalid("a file in an existing folder")
    return path


OPTIONS = [
    Option("--env-file", "HARNESS_ENV_FILE", "env_file",
           "also write the environment to this file [none]", writable_file),
    Option("--data-dir", "HARNESS_DATA_DIR", "data_dir",
           "keep PostgreSQL's data in this folder and start on it again next time (initdb "
           "only while it is empty) [a throwaway folder]", folder),
    Option("--kafka-port", "HARNESS_KAFKA_PORT", "kafka_port",
           "the broker's port [0: a free port]", port_number),
    Option("--postgres-port", "HARNESS_POSTGRES_PORT", "postgres_port",
           "PostgreSQL's port [0: a free port]", port_number),
    Option("--binance-port", "HARNESS_BINANCE_PORT", "binance_port",
           "the fake Binance's HTTP port [0: a free port]", port_number),
    Option("--binance-ws-port", "HARNESS_BINANCE_WS_PORT", "binance_ws_port",
           "the fake Binance's WebSocket port [0: a free port]", port_number),
    Option("--trades-per-second", "HARNESS_TRADES_PER_SECOND", "trades_per_second",
           "trades a second on each symbol's tape [5; 0: none until added by hand]",
           number(float, "a number of trades a second", 0, 10_000)),
]  # fmt: skip


def load_settings(argv: Sequence[str], env: Mapping[str, str]) -> HarnessSettings:
    """Flags over environment variables; ConfigError names the first bad one."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__,
        epilog="Each flag overrides its environment variable; defaults in brackets.",
    )
    for option in OPTIONS:
        parser.add_argument(option.flag, dest=option.field, metavar=option.env, help=option.help)
    values = read_options(parser.parse_args(argv), env, OPTIONS)
    defaults = HarnessSettings()
    return HarnessSettings(
        env_file=_typed(values, "env_file", Path, defaults.env_file),
        data_dir=_typed(values, "data_dir", Path, defaults.data_dir),
        kafka_port=_typed(values, "kafka_port", int, defaults.kafka_port),
        postgres_port=_typed(values, "postgres_port", int, defaults.postgres_port),
        binance_port=_typed(values, "binance_port", int, defaults.binance_port),
        binance_ws_port=_typed(values, "binance_ws_port", int, defaults.binance_ws_port),
        trades_per_second=_typed(values, "trades_per_second", float, defaults.trades_per_second),
    )


def _typed(values: Mapping[str, object], field: str, kind: type[T], default: D) -> T | D:
    """A parsed option's value, checked to be of the type its parser makes."""
    if field not in values:
        return default
    value = values[field]
    assert isinstance(value, kind), f"{field} parsed to {value!r}"
    return value


class WatchedServer(Protocol):
    @property
    def returncode(self) -> int | None: ...

    def log_text(self) -> str: ...


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(sys.argv[1:] if argv is None else argv, os.environ)
    except ConfigError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    stop, replace_broker = threading.Event(), threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: replace_broker.set())
    with ExitStack() as servers:
        try:
            broker = servers.enter_context(TansuBroker(settings.kafka_port))
            postgres = servers.enter_context(
                PostgresServer(settings.postgres_port, data_dir=settings.data_dir)
            )
        except RuntimeError as error:
            print(f"{PROG}: error: {error}", file=sys.stderr)
            return 2
        ensure_database(postgres, DATABASE)
        binance = servers.enter_context(fake_binance(settings))
        env = environment(broker, postgres, binance)
        publish(env, settings.env_file)
        print(how_to_break_things(env), flush=True)
        print("# Harness running; Ctrl-C stops it.", flush=True)
        return watch(broker, postgres, binance, settings, stop, replace_broker)


def fake_binance(settings: HarnessSettings) -> FakeBinance:
    """Both symbols trade on tapes, and ticker/price answers their last prices."""
    binance = FakeBinance(prices={}, port=settings.binance_port, ws_port=settings.binance_ws_port)
    for symbol, start in START_PRICES.items():
        binance.add_tape(symbol, start)
        binance.set_trade_rate(symbol, settings.trades_per_second)
    return binance


def ensure_database(postgres: PostgresServer, name: str) -> None:
    """Create the database unless a kept data folder has it already."""
    conn = psycopg2.connect(postgres.dsn("postgres"))
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %(name)s", {"name": name})
            exists = cur.fetchone() is not None
    finally:
        conn.close()
    if not exists:
        postgres.create_database(name)


def psql_command(postgres: PostgresServer) -> str:
    psql = "psql" if _on_path("psql") else str(postgres.bindir / "psql")
    url = f"postgresql://{SUPERUSER}:{PASSWORD}@{postgres.host}:{postgres.port}/{DATABASE}"
    return f"{psql} {url}"


def _on_path(program: str) -> bool:
    return any(
        os.access(Path(entry) / program, os.X_OK)
        for entry in os.environ.get("PATH", "").split(os.pathsep)
        if entry
    )


def environment(
    broker: TansuBroker, postgres: PostgresServer, binance: FakeBinance
) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "BINANCE_BASE_URL": binance.base_url,
        "BINANCE_WS_URL": binance.ws_url,
        **postgres.env(DATABASE),
        # Not read by the scripts: handles for looking and breaking things by hand.
        "HARNESS_PSQL": psql_command(postgres),
        "HARNESS_CONTROL_URL": binance.base_url + CONTROL_PREFIX,
        "HARNESS_BROKER_PID": str(broker.pid),
        "HARNESS_POSTGRES_PID": str(postgres.pid),
        "HARNESS_PID": str(os.getpid()),
    }


def export_lines(env: dict[str, str]) -> str:
    return "".join(f"export {key}={shlex.quote(value)}\n" for key, value in env.items())


def publish(env: dict[str, str], env_file: Path | None) -> None:
    """Print the environment as `export` lines, and write them to env_file if given."""
    if env_file is not None:
        env_file.write_text(export_lines(env))
    print(export_lines(env), end="", flush=True)


def how_to_break_things(env: dict[str, str]) -> str:
    control, broker, postgres = (
        env["HARNESS_CONTROL_URL"],
        env["HARNESS_BROKER_PID"],
        env["HARNESS_POSTGRES_PID"],
    )
    return "\n".join(
        [
            f"# psql: {env['HARNESS_PSQL']}",
            f"# Binance faults: curl {control}  (lists them all), e.g.",
            f"#   curl -X POST '{control}/faults?kind=rate-limited&retry_after=5'",
            f"#   curl -X POST '{control}/faults?kind=server-error&status=503&count=5'",
            f"#   curl -X POST '{control}/faults?kind=banned&retry_after=60&path=aggTrades'",
            f"#   curl -X DELETE '{control}/faults'",
            f"# Trades: curl '{control}/trades?symbol=BTCUSDT'  (the tape), and",
            f"#   curl -X POST '{control}/trades?symbol=BTCUSDT&count=100'",
            f"#   curl -X POST '{control}/trade-rate?symbol=BTCUSDT&per_second=50'",
            f"#   curl -X POST '{control}/gap?symbol=BTCUSDT&ids=10'      (ids never served)",
            f"#   curl -X POST '{control}/placeholder?symbol=BTCUSDT'  (an invalid archive row)",
            f"# WebSockets ({env['BINANCE_WS_URL']}): curl '{control}/streams', and",
            f"#   curl -X POST '{control}/streams/cut'",
            f"#   curl -X POST '{control}/streams/shutdown-notice?close_after=5'",
            f"#   curl -X POST '{control}/streams/stall?seconds=30'",
            f"# Freeze the broker:  kill -STOP {broker}    thaw: kill -CONT {broker}",
            f"# Replace the broker by an empty one (same port): kill -USR1 {env['HARNESS_PID']}",
            f"# Freeze PostgreSQL:  kill -STOP {postgres} && pkill -STOP -P {postgres}"
            f"    thaw: pkill -CONT -P {postgres}; kill -CONT {postgres}",
        ]
    )


def watch(
    broker: TansuBroker,
    postgres: PostgresServer,
    binance: FakeBinance,
    settings: HarnessSettings,
    stop: threading.Event,
    replace_broker: threading.Event,
) -> int:
    """Until stopped: replace the broker when signalled; 1 as soon as a server exits."""
    while not stop.wait(WATCH_SECONDS):
        if replace_broker.is_set():
            replace_broker.clear()
            broker.restart_empty()
            print(f"# Broker replaced by an empty one on {broker.bootstrap}: pid {broker.pid}")
            if settings.env_file is not None:  # its broker pid is the new one
                settings.env_file.write_text(export_lines(environment(broker, postgres, binance)))
        for name, server in (("the Kafka broker (Tansu)", broker), ("PostgreSQL", postgres)):
            if server.returncode is not None:
                print(exit_line(name, server), file=sys.stderr, flush=True)
                return 1
    return 0


def exit_line(name: str, server: WatchedServer) -> str:
    """One line: which server exited, its exit code and the end of its log."""
    tail = [line.strip() for line in server.log_text().splitlines() if line.strip()]
    said = " | ".join(tail[-LOG_TAIL_LINES:]) or "(its log is empty)"
    return f"{PROG}: {name} exited with code {server.returncode}; stopping everything. Log: {said}"


if __name__ == "__main__":
    sys.exit(main())
