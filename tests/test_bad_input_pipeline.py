"""Every format and every kind of bad input, mixed in one stream through Mosquitto and Spark.

Good readings in JSON, Influx line protocol, SenML and Sparkplug B arrive among malformed,
out-of-range, duplicated, retained and unknown-alias payloads. Afterwards every good reading is
stored exactly once, every bad payload is a dead letter with its reason, nothing is late, and the
windows equal a pandas reference computed on the good readings alone.
"""

from __future__ import annotations

import json
import time

import cbor2
import pandas as pd
import paho.mqtt.client as mqtt
import pytest

from sparkiot.codecs.sparkplug import sparkplug_b_pb2 as pb
from sparkiot.stream.job import StreamingJob
from tests.support import (
    IngestThread,
    compare_windows,
    pipeline_config,
    publish_payloads,
    read_table,
    reference_windows,
    wait_for,
)

pytestmark = [pytest.mark.spark, pytest.mark.mosquitto]

MINUTE_US = 60_000_000


def sparkplug_payload(metrics: list[dict], seq: int, ts_ms: int) -> bytes:
    message = pb.Payload(timestamp=ts_ms, seq=seq)
    for fields in metrics:
        message.metrics.add(**fields)
    return message.SerializeToString()


def test_mixed_formats_and_bad_input(spark, tmp_path, unique, mosquitto):
    now_us = time.time_ns() // 1000
    # Six hours ago, on a whole hour, so every window closes before the present.
    base_us = (now_us - 6 * 3600 * 1_000_000) // 3_600_000_000 * 3_600_000_000
    config = pipeline_config(
        tmp_path / "data", unique, mosquitto,
        source={"topics": [f"it/{unique}/#", f"spBv1.0/{unique}/#"]},
        codec={
            "topic_pattern": "it/{_}/json/{site}/{device_id}",
            "max_payload_bytes": "2KiB",
            "routes": [
                {"topics": f"it/{unique}/influx/#", "format": "influx", "topic_pattern": "it/{_}/influx/{site}"},
                {"topics": f"it/{unique}/senml/#", "format": "senml", "topic_pattern": "it/{_}/senml/{site}"},
                {"topics": f"it/{unique}/cbor/#", "format": "senml-cbor", "topic_pattern": "it/{_}/cbor/{site}"},
                {"topics": "spBv1.0/#", "format": "sparkplug"},
            ],
        },
        windows=[{"size": "1h"}],
    )
    json_topic = f"it/{unique}/json/lab/j1"
    good: list[dict] = []
    payloads: list[tuple[str, bytes]] = []

    def expect(device_id: str, metric: str, ts_us: int, value: float) -> None:
        good.append({"device_id": device_id, "metric": metric, "ts": ts_us, "value": value})

    # Good readings, 90 minutes of each format at one per minute, in event-time order across formats.
    node = f"spBv1.0/{unique}/NDATA/node-1"
    duplicates: list[tuple[str, bytes]] = []
    for i in range(90):
        ts_us = base_us + i * MINUTE_US
        value = 20.0 + (i % 9) * 0.5
        json_payload = (json_topic, json.dumps({"metric": "temp", "ts": ts_us, "value": value}).encode())
        payloads.append(json_payload)
        expect("j1", "temp", ts_us, value)
        payloads.append((f"it/{unique}/influx/roof", f"env,host=i1 temp={value + 1} {ts_us * 1000}".encode()))
        expect("i1", "env.temp", ts_us, value + 1)
        payloads.append((f"it/{unique}/senml/field",
                         json.dumps([{"bn": "s1/", "n": "rh", "v": value * 2, "t": ts_us / 1e6}]).encode()))
        expect("s1", "rh", ts_us, value * 2)
        payloads.append((f"it/{unique}/cbor/field", cbor2.dumps([{-2: "c1/", 0: "co2", 2: 400 + i, 6: ts_us // 1_000_000}])))
        expect("c1", "co2", ts_us, 400.0 + i)
        if i == 0:
            payloads.append((f"spBv1.0/{unique}/NBIRTH/node-1", sparkplug_payload(
                [{"name": "bdSeq", "datatype": pb.Int64, "long_value": 0},
                 {"name": "Motor/RPM", "alias": 7, "datatype": pb.Double, "double_value": 1000.0,
                  "timestamp": ts_us // 1000}],
                seq=0, ts_ms=ts_us // 1000)))
            expect(f"{unique}/node-1", "Motor/RPM", ts_us, 1000.0)
            # bdSeq is a metric of the NBIRTH like any other, dated by the payload.
            expect(f"{unique}/node-1", "bdSeq", ts_us, 0.0)
        elif i < 30:
            payloads.append((node, sparkplug_payload(
                [{"alias": 7, "datatype": pb.Double, "double_value": 1000.0 + i, "timestamp": ts_us // 1000}],
                seq=i, ts_ms=ts_us // 1000)))
            expect(f"{unique}/node-1", "Motor/RPM", ts_us, 1000.0 + i)
        if i % 10 == 5:
            # The same reading again soon after, as a broker redelivery would send it.
            duplicates.append(json_payload)
            payloads.append(json_payload)

    # Bad input, each with the reason code it must get.
    future_us = now_us + 2 * 3600 * 1_000_000
    bad = [
        (json_topic, b'{"metric": "temp", "ts": 1', "invalid_json"),
        (json_topic, b"", "empty_payload"),
        (json_topic, json.dumps({"metric": "temp", "ts": base_us, "value": 1, "pad": "x" * 3000}).encode(), "payload_too_large"),
        (json_topic, b'{"metric": "temp", "ts": 1700000000, "value": "\xff"}', "invalid_utf8"),
        (json_topic, b'{"metric": "temp", "ts": 1700000000, "value": NaN}', "non_finite_value"),
        (json_topic, b'{"metric": "temp", "ts": 1700000000, "value": Infinity}', "non_finite_value"),
        (json_topic, b'{"metric": "temp", "ts": 1700000000, "value": null}', "non_numeric_value"),
        (json_topic, b'{"metric": "temp", "ts": 1700000000, "value": "warm"}', "non_numeric_value"),
        (json_topic, b'{"metric": "temp", "ts": 0, "value": 1}', "timestamp_out_of_range"),
        (json_topic, json.dumps({"metric": "temp", "ts": future_us, "value": 99}).encode(), "timestamp_out_of_range"),
        (json_topic, b'{"metric": "temp", "value": 1}', "missing_timestamp"),
        (f"it/{unique}/influx/roof", b"env,host=i1 temp=1.0 x", "invalid_line_protocol"),
        (f"it/{unique}/influx/roof", b'env,host=i1 label="on" 1700000000000000000', "unsupported_value_type"),
        (f"it/{unique}/senml/field", b'[{"n": "rh", "v": "high"}]', "non_numeric_value"),
        (f"it/{unique}/cbor/field", b"\xff\x00", "invalid_cbor"),
        (node, b"\x0a\xff", "invalid_protobuf"),
        (node, sparkplug_payload([{"alias": 99, "datatype": pb.Double, "double_value": 1.0,
                                   "timestamp": base_us // 1000}], seq=30, ts_ms=base_us // 1000), "unknown_alias"),
    ]
    expected_reasons: dict[str, int] = {}
    for _, _, reason in bad:
        expected_reasons[reason] = expected_reasons.get(reason, 0) + 1
    expected_reasons["retained_message"] = 1

    mixed = []
    for index, item in enumerate(payloads):
        mixed.append(item)
        if index % 20 == 0 and bad:
            topic, payload, _ = bad.pop()
            mixed.append((topic, payload))
    mixed.extend(bad_item[:2] for bad_item in bad)

    retained_topic = f"it/{unique}/json/lab/retained"
    retainer = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"retain-{unique}")
    retainer.connect("127.0.0.1", int(mosquitto.rsplit(":", 1)[1]))
    retainer.loop_start()
    retainer.publish(retained_topic, json.dumps({"metric": "temp", "ts": base_us, "value": 5}), qos=1, retain=True).wait_for_publish(10)

    job = StreamingJob(spark, config)
    try:
        with IngestThread(config, mosquitto):
            job.start()
            publish_payloads(mosquitto, mixed)
            clock = json.dumps({"device_id": "_clock", "metric": "tick", "ts": now_us, "value": 0}).encode()
            publish_payloads(mosquitto, [(f"it/{unique}/json/lab/_clock", clock)])
            expected_dead = sum(expected_reasons.values())
            wait_for(lambda: len(read_table(config.data_path, "dead_letters")) >= expected_dead, 120, "every dead letter")
            reference = reference_windows(pd.DataFrame(good).assign(ts=lambda f: pd.to_datetime(f["ts"], unit="us", utc=True)),
                                          size_hours=1)

            def windows_written() -> bool:
                table = read_table(config.data_path, "windows")
                return len(table) > 0 and len(table[table["device_id"] != "_clock"]) >= len(reference)

            wait_for(lambda: (job.process_all_available() or True) and windows_written(), 180, "every window")
            duplicates_dropped = job.progress.duplicates_dropped.get("readings", 0)
    finally:
        job.stop()
        retainer.publish(retained_topic, b"", qos=1, retain=True).wait_for_publish(10)
        retainer.loop_stop()
        retainer.disconnect()

    readings = read_table(config.data_path, "readings")
    readings = readings[readings["device_id"] != "_clock"]
    assert len(readings) == len(good)
    assert readings["msg_id"].is_unique
    assert duplicates_dropped == len(duplicates)
    dead = read_table(config.data_path, "dead_letters")
    assert dead["reason"].value_counts().to_dict() == expected_reasons
    assert len(read_table(config.data_path, "late")) == 0
    windows = read_table(config.data_path, "windows")
    compare_windows(windows[windows["device_id"] != "_clock"], reference)
