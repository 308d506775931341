"""Run producer.py and consumer.py as real processes, as users do (`cd producer && python
producer.py`), with their output captured for assertions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from tests.harness.net import wait_until

ROOT = Path(__file__).resolve().parents[2]


class Script:
    """One running script. `output()` is everything it printed so far."""

    def __init__(
        self,
        name: str,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.name = name
        folder = ROOT / name
        fd, log_path = tempfile.mkstemp(prefix=f"{name}-", suffix=".log", dir=log_dir)
        self.log_path = Path(log_path)
        with os.fdopen(fd, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, f"{name}.py", *args],
                cwd=folder,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float = 30, count: int = 1) -> str:
        self.wait_until(lambda: self.output().count(text) >= count, timeout, f"{count} x {text!r}")
        return self.output()

    def wait_until(
        self, condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05
    ) -> None:
        """Wait for `condition` while the script runs; fail at once if it exits first, and at
        the deadline, with what it printed."""

        def met() -> bool:
            if condition():
                return True
            if self.process.poll() is not None and not condition():
                raise AssertionError(f"{self.name} exited early:\n{self.output()[-3000:]}")
            return False

        try:
            wait_until(met, timeout, f"{what} from {self.name}", interval)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; it printed:\n{self.output()[-3000:]}") from None

    def signal(self, signum: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        return self.process.wait(timeout)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as a user's Ctrl-C or `docker stop`; SIGKILL if it does not exit."""
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} ignored SIGTERM:\n{self.output()[-3000:]}") from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def close(self) -> None:
        self.kill()
        self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> Script:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_script(
    name: str, args: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run a script to completion (e.g. --help, or a configuration error)."""
    return subprocess.run(
        [sys.executable, f"{name}.py", *args],
        cwd=ROOT / name,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
