"""The cloud sync service: merges edge agents' delta groups into a state store and acknowledges them.

It subscribes to ``PREFIX/+/delta`` and ``PREFIX/+/hello`` at QoS 1 with a persistent session,
so groups sent while it is down wait in the broker. A message is acknowledged to the broker
(manual ack) only after its groups are committed to the store. Then the edge agent gets an
acknowledgement with the site's version vector (see :mod:`sparkiot.edge.protocol`).

Messages are taken in batches: all groups of one replica in a batch are merged with one store
transaction. A message that breaks the protocol, or whose state does not decode, is kept as a
sync dead letter with a reason code (``invalid_sync_message``, ``invalid_crdt``,
``wrong_topic``), counted, and acknowledged, so it never blocks the others. A delta entry that
cannot be joined with the stored one (another CRDT type, sketches of another accuracy) is left
out as ``crdt_conflict`` while the rest of its group is merged. When the store cannot be
reached, the batch waits unacknowledged and is tried again every second.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections import Counter, defaultdict

import paho.mqtt.client as mqtt
import redis

from sparkiot.edge import protocol
from sparkiot.edge.config import SITE_PATTERN
from sparkiot.edge.crdt import CrdtDecodeError, CrdtMap
from sparkiot.ingest.mqtt_client import connect_in_background, disable_nagle, new_client
from sparkiot.state.crdt_store import FLEET, CrdtStore, DecodedGroup, Rejected

log = logging.getLogger(__name__)



class SyncService:
    """Run the sync service against ``broker_url`` until :meth:`stop`."""

    def __init__(
        self,
        store: CrdtStore,
        broker_url: str,
        *,
        topic_prefix: str = "sparkiot/sync",
        client_id: str = "sparkiot-sync-service",
        protocol_version: str = "5",
        batch_max_messages: int = 1000,
    ) -> None:
        self.store = store
        self.broker_url = broker_url
        self.prefix = topic_prefix
        self.client_id = client_id
        self.protocol_version = protocol_version
        self.batch_max_messages = batch_max_messages
        self.counters: Counter[str] = Counter()
        self.subscribed = threading.Event()
        self._messages: queue.SimpleQueue[mqtt.MQTTMessage] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._client: mqtt.Client | None = None
        self._connect_failures = 0

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker %s rejected the sync service's connection: %s", self.broker_url, reason_code)
            return
        disable_nagle(client)
        log.info("sync service connected to %s; subscribing to %s/+/delta and /hello", self.broker_url, self.prefix)
        client.subscribe([(protocol.topic(self.prefix, "+", "delta"), 1), (protocol.topic(self.prefix, "+", "hello"), 1)])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if not any(code.is_failure for code in reason_codes):
            self.subscribed.set()

    def _on_connect_fail(self, client, userdata) -> None:
        self._connect_failures += 1
        if self._connect_failures % 60 == 1:
            log.warning("cannot reach the broker %s (attempt %d); retrying with backoff", self.broker_url, self._connect_failures)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.subscribed.clear()
        if not self._stop.is_set():
            self.counters["disconnects"] += 1
            log.warning("sync service lost %s (%s); reconnecting", self.broker_url, reason_code)

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        self._messages.put(message)

    def run(self) -> None:
        client = new_client(self.client_id, protocol=self.protocol_version, persistent=True)
        client.manual_ack_set(True)
        client.max_inflight_messages_set(1000)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client

        connect_in_background(client, self.broker_url, protocol=self.protocol_version, keepalive=30,
                              session_expiry=86400, clean_start=False)
        client.loop_start()
        try:
            while not self._stop.is_set():
                self._process_waiting()
        finally:
            client.disconnect()
            client.loop_stop()
            log.info("sync service stopped after %d messages", self.counters["messages"])

    def stop(self) -> None:
        self._stop.set()

    def _process_waiting(self) -> None:
        try:
            first = self._messages.get(timeout=0.2)
        except queue.Empty:
            return
        batch = [first]
        while len(batch) < self.batch_max_messages:
            try:
                batch.append(self._messages.get_nowait())
            except queue.Empty:
                break
        try:
            self.process(batch)
        except Exception:  # noqa: BLE001 - a bug on one batch must not stop every site's sync
            self.counters["process_errors"] += 1
            log.exception("failed on a batch of %d sync messages; acknowledged without merging, the agents send them again",
                          len(batch))
            for message in batch:
                if message.qos > 0:
                    self._client.ack(message.mid, message.qos)

    def process(self, messages: list[mqtt.MQTTMessage]) -> None:
        """Merge a batch, acknowledge it to the broker, then send each site's agent its version vector."""
        groups: dict[tuple[str, str], list[DecodedGroup]] = defaultdict(list)
        hellos: dict[tuple[str, str], int] = {}
        for message in messages:
            self.counters["messages"] += 1
            try:
                site, kind = protocol.site_and_kind(self.prefix, message.topic)
                if not SITE_PATTERN.fullmatch(site):
                    self._reject(message, "wrong_topic", f"site {site!r} must be 1-64 letters, digits, '_', '.' or '-'")
                    continue
                if kind == "delta":
                    replica, received = protocol.decode_delta(message.payload)
                    decoded = [DecodedGroup(g.from_seq, g.to_seq, _decode_map(g.data)) for g in received]
                    groups[(site, replica)].extend(decoded)
                    self.counters["groups"] += len(decoded)
                elif kind == "hello":
                    replica, seq = protocol.decode_hello(message.payload)
                    hellos[(site, replica)] = seq
                else:
                    self._reject(message, "wrong_topic", f"topic kind {kind!r} is neither delta nor hello")
            except protocol.ProtocolError as exc:
                self._reject(message, "invalid_sync_message", str(exc))
            except CrdtDecodeError as exc:
                self._reject(message, "invalid_crdt", str(exc))

        answered: dict[str, dict[str, int]] = {}
        for (site, replica), site_groups in groups.items():
            versions = self._with_store_retry(lambda: self._apply(site, replica, site_groups))
            if versions is None:
                return  # stopping: nothing acknowledged, so the broker delivers the batch again
            answered[site] = versions
        for message in messages:
            if message.qos > 0:
                self._client.ack(message.mid, message.qos)

        for (site, replica), seq in hellos.items():
            versions = answered.get(site) or self._with_store_retry(lambda: self.store.versions(site))
            if versions is None:
                return
            answered[site] = versions
            cloud_seq = versions.get(replica, 0)
            # The agent lost updates the cloud has (a restored disk), or it starts empty as a new
            # replica of a site the cloud has seen (a new disk). Either way it gets the site's state.
            if cloud_seq > seq or (seq == 0 and replica not in versions and versions):
                state = self._with_store_retry(lambda: self.store.site_state(site))
                if state is None:
                    return
                self._client.publish(protocol.topic(self.prefix, site, "state"),
                                     protocol.encode_state(replica, cloud_seq, state.to_bytes()), qos=1)
                self.counters["states_sent"] += 1
                log.info("site %s replica %s sent hello at seq %d, the cloud has %d; sent it the site's state",
                         site, replica, seq, cloud_seq)
        for site, versions in answered.items():
            self._client.publish(protocol.topic(self.prefix, site, "ack"), protocol.encode_ack(versions), qos=1)
            self.counters["acks_sent"] += 1

    def _apply(self, site: str, replica: str, groups: list[DecodedGroup]) -> dict[str, int]:
        rejected: list[Rejected] = []
        versions = self.store.apply(site, replica, groups, rejected)
        self.counters["merges"] += 1
        for item in rejected:
            self.counters["rejected_crdt_conflict"] += 1
            where = "the fleet view" if item.scope == FLEET else f"site {item.scope}"
            detail = f"replica {replica}: key {item.key!r} cannot be joined into {where}: {item.error}"
            self.store.put_dead_letter(topic=protocol.topic(self.prefix, site, "delta"), reason="crdt_conflict", detail=detail, raw=b"")
            if self.counters["rejected_crdt_conflict"] <= 10:
                log.error("%s; left out, the other entries were merged", detail)
        return versions

    def _with_store_retry(self, action):
        """Run ``action`` until it succeeds; return None when the service stops first.

        A store that cannot be reached (Redis down, SQLite locked) stops nothing: the batch waits,
        unacknowledged, and the service tries again every second.
        """
        failures = 0
        while not self._stop.is_set():
            try:
                return action()
            except (redis.RedisError, sqlite3.OperationalError, OSError) as exc:
                failures += 1
                self.counters["store_errors"] += 1
                if failures % 30 == 1:
                    log.warning("the state store failed (%s: %s); retrying every second", type(exc).__name__, exc)
                self._stop.wait(1.0)
        return None

    def _reject(self, message: mqtt.MQTTMessage, reason: str, detail: str) -> None:
        self.counters[f"rejected_{reason}"] += 1
        self._with_store_retry(lambda: self.store.put_dead_letter(topic=message.topic, reason=reason, detail=detail, raw=message.payload))
        if self.counters[f"rejected_{reason}"] <= 10:
            log.warning("rejected a sync message on %s (%s): %s", message.topic, reason, detail)


def _decode_map(data: bytes) -> CrdtMap:
    state = CrdtMap.from_bytes(data)
    if not isinstance(state, CrdtMap):
        raise CrdtDecodeError("a delta group must hold a CRDT map")
    return state

