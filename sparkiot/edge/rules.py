"""Local rules of the edge agent: filters, threshold and rate-of-change alerts, down-sampling.

Rules see readings in arrival order, one at a time, and keep a little state per series (the last
reading, the last forwarded reading, the active alerts) in memory. The agent stores the active
alerts with each batch and restores them after a restart, so an alert raised before it is
cleared after it. The rest starts empty: the first reading of each series is forwarded.

Order of evaluation for each reading:

1. filters: the first filter that drops a reading ends its processing (counted as filtered);
2. alerts: every matching alert rule is evaluated; a rule is raised when its condition becomes
   true for a series and cleared when it becomes false;
3. down-sampling: the first matching rule decides whether the reading is forwarded upstream.
   Filtered readings are neither aggregated nor forwarded; down-sampled ones are aggregated.
"""

from __future__ import annotations

from typing import NamedTuple

from sparkiot.edge.config import AlertRule, DownsampleRule, FilterRule, RulesConfig
from sparkiot.readings import Reading


class EdgeAlert(NamedTuple):
    """One transition of a local alert rule for one series."""

    rule: str
    state: str  # "raised" or "cleared"
    device_id: str
    metric: str
    ts_us: int
    value: float
    rate_per_s: float | None
    site: str | None

    def document(self) -> dict:
        return {
            "rule": self.rule, "state": self.state, "device_id": self.device_id, "metric": self.metric,
            "ts_us": self.ts_us, "value": self.value, "rate_per_s": self.rate_per_s, "site": self.site,
        }


class _Series:
    __slots__ = ("filters", "alerts", "downsample", "last_ts", "last_value", "sent_ts", "sent_value", "active")

    def __init__(self, filters: list[FilterRule], alerts: list[AlertRule], downsample: DownsampleRule | None) -> None:
        self.filters = filters
        self.alerts = alerts
        self.downsample = downsample
        self.last_ts: int | None = None
        self.last_value = 0.0
        self.sent_ts: int | None = None
        self.sent_value = 0.0
        self.active: set[str] = set()


class LocalRules:
    """Evaluate a :class:`RulesConfig` on readings, one series state per (device_id, metric).

    >>> from sparkiot.edge.config import RulesConfig
    >>> rules = LocalRules(RulesConfig.model_validate({"alerts": [{"name": "hot", "above": 30}]}))
    >>> reading = Reading("d1", "temp", 1_000_000, 31.0, None, "s1", "m1", 0, "t")
    >>> [(alert.rule, alert.state) for alert in rules.evaluate(reading)]
    [('hot', 'raised')]
    """

    def __init__(self, config: RulesConfig) -> None:
        self.config = config
        self._series: dict[tuple[str, str], _Series] = {}

    def _state(self, reading: Reading) -> _Series:
        key = (reading.device_id, reading.metric)
        state = self._series.get(key)
        if state is None:
            device, metric = key
            state = _Series(
                [rule for rule in self.config.filters if rule.match.matches(device, metric)],
                [rule for rule in self.config.alerts if rule.match.matches(device, metric)],
                next((rule for rule in self.config.downsample if rule.match.matches(device, metric)), None),
            )
            self._series[key] = state
        return state

    def admit(self, reading: Reading) -> bool:
        """Return False when a filter drops ``reading``."""
        for rule in self._state(reading).filters:
            if rule.drop:
                return False
            if rule.drop_below is not None and reading.value < rule.drop_below:
                return False
            if rule.drop_above is not None and reading.value > rule.drop_above:
                return False
        return True

    def evaluate(self, reading: Reading) -> list[EdgeAlert]:
        """Return the alert transitions ``reading`` causes; call once per admitted reading, in arrival order.

        The rate of change is taken against the previous reading of the series. A reading not
        newer than that one has no rate, leaves the previous reading in place, and is checked
        against the value limits only.
        """
        state = self._state(reading)
        rate = None
        if state.last_ts is not None and reading.ts_us > state.last_ts:
            rate = (reading.value - state.last_value) * 1_000_000 / (reading.ts_us - state.last_ts)
        if state.last_ts is None or reading.ts_us > state.last_ts:
            state.last_ts, state.last_value = reading.ts_us, reading.value

        transitions: list[EdgeAlert] = []
        for rule in state.alerts:
            if rate is None and rule.above is None and rule.below is None:
                # A rate-only rule keeps its state on a reading that has no rate.
                continue
            firing = _firing(rule, reading.value, rate)
            if firing == (rule.name in state.active):
                continue
            if firing:
                state.active.add(rule.name)
            else:
                state.active.discard(rule.name)
            transitions.append(
                EdgeAlert(rule.name, "raised" if firing else "cleared", reading.device_id, reading.metric,
                          reading.ts_us, reading.value, rate, reading.site)
            )
        return transitions

    def forward(self, reading: Reading) -> bool:
        """Return True when ``reading`` goes upstream under the series' down-sampling rule.

        With ``min_interval``, a reading is forwarded when at least that much event time passed
        since the last forwarded one. With ``deadband``, it is forwarded when its value moved more
        than the deadband, and with both settings when both conditions are true. The first
        reading of a series is always forwarded.
        """
        state = self._state(reading)
        rule = state.downsample
        if rule is None:
            return True
        if state.sent_ts is not None:
            if reading.ts_us - state.sent_ts < rule.min_interval * 1_000_000:
                return False
            if rule.deadband and abs(reading.value - state.sent_value) <= rule.deadband:
                return False
        state.sent_ts, state.sent_value = reading.ts_us, reading.value
        return True

    def active_alerts(self) -> int:
        """Return the number of (rule, series) pairs currently raised."""
        return sum(len(state.active) for state in self._series.values())

    def active(self) -> list[tuple[str, str, str]]:
        """Return the raised alerts as ``(rule, device_id, metric)``."""
        return [(rule, device, metric) for (device, metric), state in self._series.items() for rule in state.active]

    def restore(self, active: list[tuple[str, str, str]]) -> None:
        """Mark alerts raised before a restart as active again; rules no longer configured are ignored."""
        names = {rule.name for rule in self.config.alerts}
        for rule, device, metric in active:
            if rule in names:
                probe = Reading(device, metric, 0, 0.0, None, None, "", 0, "")
                self._state(probe).active.add(rule)


def _firing(rule: AlertRule, value: float, rate: float | None) -> bool:
    if rule.above is not None and value > rule.above:
        return True
    if rule.below is not None and value < rule.below:
        return True
    if rate is not None:
        if rule.rate_above is not None and rate > rule.rate_above:
            return True
        if rule.rate_below is not None and rate < rule.rate_below:
            return True
    return False
