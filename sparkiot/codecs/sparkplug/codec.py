"""Sparkplug B payloads to readings, with the per-edge-node state that the protocol needs.

Topics are ``spBv1.0/{group}/{verb}/{edge_node}`` for the node verbs NBIRTH, NDATA, NDEATH and NCMD,
and ``spBv1.0/{group}/{verb}/{edge_node}/{device}`` for DBIRTH, DDATA, DDEATH and DCMD. Any other
topic is a ``topic_mismatch`` dead letter, except STATE topics. A reading gets ``device_id``
``{group}/{edge_node}`` (node metrics) or ``{group}/{edge_node}/{device}`` (device metrics), ``site``
= group, ``metric`` = the metric name and ``unit`` = None.

State, kept per edge node and device for the life of the codec:

* A BIRTH binds each metric name to its alias and datatype, replacing what the previous BIRTH of
  that node or device bound. Its metrics also become readings, and a ``birth`` event is queued.
  An NBIRTH leaves the device tables in place until each device sends its own DBIRTH.
* A DATA metric that carries only an alias gets its name from the BIRTH. An alias that no BIRTH
  bound is an ``unknown_alias`` dead letter and queues a rebirth request: an NCMD to
  ``spBv1.0/{group}/NCMD/{edge_node}`` whose metric ``Node Control/Rebirth`` is boolean true, at
  most one per edge node per ``rebirth_interval`` seconds of the injectable monotonic clock.
  :meth:`SparkplugCodec.take_commands` returns the queued ``(topic, payload)`` pairs to publish.
* ``seq`` counts 0 to 255 per edge node over NBIRTH, NDATA, DBIRTH, DDATA and DDEATH, and 255 wraps
  to 0. An NBIRTH restarts the count. A number other than the expected one increments
  ``counters["sequence_gaps"]``, and the message is decoded all the same.
* The ``bdSeq`` metric of the NBIRTH is stored. An NDEATH whose ``bdSeq`` differs from it, or that
  has none while the NBIRTH had one, is stale: it belongs to an earlier session of the node, so it
  is ignored and counted in ``counters["stale_deaths"]``. When no NBIRTH with a ``bdSeq`` was seen
  (the codec started after the birth), every NDEATH is applied.
* NDEATH and DDEATH produce no readings. They queue ``death`` events that list the metric names
  that are now stale. An NDEATH queues one node event and one device event per device of the node,
  because a node's death takes its devices offline. Alias tables stay until the next BIRTH.
  :meth:`SparkplugCodec.take_events` returns the queued events.

Values: int_value and long_value become floats. They are read as unsigned, as their protobuf types
are, except for the signed datatypes Int8, Int16, Int32 and Int64, whose low 8, 16, 32 or 64 bits
are read as two's complement. So both the sign-extended encoding and the ``value + 2**bits``
encoding of a negative Int8 decode to the same number. DateTime therefore becomes its milliseconds
since the epoch. float_value (widened exactly to a double) and double_value must be finite, else
``non_finite_value``. boolean_value becomes 1.0 or 0.0. A metric with ``is_null`` set gives no
reading and is counted in ``counters["null_values"]``. The datatype comes from the metric itself,
else from the BIRTH, and without either the integer is read as unsigned.

Decision: string, bytes (Bytes, File and every array type), DataSet, Template and extension values
are ``unsupported_value_type`` dead letters. A reading is one float, and such a value has no faithful
single float. The dead letter keeps the metric, up to the dead-letter byte bound, for inspection.

Timestamps: the metric timestamp, else the payload timestamp, both in milliseconds since the epoch,
else the ``codec.missing_timestamp`` policy, whose receive time marks the reading ``receive_time``.
``codec.min_timestamp`` and ``codec.max_future`` bound them (``timestamp_out_of_range``). Events use the payload timestamp, or the receive time when the
payload has none or it is out of bounds.

Payloads: empty is ``empty_payload``, larger than ``codec.max_payload_bytes`` is ``payload_too_large``
(checked before parsing), and bytes that are not a Sparkplug B protobuf are ``invalid_protobuf``.
A failed metric becomes its own dead letter, and the others still become readings. Its raw bytes
are a Payload that contains only that metric plus the payload's timestamp and seq, so it can be
decoded again.

STATE messages (``spBv1.0/STATE/{host_id}``, the older ``STATE/{host_id}``, and a STATE verb in the
verb position) describe host applications. NCMD and DCMD are commands to edge nodes, including the
rebirth requests of this codec when the ingest subscribes to ``spBv1.0/#``. Both give no readings
and no dead letters, and only their counters grow.

msg_id: ``derive_msg_id(device_id, metric, ts_us, value)``. Sparkplug carries no unique message id,
because ``uuid`` names a schema or encoding, not a message, and ``seq`` wraps every 256 messages and
restarts at each NBIRTH. The derived key makes a redelivered message, and a BIRTH that repeats a
value already sent with the same timestamp, collapse into one reading.

:meth:`SparkplugCodec.decode` never raises. An unexpected error becomes an ``invalid_protobuf`` dead
letter and increments ``counters["internal_errors"]``.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import NamedTuple

from sparkiot.codecs.json import Decoded
from sparkiot.codecs.sparkplug import sparkplug_b_pb2 as pb
from sparkiot.config import CodecConfig
from sparkiot.codecs.common import Reject as _Reject
from sparkiot.readings import MARK_RECEIVE_TIME, DeadLetter, Reading, Reason, derive_msg_id

log = logging.getLogger(__name__)

NAMESPACE = "spBv1.0"
REBIRTH_METRIC = "Node Control/Rebirth"
BD_SEQ_METRIC = "bdSeq"

NODE_VERBS = frozenset({"NBIRTH", "NDATA", "NDEATH", "NCMD"})
DEVICE_VERBS = frozenset({"DBIRTH", "DDATA", "DDEATH", "DCMD"})
_SEQUENCED_VERBS = frozenset({"NBIRTH", "NDATA", "DBIRTH", "DDATA", "DDEATH"})

# Events wait here until the ingest takes them; past this many the oldest are dropped and counted.
MAX_PENDING_EVENTS = 100_000

_SIGNED_BITS = {pb.Int8: 8, pb.Int16: 16, pb.Int32: 32, pb.Int64: 64}


class SparkplugTopic(NamedTuple):
    """The parts of a Sparkplug topic; ``group``, ``edge_node`` and ``device`` are empty for STATE."""

    verb: str
    group: str
    edge_node: str
    device: str


def parse_topic(topic: str) -> SparkplugTopic | None:
    """Return the parts of a Sparkplug B topic, or None when ``topic`` is not one."""
    parts = topic.split("/")
    if len(parts) == 2 and parts[0] == "STATE" and parts[1]:
        return SparkplugTopic("STATE", "", "", "")
    if parts[0] != NAMESPACE:
        return None
    if len(parts) == 3 and parts[1] == "STATE" and parts[2]:
        return SparkplugTopic("STATE", "", "", "")
    if len(parts) not in (4, 5) or not all(parts[1:]):
        return None
    verb = parts[2]
    if verb == "STATE":
        return SparkplugTopic("STATE", "", "", "")
    if len(parts) == 4 and verb in NODE_VERBS:
        return SparkplugTopic(verb, parts[1], parts[3], "")
    if len(parts) == 5 and verb in DEVICE_VERBS:
        return SparkplugTopic(verb, parts[1], parts[3], parts[4])
    return None


def rebirth_request(group: str, edge_node: str, timestamp_ms: int) -> tuple[str, bytes]:
    """Return the topic and payload of an NCMD that requests an edge node to publish its BIRTHs again."""
    payload = pb.Payload(timestamp=timestamp_ms)
    payload.metrics.add(name=REBIRTH_METRIC, timestamp=timestamp_ms, datatype=pb.Boolean, boolean_value=True)
    return f"{NAMESPACE}/{group}/NCMD/{edge_node}", payload.SerializeToString()



class _MetricTable:
    """The metrics that one BIRTH declared for an edge node or a device."""

    __slots__ = ("datatypes", "aliases")

    def __init__(self) -> None:
        self.datatypes: dict[str, int | None] = {}  # name to datatype, in BIRTH order
        self.aliases: dict[int, str] = {}  # alias to name


class _EdgeNode:
    """State of one edge node and its devices: metric tables, sequence, bdSeq and last rebirth request."""

    __slots__ = ("metrics", "devices", "next_seq", "bd_seq", "last_rebirth")

    def __init__(self) -> None:
        self.metrics = _MetricTable()
        self.devices: dict[str, _MetricTable] = {}
        self.next_seq: int | None = None
        self.bd_seq: int | None = None
        self.last_rebirth: float | None = None


class _Message(NamedTuple):
    """One parsed message and where it came from."""

    topic: str
    parts: SparkplugTopic
    device_id: str
    payload: pb.Payload
    received_us: int


class SparkplugCodec:
    """Decode Sparkplug B messages into readings, keeping the alias and sequence state per edge node."""

    def __init__(
        self,
        config: CodecConfig,
        *,
        dead_letter_raw_bytes: int = 4096,
        rebirth_interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.dead_letter_raw_bytes = dead_letter_raw_bytes
        self.rebirth_interval = rebirth_interval
        self.clock = clock
        self.counters: Counter[str] = Counter()
        self._min_us = int(config.min_timestamp.timestamp()) * 1_000_000
        self._max_future_us = int(config.max_future * 1_000_000)
        # NOTE: entries are never evicted, so memory grows with the number of distinct (group, edge node)
        # pairs and devices seen on valid Sparkplug topics since the codec started.
        self._nodes: dict[tuple[str, str], _EdgeNode] = {}
        self._commands: dict[str, bytes] = {}
        self._events: deque[dict] = deque()

    # -- public interface --------------------------------------------------------------------

    def decode(self, payload: bytes, topic: str, received_us: int) -> Decoded:
        """Decode one message received on ``topic`` at ``received_us`` (UTC microseconds)."""
        try:
            return self._decode(payload, topic, received_us)
        except Exception as exc:  # the ingest must never stop on one message
            self.counters["internal_errors"] += 1
            log.error("Sparkplug decoder failed on a message on topic %r: %r; stored as a dead letter", topic, exc)
            reject = _Reject(Reason.INVALID_PROTOBUF, f"the Sparkplug decoder failed on this message: {exc!r}")
            raw = bytes(payload) if isinstance(payload, (bytes, bytearray, memoryview)) else b""
            return Decoded([], [self._dead_letter(raw, str(topic), reject, received_us)])

    def take_commands(self) -> list[tuple[str, bytes]]:
        """Return the queued ``(topic, payload)`` commands to publish, and clear the queue.

        At most one command per edge node is queued: a request made while an earlier one is still
        queued replaces it.
        """
        commands = list(self._commands.items())
        self._commands.clear()
        return commands

    def take_events(self) -> list[dict]:
        """Return the queued birth and death events, oldest first, and clear the queue.

        Each event has the keys ``event`` ("birth" or "death"), ``device_id``, ``site``, ``scope``
        ("node" or "device"), ``ts_us``, ``received_us`` and ``metrics`` (the metric names).
        """
        events = list(self._events)
        self._events.clear()
        return events

    # -- dispatch ----------------------------------------------------------------------------

    def _decode(self, payload: bytes, topic: str, received_us: int) -> Decoded:
        parts = parse_topic(topic)
        if parts is None:
            reject = _Reject(
                Reason.TOPIC_MISMATCH,
                f"topic {topic!r} is not a Sparkplug B topic: expected spBv1.0/GROUP/VERB/EDGE_NODE for "
                "NBIRTH, NDATA, NDEATH, NCMD or spBv1.0/GROUP/VERB/EDGE_NODE/DEVICE for DBIRTH, DDATA, DDEATH, DCMD",
            )
            return Decoded([], [self._dead_letter(payload, topic, reject, received_us)])
        if parts.verb == "STATE":
            self.counters["state_messages"] += 1
            return Decoded([], [])
        if parts.verb in ("NCMD", "DCMD"):
            self.counters["commands_ignored"] += 1
            return Decoded([], [])

        try:
            parsed = self._parse(payload)
        except _Reject as reject:
            return Decoded([], [self._dead_letter(payload, topic, reject, received_us)])

        device_id = f"{parts.group}/{parts.edge_node}"
        if parts.device:
            device_id = f"{device_id}/{parts.device}"
        message = _Message(topic, parts, device_id, parsed, received_us)
        node = self._nodes.get((parts.group, parts.edge_node))
        if node is None:
            node = self._nodes[(parts.group, parts.edge_node)] = _EdgeNode()

        if parts.verb in _SEQUENCED_VERBS:
            self._check_sequence(node, message)
        if parts.verb == "NDEATH":
            self._node_death(node, message)
            return Decoded([], [])
        if parts.verb == "DDEATH":
            self._device_death(node, message)
            return Decoded([], [])
        if parts.verb == "NBIRTH":
            node.metrics = _learn(parsed)
            node.bd_seq = _bd_seq(parsed)
            self._queue_event("birth", message, "node", list(node.metrics.datatypes))
            table = node.metrics
        elif parts.verb == "DBIRTH":
            table = node.devices[parts.device] = _learn(parsed)
            self._queue_event("birth", message, "device", list(table.datatypes))
        elif parts.verb == "NDATA":
            table = node.metrics
        else:
            table = node.devices.get(parts.device) or _MetricTable()
        return self._readings(node, table, message)

    def _parse(self, payload: bytes) -> pb.Payload:
        if not payload:
            raise _Reject(Reason.EMPTY_PAYLOAD, "the payload is empty; a Sparkplug B message carries a protobuf Payload")
        if len(payload) > self.config.max_payload_bytes:
            raise _Reject(
                Reason.PAYLOAD_TOO_LARGE,
                f"payload of {len(payload)} bytes exceeds codec.max_payload_bytes={self.config.max_payload_bytes}; "
                "raise the limit or send fewer metrics per message",
            )
        parsed = pb.Payload()
        try:
            parsed.ParseFromString(payload)
        except Exception as exc:  # DecodeError, and whatever else the protobuf backend raises
            raise _Reject(Reason.INVALID_PROTOBUF, f"the payload is not a Sparkplug B protobuf Payload: {exc}") from None
        return parsed

    # -- sequence numbers, deaths and rebirth requests ---------------------------------------

    def _check_sequence(self, node: _EdgeNode, message: _Message) -> None:
        payload = message.payload
        if not payload.HasField("seq"):
            self.counters["missing_seq"] += 1
            if message.parts.verb == "NBIRTH":
                node.next_seq = None
            return
        seq = payload.seq
        if message.parts.verb != "NBIRTH" and node.next_seq is not None and seq != node.next_seq:
            self.counters["sequence_gaps"] += 1
        node.next_seq = (seq + 1) % 256

    def _node_death(self, node: _EdgeNode, message: _Message) -> None:
        if node.bd_seq is not None and _bd_seq(message.payload) != node.bd_seq:
            self.counters["stale_deaths"] += 1
            return
        self._queue_event("death", message, "node", list(node.metrics.datatypes))
        for device, table in node.devices.items():
            self._queue_event("death", message, "device", list(table.datatypes), f"{message.device_id}/{device}")

    def _device_death(self, node: _EdgeNode, message: _Message) -> None:
        table = node.devices.get(message.parts.device)
        self._queue_event("death", message, "device", list(table.datatypes) if table else [])

    def _queue_event(self, event: str, message: _Message, scope: str, metrics: list[str], device_id: str | None = None) -> None:
        if len(self._events) >= MAX_PENDING_EVENTS:
            self._events.popleft()
            self.counters["events_dropped"] += 1
        ts_us = message.received_us
        if message.payload.HasField("timestamp"):
            candidate = message.payload.timestamp * 1000
            if self._min_us <= candidate <= message.received_us + self._max_future_us:
                ts_us = candidate
        self._events.append(
            {
                "event": event,
                "device_id": device_id or message.device_id,
                "site": message.parts.group,
                "scope": scope,
                "ts_us": ts_us,
                "received_us": message.received_us,
                "metrics": metrics,
            }
        )

    def _request_rebirth(self, node: _EdgeNode, message: _Message) -> None:
        now = self.clock()
        if node.last_rebirth is not None and now - node.last_rebirth < self.rebirth_interval:
            self.counters["rebirth_suppressed"] += 1
            return
        node.last_rebirth = now
        topic, payload = rebirth_request(message.parts.group, message.parts.edge_node, message.received_us // 1000)
        self._commands[topic] = payload
        self.counters["rebirth_requests"] += 1

    # -- metrics to readings -----------------------------------------------------------------

    def _readings(self, node: _EdgeNode, table: _MetricTable, message: _Message) -> Decoded:
        readings: list[Reading] = []
        dead_letters: list[DeadLetter] = []
        unknown_alias = False
        for metric in message.payload.metrics:
            try:
                reading = self._reading(metric, table, message)
            except _Reject as reject:
                unknown_alias = unknown_alias or reject.reason is Reason.UNKNOWN_ALIAS
                dead_letters.append(self._metric_dead_letter(metric, message, reject))
                continue
            if reading is not None:
                readings.append(reading)
        if unknown_alias:
            self._request_rebirth(node, message)
        return Decoded(readings, dead_letters)

    def _reading(self, metric: pb.Payload.Metric, table: _MetricTable, message: _Message) -> Reading | None:
        name = _metric_name(metric, table, message.parts)
        if metric.is_null:
            self.counters["null_values"] += 1
            return None
        datatype = metric.datatype if metric.HasField("datatype") else table.datatypes.get(name)
        value = _number(metric, name, datatype)
        ts_us, marks = self._timestamp(metric, name, message)
        msg_id = derive_msg_id(message.device_id, name, ts_us, value)
        return Reading(
            message.device_id, name, ts_us, value, None, message.parts.group, msg_id, message.received_us, message.topic, marks
        )

    def _timestamp(self, metric: pb.Payload.Metric, name: str, message: _Message) -> tuple[int, tuple[str, ...]]:
        """Return the event time of a metric and the marks of a reading whose time is the receive time."""
        if metric.HasField("timestamp"):
            ts_ms = metric.timestamp
        elif message.payload.HasField("timestamp"):
            ts_ms = message.payload.timestamp
        elif self.config.missing_timestamp == "receive_time":
            return message.received_us, (MARK_RECEIVE_TIME,)
        else:
            raise _Reject(
                Reason.MISSING_TIMESTAMP,
                f"metric {name!r} has no timestamp and neither has the payload; "
                "send one or set codec.missing_timestamp: receive_time",
            )
        ts_us = ts_ms * 1000
        if ts_us < self._min_us:
            raise _Reject(
                Reason.TIMESTAMP_OUT_OF_RANGE,
                f"metric {name!r}: timestamp {ts_ms} ms is before codec.min_timestamp "
                f"{self.config.min_timestamp.isoformat()}; check the edge node clock",
            )
        if ts_us > message.received_us + self._max_future_us:
            raise _Reject(
                Reason.TIMESTAMP_OUT_OF_RANGE,
                f"metric {name!r}: timestamp {ts_ms} ms is more than codec.max_future={self.config.max_future:g}s "
                "ahead of the receive time; check the edge node clock (Sparkplug timestamps are milliseconds)",
            )
        return ts_us, ()

    # -- dead letters ------------------------------------------------------------------------

    def _metric_dead_letter(self, metric: pb.Payload.Metric, message: _Message, reject: _Reject) -> DeadLetter:
        single = pb.Payload()
        if message.payload.HasField("timestamp"):
            single.timestamp = message.payload.timestamp
        if message.payload.HasField("seq"):
            single.seq = message.payload.seq
        single.metrics.append(metric)
        return self._dead_letter(single.SerializeToString(), message.topic, reject, message.received_us)

    def _dead_letter(self, raw: bytes, topic: str, reject: _Reject, received_us: int) -> DeadLetter:
        return DeadLetter(raw[: self.dead_letter_raw_bytes], len(raw), topic, reject.reason.value, reject.detail, received_us)


def _learn(payload: pb.Payload) -> _MetricTable:
    """Return the name, alias and datatype bindings that a BIRTH payload declares."""
    table = _MetricTable()
    for metric in payload.metrics:
        name = metric.name
        # upb returns a proto2 string that is not valid UTF-8 as bytes; such a name binds nothing.
        if not isinstance(name, str) or not name:
            continue
        table.datatypes[name] = metric.datatype if metric.HasField("datatype") else None
        if metric.HasField("alias"):
            table.aliases[metric.alias] = name
    return table


def _bd_seq(payload: pb.Payload) -> int | None:
    """Return the integer value of the ``bdSeq`` metric of an NBIRTH or NDEATH, or None."""
    for metric in payload.metrics:
        if metric.name == BD_SEQ_METRIC:
            kind = metric.WhichOneof("value")
            if kind == "long_value":
                return metric.long_value
            if kind == "int_value":
                return metric.int_value
            return None
    return None


def _metric_name(metric: pb.Payload.Metric, table: _MetricTable, parts: SparkplugTopic) -> str:
    name = metric.name
    if name:
        if not isinstance(name, str):
            raise _Reject(Reason.INVALID_UTF8, f"metric name {name[:60]!r} is not UTF-8; Sparkplug names are UTF-8 text")
        return name
    if metric.HasField("alias"):
        name = table.aliases.get(metric.alias)
        if name is None:
            birth = "DBIRTH" if parts.device else "NBIRTH"
            raise _Reject(
                Reason.UNKNOWN_ALIAS,
                f"metric alias {metric.alias} was not declared by the last {birth} of this "
                f"{'device' if parts.device else 'edge node'}; a rebirth request was queued",
            )
        return name
    raise _Reject(Reason.MISSING_FIELD, "the metric has neither a name nor an alias; send one of them")


def _number(metric: pb.Payload.Metric, name: str, datatype: int | None) -> float:
    """Return the value of a metric as a float, reading signed datatypes as two's complement."""
    kind = metric.WhichOneof("value")
    if kind == "int_value" or kind == "long_value":
        number = metric.int_value if kind == "int_value" else metric.long_value
        bits = _SIGNED_BITS.get(datatype)
        if bits is not None:
            number &= (1 << bits) - 1
            if number >> (bits - 1):
                number -= 1 << bits
        return float(number)
    if kind == "double_value" or kind == "float_value":
        value = metric.double_value if kind == "double_value" else metric.float_value
        if not math.isfinite(value):
            raise _Reject(Reason.NON_FINITE_VALUE, f"metric {name!r}: value {value} is not a finite number")
        return value
    if kind == "boolean_value":
        return 1.0 if metric.boolean_value else 0.0
    if kind is None:
        raise _Reject(
            Reason.MISSING_FIELD,
            f"metric {name!r} has no value and is_null is not set; send a value or set is_null",
        )
    raise _Reject(
        Reason.UNSUPPORTED_VALUE_TYPE,
        f"metric {name!r}: a {kind} of datatype {_datatype_name(datatype)} is not numeric; "
        "sparkiot stores integer, float, double and boolean metrics as readings",
    )


def _datatype_name(datatype: int | None) -> str:
    if datatype is None:
        return "unknown"
    try:
        return pb.DataType.Name(datatype)
    except ValueError:
        return str(datatype)
