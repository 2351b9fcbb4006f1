"""The edge agent's configuration: one YAML file per gateway, validated like a pipeline file.

The agent reads readings from a local broker (``local``), decodes them with the project's codecs
(``codec``), applies local ``rules``, forwards what passes upstream (``upstream``) through an
on-disk ``buffer``, and keeps aggregate state that it syncs to the cloud (``sync``).
``examples/edge.yaml`` lists every option with its default.
"""

from __future__ import annotations

import fnmatch
import math
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from sparkiot.config import (
    Bytes,
    CodecConfig,
    ConfigError,
    Seconds,
    SourceConfig,
    _Section,
    check_broker_url,
    check_topic_name,
    read_yaml_mapping,
    validate_model,
)

# Site, replica and alert names become MQTT topic segments and CRDT replica ids.
SITE_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class Match(_Section):
    """The series a rule applies to: shell-style patterns on metric and device id."""

    metric: str = "*"
    device: str = "*"

    def matches(self, device_id: str, metric: str) -> bool:
        return fnmatch.fnmatchcase(metric, self.metric) and fnmatch.fnmatchcase(device_id, self.device)


class FilterRule(_Section):
    """A filter that drops readings before any other rule: all of a series, or values outside a range."""

    match: Match = Match()
    drop: bool = Field(default=False, description="drop every reading of the matched series")
    drop_below: float | None = Field(default=None, description="drop readings below this value (a sensor's valid range)")
    drop_above: float | None = None

    @field_validator("drop_below", "drop_above")
    @classmethod
    def _check_finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError(f"limit {value} is not a finite number")
        return value

    @model_validator(mode="after")
    def _check(self) -> "FilterRule":
        if not self.drop and self.drop_below is None and self.drop_above is None:
            raise ValueError("a filter needs drop: true, drop_below or drop_above; otherwise it drops nothing")
        if self.drop_below is not None and self.drop_above is not None and self.drop_below > self.drop_above:
            raise ValueError(f"drop_below ({self.drop_below:g}) is above drop_above ({self.drop_above:g}): every reading would be dropped")
        return self


class DownsampleRule(_Section):
    """Forwards fewer readings upstream; local alerts and the synced state still see every reading."""

    match: Match = Match()
    min_interval: Seconds = Field(default=0.0, description="forward at most one reading per series per interval of event time")
    deadband: float = Field(default=0.0, ge=0, description="forward only when the value moved more than this since the last forwarded one")

    @model_validator(mode="after")
    def _check(self) -> "DownsampleRule":
        if self.min_interval == 0 and self.deadband == 0:
            raise ValueError("a downsample rule needs min_interval or deadband above 0; otherwise it forwards everything")
        return self


class AlertRule(_Section):
    """A local alert: a threshold on the value or on its rate of change per second.

    An alert is raised when its condition becomes true for a series and cleared when it becomes
    false again. Both transitions are published, so a steady excursion gives one alert, not one
    per reading.
    """

    name: str
    match: Match = Match()
    above: float | None = None
    below: float | None = None
    rate_above: float | None = Field(default=None, description="change per second between consecutive readings, upward")
    rate_below: float | None = Field(default=None, description="change per second, downward; give a negative number")

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not SITE_PATTERN.fullmatch(value):
            raise ValueError(f"alert name {value!r} must be 1-64 letters, digits, '_', '.' or '-'")
        return value

    @model_validator(mode="after")
    def _check(self) -> "AlertRule":
        limits = (self.above, self.below, self.rate_above, self.rate_below)
        if all(limit is None for limit in limits):
            raise ValueError(f"alert {self.name!r} needs above, below, rate_above or rate_below")
        if any(limit is not None and not math.isfinite(limit) for limit in limits):
            raise ValueError(f"alert {self.name!r} has a limit that is not a finite number")
        return self


class RulesConfig(_Section):
    """Local processing: filters first, then alerts on what passed, then down-sampling for the uplink."""

    filters: list[FilterRule] = []
    alerts: list[AlertRule] = []
    downsample: list[DownsampleRule] = []
    alert_topic: str = Field(default="sparkiot/edge/{site}/alerts", description="local topic of alerts; {site} is replaced")

    @field_validator("alert_topic")
    @classmethod
    def _check_alert_topic(cls, value: str) -> str:
        return check_topic_name(value, "rules.alert_topic")

    @field_validator("alerts")
    @classmethod
    def _check_unique(cls, value: list[AlertRule]) -> list[AlertRule]:
        names = [rule.name for rule in value]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"alert names must be unique; repeated: {', '.join(duplicates)}")
        return value


class UpstreamConfig(_Section):
    """The cloud broker that the main job ingests from; forwarded readings and CRDT deltas go there."""

    broker: str = Field(default="mqtt://127.0.0.1:1883", description="mqtt://HOST:PORT of the cloud broker, or 'none' to forward nothing")
    topic: str = Field(default="sparkiot/edge/{site}/readings", description="topic of forwarded readings; {site} is replaced")
    client_id: str = Field(default="sparkiot-edge-{site}", description="{site} is replaced")
    protocol: Literal["3.1.1", "5"] = "5"
    keepalive: Seconds = 10.0
    reconnect_min: Seconds = 1.0
    reconnect_max: Seconds = 30.0
    readings_per_message: int = Field(default=500, ge=1, le=100_000)
    max_inflight: int = Field(default=64, ge=1, le=65535, description="forwarded messages awaiting the broker's PUBACK")

    @field_validator("broker")
    @classmethod
    def _check_broker(cls, value: str) -> str:
        return value if value == "none" else check_broker_url(value, alternative="'none' or ")

    @field_validator("topic")
    @classmethod
    def _check_topic(cls, value: str) -> str:
        return check_topic_name(value, "upstream.topic")

    @model_validator(mode="after")
    def _check_reconnect(self) -> "UpstreamConfig":
        if self.reconnect_min > self.reconnect_max:
            raise ValueError(f"upstream.reconnect_min ({self.reconnect_min:g}s) exceeds upstream.reconnect_max ({self.reconnect_max:g}s)")
        return self


class BufferConfig(_Section):
    """The on-disk store-and-forward buffer (SQLite in the data directory)."""

    max_bytes: Bytes = Field(default=256 * 1024**2, ge=1024, description="payload bytes kept while the uplink is down, at least 1KiB")
    max_age: Seconds = Field(default=7 * 86400.0, gt=0, description="forwarded messages older than this are dropped and counted")
    overflow: Literal["drop_oldest", "refuse_new"] = "drop_oldest"
    drain_rate: float = Field(default=5000.0, gt=0, description="readings per second sent from the backlog after a reconnect")
    durability: Literal["full", "normal"] = Field(
        default="full",
        description="'full' fsyncs every commit and survives power loss; 'normal' survives a killed process only",
    )
    batch_max_messages: int = Field(default=1000, ge=1, description="local messages committed together at most")


class SyncConfig(_Section):
    """CRDT state kept at the edge and its sync to the cloud sync service."""

    enabled: bool = True
    topic_prefix: str = "sparkiot/sync"
    replica: str | None = Field(
        default=None, description="prefix of this agent's replica id in every CRDT (default: the site); each new store adds an incarnation"
    )
    resend_after: Seconds = Field(default=5.0, description="deltas not acknowledged within this time are sent again")
    max_message_bytes: Bytes = 256 * 1024
    max_pending_deltas: int = Field(default=1000, ge=2, description="unacknowledged delta groups kept before they are joined into one")
    sketch_relative_accuracy: float = Field(
        default=0.01, gt=0, lt=1, description="every agent of a fleet must use the same value, or the cloud cannot merge the sketches"
    )

    @field_validator("replica")
    @classmethod
    def _check_replica(cls, value: str | None) -> str | None:
        if value is not None and not SITE_PATTERN.fullmatch(value):
            raise ValueError(f"replica {value!r} must be 1-64 letters, digits, '_', '.' or '-'")
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        return check_topic_name(value.rstrip("/"), "sync.topic_prefix")


class EdgeConfig(_Section):
    """One edge gateway: its site, local broker, codec, rules, uplink, buffer and state sync."""

    site: str = "edge"
    data_dir: str = "sparkiot-edge"
    local: SourceConfig = SourceConfig(client_id="sparkiot-edge-local-{site}")
    codec: CodecConfig = CodecConfig()
    rules: RulesConfig = RulesConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    buffer: BufferConfig = BufferConfig()
    sync: SyncConfig = SyncConfig()

    @field_validator("site")
    @classmethod
    def _check_site(cls, value: str) -> str:
        if not SITE_PATTERN.fullmatch(value):
            raise ValueError(f"site {value!r} must be 1-64 letters, digits, '_', '.' or '-': it becomes part of MQTT topics")
        return value

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def replica(self) -> str:
        return self.sync.replica or self.site

    def topic(self, template: str) -> str:
        return template.replace("{site}", self.site)


def load_edge_config(path: str | Path | None, **overrides: object) -> EdgeConfig:
    """Read and validate an edge file (or defaults when ``path`` is None); ``overrides`` replace top-level keys.

    Raises :class:`ConfigError` with one line per problem.
    """
    raw = read_yaml_mapping(path, label="edge file") if path is not None else {}
    raw.update({key: value for key, value in overrides.items() if value is not None})
    return build_edge_config(raw, origin=str(path) if path else "the command line")


def build_edge_config(raw: dict, origin: str = "configuration") -> EdgeConfig:
    """Validate an edge configuration mapping, raising :class:`ConfigError` with readable lines."""
    return validate_model(EdgeConfig, raw, origin=origin, label="edge configuration", example="examples/edge.yaml")


__all__ = ["ConfigError", "EdgeConfig", "build_edge_config", "load_edge_config"]
