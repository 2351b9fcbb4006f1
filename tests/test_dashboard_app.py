"""The dashboard's server: pushed updates, its limits and refusals, and the control plane's dashboards."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from sparkiot.dashboard.server import GRACEFUL_SHUTDOWN_SECONDS, DashboardThread
from sparkiot.dashboard.view import DataDirView
from tests.dashboard_support import reading_rows, window_rows, write_batch

T0 = 1_790_000_000.0


@pytest.fixture
def served(tmp_path):
    write_batch(tmp_path, "readings", 0, reading_rows([("d1", "temp", T0, 20.0, "s1", time.time())]))
    write_batch(tmp_path, "windows", 0, window_rows([("1h", "d1", "temp", T0, T0 + 3600, 1, 20.0, 20.0, 20.0)]))
    server = DashboardThread(DataDirView(tmp_path), port=0, interval=0.1, max_clients=2)
    server.start()
    yield server, tmp_path
    server.stop()


def read_events(lines, wanted: str, timeout: float = 10.0) -> list[dict]:
    """Read server-sent events from the line iterator ``lines`` until one named ``wanted``; return its data."""
    deadline = time.monotonic() + timeout
    event = None
    for line in lines:
        if line.startswith("event: "):
            event = line[len("event: "):]
        elif line.startswith("data: ") and event == wanted:
            return json.loads(line[len("data: "):])
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"no {wanted!r} event within {timeout} s")


def test_new_window_is_pushed(served):
    server, data_dir = served
    with httpx.Client(base_url=server.url, timeout=20) as client:
        with client.stream("GET", "api/events", params={"device_id": "d1", "metric": "temp"}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = response.iter_lines()
            read_events(lines, "hello")
            write_batch(data_dir, "windows", 1, window_rows([
                ("1h", "d1", "temp", T0 + 3600, T0 + 7200, 2, 21.5, 21.0, 22.0),
                ("1h", "other", "temp", T0 + 3600, T0 + 7200, 1, 5.0, 5.0, 5.0),
            ]))
            points = read_events(lines, "window")
    assert [(p["device_id"], p["start"], p["mean"], p["min"], p["max"]) for p in points] == [("d1", T0 + 3600, 21.5, 21.0, 22.0)]


def test_event_streams_are_bounded(served):
    server, _ = served
    with httpx.Client(base_url=server.url, timeout=20) as client:
        with client.stream("GET", "api/events") as first, client.stream("GET", "api/events") as second:
            # The line iterators stay referenced: a collected one closes its stream.
            streams = [first.iter_lines(), second.iter_lines()]
            for lines in streams:
                read_events(lines, "hello")
            third = client.get("api/events")
    assert third.status_code == 503
    assert third.json()["detail"] == (
        "2 dashboard event streams are open, the configured maximum; close a page or raise --max-clients"
    )
    assert third.headers["retry-after"] == "5"


def test_requests_with_bad_parameters(served):
    server, _ = served
    with httpx.Client(base_url=server.url, timeout=20) as client:
        half = client.get("api/events", params={"device_id": "d1"})
        unknown = client.get("api/series", params={"device_id": "nope", "metric": "temp"})
        window = client.get("api/series", params={"device_id": "d1", "metric": "temp", "window": "9h"})
        static = client.get("static/../view.py")
        limit = client.get("api/alerts", params={"limit": 0})
    assert half.status_code == 422
    assert half.json()["detail"] == "give both device_id and metric, or neither"
    assert unknown.status_code == 404
    assert "no windows or alerts for device 'nope'" in unknown.json()["detail"]
    assert window.status_code == 404
    assert "it has 1h" in window.json()["detail"]
    assert static.status_code == 404
    assert limit.status_code == 422


def test_page_and_vendored_chart_library(served):
    server, _ = served
    with httpx.Client(base_url=server.url, timeout=20) as client:
        page = client.get("")
        library = client.get("static/vendor/uplot/uPlot.iife.min.js")
        licence = client.get("static/vendor/uplot/LICENSE")
    assert page.status_code == 200
    assert '<script src="static/vendor/uplot/uPlot.iife.min.js">' in page.text
    # Nothing is loaded from another host: the page works offline.
    assert "http://" not in page.text
    assert "https://" not in page.text
    assert library.status_code == 200
    assert "uPlot" in library.text
    assert "MIT License" in licence.text


# -- the control plane's dashboards ---------------------------------------------------------

TOKEN = "t0ken-for-the-dashboard-tests-0123"
PIPELINE = """
name: p
source: {broker: "mqtt://127.0.0.1:1883", topics: ["dash-test/#"]}
serverless: {runtime: local}
"""


@pytest.fixture
def control_api(tmp_path):
    from sparkiot.serverless.api import create_app
    from sparkiot.serverless.control import ControlPlane
    from sparkiot.serverless.settings import ServeConfig

    plane = ControlPlane(ServeConfig(state_dir=str(tmp_path / "serve"), token=TOKEN))
    plane.submit(PIPELINE)
    data_dir = plane.record("p")["data_dir"]
    write_batch(data_dir, "readings", 0, reading_rows([("d1", "temp", T0 + i, 1.0, None, time.time()) for i in range(6)]))
    yield TestClient(create_app(plane)), plane
    plane.shutdown(stop_pipelines=False)


def test_control_plane_dashboard_needs_token(control_api):
    api, _ = control_api
    missing = api.get("/dashboard/p/api/health")
    wrong = api.get("/dashboard/p/api/health", headers={"Authorization": f"Bearer {TOKEN}x"})
    bearer = api.get("/dashboard/p/api/health", headers={"Authorization": f"Bearer {TOKEN}"})
    assert missing.status_code == 401
    assert "open /dashboard/p?token=TOKEN once" in missing.json()["detail"]
    assert wrong.status_code == 401
    assert bearer.status_code == 200
    assert bearer.json()["pipeline"] == "p"
    assert bearer.json()["readings_stored"] == 6


def test_control_plane_dashboard_token_becomes_cookie(control_api):
    api, _ = control_api
    refused = api.get("/dashboard/p", params={"token": "wrong-token-0123456789"}, follow_redirects=False)
    login = api.get("/dashboard/p", params={"token": TOKEN}, follow_redirects=False)
    assert refused.status_code == 401
    assert login.status_code == 303
    assert login.headers["location"] == "/dashboard/p/"
    cookie = login.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    page = api.get("/dashboard/p/")
    unknown = api.get("/dashboard/nope/api/health")
    assert page.status_code == 200
    assert "sparkiot" in page.text
    assert unknown.status_code == 404


def test_control_plane_metrics_cover_pipelines(control_api):
    api, _ = control_api
    response = api.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    samples = {(s.name, s.labels.get("pipeline")): s.value
               for family in text_string_to_metric_families(response.text) for s in family.samples}
    assert samples[("sparkiot_readings_stored_total", "p")] == 6
    assert ("sparkiot_cost_usd_total", "p") in samples


def test_broadcast_filters_windows_and_encodes_nan():
    from sparkiot.dashboard.app import Broadcast, Subscriber
    from sparkiot.dashboard.view import Update

    points = [
        {"device_id": "d1", "metric": "temp", "window": "1h", "start": 1.0, "mean": float("nan")},
        {"device_id": "d1", "metric": "temp", "window": "6h", "start": 1.0, "mean": 2.0},
        {"device_id": "d2", "metric": "temp", "window": "1h", "start": 1.0, "mean": 3.0},
    ]
    update = Update(3, [{"device_id": "d1", "value": float("inf")}], points, [], {"input_rate": float("nan")}, None)
    broadcast = Broadcast(update)
    first = broadcast.events(Subscriber("p", "d1", "temp", "1h"))
    second = broadcast.events(Subscriber("p", None, None, None))

    assert [event.event for event in first] == ["fleet", "window", "health"]
    assert json.loads(first[1].raw_data) == [{"device_id": "d1", "metric": "temp", "window": "1h", "start": 1.0, "mean": None}]
    assert json.loads(first[0].raw_data) == [{"device_id": "d1", "value": None}]
    assert json.loads(first[2].raw_data) == {"input_rate": None}
    assert [event.event for event in second] == ["fleet", "health"]
    # The shared events are encoded once and handed to every subscriber.
    assert second[0] is first[0]


def test_stream_that_falls_behind_is_marked():
    import asyncio

    from sparkiot.dashboard.app import Hub, Subscriber
    from sparkiot.dashboard.view import Update

    async def scenario() -> tuple[bool, int, int]:
        hub = Hub(lambda: {}, queue_size=2)
        slow = Subscriber("p", None, None, None)
        other = Subscriber("q", None, None, None)
        hub.subscribe(slow)
        hub.subscribe(other)
        for version in range(4):
            hub._publish("p", Update(version, [{"device_id": "d1"}], [], [], None, None))
        # An update with nothing new is not queued at all.
        hub._publish("p", Update(4, [], [], [], None, None))
        return slow.behind, slow.queue.qsize(), other.queue.qsize()

    behind, queued, other_queued = asyncio.run(scenario())
    assert behind is True
    assert queued == 2
    assert other_queued == 0


# -- shutdown, rejections and messages -------------------------------------------------------


# A stream that is not ended sends a keep-alive comment every 15 s; reading it times out sooner.
STREAM_TIMEOUT = httpx.Timeout(20, read=8)


def read_to_end(lines, timeout: float) -> list[str]:
    """Return the lines left in a stream once the server ends it, or fail if it is still open after ``timeout`` s."""
    rest: list[str] = []
    reader = threading.Thread(target=lambda: rest.extend(lines), daemon=True)
    reader.start()
    reader.join(timeout)
    if reader.is_alive():
        raise AssertionError(f"the event stream was still open {timeout:g} s after the server was told to stop")
    return rest


def start_command(data_dir, *options: str) -> tuple[subprocess.Popen, str]:
    """Start ``sparkiot dashboard`` on a free port; return the process and the URL it prints."""
    # Without PYTHONUNBUFFERED the printed URL must still arrive while the server runs.
    environment = {name: value for name, value in os.environ.items() if name != "PYTHONUNBUFFERED"}
    process = subprocess.Popen(
        [sys.executable, "-m", "sparkiot", "dashboard", "--data-dir", str(data_dir), "--port", "0", "--interval", "0.1", *options],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
    )
    ready, _, _ = select.select([process.stdout], [], [], 60)
    line = process.stdout.readline() if ready else ""
    match = re.search(r": (http://127\.0\.0\.1:\d+/) \(metrics at /metrics\); Ctrl-C stops$", line.rstrip("\n"))
    if match is None:
        process.kill()
        raise AssertionError(f"sparkiot dashboard printed {line!r}; stderr: {process.communicate()[1]}")
    return process, match.group(1)


@pytest.mark.parametrize(("signal_number", "returncode"), [(signal.SIGINT, 0), (signal.SIGTERM, -signal.SIGTERM)])
def test_signal_stops_command_with_open_stream(tmp_path, signal_number, returncode):
    write_batch(tmp_path, "windows", 0, window_rows([("1h", "d1", "temp", T0, T0 + 3600, 1, 20.0, 20.0, 20.0)]))
    process, url = start_command(tmp_path)
    try:
        with httpx.Client(base_url=url, timeout=STREAM_TIMEOUT) as client, client.stream("GET", "api/events") as response:
            lines = response.iter_lines()
            read_events(lines, "hello")
            started = time.monotonic()
            process.send_signal(signal_number)
            # The server ends the stream: the client reads to its end instead of waiting.
            rest = read_to_end(lines, 10)
            ended = time.monotonic() - started
        process.wait(timeout=10)
        stopped = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = process.stderr.read()
    assert process.returncode == returncode
    # The stream ends between two events, not inside one.
    assert rest[-1] == ""
    # uvicorn cancels the streams itself only after its graceful shutdown timeout.
    assert ended < GRACEFUL_SHUTDOWN_SECONDS
    assert stopped < GRACEFUL_SHUTDOWN_SECONDS
    assert "timeout graceful shutdown exceeded" not in stderr
    assert "Traceback" not in stderr


def test_stop_ends_open_streams(served):
    server, _ = served
    with httpx.Client(base_url=server.url, timeout=STREAM_TIMEOUT) as client, client.stream("GET", "api/events") as response:
        lines = response.iter_lines()
        read_events(lines, "hello")
        started = time.monotonic()
        server.stop()
        stopped = time.monotonic() - started
        rest = read_to_end(lines, 10)
    assert not server.thread.is_alive()
    assert stopped < GRACEFUL_SHUTDOWN_SECONDS
    # Only the blank line that closes the hello event was left to read.
    assert rest == [""]


def test_closed_hub_ends_and_rejects_streams():
    import asyncio

    from fastapi import HTTPException

    from sparkiot.dashboard.app import Hub, Subscriber
    from sparkiot.dashboard.view import Update

    async def scenario() -> tuple[list, list, HTTPException]:
        hub = Hub(lambda: {}, queue_size=2)
        full = Subscriber("p", None, None, None)
        hub.subscribe(full)
        for version in range(3):
            hub._publish("p", Update(version, [{"device_id": "d1"}], [], [], None, None))
        hub.close()
        late = Subscriber("p", None, None, None)
        hub.subscribe(late)
        try:
            hub.admit()
        except HTTPException as exc:
            rejection = exc
        else:
            raise AssertionError("a closed hub admitted a stream")
        return ([full.queue.get_nowait() for _ in range(full.queue.qsize())],
                [late.queue.get_nowait() for _ in range(late.queue.qsize())], rejection)

    full, late, rejection = asyncio.run(scenario())
    # A full queue is emptied so that the end of the stream fits.
    assert full == [None]
    assert late == [None]
    assert rejection.status_code == 503
    assert rejection.headers == {"Retry-After": "5"}
    assert rejection.detail == "the dashboard is shutting down; the page connects again when it is back"


def test_long_ids_are_cut_in_messages(served):
    server, _ = served
    device = "a" * 5000 + "b" * 5000
    with httpx.Client(base_url=server.url, timeout=20) as client:
        series = client.get("api/series", params={"device_id": device, "metric": "temp"})
        window = client.get("api/series", params={"device_id": "d1", "metric": "temp", "window": "w" * 10000})
        static = client.get("static/" + "s" * 10000)
    assert series.status_code == 404
    assert series.json()["detail"] == (
        "no windows or alerts for device '" + "a" * 27 + "..." + "b" * 28 + "', metric 'temp'; /api/fleet lists the series"
    )
    assert window.status_code == 404
    assert window.json()["detail"] == "no window '" + "w" * 27 + "..." + "w" * 28 + "' for this series; it has 1h"
    assert static.status_code == 404
    assert static.json()["detail"] == "no static file '" + "s" * 27 + "..." + "s" * 28 + "'"


def test_data_dir_that_is_a_file(tmp_path, capsys):
    from sparkiot.cli import main

    file = tmp_path / "pipeline.yaml"
    file.write_text("name: p\n")
    missing = tmp_path / "nope"

    assert main(["dashboard", "--data-dir", str(file)]) == 2
    file_error = capsys.readouterr().err
    assert main(["dashboard", "--data-dir", str(missing)]) == 2
    missing_error = capsys.readouterr().err
    assert file_error == (
        f"error: --data-dir {file} is a file, not a directory; pass the data directory of a pipeline run "
        "(the directory that contains its tables/, default ./sparkiot-data)\n"
    )
    assert missing_error == (
        f"error: data directory {missing} not found; pass the --data-dir of a pipeline run (default ./sparkiot-data)\n"
    )


@pytest.mark.parametrize(("given", "message"), [
    ("0", "0 is below the minimum of 0.05 s between reads of the data directory; give 0.05 or more"),
    ("-1", "-1 is below the minimum of 0.05 s between reads of the data directory; give 0.05 or more"),
    ("0.01", "0.01 is below the minimum of 0.05 s between reads of the data directory; give 0.05 or more"),
    ("nan", "nan is not a finite number of seconds"),
    ("soon", "'soon' is not a number of seconds"),
])
def test_interval_below_minimum_rejected(given, message, capsys):
    from sparkiot.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["dashboard", f"--interval={given}"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"sparkiot dashboard: error: argument --interval: {message}"


def test_interval_at_minimum_accepted():
    from sparkiot.cli import build_parser

    assert build_parser().parse_args(["dashboard", "--interval", "0.05"]).interval == 0.05
