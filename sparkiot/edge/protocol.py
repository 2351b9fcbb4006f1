"""The sync protocol between edge agents and the cloud sync service, over MQTT QoS 1.

Messages are CBOR maps on topics under a prefix (default ``sparkiot/sync``) and the site:

| topic | from | body |
|---|---|---|
| ``PREFIX/SITE/delta`` | edge | ``{"r": replica, "g": [[from_seq, to_seq, delta], ...]}`` |
| ``PREFIX/SITE/hello`` | edge | ``{"r": replica, "s": seq}`` at every (re)connect |
| ``PREFIX/SITE/ack`` | cloud | ``{"vv": {replica: seq, ...}}`` the site's version vector |
| ``PREFIX/SITE/state`` | cloud | ``{"r": replica, "s": seq, "d": state}`` when the cloud is ahead |

Every update at the edge belongs to a numbered delta group. A group covers the sequence numbers
``(from_seq, to_seq]``, because several groups are joined into one while the uplink is down. The cloud's
version vector holds, per replica, the highest sequence number up to which it merged every group
without a gap. It merges any group it receives (a join is safe in any order), but advances the
vector only over contiguous groups, so a lost group shows up as a vector behind the edge.

Anti-entropy after a partition: the edge sends a hello with its own sequence number and the
cloud replies with its vector. When the cloud is behind, the edge sends every group after the cloud's
number; when the edge no longer has those groups, it sends its full state as the group
``(0, seq]``. When the cloud is ahead (the edge lost its disk), the cloud sends the site's state,
which the edge joins before it continues numbering after the cloud's number.
"""

from __future__ import annotations

from typing import NamedTuple

import cbor2

MAX_REPLICA_LENGTH = 128
# Sequence numbers stay far below SQLite's and Redis's 64-bit integer limit. A delta group may
# end at most at MAX_GROUP_SEQ, which leaves an agent 2**40 numbers (decades of batches) to go on
# numbering even after a forged group pushed the cloud's version that far.
MAX_SEQ = 2**53
MAX_GROUP_SEQ = MAX_SEQ - 2**40


class ProtocolError(ValueError):
    """A sync message that does not follow the protocol; the error message names the problem."""


class Group(NamedTuple):
    from_seq: int
    to_seq: int
    data: bytes


def topic(prefix: str, site: str, kind: str) -> str:
    return f"{prefix}/{site}/{kind}"


def site_and_kind(prefix: str, topic_name: str) -> tuple[str, str]:
    """Return ``(site, kind)`` of a topic under ``prefix``; raise ProtocolError otherwise."""
    parts = topic_name[len(prefix) + 1:].split("/") if topic_name.startswith(prefix + "/") else []
    if len(parts) != 2 or not parts[0]:
        raise ProtocolError(f"topic {topic_name!r} is not {prefix}/SITE/KIND")
    return parts[0], parts[1]


def encode_delta(replica: str, groups: list[Group]) -> bytes:
    return cbor2.dumps({"r": replica, "g": [list(group) for group in groups]})


def encode_hello(replica: str, seq: int) -> bytes:
    return cbor2.dumps({"r": replica, "s": seq})


def encode_ack(versions: dict[str, int]) -> bytes:
    return cbor2.dumps({"vv": versions})


def encode_state(replica: str, seq: int, data: bytes) -> bytes:
    return cbor2.dumps({"r": replica, "s": seq, "d": data})


def _load(payload: bytes) -> dict:
    try:
        body = cbor2.loads(payload)
    except Exception as exc:  # noqa: BLE001 - cbor2 raises several types on malformed input
        raise ProtocolError(f"the payload is not CBOR ({type(exc).__name__}: {exc})") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"expected a CBOR map, got {type(body).__name__}")
    return body


def _replica(body: dict) -> str:
    replica = body.get("r")
    if not isinstance(replica, str) or not 0 < len(replica) <= MAX_REPLICA_LENGTH:
        raise ProtocolError(f"replica {replica!r} must be a string of 1-{MAX_REPLICA_LENGTH} characters")
    return replica


def _seq(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_SEQ:
        raise ProtocolError(f"{name} {str(value)[:40]} must be an integer from 0 to 2**53")
    return value


def decode_delta(payload: bytes) -> tuple[str, list[Group]]:
    body = _load(payload)
    replica = _replica(body)
    groups = body.get("g")
    if not isinstance(groups, list) or not groups:
        raise ProtocolError("'g' must be a non-empty list of [from_seq, to_seq, delta] groups")
    decoded = []
    for index, group in enumerate(groups):
        if not isinstance(group, list) or len(group) != 3 or not isinstance(group[2], bytes):
            raise ProtocolError(f"group {index} must be [from_seq, to_seq, delta bytes]")
        from_seq, to_seq = _seq(group[0], "from_seq"), _seq(group[1], "to_seq")
        if to_seq > MAX_GROUP_SEQ:
            raise ProtocolError(f"group {index} ends at {to_seq}, beyond the largest group number 2**53 - 2**40")
        if from_seq >= to_seq:
            raise ProtocolError(f"group {index} covers ({from_seq}, {to_seq}], which is empty")
        decoded.append(Group(from_seq, to_seq, group[2]))
    return replica, decoded


def decode_hello(payload: bytes) -> tuple[str, int]:
    body = _load(payload)
    return _replica(body), _seq(body.get("s"), "seq")


def decode_ack(payload: bytes) -> dict[str, int]:
    versions = _load(payload).get("vv")
    if not isinstance(versions, dict):
        raise ProtocolError("'vv' must be a map of replica to sequence number")
    return {str(replica): _seq(seq, f"seq of {replica!r}") for replica, seq in versions.items()}


def decode_state(payload: bytes) -> tuple[str, int, bytes]:
    body = _load(payload)
    data = body.get("d")
    if not isinstance(data, bytes):
        raise ProtocolError("'d' must hold the encoded state")
    return _replica(body), _seq(body.get("s"), "seq"), data
