"""A network partition between one of two edge agents and the cloud, with real Mosquitto, Redis and Spark.

Site ``north`` reaches the cloud broker directly. Site ``south`` goes through a TCP link that the
test cuts while readings keep arriving at both, then restores. Afterwards every reading is in the
cloud's readings table exactly once, and each site's CRDT state in Redis, and the fleet view,
equal the state computed from all readings with plain Python.
"""

from __future__ import annotations

import time

import pandas as pd
import pytest

from sparkiot.ingest.mqtt_client import parse_broker_url
from sparkiot.stream.job import StreamingJob
from tests.edge_support import EdgeThread, SyncThread, TcpLink, assert_state_matches, edge_config, expected_state
from tests.support import IngestThread, landed_readings, pipeline_config, read_table, wait_for
from tests.test_edge_sync import make_readings, publish_readings

pytestmark = [pytest.mark.spark, pytest.mark.mosquitto, pytest.mark.redis]

SECOND_US = 1_000_000


def test_partition_converges_exactly_once(spark, tmp_path, unique, mosquitto, redis_store):
    host, port = parse_broker_url(mosquitto)
    link = TcpLink(host, port)
    link.restore()
    start_us = time.time_ns() // 1000 - 300 * SECOND_US
    north = make_readings(3, 60, start_us=start_us)
    south = [(d.replace("dev", "pump"), m, ts, v * 2) for d, m, ts, v in make_readings(2, 90, start_us=start_us)]
    rounds = [(north[i::3], south[i::3]) for i in range(3)]

    cloud = pipeline_config(tmp_path / "cloud", unique, mosquitto, source={"topics": [f"it/{unique}/edge/+/readings"]},
                            codec={"format": "edge", "topic_pattern": None})
    job = StreamingJob(spark, cloud)
    north_config = edge_config(tmp_path, unique, "north", local=mosquitto, upstream=mosquitto)
    south_config = edge_config(tmp_path, unique, "south", local=mosquitto, upstream=link.url)
    try:
        with (IngestThread(cloud, mosquitto), SyncThread(redis_store, mosquitto, unique),
              EdgeThread(north_config, local=mosquitto) as north_edge, EdgeThread(south_config, local=mosquitto) as south_edge):
            job.start()
            publish_readings(mosquitto, unique, "north", rounds[0][0])
            publish_readings(mosquitto, unique, "south", rounds[0][1])

            link.cut()
            wait_for(lambda: not south_edge.agent.uplink.connected, 10, "the south uplink to notice the cut")
            publish_readings(mosquitto, unique, "north", rounds[1][0])
            publish_readings(mosquitto, unique, "south", rounds[1][1])
            wait_for(lambda: south_edge.agent.counters["readings"] == len(rounds[0][1]) + len(rounds[1][1]), 20,
                     "south to process its readings while cut off")
            buffered = south_edge.agent.store.totals()[1]
            assert buffered >= len(rounds[1][1])

            link.restore()
            publish_readings(mosquitto, unique, "north", rounds[2][0])
            publish_readings(mosquitto, unique, "south", rounds[2][1])
            for edge in (north_edge, south_edge):
                wait_for(lambda: edge.agent.store.totals()[0] == 0, 30, f"{edge.agent.site}'s buffer to drain")
                wait_for(lambda: redis_store.versions(edge.agent.site).get(edge.agent.replica) == edge.agent.stats()["seq"], 30,
                         f"{edge.agent.site}'s deltas to be acknowledged")
            assert south_edge.agent.uplink.counters["uplink_disconnects"] >= 1
            total = len(north) + len(south)
            wait_for(lambda: landed_readings(cloud.data_path) >= total, 30, "every forwarded reading to land")
            job.process_all_available()
            wait_for(lambda: len(read_table(cloud.data_path, "readings")) >= total, 60, "every reading in tables/readings")
    finally:
        job.stop()
        link.cut()

    table = read_table(cloud.data_path, "readings")
    assert len(table) == len(north) + len(south)
    assert table["msg_id"].is_unique
    assert table.groupby("site").size().to_dict() == {"north": len(north), "south": len(south)}
    sent = sorted((d, ts, v) for d, _, ts, v in north + south)
    micros = (table["ts"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)
    stored = sorted(zip(table["device_id"], micros.tolist(), table["value"]))
    assert stored == sent

    assert_state_matches(redis_store.site_state("north"), expected_state(north))
    assert_state_matches(redis_store.site_state("south"), expected_state(south))
    assert_state_matches(redis_store.fleet_state(), expected_state(north + south))
