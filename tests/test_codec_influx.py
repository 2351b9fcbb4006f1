"""Unit tests of the InfluxDB line protocol codec: types, escaping, timestamps, mapping and rejections."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from sparkiot.codecs.influx import InfluxCodec, InfluxSettings, _LineError, _parse_fast, _parse_slow
from sparkiot.codecs.json import Decoded
from sparkiot.config import CodecConfig
from sparkiot.readings import Reading, Reason, derive_msg_id

TOPIC = "sensors/lab/dev9/influx"
PATTERN = "sensors/{site}/{device_id}/{_}"
TS_S = 1714564800  # 2024-05-01T12:00:00Z
TS_US = TS_S * 1_000_000
TS_NS = "1714564800000000000"
RECEIVED_US = TS_US + 60 * 1_000_000
REASONS = {reason.value for reason in Reason}


def decode(payload: bytes | str, topic: str = TOPIC, *, influx: InfluxSettings | None = None, raw_bytes: int = 4096, **options):
    """Decode ``payload`` (text is encoded as UTF-8) with a codec built from ``options``."""
    codec = InfluxCodec(CodecConfig(**options), influx, dead_letter_raw_bytes=raw_bytes)
    data = payload.encode() if isinstance(payload, str) else payload
    return codec.decode(data, topic, RECEIVED_US)


def values(payload: str, **options) -> dict[str, float]:
    """Decode a payload that must give no dead letter and return metric -> value."""
    readings, dead_letters = decode(payload, **options)
    assert dead_letters == []
    return {reading.metric: reading.value for reading in readings}


def expected(device_id: str, metric: str, value: float, site: str | None, ts_us: int = TS_US, marks=()) -> Reading:
    msg_id = derive_msg_id(device_id, metric, ts_us, value)
    return Reading(device_id, metric, ts_us, value, None, site, msg_id, RECEIVED_US, TOPIC, marks)


# Documented examples


def test_weather_line():
    line = f"weather,host=dev1,site=lab temp=21.5,rh=40i,door=f {TS_NS}"

    readings, dead_letters = decode(line)

    assert dead_letters == []
    assert readings == [
        expected("dev1", "weather.temp", 21.5, "lab"),
        expected("dev1", "weather.rh", 40.0, "lab"),
        expected("dev1", "weather.door", 0.0, "lab"),
    ]


def test_reference_example():
    line = 'myMeasurement,tag1=value1,tag2=value2 fieldKey="fieldValue" 1556813561098000000'

    readings, dead_letters = decode(line)

    assert readings == []
    assert [(d.reason, d.detail, d.raw) for d in dead_letters] == [
        (
            "unsupported_value_type",
            "line 1: field 'fieldKey' is a string; only numeric and boolean fields become readings",
            line.encode(),
        )
    ]


def test_reference_spaces_example():
    line = f"myMeasurement,tag\\ Key1=tag\\ Value1,host=tag\\ Value2 field\\ Key=100 {TS_NS}"

    readings, dead_letters = decode(line)

    assert dead_letters == []
    assert readings == [expected("tag Value2", "myMeasurement.field Key", 100.0, None)]


# Field types


@pytest.mark.parametrize(
    ("token", "value"),
    [
        ("1.5", 1.5),
        ("1", 1.0),
        ("-0.5", -0.5),
        (".5", 0.5),
        ("1e3", 1000.0),
        ("-1.234456e+78", -1.234456e78),
        ("2.5E-3", 0.0025),
        ("1i", 1.0),
        ("-12485903i", -12485903.0),
        ("9223372036854775807i", 2.0**63),
        ("-9223372036854775808i", -(2.0**63)),
        ("0u", 0.0),
        ("12485903u", 12485903.0),
        ("18446744073709551615u", 2.0**64),
    ],
)
def test_numbers(token, value):
    assert values(f"m f={token} {TS_NS}") == {"m.f": value}


@pytest.mark.parametrize(("token", "value"), [(t, 1.0) for t in ("t", "T", "true", "True", "TRUE")] + [(f, 0.0) for f in ("f", "F", "false", "False", "FALSE")])
def test_booleans(token, value):
    assert values(f"m on={token} {TS_NS}") == {"m.on": value}


def test_all_types_in_one_line():
    line = f'm a=1.25,b=-3i,c=7u,d=TRUE,e="text",g=1e2 {TS_NS}'

    readings, dead_letters = decode(line)

    assert [(r.metric, r.value) for r in readings] == [("m.a", 1.25), ("m.b", -3.0), ("m.c", 7.0), ("m.d", 1.0), ("m.g", 100.0)]
    assert [(d.reason, d.detail) for d in dead_letters] == [
        ("unsupported_value_type", "line 1: field 'e' is a string; only numeric and boolean fields become readings")
    ]


def test_bad_fields_spare_the_others():
    line = f'm,host=d a=nan,b="s",c=2,d=1e999 {TS_NS}'

    readings, dead_letters = decode(line)

    assert readings == [expected("d", "m.c", 2.0, None)]
    assert [(d.reason, d.detail, d.raw) for d in dead_letters] == [
        ("non_finite_value", "line 1: field 'a' value 'nan' is not a finite number", line.encode()),
        ("unsupported_value_type", "line 1: field 'b' is a string; only numeric and boolean fields become readings", line.encode()),
        ("non_finite_value", "line 1: field 'd' value '1e999' is too large for a double", line.encode()),
    ]


# Escaping


@pytest.mark.parametrize(
    ("written", "name"),
    [
        ("my\\ Measurement", "my Measurement"),
        ("a\\,b", "a,b"),
        ("a\\=b", "a\\=b"),
        ("a\\\\b", "a\\\\b"),
        ("a\\\\,b", "a\\,b"),
        ("a\\xb", "a\\xb"),
        ("a=b", "a=b"),
        ('a"b', 'a"b'),
        ("🍭", "🍭"),
    ],
    ids=["space", "comma", "equals_literal", "backslash_literal", "backslash_then_comma", "other_literal", "equals", "quote", "emoji"],
)
def test_measurement_escapes(written, name):
    readings, dead_letters = decode(f"{written} f=1 {TS_NS}")

    assert dead_letters == []
    assert [(r.device_id, r.metric) for r in readings] == [(name, f"{name}.f")]


@pytest.mark.parametrize(
    ("written", "text"),
    [
        ("a\\ b", "a b"),
        ("a\\,b", "a,b"),
        ("a\\=b", "a=b"),
        ("a\\xb", "a\\xb"),
        ("a\\\\b", "a\\\\b"),
        ("a\\\\=b", "a\\=b"),
        ('a"b', 'a"b'),
    ],
    ids=["space", "comma", "equals", "other_literal", "backslash_literal", "backslash_then_equals", "quote"],
)
def test_key_and_value_escapes(written, text):
    by_value, _ = decode(f"m,host={written} f=1 {TS_NS}")
    by_key, _ = decode(f"m,{written}=dev f=1 {TS_NS}", influx=InfluxSettings(device_id_tag=text))

    assert [r.device_id for r in by_value] == [text]
    assert [r.device_id for r in by_key] == ["dev"]
    assert values(f"m {written}=2 {TS_NS}") == {f"m.{text}": 2.0}


@pytest.mark.parametrize(
    "string",
    ['"a\\"b,c=1 d"', '"ends\\\\"', '"\\""', '"back\\slash"', '"a, b=c"', '""', '"🚀 Launch"'],
    ids=["escaped_quote", "escaped_backslash", "only_quote", "literal_backslash", "separators", "empty", "emoji"],
)
def test_string_boundaries(string):
    line = f"m s={string},x=3 {TS_NS}"

    readings, dead_letters = decode(line)

    assert [(r.metric, r.value, r.ts_us) for r in readings] == [("m.x", 3.0, TS_US)]
    assert [(d.reason, d.raw) for d in dead_letters] == [("unsupported_value_type", line.encode())]


def test_unterminated_string():
    line = f'm s="a\\",x=3 {TS_NS}'

    readings, dead_letters = decode(line)

    assert readings == []
    assert [(d.reason, d.detail) for d in dead_letters] == [
        ("invalid_line_protocol", "line 1: the string value of field 's' has no closing double quote")
    ]


_NAME = st.text(st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)), min_size=1, max_size=10).filter(
    lambda name: not name.endswith("\\")
)


def _escape(name: str, specials: str) -> str:
    return "".join("\\" + char if char in specials else char for char in name)


@settings(max_examples=150, deadline=None)
@given(measurement=_NAME.filter(lambda name: not name.startswith("#")), host=_NAME, field=_NAME, value=st.floats(allow_nan=False, allow_infinity=False))
def test_escaped_names_round_trip(measurement, host, field, value):
    line = f"{_escape(measurement, ', ')},host={_escape(host, ',= ')} {_escape(field, ',= ')}={value!r} {TS_NS}"

    readings, dead_letters = decode(line)

    assert dead_letters == []
    assert [(r.device_id, r.metric, r.value) for r in readings] == [(host, f"{measurement}.{field}", value)]


@settings(max_examples=150, deadline=None)
@given(text=st.text(st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)), max_size=30))
def test_escaped_strings_end_where_written(text):
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    line = f'm s="{escaped}",x=3 {TS_NS}'

    readings, dead_letters = decode(line)

    assert [(r.metric, r.value) for r in readings] == [("m.x", 3.0)]
    assert [d.reason for d in dead_letters] == ["unsupported_value_type"]


# Timestamps


@pytest.mark.parametrize(
    ("precision", "ts", "ts_us"),
    [
        ("s", "1714564800", TS_US),
        ("ms", "1714564800123", TS_US + 123_000),
        ("us", "1714564800123456", TS_US + 123_456),
        ("ns", "1714564800123456789", 1714564800123456),
        ("ns", "1714564800000000999", TS_US),
    ],
)
def test_precisions(precision, ts, ts_us):
    readings, dead_letters = decode(f"m f=1 {ts}", influx=InfluxSettings(precision=precision))

    assert dead_letters == []
    assert readings[0].ts_us == ts_us


def test_default_precision_is_ns():
    readings, _ = decode("m f=1 1714564800123456789")

    assert readings[0].ts_us == 1714564800123456


def test_missing_timestamp_rejected():
    readings, dead_letters = decode("m f=1,g=2")

    assert readings == []
    assert [(d.reason, d.detail) for d in dead_letters] == [
        ("missing_timestamp", "line 1: the line has no timestamp; add one or set codec.missing_timestamp: receive_time")
    ]


def test_missing_timestamp_receive_time():
    readings, dead_letters = decode("m,host=d f=1,g=2\nm,host=d h=3 " + TS_NS, missing_timestamp="receive_time")

    assert dead_letters == []
    assert readings == [
        expected("d", "m.f", 1.0, None, RECEIVED_US, ("receive_time",)),
        expected("d", "m.g", 2.0, None, RECEIVED_US, ("receive_time",)),
        expected("d", "m.h", 3.0, None),
    ]


@pytest.mark.parametrize(
    ("ts", "precision", "words"),
    [
        ("946684799", "s", "before codec.min_timestamp 2000-01-01T00:00:00+00:00"),
        (str(TS_S + 60 + 301), "s", "more than codec.max_future=300s ahead"),
        ("-5", "ns", "before codec.min_timestamp"),
        ("9223372036854775806", "s", "more than codec.max_future"),
    ],
    ids=["before_min", "too_far_ahead", "negative", "beyond_int64_us"],
)
def test_timestamp_bounds(ts, precision, words):
    readings, dead_letters = decode(f"m f=1 {ts}", influx=InfluxSettings(precision=precision))

    assert readings == []
    assert [d.reason for d in dead_letters] == ["timestamp_out_of_range"]
    assert words in dead_letters[0].detail
    assert dead_letters[0].detail.startswith(f"line 1: timestamp {ts} is ")


def test_timestamp_at_bounds_accepted():
    readings, dead_letters = decode(f"m f=1 946684800\nm g=1 {TS_S + 60 + 300}", influx=InfluxSettings(precision="s"))

    assert dead_letters == []
    assert [r.ts_us for r in readings] == [946684800 * 1_000_000, RECEIVED_US + 300 * 1_000_000]


# Lines


def test_bad_line_in_the_middle():
    payload = f"m,host=a f=1 {TS_NS}\nm,host=b f=oops {TS_NS}\nm,host=c f=3 {TS_NS}\n"

    readings, dead_letters = decode(payload)

    assert [(r.device_id, r.value) for r in readings] == [("a", 1.0), ("c", 3.0)]
    assert [(d.reason, d.raw, d.raw_size, d.source, d.received_us) for d in dead_letters] == [
        ("invalid_line_protocol", f"m,host=b f=oops {TS_NS}".encode(), 35, TOPIC, RECEIVED_US)
    ]
    assert dead_letters[0].detail.startswith("line 2: field 'f': 'oops' is not a float")


def test_comments_and_blank_lines():
    payload = f"# written by a gateway\n\nm f=1 {TS_NS}\n   \n\t\n#m f=9 {TS_NS}\r\nm f=2 {TS_NS}\r\n\r\n"

    readings, dead_letters = decode(payload)

    assert dead_letters == []
    assert [r.value for r in readings] == [1.0, 2.0]


def test_line_numbers_count_every_line():
    payload = f"# comment\n\nm f=1 {TS_NS}\nbroken\n"

    _, dead_letters = decode(payload)

    assert [d.detail for d in dead_letters] == [
        "line 4: no field set: a space and at least one field=value must follow the measurement and tags"
    ]


def test_invalid_utf8_line_spares_the_others():
    payload = f"m f=1 {TS_NS}\n".encode() + b"m g=\xff\xfe " + TS_NS.encode() + f"\nm h=3 {TS_NS}\nbroken".encode()

    readings, dead_letters = decode(payload)

    assert [r.metric for r in readings] == ["m.f", "m.h"]
    assert [(d.reason, d.raw, d.detail[:7]) for d in dead_letters] == [
        ("invalid_utf8", b"m g=\xff\xfe " + TS_NS.encode(), "line 2:"),
        ("invalid_line_protocol", b"broken", "line 4:"),
    ]
    assert dead_letters[0].detail == "line 2: not UTF-8 text (byte 4 of the line); send UTF-8 line protocol"


def test_raw_bytes_bounded():
    line = f"measurement_with_a_long_name f=oops {TS_NS}"

    _, dead_letters = decode(line, raw_bytes=10)

    assert dead_letters[0].raw == b"measuremen"
    assert dead_letters[0].raw_size == len(line)


def test_payload_too_large_checked_first():
    payload = b"\xff" * 17

    readings, dead_letters = decode(payload, max_payload_bytes=16)

    assert readings == []
    assert [(d.reason, d.raw_size) for d in dead_letters] == [("payload_too_large", 17)]


# Mapping to readings


@pytest.mark.parametrize(
    ("line", "options", "device_id", "site"),
    [
        (f"m,host=h1,site=s1 f=1 {TS_NS}", {"topic_pattern": PATTERN}, "h1", "s1"),
        (f"m f=1 {TS_NS}", {"topic_pattern": PATTERN}, "dev9", "lab"),
        (f"m f=1 {TS_NS}", {}, "m", None),
        (f"m,site=s1 f=1 {TS_NS}", {}, "m", "s1"),
        (f"m,host=h1 f=1 {TS_NS}", {"topic_pattern": "sensors/{site}/{_}/{_}"}, "h1", "lab"),
        (f"m f=1 {TS_NS}", {"topic_pattern": "sensors/{site}/{_}/{_}"}, "m", "lab"),
    ],
    ids=["tags", "topic", "measurement", "site_tag_only", "tag_and_topic_site", "measurement_and_topic_site"],
)
def test_device_and_site_fallbacks(line, options, device_id, site):
    readings, dead_letters = decode(line, **options)

    assert dead_letters == []
    assert [(r.device_id, r.site) for r in readings] == [(device_id, site)]


def test_configured_tags():
    influx = InfluxSettings(device_id_tag="sensor", site_tag="building")
    readings, _ = decode(f"m,host=h1,sensor=s7,site=x,building=b2 f=1 {TS_NS}", influx=influx)

    assert [(r.device_id, r.site) for r in readings] == [("s7", "b2")]


def test_site_tag_off():
    influx = InfluxSettings(site_tag=None)
    with_topic, _ = decode(f"m,site=x f=1 {TS_NS}", influx=influx, topic_pattern=PATTERN)
    without_topic, _ = decode(f"m,site=x f=1 {TS_NS}", influx=influx)

    assert with_topic[0].site == "lab"
    assert without_topic[0].site is None


@pytest.mark.parametrize(
    ("template", "metric"),
    [("{field}", "temp"), ("{measurement}.{field}", "env.temp"), ("{measurement}/{field}_raw", "env/temp_raw"), ("x{{{field}}}", "x{temp}")],
)
def test_metric_template(template, metric):
    readings, _ = decode(f"env temp=1 {TS_NS}", influx=InfluxSettings(metric_template=template))

    assert [r.metric for r in readings] == [metric]


def test_msg_id_stable_across_payloads():
    first, _ = decode(f"m,host=d f=1.5 {TS_NS}")
    again, _ = decode(f"# resent\nm,host=d f=1.5 {TS_NS}")
    other, _ = decode(f"m,host=d f=1.25 {TS_NS}")

    assert first[0].msg_id == again[0].msg_id == derive_msg_id("d", "m.f", TS_US, 1.5)
    assert other[0].msg_id != first[0].msg_id


@pytest.mark.parametrize(
    "template",
    ["{measurement}", "{field.real}", "{field!r}", "{field:>9}", "{}", "{unit}.{field}", "{field", "{field:{measurement}}"],
)
def test_bad_templates_refused(template):
    with pytest.raises(ValidationError, match="template"):
        InfluxSettings(metric_template=template)


def test_settings_strict():
    with pytest.raises(ValidationError, match="Extra inputs"):
        InfluxSettings(precison="s")
    with pytest.raises(ValidationError, match="literal_error"):
        InfluxSettings(strings="skip")
    with pytest.raises(ValidationError, match="invalid empty tag name"):
        InfluxSettings(device_id_tag="")
    with pytest.raises(ValidationError, match="frozen"):
        InfluxSettings().precision = "s"


# Rejections

BAD_LINES = [
    ("m", "invalid_line_protocol", "line 1: no field set"),
    ("m,host=a", "invalid_line_protocol", "line 1: no field set"),
    (f",t=a f=1 {TS_NS}", "invalid_line_protocol", "line 1: missing measurement"),
    (f" m f=1 {TS_NS}", "invalid_line_protocol", "line 1: missing measurement"),
    (f"m  f=1 {TS_NS}", "invalid_line_protocol", "line 1: missing field key"),
    (f"m f=1 {TS_NS} ", "invalid_line_protocol", "line 1: unexpected text after the timestamp"),
    ("m f=1 ", "invalid_line_protocol", "line 1: missing timestamp after the last space"),
    (f"m f=1 {TS_NS} 5", "invalid_line_protocol", "line 1: unexpected text after the timestamp"),
    ("m f=1 17145648e9", "invalid_line_protocol", "line 1: timestamp '17145648e9' is not an integer"),
    ("m f=1 1714564800.5", "invalid_line_protocol", "line 1: timestamp '1714564800.5' is not an integer"),
    ("m f=1 +1714564800", "invalid_line_protocol", "is not an integer"),
    ("m f=1 ١٧١٤٥٦٤٨٠٠", "invalid_line_protocol", "is not an integer"),
    ("m f=1 9223372036854775807", "invalid_line_protocol", "outside the line protocol range"),
    ("m f=1 " + "9" * 5000, "invalid_line_protocol", "outside the line protocol range"),
    (f"m,t= f=1 {TS_NS}", "invalid_line_protocol", "line 1: tag 't' has an empty value"),
    (f"m,=v f=1 {TS_NS}", "invalid_line_protocol", "line 1: missing tag key"),
    (f"m,t f=1 {TS_NS}", "invalid_line_protocol", "line 1: tag key 't' has no '=value'"),
    (f"m,t=a=b f=1 {TS_NS}", "invalid_line_protocol", "line 1: unescaped '=' in a tag value"),
    (f"m,t=a,t=b f=1 {TS_NS}", "invalid_line_protocol", "line 1: tag key 't' appears twice"),
    (f"m, f=1 {TS_NS}", "invalid_line_protocol", "line 1: missing tag key"),
    (f"m f=1, {TS_NS}", "invalid_line_protocol", "line 1: missing field key"),
    (f"m f= {TS_NS}", "invalid_line_protocol", "line 1: field 'f' has no value"),
    (f"m =1 {TS_NS}", "invalid_line_protocol", "line 1: missing field key"),
    (f"m f {TS_NS}", "invalid_line_protocol", "line 1: field key 'f' has no '=value'"),
    (f"m f=1,f=2 {TS_NS}", "invalid_line_protocol", "line 1: field key 'f' appears twice"),
    (f'm f="abc {TS_NS}', "invalid_line_protocol", "line 1: the string value of field 'f' has no closing double quote"),
    (f'm f="a"b {TS_NS}', "invalid_line_protocol", "line 1: unexpected 'b' after the value of field 'f'"),
    (f"m f==1 {TS_NS}", "invalid_line_protocol", "line 1: field 'f': '=1' is not a float"),
    (f"m f=1.2.3 {TS_NS}", "invalid_line_protocol", "line 1: field 'f': '1.2.3' is not a float"),
    (f"m f=+1 {TS_NS}", "invalid_line_protocol", "line 1: field 'f': '+1' is not a float"),
    (f"m f=1_0 {TS_NS}", "invalid_line_protocol", "line 1: field 'f': '1_0' is not a float"),
    (f"m f=１ {TS_NS}", "invalid_line_protocol", "line 1: field 'f': '１' is not a float"),
    (f"m f=tRUE {TS_NS}", "invalid_line_protocol", "line 1: field 'f': 'tRUE' is not a float"),
    (f"m f=yes {TS_NS}", "invalid_line_protocol", "line 1: field 'f': 'yes' is not a float"),
    (f'm f=1"x" {TS_NS}', "invalid_line_protocol", "line 1: field 'f': '1\"x\"' is not a float"),
    (f"m f=1.5i {TS_NS}", "invalid_line_protocol", "line 1: field 'f': '1.5i' is not an integer"),
    (f"m f=i {TS_NS}", "invalid_line_protocol", "line 1: field 'f': 'i' is not an integer"),
    (f"m f=9223372036854775808i {TS_NS}", "invalid_line_protocol", "outside the signed 64-bit range"),
    (f"m f=-9223372036854775809i {TS_NS}", "invalid_line_protocol", "outside the signed 64-bit range"),
    (f"m f=-1u {TS_NS}", "invalid_line_protocol", "line 1: field 'f': '-1u' is not an unsigned integer"),
    (f"m f=18446744073709551616u {TS_NS}", "invalid_line_protocol", "outside the unsigned 64-bit range"),
    (f"m f={'9' * 5000}i {TS_NS}", "invalid_line_protocol", "outside the signed 64-bit range"),
    (f"m f=nan {TS_NS}", "non_finite_value", "line 1: field 'f' value 'nan' is not a finite number"),
    (f"m f=NaN {TS_NS}", "non_finite_value", "is not a finite number"),
    (f"m f=-inf {TS_NS}", "non_finite_value", "line 1: field 'f' value '-inf' is not a finite number"),
    (f"m f=+Infinity {TS_NS}", "non_finite_value", "is not a finite number"),
    (f"m f=1e999 {TS_NS}", "non_finite_value", "line 1: field 'f' value '1e999' is too large for a double"),
    (f"m f=-1e309 {TS_NS}", "non_finite_value", "is too large for a double"),
    (f'm f="21.5" {TS_NS}', "unsupported_value_type", "line 1: field 'f' is a string"),
    ("m f=1", "missing_timestamp", "line 1: the line has no timestamp"),
    ("m f=1 946684799999999999", "timestamp_out_of_range", "before codec.min_timestamp"),
    ("", "empty_payload", "the payload is empty"),
    ("# only a comment\n\n  \n", "empty_payload", "only blank or comment lines"),
]


@pytest.mark.parametrize(("line", "reason", "words"), BAD_LINES, ids=range(len(BAD_LINES)))
def test_bad_inputs(line, reason, words):
    readings, dead_letters = decode(line)

    assert readings == []
    assert [d.reason for d in dead_letters] == [reason]
    assert words in dead_letters[0].detail
    assert dead_letters[0].raw == line.encode()[:4096]


@pytest.mark.parametrize(
    ("payload", "topic", "reason"),
    [
        (b"\xff\xfe", TOPIC, "invalid_utf8"),
        (f"m f=1 {TS_NS}".encode(), "sensors/lab/dev9", "topic_mismatch"),
        (f"m f=1 {TS_NS}".encode(), "other/lab/dev9/influx", "topic_mismatch"),
    ],
    ids=["utf8", "segments", "literal"],
)
def test_payload_rejections(payload, topic, reason):
    readings, dead_letters = decode(payload, topic, topic_pattern=PATTERN)

    assert readings == []
    assert [(d.reason, d.raw, d.source) for d in dead_letters] == [(reason, payload, topic)]


# Properties

_PLAIN = st.text(alphabet="ab=, 1.0i\tu#-eEtf", max_size=24)


@settings(max_examples=300, deadline=None)
@given(line=_PLAIN)
@example(line="0 0=0  ")
def test_fast_path_agrees_with_slow_path(line):
    fast = _parse_fast(line)
    try:
        slow = _parse_slow(line)
    except _LineError:
        slow = None

    assert fast == slow


_TOKENS = st.sampled_from(
    ["m", "host", "site", "=", ",", " ", '"', "\\", "\n", "\r", "#", "1.5", "-2i", "3u", "t", "nan", "1e999", "é", "\t", TS_NS, "1714564800"]
)


def _check(result: object, raw_bytes: int) -> None:
    assert isinstance(result, Decoded)
    for reading in result.readings:
        assert math.isfinite(reading.value)
        assert reading.device_id and reading.metric
        assert 946_684_800_000_000 <= reading.ts_us <= RECEIVED_US + 300 * 1_000_000
    for letter in result.dead_letters:
        assert letter.reason in REASONS
        assert len(letter.raw) == min(letter.raw_size, raw_bytes)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.binary(max_size=200))
def test_fuzz_bytes(payload):
    codec = InfluxCodec(CodecConfig(missing_timestamp="receive_time"), dead_letter_raw_bytes=16)

    _check(codec.decode(payload, TOPIC, RECEIVED_US), 16)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(_TOKENS, max_size=40), precision=st.sampled_from(["s", "ms", "us", "ns"]))
def test_fuzz_line_protocol_text(parts, precision):
    codec = InfluxCodec(CodecConfig(topic_pattern=PATTERN), InfluxSettings(precision=precision), dead_letter_raw_bytes=16)

    _check(codec.decode("".join(parts).encode(), TOPIC, RECEIVED_US), 16)
