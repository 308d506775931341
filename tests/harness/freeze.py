"""Freezing a server as a hung machine would (SIGSTOP), not stopping it: its sockets stay open
and the kernel still accepts connections, but nothing answers."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable
from pathlib import Path


def children(pid: int) -> list[int]:
    """Every descendant of `pid` (PostgreSQL's backends and background workers)."""
    found: list[int] = []
    parents = {pid}
    for entry in sorted(Path("/proc").iterdir(), key=lambda p: p.name):
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid in parents:
            found.append(int(entry.name))
            parents.add(int(entry.name))
    return found


def freeze(pids: Iterable[int]) -> None:
    _signal_each(pids, signal.SIGSTOP)


def thaw(pids: Iterable[int]) -> None:
    _signal_each(pids, signal.SIGCONT)


def _signal_each(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        # A backend may have ended between the listing and the signal.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
