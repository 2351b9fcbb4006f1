"""The control plane's HTTP API: bearer authentication on every endpoint, and refusals of bad requests.

The control plane here is not started, so no pipeline runs: these tests cover the API and the
registry, and the standalone tests cover the runtimes.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from sparkiot.serverless.api import create_app
from sparkiot.serverless.control import ControlPlane
from sparkiot.serverless.settings import ServeConfig

TOKEN = "t0ken-for-the-api-tests-0123456789"
PIPELINE = """
name: p
source: {broker: "mqtt://127.0.0.1:1883", topics: ["api-test/#"]}
serverless: {runtime: local}
"""

ENDPOINTS = [
    # (method, path, JSON body, status with the right token)
    ("GET", "/health", None, 200),
    ("POST", "/pipelines", {"yaml": PIPELINE.replace("name: p", "name: q").replace("api-test", "api-q")}, 201),
    ("GET", "/pipelines", None, 200),
    ("GET", "/pipelines/p", None, 200),
    ("POST", "/pipelines/p/stop", None, 200),
    ("POST", "/pipelines/p/start", None, 200),
    ("GET", "/pipelines/p/logs", None, 200),
    ("GET", "/pipelines/p/cost", None, 200),
    ("PUT", "/pipelines/p/scaling", {"trigger": 2.0}, 200),
    ("DELETE", "/pipelines/p", None, 204),
]


@pytest.fixture
def control(tmp_path):
    plane = ControlPlane(ServeConfig(state_dir=str(tmp_path / "serve"), token=TOKEN))
    plane.submit(PIPELINE)
    # Delete needs a stopped pipeline; without a supervisor nothing else would stop it.
    plane.registry.update("p", desired="stopped", state="stopped")
    yield plane
    plane.registry.close()


@pytest.fixture
def api(control):
    return TestClient(create_app(control))


def call(api, method, path, body, headers):
    return api.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize("method, path, body, expected", ENDPOINTS, ids=[f"{m} {p}" for m, p, _, _ in ENDPOINTS])
def test_each_endpoint_refuses_a_missing_token(api, method, path, body, expected):
    response = call(api, method, path, body, {})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "missing bearer token" in response.json()["detail"]


@pytest.mark.parametrize("method, path, body, expected", ENDPOINTS, ids=[f"{m} {p}" for m, p, _, _ in ENDPOINTS])
def test_each_endpoint_refuses_a_wrong_token(api, control, method, path, body, expected):
    response = call(api, method, path, body, {"Authorization": f"Bearer {TOKEN[:-1]}X"})
    assert response.status_code == 401
    assert response.json()["detail"] == "wrong bearer token"
    # Nothing happened: the registry holds the one pipeline, unchanged.
    assert [record["name"] for record in control.registry.list()] == ["p"]
    assert control.record("p")["state"] == "stopped"


@pytest.mark.parametrize("method, path, body, expected", ENDPOINTS, ids=[f"{m} {p}" for m, p, _, _ in ENDPOINTS])
def test_each_endpoint_serves_the_right_token(api, control, method, path, body, expected):
    response = call(api, method, path, body, {"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == expected, response.text
    names = [record["name"] for record in control.registry.list()]
    if (method, path) == ("POST", "/pipelines"):
        assert names == ["p", "q"]
    elif method == "DELETE":
        assert names == []
    elif path.endswith("/start"):
        assert control.record("p")["desired"] == "running"
    elif path.endswith("/stop"):
        assert control.record("p")["desired"] == "stopped"
    else:
        assert names == ["p"]


def test_another_scheme_is_refused(api):
    response = api.get("/pipelines", headers={"Authorization": f"Basic {TOKEN}"})
    assert response.status_code == 401


def test_the_openapi_schema_is_public_and_lists_every_endpoint(api):
    schema = api.get("/openapi.json").json()
    paths = {(method.upper(), path) for path, methods in schema["paths"].items() for method in methods}
    for method, path, _, _ in ENDPOINTS:
        assert (method, path.replace("/p/", "/{name}/").replace("/pipelines/p", "/pipelines/{name}")) in paths
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def auth():
    return {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize(
    "text, status, words",
    [
        ("name: [unclosed", 422, "not valid YAML"),
        ("- a\n- b", 422, "mapping of sections, not list"),
        ("name: r\nsource: {broker: embedded}", 422, "needs a broker of its own"),
        ("name: r\nsource: {broker: 'mqtt://127.0.0.1:1883'}\nsparkk: {}", 422, "sparkk: unknown option"),
        ("name: 'bad name!'\nsource: {broker: 'mqtt://127.0.0.1:1883'}", 422, "1-64 letters"),
        ("name: r\nsource: {broker: 'mqtt://127.0.0.1:1883'}\nserverless: {min_executors: 3}", 422, "min_executors <= initial_executors"),
        ("name: p\nsource: {broker: 'mqtt://127.0.0.1:1883'}", 409, "a pipeline named 'p' exists"),
    ],
)
def test_a_bad_submission_is_refused_with_the_reason(api, control, text, status, words):
    response = api.post("/pipelines", json={"yaml": text}, headers=auth())
    assert response.status_code == status
    assert words in response.json()["detail"]
    assert [record["name"] for record in control.registry.list()] == ["p"]


def test_two_pipelines_cannot_share_a_data_directory(api, tmp_path):
    shared = tmp_path / "shared-data"
    first = f"name: a\ndata_dir: {shared}\nsource: {{broker: 'mqtt://127.0.0.1:1883'}}"
    assert api.post("/pipelines", json={"yaml": first}, headers=auth()).status_code == 201
    response = api.post("/pipelines", json={"yaml": first.replace("name: a", "name: b")}, headers=auth())
    assert response.status_code == 409
    assert "already uses data_dir" in response.json()["detail"]


def test_requests_about_unknown_or_running_pipelines_are_refused(api, control):
    assert api.get("/pipelines/nope", headers=auth()).status_code == 404
    control.registry.update("p", desired="running", state="running")
    response = api.delete("/pipelines/p", headers=auth())
    assert response.status_code == 409
    assert "stop it first" in response.json()["detail"]
    response = api.put("/pipelines/p/scaling", json={"executors": 2}, headers=auth())
    assert response.status_code == 422
    assert "local runtime" in response.json()["detail"]
    response = api.get("/pipelines/p/cost", params={"platform": "lambda"}, headers=auth())
    assert response.status_code == 422
    assert "unknown platform 'lambda'" in response.json()["detail"]
    assert api.get("/pipelines/p/logs", params={"lines": 0}, headers=auth()).status_code == 422
    assert api.get("/pipelines/p/logs", params={"source": "secrets"}, headers=auth()).status_code == 422


def test_a_relative_data_dir_lands_under_the_state_directory(control):
    record = control.record("p")
    assert record["data_dir"] == str((control.state_dir / "pipelines" / "p" / "data").resolve())


def test_a_generated_token_is_kept_private_and_reused(tmp_path, monkeypatch):
    monkeypatch.delenv("SPARKIOT_TOKEN", raising=False)
    first = ControlPlane(ServeConfig(state_dir=str(tmp_path / "s")))
    second = ControlPlane(ServeConfig(state_dir=str(tmp_path / "s")))
    path = tmp_path / "s" / "token"
    assert first.token == second.token == path.read_text().strip()
    assert len(first.token) >= 32
    assert path.stat().st_mode & 0o777 == 0o600
    for plane in (first, second):
        plane.registry.close()
