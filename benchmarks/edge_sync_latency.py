"""Sync latency: from an update at the edge to the merged value being readable in the cloud store.

The script starts a tuned Mosquitto on a free loopback port, the sync service in a child process
(SQLite or Redis store), and an edge agent in another child process. A publisher sends ``--rate``
readings per second to the agent's local topic (one reading per message, 20 series). Each
reading is one *update*: it changes the site's readings counter, the series' summary, sketch,
latest-value register and the device's last-seen register.

Timed, with the system-wide monotonic clock of both processes:

* update time: when the agent starts processing the batch that contains the reading (the CRDT
  update follows within microseconds), recorded per delta group sequence number;
* readable time: when the sync service's store transaction that brought the site's version
  vector to that sequence number or beyond has committed. A reader of the store gets the value
  from then on.

The latency of a sequence number is the difference. Groups of the first ``--settle`` seconds are
left out. The agent runs with its defaults (``buffer.durability: full``, one fsync per batch)
unless ``--durability normal`` is given; it forwards every reading to the same broker too, as in
production. Mosquitto runs with ``set_tcp_nodelay true``; ``--broker-nagle`` keeps its default
(Nagle's algorithm on), which holds a small packet for up to the delayed-ACK time.

    python benchmarks/edge_sync_latency.py --store redis --rate 1000 --json results/sync-redis.json
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import NO_DELAY, TunedMosquitto, machine_info, percentile, print_table, write_json  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/0"


def run_service(store_kind: str, store_path: str, namespace: str, broker: str, prefix: str, commits, ready, stop) -> None:
    """Run the sync service; send ``(site, seq, monotonic_ns)`` after each committed merge."""
    from sparkiot.edge.service import SyncService
    from sparkiot.state.crdt_store import SqliteCrdtStore
    from sparkiot.state.redis_store import RedisCrdtStore

    store = SqliteCrdtStore(store_path) if store_kind == "sqlite" else RedisCrdtStore(REDIS_URL, namespace=namespace)

    class TimedService(SyncService):
        def _apply(self, site, replica, groups):
            versions = super()._apply(site, replica, groups)
            commits.put((site, versions.get(replica, 0), time.monotonic_ns()))
            return versions

    service = TimedService(store, broker, topic_prefix=prefix, client_id=f"bench-sync-{os.getpid()}")
    threading.Thread(target=lambda: (stop.wait(), service.stop()), daemon=True).start()
    threading.Thread(target=lambda: (service.subscribed.wait(30), ready.set()), daemon=True).start()
    service.run()
    if store_kind == "redis":
        store.clear()
    store.close()


def run_agent(raw_config: dict, broker: str, updates_out, ready, stop) -> None:
    """Run the edge agent; at the end send ``{seq: monotonic_ns}``, when each group's batch began."""
    from sparkiot.edge.agent import EdgeAgent
    from sparkiot.edge.config import build_edge_config

    updates: dict[int, int] = {}

    class TimedAgent(EdgeAgent):
        def process(self, messages):
            started = time.monotonic_ns()
            super().process(messages)
            updates.setdefault(self.store.get_meta("seq"), started)

    agent = TimedAgent(build_edge_config(raw_config), local_url=broker)
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    deadline = time.monotonic() + 30
    while not (agent.subscribed.is_set() and agent.uplink.connected) and time.monotonic() < deadline:
        time.sleep(0.05)
    ready.set()
    stop.wait()
    agent.stop()
    runner.join(timeout=30)
    updates_out.put(updates)


def measure(store_kind: str, rate: float, seconds: float, settle: float, durability: str, nagle: bool) -> dict:
    from sparkiot.ingest.mqtt_client import connect_publisher

    context = multiprocessing.get_context("spawn")
    commits, ready, stop = context.Queue(), context.Event(), context.Event()
    update_queue, agent_ready, agent_stop = context.Queue(), context.Event(), context.Event()
    with TunedMosquitto(extra=() if nagle else NO_DELAY) as broker, tempfile.TemporaryDirectory(prefix="sparkiot-bench-sync-") as folder:
        prefix = f"bench/{os.getpid()}/sync"
        service = context.Process(
            target=run_service,
            args=(store_kind, str(Path(folder) / "state.sqlite"), f"sparkiot-bench-{os.getpid()}", broker.url, prefix, commits, ready, stop),
        )
        service.start()
        if not ready.wait(60):
            raise RuntimeError("the sync service did not subscribe within 60 s")
        config = {
            "site": "bench", "data_dir": str(Path(folder) / "edge"),
            "local": {"broker": broker.url, "topics": ["bench/local/#"], "client_id": f"bench-edge-{os.getpid()}"},
            "codec": {"topic_pattern": "bench/local/{device_id}"},
            "upstream": {"broker": broker.url, "topic": "bench/edge/{site}/readings"},
            "sync": {"topic_prefix": prefix},
            "buffer": {"durability": durability},
        }
        agent = context.Process(target=run_agent, args=(config, broker.url, update_queue, agent_ready, agent_stop))
        agent.start()
        if not agent_ready.wait(60):
            raise RuntimeError("the edge agent did not connect within 60 s")

        publisher = connect_publisher(broker.url)
        interval = 1.0 / rate
        started = time.monotonic()
        sent = 0
        base_us = time.time_ns() // 1000
        while time.monotonic() - started < seconds:
            device = f"dev-{sent % 20}"
            payload = f'{{"device_id":"{device}","metric":"temp","ts":{base_us + sent},"value":{20 + (sent % 7) * 0.5}}}'
            publisher.publish(f"bench/local/{device}", payload, qos=1)
            sent += 1
            pause = started + sent * interval - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        time.sleep(2.0)
        publisher.disconnect()
        publisher.loop_stop()
        agent_stop.set()
        updates: dict[int, int] = update_queue.get(timeout=60)
        agent.join(timeout=30)
        stop.set()
        # Drain while the service exits: a child process cannot end before its queue is read.
        commit_list = []
        while service.is_alive() or not commits.empty():
            try:
                commit_list.append(commits.get(timeout=0.5))
            except queue.Empty:
                pass
        service.join(timeout=30)

    commit_list.sort(key=lambda item: item[2])
    settle_ns = int(settle * 1e9)
    first_update = min(updates.values())
    latencies = []
    for seq, update_ns in sorted(updates.items()):
        if update_ns - first_update < settle_ns:
            continue
        readable = next((at for _, version, at in commit_list if version >= seq and at >= update_ns), None)
        if readable is not None:
            latencies.append((readable - update_ns) / 1e6)
    return {
        "store": store_kind, "durability": durability, "broker_nagle": nagle, "rate": rate, "updates_sent": sent,
        "groups": len(latencies), "readings_per_group": round(sent / max(len(updates), 1), 2),
        "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99), "max_ms": max(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", choices=["sqlite", "redis", "both"], default="both")
    parser.add_argument("--rate", type=float, nargs="+", default=[100.0, 1000.0], help="readings per second (default 100 1000)")
    parser.add_argument("--seconds", type=float, default=20.0, help="publishing time per run (default 20)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds left out at the start (default 3)")
    parser.add_argument("--durability", choices=["full", "normal", "both"], default="both")
    parser.add_argument("--broker-nagle", action="store_true", help="leave Mosquitto's Nagle algorithm on (its default)")
    parser.add_argument("--json", help="write the results and machine facts to this file")
    args = parser.parse_args()

    stores = ["sqlite", "redis"] if args.store == "both" else [args.store]
    modes = ["full", "normal"] if args.durability == "both" else [args.durability]
    results = [
        measure(store, rate, args.seconds, args.settle, mode, args.broker_nagle)
        for store in stores for mode in modes for rate in args.rate
    ]
    print_table(
        ["store", "edge fsync", "readings/s", "delta groups", "readings/group", "p50 ms", "p99 ms", "max ms"],
        [[r["store"], r["durability"], r["rate"], r["groups"], r["readings_per_group"], r["p50_ms"], r["p99_ms"], r["max_ms"]]
         for r in results],
    )
    write_json(args.json, {"benchmark": "edge_sync_latency", "machine": machine_info(), "results": results})


if __name__ == "__main__":
    main()
