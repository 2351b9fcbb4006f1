"""The edge agent's durable store: the store-and-forward buffer, CRDT state and unsent deltas.

Everything lives in one SQLite file (``DATA_DIR/edge.sqlite``, WAL mode), so a batch of local
messages is committed in one transaction: the readings to forward, the changed CRDT entries and
the delta group that carries the change upstream. The agent acknowledges the local broker's
messages only after that commit, so a killed agent loses nothing it acknowledged.

Guarantees and limits:

- Forwarded messages leave the buffer only when the upstream broker acknowledged them (PUBACK),
  in buffer order within the backlog and within the live stream. A crash between the PUBACK and
  the delete sends a message twice; the main job removes the copy by ``msg_id``.
- The buffer keeps at most ``buffer.max_bytes`` of payload and nothing older than
  ``buffer.max_age``. When full, ``drop_oldest`` deletes the oldest messages and ``refuse_new``
  refuses the new ones; either way the readings lost are counted.
- ``durability: full`` fsyncs each commit (power loss safe); ``normal`` leaves the fsync to WAL
  checkpoints, which survives a killed process but not a power cut.

SQLite is used, not the landing log's segment files, because the buffer is deleted from the
front and the middle (acknowledged messages, expired messages) as well as appended to. The CRDT
entries are updated in place too, and a transactional table store serves all three uses.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    added_us INTEGER NOT NULL,
    readings INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox_totals (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    messages INTEGER NOT NULL,
    readings INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
INSERT OR IGNORE INTO outbox_totals VALUES (1, 0, 0, 0);
CREATE TRIGGER IF NOT EXISTS outbox_added AFTER INSERT ON outbox BEGIN
    UPDATE outbox_totals SET messages = messages + 1, readings = readings + new.readings,
        bytes = bytes + length(new.payload) WHERE id = 1;
END;
CREATE TRIGGER IF NOT EXISTS outbox_removed AFTER DELETE ON outbox BEGIN
    UPDATE outbox_totals SET messages = messages - 1, readings = readings - old.readings,
        bytes = bytes - length(old.payload) WHERE id = 1;
END;
CREATE TABLE IF NOT EXISTS crdt (key TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS deltas (
    to_seq INTEGER PRIMARY KEY,
    from_seq INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS active_alerts (
    rule TEXT NOT NULL,
    device_id TEXT NOT NULL,
    metric TEXT NOT NULL,
    PRIMARY KEY (rule, device_id, metric)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_us INTEGER NOT NULL,
    source TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    raw BLOB NOT NULL,
    raw_size INTEGER NOT NULL
);
"""


class Outgoing(NamedTuple):
    """One buffered message of forwarded readings."""

    seq: int
    added_us: int
    readings: int
    payload: bytes


class DeltaGroup(NamedTuple):
    """The joined deltas of the delta sequence numbers ``(from_seq, to_seq]``, encoded."""

    from_seq: int
    to_seq: int
    data: bytes


class AppendResult(NamedTuple):
    stored_readings: int
    refused_readings: int
    dropped_readings: int


class EdgeStore:
    """One connection to ``edge.sqlite``; open one per thread (SQLite connections are not shared)."""

    def __init__(self, path: str | Path, *, durability: str = "full") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if durability == 'full' else 'NORMAL'}")
        self._db.executescript(_SCHEMA)
        # One connection serves the agent's thread and readers such as ``stats()`` on others. A
        # reentrant lock keeps them from interleaving: a reader's unfinished statement would hold
        # a read snapshot on the connection, and ``BEGIN IMMEDIATE`` on a stale snapshot fails at
        # once with "database is locked" instead of waiting.
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Run a query to completion under the lock, so it leaves no statement open."""
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # -- transactions ---------------------------------------------------------------------

    def begin(self) -> None:
        self._lock.acquire()
        self._db.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        try:
            self._db.execute("COMMIT")
        finally:
            self._lock.release()

    def rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        finally:
            self._lock.release()

    # -- the store-and-forward buffer -----------------------------------------------------

    def append(self, messages: list[tuple[int, int, bytes]], *, max_bytes: int, overflow: str) -> AppendResult:
        """Add ``(added_us, readings, payload)`` messages within a transaction, honouring the size bound."""
        refused = dropped = stored = 0
        for added_us, count, payload in messages:
            _, _, buffered = self.totals()
            if buffered + len(payload) > max_bytes:
                if overflow == "refuse_new" or len(payload) > max_bytes:
                    refused += count
                    continue
                dropped += self._drop_oldest(buffered + len(payload) - max_bytes)
            self._db.execute("INSERT INTO outbox (added_us, readings, payload) VALUES (?, ?, ?)", (added_us, count, payload))
            stored += count
        return AppendResult(stored, refused, dropped)

    def _drop_oldest(self, excess_bytes: int) -> int:
        dropped_readings = freed = 0
        for seq, count, size in self._db.execute("SELECT seq, readings, length(payload) FROM outbox ORDER BY seq"):
            if freed >= excess_bytes:
                break
            self._db.execute("DELETE FROM outbox WHERE seq = ?", (seq,))
            freed += size
            dropped_readings += count
        return dropped_readings

    def totals(self) -> tuple[int, int, int]:
        """Return the buffered ``(messages, readings, bytes)``."""
        return self._rows("SELECT messages, readings, bytes FROM outbox_totals WHERE id = 1")[0]

    def max_seq(self) -> int:
        rows = self._rows("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'")
        return rows[0][0] if rows else 0

    def outgoing(self, *, after_seq: int, up_to_seq: int | None = None, limit: int = 100) -> list[Outgoing]:
        """Return buffered messages with ``after_seq < seq [<= up_to_seq]`` in order."""
        if up_to_seq is None:
            rows = self._rows(
                "SELECT seq, added_us, readings, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
            )
        else:
            rows = self._rows(
                "SELECT seq, added_us, readings, payload FROM outbox WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                (after_seq, up_to_seq, limit),
            )
        return [Outgoing(*row) for row in rows]

    def remove(self, seqs: Iterable[int]) -> int:
        """Delete acknowledged messages; return the readings they held (0 for ones already gone)."""
        removed = 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for seq in seqs:
                    rows = self._db.execute("DELETE FROM outbox WHERE seq = ? RETURNING readings", (seq,)).fetchall()
                    removed += rows[0][0] if rows else 0
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return removed

    def expire(self, *, older_than_us: int) -> int:
        """Delete messages added before ``older_than_us``; return the readings they held."""
        with self._lock:
            row = self._db.execute(
                "SELECT count(*), total(readings) FROM outbox WHERE added_us < ?", (older_than_us,)
            ).fetchall()[0]
            if row[0]:
                self._db.execute("DELETE FROM outbox WHERE added_us < ?", (older_than_us,))
        return int(row[1])

    # -- CRDT state and deltas ------------------------------------------------------------

    def put_entries(self, entries: dict[str, bytes]) -> None:
        self._db.executemany("INSERT OR REPLACE INTO crdt (key, data) VALUES (?, ?)", entries.items())

    def entries(self) -> dict[str, bytes]:
        return dict(self._rows("SELECT key, data FROM crdt"))

    def put_delta(self, group: DeltaGroup) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO deltas (to_seq, from_seq, data) VALUES (?, ?, ?)", (group.to_seq, group.from_seq, group.data)
        )

    def deltas(self, *, after_seq: int, limit: int = 1000) -> list[DeltaGroup]:
        rows = self._rows(
            "SELECT from_seq, to_seq, data FROM deltas WHERE to_seq > ? ORDER BY to_seq LIMIT ?", (after_seq, limit)
        )
        return [DeltaGroup(*row) for row in rows]

    def delta_count(self) -> int:
        return self._rows("SELECT count(*) FROM deltas")[0][0]

    def replace_deltas(self, group: DeltaGroup) -> None:
        """Replace every stored delta group by ``group`` (their join), within a transaction."""
        self._db.execute("DELETE FROM deltas")
        self.put_delta(group)

    def prune_deltas(self, *, up_to_seq: int) -> None:
        """Delete delta groups the cloud acknowledged (``to_seq <= up_to_seq``)."""
        with self._lock:
            self._db.execute("DELETE FROM deltas WHERE to_seq <= ?", (up_to_seq,))

    def get_meta(self, name: str, default: int = 0) -> int:
        rows = self._rows("SELECT value FROM meta WHERE name = ?", (name,))
        return rows[0][0] if rows else default

    def set_meta(self, name: str, value: int) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))

    def put_active_alerts(self, active: list[tuple[str, str, str]]) -> None:
        """Replace the stored raised alerts, within a transaction."""
        self._db.execute("DELETE FROM active_alerts")
        self._db.executemany("INSERT INTO active_alerts (rule, device_id, metric) VALUES (?, ?, ?)", active)

    def active_alerts(self) -> list[tuple[str, str, str]]:
        return [tuple(row) for row in self._rows("SELECT rule, device_id, metric FROM active_alerts")]

    # -- dead letters ---------------------------------------------------------------------

    def put_dead_letters(self, letters: list, *, keep: int) -> None:
        """Keep the raw bytes of dead letters, at most ``keep`` rows (oldest deleted first)."""
        self._db.executemany(
            "INSERT INTO dead_letters (received_us, source, reason, detail, raw, raw_size) VALUES (?, ?, ?, ?, ?, ?)",
            [(d.received_us, d.source, d.reason, d.detail, d.raw, d.raw_size) for d in letters],
        )
        self._db.execute("DELETE FROM dead_letters WHERE id <= (SELECT max(id) FROM dead_letters) - ?", (keep,))

    def dead_letters(self) -> list[tuple]:
        """Return ``(reason, source, detail, raw)`` of the kept dead letters, oldest first."""
        return self._rows("SELECT reason, source, detail, raw FROM dead_letters ORDER BY id")
