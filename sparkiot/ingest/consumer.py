"""The MQTT ingest: decode, classify late readings, score anomalies, land durably, then acknowledge.

Guarantee: a QoS 1/2 message is acknowledged (manual ack) only after everything it became
(readings, late readings, dead letters, alerts) is fsynced to the landing logs, so a crash at any
moment loses nothing; the broker redelivers what was not acknowledged, and Spark removes the
resulting duplicates by ``msg_id``. Messages are processed and acknowledged in arrival order.

Group commit: the loop takes every message waiting (up to ``landing.batch_max_messages`` and ``landing.batch_max_bytes``) and
lands them with one fsync per log, so throughput grows with load while a lone message is landed
and acknowledged at once.

Late readings: the event-time watermark is the largest event time landed so far minus
``watermark``. A reading at or before it goes to the late log, never to Spark's stateful
operators. Spark's own watermark trails this one (it advances only between micro-batches), so
Spark never drops a reading that was landed as on time.

Alerts are scored here, on each reading in arrival order, and published to the alert topic right
after the durable write; no Spark micro-batch lies on the alert path. After a restart the
detector is warmed up again from the tail of the landing log.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt
import pyarrow as pa

from sparkiot.anomaly import RollingZScore
from sparkiot.codecs import Decoded, make_codec
from sparkiot.config import PipelineConfig
from sparkiot.ingest.landing import LandingLog, LogReader
from sparkiot.ingest.mqtt_client import connect_in_background, new_client
from sparkiot.readings import (
    MARK_RETAINED,
    SCHEMAS,
    Alert,
    DeadLetter,
    Reading,
    Reason,
    alerts_to_batch,
    events_to_batch,
    dead_letters_to_batch,
    late_to_batch,
    readings_to_batch,
)

log = logging.getLogger(__name__)

WARMUP_TAIL_READINGS = 200_000


def landing_dir(config: PipelineConfig, log_name: str) -> Path:
    """Return the directory of one landing log (readings, late, dead_letters or alerts)."""
    return config.data_path / "landing" / log_name


class IngestCounters:
    """Counters of the ingest, written as JSON to ``DATA_DIR/ingest_stats.json`` for other processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.values: Counter[str] = Counter()
        self.dead_letter_reasons: Counter[str] = Counter()
        self.connected = False
        self.subscribed = False
        self._last_write = 0.0

    def write(self, *, force: bool = False) -> None:
        """Write the counters at most every 0.5 s, or now with ``force``; only the ingest's main loop calls it."""
        now = time.time()
        if not force and now - self._last_write < 0.5:
            return
        self._last_write = now
        document = {
            "time": now,
            "connected": self.connected,
            "subscribed": self.subscribed,
            **self.values,
            "dead_letters_by_reason": dict(self.dead_letter_reasons),
        }
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(document))
        os.replace(temporary, self.path)


def read_counters(data_dir: Path) -> dict:
    """Return the ingest counters last written under ``data_dir`` (empty before the first write)."""
    try:
        return json.loads((data_dir / "ingest_stats.json").read_text())
    except (OSError, ValueError):
        return {}


class Ingest:
    """Consume MQTT messages into the landing logs until :meth:`stop` is called."""

    def __init__(self, config: PipelineConfig, broker_url: str) -> None:
        self.config = config
        self.broker_url = broker_url
        self.protocol = config.source.protocol
        self.codec = make_codec(config.codec, dead_letter_raw_bytes=config.landing.dead_letter_raw_bytes)
        segment_bytes = config.landing.segment_bytes
        self.logs = {
            name: LandingLog(landing_dir(config, name), schema, segment_bytes=segment_bytes)
            for name, schema in SCHEMAS.items()
        }
        self.counters = IngestCounters(config.data_path / "ingest_stats.json")
        self.detector = RollingZScore(
            window=config.anomaly.window, warmup=config.anomaly.warmup, threshold=config.anomaly.threshold
        )
        self._delay_us = int(config.watermark * 1_000_000)
        self._messages: queue.SimpleQueue[mqtt.MQTTMessage] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._client: mqtt.Client | None = None
        self._last_retention = 0.0
        self._warm_up_detector()

    def _warm_up_detector(self) -> None:
        if not self.config.anomaly.enabled:
            return
        reader = LogReader(landing_dir(self.config, "readings"))
        end = reader.end_offset()
        start = max(end - WARMUP_TAIL_READINGS, 0)
        learned = 0
        for batch in reader.read(start, end):
            for device_id, metric, value in zip(
                batch.column("device_id").to_pylist(), batch.column("metric").to_pylist(), batch.column("value").to_pylist()
            ):
                self.detector.learn((device_id, metric), value)
                learned += 1
        if learned:
            log.info("anomaly detector warmed up from %d landed readings of %d series", learned, len(self.detector))

    # -- MQTT callbacks (paho network thread) ------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("MQTT broker %s refused the connection: %s", self.broker_url, reason_code)
            return
        self.counters.connected = True
        log.info(
            "connected to %s as %r (session present: %s); subscribing to %s",
            self.broker_url, self.config.source.client_id, flags.session_present, self.config.source.topics,
        )
        client.subscribe([(topic, self.config.source.qos) for topic in self.config.source.topics])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        failures = [code for code in reason_codes if code.is_failure]
        if failures:
            log.error("MQTT broker %s rejected the subscription to %s: %s", self.broker_url, self.config.source.topics, failures)
            return
        # The main loop writes the counters file within a second, which signals the pipeline to start publishing.
        self.counters.subscribed = True

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.counters.connected = False
        self.counters.subscribed = False
        if not self._stop.is_set():
            self.counters.values["disconnects"] += 1
            log.warning("disconnected from %s (%s); reconnecting with backoff", self.broker_url, reason_code)

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        self._messages.put(message)

    # -- main loop --------------------------------------------------------------------------

    def run(self) -> None:
        """Connect, then land messages until :meth:`stop`; reconnects with backoff on its own."""
        source = self.config.source
        client = new_client(source.client_id, protocol=self.protocol, persistent=True)
        client.manual_ack_set(True)
        client.reconnect_delay_set(min_delay=max(1, int(source.reconnect_min)), max_delay=int(source.reconnect_max))
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._client = client

        connect_in_background(client, self.broker_url, protocol=self.protocol, keepalive=source.keepalive,
                              session_expiry=source.session_expiry, clean_start=False)
        client.loop_start()
        log.info("ingest started: broker %s, topics %s, data directory %s", self.broker_url, source.topics, self.config.data_dir)
        try:
            while not self._stop.is_set():
                self._process_waiting()
                self.counters.write()
                self._enforce_retention()
        except OSError as exc:
            log.error(
                "cannot write the landing logs in %s: %s; stopping without acknowledging the messages in hand, "
                "so the broker redelivers them when the ingest runs again (free disk space or fix permissions)",
                self.config.data_dir, exc,
            )
            raise
        finally:
            client.disconnect()
            client.loop_stop()
            for landing in self.logs.values():
                landing.close()
            self.counters.write(force=True)
            log.info("ingest stopped after %d messages", self.counters.values["messages"])

    def stop(self) -> None:
        self._stop.set()

    def _process_waiting(self) -> None:
        try:
            first = self._messages.get(timeout=0.2)
        except queue.Empty:
            return
        messages = [first]
        size = len(first.payload)
        landing = self.config.landing
        while len(messages) < landing.batch_max_messages and size < landing.batch_max_bytes:
            try:
                message = self._messages.get_nowait()
            except queue.Empty:
                break
            messages.append(message)
            size += len(message.payload)
        self.land(messages)

    def land(self, messages: list[mqtt.MQTTMessage], *, check_text: bool = False) -> None:
        """Decode, classify and durably append ``messages``, then acknowledge them in order.

        With ``check_text``, each reading's text fields are checked before anything else sees it;
        that slower pass runs only when a batch failed to convert to Arrow.
        """
        received_us = time.time_ns() // 1000
        on_time: list[Reading] = []
        late: list[Reading] = []
        late_marks: list[int] = []
        dead: list[DeadLetter] = []
        alerts: list[Alert] = []
        max_event_us = self.logs["readings"].max_event_us

        for message in messages:
            if message.retain and self.config.source.retained == "dead_letter":
                dead.append(self._retained_dead_letter(message, received_us))
                continue
            decoded = self._decode(message, received_us)
            dead.extend(decoded.dead_letters)
            for reading in decoded.readings:
                if check_text and not self._storable(reading, dead):
                    continue
                if message.retain:
                    reading = reading._replace(marks=(*reading.marks, MARK_RETAINED))
                watermark_us = max_event_us - self._delay_us
                if max_event_us >= 0 and reading.ts_us <= watermark_us:
                    late.append(reading)
                    late_marks.append(watermark_us)
                    continue
                on_time.append(reading)
                if reading.ts_us > max_event_us:
                    max_event_us = reading.ts_us
                if self.config.anomaly.enabled:
                    score = self.detector.score_and_learn((reading.device_id, reading.metric), reading.value)
                    if score is not None:
                        alerts.append(
                            Alert(f"{reading.msg_id}:zscore", reading.device_id, reading.metric, reading.ts_us,
                                  reading.value, score.score, score.mean, score.stddev, "zscore", reading.site,
                                  received_us)
                        )

        try:
            batches = (
                readings_to_batch(on_time), late_to_batch(late, late_marks),
                dead_letters_to_batch(dead), alerts_to_batch(alerts),
            )
        except (UnicodeEncodeError, pa.ArrowException):
            if check_text:
                raise
            # Nothing was written yet. The detector has learned these readings once already,
            # which the second pass repeats; a rare case, left as is.
            self.land(messages, check_text=True)
            return
        self.logs["readings"].append(batches[0], max_event_us=max_event_us)
        self.logs["late"].append(batches[1])
        self.logs["dead_letters"].append(batches[2])
        self.logs["alerts"].append(batches[3])
        events = self.codec.take_events()
        if events:
            self.logs["events"].append(events_to_batch(events))

        for message in messages:
            if message.qos > 0:
                self._client.ack(message.mid, message.qos)
        self._publish_alerts(alerts)
        # Codec requests such as Sparkplug rebirths; the Sparkplug specification sends NCMD at QoS 0.
        for topic, payload in self.codec.take_commands():
            self._client.publish(topic, payload, qos=0, retain=False)
        self._count(messages, on_time, late, dead, alerts)

    def _decode(self, message: mqtt.MQTTMessage, received_us: int) -> Decoded:
        """Decode one message; a codec bug becomes a dead letter instead of stopping the ingest."""
        try:
            return self.codec.decode(message.payload, message.topic, received_us)
        except Exception as exc:  # noqa: BLE001 - one poison message must not stop every other device
            self.counters.values["decoder_errors"] += 1
            if self.counters.values["decoder_errors"] <= 10:
                log.exception("decoder failed on a message of %d bytes on %s; kept as a dead letter", len(message.payload), message.topic)
            limit = self.config.landing.dead_letter_raw_bytes
            letter = DeadLetter(message.payload[:limit], len(message.payload), message.topic, Reason.DECODER_ERROR.value,
                                f"the decoder failed: {type(exc).__name__}: {exc}"[:500], received_us)
            return Decoded([], [letter])

    @staticmethod
    def _storable(reading: Reading, dead: list[DeadLetter]) -> bool:
        """Return True when the reading's text can be stored; otherwise add its dead letter."""
        try:
            readings_to_batch([reading])
        except (UnicodeEncodeError, pa.ArrowException) as exc:
            raw = repr(reading).encode("utf-8", "backslashreplace")
            dead.append(DeadLetter(raw[:4096], len(raw), reading.source, Reason.INVALID_FIELD.value,
                                   f"a text field cannot be stored: {exc}"[:500], reading.ingest_us))
            return False
        return True

    def _retained_dead_letter(self, message: mqtt.MQTTMessage, received_us: int) -> DeadLetter:
        limit = self.config.landing.dead_letter_raw_bytes
        return DeadLetter(
            message.payload[:limit], len(message.payload), message.topic, Reason.RETAINED_MESSAGE.value,
            "retained message replayed by the broker at subscribe time, not a fresh reading; "
            "set source.retained: accept to store such readings (they are marked 'retained')",
            received_us,
        )

    def _publish_alerts(self, alerts: list[Alert]) -> None:
        for alert in alerts:
            document = {
                "alert_id": alert.alert_id,
                "device_id": alert.device_id,
                "metric": alert.metric,
                "ts_us": alert.ts_us,
                "value": alert.value,
                "score": alert.score,
                "mean": alert.mean,
                "stddev": alert.stddev,
                "rule": alert.rule,
                "site": alert.site,
            }
            self._client.publish(self.config.anomaly.alert_topic, json.dumps(document), qos=1)

    def _count(self, messages, on_time, late, dead, alerts) -> None:
        values = self.counters.values
        values["messages"] += len(messages)
        values["bytes"] += sum(len(message.payload) for message in messages)
        values["readings"] += len(on_time)
        values["late"] += len(late)
        values["dead_letters"] += len(dead)
        values["alerts"] += len(alerts)
        values.update(self.codec.counters())
        values["batches"] += 1
        for letter in dead:
            self.counters.dead_letter_reasons[letter.reason] += 1
        if dead:
            first = dead[0]
            log.debug("dead letter on %s: %s (%s)", first.source, first.reason, first.detail)

    def _enforce_retention(self) -> None:
        now = time.monotonic()
        if now - self._last_retention < 10:
            return
        self._last_retention = now
        for name, landing in self.logs.items():
            dropped = landing.enforce_retention(
                retention_bytes=self.config.landing.retention_bytes, retention_age=self.config.landing.retention_age
            )
            self.counters.values[f"retention_dropped_{name}"] += dropped
