"""Shared fixtures: one real broker and one real PostgreSQL server per test session."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The scripts are flat folders of modules, run as `cd producer && python producer.py`; tests
# import their pure cores the same way.
for folder in ("producer", "consumer"):
    if str(ROOT / folder) not in sys.path:
        sys.path.insert(0, str(ROOT / folder))

from aggregator.postgres.store import Store  # noqa: E402
from aggregator.settings import DEFAULT_MIGRATIONS  # noqa: E402
from tests.harness import FakeBinance, PostgresServer, TansuBroker  # noqa: E402
from tests.producer_runs import BTC, ETH  # noqa: E402

# The Grafana tests' fixtures (databases read as grafana_reader, pipeline runs).
pytest_plugins = ["tests.grafana.fixtures"]

_names = itertools.count()


def pytest_report_header(config: pytest.Config) -> str:
    """Said at the top of every run: whether the tests on real Binance files will run."""
    from tests.pipeline import MISSING_SAMPLES, SAMPLES_MISSING, SHARED_DATA

    if MISSING_SAMPLES:
        return f"Binance sample files: the tests on them will be SKIPPED: {SAMPLES_MISSING}."
    return f"Binance sample files: {SHARED_DATA}"


@pytest.fixture(scope="session")
def broker() -> Iterator[TansuBroker]:
    with TansuBroker() as server:
        yield server


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture
def binance() -> Iterator[FakeBinance]:
    """A fake Binance answering BTCUSDT and ETHUSDT at tests.producer_runs' BTC and ETH."""
    with FakeBinance({"BTCUSDT": BTC, "ETHUSDT": ETH}) as fake:
        yield fake


@pytest.fixture
def database(postgres: PostgresServer) -> str:
    """A new, empty database for one test (the schema is not applied)."""
    return postgres.create_database(f"test_{next(_names)}")


@pytest.fixture
def migrated_dsn(postgres: PostgresServer, database: str) -> str:
    """The test's database with every migration applied, as the consumer applies them."""
    dsn = postgres.dsn(database)
    store = Store(dsn, DEFAULT_MIGRATIONS)
    store.migrate()
    store.close()
    return dsn


@pytest.fixture
def topic() -> str:
    """A topic name no other test uses (the broker is shared by the session)."""
    return f"btc_price_{next(_names)}"


@pytest.fixture(scope="session", autouse=True)
def replay_notes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Replays run by the tests note their progress here, not in the user's home."""
    folder = tmp_path_factory.mktemp("replay-notes")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REPLAY_STATE_DIR", str(folder))
        yield folder


# --- slow tests: last ---------------------------------------------------------------------------
# A test marked slow proves at full scale what a faster test proves with shortened timeouts.
# The test command runs them, at the end; `tests/run.sh -m "not slow"` leaves them out.


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("slow") is not None)
