"""Incremental reads of the job's partitioned Parquet tables.

Two layouts are read, both of which appear atomically:

- Spark's tables (readings, windows): ``TABLE/date=D/batch_id=N/part-*.parquet``; Spark moves
  each finished partition folder into place with one rename.
- The side tables (late, dead letters, alerts): ``TABLE/date=D/part-FROM-TO.parquet``; each
  file is written under a hidden name and renamed.

A :class:`PartitionTail` lists the table and returns each such unit (a batch folder or a side
file) once, the first time it is seen, with its rows and the time it was written. A unit
replaced later (written again after a restart, with the same rows) is returned again with
``replaced`` set to the rows it had, so counts built from the tail stay equal to the table's.

A unit is unreadable when a file of it is damaged, lacks a column the reader needs, has that
column with another type, or has nulls where the reader needs values. Such a unit is not
returned, and it is checked again at every poll until it is fixed or removed.

Listing stays cheap on a large table: only folders whose modification time changed since the
last poll are listed again. A folder changed within the last second is listed once more,
because a file system may give two changes within one clock tick the same time.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

# Folders changed this recently are listed again at the next poll.
_SETTLE_NS = 1_000_000_000

# The kinds of column a reader can require, with the Arrow types that satisfy each.
_KINDS: dict[str, tuple[str, Callable[[pa.DataType], bool]]] = {
    "string": ("a string", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)),
    "number": ("an integer or a floating-point number", lambda t: pa.types.is_integer(t) or pa.types.is_floating(t)),
    "integer": ("an integer", pa.types.is_integer),
    "timestamp": ("a timestamp", pa.types.is_timestamp),
}


@dataclass(frozen=True)
class Column:
    """A column that a reader of a table needs: its name, its kind of type and whether it may contain nulls."""

    name: str
    kind: str
    """One of ``string``, ``number`` (integer or floating point), ``integer`` or ``timestamp``."""
    nullable: bool = False


class SchemaMismatch(Exception):
    """A Parquet file lacks a needed column, has it with another type, or has nulls where values are needed."""


@dataclass(frozen=True)
class Partition:
    """The rows of one batch folder or side file, read once."""

    path: str
    batch_id: int
    rows: pa.Table
    written: float
    """Unix seconds when its last file was written, just before Spark committed the batch."""
    replaced: int
    """Rows of an earlier version of this folder (0 for a new one)."""


def _visible(name: str) -> bool:
    return not name.startswith((".", "_"))


def _batch_id(name: str) -> int:
    """Return the order key of a unit: N of ``batch_id=N``, or FROM of ``part-FROM-TO.parquet``."""
    digits = name.partition("=")[2] if name.startswith("batch_id=") else name.removeprefix("part-").partition("-")[0]
    try:
        return int(digits)
    except ValueError:
        return -1


class PartitionTail:
    """Return the new partitions of one table at each :meth:`poll`; not thread-safe."""

    def __init__(self, path: Path, *, columns: list[Column]) -> None:
        self.path = Path(path)
        self.columns = columns
        for column in columns:
            if column.kind not in _KINDS:
                raise ValueError(f"column {column.name}: unknown kind {column.kind!r}, expected one of {', '.join(_KINDS)}")
        # Folder path to its modification time when it was last listed.
        self._listed: dict[str, int] = {}
        # Partition path to (inode, rows) of the version read.
        self._read: dict[str, tuple[int, int]] = {}
        self.failures = 0
        self._failed: dict[str, int] = {}

    @property
    def unreadable(self) -> int:
        """Return how many units failed their last read (a damaged file, or one without the needed columns and types)."""
        return len(self._failed)

    def poll(self) -> list[Partition]:
        """Return every unit that appeared or was replaced since the last call, oldest first."""
        found: list[Partition] = []
        now_ns = time.time_ns()
        candidates = [entry.path for date_dir in self._changed(self.path, now_ns)
                      for entry in self._changed_entries(date_dir, now_ns)]
        # Units that failed to read are tried again even when their folder did not change.
        listed = set(candidates)
        candidates += [path for path in self._failed if path not in listed]
        for path in candidates:
            partition = self._read_partition(path)
            if partition is not None:
                found.append(partition)
        found.sort(key=lambda p: p.batch_id)
        return found

    def _changed(self, folder: Path, now_ns: int) -> list[Path]:
        """Return the subfolders of ``folder`` that may hold unread partitions."""
        return [Path(entry.path) for entry in self._scan(folder, now_ns) if entry.is_dir()]

    def _changed_entries(self, date_dir: Path, now_ns: int) -> list[os.DirEntry]:
        return [
            entry for entry in self._scan(date_dir, now_ns)
            if (entry.is_dir() and entry.name.startswith("batch_id=")) or (entry.is_file() and entry.name.endswith(".parquet"))
        ]

    def _scan(self, folder: Path, now_ns: int) -> list[os.DirEntry]:
        """List ``folder`` if it changed since it was last listed.

        The root is always listed: its date folders are then filtered by their own times.
        """
        key = str(folder)
        try:
            mtime = folder.stat().st_mtime_ns
        except FileNotFoundError:
            return []
        previous = self._listed.get(key)
        if previous == mtime and now_ns - mtime > _SETTLE_NS and folder != self.path:
            return []
        try:
            with os.scandir(folder) as entries:
                listed = [entry for entry in entries if _visible(entry.name)]
        except FileNotFoundError:
            return []
        self._listed[key] = mtime
        return listed

    def _read_partition(self, unit: str) -> Partition | None:
        try:
            stat = os.stat(unit)
        except FileNotFoundError:
            self._failed.pop(unit, None)
            return None
        known = self._read.get(unit)
        if known is not None and known[0] == stat.st_ino:
            return None
        try:
            if os.path.isdir(unit):
                with os.scandir(unit) as files:
                    names = sorted(f.name for f in files if _visible(f.name) and f.name.endswith(".parquet"))
                paths = [os.path.join(unit, name) for name in names]
            else:
                paths = [unit]
            if not paths:
                return None
            parts = [self._read_file(path) for path in paths]
            rows = _concat(unit, parts)
        except FileNotFoundError:
            # Deleted, or replaced while being read: the next poll reads the new version.
            self._failed.pop(unit, None)
            return None
        except SchemaMismatch as exc:
            self._fail(unit, f"{exc}. Rewrite the file with the table's schema or move it out of {self.path}")
            return None
        except (pa.ArrowException, OSError) as exc:
            self._fail(unit, f"{exc}. Replace the file with a readable one or remove it")
            return None
        self._failed.pop(unit, None)
        self._read[unit] = (stat.st_ino, rows.num_rows)
        replaced = known[1] if known is not None else 0
        return Partition(unit, _batch_id(os.path.basename(unit)), rows, stat.st_mtime, replaced)

    def _read_file(self, path: str) -> pa.Table:
        """Read the needed columns of one Parquet file, or raise :class:`SchemaMismatch` if they do not fit."""
        # The footer alone shows a wrong type, so a file that stays wrong is not read in full at every poll.
        schema = pq.read_schema(path)
        for column in self.columns:
            index = schema.get_field_index(column.name)
            if index < 0:
                raise SchemaMismatch(f"{path} has no column {column.name}")
            data_type = schema.field(index).type
            expected, fits = _KINDS[column.kind]
            if not fits(data_type):
                raise SchemaMismatch(f"column {column.name} of {path} is {data_type}, expected {expected}")
        rows = pq.read_table(path, columns=[column.name for column in self.columns])
        for column in self.columns:
            nulls = rows.column(column.name).null_count
            if nulls and not column.nullable:
                raise SchemaMismatch(f"column {column.name} of {path} has {nulls} nulls, expected none")
        return rows

    def _fail(self, unit: str, reason: str) -> None:
        self.failures += 1
        attempts = self._failed[unit] = self._failed.get(unit, 0) + 1
        # A unit that stays unreadable is retried at every poll but logged rarely.
        if attempts == 1 or attempts % 1000 == 0:
            log.warning("cannot read %s (attempt %d): %s. It is read again at each poll, and its rows are not "
                        "counted until it can be", unit, attempts, reason)


def _concat(unit: str, parts: list[pa.Table]) -> pa.Table:
    """Join the files of one unit, widening types as Arrow's permissive promotion does (int32 and float64 to float64)."""
    if len(parts) == 1:
        return parts[0]
    try:
        return pa.concat_tables(parts, promote_options="permissive")
    except pa.ArrowException as exc:
        raise SchemaMismatch(f"the files of {unit} have columns of incompatible types ({exc})") from exc
