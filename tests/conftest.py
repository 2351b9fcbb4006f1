"""Shared fixtures: the real Mosquitto broker and Redis server, one local SparkSession, real data sets."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

from sparkiot.config import SparkConfig

MOSQUITTO_URL = os.environ.get("SPARKIOT_TEST_BROKER", "mqtt://127.0.0.1:1883")
REDIS_URL = os.environ.get("SPARKIOT_TEST_REDIS", "redis://127.0.0.1:6379/0")
REPO = Path(__file__).resolve().parents[1]


def _shared_data() -> Path | None:
    configured = os.environ.get("SPARKIOT_SHARED_DATA")
    if configured:
        return Path(configured)
    for parent in REPO.parents:
        candidate = parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of public data sets that development machines and CI keep beside the repository."""
    folder = _shared_data()
    if folder is None:
        pytest.skip("needs the NAB and UCI occupancy data sets: set SPARKIOT_SHARED_DATA or place shared/data beside the repository")
    return folder


@pytest.fixture(scope="session")
def mosquitto() -> str:
    """URL of the Mosquitto broker the tests talk to; fails with the start command when it is down."""
    from sparkiot.ingest.mqtt_client import parse_broker_url

    host, port = parse_broker_url(MOSQUITTO_URL)
    try:
        with socket.create_connection((host, port), timeout=3):
            pass
    except OSError as exc:
        pytest.fail(
            f"Mosquitto is not reachable at {MOSQUITTO_URL} ({exc}); start it with "
            "'mosquitto -d -c /etc/mosquitto/mosquitto.conf' (.ci/run does this)"
        )
    return MOSQUITTO_URL


@pytest.fixture
def redis_store(unique):
    """A Redis CRDT store under a namespace of its own; fails with the start command when Redis is down."""
    from sparkiot.state.redis_store import RedisCrdtStore

    try:
        store = RedisCrdtStore(REDIS_URL, namespace=f"sparkiot-test-{unique}")
    except ConnectionError as exc:
        pytest.fail(
            f"{exc}; start Redis with 'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\"' (.ci/run does this)"
        )
    yield store
    store.clear()
    store.close()


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """One local SparkSession for the whole test session."""
    from sparkiot.stream.session import build_session

    log_file = tmp_path_factory.mktemp("spark-logs") / "spark.log"
    session = build_session(SparkConfig(master="local[2]", shuffle_partitions=2), app_name="sparkiot-tests", log_file=log_file)
    yield session
    session.stop()


@pytest.fixture
def unique() -> str:
    """A short id that keeps topics and MQTT client ids of one test apart from every other run."""
    return uuid.uuid4().hex[:10]
