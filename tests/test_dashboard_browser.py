"""The dashboard in real headless Chromium while a pipeline runs on Mosquitto and Spark.

``sparkiot run`` runs as a process with its dashboard on a free port. The tests replay the demo's
real series (bokeh-sampledata) into it, then drive Debian's ``chromium`` through Playwright,
which is given the browser's path, so Playwright downloads nothing. When ``/usr/bin/chromium``
is missing and the tests run as root on Debian, the set-up installs it with apt.

The last tests need no Spark. They write small tables themselves and serve them with
``sparkiot dashboard``, which they limit to one event stream, stop and restart while a page is open.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sparkiot.ingest.replay import Replayer, Series
from tests.dashboard_support import alert_rows, reading_rows, window_rows, write_batch, write_side_file
from tests.support import publish_payloads, read_table, wait_for

pytestmark = [pytest.mark.mosquitto, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-dev-shm-usage", "--no-first-run"]
SPIKE = 4321.0


def ensure_chromium() -> str:
    """Return Chromium's path, installing Debian's package first when it is missing and this is root."""
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{CHROMIUM} is missing; install Debian's chromium package (apt-get install chromium) to run the browser tests")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium", "fonts-dejavu-core"]
    result = subprocess.run(install, env=environment, capture_output=True, text=True, timeout=1200)
    if result.returncode != 0:
        # The package lists may be missing on a fresh machine.
        subprocess.run(["apt-get", "update"], env=environment, capture_output=True, timeout=600)
        result = subprocess.run(install, env=environment, capture_output=True, text=True, timeout=1200)
    if result.returncode != 0 or not os.path.exists(CHROMIUM):
        pytest.fail(f"apt-get could not install chromium: {result.stderr[-2000:]}")
    return CHROMIUM


def part(series: Series, start: int, stop: int) -> Series:
    return Series(series.device_id, series.site, series.ts_us[start:stop],
                  {name: values[start:stop] for name, values in series.metrics.items()}, series.units)


class LivePipeline:
    """``sparkiot run`` with its dashboard, and the replayed series published to it so far."""

    def __init__(self, tmp_path: Path, unique: str, broker: str) -> None:
        from sparkiot.cli import demo_series

        self.unique = unique
        self.broker = broker
        self.data_dir = tmp_path / "data"
        self.topic = f"it/{unique}/sensors/{{site}}/{{device_id}}"
        start_us = time.time_ns() // 1000 - 40 * 86_400_000_000
        self.series = [s.shifted(start_us) for s in demo_series()]
        self.sent = {s.device_id: 0 for s in self.series}
        self.horizon_us = start_us
        config = {
            "name": f"browser-{unique}",
            "data_dir": str(self.data_dir),
            "source": {"broker": broker, "topics": [f"it/{unique}/sensors/#"], "client_id": f"sparkiot-browser-{unique}"},
            "codec": {"topic_pattern": "it/{_}/sensors/{site}/{device_id}"},
            "watermark": "10m",
            "windows": [{"size": "1h"}, {"size": "6h", "slide": "1h"}],
            "spark": {"master": "local[2]", "trigger": "500ms", "side_trigger": "500ms", "conf": {"spark.driver.memory": "640m"}},
        }
        path = tmp_path / "pipeline.yaml"
        path.write_text(yaml.safe_dump(config))
        self.log = open(tmp_path / "run.log", "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sparkiot", "run", str(path), "--quiet", "--dashboard-port", "0", "--duration", "900"],
            stdout=subprocess.PIPE, stderr=self.log, text=True,
        )
        self.url = self._read_url()

    def _read_url(self) -> str:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            match = re.match(r"dashboard: (http://\S+/) ", line)
            if match:
                return match.group(1)
        self.stop()
        raise AssertionError(f"sparkiot run printed no dashboard URL; see {self.log.name}")

    def replay(self, hours: float) -> None:
        """Publish the next ``hours`` of event time of every series, so no series runs ahead of another."""
        self.horizon_us += int(hours * 3_600_000_000)
        chunks = []
        for series in self.series:
            first = self.sent[series.device_id]
            stop = int(np.searchsorted(series.ts_us, self.horizon_us, side="left"))
            chunks.append(part(series, first, stop))
            self.sent[series.device_id] = stop
        # One row per message: a message of a slow series would span hours and make the other late.
        Replayer(chunks, self.broker, speed=0, batch=1, topic_template=self.topic).run()

    def publish(self, device: str, site: str, document: dict | bytes) -> None:
        payload = document if isinstance(document, bytes) else json.dumps(document).encode()
        publish_payloads(self.broker, [(self.topic.format(site=site, device_id=device), payload)])

    def newest_us(self) -> int:
        """Return the newest event time sent, which sets the watermark (a series may have a gap)."""
        return max(int(s.ts_us[self.sent[s.device_id] - 1]) for s in self.series if self.sent[s.device_id])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory, mosquitto):
    import uuid

    pipeline = LivePipeline(tmp_path_factory.mktemp("browser"), uuid.uuid4().hex[:10], mosquitto)
    try:
        pipeline.replay(24)
        yield pipeline
    finally:
        pipeline.stop()


@pytest.fixture(scope="module")
def chromium():
    from playwright.sync_api import sync_playwright

    executable = ensure_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


def new_page(chromium):
    """Open a tab whose uncaught script errors are kept in ``page.errors``."""
    page = chromium.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors
    return page


@pytest.fixture(scope="module")
def page(chromium, live):
    page = new_page(chromium)
    page.goto(live.url)
    yield page
    page.close()


@pytest.fixture
def blank_page(chromium):
    page = new_page(chromium)
    yield page
    page.close()


def health(live) -> dict:
    return httpx.get(live.url + "api/health", timeout=10).json()


def table_count(live, table: str) -> int:
    return len(read_table(live.data_dir, table))


def test_page_loads(page):
    page.wait_for_selector('#connection[data-state="live"]', timeout=30_000)
    assert page.title() == "sparkiot dashboard"
    assert page.errors == []


def test_fleet_lists_replayed_devices(page):
    page.wait_for_function("document.querySelectorAll('#fleet-rows tr').length >= 3", timeout=90_000)
    rows = page.eval_on_selector_all("#fleet-rows tr", "rows => rows.map(r => [r.dataset.device, r.dataset.metric])")
    assert sorted(map(tuple, rows)) == [("buoy-1", "temperature"), ("cgm-1", "glucose"), ("cgm-1", "isig")]
    sites = page.eval_on_selector_all("#site-rows tr", "rows => rows.map(r => r.dataset.site)")
    assert sorted(sites) == ["clinic", "harbour"]


def test_new_points_reach_chart_without_reload(page, live):
    page.goto(live.url + "#series/cgm-1/glucose/1h")
    page.wait_for_function("window.sparkiotStatus.points > 0", timeout=60_000)
    page.evaluate("window.sameDocument = true")
    before = page.evaluate("window.sparkiotStatus.points")

    live.replay(24)
    page.wait_for_function(f"window.sparkiotStatus.points > {before}", timeout=60_000)

    assert page.evaluate("window.sameDocument") is True
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1
    assert page.evaluate("window.sparkiotShown.length") > 0
    shown = page.evaluate("window.sparkiotStatus.points")
    windows = read_table(live.data_dir, "windows")
    stored = windows[(windows.device_id == "cgm-1") & (windows.metric == "glucose") & (windows.window_name == "1h")]
    assert before < shown <= len(stored)


def test_injected_anomaly_appears_in_alerts(page, live):
    ts_us = live.newest_us() + 60_000_000
    live.publish("cgm-1", "clinic", {"device_id": "cgm-1", "metric": "glucose", "ts": ts_us, "value": SPIKE})
    selector = "#alert-list li a"
    page.wait_for_function(
        f"[...document.querySelectorAll('{selector}')].some(a => a.textContent.startsWith('cgm-1 glucose = 4,321'))",
        timeout=60_000,
    )
    first = page.eval_on_selector(selector, "a => [a.textContent, a.getAttribute('href')]")
    assert first[0].startswith("cgm-1 glucose = 4,321")
    link, _, around = first[1].partition("@")
    assert link == "#series/cgm-1/glucose"
    assert float(around) == pytest.approx(ts_us / 1e6)
    alerts = read_table(live.data_dir, "alerts")
    assert (alerts.value == SPIKE).sum() == 1


def test_health_counts_equal_tables(page, live):
    dead_before, late_before = table_count(live, "dead_letters"), table_count(live, "late")
    live.publish("cgm-1", "clinic", b"{not json")
    live.publish("cgm-1", "clinic", {"device_id": "cgm-1", "metric": "glucose", "ts": "yesterday", "value": 1})
    old_us = live.newest_us() - 30 * 86_400_000_000
    live.publish("cgm-1", "clinic", {"device_id": "cgm-1", "metric": "glucose", "ts": old_us, "value": 100.0})
    wait_for(lambda: table_count(live, "dead_letters") == dead_before + 2 and table_count(live, "late") == late_before + 1, 60,
             "the bad payloads' rows")

    names = ["readings_stored", "windows", "alerts", "late", "dead_letters"]
    tables = {"readings_stored": "readings", "windows": "windows", "alerts": "alerts", "late": "late", "dead_letters": "dead_letters"}

    def shown() -> dict:
        texts = {name: page.eval_on_selector(f'[data-health="{name}"]', "e => e.textContent").replace(",", "") for name in names}
        return {name: int(text) if text.isdigit() else -1 for name, text in texts.items()}

    def counted() -> dict:
        return {name: table_count(live, tables[name]) for name in names}

    # The replay goes on while the test reads, so the page and the tables are compared at one
    # moment: a batch landing between the two reads makes them differ, and the check repeats.
    final: dict = {}

    def settled() -> bool:
        seen, rows = shown(), counted()
        if seen == rows and health(live)["input_rate"] is not None:
            final.update(seen)
            return True
        return False

    wait_for(settled, 60, "the panel to equal the tables")
    assert final["dead_letters"] == dead_before + 2
    assert final["late"] == late_before + 1
    assert final["readings_stored"] > 0


def test_metrics_counters_equal_tables(live):
    def samples() -> dict:
        text = httpx.get(live.url + "metrics", timeout=10).text
        return {(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "pipeline"))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def matches() -> bool:
        current = samples()
        return (current[("sparkiot_readings_stored_total", ())] == table_count(live, "readings")
                and current[("sparkiot_windows_written_total", ())] == table_count(live, "windows"))

    wait_for(matches, 60, "the metrics to equal the tables")
    current = samples()
    readings = read_table(live.data_dir, "readings")
    dead = read_table(live.data_dir, "dead_letters")
    assert current[("sparkiot_readings_stored_total", ())] == len(readings)
    assert current[("sparkiot_alerts_total", ())] == table_count(live, "alerts")
    assert current[("sparkiot_late_readings_total", ())] == table_count(live, "late")
    for reason, count in dead["reason"].value_counts().items():
        assert current[("sparkiot_dead_letters_total", (("reason", reason),))] == count
    assert current[("sparkiot_end_to_end_latency_seconds_count", ())] == len(readings)
    assert current[("sparkiot_batches_total", (("query", "readings"),))] >= 1
    assert current[("sparkiot_batch_duration_seconds_count", (("query", "readings"),))] == \
        current[("sparkiot_batches_total", (("query", "readings"),))]


# -- a standalone dashboard that rejects, stops and restarts under the page ---------------------

T0 = 1_790_000_000.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StandaloneDashboard:
    """``sparkiot dashboard`` as a process on one port, so that a restart keeps the page's address."""

    def __init__(self, data_dir: Path, *options: str) -> None:
        self.data_dir = data_dir
        self.options = options
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sparkiot", "dashboard", "--data-dir", str(self.data_dir), "--port", str(self.port),
             "--interval", "0.1", *self.options],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        ready, _, _ = select.select([self.process.stdout], [], [], 60)
        line = self.process.stdout.readline() if ready else ""
        if self.url not in line:
            self.kill()
            raise AssertionError(f"sparkiot dashboard printed {line!r}")

    def stop(self) -> float:
        """Stop it as Ctrl-C does and return the seconds it took to exit."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=10)
        return time.monotonic() - started

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def standalone(tmp_path):
    dashboards: list[StandaloneDashboard] = []

    def start(*options: str) -> StandaloneDashboard:
        write_batch(tmp_path, "readings", 0, reading_rows([("d1", "temp", T0, 20.0, "s1", time.time())]))
        write_batch(tmp_path, "windows", 0, window_rows([("1h", "d1", "temp", T0, T0 + 3600, 1, 20.0, 20.0, 20.0)]))
        dashboard = StandaloneDashboard(tmp_path, *options)
        dashboards.append(dashboard)
        dashboard.start()
        return dashboard

    yield start
    for dashboard in dashboards:
        dashboard.kill()


def test_rejected_page_connects_later(blank_page, standalone):
    dashboard = standalone("--max-clients", "1")
    with httpx.Client(base_url=dashboard.url, timeout=20) as client:
        with client.stream("GET", "api/events") as held:
            lines = held.iter_lines()
            assert next(lines) == "event: hello"
            blank_page.goto(dashboard.url)
            # The browser gives up on the 503; the page tries again on its own.
            blank_page.wait_for_function("window.sparkiotStatus.retries >= 1", timeout=15_000)
            assert blank_page.eval_on_selector("#connection", "e => e.dataset.state") == "reconnecting"
    blank_page.wait_for_selector('#connection[data-state="live"]', timeout=20_000)
    # Updates may have been written while the stream was rejected, so the page reloaded its state once.
    assert blank_page.evaluate("window.sparkiotStatus.resyncs") == 1
    assert blank_page.errors == []


def test_page_reloads_after_dashboard_restart(blank_page, standalone, tmp_path):
    dashboard = standalone()
    blank_page.goto(dashboard.url + "#series/d1/temp/1h")
    blank_page.wait_for_function("window.sparkiotStatus.points === 1", timeout=15_000)
    blank_page.wait_for_selector('#connection[data-state="live"]', timeout=15_000)

    # The page's open stream does not hold up Ctrl-C.
    assert dashboard.stop() < 5
    blank_page.wait_for_selector('#connection[data-state="reconnecting"]', timeout=15_000)
    write_batch(tmp_path, "windows", 1, window_rows([("1h", "d1", "temp", T0 + 3600, T0 + 7200, 2, 21.5, 21.0, 22.0)]))
    dashboard.start()

    # The restarted dashboard read the new window before the page reconnected, so no event
    # carries it: only the reload after the reconnect shows it.
    blank_page.wait_for_function("window.sparkiotStatus.points === 2", timeout=30_000)
    blank_page.wait_for_selector('#connection[data-state="live"]', timeout=15_000)
    assert blank_page.evaluate("window.sparkiotStatus.resyncs") == 1
    assert blank_page.evaluate("window.sparkiotStatus.windowEvents") == 0
    assert blank_page.evaluate("state.series.mean") == [20.0, 21.5]
    assert blank_page.errors == []


def test_chart_reaches_alert_after_last_window(blank_page, standalone, tmp_path):
    write_batch(tmp_path, "windows", 1, window_rows([("1h", "d1", "temp", T0 + 3600, T0 + 7200, 2, 21.5, 21.0, 22.0)]))
    write_side_file(tmp_path, "alerts", 0, 0, alert_rows([("a1", "d1", "temp", T0 + 7800, 21.0, 5.0)]))
    dashboard = standalone()
    blank_page.goto(dashboard.url + "#series/d1/temp/1h")
    blank_page.wait_for_function("window.sparkiotStatus.points === 2 && state.series.alerts.length === 1", timeout=15_000)

    # The x axis runs from the first window's start to the alert, which is after the last window's end.
    assert blank_page.evaluate("[state.chart.scales.x.min, state.chart.scales.x.max]") == [T0, T0 + 7800]
    # The marker's centre is drawn in the marker's red.
    marker = """() => {
      const u = state.chart;
      const alert = state.series.alerts[0];
      const x = Math.round(u.valToPos(alert.ts, "x", true));
      const y = Math.round(u.valToPos(alert.value, "y", true));
      return Array.from(u.ctx.getImageData(x, y, 1, 1).data);
    }"""
    blank_page.wait_for_function(f"({marker})()[3] === 255", timeout=10_000)
    assert blank_page.evaluate(marker) == [214, 39, 40, 255]

    # A double click after a zoom shows the whole series again, the alert included.
    blank_page.evaluate(f"state.following = false; state.chart.setScale('x', {{min: {T0}, max: {T0 + 1800}}})")
    assert blank_page.evaluate("state.chart.scales.x.max") == T0 + 1800
    blank_page.dblclick("#chart .u-over")
    assert blank_page.evaluate("state.following") is True
    assert blank_page.evaluate("[state.chart.scales.x.min, state.chart.scales.x.max]") == [T0, T0 + 7800]
    assert blank_page.errors == []
