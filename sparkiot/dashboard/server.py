"""Serve the dashboard's app with uvicorn for ``sparkiot dashboard`` and in a thread of another command
(``sparkiot run``, the demo)."""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

from sparkiot.dashboard.app import create_app
from sparkiot.dashboard.view import DataDirView

log = logging.getLogger(__name__)

# Seconds uvicorn waits at shutdown for responses still being sent before it cancels them.
GRACEFUL_SHUTDOWN_SECONDS = 5


def bind(host: str, port: int) -> socket.socket:
    """Bind a listening socket, or raise ``OSError`` with a message that names the address and what to do."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port} for the dashboard ({exc.strerror}); "
                      "choose another port with --dashboard-port, or 0 for any free one") from None
    sock.listen(128)
    return sock


class DashboardServer(uvicorn.Server):
    """A uvicorn server that ends the event streams of ``hub`` (by default the app's own) at shutdown.

    uvicorn runs the app's lifespan shutdown only after the open responses end, and an event
    stream does not end by itself. So the streams are ended first, and an open page does not hold
    up Ctrl-C, SIGTERM or :meth:`DashboardThread.stop`.
    """

    def __init__(self, app: FastAPI, *, hub=None, **config) -> None:
        super().__init__(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS, **config))
        self.hub = hub if hub is not None else app.state.hub

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.hub.close()
        await super().shutdown(sockets=sockets)


class DashboardThread:
    """Serve one view's dashboard from a background thread until :meth:`stop`."""

    def __init__(self, view: DataDirView, *, host: str = "127.0.0.1", port: int = 8050, interval: float = 0.5,
                 max_clients: int = 200) -> None:
        self.view = view
        self.socket = bind(host, port)
        address = self.socket.getsockname()
        shown_host = f"[{address[0]}]" if ":" in address[0] else address[0]
        self.url = f"http://{shown_host}:{address[1]}/"
        self.server = DashboardServer(create_app(view, interval=interval, max_clients=max_clients))
        self.thread = threading.Thread(target=self._run, name="dashboard", daemon=True)

    def _run(self) -> None:
        try:
            self.server.run(sockets=[self.socket])
        except Exception:  # noqa: BLE001 - the pipeline keeps running without its dashboard
            log.exception("the dashboard at %s stopped", self.url)

    def start(self, timeout: float = 30.0) -> str:
        """Start serving and return the URL once the server accepts requests."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.server.started:
            raise RuntimeError(f"the dashboard did not start within {timeout:g} s; see the log above")
        return self.url

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()
