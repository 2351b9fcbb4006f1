"""JSON payloads to readings.

Accepted shapes, alone or as elements of a top-level array:

* one reading: ``{"device_id": "d1", "metric": "temp", "ts": 1714564800, "value": 21.5}``;
* several metrics of one device: ``{"device_id": "d1", "ts": ..., "temp": 21.5, "rh": 40}``, or
  the metrics under one key: ``{"device_id": "d1", "ts": ..., "metrics": {"temp": 21.5}}``;
* a bare number, when the topic pattern names the device and the metric.

Device id, site and metric come from the payload or, where absent there, from topic segments
named by ``topic_pattern`` (``sensors/{site}/{device_id}/{metric}``). Field names are configured
and may be dotted paths into nested objects (``device.id``). ``root_path`` selects the readings
inside an envelope (``data.readings``); ``flatten_separator`` turns nested metric objects into
metric names (``{"env": {"rh": 40}}`` becomes metric ``env.rh`` with separator ``.``). A reading
whose time is the receive time, because the payload had none and the configuration allows it,
carries the mark ``receive_time``.

Each failure becomes a dead letter with a stable reason code. One bad element of an array, or one
bad metric of a multi-metric object, becomes its own dead letter; the good ones still become
readings. ``NaN`` and ``Infinity`` are rejected as ``non_finite_value`` even though Python's
``json`` module would accept them.
"""

from __future__ import annotations

import json
import math
from typing import NamedTuple

from sparkiot.codecs.common import Reject as _Reject
from sparkiot.codecs.common import TopicPattern
from sparkiot.codecs.timestamps import TimestampError, to_us
from sparkiot.config import CodecConfig
from sparkiot.readings import MARK_RECEIVE_TIME, DeadLetter, Reading, Reason, derive_msg_id


class Decoded(NamedTuple):
    """The readings and dead letters of one payload; either list may be empty."""

    readings: list[Reading]
    dead_letters: list[DeadLetter]


class _NonFinite:
    """Marker for the JSON constants NaN, Infinity and -Infinity."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


class JsonCodec:
    """Decode JSON payloads into readings according to a :class:`CodecConfig`."""

    def __init__(self, config: CodecConfig, *, dead_letter_raw_bytes: int = 4096) -> None:
        self.config = config
        self.dead_letter_raw_bytes = dead_letter_raw_bytes
        self._topic = TopicPattern(config.topic_pattern)
        self._min_us = int(config.min_timestamp.timestamp()) * 1_000_000
        self._max_future_us = int(config.max_future * 1_000_000)
        # A dotted field name such as "device.id" reserves its whole top-level object.
        self._reserved = {
            name.split(".")[0]
            for name in (
                config.device_id_field, config.metric_field, config.value_field, config.ts_field,
                config.unit_field, config.site_field, config.id_field, config.metrics_field,
            )
        }
        self._root = config.root_path.split(".") if config.root_path else None

    def decode(self, payload: bytes, topic: str, received_us: int) -> Decoded:
        """Decode one payload received on ``topic`` at ``received_us`` (UTC microseconds)."""
        try:
            document = self._select_root(self._parse(payload))
            topic_fields = self._topic.fields(topic)
        except _Reject as reject:
            return Decoded([], [self._dead_letter(payload, topic, reject, received_us)])

        readings: list[Reading] = []
        dead_letters: list[DeadLetter] = []
        elements = document if isinstance(document, list) else [document]
        if not elements:
            reject = _Reject(Reason.UNSUPPORTED_SHAPE, "the payload is an empty JSON array; send at least one reading")
            return Decoded([], [self._dead_letter(payload, topic, reject, received_us)])
        for index, element in enumerate(elements):
            where = f"element {index}: " if isinstance(document, list) else ""
            self._decode_element(element, topic, topic_fields, received_us, where, readings, dead_letters)
        return Decoded(readings, dead_letters)

    def _parse(self, payload: bytes) -> object:
        if not payload:
            raise _Reject(Reason.EMPTY_PAYLOAD, "the payload is empty; send a JSON reading")
        if len(payload) > self.config.max_payload_bytes:
            raise _Reject(
                Reason.PAYLOAD_TOO_LARGE,
                f"payload of {len(payload)} bytes exceeds codec.max_payload_bytes={self.config.max_payload_bytes}; "
                "split it or raise the limit",
            )
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Reject(Reason.INVALID_UTF8, f"the payload is not UTF-8 text (byte {exc.start}); send UTF-8 JSON") from None
        try:
            return json.loads(text, parse_constant=_NonFinite, parse_int=_parse_int)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise _Reject(Reason.INVALID_JSON, f"invalid JSON: {exc}") from None

    def _select_root(self, document: object) -> object:
        if self._root is None:
            return document
        for part in self._root:
            if not isinstance(document, dict) or part not in document:
                raise _Reject(Reason.MISSING_FIELD, f"codec.root_path {self.config.root_path!r} not found in the payload")
            document = document[part]
        return document

    def _decode_element(
        self,
        element: object,
        topic: str,
        topic_fields: dict[str, str],
        received_us: int,
        where: str,
        readings: list[Reading],
        dead_letters: list[DeadLetter],
    ) -> None:
        config = self.config
        try:
            if isinstance(element, dict):
                device_id = self._identifier(element, config.device_id_field, topic_fields.get("device_id"), "device_id")
                site = _optional_text(_field(element, config.site_field), topic_fields.get("site"), "site")
                ts_us, ts_assumed = self._timestamp(_field(element, config.ts_field), received_us)
                payload_id = _field(element, config.id_field)
                if isinstance(payload_id, str) and payload_id:
                    payload_id = _text(payload_id, "id")
                unit = _optional_text(_field(element, config.unit_field), None, "unit")
                metrics = self._metrics(element, topic_fields)
            elif self._is_scalar_value(element) and "device_id" in topic_fields and "metric" in topic_fields:
                device_id = topic_fields["device_id"]
                site = topic_fields.get("site")
                ts_us, ts_assumed = self._timestamp(None, received_us)
                payload_id = None
                unit = None
                metrics = [(topic_fields["metric"], element)]
            else:
                raise _Reject(
                    Reason.UNSUPPORTED_SHAPE,
                    f"expected a JSON object (or a bare number with a topic pattern naming device_id and metric), "
                    f"got {type(element).__name__}",
                )
        except _Reject as reject:
            reject.detail = where + reject.detail
            dead_letters.append(self._dead_letter(_element_bytes(element), topic, reject, received_us))
            return

        single = len(metrics) == 1 and isinstance(element, dict) and _field(element, config.value_field, _ABSENT) is not _ABSENT
        marks = (MARK_RECEIVE_TIME,) if ts_assumed else ()
        for metric, raw_value in metrics:
            try:
                metric = _text(metric, "metric")
                value = self._number(raw_value, metric)
            except _Reject as reject:
                reject.detail = where + reject.detail
                raw = _element_bytes({metric: raw_value} if not single else element)
                dead_letters.append(self._dead_letter(raw, topic, reject, received_us))
                continue
            if not isinstance(payload_id, (str, int)) or isinstance(payload_id, bool) or payload_id == "":
                msg_id = derive_msg_id(device_id, metric, ts_us, value)
            else:
                # Devices number their messages independently, so the key includes the device.
                msg_id = f"{device_id}:{payload_id}" if single else f"{device_id}:{payload_id}:{metric}"
            readings.append(Reading(device_id, metric, ts_us, value, unit, site, msg_id, received_us, topic, marks))

    def _identifier(self, element: dict, field: str, fallback: str | None, name: str) -> str:
        value = _field(element, field)
        if value is None:
            value = fallback
        if value is None:
            raise _Reject(
                Reason.MISSING_FIELD,
                f"missing {name}: put it in field {field!r} or name it in codec.topic_pattern",
            )
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise _Reject(Reason.INVALID_FIELD, f"{name} {_shorten(value)} must be a string or an integer")
        return _text(str(value), name)

    def _metrics(self, element: dict, topic_fields: dict[str, str]) -> list[tuple[str, object]]:
        config = self.config
        value = _field(element, config.value_field, _ABSENT)
        if value is not _ABSENT:
            metric = self._identifier(element, config.metric_field, topic_fields.get("metric"), "metric")
            return [(metric, value)]
        nested = _field(element, config.metrics_field)
        if isinstance(nested, dict):
            if not nested:
                raise _Reject(Reason.MISSING_FIELD, f"field {config.metrics_field!r} is an empty object; add metrics")
            return self._flatten(nested.items())
        metrics = self._flatten((key, value) for key, value in element.items() if key not in self._reserved)
        if not metrics:
            raise _Reject(
                Reason.MISSING_FIELD,
                f"no value: add field {config.value_field!r}, an object {config.metrics_field!r}, or metric fields",
            )
        return metrics

    def _flatten(self, items) -> list[tuple[str, object]]:
        """Return (metric, value) pairs; nested objects are joined into metric names when configured."""
        separator = self.config.flatten_separator
        flat = []
        for key, value in items:
            if separator is not None and isinstance(value, dict):
                flat.extend((f"{key}{separator}{inner}", leaf) for inner, leaf in self._flatten(value.items()))
            else:
                flat.append((key, value))
        return flat

    @staticmethod
    def _is_scalar_value(element: object) -> bool:
        return isinstance(element, (int, float, str, _NonFinite)) or element is None

    def _number(self, raw: object, metric: str) -> float:
        if isinstance(raw, bool):
            return 1.0 if raw else 0.0
        if isinstance(raw, int):
            try:
                return float(raw)
            except OverflowError:
                raise _Reject(Reason.NON_FINITE_VALUE, f"metric {metric!r}: value {raw} is too large for a double") from None
        if isinstance(raw, float):
            if math.isinf(raw):
                raise _Reject(Reason.NON_FINITE_VALUE, f"metric {metric!r}: value {raw} is too large for a double")
            return raw
        if isinstance(raw, _NonFinite):
            raise _Reject(Reason.NON_FINITE_VALUE, f"metric {metric!r}: value {raw.text} is not a finite number")
        if isinstance(raw, str) and self.config.numbers_as_strings:
            try:
                value = float(raw)
            except ValueError:
                raise _Reject(Reason.NON_NUMERIC_VALUE, f"metric {metric!r}: value {raw!r} is not a number") from None
            if not math.isfinite(value):
                raise _Reject(Reason.NON_FINITE_VALUE, f"metric {metric!r}: value {raw!r} is not a finite number")
            return value
        if isinstance(raw, str):
            raise _Reject(
                Reason.NON_NUMERIC_VALUE,
                f"metric {metric!r}: value {raw!r} is a string; send a JSON number or set codec.numbers_as_strings",
            )
        raise _Reject(Reason.NON_NUMERIC_VALUE, f"metric {metric!r}: value {_shorten(raw)} is not a number")

    def _timestamp(self, raw: object, received_us: int) -> tuple[int, bool]:
        """Return the event time and whether it is the receive time standing in for a missing one."""
        if raw is None:
            if self.config.missing_timestamp == "receive_time":
                return received_us, True
            raise _Reject(
                Reason.MISSING_TIMESTAMP,
                f"missing timestamp field {self.config.ts_field!r}; send one or set codec.missing_timestamp: receive_time",
            )
        try:
            ts_us = to_us(raw, self.config.ts_unit, self.config.timezone)
        except (TimestampError, OverflowError) as exc:
            raise _Reject(Reason.INVALID_TIMESTAMP, str(exc)) from None
        if ts_us < self._min_us:
            raise _Reject(
                Reason.TIMESTAMP_OUT_OF_RANGE,
                f"timestamp {raw!r} is before codec.min_timestamp {self.config.min_timestamp.isoformat()}; "
                "check the device clock or the epoch unit (codec.ts_unit)",
            )
        if ts_us > received_us + self._max_future_us:
            raise _Reject(
                Reason.TIMESTAMP_OUT_OF_RANGE,
                f"timestamp {raw!r} is more than codec.max_future={self.config.max_future:g}s ahead of the receive time; "
                "check the device clock or the epoch unit (codec.ts_unit)",
            )
        return ts_us, False

    def _dead_letter(self, raw: bytes, topic: str, reject: _Reject, received_us: int) -> DeadLetter:
        return DeadLetter(raw[: self.dead_letter_raw_bytes], len(raw), topic, reject.reason.value, reject.detail, received_us)


_ABSENT = object()


def _field(element: dict, name: str, default: object = None) -> object:
    """Return ``element[name]``, where a dotted name such as ``device.id`` walks nested objects."""
    if "." not in name:
        return element.get(name, default)
    value: object = element
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return default
        value = value[part]
    return value


def _parse_int(text: str) -> int | float:
    # Python refuses int() of more than 4300 digits; such a number cannot be a double anyway.
    return int(text) if len(text) <= 4000 else float("inf")


MAX_TEXT_LENGTH = 256


def _text(value: str, name: str) -> str:
    """Return ``value`` when it can name a device, metric, site or unit; reject it otherwise."""
    if not value:
        raise _Reject(Reason.INVALID_FIELD, f"{name} is empty; send a non-empty string")
    if len(value) > MAX_TEXT_LENGTH:
        raise _Reject(Reason.INVALID_FIELD, f"{name} {value[:40]!r}... is longer than {MAX_TEXT_LENGTH} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # JSON can escape half of a UTF-16 surrogate pair (\ud800), which no UTF-8 text can hold.
        raise _Reject(Reason.INVALID_FIELD, f"{name} {value[:40]!r} contains an unpaired surrogate escape") from None
    return value


def _optional_text(value: object, fallback: str | None, name: str) -> str | None:
    if value is None:
        return fallback
    if isinstance(value, _NonFinite):
        return value.text
    if isinstance(value, (dict, list)):
        raise _Reject(Reason.INVALID_FIELD, f"{name}: expected text, got {_shorten(value)}")
    return _text(str(value), name)


def _element_bytes(element: object) -> bytes:
    return json.dumps(element, default=lambda marker: marker.text, allow_nan=True).encode()


def _shorten(value: object, limit: int = 60) -> str:
    text = json.dumps(value, default=lambda marker: marker.text)
    return text if len(text) <= limit else text[: limit - 3] + "..."
