"""Sustained ingest throughput: MQTT (tuned Mosquitto) -> sparkiot ingest -> fsynced landing log.

For every combination of payload size (readings per message) and number of publisher processes,
the script starts a fresh tuned Mosquitto on a free loopback port, a consumer, and the
publishers. Publishers send pre-built JSON arrays with QoS 1 over MQTT 5 as fast as the broker
acknowledges them (at most 2,000 unacknowledged each) for ``--seconds``. Two consumers are
measured on the same load, one after the other:

* ``baseline``: a bare paho subscriber (MQTT 5, manual acknowledgement) that acknowledges each
  message in its callback and does nothing else: no decoding, no landing log, no fsync;
* ``ingest``: ``python -m sparkiot ingest CONFIG --broker URL``, the process the pipeline runs.
  Its readings are counted from the landing log's offsets (``LogReader.end_offset()``).

The figure is the consumer's rate over the steady part: from ``--warmup`` seconds after the
publishers start to the moment they stop. The publishers offer more than either consumer takes
when ``offered`` exceeds ``landed`` in the table; where they are equal the consumer kept up and
its figure is a lower bound. CPU shares are the seconds of CPU each process used in the steady
window divided by its length (100% = one core).

    python benchmarks/ingest_throughput.py --json results/ingest.json
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
    print_table,
    python,
    stop_process,
    wait_for_quiet,
    write_json,
)

TARGET_READINGS_PER_S = 50_000
SERIES = 1000
MAX_UNACKED = 2000


# -- child: publisher -------------------------------------------------------------------------


def build_payloads(size: int, count: int, seed: int) -> list[bytes]:
    """``count`` JSON arrays of ``size`` single-reading objects over 1,000 series, times near now."""
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
    """Publish pre-built payloads until the deadline; print one JSON line with the counts."""
    from sparkiot.ingest.mqtt_client import connect_publisher

    broker, topic, size, seconds, seed = args[0], args[1], int(args[2]), float(args[3]), int(args[4])
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
    deadline = started + seconds
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        if published - acked >= MAX_UNACKED:
            time.sleep(0.0005)
            continue
        client.publish(topic, payloads[published % len(payloads)], qos=1)
        published += 1
    elapsed = time.monotonic() - started
    acked_at_deadline = acked
    client.disconnect()
    client.loop_stop()
    print(json.dumps({"published": published, "acked": acked_at_deadline, "seconds": elapsed,
                      "payload_bytes": sum(map(len, payloads)) / len(payloads)}), flush=True)
    return 0


# -- child: bare paho subscriber ---------------------------------------------------------------


def run_baseline(args: list[str]) -> int:
    """Subscribe, acknowledge every message and count it; print ``time count`` every 0.05 s."""
    from paho.mqtt.packettypes import PacketTypes  # noqa: F401 - same import cost as the ingest

    from sparkiot.ingest.mqtt_client import connect_properties, new_client, parse_broker_url

    broker, topic = args[0], args[1]
    host, port = parse_broker_url(broker)
    client = new_client(f"bench-baseline-{uuid.uuid4().hex[:8]}", protocol="5")
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
    client.connect(host, port, keepalive=30, clean_start=True, properties=connect_properties("5", session_expiry=0))
    client.loop_start()
    if not subscribed.wait(10):
        print("error: baseline subscriber did not subscribe", file=sys.stderr)
        return 1
    print("ready", flush=True)
    try:
        while True:
            print(f"{time.time():.3f} {count}", flush=True)
            time.sleep(0.05)
    except (KeyboardInterrupt, BrokenPipeError):
        pass
    finally:
        client.disconnect()
        client.loop_stop()
    return 0


# -- parent ------------------------------------------------------------------------------------


class BaselineConsumer:
    """The bare subscriber child; its progress lines are read in a thread."""

    name = "baseline"

    def __init__(self, broker: str, topic: str, size: int) -> None:
        self.size = size
        self.process = subprocess.Popen(
            [python(), __file__, "_baseline", broker, topic], stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.latest = 0
        ready = self.process.stdout.readline().strip()
        if ready != "ready":
            raise RuntimeError(f"baseline subscriber failed to start: {ready!r}")
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self) -> None:
        for line in self.process.stdout:
            parts = line.split()
            if len(parts) == 2:
                self.latest = int(parts[1])

    def readings(self) -> int:
        return self.latest * self.size

    def pids(self) -> list[int]:
        return [self.process.pid]

    def stop(self) -> dict:
        stop_process(self.process)
        return {}


class IngestConsumer:
    """``python -m sparkiot ingest`` on a fresh data directory; progress from the landing log."""

    name = "ingest"

    def __init__(self, broker: str, topic: str, size: int, workdir: Path, batch_messages: int | None) -> None:
        from sparkiot.ingest.landing import LogReader

        self.data_dir = workdir / "data"
        config_file = workdir / "pipeline.yaml"
        config_file.write_text(
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
        log_path = workdir / "ingest.log"
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [python(), "-m", "sparkiot", "ingest", str(config_file), "--broker", broker], stdout=log, stderr=log
            )
        self.log_path = log_path
        deadline = time.monotonic() + 30
        while not self._connected():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the ingest did not connect; its log: {log_path.read_text()[-2000:]}")
            time.sleep(0.1)
        time.sleep(0.5)  # the subscription is sent on connect; let the broker register it
        self.reader = LogReader(self.data_dir / "landing" / "readings")

    def _connected(self) -> bool:
        from sparkiot.ingest.consumer import read_counters

        return bool(read_counters(self.data_dir).get("connected"))

    def readings(self) -> int:
        return self.reader.end_offset()

    def pids(self) -> list[int]:
        return [self.process.pid]

    def stop(self) -> dict:
        from sparkiot.ingest.consumer import read_counters

        stop_process(self.process, timeout=60)
        counters = read_counters(self.data_dir)
        return {key: counters.get(key, 0) for key in ("messages", "readings", "late", "dead_letters", "alerts", "batches")}


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
    """Readings per second between the first and the last count increase seen inside ``[start, end]``.

    The ingest lands in group commits, so its count rises in steps; measuring from one step to
    another counts whole commits over the time they took. Returns ``(rate, readings, steps)``;
    the rate is None when fewer than two steps fall inside the window.
    """
    steps = [later for earlier, later in zip(samples, samples[1:]) if later[1] > earlier[1]]
    inside = [step for step in steps if start <= step[0] <= end]
    if len(inside) < 2:
        return None, 0, len(inside)
    (first_time, first_count), (last_time, last_count) = inside[0], inside[-1]
    return (last_count - first_count) / (last_time - first_time), last_count - first_count, len(inside)


def run_case(consumer_name: str, size: int, publishers: int, seconds: float, warmup: float, batch_messages: int | None,
             quiet_wait: float) -> dict:
    """One measurement on a fresh broker; returns the row of the results table."""
    wait_for_quiet(quiet_wait)
    account = CpuAccount()
    run = uuid.uuid4().hex[:8]
    topic_prefix = f"bench/{run}"
    with TunedMosquitto() as broker, tempfile.TemporaryDirectory(prefix="sparkiot-bench-ingest-") as workdir:
        if consumer_name == "baseline":
            consumer = BaselineConsumer(broker.url, f"{topic_prefix}/#", size)
        else:
            consumer = IngestConsumer(broker.url, f"{topic_prefix}/#", size, Path(workdir), batch_messages)
        children = []
        try:
            for index in range(publishers):
                child = subprocess.Popen(
                    [python(), __file__, "_publisher", broker.url, f"{topic_prefix}/p{index}", str(size), str(seconds),
                     str(index + 1)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
                )
                children.append(child)
            for child in children:
                if child.stdout.readline().strip() != "ready":
                    raise RuntimeError("a publisher failed to connect")
            publisher_pids = [child.pid for child in children]
            mosquitto_pid = [broker.process.pid]

            started = time.time()
            for child in children:
                child.stdin.write("go\n")
                child.stdin.flush()
            samples: list[tuple[float, int]] = [(started, consumer.readings())]
            cpu_start = cpu_end = None
            steady_start, steady_end = started + warmup, started + seconds
            while time.time() < steady_end + 0.2:
                time.sleep(0.05)
                now = time.time()
                samples.append((now, consumer.readings()))
                if cpu_start is None and now >= steady_start:
                    account.reset()
                    cpu_start = (now, cpu_seconds(consumer.pids()), cpu_seconds(mosquitto_pid), cpu_seconds(publisher_pids))
                if cpu_end is None and now >= steady_end:
                    machine = account.read()
                    cpu_end = (now, cpu_seconds(consumer.pids()), cpu_seconds(mosquitto_pid), cpu_seconds(publisher_pids))
            published = []
            for child in children:
                line = child.stdout.readline()
                child.wait(timeout=60)
                published.append(json.loads(line))
        finally:
            for child in children:
                stop_process(child)
            counters = consumer.stop()

    rate, landed, steps = steady_rate(samples, steady_start, steady_end)
    acked_messages = sum(item["acked"] for item in published)
    publish_seconds = max(item["seconds"] for item in published)
    window = cpu_end[0] - cpu_start[0]
    return {
        "consumer": consumer_name,
        "readings_per_message": size,
        "publishers": publishers,
        "payload_bytes": round(sum(item["payload_bytes"] for item in published) / len(published)),
        "steady_window_s": round(steady_end - steady_start, 2),
        "batch_max_messages": batch_messages if consumer_name == "ingest" else None,
        "readings_per_s": round(rate) if rate is not None else None,
        "messages_per_s": round(rate / size, 1) if rate is not None else None,
        "readings_measured": landed,
        "count_steps_in_window": steps,
        "offered_readings_per_s": round(acked_messages * size / publish_seconds),
        "published_messages": sum(item["published"] for item in published),
        "acked_messages": acked_messages,
        "cpu_consumer_pct": round(100 * (cpu_end[1] - cpu_start[1]) / window),
        "cpu_mosquitto_pct": round(100 * (cpu_end[2] - cpu_start[2]) / window),
        "cpu_publishers_pct": round(100 * (cpu_end[3] - cpu_start[3]) / window),
        "cpu_other_processes_pct": machine["other_cpu_pct"],
        "ingest_counters": counters,
        "samples": [(round(t - started, 3), count) for t, count in samples],
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_publisher":
        return run_publisher(sys.argv[2:])
    if len(sys.argv) > 1 and sys.argv[1] == "_baseline":
        return run_baseline(sys.argv[2:])

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the publishers publish (default 20)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds left out at the start (default 3)")
    parser.add_argument("--sizes", default="100,500", help="readings per message, comma-separated (default 100,500)")
    parser.add_argument("--publishers", default="1,2", help="publisher process counts, comma-separated (default 1,2)")
    parser.add_argument("--consumers", default="baseline,ingest", help="which consumers (default baseline,ingest)")
    parser.add_argument(
        "--batch-readings", type=int, default=20_000,
        help="readings per group commit of the ingest: landing.batch_max_messages is set to this divided by "
             "the readings per message (default 20000); 0 keeps the library default of 5000 messages",
    )
    parser.add_argument("--quiet-wait", type=float, default=60.0,
                        help="seconds to wait before each case for other processes to go idle (default 60)")
    parser.add_argument("--json", help="write the results as JSON to this file")
    args = parser.parse_args()

    sizes = [int(value) for value in args.sizes.split(",")]
    publisher_counts = [int(value) for value in args.publishers.split(",")]
    consumers = [value.strip() for value in args.consumers.split(",")]
    for name in consumers:
        if name not in ("baseline", "ingest"):
            parser.error(f"unknown consumer {name!r}; use baseline and/or ingest")

    results = []
    for size in sizes:
        for publishers in publisher_counts:
            for consumer in consumers:
                print(f"measuring {consumer}: {size} readings/message, {publishers} publisher(s), {args.seconds:g} s ...",
                      flush=True)
                batch_messages = max(1, args.batch_readings // size) if args.batch_readings > 0 else None
                results.append(run_case(consumer, size, publishers, args.seconds, args.warmup, batch_messages,
                                        args.quiet_wait))

    print()
    rows = []
    for row in results:
        baseline = next(
            (other["readings_per_s"] for other in results if other["consumer"] == "baseline"
             and other["readings_per_message"] == row["readings_per_message"] and other["publishers"] == row["publishers"]),
            None,
        )
        rate = row["readings_per_s"]
        row["share_of_baseline"] = round(rate / baseline, 3) if baseline and rate is not None else None
        row["meets_target"] = (rate or 0) >= TARGET_READINGS_PER_S if row["consumer"] == "ingest" else None
        rows.append([
            row["consumer"], row["readings_per_message"], row["publishers"], row["batch_max_messages"],
            row["readings_per_s"], row["messages_per_s"],
            row["offered_readings_per_s"], row["share_of_baseline"], f"{row['cpu_consumer_pct']}%",
            f"{row['cpu_mosquitto_pct']}%", f"{row['cpu_publishers_pct']}%", f"{row['cpu_other_processes_pct']}%",
            row["meets_target"],
        ])
    print_table(
        ["consumer", "readings/msg", "publishers", "batch msgs", "landed readings/s", "messages/s", "offered readings/s",
         "vs baseline", "cpu consumer", "cpu broker", "cpu publishers", "cpu others", ">= 50k/s"],
        rows,
    )
    write_json(args.json, {
        "benchmark": "ingest_throughput",
        "machine": machine_info(),
        "settings": {"seconds": args.seconds, "warmup": args.warmup, "qos": 1, "mqtt": "5", "series": SERIES,
                     "max_unacked_per_publisher": MAX_UNACKED, "batch_readings": args.batch_readings},
        "target_readings_per_s": TARGET_READINGS_PER_S,
        "results": results,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
