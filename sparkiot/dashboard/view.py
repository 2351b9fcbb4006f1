"""The dashboard's picture of one pipeline, read from its data directory.

A :class:`DataDirView` reads only files that the pipeline's processes write: the Parquet tables,
``progress.jsonl`` (one line per micro-batch), ``ingest_stats.json``, ``job.json``, the sync
service's ``state.sqlite`` and, when given, edge agents' ``edge_stats.json``. It needs no
connection to Spark, so it runs in its own process (``sparkiot dashboard``), inside ``sparkiot
run`` or inside the control plane, and a restart rebuilds everything from the files.

Guarantees:

- Each count equals the rows of its table once :meth:`poll` has read the table's newest
  partitions (a partition is read once, when Spark has committed it). A partition with a
  damaged file or columns of other types is left out and counted in ``unreadable_files``.
- A value of the wrong type in a JSON file, the progress log or the sync store is left out
  with a rate-limited warning, so it never makes :meth:`poll` raise.
- The end-to-end latency of a reading is the time its partition was written minus its
  ``ingest_ts``: from the moment sparkiot received it to the moment it was stored.
- Series keep the newest ``max_points`` windows each and the alerts feed the newest
  ``max_alerts`` alerts; counts and histograms cover the whole tables.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from sparkiot.dashboard.buckets import BATCH_DURATION_BUCKETS, LATENCY_BUCKETS, BucketCounts
from sparkiot.dashboard.checks import RateLimitedLog, non_negative_number, shown
from sparkiot.dashboard.progress import ProgressLog
from sparkiot.dashboard.tables import Column, PartitionTail

log = logging.getLogger(__name__)

_US = 1_000_000
# Units per second of each Arrow timestamp unit.
_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
# Health figures that move with the clock alone; a change in them alone waits for the refresh.
_MOVING_HEALTH = {"time", "watermark_lag_seconds", "cost_usd"}
HEALTH_REFRESH_SECONDS = 2.0
# The columns each table's reader needs. A file without them, or with other types, is unreadable.
READING_COLUMNS = [
    Column("device_id", "string"), Column("metric", "string"), Column("ts", "timestamp"),
    Column("value", "number", nullable=True), Column("unit", "string", nullable=True),
    Column("site", "string", nullable=True), Column("ingest_ts", "timestamp"),
]
WINDOW_COLUMNS = [
    Column("window_name", "string"), Column("device_id", "string"), Column("metric", "string"),
    Column("window_start", "timestamp"), Column("window_end", "timestamp"), Column("count", "integer"),
    Column("mean", "number", nullable=True), Column("min", "number", nullable=True), Column("max", "number", nullable=True),
]
ALERT_COLUMNS = [
    Column("alert_id", "string"), Column("device_id", "string"), Column("metric", "string"), Column("ts", "timestamp"),
    Column("value", "number", nullable=True), Column("score", "number", nullable=True),
    Column("mean", "number", nullable=True), Column("stddev", "number", nullable=True),
    Column("rule", "string", nullable=True), Column("site", "string", nullable=True), Column("detected_ts", "timestamp"),
]
# The readings query's batch ends from which the batch period is taken.
_BATCH_ENDS_KEPT = 9


def _seconds(table: pa.Table, name: str) -> np.ndarray:
    """Return a timestamp column of an Arrow table as float Unix seconds, whatever its unit and time zone."""
    column = table.column(name)
    # Arrow stores every timestamp as a count of its unit since the Unix epoch in UTC.
    return column.cast(pa.int64()).to_numpy(zero_copy_only=False) / _PER_SECOND[column.type.unit]


def _clean(value):
    """Return a JSON-safe number: NaN and infinities become None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class Series:
    """The windows of one (device, metric, window name), in window start order."""

    start: list[float] = field(default_factory=list)
    end: list[float] = field(default_factory=list)
    count: list[int] = field(default_factory=list)
    mean: list[float | None] = field(default_factory=list)
    low: list[float | None] = field(default_factory=list)
    high: list[float | None] = field(default_factory=list)
    ordered: bool = True

    def add(self, row: dict) -> None:
        if self.start and row["start"] < self.start[-1]:
            self.ordered = False
        self.start.append(row["start"])
        self.end.append(row["end"])
        self.count.append(row["count"])
        self.mean.append(row["mean"])
        self.low.append(row["min"])
        self.high.append(row["max"])

    def settle(self, max_points: int) -> None:
        """Sort by window start if needed and keep the newest ``max_points`` windows."""
        columns = ("start", "end", "count", "mean", "low", "high")
        if not self.ordered:
            order = sorted(range(len(self.start)), key=self.start.__getitem__)
            for name in columns:
                values = getattr(self, name)
                setattr(self, name, [values[i] for i in order])
            self.ordered = True
        excess = len(self.start) - max_points
        if excess > 0:
            for name in columns:
                del getattr(self, name)[:excess]


@dataclass
class Update:
    """The rows and figures one :meth:`DataDirView.poll` found new, pushed to the dashboard's clients."""

    version: int
    fleet: list[dict]
    windows: list[dict]
    alerts: list[dict]
    health: dict | None
    """The health figures when a count changed or a refresh is due, else None."""
    sites: list[dict] | None
    """Every site's sync state when any of it changed, else None."""

    @property
    def empty(self) -> bool:
        return not (self.fleet or self.windows or self.alerts) and self.health is None and self.sites is None


class DataDirView:
    """The dashboard's picture of one pipeline's data directory, brought up to date by :meth:`poll`.

    ``runtime()``, when given, returns ``{"executors": int, "cost_usd": {platform: str}}`` from
    the control plane; otherwise the cost is that of the driver described by ``job.json`` at
    ``prices``' ``platform`` rate. ``stale_intervals`` is how many reporting intervals of
    silence make a device stale; ``site_offline_seconds`` is how long without a sync makes a
    site offline.
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        name: str | None = None,
        edge_dirs: tuple[str | Path, ...] = (),
        stale_intervals: float = 3.0,
        site_offline_seconds: float = 300.0,
        default_interval_seconds: float = 60.0,
        runtime: Callable[[], dict] | None = None,
        platform: str = "emr_serverless",
        prices=None,
        max_points: int = 20_000,
        max_alerts: int = 1_000,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.name = name or _pipeline_name(self.data_dir)
        self.edge_dirs = [Path(path) for path in edge_dirs]
        self.stale_intervals = stale_intervals
        self.site_offline_seconds = site_offline_seconds
        self.default_interval_seconds = default_interval_seconds
        self.runtime = runtime
        self.platform = platform
        self.prices = prices
        self.max_points = max_points
        self.max_alerts = max_alerts
        self.lock = threading.RLock()
        self.version = 0
        self.polls = 0

        tables = self.data_dir / "tables"
        self._readings = PartitionTail(tables / "readings", columns=READING_COLUMNS)
        self._windows = PartitionTail(tables / "windows", columns=WINDOW_COLUMNS)
        self._alerts = PartitionTail(tables / "alerts", columns=ALERT_COLUMNS)
        self._late = PartitionTail(tables / "late", columns=[Column("device_id", "string")])
        self._dead = PartitionTail(tables / "dead_letters", columns=[Column("reason", "string")])
        self._progress = ProgressLog(self.data_dir / "progress.jsonl")

        self.counts = {"readings": 0, "windows": 0, "alerts": 0, "late": 0, "dead_letters": 0}
        self.dead_letters_by_reason: dict[str, int] = {}
        self.latency = BucketCounts(LATENCY_BUCKETS)
        self.batch_durations: dict[str, BucketCounts] = {}
        self.batches: dict[str, int] = {}
        # Per query, the checked figures of its last progress line (None where a value was invalid).
        self.last_progress: dict[str, dict] = {}
        self._batch_ends: deque[float] = deque(maxlen=_BATCH_ENDS_KEPT)
        self.batch_period: float | None = None
        """Recent seconds between the readings query's micro-batches, or None before the first."""
        # (device, metric) -> the newest reading, when it arrived and the reporting interval.
        self.latest: dict[tuple[str, str], dict] = {}
        self.series: dict[tuple[str, str, str], Series] = {}
        self.alert_feed: deque[dict] = deque(maxlen=max_alerts)
        self.markers: dict[tuple[str, str], deque] = {}
        self.ingest: dict = {}
        self.readings_received: int | float | None = None
        """The ingest's ``readings`` counter, which restarts from 0 when the ingest restarts."""
        self.job: dict = {}
        self._warnings = RateLimitedLog(log)
        self._offline_since: dict[str, float] = {}
        self._health: dict = {}
        self._sites: list[dict] = []
        self._sent_counts: dict | None = None
        self._sent_health = 0.0

    # -- reading the files ---------------------------------------------------------------

    def poll(self) -> Update:
        """Read what the pipeline wrote since the last call and return it as an :class:`Update`."""
        with self.lock:
            self.polls += 1
            fleet = self._poll_readings()
            windows = self._poll_windows()
            alerts = self._poll_alerts()
            for partition in self._late.poll():
                self.counts["late"] += partition.rows.num_rows - partition.replaced
            self._poll_dead_letters()
            self._poll_progress()
            self.ingest = _read_json(self.data_dir / "ingest_stats.json")
            self.readings_received = self._number(self.ingest.get("readings"), "ingest_stats.json", "readings")
            self.job = _read_json(self.data_dir / "job.json")
            sites = self._read_sites()
            sites_changed = sites != self._sites
            self._sites = sites
            self._health = self._build_health()
            if fleet or windows or alerts:
                self.version += 1
            # Health goes out when a count changed, else every few seconds for the rates and lags.
            counts = {k: v for k, v in self._health.items() if k not in _MOVING_HEALTH}
            now = time.monotonic()
            send_health = counts != self._sent_counts or now - self._sent_health >= HEALTH_REFRESH_SECONDS
            if send_health:
                self._sent_counts, self._sent_health = counts, now
            return Update(self.version, fleet, windows, alerts, self._health if send_health else None,
                          sites if sites_changed else None)

    def _poll_readings(self) -> list[dict]:
        changed: dict[tuple[str, str], dict] = {}
        for partition in self._readings.poll():
            self.counts["readings"] += partition.rows.num_rows - partition.replaced
            if partition.replaced or partition.rows.num_rows == 0:
                continue
            self.latency.observe(partition.written - _seconds(partition.rows, "ingest_ts"))
            frame = partition.rows.select(["device_id", "metric", "value", "unit", "site"]).to_pandas()
            frame = frame.assign(ts_s=_seconds(partition.rows, "ts")).sort_values(["device_id", "metric", "ts_s"], kind="stable")
            spacing = frame.groupby(["device_id", "metric"], sort=False)["ts_s"].diff()
            intervals = spacing[spacing > 0].groupby([frame["device_id"], frame["metric"]]).median()
            newest = frame.groupby(["device_id", "metric"], sort=False).tail(1)
            for row in newest.itertuples(index=False):
                key = (row.device_id, row.metric)
                previous = self.latest.get(key)
                if previous is not None and previous["ts"] > row.ts_s:
                    previous["arrived"] = partition.written
                    continue
                interval = intervals.get(key)
                entry = {
                    "device_id": row.device_id,
                    "metric": row.metric,
                    "value": _clean(row.value),
                    "unit": row.unit,
                    "site": row.site,
                    "ts": float(row.ts_s),
                    "arrived": partition.written,
                    "interval": float(interval) if interval is not None and not pd.isna(interval)
                    else (previous or {}).get("interval"),
                }
                self.latest[key] = entry
                changed[key] = entry
        now = time.time()
        return [self._fleet_row(entry, now) for entry in changed.values()]

    def _poll_windows(self) -> list[dict]:
        new_rows: list[dict] = []
        touched: set[tuple[str, str, str]] = set()
        for partition in self._windows.poll():
            self.counts["windows"] += partition.rows.num_rows - partition.replaced
            if partition.replaced or partition.rows.num_rows == 0:
                continue
            rows = partition.rows
            frame = rows.select(["window_name", "device_id", "metric", "count", "mean", "min", "max"]).to_pandas()
            frame = frame.assign(start=_seconds(rows, "window_start"), end=_seconds(rows, "window_end"))
            frame = frame.sort_values("start", kind="stable")
            for row in frame.itertuples(index=False):
                key = (row.device_id, row.metric, row.window_name)
                point = {
                    "device_id": row.device_id,
                    "metric": row.metric,
                    "window": row.window_name,
                    "start": float(row.start),
                    "end": float(row.end),
                    "count": int(row.count),
                    "mean": _clean(row.mean),
                    "min": _clean(row.min),
                    "max": _clean(row.max),
                    "written": partition.written,
                }
                self.series.setdefault(key, Series()).add(point)
                touched.add(key)
                new_rows.append(point)
        for key in touched:
            self.series[key].settle(self.max_points)
        return new_rows

    def _poll_alerts(self) -> list[dict]:
        new_alerts: list[dict] = []
        for partition in self._alerts.poll():
            self.counts["alerts"] += partition.rows.num_rows - partition.replaced
            if partition.replaced or partition.rows.num_rows == 0:
                continue
            rows = partition.rows
            frame = rows.drop_columns(["ts", "detected_ts"]).to_pandas()
            frame = frame.assign(ts_s=_seconds(rows, "ts"), detected_s=_seconds(rows, "detected_ts"))
            for row in frame.itertuples(index=False):
                alert = {
                    "alert_id": row.alert_id,
                    "device_id": row.device_id,
                    "metric": row.metric,
                    "ts": float(row.ts_s),
                    "value": _clean(row.value),
                    "score": _clean(row.score),
                    "mean": _clean(row.mean),
                    "stddev": _clean(row.stddev),
                    "rule": row.rule,
                    "site": row.site,
                    "detected": float(row.detected_s),
                }
                new_alerts.append(alert)
        # One copy step writes a file per date with the same first offset, so file order is not
        # alert order. The feed is newest first by detection time, then by event time.
        new_alerts.sort(key=lambda alert: (alert["detected"], alert["ts"], alert["alert_id"]))
        for alert in new_alerts:
            self.alert_feed.appendleft(alert)
            self.markers.setdefault((alert["device_id"], alert["metric"]), deque(maxlen=self.max_alerts)).append(alert)
        return new_alerts

    def _poll_dead_letters(self) -> None:
        for partition in self._dead.poll():
            self.counts["dead_letters"] += partition.rows.num_rows - partition.replaced
            if partition.replaced:
                # A rewritten batch contains the same rows, so its reasons were counted already.
                continue
            for reason, count in pd.Series(partition.rows.column("reason").to_pylist()).value_counts().items():
                self.dead_letters_by_reason[reason] = self.dead_letters_by_reason.get(reason, 0) + int(count)

    def _poll_progress(self) -> None:
        for line in self._progress.read_new():
            query = line.get("query")
            if not isinstance(query, str):
                continue
            progress = {name: self._number(line.get(name), "progress.jsonl", name)
                        for name in ("batch_ms", "input_rate", "process_rate", "executors", "time")}
            progress["watermark"] = self._text(line.get("watermark"), "progress.jsonl", "watermark")
            self.last_progress[query] = progress
            self.batches[query] = self.batches.get(query, 0) + 1
            if progress["batch_ms"] is not None:
                durations = self.batch_durations.setdefault(query, BucketCounts(BATCH_DURATION_BUCKETS))
                durations.observe([progress["batch_ms"] / 1000])
            if query == "readings" and progress["time"] is not None:
                self._batch_ends.append(progress["time"])
        self.batch_period = self._recent_batch_period()

    def _recent_batch_period(self) -> float | None:
        """Return the median time between the readings query's recent batch ends, at least its last batch's duration.

        The median ignores one long pause, such as a restart of the job.
        """
        ends = list(self._batch_ends)
        gaps = [later - earlier for earlier, later in zip(ends, ends[1:]) if later > earlier]
        candidates = [statistics.median(gaps)] if gaps else []
        batch_ms = self.last_progress.get("readings", {}).get("batch_ms")
        if batch_ms is not None:
            candidates.append(batch_ms / 1000)
        return max(candidates) if candidates else None

    # -- sites ---------------------------------------------------------------------------

    def _read_sites(self) -> list[dict]:
        now = time.time()
        sites: dict[str, dict] = {}
        for entry in self.latest.values():
            if entry["site"]:
                site = sites.setdefault(entry["site"], _site(entry["site"]))
                site["devices"].add(entry["device_id"])
                site["last_reading"] = max(site["last_reading"] or 0.0, entry["arrived"])
        for name, synced_us, seq, invalid in _sync_versions(self.data_dir / "state.sqlite"):
            if not isinstance(name, str):
                self._invalid("state.sqlite", "sync_versions.site", name, "text")
                continue
            if invalid:
                self._warnings.warning(f"state.sqlite updated_us {name}", "dashboard of %s: state.sqlite has %d rows of "
                                       "site %s whose sync_versions.updated_us is not a number of Unix microseconds; the "
                                       "dashboard ignores them", self.name, invalid, name)
            site = sites.setdefault(name, _site(name))
            synced_us = self._number(synced_us, "state.sqlite", f"sync_versions.updated_us of site {name}")
            site["last_sync"] = synced_us / _US if synced_us is not None else None
            site["synced_seq"] = self._number(seq, "state.sqlite", f"the sum of sync_versions.seq of site {name}")
        for path in self.edge_dirs:
            stats = _read_json(path / "edge_stats.json")
            if isinstance(stats.get("site"), str):
                source = str(path / "edge_stats.json")
                site = sites.setdefault(stats["site"], _site(stats["site"]))
                site["backlog_readings"] = self._number(stats.get("buffer_readings"), source, "buffer_readings")
                connected = stats.get("uplink_connected")
                if connected is not None and not isinstance(connected, bool):
                    self._invalid(source, "uplink_connected", connected, "true or false")
                    connected = None
                site["uplink_connected"] = connected
        result = []
        for name in sorted(sites):
            site = sites[name]
            offline = site["uplink_connected"] is False or (
                site["last_sync"] is not None and now - site["last_sync"] > self.site_offline_seconds
            )
            if offline:
                site["offline_since"] = self._offline_since.setdefault(name, site["last_sync"] or now)
            else:
                self._offline_since.pop(name, None)
            site["devices"] = len(site["devices"])
            result.append(site)
        return result

    # -- what the pages and the metrics read -----------------------------------------------

    def _fleet_row(self, entry: dict, now: float) -> dict:
        interval = entry["interval"] or self.default_interval_seconds
        # A reading arrives only with its micro-batch, so a series faster than the batches would
        # look stale between two batches unless the limit also covers a few batch periods.
        stale_after = self.stale_intervals * max(interval, self.batch_period or 0.0)
        silent = now - entry["arrived"]
        return {
            **entry,
            "silent_seconds": round(silent, 3),
            "stale_after": stale_after,
            "stale": silent > stale_after,
        }

    def fleet(self) -> list[dict]:
        """Return every (device, metric)'s newest reading with its staleness, by device then metric."""
        now = time.time()
        with self.lock:
            return [self._fleet_row(self.latest[key], now) for key in sorted(self.latest)]

    def sites(self) -> list[dict]:
        with self.lock:
            return list(self._sites)

    def window_names(self, device_id: str, metric: str) -> list[str]:
        with self.lock:
            return sorted(name for device, m, name in self.series if device == device_id and m == metric)

    def series_points(self, device_id: str, metric: str, window: str | None = None) -> dict:
        """Return the windows and the alert markers of one series; ``window`` defaults to the shortest name."""
        with self.lock:
            names = self.window_names(device_id, metric)
            if window is None and names:
                window = min(names, key=lambda name: (len(name), name))
            series = self.series.get((device_id, metric, window)) if window else None
            markers = list(self.markers.get((device_id, metric), ()))
            return {
                "device_id": device_id,
                "metric": metric,
                "window": window,
                "windows": names,
                "start": list(series.start) if series else [],
                "end": list(series.end) if series else [],
                "count": list(series.count) if series else [],
                "mean": list(series.mean) if series else [],
                "min": list(series.low) if series else [],
                "max": list(series.high) if series else [],
                "alerts": [{"ts": a["ts"], "value": a["value"], "score": a["score"], "alert_id": a["alert_id"]} for a in markers],
            }

    def alerts(self, limit: int = 100) -> list[dict]:
        """Return the newest ``limit`` alerts, newest first."""
        with self.lock:
            return list(self.alert_feed)[:limit]

    def health(self) -> dict:
        with self.lock:
            return dict(self._health)

    def _build_health(self) -> dict:
        readings = self.last_progress.get("readings", {})
        now = time.time()
        runtime = self._runtime()
        executors = runtime.get("executors", readings.get("executors"))
        return {
            "pipeline": self.name,
            "time": now,
            "master": self._text(self.job.get("master"), "job.json", "master"),
            "input_rate": readings.get("input_rate"),
            "process_rate": readings.get("process_rate"),
            "batch_seconds": readings["batch_ms"] / 1000 if readings.get("batch_ms") is not None else None,
            "watermark": readings.get("watermark"),
            "watermark_lag_seconds": _lag(readings.get("watermark"), now),
            "batches": dict(self.batches),
            "readings_received_since_ingest_start": self.readings_received,
            "readings_stored": self.counts["readings"],
            "windows": self.counts["windows"],
            "alerts": self.counts["alerts"],
            "late": self.counts["late"],
            "dead_letters": self.counts["dead_letters"],
            "dead_letters_by_reason": dict(sorted(self.dead_letters_by_reason.items())),
            "executors": executors,
            "cost_usd": runtime.get("cost_usd", {}),
            "cost_platform": self.platform,
            "latency_p50_seconds": _finite_or_none(self.latency.quantile(0.5)),
            "latency_p99_seconds": _finite_or_none(self.latency.quantile(0.99)),
            "unreadable_files": sum(tail.unreadable for tail in (self._readings, self._windows, self._alerts, self._late, self._dead)),
            "devices": len({device for device, _ in self.latest}),
            "stale_series": sum(1 for row in (self._fleet_row(e, now) for e in self.latest.values()) if row["stale"]),
        }

    def _runtime(self) -> dict:
        if self.runtime is not None:
            try:
                return self.runtime()
            except Exception as exc:  # noqa: BLE001 - the page still shows everything else
                self._warnings.warning("runtime", "dashboard of %s: cannot read the runtime's status: %s", self.name, exc)
                return {}
        return {"cost_usd": self._local_cost()}

    def _local_cost(self) -> dict:
        """Price the driver described by ``job.json`` from its start until its stop, or until now while it runs.

        NOTE: a driver killed without :meth:`StreamingJob.stop` leaves no stop time, so its cost
        grows until the next start of the job rewrites ``job.json``.
        """
        if self.prices is None or self.job.get("started") is None:
            return {}
        started = self._number(self.job.get("started"), "job.json", "started")
        cores = self._number(self.job.get("driver_cores"), "job.json", "driver_cores")
        memory_bytes = self._number(self.job.get("driver_memory_bytes"), "job.json", "driver_memory_bytes")
        if started is None or cores is None or memory_bytes is None:
            if "driver_cores" not in self.job or "driver_memory_bytes" not in self.job:
                self._warnings.warning("job.json driver", "dashboard of %s: job.json has no driver_cores or "
                                       "driver_memory_bytes, so the driver's cost is not shown", self.name)
            return {}
        end = time.time()
        stopped = self._number(self.job.get("stopped"), "job.json", "stopped")
        if stopped is not None and stopped >= started:
            end = stopped
        elif stopped is not None:
            self._warnings.warning("job.json stopped", "dashboard of %s: job.json has stopped %s before started %s; "
                                   "the cost is priced until now", self.name, stopped, started)
        from sparkiot.serverless.metering import Holding, held_memory_mib, price

        holding = Holding("driver", "driver", float(cores), held_memory_mib(int(memory_bytes)), float(started), end)
        try:
            return {self.platform: cost_text(price([holding], self.prices, self.platform))}
        except ValueError as exc:
            self._warnings.warning("price", "dashboard of %s: cannot price the driver at platform %s: %s",
                                   self.name, self.platform, exc)
            return {}

    def _number(self, value: object, source: str, name: str) -> int | float | None:
        """Return ``value`` if it is a finite number of at least 0, else None. Any other value but a missing one is logged."""
        number = non_negative_number(value)
        if number is None and value is not None:
            self._invalid(source, name, value, "a finite number of at least 0 (not a bool or a string)")
        return number

    def _text(self, value: object, source: str, name: str) -> str | None:
        """Return ``value`` if it is a string, else None. Any other value but a missing one is logged."""
        if isinstance(value, str) or value is None:
            return value
        self._invalid(source, name, value, "a string")
        return None

    def _invalid(self, source: str, name: str, value: object, expected: str) -> None:
        self._warnings.warning(f"{source} {name}", "dashboard of %s: %s has %s = %s, expected %s; the dashboard ignores "
                               "it, so correct the file or the program that writes it", self.name, source, name,
                               shown(value), expected)


def cost_text(bill) -> str:
    """Return a bill's exact amount to a hundredth of a cent: a live pipeline's cost grows by fractions of a cent."""
    return f"{bill.usd:.4f}"


def _site(name: str) -> dict:
    return {
        "site": name,
        "devices": set(),
        "last_reading": None,
        "last_sync": None,
        "synced_seq": None,
        "backlog_readings": None,
        "uplink_connected": None,
        "offline_since": None,
    }


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def _pipeline_name(data_dir: Path) -> str:
    """Return the ``name`` of ``pipeline.json`` when it is a non-empty string, else the directory's name."""
    name = _read_json(data_dir / "pipeline.json").get("name")
    if isinstance(name, str) and name:
        return name
    if name is not None:
        log.warning("%s has name %s, expected a non-empty string; the dashboard calls the pipeline %s",
                    data_dir / "pipeline.json", shown(name), data_dir.name)
    return data_dir.name


# SQLite keeps a value of another type in an INTEGER column, such as text that is no number, so
# only integer and real values of updated_us count, and the others are counted apart.
_SYNC_VERSIONS_QUERY = """
SELECT site,
       max(CASE WHEN typeof(updated_us) IN ('integer', 'real') THEN updated_us END),
       sum(seq),
       sum(typeof(updated_us) NOT IN ('integer', 'real'))
FROM sync_versions GROUP BY site ORDER BY site
"""


def _sync_versions(path: Path) -> list[tuple]:
    """Return ``(site, last sync in Unix microseconds, delta groups merged, rows without a numeric time)`` per site.

    The values come from a SQLite sync store unchecked, so the caller checks their types.
    """
    if not path.exists():
        return []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
        try:
            return list(db.execute(_SYNC_VERSIONS_QUERY))
        finally:
            db.close()
    except sqlite3.Error:
        # No sync service wrote here yet (no table), or the file is being created.
        return []


def _lag(watermark: str | None, now: float) -> float | None:
    if not watermark:
        return None
    try:
        moment = datetime.fromisoformat(watermark.replace("Z", "+00:00")).timestamp()
    except (ValueError, OverflowError, OSError):
        return None
    return round(now - moment, 3)


def _finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
