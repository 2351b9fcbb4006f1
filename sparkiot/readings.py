"""The reading, the dead letter and the other records every stage exchanges.

A *reading* is one measurement of one metric of one device. A payload that cannot become
readings becomes a *dead letter* that keeps the raw bytes (up to a bound), the topic, a stable
reason code and a message for the operator. Arrow schemas are the stored form (landing log,
Parquet tables); Spark schemas are derived from them so the two never drift apart.

Timestamps are integers of microseconds since the Unix epoch, UTC, inside Python code. They become
``timestamp[us, tz=UTC]`` in Arrow and ``TIMESTAMP`` in Spark.
"""

from __future__ import annotations

import hashlib
import struct
from enum import Enum
from typing import NamedTuple

import pyarrow as pa


class Reading(NamedTuple):
    """One measurement of one metric of one device."""

    device_id: str
    metric: str
    ts_us: int
    value: float
    unit: str | None
    site: str | None
    msg_id: str
    ingest_us: int
    source: str
    # Why a reading deserves a second look: MARK_RECEIVE_TIME, MARK_RETAINED.
    marks: tuple[str, ...] = ()


# The payload had no timestamp and the configuration allowed the receive time instead.
MARK_RECEIVE_TIME = "receive_time"
# The broker replayed a retained message at subscribe time and the configuration accepts those.
MARK_RETAINED = "retained"


class DeadLetter(NamedTuple):
    """A payload, or part of one, that could not become readings."""

    raw: bytes
    raw_size: int
    source: str
    reason: str
    detail: str
    received_us: int


class Alert(NamedTuple):
    """An anomaly flagged on one reading."""

    alert_id: str
    device_id: str
    metric: str
    ts_us: int
    value: float
    score: float
    mean: float
    stddev: float
    rule: str
    site: str | None
    detected_us: int


class Reason(str, Enum):
    """Stable reason codes of dead letters. Values are stored; never rename one."""

    EMPTY_PAYLOAD = "empty_payload"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    UNSUPPORTED_SHAPE = "unsupported_shape"
    MISSING_FIELD = "missing_field"
    INVALID_FIELD = "invalid_field"
    NON_NUMERIC_VALUE = "non_numeric_value"
    NON_FINITE_VALUE = "non_finite_value"
    MISSING_TIMESTAMP = "missing_timestamp"
    INVALID_TIMESTAMP = "invalid_timestamp"
    TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
    TOPIC_MISMATCH = "topic_mismatch"
    RETAINED_MESSAGE = "retained_message"
    DECODER_ERROR = "decoder_error"
    INVALID_CBOR = "invalid_cbor"
    INVALID_SENML = "invalid_senml"
    INVALID_PROTOBUF = "invalid_protobuf"
    INVALID_LINE_PROTOCOL = "invalid_line_protocol"
    UNKNOWN_ALIAS = "unknown_alias"
    UNSUPPORTED_VALUE_TYPE = "unsupported_value_type"
    # A finite value the edge agent's aggregates cannot hold (its square overflows a double).
    VALUE_OUT_OF_RANGE = "value_out_of_range"
    # The edge agent failed on a decoded reading; the reading is kept instead of stopping the agent.
    PROCESSING_ERROR = "processing_error"


_TS = pa.timestamp("us", tz="UTC")

READING_SCHEMA = pa.schema(
    [
        pa.field("device_id", pa.string(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("ts", _TS, nullable=False),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("unit", pa.string()),
        pa.field("site", pa.string()),
        pa.field("msg_id", pa.string(), nullable=False),
        pa.field("ingest_ts", _TS, nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("marks", pa.list_(pa.string()), nullable=False),
    ]
)

# A late reading keeps every reading column plus the watermark it fell behind.
LATE_SCHEMA = READING_SCHEMA.append(pa.field("watermark", _TS, nullable=False))

DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field("raw", pa.binary(), nullable=False),
        pa.field("raw_size", pa.int64(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("received_ts", _TS, nullable=False),
    ]
)

ALERT_SCHEMA = pa.schema(
    [
        pa.field("alert_id", pa.string(), nullable=False),
        pa.field("device_id", pa.string(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("ts", _TS, nullable=False),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("mean", pa.float64(), nullable=False),
        pa.field("stddev", pa.float64(), nullable=False),
        pa.field("rule", pa.string(), nullable=False),
        pa.field("site", pa.string()),
        pa.field("detected_ts", _TS, nullable=False),
    ]
)

# Device lifecycle events reported by stateful codecs (Sparkplug BIRTH and DEATH).
EVENT_SCHEMA = pa.schema(
    [
        pa.field("event", pa.string(), nullable=False),
        pa.field("device_id", pa.string(), nullable=False),
        pa.field("site", pa.string()),
        pa.field("scope", pa.string(), nullable=False),
        pa.field("ts", _TS, nullable=False),
        pa.field("received_ts", _TS, nullable=False),
        pa.field("metrics", pa.list_(pa.string()), nullable=False),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    "readings": READING_SCHEMA,
    "late": LATE_SCHEMA,
    "dead_letters": DEAD_LETTER_SCHEMA,
    "alerts": ALERT_SCHEMA,
    "events": EVENT_SCHEMA,
}


def readings_to_batch(readings: list[Reading]) -> pa.RecordBatch:
    """Build a record batch of the reading schema from readings, column by column."""
    columns = list(zip(*readings)) if readings else [[] for _ in Reading._fields]
    return pa.RecordBatch.from_arrays(
        [pa.array(column, type=field.type) for column, field in zip(columns, READING_SCHEMA)],
        schema=READING_SCHEMA,
    )


def late_to_batch(readings: list[Reading], watermark_us: list[int]) -> pa.RecordBatch:
    """Build a record batch of the late schema: readings plus the watermark each one missed."""
    batch = readings_to_batch(readings)
    return pa.RecordBatch.from_arrays(
        [*batch.columns, pa.array(watermark_us, type=_TS)], schema=LATE_SCHEMA
    )


def dead_letters_to_batch(letters: list[DeadLetter]) -> pa.RecordBatch:
    """Build a record batch of the dead-letter schema."""
    columns = list(zip(*letters)) if letters else [[] for _ in DeadLetter._fields]
    return pa.RecordBatch.from_arrays(
        [pa.array(column, type=field.type) for column, field in zip(columns, DEAD_LETTER_SCHEMA)],
        schema=DEAD_LETTER_SCHEMA,
    )


def alerts_to_batch(alerts: list[Alert]) -> pa.RecordBatch:
    """Build a record batch of the alert schema."""
    columns = list(zip(*alerts)) if alerts else [[] for _ in Alert._fields]
    return pa.RecordBatch.from_arrays(
        [pa.array(column, type=field.type) for column, field in zip(columns, ALERT_SCHEMA)],
        schema=ALERT_SCHEMA,
    )


def events_to_batch(events: list[dict]) -> pa.RecordBatch:
    """Build a record batch of the event schema from codec event dicts."""
    return pa.RecordBatch.from_arrays(
        [
            pa.array([event["event"] for event in events], type=pa.string()),
            pa.array([event["device_id"] for event in events], type=pa.string()),
            pa.array([event.get("site") for event in events], type=pa.string()),
            pa.array([event["scope"] for event in events], type=pa.string()),
            pa.array([event["ts_us"] for event in events], type=_TS),
            pa.array([event["received_us"] for event in events], type=_TS),
            pa.array([list(event.get("metrics", ())) for event in events], type=pa.list_(pa.string())),
        ],
        schema=EVENT_SCHEMA,
    )


_HASH_PACK = struct.Struct("<qd")


def derive_msg_id(device_id: str, metric: str, ts_us: int, value: float) -> str:
    """Return the deduplication key of a reading whose payload carries no id.

    The key is a 128-bit BLAKE2b digest of (device_id, metric, ts, value), so the same reading
    sent twice gets the same key and two different readings collide with negligible probability.
    """
    digest = hashlib.blake2b(digest_size=16)
    digest.update(device_id.encode())
    digest.update(b"\x00")
    digest.update(metric.encode())
    digest.update(b"\x00")
    digest.update(_HASH_PACK.pack(ts_us, value))
    return digest.hexdigest()
