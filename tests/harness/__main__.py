"""Run the whole pipeline without Docker: `python -m tests.harness` starts a Kafka-protocol
broker, PostgreSQL and a fake Binance on free loopback ports, prints the environment for
producer.py and consumer.py, and stops everything on Ctrl-C.

It also prints how to break things by hand: the fake Binance's fault control URL
(tests/harness/fault_control.py) and the pids to freeze the broker or PostgreSQL with."""

from __future__ import annotations

import argparse
import shlex
import signal
import threading
from contextlib import ExitStack

from tests.harness import FakeBinance, PostgresServer, TansuBroker
from tests.harness.fake_binance import CONTROL_PREFIX


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.harness", description=__doc__)
    parser.add_argument("--env-file", help="also write the environment to this file")
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with ExitStack() as servers:
        broker = servers.enter_context(TansuBroker())
        postgres = servers.enter_context(PostgresServer())
        postgres.create_database("eventsdb")
        binance = servers.enter_context(
            FakeBinance({"BTCUSDT": "43250.75000000", "ETHUSDT": "2300.10000000"})
        )
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
            "BINANCE_BASE_URL": binance.base_url,
            **postgres.env("eventsdb"),
            # Not read by the scripts: handles for breaking things by hand.
            "HARNESS_CONTROL_URL": binance.base_url + CONTROL_PREFIX,
            "HARNESS_BROKER_PID": str(broker.pid),
            "HARNESS_POSTGRES_PID": str(postgres.pid),
        }
        lines = [f"export {key}={shlex.quote(value)}" for key, value in env.items()]
        if args.env_file:
            with open(args.env_file, "w") as out:
                out.write("\n".join(lines) + "\n")
        print("\n".join(lines))
        print(how_to_break_things(env, postgres.port), flush=True)
        print("# Harness running; Ctrl-C stops it.", flush=True)
        stop.wait()


def how_to_break_things(env: dict[str, str], postgres_port: int) -> str:
    control, broker, postgres = (
        env["HARNESS_CONTROL_URL"],
        env["HARNESS_BROKER_PID"],
        env["HARNESS_POSTGRES_PID"],
    )
    return "\n".join(
        [
            f"# psql: PGPASSWORD={env['POSTGRES_PASSWORD']} psql -h 127.0.0.1 "
            f"-p {postgres_port} -U postgres eventsdb",
            f"# Binance faults: curl {control}  (lists them), e.g.",
            f"#   curl -X POST '{control}/faults?kind=rate-limited&retry_after=5'",
            f"#   curl -X POST '{control}/faults?kind=server-error&status=503&count=5'",
            f"#   curl -X DELETE '{control}/faults'",
            f"# Freeze the broker:  kill -STOP {broker}    thaw: kill -CONT {broker}",
            f"# Freeze PostgreSQL:  kill -STOP {postgres} && pkill -STOP -P {postgres}"
            f"    thaw: pkill -CONT -P {postgres}; kill -CONT {postgres}",
        ]
    )


if __name__ == "__main__":
    main()
