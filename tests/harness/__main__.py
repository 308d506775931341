"""Run the whole pipeline without Docker: `python -m tests.harness` starts a Kafka-protocol
broker, PostgreSQL and a fake Binance on free loopback ports, prints the environment for
producer.py and consumer.py, and stops everything on Ctrl-C."""

from __future__ import annotations

import argparse
import shlex
import signal
import threading
from contextlib import ExitStack

from tests.harness import FakeBinance, PostgresServer, TansuBroker


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
        }
        lines = [f"export {key}={shlex.quote(value)}" for key, value in env.items()]
        if args.env_file:
            with open(args.env_file, "w") as out:
                out.write("\n".join(lines) + "\n")
        print("\n".join(lines))
        print(
            f"# psql: PGPASSWORD={postgres.env()['POSTGRES_PASSWORD']} psql -h 127.0.0.1 "
            f"-p {postgres.port} -U postgres eventsdb"
        )
        print("# Harness running; Ctrl-C stops it.", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
