"""The dashboard's view of a data directory, its metrics and its HTTP side, on tables written here."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from types import SimpleNamespace

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.dashboard_support import (
    alert_rows,
    dead_letter_rows,
    late_rows,
    reading_rows,
    window_rows,
    write_batch,
    write_side_file,
)
from sparkiot.dashboard.buckets import LATENCY_BUCKETS, BucketCounts
from sparkiot.dashboard.metrics import registry_for
from sparkiot.dashboard.progress import ProgressLog
from sparkiot.dashboard.view import DataDirView
from sparkiot.state.crdt_store import SqliteCrdtStore

T0 = 1_790_000_000.0


def metric_samples(view: DataDirView) -> dict[tuple, float]:
    from prometheus_client import generate_latest

    text = generate_latest(registry_for(lambda: [view])).decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "pipeline"))
            samples[(sample.name, labels)] = sample.value
    return samples


def test_counts_equal_table_rows(tmp_path):
    now = time.time()
    first = reading_rows([("d1", "temp", T0 + i, 20 + i, "s1", now - 1) for i in range(5)])
    second = reading_rows([("d2", "co2", T0 + i, 400 + i, "s2", now - 1) for i in range(3)])
    write_batch(tmp_path, "readings", 0, first)
    write_batch(tmp_path, "readings", 1, second, date="2026-01-02")
    write_batch(tmp_path, "windows", 0, window_rows([("1h", "d1", "temp", T0, T0 + 3600, 5, 22.0, 20.0, 24.0)]))
    write_side_file(tmp_path, "late", 0, 1, late_rows(2, T0))
    write_side_file(tmp_path, "dead_letters", 0, 3, dead_letter_rows(["invalid_json", "invalid_json", "non_numeric_value"], now))
    write_side_file(tmp_path, "alerts", 0, 0, alert_rows([("a1", "d1", "temp", T0 + 4, 24.0, 5.0)]))

    view = DataDirView(tmp_path)
    view.poll()

    readings = pd.read_parquet(tmp_path / "tables" / "readings")
    dead = pd.read_parquet(tmp_path / "tables" / "dead_letters")
    assert view.counts["readings"] == len(readings) == 8
    assert view.counts["windows"] == 1
    assert view.counts["late"] == 2
    assert view.counts["alerts"] == 1
    assert view.counts["dead_letters"] == len(dead)
    assert view.dead_letters_by_reason == dead["reason"].value_counts().to_dict()


def test_fleet_keeps_newest_reading_and_interval(tmp_path):
    now = time.time()
    rows = [("d1", "temp", T0 + 10 * i, float(i), "s1", now) for i in (3, 0, 2, 1)]
    write_batch(tmp_path, "readings", 0, reading_rows(rows))
    view = DataDirView(tmp_path)
    view.poll()

    (row,) = view.fleet()
    assert row["value"] == 3.0
    assert row["ts"] == T0 + 30
    assert row["interval"] == 10.0
    assert row["site"] == "s1"

    # An older reading in a later batch does not replace the newest value.
    write_batch(tmp_path, "readings", 1, reading_rows([("d1", "temp", T0, 99.0, "s1", now)]))
    view.poll()
    assert view.fleet()[0]["value"] == 3.0


def test_series_is_stale_after_missed_intervals(tmp_path):
    now = time.time()
    old = reading_rows([("quiet", "temp", T0 + i, 1.0, None, now - 60) for i in range(3)])
    fresh = reading_rows([("busy", "temp", T0 + 60 * i, 1.0, None, now) for i in range(3)])
    write_batch(tmp_path, "readings", 0, old, written=now - 10)
    write_batch(tmp_path, "readings", 1, fresh, written=now)
    view = DataDirView(tmp_path, stale_intervals=3)
    view.poll()

    stale = {row["device_id"]: row["stale"] for row in view.fleet()}
    assert stale == {"quiet": True, "busy": False}
    assert view.health()["stale_series"] == 1


def test_replaced_batch_keeps_counts_equal(tmp_path):
    rows = reading_rows([("d1", "temp", T0 + i, 1.0, None, T0) for i in range(4)])
    write_batch(tmp_path, "readings", 0, rows)
    view = DataDirView(tmp_path)
    view.poll()
    assert view.counts["readings"] == 4

    write_batch(tmp_path, "readings", 0, rows.slice(0, 3))
    view.poll()
    assert view.counts["readings"] == len(pd.read_parquet(tmp_path / "tables" / "readings")) == 3


def test_end_to_end_latency_uses_write_time(tmp_path):
    written = time.time() - 5
    offsets = [0.05, 0.3, 0.3, 1.5, 40.0]
    rows = reading_rows([("d1", "temp", T0 + i, 1.0, None, written - offset) for i, offset in enumerate(offsets)])
    write_batch(tmp_path, "readings", 0, rows, written=written)
    view = DataDirView(tmp_path)
    view.poll()

    expected = BucketCounts(LATENCY_BUCKETS)
    expected.observe(offsets)
    assert view.latency.counts.tolist() == expected.counts.tolist()
    assert view.latency.sum == pytest.approx(sum(offsets), abs=1e-3)
    assert dict(view.latency.cumulative())["0.5"] == 3


def test_series_windows_sorted_and_bounded(tmp_path):
    write_batch(tmp_path, "windows", 0, window_rows(
        [("1h", "d1", "temp", T0 + 3600 * k, T0 + 3600 * (k + 1), 1, float(k), k - 1.0, k + 1.0) for k in (2, 0, 4)]
        + [("6h", "d1", "temp", T0, T0 + 21600, 3, 2.0, 0.0, 4.0)]))
    write_batch(tmp_path, "windows", 1, window_rows(
        [("1h", "d1", "temp", T0 + 3600 * k, T0 + 3600 * (k + 1), 1, float(k), k - 1.0, k + 1.0) for k in (1, 3)]))
    view = DataDirView(tmp_path, max_points=4)
    view.poll()

    series = view.series_points("d1", "temp")
    assert series["window"] == "1h"
    assert series["windows"] == ["1h", "6h"]
    assert series["start"] == [T0 + 3600 * k for k in (1, 2, 3, 4)]
    assert series["mean"] == [1.0, 2.0, 3.0, 4.0]
    assert series["min"] == [0.0, 1.0, 2.0, 3.0]
    assert view.series_points("d1", "temp", "6h")["count"] == [3]


def test_alerts_newest_first_with_markers(tmp_path):
    # One copy step writes one file per date, all with the same first offset.
    write_side_file(tmp_path, "alerts", 0, 1, alert_rows([("a2", "d2", "co2", T0 + 86_400, 900.0, 6.0)]), date="2026-01-02")
    write_side_file(tmp_path, "alerts", 0, 1, alert_rows([("a1", "d1", "temp", T0, 9.0, 5.0)]), date="2026-01-01")
    write_side_file(tmp_path, "alerts", 2, 2, alert_rows([("a3", "d1", "temp", T0 + 90_000, 11.0, 7.0)]), date="2026-01-02")
    view = DataDirView(tmp_path)
    view.poll()

    assert [alert["alert_id"] for alert in view.alerts()] == ["a3", "a2", "a1"]
    assert [marker["alert_id"] for marker in view.series_points("d1", "temp")["alerts"]] == ["a1", "a3"]


def test_progress_log_read_across_rotation(tmp_path):
    path = tmp_path / "progress.jsonl"
    log = ProgressLog(path)
    path.write_text(json.dumps({"query": "readings", "batch_id": 0}) + "\n")
    assert [line["batch_id"] for line in log.read_new()] == [0]

    with open(path, "a") as out:
        out.write(json.dumps({"query": "readings", "batch_id": 1}) + "\n")
    path.rename(tmp_path / "progress.jsonl.1")
    path.write_text(json.dumps({"query": "readings", "batch_id": 2}) + "\n" + '{"query": "readi')
    assert [line["batch_id"] for line in log.read_new()] == [1, 2]

    with open(path, "a") as out:
        out.write('ngs", "batch_id": 3}\nnot json\n')
    assert [line["batch_id"] for line in log.read_new()] == [3]
    assert log.invalid_lines == 1


def test_batch_durations_from_progress(tmp_path):
    lines = [{"query": "readings", "batch_id": i, "batch_ms": ms, "input_rate": 10.0, "executors": 2}
             for i, ms in enumerate([40, 700, 2500])]
    (tmp_path / "progress.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    view = DataDirView(tmp_path)
    view.poll()

    durations = view.batch_durations["readings"]
    assert dict(durations.cumulative()) == {"0.05": 1, "0.1": 1, "0.25": 1, "0.5": 1, "1.0": 2, "2.0": 2, "5.0": 3,
                                            "10.0": 3, "30.0": 3, "60.0": 3, "120.0": 3, "+Inf": 3}
    assert view.health()["executors"] == 2
    assert view.health()["batch_seconds"] == 2.5


def test_sites_from_sync_store_and_edge_stats(tmp_path):
    now = time.time()
    SqliteCrdtStore(tmp_path / "state.sqlite").close()
    with sqlite3.connect(tmp_path / "state.sqlite") as db:
        db.execute("INSERT INTO sync_versions VALUES ('north', 'r1', 7, ?)", (int((now - 5) * 1e6),))
        db.execute("INSERT INTO sync_versions VALUES ('south', 'r2', 3, ?)", (int((now - 900) * 1e6),))
    edge = tmp_path / "edge-north"
    edge.mkdir()
    (edge / "edge_stats.json").write_text(json.dumps({"site": "north", "buffer_readings": 42, "uplink_connected": True}))
    view = DataDirView(tmp_path, edge_dirs=(edge,), site_offline_seconds=300)
    view.poll()

    sites = {site["site"]: site for site in view.sites()}
    assert sites["north"]["synced_seq"] == 7
    assert sites["north"]["backlog_readings"] == 42
    assert sites["north"]["offline_since"] is None
    assert sites["south"]["offline_since"] == pytest.approx(now - 900, abs=1)
    samples = metric_samples(view)
    assert samples[("sparkiot_edge_backlog_readings", (("site", "north"),))] == 42
    assert samples[("sparkiot_edge_sync_lag_seconds", (("site", "south"),))] == pytest.approx(900, abs=5)


def test_metrics_counters_equal_tables(tmp_path):
    now = time.time()
    write_batch(tmp_path, "readings", 0, reading_rows([("d1", "temp", T0 + i, 1.0, None, now) for i in range(7)]))
    write_side_file(tmp_path, "dead_letters", 0, 2, dead_letter_rows(["invalid_json", "timestamp_out_of_range", "invalid_json"], now))
    write_side_file(tmp_path, "late", 0, 0, late_rows(4, T0))
    (tmp_path / "ingest_stats.json").write_text(json.dumps({"readings": 11}))
    view = DataDirView(tmp_path)
    view.poll()

    samples = metric_samples(view)
    dead = pd.read_parquet(tmp_path / "tables" / "dead_letters")["reason"].value_counts()
    assert samples[("sparkiot_readings_stored_total", ())] == len(pd.read_parquet(tmp_path / "tables" / "readings"))
    assert samples[("sparkiot_late_readings_total", ())] == len(pd.read_parquet(tmp_path / "tables" / "late"))
    assert samples[("sparkiot_readings_received_total", ())] == 11
    for reason, count in dead.items():
        assert samples[("sparkiot_dead_letters_total", (("reason", reason),))] == count
    assert samples[("sparkiot_end_to_end_latency_seconds_count", ())] == 7


def test_local_cost_prices_the_driver(tmp_path):
    from sparkiot.serverless.metering import Holding, load_prices, price

    started = time.time() - 600
    (tmp_path / "job.json").write_text(json.dumps(
        {"started": started, "master": "local[2]", "driver_cores": 2, "driver_memory_bytes": 1024**3}))
    prices = load_prices()
    view = DataDirView(tmp_path, prices=prices, platform="dataproc_serverless")
    before = time.time()
    view.poll()
    after = time.time()

    # The view prices up to its own clock reading, which lies between the two.
    expected = {f"{price([Holding('driver', 'driver', 2.0, 1024 + 384, started, end)], prices, 'dataproc_serverless').usd:.4f}"
                for end in (before, after)}
    assert view.health()["cost_usd"]["dataproc_serverless"] in expected
    assert float(view.health()["cost_usd"]["dataproc_serverless"]) > 0


def test_damaged_file_is_reported_then_read(tmp_path):
    folder = tmp_path / "tables" / "dead_letters" / "date=2026-01-01"
    folder.mkdir(parents=True)
    damaged = folder / "part-00000000000000000000-00000000000000000001.parquet"
    damaged.write_bytes(b"PAR1 this is not a parquet file")
    view = DataDirView(tmp_path)
    view.poll()
    view.poll()
    assert view.counts["dead_letters"] == 0
    assert view.health()["unreadable_files"] == 1

    # Repaired in place, without a change to its folder: the next poll reads it.
    repaired = tmp_path / "repaired.parquet"
    pq.write_table(dead_letter_rows(["invalid_json", "invalid_json"], time.time()), repaired)
    damaged.write_bytes(repaired.read_bytes())
    os.utime(folder, ns=(folder.stat().st_atime_ns, folder.stat().st_mtime_ns - 5_000_000_000))
    view.poll()
    assert view.counts["dead_letters"] == 2
    assert view.health()["unreadable_files"] == 0


def bad_readings(**columns) -> pa.Table:
    """Build one reading whose columns are replaced by ``columns`` (an Arrow array each, or None to drop it)."""
    rows = reading_rows([("bad", "temp", T0, 1.0, None, T0)])
    for name, array in columns.items():
        index = rows.schema.get_field_index(name)
        rows = rows.remove_column(index) if array is None else rows.set_column(index, name, array)
    return rows


@pytest.mark.parametrize("columns, problem", [
    ({"ts": pa.array(["2026-01-01T00:00:00Z"]), "ingest_ts": pa.array(["2026-01-01T00:00:00Z"])},
     "column ts of {path} is string, expected a timestamp"),
    ({"value": pa.array(["1.5"])}, "column value of {path} is string, expected an integer or a floating-point number"),
    ({"ingest_ts": None}, "{path} has no column ingest_ts"),
    ({"ts": pa.array([None], pa.timestamp("us", tz="UTC"))}, "column ts of {path} has 1 nulls, expected none"),
])
def test_wrongly_typed_file_is_unreadable(tmp_path, caplog, columns, problem):
    now = time.time()
    bad = write_batch(tmp_path, "readings", 0, bad_readings(**columns))
    view = DataDirView(tmp_path)
    with caplog.at_level("WARNING", logger="sparkiot.dashboard.tables"):
        view.poll()
        view.poll()
    assert view.counts["readings"] == 0
    assert view.health()["unreadable_files"] == 1
    (record,) = caplog.records
    assert problem.format(path=bad / "part-00000.parquet") in record.getMessage()
    assert "Rewrite the file with the table's schema" in record.getMessage()

    # A later good batch is counted while the bad one stays unreadable.
    write_batch(tmp_path, "readings", 1, reading_rows([("d1", "temp", T0 + i, 20.0 + i, "s1", now) for i in range(4)]))
    view.poll()
    assert view.counts["readings"] == 4
    assert view.health()["unreadable_files"] == 1
    assert [(row["device_id"], row["value"]) for row in view.fleet()] == [("d1", 23.0)]

    # So is a good batch written in the same poll as another bad one.
    write_batch(tmp_path, "readings", 2, bad_readings(**columns))
    write_batch(tmp_path, "readings", 3, reading_rows([("d2", "co2", T0, 400.0, "s1", now)]))
    view.poll()
    assert view.counts["readings"] == 5
    assert view.health()["unreadable_files"] == 2


def test_nanosecond_naive_timestamps_are_read(tmp_path):
    # pyarrow reads Spark's INT96 timestamps as timestamp[ns] without a time zone.
    rows = reading_rows([("d1", "temp", T0 + 10 * i, float(i), None, T0) for i in range(3)])
    for name in ("ts", "ingest_ts"):
        index = rows.schema.get_field_index(name)
        rows = rows.set_column(index, name, rows.column(name).cast(pa.timestamp("ns")))
    write_batch(tmp_path, "readings", 0, rows, written=T0 + 2)
    view = DataDirView(tmp_path)
    view.poll()

    (row,) = view.fleet()
    assert row["ts"] == T0 + 20
    assert row["interval"] == 10.0
    assert view.latency.sum == pytest.approx(6.0)


def test_progress_values_of_wrong_type_are_ignored(tmp_path, caplog):
    lines = [{"query": "readings", "watermark": 5},
             {"query": "readings", "batch_ms": "40"},
             {"query": "readings", "batch_ms": True, "input_rate": "fast", "executors": -1}]
    path = tmp_path / "progress.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    view = DataDirView(tmp_path)
    with caplog.at_level("WARNING", logger="sparkiot.dashboard.view"):
        view.poll()
    health = view.health()
    assert health["batches"] == {"readings": 3}
    assert health["watermark"] is None
    assert health["watermark_lag_seconds"] is None
    assert health["batch_seconds"] is None
    assert health["input_rate"] is None
    assert health["executors"] is None
    assert "readings" not in view.batch_durations
    messages = "\n".join(record.getMessage() for record in caplog.records)
    assert "progress.jsonl has watermark = 5, expected a string" in messages
    assert "progress.jsonl has batch_ms = '40', expected a finite number" in messages
    assert "progress.jsonl has input_rate = 'fast'" in messages

    with open(path, "a") as out:
        out.write(json.dumps({"query": "readings", "batch_ms": 700, "input_rate": 12.5, "executors": 2,
                              "watermark": "2026-01-01T00:00:00.000Z"}) + "\n")
    view.poll()
    health = view.health()
    assert health["batches"] == {"readings": 4}
    assert health["batch_seconds"] == 0.7
    assert health["input_rate"] == 12.5
    assert health["executors"] == 2
    assert health["watermark"] == "2026-01-01T00:00:00.000Z"
    assert view.batch_durations["readings"].counts.sum() == 1


@pytest.mark.parametrize("job_text, field", [
    ('{"started": 1790000000, "driver_cores": "inf", "driver_memory_bytes": 1073741824}', "driver_cores"),
    ('{"started": 1790000000, "driver_cores": -2, "driver_memory_bytes": 1073741824}', "driver_cores"),
    ('{"started": 1790000000, "driver_cores": NaN, "driver_memory_bytes": 1073741824}', "driver_cores"),
    ('{"started": 1790000000, "driver_cores": true, "driver_memory_bytes": 1073741824}', "driver_cores"),
    ('{"started": 1790000000, "driver_cores": 2, "driver_memory_bytes": 1e400}', "driver_memory_bytes"),
    ('{"started": 1790000000, "driver_cores": 2, "driver_memory_bytes": "1g"}', "driver_memory_bytes"),
    ('{"started": 1790000000, "driver_cores": 2, "driver_memory_bytes": -1}', "driver_memory_bytes"),
    ('{"started": "yesterday", "driver_cores": 2, "driver_memory_bytes": 1073741824}', "started"),
])
def test_job_json_of_wrong_type_shows_no_cost(tmp_path, caplog, job_text, field):
    from sparkiot.serverless.metering import load_prices

    (tmp_path / "job.json").write_text(job_text)
    view = DataDirView(tmp_path, prices=load_prices(), platform="dataproc_serverless")
    with caplog.at_level("WARNING", logger="sparkiot.dashboard.view"):
        for _ in range(3):
            view.poll()
    assert view.health()["cost_usd"] == {}
    # Three polls log the bad value once.
    warnings = [record.getMessage() for record in caplog.records if f"job.json has {field} = " in record.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].endswith("(occurrences so far: 1)")


def test_sync_time_stored_as_text_is_ignored(tmp_path):
    now = time.time()
    SqliteCrdtStore(tmp_path / "state.sqlite").close()
    with sqlite3.connect(tmp_path / "state.sqlite") as db:
        db.execute("INSERT INTO sync_versions VALUES ('north', 'r1', 7, 'yesterday')")
        db.execute("INSERT INTO sync_versions VALUES ('north', 'r2', 2, ?)", (int((now - 5) * 1e6),))
        db.execute("INSERT INTO sync_versions VALUES ('south', 'r3', 3, 'never')")
    view = DataDirView(tmp_path)
    view.poll()

    sites = {site["site"]: site for site in view.sites()}
    assert sites["north"]["last_sync"] == int((now - 5) * 1e6) / 1e6
    assert sites["north"]["synced_seq"] == 9
    assert sites["south"]["last_sync"] is None
    assert sites["south"]["synced_seq"] == 3
    assert sites["south"]["offline_since"] is None


@pytest.mark.parametrize("name", [42, ["plant"], "", None])
def test_pipeline_name_falls_back_to_directory(tmp_path, name):
    (tmp_path / "pipeline.json").write_text(json.dumps({"name": name}))
    write_batch(tmp_path, "readings", 0, reading_rows([("d1", "temp", T0, 1.0, None, T0)]))
    view = DataDirView(tmp_path)
    view.poll()

    assert view.name == tmp_path.name
    assert view.health()["pipeline"] == tmp_path.name
    from prometheus_client import generate_latest

    text = generate_latest(registry_for(lambda: [view])).decode()
    stored = [sample for family in text_string_to_metric_families(text) for sample in family.samples
              if sample.name == "sparkiot_readings_stored_total"]
    assert [(sample.labels, sample.value) for sample in stored] == [({"pipeline": tmp_path.name}, 1.0)]


def test_pipeline_name_from_pipeline_json(tmp_path):
    (tmp_path / "pipeline.json").write_text(json.dumps({"name": "plant"}))
    assert DataDirView(tmp_path).name == "plant"


def driver_cost(started: float, end: float, prices) -> str:
    from sparkiot.serverless.metering import Holding, price

    return f"{price([Holding('driver', 'driver', 2.0, 1024 + 384, started, end), ], prices, 'dataproc_serverless').usd:.4f}"


def test_local_cost_ends_at_stop_time(tmp_path):
    from sparkiot.serverless.metering import load_prices

    prices = load_prices()
    started = time.time() - 3600
    stopped = started + 600
    (tmp_path / "job.json").write_text(json.dumps(
        {"started": started, "stopped": stopped, "driver_cores": 2, "driver_memory_bytes": 1024**3}))
    view = DataDirView(tmp_path, prices=prices, platform="dataproc_serverless")
    view.poll()

    assert view.health()["cost_usd"] == {"dataproc_serverless": driver_cost(started, stopped, prices)}
    assert driver_cost(started, stopped, prices) != driver_cost(started, time.time(), prices)


def test_local_cost_ignores_stop_before_start(tmp_path):
    from sparkiot.serverless.metering import load_prices

    prices = load_prices()
    started = time.time() - 3600
    (tmp_path / "job.json").write_text(json.dumps(
        {"started": started, "stopped": started - 10, "driver_cores": 2, "driver_memory_bytes": 1024**3}))
    view = DataDirView(tmp_path, prices=prices, platform="dataproc_serverless")
    before = time.time()
    view.poll()
    after = time.time()

    assert view.health()["cost_usd"]["dataproc_serverless"] in {driver_cost(started, end, prices) for end in (before, after)}


class SessionStub:
    """The parts of a SparkSession that the constructor and stop() of StreamingJob call."""

    def __init__(self) -> None:
        self.streams = SimpleNamespace(addListener=lambda listener: None, removeListener=lambda listener: None)
        self.dataSource = SimpleNamespace(register=lambda source: None)


def test_job_stop_writes_stop_time(tmp_path, monkeypatch):
    from sparkiot.config import PipelineConfig
    from sparkiot.serverless.metering import load_prices
    from sparkiot.stream.job import JOB_INFO, StreamingJob

    monkeypatch.setattr(StreamingJob, "_driver_info",
                        lambda self: {"master": "local[2]", "driver_cores": 2, "driver_memory_bytes": 1024**3})
    job = StreamingJob(SessionStub(), PipelineConfig(name="plant", data_dir=str(tmp_path)))
    job._write_job_info()
    running = json.loads((tmp_path / JOB_INFO).read_text())
    assert "stopped" not in running

    before = time.time()
    job.stop()
    after = time.time()
    stopped = json.loads((tmp_path / JOB_INFO).read_text())
    assert before <= stopped.pop("stopped") <= after
    assert stopped == running
    assert [path.name for path in tmp_path.iterdir()] == [JOB_INFO]

    # A second stop keeps the first stop time, and the dashboard prices up to it.
    first = json.loads((tmp_path / JOB_INFO).read_text())["stopped"]
    job.stop()
    assert json.loads((tmp_path / JOB_INFO).read_text())["stopped"] == first
    prices = load_prices()
    view = DataDirView(tmp_path, prices=prices, platform="dataproc_serverless")
    view.poll()
    assert view.health()["cost_usd"] == {"dataproc_serverless": driver_cost(running["started"], first, prices)}


def test_fast_series_not_stale_between_batches(tmp_path):
    now = time.time()
    # A reading every 0.1 s, stored by a micro-batch 1.5 s ago, and the batches end every second.
    rows = reading_rows([("fast", "temp", T0 + i / 10, 1.0, None, now - 2) for i in range(10)])
    write_batch(tmp_path, "readings", 0, rows, written=now - 1.5)
    ends = [T0, T0 + 1, T0 + 2, T0 + 3, T0 + 4, T0 + 3604, T0 + 3605]
    (tmp_path / "progress.jsonl").write_text("".join(
        json.dumps({"query": "readings", "batch_id": i, "batch_ms": 200, "time": end}) + "\n" for i, end in enumerate(ends)))
    view = DataDirView(tmp_path, stale_intervals=3)
    view.poll()

    # One long pause (a restart of the job) does not raise the period: it is the median gap.
    assert view.batch_period == 1.0
    (row,) = view.fleet()
    assert row["interval"] == pytest.approx(0.1)
    assert row["stale_after"] == 3.0
    assert row["stale"] is False
    assert view.health()["stale_series"] == 0


def test_stale_limit_covers_long_batches(tmp_path):
    now = time.time()
    rows = reading_rows([("fast", "temp", T0 + i / 10, 1.0, None, now - 6) for i in range(10)])
    write_batch(tmp_path, "readings", 0, rows, written=now - 5)
    (tmp_path / "progress.jsonl").write_text(json.dumps({"query": "readings", "batch_ms": 4000, "time": now - 5}) + "\n")
    view = DataDirView(tmp_path, stale_intervals=3)
    view.poll()
    (row,) = view.fleet()
    assert row["stale_after"] == 12.0
    assert row["stale"] is False

    # Without progress reports the limit is three reporting intervals.
    (tmp_path / "progress.jsonl").unlink()
    view = DataDirView(tmp_path, stale_intervals=3)
    view.poll()
    (row,) = view.fleet()
    assert row["stale_after"] == pytest.approx(0.3)
    assert row["stale"] is True


@pytest.mark.parametrize("readings", ["-5", "Infinity", "NaN", "true", '"12"', "1e400", "12.5e400"])
def test_ingest_counter_of_wrong_type_is_not_exposed(tmp_path, caplog, readings):
    stats = tmp_path / "ingest_stats.json"
    stats.write_text('{"connected": true, "readings": ' + readings + "}")
    view = DataDirView(tmp_path)
    with caplog.at_level("WARNING", logger="sparkiot.dashboard.view"):
        view.poll()
        view.poll()

    assert view.health()["readings_received_since_ingest_start"] is None
    assert ("sparkiot_readings_received_total", ()) not in metric_samples(view)
    assert [record.getMessage().split(",")[0] for record in caplog.records] == [
        f"dashboard of {tmp_path.name}: ingest_stats.json has readings = {view.ingest['readings']!r}"]

    stats.write_text(json.dumps({"connected": True, "readings": 11}))
    view.poll()
    assert view.health()["readings_received_since_ingest_start"] == 11
    assert metric_samples(view)[("sparkiot_readings_received_total", ())] == 11
