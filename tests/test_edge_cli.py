"""The edge commands: configuration errors, store URLs and the fleet view."""

from __future__ import annotations

import json
import sqlite3

import pytest

from sparkiot.edge.crdt import CrdtMap, GCounter
from sparkiot.state.crdt_store import DecodedGroup, SqliteCrdtStore
from tests.test_cli import sparkiot


def test_edge_invalid_config_names_field(tmp_path):
    config = tmp_path / "edge.yaml"
    config.write_text("site: plant/7\nbuffer:\n  overflow: drop_newest\n")

    result = sparkiot("edge", "--config", str(config))

    assert result.returncode == 2
    message = result.stderr.decode()
    assert "invalid edge configuration" in message
    assert "site: site 'plant/7' must be 1-64" in message
    assert "buffer.overflow" in message


def test_edge_missing_config_file(tmp_path):
    result = sparkiot("edge", "--config", str(tmp_path / "absent.yaml"))

    assert result.returncode == 2
    assert "edge file not found" in result.stderr.decode()


def test_sync_service_rejects_unknown_store_url():
    result = sparkiot("sync-service", "--store", "mongodb://127.0.0.1/x")

    assert result.returncode == 2
    assert "unknown state store 'mongodb://127.0.0.1/x'" in result.stderr.decode()


def test_fleet_prints_merged_state(tmp_path):
    store = SqliteCrdtStore(tmp_path / "state.sqlite")
    for site, count in (("north", 3), ("south", 4)):
        delta = CrdtMap()
        delta.update("readings", GCounter, lambda counter: counter.inc(site, count))
        store.apply(site, site, [DecodedGroup(0, 1, delta)])
    store.close()

    fleet = json.loads(sparkiot("fleet", "--data-dir", str(tmp_path)).stdout)
    south = json.loads(sparkiot("fleet", "--data-dir", str(tmp_path), "--site", "south").stdout)

    assert fleet == {"fleet": {"readings": 7}, "sites": {"north": {"north": 1}, "south": {"south": 1}}}
    assert south == {"site": "south", "state": {"readings": 4}, "versions": {"south": 1}}
    with sqlite3.connect(tmp_path / "state.sqlite") as db:
        rows = db.execute("SELECT scope, kind, value FROM crdt_state WHERE key = 'readings' ORDER BY scope").fetchall()
    assert rows == [("*", "GCounter", "7"), ("north", "GCounter", "3"), ("south", "GCounter", "4")]


def test_fleet_missing_store_is_an_error(tmp_path):
    result = sparkiot("fleet", "--data-dir", str(tmp_path / "absent"))

    assert result.returncode == 2
    assert "no state store at" in result.stderr.decode()
    assert not (tmp_path / "absent").exists()


def test_fleet_unknown_site_is_an_error(tmp_path):
    SqliteCrdtStore(tmp_path / "state.sqlite").close()

    result = sparkiot("fleet", "--data-dir", str(tmp_path), "--site", "nowhere")

    assert result.returncode == 1
    assert "no site 'nowhere' in the store" in result.stderr.decode()


def test_store_keeps_other_keys_when_one_cannot_join(tmp_path):
    from sparkiot.edge.crdt import QuantileSketch
    from sparkiot.state.crdt_store import Rejected

    store = SqliteCrdtStore(tmp_path / "state.sqlite")
    first = CrdtMap()
    first.update("q", QuantileSketch, lambda sketch: sketch.add("a", 1.0), factory=lambda: QuantileSketch(0.01))
    store.apply("s", "a", [DecodedGroup(0, 1, first)])
    second = CrdtMap()
    second.update("q", QuantileSketch, lambda sketch: sketch.add("b", 2.0), factory=lambda: QuantileSketch(0.02))
    second.update("readings", GCounter, lambda counter: counter.inc("b", 5))
    rejected: list[Rejected] = []

    versions = store.apply("s", "b", [DecodedGroup(0, 1, second)], rejected)

    assert versions == {"a": 1, "b": 1}
    assert [(item.scope, item.key) for item in rejected] == [("s", "q"), ("*", "q")]
    assert store.site_state("s").get("readings").value() == 5
    assert store.site_state("s").get("q").count() == 1


@pytest.mark.redis
def test_redis_store_concurrent_writers_lose_nothing(redis_store):
    """Two stores on one Redis namespace merge at the same time, and both writers' updates remain."""
    import threading

    from sparkiot.state.redis_store import RedisCrdtStore

    other = RedisCrdtStore(redis_store.url, namespace=redis_store.ns)

    def write(store, replica):
        state = CrdtMap()
        for seq in range(50):
            delta = state.update("readings", GCounter, lambda counter: counter.inc(replica, 1))
            store.apply("s", replica, [DecodedGroup(seq, seq + 1, delta)])

    threads = [threading.Thread(target=write, args=(store, replica)) for store, replica in ((redis_store, "a"), (other, "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    other.close()

    assert redis_store.versions("s") == {"a": 50, "b": 50}
    assert redis_store.site_state("s").get("readings").value() == 100
    assert redis_store.fleet_state().get("readings").value() == 100
