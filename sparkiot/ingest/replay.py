"""Replay recorded time series over MQTT at a chosen speed-up.

CSV files (plain or gzip) are read with pandas. Layouts recognised without flags:

* NAB: ``timestamp,value``;
* UCI occupancy: a header of 7 names over rows of 8 fields (pandas takes the quoted row id as
  the index), dates quoted or not;
* ``bokeh-sampledata``: ``CGM.csv.gz`` (``isig,datetime,glucose``) and
  ``sea_surface_temperature.csv.gz`` (``time (UTC),temperature (celsius)``).

The time column is the first whose name contains "time" or "date" or is "ts", unless ``time_column`` names
it; every other numeric column is a metric. A column named ``name (unit)`` becomes metric
``name`` with that unit. Empty cells, and text such as ``nil`` in a column of numbers, are skipped, not sent.

Each message carries up to ``batch`` rows of one device as a JSON array of objects
``{"device_id", "site", "ts", METRIC: VALUE, ...}`` with ``ts`` in epoch microseconds, on topic
``sensors/{site}/{device_id}``. Rows go out in event-time order across all series, each at
``first_wall + (ts - first_ts) / speed``; ``speed=0`` sends as fast as the broker accepts. A
message goes out when it holds ``batch`` rows or its first row has waited ``linger`` seconds.
With ``stop_at_present`` the replay ends instead of sending a row dated after the wall clock.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sparkiot.codecs.timestamps import guess_epoch_unit
from sparkiot.ingest.mqtt_client import connect_publisher

log = logging.getLogger(__name__)

# SenML unit names (RFC 8428, section 12.1) for the unit spellings found in CSV headers.
_SENML_UNITS = {"celsius": "Cel", "degc": "Cel", "percent": "%", "%": "%", "ppm": "ppm", "lux": "lx"}
_UNIT_RE = re.compile(r"^\s*(.*?)\s*\(([^)]*)\)\s*$")


@dataclass
class Series:
    """One device's rows: event times in UTC microseconds and one value array per metric."""

    device_id: str
    site: str | None
    ts_us: np.ndarray
    metrics: dict[str, np.ndarray]
    units: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ts_us)

    def shifted(self, start_us: int) -> "Series":
        """Return a copy whose first reading is at ``start_us``, spacing unchanged."""
        offset = start_us - int(self.ts_us[0])
        return Series(self.device_id, self.site, self.ts_us + offset, self.metrics, self.units)


def _metric_name(column: str) -> tuple[str, str | None]:
    match = _UNIT_RE.match(column)
    if not match:
        return re.sub(r"\W+", "_", column.strip()).strip("_").lower(), None
    name, unit = match.group(1), match.group(2).strip()
    return re.sub(r"\W+", "_", name).strip("_").lower(), _SENML_UNITS.get(unit.lower(), unit)


def load_csv(
    path: str | Path,
    *,
    device_id: str | None = None,
    site: str | None = None,
    time_column: str | None = None,
    columns: list[str] | None = None,
    metric: str | None = None,
    timezone: str = "UTC",
) -> Series:
    """Read a CSV time series; ``metric`` renames the value column when there is exactly one.

    Raises ValueError naming the file and the column when the layout cannot be used.
    """
    path = Path(path)
    try:
        frame = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, EOFError) as exc:
        raise ValueError(f"cannot read {path} as CSV: {exc}") from None
    if frame.empty:
        raise ValueError(f"{path} has no data rows")

    if time_column is None:
        candidates = [name for name in frame.columns if re.search(r"time|date|^ts$", str(name), re.IGNORECASE)]
        if not candidates:
            raise ValueError(f"{path}: no time column found among {list(frame.columns)}; name it with --time-column")
        time_column = candidates[0]
    elif time_column not in frame.columns:
        raise ValueError(f"{path}: time column {time_column!r} not found; columns are {list(frame.columns)}")

    raw_times = frame[time_column]
    if pd.api.types.is_numeric_dtype(raw_times):
        # Epoch numbers: the unit is guessed by magnitude, as the JSON codec's ts_unit 'auto' does.
        unit = guess_epoch_unit(float(raw_times.abs().max()))
        times = pd.to_datetime(raw_times, unit=unit, utc=True, errors="coerce")
    else:
        times = pd.to_datetime(raw_times, utc=False, errors="coerce", format="mixed")
    if times.isna().all():
        raise ValueError(f"{path}: column {time_column!r} holds no readable timestamps")
    if times.dt.tz is None:
        times = times.dt.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT")
    times = times.dt.tz_convert("UTC")

    if columns is None:
        columns = [name for name in frame.columns if name != time_column and _mostly_numeric(frame[name])]
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise ValueError(f"{path}: value columns {missing} not found; columns are {list(frame.columns)}")
    if not columns:
        raise ValueError(f"{path}: no numeric value column; name them with --columns")
    if metric is not None and len(columns) != 1:
        raise ValueError(f"{path}: --metric renames a single value column, but there are {len(columns)}: {columns}")

    keep = times.notna().to_numpy()
    ts_us = _to_microseconds(times[keep])
    order = np.argsort(ts_us, kind="stable")
    metrics: dict[str, np.ndarray] = {}
    units: dict[str, str] = {}
    for column in columns:
        name, unit = _metric_name(str(column))
        if metric is not None:
            name = metric
        values = pd.to_numeric(frame[column], errors="coerce")
        unreadable = int((values.isna() & frame[column].notna()).sum())
        if unreadable:
            log.info("%s: column %r has %d cells that are not numbers; they are skipped", path.name, column, unreadable)
        metrics[name] = values.to_numpy(dtype="float64")[keep][order]
        if unit:
            units[name] = unit
    return Series(device_id or path.name.split(".")[0], site, ts_us[order], metrics, units)


def _mostly_numeric(column: pd.Series) -> bool:
    """Return True for a numeric column, or a text column whose filled cells are at least 90% numbers."""
    if pd.api.types.is_numeric_dtype(column):
        return True
    filled = column.dropna()
    return len(filled) > 0 and pd.to_numeric(filled, errors="coerce").notna().mean() >= 0.9


def _to_microseconds(times: pd.Series) -> np.ndarray:
    return times.dt.as_unit("us").astype("int64").to_numpy()


def payload_row(series: Series, index: int) -> dict:
    """Return the JSON object of row ``index`` of ``series`` (metrics with no value left out)."""
    row: dict = {"device_id": series.device_id, "ts": int(series.ts_us[index])}
    if series.site is not None:
        row["site"] = series.site
    for name, values in series.metrics.items():
        value = values[index]
        if value == value:  # NaN cells are left out
            row[name] = float(value)
    return row


class Replayer:
    """Publish series to a broker in event-time order, paced by ``speed``."""

    def __init__(
        self,
        series: list[Series],
        broker_url: str,
        *,
        speed: float = 1000.0,
        batch: int = 50,
        topic_template: str = "sensors/{site}/{device_id}",
        qos: int = 1,
        protocol: str = "5",
        limit: int | None = None,
        linger: float = 0.1,
        stop_at_present: bool = False,
    ) -> None:
        if speed < 0:
            raise ValueError(f"speed {speed} must be 0 (as fast as possible) or positive")
        self.series = series
        self.broker_url = broker_url
        self.speed = speed
        self.batch = max(1, batch)
        self.topic_template = topic_template
        self.qos = qos
        self.protocol = protocol
        self.limit = limit
        self.linger = linger
        self.stop_at_present = stop_at_present
        self.published_rows = 0
        self.published_messages = 0
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def _merged_order(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        which = np.concatenate([np.full(len(s), i) for i, s in enumerate(self.series)])
        index = np.concatenate([np.arange(len(s)) for s in self.series])
        ts = np.concatenate([s.ts_us for s in self.series])
        order = np.argsort(ts, kind="stable")
        if self.limit is not None:
            order = order[: self.limit]
        return which[order], index[order], ts[order]

    def run(self) -> int:
        """Publish until every row is sent or :meth:`stop`; return the number of rows sent."""
        client = connect_publisher(self.broker_url, protocol=self.protocol)
        which, index, ts = self._merged_order()
        topics = [
            self.topic_template.format(site=s.site or "default", device_id=s.device_id) for s in self.series
        ]
        log.info("replaying %d rows of %d series to %s at speed %g", len(ts), len(self.series), self.broker_url, self.speed)
        first_wall = time.monotonic()
        pending: dict[int, list[dict]] = {}
        pending_since = None
        last_info = None
        position = 0
        try:
            while position < len(ts) and not self._stop.is_set():
                now_wall = time.monotonic()
                if pending and now_wall - pending_since >= self.linger:
                    last_info = self._flush(client, topics, pending) or last_info
                    pending_since = None
                if self.speed > 0:
                    due_wall = first_wall + (ts[position] - ts[0]) / 1e6 / self.speed
                    if due_wall > now_wall:
                        wait = due_wall - now_wall
                        if pending:
                            wait = min(wait, pending_since + self.linger - now_wall)
                        self._stop.wait(max(min(wait, 0.5), 0.0))
                        continue
                    now_ts = ts[0] + (now_wall - first_wall) * self.speed * 1e6
                else:
                    now_ts = float("inf")
                if self.stop_at_present:
                    wall_us = time.time_ns() // 1000
                    # The next row is due (now_ts passed it) but dated after the wall clock.
                    if ts[position] > wall_us and now_ts > wall_us:
                        log.info("replay reached the present; the remaining rows would be dated in the future")
                        break
                    now_ts = min(now_ts, wall_us)

                collected = 0
                while position < len(ts) and ts[position] <= now_ts and collected < self.batch * 50:
                    series_index = int(which[position])
                    rows = pending.setdefault(series_index, [])
                    rows.append(payload_row(self.series[series_index], int(index[position])))
                    pending_since = pending_since or now_wall
                    position += 1
                    collected += 1
                    if len(rows) >= self.batch:
                        last_info = self._flush(client, topics, pending) or last_info
                        pending_since = None
            last_info = self._flush(client, topics, pending) or last_info
            if last_info is not None:
                last_info.wait_for_publish(timeout=60)
                if not last_info.is_published():
                    raise ConnectionError(
                        f"the broker {self.broker_url} did not acknowledge the last message within 60 s; "
                        f"{self.published_rows} rows were handed to the client but may not all have arrived"
                    )
        finally:
            client.disconnect()
            client.loop_stop()
        log.info("replay finished: %d rows in %d messages", self.published_rows, self.published_messages)
        return self.published_rows

    def _flush(self, client, topics: list[str], pending: dict[int, list[dict]]):
        """Publish every pending batch, oldest first row first, so series stay close to event-time order."""
        info = None
        for series_index, rows in sorted(pending.items(), key=lambda item: item[1][0]["ts"] if item[1] else 0):
            if rows:
                info = self._publish(client, topics[series_index], rows)
        pending.clear()
        return info

    def _publish(self, client, topic: str, rows: list[dict]):
        info = client.publish(topic, json.dumps(rows, separators=(",", ":")), qos=self.qos)
        self.published_rows += len(rows)
        self.published_messages += 1
        return info
