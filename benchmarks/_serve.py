"""Helpers of the control plane benchmarks: ``sparkiot serve`` as a child process, a rate-driven
publisher, and per-reading latency from the readings table and the runtime's batch log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from _common import free_port, stop_process

TOKEN = "benchmark-token-0123456789abcdef"


class ServeProcess:
    """``python -m sparkiot serve`` with its state in ``directory``; use as a context manager."""

    def __init__(self, directory: Path, *, workers: list[dict], stop_when_idle: bool) -> None:
        from sparkiot.serverless.client import Client

        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = directory / "serve.json"
        self.config.write_text(json.dumps({
            "port": self.port, "state_dir": str(directory / "state"), "poll_interval": "250ms",
            "cluster": {"workers": workers, "stop_when_idle": stop_when_idle},
        }))
        self.client = Client(f"http://127.0.0.1:{self.port}", TOKEN, timeout=60)
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "ServeProcess":
        env = {**os.environ, "SPARKIOT_TOKEN": TOKEN}
        with open(self.dir / "serve.log", "ab") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "sparkiot", "serve", "--config", str(self.config)],
                                            stdout=out, stderr=subprocess.STDOUT, env=env)
        wait(lambda: self._answers(), 60, "the control plane to answer")
        return self

    def _answers(self) -> bool:
        try:
            self.client.request("GET", "/health")
            return True
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def __exit__(self, *exc_info) -> None:
        stop_process(self.process, timeout=300)
        self.client.close()

    def runtime_dir(self, name: str) -> Path:
        return self.dir / "state" / "pipelines" / name / "runtime"

    def runner_status(self, name: str) -> dict:
        try:
            return json.loads((self.runtime_dir(name) / "status.json").read_text())
        except (OSError, ValueError):
            return {}


def wait(predicate: Callable[[], bool], timeout: float, description: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g}s waiting for {description}")


def pipeline_spec(name: str, broker: str, topic: str, **serverless) -> str:
    return json.dumps({
        "name": name,
        "source": {"broker": broker, "topics": [f"{topic}/#"], "client_id": f"sparkiot-bench-{name}",
                   "session_expiry": "1h"},
        "watermark": "10m",
        "windows": [{"size": "1m"}],
        "spark": {"trigger": "1s", "side_trigger": "2s"},
        "serverless": {"runtime": "standalone", "executor_memory": "512MiB", **serverless},
    })


class RatePublisher:
    """Publishes readings at ``rate(t)`` per second (t in seconds since start), as JSON arrays.

    Each message holds up to ``batch`` readings, and each reading's event time is its publish
    time, so the watermark follows the wall clock.
    """

    def __init__(self, broker: str, topic: str, rate: Callable[[float], float], *, devices: int = 50, batch: int = 100,
                 prefix: str = "r") -> None:
        from sparkiot.ingest.mqtt_client import connect_publisher

        self.client = connect_publisher(broker)
        self.topic = topic
        self.rate = rate
        self.devices = devices
        self.batch = batch
        self.prefix = prefix
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = 0.0

    def start(self) -> "RatePublisher":
        self.started = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        owed = 0.0
        last = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            owed += self.rate(now - self.started) * (now - last)
            last = now
            while owed >= 1 and not self._stop.is_set():
                count = min(self.batch, int(owed))
                ts_us = time.time_ns() // 1000
                rows = [{"device_id": f"zone-{(self.sent + i) % self.devices}", "metric": "passengers",
                         "ts": ts_us, "value": float((self.sent + i) % 97), "id": f"{self.prefix}{self.sent + i}"}
                        for i in range(count)]
                self.client.publish(f"{self.topic}/taxi", json.dumps(rows).encode(), qos=1)
                self.sent += count
                owed -= count
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.client.disconnect()
        self.client.loop_stop()


def reading_latencies(data_dir: Path, runtime_dir: Path, since: float = 0.0) -> pd.Series:
    """Seconds from each reading's receipt (``ingest_ts``) to the end of the micro-batch that stored it.

    Only readings received at or after ``since`` (Unix seconds) count.
    """
    readings = pd.read_parquet(data_dir / "tables" / "readings", columns=["ingest_ts", "batch_id"])
    batches = [json.loads(line) for line in (runtime_dir / "batches.jsonl").read_text().splitlines() if line]
    done = pd.DataFrame([b for b in batches if b["query"] == "readings" and b["rows"] > 0])
    # A batch id is unique per checkpoint; the last completion of an id wins (a replay rewrites it).
    done = done.drop_duplicates("batch_id", keep="last")[["batch_id", "done"]]
    readings["batch_id"] = readings["batch_id"].astype("int64")
    joined = readings.merge(done, on="batch_id", how="inner")
    ingest = joined["ingest_ts"].astype("datetime64[us, UTC]").astype("int64") / 1e6
    latency = joined["done"] - ingest
    return latency[ingest >= since]
