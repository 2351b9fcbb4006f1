"""A Spark standalone cluster on 127.0.0.1, started with PySpark's own ``bin/spark-class``.

The PySpark package carries Spark's jars and ``bin/spark-class`` but not the ``sbin`` scripts
(``start-master.sh``), so the control plane launches the Master and each Worker class itself, in
their own sessions so that they outlive a control plane that is killed. Their process ids and
ports are kept in ``cluster.json``. A control plane that restarts adopts a cluster whose master
still responds, and starts a new one otherwise.

Every listening socket is bound to 127.0.0.1 (``SPARK_LOCAL_IP`` and ``--host``), and the
master's REST submission server is off.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

from sparkiot.serverless.runner import write_json_atomic

log = logging.getLogger(__name__)


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spark_environment() -> dict[str, str]:
    """Return the environment for Spark's launchers and Python workers: Java, Spark's home, loopback only."""
    from sparkiot.stream.session import find_java

    java = find_java()
    env = dict(os.environ)
    env.update({
        "JAVA_HOME": env.get("JAVA_HOME", java.home),
        "SPARK_HOME": str(spark_home()),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
    })
    return env


def process_alive(pid: int | None, started: float | None) -> bool:
    """True when ``pid`` runs and is the process that started at ``started`` (not a reused id)."""
    if not pid:
        return False
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(process.create_time() - started) < 1.0
    except psutil.Error:
        return False


def process_start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


@dataclass(frozen=True)
class WorkerSpec:
    cores: int
    memory_mib: int


class StandaloneCluster:
    """A standalone Master and its Workers, owned by one control plane state directory."""

    def __init__(self, directory: Path, workers: list[WorkerSpec], *, master_port: int | None = None) -> None:
        self.dir = directory
        self.workers = workers
        self.master_port = master_port
        self.web_port: int | None = None
        self.processes: list[dict] = []

    @property
    def url(self) -> str:
        return f"spark://127.0.0.1:{self.master_port}"

    def _state_path(self) -> Path:
        return self.dir / "cluster.json"

    def adopt(self) -> bool:
        """Take over a cluster that a previous control plane started, when its master still responds."""
        try:
            state = json.loads(self._state_path().read_text())
        except (OSError, ValueError):
            return False
        if not all(process_alive(p["pid"], p["started"]) for p in state["processes"]):
            self._kill(state["processes"])
            return False
        self.master_port, self.web_port, self.processes = state["master_port"], state["web_port"], state["processes"]
        try:
            self.wait_ready(timeout=10)
        except TimeoutError:
            self.stop()
            return False
        log.info("adopted the standalone cluster at %s", self.url)
        return True

    def _launch(self, args: list[str], log_name: str) -> dict:
        command = [str(spark_home() / "bin" / "spark-class"), *args]
        log_path = self.dir / "logs" / log_name
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = spark_environment()
        env["SPARK_MASTER_OPTS"] = "-Dspark.master.rest.enabled=false"
        with open(log_path, "ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True, cwd=self.dir)
        return {"pid": process.pid, "started": process_start_time(process.pid), "role": args[0].rsplit(".", 1)[-1]}

    def start(self, timeout: float = 90.0) -> None:
        """Start the master and the workers; return once every worker has registered."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.master_port = self.master_port or free_port()
        self.web_port = free_port()
        self.processes = [self._launch(
            ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(self.master_port),
             "--webui-port", str(self.web_port)], "master.log")]
        self._save()
        self._wait_port(self.master_port, timeout)
        for index, worker in enumerate(self.workers):
            work_dir = self.dir / "work" / f"worker-{index}"
            work_dir.mkdir(parents=True, exist_ok=True)
            self.processes.append(self._launch(
                ["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", str(worker.cores),
                 "--memory", f"{worker.memory_mib}m", "--webui-port", "0", "--work-dir", str(work_dir), self.url],
                f"worker-{index}.log"))
        self._save()
        self.wait_ready(timeout)
        log.info("standalone cluster ready at %s with %d workers", self.url, len(self.workers))

    def _save(self) -> None:
        write_json_atomic(self._state_path(), {"master_port": self.master_port, "web_port": self.web_port,
                                               "processes": self.processes})

    def _wait_port(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                if not process_alive(self.processes[0]["pid"], None):
                    raise RuntimeError(f"the standalone master exited; see {self.dir / 'logs' / 'master.log'}") from None
                time.sleep(0.2)
        raise TimeoutError(f"the standalone master did not listen on 127.0.0.1:{port} within {timeout:g}s")

    def state(self) -> dict:
        """Return the master's own view (``/json``): workers, cores, memory and applications."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/json/", timeout=5) as response:
            return json.loads(response.read())

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.state().get("aliveworkers", 0) >= len(self.workers):
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"the standalone workers did not register within {timeout:g}s; see {self.dir / 'logs'}")

    @staticmethod
    def _kill(processes: list[dict]) -> None:
        for process in reversed(processes):
            if process_alive(process["pid"], process["started"]):
                try:
                    os.killpg(process["pid"], signal.SIGTERM)
                except OSError:
                    pass
        deadline = time.monotonic() + 15
        for process in processes:
            while process_alive(process["pid"], process["started"]) and time.monotonic() < deadline:
                time.sleep(0.1)
            if process_alive(process["pid"], process["started"]):
                try:
                    os.killpg(process["pid"], signal.SIGKILL)
                except OSError:
                    pass

    def stop(self) -> None:
        """Stop the workers (and the executors they run), then the master."""
        self._kill(self.processes)
        self.processes = []
        try:
            self._state_path().unlink()
        except FileNotFoundError:
            pass
