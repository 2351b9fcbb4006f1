"""An embedded MQTT broker (amqtt) on a free loopback port, for the demo and for set-ups with no broker.

It is convenient, not fast: it moved about 1,200 QoS 1 messages/s on a 2-core machine, so the
demo publishes batched payloads. amqtt speaks MQTT 3.1.1 only; clients of the embedded broker
use that protocol version.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading

log = logging.getLogger(__name__)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class EmbeddedBroker:
    """amqtt running in a background thread with its own event loop.

    >>> broker = EmbeddedBroker()   # doctest: +SKIP
    >>> broker.start(); broker.url  # doctest: +SKIP
    'mqtt://127.0.0.1:40123'
    """

    def __init__(self, *, port: int | None = None) -> None:
        self.port = port or free_port()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._broker = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        """Start the broker and return once it accepts connections."""
        self._thread = threading.Thread(target=self._run, name="embedded-mqtt-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"embedded MQTT broker did not start within {timeout:g}s on port {self.port}")
        if self._error is not None:
            raise RuntimeError(f"embedded MQTT broker failed to start on port {self.port}: {self._error}") from self._error
        log.info("embedded MQTT broker listening on %s", self.url)

    def _run(self) -> None:
        # amqtt logs every connection at INFO; keep the user's terminal for sparkiot's own output.
        logging.getLogger("amqtt").setLevel(logging.WARNING)
        from amqtt.broker import Broker

        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}", "max_connections": 1000}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        try:
            self._broker = Broker(config, loop=self._loop)
            self._loop.run_until_complete(self._broker.start())
        except BaseException as exc:  # reported to the starting thread by start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        """Shut the broker down and wait for its thread."""
        if self._loop is None or self._broker is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop)
        try:
            future.result(timeout=10)
        except Exception:  # noqa: BLE001 - shutting down anyway
            log.warning("embedded MQTT broker did not shut down cleanly", exc_info=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        log.info("embedded MQTT broker stopped")
