"""Memory of the demo: total RSS of ``sparkiot demo`` and every process it starts, JVM included.

The script runs ``python -m sparkiot demo --duration D --data-dir TMP`` as a child process. Every
``--interval`` seconds it sums the resident set size (RSS) of the child and all of its
descendants. The embedded broker and the replay thread live in the demo process, while the
ingest process, the JVM and Spark's Python workers are its descendants. It reports the peak and the mean of that
sum, and the processes that made up the peak. RSS counts shared pages once per process, so the
sum is an upper bound of the memory the tree needs; the script also sums PSS, which splits each
shared page among the processes that map it.

    python benchmarks/demo_memory.py --json results/demo_memory.json
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psutil  # noqa: E402

from _common import CpuAccount, machine_info, print_table, python, wait_for_quiet, write_json  # noqa: E402

TARGET_BYTES = 2 * 1024**3
GIB = 1024**3


def label(process: psutil.Process) -> str:
    """Return a short name for a process of the demo's tree."""
    try:
        command = process.cmdline()
    except psutil.Error:
        return "?"
    text = " ".join(command)
    if command and command[0].endswith("java"):
        return "jvm"
    for marker, name in (
        ("sparkiot ingest", "ingest"),
        ("sparkiot demo", "demo (driver, broker, replay)"),
        ("python_streaming_source_runner", "python data source runner"),
        ("pyspark.daemon", "pyspark worker"),
        ("pyspark.worker", "pyspark worker"),
    ):
        if marker in text:
            return name
    return Path(command[0]).name if command else "?"


def sample(root: psutil.Process, *, pss: bool) -> tuple[int, int, dict[str, list[int]], int]:
    """Return (total RSS, total PSS, [RSS, processes] per label, process count) of ``root`` and its descendants.

    PSS (proportional set size) divides each shared page among the processes that map it, so
    its sum does not count the pages Spark's forked Python workers share more than once. It is
    read only when ``pss`` is true (it costs a read of each process's smaps).
    """
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0, {}, 0
    total = total_pss = 0
    by_label: dict[str, list[int]] = {}
    counted = 0
    for process in processes:
        try:
            rss = process.memory_info().rss
            if pss:
                total_pss += process.memory_full_info().pss
        except psutil.Error:
            continue
        total += rss
        counted += 1
        entry = by_label.setdefault(label(process), [0, 0])
        entry[0] += rss
        entry[1] += 1
    return total, total_pss, by_label, counted


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="demo duration in seconds (default 60)")
    parser.add_argument("--interval", type=float, default=0.5, help="sampling interval in seconds (default 0.5)")
    parser.add_argument("--no-pss", action="store_true", help="sample RSS only, not PSS")
    parser.add_argument("--quiet-wait", type=float, default=60.0, help="seconds to wait for other processes to go idle")
    parser.add_argument("--json", help="write the results as JSON to this file")
    args = parser.parse_args()

    wait_for_quiet(args.quiet_wait)
    with tempfile.TemporaryDirectory(prefix="sparkiot-bench-demo-") as folder:
        data_dir = Path(folder) / "data"
        command = [python(), "-m", "sparkiot", "demo", "--duration", f"{args.duration:g}", "--data-dir", str(data_dir)]
        log_path = Path(folder) / "demo.out"
        account = CpuAccount()
        started = time.monotonic()
        with open(log_path, "w") as log:
            child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        root = psutil.Process(child.pid)
        samples: list[tuple[float, int, int, int]] = []
        peak = (0, {}, 0)
        peak_time = 0.0
        cpu: dict = {}
        while child.poll() is None:
            total, total_pss, by_label, count = sample(root, pss=not args.no_pss)
            now = time.monotonic() - started
            if total:
                # Read CPU while the tree is alive: a process that exits unwaited takes its CPU time along.
                cpu = account.read()
                samples.append((round(now, 2), total, total_pss, count))
                if total > peak[0]:
                    peak, peak_time = (total, by_label, count), now
            time.sleep(max(args.interval - (time.monotonic() - started - now), 0.0))
        elapsed = time.monotonic() - started
        output = log_path.read_text()

    if child.returncode != 0:
        print(output[-3000:])
        print(f"error: the demo exited with status {child.returncode}", file=sys.stderr)
    totals = [total for _, total, _, _ in samples]
    mean = sum(totals) / len(totals) if totals else 0
    pss_totals = [value for _, _, value, _ in samples]
    peak_pss = max(pss_totals, default=0)
    mean_pss = sum(pss_totals) / len(pss_totals) if pss_totals else 0
    peak_total, peak_labels, peak_count = peak
    summary_lines = [line for line in output.splitlines() if line.strip().startswith(("landed", "rows written", "ran "))]

    print()
    print_table(
        ["measure", "GiB"],
        [["peak total RSS", round(peak_total / GIB, 3)], ["mean total RSS", round(mean / GIB, 3)],
         ["peak total PSS", round(peak_pss / GIB, 3) if not args.no_pss else None],
         ["mean total PSS", round(mean_pss / GIB, 3) if not args.no_pss else None]],
    )
    print(f"peak at {peak_time:.1f} s of {elapsed:.1f} s, {peak_count} processes; {len(samples)} samples")
    print_table(["process at the peak", "processes", "RSS MiB"],
                [[name, count, round(rss / 1024**2)]
                 for name, (rss, count) in sorted(peak_labels.items(), key=lambda item: -item[1][0]) if rss])
    met = peak_total < TARGET_BYTES
    print(f"target: peak under 2 GiB: {'met' if met else 'not met'}")
    for line in summary_lines:
        print("demo: " + line.strip())

    write_json(args.json, {
        "benchmark": "demo_memory",
        "machine": machine_info(),
        "settings": {"duration": args.duration, "interval": args.interval, "command": " ".join(command[1:])},
        "exit_status": child.returncode,
        "seconds": round(elapsed, 1),
        "peak_rss_bytes": peak_total,
        "peak_rss_gib": round(peak_total / GIB, 3),
        "mean_rss_gib": round(mean / GIB, 3),
        "peak_pss_gib": round(peak_pss / GIB, 3) if not args.no_pss else None,
        "mean_pss_gib": round(mean_pss / GIB, 3) if not args.no_pss else None,
        "peak_at_s": round(peak_time, 1),
        "peak_processes": peak_count,
        "peak_by_process": {name: {"rss_mib": round(rss / 1024**2), "processes": count}
                            for name, (rss, count) in peak_labels.items()},
        "target_bytes": TARGET_BYTES,
        "target_met": met,
        "cpu": cpu,
        "demo_summary": summary_lines,
        "samples": samples,
    })
    return 0 if child.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
