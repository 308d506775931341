"""Schema migrations: the same numbered files applied by the consumer and by PostgreSQL's
docker entrypoint, and a database of the previous release upgraded in place by consumer.py."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from aggregator.core.migrations import MigrationError, migrations_in
from aggregator.postgres.store import Store
from aggregator.settings import DEFAULT_MIGRATIONS
from tests.deploy import entrypoint_env, run_init_file
from tests.harness import PostgresServer
from tests.pipeline import (
    Event,
    assert_tables_equal_truth,
    consumer_env,
    create_topic,
    execute,
    expected_windows,
    produce,
    produce_raw,
    query,
    random_stream,
    start_consumer,
    wait_for_total,
)

ROOT = Path(__file__).resolve().parents[2]
MIGRATE_SCRIPT = ROOT / "infra" / "00-migrate.sh"
INIT_DB_SQL = ROOT / "infra" / "init_db.sql"
PREVIOUS_RELEASE_SCHEMA = Path(__file__).parents[1] / "data" / "release1_init_db.sql"


def run_entrypoint_script(postgres: PostgresServer, database: str) -> str:
    """infra/00-migrate.sh as the postgres image's entrypoint runs it on a new volume."""
    return run_init_file(MIGRATE_SCRIPT, entrypoint_env(postgres, database)).stdout


def schema_of(dsn: str) -> list[tuple[Any, ...]]:
    """Every column, constraint and index of the public schema."""
    return query(
        dsn,
        "SELECT 'column', table_name, column_name || ' ' || data_type || ' ' || is_nullable "
        "|| ' ' || coalesce(column_default, '') FROM information_schema.columns "
        "WHERE table_schema = 'public' UNION ALL "
        "SELECT 'constraint', conrelid::regclass::text, pg_get_constraintdef(oid) "
        "FROM pg_constraint WHERE connamespace = 'public'::regnamespace UNION ALL "
        "SELECT 'index', tablename, indexdef FROM pg_indexes WHERE schemaname = 'public' "
        "ORDER BY 1, 2, 3",
    )


def test_the_consumer_applies_each_file_once_in_order_records_it_and_keeps_the_data(
    postgres, database
):
    dsn = postgres.dsn(database)
    names = [path.stem for path in sorted(DEFAULT_MIGRATIONS.glob("*.sql"))]
    assert names[:2] == ["001_initial_schema", "002_exactly_once"]
    store = Store(dsn, DEFAULT_MIGRATIONS)
    try:
        assert store.migrate() == names
        fill_as_the_previous_release(dsn, "btc_price", "g", random_stream(random.Random(3), 20))
        before = table_rows(dsn)
        assert store.migrate() == []  # every start: nothing left to apply, data kept
        assert table_rows(dsn) == before and all(before.values())
    finally:
        store.close()
    recorded = query(dsn, "SELECT version, name FROM schema_migrations ORDER BY 1")
    assert recorded == [(i + 1, name) for i, name in enumerate(names)]


def test_every_file_runs_twice(postgres, database):
    """Idempotent files: a database the first release made (no record yet) takes them all."""
    dsn = postgres.dsn(database)
    for _ in range(2):
        for path in sorted(DEFAULT_MIGRATIONS.glob("*.sql")):
            execute(dsn, path.read_text())
    tables = query(
        dsn,
        "SELECT count(*) FROM unnest(%s::text[]) AS t(name) WHERE to_regclass(name) IS NOT NULL",
        (
            [
                "five_min_bitcoin_event",
                "pipeline_metrics",
                "consumer_offsets",
                "dead_letter_events",
                "rolling_avg_30min",
                "schema_migrations",
                "stream_marks",
                "table_owner",
            ],
        ),
    )
    assert tables == [(8,)]


def test_the_entrypoint_script_and_the_consumer_apply_the_same_files(postgres):
    by_script, by_consumer = (
        postgres.create_database("by_script"),
        postgres.create_database("by_consumer"),
    )
    output = run_entrypoint_script(postgres, by_script)
    names = [m.name for m in migrations_in(DEFAULT_MIGRATIONS)]
    assert [line.split()[-1] for line in output.splitlines()] == names
    store = Store(postgres.dsn(by_consumer), DEFAULT_MIGRATIONS)
    assert store.migrate() == names
    store.close()
    recorded = "SELECT version, name FROM schema_migrations ORDER BY 1"
    assert query(postgres.dsn(by_script), recorded) == query(postgres.dsn(by_consumer), recorded)
    assert schema_of(postgres.dsn(by_script)) == schema_of(postgres.dsn(by_consumer))
    # The consumer's start on the volume the entrypoint made: nothing left to do.
    store = Store(postgres.dsn(by_script), DEFAULT_MIGRATIONS)
    assert store.migrate() == []
    store.close()


def test_init_db_sql_is_every_migration_in_order_and_applies_the_same_schema(postgres):
    """infra/init_db.sql, the schema whole for reading and for psql by hand, lists every
    migration file in order; applied with psql it gives the schema the consumer gives, and the
    consumer's first start then only records the migrations."""
    listed = re.findall(r"^\\ir migrations/(\S+)\.sql$", INIT_DB_SQL.read_text(), re.MULTILINE)
    assert listed == [m.name for m in migrations_in(DEFAULT_MIGRATIONS)]
    by_psql, by_consumer = (
        postgres.create_database("by_psql"),
        postgres.create_database("by_consumer_too"),
    )
    run_init_file(INIT_DB_SQL, entrypoint_env(postgres, by_psql))
    store = Store(postgres.dsn(by_consumer), DEFAULT_MIGRATIONS)
    store.migrate()
    store.close()
    tables = "SELECT * FROM schema_migrations"  # the consumer's record, not the schema itself
    assert [
        row for row in schema_of(postgres.dsn(by_psql)) if "schema_migrations" not in row[1]
    ] == [row for row in schema_of(postgres.dsn(by_consumer)) if "schema_migrations" not in row[1]]
    store = Store(postgres.dsn(by_psql), DEFAULT_MIGRATIONS)
    store.migrate()  # idempotent files: applied again harmlessly, and recorded
    store.close()
    assert len(query(postgres.dsn(by_psql), tables)) == len(listed)


def test_a_database_newer_than_the_consumer_is_refused(migrated_dsn):
    execute(migrated_dsn, "INSERT INTO schema_migrations (version, name) VALUES (99, '099_x')")
    store = Store(migrated_dsn, DEFAULT_MIGRATIONS)
    with pytest.raises(MigrationError, match="schema version 99, newer than this consumer"):
        store.migrate()
    store.close()


@pytest.mark.parametrize(
    ("names", "words"),
    [
        (["001_a.sql", "002_b.sql", "4_c.sql"], "is not named like"),
        (["001_a.sql", "003_c.sql"], "not numbered 1, 2, 3"),
        (["001_a.sql", "001_b.sql"], "not numbered 1, 2, 3"),
        ([], "holds no migrations .*: MIGRATIONS_DIR .* must name"),
    ],
)
def test_a_folder_of_misnamed_migrations_is_refused(tmp_path, names, words):
    for name in names:
        (tmp_path / name).write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=words):
        migrations_in(tmp_path)


def test_a_migrations_folder_that_does_not_exist_is_named():
    with pytest.raises(MigrationError, match="is not a folder: MIGRATIONS_DIR"):
        migrations_in(Path("/nonexistent/migrations"))


def fill_as_the_previous_release(dsn: str, topic: str, group: str, events: list[Event]) -> None:
    """The rows the previous release's consumer left after reading `events` and one bad
    message from partition 0: windows, its offset, a metrics row and a dead letter."""
    rows = [
        (
            symbol,
            start,
            w["event_count"],
            w["price_sum"],
            w["min_value"],
            w["max_value"],
            w["open_value"],
            w["close_value"],
            w["first_event_at"],
            w["last_event_at"],
        )
        for (symbol, start, _), w in expected_windows(events).items()
    ]
    ms = "to_timestamp(0) + %s * interval '1 millisecond'"
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        for row in rows:
            cur.execute(
                "INSERT INTO five_min_bitcoin_event (symbol, five_min_start, five_min_end, "
                "event_count, price_sum, min_value, max_value, open_value, close_value, "
                f"first_event_at, last_event_at) VALUES (%s, {ms}, {ms} + interval '5 minutes', "
                f"%s, %s, %s, %s, %s, %s, {ms}, {ms})",
                (row[0], row[1], row[1], *row[2:]),
            )
        cur.execute(
            "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset) "
            "VALUES (%s, %s, 0, %s)",
            (group, topic, len(events) + 1),
        )
        cur.execute(
            "INSERT INTO pipeline_metrics (metric_timestamp, instance_id, interval_seconds, "
            "events_processed, live_events, replayed_events, events_per_second, "
            "data_size_kb, late_events, invalid_events, windows_updated, flush_duration_ms) "
            "VALUES (now() - interval '1 hour', 'old', 30, %s, %s, 0, 1, 1, 0, 1, %s, 5)",
            (len(events), len(events), len(rows)),
        )
        cur.execute(
            'INSERT INTO dead_letter_events (topic, partition, "offset", raw_key, raw_value, '
            "raw_size, error, received_at) VALUES (%s, 0, %s, 'BTCUSDT', '{bad', 4, "
            "'invalid JSON', now())",
            (topic, len(events)),
        )
    conn.close()


def table_rows(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tables the consumer writes."""
    tables = [
        "five_min_bitcoin_event",
        "consumer_offsets",
        "pipeline_metrics",
        "dead_letter_events",
    ]
    return {table: query(dsn, f"SELECT * FROM {table} ORDER BY 1, 2") for table in tables}


def test_a_database_of_the_previous_release_upgrades_in_place_and_continues_exactly(
    broker, postgres, database, topic
):
    """Made by the previous release's schema and filled as its consumer left it, half-way
    through a topic of messages without identity; consumer.py upgrades it at start, keeps
    every row and continues from the stored offset, through old and new messages."""
    dsn = postgres.dsn(database)
    execute(dsn, PREVIOUS_RELEASE_SCHEMA.read_text())
    create_topic(broker.bootstrap, topic, partitions=1)
    rng = random.Random(12)
    old = [Event(e.symbol, e.price, e.event_time) for e in random_stream(rng, 900)]  # no id
    read_before, unread = old[:500], old[500:]
    new = random_stream(rng, 300)  # with identity, from an upgraded producer
    produce(broker.bootstrap, topic, read_before)
    produce_raw(broker.bootstrap, topic, [b"{bad"], key=b"BTCUSDT")
    produce(broker.bootstrap, topic, unread + new)
    group = "btc-aggregator-before"
    fill_as_the_previous_release(dsn, topic, group, read_before)
    before = query(dsn, "SELECT count(*), sum(event_count) FROM five_min_bitcoin_event")[0]

    env = consumer_env(broker, postgres, database, topic, group=group)
    with start_consumer(env) as consumer:
        wait_for_total(dsn, len(old) + len(new), 90, [consumer])
        assert consumer.stop() == 0
        output = consumer.output()
    assert "Applied migration 001_initial_schema" in output
    assert "Applied migration 002_exactly_once" in output
    assert before[1] == len(read_before) and before[0] > 0
    assert_tables_equal_truth(dsn, old + new)
    assert query(dsn, "SELECT group_id FROM table_owner") == [(group,)]
    assert query(dsn, "SELECT next_offset FROM consumer_offsets") == [(len(old) + len(new) + 1,)]
    assert query(dsn, "SELECT count(*) FROM dead_letter_events") == [(1,)]
    metrics = query(dsn, "SELECT instance_id, duplicate_events FROM pipeline_metrics")
    assert ("old", 0) in metrics and len(metrics) > 1
    newest = len(migrations_in(DEFAULT_MIGRATIONS))
    assert query(dsn, "SELECT max(version) FROM schema_migrations") == [(newest,)]
    store = Store(dsn, DEFAULT_MIGRATIONS)
    assert store.migrate() == []  # the next start has nothing to apply
    store.close()
