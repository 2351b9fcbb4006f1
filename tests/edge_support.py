"""Helpers for the edge tests: agents and the sync service in threads, a cuttable TCP link, references."""

from __future__ import annotations

import json
import math
import socket
import threading
from collections import defaultdict
from pathlib import Path

from ddsketch import DDSketch

from sparkiot.edge.agent import EdgeAgent
from sparkiot.edge.config import EdgeConfig, build_edge_config
from sparkiot.edge.service import SyncService
from tests.support import wait_for


def edge_config(
    data_dir: Path, unique: str, site: str, *, local: str, upstream: str, upstream_options: dict | None = None, **overrides
) -> EdgeConfig:
    """An agent for ``site`` that reads ``it/UNIQUE/SITE/sensors/{device_id}`` and syncs under ``it/UNIQUE/sync``."""
    raw = {
        "site": site,
        "data_dir": str(data_dir / site),
        "local": {"broker": local, "topics": [f"it/{unique}/{site}/sensors/#"], "client_id": f"edge-{unique}-{site}",
                  "session_expiry": "10m", "reconnect_min": "1s", "reconnect_max": "1s"},
        "codec": {"topic_pattern": "it/{_}/{_}/sensors/{device_id}"},
        "upstream": {"broker": upstream, "topic": f"it/{unique}/edge/{{site}}/readings", "client_id": f"up-{unique}-{{site}}",
                     "keepalive": "2s", "reconnect_min": "1s", "reconnect_max": "1s", **(upstream_options or {})},
        "sync": {"topic_prefix": f"it/{unique}/sync", "resend_after": "1s"},
        "buffer": {"durability": "normal"},
    }
    for key, value in overrides.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
    return build_edge_config(raw)


def reading_payload(device: str, metric: str, ts_us: int, value: float) -> bytes:
    return json.dumps({"device_id": device, "metric": metric, "ts": ts_us, "value": value}).encode()


class EdgeThread:
    """Runs an :class:`EdgeAgent` in a background thread for the length of a ``with`` block."""

    def __init__(self, config: EdgeConfig, *, local: str, wait_uplink: bool = True) -> None:
        self.agent = EdgeAgent(config, local_url=local)
        self.wait_uplink = wait_uplink
        self._thread = threading.Thread(target=self.agent.run, daemon=True)

    def __enter__(self) -> "EdgeThread":
        self._thread.start()
        wait_for(self.agent.subscribed.is_set, 20, "the edge agent to subscribe")
        if self.wait_uplink:
            wait_for(lambda: self.agent.uplink.connected, 20, "the edge agent's uplink")
        return self

    def __exit__(self, *exc_info) -> None:
        self.agent.stop()
        self._thread.join(timeout=30)


class SyncThread:
    """Runs a :class:`SyncService` in a background thread."""

    def __init__(self, store, broker: str, unique: str) -> None:
        self.service = SyncService(store, broker, topic_prefix=f"it/{unique}/sync", client_id=f"sync-{unique}")
        self._thread = threading.Thread(target=self.service.run, daemon=True)

    def __enter__(self) -> "SyncThread":
        self._thread.start()
        wait_for(self.service.subscribed.is_set, 20, "the sync service to subscribe")
        return self

    def __exit__(self, *exc_info) -> None:
        self.service.stop()
        self._thread.join(timeout=30)


class TcpLink:
    """A TCP relay on 127.0.0.1 to ``target`` that a test can cut and restore, like a failing uplink.

    While cut, the relay's connections are closed and new ones are refused (nothing listens).
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, []
        if listener is not None:
            # shutdown() wakes the thread blocked in accept(); close() alone leaves the socket listening.
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def expected_state(readings: list[tuple[str, str, int, float]], *, relative_accuracy: float = 0.01) -> dict:
    """The site state the edge should hold, computed from ``(device, metric, ts_us, value)`` with plain Python."""
    series: dict[tuple[str, str], list[float]] = defaultdict(list)
    last_seen: dict[str, int] = {}
    for device, metric, ts_us, value in readings:
        series[(device, metric)].append(value)
        last_seen[device] = max(last_seen.get(device, ts_us), ts_us)
    summaries, quantiles = {}, {}
    for (device, metric), values in series.items():
        summaries[f"summary/{device}/{metric}"] = {
            "count": len(values), "sum": math.fsum(values), "sum_squares": math.fsum(v * v for v in values),
            "min": min(values), "max": max(values),
        }
        sketch = DDSketch(relative_accuracy=relative_accuracy)
        for value in values:
            sketch.add(value)
        quantiles[f"quantiles/{device}/{metric}"] = {q: sketch.get_quantile_value(q) for q in (0.5, 0.95)}
    return {
        "readings": len(readings),
        "devices": sorted({device for device, *_ in readings}),
        "summaries": summaries,
        "quantiles": quantiles,
        "last_seen": {f"last_seen/{device}": float(ts) for device, ts in last_seen.items()},
    }


def assert_state_matches(state, expected: dict) -> None:
    """Check a site's CRDT map against :func:`expected_state`: exact counts, sums to rounding."""
    assert state.get("readings").value() == expected["readings"]
    assert sorted(state.get("devices").value()) == expected["devices"]
    for key, summary in expected["summaries"].items():
        value = state.get(key).value()
        assert (value.count, value.min, value.max) == (summary["count"], summary["min"], summary["max"]), key
        assert math.isclose(value.sum, summary["sum"], rel_tol=1e-9, abs_tol=1e-9), key
        assert math.isclose(value.sum_squares, summary["sum_squares"], rel_tol=1e-9), key
    for key, quantiles in expected["quantiles"].items():
        sketch = state.get(key)
        for q, reference in quantiles.items():
            assert math.isclose(sketch.quantile(q), reference, rel_tol=1e-9), (key, q)
    for key, ts in expected["last_seen"].items():
        assert state.get(key).value() == ts, key
