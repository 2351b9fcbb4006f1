"""The dashboard's server: pushed updates, its limits and refusals, and the control plane's dashboards."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from sparkiot.dashboard.server import DashboardThread
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
    assert "2 dashboard event streams are open" in third.json()["detail"]


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
