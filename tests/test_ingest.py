"""The MQTT ingest against the real Mosquitto: sessions, acknowledgement, late readings, alerts."""

from __future__ import annotations

import json
import queue
import threading

import paho.mqtt.client as mqtt
import pytest

from sparkiot.ingest.consumer import Ingest, landing_dir
from sparkiot.ingest.landing import LogReader
from tests.support import IngestThread, pipeline_config, publish_payloads, wait_for

pytestmark = pytest.mark.mosquitto

BASE_US = 1_700_000_000_000_000
MINUTE_US = 60_000_000


def reading(ts_us: int, value: float, device: str = "dev-1", metric: str = "temp") -> bytes:
    return json.dumps({"device_id": device, "metric": metric, "ts": ts_us, "value": value}).encode()


def landed(config, log_name: str = "readings") -> list[dict]:
    reader = LogReader(landing_dir(config, log_name))
    return [row for batch in reader.read(0, reader.end_offset()) for row in batch.to_pylist()]


def test_persistent_session_keeps_messages_while_down(tmp_path, unique, mosquitto):
    config = pipeline_config(tmp_path / "data", unique, mosquitto)
    topic = f"it/{unique}/sensors/lab/dev-1"
    with IngestThread(config, mosquitto):
        publish_payloads(mosquitto, [(topic, reading(BASE_US, 1.0))])
        wait_for(lambda: len(landed(config)) == 1, 20, "the first reading")

    # The ingest is down: the broker queues these for its session.
    publish_payloads(mosquitto, [(topic, reading(BASE_US + i * MINUTE_US, float(i))) for i in range(1, 51)])

    with IngestThread(config, mosquitto):
        wait_for(lambda: len(landed(config)) == 51, 30, "the readings sent while the ingest was down")
    assert [row["value"] for row in landed(config)] == [1.0] + [float(i) for i in range(1, 51)]


def test_failed_write_is_not_acknowledged(tmp_path, unique, mosquitto):
    config = pipeline_config(tmp_path / "data", unique, mosquitto)
    topic = f"it/{unique}/sensors/lab/dev-1"
    failing = Ingest(config, mosquitto)
    original_append = failing.logs["readings"].append

    def append_fails(batch, **kwargs):
        if batch.num_rows:
            raise OSError(28, "No space left on device")
        return original_append(batch, **kwargs)

    failing.logs["readings"].append = append_fails
    errors = []
    thread = threading.Thread(target=lambda: _run_catching(failing, errors), daemon=True)
    thread.start()
    wait_for(lambda: failing.counters.connected, 20, "the ingest to connect")
    publish_payloads(mosquitto, [(topic, reading(BASE_US, 42.0))])
    thread.join(timeout=20)
    assert not thread.is_alive()
    assert isinstance(errors[0], OSError)
    assert landed(config) == []

    # A new ingest with the same client id gets the unacknowledged message again.
    with IngestThread(config, mosquitto):
        wait_for(lambda: len(landed(config)) == 1, 30, "the redelivered message")
    assert landed(config)[0]["value"] == 42.0


def _run_catching(ingest: Ingest, errors: list) -> None:
    try:
        ingest.run()
    except OSError as exc:
        errors.append(exc)


def test_late_reading_goes_to_late_log(tmp_path, unique, mosquitto):
    config = pipeline_config(tmp_path / "data", unique, mosquitto, watermark="10m")
    topic = f"it/{unique}/sensors/lab/dev-1"
    payloads = [
        (topic, reading(BASE_US, 1.0)),
        (topic, reading(BASE_US + 30 * MINUTE_US, 2.0)),
        (topic, reading(BASE_US + 25 * MINUTE_US, 3.0)),  # 5 minutes behind the newest: on time
        (topic, reading(BASE_US + 20 * MINUTE_US, 4.0)),  # exactly at the watermark: late
        (topic, reading(BASE_US + 5 * MINUTE_US, 5.0)),  # far behind: late
    ]
    with IngestThread(config, mosquitto):
        publish_payloads(mosquitto, payloads)
        wait_for(lambda: len(landed(config)) + len(landed(config, "late")) == 5, 20, "every reading")

    assert [row["value"] for row in landed(config)] == [1.0, 2.0, 3.0]
    late = landed(config, "late")
    assert [row["value"] for row in late] == [4.0, 5.0]
    expected_watermark_us = BASE_US + 30 * MINUTE_US - 10 * MINUTE_US
    assert [int(row["watermark"].timestamp() * 1_000_000) for row in late] == [expected_watermark_us] * 2


def test_spike_publishes_alert(tmp_path, unique, mosquitto):
    config = pipeline_config(
        tmp_path / "data", unique, mosquitto,
        anomaly={"window": 20, "warmup": 10, "threshold": 4.0, "alert_topic": f"it/{unique}/alerts"},
    )
    topic = f"it/{unique}/sensors/lab/dev-1"
    normal = [20.0 + (0.1 if i % 2 else -0.1) for i in range(20)]
    payloads = [(topic, reading(BASE_US + i * MINUTE_US, value)) for i, value in enumerate(normal)]
    payloads.append((topic, reading(BASE_US + 20 * MINUTE_US, 35.0)))

    alerts: queue.SimpleQueue = queue.SimpleQueue()
    subscriber = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"alert-check-{unique}")
    subscribed = threading.Event()
    subscriber.on_message = lambda client, userdata, message: alerts.put(json.loads(message.payload))
    subscriber.on_subscribe = lambda *args: subscribed.set()
    subscriber.connect("127.0.0.1", int(mosquitto.rsplit(":", 1)[1]))
    subscriber.loop_start()
    subscriber.subscribe(f"it/{unique}/alerts", qos=1)
    assert subscribed.wait(10)
    try:
        with IngestThread(config, mosquitto):
            publish_payloads(mosquitto, payloads)
            alert = alerts.get(timeout=20)
    finally:
        subscriber.loop_stop()
        subscriber.disconnect()

    window = normal[-20:]
    mean = sum(window) / len(window)
    stddev = (sum((x - mean) ** 2 for x in window) / (len(window) - 1)) ** 0.5
    assert (alert["device_id"], alert["metric"], alert["value"]) == ("dev-1", "temp", 35.0)
    assert alert["score"] == pytest.approx((35.0 - mean) / stddev, rel=1e-9)
    assert alerts.empty()
    assert len(landed(config, "alerts")) == 1


@pytest.mark.parametrize("policy", ["dead_letter", "accept"])
def test_retained_message_policy(tmp_path, unique, mosquitto, policy):
    config = pipeline_config(tmp_path / "data", unique, mosquitto, source={"retained": policy})
    topic = f"it/{unique}/sensors/lab/dev-1"
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"retain-{unique}")
    publisher.connect("127.0.0.1", int(mosquitto.rsplit(":", 1)[1]))
    publisher.loop_start()
    publisher.publish(topic, reading(BASE_US, 7.0), qos=1, retain=True).wait_for_publish(10)
    try:
        with IngestThread(config, mosquitto):
            publish_payloads(mosquitto, [(topic, reading(BASE_US + MINUTE_US, 8.0))])
            wait_for(lambda: len(landed(config)) + len(landed(config, "dead_letters")) == 2, 20, "both messages")
    finally:
        # An empty retained payload clears the broker's retained message for this topic.
        publisher.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)
        publisher.loop_stop()
        publisher.disconnect()

    rows = landed(config)
    if policy == "dead_letter":
        assert [row["value"] for row in rows] == [8.0]
        assert [row["reason"] for row in landed(config, "dead_letters")] == ["retained_message"]
    else:
        assert [(row["value"], row["marks"]) for row in rows] == [(7.0, ["retained"]), (8.0, [])]
