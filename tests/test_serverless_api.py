"""The control plane's HTTP API: bearer authentication on every endpoint, and refusals of bad requests.

The control plane here is not started, so no pipeline runs: these tests cover the API and the
registry, and the standalone tests cover the runtimes.
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from sparkiot.serverless.api import create_app
from sparkiot.serverless.control import AlreadyRunning, ControlPlane
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
    ("POST", "/pipelines", {"yaml": PIPELINE.replace("name: p", "name: q").replace('topics: ["api-test/#"]', 'topics: ["api-q/#"], client_id: q')}, 201),
    ("GET", "/pipelines", None, 200),
    ("GET", "/pipelines/p", None, 200),
    ("POST", "/pipelines/p/stop", None, 200),
    ("POST", "/pipelines/p/start", None, 200),
    ("GET", "/pipelines/p/logs", None, 200),
    ("GET", "/pipelines/p/cost", None, 200),
    ("PUT", "/pipelines/p/scaling", {"trigger": 2.0}, 200),
    ("GET", "/metrics", None, 200),
    ("DELETE", "/pipelines/p", None, 204),
]


@pytest.fixture
def control(tmp_path):
    plane = ControlPlane(ServeConfig(state_dir=str(tmp_path / "serve"), token=TOKEN))
    plane.submit(PIPELINE)
    # Delete needs a stopped pipeline; without a supervisor nothing else would stop it.
    plane.registry.update("p", desired="stopped", state="stopped")
    yield plane
    plane.shutdown(stop_pipelines=False)


@pytest.fixture
def api(control):
    return TestClient(create_app(control))


def call(api, method, path, body, headers):
    return api.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize("method, path, body, expected", ENDPOINTS, ids=[f"{m} {p}" for m, p, _, _ in ENDPOINTS])
def test_endpoint_rejects_missing_token(api, method, path, body, expected):
    response = call(api, method, path, body, {})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "missing bearer token" in response.json()["detail"]


@pytest.mark.parametrize("method, path, body, expected", ENDPOINTS, ids=[f"{m} {p}" for m, p, _, _ in ENDPOINTS])
def test_endpoint_rejects_wrong_token(api, control, method, path, body, expected):
    response = call(api, method, path, body, {"Authorization": f"Bearer {TOKEN[:-1]}X"})
    assert response.status_code == 401
    assert response.json()["detail"] == "wrong bearer token"
    # Nothing happened: the registry contains the one pipeline, unchanged.
    assert [record["name"] for record in control.registry.list()] == ["p"]
    assert control.record("p")["state"] == "stopped"


@pytest.mark.parametrize("method, path, body, expected", ENDPOINTS, ids=[f"{m} {p}" for m, p, _, _ in ENDPOINTS])
def test_endpoint_serves_right_token(api, control, method, path, body, expected):
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


def test_basic_scheme_rejected(api):
    response = api.get("/pipelines", headers={"Authorization": f"Basic {TOKEN}"})
    assert response.status_code == 401


def test_openapi_schema_public_and_complete(api):
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
def test_invalid_submission_rejected_with_reason(api, control, text, status, words):
    response = api.post("/pipelines", json={"yaml": text}, headers=auth())
    assert response.status_code == status
    assert words in response.json()["detail"]
    assert [record["name"] for record in control.registry.list()] == ["p"]


def test_data_dirs_shared_or_nested_rejected(api, control):
    first = "name: a\ndata_dir: shared-data\nsource: {broker: 'mqtt://127.0.0.1:1883', client_id: a}"
    assert api.post("/pipelines", json={"yaml": first}, headers=auth()).status_code == 201
    for data_dir in ("shared-data", "shared-data/inner"):
        text = first.replace("name: a", "name: b").replace("client_id: a", "client_id: b").replace("shared-data", data_dir)
        response = api.post("/pipelines", json={"yaml": text}, headers=auth())
        assert response.status_code == 409
        assert "overlaps" in response.json()["detail"]
    assert [record["name"] for record in control.registry.list()] == ["a", "p"]


def test_data_dir_outside_roots_rejected(api, tmp_path):
    for data_dir in (str(tmp_path / "elsewhere"), "../../escape"):
        text = f"name: x\ndata_dir: {data_dir}\nsource: {{broker: 'mqtt://127.0.0.1:1883'}}"
        response = api.post("/pipelines", json={"yaml": text}, headers=auth())
        assert response.status_code == 422
        assert "outside the folders this control plane writes to" in response.json()["detail"]


@pytest.mark.parametrize("data_dir, words", [(".", "contains the control plane's state directory"),
                                             ("pipelines", "which the control plane uses"),
                                             ("pipelines/p/data", "which the control plane uses"),
                                             ("lock", "is a file")])
def test_data_dir_among_state_files_rejected(api, data_dir, words):
    text = f"name: x\ndata_dir: {data_dir}\nsource: {{broker: 'mqtt://127.0.0.1:1883', client_id: cx}}"
    response = api.post("/pipelines", json={"yaml": text}, headers=auth())
    assert response.status_code == 422
    assert words in response.json()["detail"]


def test_client_id_in_use_rejected(api):
    text = "name: twin\nsource: {broker: 'mqtt://127.0.0.1:1883'}"
    response = api.post("/pipelines", json={"yaml": text}, headers=auth())
    assert response.status_code == 409
    assert "already uses source.client_id 'sparkiot-ingest'" in response.json()["detail"]


def test_nested_brackets_rejected_before_parsing(api):
    text = "name: x\nx: " + "[" * 5000 + "]" * 5000
    response = api.post("/pipelines", json={"yaml": text}, headers=auth())
    assert response.status_code == 422
    assert "deeper than 64 levels" in response.json()["detail"]


def test_environment_token_too_short_rejected(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARKIOT_TOKEN", "x")
    with pytest.raises(ValueError) as error:
        ControlPlane(ServeConfig(state_dir=str(tmp_path / "s")))
    assert "needs at least 16" in str(error.value)


def test_yaml_aliases_and_huge_bodies_rejected(api):
    bomb = "name: x\nsource: {broker: 'mqtt://127.0.0.1:1883'}\na: &a [1, 2]\nb: [*a, *a]"
    response = api.post("/pipelines", json={"yaml": bomb}, headers=auth())
    assert response.status_code == 422
    assert "YAML alias" in response.json()["detail"]
    response = api.post("/pipelines", content=b"x" * (3 * 1024 * 1024), headers={**auth(), "content-type": "application/json"})
    assert response.status_code == 413


def test_unloadable_policy_rejected_at_submit(api):
    text = "name: x\nsource: {broker: 'mqtt://127.0.0.1:1883'}\nserverless: {scaling: {policy: 'nowhere_at_all:Policy'}}"
    response = api.post("/pipelines", json={"yaml": text}, headers=auth())
    assert response.status_code == 422
    assert "cannot import nowhere_at_all" in response.json()["detail"]


def test_manual_scaling_kept_until_automatic(api, control):
    assert api.put("/pipelines/p/scaling", json={}, headers=auth()).status_code == 422
    response = api.put("/pipelines/p/scaling", json={"trigger": 3.0}, headers=auth())
    assert response.status_code == 200
    manual = control.state_dir / "pipelines" / "p" / "manual.json"
    assert json.loads(manual.read_text()) == {"trigger": 3.0}
    assert response.json()["scaling"][-1]["reason"] == "manual, applied at the next start"
    assert api.put("/pipelines/p/scaling", json={"automatic": True}, headers=auth()).status_code == 200
    assert not manual.exists()


def test_state_directory_locked_by_first_plane(control):
    with pytest.raises(AlreadyRunning) as error:
        ControlPlane(ServeConfig(state_dir=str(control.state_dir), token=TOKEN))
    assert "another control plane" in str(error.value)


def test_resubmitted_name_starts_new_ledger(api, control):
    runtime = control.state_dir / "pipelines" / "p" / "runtime"
    runtime.mkdir(parents=True)
    (runtime / "ledger.jsonl").write_text(json.dumps(
        {"event": "start", "epoch": 1, "kind": "driver", "id": "driver", "cores": 4, "memory_mib": 8192, "time": 0.0}) + "\n"
        + json.dumps({"event": "stop", "epoch": 1, "kind": "driver", "id": "driver", "time": 3600.0}) + "\n")
    assert float(api.get("/pipelines/p/cost", headers=auth()).json()["exact"]) > 0
    assert api.delete("/pipelines/p", headers=auth()).status_code == 204
    assert api.post("/pipelines", json={"yaml": PIPELINE}, headers=auth()).status_code == 201
    bill = api.get("/pipelines/p/cost", headers=auth()).json()
    assert bill["workers"] == 0
    assert bill["total"] == "0.00"


def test_requests_for_unknown_or_running_rejected(api, control):
    assert api.get("/pipelines/nope", headers=auth()).status_code == 404
    control.registry.update("p", desired="running", state="running")
    response = api.delete("/pipelines/p", headers=auth())
    assert response.status_code == 409
    assert "wait until its state is stopped" in response.json()["detail"]
    response = api.put("/pipelines/p/scaling", json={"executors": 2}, headers=auth())
    assert response.status_code == 422
    assert "local runtime" in response.json()["detail"]
    response = api.get("/pipelines/p/cost", params={"platform": "lambda"}, headers=auth())
    assert response.status_code == 422
    assert "unknown platform 'lambda'" in response.json()["detail"]
    assert api.get("/pipelines/p/logs", params={"lines": 0}, headers=auth()).status_code == 422
    assert api.get("/pipelines/p/logs", params={"source": "secrets"}, headers=auth()).status_code == 422


def test_relative_data_dir_under_state_directory(control):
    record = control.record("p")
    assert record["data_dir"] == str((control.state_dir / "pipelines" / "p" / "data").resolve())


def test_generated_token_private_and_reused(tmp_path, monkeypatch):
    monkeypatch.delenv("SPARKIOT_TOKEN", raising=False)
    first = ControlPlane(ServeConfig(state_dir=str(tmp_path / "s")))
    token = first.token
    first.shutdown(stop_pipelines=False)
    second = ControlPlane(ServeConfig(state_dir=str(tmp_path / "s")))
    path = tmp_path / "s" / "token"
    assert second.token == token
    assert token == path.read_text().strip()
    assert len(token) >= 32
    assert path.stat().st_mode & 0o777 == 0o600
    second.shutdown(stop_pipelines=False)
