"""Control plane start times: warm submit-to-first-batch, and cold start from idle to the first batch.

The script runs ``sparkiot serve`` as a child process against a tuned Mosquitto on a free loopback
port, with a standalone cluster of one worker (3 cores, 3 GiB) and pipelines of 1-core, 512 MiB
executors. Three figures, side by side in one run:

* **always on** (the baseline): a runtime that is already running. The time runs from the
  publish call of one message of 100 readings to the end of the micro-batch that stored them;
* **warm submit**: the control plane and the cluster are up, and readings arrive every 100 ms on
  the pipeline's topic. The time runs from the submit request to the end of the first
  micro-batch with rows: the ingest's start, the Spark session, the queries and the first batch;
* **cold start**: a pipeline scaled to zero (``idle_timeout`` passed); from the publish call of a
  message of 100 readings to the end of the micro-batch that stored them. Measured twice: with
  the cluster kept up (``stop_when_idle: false``) and with the cluster stopped too, as a
  pipeline alone on the control plane leaves it.

Times of batch ends come from the runtime's ``status.json`` (``first_batch_at``) and batch log.

    python benchmarks/serverless_start.py --runs 4 --json results/serverless-start.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import TunedMosquitto, machine_info, percentile, print_table, write_json  # noqa: E402
from _serve import ServeProcess, pipeline_spec, wait  # noqa: E402

WORKERS = [{"cores": 3, "memory": "3GiB"}]


def publish_burst(client, topic: str, tag: str) -> float:
    rows = [{"device_id": f"dev-{i % 10}", "metric": "load", "ts": time.time_ns() // 1000, "value": float(i),
             "id": f"{tag}-{i}"} for i in range(100)]
    sent = time.time()
    client.publish(f"{topic}/burst", json.dumps(rows).encode(), qos=1).wait_for_publish(timeout=30)
    return sent


def batch_end_after(serve: ServeProcess, name: str, after: float, timeout: float = 240) -> float:
    """Return the completion time of the first readings batch with rows that ended after ``after``."""
    log = serve.runtime_dir(name) / "batches.jsonl"
    found: list[float] = []

    def seen() -> bool:
        try:
            lines = log.read_text().splitlines()
        except OSError:
            return False
        found[:] = [json.loads(line)["done"] for line in lines
                    if line and json.loads(line)["query"] == "readings" and json.loads(line)["rows"] > 0
                    and json.loads(line)["done"] > after]
        return bool(found)

    wait(seen, timeout, f"a batch of {name} after the publish")
    return min(found)


def measure_cold(serve: ServeProcess, broker: str, publisher, runs: int, label: str) -> list[dict]:
    name, topic = f"cold-{label}", f"bench/cold-{label}"
    serve.client.submit(pipeline_spec(name, broker, topic, idle_timeout="5s", scaling={"policy": "fixed"}))
    results = []
    for run in range(runs):
        wait(lambda: serve.client.status(name)["state"] == "idle", 300, f"{name} to scale to zero")
        time.sleep(2.0)
        sent = publish_burst(publisher, topic, f"{label}-{run}")
        done = batch_end_after(serve, name, sent)
        start = serve.client.status(name)["starts"][-1]
        results.append({"run": run, "publish_to_batch_s": done - sent, "control_plane_s": start["seconds"],
                        "ready_s": start["ready_seconds"]})
        print(f"  cold ({label}) run {run}: {done - sent:.1f} s from publish to stored "
              f"(runtime ready after {start['ready_seconds']:.1f} s)", flush=True)
    serve.client.stop(name)
    wait(lambda: serve.client.status(name)["state"] == "stopped", 300, f"{name} to stop")
    return results


def measure_warm(serve: ServeProcess, broker: str, publisher, runs: int) -> tuple[list[dict], list[float]]:
    warm, always_on = [], []
    for run in range(runs):
        name, topic = f"warm-{run}", f"bench/warm-{run}"
        stop_trickle = _trickle(publisher, topic)
        submitted = time.time()
        serve.client.submit(pipeline_spec(name, broker, topic, idle_timeout=None, scaling={"policy": "fixed"}))
        wait(lambda: serve.runner_status(name).get("first_batch_at") is not None, 300, f"{name}'s first batch")
        first = serve.runner_status(name)["first_batch_at"]
        warm.append({"run": run, "submit_to_first_batch_s": first - submitted})
        print(f"  warm submit run {run}: first batch {first - submitted:.1f} s after the submit", flush=True)
        stop_trickle()
        time.sleep(3.0)
        # The baseline on the same running pipeline: publish to stored, runtime already up.
        for probe in range(3):
            sent = publish_burst(publisher, topic, f"on-{run}-{probe}")
            always_on.append(batch_end_after(serve, name, sent) - sent)
            time.sleep(1.5)
        serve.client.stop(name)
        wait(lambda: serve.client.status(name)["state"] == "stopped", 300, f"{name} to stop")
    return warm, always_on


def _trickle(publisher, topic: str):
    """Publish one reading every 100 ms until the returned function is called."""
    import threading

    stop = threading.Event()

    def run() -> None:
        count = 0
        while not stop.is_set():
            row = {"device_id": "trickle", "metric": "load", "ts": time.time_ns() // 1000, "value": 1.0, "id": f"t{count}"}
            publisher.publish(f"{topic}/trickle", json.dumps(row).encode(), qos=1)
            count += 1
            stop.wait(0.1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def halt() -> None:
        stop.set()
        thread.join()

    return halt


def summary(values: list[float]) -> dict:
    return {"n": len(values), "median": percentile(values, 50), "min": min(values), "max": max(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4, help="measurements of each kind (default 4)")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()

    from sparkiot.ingest.mqtt_client import connect_publisher

    results: dict = {"machine": machine_info(), "runs": args.runs}
    with TunedMosquitto() as broker, tempfile.TemporaryDirectory(prefix="sparkiot-bench-serve-") as folder:
        publisher = connect_publisher(broker.url)
        try:
            print("warm submit and always-on (cluster kept up)", flush=True)
            with ServeProcess(Path(folder) / "warm", workers=WORKERS, stop_when_idle=False) as serve:
                warm, always_on = measure_warm(serve, broker.url, publisher, args.runs)
                print("cold start, cluster kept up", flush=True)
                cold_up = measure_cold(serve, broker.url, publisher, args.runs, "cluster-up")
            print("cold start, cluster stopped while idle", flush=True)
            with ServeProcess(Path(folder) / "cold", workers=WORKERS, stop_when_idle=True) as serve:
                cold_down = measure_cold(serve, broker.url, publisher, args.runs, "cluster-down")
        finally:
            publisher.disconnect()
            publisher.loop_stop()

    rows = []
    for label, values in (
        ("always on: publish to stored (baseline)", always_on),
        ("warm: submit to first batch", [r["submit_to_first_batch_s"] for r in warm]),
        ("cold, cluster up: publish to stored", [r["publish_to_batch_s"] for r in cold_up]),
        ("cold, cluster up: runtime ready", [r["ready_s"] for r in cold_up]),
        ("cold, cluster stopped: publish to stored", [r["publish_to_batch_s"] for r in cold_down]),
        ("cold, cluster stopped: runtime ready", [r["ready_s"] for r in cold_down]),
    ):
        stats = summary(values)
        results[label] = stats
        rows.append([label, stats["n"], stats["median"], stats["min"], stats["max"]])
    results["warm"], results["cold_cluster_up"], results["cold_cluster_down"] = warm, cold_up, cold_down
    print()
    print_table(["seconds", "n", "median", "min", "max"], rows)
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
