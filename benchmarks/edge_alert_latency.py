"""Edge alert latency: from the publish call of a reading to its local alert at a subscriber.

The script starts a tuned Mosquitto on a free loopback port as the gateway's local broker and
runs ``python -m sparkiot edge`` against it as a child process, with one alert rule
(``temp`` above 50). Its other settings are the defaults, so every reading is also committed to
the store-and-forward buffer (one fsync per batch) and forwarded upstream to the same broker.

A publisher in this process sends ``--rate`` readings per second, one reading per message, QoS 1,
over 20 devices. Every twentieth reading of a device is 60, which raises the alert, and the next
one (about 20) clears it, so a tenth of the readings cause an alert transition. A subscriber in this
process receives the alert topic. Each alert names its reading (device and event time), so the
latency is its arrival time minus the reading's publish call, on one monotonic clock.
Alerts of the first ``--settle`` seconds are left out.

    python benchmarks/edge_alert_latency.py --rate 1000 --json results/edge-alerts.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import NO_DELAY, TunedMosquitto, machine_info, percentile, print_table, stop_process, write_json  # noqa: E402


def measure(rate: float, seconds: float, settle: float, nagle: bool) -> dict:
    from sparkiot.ingest.mqtt_client import connect_publisher

    with TunedMosquitto(extra=() if nagle else NO_DELAY) as broker, tempfile.TemporaryDirectory(prefix="sparkiot-bench-alerts-") as folder:
        config = {
            "site": "bench", "data_dir": str(Path(folder) / "edge"),
            "local": {"broker": broker.url, "topics": ["bench/local/#"], "client_id": f"bench-edge-{os.getpid()}"},
            "codec": {"topic_pattern": "bench/local/{device_id}"},
            "rules": {"alerts": [{"name": "hot", "match": {"metric": "temp"}, "above": 50}], "alert_topic": "bench/alerts"},
            "upstream": {"broker": broker.url, "topic": "bench/edge/{site}/readings"},
            "sync": {"enabled": False},
        }
        config_file = Path(folder) / "edge.yaml"
        config_file.write_text(yaml.safe_dump(config))
        with open(Path(folder) / "edge.log", "wb") as log:
            agent = subprocess.Popen([sys.executable, "-m", "sparkiot", "edge", "--config", str(config_file)], stdout=log, stderr=log)
        try:
            stats = Path(folder) / "edge" / "edge_stats.json"
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (stats.exists() and json.loads(stats.read_text() or "{}").get("subscribed")):
                time.sleep(0.1)

            published: dict[tuple[str, int], int] = {}
            arrivals: list[tuple[str, int, int]] = []
            subscriber = connect_publisher(broker.url)
            subscribed = threading.Event()
            subscriber.on_subscribe = lambda *args: subscribed.set()

            def on_alert(client, userdata, message) -> None:
                arrived = time.monotonic_ns()
                alert = json.loads(message.payload)
                arrivals.append((alert["device_id"], alert["ts_us"], arrived))

            subscriber.on_message = on_alert
            subscriber.subscribe("bench/alerts", qos=1)
            subscribed.wait(10)

            publisher = connect_publisher(broker.url)
            interval = 1.0 / rate
            started = time.monotonic()
            base_us = time.time_ns() // 1000
            sent = 0
            while time.monotonic() - started < seconds:
                device = f"dev-{sent % 20}"
                nth = sent // 20
                value = 60 if nth % 20 == 0 else 20 + (sent % 5) * 0.1
                ts_us = base_us + sent
                payload = f'{{"device_id":"{device}","metric":"temp","ts":{ts_us},"value":{value}}}'
                published[(device, ts_us)] = time.monotonic_ns()
                publisher.publish(f"bench/local/{device}", payload, qos=1)
                sent += 1
                pause = started + sent * interval - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
            time.sleep(1.0)
            for client in (publisher, subscriber):
                client.disconnect()
                client.loop_stop()
        finally:
            stop_process(agent)

    settle_ns = int(settle * 1e9)
    first = min(published.values())
    latencies = [
        (arrived - published[(device, ts_us)]) / 1e6
        for device, ts_us, arrived in arrivals
        if (device, ts_us) in published and published[(device, ts_us)] - first >= settle_ns
    ]
    return {
        "rate": rate, "readings": sent, "alerts": len(latencies), "broker_nagle": nagle,
        "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99), "max_ms": max(latencies) if latencies else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, nargs="+", default=[100.0, 1000.0], help="readings per second (default 100 1000)")
    parser.add_argument("--seconds", type=float, default=20.0, help="publishing time per rate (default 20)")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds left out at the start (default 2)")
    parser.add_argument("--broker-nagle", action="store_true", help="leave Mosquitto's Nagle algorithm on (its default)")
    parser.add_argument("--json", help="write the results and machine facts to this file")
    args = parser.parse_args()

    results = [measure(rate, args.seconds, args.settle, args.broker_nagle) for rate in args.rate]
    print_table(
        ["readings/s", "readings", "alerts", "p50 ms", "p99 ms", "max ms"],
        [[r["rate"], r["readings"], r["alerts"], r["p50_ms"], r["p99_ms"], r["max_ms"]] for r in results],
    )
    write_json(args.json, {"benchmark": "edge_alert_latency", "machine": machine_info(), "results": results})


if __name__ == "__main__":
    main()
