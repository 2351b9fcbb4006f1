"""The control plane: runs submitted pipelines on demand, scales them, stops them when idle, meters them.

A served pipeline has two parts with separate lives:

* its **ingest** (``sparkiot ingest``), which stays up while the pipeline is wanted, so that
  readings keep landing durably while no Spark runs;
* its **runtime** (:mod:`sparkiot.serverless.runner`), the Spark driver, which starts when
  there is work and stops after ``serverless.idle_timeout`` without new input (scale to zero).
  Each start is an *epoch*; a new epoch continues from the Spark checkpoints of the last.

A supervisor thread visits every pipeline each ``poll_interval``. It starts what is missing and
restarts a runtime that died (up to ``max_restarts``). It stops an idle runtime, and starts one
again when readings wait in the landing log. It applies the scaling policy and copies the
runtime's ledger into the registry. Both processes run in their own sessions, so a control plane that is
killed leaves them running and its successor adopts them by process id and start time.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sparkiot.config import ConfigError, PipelineConfig, build_config
from sparkiot.ingest.landing import LogReader
from sparkiot.serverless.cluster import (
    StandaloneCluster, WorkerSpec, free_port, process_alive, process_start_time, spark_environment, spark_home,
)
from sparkiot.serverless.metering import Bill, load_prices, price
from sparkiot.serverless.registry import Conflict, Registry
from sparkiot.serverless.runner import write_json_atomic
from sparkiot.serverless.scaling import Decision, FixedPolicy, Metrics, ScalingPolicy, load_policy
from sparkiot.serverless.settings import ServeConfig

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
LOGS = ("readings", "late", "dead_letters", "alerts", "events")
LOG_SOURCES = ("events", "runner", "ingest", "spark")
MAX_YAML_BYTES = 1024 * 1024
MAX_YAML_DEPTH = 64
# Entries of the state directory that belong to the control plane itself.
RESERVED = ("pipelines", "cluster", "logs", "registry.sqlite", "registry.sqlite-wal", "registry.sqlite-shm",
            "token", "lock", "connect.json")


class NotFound(KeyError):
    pass


class AlreadyRunning(RuntimeError):
    """Another control plane has locked the state directory."""


class Invalid(ValueError):
    """A submission or request that cannot be accepted; the message gives the reason and the fix."""


@dataclass
class Tracker:
    """The supervisor's memory of one pipeline between visits, rebuilt after a restart."""

    readers: dict[str, LogReader] = field(default_factory=dict)
    input_end: int = -1
    input_changed: float = field(default_factory=time.time)
    policy: ScalingPolicy | None = None
    next_decision: float = 0.0
    control_seq: int = 0
    stop_sent: float | None = None
    ingest_stop_sent: float | None = None
    ingest_restarts: int = 0
    visit_errors: int = 0


class ControlPlane:
    def __init__(self, settings: ServeConfig) -> None:
        self.settings = settings
        self.state_dir = settings.state_path.resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = self._lock_state_dir()
        self.data_roots = [Path(root).resolve() for root in settings.data_roots] or [self.state_dir]
        self.registry = Registry(settings.registry_url)
        self.prices = load_prices(settings.prices)
        self.cluster: StandaloneCluster | None = None
        self._connect: dict | None = None
        # Submissions one at a time; the shared cluster and Connect server started or stopped one at a time.
        self._lock = threading.RLock()
        self._cluster_lock = threading.RLock()
        # The API's requests and the supervisor both import ledger lines; one at a time.
        self._ledger_lock = threading.Lock()
        # The supervisor's visit of a pipeline and the requests that change it, one at a time.
        self._pipeline_locks: dict[str, threading.RLock] = {}
        self._trackers: dict[str, Tracker] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.token = settings.resolved_token() or self._generated_token()

    # -- lifecycle -----------------------------------------------------------------------------

    def _lock_state_dir(self):
        """Hold an exclusive lock on ``STATE_DIR/lock`` for this process's life, or raise :class:`AlreadyRunning`."""
        handle = open(self.state_dir / "lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise AlreadyRunning(f"another control plane (pid {holder}) uses the state directory {self.state_dir}; "
                                 "stop it first, or give this one another --state-dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        return handle

    def _plock(self, name: str) -> threading.RLock:
        with self._lock:
            return self._pipeline_locks.setdefault(name, threading.RLock())

    def _generated_token(self) -> str:
        path = self.state_dir / "token"
        if path.exists():
            return path.read_text().strip()
        token = secrets.token_urlsafe(32)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(token + "\n")
        log.info("generated a bearer token in %s", path)
        return token

    def start(self) -> None:
        """Adopt what a previous control plane left running, then start supervising."""
        cluster = self._new_cluster()
        if cluster.adopt():
            self.cluster = cluster
        self._adopt_connect()
        for record in self.registry.list():
            if record["desired"] == "running":
                self._event(record["name"], f"control plane started; pipeline was {record['state']}")
        self._thread = threading.Thread(target=self._supervise, name="sparkiot-supervisor", daemon=True)
        self._thread.start()

    def shutdown(self, *, stop_pipelines: bool = True) -> None:
        """Stop supervising; with ``stop_pipelines``, drain and stop every runtime and ingest.

        Pipelines keep ``desired=running`` in the registry, so the next control plane resumes them
        from their checkpoints.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if stop_pipelines:
            for record in self.registry.list():
                try:
                    self._suspend(record)
                except Exception:  # noqa: BLE001 - the other pipelines and the cluster must still stop
                    log.exception("stopping pipeline %s failed", record["name"])
            with self._cluster_lock:
                if self.cluster is not None:
                    self.cluster.stop()
                    self.cluster = None
                self._stop_connect()
        self.registry.close()
        self._lock_file.close()

    def _suspend(self, record: dict) -> None:
        """Stop a pipeline's processes for a control plane shutdown, keeping what it is wanted to do."""
        if record["state"] in ("stopped", "failed") and not self._alive(record):
            return
        tracker = self._tracker(record["name"])
        deadline = time.monotonic() + self.settings.drain_timeout + 60
        while not self._stop_step(record, tracker) and time.monotonic() < deadline:
            time.sleep(0.2)
        self._close_dead_runtime(self.record(record["name"]), self.runtime_status(record["name"]) or {})
        if record["desired"] != "running":
            state = "stopped"
        elif record["state"] in ("idle", "failed"):
            state = record["state"]
        else:
            state = "suspended"
        self.registry.update(record["name"], state=state, runner_pid=None, ingest_pid=None)
        self._event(record["name"], f"control plane stopped; pipeline {state}")

    # -- requests ------------------------------------------------------------------------------

    def submit(self, yaml_text: str) -> dict:
        """Validate a pipeline file's text and register it; the supervisor starts it."""
        config = self._validate(yaml_text)
        with self._lock:
            for other in self.registry.list():
                theirs = Path(other["data_dir"])
                if other["name"] != config.name and (
                        theirs == config.data_path or theirs.is_relative_to(config.data_path)
                        or config.data_path.is_relative_to(theirs)):
                    raise Conflict(f"pipeline {other['name']!r} uses data_dir {theirs}, which overlaps {config.data_path}; "
                                   "give this one a folder of its own")
                if other["name"] != config.name and other["config"]["source"]["client_id"] == config.source.client_id \
                        and other["config"]["source"]["broker"] == config.source.broker:
                    raise Conflict(f"pipeline {other['name']!r} already uses source.client_id {config.source.client_id!r} "
                                   "on this broker, and two clients with one id disconnect each other; choose another")
            record = self.registry.create(config.name, yaml_text, config.model_dump(mode="json"), str(config.data_path))
        self._run_dir(config.name).mkdir(parents=True, exist_ok=True)
        self._event(config.name, f"submitted (runtime {config.serverless.runtime}, data_dir {config.data_path})")
        return record

    def _validate(self, yaml_text: str) -> PipelineConfig:
        if len(yaml_text.encode("utf-8", "surrogatepass")) > MAX_YAML_BYTES:
            raise Invalid(f"the pipeline file is larger than {MAX_YAML_BYTES // 1024} KiB; a pipeline file is a few KiB of YAML")
        if _nesting(yaml_text) > MAX_YAML_DEPTH:
            raise Invalid(f"the pipeline file nests brackets deeper than {MAX_YAML_DEPTH} levels; a pipeline file needs a few")
        try:
            # Aliases let a few hundred bytes expand to gigabytes, and a pipeline file needs none.
            if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(yaml_text, Loader=yaml.SafeLoader)):
                raise Invalid("the pipeline file uses a YAML alias (*name); write the values out instead")
            raw = yaml.safe_load(yaml_text)
        except (yaml.YAMLError, RecursionError) as exc:
            raise Invalid(f"the pipeline file is not valid YAML: {str(exc)[:300]}") from None
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise Invalid(f"the pipeline file must hold a mapping of sections, not {type(raw).__name__}")
        try:
            config = build_config(raw, origin="the submitted pipeline")
        except ConfigError as exc:
            raise Invalid(str(exc)) from None
        if not NAME_PATTERN.match(config.name):
            raise Invalid(f"name {config.name[:80]!r}: a served pipeline's name is 1-64 letters, digits, '.', '_' or '-', "
                          "starting with a letter or digit")
        if config.source.broker == "embedded":
            raise Invalid("source.broker is 'embedded', which lives only as long as one 'sparkiot run'; a served pipeline "
                          "needs a broker of its own, such as mqtt://127.0.0.1:1883 (Mosquitto)")
        try:
            load_policy(config.serverless)
        except ConfigError as exc:
            raise Invalid(str(exc)) from None
        data_dir = Path(config.data_dir)
        if not data_dir.is_absolute():
            data_dir = self._run_dir(config.name) / "data" if config.data_dir == "sparkiot-data" else self.state_dir / data_dir
        data_dir = data_dir.resolve()
        if not any(data_dir.is_relative_to(root) for root in self.data_roots):
            roots = ", ".join(str(root) for root in self.data_roots)
            raise Invalid(f"data_dir {data_dir} is outside the folders this control plane writes to ({roots}); "
                          "use a relative data_dir, or add a folder to data_roots in the control plane's configuration")
        self._check_data_dir(config.name, data_dir)
        config = config.model_copy(update={"data_dir": str(data_dir)})
        from sparkiot.pipeline import checkpoint_conflict

        conflict = checkpoint_conflict(config)
        if conflict:
            raise Invalid(conflict)
        return config

    def _check_data_dir(self, name: str, data_dir: Path) -> None:
        """Reject a data_dir that is a file or that would mix a pipeline's data with the control plane's own."""
        if data_dir.exists() and not data_dir.is_dir():
            raise Invalid(f"data_dir {data_dir} is a file; name a folder (new or empty), such as 'data/{name}'")
        if self.state_dir.is_relative_to(data_dir):
            raise Invalid(f"data_dir {data_dir} contains the control plane's state directory; name a folder inside it, "
                          f"such as 'data/{name}'")
        if data_dir.is_relative_to(self.state_dir):
            parts = data_dir.relative_to(self.state_dir).parts
            own = parts[:2] == ("pipelines", name)
            if parts[0] in RESERVED and not own:
                raise Invalid(f"data_dir {data_dir} is inside {self.state_dir / parts[0]}, which the control plane uses; "
                              f"name another folder, such as 'data/{name}'")

    def record(self, name: str) -> dict:
        record = self.registry.get(name)
        if record is None:
            raise NotFound(name)
        return record

    def stop(self, name: str) -> dict:
        with self._plock(name):
            record = self.record(name)
            if record["state"] != "stopped":
                self.registry.update(name, desired="stopped", state="stopping")
                self._event(name, "stop requested")
            return self.record(name)

    def resume(self, name: str) -> dict:
        with self._plock(name):
            record = self.record(name)
            if record["desired"] == "running" and record["state"] not in ("failed", "stopped"):
                return record
            if self._alive(record):
                raise Invalid(f"pipeline {name!r} is still {record['state']}; start it once its state is stopped")
            self.registry.update(name, desired="running", state="starting", restarts=0, message="",
                                 runner_pid=None, ingest_pid=None)
            self._trackers.pop(name, None)
            self._event(name, "start requested")
            return self.record(name)

    def delete(self, name: str) -> None:
        """Remove a stopped pipeline from the registry with its runtime files; its data directory stays."""
        with self._plock(name):
            record = self.record(name)
            if record["state"] not in ("stopped", "failed") or self._alive(record):
                raise Invalid(f"pipeline {name!r} is {record['state']}; stop it and wait until its state is stopped "
                              f"('sparkiot stop --wait {name}')")
            self.registry.delete(name)
            self._trackers.pop(name, None)
            # A pipeline submitted later under this name starts a new ledger and log.
            shutil.rmtree(self._runtime_dir(name), ignore_errors=True)
            for leftover in ("events.log", "manual.json"):
                (self._run_dir(name) / leftover).unlink(missing_ok=True)

    def scale(self, name: str, executors: int | None, trigger: float | None, *, automatic: bool = False) -> dict:
        """Set a pipeline's executor count or trigger by hand, or with ``automatic`` return it to its policy.

        A setting by hand replaces the policy until ``automatic`` is requested, and applies again
        at every start of the runtime.
        """
        with self._plock(name):
            return self._scale(name, executors, trigger, automatic)

    def _scale(self, name: str, executors: int | None, trigger: float | None, automatic: bool) -> dict:
        record = self.record(name)
        config = build_config(record["config"])
        manual_path = self._run_dir(name) / "manual.json"

        if automatic:
            if executors is not None or trigger is not None:
                raise Invalid("give either automatic or executors and trigger, not both")
            manual_path.unlink(missing_ok=True)
            self._tracker(name).policy = None
            self.registry.record_scaling(name, None, None, None, "automatic: back to the configured policy")
            self._event(name, f"scaling: back to policy {config.serverless.scaling.policy}")
            return self.status(name)
        if executors is None and trigger is None:
            raise Invalid("give executors, trigger or both (or automatic: true)")

        if executors is not None:
            if config.serverless.runtime != "standalone":
                raise Invalid(f"pipeline {name!r} runs on the {config.serverless.runtime} runtime, whose executors are fixed; "
                              "use runtime: standalone to scale executors")
            low, high = config.serverless.min_executors, config.serverless.max_executors
            if not low <= executors <= high:
                raise Invalid(f"executors {executors} is outside [{low}, {high}] (serverless.min_executors, max_executors)")
        if trigger is not None and not 0.05 <= trigger <= 3600:
            raise Invalid(f"trigger {trigger} s is outside [0.05, 3600] seconds")
        tracker = self._tracker(name)
        status = self.runtime_status(name) or {}
        manual = self._manual(name)
        if executors is not None:
            manual["executors"] = executors
        if trigger is not None:
            manual["trigger"] = trigger
        manual_path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(manual_path, manual)

        tracker.policy = self._manual_policy(config, manual)
        if record["state"] in ("starting", "running") and self._alive(record):
            self._send_control(record, tracker, Decision(executors=executors, trigger=trigger, reason="manual"), status)
        else:
            self.registry.record_scaling(name, None, executors, trigger, "manual, applied at the next start")
            self._event(name, f"scaling: executors {executors}, trigger {trigger} by hand; applied when the runtime starts")
        return self.status(name)

    def _manual(self, name: str) -> dict:
        try:
            return json.loads((self._run_dir(name) / "manual.json").read_text())
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _manual_policy(config: PipelineConfig, manual: dict) -> FixedPolicy:
        executors = manual.get("executors", config.serverless.initial_executors)
        return FixedPolicy(config.serverless.model_copy(update={"initial_executors": executors}))

    # -- views ---------------------------------------------------------------------------------

    def runtime_status(self, name: str) -> dict | None:
        try:
            status = json.loads((self._runtime_dir(name) / "status.json").read_text())
        except (OSError, ValueError):
            return None
        return status

    def status(self, name: str) -> dict:
        record = self.record(name)
        config = build_config(record["config"])
        runtime = self.runtime_status(name) or {}
        progress = runtime.get("progress", {}).get("readings", {})
        live = record["state"] in ("starting", "running")
        backlog, landed = self._backlog(name, config, runtime)
        now = time.time()
        costs = {key: str(bill.total) for key, bill in self.bills(name).items()}
        return {
            "name": name,
            "state": record["state"],
            "desired": record["desired"],
            "message": record["message"],
            "runtime": config.serverless.runtime,
            "data_dir": record["data_dir"],
            "epoch": record["epoch"],
            "created_at": record["created_at"],
            "progress": {
                "input_rate": progress.get("input_rate", 0.0) if live else 0.0,
                "process_rate": progress.get("process_rate", 0.0) if live else 0.0,
                "batch_duration": (progress.get("batch_ms") or 0) / 1000.0,
                "watermark": progress.get("watermark"),
                "watermark_lag": _watermark_lag(progress.get("watermark"), now),
                "backlog": backlog,
                "landed": landed,
                "rows_written": runtime.get("rows_written", {}),
                "trigger": runtime.get("trigger", config.spark.trigger),
            },
            "executors": len(runtime.get("executors", [])) if live else 0,
            "target_executors": runtime.get("target_executors", 0) if live else 0,
            "cost": costs,
            "starts": self.registry.starts(name),
            "scaling": self.registry.scaling_events(name, limit=20),
        }

    def bills(self, name: str) -> dict[str, Bill]:
        self._import_ledger(self.record(name))
        holdings = self.registry.holdings(name)
        return {key: price(holdings, self.prices, key) for key in self.prices.platforms}

    def bill(self, name: str, platform_key: str) -> Bill:
        self._import_ledger(self.record(name))
        return price(self.registry.holdings(name), self.prices, platform_key)

    def logs(self, name: str, source: str, lines: int) -> list[str]:
        record = self.record(name)
        paths = {
            "events": self._run_dir(name) / "events.log",
            "runner": self._runtime_dir(name) / "runner.log",
            "ingest": Path(record["data_dir"]) / "logs" / "ingest.log",
            "spark": Path(record["data_dir"]) / "logs" / "spark.log",
        }
        return _tail(paths[source], lines)

    # -- the supervisor ------------------------------------------------------------------------

    def _supervise(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            for name in [record["name"] for record in self.registry.list()]:
                if self._stop.is_set():
                    break
                try:
                    with self._plock(name):
                        # Read again under the lock: a request may have changed the pipeline meanwhile.
                        record = self.registry.get(name)
                        if record is not None:
                            self._visit(record)
                    self._tracker(name).visit_errors = 0
                except Exception as exc:  # noqa: BLE001 - one pipeline's trouble must not stop the others
                    log.exception("supervising pipeline %s failed", name)
                    self._visit_failed(name, exc)
            self._maybe_stop_cluster()
            self._stop.wait(max(0.05, self.settings.poll_interval - (time.monotonic() - started)))

    def _visit(self, record: dict) -> None:
        name = record["name"]
        config = build_config(record["config"])
        tracker = self._tracker(name)
        self._import_ledger(record)
        status = self.runtime_status(name) or {}
        state = record["state"]

        if record["desired"] == "stopped" or state == "failed":
            if not self._alive(record):
                if record["runner_pid"] is not None or record["ingest_pid"] is not None:
                    self._close_dead_runtime(record, status)
                    self.registry.update(name, runner_pid=None, ingest_pid=None)
                if record["desired"] == "stopped" and state != "stopped":
                    self.registry.update(name, state="stopped")
                    self._event(name, "stopped")
                return
            if self._stop_step(record, tracker):
                self._visit(self.record(name))
            return
        if state == "stopped":
            # Wanted running again after a stop that another request overtook.
            state = "starting"
            self.registry.update(name, state=state)

        if not process_alive(record["ingest_pid"], record["ingest_started"]):
            if record["ingest_pid"] is not None:
                tracker.ingest_restarts += 1
                self._event(name, f"ingest exited; starting it again ({tracker.ingest_restarts})")
                if tracker.ingest_restarts > self.settings.max_restarts:
                    self._fail(record, f"the ingest keeps exiting; see {Path(record['data_dir']) / 'logs' / 'ingest.log'}")
                    return
            self._start_ingest(record, config)

        self._track_input(name, config, tracker)
        if process_alive(record["runner_pid"], record["runner_started"]):
            self.registry.finish_start(name, record["epoch"], status.get("ready_at"), status.get("first_batch_at"))
            if state == "starting" and status.get("state") == "running":
                self.registry.update(name, state="running")
                state = "running"
                # Idle time counts from when the runtime could first process input.
                tracker.input_changed = max(tracker.input_changed, time.time())
            if state == "scaling_to_zero":
                self._escalate_stop(record, tracker)
                return
            if state == "running":
                self._forgive_restarts(record, status, tracker)
                self._maybe_scale_to_zero(record, config, tracker, status)
                self._maybe_decide(record, config, tracker, status)
            return

        # No runtime process.
        if record["runner_pid"] is not None:
            self._close_dead_runtime(record, status)
            if state == "scaling_to_zero" and status.get("state") == "stopped":
                self.registry.update(name, state="idle", runner_pid=None, idle_since=time.time())
                self._event(name, "scaled to zero")
                return
            restarts = record["restarts"] + 1
            reason = status.get("error") or f"the runtime exited unexpectedly; see {self._runtime_dir(name) / 'runner.log'}"
            if restarts > self.settings.max_restarts:
                self._fail(record, f"{reason} (after {restarts - 1} restarts)")
                return
            self.registry.update(name, restarts=restarts, runner_pid=None)
            self._event(name, f"runtime epoch {record['epoch']} ended: {reason}; restarting ({restarts})")
            self._start_runtime(self.record(name), config, "restart")
            return
        if state == "idle":
            backlog, _ = self._backlog(name, config, status)
            if backlog > 0:
                self._event(name, f"{backlog} records waiting; starting the runtime")
                self._start_runtime(record, config, "new_data")
            return
        if state in ("starting", "running", "suspended", "scaling_to_zero"):
            self._start_runtime(record, config, "submit" if record["epoch"] == 0 else "resume")

    def _visit_failed(self, name: str, exc: Exception) -> None:
        """Mark a pipeline failed after five visits in a row raised, with the error as its message."""
        tracker = self._tracker(name)
        tracker.visit_errors += 1
        if tracker.visit_errors == 5:
            with self._plock(name):
                record = self.registry.get(name)
                if record is not None and record["state"] != "failed":
                    self._fail(record, f"supervising it failed five times in a row: {exc!r}; see the control plane's log")

    def _forgive_restarts(self, record: dict, status: dict, tracker: Tracker) -> None:
        """Reset the restart counts once a runtime has run for five minutes, so that rare crashes never add up."""
        ready = status.get("ready_at")
        if ready is not None and time.time() - ready > 300:
            if record["restarts"]:
                self.registry.update(record["name"], restarts=0)
            tracker.ingest_restarts = 0

    def _alive(self, record: dict) -> bool:
        return process_alive(record["runner_pid"], record["runner_started"]) or \
            process_alive(record["ingest_pid"], record["ingest_started"])

    def _stop_step(self, record: dict, tracker: Tracker) -> bool:
        """Advance a stop without waiting; return True once both processes are gone.

        The ingest stops first (SIGTERM, then SIGKILL after 30 s), then the runtime drains what
        landed (SIGTERM, then SIGKILL after ``drain_timeout``), as ``sparkiot run`` does.
        """
        now = time.monotonic()
        if process_alive(record["ingest_pid"], record["ingest_started"]):
            if tracker.ingest_stop_sent is None:
                tracker.ingest_stop_sent = now
                _send(record["ingest_pid"], signal.SIGTERM)
            elif now - tracker.ingest_stop_sent > 30:
                self._event(record["name"], "the ingest did not stop within 30 s; killing it")
                _send(record["ingest_pid"], signal.SIGKILL, group=True)
            return False
        tracker.ingest_stop_sent = None
        if process_alive(record["runner_pid"], record["runner_started"]):
            if tracker.stop_sent is None:
                tracker.stop_sent = now
                _send(record["runner_pid"], signal.SIGTERM)
            elif now - tracker.stop_sent > self.settings.drain_timeout:
                self._event(record["name"], f"the runtime did not drain within {self.settings.drain_timeout:g}s; killing it")
                _send(record["runner_pid"], signal.SIGKILL, group=True)
            return False
        tracker.stop_sent = None
        return True

    def _tracker(self, name: str) -> Tracker:
        tracker = self._trackers.get(name)
        if tracker is None:
            tracker = self._trackers[name] = Tracker()
            try:
                tracker.control_seq = int(json.loads((self._runtime_dir(name) / "control.json").read_text())["seq"])
            except (OSError, ValueError, KeyError):
                tracker.control_seq = 0
        return tracker

    def _track_input(self, name: str, config: PipelineConfig, tracker: Tracker) -> None:
        total = sum(self._reader(tracker, config, log_name).end_offset() for log_name in LOGS)
        if total != tracker.input_end:
            tracker.input_end = total
            tracker.input_changed = time.time()

    def _reader(self, tracker: Tracker, config: PipelineConfig, log_name: str) -> LogReader:
        reader = tracker.readers.get(log_name)
        if reader is None:
            reader = tracker.readers[log_name] = LogReader(config.data_path / "landing" / log_name)
        return reader

    def _backlog(self, name: str, config: PipelineConfig, status: dict) -> tuple[int, int]:
        """Records landed but not yet processed, over every landing log; and the readings landed."""
        tracker = self._tracker(name)
        reader = self._reader(tracker, config, "readings")
        end = reader.end_offset()
        progress = status.get("progress", {})
        processed = [progress.get(query, {}).get("end_offset") for query in ("readings", "windows")]
        if any(offset is None for offset in processed):
            committed = reader.committed_offsets()
            done = min(committed.get("readings", reader.first_offset()), committed.get("windows", reader.first_offset()))
        else:
            done = min(processed)
        backlog = max(0, end - done)
        for log_name in LOGS[1:]:
            side = self._reader(tracker, config, log_name)
            try:
                copied = int(json.loads((config.data_path / "checkpoints" / f"{log_name}.json").read_text())["offset"])
            except (OSError, ValueError, KeyError):
                copied = side.first_offset()
            backlog += max(0, side.end_offset() - copied)
        return backlog, end

    def _maybe_scale_to_zero(self, record: dict, config: PipelineConfig, tracker: Tracker, status: dict) -> None:
        timeout = config.serverless.idle_timeout
        if timeout is None or status.get("state") != "running":
            return
        if time.time() - tracker.input_changed < timeout:
            return
        backlog, _ = self._backlog(record["name"], config, status)
        if backlog > 0:
            return
        self._event(record["name"], f"no new input for {timeout:g}s; stopping the runtime (scale to zero)")
        _send(record["runner_pid"], signal.SIGTERM)
        tracker.stop_sent = time.monotonic()
        self.registry.update(record["name"], state="scaling_to_zero")

    def _escalate_stop(self, record: dict, tracker: Tracker) -> None:
        if tracker.stop_sent is None:
            tracker.stop_sent = time.monotonic()
        if time.monotonic() - tracker.stop_sent > self.settings.drain_timeout:
            self._event(record["name"], f"the runtime did not drain within {self.settings.drain_timeout:g}s; killing it")
            _send(record["runner_pid"], signal.SIGKILL, group=True)

    def _maybe_decide(self, record: dict, config: PipelineConfig, tracker: Tracker, status: dict) -> None:
        if config.serverless.runtime != "standalone" or status.get("state") != "running":
            return
        now = time.time()
        if now < tracker.next_decision:
            return
        tracker.next_decision = now + config.serverless.scaling.interval
        metrics = self.metrics(record["name"], config, status)
        try:
            if tracker.policy is None:
                manual = self._manual(record["name"])
                tracker.policy = self._manual_policy(config, manual) if manual else load_policy(config.serverless)
            decision = tracker.policy.decide(metrics)
        except Exception as exc:  # noqa: BLE001 - a policy's failure must not stop supervision
            message = f"scaling policy {config.serverless.scaling.policy} failed: {exc!r}; keeping the executors as they are"
            log.warning("%s: %s", record["name"], message)
            self.registry.update(record["name"], message=message)
            tracker.policy = FixedPolicy(config.serverless.model_copy(update={"initial_executors": metrics.target_executors}))
            return
        if decision is None:
            return
        low, high = config.serverless.min_executors, config.serverless.max_executors
        executors = None if decision.executors is None else min(max(decision.executors, low), high)
        trigger = decision.trigger if decision.trigger != metrics.trigger else None
        if executors in (None, metrics.target_executors) and trigger is None:
            return
        self._send_control(record, tracker, Decision(executors, trigger, decision.reason), status)

    def metrics(self, name: str, config: PipelineConfig, status: dict) -> Metrics:
        progress = status.get("progress", {}).get("readings", {})
        backlog, _ = self._backlog(name, config, status)
        return Metrics(
            time=time.time(),
            input_rate=float(progress.get("input_rate", 0.0)),
            process_rate=float(progress.get("process_rate", 0.0)),
            batch_duration=(progress.get("batch_ms") or 0) / 1000.0,
            trigger=float(status.get("trigger", config.spark.trigger)),
            backlog=backlog,
            watermark_lag=_watermark_lag(progress.get("watermark"), time.time()),
            executors=len(status.get("executors", [])),
            target_executors=int(status.get("target_executors", config.serverless.initial_executors)),
            cores_per_executor=config.serverless.executor_cores,
        )

    def _send_control(self, record: dict, tracker: Tracker, decision: Decision, status: dict) -> None:
        config = build_config(record["config"])
        low, high = config.serverless.min_executors, config.serverless.max_executors
        executors = None if decision.executors is None else min(max(decision.executors, low), high)
        previous = status.get("target_executors")
        tracker.control_seq += 1
        control = {"seq": tracker.control_seq, "executors": executors, "trigger": decision.trigger,
                   "reason": decision.reason}
        runtime_dir = self._runtime_dir(record["name"])
        runtime_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(runtime_dir / "control.json", control)
        self.registry.record_scaling(record["name"], previous, executors, decision.trigger, decision.reason)
        self._event(record["name"], f"scaling: executors {previous} -> {executors}, trigger {decision.trigger} ({decision.reason})")

    # -- processes -----------------------------------------------------------------------------

    def _start_ingest(self, record: dict, config: PipelineConfig) -> None:
        config.data_path.mkdir(parents=True, exist_ok=True)
        effective = config.data_path / "pipeline.json"
        write_json_atomic(effective, config.model_dump(mode="json"))
        log_path = config.data_path / "logs" / "ingest.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "sparkiot", "ingest", str(effective), "--broker", config.source.broker]
        with open(log_path, "ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.registry.update(record["name"], ingest_pid=process.pid, ingest_started=process_start_time(process.pid))
        self._event(record["name"], f"ingest started (pid {process.pid})")

    def _master(self, config: PipelineConfig) -> str:
        runtime = config.serverless.runtime
        if runtime == "local":
            return f"local[{config.serverless.local_cores}]"
        if runtime == "standalone":
            with self._cluster_lock:
                if self.cluster is None:
                    cluster = self._new_cluster()
                    try:
                        cluster.start()
                    except Exception:
                        cluster.stop()
                        raise
                    self.cluster = cluster
                return self.cluster.url
        return self._ensure_connect(config)

    def _start_runtime(self, record: dict, config: PipelineConfig, reason: str) -> None:
        name = record["name"]
        requested = time.time()
        try:
            master = self._master(config)
        except Exception as exc:  # noqa: BLE001 - reported on the pipeline
            self._fail(record, f"cannot start the {config.serverless.runtime} runtime: {exc}")
            return

        epoch = record["epoch"] + 1
        runtime_dir = self._runtime_dir(name)
        runtime_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("status.json", "control.json"):
            (runtime_dir / stale).unlink(missing_ok=True)
        tracker = self._tracker(name)
        tracker.control_seq = 0
        tracker.policy = None
        tracker.next_decision = time.time() + config.serverless.scaling.interval
        tracker.stop_sent = None
        tracker.input_changed = time.time()
        write_json_atomic(runtime_dir / "spec.json", {"pipeline": config.model_dump(mode="json"), "master": master,
                                                      "epoch": epoch})
        manual = self._manual(name)
        if manual:
            # Settings made by hand apply to every epoch until the policy is restored.
            tracker.control_seq = 1
            write_json_atomic(runtime_dir / "control.json", {"seq": 1, "executors": manual.get("executors"),
                                                             "trigger": manual.get("trigger"), "reason": "manual"})

        command = [sys.executable, "-m", "sparkiot.serverless.runner", str(runtime_dir)]
        with open(runtime_dir / "runner.log", "ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=spark_environment(),
                                       start_new_session=True, cwd=runtime_dir)
        self.registry.update(name, epoch=epoch, runner_pid=process.pid, runner_started=process_start_time(process.pid),
                             state="starting", idle_since=None)
        self.registry.record_start(name, epoch, reason, requested)
        self._event(name, f"runtime epoch {epoch} starting on {master} ({reason}, pid {process.pid})")

    def _close_dead_runtime(self, record: dict, status: dict) -> None:
        """Import the last ledger lines; end any holding the runtime could not close (it was killed)."""
        self._import_ledger(record)
        if process_alive(record["runner_pid"], record["runner_started"]) or not record["epoch"]:
            return
        at = status.get("stopped_at") or status.get("heartbeat") or time.time()
        closed = self.registry.close_holdings(record["name"], record["epoch"], at)
        if closed:
            self._event(record["name"], f"closed {closed} holdings of epoch {record['epoch']} at its last heartbeat")

    def _fail(self, record: dict, message: str) -> None:
        """Mark the pipeline failed; the supervisor goes on stopping its processes until both are gone."""
        self._stop_step(record, self._tracker(record["name"]))
        self.registry.update(record["name"], state="failed", message=message)
        self._event(record["name"], f"failed: {message}")
        log.error("pipeline %s failed: %s", record["name"], message)

    def _import_ledger(self, record: dict) -> None:
        with self._ledger_lock:
            current = self.registry.get(record["name"])
            if current is not None:
                record["ledger_offset"] = current["ledger_offset"]
                self._import_ledger_lines(record)

    def _import_ledger_lines(self, record: dict) -> None:
        path = self._runtime_dir(record["name"]) / "ledger.jsonl"
        try:
            with open(path, "rb") as ledger:
                ledger.seek(record["ledger_offset"])
                data = ledger.read()
        except FileNotFoundError:
            return
        complete = data[: data.rfind(b"\n") + 1]
        if not complete:
            return
        records = []
        for line in complete.splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                log.warning("ledger of %s: skipping an unreadable line", record["name"])
        self.registry.apply_ledger(record["name"], records, record["ledger_offset"] + len(complete))
        record["ledger_offset"] += len(complete)

    # -- shared runtimes -----------------------------------------------------------------------

    def _new_cluster(self) -> StandaloneCluster:
        workers = [WorkerSpec(worker.cores, worker.memory // 1024**2) for worker in self.settings.cluster.workers]
        return StandaloneCluster(self.state_dir / "cluster", workers, master_port=self.settings.cluster.master_port)

    def _maybe_stop_cluster(self) -> None:
        """Stop the shared standalone cluster and Connect server while no pipeline runs on them."""
        if not self.settings.cluster.stop_when_idle or (self.cluster is None and self._connect is None):
            return
        busy = set()
        for record in self.registry.list():
            if record["state"] in ("starting", "running", "scaling_to_zero") or \
                    process_alive(record["runner_pid"], record["runner_started"]):
                busy.add(record["config"]["serverless"]["runtime"])
        with self._cluster_lock:
            if self.cluster is not None and "standalone" not in busy:
                log.info("no pipeline runs on the standalone cluster; stopping it")
                self.cluster.stop()
                self.cluster = None
            if self._connect is not None and "connect" not in busy:
                log.info("no pipeline runs on the Spark Connect server; stopping it")
                self._stop_connect()

    def _adopt_connect(self) -> None:
        path = self.state_dir / "connect.json"
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        if process_alive(state["pid"], state["started"]):
            self._connect = state
        else:
            path.unlink(missing_ok=True)

    def _ensure_connect(self, config: PipelineConfig) -> str:
        """Start a Spark Connect server (local[N]) on 127.0.0.1 the first time a pipeline needs one."""
        import socket

        with self._cluster_lock:
            if self._connect is None or not process_alive(self._connect["pid"], self._connect["started"]):
                port = self.settings.connect_port or free_port()
                log_path = self.state_dir / "logs" / "connect.log"
                log_path.parent.mkdir(parents=True, exist_ok=True)
                command = [str(spark_home() / "bin" / "spark-submit"), "--class",
                           "org.apache.spark.sql.connect.service.SparkConnectServer",
                           "--master", f"local[{config.serverless.local_cores}]",
                           "--conf", f"spark.connect.grpc.binding.address=127.0.0.1",
                           "--conf", f"spark.connect.grpc.binding.port={port}",
                           "--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.ui.enabled=false",
                           "--conf", "spark.sql.session.timeZone=UTC", "spark-internal"]
                with open(log_path, "ab") as out:
                    process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=spark_environment(),
                                               start_new_session=True)
                self._connect = {"pid": process.pid, "started": process_start_time(process.pid), "port": port}
                write_json_atomic(self.state_dir / "connect.json", self._connect)
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    try:
                        with socket.create_connection(("127.0.0.1", port), timeout=1):
                            break
                    except OSError:
                        if not process_alive(process.pid, None):
                            self._stop_connect()
                            raise RuntimeError(f"the Spark Connect server exited; see {log_path}") from None
                        time.sleep(0.5)
                else:
                    self._stop_connect()
                    raise TimeoutError(f"the Spark Connect server did not listen within 120 s; see {log_path}")
            return f"sc://127.0.0.1:{self._connect['port']}"

    def _stop_connect(self) -> None:
        if self._connect is not None and process_alive(self._connect["pid"], self._connect["started"]):
            _send(self._connect["pid"], signal.SIGTERM, group=True)
        self._connect = None
        (self.state_dir / "connect.json").unlink(missing_ok=True)

    # -- files ---------------------------------------------------------------------------------

    def _run_dir(self, name: str) -> Path:
        return self.state_dir / "pipelines" / name

    def _runtime_dir(self, name: str) -> Path:
        return self._run_dir(name) / "runtime"

    def _event(self, name: str, message: str) -> None:
        log.info("%s: %s", name, message)
        path = self._run_dir(name) / "events.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with open(path, "a", encoding="utf-8") as out:
            out.write(f"{stamp} {message}\n")


def _nesting(text: str) -> int:
    """Return the deepest nesting of brackets and braces in ``text``, counted without parsing it."""
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(0, depth - 1)
    return deepest


def _send(pid: int | None, signum: int, *, group: bool = False) -> None:
    """Signal a process (or its process group); one that has just exited is no error."""
    if not pid:
        return
    try:
        if group:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except OSError as exc:
        log.debug("signal %d to %d: %s", signum, pid, exc)


def _tail(path: Path, lines: int) -> list[str]:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 256 * 1024))
            data = handle.read()
    except OSError:
        return []
    return data.decode("utf-8", "replace").splitlines()[-lines:]


def _watermark_lag(watermark: str | None, now: float) -> float | None:
    if not watermark:
        return None
    from datetime import datetime

    try:
        parsed = datetime.fromisoformat(watermark.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.timestamp() <= 0:
        return None
    return max(0.0, now - parsed.timestamp())
