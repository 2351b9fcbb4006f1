"""The main job end to end: replayed real series → Mosquitto → ingest → landing log → Spark → tables.

Each test runs the ingest in a thread and the streaming queries on the shared SparkSession, and
checks the tables against pandas computed independently from the same CSV rows.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import bokeh_sampledata
import pandas as pd
import pytest

from sparkiot.ingest.replay import Replayer, load_csv
from sparkiot.state.sqlite import LatestValueStore
from sparkiot.stream.job import StreamingJob
from tests.support import (
    HOUR_US,
    IngestThread,
    compare_windows,
    landed_readings,
    pipeline_config,
    publish_payloads,
    read_table,
    reference_windows,
    sentinel_payload,
    wait_for,
)

pytestmark = [pytest.mark.spark, pytest.mark.mosquitto]

CGM = Path(bokeh_sampledata.__file__).parent / "_data" / "CGM.csv.gz"


def cgm_reference() -> pd.DataFrame:
    """The glucose monitor's readings straight from the CSV, with pandas only."""
    raw = pd.read_csv(CGM)
    ts = pd.to_datetime(raw["datetime"]).dt.tz_localize("UTC")
    parts = []
    for metric in ("isig", "glucose"):
        values = pd.to_numeric(raw[metric], errors="coerce")
        part = pd.DataFrame({"device_id": "cgm-1", "metric": metric, "ts": ts, "value": values})
        parts.append(part[values.notna()])
    readings = pd.concat(parts, ignore_index=True)
    # The pipeline's contract: the same (device, metric, time, value) sent twice is one reading.
    return readings.drop_duplicates(["device_id", "metric", "ts", "value"])


def nab_reference(path: Path) -> pd.DataFrame:
    raw = pd.read_csv(path)
    readings = pd.DataFrame(
        {"device_id": "machine-1", "metric": "temperature", "ts": pd.to_datetime(raw["timestamp"]).dt.tz_localize("UTC"),
         "value": raw["value"].astype(float)}
    )
    return readings.drop_duplicates(["device_id", "metric", "ts", "value"])


def run_series_through_pipeline(spark, tmp_path, unique, mosquitto, series, expected_readings: int):
    """Replay ``series`` at full speed, advance the watermark past it, and wait for every window."""
    config = pipeline_config(tmp_path / "data", unique, mosquitto)
    topic = f"it/{unique}/sensors/{{site}}/{{device_id}}"
    job = StreamingJob(spark, config)
    with IngestThread(config, mosquitto):
        job.start()
        try:
            Replayer(series, mosquitto, speed=0, batch=200, topic_template=topic).run()
            last_us = max(int(s.ts_us[-1]) for s in series)
            publish_payloads(mosquitto, [(f"it/{unique}/sensors/lab/_clock", sentinel_payload(last_us + 48 * HOUR_US))])
            wait_for(lambda: landed_readings(config.data_path) >= expected_readings + 1, 120, "every reading to land")
            job.process_all_available()
            wait_for(lambda: len(read_table(config.data_path, "readings")) >= expected_readings + 1, 120,
                     "every reading in tables/readings")
            # Windows are written in the micro-batch after the one that moved the watermark.
            previous = -1
            for _ in range(60):
                job.process_all_available()
                count = len(read_table(config.data_path, "windows"))
                if count == previous and count > 0:
                    break
                previous = count
                time.sleep(1.0)
        finally:
            job.stop()
    return config


def windows_of(table: pd.DataFrame, name: str) -> pd.DataFrame:
    return table[(table["window_name"] == name) & (table["device_id"] != "_clock")]


def test_glucose_windows_match_pandas(spark, tmp_path, unique, mosquitto):
    reference = cgm_reference()
    series = [load_csv(CGM, device_id="cgm-1", site="clinic")]
    config = run_series_through_pipeline(spark, tmp_path, unique, mosquitto, series, len(reference))

    readings = read_table(config.data_path, "readings")
    readings = readings[readings["device_id"] != "_clock"]
    assert len(readings) == len(reference)
    assert readings["msg_id"].is_unique

    windows = read_table(config.data_path, "windows")
    compare_windows(windows_of(windows, "1h"), reference_windows(reference, size_hours=1))
    compare_windows(windows_of(windows, "6h/1h"), reference_windows(reference, size_hours=6, slide_hours=1))

    quantiles = windows_of(windows, "1h")
    assert ((quantiles["p50"] >= quantiles["min"]) & (quantiles["p50"] <= quantiles["max"])).all()
    assert ((quantiles["p95"] >= quantiles["p50"]) & (quantiles["p95"] <= quantiles["max"])).all()

    latest = {(row["device_id"], row["metric"]): row for row in LatestValueStore(config.state_path).latest()}
    for metric in ("isig", "glucose"):
        last = reference[reference["metric"] == metric].sort_values("ts").iloc[-1]
        assert latest[("cgm-1", metric)]["value"] == last["value"]
        assert latest[("cgm-1", metric)]["ts_us"] == last["ts"].value // 1000


def test_nab_machine_temperature_windows_match_pandas(spark, tmp_path, unique, mosquitto, shared_data):
    path = shared_data / "nab" / "realKnownCause" / "machine_temperature_system_failure.csv"
    reference = nab_reference(path)
    series = [load_csv(path, device_id="machine-1", site="plant", metric="temperature")]
    config = run_series_through_pipeline(spark, tmp_path, unique, mosquitto, series, len(reference))

    readings = read_table(config.data_path, "readings")
    assert len(readings[readings["device_id"] != "_clock"]) == 22695
    windows = read_table(config.data_path, "windows")
    compare_windows(windows_of(windows, "1h"), reference_windows(reference, size_hours=1))
    compare_windows(windows_of(windows, "6h/1h"), reference_windows(reference, size_hours=6, slide_hours=1))


def test_malformed_payloads_become_dead_letters(spark, tmp_path, unique, mosquitto):
    config = pipeline_config(tmp_path / "data", unique, mosquitto)
    topic = f"it/{unique}/sensors/lab/dev-1"
    base_us = 1_700_000_000_000_000
    good = [
        (topic, json.dumps({"metric": "temp", "ts": base_us + i * 60_000_000, "value": 20.0 + i}).encode())
        for i in range(40)
    ]
    bad = [
        (topic, b"{not json"),
        (topic, b""),
        (topic, b"\xff\xfe\x00"),
        (topic, json.dumps({"metric": "temp", "ts": base_us, "value": "warm"}).encode()),
        (topic, b'{"metric": "temp", "ts": 1700000000000000, "value": NaN}'),
        (topic, json.dumps({"metric": "temp", "ts": "yesterday", "value": 1}).encode()),
        (topic, json.dumps({"metric": "temp", "ts": 946684800 - 10, "value": 1}).encode()),
        (f"it/{unique}/wrong/lab/dev-1", json.dumps({"metric": "temp", "ts": base_us, "value": 1}).encode()),
        (topic, json.dumps([{"metric": "temp", "ts": base_us + 999, "value": 1.5}, {"metric": "temp", "value": 2}]).encode()),
    ]
    expected_reasons = {
        "invalid_json": 1, "empty_payload": 1, "invalid_utf8": 1, "non_numeric_value": 1, "non_finite_value": 1,
        "invalid_timestamp": 1, "timestamp_out_of_range": 1, "missing_timestamp": 1,
    }
    # Interleave bad payloads among good ones.
    payloads = []
    for index, item in enumerate(good):
        payloads.append(item)
        if index < len(bad):
            payloads.append(bad[index])

    job = StreamingJob(spark, config)
    with IngestThread(config, mosquitto):
        job.start()
        try:
            publish_payloads(mosquitto, payloads)
            # 40 good readings plus the good element of the mixed array.
            wait_for(lambda: landed_readings(config.data_path) >= 41, 60, "the good readings to land")
            wait_for(lambda: len(read_table(config.data_path, "dead_letters")) >= 8, 60, "the dead letters in their table")
            job.process_all_available()
        finally:
            job.stop()

    readings = read_table(config.data_path, "readings")
    assert len(readings) == 41
    assert sorted(readings["value"].tolist()) == sorted([20.0 + i for i in range(40)] + [1.5])
    dead = read_table(config.data_path, "dead_letters")
    assert dead["reason"].value_counts().to_dict() == expected_reasons
    assert (dead["raw_size"] >= dead["raw"].str.len()).all()
    # The wrong topic is not subscribed, so it is neither a reading nor a dead letter.
    assert not dead["source"].str.contains("/wrong/").any()
