"""Measure the constants of the autoscaling optimizer's simulator on a served pipeline.

The simulator (``sparkiot/optimize/calibration.py``) models a micro-batch of ``rows`` readings
run by ``n`` executors as taking ``batch_overhead + rows / throughput[n - 1]`` seconds, and a
requested executor as adding capacity ``executor_start`` seconds after the request. This script
measures those figures through the control plane on its standalone cluster, on the pipeline
that ``benchmarks/serverless_cost.py`` serves: one worker of 4 cores and 4 GiB, executors of
1 core and 512 MiB, a 1 s trigger.

* **Batch time.** For each executor count ``n`` in ``--executors`` a new pipeline runs with the
  ``fixed`` policy and ``n`` executors (initial, min and max). Readings arrive at 200/s until
  every executor has finished 10 tasks, which starts its Python worker. Then readings arrive at
  each of ``--rates`` for ``--seconds-per-rate`` seconds at the 1 s trigger. For large batches,
  the script then requests each of ``--long-triggers`` in turn from the control plane's scaling
  endpoint while readings arrive at ``--long-rate``, so that one batch takes the readings of a
  whole interval. The rows and duration of each batch of the ``readings`` query come from the
  runtime's ``DATA_DIR/progress.jsonl``.
* **Fit.** A least-squares line ``seconds = overhead + rows * per_row`` is fitted per ``n``.
  A joint fit with one overhead for every ``n`` is fitted beside it, and the one with the lower
  Akaike information criterion gives the calibration. With separate fits, the overhead is the
  one-executor fit's, because the optimizer's default model scales out from one executor.
  ``--overhead-per-count`` writes each count's own overhead instead: on a small machine the
  overheads of more executors grow with the contention for its cores. ``throughput[n - 1]`` is
  ``1 / per_row``. One more executor raises it only
  when its time per row is lower by more than twice the standard error of the difference.
  Otherwise the previous figure repeats, because a drop or a rise within the noise shows no
  measurable gain from that executor.
* **Executor start.** A pipeline with 1 to 2 executors runs under ``--start-rate`` readings/s.
  The script requests 2 executors from the control plane's scaling endpoint. It times, from the
  request, when the runtime's ``status.json`` lists 2 executors and when the new executor's
  first task starts and finishes. The task times come from the executor's log in the worker's
  work folder, in whole seconds. Then the script scales back to 1 and repeats ``--start-trials``
  times. The calibration takes the
  median time to the end of the first task, since only then has the executor's Python worker
  started.

The processes of this script's tree are the control plane, the cluster, the runtimes, Mosquitto
and the publisher. The CPU that every other process uses is recorded per phase and per batch,
and ``--max-other-cpu`` leaves batches measured on a busy machine out of the fits.

    python benchmarks/optimizer_calibration.py --json results/optimizer-calibration.json --write-calibration

The large batches of the long triggers measure what Spark does with a batch. To model a served
pipeline that shares its machine with its own ingest and publisher at steady load, leave the
long triggers out and measure at the rates the pipeline will see. When the rows explain too
little of the batch time to fit a throughput, refit with the large-batch throughput:

    python benchmarks/optimizer_calibration.py --rates 500,1000,1500,2000,2500 --seconds-per-rate 30 \
        --long-triggers "" --drain-timeout 600 --json steady-run.json
    python benchmarks/optimizer_calibration.py --refit steady-run.json \
        --per-row-from sparkiot/optimize/calibration.json --overhead-per-count --write-calibration steady.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import CpuAccount, TunedMosquitto, machine_info, print_table, wait_for_quiet, write_json  # noqa: E402
from _serve import RatePublisher, ServeProcess, pipeline_spec, wait  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

WORKERS = [{"cores": 4, "memory": "4GiB"}]
TRIGGER_SECONDS = 1.0
# Tasks each executor finishes before a measurement starts, so that its Python worker runs.
WARM_TASKS = 10
DEFAULT_CALIBRATION = ROOT / "sparkiot" / "optimize" / "calibration.json"
# Spark's default executor log layout (log4j2-defaults.properties): "25/12/05 06:50:12 INFO Executor: ...".
EXECUTOR_LOG_LINE = re.compile(r"^(\d\d/\d\d/\d\d \d\d:\d\d:\d\d) INFO Executor: (Running|Finished) task ")


# -- arguments ---------------------------------------------------------------------------------


def positive_ints(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers separated by commas, got {text!r}") from None
    if not values or any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"expected whole numbers >= 1 separated by commas, got {text!r}")
    return values


def positive_floats(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if any(not math.isfinite(value) or value <= 0 for value in values):
        raise argparse.ArgumentTypeError(f"expected numbers above 0 separated by commas, got {text!r}")
    return values


# -- machine load ------------------------------------------------------------------------------


def _own_tree() -> set[int]:
    me = psutil.Process()
    return {me.pid, *(child.pid for child in me.children(recursive=True))}


def _cpu_by_process() -> dict[tuple[int, float], tuple[str, float]]:
    """Return each process's command (its first 4 words) and CPU seconds, by process id and start time."""
    snapshot = {}
    for process in psutil.process_iter(["pid", "name", "cmdline", "create_time", "cpu_times"]):
        info = process.info
        if info["cpu_times"] is None:
            continue
        command = " ".join((info["cmdline"] or [])[:4]) or info["name"]
        snapshot[(info["pid"], info["create_time"])] = (command, info["cpu_times"].user + info["cpu_times"].system)
    return snapshot


class OtherProcesses:
    """CPU seconds of the processes outside this script's tree, between :meth:`start` and :meth:`top`.

    Processes that started and ended in between are not seen; the machine-wide share comes from
    :class:`CpuAccount`, which counts them.
    """

    def start(self) -> "OtherProcesses":
        self._started = time.monotonic()
        self._before = _cpu_by_process()
        self._own = _own_tree()
        return self

    def top(self, count: int = 5) -> list[dict]:
        wall = time.monotonic() - self._started
        own = self._own | _own_tree()
        used = []
        for key, (command, seconds) in _cpu_by_process().items():
            if key[0] in own:
                continue
            spent = seconds - self._before.get(key, (command, 0.0))[1]
            if spent > 0.5:
                used.append({"pid": key[0], "command": command, "cpu_s": round(spent, 1),
                             "cpu_pct": round(100 * spent / wall)})
        return sorted(used, key=lambda item: item["cpu_s"], reverse=True)[:count]


class CpuSampler:
    """Samples, once a second in a thread, the CPU that processes outside this script's tree use."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "CpuSampler":
        self._thread.start()
        return self

    def _run(self) -> None:
        account = CpuAccount()
        began = time.time()
        while not self._stop.wait(1.0):
            now = time.time()
            self.samples.append((began, now, account.read()["other_cpu_pct"]))
            account.reset()
            began = now

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def mean_other(self, start: float, end: float) -> int | None:
        """Return the mean share of a core that other processes used between two Unix times, or None without samples."""
        overlapping = [pct for began, ended, pct in self.samples if ended > start and began < end]
        return round(sum(overlapping) / len(overlapping)) if overlapping else None


def measuring_load(results: dict, others: OtherProcesses) -> dict:
    """Combine the CPU readings of the measured phases, weighted by their length, with the busiest other processes.

    Only the phases that measure count. Between them this script's processes sit idle, and other
    CPU-bound work then takes both cores, so a reading over the whole run would overstate the
    contention that the measurements met.
    """
    phases = [run["load"] for run in results["runs"]]
    if "executor_start" in results:
        phases.append(results["executor_start"]["load"])
    seconds = sum(phase["seconds"] for phase in phases)
    return {
        "seconds": round(seconds, 1),
        "own_cpu_pct": round(sum(phase["own_cpu_pct"] * phase["seconds"] for phase in phases) / seconds),
        "other_cpu_pct": round(sum(phase["other_cpu_pct"] * phase["seconds"] for phase in phases) / seconds),
        "top_other_processes": others.top(),
    }


# -- the served pipeline -----------------------------------------------------------------------


def submit(serve: ServeProcess, broker: str, name: str, topic: str, serverless: dict, executors: int) -> Path:
    """Submit a pipeline and return its data folder once its runtime runs ``executors`` executors."""
    from sparkiot.ingest.consumer import read_counters

    serve.client.submit(pipeline_spec(name, broker, topic, idle_timeout=None, **serverless))
    data_dir = Path(serve.client.status(name)["data_dir"])
    wait(lambda: read_counters(data_dir).get("subscribed"), 120, f"the ingest of {name} to subscribe")
    wait(lambda: serve.client.status(name)["state"] == "running", 300, f"{name} to run")
    wait(lambda: serve.client.status(name)["executors"] == executors, 180, f"{name} to hold {executors} executors")
    return data_dir


def stored(serve: ServeProcess, name: str) -> int:
    return int(serve.client.status(name)["progress"]["rows_written"].get("readings", 0))


def publish(broker: str, topic: str, rate: float, seconds: float, prefix: str) -> int:
    """Publish at ``rate`` readings/s for ``seconds`` and return the number of readings sent."""
    publisher = RatePublisher(broker, topic, lambda t: rate, prefix=prefix).start()
    time.sleep(seconds)
    publisher.stop()
    return publisher.sent


def stop_pipeline(serve: ServeProcess, name: str) -> None:
    serve.client.stop(name)
    wait(lambda: serve.client.status(name)["state"] == "stopped", 300, f"{name} to stop")


def read_batches(data_dir: Path, since: float) -> list[dict]:
    """Return the ``readings`` query's micro-batches that ended at or after ``since`` (Unix seconds)."""
    lines = []
    for path in (data_dir / "progress.jsonl.1", data_dir / "progress.jsonl"):
        if path.exists():
            lines += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [
        {"batch_id": line["batch_id"], "rows": line["rows"], "batch_ms": line["batch_ms"], "time": line["time"],
         "executors": line.get("executors")}
        for line in lines if line.get("query") == "readings" and line["time"] >= since
    ]


# -- batch time: one executor count ------------------------------------------------------------


def set_trigger(serve: ServeProcess, name: str, seconds: float) -> float:
    """Request a new trigger from the control plane and return when the runtime had restarted its queries with it."""
    serve.client.scale(name, trigger=seconds)
    wait(lambda: serve.runner_status(name).get("trigger") == seconds, 120, f"{name} to apply a {seconds:g} s trigger")
    return time.time()


def executor_tasks(serve: ServeProcess, app_id: str) -> dict[str, int]:
    """Count the tasks each executor of an application finished, from the executor logs in the worker's work folder."""
    folder = serve.dir / "state" / "cluster" / "work" / "worker-0" / app_id
    counts = {}
    for log in sorted(folder.glob("*/stderr")):
        matches = (EXECUTOR_LOG_LINE.match(line) for line in log.read_text(errors="replace").splitlines())
        counts[log.parent.name] = sum(1 for match in matches if match and match.group(2) == "Finished")
    return counts


def warm(tasks: dict[str, int], executors: int) -> bool:
    return len(tasks) >= executors and all(count >= WARM_TASKS for count in tasks.values())


def measure_batches(serve: ServeProcess, broker: str, executors: int, args: argparse.Namespace,
                    sampler: CpuSampler) -> dict:
    name, topic = f"calibrate-{executors}", f"bench/calibrate-{executors}"
    serverless = {"initial_executors": executors, "min_executors": executors, "max_executors": executors,
                  "scaling": {"policy": "fixed"}}
    data_dir = submit(serve, broker, name, topic, serverless, executors)
    # Warm-up: the first tasks on each executor start its Python worker, which takes seconds.
    # Readings arrive at a low rate until every executor has finished WARM_TASKS tasks.
    app_id = serve.runner_status(name)["app_id"]
    warmup = RatePublisher(broker, topic, lambda t: 200.0, prefix="w").start()
    time.sleep(args.warmup_seconds)
    try:
        wait(lambda: warm(executor_tasks(serve, app_id), executors), 300,
             f"each of the {executors} executors of {name} to finish {WARM_TASKS} tasks", interval=1.0)
    finally:
        warmup.stop()
    sent = warmup.sent
    wait(lambda: stored(serve, name) >= sent, 180, f"{name} to store the warm-up readings")
    time.sleep(2 * TRIGGER_SECONDS)

    account = CpuAccount()
    started = time.time()
    phases = []
    # Small and middle-sized batches: constant rates at the 1 s trigger.
    for rate in args.rates:
        phase_start = time.time()
        count = publish(broker, topic, rate, args.seconds_per_rate, f"r{rate:g}-")
        sent += count
        phases.append({"phase": f"{rate:g}/s", "trigger": TRIGGER_SECONDS, "published": count,
                       "start": phase_start, "end": time.time()})
    # Large batches: the readings of a longer trigger interval wait for one batch. Changing the
    # trigger restarts the queries, so the first batch after each change is left out of the fit.
    restarts = []
    for trigger in args.long_triggers:
        restarts.append(set_trigger(serve, name, trigger))
        phase_start = time.time()
        seconds = max(args.seconds_per_rate, 3 * trigger)
        count = publish(broker, topic, args.long_rate, seconds, f"t{trigger:g}-")
        sent += count
        phases.append({"phase": f"{args.long_rate:g}/s", "trigger": trigger, "published": count,
                       "start": phase_start, "end": time.time()})
    wait(lambda: stored(serve, name) >= sent, args.drain_timeout, f"{name} to store every reading published")
    # The batch that stored the last readings is in the progress log a moment after the count.
    time.sleep(2 * TRIGGER_SECONDS)
    load = account.read()
    batches = read_batches(data_dir, started)
    stored_rows = stored(serve, name)
    tasks = executor_tasks(serve, app_id)
    stop_pipeline(serve, name)

    for restart in restarts:
        after = [b for b in batches if b["time"] >= restart]
        if after:
            after[0]["after_restart"] = True
    for batch in batches:
        ended = [p["trigger"] for p in phases if p["start"] <= batch["time"]]
        batch["trigger"] = ended[-1] if ended else TRIGGER_SECONDS
        batch["other_cpu_pct"] = sampler.mean_other(batch["time"] - batch["batch_ms"] / 1000, batch["time"])
        if args.max_other_cpu is not None and (batch["other_cpu_pct"] or 0) > args.max_other_cpu:
            batch["busy_machine"] = True
    used = fitted(batches, executors)
    fit = fit_line([b["rows"] for b in used], [b["batch_ms"] / 1000 for b in used])
    result = {
        "executors": executors,
        "published": sent,
        "stored": stored_rows,
        "phases": phases,
        "load": load,
        "tasks_per_executor": tasks,
        "batches": batches,
        "batches_fitted": len(used),
        "batches_empty": sum(1 for b in batches if b["rows"] == 0),
        "batches_after_restart": [b for b in batches if b.get("after_restart")],
        "batches_busy_machine": sum(1 for b in batches if b.get("busy_machine")),
        "batches_other_executor_count": sum(1 for b in batches if b["rows"] > 0 and b["executors"] != executors),
        "fit": fit,
    }
    print(f"  {executors} executor(s): {len(used)} batches of {fit['rows_min']:,} to {fit['rows_max']:,} rows; "
          f"overhead {fit['overhead_s']:.3f} s, throughput {fit['throughput']:,.0f} readings/s, R^2 {fit['r2']:.3f}; "
          f"tasks per executor {tasks}; other processes {load['other_cpu_pct']}% CPU", flush=True)
    return result


def fitted(batches: list[dict], executors: int) -> list[dict]:
    """Select the batches a fit uses: with rows, run by ``executors`` executors, not the first after a restart,
    and not on a busy machine."""
    return [b for b in batches if b["rows"] > 0 and b["executors"] == executors
            and not b.get("after_restart") and not b.get("busy_machine")]


def fit_line(rows: list[int], seconds: list[float]) -> dict:
    """Fit ``seconds = overhead + rows * per_row`` by least squares, and report throughput as ``1 / per_row``."""
    if len(rows) < 3 or len(set(rows)) < 2:
        raise SystemExit(f"too few micro-batches of different sizes to fit a line ({len(rows)} batches)")
    x = np.asarray(rows, dtype=float)
    y = np.asarray(seconds, dtype=float)
    design = np.column_stack([np.ones_like(x), x])
    solution, errors, rss, tss = least_squares(design, y)
    overhead, per_row = solution
    return {
        "batches": len(rows),
        "rows_min": int(x.min()),
        "rows_max": int(x.max()),
        "overhead_s": float(overhead),
        "per_row_s": float(per_row),
        "per_row_se": float(errors[1]),
        "throughput": float(1.0 / per_row) if per_row > 0 else math.inf,
        "r2": 1.0 - rss / tss if tss > 0 else 0.0,
        "rss": rss,
        "rmse_s": math.sqrt(rss / len(rows)),
    }


def least_squares(design: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Solve a least-squares fit and return its coefficients, their standard errors, and the residual and total
    sums of squares."""
    solution, *_ = np.linalg.lstsq(design, y, rcond=None)
    residuals = y - design @ solution
    rss = float(residuals @ residuals)
    tss = float(((y - y.mean()) ** 2).sum())
    freedom = max(len(y) - design.shape[1], 1)
    covariance = rss / freedom * np.linalg.pinv(design.T @ design)
    return solution, np.sqrt(np.clip(np.diag(covariance), 0.0, None)), rss, tss


def fit_joint(groups: dict[int, tuple[list[int], list[float]]]) -> dict:
    """Fit one overhead for every executor count and one per-row time per count, by least squares."""
    counts = sorted(groups)
    columns, targets = [], []
    for index, count in enumerate(counts):
        rows, seconds = groups[count]
        for value, duration in zip(rows, seconds):
            row = [1.0] + [0.0] * len(counts)
            row[1 + index] = float(value)
            columns.append(row)
            targets.append(duration)
    y = np.asarray(targets)
    solution, errors, rss, tss = least_squares(np.asarray(columns), y)
    return {
        "batches": len(y),
        "overhead_s": float(solution[0]),
        "per_row": {count: (float(solution[1 + i]), float(errors[1 + i])) for i, count in enumerate(counts)},
        "throughput": {count: (float(1.0 / solution[1 + i]) if solution[1 + i] > 0 else math.inf)
                       for i, count in enumerate(counts)},
        "r2": 1.0 - rss / tss if tss > 0 else 0.0,
        "rss": rss,
        "rmse_s": math.sqrt(rss / len(y)),
    }


def fit_overhead(batches: list[dict], throughput: float) -> dict:
    """Fit the overhead of ``seconds = overhead + rows / throughput`` with ``throughput`` given: the mean residual."""
    rows = np.asarray([b["rows"] for b in batches], dtype=float)
    seconds = np.asarray([b["batch_ms"] / 1000 for b in batches])
    if len(rows) < 3:
        raise SystemExit(f"too few micro-batches to fit an overhead ({len(rows)} batches)")
    residual = seconds - rows / throughput
    overhead = float(residual.mean())
    rss = float(((residual - overhead) ** 2).sum())
    return {"batches": len(rows), "rows_min": int(rows.min()), "rows_max": int(rows.max()), "overhead_s": overhead,
            "overhead_sd_s": float(residual.std(ddof=1)), "throughput": throughput, "rmse_s": math.sqrt(rss / len(rows))}


def akaike(rss: float, observations: int, parameters: int) -> float:
    """Compute the Akaike information criterion of a least-squares fit with Gaussian errors (lower is better)."""
    return observations * math.log(max(rss, 1e-12) / observations) + 2 * parameters


# -- executor start ----------------------------------------------------------------------------


def executor_log(serve: ServeProcess, app_id: str, executor_id: str) -> Path:
    return serve.dir / "state" / "cluster" / "work" / "worker-0" / app_id / executor_id / "stderr"


def first_task_times(path: Path) -> tuple[float | None, float | None]:
    """Return the Unix times of the first task start and the first task end in an executor log.

    The log has whole seconds, so each time is up to 1 s early. Either is None while the log
    has no such line.
    """
    started = finished = None
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None, None
    for line in text.splitlines():
        match = EXECUTOR_LOG_LINE.match(line)
        if not match:
            continue
        # The executor logs local time, like time.mktime expects.
        at = time.mktime(time.strptime(match.group(1), "%y/%m/%d %H:%M:%S"))
        if match.group(2) == "Running" and started is None:
            started = at
        elif match.group(2) == "Finished" and finished is None:
            finished = at
        if started is not None and finished is not None:
            break
    return started, finished


def measure_executor_start(serve: ServeProcess, broker: str, args: argparse.Namespace) -> dict:
    name, topic = "calibrate-start", "bench/calibrate-start"
    serverless = {"initial_executors": 1, "min_executors": 1, "max_executors": 2, "scaling": {"policy": "fixed"}}
    data_dir = submit(serve, broker, name, topic, serverless, 1)
    publisher = RatePublisher(broker, topic, lambda t: args.start_rate, prefix="s").start()
    account = CpuAccount()
    samples = []
    try:
        # The first batches on a new runtime start the executor's Python worker. The trials begin
        # after 3 batches with rows, so that they time a warm pipeline.
        wait(lambda: sum(1 for b in read_batches(data_dir, 0.0) if b["rows"] > 0) >= 3, 300,
             f"{name} to run 3 batches with rows")
        time.sleep(args.warmup_seconds)
        for trial in range(args.start_trials):
            before = set(serve.runner_status(name).get("executors", []))
            requested = time.time()
            serve.client.scale(name, executors=2)
            wait(lambda: len(serve.runner_status(name).get("executors", [])) >= 2, 180,
                 "the second executor to register", interval=0.05)
            registered = time.time()
            status = serve.runner_status(name)
            new = sorted(set(status["executors"]) - before)
            path = executor_log(serve, status["app_id"], new[0])
            wait(lambda: first_task_times(path)[1] is not None, 180, f"executor {new[0]} to finish a task")
            task_started, task_finished = first_task_times(path)
            # The first readings batch that ended after the new executor's first task did (whole seconds).
            after: list[dict] = []

            def batch_after() -> bool:
                after[:] = [b for b in read_batches(data_dir, task_finished + 1.0) if b["rows"] > 0][:1]
                return bool(after)

            wait(batch_after, 60, "a batch after the new executor's first task")
            sample = {
                "trial": trial + 1,
                "executor": new[0],
                "registered_s": registered - requested,
                "first_task_started_s": task_started - requested,
                "first_task_finished_s": task_finished - requested,
                "first_batch_after": after[0] if after else None,
            }
            samples.append(sample)
            print(f"  start {trial + 1}: registered after {sample['registered_s']:.1f} s, first task "
                  f"{sample['first_task_started_s']:.0f} to {sample['first_task_finished_s']:.0f} s after the request",
                  flush=True)
            serve.client.scale(name, executors=1)
            wait(lambda: len(serve.runner_status(name).get("executors", [])) == 1, 180,
                 "the second executor to be released")
            time.sleep(args.start_pause)
    finally:
        publisher.stop()
    load = account.read()
    stop_pipeline(serve, name)
    return {
        "rate": args.start_rate,
        "samples": samples,
        "load": load,
        "median_registered_s": statistics.median(s["registered_s"] for s in samples),
        "median_first_task_started_s": statistics.median(s["first_task_started_s"] for s in samples),
        "median_first_task_finished_s": statistics.median(s["first_task_finished_s"] for s in samples),
    }


# -- the calibration ---------------------------------------------------------------------------


def choose_fit(runs: list[dict]) -> dict:
    """Fit per executor count and jointly, and pick the fit with the lower Akaike information criterion."""
    groups = {}
    for run in runs:
        used = fitted(run["batches"], run["executors"])
        groups[run["executors"]] = ([b["rows"] for b in used], [b["batch_ms"] / 1000 for b in used])
    observations = sum(len(rows) for rows, _ in groups.values())
    separate_rss = sum(run["fit"]["rss"] for run in runs)
    joint = fit_joint(groups)
    separate_aic = akaike(separate_rss, observations, 2 * len(groups))
    joint_aic = akaike(joint["rss"], observations, 1 + len(groups))
    if joint_aic <= separate_aic:
        chosen = "joint"
        overhead = joint["overhead_s"]
        per_row = joint["per_row"]
    else:
        chosen = "separate"
        overhead = [run["fit"]["overhead_s"] for run in sorted(runs, key=lambda run: run["executors"])]
        per_row = {run["executors"]: (run["fit"]["per_row_s"], run["fit"]["per_row_se"]) for run in runs}
    return {"chosen": chosen, "overhead_s": overhead, "per_row": per_row, "joint": joint,
            "aic_separate": separate_aic, "aic_joint": joint_aic, "rss_separate": separate_rss}


def non_decreasing(per_row: dict[int, tuple[float, float]]) -> tuple[list[float], list[str]]:
    """Return the throughput of 1..N executors from fitted times per row and their standard errors, with a note per count.

    One more executor counts only when its time per row is below the previous figure's by more
    than twice the standard error of the difference, about a 95% test. A drop in throughput, or a
    rise within the noise, repeats the previous figure.
    """
    figures: list[float] = []
    notes: list[str] = []
    kept = (0.0, 0.0)
    for count in sorted(per_row):
        value, error = per_row[count]
        if not figures:
            if value <= 0:
                raise ValueError("the fit for 1 executor has no positive time per row, so no throughput; "
                                 "measure larger batches (--long-triggers, --long-rate)")
            kept = (value, error)
            figures.append(1.0 / value)
            continue
        margin = 2 * math.hypot(error, kept[1])
        measured = f"{1.0 / value:,.0f} readings/s" if value > 0 else "no positive time per row"
        if value > 0 and kept[0] - value > margin:
            kept = (value, error)
            figures.append(1.0 / value)
            notes.append(f"{count} executors measured {measured}, above the {figures[-2]:,.0f} of {count - 1} "
                         f"beyond the noise")
        else:
            notes.append(f"{count} executors measured {measured}, not above the {figures[-1]:,.0f} of {count - 1} "
                         f"by more than twice the standard error; the calibration repeats {figures[-1]:,.0f}")
            figures.append(figures[-1])
    return figures, notes


def calibration_document(runs: list[dict], choice: dict, start: dict, load: dict, args: argparse.Namespace,
                         machine: dict | None = None) -> dict:
    from sparkiot.config import build_config
    from sparkiot.serverless.metering import held_memory_mib

    config = build_config(json.loads(pipeline_spec("calibrate", "mqtt://127.0.0.1:1883", "bench/calibrate",
                                                   initial_executors=1, min_executors=1, max_executors=1)))
    serverless = config.serverless
    if choice["chosen"] == "given throughput":
        throughput, notes = list(choice["throughput"]), []
    else:
        throughput, notes = non_decreasing(choice["per_row"])
    per_n = [{"executors": run["executors"], "batches": run["fit"]["batches"], "rows_min": run["fit"]["rows_min"],
              "rows_max": run["fit"]["rows_max"], "overhead_s": round(run["fit"]["overhead_s"], 3),
              "throughput": round(run["fit"]["throughput"]) if math.isfinite(run["fit"]["throughput"]) else None,
              "per_row_us": round(run["fit"]["per_row_s"] * 1e6, 2),
              "per_row_se_us": round(run["fit"]["per_row_se"] * 1e6, 2),
              "r2": round(run["fit"]["r2"], 3), "rmse_s": round(run["fit"]["rmse_s"], 3),
              "other_cpu_pct": run["load"]["other_cpu_pct"]}
             for run in runs]
    if choice["chosen"] == "given throughput":
        fit_description = (f"the throughput of {args.per_row_from} and, per executor count, the overhead as the mean "
                           f"of batch seconds minus rows over that throughput")
        for entry, fit in zip(per_n, choice["fits"]):
            entry.update(overhead_s=round(fit["overhead_s"], 3), overhead_sd_s=round(fit["overhead_sd_s"], 3),
                         given_throughput=round(fit["throughput"], 1), given_rmse_s=round(fit["rmse_s"], 3))
    elif len(runs) == 1:
        fit_description = f"one least-squares fit on 1 executor (R^2 {runs[0]['fit']['r2']:.3f})"
    elif choice["chosen"] == "joint":
        fit_description = (f"joint least-squares fit with one overhead for every executor count "
                           f"(R^2 {choice['joint']['r2']:.3f}), chosen over separate fits per count by the Akaike "
                           f"information criterion ({choice['aic_joint']:.1f} against {choice['aic_separate']:.1f})")
    else:
        overhead_source = "each count's own overhead" if args.overhead_per_count else "the one-executor fit's overhead"
        fit_description = (f"separate least-squares fits per executor count with {overhead_source}, chosen "
                           f"over a joint fit with one overhead by the Akaike information criterion "
                           f"({choice['aic_separate']:.1f} against {choice['aic_joint']:.1f})")
    if args.max_other_cpu is not None:
        left_out = sum(run["batches_busy_machine"] for run in runs)
        fit_description += (f"; {left_out} batches during which other processes used more than "
                            f"{args.max_other_cpu:g}% of a core were left out")
    measured = {
        "date": datetime.date.today().isoformat(),
        "script": "benchmarks/optimizer_calibration.py",
        "machine": machine or machine_info(),
        "method": (f"a served pipeline on the standalone cluster (one worker of 4 cores and 4 GiB, executors of "
                   f"{serverless.executor_cores} core and {serverless.executor_memory // 1024**2} MiB, trigger "
                   f"{TRIGGER_SECONDS:g} s) ran with 1 to {len(runs)} fixed executors under "
                   f"{', '.join(f'{r:g}' for r in args.rates)} readings/s for {args.seconds_per_rate:g} s each"
                   + (f", then {args.long_rate:g} readings/s under triggers of "
                      f"{', '.join(f'{t:g}' for t in args.long_triggers)} s for larger batches" if args.long_triggers else "")
                   + f"; each micro-batch of the readings query gave its rows and duration, and "
                   f"executor_start is the median time from a scaling request to the end of the new executor's "
                   f"first task"),
        "fit": fit_description,
        "per_executor_count": per_n,
        "throughput_per_executor_count": notes,
        "executor_start_samples": [{key: (round(value, 2) if isinstance(value, float) else value)
                                    for key, value in sample.items() if key != "first_batch_after"}
                                   for sample in start["samples"]],
        "executor_start_load_rate": start["rate"],
        "load": load,
    }
    overhead = choice["overhead_s"]
    if isinstance(overhead, list):
        overhead = [round(value, 3) for value in overhead] if args.overhead_per_count else round(overhead[0], 3)
    else:
        overhead = round(overhead, 3)
    return {
        "batch_overhead": overhead,
        "throughput": [round(value, 1) for value in throughput],
        "executor_start": round(start["median_first_task_finished_s"], 2),
        "trigger": TRIGGER_SECONDS,
        "executor_cores": serverless.executor_cores,
        "executor_memory_mib": held_memory_mib(serverless.executor_memory),
        "driver_cores": serverless.driver_cores,
        "driver_memory_mib": held_memory_mib(serverless.driver_memory),
        "measured": measured,
    }


def validate(document: dict) -> None:
    """Check the document against the optimizer's own loader, when the package has it."""
    try:
        from sparkiot.optimize.calibration import Calibration
    except ImportError:
        return
    Calibration(**{**document, "throughput": tuple(document["throughput"])})


def measure(args: argparse.Namespace) -> dict:
    """Measure the batches of every executor count and the executor start; return every figure."""
    results: dict = {"machine": machine_info(), "rates": args.rates, "seconds_per_rate": args.seconds_per_rate,
                     "long_triggers": args.long_triggers, "long_rate": args.long_rate, "quiet_wait": [], "runs": []}
    others = OtherProcesses().start()
    sampler = CpuSampler().start()
    began = time.monotonic()
    with TunedMosquitto() as broker, tempfile.TemporaryDirectory(prefix="sparkiot-bench-calibration-") as folder:
        with ServeProcess(Path(folder), workers=WORKERS, stop_when_idle=False) as serve:
            for executors in sorted(args.executors):
                results["quiet_wait"].append(wait_for_quiet(args.quiet_wait))
                results["runs"].append(measure_batches(serve, broker.url, executors, args, sampler))
            if args.start_trials:
                results["quiet_wait"].append(wait_for_quiet(args.quiet_wait))
                results["executor_start"] = measure_executor_start(serve, broker.url, args)
    sampler.stop()
    results["load"] = measuring_load(results, others)
    results["minutes"] = round((time.monotonic() - began) / 60, 1)
    return results


def read_run(path: Path, args: argparse.Namespace) -> dict:
    """Read an earlier run's ``--json`` file and fit each executor count's line again, or exit naming what is wrong."""
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--refit {path}: cannot read the earlier run: {exc}") from None
    needed = ("runs", "load", "minutes", "rates", "seconds_per_rate", "long_triggers", "long_rate")
    missing = [key for key in needed if not isinstance(results, dict) or key not in results]
    if missing:
        raise SystemExit(f"--refit {path}: not a --json file of this script (missing {', '.join(missing)}); "
                         f"pass the file that a measuring run wrote with --json")

    def invalid(problem: str) -> SystemExit:
        return SystemExit(f"--refit {path}: {problem}; pass the file that a measuring run wrote with --json")

    def number(value: object) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    runs = results["runs"]
    if not isinstance(runs, list) or not runs:
        raise invalid("it contains no runs")
    if not all(isinstance(run, dict) and type(run.get("executors")) is int and isinstance(run.get("batches"), list)
               and isinstance(run.get("load"), dict) and number(run["load"].get("other_cpu_pct")) for run in runs):
        raise invalid("each run needs a whole executors count, a list of batches and a load with other_cpu_pct")
    counts = [run["executors"] for run in runs]
    if len(set(counts)) != len(counts):
        raise invalid(f"executor counts repeat: {counts}")
    for run in runs:
        for batch in run["batches"]:
            if not isinstance(batch, dict) or not all(number(batch.get(key)) for key in ("rows", "batch_ms", "time")):
                raise invalid(f"a batch of the {run['executors']}-executor run lacks numeric rows, batch_ms or time: {batch!r}")
            batch["busy_machine"] = args.max_other_cpu is not None and (batch.get("other_cpu_pct") or 0) > args.max_other_cpu
        used = fitted(run["batches"], run["executors"])
        if len(used) < 3 or len({b["rows"] for b in used}) < 2:
            raise invalid(f"the {run['executors']}-executor run has {len(used)} usable batches, and a fit needs 3 of "
                          f"2 sizes or more")
        run["fit"] = fit_line([b["rows"] for b in used], [b["batch_ms"] / 1000 for b in used])
    if not isinstance(results["load"], dict) or not all(number(results["load"].get(key))
                                                        for key in ("seconds", "own_cpu_pct", "other_cpu_pct")):
        raise invalid("its load needs numeric seconds, own_cpu_pct and other_cpu_pct")
    if not (isinstance(results["rates"], list) and all(number(rate) for rate in results["rates"])
            and isinstance(results["long_triggers"], list) and all(number(t) for t in results["long_triggers"])
            and number(results["seconds_per_rate"]) and number(results["long_rate"])):
        raise invalid("rates and long_triggers must be lists of numbers, seconds_per_rate and long_rate numbers")
    if args.write_calibration:
        start = results.get("executor_start")
        if not (isinstance(start, dict) and isinstance(start.get("samples"), list)
                and all(isinstance(sample, dict) for sample in start["samples"])
                and number(start.get("median_first_task_finished_s")) and number(start.get("rate"))):
            raise invalid("--write-calibration needs the executor_start measurement with its samples, rate and median")
    return results


def given_throughput_choice(runs: list[dict], path: str) -> dict:
    """Fit each executor count's overhead with the throughput of the calibration file ``path``."""
    from sparkiot.config import ConfigError
    from sparkiot.optimize.calibration import load_calibration

    try:
        throughput = load_calibration(path).throughput
    except ConfigError as exc:
        raise SystemExit(f"--per-row-from: {exc}") from None
    counts = sorted(run["executors"] for run in runs)
    if counts != list(range(1, len(counts) + 1)) or len(counts) > len(throughput):
        raise SystemExit(f"--per-row-from {path} gives throughput for 1 to {len(throughput)} executors; "
                         f"the runs measured {counts}")
    fits = [fit_overhead(fitted(run["batches"], run["executors"]), throughput[run["executors"] - 1])
            for run in sorted(runs, key=lambda run: run["executors"])]
    return {"chosen": "given throughput", "overhead_s": [fit["overhead_s"] for fit in fits],
            "throughput": [throughput[count - 1] for count in counts], "fits": fits}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executors", type=positive_ints, default=[1, 2, 3, 4],
                        help="executor counts to measure, separated by commas (default 1,2,3,4)")
    parser.add_argument("--rates", type=positive_floats, default=[300.0, 2000.0, 8000.0],
                        help="constant rates in readings/s at the 1 s trigger, separated by commas "
                             "(default 300,2000,8000)")
    parser.add_argument("--seconds-per-rate", type=float, default=15.0,
                        help="seconds at each rate; a long trigger's phase lasts at least 3 intervals (default 15)")
    parser.add_argument("--long-triggers", type=positive_floats, default=[5.0, 20.0],
                        help="longer triggers in seconds for large batches, separated by commas (default 5,20)")
    parser.add_argument("--long-rate", type=float, default=12000.0,
                        help="readings/s during the long triggers (default 12000)")
    parser.add_argument("--warmup-seconds", type=float, default=8.0,
                        help="minimum seconds of warm-up at 200 readings/s before each measurement; the warm-up "
                             f"lasts until every executor has finished {WARM_TASKS} tasks (default 8)")
    parser.add_argument("--drain-timeout", type=float, default=300.0,
                        help="seconds to wait for a pipeline to store every reading published (default 300)")
    parser.add_argument("--start-trials", type=int, default=3,
                        help="executor start measurements (default 3, 0 to skip)")
    parser.add_argument("--start-rate", type=float, default=1500.0,
                        help="readings/s while the executor start is measured (default 1500)")
    parser.add_argument("--start-pause", type=float, default=8.0,
                        help="seconds between releasing the second executor and the next request (default 8)")
    parser.add_argument("--quiet-wait", type=float, default=10.0,
                        help="seconds to wait for other processes to go idle before each measurement (default 10)")
    parser.add_argument("--max-other-cpu", type=float, metavar="PCT",
                        help="leave out of the fits the batches during which other processes used more than PCT "
                             "percent of one core (default: keep every batch)")
    parser.add_argument("--overhead-per-count", action="store_true",
                        help="with separate fits, write each executor count's own overhead (default: the "
                             "one-executor fit's overhead for every count, as the scaled-out model uses it)")
    parser.add_argument("--per-row-from", metavar="CALIBRATION",
                        help="take the throughput per executor count from this calibration file and fit only the "
                             "overheads, for batches whose rows explain too little of their time to fit both")
    parser.add_argument("--refit", metavar="JSON",
                        help="measure nothing: fit the batches and executor starts of an earlier run's --json file")
    parser.add_argument("--json", help="write every batch, fit and sample to this file")
    parser.add_argument("--write-calibration", nargs="?", const=str(DEFAULT_CALIBRATION), metavar="PATH",
                        help=f"write the calibration file (default path {DEFAULT_CALIBRATION.relative_to(ROOT)})")
    args = parser.parse_args()
    if args.seconds_per_rate <= 0 or args.warmup_seconds <= 0 or args.long_rate <= 0:
        parser.error("--seconds-per-rate, --warmup-seconds and --long-rate must be above 0")
    if args.start_trials < 0:
        parser.error("--start-trials must be 0 or more")
    if args.write_calibration:
        if sorted(args.executors) != list(range(1, len(args.executors) + 1)):
            parser.error("--write-calibration needs --executors to cover 1, 2, ... N, one figure per count")
        if args.start_trials < 1:
            parser.error("--write-calibration needs --start-trials of 1 or more")

    if args.refit:
        results = read_run(Path(args.refit), args)
        # The method written into the calibration describes the run that measured the batches.
        for name in ("rates", "seconds_per_rate", "long_triggers", "long_rate"):
            setattr(args, name, results[name])
    else:
        results = measure(args)
    load = results["load"]

    runs = results["runs"]
    print()
    print_table(["executors", "batches", "rows min", "rows max", "overhead s", "us/row", "+/- us", "readings/s", "R^2",
                 "RMSE s", "others CPU %"],
                [[r["executors"], r["fit"]["batches"], r["fit"]["rows_min"], r["fit"]["rows_max"], r["fit"]["overhead_s"],
                  r["fit"]["per_row_s"] * 1e6, r["fit"]["per_row_se"] * 1e6, r["fit"]["throughput"], r["fit"]["r2"],
                  r["fit"]["rmse_s"], r["load"]["other_cpu_pct"]] for r in runs])
    if args.per_row_from:
        choice = given_throughput_choice(runs, args.per_row_from)
        results["choice"] = choice
        print("\noverheads with the given throughput: " + ", ".join(
            f"{count}: {fit['overhead_s']:.3f} s (sd {fit['overhead_sd_s']:.3f} s, {fit['throughput']:,.0f} readings/s)"
            for count, fit in enumerate(choice["fits"], start=1)))
    elif len(runs) > 1:
        choice = choose_fit(runs)
        results["choice"] = choice
        joint = choice["joint"]
        print(f"\njoint fit: overhead {joint['overhead_s']:.3f} s, R^2 {joint['r2']:.3f}, throughput "
              + ", ".join(f"{count}: {value:,.0f}" for count, value in joint["throughput"].items())
              + f"; AIC joint {choice['aic_joint']:.1f}, separate {choice['aic_separate']:.1f}: {choice['chosen']} chosen")
    if "executor_start" in results:
        start = results["executor_start"]
        print(f"executor start (median of {len(start['samples'])}): registered {start['median_registered_s']:.1f} s, "
              f"first task finished {start['median_first_task_finished_s']:.1f} s after the request")
    print(f"other processes used {load['other_cpu_pct']}% CPU (100% = one core) over the {load['seconds']:.0f} s measured; "
          f"the run took {results['minutes']} min")

    code = 0
    if args.write_calibration:
        choice = results.get("choice") or {"chosen": "separate", "overhead_s": [runs[0]["fit"]["overhead_s"]],
                                           "per_row": {1: (runs[0]["fit"]["per_row_s"], runs[0]["fit"]["per_row_se"])},
                                           "joint": {"r2": runs[0]["fit"]["r2"]}, "aic_joint": math.nan,
                                           "aic_separate": math.nan}
        try:
            document = calibration_document(runs, choice, results["executor_start"], load, args, results.get("machine"))
            validate(document)
        except (ValueError, RuntimeError) as exc:
            print(f"no calibration written: {exc}")
            code = 1
        else:
            target = Path(args.write_calibration)
            target.write_text(json.dumps(document, indent=2) + "\n")
            results["calibration"] = document
            print(f"calibration written to {target}")
    write_json(args.json, results)
    return code


if __name__ == "__main__":
    sys.exit(main())
