"""The edge agent against the real Mosquitto: local alerts, forwarding, CRDT sync and anti-entropy.

Each test runs agents and the sync service in threads; Mosquitto serves both as the local broker
(on topics of the test's own) and as the cloud broker.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from sparkiot.codecs.forwarded import ForwardedCodec
from sparkiot.config import CodecConfig
from sparkiot.edge.agent import EdgeAgent
from sparkiot.edge.buffer import EdgeStore
from sparkiot.ingest.mqtt_client import connect_publisher
from sparkiot.state.crdt_store import SqliteCrdtStore
from tests.edge_support import (
    EdgeThread,
    SyncThread,
    assert_state_matches,
    edge_config,
    expected_state,
    reading_payload,
)
from tests.support import publish_payloads, wait_for

pytestmark = pytest.mark.mosquitto

SECOND_US = 1_000_000


class Collector:
    """Subscribes to a topic filter on the broker and keeps every payload."""

    def __init__(self, broker: str, topic_filter: str) -> None:
        self.payloads: list[bytes] = []
        self.arrivals: list[float] = []
        self._client = connect_publisher(broker)
        subscribed = threading.Event()
        self._client.on_message = lambda client, userdata, message: (self.payloads.append(message.payload), self.arrivals.append(time.monotonic()))
        self._client.on_subscribe = lambda *args: subscribed.set()
        self._client.subscribe(topic_filter, qos=1)
        assert subscribed.wait(10), f"could not subscribe to {topic_filter}"

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def forwarded_msg_ids(payloads: list[bytes]) -> list[str]:
    codec = ForwardedCodec(CodecConfig())
    ids = []
    for payload in payloads:
        decoded = codec.decode(payload, "t", time.time_ns() // 1000)
        assert decoded.dead_letters == []
        ids += [reading.msg_id for reading in decoded.readings]
    return ids


def make_readings(devices: int, per_device: int, *, start_us: int) -> list[tuple[str, str, int, float]]:
    return [
        (f"dev-{d}", "temp", start_us + i * SECOND_US, round(20 + 5 * ((i * 7 + d * 3) % 11) / 11 - d, 3))
        for d in range(devices)
        for i in range(per_device)
    ]


def publish_readings(broker: str, unique: str, site: str, readings) -> None:
    publish_payloads(broker, [(f"it/{unique}/{site}/sensors/{d}", reading_payload(d, m, ts, v)) for d, m, ts, v in readings])


def test_agent_forwards_and_syncs_all(tmp_path, unique, mosquitto):
    store = SqliteCrdtStore(tmp_path / "state.sqlite")
    config = edge_config(tmp_path, unique, "site-a", local=mosquitto, upstream=mosquitto)
    readings = make_readings(3, 40, start_us=time.time_ns() // 1000 - 3600 * SECOND_US)
    collector = Collector(mosquitto, f"it/{unique}/edge/+/readings")
    try:
        with SyncThread(store, mosquitto, unique), EdgeThread(config, local=mosquitto) as edge:
            publish_readings(mosquitto, unique, "site-a", readings)
            wait_for(lambda: store.versions("site-a").get(edge.agent.replica, 0) >= 1 and
                     store.site_state("site-a").get("readings") is not None and
                     store.site_state("site-a").get("readings").value() == len(readings), 30, "the cloud state to hold every reading")
            wait_for(lambda: len(forwarded_msg_ids(collector.payloads)) >= len(readings), 30, "every reading upstream")
            wait_for(lambda: edge.agent.store.totals()[0] == 0, 10, "the buffer to empty")
            assert edge.agent.stats()["forwarded_readings"] == len(readings)
    finally:
        collector.close()
    sent_ids = forwarded_msg_ids(collector.payloads)
    assert len(set(sent_ids)) == len(sent_ids) == len(readings)
    assert all(msg_id.startswith("site-a:") for msg_id in sent_ids)
    assert_state_matches(store.site_state("site-a"), expected_state(readings))
    # The fleet view of one site is that site's state.
    assert store.fleet_state() == store.site_state("site-a")


def test_alerts_published_on_transitions(tmp_path, unique, mosquitto):
    config = edge_config(
        tmp_path, unique, "site-b", local=mosquitto, upstream="none",
        rules={"alerts": [{"name": "hot", "match": {"metric": "temp"}, "above": 30}],
               "alert_topic": f"it/{unique}/alerts/{{site}}"},
    )
    now_us = time.time_ns() // 1000
    values = [20, 31, 35, 25, 40]
    collector = Collector(mosquitto, f"it/{unique}/alerts/#")
    try:
        with EdgeThread(config, local=mosquitto, wait_uplink=False):
            publish_readings(mosquitto, unique, "site-b", [("d1", "temp", now_us + i, v) for i, v in enumerate(values)])
            wait_for(lambda: len(collector.payloads) >= 3, 10, "three alert transitions")
            time.sleep(0.3)
    finally:
        collector.close()
    alerts = [json.loads(p) for p in collector.payloads]
    assert [(a["rule"], a["state"], a["value"], a["site"]) for a in alerts] == [
        ("hot", "raised", 31, "site-b"), ("hot", "cleared", 25, "site-b"), ("hot", "raised", 40, "site-b"),
    ]


def test_agent_keeps_dead_letters(tmp_path, unique, mosquitto):
    config = edge_config(tmp_path, unique, "site-c", local=mosquitto, upstream="none")
    now_us = time.time_ns() // 1000
    bad = [b"{not json", json.dumps({"device_id": "d", "metric": "m", "ts": now_us, "value": "high"}).encode(), b"",
           json.dumps({"device_id": "d", "metric": "m", "ts": now_us, "value": 1e200}).encode()]
    with EdgeThread(config, local=mosquitto, wait_uplink=False) as edge:
        publish_payloads(mosquitto, [(f"it/{unique}/site-c/sensors/d", payload) for payload in bad]
                         + [(f"it/{unique}/site-c/sensors/d", reading_payload("d", "m", now_us, 1.0))])
        wait_for(lambda: edge.agent.counters["messages"] == 5, 10, "five messages processed")
        reasons = sorted(row[0] for row in edge.agent.store.dead_letters())
        state = edge.agent.state.state
        by_reason = edge.agent.stats()["dead_letters_by_reason"]
    assert reasons == ["empty_payload", "invalid_json", "non_numeric_value", "value_out_of_range"]
    assert (state.get("dead_letters").value(), state.get("readings").value()) == (4, 1)
    assert by_reason == {"empty_payload": 1, "invalid_json": 1, "non_numeric_value": 1, "value_out_of_range": 1}


def test_sync_repairs_empty_cloud_store(tmp_path, unique, mosquitto):
    readings = make_readings(2, 10, start_us=time.time_ns() // 1000 - 600 * SECOND_US)
    config = edge_config(tmp_path, unique, "site-d", local=mosquitto, upstream=mosquitto)
    first = SqliteCrdtStore(tmp_path / "first.sqlite")
    with SyncThread(first, mosquitto, unique), EdgeThread(config, local=mosquitto) as edge:
        publish_readings(mosquitto, unique, "site-d", readings[:10])
        wait_for(lambda: edge.agent.stats()["cloud_seq"] >= 1 and edge.agent.store.delta_count() == 0, 20,
                 "the cloud to acknowledge every delta group")
    # A new, empty cloud store: the deltas acknowledged before are gone from the edge too.
    second = SqliteCrdtStore(tmp_path / "second.sqlite")
    with SyncThread(second, mosquitto, unique), EdgeThread(config, local=mosquitto) as edge:
        publish_readings(mosquitto, unique, "site-d", readings[10:])
        wait_for(lambda: second.versions("site-d").get(edge.agent.replica, -1) == edge.agent.stats()["seq"], 20,
                 "the new cloud store to catch up")
        assert edge.agent.stats()["full_state_syncs"] >= 1
    assert_state_matches(second.site_state("site-d"), expected_state(readings))


def test_sync_restores_agent_lost_disk(tmp_path, unique, mosquitto):
    import shutil

    readings = make_readings(2, 10, start_us=time.time_ns() // 1000 - 600 * SECOND_US)
    config = edge_config(tmp_path, unique, "site-e", local=mosquitto, upstream=mosquitto)
    store = SqliteCrdtStore(tmp_path / "state.sqlite")
    with SyncThread(store, mosquitto, unique):
        with EdgeThread(config, local=mosquitto) as edge:
            publish_readings(mosquitto, unique, "site-e", readings[:10])
            wait_for(lambda: store.versions("site-e").get(edge.agent.replica) == edge.agent.stats()["seq"] > 0, 20, "the first sync")
        first_replica = edge.agent.replica
        shutil.rmtree(config.data_path)
        with EdgeThread(config, local=mosquitto) as edge:
            assert edge.agent.replica != first_replica
            wait_for(lambda: edge.agent.uplink.counters["cloud_states_received"] == 1, 20, "the cloud's state at the edge")
            publish_readings(mosquitto, unique, "site-e", readings[10:])
            wait_for(lambda: store.site_state("site-e").get("readings").value() == len(readings), 20, "every reading in the cloud")
            edge_state = edge.agent.state.state
    assert_state_matches(store.site_state("site-e"), expected_state(readings))
    assert_state_matches(edge_state, expected_state(readings))


def test_sync_service_malformed_messages(tmp_path, unique, mosquitto):
    from sparkiot.edge import protocol

    store = SqliteCrdtStore(tmp_path / "state.sqlite")
    prefix = f"it/{unique}/sync"
    good = protocol.encode_hello("r1", 0)
    messages = [
        (f"{prefix}/s1/delta", b"\xff\x00 not cbor"),
        (f"{prefix}/s1/delta", protocol.encode_delta("r1", [protocol.Group(0, 1, b"\x01\x02")])),
        (f"{prefix}/s1/hello", json.dumps({"r": "r1", "s": 0}).encode()),
        (f"{prefix}/s1/delta", protocol.encode_delta("", [protocol.Group(0, 1, b"")])),
        (f"{prefix}/s1/hello", good),
    ]
    collector = Collector(mosquitto, f"{prefix}/s1/ack")
    try:
        with SyncThread(store, mosquitto, unique) as sync:
            publish_payloads(mosquitto, messages)
            wait_for(lambda: sync.service.counters["messages"] == 5, 10, "five sync messages")
            wait_for(lambda: collector.payloads, 10, "the answer to the good hello")
    finally:
        collector.close()
    assert [row[0] for row in store.dead_letters()] == ["invalid_sync_message", "invalid_crdt", "invalid_sync_message", "invalid_sync_message"]
    assert protocol.decode_ack(collector.payloads[-1]) == {}


def test_agent_sigkill_loses_nothing(tmp_path, unique, mosquitto):
    """SIGKILL while the uplink is down and the buffer contains data, then a restart forwards all of it."""
    import os
    import signal
    import subprocess
    import sys

    import yaml

    from tests.edge_support import TcpLink

    link = TcpLink("127.0.0.1", 1883)  # cut from the start: nothing listens on its port yet
    config = edge_config(tmp_path, unique, "site-k", local=mosquitto, upstream=link.url)
    config_file = tmp_path / "edge.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    readings = make_readings(2, 50, start_us=time.time_ns() // 1000 - 600 * SECOND_US)
    log = open(tmp_path / "edge.log", "wb")
    command = [sys.executable, "-m", "sparkiot", "edge", "--config", str(config_file)]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: json.loads((config.data_path / "edge_stats.json").read_text() or "{}").get("subscribed")
                 if (config.data_path / "edge_stats.json").exists() else False, 30, "the agent to subscribe")
        publish_readings(mosquitto, unique, "site-k", readings)
        buffered = lambda: EdgeStore(config.data_path / "edge.sqlite").totals()[1]  # noqa: E731
        wait_for(lambda: buffered() == len(readings), 20, "every reading in the buffer")
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
    assert buffered() == len(readings)

    link.restore()
    collector = Collector(mosquitto, f"it/{unique}/edge/+/readings")
    try:
        with EdgeThread(config, local=mosquitto) as edge:
            wait_for(lambda: len(set(forwarded_msg_ids(collector.payloads))) == len(readings), 30, "every buffered reading upstream")
            wait_for(lambda: edge.agent.store.totals()[0] == 0, 10, "the buffer to empty")
    finally:
        collector.close()
        link.cut()
    sent_ids = set(forwarded_msg_ids(collector.payloads))
    assert len(sent_ids) == len(readings)


def test_buffer_refuse_new_counts(tmp_path, unique, mosquitto):
    # Port 9 (discard) has no broker: the uplink stays down and everything waits in the buffer.
    config = edge_config(
        tmp_path, unique, "site-f", local=mosquitto, upstream="mqtt://127.0.0.1:9",
        buffer={"max_bytes": 2000, "overflow": "refuse_new", "durability": "normal"},
        upstream_options={"readings_per_message": 5},
    )
    readings = make_readings(1, 100, start_us=time.time_ns() // 1000 - 600 * SECOND_US)
    with EdgeThread(config, local=mosquitto, wait_uplink=False) as edge:
        publish_readings(mosquitto, unique, "site-f", readings)
        wait_for(lambda: edge.agent.counters["readings"] == 100, 20, "every reading processed")
        _, buffered, size = edge.agent.store.totals()
        refused = edge.agent.counters["buffer_refused_readings"]
    assert size <= 2000
    assert buffered + refused == 100
    assert refused > 0


def test_agent_without_upstream_keeps_state(tmp_path, unique, mosquitto):
    config = edge_config(tmp_path, unique, "site-g", local=mosquitto, upstream="none")
    readings = make_readings(2, 5, start_us=time.time_ns() // 1000 - 60 * SECOND_US)
    with EdgeThread(config, local=mosquitto, wait_uplink=False) as edge:
        publish_readings(mosquitto, unique, "site-g", readings)
        wait_for(lambda: edge.agent.counters["readings"] == 10, 10, "ten readings")
    reopened = EdgeAgent(config, local_url=mosquitto)
    assert_state_matches(reopened.state.state, expected_state(readings))
    reopened.store.close()


def test_backlog_drain_rate_and_order(tmp_path, unique, mosquitto):
    from sparkiot.ingest.mqtt_client import parse_broker_url
    from tests.edge_support import TcpLink

    link = TcpLink(*parse_broker_url(mosquitto))  # cut: nothing listens on its port yet
    config = edge_config(tmp_path, unique, "site-r", local=mosquitto, upstream=link.url,
                         buffer={"drain_rate": 100, "durability": "normal"}, upstream_options={"readings_per_message": 10})
    start_us = time.time_ns() // 1000 - 600 * SECOND_US
    backlog = [("old", "temp", start_us + i * SECOND_US, float(i)) for i in range(200)]
    live = [("new", "temp", start_us + 500 * SECOND_US + i, 1.0) for i in range(5)]
    collector = Collector(mosquitto, f"it/{unique}/edge/+/readings")
    try:
        with EdgeThread(config, local=mosquitto, wait_uplink=False) as edge:
            publish_readings(mosquitto, unique, "site-r", backlog)
            wait_for(lambda: edge.agent.store.totals()[1] == 200, 20, "the backlog in the buffer")
            link.restore()
            wait_for(lambda: edge.agent.uplink.connected, 20, "the uplink")
            publish_readings(mosquitto, unique, "site-r", live)
            wait_for(lambda: len(forwarded_msg_ids(collector.payloads)) >= 205, 30, "backlog and live readings upstream")
    finally:
        collector.close()
        link.cut()

    codec = ForwardedCodec(CodecConfig())
    arrivals = []
    for payload, arrived in zip(collector.payloads, collector.arrivals):
        for reading in codec.decode(payload, "t", time.time_ns() // 1000).readings:
            arrivals.append((arrived, reading.device_id, reading.ts_us))
    old = [(arrived, ts) for arrived, device, ts in arrivals if device == "old"]
    new = [arrived for arrived, device, _ in arrivals if device == "new"]
    assert [ts for _, ts in old] == [ts for _, _, ts, _ in backlog]
    # 200 readings at 100 per second from an empty token bucket: about 2 s from first to last.
    assert old[-1][0] - old[0][0] >= 1.5
    assert max(new) < old[-1][0]


def test_agent_started_before_sync_service_syncs(tmp_path, unique, mosquitto):
    """The first hello finds no service, so the agent repeats it until a service replies."""
    config = edge_config(tmp_path, unique, "site-h", local=mosquitto, upstream=mosquitto)
    readings = make_readings(1, 5, start_us=time.time_ns() // 1000 - 60 * SECOND_US)
    store = SqliteCrdtStore(tmp_path / "state.sqlite")
    with EdgeThread(config, local=mosquitto) as edge:
        publish_readings(mosquitto, unique, "site-h", readings)
        wait_for(lambda: edge.agent.counters["readings"] == 5, 10, "five readings at the edge")
        with SyncThread(store, mosquitto, unique):
            wait_for(lambda: store.versions("site-h").get(edge.agent.replica) == edge.agent.stats()["seq"], 20, "the sync")
        assert edge.agent.uplink.counters["hello_resends"] >= 1
    assert_state_matches(store.site_state("site-h"), expected_state(readings))


def test_alert_raised_before_restart_is_cleared_after(tmp_path, unique, mosquitto):
    config = edge_config(
        tmp_path, unique, "site-x", local=mosquitto, upstream="none",
        rules={"alerts": [{"name": "hot", "above": 80}], "alert_topic": f"it/{unique}/alerts/{{site}}"},
    )
    now_us = time.time_ns() // 1000
    collector = Collector(mosquitto, f"it/{unique}/alerts/#")
    try:
        with EdgeThread(config, local=mosquitto, wait_uplink=False) as edge:
            publish_readings(mosquitto, unique, "site-x", [("d1", "temp", now_us, 90.0)])
            wait_for(lambda: edge.agent.counters["readings"] == 1, 10, "the hot reading")
        with EdgeThread(config, local=mosquitto, wait_uplink=False) as edge:
            publish_readings(mosquitto, unique, "site-x", [("d1", "temp", now_us + 1, 30.0)])
            wait_for(lambda: len(collector.payloads) >= 2, 10, "the alert to be cleared")
            active = edge.agent.state.state.get("alerts_active").value()
    finally:
        collector.close()
    assert [json.loads(payload)["state"] for payload in collector.payloads] == ["raised", "cleared"]
    assert active == 0
