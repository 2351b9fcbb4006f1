"""The Spark runtime of one served pipeline: a driver process that the control plane starts and stops.

``python -m sparkiot.serverless.runner RUNTIME_DIR`` reads ``spec.json`` from that folder, starts
a SparkSession on the spec's master and the pipeline's streaming job, and then, every half second:

* applies ``control.json`` (the executor count and trigger interval the control plane wants);
* records in ``ledger.jsonl`` each worker it starts or stops holding (the driver and each
  executor, with cores and memory), which is what the bill is computed from;
* writes ``status.json`` (atomically): executors, progress, offsets processed, first batch time.

Each finished micro-batch is appended to ``batches.jsonl`` with its completion time, so latency
can be measured per reading from the readings table's ``ingest_time`` and ``batch_id``.

SIGTERM drains: Spark processes everything landed, the queries stop, the ledger closes every
holding, and the process exits 0. The files are the whole interface, so the control plane can
restart and find a runtime still running.

Executor scaling on a standalone master. Without dynamic allocation the master starts as many
executors as ``spark.cores.max`` allows as soon as the application registers, so a pipeline
could not start small. With ``spark.dynamicAllocation.enabled`` the application registers with a
limit of zero and requests ``initialExecutors``. sparkiot sets the allocation manager's own add
and remove timeouts out of reach, so the manager never scales by itself. The runner sets the
target with ``SparkContext.requestTotalExecutors`` and releases executors with the scheduler
backend's ``killExecutors``, because ``SparkContext.killExecutors`` refuses while dynamic
allocation is on. The allocation manager may lower its request once when the first batch runs,
so the runner repeats the target every few seconds.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from sparkiot.serverless.metering import held_memory_mib

log = logging.getLogger("sparkiot.runner")

REASSERT_SECONDS = 5.0


def write_json_atomic(path: Path, value: dict) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps(value))
    os.replace(temporary, path)


class Ledger:
    """Appends one line per worker start or stop to ``ledger.jsonl``; each line is flushed and synced."""

    def __init__(self, path: Path, epoch: int) -> None:
        self.path = path
        self.epoch = epoch
        self.open: dict[str, dict] = {}
        self._file = open(path, "a", encoding="utf-8")

    def _write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def start(self, kind: str, resource_id: str, cores: float, memory_mib: int, at: float) -> None:
        record = {"event": "start", "epoch": self.epoch, "kind": kind, "id": resource_id,
                  "cores": cores, "memory_mib": memory_mib, "time": at}
        self.open[resource_id] = record
        self._write(record)

    def stop(self, resource_id: str, at: float) -> None:
        record = self.open.pop(resource_id, None)
        if record is not None:
            self._write({"event": "stop", "epoch": self.epoch, "kind": record["kind"], "id": resource_id, "time": at})

    def stop_all(self, at: float) -> None:
        for resource_id in list(self.open):
            self.stop(resource_id, at)

    def close(self) -> None:
        self._file.close()


class Runner:
    """One runtime epoch of a served pipeline."""

    def __init__(self, runtime_dir: Path) -> None:
        from sparkiot.config import build_config

        self.dir = runtime_dir
        self.spec = json.loads((runtime_dir / "spec.json").read_text())
        self.config = build_config(self.spec["pipeline"], origin=str(runtime_dir / "spec.json"))
        self.serverless = self.config.serverless
        self.master: str = self.spec["master"]
        self.epoch = int(self.spec["epoch"])
        self.standalone = self.master.startswith("spark://")
        self.remote = self.master.startswith("sc://")
        self.stop_requested = threading.Event()
        self.ledger = Ledger(runtime_dir / "ledger.jsonl", self.epoch)
        self.batches = open(runtime_dir / "batches.jsonl", "a", encoding="utf-8")
        self.batches_lock = threading.Lock()
        self.status: dict = {
            "pid": os.getpid(),
            "epoch": self.epoch,
            "state": "starting",
            "master": self.master,
            "started_at": time.time(),
            "ready_at": None,
            "first_batch_at": None,
            "executors": [],
            "target_executors": self.serverless.initial_executors if self.standalone else 0,
            "executor_cores": self.serverless.executor_cores,
            "trigger": self.config.spark.trigger,
            "control_seq": None,
            "error": None,
        }
        self.spark = None
        self.job = None
        self._last_request = 0.0
        self._kill_pending: set[str] = set()

    # -- Spark ---------------------------------------------------------------------------------

    def _spark_conf(self) -> dict[str, str]:
        s = self.serverless
        conf = {
            "spark.driver.host": "127.0.0.1",
            "spark.driver.bindAddress": "127.0.0.1",
            "spark.driver.cores": str(s.driver_cores),
            "spark.driver.memory": f"{s.driver_memory // 1024**2}m",
        }
        if self.standalone:
            conf.update({
                "spark.executor.cores": str(s.executor_cores),
                "spark.executor.memory": f"{s.executor_memory // 1024**2}m",
                "spark.cores.max": str(s.max_executors * s.executor_cores),
                "spark.dynamicAllocation.enabled": "true",
                "spark.dynamicAllocation.shuffleTracking.enabled": "true",
                "spark.dynamicAllocation.initialExecutors": str(s.initial_executors),
                "spark.dynamicAllocation.minExecutors": "0",
                "spark.dynamicAllocation.maxExecutors": str(s.max_executors),
                # Out of reach: the allocation manager never adds or removes executors by itself.
                "spark.dynamicAllocation.executorIdleTimeout": "3650d",
                "spark.dynamicAllocation.cachedExecutorIdleTimeout": "3650d",
                "spark.dynamicAllocation.schedulerBacklogTimeout": "3650d",
                "spark.dynamicAllocation.sustainedSchedulerBacklogTimeout": "3650d",
            })
        return conf

    def start_spark(self) -> None:
        from sparkiot.stream.job import StreamingJob
        from sparkiot.stream.session import build_session

        if self.remote:
            from sparkiot.stream.session import build_connect_session

            self.spark = build_connect_session(self.master, self.config.spark, app_name=f"sparkiot-{self.config.name}")
            self.job = StreamingJob(self.spark, self.config, remote=True, remote_batch_log=str(self.dir / "batches.jsonl"))
            self.job.start()
            self.status["ready_at"] = time.time()
            self.status["state"] = "running"
            return
        spark_config = self.config.spark.model_copy(
            update={"master": self.master, "conf": {**self._spark_conf(), **self.config.spark.conf}}
        )
        log_file = self.config.data_path / "logs" / "spark.log"
        self.spark = build_session(spark_config, app_name=f"sparkiot-{self.config.name}", log_file=log_file)
        self.status["app_id"] = self.spark.sparkContext.applicationId
        self.job = StreamingJob(self.spark, self.config, on_batch=self._on_batch)
        self.job.start()
        self.status["ready_at"] = time.time()
        self.status["state"] = "running"

    def _on_batch(self, query: str, batch_id: int, rows: int) -> None:
        now = time.time()
        if rows > 0 and query == "readings" and self.status["first_batch_at"] is None:
            self.status["first_batch_at"] = now
        with self.batches_lock:
            self.batches.write(json.dumps({"epoch": self.epoch, "query": query, "batch_id": batch_id,
                                           "rows": rows, "done": now}) + "\n")
            self.batches.flush()

    # -- executors -----------------------------------------------------------------------------

    def executor_ids(self) -> list[str]:
        if not self.standalone:
            return []
        ids = self.spark.sparkContext._jsc.sc().getExecutorIds()
        return sorted((ids.apply(i) for i in range(ids.size())), key=_numeric_first)

    def request_executors(self, total: int) -> None:
        sc = self.spark.sparkContext
        empty = sc._jvm.PythonUtils.toScalaMap(sc._jvm.java.util.HashMap())
        sc._jsc.sc().requestTotalExecutors(total, 0, empty)
        self._last_request = time.monotonic()

    def release_executors(self, ids: list[str]) -> list[str]:
        sc = self.spark.sparkContext
        backend = sc._jsc.sc().schedulerBackend()
        killed = backend.killExecutors(sc._jvm.PythonUtils.toSeq(ids), True, False, False)
        return [killed.apply(i) for i in range(killed.size())]

    def _scale(self, current: list[str]) -> None:
        target = self.status["target_executors"]
        if time.monotonic() - self._last_request >= REASSERT_SECONDS:
            self.request_executors(target)
        excess = [executor for executor in current if executor not in self._kill_pending]
        if len(excess) > target:
            # The newest executors go first: the oldest hold the warmest caches and Python workers.
            victims = excess[target:]
            released = self.release_executors(victims)
            self._kill_pending.update(released)
            if released:
                log.info("releasing executors %s (target %d)", ", ".join(released), target)
        self._kill_pending &= set(current)

    def _track_executors(self, now: float) -> list[str]:
        current = self.executor_ids()
        memory = held_memory_mib(self.serverless.executor_memory)
        for executor in current:
            if f"executor-{executor}" not in self.ledger.open:
                self.ledger.start("executor", f"executor-{executor}", self.serverless.executor_cores, memory, now)
        live = {f"executor-{executor}" for executor in current}
        for resource_id in [r for r in self.ledger.open if r.startswith("executor-") and r not in live]:
            self.ledger.stop(resource_id, now)
        self.status["executors"] = current
        return current

    # -- control -------------------------------------------------------------------------------

    def _apply_control(self) -> None:
        path = self.dir / "control.json"
        try:
            control = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        if control.get("seq") == self.status["control_seq"]:
            return
        self.status["control_seq"] = control.get("seq")
        executors = control.get("executors")
        if self.standalone and isinstance(executors, int) and executors != self.status["target_executors"]:
            bounded = min(max(executors, self.serverless.min_executors), self.serverless.max_executors)
            log.info("executor target %d -> %d", self.status["target_executors"], bounded)
            self.status["target_executors"] = bounded
            self.request_executors(bounded)
        trigger = control.get("trigger")
        if isinstance(trigger, (int, float)) and trigger > 0 and trigger != self.status["trigger"]:
            log.info("trigger %gs -> %gs; restarting the queries from their checkpoints", self.status["trigger"], trigger)
            self.job.set_trigger(float(trigger))
            self.status["trigger"] = float(trigger)

    def _progress(self) -> None:
        if self.remote:
            self.job.poll_progress()
            readings = self.job.progress.last.get("readings", {})
            if readings.get("rows", 0) > 0 and self.status["first_batch_at"] is None:
                self.status["first_batch_at"] = time.time()
        last = dict(self.job.progress.last)
        self.status["progress"] = last
        self.status["rows_written"] = dict(self.job.rows_written)
        self.status["batches"] = dict(self.job.batches)

    def _beat_until(self, done: threading.Event) -> None:
        while not done.wait(1.0):
            self.write_status()

    def write_status(self) -> None:
        self.status["heartbeat"] = time.time()
        write_json_atomic(self.dir / "status.json", self.status)

    def run(self) -> int:
        driver_memory = held_memory_mib(self.serverless.driver_memory)
        driver_cores = self.serverless.local_cores if self.master.startswith("local") else self.serverless.driver_cores
        self.ledger.start("driver", "driver", driver_cores, driver_memory, self.status["started_at"])
        self.write_status()
        code = 0
        try:
            self.start_spark()
            while not self.stop_requested.is_set():
                now = time.time()
                self._apply_control()
                current = self._track_executors(now)
                if self.standalone:
                    self._scale(current)
                failed = self.job.restart_failed()
                if failed is not None:
                    raise RuntimeError(f"Spark query {failed.name} failed: {str(failed.exception()).splitlines()[0]}")
                self._progress()
                self.write_status()
                self.stop_requested.wait(0.5)
            self.status["state"] = "draining"
            self.write_status()
            # The heartbeat goes on while Spark drains, so a runtime killed then is billed to that moment.
            drained = threading.Event()
            beat = threading.Thread(target=self._beat_until, args=(drained,), daemon=True)
            beat.start()
            try:
                errors = self.job.process_all_available()
            finally:
                drained.set()
                beat.join()
            if errors:
                raise RuntimeError("; ".join(errors))
            self._progress()
        except Exception as exc:  # noqa: BLE001 - reported in status.json for the control plane
            log.exception("runtime failed")
            self.status["error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            code = 1
        finally:
            if self.job is not None:
                self.job.stop()
            if self.spark is not None:
                try:
                    self.spark.stop()
                except Exception:  # noqa: BLE001 - the process is ending
                    log.warning("Spark did not stop cleanly", exc_info=True)
            self.ledger.stop_all(time.time())
            self.ledger.close()
            self.status["executors"] = []
            self.status["state"] = "failed" if code else "stopped"
            self.status["stopped_at"] = time.time()
            self.write_status()
        return code


def _numeric_first(executor_id: str) -> tuple[int, str]:
    return (int(executor_id), "") if executor_id.isdigit() else (sys.maxsize, executor_id)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m sparkiot.serverless.runner RUNTIME_DIR", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j",):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    runner = Runner(Path(argv[0]))

    def on_term(signum, frame) -> None:
        runner.stop_requested.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    return runner.run()


if __name__ == "__main__":
    sys.exit(main())
