"""Follow the job's ``progress.jsonl``: one JSON object per micro-batch and query.

The job rotates the file to ``progress.jsonl.1`` when it passes its size bound. A reader that
finds a new file (another inode) first reads the rest of the rotated one, so no line is skipped
unless the file rotates twice between two reads.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


class ProgressLog:
    """Return the complete lines appended to a JSON-lines file since the last :meth:`read_new`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._inode: int | None = None
        self._offset = 0
        self.invalid_lines = 0

    def read_new(self) -> list[dict]:
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            return []
        lines: list[dict] = []
        if self._inode is not None and inode != self._inode:
            rotated = self.path.with_name(self.path.name + ".1")
            try:
                if os.stat(rotated).st_ino == self._inode:
                    lines += self._read(rotated)
            except FileNotFoundError:
                pass
            self._offset = 0
        self._inode = inode
        return lines + self._read(self.path)

    def _read(self, path: Path) -> list[dict]:
        try:
            with open(path, "rb") as source:
                source.seek(self._offset)
                data = source.read()
        except FileNotFoundError:
            return []
        # A line still being written has no newline yet; it is read at the next call.
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        lines = []
        for raw in complete.splitlines():
            try:
                value = json.loads(raw)
            except ValueError:
                self.invalid_lines += 1
                log.warning("%s: skipping a line that is not JSON (%d so far)", path, self.invalid_lines)
                continue
            if isinstance(value, dict):
                lines.append(value)
        return lines
