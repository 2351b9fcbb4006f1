"""Cloud-side CRDT state of every site, and the fleet-wide join, in SQLite (the embedded default).

The sync service merges each site's delta groups here. Per site it keeps every CRDT entry (the
join of all the site's replicas) and the version vector (per replica, the sequence number up to
which every delta group was merged). Under the scope ``*`` it keeps the join of all sites, the
fleet-wide view, which stays correct because a join of joins is the join of everything.

The same file is the main job's ``state.sqlite``, so the merged values sit beside the ``latest``
table. Table ``crdt_state`` contains each entry's encoded state and its value as JSON text for any
SQLite reader. ``sync_versions`` contains the version vectors, and ``sync_dead_letters`` the
sync messages that were rejected.

Guarantee: one :meth:`SqliteCrdtStore.apply` is one transaction, so entries and version vector
never disagree after a crash.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from pathlib import Path
from typing import NamedTuple, Protocol

from sparkiot.edge.crdt import CrdtMap, LWWRegister, ORSet, Summary, decode

FLEET = "*"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS crdt_state (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    kind TEXT NOT NULL,
    data BLOB NOT NULL,
    value TEXT NOT NULL,
    updated_us INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE TABLE IF NOT EXISTS sync_versions (
    site TEXT NOT NULL,
    replica TEXT NOT NULL,
    seq INTEGER NOT NULL,
    updated_us INTEGER NOT NULL,
    PRIMARY KEY (site, replica)
);
CREATE TABLE IF NOT EXISTS sync_dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_us INTEGER NOT NULL,
    topic TEXT NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    raw BLOB NOT NULL,
    raw_size INTEGER NOT NULL
);
"""

KEPT_DEAD_LETTERS = 10_000


class DecodedGroup(NamedTuple):
    """A delta group whose state was decoded: the changes of ``(from_seq, to_seq]``."""

    from_seq: int
    to_seq: int
    delta: CrdtMap


def advance(seq: int, groups: list[DecodedGroup]) -> int:
    """Return the version after ``seq`` once ``groups`` are merged: only contiguous groups count."""
    for group in sorted(groups, key=lambda g: (g.from_seq, g.to_seq)):
        if group.from_seq <= seq:
            seq = max(seq, group.to_seq)
    return seq


def describe(state) -> object:
    """Return a JSON-ready view of a CRDT's value (a number, a list, a mapping)."""
    if isinstance(state, CrdtMap):
        return {key: describe(entry) for key, entry in state.items()}
    if isinstance(state, ORSet):
        return sorted(state.value())
    if isinstance(state, Summary):
        value = state.value()
        fields = {
            "count": value.count, "sum": value.sum, "sum_squares": value.sum_squares,
            "min": value.min, "max": value.max, "mean": value.mean, "stddev": value.stddev,
        }
        return {name: _finite(number) for name, number in fields.items()}
    if isinstance(state, LWWRegister):
        return state.value()
    return _finite(state.value())


def _finite(value: object) -> object:
    """Return ``value``, or None for a float that JSON cannot carry (an infinity after an overflow)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class CrdtStore(Protocol):
    """The store interface of the sync service, implemented by :class:`SqliteCrdtStore` and the Redis store."""

    def apply(self, site: str, replica: str, groups: list[DecodedGroup], rejected: list[Rejected] | None = None) -> dict[str, int]:
        """Merge ``groups`` of ``replica`` into ``site`` and the fleet view; return the site's version vector.

        Entries that cannot be joined are left out and added to ``rejected``; the version
        vector advances anyway, so the agent does not send them again.
        """
        ...

    def versions(self, site: str) -> dict[str, int]: ...

    def site_state(self, site: str) -> CrdtMap: ...

    def fleet_state(self) -> CrdtMap: ...

    def sites(self) -> list[str]: ...

    def put_dead_letter(self, *, topic: str, reason: str, detail: str, raw: bytes) -> None: ...

    def close(self) -> None: ...


class Rejected(NamedTuple):
    """A delta entry that could not be joined with the stored one, such as sketches of two accuracies."""

    scope: str
    key: str
    error: str


def merged_entries(current: dict[str, bytes | None], delta: CrdtMap, *, scope: str, rejected: list[Rejected]) -> dict[str, object]:
    """Return each key of ``delta`` joined with its ``current`` encoded state (None when absent).

    A key whose join fails (another CRDT type, another sketch accuracy, an overflow) is left
    out and added to ``rejected``, so one bad entry never blocks the others.
    """
    merged = {}
    for key, entry in delta.items():
        stored = current.get(key)
        if stored is None:
            merged[key] = entry.copy()
            continue
        try:
            state = decode(stored)
            state.merge(entry)
        except (TypeError, ValueError, OverflowError) as exc:
            rejected.append(Rejected(scope, key, f"{type(exc).__name__}: {exc}"))
            continue
        merged[key] = state
    return merged


def join_groups(groups: list[DecodedGroup]) -> CrdtMap:
    """Return the join of the groups' deltas; a key that cannot be joined keeps its first delta."""
    delta = CrdtMap()
    for group in groups:
        try:
            delta.merge(group.delta)
        except (TypeError, ValueError, OverflowError):
            # The stores reject such a key when they join it with the stored entry.
            for key, entry in group.delta.items():
                if key not in delta:
                    single = CrdtMap.from_entries({key: entry.to_bytes()})
                    delta.merge(single)
    return delta


class SqliteCrdtStore:
    """CRDT entries and version vectors in a SQLite file; one writer process at a time."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def _load(self, scope: str, keys: list[str]) -> dict[str, bytes | None]:
        found: dict[str, bytes | None] = dict.fromkeys(keys)
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for key, data in self._db.execute(f"SELECT key, data FROM crdt_state WHERE scope = ? AND key IN ({marks})", (scope, *chunk)):
                found[key] = data
        return found

    def apply(self, site: str, replica: str, groups: list[DecodedGroup], rejected: list[Rejected] | None = None) -> dict[str, int]:
        rejected = [] if rejected is None else rejected
        delta = join_groups(groups)
        keys = list(delta.keys())
        now_us = time.time_ns() // 1000
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for scope in (site, FLEET):
                merged = merged_entries(self._load(scope, keys), delta, scope=scope, rejected=rejected)
                self._db.executemany(
                    "INSERT OR REPLACE INTO crdt_state (scope, key, kind, data, value, updated_us) VALUES (?, ?, ?, ?, ?, ?)",
                    [(scope, key, type(state).__name__, state.to_bytes(), json.dumps(describe(state)), now_us) for key, state in merged.items()],
                )
            row = self._db.execute("SELECT seq FROM sync_versions WHERE site = ? AND replica = ?", (site, replica)).fetchone()
            seq = advance(row[0] if row else 0, groups)
            self._db.execute(
                "INSERT OR REPLACE INTO sync_versions (site, replica, seq, updated_us) VALUES (?, ?, ?, ?)", (site, replica, seq, now_us)
            )
            versions = self.versions(site)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return versions

    def versions(self, site: str) -> dict[str, int]:
        return dict(self._db.execute("SELECT replica, seq FROM sync_versions WHERE site = ?", (site,)))

    def _state(self, scope: str) -> CrdtMap:
        return CrdtMap.from_entries(dict(self._db.execute("SELECT key, data FROM crdt_state WHERE scope = ?", (scope,))))

    def site_state(self, site: str) -> CrdtMap:
        return self._state(site)

    def fleet_state(self) -> CrdtMap:
        return self._state(FLEET)

    def sites(self) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT DISTINCT site FROM sync_versions ORDER BY site")]

    def put_dead_letter(self, *, topic: str, reason: str, detail: str, raw: bytes) -> None:
        self._db.execute(
            "INSERT INTO sync_dead_letters (received_us, topic, reason, detail, raw, raw_size) VALUES (?, ?, ?, ?, ?, ?)",
            (time.time_ns() // 1000, topic, reason, detail[:500], raw[:4096], len(raw)),
        )
        self._db.execute("DELETE FROM sync_dead_letters WHERE id <= (SELECT max(id) FROM sync_dead_letters) - ?", (KEPT_DEAD_LETTERS,))

    def dead_letters(self) -> list[tuple[str, str, str]]:
        """Return ``(reason, topic, detail)`` of the kept dead letters, oldest first."""
        return list(self._db.execute("SELECT reason, topic, detail FROM sync_dead_letters ORDER BY id"))


def open_store(url: str | None, *, default_path: str | Path, must_exist: bool = False) -> CrdtStore:
    """Open the store named by ``url``: ``sqlite:///PATH``, ``redis://HOST:PORT/DB``, or None for ``default_path``.

    Raises ValueError for another scheme, for a SQLite path that is not a database file (or,
    with ``must_exist``, is missing), and ConnectionError when Redis cannot be reached.
    """
    if url is None or url.startswith("sqlite:///"):
        path = Path(default_path if url is None else url.removeprefix("sqlite:///"))
        if must_exist and not path.is_file():
            raise ValueError(f"no state store at {path}: give the main job's data directory or a sqlite:///PATH that exists")
        if path.is_dir() or not path.name:
            raise ValueError(f"state store path {str(path)!r} is a directory; give a file such as DATA_DIR/state.sqlite")
        try:
            return SqliteCrdtStore(path)
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"cannot use {path} as a state store: {exc}") from None
    if url.startswith("redis://"):
        from sparkiot.state.redis_store import RedisCrdtStore

        return RedisCrdtStore(url)
    raise ValueError(
        f"unknown state store {url!r}: use sqlite:///RELATIVE/PATH, sqlite:////ABSOLUTE/PATH or redis://HOST:PORT/DB, "
        "such as redis://127.0.0.1:6379/0"
    )
