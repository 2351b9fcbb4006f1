"""The control plane's HTTP API (FastAPI); its OpenAPI schema is served at ``/openapi.json``.

Every endpoint under ``/pipelines``, ``/health`` and ``/metrics`` needs ``Authorization: Bearer
TOKEN``; a missing or wrong token gets 401. The dashboards under ``/dashboard/NAME/`` take the
same token as a bearer header or as a cookie (see :func:`add_dashboards`). The schema and its
documentation page (``/docs``) are public: they describe the API and hold no data.
"""

from __future__ import annotations

import asyncio
import secrets
from urllib.parse import quote
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from sparkiot.config import ConfigError
from sparkiot.dashboard.app import Hub, dashboard_router, metrics_response
from sparkiot.dashboard.view import DataDirView
from sparkiot.serverless.control import LOG_SOURCES, ControlPlane, Invalid, NotFound
from sparkiot.serverless.dashboards import PipelineDashboards
from sparkiot.serverless.registry import Conflict

MAX_BODY_BYTES = 2 * 1024 * 1024
COOKIE = "sparkiot_token"


class Submission(BaseModel):
    yaml: str = Field(description="the pipeline file, the same YAML that 'sparkiot run' reads")


class ScalingRequest(BaseModel):
    executors: int | None = Field(default=None, ge=1, le=256, description="executors to hold (standalone runtime)")
    trigger: float | None = Field(default=None, gt=0, description="micro-batch trigger interval in seconds")
    automatic: bool = Field(default=False, description="drop the settings made by hand and return to the configured policy")


class PipelineSummary(BaseModel):
    name: str
    state: str
    desired: str
    runtime: str
    epoch: int
    message: str
    data_dir: str


class Logs(BaseModel):
    name: str
    source: str
    lines: list[str]


def create_app(control: ControlPlane, *, on_shutdown: Callable[[], None] | None = None) -> FastAPI:
    """Build the API over ``control``; ``on_shutdown`` runs when the server stops, before uvicorn re-raises its signal."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        hub = _app.state.dashboard_hub
        await hub.start()
        yield
        await hub.stop()
        if on_shutdown is not None:
            await asyncio.to_thread(on_shutdown)

    app = FastAPI(
        lifespan=lifespan,
        title="sparkiot control plane",
        description="Submit sparkiot pipelines; they run on demand, scale to zero when idle, and are metered in money.",
        version="1",
    )
    bearer = HTTPBearer(auto_error=False)

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return JSONResponse(status_code=413, content={
                "detail": f"request body larger than {MAX_BODY_BYTES // 1024 // 1024} MiB; a pipeline file is a few KiB"})
        return await call_next(request)

    @app.exception_handler(NotFound)
    async def not_found(_request: Request, exc: NotFound):
        # A pipeline deleted between the lookup and the action.
        return JSONResponse(status_code=404, content={"detail": f"no pipeline named {exc.args[0]!r}; GET /pipelines lists them"})

    def authorized(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing bearer token: send 'Authorization: Bearer TOKEN'",
                                headers={"WWW-Authenticate": "Bearer"})
        if not secrets.compare_digest(credentials.credentials.encode(), control.token.encode()):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    guarded = [Depends(authorized)]

    def summary(record: dict) -> PipelineSummary:
        return PipelineSummary(name=record["name"], state=record["state"], desired=record["desired"],
                               runtime=record["config"]["serverless"]["runtime"], epoch=record["epoch"],
                               message=record["message"], data_dir=record["data_dir"])

    def lookup(name: str) -> dict:
        try:
            return control.record(name)
        except NotFound:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no pipeline named {name!r}; GET /pipelines lists them") from None

    @app.get("/health", dependencies=guarded)
    def health() -> dict:
        return {"status": "ok", "pipelines": len(control.registry.list()),
                "cluster": control.cluster.url if control.cluster else None}

    @app.post("/pipelines", status_code=201, dependencies=guarded, response_model=PipelineSummary)
    def submit(submission: Submission):
        try:
            return summary(control.submit(submission.yaml))
        except Invalid as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
        except Conflict as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None

    @app.get("/pipelines", dependencies=guarded, response_model=list[PipelineSummary])
    def list_pipelines():
        return [summary(record) for record in control.registry.list()]

    @app.get("/pipelines/{name}", dependencies=guarded)
    def show(name: str) -> dict:
        lookup(name)
        return control.status(name)

    @app.post("/pipelines/{name}/stop", dependencies=guarded, response_model=PipelineSummary)
    def stop(name: str):
        lookup(name)
        return summary(control.stop(name))

    @app.post("/pipelines/{name}/start", dependencies=guarded, response_model=PipelineSummary)
    def start(name: str):
        lookup(name)
        try:
            return summary(control.resume(name))
        except Invalid as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None

    @app.delete("/pipelines/{name}", status_code=204, dependencies=guarded)
    def delete(name: str):
        lookup(name)
        try:
            control.delete(name)
        except Invalid as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        return Response(status_code=204)

    @app.get("/pipelines/{name}/logs", dependencies=guarded, response_model=Logs)
    def logs(name: str, source: Literal["events", "runner", "ingest", "spark"] = "events",
             lines: int = Query(default=100, ge=1, le=5000)):
        lookup(name)
        assert source in LOG_SOURCES
        return Logs(name=name, source=source, lines=control.logs(name, source, lines))

    @app.get("/pipelines/{name}/cost", dependencies=guarded)
    def cost(name: str, platform: str = Query(default="emr_serverless", description="a key of the price table")) -> dict:
        lookup(name)
        try:
            bill = control.bill(name, platform)
        except ConfigError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
        return {"name": name, **bill.as_dict()}

    @app.put("/pipelines/{name}/scaling", dependencies=guarded)
    def scale(name: str, request: ScalingRequest) -> dict:
        lookup(name)
        try:
            return control.scale(name, request.executors, request.trigger, automatic=request.automatic)
        except Invalid as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None

    add_dashboards(app, control, authorized_by_cookie=lambda token: secrets.compare_digest(token.encode(), control.token.encode()),
                   guarded=guarded)
    return app


def add_dashboards(app: FastAPI, control: ControlPlane, *, authorized_by_cookie, guarded) -> None:
    """Serve each pipeline's dashboard at ``/dashboard/NAME/`` and every pipeline's metrics at ``/metrics``.

    A browser cannot send a bearer header with its page loads and event streams, so the
    dashboard also accepts the token in the ``sparkiot_token`` cookie. Opening
    ``/dashboard/NAME?token=TOKEN`` once sets that cookie (HttpOnly, SameSite=Strict) and
    redirects to ``/dashboard/NAME/``, so the token leaves the address bar.
    """
    dashboards = PipelineDashboards(control)
    hub = Hub(dashboards.views)
    # The app's lifespan starts and stops the hub.
    app.state.dashboard_hub = hub

    def dashboard_view(request: Request) -> tuple[str, DataDirView]:
        name = request.path_params["name"]
        header = request.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else request.cookies.get(COOKIE, "")
        if not token or not authorized_by_cookie(token):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED,
                                f"missing or wrong token: open /dashboard/{name}?token=TOKEN once, or send 'Authorization: Bearer TOKEN'",
                                headers={"WWW-Authenticate": "Bearer"})
        try:
            return name, dashboards.view(name)
        except NotFound:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no pipeline named {name!r}; GET /pipelines lists them") from None

    @app.get("/dashboard/{name}", include_in_schema=False)
    def dashboard_login(name: str, token: str | None = None):
        target = f"/dashboard/{quote(name, safe='')}/"
        response = RedirectResponse(target, status_code=303)
        if token is not None:
            if not authorized_by_cookie(token):
                raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong token; use the token of 'sparkiot serve' (STATE_DIR/token)")
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/dashboard/")
        return response

    app.include_router(dashboard_router(dashboard_view, hub), prefix="/dashboard/{name}")

    @app.get("/metrics", dependencies=guarded, response_class=Response,
             description="Every pipeline's metrics in the Prometheus text format.")
    def metrics() -> Response:
        views = dashboards.all_views()
        return metrics_response(lambda: views)
