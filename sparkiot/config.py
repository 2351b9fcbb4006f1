"""Pipeline configuration: one YAML file, validated, one model per section.

Durations are strings with a unit (``"30s"``, ``"5m"``, ``"250ms"``) and sizes are strings with
a binary unit (``"64MiB"``) or plain byte counts; both are parsed here and nowhere else. Unknown
keys are rejected, so a misspelt option fails loudly instead of being ignored.
"""

from __future__ import annotations

import re
import reprlib
import string
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, ValidationError, field_validator, model_validator

_UTC = timezone.utc
_MAX_DURATION = 100 * 365 * 86400.0
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*")
_SIZE_UNITS = {"": 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "kb": 1000, "mb": 1000**2, "gb": 1000**3}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([a-zA-Z]*)\s*$")


class ConfigError(ValueError):
    """An invalid configuration; the message names the field, the value and the fix."""


def parse_duration(text: str | int | float) -> float:
    """Return a duration in seconds from ``"250ms"``, ``"30s"``, ``"5m"``, ``"2h"`` or ``"7d"``."""
    if isinstance(text, bool):
        raise ValueError(f"invalid duration {text!r}: write a number with a unit, such as '30s'")
    if isinstance(text, (int, float)):
        raise ValueError(f"invalid duration {text!r}: add a unit (ms, s, m, h or d), such as '{text}s'")
    if not isinstance(text, str):
        raise ValueError(f"invalid duration {text!r}: write a number with a unit (ms, s, m, h or d), such as '30s'")
    match = _DURATION_RE.fullmatch(text)
    if not match:
        raise ValueError(f"invalid duration {text!r}: write a number with a unit (ms, s, m, h or d), such as '30s'")
    seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds > _MAX_DURATION:
        raise ValueError(f"invalid duration {text[:40]!r}: longer than 100 years")
    return seconds


def parse_size(text: str | int) -> int:
    """Return a size in bytes from ``4096``, ``"64KiB"``, ``"64MiB"`` or ``"1GiB"``."""
    if isinstance(text, bool):
        raise ValueError(f"invalid size {text!r}: write a byte count or a number with a unit, such as '64MiB'")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"invalid size {text}: sizes cannot be negative")
        return text
    match = _SIZE_RE.match(str(text))
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"invalid size {text!r}: write a byte count or a number with a unit (KiB, MiB, GiB), such as '64MiB'")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def _check_topic_filter(topic_filter: str) -> None:
    """Raise ValueError unless ``topic_filter`` is a valid MQTT subscription filter."""
    levels = topic_filter.split("/")
    if not topic_filter:
        raise ValueError("a topic filter must not be empty")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise ValueError(f"invalid topic filter {topic_filter!r}: '#' must be a whole last level, such as 'sensors/#'")
        if "+" in level and level != "+":
            raise ValueError(f"invalid topic filter {topic_filter!r}: '+' must be a whole level, such as 'sensors/+/temp'")


def _check_topic_pattern(value: str | None) -> str | None:
    if value is None:
        return value
    for segment in value.split("/"):
        if "{" in segment and not re.fullmatch(r"\{(site|device_id|metric|_)\}", segment):
            raise ValueError(
                f"invalid topic segment {segment!r}: a placeholder fills a whole segment and is one of "
                "{site}, {device_id}, {metric} or {_}"
            )
    return value


Seconds = Annotated[float, BeforeValidator(parse_duration), PlainSerializer(lambda seconds: f"{seconds:g}s", when_used="json")]
Bytes = Annotated[int, BeforeValidator(parse_size)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceConfig(_Section):
    """The reading source: an MQTT broker and the topics to subscribe to."""

    broker: str = Field(
        default="embedded",
        description="'embedded' starts an in-process broker on a free port; otherwise mqtt://HOST:PORT",
    )
    topics: list[str] = ["sensors/#"]
    qos: Literal[1, 2] = 1
    client_id: str = "sparkiot-ingest"
    protocol: Literal["3.1.1", "5"] = "5"
    keepalive: Seconds = 30.0
    session_expiry: Seconds = 86400.0
    reconnect_min: Seconds = 1.0
    reconnect_max: Seconds = 60.0
    retained: Literal["dead_letter", "accept"] = Field(
        default="dead_letter",
        description="what a retained message replayed at subscribe time becomes; 'accept' marks its readings",
    )

    @field_validator("topics")
    @classmethod
    def _check_topics(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one topic filter is needed, such as ['sensors/#']")
        for topic_filter in value:
            _check_topic_filter(topic_filter)
        return value

    @field_validator("client_id")
    @classmethod
    def _check_client_id(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the client id must not be empty: the broker keeps the ingest's session under it")
        return value

    @field_validator("keepalive")
    @classmethod
    def _check_keepalive(cls, value: float) -> float:
        if not 1 <= value <= 65535:
            raise ValueError(f"keepalive must be between 1s and 65535s (the MQTT limit), got {value:g}s")
        return value

    @model_validator(mode="after")
    def _check_reconnect(self) -> "SourceConfig":
        if self.reconnect_min > self.reconnect_max:
            raise ValueError(f"source.reconnect_min ({self.reconnect_min:g}s) exceeds source.reconnect_max ({self.reconnect_max:g}s)")
        return self

    @field_validator("broker")
    @classmethod
    def _check_broker(cls, value: str) -> str:
        return value if value == "embedded" else check_broker_url(value, alternative="'embedded' or ")


def check_broker_url(value: str, *, alternative: str = "") -> str:
    """Return ``value`` when it is ``mqtt://HOST[:PORT]``; raise ValueError naming the fix otherwise."""
    if value.startswith("mqtts://"):
        raise ValueError(f"invalid broker {value!r}: TLS (mqtts://) is not supported yet; use mqtt://HOST:PORT")
    match = re.fullmatch(r"mqtt://[^:/\s]+(?::(\d+))?/?", value)
    if not match or (match.group(1) and not 0 < int(match.group(1)) < 65536):
        raise ValueError(f"invalid broker {value!r}: use {alternative}a URL such as 'mqtt://127.0.0.1:1883'")
    return value


def check_topic_name(value: str, field: str) -> str:
    """Return ``value`` when it can be published to: not empty and without wildcards; raise ValueError otherwise."""
    if not value or "+" in value or "#" in value or "\0" in value:
        raise ValueError(f"{field} {value!r} must be a topic name without wildcards (+ or #), such as 'sparkiot/alerts'")
    return value


# Characters that may end a SenML base name or split a name into device and metric.
SENML_SEPARATORS = "-:./_"


class InfluxSettings(_Section):
    """Settings of the line protocol codec."""

    precision: Literal["s", "ms", "us", "ns"] = "ns"
    device_id_tag: str = "host"
    site_tag: str | None = "site"
    metric_template: str = "{measurement}.{field}"
    strings: Literal["reject"] = "reject"

    @field_validator("device_id_tag", "site_tag")
    @classmethod
    def _check_tag(cls, value: str | None) -> str | None:
        if value == "":
            raise ValueError("invalid empty tag name: name a tag such as 'host', or set site_tag to null")
        return value

    @field_validator("metric_template")
    @classmethod
    def _check_template(cls, value: str) -> str:
        hint = "use {measurement} and {field}, such as '{measurement}.{field}' or '{field}'"
        try:
            parts = list(string.Formatter().parse(value))
        except ValueError as exc:
            raise ValueError(f"invalid metric template {value!r} ({exc}): {hint}") from None
        names = set()
        for _, name, spec, conversion in parts:
            if name is None:
                continue
            if name not in ("measurement", "field") or spec or conversion:
                raise ValueError(f"invalid placeholder in metric template {value!r}: {hint}")
            names.add(name)
        if "field" not in names:
            raise ValueError(f"metric template {value!r} is missing {{field}}: {hint}")
        return value


class SenmlSettings(_Section):
    """Settings that name the devices and metrics of SenML readings (see the module documentation)."""

    device_id_from: Literal["base_name", "topic"] = "base_name"
    name_separators: str = "/"
    default_metric: str = "value"
    metric_from_unit: bool = False
    sum_suffix: str = "_sum"

    @field_validator("name_separators")
    @classmethod
    def _check_separators(cls, value: str) -> str:
        if any(char not in SENML_SEPARATORS for char in value):
            raise ValueError(f"invalid name separators {value!r}: use characters among {SENML_SEPARATORS!r}, such as '/'")
        return value

    @field_validator("default_metric", "sum_suffix")
    @classmethod
    def _check_not_empty(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty, such as 'value' or '_sum'")
        return value


CodecFormat = Literal["json", "senml", "senml-cbor", "influx", "sparkplug", "edge"]


class RouteConfig(_Section):
    """One routing rule: payloads on topics matching the MQTT filter ``topics`` are in ``format``."""

    topics: str
    format: CodecFormat
    topic_pattern: str | None = Field(
        default=None, description="names this fleet's topic segments; default codec.topic_pattern"
    )

    @field_validator("topic_pattern")
    @classmethod
    def _check_pattern(cls, value: str | None) -> str | None:
        return _check_topic_pattern(value)


class CodecConfig(_Section):
    """Payload decoding settings."""

    format: CodecFormat = Field(default="json", description="format of payloads on topics no route matches")
    routes: list[RouteConfig] = []
    influx: InfluxSettings = InfluxSettings()
    senml: SenmlSettings = SenmlSettings()
    sparkplug_rebirth_interval: Seconds = Field(
        default=10.0, description="minimum time between two rebirth requests to one Sparkplug edge node"
    )
    topic_pattern: str | None = Field(
        default=None,
        description="names topic segments, such as 'sensors/{site}/{device_id}/{metric}'",
    )
    device_id_field: str = "device_id"
    metric_field: str = "metric"
    value_field: str = "value"
    ts_field: str = "ts"
    unit_field: str = "unit"
    site_field: str = "site"
    id_field: str = "id"
    metrics_field: str = "metrics"
    root_path: str | None = Field(default=None, description="dotted path of the readings inside an envelope, such as 'data.readings'")
    flatten_separator: str | None = Field(
        default=None, description="joins nested metric objects into names, such as '.' for env.humidity"
    )
    ts_unit: Literal["auto", "s", "ms", "us", "ns"] = "auto"
    timezone: str = "UTC"
    numbers_as_strings: bool = False
    missing_timestamp: Literal["reject", "receive_time"] = "reject"
    max_payload_bytes: Bytes = 256 * 1024
    min_timestamp: datetime = datetime(2000, 1, 1, tzinfo=_UTC)
    max_future: Seconds = 300.0

    @field_validator("timezone")
    @classmethod
    def _check_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(f"unknown time zone {value!r}: use an IANA name such as 'UTC' or 'Europe/Berlin'") from None
        return value

    @field_validator("topic_pattern")
    @classmethod
    def _check_pattern(cls, value: str | None) -> str | None:
        return _check_topic_pattern(value)

    @field_validator("min_timestamp")
    @classmethod
    def _check_min(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=_UTC)

    @model_validator(mode="after")
    def _check_senml_device(self) -> "CodecConfig":
        if self.senml.device_id_from == "topic" and "{device_id}" not in (self.topic_pattern or ""):
            raise ValueError(
                "codec.senml.device_id_from is 'topic' but codec.topic_pattern has no {device_id} segment; "
                "add one, such as 'sensors/{site}/{device_id}'"
            )
        return self


class LandingConfig(_Section):
    """The durable landing log between ingest and Spark."""

    segment_bytes: Bytes = 64 * 1024**2
    retention_bytes: Bytes = 2 * 1024**3
    retention_age: Seconds = 7 * 86400.0
    batch_max_messages: int = Field(default=5000, ge=1, description="messages landed with one fsync at most")
    batch_max_bytes: Bytes = Field(
        default=2 * 1024**2, description="payload bytes landed with one fsync at most, which bounds commit time and memory"
    )
    dead_letter_raw_bytes: Bytes = 4096


class WindowConfig(_Section):
    """One event-time window: tumbling when ``slide`` is absent, sliding otherwise."""

    size: Seconds
    slide: Seconds | None = None

    @field_validator("size", "slide")
    @classmethod
    def _check_positive(cls, value: float | None) -> float | None:
        if value is not None and value < 0.001:
            raise ValueError(f"window durations must be at least 1ms, got {value:g}s")
        return value

    @property
    def name(self) -> str:
        return f"{_format_seconds(self.size)}" + (f"/{_format_seconds(self.slide)}" if self.slide else "")


class AnomalyConfig(_Section):
    """The rolling z-score detector that raises alerts."""

    enabled: bool = True
    window: int = Field(default=60, ge=2, description="readings per series in the rolling statistics")
    warmup: int = Field(default=30, ge=2, description="readings a series needs before it can alert")
    threshold: float = Field(default=4.0, gt=0)
    alert_topic: str = "sparkiot/alerts"

    @field_validator("alert_topic")
    @classmethod
    def _check_alert_topic(cls, value: str) -> str:
        if not value or "+" in value or "#" in value:
            raise ValueError(f"alert_topic {value!r} must be a topic name without wildcards (+ or #), such as 'sparkiot/alerts'")
        return value

    @model_validator(mode="after")
    def _check_warmup(self) -> "AnomalyConfig":
        if self.warmup > self.window:
            raise ValueError(f"anomaly.warmup={self.warmup} cannot exceed anomaly.window={self.window}: the window holds at most {self.window} readings")
        return self


class StateConfig(_Section):
    """The latest-value state store."""

    kind: Literal["sqlite"] = "sqlite"
    path: str | None = Field(default=None, description="SQLite file; default DATA_DIR/state.sqlite")


class SparkConfig(_Section):
    """The Spark runtime."""

    master: str = "local[*]"
    trigger: Seconds = 1.0
    side_trigger: Seconds = 5.0
    shuffle_partitions: int = Field(default=2, ge=1)
    log_level: Literal["ERROR", "WARN", "INFO", "DEBUG"] = "ERROR"
    log_to_terminal: bool = Field(default=False, description="print Spark's own log; by default it goes to DATA_DIR/logs/spark.log")
    conf: dict[str, str] = {}


class ScalingConfig(_Section):
    """The policy that sets a standalone pipeline's executor count while it runs."""

    policy: str = Field(
        default="target_tracking",
        description="'target_tracking', 'fixed', or 'package.module:Class' for a policy of your own",
    )
    interval: Seconds = Field(default=5.0, description="how often the policy is asked for a decision")
    target_utilization: float = Field(
        default=0.6, gt=0, le=1, description="busy share of each trigger interval that target tracking aims for"
    )
    scale_out_cooldown: Seconds = 10.0
    scale_in_cooldown: Seconds = 30.0
    options: dict[str, float | int | str | bool] = Field(default={}, description="passed to a policy of your own")

    @field_validator("policy")
    @classmethod
    def _check_policy(cls, value: str) -> str:
        if value in ("target_tracking", "fixed") or re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value):
            return value
        raise ValueError("write 'target_tracking', 'fixed', or an import path such as 'mypackage.policies:MyPolicy'")


class ServerlessConfig(_Section):
    """The runtime, resources and idle timeout for ``sparkiot serve``; ``sparkiot run`` ignores this section."""

    runtime: Literal["local", "standalone", "connect"] = "local"
    local_cores: int = Field(default=2, ge=1, le=256, description="N of local[N] for the local and connect runtimes")
    driver_cores: int = Field(default=1, ge=1, le=64)
    driver_memory: Bytes = 1024**3
    executor_cores: int = Field(default=1, ge=1, le=64)
    executor_memory: Bytes = 512 * 1024**2
    initial_executors: int = Field(default=1, ge=1, le=256)
    min_executors: int = Field(default=1, ge=1, le=256)
    max_executors: int = Field(default=4, ge=1, le=256)
    idle_timeout: Seconds | None = Field(
        default=300.0, description="stop the Spark runtime after this long without new input; null keeps it running"
    )
    scaling: ScalingConfig = ScalingConfig()

    @model_validator(mode="after")
    def _check_bounds(self) -> "ServerlessConfig":
        if not self.min_executors <= self.initial_executors <= self.max_executors:
            raise ValueError(
                f"executors must satisfy min_executors <= initial_executors <= max_executors "
                f"(got {self.min_executors}, {self.initial_executors}, {self.max_executors})"
            )
        for name in ("driver_memory", "executor_memory"):
            if getattr(self, name) < 32 * 1024**2:
                raise ValueError(f"{name} must be at least 32MiB, such as '512MiB'")
        return self


class PipelineConfig(_Section):
    """A whole pipeline: source, codec, landing log, windows, anomaly rule, sinks and Spark."""

    name: str = "default"
    data_dir: str = "sparkiot-data"
    source: SourceConfig = SourceConfig()
    codec: CodecConfig = CodecConfig()
    landing: LandingConfig = LandingConfig()
    watermark: Seconds = 600.0
    windows: list[WindowConfig] = [WindowConfig(size="5m"), WindowConfig(size="1h", slide="15m")]
    anomaly: AnomalyConfig = AnomalyConfig()
    state: StateConfig = StateConfig()
    spark: SparkConfig = SparkConfig()
    serverless: ServerlessConfig = ServerlessConfig()

    @model_validator(mode="after")
    def _check_future_bound(self) -> "PipelineConfig":
        # A reading dated d ahead moves the watermark to (now + d - watermark); when d reached the
        # watermark delay, every correct reading after it would be late.
        if self.codec.max_future >= self.watermark:
            raise ValueError(
                f"codec.max_future ({self.codec.max_future:g}s) must be shorter than watermark ({self.watermark:g}s), "
                "or a reading dated in the future could make the correct readings after it late"
            )
        return self

    @field_validator("windows")
    @classmethod
    def _check_windows(cls, value: list[WindowConfig]) -> list[WindowConfig]:
        if not value:
            raise ValueError("at least one window is needed, such as [{size: '5m'}]")
        for window in value:
            size_ms, slide_ms = round(window.size * 1000), round((window.slide or window.size) * 1000)
            if slide_ms > size_ms or size_ms % slide_ms:
                raise ValueError(
                    f"window size {window.name}: the slide must divide the size, such as size '1h' with slide '15m'"
                )
        return value

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def state_path(self) -> Path:
        return Path(self.state.path) if self.state.path else self.data_path / "state.sqlite"


def _format_seconds(seconds: float) -> str:
    for unit, factor in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= factor and seconds % factor == 0:
            return f"{int(seconds // factor)}{unit}"
    return f"{int(seconds * 1000)}ms"


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 3, 60, 60, 6, 6


def _short_repr(value) -> str:
    """Return a short representation of a bad value; a huge nested one is cut before it is built."""
    return _shorten(_REPR.repr(value))


def read_yaml_mapping(path: str | Path, *, label: str = "pipeline file") -> dict:
    """Read a YAML file that must hold a mapping; raise :class:`ConfigError` naming the problem."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{label} not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory; give the path of the {label} (YAML)") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text; the {label} must be YAML") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {label} {path}: {exc.strerror}") from None
    except RecursionError:
        raise ConfigError(f"{path} nests too deeply for the {label}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {str(exc)[:500]}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must contain a mapping of sections, not {type(raw).__name__}")
    return raw


def load_config(path: str | Path, **overrides: object) -> PipelineConfig:
    """Read and validate a pipeline file; ``overrides`` replace top-level keys.

    Raises :class:`ConfigError` with one line per problem: the field path, the bad value and
    what to write instead.
    """
    raw = read_yaml_mapping(path)
    raw.update({key: value for key, value in overrides.items() if value is not None})
    return build_config(raw, origin=str(path))


def validate_model(model: type[BaseModel], raw: dict, *, origin: str, label: str, example: str):
    """Validate ``raw`` as ``model``, raising :class:`ConfigError` with one readable line per problem."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "(top level)"
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = f"unknown option: check the spelling against {example}"
            value = error.get("input")
            shown = "" if isinstance(value, dict) else f" (got {_short_repr(value)})"
            lines.append(f"  {where}: {message}{shown}")
        raise ConfigError(f"invalid {label} in {origin}:\n" + "\n".join(lines)) from None


def build_config(raw: dict, origin: str = "configuration") -> PipelineConfig:
    """Validate a configuration mapping, raising :class:`ConfigError` with readable lines."""
    return validate_model(PipelineConfig, raw, origin=origin, label="pipeline", example="examples/pipeline.yaml")
