"""Local rules of the edge agent: filters, alert transitions and down-sampling, and the edge config."""

from __future__ import annotations

import pytest

from sparkiot.config import ConfigError
from sparkiot.edge.config import RulesConfig, build_edge_config, load_edge_config
from sparkiot.edge.rules import LocalRules
from sparkiot.readings import Reading

SECOND_US = 1_000_000


def reading(value: float, *, ts_s: float, device: str = "d1", metric: str = "temp") -> Reading:
    return Reading(device, metric, int(ts_s * SECOND_US), value, None, "s1", f"{device}:{ts_s}", 0, "t")


def rules(**raw) -> LocalRules:
    return LocalRules(RulesConfig.model_validate(raw))


def test_filter_range_matched_metric():
    local = rules(filters=[{"match": {"metric": "temp"}, "drop_below": -40, "drop_above": 125}])
    assert [local.admit(reading(v, ts_s=1)) for v in (-41, -40, 125, 126)] == [False, True, True, False]
    assert local.admit(reading(500, ts_s=1, metric="pressure")) is True


def test_filter_drop_all_by_device_pattern():
    local = rules(filters=[{"match": {"device": "debug-*"}, "drop": True}])
    assert local.admit(reading(1, ts_s=1, device="debug-7")) is False
    assert local.admit(reading(1, ts_s=1, device="pump-7")) is True


def test_threshold_alert_raised_once_then_cleared():
    local = rules(alerts=[{"name": "hot", "above": 30}])
    states = [[a.state for a in local.evaluate(reading(v, ts_s=i))] for i, v in enumerate([20, 31, 35, 29, 40])]
    assert states == [[], ["raised"], [], ["cleared"], ["raised"]]
    assert local.active_alerts() == 1


def test_rate_alert_uses_event_time():
    local = rules(alerts=[{"name": "rise", "rate_above": 2.0}])
    first = local.evaluate(reading(10, ts_s=0))
    # +5 in 2 s is 2.5/s: raised; +1 in 1 s is 1/s: cleared.
    second = local.evaluate(reading(15, ts_s=2))
    third = local.evaluate(reading(16, ts_s=3))
    assert first == []
    assert [(a.state, a.rate_per_s) for a in second] == [("raised", 2.5)]
    assert [(a.state, a.rate_per_s) for a in third] == [("cleared", 1.0)]


def test_rate_alert_out_of_order():
    local = rules(alerts=[{"name": "rise", "rate_above": 2.0}])
    local.evaluate(reading(10, ts_s=10))
    assert [a.state for a in local.evaluate(reading(30, ts_s=12))] == ["raised"]
    # Older than the last reading: no rate, so the rate-only rule neither clears nor raises.
    assert local.evaluate(reading(0, ts_s=5)) == []
    assert local.active_alerts() == 1


def test_rate_below_fires_on_a_fall():
    local = rules(alerts=[{"name": "drop", "rate_below": -1.0}])
    local.evaluate(reading(100, ts_s=0))
    assert [a.state for a in local.evaluate(reading(90, ts_s=1))] == ["raised"]


def test_downsample_min_interval():
    local = rules(downsample=[{"min_interval": "10s"}])
    forwarded = [t for t in range(0, 35, 2) if local.forward(reading(t, ts_s=t))]
    assert forwarded == [0, 10, 20, 30]


def test_downsample_deadband_forwards_only_moves_beyond_it():
    local = rules(downsample=[{"deadband": 0.5}])
    values = [1.0, 1.2, 1.5, 1.6, 0.9, 1.0]
    forwarded = [v for i, v in enumerate(values) if local.forward(reading(v, ts_s=i))]
    assert forwarded == [1.0, 1.6, 0.9]


def test_downsample_applies_to_matched_series_only():
    local = rules(downsample=[{"match": {"metric": "temp"}, "min_interval": "1h"}])
    assert [local.forward(reading(1, ts_s=t)) for t in (0, 1, 2)] == [True, False, False]
    assert [local.forward(reading(1, ts_s=t, metric="co2")) for t in (0, 1, 2)] == [True, True, True]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"site": "a/b"}, "site 'a/b' must be 1-64"),
        ({"rules": {"filters": [{"match": {"metric": "x"}}]}}, "a filter needs drop: true"),
        ({"rules": {"filters": [{"drop_below": 5, "drop_above": 1}]}}, "drop_below (5) is above drop_above (1)"),
        ({"rules": {"alerts": [{"name": "a"}]}}, "alert 'a' needs above, below"),
        ({"rules": {"alerts": [{"name": "a", "above": 1}, {"name": "a", "below": 0}]}}, "repeated: a"),
        ({"rules": {"downsample": [{}]}}, "needs min_interval or deadband"),
        ({"buffer": {"overflow": "drop_newest"}}, "buffer.overflow"),
        ({"buffer": {"max_bytes": "lots"}}, "buffer.max_bytes"),
        ({"upstream": {"broker": "http://x"}}, "upstream.broker"),
        ({"sync": {"resend": "5s"}}, "unknown option: check the spelling against examples/edge.yaml"),
        ({"rules": {"alert_topic": "alerts/#"}}, "rules.alert_topic 'alerts/#' must be a topic name without wildcards"),
        ({"upstream": {"topic": "up/+/readings"}}, "upstream.topic 'up/+/readings' must be a topic name"),
        ({"upstream": {"broker": "embedded"}}, "use 'none' or a URL such as 'mqtt://127.0.0.1:1883'"),
        ({"sync": {"topic_prefix": "a/#"}}, "sync.topic_prefix"),
        ({"buffer": {"max_bytes": 0}}, "buffer.max_bytes"),
        ({"rules": {"filters": [{"drop_above": float("nan")}]}}, "limit nan is not a finite number"),
    ],
)
def test_invalid_edge_config_names_the_field(raw, message):
    with pytest.raises(ConfigError) as error:
        build_edge_config(raw)
    assert message in str(error.value)


def test_example_edge_file_is_valid():
    from pathlib import Path

    config = load_edge_config(Path(__file__).resolve().parents[1] / "examples" / "edge.yaml")
    assert (config.site, config.replica, config.topic(config.upstream.topic)) == ("plant-7", "plant-7", "sparkiot/edge/plant-7/readings")
    assert [rule.name for rule in config.rules.alerts] == ["overheat", "fast_rise"]
