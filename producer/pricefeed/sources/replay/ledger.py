"""How far Kafka acknowledged each replayed file, noted on disk (an edge: files only).

The consumer counts every line of a file once however often it is sent (README, "Message
contract"); this note only lets a re-run say what was sent before, and with --resume skip
sending it again. One small JSON file per (Kafka cluster, topic, file content) in
REPLAY_STATE_DIR. If the folder cannot be written, replays carry on without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger("producer")


@dataclass(frozen=True)
class Delivered:
    line: int  # every line up to this one was acknowledged by Kafka
    at: str  # when (UTC, ISO 8601)


class ReplayLedger:
    def __init__(self, folder: Path, bootstrap_servers: str, topic: str) -> None:
        self.folder = folder
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self._broken = False

    def _path(self, stream: str) -> Path:
        # Another topic or cluster is another destination: nothing was sent there.
        key = f"{self.bootstrap_servers}|{self.topic}|{stream}".encode()
        return self.folder / f"{hashlib.sha256(key).hexdigest()[:32]}.json"

    def delivered(self, stream: str) -> Delivered | None:
        try:
            note = json.loads(self._path(stream).read_text())
            return Delivered(int(note["line"]), str(note["at"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # never sent there, or a note we cannot read: send it all

    def note(self, stream: str, line: int, file_name: str) -> None:
        """Record that every line up to `line` was acknowledged (atomically: a crash leaves
        the previous note)."""
        if self._broken:
            return
        note = {
            "line": line,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "file": file_name,
            "stream": stream,
            "topic": self.topic,
            "bootstrap_servers": self.bootstrap_servers,
        }
        path = self._path(stream)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps(note))
            temporary.replace(path)
        except OSError as exc:
            self._broken = True
            log.warning(
                "Cannot note replay progress in %s (%s): a re-run will send everything again "
                "(the consumer still counts each line once)",
                self.folder,
                exc.strerror or exc,
            )
