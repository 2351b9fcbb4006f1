"""The ``sparkiot`` command: decode, configuration errors, the Java check and the demo."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pandas as pd
import pytest

from sparkiot.stream.session import JavaNotFound, find_java
from tests.support import read_table


def sparkiot(*args: str, stdin: bytes = b"", timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sparkiot", *args], input=stdin, capture_output=True, timeout=timeout, env=env
    )


def test_decode_prints_readings():
    payload = json.dumps({"device_id": "d1", "ts": "2024-05-01T12:00:00Z", "temperature": 21.5, "humidity": 40})

    result = sparkiot("decode", "--format", "json", "--topic", "sensors/lab/d1", stdin=payload.encode())

    assert result.returncode == 0
    lines = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [(line["metric"], line["value"]) for line in lines] == [("temperature", 21.5), ("humidity", 40.0)]
    assert lines[0]["ts"] == "2024-05-01T12:00:00Z"
    assert lines[0]["source"] == "sensors/lab/d1"


def test_decode_topic_pattern_fills_ids():
    result = sparkiot(
        "decode", "--topic", "sensors/plant/m-7/rpm", "--topic-pattern", "sensors/{site}/{device_id}/{metric}",
        stdin=b'{"ts": 1714564800, "value": 1200}',
    )

    line = json.loads(result.stdout)
    assert (line["site"], line["device_id"], line["metric"], line["value"]) == ("plant", "m-7", "rpm", 1200.0)


def test_decode_dead_letter_exit_status():
    result = sparkiot("decode", "--format", "json", stdin=b'{"device_id": "d1", "metric": "t", "ts": 1714564800, "value": "hot"}')

    assert result.returncode == 1
    line = json.loads(result.stdout)
    assert line["dead_letter"] == "non_numeric_value"
    assert "'hot'" in line["detail"]


def test_run_invalid_config_names_field(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("watermark: ten minutes\nwindows:\n  - size: 5m\n    slide: 7m\nsource:\n  brokr: x\n")

    result = sparkiot("run", str(config))

    assert result.returncode == 2
    message = result.stderr.decode()
    assert "watermark: invalid duration 'ten minutes'" in message
    assert "windows: window size 5m" in message
    assert "source.brokr: unknown option" in message


def test_run_missing_config_file(tmp_path):
    result = sparkiot("run", str(tmp_path / "absent.yaml"))

    assert result.returncode == 2
    assert "pipeline file not found" in result.stderr.decode()


def test_java_missing_message(tmp_path):
    with pytest.raises(JavaNotFound) as error:
        find_java({"PATH": str(tmp_path)})

    message = str(error.value)
    assert "Java 17 or 21" in message
    assert "install" in message


def test_java_wrong_version_message(tmp_path):
    fake = tmp_path / "bin" / "java"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho \'openjdk version "11.0.22" 2024-01-16\' >&2\n')
    fake.chmod(0o755)

    with pytest.raises(JavaNotFound) as error:
        find_java({"JAVA_HOME": str(tmp_path), "PATH": ""})

    assert "is Java 11" in str(error.value)


def test_java_home_without_binary(tmp_path):
    with pytest.raises(JavaNotFound) as error:
        find_java({"JAVA_HOME": str(tmp_path)})

    assert "has no executable bin/java" in str(error.value)


def test_demo_exits_cleanly_without_java(tmp_path):
    env = {**os.environ, "JAVA_HOME": str(tmp_path / "no-java")}

    result = sparkiot("demo", "--duration", "5", "--data-dir", str(tmp_path / "data"), env=env)

    assert result.returncode == 2
    assert "has no executable bin/java" in result.stderr.decode()


@pytest.mark.spark
def test_demo_runs_on_embedded_defaults(tmp_path):
    data_dir = tmp_path / "demo"

    result = sparkiot("demo", "--duration", "40", "--data-dir", str(data_dir), timeout=240)

    assert result.returncode == 0, result.stderr.decode()[-2000:]
    counters = json.loads((data_dir / "ingest_stats.json").read_text())
    readings = read_table(data_dir, "readings")
    assert counters["readings"] > 1000
    # The demo stops the ingest, then lets Spark finish everything landed.
    assert len(readings) == counters["readings"]
    assert set(readings["device_id"]) == {"cgm-1", "buoy-1"}
    assert len(read_table(data_dir, "windows")) > 0
    with sqlite3.connect(data_dir / "state.sqlite") as connection:
        series = set(connection.execute("SELECT device_id, metric FROM latest").fetchall())
    assert series == {("cgm-1", "glucose"), ("cgm-1", "isig"), ("buoy-1", "temperature")}
    assert "results in" in result.stdout.decode()
    assert isinstance(readings["ts"].dtype, pd.DatetimeTZDtype)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--broker", "http://127.0.0.1"], "invalid broker URL"),
        (["--speed", "-1"], "--speed -1.0 must be 0"),
        (["--topic", "sensors/{nope}"], "may use only {site} and {device_id}"),
        (["--topic", "sensors/#"], "without wildcards"),
        (["--timezone", "Mars/X"], "not a known time zone"),
        (["--start", "garbage"], "is not ISO 8601"),
        (["--batch", "0"], "--batch 0 must be at least 1"),
    ],
)
def test_replay_rejects_bad_flags(tmp_path, flags, message):
    path = tmp_path / "series.csv"
    path.write_text("time,v\n2024-01-01 00:00:00,1\n")

    result = sparkiot("replay", str(path), *flags)

    assert result.returncode == 2
    assert message in result.stderr.decode()


def _sparkplug_birth() -> bytes:
    from sparkiot.codecs.sparkplug import sparkplug_b_pb2 as pb

    payload = pb.Payload(timestamp=1714564800000, seq=0)
    payload.metrics.add(name="Motor/RPM", datatype=pb.Double, double_value=1500.0, timestamp=1714564800000)
    return payload.SerializeToString()


def _senml_cbor() -> bytes:
    import cbor2

    return cbor2.dumps([{-2: "dev-1/", 0: "temp", 2: 21.5, 6: 1714564800}])


@pytest.mark.parametrize(
    ("format_name", "topic", "payload", "expected"),
    [
        ("influx", "telegraf", b"env,host=gw temp=21.5 1714564800000000000", ("gw", "env.temp", 21.5)),
        ("senml", "senml", b'[{"bn": "dev-1/", "n": "temp", "v": 21.5, "t": 1714564800}]', ("dev-1", "temp", 21.5)),
        ("senml-cbor", "senml", None, ("dev-1", "temp", 21.5)),
        ("sparkplug", "spBv1.0/plant/NBIRTH/node-1", None, ("plant/node-1", "Motor/RPM", 1500.0)),
    ],
)
def test_decode_every_format(format_name, topic, payload, expected):
    if payload is None:
        payload = _senml_cbor() if format_name == "senml-cbor" else _sparkplug_birth()

    result = sparkiot("decode", "--format", format_name, "--topic", topic, stdin=payload)

    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    line = json.loads(result.stdout.decode().splitlines()[0])
    assert (line["device_id"], line["metric"], line["value"]) == expected
    assert line["ts"] == "2024-05-01T12:00:00Z"
