"""The dashboard's server under load: update latency with pushed events, next to polling clients.

The script writes a data directory the way the job does: about once a second, a readings batch
folder and a windows batch folder, each moved into place with one rename. Each update contains one
new 1-minute window for each of ``--devices`` devices. ``sparkiot dashboard`` runs as a child process
on a free loopback port with its default 0.5 s read interval. For each client count, side by side:

* **push** (what the page does): N clients each hold one server-sent event stream for one device's
  series. The latency runs from the moment the windows folder was renamed into place to the
  moment a client has parsed the event that carries the new window;
* **polling** (the baseline): N clients each request ``/api/series`` for their device once a
  second, as a page without an event stream would. The latency runs to the response that first
  contains the new window.

With push, one headless Chromium (Debian's ``chromium``, through Playwright) also shows one
series. Its latency runs from the folder's modification time, as the server reports it, to the
moment the page has drawn the point (``window.sparkiotShown``).

The server's CPU share is the server process's CPU time over the run's wall time (100% is one
core).

    python benchmarks/dashboard_push.py --clients 1 10 50 200 --updates 30 --json results/dashboard-push.json
"""

from __future__ import annotations

import argparse
import asyncio
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

import httpx
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import free_port, machine_info, percentile, print_table, stop_process, wait_for_port, write_json  # noqa: E402

from sparkiot.readings import READING_SCHEMA  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
T0_US = 1_790_000_000_000_000
MINUTE_US = 60_000_000


def _timestamps(values: list[int]) -> pa.Array:
    return pa.array(values, pa.timestamp("us", tz="UTC"))


def _move_into_place(data_dir: Path, table: str, batch_id: int, rows: pa.Table) -> None:
    final = data_dir / "tables" / table / "date=2026-09-21" / f"batch_id={batch_id}"
    staging = data_dir / "tables" / table / f".staging-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    pq.write_table(rows, staging / "part-00000.parquet")
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, final)


def write_update(data_dir: Path, k: int, devices: int) -> float:
    """Write update ``k``: one reading and one closed window per device; return when the windows landed."""
    now_us = time.time_ns() // 1000
    names = [f"dev-{i}" for i in range(devices)]
    ts = [T0_US + k * MINUTE_US] * devices
    readings = pa.table({
        "device_id": names, "metric": ["load"] * devices, "ts": _timestamps(ts), "value": [float(k)] * devices,
        "unit": [None] * devices, "site": ["bench"] * devices, "msg_id": [uuid.uuid4().hex for _ in names],
        "ingest_ts": _timestamps([now_us] * devices), "source": ["bench"] * devices, "marks": [[] for _ in names],
    }, schema=READING_SCHEMA)
    windows = pa.table({
        "window_name": ["1m"] * devices, "device_id": names, "metric": ["load"] * devices,
        "window_start": _timestamps(ts), "window_end": _timestamps([t + MINUTE_US for t in ts]),
        "count": [1] * devices, "mean": [float(k)] * devices, "min": [k - 0.5] * devices, "max": [k + 0.5] * devices,
        "stddev": [0.0] * devices, "p50": [float(k)] * devices, "p95": [float(k)] * devices,
    })
    _move_into_place(data_dir, "readings", k, readings)
    _move_into_place(data_dir, "windows", k, windows)
    return time.time()


def window_index(start_seconds: float) -> int:
    return round((start_seconds * 1_000_000 - T0_US) / MINUTE_US)


async def push_client(url: str, device: str, seen: dict, stop: asyncio.Event, connected: list) -> None:
    params = {"device_id": device, "metric": "load", "window": "1m"}
    async with httpx.AsyncClient(base_url=url, timeout=None) as client:
        async with client.stream("GET", "api/events", params=params) as response:
            event = None
            async for line in response.aiter_lines():
                if stop.is_set():
                    return
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "hello":
                    connected.append(device)
                elif line.startswith("data: ") and event == "window":
                    received = time.time()
                    for point in json.loads(line[6:]):
                        seen.setdefault((device, window_index(point["start"])), received)


async def polling_client(url: str, device: str, seen: dict, stop: asyncio.Event, connected: list) -> None:
    params = {"device_id": device, "metric": "load", "window": "1m"}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        first = True
        while not stop.is_set():
            started = time.monotonic()
            response = await client.get("api/series", params=params)
            received = time.time()
            if first:
                connected.append(device)
                first = False
            if response.status_code == 200:
                for start in response.json()["start"]:
                    seen.setdefault((device, window_index(start)), received)
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))


def browser_latencies(url: str, ready: threading.Event, done: threading.Event, out: list) -> None:
    """Show dev-0's series in Chromium until ``done``; put the page's shown latencies in ``out``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page()
        page.goto(url + "#series/dev-0/load/1m")
        page.wait_for_selector('#connection[data-state="live"]', timeout=30_000)
        ready.set()
        done.wait()
        out.extend(page.evaluate("window.sparkiotShown"))
        browser.close()


def run_case(mode: str, clients: int, args) -> dict:
    data_dir = Path(tempfile.mkdtemp(prefix="sparkiot-dashboard-bench-"))
    write_update(data_dir, 0, args.devices)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "sparkiot", "dashboard", "--data-dir", str(data_dir), "--port", str(port), "--max-clients", "1000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}/"
    browser_thread = None
    shown: list[float] = []
    try:
        wait_for_port(port, timeout=30)
        ready, done = threading.Event(), threading.Event()
        if mode == "push" and args.browser:
            browser_thread = threading.Thread(target=browser_latencies, args=(url, ready, done, shown), daemon=True)
            browser_thread.start()
            ready.wait(60)
        seen: dict = {}
        written: dict[int, float] = {}
        cpu = psutil.Process(server.pid)

        async def main() -> float:
            stop = asyncio.Event()
            client = push_client if mode == "push" else polling_client
            connected: list = []
            tasks = [asyncio.create_task(client(url, f"dev-{i % args.devices}", seen, stop, connected)) for i in range(clients)]
            # Updates start once every client has opened its stream or received its first response.
            deadline = time.monotonic() + 60
            while len(connected) < clients and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)
            cpu_before = sum(cpu.cpu_times()[:2])
            started = time.monotonic()
            # Updates come 0.7 to 1.3 s apart, so they fall at every phase of the server's reads.
            jitter = random.Random(clients)
            for k in range(1, args.updates + 1):
                written[k] = await asyncio.to_thread(write_update, data_dir, k, args.devices)
                await asyncio.sleep(jitter.uniform(0.7, 1.3))
            await asyncio.sleep(2.5)
            share = (sum(cpu.cpu_times()[:2]) - cpu_before) / (time.monotonic() - started)
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return share

        cpu_share = asyncio.run(main())
        done.set()
        if browser_thread is not None:
            browser_thread.join(30)
    finally:
        stop_process(server)
    latencies = []
    missed = 0
    for i in range(clients):
        device = f"dev-{i % args.devices}"
        for k, at in written.items():
            if (device, k) in seen:
                latencies.append(seen[(device, k)] - at)
            else:
                missed += 1
    return {
        "mode": mode, "clients": clients, "updates": args.updates, "devices": args.devices,
        "deliveries": len(latencies), "missed": missed,
        "p50_s": percentile(latencies, 50), "p99_s": percentile(latencies, 99), "max_s": max(latencies) if latencies else None,
        "server_cpu": cpu_share,
        "browser_points": len(shown), "browser_p50_s": percentile(shown, 50) if shown else None,
        "browser_p99_s": percentile(shown, 99) if shown else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 10, 50, 200], help="client counts to measure")
    parser.add_argument("--updates", type=int, default=30, help="updates per case, about one a second")
    parser.add_argument("--devices", type=int, default=50, help="devices with a new window in each update")
    parser.add_argument("--no-browser", dest="browser", action="store_false", help="skip the Chromium page")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    if args.browser and not os.path.exists(CHROMIUM):
        parser.error(f"{CHROMIUM} is missing; install Debian's chromium package or pass --no-browser")

    results = []
    for clients in args.clients:
        for mode in ("push", "polling"):
            result = run_case(mode, clients, args)
            results.append(result)
            print(f"{mode:8} {clients:4} clients: p50 {result['p50_s']:.3f} s, p99 {result['p99_s']:.3f} s, "
                  f"missed {result['missed']}, server CPU {result['server_cpu']:.0%}", flush=True)
    print_table(
        ["clients", "mode", "deliveries", "missed", "p50 s", "p99 s", "max s", "server CPU", "browser p50 s", "browser p99 s"],
        [[r["clients"], r["mode"], r["deliveries"], r["missed"], r["p50_s"], r["p99_s"], r["max_s"],
          f"{r['server_cpu']:.0%}", r["browser_p50_s"], r["browser_p99_s"]] for r in results],
    )
    if args.json:
        write_json(args.json, {"machine": machine_info(), "arguments": vars(args), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
