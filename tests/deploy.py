"""What PostgreSQL's docker entrypoint does with infra/ on a new volume, run against a test server.

docker-compose.yml mounts files of infra/ into /docker-entrypoint-initdb.d/. The postgres image's
docker-entrypoint.sh (docker-library/postgres, 15/bookworm; docker_process_init_files and
docker_process_sql) runs them once, on an empty data directory, in name order: *.sql through
`psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --no-password --no-psqlrc --dbname
"$POSTGRES_DB" -f FILE`, *.sh with bash (executed when executable, else sourced), all with the
container's environment. The order and the files come from docker-compose.yml itself.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import closing, contextmanager
from pathlib import Path, PurePosixPath

import psycopg2
import psycopg2.extensions
import yaml

from tests.harness import PostgresServer

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
INIT_DIR = PurePosixPath("/docker-entrypoint-initdb.d")

READER_PASSWORD = "r3ad 'only' $HOME \\ \"pw\""  # quotes, $, a backslash, spaces
WRITER_PASSWORD = "wr1te $PATH 'x' \\"
PASSWORDS = {"GRAFANA_DB_PASSWORD": READER_PASSWORD, "CONSUMER_DB_PASSWORD": WRITER_PASSWORD}


def init_files() -> list[Path]:
    """The host files compose mounts into the init folder, in the order the entrypoint runs
    them (by their name there)."""
    postgres = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["postgres"]
    mounted: dict[str, Path] = {}
    for volume in postgres["volumes"]:
        source, target = volume.split(":")[:2]
        if PurePosixPath(target).parent == INIT_DIR:
            mounted[PurePosixPath(target).name] = (ROOT / source).resolve()
    return [mounted[name] for name in sorted(mounted)]


def mounted_migrations() -> Path:
    """The host folder compose mounts at /migrations, where infra/00-migrate.sh reads them."""
    postgres = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["postgres"]
    for volume in postgres["volumes"]:
        source, target = volume.split(":")[:2]
        if target == "/migrations":
            return (ROOT / source).resolve()
    raise AssertionError("docker-compose.yml mounts no migrations at /migrations")


def entrypoint_env(
    postgres: PostgresServer, database: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The variables the init files see, pointed at the test server (the entrypoint's own
    server listens on a Unix socket; PG* variables stand in for that; MIGRATIONS_DIR for the
    container's /migrations)."""
    return {
        "MIGRATIONS_DIR": str(mounted_migrations()),
        "PATH": f"{postgres.bindir}:{os.environ['PATH']}",
        "PGHOST": postgres.host,
        "PGPORT": str(postgres.port),
        "PGPASSWORD": "postgres",
        "POSTGRES_USER": "postgres",
        "POSTGRES_DB": database,
        **(extra or {}),
    }


def run_init_file(path: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    if path.suffix == ".sql":
        command = [
            "psql",
            *("-v", "ON_ERROR_STOP=1", "--username", env["POSTGRES_USER"], "--no-password"),
            *("--no-psqlrc", "--dbname", env["POSTGRES_DB"], "--quiet", "-f", str(path)),
        ]
    else:
        command = ["bash", str(path)]
    return subprocess.run(command, env=dict(env), check=True, capture_output=True, text=True)


def run_init(
    postgres: PostgresServer, database: str, passwords: Mapping[str, str] = PASSWORDS
) -> None:
    """Every init file, as on a new volume. Each is idempotent, so this also brings a database
    whose schema consumer.py created up to what compose deploys."""
    env = entrypoint_env(postgres, database, passwords)
    for path in init_files():
        run_init_file(path, env)


@contextmanager
def role_connection(
    postgres: PostgresServer, database: str, user: str, password: str
) -> Iterator[psycopg2.extensions.connection]:
    """A connection as one of the deployment's login roles, in autocommit like Grafana (one
    statement, no surrounding transaction)."""
    conn = psycopg2.connect(
        host=postgres.host,
        port=postgres.port,
        dbname=database,
        user=user,
        password=password,
        connect_timeout=5,
    )
    conn.autocommit = True
    with closing(conn):
        yield conn
