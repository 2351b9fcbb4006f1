"""Topic routing: MQTT filter matching and the choice of codec per topic."""

from __future__ import annotations

import pytest

from sparkiot.codecs import make_codec, topic_matches
from sparkiot.config import build_config


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("sensors/#", "sensors/lab/d1", True),
        ("sensors/#", "sensors", True),
        ("sensors/+", "sensors/lab/d1", False),
        ("sensors/+/d1", "sensors/lab/d1", True),
        ("sensors/+/d1", "sensors/lab/d2", False),
        ("+/+", "a/b", True),
        ("+/+", "a/b/c", False),
        ("a/b", "a/b/c", False),
        ("a/b/c", "a/b", False),
        ("#", "$SYS/uptime", False),
        ("+/uptime", "$SYS/uptime", False),
        ("$SYS/#", "$SYS/uptime", True),
        ("spBv1.0/+/+/#", "spBv1.0/plant/NDATA/node-1/dev", True),
        ("sensors/+", "sensors/", True),
    ],
)
def test_topic_filter_matching(topic_filter, topic, expected):
    assert topic_matches(topic_filter, topic) is expected


def test_unrouted_topic_uses_default_format():
    config = build_config({"codec": {"format": "json", "routes": [{"topics": "telegraf/#", "format": "json"}]}})
    router = make_codec(config.codec)

    decoded = router.decode(b'{"device_id": "d", "metric": "m", "ts": 1714564800, "value": 2}', "sensors/x", 1714564800_000_000)

    assert [reading.value for reading in decoded.readings] == [2.0]


def test_route_with_unknown_format_rejected():
    with pytest.raises(ValueError, match="codec.routes.0.format"):
        build_config({"codec": {"routes": [{"topics": "a/#", "format": "xml"}]}})


def test_routes_pick_format_and_pattern():
    config = build_config({
        "codec": {
            "format": "json",
            "topic_pattern": "sensors/{site}/{device_id}",
            "routes": [
                {"topics": "telegraf/#", "format": "influx", "topic_pattern": "telegraf/{site}"},
                {"topics": "senml/#", "format": "senml", "topic_pattern": "senml/{_}"},
            ],
        }
    })
    router = make_codec(config.codec)
    now_us = 1714564800_000_000

    influx = router.decode(b"env,host=gw-1 temp=21.5 1714564800000000000", "telegraf/roof", now_us)
    senml = router.decode(b'[{"bn": "dev-9/", "n": "rh", "v": 40, "t": 1714564800}]', "senml/x", now_us)
    plain = router.decode(b'{"metric": "co2", "ts": 1714564800, "value": 415}', "sensors/lab/d3", now_us)

    assert [(r.device_id, r.site, r.metric, r.value) for r in influx.readings] == [("gw-1", "roof", "env.temp", 21.5)]
    assert [(r.device_id, r.metric, r.value) for r in senml.readings] == [("dev-9", "rh", 40.0)]
    assert [(r.device_id, r.site, r.metric) for r in plain.readings] == [("d3", "lab", "co2")]
