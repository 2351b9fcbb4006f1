"""Copies of the side logs (late readings, dead letters, alerts, device events) into Parquet tables.

These tables need no Spark: each record is copied once, unchanged, with a ``date`` partition.
Running them as Spark streaming queries cost a Python data source process of about 95 MiB and
a few seconds of CPU per query start, so a thread of the job's driver process copies them.

Exactly once: a step reads the offsets after the last committed one, writes one file per date
named by that offset range (``date=D/part-START-END.parquet``, written to a temporary name and
renamed), and only then records the new offset in ``DATA_DIR/checkpoints/NAME.json``. A step
repeated after a crash rewrites the same files under the same names.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sparkiot.ingest.landing import LogReader

log = logging.getLogger(__name__)


class SideTable:
    """Copies one landing log into one Parquet table partitioned by the date of ``date_column``."""

    def __init__(
        self,
        *,
        name: str,
        log_dir: Path,
        table_dir: Path,
        checkpoint: Path,
        date_column: str,
        on_batch: Callable[[pa.Table], None] | None = None,
    ) -> None:
        self.name = name
        self.table_dir = table_dir
        self.checkpoint = checkpoint
        self.date_column = date_column
        self.on_batch = on_batch
        self._reader = LogReader(log_dir)

    def committed(self) -> int:
        try:
            return int(json.loads(self.checkpoint.read_text())["offset"])
        except (OSError, ValueError, KeyError):
            return self._reader.first_offset()

    def step(self) -> int:
        """Copy every record landed since the last step; return how many were copied."""
        start = self.committed()
        end = self._reader.end_offset()
        if end <= start:
            return 0
        batches = list(self._reader.read(start, end))
        table = pa.Table.from_batches(batches) if batches else None
        copied = 0 if table is None else table.num_rows
        if copied:
            self._write(table, start, end)
            if self.on_batch is not None:
                self.on_batch(table)

        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.checkpoint.with_suffix(".tmp")
        temporary.write_text(json.dumps({"offset": end}))
        os.replace(temporary, self.checkpoint)
        self._reader.commit(f"table-{self.name}", end)
        return copied

    def _write(self, table: pa.Table, start: int, end: int) -> None:
        dates = pc.strftime(table.column(self.date_column), format="%Y-%m-%d")
        for date in pc.unique(dates).to_pylist():
            part = table.filter(pc.equal(dates, date))
            folder = self.table_dir / f"date={date}"
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"part-{start:020d}-{end:020d}.parquet"
            temporary = folder / f".{target.name}.tmp"
            pq.write_table(part, temporary)
            os.replace(temporary, target)


class SideTableCopier:
    """Runs :meth:`SideTable.step` for every side table every ``interval`` seconds in a thread."""

    def __init__(self, tables: list[SideTable], *, interval: float, on_copied: Callable[[str, int], None]) -> None:
        self.tables = tables
        self.interval = interval
        self.on_copied = on_copied
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="side-tables", daemon=True)
        self._failures = 0

    def start(self) -> None:
        self._thread.start()

    def step_all(self) -> list[str]:
        """Copy everything landed so far into every table; return the errors, one line each."""
        errors = []
        with self._lock:
            for table in self.tables:
                try:
                    copied = table.step()
                except Exception as exc:  # noqa: BLE001 - reported, and the copy is retried next step
                    errors.append(f"copying landing log {table.name} to its table failed: {type(exc).__name__}: {exc}")
                    continue
                self.on_copied(table.name, copied)
        return errors

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            errors = self.step_all()
            if errors:
                self._failures += 1
                if self._failures <= 10:
                    log.error("%s; retrying in %g s", "; ".join(errors), self.interval)
            else:
                self._failures = 0

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
