"""A throwaway PostgreSQL cluster from the installed server binaries.

`initdb` refuses to run as root, so as root the cluster belongs to the `postgres` user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.harness.freeze import children, freeze, thaw
from tests.harness.net import free_port

SUPERUSER = "postgres"
PASSWORD = "postgres"


def postgres_bindir() -> Path:
    """$PG_BINDIR, else the newest /usr/lib/postgresql/*/bin (Debian's layout)."""
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"])
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
    )
    if not candidates:
        raise RuntimeError(
            "no PostgreSQL server binaries found; install postgresql or set PG_BINDIR"
        )
    return Path(candidates[-1])


class PostgresServer:
    """`with PostgresServer() as pg:` gives pg.dsn(db), pg.env(db), pg.stop(), pg.start()."""

    def __init__(self, port: int | None = None, durable: bool = False) -> None:
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.bindir = postgres_bindir()
        self.datadir = Path(tempfile.mkdtemp(prefix="pgdata-"))
        self.durable = durable
        self._owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        self._initialised = False
        self._frozen: list[int] = []

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        user = {"user": self._owner.pw_uid, "group": self._owner.pw_gid} if self._owner else {}
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            check=True,
            capture_output=True,
            text=True,
            cwd=self.datadir,
            **user,
        )

    def _initdb(self) -> None:
        pwfile = self.datadir / "pwfile"
        pwfile.write_text(PASSWORD + "\n")
        if self._owner:
            os.chown(self.datadir, self._owner.pw_uid, self._owner.pw_gid)
            os.chown(pwfile, self._owner.pw_uid, self._owner.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.datadir / "data"),
            "-U",
            SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
        )
        self._initialised = True

    def start(self) -> PostgresServer:
        if not self._initialised:
            self._initdb()
        options = [
            f"-p {self.port}",
            f"-k {self.datadir}",
            f"-c listen_addresses={self.host}",
            "-c max_connections=50",
        ]
        if not self.durable:  # throwaway data: trade crash safety of the server for speed
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run(
            "pg_ctl",
            "start",
            "-w",
            "-t",
            "60",
            "-D",
            str(self.datadir / "data"),
            "-l",
            str(self.datadir / "server.log"),
            "-o",
            " ".join(options),
        )
        return self

    @property
    def pid(self) -> int:
        """The postmaster's pid (first line of postmaster.pid)."""
        return int((self.datadir / "data" / "postmaster.pid").read_text().split()[0])

    def freeze(self) -> None:
        """Hang the whole server (SIGSTOP of the postmaster and every backend), as a stalled
        disk or VM would: connections stay open and new ones are accepted, nothing answers."""
        self._frozen = [self.pid, *children(self.pid)]
        freeze(self._frozen)

    def thaw(self) -> None:
        thaw(self._frozen)
        self._frozen = []

    def stop(self) -> None:
        """Fast shutdown: open connections are cut, as in a real outage."""
        if self._frozen:
            self.thaw()
        if (self.datadir / "data" / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.datadir / "data"))

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.datadir, ignore_errors=True)

    def log_text(self) -> str:
        path = self.datadir / "server.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def create_database(self, name: str) -> str:
        import psycopg2

        conn = psycopg2.connect(self.dsn("postgres"))
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return name

    def dsn(self, dbname: str = "postgres") -> str:
        return (
            f"host={self.host} port={self.port} dbname={dbname} "
            f"user={SUPERUSER} password={PASSWORD} connect_timeout=5"
        )

    def env(self, dbname: str = "eventsdb") -> dict[str, str]:
        """The consumer's configuration variables for this server."""
        return {
            "POSTGRES_HOST": self.host,
            "POSTGRES_PORT": str(self.port),
            "POSTGRES_DB": dbname,
            "POSTGRES_USER": SUPERUSER,
            "POSTGRES_PASSWORD": PASSWORD,
        }

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.destroy()
