"""Unit tests of the JSON codec: accepted shapes, timestamps and the reason code of every rejection."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from sparkiot.codecs.json import JsonCodec
from sparkiot.config import CodecConfig

TOPIC = "sensors/site1/dev1/temp"
PATTERN = "sensors/{site}/{device_id}/{metric}"
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
TS_S = 1714564800  # 2024-05-01T12:00:00Z
TS_US = TS_S * 1_000_000
RECEIVED_US = TS_US + 60 * 1_000_000


def to_epoch_us(moment: datetime) -> int:
    """Return the UTC microseconds of an aware datetime."""
    return (moment - EPOCH) // timedelta(microseconds=1)


def encode(document: object) -> bytes:
    return json.dumps(document).encode()


def decode(payload: object, topic: str = TOPIC, *, raw_bytes: int = 4096, **options):
    """Decode ``payload`` (bytes, or a document to serialize) with a codec built from ``options``."""
    codec = JsonCodec(CodecConfig(**options), dead_letter_raw_bytes=raw_bytes)
    data = payload if isinstance(payload, bytes) else encode(payload)
    return codec.decode(data, topic, RECEIVED_US)


def reading(**fields) -> dict:
    """Return a valid single-reading document with ``fields`` replaced."""
    document = {"device_id": "d1", "metric": "temp", "ts": TS_S, "value": 21.5}
    document.update(fields)
    return document


# Accepted shapes


def test_single_reading_fields():
    document = reading(unit="C", site="lab", id="m-1")

    readings, dead_letters = decode(document)

    assert dead_letters == []
    assert len(readings) == 1
    result = readings[0]
    assert result.device_id == "d1"
    assert result.metric == "temp"
    assert result.ts_us == TS_US
    assert result.value == 21.5
    assert result.unit == "C"
    assert result.site == "lab"
    assert result.msg_id == "d1:m-1"
    assert result.ingest_us == RECEIVED_US
    assert result.source == TOPIC


def test_multi_metric_object():
    readings, dead_letters = decode({"device_id": "d1", "ts": TS_S, "temp": 21.5, "rh": 40})

    assert dead_letters == []
    assert sorted((r.metric, r.value) for r in readings) == [("rh", 40.0), ("temp", 21.5)]
    assert {r.device_id for r in readings} == {"d1"}
    assert {r.ts_us for r in readings} == {TS_US}


def test_metrics_sub_object():
    document = {"device_id": "d1", "ts": TS_S, "unit": "x", "metrics": {"temp": 21.5, "rh": 40.25}}

    readings, dead_letters = decode(document)

    assert dead_letters == []
    assert sorted((r.metric, r.value) for r in readings) == [("rh", 40.25), ("temp", 21.5)]
    assert {r.unit for r in readings} == {"x"}


def test_top_level_array_both_shapes():
    document = [reading(device_id="a"), {"device_id": "b", "ts": TS_S, "temp": 1, "rh": 2}]

    readings, dead_letters = decode(document)

    assert dead_letters == []
    assert sorted((r.device_id, r.metric, r.value) for r in readings) == [
        ("a", "temp", 21.5),
        ("b", "rh", 2.0),
        ("b", "temp", 1.0),
    ]


def test_bare_number_from_topic():
    readings, dead_letters = decode(b"21.5", topic_pattern=PATTERN, missing_timestamp="receive_time")

    assert dead_letters == []
    assert len(readings) == 1
    result = readings[0]
    assert (result.site, result.device_id, result.metric) == ("site1", "dev1", "temp")
    assert result.value == 21.5
    assert result.ts_us == RECEIVED_US


def test_array_of_bare_numbers():
    readings, dead_letters = decode(b"[1, 2.5]", topic_pattern=PATTERN, missing_timestamp="receive_time")

    assert dead_letters == []
    assert [r.value for r in readings] == [1.0, 2.5]


def test_topic_fills_missing_fields():
    readings, dead_letters = decode({"ts": TS_S, "value": 3.0}, topic_pattern=PATTERN)

    assert dead_letters == []
    assert len(readings) == 1
    assert readings[0].device_id == "dev1"
    assert readings[0].site == "site1"
    assert readings[0].metric == "temp"


def test_payload_fields_override_topic():
    document = {"device_id": "own", "site": "own-site", "metric": "rh", "ts": TS_S, "value": 3.0}

    readings, _ = decode(document, topic_pattern=PATTERN)

    assert (readings[0].device_id, readings[0].site, readings[0].metric) == ("own", "own-site", "rh")


def test_topic_wildcard_segment():
    readings, dead_letters = decode({"ts": TS_S, "value": 1}, "x/dev9/co2", topic_pattern="{_}/{device_id}/{metric}")

    assert dead_letters == []
    assert (readings[0].device_id, readings[0].metric, readings[0].site) == ("dev9", "co2", None)


def test_configured_field_names():
    document = {"dev": "d7", "name": "temp", "time": TS_S, "v": 5}
    options = {"device_id_field": "dev", "metric_field": "name", "ts_field": "time", "value_field": "v"}

    readings, dead_letters = decode(document, **options)

    assert dead_letters == []
    assert (readings[0].device_id, readings[0].metric, readings[0].ts_us, readings[0].value) == ("d7", "temp", TS_US, 5.0)


def test_payload_id_single():
    readings, _ = decode(reading(id=17))

    assert readings[0].msg_id == "d1:17"


def test_payload_id_multi_metric():
    readings, _ = decode({"device_id": "d1", "ts": TS_S, "id": "abc", "temp": 1, "rh": 2})

    assert sorted(r.msg_id for r in readings) == ["d1:abc:rh", "d1:abc:temp"]


def test_derived_msg_id_stable():
    first, _ = decode(reading())
    again, _ = decode(reading())

    assert first[0].msg_id == again[0].msg_id


@pytest.mark.parametrize(
    "change",
    [{"value": 21.6}, {"device_id": "d2"}, {"metric": "rh"}, {"ts": TS_S + 1}],
    ids=["value", "device", "metric", "ts"],
)
def test_derived_msg_id_differs(change):
    base, _ = decode(reading())
    other, _ = decode(reading(**change))

    assert base[0].msg_id != other[0].msg_id


def test_derived_msg_id_per_metric():
    readings, _ = decode({"device_id": "d1", "ts": TS_S, "a": 1, "b": 1})

    assert len({r.msg_id for r in readings}) == 2


def test_booleans_become_numbers():
    readings, dead_letters = decode({"device_id": "d1", "ts": TS_S, "on": True, "off": False})

    assert dead_letters == []
    assert {r.metric: r.value for r in readings} == {"on": 1.0, "off": 0.0}


def test_numbers_as_strings_accepted():
    readings, dead_letters = decode(reading(value="21.5"), numbers_as_strings=True)

    assert dead_letters == []
    assert readings[0].value == 21.5


# Timestamps


@pytest.mark.parametrize(
    ("ts", "unit", "expected"),
    [
        (TS_S, "auto", TS_US),
        (TS_S * 1000 + 123, "auto", TS_US + 123_000),
        (TS_US + 123_456, "auto", TS_US + 123_456),
        (TS_US * 1000 + 123_456_789, "auto", TS_US + 123_456),
        (TS_S + 0.5, "auto", TS_US + 500_000),
        (str(TS_S), "auto", TS_US),
        (TS_S, "s", TS_US),
        (TS_S * 1000 + 123, "ms", TS_US + 123_000),
        (TS_US + 7, "us", TS_US + 7),
        (TS_US * 1000 + 999, "ns", TS_US),
    ],
    ids=["s", "ms", "us", "ns", "float_s", "text_s", "conf_s", "conf_ms", "conf_us", "conf_ns"],
)
def test_epoch_units(ts, unit, expected):
    readings, dead_letters = decode(reading(ts=ts), ts_unit=unit)

    assert dead_letters == []
    assert readings[0].ts_us == expected


@pytest.mark.parametrize("unit", ["auto", "ns"])
def test_nanoseconds_keep_digits(unit):
    readings, _ = decode(b'{"device_id":"d","metric":"m","value":1,"ts":1714564800123456789}', ts_unit=unit)

    assert readings[0].ts_us == 1714564800123456


def test_nanoseconds_as_text_keep_digits():
    readings, _ = decode(reading(ts="1714564800123456789"))

    assert readings[0].ts_us == 1714564800123456


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("2024-05-01T12:00:00Z", datetime(2024, 5, 1, 12, tzinfo=timezone.utc)),
        ("2024-05-01T12:00:00.25Z", datetime(2024, 5, 1, 12, 0, 0, 250_000, tzinfo=timezone.utc)),
        (
            "2024-05-01T14:00:30.5+02:00",
            datetime(2024, 5, 1, 14, 0, 30, 500_000, tzinfo=timezone(timedelta(hours=2))),
        ),
        ("2024-05-01T07:00:00-05:00", datetime(2024, 5, 1, 7, tzinfo=timezone(timedelta(hours=-5)))),
    ],
    ids=["z", "z_fraction", "plus_offset", "minus_offset"],
)
def test_iso_with_zone(text, moment):
    readings, dead_letters = decode(reading(ts=text), timezone="Europe/Berlin")

    assert dead_letters == []
    assert readings[0].ts_us == to_epoch_us(moment)


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("2024-05-01T13:30:00", datetime(2024, 5, 1, 13, 30)),
        ("2024-01-15T09:00:00.125", datetime(2024, 1, 15, 9, 0, 0, 125_000)),
    ],
    ids=["summer", "winter"],
)
def test_iso_without_zone(text, moment):
    berlin = ZoneInfo("Europe/Berlin")

    readings, dead_letters = decode(reading(ts=text), timezone="Europe/Berlin")

    assert dead_letters == []
    assert readings[0].ts_us == to_epoch_us(moment.replace(tzinfo=berlin))


def test_iso_nine_digits_truncated():
    readings, _ = decode(reading(ts="2024-05-01T12:00:00.123456789Z"))

    assert readings[0].ts_us == TS_US + 123_456


def test_missing_timestamp_receive_time():
    document = reading()
    del document["ts"]

    readings, dead_letters = decode(document, missing_timestamp="receive_time")

    assert dead_letters == []
    assert readings[0].ts_us == RECEIVED_US
    assert readings[0].marks == ("receive_time",)


def test_payload_timestamp_not_marked():
    readings, _ = decode(reading())

    assert readings[0].marks == ()


def test_max_future_boundary_accepted():
    max_future_us = int(CodecConfig().max_future * 1_000_000)

    readings, dead_letters = decode(reading(ts=RECEIVED_US + max_future_us), ts_unit="us")

    assert dead_letters == []
    assert readings[0].ts_us == RECEIVED_US + max_future_us


# Rejections: every case yields no reading and one dead letter with the reason code.

NO_TS = {"device_id": "d1", "metric": "temp", "value": 1}

BAD_INPUTS = [
    ("empty", b"", {}, TOPIC, "empty_payload"),
    ("too_large", encode(reading(note="x" * 100)), {"max_payload_bytes": 64}, TOPIC, "payload_too_large"),
    ("bad_utf8", b'{"device_id": "\xff\xfe"}', {}, TOPIC, "invalid_utf8"),
    ("truncated_json", b'{"device_id": ', {}, TOPIC, "invalid_json"),
    ("trailing_comma", b"[1, 2,]", {}, TOPIC, "invalid_json"),
    ("whitespace", b"   ", {}, TOPIC, "invalid_json"),
    ("top_string", b'"hello"', {}, TOPIC, "unsupported_shape"),
    ("empty_array", b"[]", {}, TOPIC, "unsupported_shape"),
    ("bare_number_no_pattern", b"21.5", {}, TOPIC, "unsupported_shape"),
    ("top_null", b"null", {}, TOPIC, "unsupported_shape"),
    ("nested_array", b"[[1]]", {}, TOPIC, "unsupported_shape"),
    ("no_device", encode({"metric": "temp", "ts": TS_S, "value": 1}), {}, TOPIC, "missing_field"),
    ("no_metric", encode({"device_id": "d1", "ts": TS_S, "value": 1}), {}, TOPIC, "missing_field"),
    ("empty_metrics", encode({"device_id": "d1", "ts": TS_S, "metrics": {}}), {}, TOPIC, "missing_field"),
    ("no_value", encode({"device_id": "d1", "ts": TS_S, "unit": "C"}), {}, TOPIC, "missing_field"),
    ("device_bool", encode(reading(device_id=True)), {}, TOPIC, "invalid_field"),
    ("device_empty", encode(reading(device_id="")), {}, TOPIC, "invalid_field"),
    ("device_list", encode(reading(device_id=["d1"])), {}, TOPIC, "invalid_field"),
    ("metric_object", encode(reading(metric={"name": "temp"})), {}, TOPIC, "invalid_field"),
    ("value_string", encode(reading(value="21.5")), {}, TOPIC, "non_numeric_value"),
    ("value_null", encode(reading(value=None)), {}, TOPIC, "non_numeric_value"),
    ("value_object", encode(reading(value={"v": 1})), {}, TOPIC, "non_numeric_value"),
    ("value_nan", b'{"device_id":"d","metric":"m","ts":1714564800,"value":NaN}', {}, TOPIC, "non_finite_value"),
    ("value_inf", b'{"device_id":"d","metric":"m","ts":1714564800,"value":Infinity}', {}, TOPIC, "non_finite_value"),
    ("value_ninf", b'{"device_id":"d","metric":"m","ts":1714564800,"value":-Infinity}', {}, TOPIC, "non_finite_value"),
    ("value_1e400", b'{"device_id":"d","metric":"m","ts":1714564800,"value":1e400}', {}, TOPIC, "non_finite_value"),
    (
        "value_huge_int",
        b'{"device_id":"d","metric":"m","ts":1714564800,"value":1' + b"0" * 400 + b"}",
        {},
        TOPIC,
        "non_finite_value",
    ),
    ("string_abc", encode(reading(value="abc")), {"numbers_as_strings": True}, TOPIC, "non_numeric_value"),
    ("string_nan", encode(reading(value="NaN")), {"numbers_as_strings": True}, TOPIC, "non_finite_value"),
    ("string_inf", encode(reading(value="-inf")), {"numbers_as_strings": True}, TOPIC, "non_finite_value"),
    ("no_ts", encode(NO_TS), {}, TOPIC, "missing_timestamp"),
    ("null_ts", encode(reading(ts=None)), {}, TOPIC, "missing_timestamp"),
    ("bare_number_reject", b"21.5", {"topic_pattern": PATTERN}, TOPIC, "missing_timestamp"),
    ("ts_word", encode(reading(ts="yesterday")), {}, TOPIC, "invalid_timestamp"),
    ("ts_bool", encode(reading(ts=True)), {}, TOPIC, "invalid_timestamp"),
    ("ts_object", encode(reading(ts={"s": TS_S})), {}, TOPIC, "invalid_timestamp"),
    ("ts_month_13", encode(reading(ts="2024-13-01T00:00:00Z")), {}, TOPIC, "invalid_timestamp"),
    ("ts_nan", b'{"device_id":"d","metric":"m","value":1,"ts":NaN}', {}, TOPIC, "invalid_timestamp"),
    ("ts_inf", b'{"device_id":"d","metric":"m","value":1,"ts":1e400}', {}, TOPIC, "invalid_timestamp"),
    ("ts_1999", encode(reading(ts=946684799)), {}, TOPIC, "timestamp_out_of_range"),
    ("ts_negative", encode(reading(ts=-5)), {}, TOPIC, "timestamp_out_of_range"),
    (
        "ts_before_custom_min",
        encode(reading(ts=TS_S - 1)),
        {"min_timestamp": datetime(2024, 5, 1, 12, tzinfo=timezone.utc)},
        TOPIC,
        "timestamp_out_of_range",
    ),
    ("ts_future", encode(reading(ts=RECEIVED_US // 1_000_000 + 3601)), {}, TOPIC, "timestamp_out_of_range"),
    (
        "ts_future_custom",
        encode(reading(ts=RECEIVED_US // 1_000_000 + 11)),
        {"max_future": "10s"},
        TOPIC,
        "timestamp_out_of_range",
    ),
    ("ms_as_seconds", encode(reading(ts=TS_S * 1000)), {"ts_unit": "s"}, TOPIC, "timestamp_out_of_range"),
    ("topic_short", encode(reading()), {"topic_pattern": PATTERN}, "sensors/site1/dev1", "topic_mismatch"),
    ("topic_literal", encode(reading()), {"topic_pattern": PATTERN}, "devices/site1/dev1/temp", "topic_mismatch"),
]


@pytest.mark.parametrize(
    ("payload", "options", "topic", "reason"),
    [case[1:] for case in BAD_INPUTS],
    ids=[case[0] for case in BAD_INPUTS],
)
def test_bad_input_reason(payload, options, topic, reason):
    readings, dead_letters = decode(payload, topic, **options)

    assert readings == []
    assert len(dead_letters) == 1
    assert dead_letters[0].reason == reason


def test_dead_letter_fields():
    payload = b'{"device_id": '

    _, dead_letters = decode(payload)

    letter = dead_letters[0]
    assert letter.raw == payload
    assert letter.raw_size == len(payload)
    assert letter.source == TOPIC
    assert letter.received_us == RECEIVED_US
    assert letter.detail.startswith("invalid JSON")


def test_array_one_bad_element():
    document = [reading(device_id="a"), {"metric": "temp", "ts": TS_S, "value": 1}, reading(device_id="c")]

    readings, dead_letters = decode(document)

    assert sorted(r.device_id for r in readings) == ["a", "c"]
    assert len(dead_letters) == 1
    assert dead_letters[0].reason == "missing_field"
    assert dead_letters[0].detail.startswith("element 1: ")
    assert json.loads(dead_letters[0].raw) == document[1]


def test_multi_metric_one_bad():
    document = {"device_id": "d1", "ts": TS_S, "temp": 21.5, "rh": "high", "co2": 400}

    readings, dead_letters = decode(document)

    assert sorted((r.metric, r.value) for r in readings) == [("co2", 400.0), ("temp", 21.5)]
    assert len(dead_letters) == 1
    assert dead_letters[0].reason == "non_numeric_value"
    assert "'rh'" in dead_letters[0].detail
    assert json.loads(dead_letters[0].raw) == {"rh": "high"}


def test_dead_letter_raw_truncated():
    payload = b"{" + b"x" * 99

    _, dead_letters = decode(payload, raw_bytes=10)

    assert dead_letters[0].raw == payload[:10]
    assert dead_letters[0].raw_size == 100


def test_element_dead_letter_truncated():
    bad = {"device_id": "d1", "metric": "temp", "ts": TS_S, "value": "x" * 50}
    full = json.dumps(bad).encode()

    _, dead_letters = decode([reading(), bad], raw_bytes=8)

    assert len(dead_letters) == 1
    assert dead_letters[0].raw == full[:8]
    assert dead_letters[0].raw_size == len(full)


# Edge cases that once broke: each test states the correct behaviour.


def test_value_over_int_digit_limit():
    payload = b'{"device_id":"d","metric":"m","ts":1714564800,"value":1' + b"0" * 5000 + b"}"

    _, dead_letters = decode(payload)

    assert dead_letters[0].reason == "non_finite_value"


def test_ts_text_over_int_digit_limit():
    _, dead_letters = decode(reading(ts="1" * 5000))

    assert dead_letters[0].reason == "invalid_timestamp"


@pytest.mark.parametrize(("field", "attribute"), [("id", "msg_id"), ("site", "site")])
def test_nan_text_field_repr(field, attribute):
    payload = b'{"device_id":"d","metric":"m","ts":1714564800,"value":1,"%s":NaN}' % field.encode()

    readings, _ = decode(payload)

    assert "object at 0x" not in getattr(readings[0], attribute)


def test_dotted_field_paths():
    document = {"device": {"id": "d7", "site": "roof"}, "ts": 1714564800, "temperature": 21.5}

    readings, dead_letters = decode(document, device_id_field="device.id", site_field="device.site")

    assert dead_letters == []
    assert [(r.device_id, r.site, r.metric, r.value) for r in readings] == [("d7", "roof", "temperature", 21.5)]


def test_flatten_nested_metrics():
    document = {"device_id": "d1", "ts": 1714564800, "env": {"rh": 40, "air": {"co2": 415}}, "temp": 21.5}

    readings, dead_letters = decode(document, flatten_separator=".")

    assert dead_letters == []
    assert sorted((r.metric, r.value) for r in readings) == [("env.air.co2", 415.0), ("env.rh", 40.0), ("temp", 21.5)]


def test_nested_metric_without_flatten():
    document = {"device_id": "d1", "ts": 1714564800, "env": {"rh": 40}, "temp": 21.5}

    readings, dead_letters = decode(document)

    assert [(r.metric, r.value) for r in readings] == [("temp", 21.5)]
    assert [letter.reason for letter in dead_letters] == ["non_numeric_value"]


def test_root_path_envelope():
    document = {"gateway": "g1", "data": {"readings": [{"device_id": "d1", "metric": "m", "ts": 1714564800, "value": 1}]}}

    readings, dead_letters = decode(document, root_path="data.readings")

    assert dead_letters == []
    assert [(r.device_id, r.value) for r in readings] == [("d1", 1.0)]


def test_root_path_missing():
    readings, dead_letters = decode({"data": {}}, root_path="data.readings")

    assert readings == []
    assert [letter.reason for letter in dead_letters] == ["missing_field"]
    assert "data.readings" in dead_letters[0].detail


def test_payload_id_scoped_by_device():
    documents = [reading(device_id="a", id=1), reading(device_id="b", id=1)]

    readings, _ = decode(documents)

    assert [r.msg_id for r in readings] == ["a:1", "b:1"]


@pytest.mark.parametrize("field", ["device_id", "metric", "site", "unit", "id"])
def test_unpaired_surrogate_rejected(field):
    payload = json.dumps(reading()).replace('"ts"', f'"{field}": "\\ud800", "ts"', 1).encode()
    if field in ("device_id", "metric"):
        document = reading()
        document[field] = "PLACEHOLDER"
        payload = json.dumps(document).replace("PLACEHOLDER", "\\ud800").encode()

    readings, dead_letters = decode(payload)

    assert readings == []
    assert [letter.reason for letter in dead_letters] == ["invalid_field"]


def test_overlong_device_id_rejected():
    readings, dead_letters = decode(reading(device_id="d" * 257))

    assert readings == []
    assert [letter.reason for letter in dead_letters] == ["invalid_field"]


def test_empty_topic_segment_rejected():
    readings, dead_letters = decode(b'{"ts": 1714564800, "value": 1}', topic="sensors/lab//temp",
                                    topic_pattern="sensors/{site}/{device_id}/{metric}")

    assert readings == []
    assert [letter.reason for letter in dead_letters] == ["topic_mismatch"]
