"""A PostgreSQL cluster from the installed server binaries: throwaway, or kept in a folder
of its own across runs.

`initdb` refuses to run as root, so as root the cluster belongs to the `postgres` user. The
postmaster runs as this process's child, so that its exit (and exit code) is seen at once.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tests.harness.freeze import children, freeze, thaw
from tests.harness.net import free_port, wait_until

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
    """`with PostgresServer() as pg:` gives pg.dsn(db), pg.env(db), pg.stop(), pg.start().

    `port`: None or 0 for a free one. `data_dir`: keep the cluster there (its `data/`
    subfolder, made by initdb only while the folder is empty) and start on it again next
    time; None: a throwaway folder, deleted at the end. `durable`: keep PostgreSQL's crash
    safety (fsync...); always on with a data_dir."""

    def __init__(
        self, port: int | None = None, durable: bool = False, data_dir: Path | None = None
    ) -> None:
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.bindir = postgres_bindir()
        self.kept = data_dir is not None
        self.datadir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="pgdata-"))
        self.durable = durable or self.kept
        self._owner = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        self._initialised = self.kept and self._holds_cluster()
        self._process: subprocess.Popen[bytes] | None = None
        self._frozen: list[int] = []

    def _holds_cluster(self) -> bool:
        """Whether data_dir holds a cluster made before; refuses a folder holding anything
        else, whose files initdb would mix with PostgreSQL's."""
        if (self.datadir / "data" / "PG_VERSION").is_file():
            return True
        if self.datadir.exists() and any(self.datadir.iterdir()):
            raise RuntimeError(
                f"{self.datadir} is neither empty nor a PostgreSQL folder of the harness "
                "(it has no data/PG_VERSION): give an empty or new folder"
            )
        return False

    def _as_owner(self) -> dict[str, Any]:
        return {"user": self._owner.pw_uid, "group": self._owner.pw_gid} if self._owner else {}

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [str(self.bindir / args[0]), *args[1:]],
                check=True,
                capture_output=True,
                text=True,
                cwd=self.datadir,
                **self._as_owner(),
            )
        except subprocess.CalledProcessError as error:
            said = " ".join((error.stderr or error.stdout or "").split())
            raise RuntimeError(f"{args[0]} in {self.datadir} failed: {said}") from None

    def _initdb(self) -> None:
        self.datadir.mkdir(parents=True, exist_ok=True)
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
        """Start the postmaster (as a child of this process) and wait until it is ready."""
        if not self._initialised:
            self._initdb()
        options = [
            f"--port={self.port}",
            f"--unix_socket_directories={self.datadir}",
            f"--listen_addresses={self.host}",
            "--max_connections=50",
        ]
        if not self.durable:  # throwaway data: trade crash safety of the server for speed
            options += ["--fsync=off", "--synchronous_commit=off", "--full_page_writes=off"]
        with (self.datadir / "server.log").open("ab") as log:
            self._process = subprocess.Popen(
                [str(self.bindir / "postgres"), "-D", str(self.datadir / "data"), *options],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.datadir,
                start_new_session=True,  # a Ctrl-C in the harness's terminal is for the harness
                **self._as_owner(),
            )
        wait_until(self._ready, 60, f"PostgreSQL to accept connections on port {self.port}")
        return self

    def _ready(self) -> bool:
        """postmaster.pid's status line says "ready" (what `pg_ctl start -w` waits for)."""
        if self._process is not None and self._process.poll() is not None:
            raise RuntimeError(
                f"PostgreSQL exited with {self._process.returncode}: {self.log_text()}"
            )
        try:
            lines = (self.datadir / "data" / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[7].strip() == "ready"

    @property
    def pid(self) -> int:
        """The postmaster's pid."""
        assert self._process is not None, "not started"
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        """None while the postmaster runs (or before start); its exit code once it exited."""
        return None if self._process is None else self._process.poll()

    def freeze(self) -> None:
        """Hang the whole server (SIGSTOP of the postmaster and every backend), as a stalled
        disk or VM would: connections stay open and new ones are accepted, nothing answers."""
        self._frozen = [self.pid, *children(self.pid)]
        freeze(self._frozen)

    def thaw(self) -> None:
        thaw(self._frozen)
        self._frozen = []

    def stop(self) -> None:
        """Fast shutdown (SIGINT, as `pg_ctl stop -m fast`): open connections are cut, as in
        a real outage."""
        if self._frozen:
            self.thaw()
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()  # immediate: the next start recovers from the WAL
            process.wait()

    def destroy(self) -> None:
        """Stop; a throwaway cluster is deleted, a data_dir kept."""
        self.stop()
        if not self.kept:
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
