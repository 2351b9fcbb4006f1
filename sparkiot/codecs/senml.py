"""SenML packs (RFC 8428) in JSON or CBOR to readings.

A pack is an array of records. This codec reads both representations of RFC 8428: JSON
(``application/senml+json``, text labels) and CBOR (``application/senml+cbor``, integer
labels). The CBOR labels are those of the RFC's Table 4: bver -1, bn -2, bt -3, bu -4, bv -5,
bs -6, n 0, u 1, v 2, vs 3, vb 4, s 5, t 6, ut 7, vd 8. One codec reads one representation,
chosen by ``encoding``.

Resolution follows sections 4.1 to 4.6 of the RFC:

* Base fields (``bn``, ``bt``, ``bu``, ``bv``, ``bs``) apply to their own record and to every
  later record up to the next record that sets the same base field again.
* Name: ``bn`` + ``n``. The result must be non-empty, use only ``A-Z a-z 0-9 - : . / _`` and
  start with a letter or a digit.
* Time: ``bt`` + ``t``, a missing one counting as zero, in seconds (integers, floats or, in
  CBOR, decimal fractions). A sum of at least 2**28 is seconds since the Unix epoch; a smaller
  one, negative included, is relative to "now", which is the receive time. The sum is computed
  exactly and then rounded to the microsecond. Readings whose time is relative carry the mark
  ``receive_time``, like readings of the other codecs that take the receive time.
* Unit: ``u``, else ``bu``, else None. Value: ``bv`` + ``v``; ``vb`` becomes 1.0 or 0.0 and
  takes no base value. Sum: ``bs`` + ``s``; a record has a sum when either one is present.
* Version: ``bver`` defaults to 10. A pack whose version is above 10, is not a positive
  integer, or changes between records is rejected whole, since the RFC forbids using it.
* A record of base fields only (no ``n``, ``u``, ``t``, ``ut``, value or sum) sets them for the
  records after it and gives no reading, as in the RFC's example of section 5.1.7; any other
  record without a value and without a sum is an ``invalid_senml`` dead letter.
* Labels that the codec does not know are ignored, except labels ending in ``_``, which the RFC
  says must be understood: such a record becomes an ``invalid_senml`` dead letter. Integer
  labels in CBOR outside the table are ignored too; a CBOR record that uses text labels such as
  ``"v"`` gets a hint in its dead letter, since CBOR SenML uses the integer ones.

Decisions beyond the RFC:

* ``vs`` (string) and ``vd`` (data) values are not numbers: such a record becomes an
  ``unsupported_value_type`` dead letter. Its sum, if it has one, still becomes a reading.
* The sum becomes a reading of its own, of metric ``<metric>`` + ``sum_suffix`` (default
  ``_sum``), also when the record has no value: a series never mixes values and sums. Its unit
  is the record's unit followed by ``*s`` (the RFC's sum is the unit times seconds), or None.
* Every record is atomic: any malformed field makes the whole record one dead letter whose
  detail names the record index, and the other records of the pack still become readings. A
  malformed base field also spoils that base field for the records after it, until a record
  sets it again: those records become dead letters naming the record that set it, rather than
  readings with a wrong name, time, unit, value or sum.
* ``t`` and ``bt`` that are not finite numbers give ``invalid_timestamp``; ``v``, ``bv``, ``s``
  and ``bs`` that are not numbers give ``non_numeric_value``, and NaN, infinities and numbers
  beyond a double give ``non_finite_value``; every other structural problem (not an array of
  maps, an empty pack, wrong types of ``n``, ``u``, ``vb``, ``vs``, ``vd`` or ``ut``, two value
  fields in one record, no value and no sum, a bad name) gives ``invalid_senml``.
* A resolved time must lie between ``codec.min_timestamp`` and ``codec.max_future`` past the
  receive time (``timestamp_out_of_range``). The other settings of ``codec`` that apply are
  ``max_payload_bytes`` and ``topic_pattern`` (``{site}`` fills the site, ``{device_id}`` and
  ``{metric}`` are used as below). ``missing_timestamp``, ``ts_unit``, ``timezone``,
  ``numbers_as_strings`` and the JSON field names do not apply: SenML defines its own time
  rules and field names.
* JSON: a label repeated in one object keeps its last value, as Python's ``json`` does. CBOR:
  a repeated map key, trailing bytes after the pack, nesting deeper than 16 levels or a CBOR
  text string that is not UTF-8 make the payload ``invalid_cbor``. A CBOR payload over 4 KiB
  whose maps hold more than 64 entries is rejected whole as ``invalid_senml`` before decoding:
  integer keys can be chosen to collide in Python's dict and make decoding quadratic.

Device id and metric (``SenmlSettings``). With ``device_id_from: base_name`` (the default):

* when the resolved base name is not empty, the device id is the base name without one trailing
  separator (``-``, ``:``, ``.``, ``/`` or ``_``) and the metric is the record's own ``n`` (a
  leading separator dropped when the base name had none at its end): ``bn`` ``urn:dev:ow:1234:``
  with ``n`` ``temp`` gives device ``urn:dev:ow:1234`` and metric ``temp``;
* when there is no base name, the name is split at its last character among
  ``name_separators`` (default ``/``): ``room1/temp`` gives device ``room1`` and metric
  ``temp``. A name with no such separator is the device id as a whole. ``:`` is not a
  default separator because URNs and IPv6 addresses, the RFC's own examples of names,
  contain it;
* a record without a name of its own takes the topic pattern's ``{metric}`` when there is one,
  else its unit when ``metric_from_unit`` is true, else ``default_metric`` (default ``value``).
  RFC 8428's own packs use the unit alone to tell apart measurements of one name (humidity,
  latitude, longitude); ``metric_from_unit`` keeps them in separate series.

With ``device_id_from: topic`` the topic pattern's ``{device_id}`` is the device id (the codec
raises ValueError for a pattern without it) and the metric is what follows the base name, or without base
name the part after the name's last separator, or the whole name.

Why hand-written: the SenML packages on PyPI do not fit. ``senml`` (0.1.0, 2016, its only
release) writes version 5 packs of a draft of the format and depends on the ``cbor`` package,
last released in 2016. ``kpn-senml`` (1.0.1, 2018, no release since) is built around KPN's
device platform and does not resolve times relative to "now". ``micropython-senml`` targets
MicroPython. None gives per-record reason codes or bounded raw bytes, and RFC 8428 resolution
is short, so this module resolves packs itself and leaves only CBOR parsing to ``cbor2``.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import math
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Literal


from sparkiot.codecs.common import Reject as _Reject
from sparkiot.codecs.common import TopicPattern
from sparkiot.codecs.json import Decoded
from sparkiot.config import SenmlSettings, SENML_SEPARATORS
from sparkiot.readings import MARK_RECEIVE_TIME, DeadLetter, Reading, Reason, derive_msg_id

if TYPE_CHECKING:  # Annotations only, so that this module adds no import of config.py.
    from sparkiot.config import CodecConfig

# RFC 8428 section 6, Table 4.
CBOR_LABELS = {-1: "bver", -2: "bn", -3: "bt", -4: "bu", -5: "bv", -6: "bs",
               0: "n", 1: "u", 2: "v", 3: "vs", 4: "vb", 5: "s", 6: "t", 7: "ut", 8: "vd"}
_KNOWN_LABELS = frozenset(CBOR_LABELS.values())
_VALUE_LABELS = ("v", "vs", "vb", "vd")
_BASE_LABELS = frozenset(("bn", "bt", "bu", "bv", "bs", "bver"))
_REGULAR_LABELS = frozenset(("n", "u", "v", "vs", "vb", "vd", "s", "t", "ut"))
_NAME = re.compile(r"[A-Za-z0-9][-:./_A-Za-z0-9]*").fullmatch
_RELATIVE_LIMIT = 2**28
_VERSION = 10
_CBOR_MAX_DEPTH = 16
_CBOR_SCAN_BYTES = 4096
_CBOR_MAX_MAP = 64
_ABSENT = object()



class _Base:
    """Base fields in force while a pack is read. A malformed one is kept as the record index that set it."""

    __slots__ = ("bn", "bt", "bu", "bv", "bs", "spoiled")

    def __init__(self) -> None:
        self.bn = ""
        self.bt: object = None
        self.bu: str | None = None
        self.bv: object = None
        self.bs: object = None
        self.spoiled: dict[str, tuple[int, Reason]] = {}


class SenmlCodec:
    """Decode SenML packs (JSON or CBOR) into readings according to a :class:`CodecConfig`."""

    def __init__(
        self,
        config: CodecConfig,
        settings: SenmlSettings | None = None,
        *,
        encoding: Literal["json", "cbor"] = "json",
        dead_letter_raw_bytes: int = 4096,
    ) -> None:
        if encoding not in ("json", "cbor"):
            raise ValueError(f"unknown SenML encoding {encoding!r}; use 'json' or 'cbor'")
        self.config = config
        self.settings = settings or SenmlSettings()
        self.encoding = encoding
        self.dead_letter_raw_bytes = dead_letter_raw_bytes
        self._topic = TopicPattern(config.topic_pattern)
        if self.settings.device_id_from == "topic" and "device_id" not in self._topic.names():
            raise ValueError(
                "senml.device_id_from is 'topic' but codec.topic_pattern names no {device_id} segment; "
                "add one, such as 'sensors/{device_id}', or use device_id_from: base_name"
            )
        self._min_us = int(config.min_timestamp.timestamp()) * 1_000_000
        self._max_future_us = int(config.max_future * 1_000_000)
        self._cbor = _load_cbor2() if encoding == "cbor" else None

    def decode(self, payload: bytes, topic: str, received_us: int) -> Decoded:
        """Decode one pack received on ``topic`` at ``received_us`` (UTC microseconds)."""
        try:
            pack = self._parse(payload)
            topic_fields = self._topic.fields(topic)
            _check_pack(pack, self.encoding)
        except _Reject as reject:
            return Decoded([], [self._dead_letter(payload, topic, reject, received_us)])

        readings: list[Reading] = []
        dead_letters: list[DeadLetter] = []
        base = _Base()
        for index, record in enumerate(pack):
            try:
                self._decode_record(index, record, base, topic, topic_fields, received_us, readings)
            except _Reject as reject:
                reject.detail = f"record {index}: {reject.detail}"
                dead_letters.append(self._dead_letter(self._record_bytes(record, payload), topic, reject, received_us))
        return Decoded(readings, dead_letters)

    # Parsing

    def _parse(self, payload: bytes) -> object:
        kind = "SenML CBOR" if self._cbor else "a SenML JSON pack"
        if not payload:
            raise _Reject(Reason.EMPTY_PAYLOAD, f"the payload is empty; send {kind}")
        if len(payload) > self.config.max_payload_bytes:
            raise _Reject(
                Reason.PAYLOAD_TOO_LARGE,
                f"payload of {len(payload)} bytes exceeds codec.max_payload_bytes={self.config.max_payload_bytes}; "
                "split it or raise the limit",
            )
        if self._cbor is not None:
            return self._parse_cbor(payload)
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Reject(Reason.INVALID_UTF8, f"the payload is not UTF-8 text (byte {exc.start}); send UTF-8 JSON") from None
        try:
            return json.loads(text, parse_int=_parse_int)
        except (ValueError, RecursionError) as exc:
            raise _Reject(Reason.INVALID_JSON, f"invalid JSON: {exc}") from None

    def _parse_cbor(self, payload: bytes) -> object:
        if len(payload) > _CBOR_SCAN_BYTES:
            entries = _oversized_map(payload, _CBOR_MAX_MAP)
            if entries is not None:
                raise _Reject(
                    Reason.INVALID_SENML,
                    f"a map of {entries} entries; a SenML record in a payload over {_CBOR_SCAN_BYTES} bytes "
                    f"may have at most {_CBOR_MAX_MAP}",
                )
        stream = io.BytesIO(payload)
        try:
            decoder = self._cbor.CBORDecoder(stream, max_depth=_CBOR_MAX_DEPTH, allow_duplicate_keys=False)
            document = decoder.decode()
        except Exception as exc:  # cbor2 raises CBORDecodeError, but also ValueError for some tags
            raise _Reject(Reason.INVALID_CBOR, f"invalid CBOR: {_clip(str(exc) or type(exc).__name__, 200)}") from None
        if stream.tell() != len(payload):
            raise _Reject(
                Reason.INVALID_CBOR,
                f"invalid CBOR: {len(payload) - stream.tell()} bytes follow the pack; send exactly one CBOR array",
            )
        return document

    # Records

    def _decode_record(
        self,
        index: int,
        record: object,
        base: _Base,
        topic: str,
        topic_fields: dict[str, str],
        received_us: int,
        readings: list[Reading],
    ) -> None:
        fields = self._fields(record)
        _apply_base(index, fields, base)
        spoiled = base.spoiled
        if _REGULAR_LABELS.isdisjoint(fields):
            if not _BASE_LABELS.isdisjoint(fields) and not self._text_label_hint(record):
                return  # only base fields for the records after it, as in RFC 8428 section 5.1.7
            raise _Reject(Reason.INVALID_SENML, "the record has no value (v, vb, vs or vd) and no sum (s)" + self._text_label_hint(record))

        # Name
        own_name = fields.get("n", "")
        if type(own_name) is not str:
            raise _Reject(Reason.INVALID_SENML, f"name n must be text, got {_show(own_name)}")
        if "bn" in spoiled:
            raise _spoiled_error("bn", spoiled)
        name = base.bn + own_name
        if not name:
            raise _Reject(Reason.INVALID_SENML, "the record has no name: set n, or bn in this or an earlier record")
        if _NAME(name) is None:
            raise _Reject(
                Reason.INVALID_SENML,
                f"name {_clip(name, 80)!r} breaks the SenML name rule: only A-Z a-z 0-9 - : . / _, "
                "starting with a letter or a digit",
            )

        # Unit
        unit = fields.get("u", _ABSENT)
        if unit is _ABSENT:
            if "bu" in spoiled:
                raise _spoiled_error("bu", spoiled)
            unit = base.bu
        elif type(unit) is not str:
            raise _Reject(Reason.INVALID_SENML, f"unit u must be text, got {_show(unit)}")

        # Time
        offset = fields.get("t", _ABSENT)
        if offset is _ABSENT:
            offset = None
        elif not _is_finite_number(offset):
            raise _Reject(Reason.INVALID_TIMESTAMP, f"time t must be a finite number of seconds, got {_show(offset)}")
        if "bt" in spoiled:
            raise _spoiled_error("bt", spoiled)
        update = fields.get("ut", _ABSENT)
        if update is not _ABSENT and not _is_finite_number(update):
            raise _Reject(Reason.INVALID_SENML, f"update time ut must be a finite number of seconds, got {_show(update)}")

        # Value and sum
        present = [label for label in _VALUE_LABELS if label in fields]
        if len(present) > 1:
            raise _Reject(Reason.INVALID_SENML, f"the record has {' and '.join(present)}; exactly one value field is allowed")
        if "bs" in spoiled:
            raise _spoiled_error("bs", spoiled)
        has_sum = "s" in fields or base.bs is not None
        if not present and not has_sum:
            raise _Reject(Reason.INVALID_SENML, "the record has no value (v, vb, vs or vd) and no sum (s)" + self._text_label_hint(record))
        value: float | None = None
        unsupported = None
        if present:
            label = present[0]
            raw = fields[label]
            if label == "v":
                if "bv" in spoiled:
                    raise _spoiled_error("bv", spoiled)
                value = _add("value", "v", raw, base.bv)
            elif label == "vb":
                if type(raw) is not bool:
                    raise _Reject(Reason.INVALID_SENML, f"boolean value vb must be true or false, got {_show(raw)}")
                value = 1.0 if raw else 0.0
            else:
                expected = bytes if (label == "vd" and self._cbor is not None) else str
                if type(raw) is not expected:
                    kind = "a byte string" if expected is bytes else "text"
                    raise _Reject(Reason.INVALID_SENML, f"{label} must be {kind}, got {_show(raw)}")
                what = "a string value (vs)" if label == "vs" else "a data value (vd)"
                unsupported = _Reject(Reason.UNSUPPORTED_VALUE_TYPE, f"{what} is not a number; only v and vb become readings")
        total = None
        if has_sum:
            base_sum = base.bs if base.bs is not None else 0
            total = _add("sum", "s", fields.get("s", 0), base_sum)

        ts_us, relative = self._time(base.bt, offset, received_us)

        # Device and metric
        device_id, metric = self._identify(base.bn, own_name, name, topic_fields, unit)
        site = topic_fields.get("site")
        marks = (MARK_RECEIVE_TIME,) if relative else ()
        if value is not None:
            msg_id = derive_msg_id(device_id, metric, ts_us, value)
            readings.append(Reading(device_id, metric, ts_us, value, unit, site, msg_id, received_us, topic, marks))
        if total is not None:
            sum_metric = metric + self.settings.sum_suffix
            sum_unit = f"{unit}*s" if unit else None
            msg_id = derive_msg_id(device_id, sum_metric, ts_us, total)
            readings.append(Reading(device_id, sum_metric, ts_us, total, sum_unit, site, msg_id, received_us, topic, marks))
        if unsupported is not None:
            raise unsupported

    def _fields(self, record: object) -> dict:
        """Return the record's fields under their JSON labels; reject what is not a record."""
        if type(record) is not dict and not isinstance(record, Mapping):
            raise _Reject(Reason.INVALID_SENML, f"a record must be a map, got {_kind(record)}")
        if self._cbor is None:
            for label in record:
                if label.endswith("_"):
                    raise _must_understand(label)
            return record
        fields = {}
        for label, value in record.items():
            if type(label) is int:
                name = CBOR_LABELS.get(label)
                if name is not None:
                    fields[name] = value
            elif type(label) is str and label.endswith("_"):
                raise _must_understand(label)
        return fields

    def _text_label_hint(self, record: object) -> str:
        if self._cbor is not None and any(label in _KNOWN_LABELS for label in record):
            return "; CBOR SenML uses integer labels (n is 0, v is 2, bn is -2), not text labels"
        return ""

    def _time(self, base_time: object, offset: object, received_us: int) -> tuple[int, bool]:
        """Return the resolved time in microseconds and whether it was relative to the receive time."""
        if base_time is None and offset is None:
            seconds_num, seconds_den = 0, 1
        elif type(base_time) is int and type(offset) is int:
            seconds_num, seconds_den = base_time + offset, 1
        else:
            num_a, den_a = _ratio(base_time if base_time is not None else 0)
            num_b, den_b = _ratio(offset if offset is not None else 0)
            seconds_num, seconds_den = num_a * den_b + num_b * den_a, den_a * den_b
        micros, remainder = divmod(seconds_num * 1_000_000, seconds_den)
        if 2 * remainder >= seconds_den:
            micros += 1
        relative = seconds_num < _RELATIVE_LIMIT * seconds_den
        ts_us = received_us + micros if relative else micros
        if ts_us < self._min_us:
            raise _Reject(
                Reason.TIMESTAMP_OUT_OF_RANGE,
                f"time {_seconds(seconds_num, seconds_den)}{' relative to now' if relative else ''} is before "
                f"codec.min_timestamp {self.config.min_timestamp.isoformat()}; check the device clock",
            )
        if ts_us > received_us + self._max_future_us:
            raise _Reject(
                Reason.TIMESTAMP_OUT_OF_RANGE,
                f"time {_seconds(seconds_num, seconds_den)}{' relative to now' if relative else ''} is more than "
                f"codec.max_future={self.config.max_future:g}s ahead of the receive time; check the device clock",
            )
        return ts_us, relative

    def _identify(
        self, base_name: str, own_name: str, name: str, topic_fields: dict[str, str], unit: str | None
    ) -> tuple[str, str]:
        settings = self.settings
        if base_name:
            if base_name[-1] in SENML_SEPARATORS:
                device_id, metric = base_name[:-1], own_name
            elif own_name[:1] in SENML_SEPARATORS and len(own_name) > 1:
                device_id, metric = base_name, own_name[1:]
            else:
                device_id, metric = base_name, own_name
        else:
            cut = max(name.rfind(char) for char in settings.name_separators) if settings.name_separators else -1
            if 0 < cut < len(name) - 1:
                device_id, metric = name[:cut], name[cut + 1 :]
            elif settings.device_id_from == "topic":
                device_id, metric = name, name
            else:
                device_id, metric = name, ""
        if settings.device_id_from == "topic":
            device_id = topic_fields["device_id"]
        if not metric:
            metric = topic_fields.get("metric") or (unit if settings.metric_from_unit and unit else settings.default_metric)
        return device_id, metric

    # Dead letters

    def _record_bytes(self, record: object, payload: bytes) -> bytes:
        """Return the record alone in the pack's encoding, or the whole payload if it cannot be encoded."""
        try:
            if self._cbor is not None:
                return self._cbor.dumps(record)
            return json.dumps(record, allow_nan=True).encode()
        except Exception:  # cbor2 cannot encode every value it decodes, so the whole payload is kept
            return payload

    def _dead_letter(self, raw: bytes, topic: str, reject: _Reject, received_us: int) -> DeadLetter:
        return DeadLetter(raw[: self.dead_letter_raw_bytes], len(raw), topic, reject.reason.value, reject.detail, received_us)


def _load_cbor2():
    """Import cbor2, or raise ImportError naming the version the CBOR codec needs."""
    try:
        import cbor2
    except ImportError:
        raise ImportError("the senml-cbor format needs the cbor2 package: pip install 'cbor2>=6.1.1'") from None
    # 6.1.0 added allow_duplicate_keys, and 6.1.1 fixed decoding from a file object past 4096 bytes.
    installed = importlib.metadata.version("cbor2")
    parts = re.match(r"(\d+)\.(\d+)\.(\d+)", installed)
    if parts is None or tuple(int(part) for part in parts.groups()) < (6, 1, 1):
        raise ImportError(f"the senml-cbor format needs cbor2 6.1.1 or newer, found {installed}: pip install 'cbor2>=6.1.1'")
    return cbor2


# Pack-level checks


def _check_pack(pack: object, encoding: str) -> None:
    """Reject what is not a non-empty array, and packs whose version cannot be read."""
    if not isinstance(pack, (list, tuple)):
        raise _Reject(Reason.INVALID_SENML, f"a SenML pack is an array of records, got {_kind(pack)}")
    if not pack:
        raise _Reject(Reason.INVALID_SENML, "the pack is an empty array; send at least one record")
    label = "bver" if encoding == "json" else -1
    version = _VERSION
    for index, record in enumerate(pack):
        if type(record) is not dict and not isinstance(record, Mapping):
            continue
        declared = _cbor_get(record, label) if encoding == "cbor" else record.get(label, _ABSENT)
        if declared is _ABSENT:
            continue
        if type(declared) is not int or declared < 1:
            raise _Reject(Reason.INVALID_SENML, f"record {index}: version bver must be a positive integer, got {_show(declared)}")
        if declared > _VERSION:
            raise _Reject(
                Reason.INVALID_SENML,
                f"record {index}: version {declared} is newer than {_VERSION}, the version this codec reads; "
                "the RFC forbids using such a pack",
            )
        if index > 0 and declared != version:
            raise _Reject(
                Reason.INVALID_SENML,
                f"record {index}: version {declared} differs from version {version} of the records before it; "
                "all records of a pack must have the same version",
            )
        version = declared


def _cbor_get(record: Mapping, label: int) -> object:
    # 1.0 and True compare equal to 1 as dict keys: only an integer key is the label.
    for key, value in record.items():
        if type(key) is int and key == label:
            return value
    return _ABSENT


def _apply_base(index: int, fields: dict, base: _Base) -> None:
    """Take the base fields of one record; reject the record if one of them is malformed."""
    first: _Reject | None = None
    for label in ("bn", "bt", "bu", "bv", "bs"):
        raw = fields.get(label, _ABSENT)
        if raw is _ABSENT:
            continue
        problem = _base_problem(label, raw)
        if problem is None:
            setattr(base, label, raw)
            base.spoiled.pop(label, None)
        else:
            setattr(base, label, None if label != "bn" else "")
            base.spoiled[label] = (index, problem.reason)
            first = first or problem
    if first is not None:
        raise first


def _base_problem(label: str, raw: object) -> _Reject | None:
    if label in ("bn", "bu"):
        if type(raw) is str:
            return None
        what = "base name bn" if label == "bn" else "base unit bu"
        return _Reject(Reason.INVALID_SENML, f"{what} must be text, got {_show(raw)}")
    if label == "bt":
        if _is_finite_number(raw):
            return None
        return _Reject(Reason.INVALID_TIMESTAMP, f"base time bt must be a finite number of seconds, got {_show(raw)}")
    what = "base value bv" if label == "bv" else "base sum bs"
    if not _is_number(raw):
        return _Reject(Reason.NON_NUMERIC_VALUE, f"{what} must be a number, got {_show(raw)}")
    if not math.isfinite(_to_float(raw)):
        return _Reject(Reason.NON_FINITE_VALUE, f"{what} {_show(raw)} is not a finite number")
    return None


def _spoiled_error(label: str, spoiled: dict[str, tuple[int, Reason]]) -> _Reject:
    index, reason = spoiled[label]
    return _Reject(reason, f"the base field {label} in force was malformed in record {index}")


def _must_understand(label: str) -> _Reject:
    return _Reject(
        Reason.INVALID_SENML,
        f"label {_clip(label, 40)!r} ends with '_', so it must be understood, and this codec does not know it",
    )


# Numbers


def _is_number(value: object) -> bool:
    kind = type(value)
    return kind is int or kind is float or kind is Decimal


def _is_finite_number(value: object) -> bool:
    kind = type(value)
    if kind is int:
        return True
    if kind is float:
        return math.isfinite(value)
    if kind is Decimal:
        return value.is_finite()
    return False


def _to_float(value: int | float | Decimal) -> float:
    """Return ``value`` as a double, or an infinity when it is beyond the double range."""
    if type(value) is float:
        return value
    if type(value) is int:
        try:
            return float(value)
        except OverflowError:
            return math.inf if value > 0 else -math.inf
    return float(value) if value.is_finite() else math.nan


def _add(what: str, label: str, raw: object, base: object) -> float:
    """Return ``base + raw`` as a finite double, or reject the record naming ``label``."""
    if not _is_number(raw):
        raise _Reject(Reason.NON_NUMERIC_VALUE, f"{what} {label} must be a number, got {_show(raw)}")
    if base is None:
        total = _to_float(raw)
    elif type(raw) is int and type(base) is int:
        total = _to_float(raw + base)
    else:
        total = _to_float(raw) + _to_float(base)
    if not math.isfinite(total):
        base_part = f" plus base {_show(base)}" if base not in (None, 0) else ""
        raise _Reject(Reason.NON_FINITE_VALUE, f"{what} {label}={_show(raw)}{base_part} is not a finite double")
    return total


def _ratio(value: int | float | Decimal) -> tuple[int, int]:
    """Return ``value`` exactly as numerator and denominator (finite values only)."""
    if type(value) is int:
        return value, 1
    if type(value) is float:
        return value.as_integer_ratio()
    exponent = value.adjusted()
    if exponent > 30:  # Beyond any time this codec accepts, so only the sign matters.
        return (-(10**31) if value < 0 else 10**31), 1
    if exponent < -30:  # Far below a microsecond.
        return 0, 1
    return value.as_integer_ratio()


def _seconds(numerator: int, denominator: int) -> str:
    if abs(numerator) >= 10**30 * denominator:
        return "beyond 1e30 s"
    if denominator == 1:
        return f"{numerator} s"
    return f"{numerator / denominator:.6f}".rstrip("0").rstrip(".") + " s"


def _parse_int(text: str) -> int | float:
    # Python rejects int() of more than 4300 digits, and such a number is beyond a double anyway.
    return int(text) if len(text) <= 4000 else math.inf


# CBOR pre-scan


def _oversized_map(data: bytes, limit: int) -> int | None:
    """Return the size of the first map of more than ``limit`` entries in the first CBOR item.

    Reads only the item headers, without building values. Returns None when no map is too large
    or when the data is not well-formed (the decoder then reports the error).
    """
    size = len(data)
    pos = 0
    left = [1]  # Items still to read in each open container, or -1 for an indefinite one.
    counts: list[int | None] = [None]  # Items read so far in an open indefinite map.
    while left:
        if left[-1] == 0:
            left.pop()
            counts.pop()
            continue
        if pos >= size:
            return None
        initial = data[pos]
        pos += 1
        if initial == 0xFF:
            if left[-1] != -1:
                return None
            left.pop()
            counts.pop()
            continue
        if left[-1] > 0:
            left[-1] -= 1
        elif counts[-1] is not None:
            counts[-1] += 1
            if counts[-1] > 2 * limit:
                return counts[-1] // 2
        major, info = initial >> 5, initial & 0x1F
        if info < 24:
            argument = info
        elif info < 28:
            width = 1 << (info - 24)
            if pos + width > size:
                return None
            argument = int.from_bytes(data[pos : pos + width], "big")
            pos += width
        elif info == 31 and major in (2, 3, 4, 5):
            argument = -1
        else:
            return None
        if major in (2, 3):
            if argument == -1:
                left.append(-1)
                counts.append(None)
            else:
                pos += argument
        elif major == 4:
            if argument:
                left.append(argument)
                counts.append(None)
        elif major == 5:
            if argument == -1:
                left.append(-1)
                counts.append(0)
            elif argument > limit:
                return argument
            elif argument:
                left.append(2 * argument)
                counts.append(None)
        elif major == 6:
            left.append(1)
            counts.append(None)
    return None


# Messages


def _kind(value: object) -> str:
    if isinstance(value, Mapping):
        return "a map"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, str):
        return "text"
    if isinstance(value, (bytes, bytearray)):
        return "a byte string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    if _is_number(value):
        return "a number"
    return type(value).__name__


def _show(value: object, limit: int = 60) -> str:
    try:
        text = repr(value)
    except Exception:  # Such as repr of an int over 4300 digits. The type name is shown instead.
        text = f"<{type(value).__name__}>"
    return _clip(text, limit)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = ["CBOR_LABELS", "SenmlCodec", "SenmlSettings"]
