"""Run a whole pipeline: broker (embedded when configured), the ingest process and the Spark job.

The ingest runs in its own process (``sparkiot ingest``) so that decoding and fsyncs do not
compete with the Spark driver for one interpreter lock, and so that either side can be killed and
restarted alone. Stopping is orderly: the ingest stops first, then Spark processes everything
landed, then the queries stop.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sparkiot.config import PipelineConfig
from sparkiot.ingest.broker import EmbeddedBroker
from sparkiot.ingest.consumer import read_counters

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """Counts at the end of a run, for the terminal and for tests."""

    data_dir: Path
    seconds: float
    ingest: dict
    output_rows: dict[str, int] = field(default_factory=dict)
    duplicates_dropped: int = 0
    failure: str | None = None


def checkpoint_conflict(config: PipelineConfig) -> str | None:
    """Return why ``config`` cannot continue the checkpoints in its data directory, or None.

    Spark's checkpoints keep the watermark and window state of the earlier run; a different
    watermark or window set would make Spark drop readings the ingest accepted.
    """
    previous_path = config.data_path / "pipeline.json"
    if not previous_path.exists():
        return None
    try:
        previous = json.loads(previous_path.read_text())
    except (OSError, ValueError):
        return None
    current = config.model_dump(mode="json")
    changed = [key for key in ("watermark", "windows") if previous.get(key) != current.get(key)]
    if not changed:
        return None
    details = ", ".join(f"{key} was {previous.get(key)!r}, now {current.get(key)!r}" for key in changed)
    return (
        f"the data directory {config.data_path} holds checkpoints of a run with other settings ({details}); "
        "use a new data_dir, or delete its checkpoints, landing and tables folders to start over"
    )


@dataclass
class Dashboard:
    """The live dashboard a pipeline serves on ``host:port`` while it runs (``view`` is a ``DataDirView``)."""

    view: object
    port: int
    host: str = "127.0.0.1"
    any_port_if_busy: bool = False
    url: str | None = None

    def start(self):
        from sparkiot.dashboard.server import DashboardThread

        try:
            server = DashboardThread(self.view, host=self.host, port=self.port)
        except OSError:
            if not self.any_port_if_busy:
                raise
            server = DashboardThread(self.view, host=self.host, port=0)
        self.url = server.start()
        return server


class Pipeline:
    """One pipeline run; :meth:`run` returns when the duration ends, on Ctrl-C, or on a failure."""

    def __init__(
        self,
        config: PipelineConfig,
        *,
        duration: float | None = None,
        on_broker_ready: Callable[[str], None] | None = None,
        view: bool = True,
        dashboard: Dashboard | None = None,
    ) -> None:
        self.config = config
        self.dashboard = dashboard
        self.duration = duration
        self.on_broker_ready = on_broker_ready
        self.view = view
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> RunSummary:
        """Start everything, run, stop in order, and return the summary."""
        from sparkiot.stream.job import StreamingJob
        from sparkiot.stream.session import build_session

        config = self.config
        try:
            config.data_path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return RunSummary(config.data_path, 0.0, {}, failure=f"cannot create data directory {config.data_path}: {exc}")
        conflict = checkpoint_conflict(config)
        if conflict:
            return RunSummary(config.data_path, 0.0, {}, failure=conflict)
        broker = None
        ingest = None
        job = None
        spark = None
        dashboard = None
        started = time.monotonic()
        failure = None
        try:
            if config.source.broker == "embedded":
                broker = EmbeddedBroker()
                broker.start()
                broker_url = broker.url
                # amqtt speaks MQTT 3.1.1 only.
                config = config.model_copy(update={"source": config.source.model_copy(update={"protocol": "3.1.1"})})
            else:
                broker_url = config.source.broker

            ingest = self._start_ingest(config, broker_url)
            self._wait_for_subscription(config, ingest)
            if self.dashboard is not None:
                try:
                    dashboard = self.dashboard.start()
                except (OSError, RuntimeError) as exc:
                    failure = str(exc)
                    return RunSummary(config.data_path, time.monotonic() - started, {}, failure=failure)
                print(f"dashboard: {self.dashboard.url} (Prometheus metrics at {self.dashboard.url}metrics)", flush=True)
            if self.on_broker_ready is not None:
                self.on_broker_ready(broker_url)
            spark_log = None if config.spark.log_to_terminal else config.data_path / "logs" / "spark.log"
            spark = build_session(config.spark, app_name=f"sparkiot-{config.name}", log_file=spark_log)
            job = StreamingJob(spark, config)
            job.start()

            view = LiveView(config.data_path, enabled=self.view)
            while not self._stop.is_set():
                if self.duration is not None and time.monotonic() - started >= self.duration:
                    break
                if ingest.poll() is not None:
                    failure = f"the ingest process exited with status {ingest.returncode}; see {config.data_path / 'logs' / 'ingest.log'}"
                    break
                failed = job.restart_failed()
                if failed is not None:
                    first_line = str(failed.exception()).splitlines()[0]
                    failure = f"Spark query {failed.name} failed: {first_line} (Spark's log: {config.data_path / 'logs' / 'spark.log'})"
                    break
                view.render(job.rows_written, job.batches)
                self._stop.wait(1.0)
            view.finish()
        except KeyboardInterrupt:
            log.info("interrupted; stopping")
        finally:
            if ingest is not None and ingest.poll() is None:
                ingest.send_signal(signal.SIGTERM)
                try:
                    ingest.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    log.warning("ingest did not stop within 30 s; killing it")
                    ingest.kill()
            if job is not None:
                if failure is None:
                    failure = self._drain(job, config)
                job.stop()
            if spark is not None:
                spark.stop()
            if broker is not None:
                broker.stop()
            if dashboard is not None:
                dashboard.stop()
        output_rows = dict(job.rows_written) if job is not None else {}
        # The readings query's deduplication; the windows query repeats it once per window size.
        duplicates = job.progress.duplicates_dropped.get("readings", 0) if job is not None else 0
        return RunSummary(
            config.data_path, time.monotonic() - started, read_counters(config.data_path), output_rows, duplicates, failure
        )

    @staticmethod
    def _drain(job, config: PipelineConfig) -> str | None:
        """Let every query process what was landed; restart transient failures; return a failure or None."""
        for _ in range(4):
            errors = job.process_all_available()
            if not errors:
                return None
            if job.restart_failed() is not None:
                break
        return "; ".join(errors) + f" (Spark's log: {config.data_path / 'logs' / 'spark.log'})"

    @staticmethod
    def _wait_for_subscription(config: PipelineConfig, ingest: subprocess.Popen, timeout: float = 60.0) -> None:
        """Wait until the ingest has subscribed, so that nothing published from now on is missed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if read_counters(config.data_path).get("subscribed"):
                return
            if ingest.poll() is not None:
                return
            time.sleep(0.1)
        log.warning("the ingest has not subscribed after %g s; starting anyway (see logs/ingest.log)", timeout)

    def _start_ingest(self, config: PipelineConfig, broker_url: str) -> subprocess.Popen:
        effective = config.data_path / "pipeline.json"
        effective.write_text(json.dumps(config.model_dump(mode="json"), indent=2))
        log_path = config.data_path / "logs" / "ingest.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "sparkiot", "ingest", str(effective), "--broker", broker_url]
        log.info("starting ingest: %s", " ".join(command))
        with open(log_path, "ab") as log_file:
            return subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)


class LiveView:
    """A one-line live status in a terminal, or a line every 10 s when output is not a terminal."""

    def __init__(self, data_dir: Path, *, enabled: bool) -> None:
        self.data_dir = data_dir
        self.enabled = enabled
        self.tty = sys.stdout.isatty()
        self._last_line = 0.0
        self._last_readings: int | None = None
        self._last_time = time.monotonic()

    def render(self, output_rows: dict[str, int], batches: dict[str, int]) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not self.tty and now - self._last_line < 10:
            return
        counters = read_counters(self.data_dir)
        readings = counters.get("readings", 0)
        # The first line has no earlier count to compare with, since readings may land before Spark starts.
        rate = 0.0 if self._last_readings is None else (readings - self._last_readings) / max(now - self._last_time, 1e-9)
        self._last_readings, self._last_time, self._last_line = readings, now, now
        line = (
            f"readings/s {rate:7.0f} | landed {readings:8d} | stored {output_rows.get('readings', 0):8d} "
            f"| batches {batches.get('readings', 0):5d} "
            f"| windows {output_rows.get('windows', 0):6d} | alerts {counters.get('alerts', 0):5d} "
            f"| late {counters.get('late', 0):5d} | dead letters {counters.get('dead_letters', 0):5d}"
        )
        if self.tty:
            sys.stdout.write("\r" + line)
        else:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def finish(self) -> None:
        if self.enabled and self.tty:
            sys.stdout.write("\n")
