"""The edge agent's uplink: forwards buffered readings and syncs CRDT deltas to the cloud broker.

One thread owns the upstream MQTT connection's sending side. It hands buffered messages to
the broker at QoS 1 and deletes each from the buffer when its PUBACK arrives (at-least-once).
The backlog and the live stream are separate:

- at each (re)connect, everything buffered so far is *backlog*; it drains in buffer order at
  ``buffer.drain_rate`` readings per second;
- messages buffered after the connect are *live* and go out at once, ahead of the backlog, so
  fresh readings are not stuck behind hours of stored ones. The main job orders by event time,
  so the interleaving does not matter there. Its watermark must be longer than the outage for
  backlog readings to count as on time.

paho keeps QoS 1 messages it was handed across reconnects and sends them again itself, so a
message handed once is not handed again by this thread while the process lives. After a
restart everything still buffered is sent again, and the main job removes the copies by msg_id.

The sync side follows :mod:`sparkiot.edge.protocol`: hello at connect, delta groups after the
cloud's acknowledged sequence number, a resend when no acknowledgement came within
``sync.resend_after``, and the full state when the cloud is behind the oldest group kept.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter

import paho.mqtt.client as mqtt

from sparkiot.edge import protocol
from sparkiot.edge.buffer import DeltaGroup, EdgeStore
from sparkiot.edge.config import EdgeConfig
from sparkiot.edge.crdt import CrdtMap
from sparkiot.ingest.mqtt_client import connect_in_background, disable_nagle, new_client

log = logging.getLogger(__name__)


class Uplink:
    """Send the buffer and the delta groups upstream until :meth:`stop`."""

    def __init__(self, config: EdgeConfig, store_path, *, replica: str, on_cloud_state) -> None:
        self.config = config
        self.counters: Counter[str] = Counter()
        self.replica = replica
        self._store_path = store_path
        self._on_cloud_state = on_cloud_state
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._inflight: dict[int, tuple[str, int, int]] = {}
        self.connected = False
        self._thread: threading.Thread | None = None
        self._client: mqtt.Client | None = None

        # Forwarding cursors: see the module docstring.
        self._live_from = 0
        self._live_cursor = 0
        self._backlog_cursor = 0
        self._tokens = 0.0
        self._last_refill = time.monotonic()

        # Sync state.
        self._handshake = False
        self._cloud_seq = 0
        self._sent_seq = 0
        self._last_delta_sent = 0.0
        self._last_hello = 0.0
        self._last_expiry = 0.0
        self._connect_failures = 0
        self._wait = 0.2

        prefix = config.sync.topic_prefix
        self._delta_topic = protocol.topic(prefix, config.site, "delta")
        self._hello_topic = protocol.topic(prefix, config.site, "hello")
        self._ack_topic = protocol.topic(prefix, config.site, "ack")
        self._state_topic = protocol.topic(prefix, config.site, "state")
        self._readings_topic = config.topic(config.upstream.topic)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sparkiot-uplink", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def resync(self) -> None:
        """Say hello again, after the agent joined a state the cloud sent."""
        self._events.put(("resync", None))
        self._wake.set()

    def notify(self) -> None:
        """Wake the sender: the buffer or the delta groups grew."""
        self._wake.set()

    # -- paho callbacks (network thread) ----------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("upstream broker %s refused the connection: %s", self.config.upstream.broker, reason_code)
            return
        disable_nagle(client)
        if self.config.sync.enabled:
            client.subscribe([(self._ack_topic, 1), (self._state_topic, 1)])
        self._events.put(("connected", None))
        self._wake.set()

    def _on_connect_fail(self, client, userdata) -> None:
        self._connect_failures += 1
        if self._connect_failures % 60 == 1:
            log.warning("cannot reach the upstream broker %s (attempt %d); retrying with backoff", self.config.upstream.broker, self._connect_failures)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._events.put(("disconnected", reason_code))
        self._wake.set()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        self._events.put(("puback", mid))
        self._wake.set()

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        kind = "ack" if message.topic == self._ack_topic else "state"
        self._events.put((kind, message.payload))
        self._wake.set()

    # -- the sender thread ------------------------------------------------------------------

    def _run(self) -> None:
        upstream = self.config.upstream
        # Only deletes of acknowledged messages and acknowledged sequence numbers are written here.
        # Losing the last of them to a power cut sends some messages again, which the receivers
        # deduplicate, so these commits skip the fsync that the agent's own commits make.
        self._store = EdgeStore(self._store_path, durability="normal")
        self._cloud_seq = self._store.get_meta("cloud_seq")
        self._sent_seq = self._cloud_seq

        client_id = self.config.topic(upstream.client_id)
        client = new_client(client_id, protocol=upstream.protocol)
        client.max_inflight_messages_set(upstream.max_inflight + 16)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(min_delay=max(1, int(upstream.reconnect_min)), max_delay=int(upstream.reconnect_max))
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self._client = client

        connect_in_background(client, upstream.broker, protocol=upstream.protocol, keepalive=upstream.keepalive,
                              session_expiry=0, clean_start=True)
        client.loop_start()
        log.info("uplink to %s as %r started", upstream.broker, client_id)

        try:
            while not self._stop.is_set():
                self._wake.wait(timeout=self._wait)
                self._wake.clear()
                self._wait = 0.2
                self._handle_events()
                if self.connected:
                    self._send_live()
                    self._send_backlog()
                    if self.config.sync.enabled:
                        self._send_deltas()
                self._expire()
        except Exception:
            log.exception("the uplink stopped on an unexpected error; buffered data stays on disk for the next start")
            raise
        finally:
            client.disconnect()
            client.loop_stop()
            self._store.close()

    def _handle_events(self) -> None:
        acked: list[int] = []
        while True:
            try:
                kind, body = self._events.get_nowait()
            except queue.Empty:
                break
            if kind == "puback":
                entry = self._inflight.pop(body, None)
                if entry is not None and entry[0] == "readings":
                    acked.append(entry[1])
                    self.counters["forwarded_readings"] += entry[2]
                    self.counters["forwarded_messages"] += 1
            elif kind == "connected":
                self._connected()
            elif kind == "disconnected":
                if self.connected:
                    self.counters["uplink_disconnects"] += 1
                    log.warning("uplink to %s lost (%s); buffering until it is back", self.config.upstream.broker, body)
                self.connected = False
                self._handshake = False
            elif kind == "ack":
                self._handle_ack(body)
            elif kind == "state":
                self._handle_state(body)
            elif kind == "resync" and self.connected:
                self._handshake = False
                self._say_hello()
        if acked:
            self._store.remove(acked)

    def _connected(self) -> None:
        self.connected = True
        self._live_from = self._live_cursor = self._store.max_seq()
        self._tokens = 0.0
        self._last_refill = time.monotonic()
        messages, readings, _ = self._store.totals()
        log.info(
            "uplink to %s connected; backlog %d messages (%d readings), draining at %g readings/s",
            self.config.upstream.broker, messages, readings, self.config.buffer.drain_rate,
        )
        if self.config.sync.enabled:
            self._handshake = False
            self._say_hello()

    def _publish(self, topic: str, payload: bytes, *, kind: str, seq: int = 0, readings: int = 0) -> bool:
        info = self._client.publish(topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
            log.warning("publish on %s failed: %s", topic, mqtt.error_string(info.rc))
            return False
        self._inflight[info.mid] = (kind, seq, readings)
        return True

    def _room(self) -> int:
        return self.config.upstream.max_inflight - len(self._inflight)

    def _send_live(self) -> None:
        while self._room() > 0:
            batch = self._store.outgoing(after_seq=self._live_cursor, limit=min(self._room(), 100))
            if not batch:
                return
            for message in batch:
                self._publish(self._readings_topic, message.payload, kind="readings", seq=message.seq, readings=message.readings)
                self._live_cursor = message.seq

    def _send_backlog(self) -> None:
        if self._backlog_cursor >= self._live_from:
            return
        now = time.monotonic()
        rate = self.config.buffer.drain_rate
        self._tokens = min(self._tokens + (now - self._last_refill) * rate, max(rate, 1.0))
        self._last_refill = now
        handed = {entry[1] for entry in self._inflight.values() if entry[0] == "readings"}
        while self._room() > 0 and self._tokens > 0:
            batch = self._store.outgoing(after_seq=self._backlog_cursor, up_to_seq=self._live_from, limit=20)
            if not batch:
                self._backlog_cursor = self._live_from
                self.counters["backlogs_drained"] += 1
                log.info("uplink backlog drained")
                return
            for message in batch:
                if self._room() <= 0 or self._tokens <= 0:
                    return
                self._backlog_cursor = message.seq
                if message.seq in handed:
                    continue
                self._publish(self._readings_topic, message.payload, kind="readings", seq=message.seq, readings=message.readings)
                self._tokens -= message.readings
                self.counters["backlog_readings_sent"] += message.readings
        if self._tokens <= 0:
            # Come back when the bucket has refilled, not only at the next notify.
            self._wait = min(self._wait, -self._tokens / rate + 0.001)

    # -- sync ---------------------------------------------------------------------------------

    def _say_hello(self) -> None:
        self._publish(self._hello_topic, protocol.encode_hello(self.replica, self._store.get_meta("seq")), kind="sync")
        self._last_hello = time.monotonic()

    def _send_deltas(self) -> None:
        now = time.monotonic()
        if not self._handshake:
            # The sync service may not have been subscribed when the last hello went out.
            if now - self._last_hello > self.config.sync.resend_after:
                self.counters["hello_resends"] += 1
                self._say_hello()
            self._wait = min(self._wait, self.config.sync.resend_after)
            return

        if self._sent_seq > self._cloud_seq and now - self._last_delta_sent > self.config.sync.resend_after:
            log.info("no acknowledgement for delta groups after %d within %gs; sending them again", self._cloud_seq, self.config.sync.resend_after)
            self.counters["delta_resends"] += 1
            self._sent_seq = self._cloud_seq
        groups = self._store.deltas(after_seq=self._sent_seq, limit=200)
        if not groups:
            return
        if groups[0].from_seq > self._sent_seq:
            # The groups that follow the cloud's number were joined away or lost: send the full state.
            self._send_full_state()
            return
        batch: list[DeltaGroup] = []
        size = 0
        for group in groups:
            if batch and size + len(group.data) > self.config.sync.max_message_bytes:
                break
            batch.append(group)
            size += len(group.data)
        self._publish(self._delta_topic, protocol.encode_delta(self.replica, [protocol.Group(*g) for g in batch]), kind="sync")
        self._sent_seq = batch[-1].to_seq
        self._last_delta_sent = now
        self.counters["delta_messages_sent"] += 1
        self.counters["delta_bytes_sent"] += size

    def _send_full_state(self) -> None:
        self._store.begin()
        try:
            seq = self._store.get_meta("seq")
            entries = self._store.entries()
        finally:
            self._store.commit()
        data = CrdtMap.from_entries(entries).to_bytes()
        log.info("sending the full state (%d entries, %d bytes) up to seq %d: the cloud is at %d", len(entries), len(data), seq, self._cloud_seq)
        self._publish(self._delta_topic, protocol.encode_delta(self.replica, [protocol.Group(0, seq, data)]), kind="sync")
        self._sent_seq = seq
        self._last_delta_sent = time.monotonic()
        self.counters["full_state_syncs"] += 1
        self.counters["delta_bytes_sent"] += len(data)

    def _handle_ack(self, payload: bytes) -> None:
        try:
            versions = protocol.decode_ack(payload)
        except protocol.ProtocolError as exc:
            self.counters["sync_rejected"] += 1
            log.warning("ignored a malformed acknowledgement on %s: %s", self._ack_topic, exc)
            return
        cloud_seq = versions.get(self.replica, 0)
        own_seq = self._store.get_meta("seq")
        if cloud_seq > own_seq:
            # The cloud has updates this agent lost, so it sends the state, which _handle_state joins.
            log.warning("the cloud acknowledged seq %d but this agent is at %d; waiting for the cloud's state", cloud_seq, own_seq)
            return
        self._store.prune_deltas(up_to_seq=cloud_seq)
        if cloud_seq != self._cloud_seq:
            self._store.begin()
            self._store.set_meta("cloud_seq", cloud_seq)
            self._store.commit()
        self._cloud_seq = cloud_seq
        self.counters["delta_acks"] += 1
        if not self._handshake:
            self._handshake = True
            self._sent_seq = cloud_seq
        elif cloud_seq >= self._sent_seq:
            self._last_delta_sent = time.monotonic()
        self._wake.set()

    def _handle_state(self, payload: bytes) -> None:
        try:
            replica, seq, data = protocol.decode_state(payload)
        except protocol.ProtocolError as exc:
            self.counters["sync_rejected"] += 1
            log.warning("ignored a malformed state message on %s: %s", self._state_topic, exc)
            return
        if replica != self.replica:
            return
        # The agent joins the state on its own thread, then calls resync() to say hello again.
        self._on_cloud_state(seq, data)
        self.counters["cloud_states_received"] += 1

    def _expire(self) -> None:
        now = time.monotonic()
        if now - self._last_expiry < 5:
            return
        self._last_expiry = now
        cutoff_us = time.time_ns() // 1000 - int(self.config.buffer.max_age * 1_000_000)
        expired = self._store.expire(older_than_us=cutoff_us)
        if expired:
            self.counters["buffer_expired_readings"] += expired
            log.warning("dropped %d buffered readings older than buffer.max_age=%gs", expired, self.config.buffer.max_age)
