"""End-to-end latency of the running pipeline at a fixed input rate, on a tuned Mosquitto.

The script starts a tuned Mosquitto on a free loopback port and ``python -m sparkiot run
CONFIG --quiet`` (the ingest process and the Spark job) against it, then three processes of its
own:

* a publisher: ``--rate`` readings/s (default 1,000), one reading per message, QoS 1, MQTT 5,
  over 50 series (device ``dev-NN``, metric ``temp``, 20 readings/s each), values uniform in
  20 +/- 1 (so normal readings never reach a z-score of 4), ``ts`` = the wall clock at the
  publish call. After the detector's warm-up (5 s), every 0.5 s one reading of one series, in
  turn, is a spike of +50. The publisher stamps the wall clock right before each spike's
  ``publish`` call and records every reading's ``ts``;
* an alert subscriber on the alert topic, which stamps each alert's arrival. An alert carries
  its reading's device and event time, and these identify the spike;
* a table poller (this process): every ``--poll`` seconds it lists ``tables/windows`` for new
  partition directories (a partition appears whole, renamed from Spark's staging folder) and
  records when it first sees each window's rows.

(a) Alert latency: spike publish call -> alert received by the subscriber.
(b) Window latency: publish call of the first reading whose event time reaches the window's end
    plus the watermark delay (the reading that lets Spark's watermark pass the window), to the
    moment the poller first sees that window's rows. The poll interval adds up to ``--poll``.

Only spikes and windows inside the measured span count: it starts ``--settle`` seconds after the
Spark job committed its first windows batch and lasts ``--measure`` seconds.

    python benchmarks/latency.py --json results/latency.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil  # noqa: E402

from _common import (  # noqa: E402
    CpuAccount,
    TunedMosquitto,
    machine_info,
    percentile,
    print_table,
    python,
    wait_for_quiet,
    write_json,
)

ALERT_P99_TARGET_MS = 275.0
SERIES = 50
SPIKE_EVERY_S = 0.5
DETECTOR_WARMUP_S = 5.0


# -- child: publisher -------------------------------------------------------------------------


def run_publisher(args: list[str]) -> int:
    """Publish at a fixed rate until a line arrives on stdin; then print the records as JSON."""
    from sparkiot.ingest.mqtt_client import connect_publisher

    broker, topic_prefix, rate, out_file = args[0], args[1], float(args[2]), Path(args[3])
    client = connect_publisher(broker, protocol="5")
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    rng = random.Random(11)
    topics = [f"{topic_prefix}/dev-{index:02d}" for index in range(SERIES)]
    devices = [f"dev-{index:02d}" for index in range(SERIES)]
    spike_every = int(round(rate * SPIKE_EVERY_S))
    first_spike = int(rate * DETECTOR_WARMUP_S)
    spikes: dict[str, float] = {}
    ts_list: list[int] = []
    started = time.monotonic()
    index = 0
    late_sends = 0
    print("publishing", flush=True)
    while not stop.is_set():
        due = started + index / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        elif now - due > 0.05:
            late_sends += 1
        series = index % SERIES
        spike_number, offset = divmod(index - first_spike, spike_every) if index >= first_spike else (-1, -1)
        # Spike k falls on series k mod 50 (the index k * spike_every is a multiple of 50).
        is_spike = index >= first_spike and offset == spike_number % SERIES
        value = 70.0 if is_spike else round(20.0 + rng.uniform(-1.0, 1.0), 4)
        reading_id = f"r{index}"
        stamp = time.time()
        ts_us = int(stamp * 1_000_000)
        payload = json.dumps({"id": reading_id, "device_id": devices[series], "metric": "temp", "ts": ts_us,
                              "value": value}, separators=(",", ":"))
        if is_spike:
            spikes[f"{devices[series]} {ts_us}"] = time.time()
        client.publish(topics[series], payload, qos=1)
        ts_list.append(ts_us)
        index += 1
    elapsed = time.monotonic() - started
    client.disconnect()
    client.loop_stop()
    out_file.write_text(json.dumps({"published": index, "seconds": elapsed, "late_sends": late_sends, "spikes": spikes,
                                    "ts_us": ts_list}))
    print("done", flush=True)
    return 0


# -- child: alert subscriber ------------------------------------------------------------------


def run_alert_subscriber(args: list[str]) -> int:
    """Print ``device_id ts_us receive_time`` for each alert until stdin closes."""
    from sparkiot.ingest.mqtt_client import new_client, parse_broker_url

    broker, topic = args[0], args[1]
    host, port = parse_broker_url(broker)
    client = new_client(f"bench-alerts-{uuid.uuid4().hex[:8]}", protocol="5")
    subscribed = threading.Event()
    lock = threading.Lock()

    def on_connect(client, userdata, flags, reason_code, properties) -> None:
        client.subscribe(topic, qos=1)

    def on_message(client, userdata, message) -> None:
        received = time.time()
        try:
            alert = json.loads(message.payload)
            key = f"{alert['device_id']} {int(alert['ts_us'])}"
        except (ValueError, KeyError, TypeError):
            key = "? 0"
        with lock:
            sys.stdout.write(f"{key} {received:.6f}\n")
            sys.stdout.flush()

    client.on_connect = on_connect
    client.on_subscribe = lambda *args: subscribed.set()
    client.on_message = on_message
    client.connect(host, port, keepalive=30)
    client.loop_start()
    if not subscribed.wait(10):
        return 1
    with lock:
        print("ready", flush=True)
    sys.stdin.read()
    client.disconnect()
    client.loop_stop()
    return 0


# -- parent -----------------------------------------------------------------------------------


class WindowPoller:
    """Records when each window's rows first appear under ``tables/windows``."""

    def __init__(self, table: Path, interval: float) -> None:
        self.table = table
        self.interval = interval
        self.first_seen: dict[int, float] = {}  # window_start in microseconds -> wall time
        self.batches_seen = 0
        self._known: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        while not self._stop.is_set():
            seen = time.time()
            for directory in self._new_partitions():
                starts = set()
                for file in sorted(directory.glob("*.parquet")):
                    try:
                        column = pq.read_table(file, columns=["window_start"]).column("window_start")
                    except (OSError, ValueError):
                        continue
                    starts.update(column.cast(pa.int64()).to_pylist())
                for start in starts:
                    self.first_seen.setdefault(start, seen)
                self.batches_seen += 1
            self._stop.wait(self.interval)

    def _new_partitions(self) -> list[Path]:
        found = []
        try:
            dates = [entry for entry in os.scandir(self.table) if entry.is_dir() and entry.name.startswith("date=")]
        except FileNotFoundError:
            return found
        for date in dates:
            try:
                batches = [entry for entry in os.scandir(date.path) if entry.is_dir() and entry.name.startswith("batch_id=")]
            except FileNotFoundError:
                continue
            for batch in batches:
                if batch.path not in self._known:
                    self._known.add(batch.path)
                    found.append(Path(batch.path))
        return found


def write_config(workdir: Path, broker: str, run: str, watermark: float, window: float) -> Path:
    config = workdir / "pipeline.yaml"
    config.write_text(
        "\n".join(
            [
                "name: bench-latency",
                f"data_dir: {workdir / 'data'}",
                "source:",
                f"  broker: {broker}",
                f"  topics: ['bench/{run}/#']",
                f"  client_id: sparkiot-bench-latency-{run}",
                "  session_expiry: 10m",
                f"watermark: {int(watermark * 1000)}ms",
                "codec:",
                # The configuration requires max_future below the watermark delay.
                f"  max_future: {int(watermark * 500)}ms",
                "windows:",
                f"  - size: {int(window * 1000)}ms",
                "anomaly:",
                "  window: 60",
                "  warmup: 30",
                "  threshold: 4.0",
                f"  alert_topic: bench-alerts/{run}",
                "spark:",
                "  master: local[2]",
                "  trigger: 1s",
                "  side_trigger: 5s",
            ]
        )
        + "\n"
    )
    return config


def stop_tree(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM the pipeline process (it stops its ingest and Spark in order); kill its tree after ``timeout``."""
    if process.poll() is not None:
        return
    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for child in descendants:
        try:
            if child.is_running():
                child.kill()
        except psutil.Error:
            pass


def checkpoint_batches(data_dir: Path, query: str) -> list[tuple[int, float, float]]:
    """``(batch_id, start, end)`` of each micro-batch of ``query``, from its checkpoint files.

    Spark writes ``offsets/N`` when batch N starts and ``commits/N`` when it ends; their
    modification times give each batch's duration.
    """
    folder = data_dir / "checkpoints" / query
    batches = []
    for commit in (folder / "commits").glob("[0-9]*"):
        offsets = folder / "offsets" / commit.name
        try:
            batches.append((int(commit.name), offsets.stat().st_mtime, commit.stat().st_mtime))
        except (OSError, ValueError):
            continue
    return sorted(batches)


def batch_summary(batches: list[tuple[int, float, float]], start: float, end: float) -> dict:
    inside = [batch for batch in batches if start <= batch[1] < end]
    durations = [1000 * (finish - begin) for _, begin, finish in inside]
    gaps = [1000 * (later[1] - earlier[1]) for earlier, later in zip(inside, inside[1:])]
    return {
        "batches": len(inside),
        "duration_p50_ms": _round(percentile(durations, 50)),
        "duration_p99_ms": _round(percentile(durations, 99)),
        "start_interval_p50_ms": _round(percentile(gaps, 50)),
    }


def summarize(values_ms: list[float]) -> dict:
    return {
        "count": len(values_ms),
        "p50_ms": _round(percentile(values_ms, 50)),
        "p90_ms": _round(percentile(values_ms, 90)),
        "p99_ms": _round(percentile(values_ms, 99)),
        "max_ms": _round(max(values_ms) if values_ms else None),
        "min_ms": _round(min(values_ms) if values_ms else None),
    }


def _round(value):
    return round(value, 1) if value is not None else None


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_publisher":
        return run_publisher(sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "_alerts":
        return run_alert_subscriber(sys.argv[2:])

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="readings (= messages) per second (default 1000)")
    parser.add_argument("--measure", type=float, default=150.0, help="seconds of the measured span (default 150)")
    parser.add_argument("--settle", type=float, default=15.0,
                        help="seconds between the first windows batch and the measured span (default 15)")
    parser.add_argument("--window", type=float, default=2.0, help="tumbling window size in seconds (default 2)")
    parser.add_argument("--watermark", type=float, default=1.0, help="watermark delay in seconds (default 1)")
    parser.add_argument("--poll", type=float, default=0.05, help="table poll interval in seconds (default 0.05)")
    parser.add_argument("--quiet-wait", type=float, default=60.0, help="seconds to wait for other processes to go idle")
    parser.add_argument("--json", help="write the results as JSON to this file")
    args = parser.parse_args()

    run = uuid.uuid4().hex[:8]
    wait_for_quiet(args.quiet_wait)
    with TunedMosquitto() as broker, tempfile.TemporaryDirectory(prefix="sparkiot-bench-latency-") as folder:
        workdir = Path(folder)
        config = write_config(workdir, broker.url, run, args.watermark, args.window)
        data_dir = workdir / "data"
        alerts_child = subprocess.Popen([python(), __file__, "_alerts", broker.url, f"bench-alerts/{run}"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        if alerts_child.stdout.readline().strip() != "ready":
            raise RuntimeError("the alert subscriber did not start")
        alert_lines: list[str] = []
        threading.Thread(target=lambda: alert_lines.extend(alerts_child.stdout), daemon=True).start()

        started = time.time()
        with open(workdir / "run.log", "ab") as log:
            pipeline = subprocess.Popen([python(), "-m", "sparkiot", "run", str(config), "--quiet"], stdout=log, stderr=log)
        publisher = None
        poller = WindowPoller(data_dir / "tables" / "windows", args.poll)
        try:
            from sparkiot.ingest.consumer import read_counters

            deadline = time.monotonic() + 120
            while not read_counters(data_dir).get("connected"):
                if pipeline.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the ingest did not connect; see {workdir / 'run.log'}")
                time.sleep(0.1)
            time.sleep(0.5)
            publish_file = workdir / "published.json"
            publisher = subprocess.Popen(
                [python(), __file__, "_publisher", broker.url, f"bench/{run}", str(args.rate), str(publish_file)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
            )
            publisher.stdout.readline()
            poller.start()
            print(f"publishing {args.rate:g} readings/s; waiting for the Spark job's first windows ...", flush=True)
            commits = data_dir / "checkpoints" / "windows" / "commits"
            while not (commits.exists() and any(commits.iterdir())):
                if pipeline.poll() is not None or time.monotonic() > deadline + 120:
                    raise RuntimeError(f"the Spark job wrote no windows; see {workdir / 'run.log'}")
                time.sleep(0.2)
            spark_ready = time.time()
            measure_start = spark_ready + args.settle
            measure_end = measure_start + args.measure
            print(f"Spark ready {spark_ready - started:.1f} s after start; measuring for {args.measure:g} s "
                  f"after {args.settle:g} s of settling ...", flush=True)
            time.sleep(max(measure_start - time.time(), 0))
            account = CpuAccount()
            time.sleep(max(measure_end - time.time(), 0))
            machine = account.read()
            # The readings that close the last windows of the measured span come after its end,
            # so publishing goes on a little longer.
            time.sleep(args.window + args.watermark + 8)
            publisher.stdin.write("stop\n")
            publisher.stdin.flush()
            publisher.stdout.readline()
            publisher.wait(timeout=30)
            time.sleep(2)
            counters = read_counters(data_dir)
            spark_batches = {query: batch_summary(checkpoint_batches(data_dir, query), measure_start, measure_end)
                             for query in ("readings", "windows")}
        except BaseException:
            log_text = (workdir / "run.log").read_text(errors="replace")
            print(f"the pipeline's output (last 3000 characters):\n{log_text[-3000:]}", file=sys.stderr)
            raise
        finally:
            poller.stop()
            if publisher is not None and publisher.poll() is None:
                publisher.kill()
            stop_tree(pipeline, timeout=90)
            alerts_child.stdin.close()
            try:
                alerts_child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                alerts_child.kill()
        published = json.loads(publish_file.read_text())

    # (a) alerts
    received = {}
    for line in alert_lines:
        parts = line.split()
        if len(parts) == 3:
            received.setdefault(f"{parts[0]} {parts[1]}", float(parts[2]))
    spikes = published["spikes"]
    measured_spikes = {rid: sent for rid, sent in spikes.items() if measure_start <= sent < measure_end}
    alert_ms = [1000 * (received[rid] - sent) for rid, sent in measured_spikes.items() if rid in received]
    missing_alerts = [rid for rid in measured_spikes if rid not in received]
    unexpected_alerts = [rid for rid in received if rid not in spikes]

    # (b) windows
    import numpy as np

    ts = np.asarray(published["ts_us"], dtype=np.int64)
    window_us, delay_us = int(args.window * 1e6), int(args.watermark * 1e6)
    window_ms = []
    for start_us, seen in sorted(poller.first_seen.items()):
        closing_us = start_us + window_us + delay_us
        position = int(np.searchsorted(ts, closing_us, side="left"))
        if position >= len(ts):
            continue
        closer_us = int(ts[position])
        if not measure_start <= closer_us / 1e6 < measure_end:
            continue
        window_ms.append(1000 * (seen - closer_us / 1e6))

    results = {
        "benchmark": "latency",
        "machine": machine_info(),
        "settings": {"rate": args.rate, "series": SERIES, "qos": 1, "mqtt": "5", "spike_every_s": SPIKE_EVERY_S,
                     "window_s": args.window, "watermark_s": args.watermark, "trigger_s": 1.0, "master": "local[2]",
                     "poll_s": args.poll, "measure_s": args.measure, "settle_s": args.settle},
        "spark_ready_after_s": round(spark_ready - started, 1),
        "published": published["published"],
        "publish_rate": round(published["published"] / published["seconds"], 1),
        "publisher_late_sends": published["late_sends"],
        "ingest_counters": {key: counters.get(key) for key in ("messages", "readings", "late", "alerts", "batches")},
        "cpu_during_measurement": machine,
        "alerts": {**summarize(alert_ms), "spikes_measured": len(measured_spikes), "missing": len(missing_alerts),
                   "unexpected": len(unexpected_alerts)},
        "alert_target_p99_ms": ALERT_P99_TARGET_MS,
        "windows": {**summarize(window_ms), "partitions_seen": poller.batches_seen},
        "spark_batches": spark_batches,
    }
    alert_p99 = results["alerts"]["p99_ms"]
    results["alert_target_met"] = alert_p99 is not None and alert_p99 < ALERT_P99_TARGET_MS and not missing_alerts

    print()
    print(f"input {results['publish_rate']:,.0f} readings/s (QoS 1, one reading per message); "
          f"other processes {machine['other_cpu_pct']}% CPU during the measured span")
    rows = []
    for name, summary in (("alert (publish -> alert received)", results["alerts"]),
                          ("window (closing reading -> row readable)", results["windows"])):
        rows.append([name, summary["count"], summary["p50_ms"], summary["p90_ms"], summary["p99_ms"], summary["max_ms"]])
    print_table(["path", "samples", "p50 ms", "p90 ms", "p99 ms", "max ms"], rows)
    for query, summary in spark_batches.items():
        print(f"Spark query {query}: {summary['batches']} micro-batches in the measured span, duration p50 "
              f"{summary['duration_p50_ms']} ms, p99 {summary['duration_p99_ms']} ms; "
              f"one started every {summary['start_interval_p50_ms']} ms (p50)")
    print(f"alert p99 target < {ALERT_P99_TARGET_MS:g} ms: {'met' if results['alert_target_met'] else 'not met'}"
          f" ({len(missing_alerts)} spikes without an alert, {len(unexpected_alerts)} alerts without a spike)")
    write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
