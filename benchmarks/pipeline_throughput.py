"""Spark-side throughput: sparkiot's StreamingJob against a plain PySpark job on the same readings.

Method:

1. Pre-land ``--readings`` synthetic readings of ``--series`` series into a landing log with
   ``LandingLog.append`` and ``readings_to_batch``. The series are 100 devices x 10 metrics, one
   reading per series per second, in time order across series. Frames hold ``--frame`` readings,
   as the ingest's group commits would write them. One more reading, of device ``_clock`` two
   days later, moves the watermark past every window. ``msg_id`` is derived as the codec derives
   it for payloads without an id.
2. Export the same records once as Parquet files.
3. Start one SparkSession (``build_session``, master ``local[2]``); its start-up (the JVM) is
   timed on its own and is not part of any throughput figure.
4. Warm-up: run both jobs once on a small input (``--warmup-readings``); timed, reported apart.
5. Measured runs: time each job from the moment its queries start until ``tables/readings``
   holds every reading and ``tables/windows`` every window (the expected window count is
   computed with numpy from the generated timestamps).

Jobs:

* ``sparkiot``: ``StreamingJob(spark, config).start()`` with the library's default windows
  (5 min tumbling and 1 h sliding by 15 min), watermark 10 min, trigger 500 ms; this runs its
  five queries (readings, windows, late, dead_letters, alerts), writes partitioned tables with
  dynamic partition overwrite and updates the SQLite latest-value store.
* ``plain``: ``spark.readStream.schema(...).parquet(DIR)`` with the same watermark,
  ``dropDuplicatesWithinWatermark(["msg_id"])``, the same windows and aggregates, and two
  queries whose ``foreachBatch`` appends to Parquet (readings and windows), trigger 500 ms.

    python benchmarks/pipeline_throughput.py --json results/pipeline.json
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from _common import CpuAccount, machine_info, print_table, wait_for_quiet, write_json  # noqa: E402

HOUR_US = 3_600_000_000
# 2026-12-04T00:00:00Z, so every series starts on a window boundary.
BASE_US = 1_796_342_400_000_000
TRIGGER = "500 milliseconds"


# -- input ------------------------------------------------------------------------------------


def generate_landing(directory: Path, readings: int, series: int, frame: int, seed: int) -> dict:
    """Land ``readings`` readings (plus one watermark sentinel) into a landing log at ``directory``.

    Return the facts the completion checks need: readings landed and expected window rows.
    """
    from sparkiot.ingest.landing import LandingLog
    from sparkiot.readings import READING_SCHEMA, Reading, derive_msg_id, readings_to_batch

    rng = np.random.default_rng(seed)
    per_series = readings // series
    total = per_series * series
    # Reading k of the stream is at second k // series, of series k % series. A per-series offset
    # below one second keeps the series' timestamps apart without crossing a window boundary.
    second = np.arange(total, dtype=np.int64) // series
    series_index = np.arange(total, dtype=np.int64) % series
    ts_us = BASE_US + second * 1_000_000 + series_index * 500
    values = np.round(20.0 + rng.normal(0.0, 1.0, total), 6)
    devices = [f"dev-{index // 10:03d}" for index in range(series)]
    metrics = [f"m{index % 10}" for index in range(series)]
    topics = [f"sensors/site-{index // 100}/{devices[index]}" for index in range(series)]
    sites = [f"site-{index // 100}" for index in range(series)]

    log = LandingLog(directory, READING_SCHEMA)
    try:
        for start in range(0, total, frame):
            rows = []
            for k in range(start, min(start + frame, total)):
                s = int(series_index[k])
                t = int(ts_us[k])
                v = float(values[k])
                rows.append(Reading(devices[s], metrics[s], t, v, None, sites[s], derive_msg_id(devices[s], metrics[s], t, v),
                                    t + 2_000, topics[s]))
            log.append(readings_to_batch(rows), max_event_us=int(ts_us[min(start + frame, total) - 1]))
        sentinel_ts = int(ts_us[-1]) + 48 * HOUR_US
        sentinel = Reading("_clock", "tick", sentinel_ts, 0.0, None, None, "sentinel", sentinel_ts, "sensors/_clock")
        log.append(readings_to_batch([sentinel]), max_event_us=sentinel_ts)
        landed = log.end_offset
    finally:
        log.close()

    # Every (series, window) pair the readings fall in is expected. The sentinel's own windows stay
    # open because nothing passes them, so they are not.
    expected = 0
    for size_us, slide_us in ((5 * 60_000_000, 5 * 60_000_000), (HOUR_US, 15 * 60_000_000)):
        last_slot = (ts_us - ts_us % slide_us) // slide_us
        keys = [series_index * 10_000_000 + (last_slot - k) for k in range(size_us // slide_us)]
        expected += len(np.unique(np.concatenate(keys)))
    return {"readings": landed, "data_readings": total, "expected_windows": expected}


def export_parquet(landing: Path, target: Path, rows_per_file: int = 500_000) -> int:
    """Write the landing log's records as Parquet files and return the number of files."""
    from sparkiot.ingest.landing import LogReader

    target.mkdir(parents=True, exist_ok=True)
    reader = LogReader(landing)
    end = reader.end_offset()
    files = 0
    for start in range(0, end, rows_per_file):
        table = pa.Table.from_batches(list(reader.read(start, min(start + rows_per_file, end))))
        pq.write_table(table, target / f"part-{files:05d}.parquet")
        files += 1
    return files


# -- jobs -------------------------------------------------------------------------------------


def sparkiot_config(data_dir: Path):
    from sparkiot.config import build_config

    return build_config(
        {
            "name": "bench-pipeline",
            "data_dir": str(data_dir),
            "spark": {"master": "local[2]", "trigger": "500ms", "side_trigger": "1s", "shuffle_partitions": 2},
        }
    )


def run_sparkiot(spark, data_dir: Path, facts: dict, timeout: float) -> dict:
    """Run StreamingJob on a data directory whose landing log is already filled."""
    from sparkiot.stream.job import StreamingJob

    config = sparkiot_config(data_dir)
    job = StreamingJob(spark, config)
    account = CpuAccount()
    started = time.monotonic()
    job.start()
    try:
        deadline = started + timeout
        while True:
            job.process_all_available()
            done_readings = job.rows_written.get("readings", 0) >= facts["readings"]
            done_windows = job.rows_written.get("windows", 0) >= facts["expected_windows"]
            if done_readings and done_windows:
                break
            if job.failed_query() is not None:
                raise RuntimeError(f"query {job.failed_query().name} failed: {job.failed_query().exception()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"sparkiot job incomplete after {timeout:g}s: {job.rows_written}")
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        progress = _progress(job.queries)
    finally:
        job.stop()
    return {"seconds": elapsed, "rows_written": dict(job.rows_written), "batches": dict(job.batches),
            "progress": progress, "cpu": account.read()}


def run_plain(spark, parquet_dir: Path, out_dir: Path, facts: dict, timeout: float) -> dict:
    """Run the hand-written job: Parquet source, watermark, dedup, windows, foreachBatch to Parquet."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_schema

    from sparkiot.readings import READING_SCHEMA

    schema = from_arrow_schema(READING_SCHEMA)

    def deduplicated():
        return (
            spark.readStream.schema(schema).parquet(str(parquet_dir))
            .withWatermark("ts", "10 minutes")
            .dropDuplicatesWithinWatermark(["msg_id"])
        )

    readings_out = out_dir / "tables" / "readings"
    windows_out = out_dir / "tables" / "windows"

    def write_readings(df, batch_id):
        df.write.mode("append").parquet(str(readings_out))

    def write_windows(df, batch_id):
        df.select(
            "window_name", "device_id", "metric",
            F.col("window.start").alias("window_start"), F.col("window.end").alias("window_end"),
            "count", "mean", "min", "max", "stddev",
            F.col("quantiles")[0].alias("p50"), F.col("quantiles")[1].alias("p95"),
        ).write.mode("append").parquet(str(windows_out))

    # One source per query, as in StreamingJob; both windows are assigned from the same one.
    source = deduplicated()
    for_windows = deduplicated()
    tumbling = for_windows.select(F.lit("5m").alias("window_name"), F.window("ts", "5 minutes").alias("window"),
                                  "device_id", "metric", "value")
    sliding = for_windows.select(F.lit("1h/15m").alias("window_name"),
                                 F.window("ts", "1 hour", "15 minutes").alias("window"), "device_id", "metric", "value")
    windows = tumbling.unionByName(sliding).groupBy("window_name", "window", "device_id", "metric").agg(
        F.count("value").alias("count"),
        F.avg("value").alias("mean"),
        F.min("value").alias("min"),
        F.max("value").alias("max"),
        F.stddev_samp("value").alias("stddev"),
        F.percentile_approx("value", [0.5, 0.95], 10000).alias("quantiles"),
    )
    account = CpuAccount()
    started = time.monotonic()
    queries = [
        source.writeStream.queryName("plain_readings").foreachBatch(write_readings)
        .option("checkpointLocation", str(out_dir / "checkpoints" / "readings")).trigger(processingTime=TRIGGER).start(),
        windows.writeStream.queryName("plain_windows").outputMode("append").foreachBatch(write_windows)
        .option("checkpointLocation", str(out_dir / "checkpoints" / "windows")).trigger(processingTime=TRIGGER).start(),
    ]
    try:
        deadline = started + timeout
        while True:
            waiters = [threading.Thread(target=query.processAllAvailable) for query in queries]
            for waiter in waiters:
                waiter.start()
            for waiter in waiters:
                waiter.join()
            rows = {"readings": _parquet_rows(readings_out), "windows": _parquet_rows(windows_out)}
            if rows["readings"] >= facts["readings"] and rows["windows"] >= facts["expected_windows"]:
                break
            for query in queries:
                if not query.isActive and query.exception() is not None:
                    raise RuntimeError(f"query {query.name} failed: {query.exception()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"plain job incomplete after {timeout:g}s: {rows}")
            time.sleep(0.1)
        elapsed = time.monotonic() - started
        progress = _progress(queries)
    finally:
        for query in queries:
            query.stop()
    return {"seconds": elapsed, "rows_written": rows, "progress": progress, "cpu": account.read()}


def _parquet_rows(path: Path) -> int:
    """Return the rows of the committed Parquet files under ``path``, read from their footers."""
    if not path.exists():
        return 0
    total = 0
    for file in path.rglob("*.parquet"):
        if any(part.startswith(("_", ".")) for part in file.relative_to(path).parts):
            continue
        try:
            total += pq.ParquetFile(file).metadata.num_rows
        except (OSError, pa.ArrowInvalid):
            continue
    return total


def _progress(queries) -> dict:
    """Return, per query, the micro-batches with input rows and their trigger execution times (ms)."""
    summary = {}
    for query in queries:
        batches = []
        for progress in query.recentProgress:
            rows = progress.numInputRows
            duration = progress.durationMs.get("triggerExecution", 0)
            if rows or duration > 1000:
                batches.append({"batch_id": progress.batchId, "input_rows": rows, "trigger_ms": duration,
                                "add_batch_ms": progress.durationMs.get("addBatch", 0)})
        summary[query.name] = batches
    return summary


# -- driver -----------------------------------------------------------------------------------


def prepare(workdir: Path, name: str, readings: int, series: int, frame: int) -> dict:
    from sparkiot.ingest.consumer import landing_dir

    started = time.monotonic()
    data_dir = workdir / f"{name}-sparkiot"
    facts = generate_landing(landing_dir(sparkiot_config(data_dir), "readings"), readings, series, frame, seed=7)
    landed = time.monotonic() - started
    parquet_dir = workdir / f"{name}-parquet"
    files = export_parquet(landing_dir(sparkiot_config(data_dir), "readings"), parquet_dir)
    facts.update({"data_dir": data_dir, "parquet_dir": parquet_dir, "plain_out": workdir / f"{name}-plain",
                  "parquet_files": files, "landing_seconds": round(landed, 1)})
    return facts


def run_pair(spark, facts: dict, order: list[str], timeout: float) -> dict:
    results = {}
    for job in order:
        if job == "sparkiot":
            results[job] = run_sparkiot(spark, facts["data_dir"], facts, timeout)
        else:
            results[job] = run_plain(spark, facts["parquet_dir"], facts["plain_out"], facts, timeout)
        print(f"  {job}: {facts['readings']:,} readings in {results[job]['seconds']:.1f} s "
              f"(other processes {results[job]['cpu']['other_cpu_pct']}% CPU)", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readings", type=int, default=2_000_000, help="readings to pre-land (default 2,000,000)")
    parser.add_argument("--series", type=int, default=1000, help="series (device, metric) (default 1000)")
    parser.add_argument("--frame", type=int, default=10_000, help="readings per landing-log frame (default 10000)")
    parser.add_argument("--warmup-readings", type=int, default=100_000, help="readings of the warm-up run (default 100000)")
    parser.add_argument("--order", default="sparkiot,plain", help="which jobs run first (default sparkiot,plain)")
    parser.add_argument("--timeout", type=float, default=600.0, help="give up on one job after this many seconds")
    parser.add_argument("--quiet-wait", type=float, default=60.0, help="seconds to wait for other processes to go idle")
    parser.add_argument("--keep", help="keep the generated data and outputs in this folder instead of a temporary one")
    parser.add_argument("--json", help="write the results as JSON to this file")
    args = parser.parse_args()
    order = [name.strip() for name in args.order.split(",")]

    workdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="sparkiot-bench-pipeline-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        print(f"landing {args.readings:,} + {args.warmup_readings:,} readings in {workdir} ...", flush=True)
        warm = prepare(workdir, "warmup", args.warmup_readings, args.series, args.frame)
        main_facts = prepare(workdir, "main", args.readings, args.series, args.frame)
        print(f"  landed in {main_facts['landing_seconds']} s; {main_facts['expected_windows']:,} windows expected",
              flush=True)

        from sparkiot.config import SparkConfig
        from sparkiot.stream.session import build_session

        wait_for_quiet(args.quiet_wait)
        started = time.monotonic()
        spark = build_session(SparkConfig(master="local[2]", shuffle_partitions=2), app_name="sparkiot-bench",
                              log_file=workdir / "spark.log")
        session_seconds = time.monotonic() - started
        print(f"SparkSession started in {session_seconds:.1f} s (not counted)", flush=True)
        try:
            print(f"warm-up on {warm['readings']:,} readings:", flush=True)
            warmup = run_pair(spark, warm, order, args.timeout)
            wait_for_quiet(args.quiet_wait)
            print(f"measured run on {main_facts['readings']:,} readings:", flush=True)
            measured = run_pair(spark, main_facts, order, args.timeout)
        finally:
            spark.stop()
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    rows = []
    for job in order:
        result = measured[job]
        rate = main_facts["readings"] / result["seconds"]
        result["readings_per_s"] = round(rate)
        rows.append([job, main_facts["readings"], round(result["seconds"], 1), round(rate),
                     round(warmup[job]["seconds"], 1), f"{result['cpu']['other_cpu_pct']}%"])
    ratio = measured["sparkiot"]["readings_per_s"] / measured["plain"]["readings_per_s"] if len(measured) == 2 else None
    print()
    print_table(["job", "readings", "seconds", "readings/s", "warm-up s", "cpu others"], rows)
    if ratio is not None:
        print(f"sparkiot / plain throughput ratio: {ratio:.2f}")

    def clean(facts: dict) -> dict:
        return {key: value for key, value in facts.items() if not isinstance(value, Path)}

    write_json(args.json, {
        "benchmark": "pipeline_throughput",
        "machine": machine_info(),
        "settings": {"readings": args.readings, "series": args.series, "frame": args.frame, "master": "local[2]",
                     "shuffle_partitions": 2, "trigger": TRIGGER, "watermark": "10 minutes",
                     "windows": ["5 minutes tumbling", "1 hour sliding by 15 minutes"],
                     "timing": "from query start to complete tables; SparkSession start and warm-up run excluded"},
        "session_start_seconds": round(session_seconds, 1),
        "input": clean(main_facts),
        "warmup_input": clean(warm),
        "warmup": warmup,
        "measured": measured,
        "ratio_sparkiot_to_plain": round(ratio, 3) if ratio is not None else None,
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
