"""Readings forwarded by an edge agent: already decoded, with their ``msg_id`` and site kept.

An edge agent decodes device payloads itself and forwards the readings that pass its rules as one
JSON document per message::

    {"v": 1, "site": "plant-7", "readings": [
        ["press-1", "pressure", 1717243200000000, 1.013, "bar", "press-1:42"], ...]}

Each row is ``[device_id, metric, ts_us, value, unit, msg_id]`` (``unit`` may be null). The
``msg_id`` is kept as the edge assigned it, so a message that the edge sends again after a lost
acknowledgement deduplicates downstream. A malformed document becomes one dead letter; a
malformed row becomes a dead letter of its own while the other rows pass.
"""

from __future__ import annotations

import json
import math

from sparkiot.codecs.common import Reject
from sparkiot.codecs.json import MAX_TEXT_LENGTH, Decoded
from sparkiot.config import CodecConfig
from sparkiot.readings import DeadLetter, Reading, Reason

FORMAT_VERSION = 1


def encode_forwarded(site: str, readings: list[Reading]) -> bytes:
    """Return the forwarded form of ``readings`` of ``site``."""
    rows = [[r.device_id, r.metric, r.ts_us, r.value, r.unit, r.msg_id] for r in readings]
    return json.dumps({"v": FORMAT_VERSION, "site": site, "readings": rows}, separators=(",", ":")).encode()


class ForwardedCodec:
    """Decode messages written by :func:`encode_forwarded`."""

    def __init__(self, config: CodecConfig, *, dead_letter_raw_bytes: int = 4096) -> None:
        self.config = config
        self.dead_letter_raw_bytes = dead_letter_raw_bytes
        self._min_us = int(config.min_timestamp.timestamp()) * 1_000_000
        self._max_future_us = int(config.max_future * 1_000_000)

    def decode(self, payload: bytes, topic: str, received_us: int) -> Decoded:
        """Decode one forwarded message received on ``topic`` at ``received_us``."""
        try:
            site, rows = self._document(payload)
        except Reject as reject:
            return Decoded([], [self._dead_letter(payload, topic, reject, received_us)])
        readings: list[Reading] = []
        dead_letters: list[DeadLetter] = []
        for index, row in enumerate(rows):
            try:
                readings.append(self._reading(row, site, topic, received_us))
            except Reject as reject:
                raw = json.dumps(row, default=str).encode()
                reject.detail = f"row {index}: {reject.detail}"
                dead_letters.append(self._dead_letter(raw, topic, reject, received_us))
        return Decoded(readings, dead_letters)

    def _document(self, payload: bytes) -> tuple[str, list]:
        if not payload:
            raise Reject(Reason.EMPTY_PAYLOAD, "the payload is empty; an edge agent sends a JSON document of readings")
        if len(payload) > self.config.max_payload_bytes:
            raise Reject(
                Reason.PAYLOAD_TOO_LARGE,
                f"payload of {len(payload)} bytes exceeds codec.max_payload_bytes={self.config.max_payload_bytes}; "
                "lower upstream.readings_per_message on the edge or raise the limit",
            )
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Reject(Reason.INVALID_UTF8, f"the payload is not UTF-8 text (byte {exc.start})") from None
        try:
            document = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise Reject(Reason.INVALID_JSON, f"invalid JSON: {exc}") from None
        if not isinstance(document, dict) or not isinstance(document.get("readings"), list):
            raise Reject(Reason.UNSUPPORTED_SHAPE, 'expected {"v": 1, "site": ..., "readings": [[...], ...]} from an edge agent')
        if document.get("v") != FORMAT_VERSION:
            raise Reject(
                Reason.UNSUPPORTED_SHAPE,
                f"forwarded format version {document.get('v')!r} is not {FORMAT_VERSION}; run the same sparkiot version at edge and cloud",
            )
        site = document.get("site")
        if not isinstance(site, str) or not site or len(site) > MAX_TEXT_LENGTH:
            raise Reject(Reason.INVALID_FIELD, f"site {site!r} must be a non-empty string")
        return site, document["readings"]

    def _reading(self, row: object, site: str, topic: str, received_us: int) -> Reading:
        if not isinstance(row, list) or len(row) != 6:
            raise Reject(Reason.UNSUPPORTED_SHAPE, "expected [device_id, metric, ts_us, value, unit, msg_id]")
        device_id, metric, ts_us, value, unit, msg_id = row
        for name, text in (("device_id", device_id), ("metric", metric), ("msg_id", msg_id)):
            _check_text(name, text)
        if unit is not None:
            _check_text("unit", unit)
        if isinstance(ts_us, bool) or not isinstance(ts_us, int):
            raise Reject(Reason.INVALID_TIMESTAMP, f"ts_us {ts_us!r} must be an integer of microseconds since the epoch")
        if ts_us < self._min_us or ts_us > received_us + self._max_future_us:
            raise Reject(
                Reason.TIMESTAMP_OUT_OF_RANGE,
                f"ts_us {ts_us} lies before codec.min_timestamp or more than codec.max_future ahead; check the edge gateway's clock",
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Reject(Reason.NON_NUMERIC_VALUE, f"value {value!r} of {device_id}/{metric} is not a number")
        try:
            value = float(value)
        except OverflowError:
            raise Reject(Reason.NON_FINITE_VALUE, f"value of {device_id}/{metric} is too large for a double") from None
        if not math.isfinite(value):
            raise Reject(Reason.NON_FINITE_VALUE, f"value {value!r} of {device_id}/{metric} is not a finite number")
        return Reading(device_id, metric, ts_us, value, unit, site, msg_id, received_us, topic)

    def _dead_letter(self, raw: bytes, topic: str, reject: Reject, received_us: int) -> DeadLetter:
        return DeadLetter(raw[: self.dead_letter_raw_bytes], len(raw), topic, reject.reason.value, reject.detail, received_us)


def _check_text(name: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise Reject(Reason.INVALID_FIELD, f"{name} {value!r} must be a non-empty string")
    if len(value) > MAX_TEXT_LENGTH:
        raise Reject(Reason.INVALID_FIELD, f"{name} {value[:40]!r}... is longer than {MAX_TEXT_LENGTH} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Reject(Reason.INVALID_FIELD, f"{name} {value[:40]!r} contains an unpaired surrogate escape") from None
