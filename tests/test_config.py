"""Unit tests of the pipeline configuration: durations, sizes and whole YAML files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sparkiot.config import ConfigError, PipelineConfig, build_config, load_config, parse_duration, parse_size

EXAMPLE_PIPELINE = Path(__file__).resolve().parent.parent / "examples" / "pipeline.yaml"


def write_pipeline(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def config_error(tmp_path: Path, text: str) -> str:
    """Load ``text`` as a pipeline file that must be invalid and return the error message."""
    with pytest.raises(ConfigError) as caught:
        load_config(write_pipeline(tmp_path, text))
    return str(caught.value)


# parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
        ("1.5m", 90.0),
        (" 30s ", 30.0),
        ("10 s", 10.0),
    ],
)
def test_parse_duration_valid(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["30", 30, 30.0, True, False, "-5s", "5 minutes", "", "s", "1e3s", "abc", "5m30s"],
    ids=repr,
)
def test_parse_duration_invalid(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_parse_duration_bare_number_hint():
    with pytest.raises(ValueError, match="add a unit"):
        parse_duration(30)


@pytest.mark.parametrize("value", [None, [1], {"seconds": 1}], ids=repr)
def test_parse_duration_non_string(value):
    with pytest.raises(ValueError):
        parse_duration(value)


# parse_size


@pytest.mark.parametrize(
    ("text", "size"),
    [
        (4096, 4096),
        (0, 0),
        ("4096", 4096),
        ("12B", 12),
        ("64KiB", 64 * 1024),
        ("64MiB", 64 * 1024 * 1024),
        ("1GiB", 1024 * 1024 * 1024),
        ("64 mib", 64 * 1024 * 1024),
        ("10kb", 10_000),
        ("2MB", 2_000_000),
        ("3GB", 3_000_000_000),
    ],
)
def test_parse_size_valid(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text",
    [-1, "-1", True, False, 1.5, "1.5MiB", "64XB", "", "MiB", "64 TiB", None],
    ids=repr,
)
def test_parse_size_invalid(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_parse_size_negative_message():
    with pytest.raises(ValueError, match="negative"):
        parse_size(-4096)


# load_config


def test_load_minimal_file(tmp_path):
    config = load_config(write_pipeline(tmp_path, "name: minimal\nwindows:\n  - size: 10s\n"))

    assert config.name == "minimal"
    assert len(config.windows) == 1
    assert config.windows[0].size == 10.0
    assert config.windows[0].slide is None


def test_load_sections_parse_units(tmp_path):
    text = (
        "source:\n  keepalive: 45s\n  broker: mqtt://127.0.0.1:1883\n"
        "codec:\n  max_payload_bytes: 1KiB\n  timezone: Europe/Berlin\n"
        "landing:\n  segment_bytes: 2MiB\n"
        "windows:\n  - size: 1h\n    slide: 15m\n"
    )
    config = load_config(write_pipeline(tmp_path, text))

    assert config.source.keepalive == 45.0
    assert config.source.broker == "mqtt://127.0.0.1:1883"
    assert config.codec.max_payload_bytes == 1024
    assert config.codec.timezone == "Europe/Berlin"
    assert config.landing.segment_bytes == 2 * 1024 * 1024
    assert config.windows[0].size == 3600.0
    assert config.windows[0].slide == 900.0


def test_load_overrides_top_level(tmp_path):
    path = write_pipeline(tmp_path, "name: from-file\ndata_dir: file-dir\n")

    config = load_config(path, data_dir=str(tmp_path / "override"), name=None)

    assert config.data_dir == str(tmp_path / "override")
    assert config.name == "from-file"


def test_load_unknown_key(tmp_path):
    message = config_error(tmp_path, "codec:\n  timezon: UTC\n")

    assert "codec.timezon" in message
    assert "unknown option" in message


def test_load_unknown_key_in_window(tmp_path):
    message = config_error(tmp_path, "windows:\n  - size: 5m\n    slid: 1m\n")

    assert "windows.0.slid" in message
    assert "unknown option" in message


def test_load_bad_duration(tmp_path):
    message = config_error(tmp_path, "source:\n  keepalive: soon\n")

    assert "source.keepalive" in message
    assert "'soon'" in message


def test_load_duration_without_unit(tmp_path):
    message = config_error(tmp_path, "watermark: 600\n")

    assert "watermark" in message
    assert "600" in message


def test_load_slide_not_dividing(tmp_path):
    message = config_error(tmp_path, "windows:\n  - size: 1h\n    slide: 7m\n")

    assert "windows" in message
    assert "must divide" in message


def test_load_slide_longer_than_size(tmp_path):
    message = config_error(tmp_path, "windows:\n  - size: 5m\n    slide: 10m\n")

    assert "must divide" in message


def test_load_no_windows(tmp_path):
    message = config_error(tmp_path, "windows: []\n")

    assert "at least one window" in message


def test_load_unknown_time_zone(tmp_path):
    message = config_error(tmp_path, "codec:\n  timezone: Mars/Olympus_Mons\n")

    assert "codec.timezone" in message
    assert "unknown time zone" in message
    assert "'Mars/Olympus_Mons'" in message


@pytest.mark.parametrize(
    "broker",
    ["http://127.0.0.1:1883", "127.0.0.1:1883", "mqtt://", "mqtt://host:port", "mqtt://host/topic"],
)
def test_load_invalid_broker(tmp_path, broker):
    message = config_error(tmp_path, f"source:\n  broker: '{broker}'\n")

    assert "source.broker" in message
    assert "invalid broker" in message


@pytest.mark.parametrize("broker", ["embedded", "mqtt://127.0.0.1:1883", "mqtt://localhost"])
def test_load_valid_broker(tmp_path, broker):
    config = load_config(write_pipeline(tmp_path, f"source:\n  broker: '{broker}'\n"))

    assert config.source.broker == broker


@pytest.mark.parametrize("text", ["", "# only a comment\n"], ids=["empty", "comment"])
def test_load_empty_file_defaults(tmp_path, text):
    config = load_config(write_pipeline(tmp_path, text))

    assert config == PipelineConfig()
    assert config.source.broker == "embedded"
    assert [(window.size, window.slide) for window in config.windows] == [(300.0, None), (3600.0, 900.0)]
    assert config.codec.max_payload_bytes == 256 * 1024


@pytest.mark.parametrize(("text", "type_name"), [("- a\n- b\n", "list"), ("just text\n", "str"), ("42\n", "int")])
def test_load_non_mapping(tmp_path, text, type_name):
    message = config_error(tmp_path, text)

    assert "must contain a mapping" in message
    assert f"not {type_name}" in message


def test_load_invalid_yaml(tmp_path):
    message = config_error(tmp_path, "source: [unclosed\n")

    assert "not valid YAML" in message


def test_load_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_example_pipeline_valid():
    if not EXAMPLE_PIPELINE.exists():
        pytest.skip(f"{EXAMPLE_PIPELINE} does not exist")

    raw = yaml.safe_load(EXAMPLE_PIPELINE.read_text(encoding="utf-8"))

    config = load_config(EXAMPLE_PIPELINE)

    assert config.name == raw.get("name", "default")
    assert len(config.windows) == len(raw.get("windows", PipelineConfig().windows))


# Edge cases of validation: each was once accepted or crashed with the wrong error.


def test_load_null_duration(tmp_path):
    message = config_error(tmp_path, "source:\n  keepalive:\n")

    assert "source.keepalive" in message


def test_load_zero_slide(tmp_path):
    message = config_error(tmp_path, "windows:\n  - size: 5m\n    slide: 0s\n")

    assert "windows" in message


def test_load_zero_window_size(tmp_path):
    message = config_error(tmp_path, "windows:\n  - size: 0s\n")

    assert "windows" in message


def test_build_sub_second_slide():
    config = build_config({"windows": [{"size": "300ms", "slide": "100ms"}]})

    assert config.windows[0].slide == pytest.approx(0.1)


def test_load_zone_directory_name(tmp_path):
    message = config_error(tmp_path, "codec:\n  timezone: Europe\n")

    assert "unknown time zone" in message


@pytest.mark.parametrize("broker", ["mqtt://127.0.0.1:99999", "mqtt://127.0.0.1:1883\n"], ids=["port", "newline"])
def test_build_broker_bad_port_newline(broker):
    with pytest.raises(ConfigError):
        build_config({"source": {"broker": broker}})


def test_build_warmup_over_window():
    with pytest.raises(ConfigError):
        build_config({"anomaly": {"window": 10, "warmup": 20}})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("source:\n  broker: mqtts://127.0.0.1:8883\n", "TLS (mqtts://) is not supported"),
        ("source:\n  topics: []\n", "at least one topic filter"),
        ("source:\n  topics: ['sensors/#/x']\n", "'#' must be a whole last level"),
        ("source:\n  topics: ['sensors/a+']\n", "'+' must be a whole level"),
        ("source:\n  client_id: ''\n", "client id must not be empty"),
        ("source:\n  keepalive: 100d\n", "between 1s and 65535s"),
        ("source:\n  reconnect_min: 2m\n  reconnect_max: 1m\n", "exceeds source.reconnect_max"),
        ("anomaly:\n  alert_topic: 'alerts/#'\n", "without wildcards"),
        ("windows:\n  - size: 99999999999999999999d\n", "longer than 100 years"),
        ("codec:\n  max_future: 20m\n", "must be shorter than watermark"),
    ],
)
def test_load_rejects_runtime_failures(tmp_path, text, message):
    assert message in config_error(tmp_path, text)


def test_load_directory_rejected(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_load_binary_file_rejected(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00\x01")

    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(path)
