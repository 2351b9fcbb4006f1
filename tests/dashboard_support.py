"""Write tables in the job's two layouts, for the dashboard tests that need no Spark."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sparkiot.readings import ALERT_SCHEMA, DEAD_LETTER_SCHEMA, LATE_SCHEMA, READING_SCHEMA

_US = 1_000_000

WINDOW_SCHEMA = pa.schema([
    ("window_name", pa.string()),
    ("device_id", pa.string()),
    ("metric", pa.string()),
    ("window_start", pa.timestamp("us", tz="UTC")),
    ("window_end", pa.timestamp("us", tz="UTC")),
    ("count", pa.int64()),
    ("mean", pa.float64()),
    ("min", pa.float64()),
    ("max", pa.float64()),
    ("stddev", pa.float64()),
    ("p50", pa.float64()),
    ("p95", pa.float64()),
])


def reading_rows(rows: list[tuple]) -> pa.Table:
    """Build readings from ``(device_id, metric, ts_seconds, value, site, ingest_seconds)`` tuples."""
    return pa.table(
        {
            "device_id": [r[0] for r in rows],
            "metric": [r[1] for r in rows],
            "ts": pa.array([int(r[2] * _US) for r in rows], pa.timestamp("us", tz="UTC")),
            "value": [float(r[3]) for r in rows],
            "unit": [None] * len(rows),
            "site": [r[4] for r in rows],
            "msg_id": [uuid.uuid4().hex for _ in rows],
            "ingest_ts": pa.array([int(r[5] * _US) for r in rows], pa.timestamp("us", tz="UTC")),
            "source": ["test"] * len(rows),
            "marks": [[] for _ in rows],
        },
        schema=READING_SCHEMA,
    )


def window_rows(rows: list[tuple]) -> pa.Table:
    """Build windows from ``(window_name, device_id, metric, start_s, end_s, count, mean, min, max)`` tuples."""
    columns = list(zip(*rows)) if rows else [[] for _ in range(9)]
    return pa.table(
        {
            "window_name": list(columns[0]),
            "device_id": list(columns[1]),
            "metric": list(columns[2]),
            "window_start": pa.array([int(v * _US) for v in columns[3]], pa.timestamp("us", tz="UTC")),
            "window_end": pa.array([int(v * _US) for v in columns[4]], pa.timestamp("us", tz="UTC")),
            "count": list(columns[5]),
            "mean": list(columns[6]),
            "min": list(columns[7]),
            "max": list(columns[8]),
            "stddev": [0.0] * len(rows),
            "p50": list(columns[6]),
            "p95": list(columns[8]),
        },
        schema=WINDOW_SCHEMA,
    )


def alert_rows(rows: list[tuple]) -> pa.Table:
    """Build alerts from ``(alert_id, device_id, metric, ts_s, value, score)`` tuples."""
    n = len(rows)
    return pa.table(
        {
            "alert_id": [r[0] for r in rows],
            "device_id": [r[1] for r in rows],
            "metric": [r[2] for r in rows],
            "ts": pa.array([int(r[3] * _US) for r in rows], pa.timestamp("us", tz="UTC")),
            "value": [float(r[4]) for r in rows],
            "score": [float(r[5]) for r in rows],
            "mean": [0.0] * n,
            "stddev": [1.0] * n,
            "rule": ["zscore"] * n,
            "site": ["s1"] * n,
            "detected_ts": pa.array([int(r[3] * _US) for r in rows], pa.timestamp("us", tz="UTC")),
        },
        schema=ALERT_SCHEMA,
    )


def dead_letter_rows(reasons: list[str], received_s: float) -> pa.Table:
    n = len(reasons)
    return pa.table(
        {
            "raw": [b"x"] * n,
            "raw_size": [1] * n,
            "source": ["test"] * n,
            "reason": reasons,
            "detail": ["bad"] * n,
            "received_ts": pa.array([int(received_s * _US)] * n, pa.timestamp("us", tz="UTC")),
        },
        schema=DEAD_LETTER_SCHEMA,
    )


def late_rows(count: int, ts_s: float) -> pa.Table:
    readings = reading_rows([("d", "m", ts_s, 1.0, None, ts_s)] * count)
    return readings.append_column(LATE_SCHEMA.field("watermark"), pa.array([int(ts_s * _US)] * count, pa.timestamp("us", tz="UTC")))


def write_batch(data_dir: Path, table: str, batch_id: int, rows: pa.Table, *, date: str = "2026-01-01",
                written: float | None = None) -> Path:
    """Write one Spark-layout batch folder atomically, as Spark's commit does; ``written`` sets its time."""
    final = Path(data_dir) / "tables" / table / f"date={date}" / f"batch_id={batch_id}"
    staging = final.parent.parent / f".staging-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    pq.write_table(rows, staging / "part-00000.parquet")
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        for child in final.iterdir():
            child.unlink()
        final.rmdir()
    os.replace(staging, final)
    if written is not None:
        os.utime(final, (written, written))
    return final


def write_side_file(data_dir: Path, table: str, first: int, last: int, rows: pa.Table, *, date: str = "2026-01-01") -> Path:
    """Write one side-table file (``date=D/part-FROM-TO.parquet``) under a hidden name, then rename it."""
    folder = Path(data_dir) / "tables" / table / f"date={date}"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"part-{first:020d}-{last:020d}.parquet"
    temporary = folder / f".{target.name}.tmp"
    pq.write_table(rows, temporary)
    os.replace(temporary, target)
    return target
