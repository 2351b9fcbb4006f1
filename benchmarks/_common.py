"""Helpers shared by the benchmark scripts: a tuned Mosquitto, machine facts, tables and JSON.

Each script in this folder imports this module from its own directory, so the scripts run
standalone as ``python benchmarks/NAME.py`` with no install step beyond sparkiot's own.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOOPBACK = "127.0.0.1"

MOSQUITTO_TUNING = (
    "allow_anonymous true",
    "max_inflight_messages 1000",
    "max_queued_messages 1000000",
    "persistence false",
)

# Mosquitto keeps Nagle's algorithm on its client sockets by default. A small packet then waits
# for the TCP acknowledgement of the previous one, up to the delayed-ACK time (about 40 ms on
# Linux). The edge's latency benchmarks turn it off, as a gateway operator would.
NO_DELAY = ("set_tcp_nodelay true",)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {LOOPBACK}:{port} after {timeout:g}s")


class TunedMosquitto:
    """A Mosquitto child process on a free loopback port with the benchmark settings.

    Use as a context manager; the broker is stopped (SIGTERM, then SIGKILL) on exit.
    """

    def __init__(self, *, executable: str = "mosquitto", extra: tuple[str, ...] = ()) -> None:
        path = shutil.which(executable)
        if path is None:
            raise RuntimeError(f"{executable} not found on PATH; install it with 'apt-get install mosquitto'")
        self.executable = path
        self.extra = extra
        self.port = free_port()
        self._folder = tempfile.TemporaryDirectory(prefix="sparkiot-bench-mosquitto-")
        self.config_file = Path(self._folder.name) / "mosquitto.conf"
        self.log_file = Path(self._folder.name) / "mosquitto.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.port}"

    def start(self) -> "TunedMosquitto":
        lines = [f"listener {self.port} {LOOPBACK}", *MOSQUITTO_TUNING, *self.extra]
        self.config_file.write_text("\n".join(lines) + "\n")
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen([self.executable, "-c", str(self.config_file)], stdout=log, stderr=log)
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start; its log: {self.log_file.read_text()[-2000:]}") from None
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> "TunedMosquitto":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
        self._folder.cleanup()


def stop_process(process: subprocess.Popen | None, timeout: float = 30.0) -> None:
    """SIGTERM one child process we started, then SIGKILL it after ``timeout`` seconds."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _command_version(command: list[str], pattern: str) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    match = re.search(pattern, result.stdout + result.stderr)
    return match.group(1) if match else "unknown"


def machine_info() -> dict:
    """Return the CPU model, cores, RAM, OS and the versions of the software on the measured path."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024**2, 1)
                break
    except OSError:
        pass
    os_name = platform.platform()
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"') + f" (kernel {platform.release()})"
    except OSError:
        pass
    try:
        import pyspark

        pyspark_version = pyspark.__version__
    except ImportError:
        pyspark_version = "not installed"
    try:
        import paho.mqtt

        paho_version = paho.mqtt.__version__
    except ImportError:
        paho_version = "not installed"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "os": os_name,
        "python": platform.python_version(),
        "java": _command_version(["java", "-version"], r'version "([^"]+)"'),
        "pyspark": pyspark_version,
        "paho_mqtt": paho_version,
        "mosquitto": _command_version(["mosquitto", "-h"], r"mosquitto version (\S+)"),
    }


def print_table(headers: list[str], rows: list[list]) -> None:
    """Print rows under headers as an aligned plain-text table."""
    cells = [[_format(value) for value in row] for row in rows]
    widths = [max(len(header), *(len(row[i]) for row in cells)) if cells else len(header) for i, header in enumerate(headers)]
    print("  ".join(header.rjust(width) for header, width in zip(headers, widths)))
    print("  ".join("-" * width for width in widths))
    for row in cells:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))


def _format(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_json(path: str | None, document: dict) -> None:
    """Write ``document`` (with machine facts added) to ``path`` when one was given."""
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"results written to {target}")


def percentile(values: list[float], q: float) -> float | None:
    """Return the ``q``-th percentile (0-100) by linear interpolation, or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _tree_cpu_seconds() -> float:
    """Return the CPU seconds of this process and every descendant, living or already waited for."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def _busy_seconds() -> float:
    import psutil

    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


class CpuAccount:
    """CPU used by this benchmark's process tree and by every other process, over a span of time.

    Other processes on the same 2 cores change every figure here, so each script records how
    busy the rest of the machine was while it measured.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._wall = time.monotonic()
        self._busy = _busy_seconds()
        self._own = _tree_cpu_seconds()

    def read(self) -> dict:
        """Return ``{"seconds", "own_cpu_pct", "other_cpu_pct"}`` since the last reset (100% = one core)."""
        wall = max(time.monotonic() - self._wall, 1e-9)
        busy = _busy_seconds() - self._busy
        own = _tree_cpu_seconds() - self._own
        return {
            "seconds": round(wall, 1),
            "own_cpu_pct": round(100 * own / wall),
            "other_cpu_pct": max(round(100 * (busy - own) / wall), 0),
        }


def wait_for_quiet(max_wait: float, *, threshold_pct: float = 25.0) -> dict:
    """Wait up to ``max_wait`` seconds until other processes use less than ``threshold_pct`` of a core.

    Returns the last 2-second reading; prints a warning when the machine stayed busy.
    """
    deadline = time.monotonic() + max_wait
    while True:
        account = CpuAccount()
        time.sleep(2.0)
        reading = account.read()
        if reading["other_cpu_pct"] < threshold_pct:
            return reading
        if time.monotonic() >= deadline:
            print(f"warning: other processes use {reading['other_cpu_pct']}% CPU (100% = one core); "
                  "the figures below are lower than on an idle machine", flush=True)
            return reading
        print(f"waiting for the machine to become idle: other processes use {reading['other_cpu_pct']}% CPU", flush=True)
        time.sleep(3.0)


def python() -> str:
    """Return the interpreter running this script, which the child processes use too."""
    return sys.executable
