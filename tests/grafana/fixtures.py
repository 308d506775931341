"""Fixtures of the Grafana tests: databases as compose deploys them, read as grafana_reader,
and the pipeline runs that fill them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg2.extensions
import pytest

from tests.deploy import run_init
from tests.grafana.database import reader_connection
from tests.grafana.pipeline_runs import HealthyRun, Pipeline, healthy_run
from tests.harness import PostgresServer, TansuBroker


@pytest.fixture
def schema_dsn(postgres: PostgresServer, database: str) -> str:
    """A database as PostgreSQL's entrypoint leaves a new compose volume (tests/deploy.py)."""
    run_init(postgres, database)
    return postgres.dsn(database)


@pytest.fixture
def reader(
    postgres: PostgresServer, database: str, schema_dsn: str
) -> Iterator[psycopg2.extensions.connection]:
    """grafana_reader on a database with the schema only."""
    with reader_connection(postgres, database) as conn:
        yield conn


@pytest.fixture(scope="module")
def healthy(
    broker: TansuBroker, postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> HealthyRun:
    """A healthy pipeline run (tests.grafana.pipeline_runs.healthy_run), one per test module:
    its freshness is what the alert tests measure."""
    return healthy_run(broker, postgres, tmp_path_factory.mktemp("grafana-healthy"))


@pytest.fixture(scope="module")
def healthy_reader(
    healthy: HealthyRun, postgres: PostgresServer
) -> Iterator[psycopg2.extensions.connection]:
    with reader_connection(postgres, healthy.pipeline.database) as conn:
        yield conn


@pytest.fixture
def pipeline(
    broker: TansuBroker, postgres: PostgresServer, database: str, topic: str, tmp_path: Path
) -> Pipeline:
    """A pipeline of its own for one scenario; consumer.py creates the schema."""
    return Pipeline.create(broker, postgres, database, topic, tmp_path)
