"""paho-mqtt 2.x clients built the same way everywhere: protocol, session and reconnect settings."""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


def parse_broker_url(url: str) -> tuple[str, int]:
    """Return ``(host, port)`` of ``mqtt://HOST[:PORT]``; the port defaults to 1883."""
    parsed = urlparse(url)
    if parsed.scheme not in ("mqtt", "tcp") or not parsed.hostname:
        raise ValueError(f"invalid broker URL {url!r}: use mqtt://HOST:PORT, such as mqtt://127.0.0.1:1883")
    return parsed.hostname, parsed.port or 1883


def new_client(client_id: str = "", *, protocol: str = "5", persistent: bool = False) -> mqtt.Client:
    """Return a paho client speaking MQTT ``5`` or ``3.1.1``; ``persistent`` keeps the session across reconnects."""
    if protocol == "5":
        return mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    return mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv311,
        clean_session=not persistent,
    )


def disable_nagle(client: mqtt.Client) -> None:
    """Send each MQTT packet at once instead of holding small ones back (Nagle's algorithm).

    paho leaves Nagle's algorithm on. Then a small packet written while an earlier one awaits
    its TCP acknowledgement waits too, for up to the peer's delayed-ACK time (tens of
    milliseconds on Linux). Call it from ``on_connect``, once the socket exists.
    """
    sock = client.socket()
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def connect_properties(protocol: str, *, session_expiry: float, receive_maximum: int = 65535) -> Properties | None:
    """Return MQTT 5 CONNECT properties: session expiry and the receive maximum (ack window)."""
    if protocol != "5":
        return None
    properties = Properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = int(session_expiry)
    properties.ReceiveMaximum = receive_maximum
    return properties


def connect_in_background(
    client: mqtt.Client, url: str, *, protocol: str, keepalive: float, session_expiry: float, clean_start: bool
) -> None:
    """Start connecting ``client`` to ``url``; paho's network loop completes it and reconnects later.

    MQTT 5 gets the session expiry and ``clean_start``. A 3.1.1 client's session follows the
    ``persistent`` flag it was created with by :func:`new_client`.
    """
    host, port = parse_broker_url(url)
    if protocol == "5":
        properties = connect_properties(protocol, session_expiry=session_expiry)
        client.connect_async(host, port, keepalive=int(keepalive), clean_start=clean_start, properties=properties)
    else:
        client.connect_async(host, port, keepalive=int(keepalive))


def connect_publisher(url: str, *, client_id: str = "", protocol: str = "5", timeout: float = 10.0) -> mqtt.Client:
    """Connect a publishing client, start its network thread and return it once connected."""
    host, port = parse_broker_url(url)
    client = new_client(client_id, protocol=protocol)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    connected = threading.Event()
    client.on_connect = lambda *args: connected.set()
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:
        raise ConnectionError(f"cannot connect to MQTT broker {url}: {exc}; check that it runs and the URL") from None
    client.loop_start()
    if not connected.wait(timeout):
        client.loop_stop()
        raise ConnectionError(f"MQTT broker {url} accepted TCP but did not complete the MQTT handshake within {timeout:g}s")
    return client
