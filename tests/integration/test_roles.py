"""The deployment's two login roles, each holding exactly what its user needs.

The database is set up as PostgreSQL's entrypoint sets up a new compose volume (tests/deploy.py:
the superuser applies infra/migrations/ with infra/00-migrate.sh, then the password script,
which sets both roles' passwords).

- pipeline_writer: consumer.py runs as the role docker-compose.yml gives it, with the real
  broker, and must store exactly what was published, across a restart; the role can do
  nothing else.
- grafana_reader: Grafana's datasource (its queries: test_grafana_panels.py and
  test_grafana_alerts.py) reads the dashboard tables and can do nothing else.
"""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import psycopg2
import psycopg2.errors
import pytest
import yaml

from aggregator.settings import DEFAULT_MIGRATIONS
from tests.deploy import (
    COMPOSE_FILE,
    PASSWORDS,
    entrypoint_env,
    role_connection,
    run_init,
    run_init_file,
)
from tests.grafana.database import READER_ROLE
from tests.harness import PostgresServer, TansuBroker
from tests.pipeline import (
    assert_tables_equal_truth,
    consumer_env,
    create_topic,
    produce,
    produce_raw,
    query,
    random_stream,
    start_consumer,
    wait_for_total,
)

WRITER = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["consumer"]["environment"][
    "POSTGRES_USER"
]
PASSWORD_SCRIPT = Path(__file__).resolve().parents[2] / "infra" / "10-role-passwords.sh"
READER = READER_ROLE  # the user of grafana/datasources/datasource.yml
ROLE_PASSWORDS = {
    WRITER: PASSWORDS["CONSUMER_DB_PASSWORD"],
    READER: PASSWORDS["GRAFANA_DB_PASSWORD"],
}
WRITER_PASSWORD = ROLE_PASSWORDS[WRITER]

# What the consumer's SQL needs (consumer/aggregator/postgres/, core/windows.py), and nothing more.
WRITER_PRIVILEGES = {
    ("five_min_bitcoin_event", "SELECT"),  # ON CONFLICT DO UPDATE reads the row
    ("five_min_bitcoin_event", "INSERT"),
    ("five_min_bitcoin_event", "UPDATE"),
    ("consumer_offsets", "SELECT"),  # stored offsets; compare-and-set WHERE and RETURNING
    ("consumer_offsets", "INSERT"),
    ("consumer_offsets", "UPDATE"),
    ("consumer_offsets", "DELETE"),  # a take-over drops the new group's out-of-date offsets
    ("pipeline_metrics", "INSERT"),
    ("dead_letter_events", "INSERT"),
    ("stream_marks", "SELECT"),  # loaded at assignment; GREATEST reads the row
    ("stream_marks", "INSERT"),
    ("stream_marks", "UPDATE"),
    ("stream_marks", "DELETE"),  # idle live marks are pruned
    ("stream_ranges", "SELECT"),  # loaded at assignment
    ("stream_ranges", "INSERT"),  # a flush joins a stream's ranges anew
    ("stream_ranges", "UPDATE"),  # ON CONFLICT, for a range another writer stored first
    ("stream_ranges", "DELETE"),  # the joined ranges replace the old; idle streams pruned
    ("table_owner", "SELECT"),
    ("table_owner", "INSERT"),  # the first group claims the tables
    ("table_owner", "UPDATE"),  # take-over; and SELECT ... FOR SHARE in every flush
    ("schema_migrations", "SELECT"),  # at start: nothing left to apply
}
# What the dashboards and alert rules read, and nothing more.
READER_PRIVILEGES = {
    ("five_min_bitcoin_event", "SELECT"),
    ("five_min_candles", "SELECT"),  # one candle per window: the price dashboard
    ("pipeline_metrics", "SELECT"),
    ("rolling_avg_30min", "SELECT"),
}
PRIVILEGES = {WRITER: WRITER_PRIVILEGES, READER: READER_PRIVILEGES}


@pytest.fixture
def deployed(postgres: PostgresServer, database: str) -> str:
    """A database as compose deploys it; returns the superuser's DSN."""
    run_init(postgres, database)
    return postgres.dsn(database)


def login(postgres: PostgresServer, database: str, role: str):
    """A connection as `role`, with the password the deployment's password script set."""
    return role_connection(postgres, database, role, ROLE_PASSWORDS[role])


def test_compose_runs_the_consumer_as_the_writer_role() -> None:
    assert WRITER == "pipeline_writer"


@pytest.mark.parametrize("missing", sorted(PASSWORDS))
def test_password_script_requires_each_password(
    postgres: PostgresServer, database: str, deployed: str, missing: str
) -> None:
    env = entrypoint_env(postgres, database, {k: v for k, v in PASSWORDS.items() if k != missing})
    with pytest.raises(subprocess.CalledProcessError) as failure:
        run_init_file(PASSWORD_SCRIPT, env)
    assert f"{missing} must be set" in failure.value.stderr


@pytest.mark.parametrize("role", sorted(PRIVILEGES))
def test_each_role_holds_exactly_the_privileges_its_user_needs(deployed: str, role: str) -> None:
    grants = query(
        deployed,
        "SELECT table_name, privilege_type FROM information_schema.role_table_grants "
        "WHERE grantee = %s",
        (role,),
    )
    assert set(grants) == PRIVILEGES[role]
    ((sequence_usage,),) = query(
        deployed,
        "SELECT has_sequence_privilege(%s, 'dead_letter_events_id_seq', 'USAGE')",
        (role,),
    )
    assert sequence_usage == (role == WRITER)  # dead letters get their id from it
    (flags,) = query(
        deployed,
        "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, rolcanlogin "
        "FROM pg_roles WHERE rolname = %s",
        (role,),
    )
    assert flags == (False, False, False, False, False, True)
    ((create_in_schema, create_in_database),) = query(
        deployed,
        "SELECT has_schema_privilege(%s, 'public', 'CREATE'), "
        "has_database_privilege(%s, current_database(), 'CREATE')",
        (role, role),
    )
    assert (create_in_schema, create_in_database) == (False, False)


def test_reader_reads_the_dashboard_tables(
    postgres: PostgresServer, database: str, deployed: str
) -> None:
    with login(postgres, database, READER) as conn, conn.cursor() as cur:
        for table, _ in sorted(READER_PRIVILEGES):
            cur.execute(f"SELECT count(*) FROM {table}")
            assert cur.fetchall() == [(0,)], table


REFUSED = {
    WRITER: [
        "DROP TABLE five_min_bitcoin_event",
        "CREATE TABLE writer_scratch (x int)",
        "ALTER TABLE pipeline_metrics ADD COLUMN x int",
        "CREATE INDEX writer_idx ON consumer_offsets (topic)",
        "CREATE SCHEMA writer_schema",
        "DELETE FROM five_min_bitcoin_event",
        "TRUNCATE consumer_offsets",
        "UPDATE pipeline_metrics SET late_events = 0",
        "SELECT count(*) FROM pipeline_metrics",
        "SELECT count(*) FROM dead_letter_events",
        "CREATE FUNCTION writer_fn() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "CREATE OR REPLACE VIEW rolling_avg_30min AS SELECT 1 AS x",
    ],
    READER: [
        "INSERT INTO pipeline_metrics (metric_timestamp) VALUES (now())",
        "INSERT INTO five_min_bitcoin_event (symbol) VALUES ('BTCUSDT')",
        "UPDATE five_min_bitcoin_event SET event_count = 1",
        "DELETE FROM pipeline_metrics",
        "SELECT * FROM consumer_offsets",
        "UPDATE consumer_offsets SET next_offset = 0",
        "SELECT * FROM dead_letter_events",
        "SELECT * FROM stream_marks",
        "SELECT * FROM stream_ranges",
        "CREATE TABLE grafana_scratch (x int)",
    ],
}


@pytest.mark.parametrize(
    ("role", "statement"), [(role, s) for role, refused in REFUSED.items() for s in refused]
)
def test_a_role_cannot_change_the_schema_delete_or_read_beyond_its_sql(
    postgres: PostgresServer, database: str, deployed: str, role: str, statement: str
) -> None:
    with (
        login(postgres, database, role) as conn,
        conn.cursor() as cur,
        pytest.raises(psycopg2.errors.InsufficientPrivilege),
    ):
        cur.execute(statement)


def test_consumer_runs_as_the_writer_on_a_schema_the_superuser_created(
    broker: TansuBroker, postgres: PostgresServer, database: str, deployed: str, topic: str
) -> None:
    """Two runs of consumer.py as pipeline_writer (the second resumes from its stored offsets,
    compare-and-set, and merges into existing windows), with dead letters: the tables hold
    exactly the published events, and the writer ran no DDL."""
    create_topic(broker.bootstrap, topic)
    env = {
        **consumer_env(broker, postgres, database, topic),
        "POSTGRES_USER": WRITER,
        "POSTGRES_PASSWORD": WRITER_PASSWORD,
    }
    rng = random.Random(11)
    events = random_stream(rng, 600)
    first, second = events[:350], events[350:]
    for batch, invalid in ((first, [b"not json"]), (second, [b'{"symbol": "BTCUSDT"}'])):
        with start_consumer(env, "writer-1") as consumer:
            consumer.wait_for_output("Resuming from stored offsets")
            produce(broker.bootstrap, topic, batch)
            produce_raw(broker.bootstrap, topic, invalid, key=b"BTCUSDT")
            expected = len(first) if batch is first else len(events)
            wait_for_total(deployed, expected, 60, [consumer])
            assert consumer.stop() == 0, consumer.output()[-3000:]
            assert "Applied migration" not in consumer.output()
    assert_tables_equal_truth(deployed, events)
    assert query(deployed, "SELECT count(*) FROM dead_letter_events") == [(2,)]
    ((processed, invalid),) = query(
        deployed, "SELECT sum(events_processed), sum(invalid_events) FROM pipeline_metrics"
    )
    assert (processed, invalid) == (len(events), 2)
    ((stored_next,),) = query(deployed, "SELECT sum(next_offset) FROM consumer_offsets")
    assert stored_next == len(events) + 2


def test_a_missing_migration_the_writer_may_not_apply_stops_with_the_command_that_does(
    broker: TansuBroker,
    postgres: PostgresServer,
    database: str,
    deployed: str,
    topic: str,
    tmp_path,
) -> None:
    """An upgrade whose new migration changes the schema: the writer may not, so the consumer
    stops at once (exit 2) naming the migration and how the owner applies it; nothing changed."""
    released = sorted(DEFAULT_MIGRATIONS.glob("*.sql"))
    for path in released:
        (tmp_path / path.name).write_text(path.read_text())
    added = f"{len(released) + 1:03d}_add_x"
    (tmp_path / f"{added}.sql").write_text(
        "ALTER TABLE pipeline_metrics ADD COLUMN IF NOT EXISTS x integer;"
    )
    env = {
        **consumer_env(broker, postgres, database, topic),
        "POSTGRES_USER": WRITER,
        "POSTGRES_PASSWORD": WRITER_PASSWORD,
        "MIGRATIONS_DIR": str(tmp_path),
    }
    with start_consumer(env, "writer-2") as consumer:
        assert consumer.wait(60) == 2, consumer.output()[-3000:]
        output = consumer.output()
    (sentence,) = [line for line in output.splitlines() if line.startswith("consumer.py: error:")]
    assert f"lacks migration(s) {added}, and user 'pipeline_writer' may not change" in sentence
    assert "docker compose exec postgres bash /docker-entrypoint-initdb.d/00-migrate.sh" in sentence
    assert "Traceback" not in output
    assert query(deployed, "SELECT max(version) FROM schema_migrations") == [(len(released),)]
