"""Payload formats to readings. Every codec returns a :class:`~sparkiot.codecs.json.Decoded`."""

from __future__ import annotations

from sparkiot.codecs.json import Decoded, JsonCodec
from sparkiot.codecs.router import CodecRouter, topic_matches
from sparkiot.config import CodecConfig

FORMATS = ("json", "senml", "senml-cbor", "influx", "sparkplug", "edge")


def build_codec(format_name: str, config: CodecConfig, *, dead_letter_raw_bytes: int = 4096):
    """Return a new codec for ``format_name`` with the settings of ``config``."""
    if format_name == "json":
        return JsonCodec(config, dead_letter_raw_bytes=dead_letter_raw_bytes)
    if format_name == "influx":
        from sparkiot.codecs.influx import InfluxCodec

        return InfluxCodec(config, config.influx, dead_letter_raw_bytes=dead_letter_raw_bytes)
    if format_name in ("senml", "senml-cbor"):
        from sparkiot.codecs.senml import SenmlCodec

        encoding = "cbor" if format_name == "senml-cbor" else "json"
        return SenmlCodec(config, config.senml, encoding=encoding, dead_letter_raw_bytes=dead_letter_raw_bytes)
    if format_name == "sparkplug":
        # Imported here so pipelines without Sparkplug never load protobuf.
        from sparkiot.codecs.sparkplug import SparkplugCodec

        return SparkplugCodec(
            config, dead_letter_raw_bytes=dead_letter_raw_bytes, rebirth_interval=config.sparkplug_rebirth_interval
        )
    if format_name == "edge":
        from sparkiot.codecs.forwarded import ForwardedCodec

        return ForwardedCodec(config, dead_letter_raw_bytes=dead_letter_raw_bytes)
    raise ValueError(f"unknown codec format {format_name!r}; supported: {', '.join(FORMATS)}")


def make_codec(config: CodecConfig, *, dead_letter_raw_bytes: int = 4096) -> CodecRouter:
    """Return a router that decodes each topic with the format and topic pattern its route assigns."""

    def build(route_index: int | None):
        if route_index is None:
            return build_codec(config.format, config, dead_letter_raw_bytes=dead_letter_raw_bytes)
        route = config.routes[route_index]
        route_config = config
        if route.topic_pattern is not None:
            route_config = config.model_copy(update={"topic_pattern": route.topic_pattern})
        return build_codec(route.format, route_config, dead_letter_raw_bytes=dead_letter_raw_bytes)

    return CodecRouter([(route.topics, index) for index, route in enumerate(config.routes)], build)


__all__ = ["FORMATS", "CodecRouter", "Decoded", "JsonCodec", "build_codec", "make_codec", "topic_matches"]
