"""Helpers for the tests that run the pipeline against Mosquitto and Spark."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from sparkiot.config import PipelineConfig, build_config
from sparkiot.ingest.consumer import Ingest, read_counters
from sparkiot.ingest.mqtt_client import connect_publisher

HOUR_US = 3_600_000_000


def pipeline_config(data_dir: Path, unique: str, broker: str, **overrides) -> PipelineConfig:
    """A pipeline on topics ``it/UNIQUE/sensors/{site}/{device_id}`` with 1 h and 6 h/1 h windows."""
    raw = {
        "name": f"test-{unique}",
        "data_dir": str(data_dir),
        "source": {"broker": broker, "topics": [f"it/{unique}/sensors/#"], "client_id": f"sparkiot-test-{unique}",
                   "session_expiry": "10m"},
        "codec": {"topic_pattern": "it/{_}/sensors/{site}/{device_id}"},
        "watermark": "10m",
        "windows": [{"size": "1h"}, {"size": "6h", "slide": "1h"}],
        "spark": {"master": "local[2]", "trigger": "500ms", "side_trigger": "1s"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return build_config(raw)


class IngestThread:
    """Runs :class:`Ingest` in a background thread for the length of a ``with`` block."""

    def __init__(self, config: PipelineConfig, broker: str) -> None:
        self.ingest = Ingest(config, broker)
        self._thread = threading.Thread(target=self.ingest.run, daemon=True)

    def __enter__(self) -> "IngestThread":
        self._thread.start()
        wait_for(lambda: self.ingest.counters.subscribed, 20, "the ingest to subscribe")
        return self

    def __exit__(self, *exc_info) -> None:
        self.ingest.stop()
        self._thread.join(timeout=30)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll ``predicate`` until it is true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def landed_readings(data_dir: Path) -> int:
    return read_counters(data_dir).get("readings", 0)


def publish_payloads(broker: str, payloads: list[tuple[str, bytes]]) -> None:
    """Publish ``(topic, payload)`` pairs with QoS 1 and wait until the broker has them all."""
    client = connect_publisher(broker)
    try:
        infos = [client.publish(topic, payload, qos=1) for topic, payload in payloads]
        for info in infos:
            info.wait_for_publish(timeout=30)
    finally:
        client.disconnect()
        client.loop_stop()


def sentinel_payload(ts_us: int) -> bytes:
    """One reading of device ``_clock`` that moves the watermark past every earlier window."""
    return json.dumps({"device_id": "_clock", "metric": "tick", "ts": ts_us, "value": 0}).encode()


def read_table(data_dir: Path, table: str) -> pd.DataFrame:
    """Read a Parquet table of the pipeline with pandas (empty when nothing was written yet)."""
    path = Path(data_dir) / "tables" / table
    for _ in range(20):
        try:
            if not path.exists() or not any(path.rglob("*.parquet")):
                return pd.DataFrame()
            return pd.read_parquet(path)
        except FileNotFoundError:
            # A micro-batch is writing files, so Spark may remove its `.spark-staging-*`
            # directory or old partition files during the walk. Read again.
            time.sleep(0.2)
    return pd.read_parquet(path)


def reference_windows(readings: pd.DataFrame, *, size_hours: int, slide_hours: int | None = None) -> pd.DataFrame:
    """Window aggregates computed with pandas alone: one row per (window_start, device_id, metric).

    ``readings`` has columns device_id, metric, ts (UTC) and value. Windows are aligned to the
    epoch, as Spark's ``window`` function aligns them.
    """
    slide_hours = slide_hours or size_hours
    ts_us = readings["ts"].dt.as_unit("us").astype("int64").to_numpy()
    last_start = ts_us - ts_us % (slide_hours * HOUR_US)
    parts = []
    for k in range(size_hours // slide_hours):
        part = readings[["device_id", "metric", "value"]].copy()
        part["window_start_us"] = last_start - k * slide_hours * HOUR_US
        parts.append(part)
    expanded = pd.concat(parts, ignore_index=True)
    grouped = expanded.groupby(["window_start_us", "device_id", "metric"])["value"]
    result = grouped.agg(["count", "mean", "min", "max", "std"]).reset_index().rename(columns={"std": "stddev"})
    result["window_start"] = pd.to_datetime(result["window_start_us"], unit="us", utc=True)
    return result.drop(columns="window_start_us")


def compare_windows(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Assert equal keys, exact counts, min and max, and mean and stddev within 1e-9 relative."""
    keys = ["window_start", "device_id", "metric"]
    actual = actual.copy()
    actual["window_start"] = pd.to_datetime(actual["window_start"], utc=True)
    merged = expected.merge(actual, on=keys, how="outer", suffixes=("_ref", ""), indicator=True)
    only_reference = merged[merged["_merge"] == "left_only"]
    only_pipeline = merged[merged["_merge"] == "right_only"]
    assert len(only_reference) == 0, f"{len(only_reference)} windows missing from the pipeline, first: {only_reference.head(3)}"
    assert len(only_pipeline) == 0, f"{len(only_pipeline)} windows not in the reference, first: {only_pipeline.head(3)}"
    assert (merged["count"] == merged["count_ref"]).all(), "window counts differ"
    assert (merged["min"] == merged["min_ref"]).all(), "window minimums differ"
    assert (merged["max"] == merged["max_ref"]).all(), "window maximums differ"
    np.testing.assert_allclose(merged["mean"], merged["mean_ref"], rtol=1e-9, err_msg="window means differ")
    single = merged["count"] == 1
    assert merged.loc[single, "stddev"].isna().all(), "a one-reading window must have no stddev"
    np.testing.assert_allclose(
        merged.loc[~single, "stddev"], merged.loc[~single, "stddev_ref"], rtol=1e-9, err_msg="window stddevs differ"
    )
