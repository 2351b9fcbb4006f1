"""The latest value of every series, and each device's status, in an embedded SQLite file.

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

_STATUS_SCHEMA = """
CREATE TABLE IF NOT EXISTS device_status (
    device_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    since_us INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    updated_us INTEGER NOT NULL
)
"""

_STATUS_UPSERT = """
INSERT INTO device_status (device_id, status, since_us, metrics, updated_us) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (device_id) DO UPDATE SET
    status = excluded.status, since_us = excluded.since_us, metrics = excluded.metrics, updated_us = excluded.updated_us
WHERE excluded.since_us >= device_status.since_us
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
        self._connection.execute(_STATUS_SCHEMA)

    def upsert(self, rows: Iterable[tuple[str, str, int, float, str | None, str | None, int]]) -> None:
        """Store rows of (device_id, metric, ts_us, value, unit, site, updated_us) in one transaction."""
        with self._connection:
            self._connection.execute("BEGIN")
            self._connection.executemany(_UPSERT, rows)

    def set_status(self, rows: Iterable[tuple[str, str, int, str, int]]) -> None:
        """Store rows of (device_id, status, since_us, metrics as JSON text, updated_us); newer ``since_us`` wins.

        A device is ``stale`` from its DEATH until its next BIRTH makes it ``alive``; its latest
        values stay in table ``latest``.
        """
        with self._connection:
            self._connection.execute("BEGIN")
            self._connection.executemany(_STATUS_UPSERT, rows)

    def statuses(self) -> list[dict]:
        """Return every device's status, ordered by device."""
        cursor = self._connection.execute(
            "SELECT device_id, status, since_us, metrics FROM device_status ORDER BY device_id"
        )
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def latest(self) -> list[dict]:
        """Return every series' latest value, ordered by device and metric."""
        cursor = self._connection.execute(
            "SELECT device_id, metric, ts_us, value, unit, site FROM latest ORDER BY device_id, metric"
        )
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def close(self) -> None:
        self._connection.close()
