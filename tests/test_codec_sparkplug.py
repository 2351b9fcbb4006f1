"""Unit tests of the Sparkplug B codec: aliases, sequence numbers, deaths, rebirth requests and values.

Every fixture is encoded here with the generated schema, so the tests exercise the wire format.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparkiot.codecs.json import Decoded
from sparkiot.codecs.sparkplug import SparkplugCodec, parse_topic
from sparkiot.codecs.sparkplug import sparkplug_b_pb2 as pb
from sparkiot.config import CodecConfig
from sparkiot.readings import MARK_RECEIVE_TIME, Reason, derive_msg_id

GROUP = "plant1"
EDGE = "gw7"
DEVICE = "pump3"
NODE_ID = f"{GROUP}/{EDGE}"
DEVICE_ID = f"{GROUP}/{EDGE}/{DEVICE}"
TS_MS = 1714564800123  # 2024-05-01T12:00:00.123Z
TS_US = TS_MS * 1000
RECEIVED_US = TS_US + 60 * 1_000_000
MAX_FUTURE_MS = int(CodecConfig().max_future * 1000)
BD_SEQ = 7


class FakeClock:
    """A monotonic clock that tests move by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def topic(verb: str, device: str | None = None, edge: str = EDGE) -> str:
    return f"spBv1.0/{GROUP}/{verb}/{edge}" + (f"/{device}" if device else "")


def metric(name: str | None = None, alias: int | None = None, datatype: int | None = None, ts: int | None = TS_MS, **value) -> pb.Payload.Metric:
    """Return a metric; ``value`` is one oneof field such as ``double_value=1.5`` or flags such as ``is_null=True``."""
    built = pb.Payload.Metric(**value)
    if name is not None:
        built.name = name
    if alias is not None:
        built.alias = alias
    if datatype is not None:
        built.datatype = datatype
    if ts is not None:
        built.timestamp = ts
    return built


def payload(*metrics: pb.Payload.Metric, seq: int | None = None, ts: int | None = TS_MS) -> bytes:
    message = pb.Payload()
    if ts is not None:
        message.timestamp = ts
    if seq is not None:
        message.seq = seq
    for item in metrics:
        message.metrics.append(item)
    return message.SerializeToString()


def node_birth(seq: int = 0, bd_seq: int = BD_SEQ) -> bytes:
    return payload(
        metric("bdSeq", datatype=pb.Int64, long_value=bd_seq),
        metric("Node Control/Rebirth", alias=1, datatype=pb.Boolean, boolean_value=False),
        metric("Supply Voltage", alias=10, datatype=pb.Float, float_value=12.5),
        metric("Offset", alias=11, datatype=pb.Int32, int_value=2**32 - 5),
        seq=seq,
    )


def device_birth(seq: int = 1) -> bytes:
    return payload(
        metric("Inputs/Pressure", alias=20, datatype=pb.Double, double_value=3.25),
        metric("Outputs/Run", alias=21, datatype=pb.Boolean, boolean_value=True),
        seq=seq,
    )


def new_codec(*, raw_bytes: int = 4096, rebirth_interval: float = 10.0, **options) -> SparkplugCodec:
    return SparkplugCodec(
        CodecConfig(**options), dead_letter_raw_bytes=raw_bytes, rebirth_interval=rebirth_interval, clock=FakeClock()
    )


def born_codec(**options) -> SparkplugCodec:
    """Return a codec that has seen the NBIRTH (seq 0) and DBIRTH (seq 1) fixtures, with queues emptied."""
    codec = new_codec(**options)
    codec.decode(node_birth(), topic("NBIRTH"), RECEIVED_US)
    codec.decode(device_birth(), topic("DBIRTH", DEVICE), RECEIVED_US)
    codec.take_events()
    return codec


def single(codec: SparkplugCodec, *metrics: pb.Payload.Metric, verb: str = "NDATA", seq: int | None = 2, device: str | None = None):
    return codec.decode(payload(*metrics, seq=seq), topic(verb, device), RECEIVED_US)


# BIRTH and DATA


def test_nbirth_metrics_become_readings():
    codec = new_codec()

    readings, dead_letters = codec.decode(node_birth(), topic("NBIRTH"), RECEIVED_US)

    assert dead_letters == []
    assert [(r.metric, r.value) for r in readings] == [
        ("bdSeq", 7.0),
        ("Node Control/Rebirth", 0.0),
        ("Supply Voltage", 12.5),
        ("Offset", -5.0),
    ]
    first = readings[0]
    assert first.device_id == NODE_ID
    assert first.site == GROUP
    assert first.ts_us == TS_US
    assert first.unit is None
    assert first.ingest_us == RECEIVED_US
    assert first.source == topic("NBIRTH")
    assert first.msg_id == derive_msg_id(NODE_ID, "bdSeq", TS_US, 7.0)


def test_nbirth_queues_birth_event():
    codec = new_codec()

    codec.decode(node_birth(), topic("NBIRTH"), RECEIVED_US)

    assert codec.take_events() == [
        {
            "event": "birth",
            "device_id": NODE_ID,
            "site": GROUP,
            "scope": "node",
            "ts_us": TS_US,
            "received_us": RECEIVED_US,
            "metrics": ["bdSeq", "Node Control/Rebirth", "Supply Voltage", "Offset"],
        }
    ]
    assert codec.take_events() == []


def test_ndata_aliases_get_names():
    codec = born_codec()

    readings, dead_letters = single(codec, metric(alias=10, float_value=13.0), metric(alias=11, int_value=2**32 - 9))

    assert dead_letters == []
    assert [(r.device_id, r.metric, r.value) for r in readings] == [
        (NODE_ID, "Supply Voltage", 13.0),
        (NODE_ID, "Offset", -9.0),
    ]


def test_ndata_name_without_birth():
    codec = new_codec()

    readings, dead_letters = single(codec, metric("Temp", datatype=pb.Double, double_value=21.5), seq=5)

    assert dead_letters == []
    assert [(r.metric, r.value) for r in readings] == [("Temp", 21.5)]
    assert codec.take_commands() == []


def test_dbirth_device_readings_and_event():
    codec = new_codec()
    codec.decode(node_birth(), topic("NBIRTH"), RECEIVED_US)
    codec.take_events()

    readings, dead_letters = codec.decode(device_birth(), topic("DBIRTH", DEVICE), RECEIVED_US)

    assert dead_letters == []
    assert [(r.device_id, r.metric, r.value) for r in readings] == [
        (DEVICE_ID, "Inputs/Pressure", 3.25),
        (DEVICE_ID, "Outputs/Run", 1.0),
    ]
    events = codec.take_events()
    assert [(e["event"], e["scope"], e["device_id"]) for e in events] == [("birth", "device", DEVICE_ID)]
    assert events[0]["metrics"] == ["Inputs/Pressure", "Outputs/Run"]


def test_ddata_aliases_get_names():
    codec = born_codec()

    readings, dead_letters = single(
        codec, metric(alias=20, double_value=4.5), metric(alias=21, boolean_value=False), verb="DDATA", device=DEVICE
    )

    assert dead_letters == []
    assert [(r.device_id, r.metric, r.value, r.site) for r in readings] == [
        (DEVICE_ID, "Inputs/Pressure", 4.5, GROUP),
        (DEVICE_ID, "Outputs/Run", 0.0, GROUP),
    ]


def test_ddata_node_alias_unknown():
    codec = born_codec()

    readings, dead_letters = single(codec, metric(alias=10, float_value=1.0), verb="DDATA", device=DEVICE)

    assert readings == []
    assert [d.reason for d in dead_letters] == ["unknown_alias"]


def test_ddata_unborn_device_alias():
    codec = born_codec()

    readings, dead_letters = single(codec, metric(alias=20, double_value=1.0), verb="DDATA", device="other")

    assert readings == []
    assert [d.reason for d in dead_letters] == ["unknown_alias"]
    assert [t for t, _ in codec.take_commands()] == [topic("NCMD")]


def test_dbirth_replaces_aliases():
    codec = born_codec()
    rebirth = payload(metric("Inputs/Flow", alias=30, datatype=pb.Double, double_value=1.0), seq=2)
    codec.decode(rebirth, topic("DBIRTH", DEVICE), RECEIVED_US)

    new_readings, _ = single(codec, metric(alias=30, double_value=2.0), verb="DDATA", device=DEVICE, seq=3)
    old_readings, old_dead = single(codec, metric(alias=20, double_value=2.0), verb="DDATA", device=DEVICE, seq=4)

    assert [(r.metric, r.value) for r in new_readings] == [("Inputs/Flow", 2.0)]
    assert old_readings == []
    assert [d.reason for d in old_dead] == ["unknown_alias"]


def test_nbirth_replaces_aliases():
    codec = born_codec()
    rebirth = payload(metric("bdSeq", long_value=BD_SEQ + 1), metric("Current", alias=12, datatype=pb.Double, double_value=1.0), seq=0)
    codec.decode(rebirth, topic("NBIRTH"), RECEIVED_US)

    new_readings, _ = single(codec, metric(alias=12, double_value=2.0), seq=1)
    old_readings, old_dead = single(codec, metric(alias=10, float_value=2.0), seq=2)

    assert [(r.metric, r.value) for r in new_readings] == [("Current", 2.0)]
    assert old_readings == []
    assert [d.reason for d in old_dead] == ["unknown_alias"]


def test_data_datatype_overrides_birth():
    codec = born_codec()

    readings, _ = single(codec, metric(alias=11, datatype=pb.UInt32, int_value=2**32 - 5))

    assert readings[0].value == float(2**32 - 5)


# Sequence numbers


def test_seq_wrap_is_not_gap():
    codec = new_codec()
    codec.decode(node_birth(seq=0), topic("NBIRTH"), RECEIVED_US)

    for seq in [*range(1, 256), 0, 1]:
        readings, _ = single(codec, metric(alias=10, float_value=float(seq)), seq=seq)
        assert len(readings) == 1

    assert codec.counters["sequence_gaps"] == 0


def test_seq_wrap_254_to_1():
    codec = new_codec()
    codec.decode(payload(metric("a", double_value=1.0), seq=253), topic("NBIRTH"), RECEIVED_US)

    for seq in (254, 255, 0, 1):
        single(codec, metric("a", double_value=2.0), seq=seq)

    assert codec.counters["sequence_gaps"] == 0


def test_seq_gap_counted_and_decoded():
    codec = new_codec()
    codec.decode(node_birth(seq=0), topic("NBIRTH"), RECEIVED_US)
    for seq in (1, 2, 3):
        single(codec, metric(alias=10, float_value=1.0), seq=seq)

    readings, dead_letters = single(codec, metric(alias=10, float_value=5.0), seq=5)
    assert codec.counters["sequence_gaps"] == 1
    assert [(r.metric, r.value) for r in readings] == [("Supply Voltage", 5.0)]
    assert dead_letters == []

    single(codec, metric(alias=10, float_value=6.0), seq=6)
    assert codec.counters["sequence_gaps"] == 1


def test_seq_shared_by_devices():
    codec = born_codec()

    single(codec, metric(alias=10, float_value=1.0), seq=2)
    single(codec, metric(alias=20, double_value=1.0), verb="DDATA", device=DEVICE, seq=3)
    single(codec, metric(alias=10, float_value=1.0), seq=4)
    assert codec.counters["sequence_gaps"] == 0

    single(codec, metric(alias=20, double_value=1.0), verb="DDATA", device=DEVICE, seq=4)
    assert codec.counters["sequence_gaps"] == 1


def test_seq_per_edge_node():
    codec = new_codec()
    codec.decode(node_birth(seq=0), topic("NBIRTH"), RECEIVED_US)
    codec.decode(node_birth(seq=0), topic("NBIRTH", edge="gw8"), RECEIVED_US)

    codec.decode(payload(metric(alias=10, float_value=1.0), seq=1), topic("NDATA"), RECEIVED_US)
    codec.decode(payload(metric(alias=10, float_value=1.0), seq=1), topic("NDATA", edge="gw8"), RECEIVED_US)

    assert codec.counters["sequence_gaps"] == 0


def test_nbirth_resets_seq():
    codec = new_codec()
    codec.decode(node_birth(seq=0), topic("NBIRTH"), RECEIVED_US)
    single(codec, metric(alias=10, float_value=1.0), seq=1)
    single(codec, metric(alias=10, float_value=1.0), seq=2)

    codec.decode(node_birth(seq=0), topic("NBIRTH"), RECEIVED_US)
    single(codec, metric(alias=10, float_value=1.0), seq=1)

    assert codec.counters["sequence_gaps"] == 0


def test_missing_seq_counted():
    codec = born_codec()

    readings, _ = single(codec, metric(alias=10, float_value=1.0), seq=None)

    assert codec.counters["missing_seq"] == 1
    assert codec.counters["sequence_gaps"] == 0
    assert len(readings) == 1


# Unknown aliases and rebirth requests


def test_unknown_alias_dead_letter():
    codec = born_codec()

    readings, dead_letters = single(codec, metric(alias=10, float_value=1.0), metric(alias=99, double_value=2.0))

    assert [(r.metric, r.value) for r in readings] == [("Supply Voltage", 1.0)]
    assert len(dead_letters) == 1
    letter = dead_letters[0]
    assert letter.reason == Reason.UNKNOWN_ALIAS.value
    assert "99" in letter.detail
    assert letter.source == topic("NDATA")
    assert letter.received_us == RECEIVED_US
    stored = pb.Payload.FromString(letter.raw)
    assert len(stored.metrics) == 1
    assert stored.metrics[0].alias == 99
    assert stored.metrics[0].double_value == 2.0
    assert stored.seq == 2
    assert stored.timestamp == TS_MS
    assert letter.raw_size == len(letter.raw)


def test_rebirth_rate_limited():
    codec = born_codec()
    clock = codec.clock
    unknown = metric(alias=99, double_value=1.0)

    single(codec, unknown, seq=2)
    first = codec.take_commands()
    assert [t for t, _ in first] == [f"spBv1.0/{GROUP}/NCMD/{EDGE}"]

    clock.now += 9.5
    _, dead_letters = single(codec, unknown, seq=3)
    assert [d.reason for d in dead_letters] == ["unknown_alias"]
    assert codec.take_commands() == []

    clock.now += 0.5
    single(codec, unknown, seq=4)
    assert [t for t, _ in codec.take_commands()] == [topic("NCMD")]
    assert codec.counters["rebirth_requests"] == 2
    assert codec.counters["rebirth_suppressed"] == 1


def test_rebirth_once_per_message():
    codec = born_codec()

    single(codec, metric(alias=98, double_value=1.0), metric(alias=99, double_value=1.0))

    assert len(codec.take_commands()) == 1
    assert codec.counters["rebirth_suppressed"] == 0


def test_rebirth_per_edge_node():
    codec = new_codec()

    codec.decode(payload(metric(alias=5, double_value=1.0), seq=1), topic("NDATA"), RECEIVED_US)
    codec.decode(payload(metric(alias=5, double_value=1.0), seq=1), topic("NDATA", edge="gw8"), RECEIVED_US)

    topics = sorted(t for t, _ in codec.take_commands())
    assert topics == [topic("NCMD"), topic("NCMD", edge="gw8")]


def test_pending_rebirth_not_duplicated():
    codec = born_codec()
    single(codec, metric(alias=99, double_value=1.0), seq=2)
    codec.clock.now += 60

    single(codec, metric(alias=99, double_value=1.0), seq=3)

    assert len(codec.take_commands()) == 1
    assert codec.counters["rebirth_requests"] == 2


def test_rebirth_payload_decodes():
    codec = born_codec()
    single(codec, metric(alias=99, double_value=1.0))

    [(_, data)] = codec.take_commands()
    command = pb.Payload.FromString(data)

    assert command.timestamp == RECEIVED_US // 1000
    assert not command.HasField("seq")
    assert len(command.metrics) == 1
    rebirth = command.metrics[0]
    assert rebirth.name == "Node Control/Rebirth"
    assert rebirth.datatype == pb.Boolean
    assert rebirth.WhichOneof("value") == "boolean_value"
    assert rebirth.boolean_value is True
    assert rebirth.timestamp == RECEIVED_US // 1000


# Deaths


def ndeath(bd_seq: int | None) -> bytes:
    metrics = [] if bd_seq is None else [metric("bdSeq", datatype=pb.UInt64, long_value=bd_seq)]
    return payload(*metrics)


def test_ndeath_matching_bdseq():
    codec = born_codec()

    decoded = codec.decode(ndeath(BD_SEQ), topic("NDEATH"), RECEIVED_US)

    assert decoded == Decoded([], [])
    assert codec.take_events() == [
        {
            "event": "death",
            "device_id": NODE_ID,
            "site": GROUP,
            "scope": "node",
            "ts_us": TS_US,
            "received_us": RECEIVED_US,
            "metrics": ["bdSeq", "Node Control/Rebirth", "Supply Voltage", "Offset"],
        },
        {
            "event": "death",
            "device_id": DEVICE_ID,
            "site": GROUP,
            "scope": "device",
            "ts_us": TS_US,
            "received_us": RECEIVED_US,
            "metrics": ["Inputs/Pressure", "Outputs/Run"],
        },
    ]
    assert codec.counters["stale_deaths"] == 0


def test_ndeath_bdseq_in_int_value():
    codec = born_codec()

    codec.decode(payload(metric("bdSeq", int_value=BD_SEQ)), topic("NDEATH"), RECEIVED_US)

    assert [e["scope"] for e in codec.take_events()] == ["node", "device"]


def test_ndeath_stale_bdseq_ignored():
    codec = born_codec()

    decoded = codec.decode(ndeath(BD_SEQ - 1), topic("NDEATH"), RECEIVED_US)

    assert decoded == Decoded([], [])
    assert codec.take_events() == []
    assert codec.counters["stale_deaths"] == 1


def test_ndeath_without_bdseq_stale():
    codec = born_codec()

    codec.decode(ndeath(None), topic("NDEATH"), RECEIVED_US)

    assert codec.take_events() == []
    assert codec.counters["stale_deaths"] == 1


def test_ndeath_before_birth_applied():
    codec = new_codec()

    codec.decode(ndeath(3), topic("NDEATH"), RECEIVED_US)

    events = codec.take_events()
    assert [(e["event"], e["scope"], e["device_id"], e["metrics"]) for e in events] == [("death", "node", NODE_ID, [])]


def test_ndeath_keeps_aliases():
    codec = born_codec()
    codec.decode(ndeath(BD_SEQ), topic("NDEATH"), RECEIVED_US)

    readings, dead_letters = single(codec, metric(alias=10, float_value=2.0), seq=2)

    assert [(r.metric, r.value) for r in readings] == [("Supply Voltage", 2.0)]
    assert dead_letters == []


def test_ndeath_after_new_birth():
    codec = born_codec()
    codec.decode(node_birth(bd_seq=BD_SEQ + 1), topic("NBIRTH"), RECEIVED_US)
    codec.take_events()

    codec.decode(ndeath(BD_SEQ), topic("NDEATH"), RECEIVED_US)
    assert codec.take_events() == []

    codec.decode(ndeath(BD_SEQ + 1), topic("NDEATH"), RECEIVED_US)
    assert [e["event"] for e in codec.take_events()] == ["death", "death"]


def test_ddeath_device_event():
    codec = born_codec()

    decoded = codec.decode(payload(seq=2), topic("DDEATH", DEVICE), RECEIVED_US)

    assert decoded == Decoded([], [])
    events = codec.take_events()
    assert len(events) == 1
    event = events[0]
    assert event["event"] == "death"
    assert event["scope"] == "device"
    assert event["device_id"] == DEVICE_ID
    assert event["metrics"] == ["Inputs/Pressure", "Outputs/Run"]
    assert event["ts_us"] == TS_US
    assert codec.counters["sequence_gaps"] == 0


def test_ddeath_keeps_device_aliases():
    codec = born_codec()
    codec.decode(payload(seq=2), topic("DDEATH", DEVICE), RECEIVED_US)

    readings, _ = single(codec, metric(alias=20, double_value=9.0), verb="DDATA", device=DEVICE, seq=3)

    assert [(r.metric, r.value) for r in readings] == [("Inputs/Pressure", 9.0)]


def test_event_ts_falls_back_to_receive():
    codec = new_codec()

    codec.decode(payload(metric("a", double_value=1.0), seq=0, ts=None), topic("NBIRTH"), RECEIVED_US)
    codec.decode(payload(seq=1, ts=1000), topic("DDEATH", DEVICE), RECEIVED_US)

    assert [e["ts_us"] for e in codec.take_events()] == [RECEIVED_US, RECEIVED_US]


# Values

VALUE_CASES = [
    ("int8_sign_extended", pb.Int8, "int_value", 2**32 - 1, -1.0),
    ("int8_offset", pb.Int8, "int_value", 2**8 - 128, -128.0),
    ("int8_positive", pb.Int8, "int_value", 127, 127.0),
    ("int16_sign_extended", pb.Int16, "int_value", 2**32 - 2, -2.0),
    ("int16_offset", pb.Int16, "int_value", 2**16 - 1, -1.0),
    ("int32_negative", pb.Int32, "int_value", 2**32 - 1, -1.0),
    ("int32_max", pb.Int32, "int_value", 2**31 - 1, 2147483647.0),
    ("int32_min", pb.Int32, "int_value", 2**31, -2147483648.0),
    ("int64_negative", pb.Int64, "long_value", 2**64 - 1, -1.0),
    ("int64_min", pb.Int64, "long_value", 2**63, -(2.0**63)),
    ("int64_in_int_value", pb.Int64, "int_value", 42, 42.0),
    ("uint8", pb.UInt8, "int_value", 200, 200.0),
    ("uint16", pb.UInt16, "int_value", 65535, 65535.0),
    ("uint32_above_2_31", pb.UInt32, "int_value", 2**31 + 5, 2147483653.0),
    ("uint32_max", pb.UInt32, "int_value", 2**32 - 1, 4294967295.0),
    ("uint32_in_long_value", pb.UInt32, "long_value", 2**32 - 1, 4294967295.0),
    ("uint64_above_2_63", pb.UInt64, "long_value", 2**63 + 2048, 9223372036854777856.0),
    ("uint64_max", pb.UInt64, "long_value", 2**64 - 1, 18446744073709551615.0),
    ("float", pb.Float, "float_value", 21.5, 21.5),
    ("float_negative", pb.Float, "float_value", -0.25, -0.25),
    ("double", pb.Double, "double_value", 1e300, 1e300),
    ("boolean_true", pb.Boolean, "boolean_value", True, 1.0),
    ("boolean_false", pb.Boolean, "boolean_value", False, 0.0),
    ("datetime", pb.DateTime, "long_value", TS_MS, float(TS_MS)),
    ("no_datatype_unsigned", None, "int_value", 2**32 - 1, 4294967295.0),
    ("unknown_datatype", 99, "long_value", 2**64 - 1, 18446744073709551615.0),
]


@pytest.mark.parametrize(
    ("datatype", "field", "raw", "expected"), [case[1:] for case in VALUE_CASES], ids=[case[0] for case in VALUE_CASES]
)
def test_value_by_datatype(datatype, field, raw, expected):
    codec = new_codec()

    readings, dead_letters = single(codec, metric("m", datatype=datatype, **{field: raw}))

    assert dead_letters == []
    assert len(readings) == 1
    assert readings[0].value == expected
    assert isinstance(readings[0].value, float)


def test_float_widened_exactly():
    codec = new_codec()

    readings, _ = single(codec, metric("m", datatype=pb.Float, float_value=12.1))

    assert readings[0].value == pytest.approx(12.1, abs=1e-6)
    assert readings[0].value != 12.1


def test_datatype_learned_from_birth():
    codec = new_codec()
    codec.decode(payload(metric("t", alias=1, datatype=pb.Int16, int_value=1), seq=0), topic("NBIRTH"), RECEIVED_US)

    by_alias, _ = single(codec, metric(alias=1, int_value=2**16 - 3), seq=1)
    by_name, _ = single(codec, metric("t", int_value=2**16 - 4), seq=2)

    assert by_alias[0].value == -3.0
    assert by_name[0].value == -4.0


UNSUPPORTED_CASES = [
    ("string", {"datatype": pb.String, "string_value": "on"}),
    ("text", {"datatype": pb.Text, "string_value": "long text"}),
    ("uuid", {"datatype": pb.UUID, "string_value": "0f8fad5b-d9cb-469f-a165-70867728950e"}),
    ("bytes", {"datatype": pb.Bytes, "bytes_value": b"\x00\x01"}),
    ("file", {"datatype": pb.File, "bytes_value": b"file body"}),
    ("int32_array", {"datatype": pb.Int32Array, "bytes_value": b"\x01\x00\x00\x00"}),
    ("dataset", {"datatype": pb.DataSet, "dataset_value": pb.Payload.DataSet(num_of_columns=1, columns=["a"], types=[pb.Int32])}),
    ("template", {"datatype": pb.Template, "template_value": pb.Payload.Template(is_definition=True)}),
    ("extension", {"extension_value": pb.Payload.Metric.MetricValueExtension()}),
]


@pytest.mark.parametrize("fields", [case[1] for case in UNSUPPORTED_CASES], ids=[case[0] for case in UNSUPPORTED_CASES])
def test_unsupported_value_type(fields):
    codec = new_codec()

    readings, dead_letters = single(codec, metric("odd", **fields), metric("fine", double_value=1.0))

    assert [r.metric for r in readings] == ["fine"]
    assert len(dead_letters) == 1
    assert dead_letters[0].reason == Reason.UNSUPPORTED_VALUE_TYPE.value
    assert "'odd'" in dead_letters[0].detail
    assert pb.Payload.FromString(dead_letters[0].raw).metrics[0].name == "odd"


@pytest.mark.parametrize(
    ("field", "raw"),
    [("float_value", math.inf), ("float_value", math.nan), ("double_value", -math.inf), ("double_value", math.nan)],
    ids=["float_inf", "float_nan", "double_ninf", "double_nan"],
)
def test_non_finite_value(field, raw):
    codec = new_codec()

    readings, dead_letters = single(codec, metric("m", **{field: raw}))

    assert readings == []
    assert [d.reason for d in dead_letters] == ["non_finite_value"]


def test_is_null_skipped_and_counted():
    codec = new_codec()

    readings, dead_letters = single(
        codec, metric("gone", datatype=pb.Double, is_null=True), metric("here", double_value=2.0)
    )

    assert [r.metric for r in readings] == ["here"]
    assert dead_letters == []
    assert codec.counters["null_values"] == 1


def test_missing_value_rejected():
    codec = new_codec()

    readings, dead_letters = single(codec, metric("empty", datatype=pb.Double))

    assert readings == []
    assert [d.reason for d in dead_letters] == ["missing_field"]


def test_metric_without_name_or_alias():
    codec = new_codec()

    readings, dead_letters = single(codec, metric(double_value=1.0))

    assert readings == []
    assert [d.reason for d in dead_letters] == ["missing_field"]


def test_metric_name_not_utf8():
    # Field 2 (metrics) of the Payload contains a Metric whose name (field 1) is the bytes 0xff 0xfe
    # and whose boolean_value (field 14) is true.
    data = b"\x12\x06\x0a\x02\xff\xfe\x70\x01" + payload(seq=2)

    readings, dead_letters = new_codec().decode(data, topic("NDATA"), RECEIVED_US)

    assert readings == []
    assert [d.reason for d in dead_letters] == ["invalid_utf8"]


def test_msg_id_stable_and_distinct():
    codec = new_codec()
    first, _ = single(codec, metric("m", double_value=1.0), metric("m", double_value=2.0))
    again, _ = single(codec, metric("m", double_value=1.0))

    assert first[0].msg_id == again[0].msg_id
    assert first[0].msg_id != first[1].msg_id


# Timestamps


def test_metric_timestamp_preferred():
    codec = new_codec()

    readings, _ = codec.decode(payload(metric("m", ts=TS_MS + 5, double_value=1.0), ts=TS_MS), topic("NDATA"), RECEIVED_US)

    assert readings[0].ts_us == TS_US + 5000


def test_payload_timestamp_fallback():
    codec = new_codec()

    readings, _ = codec.decode(payload(metric("m", ts=None, double_value=1.0), ts=TS_MS - 7), topic("NDATA"), RECEIVED_US)

    assert readings[0].ts_us == TS_US - 7000


def test_missing_timestamp_rejected():
    codec = new_codec()

    readings, dead_letters = codec.decode(payload(metric("m", ts=None, double_value=1.0), ts=None), topic("NDATA"), RECEIVED_US)

    assert readings == []
    assert [d.reason for d in dead_letters] == ["missing_timestamp"]


def test_missing_timestamp_receive_time():
    codec = new_codec(missing_timestamp="receive_time")

    readings, _ = codec.decode(payload(metric("m", ts=None, double_value=1.0), ts=None), topic("NDATA"), RECEIVED_US)

    assert readings[0].ts_us == RECEIVED_US
    assert readings[0].marks == (MARK_RECEIVE_TIME,)


def test_sent_timestamp_unmarked():
    codec = new_codec(missing_timestamp="receive_time")

    readings, _ = single(codec, metric("m", double_value=1.0))

    assert readings[0].marks == ()


@pytest.mark.parametrize(
    "ts_ms",
    [946684799999, 0, RECEIVED_US // 1000 + MAX_FUTURE_MS + 1, 2**64 - 1, TS_MS // 1000],
    ids=["before_2000", "zero", "future", "uint64_max", "seconds_not_ms"],
)
def test_timestamp_out_of_range(ts_ms):
    codec = new_codec()

    readings, dead_letters = single(codec, metric("m", ts=ts_ms, double_value=1.0))

    assert readings == []
    assert [d.reason for d in dead_letters] == ["timestamp_out_of_range"]


def test_max_future_boundary_accepted():
    codec = new_codec()
    edge_ms = RECEIVED_US // 1000 + MAX_FUTURE_MS

    readings, dead_letters = single(codec, metric("m", ts=edge_ms, double_value=1.0))

    assert dead_letters == []
    assert readings[0].ts_us == edge_ms * 1000


# Topics and whole payloads

BAD_TOPICS = [
    ("not_sparkplug", "sensors/site1/dev1/temp"),
    ("empty", ""),
    ("other_namespace", f"spAv1.0/{GROUP}/NDATA/{EDGE}"),
    ("too_short", f"spBv1.0/{GROUP}/NDATA"),
    ("too_long", f"spBv1.0/{GROUP}/DDATA/{EDGE}/{DEVICE}/x"),
    ("node_verb_with_device", f"spBv1.0/{GROUP}/NDATA/{EDGE}/{DEVICE}"),
    ("device_verb_without_device", f"spBv1.0/{GROUP}/DDATA/{EDGE}"),
    ("unknown_verb", f"spBv1.0/{GROUP}/NDATUM/{EDGE}"),
    ("lowercase_verb", f"spBv1.0/{GROUP}/ndata/{EDGE}"),
    ("empty_group", f"spBv1.0//NDATA/{EDGE}"),
    ("empty_device", f"spBv1.0/{GROUP}/DDATA/{EDGE}/"),
]


@pytest.mark.parametrize("bad_topic", [case[1] for case in BAD_TOPICS], ids=[case[0] for case in BAD_TOPICS])
def test_bad_topic(bad_topic):
    data = payload(metric("m", double_value=1.0), seq=0)

    readings, dead_letters = new_codec().decode(data, bad_topic, RECEIVED_US)

    assert readings == []
    assert len(dead_letters) == 1
    assert dead_letters[0].reason == Reason.TOPIC_MISMATCH.value
    assert dead_letters[0].raw == data
    assert dead_letters[0].source == bad_topic


@pytest.mark.parametrize(
    "state_topic", ["spBv1.0/STATE/scada1", "STATE/scada1", f"spBv1.0/{GROUP}/STATE/{EDGE}"], ids=["v3", "v2", "verb"]
)
def test_state_ignored(state_topic):
    codec = new_codec()

    decoded = codec.decode(b'{"online": true, "timestamp": 1714564800123}', state_topic, RECEIVED_US)

    assert decoded == Decoded([], [])
    assert codec.counters["state_messages"] == 1
    assert codec.take_events() == []


@pytest.mark.parametrize("verb,device", [("NCMD", None), ("DCMD", DEVICE)])
def test_commands_ignored(verb, device):
    codec = new_codec()

    decoded = codec.decode(payload(metric("Node Control/Rebirth", boolean_value=True)), topic(verb, device), RECEIVED_US)

    assert decoded == Decoded([], [])
    assert codec.counters["commands_ignored"] == 1


def test_parse_topic_parts():
    assert parse_topic(f"spBv1.0/{GROUP}/DDATA/{EDGE}/{DEVICE}") == ("DDATA", GROUP, EDGE, DEVICE)
    assert parse_topic(f"spBv1.0/{GROUP}/NBIRTH/{EDGE}") == ("NBIRTH", GROUP, EDGE, "")


BAD_PAYLOADS = [
    ("empty", b"", {}, "empty_payload"),
    ("too_large", payload(metric("m", string_value="x" * 200)), {"max_payload_bytes": 100}, "payload_too_large"),
    ("garbage", b"\xff\xff\xff\xff\xff", {}, "invalid_protobuf"),
    ("truncated", payload(metric("Supply Voltage", double_value=1.0), seq=1)[:-3], {}, "invalid_protobuf"),
    ("json", b'{"temp": 21.5}', {}, "invalid_protobuf"),
]


@pytest.mark.parametrize(
    ("data", "options", "reason"), [case[1:] for case in BAD_PAYLOADS], ids=[case[0] for case in BAD_PAYLOADS]
)
def test_bad_payload(data, options, reason):
    codec = new_codec(**options)

    readings, dead_letters = codec.decode(data, topic("NDATA"), RECEIVED_US)

    assert readings == []
    assert len(dead_letters) == 1
    assert dead_letters[0].reason == reason
    assert dead_letters[0].raw == data
    assert codec.counters["internal_errors"] == 0


def test_dead_letter_raw_bounded():
    data = b"\xff" * 100

    _, dead_letters = new_codec(raw_bytes=10).decode(data, topic("NDATA"), RECEIVED_US)

    assert dead_letters[0].raw == data[:10]
    assert dead_letters[0].raw_size == 100


def test_metric_dead_letter_bounded():
    codec = new_codec(raw_bytes=8)

    _, dead_letters = single(codec, metric("long name " * 10, string_value="text"))

    assert len(dead_letters[0].raw) == 8
    assert dead_letters[0].raw_size > 100


def test_empty_metrics_no_output():
    codec = new_codec()

    decoded = codec.decode(payload(seq=1), topic("NDATA"), RECEIVED_US)

    assert decoded == Decoded([], [])


# Fuzz: whatever arrives, decode returns Decoded with finite readings and coded dead letters.

REASONS = {reason.value for reason in Reason}
VERBS = ["NBIRTH", "NDATA", "NDEATH", "NCMD", "DBIRTH", "DDATA", "DDEATH", "DCMD", "STATE", "BOGUS"]

topics = st.one_of(
    st.builds(
        lambda verb, group, edge, device: "/".join(["spBv1.0", group, verb, edge, *([device] if device else [])]),
        st.sampled_from(VERBS),
        st.sampled_from([GROUP, "", "g/h"]),
        st.sampled_from([EDGE, "gw8", ""]),
        st.sampled_from([None, DEVICE, ""]),
    ),
    st.text(max_size=40),
)

metrics = st.builds(
    lambda name, alias, datatype, ts, value: _fuzz_metric(name, alias, datatype, ts, value),
    st.one_of(st.none(), st.sampled_from(["bdSeq", "a", "b/c"]), st.text(max_size=8)),
    st.one_of(st.none(), st.integers(0, 4), st.integers(0, 2**64 - 1)),
    st.one_of(st.none(), st.integers(0, 40), st.integers(0, 2**32 - 1)),
    st.one_of(st.none(), st.integers(0, 2**64 - 1), st.just(TS_MS)),
    st.one_of(
        st.none(),
        st.tuples(st.just("int_value"), st.integers(0, 2**32 - 1)),
        st.tuples(st.just("long_value"), st.integers(0, 2**64 - 1)),
        st.tuples(st.just("float_value"), st.floats(width=32)),
        st.tuples(st.just("double_value"), st.floats()),
        st.tuples(st.just("boolean_value"), st.booleans()),
        st.tuples(st.just("string_value"), st.text(max_size=5)),
        st.tuples(st.just("bytes_value"), st.binary(max_size=5)),
        st.tuples(st.just("is_null"), st.booleans()),
    ),
)


def _fuzz_metric(name, alias, datatype, ts, value) -> pb.Payload.Metric:
    built = metric(name, alias, datatype, ts)
    if value is not None:
        setattr(built, value[0], value[1])
    return built


structured = st.builds(
    lambda items, seq, ts: payload(*items, seq=seq, ts=ts),
    st.lists(metrics, max_size=4),
    st.one_of(st.none(), st.integers(0, 300)),
    st.one_of(st.none(), st.just(TS_MS), st.integers(0, 2**64 - 1)),
)

messages = st.lists(st.tuples(st.one_of(st.binary(max_size=64), structured), topics), min_size=1, max_size=6)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_fuzz_never_raises(batch):
    codec = new_codec(raw_bytes=32)

    for data, fuzz_topic in batch:
        decoded = codec.decode(data, fuzz_topic, RECEIVED_US)

        assert isinstance(decoded, Decoded)
        for reading in decoded.readings:
            assert isinstance(reading.value, float)
            assert math.isfinite(reading.value)
            assert isinstance(reading.metric, str)
        for letter in decoded.dead_letters:
            assert letter.reason in REASONS
            assert len(letter.raw) <= 32
        codec.clock.now += 1.0

    assert codec.counters["internal_errors"] == 0
    for command_topic, command in codec.take_commands():
        assert pb.Payload.FromString(command).metrics[0].name == "Node Control/Rebirth"
        assert parse_topic(command_topic).verb == "NCMD"
