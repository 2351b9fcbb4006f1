"""The latest value of every series, in an embedded SQLite file.

Writes are idempotent: a row replaces the stored one only when its event time is not older, so
replaying a micro-batch after a restart leaves the same state. WAL mode lets readers (the CLI,
a dashboard) read while the job writes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS latest (
    device_id TEXT NOT NULL,
    metric TEXT NOT NULL,
    ts_us INTEGER NOT NULL,
    value REAL NOT NULL,
    unit TEXT,
    site TEXT,
    updated_us INTEGER NOT NULL,
    PRIMARY KEY (device_id, metric)
)
"""

_UPSERT = """
INSERT INTO latest (device_id, metric, ts_us, value, unit, site, updated_us)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (device_id, metric) DO UPDATE SET
    ts_us = excluded.ts_us, value = excluded.value, unit = excluded.unit,
    site = excluded.site, updated_us = excluded.updated_us
WHERE excluded.ts_us >= latest.ts_us
"""


class LatestValueStore:
    """Latest (device_id, metric) values in SQLite; safe to open from several processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute(_SCHEMA)

    def upsert(self, rows: Iterable[tuple[str, str, int, float, str | None, str | None, int]]) -> None:
        """Store rows of (device_id, metric, ts_us, value, unit, site, updated_us) in one transaction."""
        with self._connection:
            self._connection.execute("BEGIN")
            self._connection.executemany(_UPSERT, rows)

    def latest(self) -> list[dict]:
        """Return every series' latest value, ordered by device and metric."""
        cursor = self._connection.execute(
            "SELECT device_id, metric, ts_us, value, unit, site FROM latest ORDER BY device_id, metric"
        )
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def close(self) -> None:
        self._connection.close()
