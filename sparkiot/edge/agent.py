"""The edge agent: local rules within milliseconds, store-and-forward, and CRDT state synced upstream.

Per batch of messages from the local broker, in order:

1. decode with the configured codecs; payloads that cannot become readings are dead letters,
   kept (raw bytes, bounded) in ``edge.sqlite`` and counted by reason;
2. filter, then evaluate alert rules and publish each alert transition on the local broker at
   once, before anything is written, so no disk or cloud round trip lies on the alert path;
3. fold the admitted readings into the site's CRDT state;
4. in one SQLite transaction: the readings to forward (after down-sampling), the changed CRDT
   entries and the batch's delta group;
5. acknowledge the local messages (QoS 1, manual ack), then wake the uplink.

A killed agent therefore loses nothing it acknowledged: the local broker redelivers the rest.
Readings that the redelivery repeats are forwarded twice and removed upstream by ``msg_id``.
Their CRDT updates are applied twice only if the kill fell between step 4 and step 5.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import secrets
import threading
import time
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt

from sparkiot.codecs import Decoded, make_codec
from sparkiot.codecs.forwarded import encode_forwarded
from sparkiot.edge.buffer import DeltaGroup, EdgeStore
from sparkiot.edge.config import EdgeConfig
from sparkiot.edge.crdt import CrdtMap
from sparkiot.edge.rules import LocalRules
from sparkiot.edge.state import EdgeState
from sparkiot.edge.uplink import Uplink
from sparkiot.ingest.mqtt_client import connect_in_background, disable_nagle, new_client
from sparkiot.readings import DeadLetter, Reading, Reason

log = logging.getLogger(__name__)

KEPT_DEAD_LETTERS = 10_000


def read_edge_stats(data_dir: str | Path) -> dict:
    """Return the counters an agent last wrote under ``data_dir`` (empty before the first write)."""
    try:
        return json.loads((Path(data_dir) / "edge_stats.json").read_text())
    except (OSError, ValueError):
        return {}


class EdgeAgent:
    """Run one gateway's agent against the local broker at ``local_url`` until :meth:`stop`."""

    def __init__(self, config: EdgeConfig, *, local_url: str) -> None:
        self.config = config
        self.local_url = local_url
        self.site = config.site
        self.codec = make_codec(config.codec, dead_letter_raw_bytes=4096)
        self.rules = LocalRules(config.rules)
        self._alerts_changed = False
        self.alert_topic = config.topic(config.rules.alert_topic)

        self.store_path = config.data_path / "edge.sqlite"
        self.store = EdgeStore(self.store_path, durability=config.buffer.durability)
        self.replica = self._replica_id()
        self.rules.restore(self.store.active_alerts())
        self.state = EdgeState(
            self.replica,
            relative_accuracy=config.sync.sketch_relative_accuracy,
            state=CrdtMap.from_entries(self.store.entries()),
        )

        self.counters: Counter[str] = Counter()
        self.dead_letter_reasons: Counter[str] = Counter()
        self.subscribed = threading.Event()
        self._messages: queue.SimpleQueue[mqtt.MQTTMessage] = queue.SimpleQueue()
        self._cloud_states: queue.SimpleQueue[tuple[int, bytes]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._client: mqtt.Client | None = None
        self._last_stats = 0.0
        self.final_stats: dict = {}
        self._connect_failures = 0

        self.uplink = None
        if config.upstream.broker != "none":
            self.uplink = Uplink(config, self.store_path, replica=self.replica,
                                 on_cloud_state=lambda seq, data: self._cloud_states.put((seq, data)))

    def _replica_id(self) -> str:
        """Return this store's replica id: the configured one plus an incarnation drawn when the store is new.

        A gateway that lost its disk starts a new incarnation. Its counts then add to the old
        replica's instead of being hidden under the old replica's larger ones by the join.
        """
        incarnation = self.store.get_meta("incarnation", -1)
        if incarnation < 0:
            incarnation = secrets.randbits(32)
            self.store.begin()
            self.store.set_meta("incarnation", incarnation)
            self.store.commit()
        return f"{self.config.replica}.{incarnation:08x}"

    # -- local MQTT callbacks (paho network thread) -----------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("local broker %s refused the connection: %s", self.local_url, reason_code)
            return
        disable_nagle(client)
        log.info("connected to the local broker %s; subscribing to %s", self.local_url, self.config.local.topics)
        client.subscribe([(topic, self.config.local.qos) for topic in self.config.local.topics])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if any(code.is_failure for code in reason_codes):
            log.error("local broker %s rejected the subscription to %s: %s", self.local_url, self.config.local.topics, reason_codes)
            return
        self.subscribed.set()

    def _on_connect_fail(self, client, userdata) -> None:
        self._connect_failures += 1
        if self._connect_failures % 60 == 1:
            log.warning("cannot reach the local broker %s (attempt %d); retrying with backoff", self.local_url, self._connect_failures)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.subscribed.clear()
        if not self._stop.is_set():
            self.counters["local_disconnects"] += 1
            log.warning("disconnected from the local broker %s (%s); reconnecting", self.local_url, reason_code)

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        self._messages.put(message)

    # -- main loop --------------------------------------------------------------------------

    def run(self) -> None:
        """Connect to the local broker and process messages until :meth:`stop`."""
        local = self.config.local
        client = new_client(self.config.topic(local.client_id), protocol=local.protocol, persistent=True)
        client.manual_ack_set(True)
        client.reconnect_delay_set(min_delay=max(1, int(local.reconnect_min)), max_delay=int(local.reconnect_max))
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client

        connect_in_background(client, self.local_url, protocol=local.protocol, keepalive=local.keepalive,
                              session_expiry=local.session_expiry, clean_start=False)
        if self.uplink is not None:
            self.uplink.start()
        client.loop_start()
        log.info(
            "edge agent for site %r started: local broker %s, upstream %s, data directory %s",
            self.site, self.local_url, self.config.upstream.broker, self.config.data_dir,
        )

        try:
            while not self._stop.is_set():
                self._take_cloud_states()
                self._process_waiting()
                self._write_stats()
        finally:
            client.disconnect()
            client.loop_stop()
            if self.uplink is not None:
                self.uplink.stop()
            self._write_stats(force=True)
            self.final_stats = self.stats()
            self.store.close()
            log.info("edge agent stopped after %d messages", self.counters["messages"])

    def stop(self) -> None:
        self._stop.set()

    def _process_waiting(self) -> None:
        try:
            first = self._messages.get(timeout=0.1)
        except queue.Empty:
            return
        messages = [first]
        while len(messages) < self.config.buffer.batch_max_messages:
            try:
                messages.append(self._messages.get_nowait())
            except queue.Empty:
                break
        self.process(messages)

    def process(self, messages: list[mqtt.MQTTMessage]) -> None:
        """Run one batch through rules, state and buffer, then acknowledge it (see the module docstring)."""
        received_us = time.time_ns() // 1000
        admitted: list[Reading] = []
        forwarded: list[Reading] = []
        dead: list[DeadLetter] = []
        raised = cleared = 0

        for message in messages:
            if message.retain and self.config.local.retained == "dead_letter":
                dead.append(DeadLetter(message.payload[:4096], len(message.payload), message.topic, Reason.RETAINED_MESSAGE.value,
                                       "retained message replayed by the broker at subscribe time; set local.retained: accept to process it",
                                       received_us))
                continue
            decoded = self._decode(message, received_us)
            dead.extend(decoded.dead_letters)
            for reading in decoded.readings:
                # The site scopes msg_id, so equal payload ids of two gateways stay two readings upstream.
                reading = reading._replace(site=self.site, msg_id=f"{self.site}:{reading.msg_id}")
                try:
                    outcome = self._apply_rules(reading)
                except ValueError as exc:
                    dead.append(self._reading_dead_letter(reading, Reason.VALUE_OUT_OF_RANGE, str(exc), received_us))
                    continue
                except Exception as exc:  # noqa: BLE001 - one reading must not stop the gateway
                    self.counters["processing_errors"] += 1
                    if self.counters["processing_errors"] <= 10:
                        log.exception("processing failed on reading %s of %s/%s; kept as a dead letter",
                                      reading.msg_id, reading.device_id, reading.metric)
                    dead.append(self._reading_dead_letter(reading, Reason.PROCESSING_ERROR, f"{type(exc).__name__}: {exc}", received_us))
                    continue
                if outcome is None:
                    continue
                transitions, forward = outcome
                for transition in transitions:
                    self._client.publish(self.alert_topic, json.dumps(transition.document()), qos=1)
                    if transition.state == "raised":
                        raised += 1
                    else:
                        cleared += 1
                admitted.append(reading)
                if forward:
                    forwarded.append(reading)
                else:
                    self.counters["downsampled"] += 1

        self.state.count_dead_letters(len(dead))
        self.state.alert_transitions(raised, cleared)
        self._alerts_changed = bool(raised or cleared)
        self._commit(forwarded, dead, received_us)

        for message in messages:
            if message.qos > 0:
                self._client.ack(message.mid, message.qos)
        if self.uplink is not None:
            self.uplink.notify()
        self.counters["messages"] += len(messages)
        self.counters["readings"] += len(admitted)
        self.counters["alerts_raised"] += raised
        self.counters["alerts_cleared"] += cleared
        self.counters["dead_letters"] += len(dead)
        for letter in dead:
            self.dead_letter_reasons[letter.reason] += 1

    def _apply_rules(self, reading: Reading):
        """Return None for a filtered reading, else its alert transitions and whether it goes upstream.

        Raises ValueError, with nothing changed, when the aggregates cannot hold the value.
        """
        if not self.rules.admit(reading):
            self.counters["filtered"] += 1
            return None
        self.state.observe_one(reading)
        return self.rules.evaluate(reading), self.rules.forward(reading)

    @staticmethod
    def _reading_dead_letter(reading: Reading, reason: Reason, detail: str, received_us: int) -> DeadLetter:
        raw = json.dumps({"device_id": reading.device_id, "metric": reading.metric, "ts_us": reading.ts_us,
                          "value": reading.value}).encode()
        return DeadLetter(raw, len(raw), reading.source, reason.value, detail[:500], received_us)

    def _decode(self, message: mqtt.MQTTMessage, received_us: int) -> Decoded:
        try:
            return self.codec.decode(message.payload, message.topic, received_us)
        except Exception as exc:  # noqa: BLE001 - one poison message must not stop the gateway
            self.counters["decoder_errors"] += 1
            if self.counters["decoder_errors"] <= 10:
                log.exception("decoder failed on a message of %d bytes on %s; kept as a dead letter", len(message.payload), message.topic)
            return Decoded([], [DeadLetter(message.payload[:4096], len(message.payload), message.topic, Reason.DECODER_ERROR.value,
                                           f"the decoder failed: {type(exc).__name__}: {exc}"[:500], received_us)])

    def _commit(self, forwarded: list[Reading], dead: list[DeadLetter], received_us: int) -> None:
        delta, changed = self.state.take_delta()
        per_message = self.config.upstream.readings_per_message
        outgoing = [
            (received_us, len(chunk), encode_forwarded(self.site, chunk))
            for chunk in (forwarded[i:i + per_message] for i in range(0, len(forwarded), per_message))
        ] if self.uplink is not None else []

        self.store.begin()
        try:
            if outgoing:
                result = self.store.append(outgoing, max_bytes=self.config.buffer.max_bytes, overflow=self.config.buffer.overflow)
                self._count_overflow(result)
            self.store.put_entries(changed)
            if delta is not None and self.config.sync.enabled:
                seq = self.store.get_meta("seq")
                self.store.put_delta(DeltaGroup(seq, seq + 1, delta.to_bytes()))
                self.store.set_meta("seq", seq + 1)
                if self.store.delta_count() > self.config.sync.max_pending_deltas:
                    self._join_pending_deltas()
            if dead:
                self.store.put_dead_letters(dead, keep=KEPT_DEAD_LETTERS)
            if self._alerts_changed:
                self.store.put_active_alerts(self.rules.active())
        except BaseException:
            self.store.rollback()
            raise
        self.store.commit()

    def _count_overflow(self, result) -> None:
        if result.refused_readings:
            self.counters["buffer_refused_readings"] += result.refused_readings
            log.warning("buffer full (buffer.max_bytes=%d): rejected %d new readings", self.config.buffer.max_bytes, result.refused_readings)
        if result.dropped_readings:
            self.counters["buffer_dropped_readings"] += result.dropped_readings
            log.warning("buffer full (buffer.max_bytes=%d): dropped the %d oldest readings", self.config.buffer.max_bytes, result.dropped_readings)

    def _join_pending_deltas(self) -> None:
        """Join every unacknowledged delta group into one, inside the open transaction."""
        groups = self.store.deltas(after_seq=-1, limit=1_000_000)
        joined = CrdtMap()
        for group in groups:
            joined.merge(CrdtMap.from_bytes(group.data))
        self.store.replace_deltas(DeltaGroup(groups[0].from_seq, groups[-1].to_seq, joined.to_bytes()))
        self.counters["delta_joins"] += 1

    def _take_cloud_states(self) -> None:
        """Join states the cloud sent (it was ahead of this agent) and number on after the cloud."""
        try:
            cloud_seq, data = self._cloud_states.get_nowait()
        except queue.Empty:
            return
        try:
            received = CrdtMap.from_bytes(data)
        except ValueError as exc:
            log.warning("ignored a state from the cloud that does not decode: %s", exc)
            return
        self.state.merge(received)
        _, changed = self.state.take_delta()
        self.store.begin()
        try:
            self.store.put_entries(changed)
            seq = max(self.store.get_meta("seq"), cloud_seq) + 1
            # One group (cloud_seq, seq] with the whole joined state carries this agent's own
            # updates that the cloud may lack, whatever numbers they had before.
            self.store.replace_deltas(DeltaGroup(cloud_seq, seq, self.state.state.to_bytes()))
            self.store.set_meta("seq", seq)
        except BaseException:
            self.store.rollback()
            raise
        self.store.commit()
        log.info("joined the cloud's state at seq %d; continuing at seq %d", cloud_seq, seq)
        if self.uplink is not None:
            self.uplink.resync()

    def stats(self) -> dict:
        messages, readings, size = self.store.totals()
        uplink = self.uplink.counters if self.uplink is not None else {}
        return {
            "time": time.time(),
            "site": self.site,
            "subscribed": self.subscribed.is_set(),
            "uplink_connected": bool(self.uplink and self.uplink.connected),
            "buffer_messages": messages,
            "buffer_readings": readings,
            "buffer_bytes": size,
            "seq": self.store.get_meta("seq"),
            "cloud_seq": self.store.get_meta("cloud_seq"),
            **self.counters,
            **uplink,
            "dead_letters_by_reason": dict(self.dead_letter_reasons),
        }

    def _write_stats(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_stats < 0.5:
            return
        self._last_stats = now
        path = self.config.data_path / "edge_stats.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.stats()))
        os.replace(temporary, path)
