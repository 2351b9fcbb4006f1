"""InfluxDB line protocol payloads to readings.

Supported input is line protocol as the InfluxDB v2 reference documents it, one point a line::

    measurement[,tag_key=tag_value...] field_key=field_value[,field_key=field_value...] [timestamp]

* Lines are separated by ``\\n``, and one trailing ``\\r`` is dropped, so CRLF text works. A
  newline inside a quoted string splits the line, since the reference allows none in values.
  Blank lines (empty or only spaces and tabs) and comment lines (``#`` as the first character)
  are skipped. A payload may contain any number of lines. Each line is decoded on its own, so a
  bad line becomes one dead letter and the good lines of the same payload still become readings.
* The first unescaped space ends the measurement and tag set, the second one ends the field
  set. The protocol is whitespace sensitive: a leading space, two spaces in a row or a
  trailing space make the line invalid.
* Field values: float (``1``, ``1.5``, ``-0.5``, ``.5``, ``1e3``, ``-1.2E+78``), signed 64-bit
  integer with an ``i`` suffix (``-12i``), unsigned 64-bit integer with a ``u`` suffix
  (``12u``), boolean (``t``, ``T``, ``true``, ``True``, ``TRUE``, ``f``, ``F``, ``false``,
  ``False``, ``FALSE``) and double-quoted string. Digits are ASCII only; a ``+`` sign,
  ``_`` separators and integers outside their 64-bit range are invalid.
* Timestamp: an optional signed integer (at most +-9223372036854775806) in the configured
  precision (``s``, ``ms``, ``us`` or ``ns``), converted with integer arithmetic, so a
  nanosecond timestamp keeps every digit down to the microsecond.

Escaping (a backslash before any character not listed for the element is a literal backslash,
and the string is read left to right, so ``\\\\,`` in a tag value is a backslash then a comma):

* measurement: ``\\,`` and ``\\ `` (space);
* tag keys, tag values and field keys: ``\\,``, ``\\=`` and ``\\ ``;
* string field values: ``\\"`` and ``\\\\``.

A name cannot end with a backslash, since that backslash would escape the separator after it.
Unescaped ``=`` in a tag value, an empty tag key or value, an empty field key or value, an
unterminated string and a repeated tag key or field key in one line make the line invalid
(``invalid_line_protocol``, with a detail naming the line number and the problem). A repeated
key is rejected rather than resolved, because keeping either value would drop the other
silently. The reserved ``_`` prefix of InfluxDB names is not enforced: it matters to InfluxDB's
storage, not here.

Mapping to readings: each numeric or boolean field of a line becomes one reading.

* ``value``: the field as a float64; booleans are 1.0 and 0.0; integers beyond 2**53 are
  rounded to the nearest double, as any float64 store would;
* ``device_id``: the tag named by ``device_id_tag`` (default ``host``), else the topic
  pattern's ``{device_id}`` segment, else the measurement name;
* ``metric``: ``metric_template`` filled with ``{measurement}`` and ``{field}``
  (default ``{measurement}.{field}``);
* ``site``: the tag named by ``site_tag`` (default ``site``), else the topic pattern's ``{site}``;
* ``ts_us``: the timestamp, or the receive time when the line has none and
  ``codec.missing_timestamp`` is ``receive_time`` (``missing_timestamp`` otherwise; such a
  reading carries the mark ``receive_time``, like the JSON codec's); a timestamp must lie
  between ``codec.min_timestamp`` and ``codec.max_future`` past the receive time
  (``timestamp_out_of_range`` otherwise), like the JSON codec;
* ``unit``: None; ``msg_id``: :func:`~sparkiot.readings.derive_msg_id`, since the protocol has
  no message id; ``source``: the topic.

A string field becomes a dead letter of its own with ``unsupported_value_type`` (the only
``strings`` setting is ``reject``); ``nan``, ``inf`` and floats too large for a double
(``1e999``) become ``non_finite_value`` dead letters, one per field. In both cases the other
fields of the line still become readings, and the dead letter keeps the whole line as raw
bytes. Invalid UTF-8 in a line becomes an ``invalid_utf8`` dead letter for that line. A payload
with no point at all (only blank or comment lines) becomes one ``empty_payload`` dead letter,
so that nothing is dropped without a trace.

Why a hand-written parser: the InfluxDB client packages on PyPI (``influxdb-client``,
``influxdb``) and the builders (``influx-line-protocol``, ``influx-line``) only serialize.
``pyilpp`` has had a single 0.1.0 release. ``line-protocol-parser`` (2.0.x, MIT, a C extension)
is maintained and parses a line about three times as fast as this module, but it follows the
archived InfluxDB 1.2 parser rather than the v2 reference (it accepts leading and repeated
spaces), keeps the first of two repeated fields without notice, and reports every problem,
``nan`` included, as one generic ``LineFormatError`` without saying where. The reason codes and
details above would need a second parse of each rejected line, and it is a native dependency.
Parsing is under half of the cost of decoding a line (the message id digests, metric names and
tuples are the rest), so that parser would save roughly a quarter to a third (measured on one
machine). This module splits lines with ``str.split`` on the common path and uses regular
expressions only for lines that contain a backslash or a double quote.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING


from sparkiot.codecs.common import Reject, TopicPattern
from sparkiot.codecs.timestamps import epoch_to_us
from sparkiot.config import InfluxSettings
from sparkiot.readings import MARK_RECEIVE_TIME, DeadLetter, Reading, Reason, derive_msg_id

# config.py imports InfluxSettings from here, and json.py imports config.py, so this module
# imports neither at load time: either may still be loading when this module is.
if TYPE_CHECKING:
    from sparkiot.codecs.json import Decoded
    from sparkiot.config import CodecConfig

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1
_TS_LIMIT = 9223372036854775806  # The v2 reference bounds timestamps to +- this value.
_TRUE = frozenset(("t", "T", "true", "True", "TRUE"))
_FALSE = frozenset(("f", "F", "false", "False", "FALSE"))
_NON_FINITE_WORDS = frozenset(("nan", "inf", "infinity"))
_FLOAT = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?").fullmatch

# Tokens of the slow path, each matched alone at a position. The escape alternative comes first,
# so a backslash is read left to right: as an escape when an escapable character follows it, as
# itself otherwise. Possessive repeats spare the engine any backtracking on long tokens.
_MEASUREMENT = re.compile(r"(?:\\[, ]|[^, ])++").match
_KEY = re.compile(r"(?:\\[,= ]|[^,= ])++").match
_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*+"', re.DOTALL).match
_BARE = re.compile(r"[^, ]++").match
_UNESCAPE_MEASUREMENT = re.compile(r"\\([, ])").sub
_UNESCAPE_KEY = re.compile(r"\\([,= ])").sub


class _LineError(Exception):
    """A line that is not valid line protocol. The message names the problem."""


class _Rejected:
    """One field that is valid line protocol but cannot become a reading."""

    __slots__ = ("reason", "what")

    def __init__(self, reason: Reason, what: str) -> None:
        self.reason = reason
        self.what = what


_STRING_FIELD = _Rejected(Reason.UNSUPPORTED_VALUE_TYPE, "is a string; only numeric and boolean fields become readings")


class InfluxCodec:
    """Decode InfluxDB line protocol payloads into readings."""

    def __init__(
        self,
        config: CodecConfig,
        settings: InfluxSettings | None = None,
        *,
        dead_letter_raw_bytes: int = 4096,
    ) -> None:
        self.config = config
        self.settings = settings or InfluxSettings()
        self.dead_letter_raw_bytes = dead_letter_raw_bytes
        self._topic = TopicPattern(config.topic_pattern)
        self._min_us = max(int(config.min_timestamp.timestamp()) * 1_000_000, _INT64_MIN)
        self._max_future_us = int(config.max_future * 1_000_000)
        self._metric = self.settings.metric_template.format

    def decode(self, payload: bytes, topic: str, received_us: int) -> Decoded:
        """Decode one payload received on ``topic`` at ``received_us`` (UTC microseconds)."""
        from sparkiot.codecs.json import Decoded

        if not payload:
            return self._payload_rejected(payload, topic, received_us, Reason.EMPTY_PAYLOAD, "the payload is empty; send line protocol")
        if len(payload) > self.config.max_payload_bytes:
            return self._payload_rejected(
                payload,
                topic,
                received_us,
                Reason.PAYLOAD_TOO_LARGE,
                f"payload of {len(payload)} bytes exceeds codec.max_payload_bytes={self.config.max_payload_bytes}; "
                "split it or raise the limit",
            )
        topic_fields = self._topic_fields(topic)
        if isinstance(topic_fields, str):
            return self._payload_rejected(payload, topic, received_us, Reason.TOPIC_MISMATCH, topic_fields)

        readings: list[Reading] = []
        dead_letters: list[DeadLetter] = []
        try:
            lines = payload.decode("utf-8").split("\n")
        except UnicodeDecodeError:
            lines = self._decode_lines(payload, topic, received_us, dead_letters)
        points = self._decode_points(lines, topic, topic_fields, received_us, readings, dead_letters)
        if not points and not dead_letters:
            return self._payload_rejected(
                payload, topic, received_us, Reason.EMPTY_PAYLOAD, "the payload contains only blank or comment lines; send at least one point"
            )
        return Decoded(readings, dead_letters)

    def _decode_lines(self, payload: bytes, topic: str, received_us: int, dead_letters: list[DeadLetter]) -> list[str]:
        """Decode the payload line by line. A line that is not UTF-8 becomes a dead letter and a blank line."""
        lines = []
        for number, raw in enumerate(payload.split(b"\n"), 1):
            try:
                lines.append(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                detail = f"line {number}: not UTF-8 text (byte {exc.start} of the line); send UTF-8 line protocol"
                dead_letters.append(self._dead_letter(raw, topic, Reason.INVALID_UTF8, detail, received_us))
                lines.append("")
        return lines

    def _decode_points(
        self,
        lines: list[str],
        topic: str,
        topic_fields: dict[str, str],
        received_us: int,
        readings: list[Reading],
        dead_letters: list[DeadLetter],
    ) -> int:
        """Append the readings and dead letters of ``lines`` and return how many points they contain."""
        settings = self.settings
        device_tag = settings.device_id_tag
        site_tag = settings.site_tag
        topic_device = topic_fields.get("device_id") or None
        topic_site = topic_fields.get("site")
        metric_name = self._metric
        lower = self._min_us
        upper = min(received_us + self._max_future_us, _INT64_MAX)
        receive_time = self.config.missing_timestamp == "receive_time"
        assumed = (MARK_RECEIVE_TIME,)
        append = readings.append
        points = 0
        for number, line in enumerate(lines, 1):
            if not line:
                continue
            if line[-1] == "\r":
                line = line[:-1]
                if not line:
                    continue
            first = line[0]
            if first == "#" or (first in " \t" and not line.strip(" \t")):
                continue
            points += 1
            try:
                parsed = None if "\\" in line or '"' in line else _parse_fast(line)
                measurement, tags, fields, ts_text = parsed or _parse_slow(line)
                ts_us = None if ts_text is None else self._timestamp(ts_text)
                values = [(key, _field_value(key, token)) for key, token in fields]
            except _LineError as error:
                self._line_rejected(line, number, topic, Reason.INVALID_LINE_PROTOCOL, str(error), received_us, dead_letters)
                continue
            if ts_us is None:
                if not receive_time:
                    detail = "the line has no timestamp; add one or set codec.missing_timestamp: receive_time"
                    self._line_rejected(line, number, topic, Reason.MISSING_TIMESTAMP, detail, received_us, dead_letters)
                    continue
                ts_us = received_us
                marks = assumed
            elif ts_us < lower or ts_us > upper:
                self._line_rejected(line, number, topic, Reason.TIMESTAMP_OUT_OF_RANGE, self._range_detail(ts_text, ts_us, lower), received_us, dead_letters)
                continue
            else:
                marks = ()

            device_id = tags.get(device_tag) or topic_device or measurement
            site = tags.get(site_tag) if site_tag is not None else None
            if site is None:
                site = topic_site
            for key, value in values:
                if type(value) is float:
                    metric = metric_name(measurement=measurement, field=key)
                    append(Reading(device_id, metric, ts_us, value, None, site, derive_msg_id(device_id, metric, ts_us, value), received_us, topic, marks))
                else:
                    detail = f"field {key!r} {value.what}"
                    self._line_rejected(line, number, topic, value.reason, detail, received_us, dead_letters)
        return points

    def _timestamp(self, text: str) -> int:
        digits = text[1:] if text[:1] == "-" else text
        if not (digits.isdigit() and digits.isascii()):
            if not text:
                raise _LineError("missing timestamp after the last space: remove the trailing space")
            if " " in text:
                raise _LineError(f"unexpected text after the timestamp: {_shorten(text)}")
            raise _LineError(f"timestamp {_shorten(text)} is not an integer")
        if len(digits) > 19 or not -_TS_LIMIT <= (value := int(text)) <= _TS_LIMIT:
            raise _LineError(f"timestamp {_shorten(text)} is outside the line protocol range of +-{_TS_LIMIT}")
        return epoch_to_us(value, self.settings.precision)

    def _range_detail(self, text: str, ts_us: int, lower: int) -> str:
        where = (
            f"before codec.min_timestamp {self.config.min_timestamp.isoformat()}"
            if ts_us < lower
            else f"more than codec.max_future={self.config.max_future:g}s ahead of the receive time"
        )
        return (
            f"timestamp {text} is {where}; check the device clock or the influx precision "
            f"(now {self.settings.precision!r})"
        )

    def _topic_fields(self, topic: str) -> dict[str, str] | str:
        """Return the named topic segments, or the message of a mismatch."""
        try:
            return self._topic.fields(topic)
        except Reject as reject:
            return reject.detail

    def _line_rejected(
        self,
        line: str,
        number: int,
        topic: str,
        reason: Reason,
        detail: str,
        received_us: int,
        dead_letters: list[DeadLetter],
    ) -> None:
        raw = line.encode()
        dead_letters.append(self._dead_letter(raw, topic, reason, f"line {number}: {detail}", received_us))

    def _payload_rejected(self, payload: bytes, topic: str, received_us: int, reason: Reason, detail: str) -> Decoded:
        from sparkiot.codecs.json import Decoded

        return Decoded([], [self._dead_letter(payload, topic, reason, detail, received_us)])

    def _dead_letter(self, raw: bytes, topic: str, reason: Reason, detail: str, received_us: int) -> DeadLetter:
        return DeadLetter(raw[: self.dead_letter_raw_bytes], len(raw), topic, reason.value, detail, received_us)


def _parse_fast(line: str) -> tuple[str, dict[str, str], list[tuple[str, str]], str | None] | None:
    """Split a line that contains no backslash and no double quote, or return None when it is invalid.

    It accepts exactly the lines :func:`_parse_slow` accepts, with the same result. On None the
    caller runs :func:`_parse_slow`, which names the problem.
    """
    parts = line.split(" ")
    if len(parts) == 2:
        head, field_set = parts
        ts_text = None
    elif len(parts) == 3:
        head, field_set, ts_text = parts
    else:
        return None
    names = head.split(",")
    measurement = names[0]
    if not measurement:
        return None
    tags = {}
    for item in names[1:]:
        key, _, value = item.partition("=")
        if not key or not value or "=" in value:
            return None
        tags[key] = value
    if len(tags) != len(names) - 1:
        return None
    fields = []
    for item in field_set.split(","):
        key, _, value = item.partition("=")
        if not key or not value:
            return None
        fields.append((key, value))
    if len(fields) > 1 and len({key for key, _ in fields}) != len(fields):
        return None
    return measurement, tags, fields, ts_text


def _parse_slow(line: str) -> tuple[str, dict[str, str], list[tuple[str, str]], str | None]:
    """Parse any line token by token, raising :class:`_LineError` that names the first problem."""
    end = len(line)
    match = _MEASUREMENT(line)
    if match is None:
        raise _LineError("missing measurement: start the line with the measurement name" + _after(line, 0))
    measurement = match.group()
    if "\\" in measurement:
        measurement = _UNESCAPE_MEASUREMENT(r"\1", measurement)
    position = match.end()

    tags: dict[str, str] = {}
    while position < end and line[position] == ",":
        key_match = _KEY(line, position + 1)
        if key_match is None:
            raise _LineError("missing tag key" + _after(line, position + 1))
        key = _unescape_key(key_match.group())
        position = key_match.end()
        if position == end or line[position] != "=":
            raise _LineError(f"tag key {_shorten(key)} has no '=value'")
        value_match = _KEY(line, position + 1)
        if value_match is None:
            raise _LineError(f"tag {_shorten(key)} has an empty value; omit the tag instead")
        if key in tags:
            raise _LineError(f"tag key {_shorten(key)} appears twice")
        tags[key] = _unescape_key(value_match.group())
        position = value_match.end()
    if position == end:
        raise _LineError("no field set: a space and at least one field=value must follow the measurement and tags")
    if line[position] != " ":
        raise _LineError(f"unescaped {line[position]!r} in a tag value; escape it with a backslash")
    position += 1

    fields: list[tuple[str, str]] = []
    seen = set()
    while True:
        key_match = _KEY(line, position)
        if key_match is None:
            raise _LineError("missing field key" + _after(line, position))
        key = _unescape_key(key_match.group())
        if key in seen:
            raise _LineError(f"field key {_shorten(key)} appears twice")
        seen.add(key)
        position = key_match.end()
        if position == end or line[position] != "=":
            raise _LineError(f"field key {_shorten(key)} has no '=value'")
        position += 1
        if position < end and line[position] == '"':
            value_match = _QUOTED(line, position)
            if value_match is None:
                raise _LineError(f"the string value of field {_shorten(key)} has no closing double quote")
        else:
            value_match = _BARE(line, position)
            if value_match is None:
                raise _LineError(f"field {_shorten(key)} has no value")
        fields.append((key, value_match.group()))
        position = value_match.end()
        if position == end:
            return measurement, tags, fields, None
        separator = line[position]
        if separator == " ":
            ts_text = line[position + 1 :]
            if ts_text[:1] == " ":
                raise _LineError("more than one space after the field set: separate the timestamp with one space")
            return measurement, tags, fields, ts_text
        if separator != ",":
            raise _LineError(f"unexpected {separator!r} after the value of field {_shorten(key)}")
        position += 1


def _field_value(key: str, token: str) -> float | _Rejected:
    """Return the float64 of a field value, a :class:`_Rejected`, or raise :class:`_LineError`."""
    suffix = token[-1]
    if suffix == "i":
        body = token[:-1]
        digits = body[1:] if body[:1] == "-" else body
        if not (digits.isdigit() and digits.isascii()):
            raise _LineError(f"field {_shorten(key)}: {_shorten(token)} is not an integer such as 12i or -12i")
        if len(digits) > 19 or not _INT64_MIN <= (number := int(body)) <= _INT64_MAX:
            raise _LineError(f"field {_shorten(key)}: {_shorten(token)} is outside the signed 64-bit range")
        return float(number)
    if suffix == "u":
        body = token[:-1]
        if not (body.isdigit() and body.isascii()):
            raise _LineError(f"field {_shorten(key)}: {_shorten(token)} is not an unsigned integer such as 12u")
        if len(body) > 20 or (number := int(body)) > _UINT64_MAX:
            raise _LineError(f"field {_shorten(key)}: {_shorten(token)} is outside the unsigned 64-bit range")
        return float(number)
    if _FLOAT(token):
        value = float(token)
        if value in (float("inf"), float("-inf")):
            return _Rejected(Reason.NON_FINITE_VALUE, f"value {_shorten(token)} is too large for a double")
        return value
    if token in _TRUE:
        return 1.0
    if token in _FALSE:
        return 0.0
    if token[0] == '"':
        return _STRING_FIELD
    word = token.lower()
    if (word[1:] if word[0] in "+-" else word) in _NON_FINITE_WORDS:
        return _Rejected(Reason.NON_FINITE_VALUE, f"value {_shorten(token)} is not a finite number")
    raise _LineError(
        f"field {_shorten(key)}: {_shorten(token)} is not a float, an integer (12i), an unsigned integer (12u), "
        "a boolean or a double-quoted string"
    )


def _unescape_key(text: str) -> str:
    return _UNESCAPE_KEY(r"\1", text) if "\\" in text else text


def _after(line: str, position: int) -> str:
    rest = line[position:]
    return f" (at {_shorten(rest)})" if rest else " (at the end of the line)"


def _shorten(text: str, limit: int = 60) -> str:
    shown = repr(text)
    return shown if len(shown) <= limit else shown[: limit - 4] + "...'"


__all__ = ["InfluxCodec", "InfluxSettings"]
