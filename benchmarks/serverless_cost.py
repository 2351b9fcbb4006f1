"""The cost of one day of real demand under three executor regimes, with each regime's latency.

The load is NAB's ``nyc_taxi.csv`` (New York taxi passengers per 30 minutes, read in place from
the shared data folder; sparkiot ships no copy). One day of it, 48 half-hour slots, is replayed
with each slot compressed to ``--slot-seconds`` and the passenger count scaled so that the
day's peak is ``--peak-rate`` readings per second (linear between slots).

The script runs ``sparkiot serve`` as a child process (standalone cluster: one worker, 4 cores,
4 GiB; executors of 1 core and 512 MiB) against a tuned Mosquitto, and replays the same day
three times:

* **static for the peak**: ``--peak-executors`` executors all day;
* **static for the mean**: ``ceil(peak_executors * mean / peak)`` executors all day;
* **target tracking**: sparkiot's default policy, from 1 up to ``--peak-executors``.

For each regime the script reports the bill of the whole run on every platform's price table
(from the control plane) and the bill of the replay window alone (the ledger clipped to it). It
also reports the mean executors held during the replay, and the latency of every reading from
its receipt by the ingest to the end of the micro-batch that stored it (p50, p99). Every reading published must be stored exactly once.
Before the replay, 200 warm-up readings go through each pipeline and are left out of the latency.

    python benchmarks/serverless_cost.py --json results/serverless-cost.json
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

from _common import TunedMosquitto, machine_info, print_table, write_json  # noqa: E402
from _serve import RatePublisher, ServeProcess, pipeline_spec, reading_latencies, wait  # noqa: E402

WORKERS = [{"cores": 4, "memory": "4GiB"}]


def find_trace(path: str | None) -> Path:
    if path:
        return Path(path)
    configured = os.environ.get("SPARKIOT_SHARED_DATA")
    roots = [Path(configured)] if configured else [parent / "shared" / "data" for parent in Path(__file__).resolve().parents]
    for root in roots:
        candidate = root / "nab" / "realKnownCause" / "nyc_taxi.csv"
        if candidate.exists():
            return candidate
    raise SystemExit("nyc_taxi.csv not found: pass --trace PATH or set SPARKIOT_SHARED_DATA to the shared data folder")


def day_of(trace: Path, day: str) -> np.ndarray:
    frame = pd.read_csv(trace, parse_dates=["timestamp"])
    values = frame[frame["timestamp"].dt.strftime("%Y-%m-%d") == day]["value"].to_numpy(dtype=float)
    if len(values) != 48:
        raise SystemExit(f"{trace} has {len(values)} half-hour slots on {day}, not 48; choose another --day")
    return values


def rate_function(values: np.ndarray, slot_seconds: float, peak_rate: float):
    scaled = values / values.max() * peak_rate
    times = np.arange(len(scaled)) * slot_seconds
    length = len(scaled) * slot_seconds

    def rate(t: float) -> float:
        if t >= length:
            return 0.0
        return float(np.interp(t, times, scaled))

    return rate, length


def clipped_holdings(ledger: Path, start: float, end: float):
    from sparkiot.serverless.metering import Holding

    opened: dict[tuple, dict] = {}
    holdings = []
    for line in ledger.read_text().splitlines():
        record = json.loads(line)
        key = (record["epoch"], record["id"])
        if record["event"] == "start":
            opened[key] = record
        elif key in opened:
            begin = opened.pop(key)
            holdings.append((begin, record["time"]))
    holdings += [(begin, end) for begin in opened.values()]
    result = []
    for begin, stop in holdings:
        lo, hi = max(begin["time"], start), min(stop, end)
        if hi > lo:
            result.append(Holding(begin["kind"], begin["id"], begin["cores"], begin["memory_mib"], lo, hi))
    return result


def run_regime(serve: ServeProcess, broker: str, label: str, serverless: dict, rate, length: float) -> dict:
    from sparkiot.ingest.consumer import read_counters
    from sparkiot.serverless.metering import load_prices, price

    name, topic = f"taxi-{label}", f"bench/taxi-{label}"
    serve.client.submit(pipeline_spec(name, broker, topic, idle_timeout=None, **serverless))
    data_dir = Path(serve.client.status(name)["data_dir"])
    wait(lambda: read_counters(data_dir).get("subscribed"), 120, "the ingest to subscribe")
    wait(lambda: serve.client.status(name)["state"] == "running", 300, f"{name} to run")
    # Warm-up: the first batch on fresh executors starts their Python workers, which takes
    # seconds. The replay is measured on a warm runtime, as a long-running pipeline would be.
    warmup = RatePublisher(broker, topic, lambda t: 50.0 if t < 4 else 0.0, prefix="w").start()
    time.sleep(4.5)
    warmup.stop()
    wait(lambda: len(_stored(data_dir)) >= warmup.sent, 180, f"{name} to store the warm-up readings")
    publisher = RatePublisher(broker, topic, rate).start()
    start = time.time()
    samples = []
    while time.monotonic() - publisher.started < length:
        status = serve.client.status(name)
        samples.append((time.time() - start, status["executors"], status["progress"]["backlog"]))
        time.sleep(2.0)
    publisher.stop()
    end = time.time()
    wait(lambda: serve.client.status(name)["progress"]["backlog"] == 0, 600, f"{name} to catch up")
    caught_up = time.time()
    expected = publisher.sent + warmup.sent
    wait(lambda: len(_stored(data_dir)) >= expected, 120, f"{name}'s table to hold every reading")
    serve.client.stop(name)
    wait(lambda: serve.client.status(name)["state"] == "stopped", 300, f"{name} to stop")

    stored = _stored(data_dir)
    latencies = reading_latencies(data_dir, serve.runtime_dir(name), since=start)
    prices = load_prices()
    window = clipped_holdings(serve.runtime_dir(name) / "ledger.jsonl", start, end)
    executor_seconds = sum(h.seconds for h in window if h.kind == "executor")
    result = {
        "regime": label,
        "published": publisher.sent + warmup.sent,
        "replayed": publisher.sent,
        "stored": len(stored),
        "distinct": len(set(stored)),
        "catch_up_s": caught_up - end,
        "mean_executors": executor_seconds / (end - start),
        "max_executors": max(sample[1] for sample in samples),
        "latency_p50_s": float(np.percentile(latencies, 50)),
        "latency_p99_s": float(np.percentile(latencies, 99)),
        "latency_max_s": float(latencies.max()),
        "run_bill": {key: serve.client.cost(name, key)["exact"] for key in prices.platforms},
        "window_bill": {key: str(price(window, prices, key).usd) for key in prices.platforms},
        "samples": samples,
    }
    print(f"  {label}: {publisher.sent} readings, p99 {result['latency_p99_s']:.2f} s, "
          f"mean executors {result['mean_executors']:.2f}, EMR ${float(result['run_bill']['emr_serverless']):.4f}", flush=True)
    return result


def _stored(data_dir: Path) -> list[str]:
    path = data_dir / "tables" / "readings"
    if not path.exists() or not any(path.rglob("*.parquet")):
        return []
    try:
        return pd.read_parquet(path, columns=["msg_id"])["msg_id"].tolist()
    except (OSError, ValueError):
        # A micro-batch is writing its files right now; the callers poll again.
        return []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", help="path of nyc_taxi.csv (default: found in the shared data folder)")
    parser.add_argument("--day", default="2014-10-15", help="the day to replay (default 2014-10-15, a Wednesday)")
    parser.add_argument("--slot-seconds", type=float, default=5.0, help="seconds each half-hour slot lasts (default 5)")
    parser.add_argument("--peak-rate", type=float, default=1000.0, help="readings per second at the day's peak (default 1000)")
    parser.add_argument("--peak-executors", type=int, default=3, help="executors of the static-for-peak regime (default 3)")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()

    values = day_of(find_trace(args.trace), args.day)
    rate, length = rate_function(values, args.slot_seconds, args.peak_rate)
    mean_executors = max(1, math.ceil(args.peak_executors * values.mean() / values.max()))
    regimes = [
        ("static-peak", {"initial_executors": args.peak_executors, "min_executors": args.peak_executors,
                         "max_executors": args.peak_executors, "scaling": {"policy": "fixed"}}),
        ("static-mean", {"initial_executors": mean_executors, "min_executors": mean_executors,
                         "max_executors": mean_executors, "scaling": {"policy": "fixed"}}),
        ("target-tracking", {"initial_executors": 1, "min_executors": 1, "max_executors": args.peak_executors,
                             "scaling": {"policy": "target_tracking"}}),
    ]
    print(f"{args.day}: mean/peak {values.mean() / values.max():.2f}, replayed in {length:.0f} s, "
          f"peak {args.peak_rate:g} readings/s; static-for-mean holds {mean_executors} executors", flush=True)
    results: dict = {"machine": machine_info(), "day": args.day, "slot_seconds": args.slot_seconds,
                     "peak_rate": args.peak_rate, "peak_executors": args.peak_executors,
                     "mean_executors_static": mean_executors, "regimes": []}
    with TunedMosquitto() as broker, tempfile.TemporaryDirectory(prefix="sparkiot-bench-cost-") as folder:
        with ServeProcess(Path(folder), workers=WORKERS, stop_when_idle=False) as serve:
            for label, serverless in regimes:
                results["regimes"].append(run_regime(serve, broker.url, label, serverless, rate, length))

    base = results["regimes"][0]
    rows = []
    for result in results["regimes"]:
        emr = float(result["window_bill"]["emr_serverless"])
        rows.append([result["regime"], result["published"], result["stored"] == result["distinct"] == result["published"],
                     result["mean_executors"], result["latency_p50_s"], result["latency_p99_s"],
                     float(result["run_bill"]["emr_serverless"]), float(result["run_bill"]["dataproc_serverless"]),
                     float(result["run_bill"]["synapse"]), emr / float(base["window_bill"]["emr_serverless"])])
    print()
    print_table(["regime", "readings", "exactly once", "mean exec", "p50 s", "p99 s", "EMR $", "Dataproc $", "Synapse $",
                 "window cost vs peak"], rows)
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
