"""A trained scaling policy on a real pipeline, beside the simulator's prediction for the same load.

The load is one segment of a held-out day of the optimizer's traces (``load_traces`` with the
peak at ``DEFAULT_PEAK_SHARE`` of the calibrated top throughput, then ``inject(day, salt=0)`` as
the evaluation does). Each trace step lasts ``--step-seconds`` (60 s) of wall time at a constant
rate, published by ``RatePublisher`` over 50 devices.

The script runs ``sparkiot serve`` as a child process against a Mosquitto child process on a free
loopback port. The standalone cluster has one worker of 4 cores and 4 GiB, and the pipeline has
executors of 1 core and 512 MiB, 1 executor at the start, at most the policy's
``max_executors``, the calibration's trigger and no idle timeout. Its scaling policy is
``sparkiot.optimize.policies:LearnedPolicy``, asked every step, whose clock is set so that the
time-of-day features read the segment's trace time. A policy trained for a larger cluster
than this machine can feed runs with ``--load-scale``, which multiplies the rates and the
backlog it reads, live and in the simulator alike.

The control plane calls the policy every ``scaling.interval``, counted from the runtime's start.
The script therefore pins the pipeline at 1 executor by hand (the ``PUT /scaling`` request)
through the warm-up, returns it to the policy 10 s before a decision, and starts the replay
``--decision-lead`` seconds after that decision. Each decision then falls just before a step
boundary, as it does in the simulator. Between the warm-up and the replay the publisher sends
step 0's rate, so the first decision reads the metrics of a pipeline already running at that rate.
The simulator runs the same lead-in: one unrecorded step at step 0's rate with 1 executor
(``run_policy(lead_in=True)``). The replay's start differs from the clock's ``origin``, which is
fixed at submit, by the runtime's start delay; the output reports that offset.

Measured: every scaling event that the control plane recorded (time, from, to, reason), the
executor count the policy set for each step, the executors held (from the ledger), the bill of the
replay window (the ledger clipped to it, priced for ``--platform``), and the latency of every
reading received during the replay, from its receipt by the ingest to the end of the micro-batch
that stored it. The simulator plays the same rates with the same policy from 1 executor.
``--from-json`` compares a recorded run with the simulator again, for example with another
``--calibration``, without running the cluster.

Tolerances, stated before the run: the simulator's prediction agrees with the measurement when

* total cost (driver and executors, same platform) is within 20% of the measured window bill;
* the reading-weighted p50 latency is within 2 s;
* the p99 latency is within 50% of the measured p99;
* the share of steps whose worst latency exceeds the target differs by at most 0.10;
* the policy chose the same executor count in at least 75% of the steps.

    python benchmarks/optimizer_live.py --json results/optimizer-live.json
    python benchmarks/optimizer_live.py --dry-run   # the simulator's prediction alone, no cluster
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import CpuAccount, TunedMosquitto, machine_info, print_table, wait_for_quiet, write_json  # noqa: E402
from _serve import RatePublisher, ServeProcess, pipeline_spec, wait  # noqa: E402
from serverless_cost import clipped_holdings  # noqa: E402

WORKERS = [{"cores": 4, "memory": "4GiB"}]
POLICY_CLASS = "sparkiot.optimize.policies:LearnedPolicy"
# The manual setting goes back to the policy this long before the decision that opens the replay.
AUTOMATIC_AHEAD_SECONDS = 10.0
SAMPLE_SECONDS = 2.0

TOLERANCES = {
    "cost_relative": 0.20,
    "p50_seconds": 2.0,
    "p99_relative": 0.50,
    "over_target_share": 0.10,
    "executors_equal_share": 0.75,
}


def default_data_dir() -> Path | None:
    """Return ``$SPARKIOT_TRACE_DATA``, else ``shared/data`` beside the repository, if it exists."""
    configured = os.environ.get("SPARKIOT_TRACE_DATA")
    if configured:
        return Path(configured)
    candidate = Path(__file__).resolve().parents[2] / "shared" / "data"
    return candidate if candidate.is_dir() else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=default_data_dir(),
                        help="folder containing nab/ and uci-occupancy/ (default: shared/data beside the repository)")
    parser.add_argument("--policy", default="ppo-seed0", help="a shipped policy name or the path of a .zip (default ppo-seed0)")
    parser.add_argument("--calibration", help="calibration JSON (default: the one shipped with sparkiot)")
    parser.add_argument("--source", default="taxi", help="trace source (default taxi)")
    parser.add_argument("--day", type=int, default=0, help="index of the held-out day of that source (default 0)")
    parser.add_argument("--first-step", type=int, default=30,
                        help="first trace step of the segment (default 30, 05:00 at 10-minute steps: the morning ramp)")
    parser.add_argument("--steps", type=int, default=20, help="trace steps in the segment (default 20)")
    parser.add_argument("--step-seconds", type=float, default=60.0,
                        help="wall seconds per trace step; must equal the policy's step_seconds (default 60)")
    parser.add_argument("--peak-rate", type=float,
                        help="readings/s of the training days' busiest step (default: DEFAULT_PEAK_SHARE of the top throughput)")
    parser.add_argument("--platform", default="emr_serverless", help="price table platform (default emr_serverless)")
    parser.add_argument("--devices", type=int, default=50, help="devices the readings are spread over (default 50)")
    parser.add_argument("--start-delay", type=float, default=180.0,
                        help="seconds from submit to the planned replay start, the policy clock's origin (default 180)")
    parser.add_argument("--decision-lead", type=float, default=3.0,
                        help="seconds between a policy decision and the step boundary after it (default 3)")
    parser.add_argument("--load-scale", type=float, default=1.0,
                        help="factor on the rates and backlog the policy reads, live and simulated alike, so that a policy "
                             "trained for a larger cluster decides as at its trained size (LearnedPolicy's load_scale; default 1)")
    parser.add_argument("--quiet-wait", type=float, default=120.0,
                        help="seconds to wait for other processes to go idle before the live run; 0 skips the wait (default 120)")
    parser.add_argument("--dry-run", action="store_true", help="compute the segment and the simulator's prediction only")
    parser.add_argument("--from-json", type=Path, metavar="JSON",
                        help="run no cluster: compare the live run recorded in an earlier --json file, made with the "
                             "same segment options, with the simulator's prediction again")
    parser.add_argument("--json", help="write everything to this file")
    args = parser.parse_args(argv)
    if args.data_dir is None:
        parser.error("no trace data folder found: pass --data-dir DIR (the folder containing nab/ and uci-occupancy/)")
    if args.load_scale <= 0:
        parser.error("--load-scale must be above 0")
    if args.steps < 1 or args.first_step < 0:
        parser.error("--steps must be at least 1 and --first-step at least 0")
    return args


# -- the segment and the simulator --------------------------------------------------------------------------


def load_setup(args: argparse.Namespace) -> dict:
    """Load the policy's description, the calibration, the prices and the replayed segment."""
    from sparkiot.cli_optimize import DEFAULT_PEAK_SHARE
    from sparkiot.optimize.calibration import load_calibration, worker_prices
    from sparkiot.optimize.env import Objective
    from sparkiot.optimize.policies import read_policy_meta, resolve_policy_file
    from sparkiot.optimize.traces import Trace, inject, load_traces

    path = resolve_policy_file(args.policy).resolve()
    meta = read_policy_meta(path)
    step_seconds = float(meta.get("step_seconds", 60.0))
    if not math.isclose(step_seconds, args.step_seconds):
        raise SystemExit(f"--step-seconds {args.step_seconds:g} differs from the policy's step_seconds {step_seconds:g} "
                         f"({path.with_suffix('.json')}); pass --step-seconds {step_seconds:g}")
    trace_step = float(meta.get("trace_step", 600.0))
    calibration = load_calibration(args.calibration)
    if meta.get("calibration") and {k: v for k, v in meta["calibration"].items() if k != "measured"} != \
            {k: v for k, v in calibration.as_dict().items() if k != "measured"}:
        print(f"note: {path.name} was trained with another calibration than the one the simulator uses here", flush=True)
    prices = worker_prices(calibration, args.platform)
    objective = Objective(latency_target=float(meta["latency_target"]), penalty=float(meta.get("penalty", 4.0)),
                          step_seconds=step_seconds)
    peak = args.peak_rate or DEFAULT_PEAK_SHARE * calibration.throughput[-1]
    _, held_out = load_traces(args.data_dir, sources=(args.source,), trace_step=trace_step, peak_rate=peak)
    if not 0 <= args.day < len(held_out):
        raise SystemExit(f"--day {args.day}: the source {args.source} has {len(held_out)} held-out days (0 to {len(held_out) - 1})")
    day = inject(held_out[args.day], salt=0)
    last = args.first_step + args.steps
    if last > len(day):
        raise SystemExit(f"--first-step {args.first_step} with --steps {args.steps} runs past the day's {len(day)} steps; choose an earlier --first-step")
    start = day.start + pd.Timedelta(seconds=args.first_step * trace_step)
    segment = Trace(f"{day.name}-steps-{args.first_step}-{last}", day.source, day.rates[args.first_step:last].copy(),
                    start, trace_step, day.events)
    return {"path": path, "meta": meta, "calibration": calibration, "prices": prices, "objective": objective,
            "peak_rate": peak, "day": day, "segment": segment, "trace_step": trace_step,
            "day_start": args.first_step * trace_step, "load_scale": args.load_scale}


def simulate(setup: dict, counts: list[int] | None = None) -> dict:
    """Play the segment in the simulator with the same policy from 1 executor; return per-step figures and totals.

    With ``counts``, the simulator uses those executor counts, one per step, in place of the policy's decisions.
    """
    from sparkiot.optimize.env import Clock, latency_quantile, run_policy
    from sparkiot.optimize.oracle import PlannedPolicy
    from sparkiot.optimize.policies import LearnedPolicy

    meta, objective = setup["meta"], setup["objective"]
    if counts is not None:
        policy = PlannedPolicy(counts)
    else:
        policy = LearnedPolicy(policy_file=setup["path"], load_scale=setup["load_scale"],
                               clock=Clock(day_start=setup["day_start"], speed=float(meta["clock_speed"])))
    # The live pipeline runs at step 0's rate before the replay, so the simulation does too.
    record = run_policy(policy, setup["segment"], setup["calibration"], setup["prices"], objective, initial_executors=1,
                        lead_in=True)
    return {
        "executors": [int(n) for n in record.executors],
        "cost": [float(c) for c in record.cost],
        "worst_latency": [float(w) for w in record.worst_latency],
        "total_cost": record.total_cost,
        "p50": latency_quantile(record.histogram, 0.5),
        "p99": latency_quantile(record.histogram, 0.99),
        "over_target": record.over_target(objective.latency_target),
        "mean_executors": float(np.mean(record.executors)),
        "processed": record.processed,
        "dropped": record.dropped,
    }


# -- the live run ------------------------------------------------------------------------------------------


def build_spec(name: str, broker: str, topic: str, setup: dict, origin: float) -> str:
    """Build the pipeline file (as JSON, which is valid YAML) whose executors the policy scales."""
    spec = json.loads(pipeline_spec(
        name, broker, topic, idle_timeout=None, executor_cores=1, initial_executors=1, min_executors=1,
        max_executors=int(setup["meta"]["max_executors"]),
        scaling={"policy": POLICY_CLASS, "interval": f"{setup['objective'].step_seconds:g}s",
                 "options": {"policy_file": str(setup["path"]), "day_start": setup["day_start"], "origin": origin,
                             "load_scale": setup["load_scale"]}},
    ))
    spec["spark"]["trigger"] = f"{setup['calibration'].trigger:g}s"
    return json.dumps(spec)


def read_table(data_dir: Path, columns: list[str]) -> pd.DataFrame:
    path = data_dir / "tables" / "readings"
    if not path.exists() or not any(path.rglob("*.parquet")):
        return pd.DataFrame(columns=columns)
    try:
        return pd.read_parquet(path, columns=columns)
    except (OSError, ValueError):
        # A micro-batch is writing its files right now; the callers poll again.
        return pd.DataFrame(columns=columns)


def reading_times(data_dir: Path, runtime_dir: Path) -> pd.DataFrame:
    """Read each stored reading's ``msg_id``, receipt time (``ingest``) and the end of its micro-batch (``done``), in Unix seconds."""
    readings = read_table(data_dir, ["msg_id", "ingest_ts", "batch_id"])
    batches = [json.loads(line) for line in (runtime_dir / "batches.jsonl").read_text().splitlines() if line]
    done = pd.DataFrame([b for b in batches if b["query"] == "readings" and b["rows"] > 0])
    # A batch id is unique per checkpoint; the last completion of an id wins (a replay rewrites it).
    done = done.drop_duplicates("batch_id", keep="last")[["batch_id", "done"]]
    readings["batch_id"] = readings["batch_id"].astype("int64")
    joined = readings.merge(done, on="batch_id", how="inner")
    joined["ingest"] = joined["ingest_ts"].astype("datetime64[us, UTC]").astype("int64") / 1e6
    return joined[["msg_id", "ingest", "done"]]


def decision_schedule(serve: ServeProcess, name: str, interval: float, running_seen: float) -> float:
    """Return the time of the control plane's first policy decision for the pipeline's runtime.

    The control plane sets the first decision ``interval`` after it writes the runtime's
    ``spec.json``, and makes it at its first visit once the runtime runs. Each later decision
    comes ``interval`` after the previous one, plus up to one poll interval of lag.
    """
    written = (serve.runtime_dir(name) / "spec.json").stat().st_mtime
    return max(written + interval, running_seen)


def merge_events(known: dict[int, dict], events: list[dict]) -> None:
    for event in events:
        known[int(event["id"])] = {key: event.get(key) for key in ("id", "time", "executors_from", "executors_to",
                                                                    "trigger", "reason")}


def target_at(events: list[dict], moment: float, initial: int = 1) -> int:
    """Return the executor target in force at ``moment`` from the scaling events (the last count set before it)."""
    target = initial
    for event in sorted(events, key=lambda e: e["time"]):
        if event["time"] > moment:
            break
        if event["executors_to"] is not None:
            target = int(event["executors_to"])
    return target


def worker_cost_per_second(holding, table, platform: str) -> float:
    """Return the US dollars per second of one holding's worker, before increments and minimums."""
    from sparkiot.serverless.metering import Holding, price

    hour = Holding(holding.kind, holding.resource_id, holding.cores, holding.memory_mib, 0.0, 3600.0)
    return float(price([hour], table, platform).usd) / 3600.0


def run_live(args: argparse.Namespace, setup: dict) -> dict:
    """Replay the segment through a served pipeline driven by the policy; return what was measured."""
    with TunedMosquitto() as broker, tempfile.TemporaryDirectory(prefix="sparkiot-bench-live-") as folder:
        with ServeProcess(Path(folder), workers=WORKERS, stop_when_idle=False) as serve:
            return replay(args, setup, serve, broker.url)


def replay(args: argparse.Namespace, setup: dict, serve: ServeProcess, broker: str) -> dict:
    from sparkiot.ingest.consumer import read_counters

    rates = setup["segment"].rates
    step_seconds = setup["objective"].step_seconds
    length = len(rates) * step_seconds
    name = f"live-{setup['path'].stem}"
    topic = f"bench/{name}"
    events: dict[int, dict] = {}

    # The policy's clock: the replay is planned to start --start-delay seconds after submit.
    submitted = time.time()
    origin = submitted + args.start_delay
    spec = build_spec(name, broker, topic, setup, origin)
    serve.client.submit(spec)
    # Pinned at 1 executor by hand until the replay; the policy decides from its first step on.
    serve.client.scale(name, executors=1)
    data_dir = Path(serve.client.status(name)["data_dir"])
    runtime_dir = serve.runtime_dir(name)
    wait(lambda: read_counters(data_dir).get("subscribed"), 120, "the ingest to subscribe")
    wait(lambda: serve.client.status(name)["state"] == "running", 300, f"{name} to run")
    first_decision = decision_schedule(serve, name, step_seconds, time.time())

    # Warm-up: the first batch on a fresh executor starts its Python worker, which takes seconds.
    warmup = RatePublisher(broker, topic, lambda t: 50.0 if t < 4 else 0.0, devices=args.devices, prefix="w").start()
    time.sleep(4.5)
    warmup.stop()
    wait(lambda: len(read_table(data_dir, ["msg_id"])) >= warmup.sent, 180, f"{name} to store the warm-up readings")

    # The replay opens --decision-lead seconds after a decision; choose the one nearest the planned start.
    now = time.time()
    decision = first_decision
    while decision - AUTOMATIC_AHEAD_SECONDS < now + 5 or decision + args.decision_lead < origin - step_seconds / 2:
        decision += step_seconds
    start = decision + args.decision_lead
    print(f"  runtime running; first decision {first_decision - submitted:.1f} s after submit; replay starts "
          f"{start - submitted:.1f} s after submit ({start - origin:+.1f} s from the clock's origin)", flush=True)

    # Lead-in at step 0's rate, so that the first decision reads the metrics of a pipeline running at that rate.
    lead_in = RatePublisher(broker, topic, lambda t: float(rates[0]), devices=args.devices, prefix="l").start()
    time.sleep(max(0.0, decision - AUTOMATIC_AHEAD_SECONDS - time.time()))
    serve.client.scale(name, automatic=True)
    merge_events(events, serve.client.status(name)["scaling"])

    def rate(t: float) -> float:
        return float(rates[int(t // step_seconds)]) if t < length else 0.0

    publisher = RatePublisher(broker, topic, rate, devices=args.devices, prefix="r")
    time.sleep(max(0.0, start - time.time()))
    publisher.start()
    started = time.time()
    lead_in.stop()
    cpu = CpuAccount()
    samples = []
    while time.monotonic() - publisher.started < length:
        status = serve.client.status(name)
        merge_events(events, status["scaling"])
        progress = status["progress"]
        samples.append({"t": time.time() - started, "executors": status["executors"],
                        "target_executors": status["target_executors"], "backlog": progress["backlog"],
                        "input_rate": progress["input_rate"], "process_rate": progress["process_rate"],
                        "batch_duration": progress["batch_duration"]})
        step = int(samples[-1]["t"] // step_seconds)
        if len(samples) % 15 == 1:
            print(f"  step {step}: rate {rate(samples[-1]['t']):.0f}/s, executors {status['executors']} "
                  f"(target {status['target_executors']}), backlog {progress['backlog']}", flush=True)
        time.sleep(SAMPLE_SECONDS)
    publisher.stop()
    end = started + length
    machine_load = cpu.read()

    wait(lambda: serve.client.status(name)["progress"]["backlog"] == 0, 600, f"{name} to catch up")
    caught_up = time.time()
    expected = warmup.sent + lead_in.sent + publisher.sent
    wait(lambda: len(read_table(data_dir, ["msg_id"])) >= expected, 180, f"{name}'s table to hold every reading", interval=5.0)
    merge_events(events, serve.client.status(name)["scaling"])
    event_log = serve.client.logs(name, "events", 5000)["lines"]
    serve.client.stop(name)
    wait(lambda: serve.client.status(name)["state"] == "stopped", 300, f"{name} to stop")

    measured = measure(data_dir, runtime_dir, rates, step_seconds, started, args.platform, list(events.values()),
                       setup["objective"].latency_target)
    stored = read_table(data_dir, ["msg_id"])["msg_id"]
    return {
        "pipeline": json.loads(spec),
        "timing": {"submitted": submitted, "origin": origin, "first_decision": first_decision,
                   "replay_decision": decision, "started": started, "ended": end, "caught_up": caught_up,
                   "start_minus_origin_s": started - origin,
                   "clock_offset_trace_s": (started - args.decision_lead - origin) * float(setup["meta"]["clock_speed"])},
        "published": {"warmup": warmup.sent, "lead_in": lead_in.sent, "replay": publisher.sent},
        "stored": int(len(stored)),
        "distinct": int(stored.nunique()),
        "exactly_once": int(len(stored)) == int(stored.nunique()) == expected,
        "catch_up_s": caught_up - end,
        "run_bill": serve.client.cost(name, args.platform)["exact"],
        "event_log": event_log,
        "samples": samples,
        "machine_load": machine_load,
        **measured,
    }


def measure(data_dir: Path, runtime_dir: Path, rates: np.ndarray, step_seconds: float, started: float, platform: str,
            events: list[dict], latency_target: float) -> dict:
    """Compute the replay's bill, executors and reading latencies, in total and per step, from the pipeline's files."""
    from sparkiot.serverless.metering import load_prices, price

    table = load_prices()
    length = len(rates) * step_seconds
    ledger = runtime_dir / "ledger.jsonl"
    times = reading_times(data_dir, runtime_dir)
    # The codec stores a payload id as msg_id "DEVICE:ID" (":METRIC" added for several metrics); replay ids are r0, r1, ...
    replayed = times[times["msg_id"].str.contains(r"(?:^|:)r\d+(?::|$)", regex=True)].copy()
    replayed["latency"] = replayed["done"] - replayed["ingest"]
    # Readings received after the last step ended were in flight then; they count in the last step.
    replayed["step"] = ((replayed["ingest"] - started) // step_seconds).clip(0, len(rates) - 1).astype(int)
    holdings = clipped_holdings(ledger, started, started + length)
    window_bill = price(holdings, table, platform)

    ordered_events = sorted(events, key=lambda e: e["time"])
    steps = []
    for index in range(len(rates)):
        low, high = started + index * step_seconds, started + (index + 1) * step_seconds
        inside = replayed[replayed["step"] == index]
        step_holdings = clipped_holdings(ledger, low, high)
        steps.append({
            "step": index,
            "rate": float(rates[index]),
            "policy_executors": target_at(ordered_events, low + step_seconds / 2),
            "held_executors": sum(h.seconds for h in step_holdings if h.kind == "executor") / step_seconds,
            "cost_per_second_prices": sum(worker_cost_per_second(h, table, platform) * h.seconds for h in step_holdings),
            "readings": int(len(inside)),
            "worst_latency": float(inside["latency"].max()) if len(inside) else 0.0,
        })
    for event in ordered_events:
        # Where each recorded decision fell: seconds after the replay's start and from the nearest step boundary.
        offset = event["time"] - started
        event["replay_seconds"] = offset
        event["from_boundary"] = offset - round(offset / step_seconds) * step_seconds
    latencies = replayed["latency"].to_numpy()
    return {
        "events": ordered_events,
        "steps": steps,
        "window_bill": {"platform": platform, "exact": str(window_bill.usd),
                        "held_seconds": sum(h.seconds for h in holdings),
                        "billed_seconds": sum(line.billed_seconds for line in window_bill.lines)},
        "window_cost": float(window_bill.usd),
        "window_cost_per_second_prices": sum(worker_cost_per_second(h, table, platform) * h.seconds for h in holdings),
        "mean_executors": sum(h.seconds for h in holdings if h.kind == "executor") / length,
        "readings": int(len(latencies)),
        "p50": float(np.percentile(latencies, 50)) if len(latencies) else math.nan,
        "p99": float(np.percentile(latencies, 99)) if len(latencies) else math.nan,
        "max_latency": float(latencies.max()) if len(latencies) else math.nan,
        "over_target": float(np.mean([step["worst_latency"] > latency_target for step in steps])),
    }


# -- the comparison ----------------------------------------------------------------------------------------


def compare(sim: dict, live: dict) -> list[dict]:
    """Return one row per compared figure: simulated, measured, the difference, the tolerance and whether it holds."""
    rows = []

    def relative(label: str, simulated: float, measured: float, tolerance: float) -> None:
        difference = (simulated - measured) / measured if measured else math.inf
        rows.append({"figure": label, "simulated": simulated, "measured": measured, "difference": difference,
                     "difference_text": f"{difference:+.1%}", "tolerance": f"within {tolerance:.0%}",
                     "within": abs(difference) <= tolerance})

    def absolute(label: str, simulated: float, measured: float, tolerance: float, unit: str) -> None:
        difference = simulated - measured
        rows.append({"figure": label, "simulated": simulated, "measured": measured, "difference": difference,
                     "difference_text": f"{difference:+.2f}{unit}", "tolerance": f"within {tolerance:g}{unit}",
                     "within": abs(difference) <= tolerance})

    relative("cost, US$ (window bill)", sim["total_cost"], live["window_cost"], TOLERANCES["cost_relative"])
    relative("cost, US$ (per-second prices, no minimum)", sim["total_cost"], live["window_cost_per_second_prices"],
             TOLERANCES["cost_relative"])
    absolute("latency p50, s", sim["p50"], live["p50"], TOLERANCES["p50_seconds"], " s")
    relative("latency p99, s", sim["p99"], live["p99"], TOLERANCES["p99_relative"])
    absolute("steps over target (share)", sim["over_target"], live["over_target"], TOLERANCES["over_target_share"], "")
    live_counts = [step["policy_executors"] for step in live["steps"]]
    equal = float(np.mean([a == b for a, b in zip(sim["executors"], live_counts)]))
    rows.append({"figure": "mean executors (steps with equal counts)", "simulated": sim["mean_executors"],
                 "measured": float(np.mean(live_counts)), "difference": equal, "difference_text": f"{equal:.0%} equal",
                 "tolerance": f"at least {TOLERANCES['executors_equal_share']:.0%}",
                 "within": equal >= TOLERANCES["executors_equal_share"]})
    return rows


def print_steps(setup: dict, sim: dict, live: dict | None) -> None:
    """Print one row per step: the rate, the simulator's executors, worst latency and cost, and what was measured."""
    segment = setup["segment"]
    headers = ["step", "time", "rate/s", "sim exec", "sim worst s", "sim $"]
    if live:
        headers += ["live exec", "held exec", "live worst s", "live $", "readings"]

    table = []
    for index, rate in enumerate(segment.rates):
        moment = segment.start + pd.Timedelta(seconds=index * segment.trace_step)
        row = [index, f"{moment:%H:%M}", float(rate), sim["executors"][index], sim["worst_latency"][index], sim["cost"][index]]
        if live:
            step = live["steps"][index]
            row += [step["policy_executors"], step["held_executors"], step["worst_latency"], step["cost_per_second_prices"],
                    step["readings"]]
        table.append(row)
    print()
    print_table(headers, table)

    objective = setup["objective"]
    print(f"\nsimulator: cost ${sim['total_cost']:.4f}, p50 {sim['p50']:.2f} s, p99 {sim['p99']:.2f} s, "
          f"{sim['over_target']:.0%} of steps over {objective.latency_target:g} s, mean executors {sim['mean_executors']:.2f}")


def print_live(setup: dict, live: dict, rows: list[dict]) -> None:
    """Print the scaling events of the replay, the comparison with its tolerances, and the run's checks."""
    window = len(setup["segment"]) * setup["objective"].step_seconds
    print("\nscaling events around the replay (s after its start, s from the nearest step boundary):")
    for event in live["events"]:
        if -60 <= event["replay_seconds"] <= window + 60:
            print(f"  {event['replay_seconds']:7.1f} ({event['from_boundary']:+5.1f})  {event['executors_from']} -> "
                  f"{event['executors_to']}  {event['reason']}")

    print()
    print_table(["figure", "simulated", "measured", "difference", "tolerance", "within"],
                [[r["figure"], r["simulated"], r["measured"], r["difference_text"], r["tolerance"], r["within"]] for r in rows])

    timing = live["timing"]
    print(f"\nreadings replayed {live['published']['replay']:,}, stored exactly once: {live['exactly_once']}; "
          f"replay started {timing['start_minus_origin_s']:+.1f} s from the clock's origin "
          f"(decisions {timing['clock_offset_trace_s']:+.0f} s of trace time from the simulator's); "
          f"other processes used {live['machine_load']['other_cpu_pct']}% CPU (100% = one core)")


LIVE_KEYS = ("steps", "events", "timing", "window_cost", "window_cost_per_second_prices", "p50", "p99", "over_target",
             "published", "exactly_once", "machine_load")


def recorded_live(path: Path, setup: dict) -> dict:
    """Return the live part of an earlier run's JSON file, checking that it replayed the same segment and policy."""
    segment = setup["segment"]
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--from-json {path}: cannot read the recorded run: {exc}") from None
    if not isinstance(recorded, dict) or not recorded.get("live"):
        raise SystemExit(f"--from-json {path}: no live run recorded; pass a --json file of a run without --dry-run")

    live = recorded["live"]
    missing = [key for key in LIVE_KEYS if not isinstance(live, dict) or key not in live]
    if missing:
        raise SystemExit(f"--from-json {path}: the live run lacks {', '.join(missing)}; pass a file this script wrote")

    section = recorded.get("segment")
    rates = section.get("rates") if isinstance(section, dict) else None
    try:
        same_rates = rates is not None and len(rates) == len(segment.rates) and np.allclose(
            np.asarray(rates, dtype=float), segment.rates)
    except (TypeError, ValueError):
        same_rates = False
    if not same_rates:
        raise SystemExit(f"--from-json {path}: it replayed other rates than {segment.name}; pass the same --source, --day, "
                         f"--first-step, --steps and --peak-rate as that run")

    steps = live["steps"]
    if (not isinstance(steps, list) or len(steps) != len(segment.rates)
            or not all(isinstance(step, dict) and type(step.get("policy_executors")) is int for step in steps)):
        raise SystemExit(f"--from-json {path}: the live run must list {len(segment.rates)} steps with the executor "
                         f"count the policy set; pass a file this script wrote")

    arguments = recorded.get("arguments") if isinstance(recorded.get("arguments"), dict) else {}
    if arguments.get("load_scale") is not None and not math.isclose(float(arguments["load_scale"]), setup["load_scale"]):
        raise SystemExit(f"--from-json {path}: that run used --load-scale {arguments['load_scale']}; pass the same")
    policy = recorded.get("policy", {}).get("path") if isinstance(recorded.get("policy"), dict) else None
    if policy and Path(policy).name != setup["path"].name:
        raise SystemExit(f"--from-json {path}: that run used the policy {Path(policy).name}; pass the same --policy")
    return live


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup = load_setup(args)
    segment = setup["segment"]
    print(f"{segment.name}: steps {args.first_step}-{args.first_step + args.steps - 1} from {segment.start:%H:%M}, "
          f"{segment.rates.min():.0f}-{segment.rates.max():.0f} readings/s (peak setting {setup['peak_rate']:.0f}); "
          f"day events: {', '.join(setup['day'].events) or 'none'}", flush=True)
    print(f"policy {setup['path']}; tolerances: {TOLERANCES}", flush=True)
    sim = simulate(setup)
    live = rows = None
    if args.from_json:
        live = recorded_live(args.from_json, setup)
        rows = compare(sim, live)
    elif not args.dry_run:
        print(f"live replay: {args.steps} steps of {args.step_seconds:g} s after a warm-up", flush=True)
        if args.quiet_wait > 0:
            wait_for_quiet(args.quiet_wait)
        live = run_live(args, setup)
        rows = compare(sim, live)
    print_steps(setup, sim, live)
    with_live_counts = rows_with_live_counts = None
    if live:
        print_live(setup, live, rows)
        # The same comparison without the policy's decisions: the simulator uses the live counts.
        with_live_counts = simulate(setup, counts=[step["policy_executors"] for step in live["steps"]])
        rows_with_live_counts = compare(with_live_counts, live)
        print("\nthe simulator with the executor counts the policy set live:")
        print_table(["figure", "simulated", "measured", "difference", "tolerance", "within"],
                    [[r["figure"], r["simulated"], r["measured"], r["difference_text"], r["tolerance"], r["within"]]
                     for r in rows_with_live_counts[:-1]])
    write_json(args.json, {
        "machine": machine_info(),
        "arguments": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        "policy": {"path": str(setup["path"]), "meta": setup["meta"]},
        "calibration": setup["calibration"].as_dict(),
        "prices": vars(setup["prices"]),
        "objective": vars(setup["objective"]),
        "tolerances": TOLERANCES,
        "segment": {"name": segment.name, "day": setup["day"].name, "events": list(setup["day"].events),
                    "start": str(segment.start), "trace_step": segment.trace_step, "day_start": setup["day_start"],
                    "peak_rate": setup["peak_rate"], "rates": segment.rates.tolist()},
        "simulated": sim,
        "live": live,
        "comparison": rows,
        "simulated_with_live_counts": with_live_counts,
        "comparison_with_live_counts": rows_with_live_counts,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
