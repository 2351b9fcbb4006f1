"""Sustained ingest throughput: MQTT (tuned Mosquitto) -> sparkiot ingest -> fsynced landing log.

Two consumers are measured on the same load, each on a fresh tuned Mosquitto (free loopback
port):

* ``baseline``: a bare paho subscriber (MQTT 5, manual acknowledgement) that acknowledges each
  message in its callback and does nothing else: no decoding, no landing log, no fsync;
* ``ingest``: ``python -m sparkiot ingest CONFIG --broker URL``, the process the pipeline runs,
  with a persistent session. Its readings are counted from the landing log's offsets
  (``LogReader.end_offset()``), polled every 50 ms.

Publishers are separate processes sending pre-built JSON arrays of N single-reading objects
(1,000 series) with QoS 1 over MQTT 5, at most 2,000 unacknowledged messages each. Two modes:

* ``live``: the publishers send as fast as the broker acknowledges for ``--seconds`` while the
  consumer runs. The figure is the consumer's rate from ``--warmup`` seconds after the start to
  the end of publishing. On 2 cores the publishers compete with the consumer for CPU.
* ``backlog``: the consumer connects once, to create its session and subscription, and leaves.
  The publishers queue ``--backlog-readings`` readings at the broker and exit. Then the consumer
  comes back and drains the queue with no publisher running. The figure is its rate from its
  first count increase to the last.

Rates are measured from one count increase to another inside the window, so whole group
commits are counted over the time they took. CPU shares are CPU seconds used in the window
divided by its length (100% = one core); ``cpu others`` is every process outside this
benchmark's tree, which on a shared machine lowers the figures.

    python benchmarks/ingest_throughput.py --json results/ingest.json
"""

from __future__ import annotations

import argparse
import json
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
    print_table,
    python,
    stop_process,
    wait_for_quiet,
    write_json,
)

TARGET_READINGS_PER_S = 50_000
SERIES = 1000
MAX_UNACKED = 2000
POLL_S = 0.05


# -- child: publisher -------------------------------------------------------------------------


def build_payloads(size: int, count: int, seed: int) -> list[bytes]:
    """Return ``count`` JSON arrays of ``size`` single-reading objects over 1,000 series, times near now."""
    rng = random.Random(seed)
    base_us = time.time_ns() // 1000
    payloads = []
    position = 0
    for _ in range(count):
        rows = []
        for _ in range(size):
            series = (seed * 7919 + position) % SERIES
            rows.append(
                {
                    "device_id": f"dev-{series // 10:03d}",
                    "metric": f"m{series % 10}",
                    "ts": base_us + position * 1000,
                    # Uniform values never reach a z-score of 4, so no alerts are raised.
                    "value": round(20.0 + rng.uniform(-1.0, 1.0), 4),
                }
            )
            position += 1
        payloads.append(json.dumps(rows, separators=(",", ":")).encode())
    return payloads


def run_publisher(args: list[str]) -> int:
    """Publish pre-built payloads for ``seconds:S`` or ``count:N`` messages; print the counts as JSON."""
    from sparkiot.ingest.mqtt_client import connect_publisher

    broker, topic, size, limit, seed = args[0], args[1], int(args[2]), args[3], int(args[4])
    kind, _, amount = limit.partition(":")
    payloads = build_payloads(size, 64, seed)
    client = connect_publisher(broker, protocol="5")
    acked = 0
    lock = threading.Lock()

    def on_publish(client, userdata, mid, reason_code, properties) -> None:
        nonlocal acked
        with lock:
            acked += 1

    client.on_publish = on_publish
    print("ready", flush=True)
    # The parent writes one line when every consumer is ready: all publishers start together.
    sys.stdin.readline()
    published = 0
    started = time.monotonic()
    deadline = started + float(amount) if kind == "seconds" else float("inf")
    count = int(amount) if kind == "count" else None
    while True:
        if time.monotonic() >= deadline or (count is not None and published >= count):
            break
        if published - acked >= MAX_UNACKED:
            time.sleep(0.0005)
            continue
        client.publish(topic, payloads[published % len(payloads)], qos=1)
        published += 1
    if count is not None:
        while acked < published and time.monotonic() - started < 300:
            time.sleep(0.01)
    elapsed = time.monotonic() - started
    acked_at_end = acked
    client.disconnect()
    client.loop_stop()
    print(json.dumps({"published": published, "acked": acked_at_end, "seconds": elapsed,
                      "payload_bytes": sum(map(len, payloads)) / len(payloads)}), flush=True)
    return 0


# -- child: bare paho subscriber ---------------------------------------------------------------


def run_baseline(args: list[str]) -> int:
    """Subscribe, acknowledge every message and count it; print ``time count`` every 10 ms."""
    from sparkiot.ingest.mqtt_client import connect_properties, new_client, parse_broker_url

    broker, topic, client_id = args[0], args[1], args[2]
    host, port = parse_broker_url(broker)
    client = new_client(client_id, protocol="5")
    client.manual_ack_set(True)
    count = 0
    subscribed = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties) -> None:
        client.subscribe(topic, qos=1)

    def on_subscribe(client, userdata, mid, reason_codes, properties) -> None:
        subscribed.set()

    def on_message(client, userdata, message) -> None:
        nonlocal count
        client.ack(message.mid, message.qos)
        count += 1

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    lock = threading.Lock()

    def report() -> None:
        # From before the connection: a session with queued messages starts draining at once.
        while True:
            with lock:
                print(f"{time.time():.3f} {count}", flush=True)
            time.sleep(0.01)

    threading.Thread(target=report, daemon=True).start()
    # The same session settings as the ingest: persistent, receive maximum 65535.
    client.connect(host, port, keepalive=30, clean_start=False, properties=connect_properties("5", session_expiry=600))
    client.loop_start()
    if not subscribed.wait(10):
        print("error: baseline subscriber did not subscribe", file=sys.stderr)
        return 1
    with lock:
        print("ready", flush=True)
    try:
        while True:
            time.sleep(1)
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        client.disconnect()
        client.loop_stop()
    return 0


# -- parent: consumers ------------------------------------------------------------------------


class BaselineConsumer:
    """The bare subscriber child process, whose progress lines a thread reads."""

    name = "baseline"

    def __init__(self, broker: str, topic: str, size: int, workdir: Path, batch_messages: int | None) -> None:
        self.broker, self.topic, self.size = broker, topic, size
        self.client_id = f"bench-baseline-{uuid.uuid4().hex[:8]}"
        self.process: subprocess.Popen | None = None
        self.latest = 0
        self.history: list[tuple[float, int]] = []

    def start(self) -> None:
        self.latest = 0
        self.history = []
        self.process = subprocess.Popen(
            [python(), __file__, "_baseline", self.broker, self.topic, self.client_id],
            stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        ready = threading.Event()
        threading.Thread(target=self._follow, args=(self.process, ready), daemon=True).start()
        if not ready.wait(30):
            raise RuntimeError("baseline subscriber failed to start")

    def _follow(self, process: subprocess.Popen, ready: threading.Event) -> None:
        for line in process.stdout:
            parts = line.split()
            if parts == ["ready"]:
                ready.set()
            elif len(parts) == 2:
                self.latest = int(parts[1])
                self.history.append((float(parts[0]), self.latest * self.size))

    def readings(self) -> int:
        return self.latest * self.size

    def pids(self) -> list[int]:
        return [self.process.pid] if self.process else []

    def stop(self) -> dict:
        stop_process(self.process)
        return {}


class IngestConsumer:
    """A ``python -m sparkiot ingest`` process on a fresh data directory, counted from its landing log."""

    name = "ingest"

    def __init__(self, broker: str, topic: str, size: int, workdir: Path, batch_messages: int | None) -> None:
        self.broker = broker
        self.data_dir = workdir / "data"
        self.config_file = workdir / "pipeline.yaml"
        self.config_file.write_text(
            "\n".join(
                [
                    "name: bench-ingest",
                    f"data_dir: {self.data_dir}",
                    "source:",
                    f"  broker: {broker}",
                    f"  topics: ['{topic}']",
                    f"  client_id: sparkiot-bench-{uuid.uuid4().hex[:8]}",
                    "  session_expiry: 10m",
                    "codec:",
                    "  max_payload_bytes: 1MiB",
                    *(["landing:", f"  batch_max_messages: {batch_messages}"] if batch_messages else []),
                ]
            )
            + "\n"
        )
        self.log_path = workdir / "ingest.log"
        self.process: subprocess.Popen | None = None
        self.reader = None
        self.history = None

    def start(self) -> None:
        from sparkiot.ingest.consumer import read_counters
        from sparkiot.ingest.landing import LogReader

        stats = self.data_dir / "ingest_stats.json"
        stats.unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [python(), "-m", "sparkiot", "ingest", str(self.config_file), "--broker", self.broker],
                stdout=log, stderr=log,
            )
        deadline = time.monotonic() + 60
        while not read_counters(self.data_dir).get("connected"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the ingest did not connect; its log: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        time.sleep(0.5)  # The subscription goes out on connect, so give the broker a moment to register it.
        self.reader = LogReader(self.data_dir / "landing" / "readings")

    def readings(self) -> int:
        return self.reader.end_offset()

    def pids(self) -> list[int]:
        return [self.process.pid] if self.process else []

    def stop(self) -> dict:
        from sparkiot.ingest.consumer import read_counters

        stop_process(self.process, timeout=120)
        counters = read_counters(self.data_dir)
        keys = ("messages", "readings", "late", "dead_letters", "alerts", "batches")
        return {key: counters.get(key, 0) for key in keys}


CONSUMERS = {"baseline": BaselineConsumer, "ingest": IngestConsumer}


# -- parent: measurement ----------------------------------------------------------------------


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def steady_rate(samples: list[tuple[float, int]], start: float, end: float) -> tuple[float | None, int, int]:
    """Return the readings per second between the first and the last count increase inside ``[start, end]``.

    The ingest lands in group commits, so its count rises in steps. Measuring from one step to
    another counts whole commits over the time they took. The result is
    ``(rate, readings, steps)``, with a rate of None when fewer than two steps fall inside.
    """
    steps = [later for earlier, later in zip(samples, samples[1:]) if later[1] > earlier[1]]
    inside = [step for step in steps if start <= step[0] <= end]
    if len(inside) < 2:
        return None, 0, len(inside)
    (first_time, first_count), (last_time, last_count) = inside[0], inside[-1]
    return (last_count - first_count) / (last_time - first_time), last_count - first_count, len(inside)


class Sampler:
    """A poller of a consumer's count and of the CPU time of the consumer and the broker."""

    def __init__(self, consumer, broker_pid: int) -> None:
        self.consumer = consumer
        self.broker_pid = broker_pid
        self.samples: list[tuple[float, int]] = []
        self.cpu: list[tuple[float, float, float]] = []  # (time, consumer, broker)
        self.account = CpuAccount()

    def sample(self) -> tuple[float, int]:
        now = time.time()
        count = self.consumer.readings()
        self.samples.append((now, count))
        self.cpu.append((now, cpu_seconds(self.consumer.pids()), cpu_seconds([self.broker_pid])))
        return now, count

    def cpu_between(self, start: float, end: float) -> tuple[int, int]:
        inside = [entry for entry in self.cpu if start <= entry[0] <= end]
        if len(inside) < 2 or inside[-1][0] - inside[0][0] < 0.5:
            return None, None  # too short a span to measure
        span = inside[-1][0] - inside[0][0]
        return (round(100 * (inside[-1][1] - inside[0][1]) / span), round(100 * (inside[-1][2] - inside[0][2]) / span))


def start_publishers(broker: TunedMosquitto, topic_prefix: str, size: int, limits: list[str]) -> list[subprocess.Popen]:
    """Start one publisher per limit (``seconds:S`` or ``count:N``) and release them together."""
    children = []
    for index, limit in enumerate(limits):
        child = subprocess.Popen(
            [python(), __file__, "_publisher", broker.url, f"{topic_prefix}/p{index}", str(size), limit, str(index + 1)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        children.append(child)
    for child in children:
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("a publisher failed to connect")
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    return children


def finish_publishers(children: list[subprocess.Popen]) -> list[dict]:
    results = []
    for child in children:
        line = child.stdout.readline()
        child.wait(timeout=300)
        results.append(json.loads(line))
    return results


def run_live(consumer_name: str, size: int, publishers: int, seconds: float, warmup: float,
             batch_messages: int | None) -> dict:
    """Publishers and consumer at the same time; the rate over the steady part of publishing."""
    topic_prefix = f"bench/{uuid.uuid4().hex[:8]}"
    with TunedMosquitto() as broker, tempfile.TemporaryDirectory(prefix="sparkiot-bench-ingest-") as workdir:
        consumer = CONSUMERS[consumer_name](broker.url, f"{topic_prefix}/#", size, Path(workdir), batch_messages)
        consumer.start()
        children = []
        try:
            sampler = Sampler(consumer, broker.process.pid)
            children = start_publishers(broker, topic_prefix, size, [f"seconds:{seconds}"] * publishers)
            publisher_pids = [child.pid for child in children]
            started = time.time()
            sampler.sample()
            steady_start, steady_end = started + warmup, started + seconds
            publisher_cpu = {}
            while time.time() < steady_end + 0.2:
                time.sleep(POLL_S)
                now, _ = sampler.sample()
                if "start" not in publisher_cpu and now >= steady_start:
                    sampler.account.reset()
                    publisher_cpu["start"] = (now, cpu_seconds(publisher_pids))
                if "end" not in publisher_cpu and now >= steady_end:
                    machine = sampler.account.read()
                    publisher_cpu["end"] = (now, cpu_seconds(publisher_pids))
            published = finish_publishers(children)
        finally:
            for child in children:
                stop_process(child)
            counters = consumer.stop()

    cpu_consumer, cpu_broker = sampler.cpu_between(steady_start, steady_end)
    if consumer.history:
        sampler.samples = list(consumer.history)
    rate, measured, steps = steady_rate(sampler.samples, steady_start, steady_end)
    (t0, p0), (t1, p1) = publisher_cpu["start"], publisher_cpu["end"]
    acked = sum(item["acked"] for item in published)
    return _row("live", consumer_name, size, publishers, batch_messages, rate, measured, steps, published,
                offered=acked * size / max(item["seconds"] for item in published),
                cpu=(cpu_consumer, cpu_broker, round(100 * (p1 - p0) / (t1 - t0)), machine["other_cpu_pct"]),
                counters=counters, samples=sampler.samples, origin=started)


def run_backlog(consumer_name: str, size: int, publishers: int, backlog_readings: int,
                batch_messages: int | None, timeout: float) -> dict:
    """Queue a backlog for the consumer's session while it is away, then time the drain."""
    topic_prefix = f"bench/{uuid.uuid4().hex[:8]}"
    messages = max(1, backlog_readings // size)
    with TunedMosquitto() as broker, tempfile.TemporaryDirectory(prefix="sparkiot-bench-ingest-") as workdir:
        consumer = CONSUMERS[consumer_name](broker.url, f"{topic_prefix}/#", size, Path(workdir), batch_messages)
        consumer.start()  # creates the persistent session and its subscription
        consumer.stop()
        per_publisher = [messages // publishers + (1 if index < messages % publishers else 0) for index in range(publishers)]
        children = []
        try:
            children = start_publishers(broker, topic_prefix, size, [f"count:{count}" for count in per_publisher])
            published = finish_publishers(children)
        finally:
            for child in children:
                stop_process(child)
        total = sum(item["acked"] for item in published) * size

        consumer.start()
        sampler = Sampler(consumer, broker.process.pid)
        started = time.time()
        try:
            sampler.sample()
            while sampler.samples[-1][1] < total and time.time() - started < timeout:
                time.sleep(POLL_S)
                sampler.sample()
            machine = sampler.account.read()
        finally:
            counters = consumer.stop()

    cpu_consumer, cpu_broker = sampler.cpu_between(started, sampler.samples[-1][0])
    if consumer.history:
        # The subscriber stamps its own counts every 10 ms from the moment it connected.
        sampler.samples = list(consumer.history)
        started = sampler.samples[0][0]
    rate, measured, steps = steady_rate(sampler.samples, started, sampler.samples[-1][0])
    return _row("backlog", consumer_name, size, publishers, batch_messages, rate, measured, steps, published,
                offered=None, cpu=(cpu_consumer, cpu_broker, None, machine["other_cpu_pct"]), counters=counters,
                samples=sampler.samples, origin=started, backlog=total, drained=sampler.samples[-1][1])


def _row(mode, consumer, size, publishers, batch_messages, rate, measured, steps, published, *, offered, cpu,
         counters, samples, origin, backlog=None, drained=None) -> dict:
    return {
        "mode": mode,
        "consumer": consumer,
        "readings_per_message": size,
        "publishers": publishers,
        "payload_bytes": round(sum(item["payload_bytes"] for item in published) / len(published)),
        "batch_max_messages": batch_messages if consumer == "ingest" else None,
        "readings_per_s": round(rate) if rate is not None else None,
        "messages_per_s": round(rate / size, 1) if rate is not None else None,
        "readings_measured": measured,
        "count_steps": steps,
        "offered_readings_per_s": round(offered) if offered is not None else None,
        "published_messages": sum(item["published"] for item in published),
        "acked_messages": sum(item["acked"] for item in published),
        "backlog_readings": backlog,
        "drained_readings": drained,
        "cpu_consumer_pct": cpu[0],
        "cpu_mosquitto_pct": cpu[1],
        "cpu_publishers_pct": cpu[2],
        "cpu_other_processes_pct": cpu[3],
        "ingest_counters": counters,
        "samples": [(round(t - origin, 3), count) for t, count in samples],
    }


def _pct(value) -> str:
    return "-" if value is None else f"{value}%"


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_publisher":
        return run_publisher(sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "_baseline":
        return run_baseline(sys.argv[2:])

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="live,backlog", help="live and/or backlog (default both)")
    parser.add_argument("--seconds", type=float, default=20.0, help="live mode: seconds of publishing (default 20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="live mode: seconds left out at the start (default 3)")
    parser.add_argument("--backlog-readings", type=int, default=1_000_000,
                        help="backlog mode: readings queued before the drain (default 1,000,000)")
    parser.add_argument("--sizes", default="100,500", help="readings per message, comma-separated (default 100,500)")
    parser.add_argument("--publishers", default="1", help="publisher process counts, comma-separated (default 1)")
    parser.add_argument("--consumers", default="baseline,ingest", help="which consumers (default baseline,ingest)")
    parser.add_argument(
        "--batch-readings", type=int, default=20_000,
        help="readings per group commit of the ingest: landing.batch_max_messages is set to this divided by "
             "the readings per message (default 20000); 0 keeps the library default of 5000 messages",
    )
    parser.add_argument("--timeout", type=float, default=120.0, help="backlog mode: give up a drain after this long")
    parser.add_argument("--quiet-wait", type=float, default=30.0,
                        help="seconds to wait at the start for other processes to go idle (default 30)")
    parser.add_argument("--json", help="write the results as JSON to this file")
    args = parser.parse_args()

    modes = [value.strip() for value in args.modes.split(",")]
    sizes = [int(value) for value in args.sizes.split(",")]
    publisher_counts = [int(value) for value in args.publishers.split(",")]
    consumers = [value.strip() for value in args.consumers.split(",")]
    for name in consumers:
        if name not in CONSUMERS:
            parser.error(f"unknown consumer {name!r}; use baseline and/or ingest")
    for mode in modes:
        if mode not in ("live", "backlog"):
            parser.error(f"unknown mode {mode!r}; use live and/or backlog")

    wait_for_quiet(args.quiet_wait)
    results = []
    for mode in modes:
        for size in sizes:
            for publishers in publisher_counts:
                for consumer in consumers:
                    batch_messages = max(1, args.batch_readings // size) if args.batch_readings > 0 else None
                    what = f"{args.seconds:g} s" if mode == "live" else f"{args.backlog_readings:,} readings queued"
                    print(f"{mode} {consumer}: {size} readings/message, {publishers} publisher(s), {what} ...", flush=True)
                    if mode == "live":
                        results.append(run_live(consumer, size, publishers, args.seconds, args.warmup, batch_messages))
                    else:
                        results.append(run_backlog(consumer, size, publishers, args.backlog_readings, batch_messages,
                                                   args.timeout))

    print()
    rows = []
    for row in results:
        baseline = next(
            (other["readings_per_s"] for other in results if other["consumer"] == "baseline" and other["mode"] == row["mode"]
             and other["readings_per_message"] == row["readings_per_message"] and other["publishers"] == row["publishers"]),
            None,
        )
        rate = row["readings_per_s"]
        row["share_of_baseline"] = round(rate / baseline, 3) if baseline and rate is not None else None
        row["meets_target"] = (rate or 0) >= TARGET_READINGS_PER_S if row["consumer"] == "ingest" else None
        rows.append([
            row["mode"], row["consumer"], row["readings_per_message"], row["publishers"], row["batch_max_messages"],
            rate, row["messages_per_s"], row["offered_readings_per_s"], row["share_of_baseline"],
            _pct(row["cpu_consumer_pct"]), _pct(row["cpu_mosquitto_pct"]), _pct(row["cpu_publishers_pct"]),
            _pct(row["cpu_other_processes_pct"]), row["meets_target"],
        ])
    print_table(
        ["mode", "consumer", "readings/msg", "publishers", "batch msgs", "readings/s", "messages/s", "offered readings/s",
         "vs baseline", "cpu consumer", "cpu broker", "cpu publishers", "cpu others", ">= 50k/s"],
        rows,
    )
    write_json(args.json, {
        "benchmark": "ingest_throughput",
        "machine": machine_info(),
        "settings": {"modes": modes, "seconds": args.seconds, "warmup": args.warmup,
                     "backlog_readings": args.backlog_readings, "qos": 1, "mqtt": "5", "series": SERIES,
                     "max_unacked_per_publisher": MAX_UNACKED, "batch_readings": args.batch_readings},
        "target_readings_per_s": TARGET_READINGS_PER_S,
        "results": results,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
