"""The dashboards of the control plane's pipelines, served at ``/dashboard/NAME/`` and ``/metrics``.

Each pipeline's :class:`~sparkiot.dashboard.view.DataDirView` is made on first use (a page or a
scrape) and dropped when the pipeline is deleted. Its executors and cost come from the control
plane (the runtime's ``status.json`` and the priced ledger), read at most every few seconds,
because pricing reads the registry.
"""

from __future__ import annotations

import threading
import time

from sparkiot.dashboard.view import DataDirView, cost_text
from sparkiot.serverless.control import ControlPlane, NotFound

RUNTIME_REFRESH_SECONDS = 5.0


class PipelineDashboards:
    """The views of the served pipelines, keyed by pipeline name."""

    def __init__(self, control: ControlPlane) -> None:
        self.control = control
        self._views: dict[str, tuple[str, DataDirView]] = {}
        self._lock = threading.Lock()

    def view(self, name: str) -> DataDirView:
        """Return the view of pipeline ``name``, made on first use; raise ``NotFound`` for an unknown name."""
        record = self.control.record(name)
        with self._lock:
            known = self._views.get(name)
            # A pipeline submitted again under the same name may have another data directory.
            if known is None or known[0] != record["data_dir"]:
                view = DataDirView(record["data_dir"], name=name, runtime=self._runtime(name))
                # The first read happens here, so no page or scrape gets a view that has read nothing.
                view.poll()
                known = (record["data_dir"], view)
                self._views[name] = known
            return known[1]

    def views(self) -> dict[str, DataDirView]:
        """Return the views made so far, without the pipelines deleted since."""
        names = {record["name"] for record in self.control.registry.list()}
        with self._lock:
            for gone in set(self._views) - names:
                del self._views[gone]
            return {name: view for name, (_, view) in self._views.items()}

    def all_views(self) -> list[DataDirView]:
        """Return a view of every registered pipeline (what ``/metrics`` exposes)."""
        views = []
        for record in self.control.registry.list():
            try:
                views.append(self.view(record["name"]))
            except NotFound:
                continue
        return views

    def _runtime(self, name: str):
        cached: dict = {"at": 0.0, "value": {}}

        def read() -> dict:
            now = time.monotonic()
            if now - cached["at"] >= RUNTIME_REFRESH_SECONDS:
                status = self.control.runtime_status(name) or {}
                cost = {key: cost_text(bill) for key, bill in self.control.bills(name).items()}
                cached["value"] = {"executors": _executor_count(status), "cost_usd": cost}
                cached["at"] = now
            return cached["value"]

        return read


def _executor_count(status: object) -> int | None:
    """Return the length of the runtime status's ``executors`` list: 0 without one, None when it has another type."""
    executors = status.get("executors") if isinstance(status, dict) else None
    if executors is None:
        return 0
    return len(executors) if isinstance(executors, list) else None
