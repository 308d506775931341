"""Unit tests run no server and no process: the fixtures that start servers are refused here,
so that tests/unit.sh stays a matter of seconds (tests that need them live in integration/)."""

from __future__ import annotations

from collections.abc import Callable

import pytest


def _refused(name: str) -> Callable[[], None]:
    def fixture() -> None:
        raise pytest.UsageError(f"a unit test asked for {name!r}: move it to tests/integration/")

    fixture.__name__ = name
    return fixture


broker = pytest.fixture(_refused("broker"))
postgres = pytest.fixture(_refused("postgres"))
binance = pytest.fixture(_refused("binance"))
database = pytest.fixture(_refused("database"))
migrated_dsn = pytest.fixture(_refused("migrated_dsn"))
