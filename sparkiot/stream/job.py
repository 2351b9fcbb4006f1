"""The Spark Structured Streaming job: landing logs in, tables and latest-value state out.

Queries, each with its own checkpoint under ``DATA_DIR/checkpoints``:

* ``readings``: drops duplicates by ``msg_id`` within the watermark, writes ``tables/readings``
  and updates the latest-value state store;
* ``windows``: the same deduplication, then event-time tumbling and sliding windows per
  (device_id, metric) with count, mean, min, max, stddev and approximate p50/p95, written to
  ``tables/windows`` once the watermark passes the window's end (append mode);
and, in a thread of this process rather than in Spark (see :mod:`sparkiot.stream.side_tables`),
copies of the ``late``, ``dead_letters``, ``alerts`` and ``events`` logs to tables of the same
name, with each device's status (``alive`` or ``stale``, from Sparkplug births and deaths) in
the state store.

Exactly-once: the readings and windows tables are partitioned by ``date`` and ``batch_id`` and
written with dynamic partition overwrite, so a micro-batch replayed after a crash replaces its
own files instead of adding to them; the state store update is idempotent. Spark's checkpoint records each batch's
offsets before the batch runs, so a replay reads the same records.

NOTE: a window is written only when the watermark (largest event time minus ``watermark``)
passes its end, so the newest windows of a stream that stops stay open until more data arrives.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQueryListener

from sparkiot.config import PipelineConfig, WindowConfig
from sparkiot.ingest.consumer import landing_dir
from sparkiot.state.sqlite import LatestValueStore
from sparkiot.stream.side_tables import SideTable, SideTableCopier
from sparkiot.stream.source import SOURCE_NAME, LandingSource

log = logging.getLogger(__name__)

# The event-time column that dates each table's partitions.
_DATE_COLUMN = {"readings": "ts", "late": "ts", "dead_letters": "received_ts", "alerts": "ts", "events": "ts"}


# One JSON line per micro-batch and query, under the data directory: what the dashboard reads.
PROGRESS_LOG = "progress.jsonl"
PROGRESS_LOG_BYTES = 16 * 1024 * 1024
JOB_INFO = "job.json"


def table_path(config: PipelineConfig, table: str) -> Path:
    return config.data_path / "tables" / table


def write_job_info(path: Path, info: dict) -> None:
    """Replace ``path`` with ``info`` as JSON atomically: a temporary file is written, then renamed over it."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(info))
    os.replace(temporary, path)


def write_batch(df: DataFrame, path: Path, batch_id: int, date_column: str) -> None:
    """Write one micro-batch idempotently: its (date, batch_id) partitions are replaced, nothing else."""
    (
        df.withColumn("date", F.to_date(F.col(date_column)))
        .withColumn("batch_id", F.lit(batch_id).cast("long"))
        .write.mode("overwrite")
        .option("partitionOverwriteMode", "dynamic")
        .partitionBy("date", "batch_id")
        .parquet(str(path))
    )


def _interval(seconds: float) -> str:
    return f"{int(round(seconds * 1000))} milliseconds"


class ProgressTotals(StreamingQueryListener):
    """Totals from every micro-batch's progress report, per query name.

    ``duplicates_dropped`` counts readings removed by ``msg_id`` deduplication;
    ``dropped_by_watermark`` counts rows a stateful operator discarded as too late, which stays 0
    while the ingest lands late readings separately. ``last_batch_ms`` is the last batch's duration.
    """

    def __init__(self, *, log_path: Path | None = None, executors=None) -> None:
        """``log_path`` receives each report as a JSON line; ``executors()`` returns the executor count or None."""
        super().__init__()
        self.log_path = log_path
        self.executors = executors
        self._logged: dict[str, int] = {}
        self.duplicates_dropped: dict[str, int] = {}
        self.dropped_by_watermark: dict[str, int] = {}
        self.last_batch_ms: dict[str, int] = {}
        # The last progress report of each query: rates, duration, watermark and source offset.
        self.last: dict[str, dict] = {}
        self._lock = threading.Lock()

    def onQueryStarted(self, event) -> None:
        pass

    def onQueryProgress(self, event) -> None:
        progress = event.progress
        name = progress.name or str(progress.id)
        # The lowest offset every source of the query has processed up to.
        offsets = []
        for source in progress.sources:
            try:
                offsets.append(int(json.loads(source.endOffset)["offset"]))
            except (TypeError, ValueError, KeyError):
                pass
        end_offset = min(offsets) if offsets else None
        last = {
            "batch_id": int(progress.batchId),
            "rows": int(progress.numInputRows),
            "input_rate": float(progress.inputRowsPerSecond or 0.0),
            "process_rate": float(progress.processedRowsPerSecond or 0.0),
            "batch_ms": int(progress.batchDuration),
            "watermark": (progress.eventTime or {}).get("watermark"),
            "end_offset": end_offset,
            "time": time.time(),
        }
        with self._lock:
            self.last_batch_ms[name] = int(progress.batchDuration)
            self.last[name] = last
            self._log(name, last)
            for operator in progress.stateOperators:
                dropped = int(operator.customMetrics.get("numDroppedDuplicateRows", 0) or 0)
                self.duplicates_dropped[name] = self.duplicates_dropped.get(name, 0) + dropped
                late = int(operator.numRowsDroppedByWatermark or 0)
                self.dropped_by_watermark[name] = self.dropped_by_watermark.get(name, 0) + late

    def record(self, progress) -> None:
        """Keep the last report from ``StreamingQuery.lastProgress``: a dictionary, or an object with its fields."""

        def field(holder, name, default=None):
            value = getattr(holder, name, None)
            if value is None and isinstance(holder, dict):
                value = holder.get(name)
            return default if value is None else value

        offsets = []
        for source in field(progress, "sources", []):
            try:
                end = field(source, "endOffset")
                offsets.append(int((json.loads(end) if isinstance(end, str) else end)["offset"]))
            except (TypeError, ValueError, KeyError):
                pass
        event_time = field(progress, "eventTime", {}) or {}
        last = {
            "batch_id": int(field(progress, "batchId", -1)),
            "rows": int(field(progress, "numInputRows", 0)),
            "input_rate": float(field(progress, "inputRowsPerSecond", 0.0)),
            "process_rate": float(field(progress, "processedRowsPerSecond", 0.0)),
            "batch_ms": int(field(progress, "batchDuration", 0)),
            "watermark": event_time.get("watermark"),
            "end_offset": min(offsets) if offsets else None,
            "time": time.time(),
        }
        name = field(progress, "name") or str(field(progress, "id"))
        with self._lock:
            self.last_batch_ms[name] = last["batch_ms"]
            self.last[name] = last
            self._log(name, last)

    def _log(self, name: str, last: dict) -> None:
        """Append one line per new batch to ``log_path`` (the dashboard reads it); callers hold the lock."""
        if self.log_path is None or self._logged.get(name) == last["batch_id"]:
            return
        self._logged[name] = last["batch_id"]
        line = {"query": name, **last}
        if self.executors is not None:
            try:
                line["executors"] = self.executors()
            except Exception:  # noqa: BLE001 - a count is optional; a stopping context raises here
                line["executors"] = None
        try:
            with open(self.log_path, "a", encoding="utf-8") as out:
                out.write(json.dumps(line) + "\n")
                full = out.tell() >= PROGRESS_LOG_BYTES
            if full:
                # One older generation is kept, so the log stays under twice the bound.
                os.replace(self.log_path, self.log_path.with_name(self.log_path.name + ".1"))
        except OSError as exc:
            log.warning("cannot append to the progress log %s: %s", self.log_path, exc)

    def onQueryIdle(self, event) -> None:
        pass

    def onQueryTerminated(self, event) -> None:
        pass


class StreamingJob:
    """Builds and runs the job's streaming queries on a SparkSession."""

    def __init__(self, spark: SparkSession, config: PipelineConfig, *, on_batch=None, remote_batch_log: str | None = None,
                 remote: bool = False) -> None:
        """``on_batch(query_name, batch_id, rows)`` is called after each micro-batch's output is written.

        With ``remote`` (a Spark Connect session), the batch functions run in the server and append
        to ``remote_batch_log`` instead. Progress then comes from :meth:`poll_progress`, and
        ``rows_written`` stays empty.
        """
        self.spark = spark
        self.config = config
        self.on_batch = on_batch
        self.remote = remote
        self.remote_batch_log = remote_batch_log
        self.trigger = config.spark.trigger
        self.queries = []
        # Rows written and micro-batches run, per query; foreachBatch handlers run in this process.
        self.rows_written: dict[str, int] = {}
        self.batches: dict[str, int] = {}
        self._counter_lock = threading.Lock()
        self.progress = ProgressTotals(log_path=config.data_path / PROGRESS_LOG, executors=None if remote else self._executor_count)
        self._definitions: dict[str, tuple] = {}
        self._side: SideTableCopier | None = None
        self.restarts: dict[str, int] = {}
        # What this job wrote to job.json, or None when it wrote nothing (not started, or remote).
        self._job_info: dict | None = None
        if not remote:
            spark.streams.addListener(self.progress)
        spark.dataSource.register(LandingSource)

    def _write_job_info(self) -> None:
        """Write ``DATA_DIR/job.json``: when the driver started, its master, cores and memory (for the dashboard's cost).

        :meth:`stop` adds a ``stopped`` time to the same file.
        """
        info = {"name": self.config.name, "started": time.time(), **self._driver_info(), "pid": os.getpid()}
        write_job_info(self.config.data_path / JOB_INFO, info)
        self._job_info = info

    def _driver_info(self) -> dict:
        """Return the driver's ``master``, ``driver_cores`` and ``driver_memory_bytes`` from the Spark context."""
        context = self.spark.sparkContext
        memory = context._jvm.org.apache.spark.network.util.JavaUtils.byteStringAsBytes(
            context.getConf().get("spark.driver.memory", "1g")
        )
        master = context.master
        cores = context.defaultParallelism if master.startswith("local") else int(context.getConf().get("spark.driver.cores", "1"))
        return {"master": master, "driver_cores": cores, "driver_memory_bytes": int(memory)}

    def _write_stop_time(self) -> None:
        """Add ``stopped`` (Unix seconds) to ``job.json``, so the dashboard prices the driver only until now."""
        # A second stop() keeps the first stop time.
        if self._job_info is None or "stopped" in self._job_info:
            return
        self._job_info = {**self._job_info, "stopped": time.time()}
        path = self.config.data_path / JOB_INFO
        try:
            write_job_info(path, self._job_info)
        except OSError as exc:
            log.warning("cannot write the stop time to %s: %s; the dashboard's cost of the driver keeps growing "
                        "until the job starts again", path, exc)

    def _executor_count(self) -> int:
        """Return the executors registered with the driver, the driver itself not counted."""
        return len(self.spark.sparkContext._jsc.sc().statusTracker().getExecutorInfos()) - 1

    def _read(self, log_name: str, consumer: str) -> DataFrame:
        return (
            self.spark.readStream.format(SOURCE_NAME)
            .option("path", str(landing_dir(self.config, log_name)))
            .option("log", log_name)
            .option("consumer", consumer)
            .load()
        )

    def _deduplicated(self, consumer: str) -> DataFrame:
        watermark = _interval(self.config.watermark)
        return self._read("readings", consumer).withWatermark("ts", watermark).dropDuplicatesWithinWatermark(["msg_id"])

    def _count(self, name: str, rows: int) -> None:
        with self._counter_lock:
            self.rows_written[name] = self.rows_written.get(name, 0) + rows
            self.batches[name] = self.batches.get(name, 0) + 1

    def _start(self, df: DataFrame, name: str, handler, trigger_seconds: float, output_mode: str = "append"):
        def counted(batch: DataFrame, batch_id: int) -> None:
            batch = batch.persist()
            try:
                rows = handler(batch, batch_id)
            finally:
                batch.unpersist()
            self._count(name, rows)
            if self.on_batch is not None:
                self.on_batch(name, batch_id, rows)

        function = RemoteBatchWriter(self.config, name, self.remote_batch_log) if self.remote else counted
        query = (
            df.writeStream.queryName(name)
            .outputMode(output_mode)
            .foreachBatch(function)
            .option("checkpointLocation", str(self.config.data_path / "checkpoints" / name))
            .trigger(processingTime=_interval(trigger_seconds))
            .start()
        )
        self.queries.append(query)
        self._definitions[name] = (df, handler, trigger_seconds, output_mode)
        log.info("started query %s (checkpoint %s)", name, self.config.data_path / "checkpoints" / name)
        return query

    def start(self) -> None:
        """Start every query; they run until :meth:`stop`."""
        spark_config = self.config.spark
        if not self.remote:
            self._write_job_info()
        self._start(self._deduplicated("readings"), "readings", self._write_readings, self.trigger)
        self._start(self.window_frame(), "windows", self._write_windows, self.trigger)
        self._side = SideTableCopier(
            [
                SideTable(
                    name=name,
                    log_dir=landing_dir(self.config, name),
                    table_dir=table_path(self.config, name),
                    checkpoint=self.config.data_path / "checkpoints" / f"{name}.json",
                    date_column=_DATE_COLUMN[name],
                    on_batch=self._store_statuses if name == "events" else None,
                )
                for name in ("late", "dead_letters", "alerts", "events")
            ],
            interval=spark_config.side_trigger,
            on_copied=self._count,
        )
        self._side.start()

    def window_frame(self) -> DataFrame:
        """Return the streaming aggregation of every configured window over deduplicated readings."""
        deduplicated = self._deduplicated("windows")
        per_window = [self._assign_window(deduplicated, window) for window in self.config.windows]
        assigned = per_window[0]
        for other in per_window[1:]:
            assigned = assigned.unionByName(other)
        return assigned.groupBy("window_name", "window", "device_id", "metric").agg(
            F.count("value").alias("count"),
            F.avg("value").alias("mean"),
            F.min("value").alias("min"),
            F.max("value").alias("max"),
            F.stddev_samp("value").alias("stddev"),
            F.percentile_approx("value", [0.5, 0.95], 10000).alias("quantiles"),
        )

    @staticmethod
    def _assign_window(df: DataFrame, window: WindowConfig) -> DataFrame:
        size = _interval(window.size)
        slide = _interval(window.slide) if window.slide else None
        return df.select(
            F.lit(window.name).alias("window_name"),
            F.window("ts", size, slide).alias("window") if slide else F.window("ts", size).alias("window"),
            "device_id",
            "metric",
            "value",
        )

    def _write_readings(self, df: DataFrame, batch_id: int) -> int:
        return write_readings(self.config, df, batch_id)

    def _write_windows(self, df: DataFrame, batch_id: int) -> int:
        return write_windows(self.config, df, batch_id)

    def _store_statuses(self, events: pa.Table) -> None:
        """Mark each device ``stale`` from its DEATH and ``alive`` from its BIRTH in the state store."""
        now_us = time.time_ns() // 1000
        rows = [
            (event["device_id"], "stale" if event["event"] == "death" else "alive",
             _to_us(event["ts"]), json.dumps(list(event["metrics"])), now_us)
            for event in sorted(events.to_pylist(), key=lambda event: event["ts"])
        ]
        store = LatestValueStore(self.config.state_path)
        try:
            store.set_status(rows)
        finally:
            store.close()

    def process_all_available(self) -> list[str]:
        """Block until every query has processed everything landed so far; return the errors of failed queries.

        Queries wait in parallel. A query that fails while waiting is reported by name, not raised.
        """
        errors: list[str] = []

        def wait(query) -> None:
            try:
                query.processAllAvailable()
            except Exception as exc:  # noqa: BLE001 - collected and returned to the caller
                errors.append(f"Spark query {query.name} failed: {str(exc).splitlines()[0]}")

        waiters = [threading.Thread(target=wait, args=(query,)) for query in self.queries]
        for waiter in waiters:
            waiter.start()
        if self._side is not None:
            errors.extend(self._side.step_all())
        for waiter in waiters:
            waiter.join()
        return errors

    def restart_failed(self, *, max_restarts: int = 3):
        """Restart queries that stopped with an error from their checkpoints; return one that cannot be.

        A query is restarted at most ``max_restarts`` times per run. Failures such as a Python
        worker that did not connect back in time on an overloaded machine are transient; a query
        that keeps failing is returned so the caller can stop with its error.
        """
        for query in list(self.queries):
            if query.isActive or query.exception() is None:
                continue
            name = query.name
            count = self.restarts.get(name, 0)
            if count >= max_restarts:
                return query
            self.restarts[name] = count + 1
            log.error("query %s failed (%s); restarting it from its checkpoint (%d of %d)",
                      name, str(query.exception()).splitlines()[0], count + 1, max_restarts)
            self.queries.remove(query)
            df, handler, trigger_seconds, output_mode = self._definitions[name]
            self._start(df, name, handler, trigger_seconds, output_mode)
        return None

    def poll_progress(self) -> None:
        """Read each query's last progress report (for Spark Connect, where listeners run in the server)."""
        for query in self.queries:
            progress = query.lastProgress
            if progress:
                self.progress.record(progress)

    def set_trigger(self, seconds: float) -> None:
        """Restart the Spark queries from their checkpoints with a new processing-time trigger."""
        self.trigger = seconds
        for query in list(self.queries):
            name = query.name
            query.stop()
            self.queries.remove(query)
            df, handler, _, output_mode = self._definitions[name]
            self._start(df, name, handler, seconds, output_mode)

    def stop(self) -> None:
        """Stop every query and the side table copier, detach the progress listener and record the stop in ``job.json``."""
        if self._side is not None:
            self._side.stop()
        try:
            self.spark.streams.removeListener(self.progress)
        except Exception:  # noqa: BLE001 - the session may already be stopping
            log.debug("progress listener was not removed", exc_info=True)
        for query in self.queries:
            try:
                query.stop()
            except Exception:  # noqa: BLE001 - stopping the rest matters more
                log.warning("query %s did not stop cleanly", query.name, exc_info=True)
        self.queries.clear()
        self._write_stop_time()


def write_readings(config: PipelineConfig, df: DataFrame, batch_id: int) -> int:
    """Write one micro-batch of deduplicated readings and update the latest-value store; return its rows."""
    count = df.count()
    if count == 0:
        return 0
    write_batch(df, table_path(config, "readings"), batch_id, "ts")
    latest = (
        df.groupBy("device_id", "metric")
        .agg(F.max_by(F.struct("ts", "value", "unit", "site"), "ts").alias("last"))
        .select("device_id", "metric", "last.*")
        .collect()
    )
    now_us = time.time_ns() // 1000
    rows = [(row.device_id, row.metric, _to_us(row.ts), row.value, row.unit, row.site, now_us) for row in latest]
    store = LatestValueStore(config.state_path)
    try:
        store.upsert(rows)
    finally:
        store.close()
    return count


def write_windows(config: PipelineConfig, df: DataFrame, batch_id: int) -> int:
    """Write one micro-batch of closed windows; return its rows."""
    count = df.count()
    if count == 0:
        return 0
    flat = df.select(
        "window_name",
        "device_id",
        "metric",
        F.col("window.start").alias("window_start"),
        F.col("window.end").alias("window_end"),
        "count",
        "mean",
        "min",
        "max",
        "stddev",
        F.col("quantiles")[0].alias("p50"),
        F.col("quantiles")[1].alias("p95"),
    )
    write_batch(flat, table_path(config, "windows"), batch_id, "window_start")
    return count


class RemoteBatchWriter:
    """The foreachBatch function of a query on Spark Connect, where it runs in the server's Python worker.

    It holds only the configuration (as JSON) and the path of the batch log, so it pickles. It
    appends each batch's rows and completion time to ``batch_log`` itself, because the counters
    of :class:`StreamingJob` live in another process.
    """

    def __init__(self, config: PipelineConfig, query: str, batch_log: str | None) -> None:
        self.config_json = config.model_dump_json()
        self.query = query
        self.batch_log = batch_log

    def __call__(self, df: DataFrame, batch_id: int) -> None:
        from sparkiot.config import PipelineConfig as Config

        config = Config.model_validate_json(self.config_json)
        writer = write_readings if self.query == "readings" else write_windows
        df = df.persist()
        try:
            rows = writer(config, df, batch_id)
        finally:
            df.unpersist()
        if self.batch_log:
            with open(self.batch_log, "a", encoding="utf-8") as out:
                out.write(json.dumps({"query": self.query, "batch_id": batch_id, "rows": rows, "done": time.time()}) + "\n")


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _to_us(ts: datetime) -> int:
    # Spark returns naive datetimes in the session time zone, which sparkiot sets to UTC.
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return (ts - _EPOCH) // timedelta(microseconds=1)
