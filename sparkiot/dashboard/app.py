"""The dashboard's HTTP side: the page, its JSON API, server-sent events and ``/metrics``.

A :class:`Hub` polls each :class:`~sparkiot.dashboard.view.DataDirView` every ``interval``
seconds in a worker thread and pushes what is new to every subscribed page as server-sent
events (``fleet``, ``window``, ``alert``, ``health``, ``sites``). A page subscribes for one
series at a time and receives only that series' windows. Each update is encoded to JSON once,
not once per page (:class:`Broadcast`). Each subscriber has a bounded queue:
a page that falls ``queue_size`` updates behind gets a ``resync`` event and reloads from the
JSON API instead of the server buffering without bound. At most ``max_clients`` event streams
are open at once; the next one gets 503 with a message saying so and a ``Retry-After`` header.
:meth:`Hub.close` ends every open stream, so that a server that shuts down need not wait for
pages that never hang up.

The page and its script use relative URLs, so :func:`dashboard_router` serves the same files
at the root (``sparkiot dashboard``) and under ``/dashboard/NAME/`` (the control plane).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sparkiot.config import _short_repr
from sparkiot.dashboard.metrics import registry_for
from sparkiot.dashboard.view import DataDirView, Update

log = logging.getLogger(__name__)

STATIC_FILES = {
    "app.js": "text/javascript",
    "style.css": "text/css",
    "vendor/uplot/uPlot.iife.min.js": "text/javascript",
    "vendor/uplot/uPlot.min.css": "text/css",
    "vendor/uplot/LICENSE": "text/plain",
}

# The Retry-After header, in seconds, of a 503 response to an event stream request.
RETRY_AFTER_SECONDS = 5


@dataclass(eq=False)
class Subscriber:
    """One open event stream: the view it follows, its series and its bounded queue of updates.

    A ``None`` in the queue ends the stream.
    """

    view: str
    device_id: str | None
    metric: str | None
    window: str | None
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(maxsize=64))
    behind: bool = False


class Hub:
    """Poll the views and push their updates to the subscribed event streams."""

    def __init__(self, views: Callable[[], dict[str, DataDirView]], *, interval: float = 0.5, max_clients: int = 200,
                 queue_size: int = 64) -> None:
        self.views = views
        self.interval = interval
        self.max_clients = max_clients
        self.queue_size = queue_size
        self.subscribers: set[Subscriber] = set()
        self.polls = 0
        self.closed = False
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def close(self) -> None:
        """End every open event stream and reject new ones. Call it from the event loop's thread."""
        self.closed = True
        for subscriber in list(self.subscribers):
            self._end(subscriber)

    @staticmethod
    def _end(subscriber: Subscriber) -> None:
        # Updates still queued are dropped because the page reloads its state when it connects again.
        while not subscriber.queue.empty():
            subscriber.queue.get_nowait()
        subscriber.queue.put_nowait(None)

    async def stop(self) -> None:
        self.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            for name, view in list(self.views().items()):
                try:
                    update = await asyncio.to_thread(view.poll)
                except Exception:  # noqa: BLE001 - one unreadable pipeline must not stop the others' pages
                    log.exception("dashboard: polling %s failed; retrying", name)
                    continue
                self._publish(name, update)
            self.polls += 1
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - started)))

    def _publish(self, name: str, update: Update) -> None:
        if update.empty:
            return
        broadcast = None
        for subscriber in list(self.subscribers):
            if subscriber.view != name:
                continue
            broadcast = broadcast or Broadcast(update)
            try:
                subscriber.queue.put_nowait(broadcast)
            except asyncio.QueueFull:
                subscriber.behind = True

    def admit(self) -> None:
        """Raise 503 when the server is shutting down or ``max_clients`` event streams are open."""
        retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        if self.closed:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                                "the dashboard is shutting down; the page connects again when it is back", headers=retry)
        if len(self.subscribers) >= self.max_clients:
            raise HTTPException(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                f"{self.max_clients} dashboard event streams are open, the configured maximum; close a page or raise --max-clients",
                headers=retry,
            )

    def subscribe(self, subscriber: Subscriber) -> None:
        subscriber.queue = asyncio.Queue(maxsize=self.queue_size)
        self.subscribers.add(subscriber)
        if self.closed:
            self._end(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.subscribers.discard(subscriber)


def _finite(value):
    """Return ``value`` with NaN and infinities replaced by None, which JSON can carry."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def _encode(value) -> str:
    return json.dumps(_finite(value), default=str)


class Broadcast:
    """One update, encoded once for every subscriber: the shared events and the windows per series."""

    def __init__(self, update: Update) -> None:
        self.version = update.version
        self.shared: list[ServerSentEvent] = []
        for name, data in (("fleet", update.fleet), ("alert", update.alerts), ("health", update.health), ("sites", update.sites)):
            if data:
                self.shared.append(ServerSentEvent(event=name, raw_data=_encode(data)))
        self.windows: dict[tuple[str, str], list[dict]] = {}
        for point in update.windows:
            self.windows.setdefault((point["device_id"], point["metric"]), []).append(point)

    def events(self, subscriber: Subscriber) -> list[ServerSentEvent]:
        """Return the events ``subscriber`` receives: the shared ones and its series' new windows."""
        events = list(self.shared)
        if subscriber.device_id is not None:
            points = [
                point for point in self.windows.get((subscriber.device_id, subscriber.metric), ())
                if subscriber.window is None or point["window"] == subscriber.window
            ]
            if points:
                events.insert(1 if self.shared and self.shared[0].event == "fleet" else 0,
                              ServerSentEvent(event="window", raw_data=_encode(points)))
        return events


def dashboard_router(view_for: Callable[[Request], tuple[str, DataDirView]], hub: Hub) -> APIRouter:
    """Return the page, static files, JSON API and event stream of the view that ``view_for(request)`` names."""
    router = APIRouter()
    static = resources.files("sparkiot.dashboard") / "static"

    @router.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page(request: Request):
        view_for(request)
        return HTMLResponse((static / "index.html").read_text(encoding="utf-8"))

    @router.get("/static/{path:path}", include_in_schema=False)
    def static_file(path: str):
        if path not in STATIC_FILES:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no static file {_short_repr(path)}")
        with resources.as_file(static / path) as file:
            return FileResponse(file, media_type=STATIC_FILES[path], headers={"Cache-Control": "max-age=3600"})

    @router.get("/api/fleet")
    def fleet(request: Request) -> dict:
        _, view = view_for(request)
        return {"fleet": view.fleet(), "sites": view.sites()}

    @router.get("/api/series")
    def series(request: Request, device_id: str = Query(min_length=1), metric: str = Query(min_length=1),
               window: str | None = None) -> dict:
        _, view = view_for(request)
        points = view.series_points(device_id, metric, window)
        if not points["windows"] and not points["alerts"]:
            raise HTTPException(status.HTTP_404_NOT_FOUND,
                                f"no windows or alerts for device {_short_repr(device_id)}, metric {_short_repr(metric)}; "
                                "/api/fleet lists the series")
        if window is not None and window not in points["windows"]:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no window {_short_repr(window)} for this series; "
                                                           f"it has {', '.join(points['windows']) or 'none yet'}")
        return points

    @router.get("/api/alerts")
    def alerts(request: Request, limit: int = Query(default=100, ge=1, le=1000)) -> dict:
        _, view = view_for(request)
        return {"alerts": view.alerts(limit)}

    @router.get("/api/health")
    def health(request: Request) -> dict:
        _, view = view_for(request)
        return view.health()

    def admitted(request: Request, device_id: str | None = None, metric: str | None = None,
                 window: str | None = None) -> tuple[DataDirView, Subscriber]:
        # Checked here, in a dependency, because an error raised inside the stream would come
        # after its 200 status line.
        name, view = view_for(request)
        if (device_id is None) != (metric is None):
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "give both device_id and metric, or neither")
        hub.admit()
        return view, Subscriber(name, device_id, metric, window)

    @router.get("/api/events", response_class=EventSourceResponse)
    async def events(admission: tuple[DataDirView, Subscriber] = Depends(admitted)):
        view, subscriber = admission
        hub.subscribe(subscriber)
        try:
            yield ServerSentEvent(event="hello", data={"version": view.version, "polls": hub.polls})
            while True:
                update = await subscriber.queue.get()
                if update is None:
                    return
                if subscriber.behind:
                    # Dropped updates cannot be replayed; the page reloads its state instead.
                    while not subscriber.queue.empty():
                        subscriber.queue.get_nowait()
                    subscriber.behind = False
                    yield ServerSentEvent(event="resync", data={"version": update.version})
                    continue
                for event in update.events(subscriber):
                    yield event
        finally:
            hub.unsubscribe(subscriber)

    return router


def metrics_response(views: Callable[[], list[DataDirView]]) -> Response:
    return Response(generate_latest(registry_for(views)), media_type=CONTENT_TYPE_LATEST)


def create_app(view: DataDirView, *, interval: float = 0.5, max_clients: int = 200) -> FastAPI:
    """Build ``sparkiot dashboard``'s app: one pipeline's dashboard at ``/`` and its metrics at ``/metrics``."""
    hub = Hub(lambda: {view.name: view}, interval=interval, max_clients=max_clients)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        await asyncio.to_thread(view.poll)
        await hub.start()
        yield
        await hub.stop()

    app = FastAPI(lifespan=lifespan, title=f"sparkiot dashboard: {view.name}", version="1")
    app.state.hub = hub
    app.include_router(dashboard_router(lambda _request: (view.name, view), hub))

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return metrics_response(lambda: [view])

    return app
