"""Crash recovery: ``sparkiot run`` killed with SIGKILL mid-stream, then started again.

Afterwards every replayed reading is in ``tables/readings`` exactly once and every window equals
the pandas reference, although the kill hit the ingest and Spark at an arbitrary moment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml

from sparkiot.ingest.replay import Replayer, load_csv
from tests.support import (
    HOUR_US,
    compare_windows,
    landed_readings,
    pipeline_config,
    publish_payloads,
    read_table,
    reference_windows,
    sentinel_payload,
    wait_for,
)
from tests.test_pipeline import CGM, cgm_reference

pytestmark = [pytest.mark.spark, pytest.mark.mosquitto]


def start_pipeline(config_path, log_path) -> subprocess.Popen:
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", "sparkiot", "run", str(config_path), "--quiet"],
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )


def readings_without_clock(data_dir):
    table = read_table(data_dir, "readings")
    return table[table["device_id"] != "_clock"] if len(table) else table


def test_sigkill_mid_stream_loses_and_duplicates_nothing(tmp_path, unique, mosquitto):
    data_dir = tmp_path / "data"
    config_path = tmp_path / "pipeline.yaml"
    config = pipeline_config(data_dir, unique, mosquitto, source={"client_id": f"sparkiot-crash-{unique}"})
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    reference = cgm_reference()
    series = [load_csv(CGM, device_id="cgm-1", site="clinic")]
    log_path = tmp_path / "pipeline.log"

    first = start_pipeline(config_path, log_path)
    try:
        wait_for(lambda: (data_dir / "ingest_stats.json").exists(), 60, "the first run's ingest to start")
        time.sleep(2)
        # About 60 s of replay: the CGM series spans 181 days.
        replayer = Replayer(series, mosquitto, speed=250_000, batch=100,
                            topic_template=f"it/{unique}/sensors/{{site}}/{{device_id}}")
        replay = threading.Thread(target=replayer.run, daemon=True)
        replay.start()
        # The kill comes while the replay is still running, whatever Spark has reached by then.
        wait_for(lambda: landed_readings(data_dir) > len(reference) // 3, 120, "a third of the readings to land")
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    landed_at_kill = landed_readings(data_dir)
    assert landed_at_kill < len(reference), "the kill must land mid-stream for this test to mean anything"

    second = start_pipeline(config_path, log_path)
    try:
        replay.join(timeout=180)
        assert not replay.is_alive(), "the replay did not finish"
        publish_payloads(mosquitto, [(f"it/{unique}/sensors/lab/_clock", sentinel_payload(int(series[0].ts_us[-1]) + 48 * HOUR_US))])
        wait_for(lambda: len(readings_without_clock(data_dir)) >= len(reference), 240, "every reading after the restart")
        # The broker kept the session, so the second ingest received what was sent while it was down.
        assert landed_readings(data_dir) > 1
        expected_windows = len(reference_windows(reference, size_hours=1)) + len(
            reference_windows(reference, size_hours=6, slide_hours=1))

        def windows_done() -> bool:
            table = read_table(data_dir, "windows")
            return len(table) > 0 and len(table[table["device_id"] != "_clock"]) >= expected_windows

        wait_for(windows_done, 240, "every window after the restart")
    finally:
        os.killpg(second.pid, signal.SIGTERM)
        try:
            second.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(second.pid, signal.SIGKILL)

    readings = readings_without_clock(data_dir)
    assert len(readings) == len(reference)
    assert readings["msg_id"].is_unique
    windows = read_table(data_dir, "windows")
    windows = windows[windows["device_id"] != "_clock"]
    compare_windows(windows[windows["window_name"] == "1h"], reference_windows(reference, size_hours=1))
    compare_windows(windows[windows["window_name"] == "6h/1h"], reference_windows(reference, size_hours=6, slide_hours=1))
