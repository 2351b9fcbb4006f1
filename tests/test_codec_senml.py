"""Unit tests of the SenML codec: resolution by hand, JSON and CBOR alike, reason codes, RFC packs, fuzzing."""

from __future__ import annotations

import json
import math
import struct
from datetime import datetime, timezone
from decimal import Decimal
from fractions import Fraction

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from sparkiot.codecs.json import Decoded
from sparkiot.codecs.senml import CBOR_LABELS, SenmlCodec, SenmlSettings
from sparkiot.config import CodecConfig
from sparkiot.readings import MARK_RECEIVE_TIME, Reason, derive_msg_id

TOPIC = "sensors/lab"
T0 = 1714564800  # 2024-05-01T12:00:00Z
T0_US = T0 * 1_000_000
RECEIVED_US = T0_US + 60 * 1_000_000
ENCODINGS = ["json", "cbor"]
REASONS = {reason.value for reason in Reason}
INT_LABEL = {name: label for label, name in CBOR_LABELS.items()}


def to_cbor(pack: list) -> bytes:
    """Encode a pack written with text labels as CBOR SenML (integer labels; unknown labels stay text)."""
    return cbor2.dumps([{INT_LABEL.get(key, key): value for key, value in record.items()} for record in pack])


def encode(pack: object, encoding: str) -> bytes:
    if isinstance(pack, bytes):
        return pack
    return to_cbor(pack) if encoding == "cbor" else json.dumps(pack).encode()


def decode(pack: object, encoding: str = "json", topic: str = TOPIC, *, senml: dict | None = None, raw_bytes: int = 4096, **options) -> Decoded:
    """Decode ``pack`` (bytes, or a pack with text labels to encode) with a codec built from the options."""
    codec = SenmlCodec(CodecConfig(**options), SenmlSettings(**(senml or {})), encoding=encoding, dead_letter_raw_bytes=raw_bytes)
    return codec.decode(encode(pack, encoding), topic, RECEIVED_US)


def rows(readings) -> list[tuple]:
    return [(r.device_id, r.metric, r.ts_us, r.value, r.unit) for r in readings]


# Resolution, computed by hand; every pack is decoded from JSON and from CBOR.

GOOD_PACKS = [
    (
        "base_name_time_unit",
        [
            {"bn": "urn:dev:ow:10e2:", "bt": T0, "bu": "A", "n": "voltage", "u": "V", "v": 120.1},
            {"n": "current", "t": -5, "v": 1.2},
            {"n": "current", "t": 2.5, "v": 1.3},
        ],
        [
            ("urn:dev:ow:10e2", "voltage", T0_US, 120.1, "V"),
            ("urn:dev:ow:10e2", "current", T0_US - 5_000_000, 1.2, "A"),
            ("urn:dev:ow:10e2", "current", T0_US + 2_500_000, 1.3, "A"),
        ],
    ),
    (
        "relative_to_now",
        [{"bn": "dev1/", "n": "temp", "v": 21.5}, {"n": "temp", "t": -10, "v": 21}, {"n": "temp", "t": -0.25, "v": 20.5}],
        [
            ("dev1", "temp", RECEIVED_US, 21.5, None),
            ("dev1", "temp", RECEIVED_US - 10_000_000, 21.0, None),
            ("dev1", "temp", RECEIVED_US - 250_000, 20.5, None),
        ],
    ),
    (
        "base_value_and_sum",
        [
            {"bn": "meter7/", "bt": T0, "bv": 1000, "bs": 50000, "n": "power", "u": "W", "v": 5, "s": 25},
            {"n": "power", "u": "W", "t": 1, "v": -3},
        ],
        [
            ("meter7", "power", T0_US, 1005.0, "W"),
            ("meter7", "power_sum", T0_US, 50025.0, "W*s"),
            ("meter7", "power", T0_US + 1_000_000, 997.0, "W"),
            ("meter7", "power_sum", T0_US + 1_000_000, 50000.0, "W*s"),
        ],
    ),
    (
        "sum_without_value",
        [{"bn": "pump/", "bt": T0, "n": "energy", "u": "J", "s": 12.5}],
        [("pump", "energy_sum", T0_US, 12.5, "J*s")],
    ),
    (
        "base_name_switches",
        [
            {"bn": "roomA/", "bt": T0, "n": "temp", "u": "Cel", "v": 20},
            {"n": "rh", "u": "%RH", "v": 40},
            {"bn": "roomB/", "n": "temp", "u": "Cel", "v": 22},
            {"n": "rh", "u": "%RH", "v": 45},
        ],
        [
            ("roomA", "temp", T0_US, 20.0, "Cel"),
            ("roomA", "rh", T0_US, 40.0, "%RH"),
            ("roomB", "temp", T0_US, 22.0, "Cel"),
            ("roomB", "rh", T0_US, 45.0, "%RH"),
        ],
    ),
    (
        "base_unit_overridden",
        [{"bn": "x:", "bt": T0, "bu": "Cel", "n": "a", "v": 1}, {"n": "b", "u": "K", "v": 2}, {"n": "c", "v": 3}],
        [("x", "a", T0_US, 1.0, "Cel"), ("x", "b", T0_US, 2.0, "K"), ("x", "c", T0_US, 3.0, "Cel")],
    ),
    (
        "boolean_values",
        [{"bn": "door1/", "bt": T0, "n": "open", "vb": True}, {"n": "locked", "bv": 5, "vb": False}],
        [("door1", "open", T0_US, 1.0, None), ("door1", "locked", T0_US, 0.0, None)],
    ),
    (
        "base_only_record",
        [{"bn": "thermo9:", "bt": T0, "bu": "Cel"}, {"n": "setpoint", "v": 21}, {"n": "actual", "v": 20.5}],
        [("thermo9", "setpoint", T0_US, 21.0, "Cel"), ("thermo9", "actual", T0_US, 20.5, "Cel")],
    ),
    (
        "no_base_name_split",
        [{"n": "kitchen/temp", "t": T0, "u": "Cel", "v": 19.5}, {"n": "urn:dev:ow:99", "t": T0, "v": 1}],
        [("kitchen", "temp", T0_US, 19.5, "Cel"), ("urn:dev:ow:99", "value", T0_US, 1.0, None)],
    ),
    (
        "name_without_own_part",
        [{"bn": "urn:dev:ow:77", "bt": T0, "bu": "%RH", "v": 40}, {"t": 10, "v": 41}],
        [("urn:dev:ow:77", "value", T0_US, 40.0, "%RH"), ("urn:dev:ow:77", "value", T0_US + 10_000_000, 41.0, "%RH")],
    ),
    (
        "separator_in_name",
        [{"bn": "dev5", "bt": T0, "n": "/temp", "v": 1}, {"bn": "dev6", "n": "rh", "v": 2}],
        [("dev5", "temp", T0_US, 1.0, None), ("dev6", "rh", T0_US, 2.0, None)],
    ),
    (
        "fractional_base_time",
        [{"bn": "f/", "bt": T0 + 0.001, "n": "a", "v": 1}, {"n": "a", "t": -5, "v": 2}, {"n": "a", "t": 0.5, "v": 3}],
        [("f", "a", T0_US + 1_000, 1.0, None), ("f", "a", T0_US - 4_999_000, 2.0, None), ("f", "a", T0_US + 501_000, 3.0, None)],
    ),
    (
        "microsecond_time",
        [{"bn": "f/", "bt": 1714564800.123456, "n": "a", "t": 0.000001, "v": 1}],
        [("f", "a", T0_US + 123_457, 1.0, None)],
    ),
    (
        "unknown_labels_ignored",
        [{"bn": "u/", "bt": T0, "n": "a", "v": 1, "l": "[]", "foo": {"x": 1}, "ut": 60}],
        [("u", "a", T0_US, 1.0, None)],
    ),
    (
        "version_declared",
        [{"bver": 10, "bn": "v/", "bt": T0, "n": "a", "v": 1}, {"bver": 10, "n": "b", "v": 2}],
        [("v", "a", T0_US, 1.0, None), ("v", "b", T0_US, 2.0, None)],
    ),
    (
        "older_version",
        [{"bver": 5, "bn": "v/", "bt": T0, "n": "a", "v": 1}, {"n": "b", "v": 2}],
        [("v", "a", T0_US, 1.0, None), ("v", "b", T0_US, 2.0, None)],
    ),
]


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize(("pack", "expected"), [case[1:] for case in GOOD_PACKS], ids=[case[0] for case in GOOD_PACKS])
def test_resolution(pack, expected, encoding):
    readings, dead_letters = decode(pack, encoding)

    assert dead_letters == []
    assert rows(readings) == expected


@pytest.mark.parametrize(("pack", "expected"), [case[1:] for case in GOOD_PACKS], ids=[case[0] for case in GOOD_PACKS])
def test_cbor_equals_json(pack, expected):
    from_json = decode(pack, "json")
    from_cbor = decode(pack, "cbor")

    assert from_cbor.readings == from_json.readings
    assert len(from_cbor.readings) == len(expected)


def test_reading_fields():
    readings, _ = decode([{"bn": "d1/", "bt": T0, "n": "temp", "u": "Cel", "v": 21.5}])

    result = readings[0]
    assert result.msg_id == derive_msg_id("d1", "temp", T0_US, 21.5)
    assert result.ingest_us == RECEIVED_US
    assert result.source == TOPIC
    assert result.site is None
    assert result.marks == ()


def test_relative_time_marked():
    readings, _ = decode([{"bn": "d1/", "n": "a", "v": 1}, {"n": "b", "t": T0, "v": 2}])

    assert [r.marks for r in readings] == [(MARK_RECEIVE_TIME,), ()]


def test_sum_msg_id_differs():
    readings, _ = decode([{"bn": "m/", "bt": T0, "n": "p", "v": 7, "s": 7}])

    assert readings[0].msg_id != readings[1].msg_id
    assert readings[1].msg_id == derive_msg_id("m", "p_sum", T0_US, 7.0)


def test_same_record_same_msg_id():
    pack = [{"bn": "d/", "bt": T0, "n": "a", "v": 1}]

    assert decode(pack)[0][0].msg_id == decode(pack, "cbor")[0][0].msg_id


# Time: the 2**28 boundary between relative and absolute, and exact arithmetic.

WIDE = {"min_timestamp": datetime(1970, 1, 1, tzinfo=timezone.utc), "max_future": "3200d"}


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize(
    ("bt", "t", "expected"),
    [
        (None, 2**28, 2**28 * 1_000_000),
        (None, 2**28 - 1, RECEIVED_US + (2**28 - 1) * 1_000_000),
        (2**28, -1, RECEIVED_US + (2**28 - 1) * 1_000_000),
        (2**28 - 0.5, 0.5, 2**28 * 1_000_000),
        (None, -(2**40), None),
    ],
    ids=["absolute_at_limit", "relative_below_limit", "sum_below_limit", "float_sum_at_limit", "far_past"],
)
def test_relative_limit(bt, t, expected, encoding):
    record = {"n": "d/a", "v": 1, "t": t}
    if bt is not None:
        record["bt"] = bt

    readings, dead_letters = decode([record], encoding, **WIDE)

    if expected is None:
        assert [d.reason for d in dead_letters] == ["timestamp_out_of_range"]
    else:
        assert dead_letters == []
        assert readings[0].ts_us == expected


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_exact_time_sum(encoding):
    # 0.80914 s + 0.0373566 s = 0.8464966 s, which rounds to 846497 us; adding the doubles first gives 846496.
    readings, _ = decode([{"bn": "d/", "bt": 1714564800.80914, "n": "a", "t": 0.0373566, "v": 1}], encoding)

    assert readings[0].ts_us == T0_US + 846_497


def test_max_future_boundary():
    readings, dead_letters = decode([{"n": "d/a", "t": 300, "v": 1}])

    assert dead_letters == []
    assert readings[0].ts_us == RECEIVED_US + 300_000_000


def test_cbor_decimal_fraction():
    payload = cbor2.dumps([{-2: "d/", -3: Decimal("1714564800.25"), 0: "a", 2: Decimal("21.125")}])

    readings, dead_letters = decode(payload, "cbor")

    assert dead_letters == []
    assert (readings[0].ts_us, readings[0].value) == (T0_US + 250_000, 21.125)


def test_cbor_half_float_and_bignum():
    payload = cbor2.dumps([{-2: "d/", -3: T0, 0: "a", 2: 1.5}, {0: "b", 2: 2**70}], canonical=True)
    assert b"\xf9\x3e\x00" in payload
    assert b"\xc2" in payload

    readings, _ = decode(payload, "cbor")

    assert [r.value for r in readings] == [1.5, float(2**70)]


def test_cbor_indefinite_array():
    items = b"".join(cbor2.dumps({-2: "d/", -3: T0, 0: name, 2: 1}) for name in ("a", "b"))

    readings, dead_letters = decode(b"\x9f" + items + b"\xff", "cbor")

    assert dead_letters == []
    assert [r.metric for r in readings] == ["a", "b"]


def test_cbor_self_described():
    readings, dead_letters = decode(b"\xd9\xd9\xf7" + to_cbor([{"bn": "d/", "bt": T0, "n": "a", "v": 4}]), "cbor")

    assert dead_letters == []
    assert rows(readings) == [("d", "a", T0_US, 4.0, None)]


def test_cbor_bool_key_is_no_label():
    payload = cbor2.dumps([{0: "d/a", 6: T0, 2: 1.0, True: "Cel"}])

    readings, _ = decode(payload, "cbor")

    assert readings[0].unit is None


def test_cbor_large_pack():
    pack = [{"bn": "big/", "bt": T0}] + [{"n": f"m{index}", "t": -index, "v": index / 4} for index in range(400)]
    payload = to_cbor(pack)
    assert len(payload) > 4096

    from_cbor = decode(payload, "cbor")

    assert from_cbor.dead_letters == []
    assert from_cbor.readings == decode(pack).readings
    assert from_cbor.readings[-1].value == 399 / 4


# Device id and metric settings.

TOPIC_PATTERN = "sensors/{site}/{device_id}"


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize(
    ("pack", "metrics"),
    [
        ([{"bn": "urn:x:", "n": "temp", "v": 1}], ["temp"]),
        ([{"n": "temp", "v": 1}], ["temp"]),
        ([{"n": "box/rh", "v": 1}], ["rh"]),
        ([{"bn": "urn:x", "v": 1}], ["value"]),
    ],
    ids=["base_name", "bare_name", "split_name", "no_own_name"],
)
def test_device_from_topic(pack, metrics, encoding):
    readings, dead_letters = decode(pack, encoding, "sensors/north/dev42", senml={"device_id_from": "topic"}, topic_pattern=TOPIC_PATTERN)

    assert dead_letters == []
    assert [(r.device_id, r.metric, r.site) for r in readings] == [("dev42", metric, "north") for metric in metrics]


def test_site_from_topic_base_name_mode():
    readings, _ = decode([{"bn": "d9/", "n": "a", "v": 1}], topic="sensors/north/ignored", topic_pattern=TOPIC_PATTERN)

    assert (readings[0].device_id, readings[0].site) == ("d9", "north")


def test_topic_metric_for_unnamed_record():
    readings, _ = decode([{"bn": "urn:dev:ow:5", "v": 3}], topic="s/dev/co2", topic_pattern="s/{_}/{metric}")

    assert (readings[0].device_id, readings[0].metric) == ("urn:dev:ow:5", "co2")


def test_metric_from_unit():
    pack = [{"bn": "urn:dev:ow:77", "bt": T0, "bu": "%RH", "v": 40}, {"u": "lat", "v": 60.1}, {"u": "lon", "v": 24.3}]

    with_unit = decode(pack, senml={"metric_from_unit": True})
    without = decode(pack)

    assert [r.metric for r in with_unit.readings] == ["%RH", "lat", "lon"]
    assert [r.metric for r in without.readings] == ["value", "value", "value"]


def test_custom_names():
    pack = [{"bn": "m/", "bt": T0, "v": 1, "s": 2}, {"n": "a:b", "v": 3}]

    readings, _ = decode(pack, senml={"default_metric": "reading", "sum_suffix": ".total"})

    assert [r.metric for r in readings] == ["reading", "reading.total", "a:b"]


def test_custom_separators():
    readings, _ = decode([{"n": "urn:dev:ow:99", "t": T0, "v": 1}, {"n": "a.b/c", "t": T0, "v": 2}], senml={"name_separators": ":"})

    assert [(r.device_id, r.metric) for r in readings] == [("urn:dev:ow", "99"), ("a.b/c", "value")]


def test_settings_validation():
    with pytest.raises(ValidationError, match="separators"):
        SenmlSettings(name_separators="#")
    with pytest.raises(ValidationError, match="empty"):
        SenmlSettings(sum_suffix="")
    with pytest.raises(ValidationError, match="Extra inputs"):
        SenmlSettings(device_from="topic")
    with pytest.raises(ValidationError, match="literal_error"):
        SenmlSettings(device_id_from="payload")
    with pytest.raises(ValidationError, match="frozen"):
        SenmlSettings().default_metric = "x"


def test_topic_mode_needs_pattern():
    with pytest.raises(ValueError, match="device_id"):
        SenmlCodec(CodecConfig(topic_pattern="sensors/{site}"), SenmlSettings(device_id_from="topic"))


def test_unknown_encoding():
    with pytest.raises(ValueError, match="encoding"):
        SenmlCodec(CodecConfig(), encoding="xml")


# Rejections: each case yields no reading and exactly one dead letter with the reason code.

RECORD = {"bn": "d/", "bt": T0, "n": "a", "v": 1}


def record(**fields) -> list:
    """Return a one-record pack: a valid record with ``fields`` replaced (None removes a field)."""
    changed = dict(RECORD, **fields)
    return [{key: value for key, value in changed.items() if value is not None}]


# A valid record whose last member replaces one field with raw JSON text (the last of two equal labels wins).
NUMBER_HOLES = b'[{"bn":"d/","bt":1714564800,"n":"a","v":1,"%s":%s}]'

BOTH = [
    ("top_map", {"n": "a", "v": 1}, {}, "invalid_senml"),
    ("top_number", 5, {}, "invalid_senml"),
    ("empty_pack", [], {}, "invalid_senml"),
    ("record_number", [1], {}, "invalid_senml"),
    ("record_array", [[RECORD]], {}, "invalid_senml"),
    ("empty_record", [{}], {}, "invalid_senml"),
    ("v_text", record(v="1"), {}, "non_numeric_value"),
    ("v_array", record(v=[]), {}, "non_numeric_value"),
    ("v_bool", record(v=True), {}, "non_numeric_value"),
    ("v_huge", record(v=1e308, bv=1e308), {}, "non_finite_value"),
    ("s_text", record(s="3"), {}, "non_numeric_value"),
    ("bv_text", record(bv="3"), {}, "non_numeric_value"),
    ("bs_map", record(bs={"a": 1}), {}, "non_numeric_value"),
    ("t_text", record(t="noon"), {}, "invalid_timestamp"),
    ("bt_text", record(bt="2024-05-01T12:00:00Z"), {}, "invalid_timestamp"),
    ("t_bool", record(t=False), {}, "invalid_timestamp"),
    ("n_number", record(n=5), {}, "invalid_senml"),
    ("bn_number", record(bn=5), {}, "invalid_senml"),
    ("u_number", record(u=5), {}, "invalid_senml"),
    ("bu_bool", record(bu=True), {}, "invalid_senml"),
    ("ut_text", record(ut="1m"), {}, "invalid_senml"),
    ("name_space", record(n="a b"), {}, "invalid_senml"),
    ("name_degree", record(n="temp\u00b0C"), {}, "invalid_senml"),
    ("name_leading_dash", record(bn=None, n="-a"), {}, "invalid_senml"),
    ("base_name_leading_slash", record(bn="/d/"), {}, "invalid_senml"),
    ("no_name", record(bn=None, n=None), {}, "invalid_senml"),
    ("vb_text", record(v=None, vb="true"), {}, "invalid_senml"),
    ("vb_number", record(v=None, vb=1), {}, "invalid_senml"),
    ("vs_number", record(v=None, vs=1), {}, "invalid_senml"),
    ("two_values", record(vb=True), {}, "invalid_senml"),
    ("vs_string", record(v=None, vs="Machine Room"), {}, "unsupported_value_type"),
    ("no_value", record(v=None, u="Cel"), {}, "invalid_senml"),
    ("must_understand", record(foo_=1), {}, "invalid_senml"),
    ("version_newer", record(bver=11), {}, "invalid_senml"),
    ("version_zero", record(bver=0), {}, "invalid_senml"),
    ("version_text", record(bver="10"), {}, "invalid_senml"),
    ("version_float", record(bver=10.0), {}, "invalid_senml"),
    ("version_changes", [RECORD, dict(RECORD, bver=5)], {}, "invalid_senml"),
    ("before_2000", record(bt=946684799), {}, "timestamp_out_of_range"),
    ("before_custom_min", record(t=-1), {"min_timestamp": datetime(2024, 5, 1, 12, tzinfo=timezone.utc)}, "timestamp_out_of_range"),
    ("future_absolute", record(bt=T0 + 361), {}, "timestamp_out_of_range"),
    ("future_relative", record(bt=None, t=301), {}, "timestamp_out_of_range"),
    ("future_custom", record(bt=None, t=11), {"max_future": "10s"}, "timestamp_out_of_range"),
    ("below_limit_is_relative", record(bt=2**28, t=-(2**27)), {}, "timestamp_out_of_range"),
    ("too_large", record(n="a" * 100), {"max_payload_bytes": 64}, "payload_too_large"),
]

JSON_ONLY = [
    ("empty", b"", {}, "empty_payload"),
    ("bad_utf8", b'[{"n":"\xff"}]', {}, "invalid_utf8"),
    ("truncated", b'[{"n":"a","v":', {}, "invalid_json"),
    ("trailing_comma", b'[{"n":"a","v":1},]', {}, "invalid_json"),
    ("whitespace", b"  ", {}, "invalid_json"),
    ("v_null", NUMBER_HOLES % (b"v", b"null"), {}, "non_numeric_value"),
    ("v_nan", NUMBER_HOLES % (b"v", b"NaN"), {}, "non_finite_value"),
    ("v_infinity", NUMBER_HOLES % (b"v", b"Infinity"), {}, "non_finite_value"),
    ("v_minus_infinity", NUMBER_HOLES % (b"v", b"-Infinity"), {}, "non_finite_value"),
    ("v_1e400", NUMBER_HOLES % (b"v", b"1e400"), {}, "non_finite_value"),
    ("v_many_digits", NUMBER_HOLES % (b"v", b"1" + b"0" * 5000), {}, "non_finite_value"),
    ("s_nan", NUMBER_HOLES % (b"s", b"NaN"), {}, "non_finite_value"),
    ("t_nan", NUMBER_HOLES % (b"t", b"NaN"), {}, "invalid_timestamp"),
    ("t_null", NUMBER_HOLES % (b"t", b"null"), {}, "invalid_timestamp"),
    ("t_1e400", NUMBER_HOLES % (b"t", b"1e400"), {}, "invalid_timestamp"),
    ("bv_nan", b'[{"bn":"d/","bt":1714564800,"bv":NaN,"n":"a","v":1}]', {}, "non_finite_value"),
    ("vd_text", record(v=None, vd="aGkgCg"), {}, "unsupported_value_type"),
    ("vd_bytes_as_number", record(v=None, vd=5), {}, "invalid_senml"),
]

CBOR_ONLY = [
    ("empty", b"", {}, "empty_payload"),
    ("break_byte", b"\xff", {}, "invalid_cbor"),
    ("truncated", b"\x81\xa2\x00\x61a", {}, "invalid_cbor"),
    ("trailing_bytes", to_cbor(record()) + b"\x00", {}, "invalid_cbor"),
    ("duplicate_label", b"\x81\xa3\x00\x63d/a\x02\x01\x02\x02", {}, "invalid_cbor"),
    ("bad_utf8_text", b"\x81\xa2\x00\x62\xff\xfe\x02\x01", {}, "invalid_cbor"),
    ("too_deep", b"\x81" * 20 + b"\x01", {}, "invalid_cbor"),
    ("text_labels", cbor2.dumps([{"n": "d/a", "v": 1}]), {}, "invalid_senml"),
    ("v_nan", cbor2.dumps([{0: "d/a", 6: T0, 2: math.nan}]), {}, "non_finite_value"),
    ("v_infinity", cbor2.dumps([{0: "d/a", 6: T0, 2: -math.inf}]), {}, "non_finite_value"),
    ("v_undefined", cbor2.dumps([{0: "d/a", 6: T0, 2: cbor2.undefined}]), {}, "non_numeric_value"),
    ("v_rational", cbor2.dumps([{0: "d/a", 6: T0, 2: Fraction(1, 3)}]), {}, "non_numeric_value"),
    ("v_bignum_overflow", cbor2.dumps([{0: "d/a", 6: T0, 2: 10**400}]), {}, "non_finite_value"),
    ("t_datetime", cbor2.dumps([{0: "d/a", 6: datetime(2024, 5, 1, tzinfo=timezone.utc), 2: 1}]), {}, "invalid_timestamp"),
    ("t_decimal_huge", cbor2.dumps([{0: "d/a", 6: Decimal("1E+1000"), 2: 1}]), {}, "timestamp_out_of_range"),
    ("t_bignum", cbor2.dumps([{0: "d/a", 6: 10**400, 2: 1}]), {}, "timestamp_out_of_range"),
    ("vd_bytes", cbor2.dumps([{0: "d/a", 6: T0, 8: b"hi\n"}]), {}, "unsupported_value_type"),
    ("vd_text", cbor2.dumps([{0: "d/a", 6: T0, 8: "aGkgCg"}]), {}, "invalid_senml"),
    ("version_negative_label", cbor2.dumps([{-1: 11, 0: "d/a", 6: T0, 2: 1}]), {}, "invalid_senml"),
    ("must_understand", cbor2.dumps([{0: "d/a", 6: T0, 2: 1, "x_": 0}]), {}, "invalid_senml"),
]

TABLE = (
    [(f"{name}-{encoding}", pack, encoding, options, reason) for name, pack, options, reason in BOTH for encoding in ENCODINGS]
    + [(f"{name}-json", pack, "json", options, reason) for name, pack, options, reason in JSON_ONLY]
    + [(f"{name}-cbor", pack, "cbor", options, reason) for name, pack, options, reason in CBOR_ONLY]
)


def _encode_case(pack, encoding):
    if isinstance(pack, bytes):
        return pack
    if encoding == "cbor":
        if isinstance(pack, list) and all(isinstance(item, dict) for item in pack):
            return to_cbor(pack)
        return cbor2.dumps(pack)
    return json.dumps(pack).encode()


@pytest.mark.parametrize(("pack", "encoding", "options", "reason"), [case[1:] for case in TABLE], ids=[case[0] for case in TABLE])
def test_bad_input_reason(pack, encoding, options, reason):
    readings, dead_letters = decode(_encode_case(pack, encoding), encoding, **options)

    assert readings == []
    assert [letter.reason for letter in dead_letters] == [reason]


def test_topic_mismatch():
    readings, dead_letters = decode(record(), topic="other/topic/x", topic_pattern=TOPIC_PATTERN)

    assert readings == []
    assert [d.reason for d in dead_letters] == ["topic_mismatch"]


def test_text_label_hint():
    _, dead_letters = decode(cbor2.dumps([{"bn": "d/", "n": "a", "v": 1}]), "cbor")

    assert "integer labels" in dead_letters[0].detail


def test_oversized_map_rejected():
    colliding = b"".join(cbor2.dumps(index * (2**61 - 1)) + b"\x00" for index in range(1, 2001))
    payload = b"\x81\xb9" + struct.pack(">H", 2000) + colliding

    readings, dead_letters = decode(payload, "cbor")

    assert readings == []
    assert [d.reason for d in dead_letters] == ["invalid_senml"]
    assert "2000 entries" in dead_letters[0].detail


def test_oversized_indefinite_map_rejected():
    entries = b"".join(cbor2.dumps(1000 + index) + b"\x00" for index in range(1200))
    payload = b"\x81\xbf" + entries + b"\xff"
    assert len(payload) > 4096

    _, dead_letters = decode(payload, "cbor")

    assert [d.reason for d in dead_letters] == ["invalid_senml"]
    assert "entries" in dead_letters[0].detail


def test_small_wide_record_accepted():
    extra = {f"x{index}": index for index in range(80)}
    payload = to_cbor([dict(RECORD, **extra)])
    assert len(payload) <= 4096

    readings, dead_letters = decode(payload, "cbor")

    assert dead_letters == []
    assert rows(readings) == [("d", "a", T0_US, 1.0, None)]


# Dead letters keep what the operator needs.


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_bad_record_keeps_others(encoding):
    pack = [RECORD, {"n": "b", "v": "high"}, {"n": "c", "v": 3}]

    readings, dead_letters = decode(pack, encoding)

    assert rows(readings) == [("d", "a", T0_US, 1.0, None), ("d", "c", T0_US, 3.0, None)]
    assert len(dead_letters) == 1
    letter = dead_letters[0]
    assert letter.reason == "non_numeric_value"
    assert letter.detail.startswith("record 1: ")
    loaded = cbor2.loads(letter.raw) if encoding == "cbor" else json.loads(letter.raw)
    assert loaded == ({0: "b", 2: "high"} if encoding == "cbor" else pack[1])
    assert letter.source == TOPIC
    assert letter.received_us == RECEIVED_US


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_malformed_base_spoils_later(encoding):
    pack = [RECORD, {"bt": "noon", "n": "b", "v": 2}, {"n": "c", "v": 3}, {"bt": T0 - 1, "n": "e", "v": 5}]

    readings, dead_letters = decode(pack, encoding)

    assert rows(readings) == [("d", "a", T0_US, 1.0, None), ("d", "e", T0_US - 1_000_000, 5.0, None)]
    assert [d.reason for d in dead_letters] == ["invalid_timestamp", "invalid_timestamp"]
    assert dead_letters[0].detail.startswith("record 1: ")
    assert dead_letters[1].detail.startswith("record 2: ")
    assert "record 1" in dead_letters[1].detail.removeprefix("record 2: ")


def test_spoiled_unit_only_where_used():
    pack = [{"bn": "d/", "bt": T0, "bu": 7, "n": "a", "u": "V", "v": 1}, {"n": "b", "u": "A", "v": 2}, {"n": "c", "v": 3}]

    readings, dead_letters = decode(pack)

    assert rows(readings) == [("d", "b", T0_US, 2.0, "A")]
    assert [d.detail[:9] for d in dead_letters] == ["record 0:", "record 2:"]


def test_bad_record_base_fields_carry():
    pack = [{"bn": "d/", "bt": T0, "n": "a", "v": "x"}, {"n": "b", "v": 2}]

    readings, dead_letters = decode(pack)

    assert rows(readings) == [("d", "b", T0_US, 2.0, None)]
    assert [d.reason for d in dead_letters] == ["non_numeric_value"]


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_string_value_keeps_sum(encoding):
    readings, dead_letters = decode([{"bn": "d/", "bt": T0, "n": "label", "u": "W", "vs": "idle", "s": 5}], encoding)

    assert rows(readings) == [("d", "label_sum", T0_US, 5.0, "W*s")]
    assert [d.reason for d in dead_letters] == ["unsupported_value_type"]


def test_pack_dead_letter_raw():
    payload = b'{"n": "a", "v": 1}'

    _, dead_letters = decode(payload)

    letter = dead_letters[0]
    assert (letter.raw, letter.raw_size) == (payload, len(payload))
    assert letter.detail.startswith("a SenML pack is an array")


def test_dead_letter_raw_truncated():
    pack = [RECORD, {"n": "b", "v": "x" * 50}]
    full = json.dumps(pack[1]).encode()

    _, dead_letters = decode(pack, raw_bytes=8)

    assert dead_letters[0].raw == full[:8]
    assert dead_letters[0].raw_size == len(full)


def test_version_detail():
    _, dead_letters = decode(record(bver=11))

    assert "newer than 10" in dead_letters[0].detail


# The RFC's own example packs: each resolved record must match a reading, JSON and CBOR alike.


@pytest.fixture(scope="module")
def rfc_examples(shared_data):
    folder = shared_data / "senml-rfc8428"
    if not folder.is_dir():
        pytest.skip(f"no RFC 8428 example packs in {folder}")
    return folder


def _example_names(folder) -> list[str]:
    return sorted(path.name.removesuffix(".gen.resolved.json") for path in folder.glob("ex*.gen.resolved.json"))


def _resolved_times(pack: list) -> list[Fraction]:
    """Base time plus time of every numeric record, in seconds, exactly, as the RFC adds them."""
    base, times = Fraction(0), []
    for item in pack:
        if "bt" in item:
            base = Fraction(item["bt"])
        if "v" in item or "vb" in item:
            times.append(base + Fraction(item.get("t", 0)))
    return times


def _split_matches(name: str, device_id: str, metric: str) -> bool:
    if metric == "value" and name == device_id:
        return True
    return name.startswith(device_id) and name.endswith(metric) and name[len(device_id) : len(name) - len(metric)] in ("", "-", ":", ".", "/", "_")


def _check_against_resolved(decoded: Decoded, pack: list, resolved: list) -> None:
    numeric = [item for item in resolved if "v" in item or "vb" in item]
    not_numbers = [item for item in pack if "vs" in item or "vd" in item]
    assert len(decoded.readings) == len(numeric)
    assert [d.reason for d in decoded.dead_letters] == ["unsupported_value_type"] * len(not_numbers)
    for reading, expected, seconds in zip(decoded.readings, numeric, _resolved_times(pack)):
        assert _split_matches(expected["n"], reading.device_id, reading.metric), (expected["n"], reading)
        assert reading.value == (float(expected["v"]) if "v" in expected else float(expected["vb"]))
        assert reading.unit == expected.get("u")
        if seconds < 2**28:  # "now": the resolved file contains the time it was generated
            assert reading.ts_us == RECEIVED_US + round(seconds * 1_000_000)
            assert reading.marks == (MARK_RECEIVE_TIME,)
        else:
            assert reading.ts_us == round(Fraction(expected["t"]) * 1_000_000)
            assert reading.marks == ()


def test_rfc_examples(rfc_examples):
    names = _example_names(rfc_examples)
    assert len(names) >= 10
    for name in names:
        pack = json.loads((rfc_examples / f"{name}.json").read_text())
        resolved = json.loads((rfc_examples / f"{name}.gen.resolved.json").read_text())

        decoded = decode((rfc_examples / f"{name}.json").read_bytes())

        _check_against_resolved(decoded, pack, resolved)


def test_rfc_examples_cbor(rfc_examples):
    files = sorted(rfc_examples.glob("ex*.cbor"))
    if not files:
        pytest.skip(f"no CBOR example packs in {rfc_examples}")
    for path in files:
        name = path.name.split(".")[0]
        pack = json.loads((rfc_examples / f"{name}.json").read_text())
        resolved = json.loads((rfc_examples / f"{name}.gen.resolved.json").read_text())

        from_cbor = decode(path.read_bytes(), "cbor")

        assert from_cbor.readings == decode((rfc_examples / f"{name}.json").read_bytes()).readings
        _check_against_resolved(from_cbor, pack, resolved)


def test_rfc_examples_reencoded(rfc_examples):
    for name in _example_names(rfc_examples):
        pack = json.loads((rfc_examples / f"{name}.json").read_text())

        assert decode(pack, "cbor").readings == decode(pack).readings


def test_rfc_example_devices(rfc_examples):
    decoded = decode((rfc_examples / "ex6.json").read_bytes())

    assert [(r.device_id, r.metric) for r in decoded.readings] == [
        ("2001:db8::2", "temperature"),
        ("2001:db8::2", "humidity"),
        ("2001:db8::1", "temperature"),
        ("2001:db8::1", "humidity"),
    ]


# Fuzzing: whatever the bytes or the document, decode returns readings and dead letters.

MIN_US = int(CodecConfig().min_timestamp.timestamp()) * 1_000_000
MAX_US = RECEIVED_US + int(CodecConfig().max_future * 1_000_000)
CODECS = {encoding: SenmlCodec(CodecConfig(), encoding=encoding, dead_letter_raw_bytes=64) for encoding in ENCODINGS}


def _check_decoded(decoded: object) -> None:
    assert isinstance(decoded, Decoded)
    for reading in decoded.readings:
        assert math.isfinite(reading.value)
        assert MIN_US <= reading.ts_us <= MAX_US
        assert reading.device_id and reading.metric
        assert reading.msg_id == derive_msg_id(reading.device_id, reading.metric, reading.ts_us, reading.value)
    for letter in decoded.dead_letters:
        assert letter.reason in REASONS
        assert letter.detail
        assert len(letter.raw) <= 64
        assert letter.raw_size >= len(letter.raw)


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from([T0, -5, 0, 2**28, 2**28 - 1, 0.5, "d/", "temp", "a b", "Cel", "x_"])
)
_JSON = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=20)
_CBOR = st.recursive(
    _SCALARS | st.binary(max_size=8) | st.decimals(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.integers(-8, 10) | st.text(max_size=4), inner, max_size=4),
    max_leaves=20,
)
_LABELS = st.sampled_from([*INT_LABEL, "l", "foo_"])
_RECORD = st.dictionaries(_LABELS, _SCALARS, max_size=7)
_PACK = st.lists(_RECORD, max_size=6)


@pytest.mark.parametrize("encoding", ENCODINGS)
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.binary(max_size=200))
def test_fuzz_bytes(payload, encoding):
    _check_decoded(CODECS[encoding].decode(payload, TOPIC, RECEIVED_US))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=_JSON)
def test_fuzz_json_document(document):
    _check_decoded(CODECS["json"].decode(json.dumps(document).encode(), TOPIC, RECEIVED_US))


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(document=_CBOR)
def test_fuzz_cbor_document(document):
    _check_decoded(CODECS["cbor"].decode(cbor2.dumps(document), TOPIC, RECEIVED_US))


@pytest.mark.parametrize("encoding", ENCODINGS)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pack=_PACK)
def test_fuzz_senml_shaped(pack, encoding):
    payload = to_cbor(pack) if encoding == "cbor" else json.dumps(pack).encode()

    decoded = CODECS[encoding].decode(payload, TOPIC, RECEIVED_US)

    _check_decoded(decoded)
    if not pack:
        assert [d.reason for d in decoded.dead_letters] == ["invalid_senml"]
