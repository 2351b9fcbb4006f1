"""CSV layouts the replay reads, and the order and content of what it publishes."""

from __future__ import annotations

import gzip
import json
import queue
import threading
from pathlib import Path

import bokeh_sampledata
import numpy as np
import pandas as pd
import paho.mqtt.client as mqtt
import pytest

from sparkiot.ingest.replay import Replayer, load_csv

BOKEH_DATA = Path(bokeh_sampledata.__file__).parent / "_data"


def test_cgm_layout_skips_nil_cells():
    series = load_csv(BOKEH_DATA / "CGM.csv.gz")
    raw = pd.read_csv(BOKEH_DATA / "CGM.csv.gz")

    assert len(series) == len(raw) == 52281
    assert list(series.metrics) == ["isig", "glucose"]
    assert int(np.isnan(series.metrics["isig"]).sum()) == int((raw["isig"] == "nil").sum())
    assert series.ts_us[0] == pd.Timestamp(raw["datetime"].min(), tz="UTC").value // 1000


def test_sea_temperature_unit_from_header():
    series = load_csv(BOKEH_DATA / "sea_surface_temperature.csv.gz")

    assert list(series.metrics) == ["temperature"]
    assert series.units == {"temperature": "Cel"}
    assert len(series) == 19226


def test_nab_layout(shared_data):
    path = shared_data / "nab" / "realKnownCause" / "nyc_taxi.csv"
    raw = pd.read_csv(path)
    data_lines = [line for line in path.read_text().splitlines()[1:] if line.strip()]

    series = load_csv(path, metric="passengers")

    assert series.device_id == "nyc_taxi"
    assert len(series) == len(data_lines)
    assert np.array_equal(series.metrics["passengers"], raw["value"].to_numpy(dtype=float))


@pytest.mark.parametrize("name", ["datatest.txt", "datatest2.txt", "datatraining.txt"])
def test_uci_occupancy_row_id_column(shared_data, name):
    path = shared_data / "uci-occupancy" / name
    with open(path) as handle:
        rows = handle.read().splitlines()[1:]

    series = load_csv(path, device_id="room")

    assert len(series) == len(rows)
    assert list(series.metrics) == ["temperature", "humidity", "light", "co2", "humidityratio", "occupancy"]
    # The first data row's temperature is the third field: after the quoted row id and the date.
    first_temperature = float(rows[0].split(",")[2])
    assert series.metrics["temperature"][0] == first_temperature


def test_gzip_and_column_flags(tmp_path):
    path = tmp_path / "plant.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("when,rpm,label\n2024-01-01 00:00:02,1200,a\n2024-01-01 00:00:01,1100,b\n2024-01-01 00:00:03,,c\n")

    series = load_csv(path, time_column="when", columns=["rpm"], timezone="Europe/Berlin")

    # Rows are sorted by time; times without a zone are read in the given zone.
    assert series.ts_us[0] == pd.Timestamp("2024-01-01 00:00:01", tz="Europe/Berlin").value // 1000
    assert series.metrics["rpm"][:2].tolist() == [1100.0, 1200.0]
    assert np.isnan(series.metrics["rpm"][2])


@pytest.mark.parametrize(
    ("content", "kwargs", "message"),
    [
        ("a,b\n1,2\n", {}, "no time column found"),
        ("time,label\n2024-01-01,x\n", {}, "no numeric value column"),
        ("time,v\n2024-01-01,1\n", {"time_column": "when"}, "time column 'when' not found"),
        ("time,v,w\n2024-01-01,1,2\n", {"metric": "x"}, "renames a single value column"),
        ("time,v\nnot a time,1\n", {}, "holds no readable timestamps"),
        ("time,v\n", {}, "has no data rows"),
    ],
)
def test_bad_csv_messages(tmp_path, content, kwargs, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)

    with pytest.raises(ValueError, match=message):
        load_csv(path, **kwargs)


@pytest.mark.mosquitto
def test_replay_publishes_every_row_in_order(mosquitto, unique):
    series = [
        load_csv(BOKEH_DATA / "CGM.csv.gz", device_id="cgm-1", site="clinic"),
        load_csv(BOKEH_DATA / "sea_surface_temperature.csv.gz", device_id="buoy-1", site="harbour"),
    ]
    series = [s.shifted(1_700_000_000_000_000) for s in series]
    received: queue.SimpleQueue = queue.SimpleQueue()
    subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"replay-check-{unique}")
    subscribed = threading.Event()
    subscriber.on_message = lambda client, userdata, message: received.put(message.payload)
    subscriber.on_subscribe = lambda *args: subscribed.set()
    subscriber.connect("127.0.0.1", int(mosquitto.rsplit(":", 1)[1]))
    subscriber.loop_start()
    subscriber.subscribe(f"rp/{unique}/#", qos=1)
    assert subscribed.wait(10)

    replayer = Replayer(series, mosquitto, speed=0, batch=40, topic_template=f"rp/{unique}/{{site}}/{{device_id}}", limit=2000)
    sent = replayer.run()

    rows = []
    while len(rows) < 2000:
        rows.extend(json.loads(received.get(timeout=20)))
    subscriber.loop_stop()
    subscriber.disconnect()

    assert sent == 2000
    merged = np.sort(np.concatenate([s.ts_us for s in series]), kind="stable")[:2000]
    assert sorted(row["ts"] for row in rows) == merged.tolist()
    assert {row["device_id"] for row in rows} == {"cgm-1", "buoy-1"}
    assert all("glucose" in row for row in rows if row["device_id"] == "cgm-1")


def test_epoch_seconds_time_column(tmp_path):
    path = tmp_path / "epoch.csv"
    path.write_text("ts,v\n1700000000,1\n1700000300,2\n")

    series = load_csv(path)

    assert series.ts_us.tolist() == [1_700_000_000_000_000, 1_700_000_300_000_000]
