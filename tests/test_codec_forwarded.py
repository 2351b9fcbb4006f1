"""The 'edge' codec: readings forwarded by an edge agent keep their msg_id and site."""

from __future__ import annotations

import json
import time

import pytest

from sparkiot.codecs import build_codec
from sparkiot.codecs.forwarded import encode_forwarded
from sparkiot.config import CodecConfig
from sparkiot.readings import Reading

NOW_US = time.time_ns() // 1000


def codec():
    return build_codec("edge", CodecConfig())


def test_forwarded_round_trip():
    sent = [
        Reading("pump-1", "pressure", NOW_US - 5, 1.25, "bar", "x", "pump-1:7", 1, "local/topic"),
        Reading("pump-2", "temp", NOW_US - 3, -4.0, None, "x", "abc123", 1, "local/topic"),
    ]
    decoded = codec().decode(encode_forwarded("plant-7", sent), "sparkiot/edge/plant-7/readings", NOW_US)
    assert decoded.dead_letters == []
    assert [(r.device_id, r.metric, r.ts_us, r.value, r.unit, r.site, r.msg_id) for r in decoded.readings] == [
        ("pump-1", "pressure", NOW_US - 5, 1.25, "bar", "plant-7", "pump-1:7"),
        ("pump-2", "temp", NOW_US - 3, -4.0, None, "plant-7", "abc123"),
    ]


def _document(rows, **extra) -> bytes:
    return json.dumps({"v": 1, "site": "s", "readings": rows, **extra}).encode()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty_payload"),
        (b"{not json", "invalid_json"),
        (b"\xff\xfe", "invalid_utf8"),
        (b"[1, 2]", "unsupported_shape"),
        (json.dumps({"v": 2, "site": "s", "readings": []}).encode(), "unsupported_shape"),
        (json.dumps({"v": 1, "site": "", "readings": []}).encode(), "invalid_field"),
    ],
)
def test_malformed_documents_become_one_dead_letter(payload, reason):
    decoded = codec().decode(payload, "t", NOW_US)
    assert decoded.readings == []
    assert [letter.reason for letter in decoded.dead_letters] == [reason]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (["d", "m", NOW_US], "unsupported_shape"),
        (["", "m", NOW_US, 1.0, None, "id"], "invalid_field"),
        (["d", "m", NOW_US, 1.0, None, 7], "invalid_field"),
        (["d", "m", "yesterday", 1.0, None, "id"], "invalid_timestamp"),
        (["d", "m", 5, 1.0, None, "id"], "timestamp_out_of_range"),
        (["d", "m", NOW_US + 3_600_000_000, 1.0, None, "id"], "timestamp_out_of_range"),
        (["d", "m", NOW_US, "1.0", None, "id"], "non_numeric_value"),
        (["d", "m", NOW_US, True, None, "id"], "non_numeric_value"),
        (["d", "m", NOW_US, 10**400, None, "id"], "non_finite_value"),
    ],
)
def test_forwarded_malformed_row(row, reason):
    good = ["d", "m", NOW_US, 2.0, None, "good"]
    decoded = codec().decode(_document([good, row]), "t", NOW_US)
    assert [r.msg_id for r in decoded.readings] == ["good"]
    assert [letter.reason for letter in decoded.dead_letters] == [reason]
    assert decoded.dead_letters[0].detail.startswith("row 1: ")
