"""The control plane end to end: ``sparkiot serve`` as a process, a real Spark standalone cluster on
127.0.0.1 (executors of 1 core and 512 MiB), Mosquitto, and the HTTP API.

Each test checks the readings table against the msg_ids it published: every one present, none twice.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest

from sparkiot.ingest.consumer import read_counters
from sparkiot.serverless.client import Client
from sparkiot.serverless.cluster import free_port
from tests.support import publish_payloads, read_table, wait_for

pytestmark = [pytest.mark.spark, pytest.mark.mosquitto]

TOKEN = "standalone-tests-token-0123456789"


class Server:
    """``sparkiot serve`` in a process of its own, which a test can kill and start again."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = free_port()
        self.config = directory / "serve.yaml"
        self.config.write_text(json.dumps({
            "port": self.port, "state_dir": str(directory / "state"), "poll_interval": "300ms",
            "cluster": {"workers": [{"cores": 3, "memory": "2GiB"}]},
        }))
        self.process: subprocess.Popen | None = None
        self.client = Client(f"http://127.0.0.1:{self.port}", TOKEN)

    def start(self) -> None:
        env = {**os.environ, "SPARKIOT_TOKEN": TOKEN}
        with open(self.dir / "serve.log", "ab") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "sparkiot", "serve", "--config", str(self.config)],
                                            stdout=out, stderr=subprocess.STDOUT, env=env)
        wait_for(self._answers, 60, "the control plane to answer")

    def _answers(self) -> bool:
        try:
            self.client.request("GET", "/health")
            return True
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=300)

    def master_apps(self) -> list[dict]:
        """The running applications as the standalone master reports them."""
        state = json.loads((self.dir / "state" / "cluster" / "cluster.json").read_text())
        with urllib.request.urlopen(f"http://127.0.0.1:{state['web_port']}/json/", timeout=5) as response:
            return json.loads(response.read())["activeapps"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("serve"))
    server.start()
    yield server
    server.stop()
    server.client.close()


def pipeline_yaml(name: str, topic: str, **serverless) -> str:
    return json.dumps({
        "name": name,
        "source": {"broker": "mqtt://127.0.0.1:1883", "topics": [f"{topic}/#"], "client_id": f"sparkiot-{name}",
                   "session_expiry": "10m"},
        "watermark": "1h",
        "windows": [{"size": "1h"}],
        "spark": {"trigger": "1s", "side_trigger": "1s"},
        "serverless": {"runtime": "standalone", "executor_memory": "512MiB", "max_executors": 3,
                       "scaling": {"policy": "fixed"}, **serverless},
    })


def publish(topic: str, first: int, count: int) -> set[str]:
    """Publish ``count`` readings as JSON arrays of 50; return their msg_ids (the JSON codec scopes ids by device)."""
    base_us = 1_780_000_000_000_000
    payloads, ids = [], set()
    for start in range(first, first + count, 50):
        rows = [{"device_id": f"dev-{i % 7}", "metric": "temperature", "ts": base_us + i * 1_000_000,
                 "value": 20.0 + i % 13, "id": f"m-{i}"} for i in range(start, min(start + 50, first + count))]
        ids.update(f"{row['device_id']}:{row['id']}" for row in rows)
        payloads.append((f"{topic}/dev", json.dumps(rows).encode()))
    publish_payloads("mqtt://127.0.0.1:1883", payloads)
    return ids


def stored_ids(data_dir: str) -> list[str]:
    table = read_table(Path(data_dir), "readings")
    return [] if table.empty else table["msg_id"].tolist()


def wait_stored(data_dir: str, expected: set[str], timeout: float = 180) -> None:
    wait_for(lambda: len(stored_ids(data_dir)) >= len(expected), timeout, f"{len(expected)} readings in the table")
    ids = stored_ids(data_dir)
    assert len(ids) == len(expected), "a reading was stored twice"
    assert set(ids) == expected


def status(server: Server, name: str) -> dict:
    return server.client.status(name)


def wait_state(server: Server, name: str, state: str, timeout: float = 180) -> dict:
    wait_for(lambda: status(server, name)["state"] == state, timeout, f"{name} to be {state}")
    return status(server, name)


def stop_and_wait(server: Server, name: str) -> None:
    server.client.stop(name)
    wait_state(server, name, "stopped", timeout=240)


def test_standalone_submit_and_scale(server, unique, mosquitto):
    name, topic = f"scale-{unique}", f"cp/{unique}/scale"
    server.client.submit(pipeline_yaml(name, topic, idle_timeout=None))
    wait_state(server, name, "running")
    data_dir = status(server, name)["data_dir"]
    wait_stored(data_dir, publish(topic, 0, 300))
    assert status(server, name)["executors"] == 1

    server.client.scale(name, executors=3)
    wait_for(lambda: status(server, name)["executors"] == 3, 120, "three executors")
    [app] = server.master_apps()
    assert app["cores"] == 3

    # The pipeline's dashboard, served by the control plane, counts the table and the executors.
    def dashboard_health() -> dict:
        return server.client.request("GET", f"/dashboard/{name}/api/health")

    wait_for(lambda: dashboard_health()["readings_stored"] == len(stored_ids(data_dir)) == 300, 30,
             "the dashboard to count the stored readings")
    wait_for(lambda: dashboard_health()["executors"] == 3, 30, "the dashboard to show three executors")
    assert float(dashboard_health()["cost_usd"]["emr_serverless"]) >= 0
    server.client.scale(name, executors=1)
    wait_for(lambda: status(server, name)["executors"] == 1, 120, "one executor")
    wait_for(lambda: server.master_apps()[0]["cores"] == 1, 30, "the master to report one core")

    # A new trigger interval restarts the queries from their checkpoints.
    server.client.scale(name, trigger=2.0)
    runtime = Path(data_dir).parent / "runtime"
    wait_for(lambda: json.loads((runtime / "status.json").read_text())["trigger"] == 2.0, 60, "the 2 s trigger")

    # Readings published after the changes reach the table once each; the first 300 again are duplicates.
    wait_stored(data_dir, publish(topic, 0, 500))
    stop_and_wait(server, name)
    # With no pipeline left on it, the control plane stops the cluster too.
    wait_for(lambda: not (server.dir / "state" / "cluster" / "cluster.json").exists(), 60, "the cluster to stop")
    events = [(event["executors_from"], event["executors_to"]) for event in status(server, name)["scaling"]]
    assert (1, 3) in events
    assert (3, 1) in events
    bill = server.client.cost(name, "emr_serverless")
    # The driver, the first executor and the two added ones.
    assert bill["workers"] == 4
    assert float(bill["exact"]) > 0


def test_standalone_scale_to_zero_and_back(server, unique, mosquitto):
    name, topic = f"idle-{unique}", f"cp/{unique}/idle"
    server.client.submit(pipeline_yaml(name, topic, idle_timeout="8s"))
    data_dir = status(server, name)["data_dir"]
    wait_for(lambda: read_counters(Path(data_dir)).get("subscribed"), 60, "the ingest to subscribe")
    published = publish(topic, 0, 200)
    wait_stored(data_dir, published)

    idle = wait_state(server, name, "idle", timeout=120)
    assert idle["executors"] == 0
    runner = json.loads((Path(data_dir).parent / "runtime" / "status.json").read_text())
    assert runner["state"] == "stopped"
    assert not psutil.pid_exists(runner["pid"]) or psutil.Process(runner["pid"]).status() == psutil.STATUS_ZOMBIE

    published |= publish(topic, 200, 200)
    wait_stored(data_dir, published)
    def cold_starts() -> list[dict]:
        return [start for start in status(server, name)["starts"] if start["reason"] == "new_data"]

    # The cold start is measured from the new data's discovery to the first batch done.
    wait_for(lambda: cold_starts() and cold_starts()[0]["seconds"] is not None, 30, "the cold start to be recorded")
    [cold] = cold_starts()
    assert cold["epoch"] == 2
    assert 0 < cold["ready_seconds"] < cold["seconds"]
    assert cold["first_batch_at"] - cold["requested_at"] == pytest.approx(cold["seconds"])
    stop_and_wait(server, name)


def test_control_plane_kill_and_restart(server, unique, mosquitto):
    name, topic = f"kill-{unique}", f"cp/{unique}/kill"
    server.client.submit(pipeline_yaml(name, topic, idle_timeout=None))
    wait_state(server, name, "running")
    data_dir = status(server, name)["data_dir"]
    published = publish(topic, 0, 200)
    wait_stored(data_dir, published)
    runner_pid = json.loads((Path(data_dir).parent / "runtime" / "status.json").read_text())["pid"]

    server.kill()
    # Readings keep landing and being processed while no control plane runs.
    published |= publish(topic, 200, 200)
    server.start()
    wait_stored(data_dir, published)
    assert status(server, name)["state"] == "running"
    assert json.loads((Path(data_dir).parent / "runtime" / "status.json").read_text())["pid"] == runner_pid

    # The runtime itself killed: the control plane starts a new epoch from the checkpoint.
    epoch = status(server, name)["epoch"]
    os.killpg(runner_pid, signal.SIGKILL)
    published |= publish(topic, 400, 150)
    wait_for(lambda: status(server, name)["epoch"] == epoch + 1, 60, "a new runtime epoch")
    wait_stored(data_dir, published)
    assert [start["reason"] for start in status(server, name)["starts"]][-1] == "restart"
    stop_and_wait(server, name)


@pytest.mark.parametrize("runtime", ["local", "connect"])
def test_local_and_connect_runtimes_store_all(server, unique, mosquitto, runtime):
    name, topic = f"{runtime}-{unique}", f"cp/{unique}/{runtime}"
    spec = json.loads(pipeline_yaml(name, topic, idle_timeout=None))
    spec["serverless"] = {"runtime": runtime, "local_cores": 1}
    server.client.submit(json.dumps(spec))
    data_dir = status(server, name)["data_dir"]
    wait_for(lambda: read_counters(Path(data_dir)).get("subscribed"), 60, "the ingest to subscribe")
    published = publish(topic, 0, 300)
    wait_stored(data_dir, published)
    def runner() -> dict:
        return json.loads((Path(data_dir).parent / "runtime" / "status.json").read_text())

    assert runner()["master"].startswith("local[1]" if runtime == "local" else "sc://127.0.0.1:")
    wait_for(lambda: runner()["first_batch_at"] is not None, 10, "the runtime to report its first batch")
    stop_and_wait(server, name)
    holdings = server.client.cost(name, "synapse")
    # One driver holding (the runtime's client process for Connect), billed whole minutes.
    assert holdings["workers"] == 1
    assert holdings["billed_seconds"] % 60 == 0
