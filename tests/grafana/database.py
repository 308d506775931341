"""Running provisioned queries as Grafana does: as the read-only grafana_reader role (its
password set by the deployment's own init files), in autocommit, and the frame shapes
Grafana's formats need."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.extensions

from tests.deploy import READER_PASSWORD, role_connection, run_init
from tests.harness import PostgresServer

READER_ROLE = "grafana_reader"

# PostgreSQL type OIDs as psycopg2 reports them in cursor.description.
TIMESTAMP_OIDS = {1114, 1184}
NUMERIC_OID = 1700
FLOAT8_OID = 701
NUMBER_OIDS = {20, 21, 23, 700, FLOAT8_OID}
STRING_OIDS = {19, 25, 1043}


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    type_oids: list[int]
    rows: list[tuple[Any, ...]]


@contextmanager
def reader_connection(
    postgres: PostgresServer, database: str
) -> Iterator[psycopg2.extensions.connection]:
    """A connection as grafana_reader, its password set by the deployment's own init files."""
    run_init(postgres, database)
    with role_connection(postgres, database, READER_ROLE, READER_PASSWORD) as conn:
        yield conn


def run_query(conn: psycopg2.extensions.connection, sql: str) -> QueryResult:
    with conn.cursor() as cur:
        cur.execute(sql)
        description = cur.description
        rows = cur.fetchall()
    return QueryResult([c.name for c in description], [c.type_code for c in description], rows)


def check_time_series(result: QueryResult) -> None:
    """What Grafana's time_series format needs: `time`, ascending, numbers (and label strings)."""
    assert "time" in result.columns, result.columns
    time_index = result.columns.index("time")
    times = [row[time_index] for row in result.rows]
    assert times == sorted(times), "time_series rows must be sorted by time"
    for name, oid in zip(result.columns, result.type_oids, strict=True):
        if name == "time":
            assert oid in TIMESTAMP_OIDS | NUMBER_OIDS | {NUMERIC_OID}
        else:
            assert oid in NUMBER_OIDS | STRING_OIDS, f"{name}: type {oid} (cast to float8)"


def check_table(result: QueryResult) -> None:
    for name, oid in zip(result.columns, result.type_oids, strict=True):
        assert oid != NUMERIC_OID, f"{name} is NUMERIC: cast it to float8"


def check_alert_frame(result: QueryResult) -> None:
    """One numeric column, otherwise strings: each row becomes one alert instance."""
    kinds = ["number" if oid in NUMBER_OIDS else oid for oid in result.type_oids]
    assert kinds.count("number") == 1, f"need exactly one numeric column: {result.columns}"
    assert result.type_oids[kinds.index("number")] == FLOAT8_OID
    assert all(oid in STRING_OIDS for oid in result.type_oids if oid not in NUMBER_OIDS)
