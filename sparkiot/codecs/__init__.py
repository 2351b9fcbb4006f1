"""Payload formats to readings. Every codec returns a :class:`~sparkiot.codecs.json.Decoded`."""

from __future__ import annotations

from sparkiot.codecs.json import Decoded, JsonCodec
from sparkiot.codecs.router import CodecRouter, topic_matches
from sparkiot.config import CodecConfig

FORMATS = ("json", "senml", "senml-cbor", "influx", "sparkplug")


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
    raise ValueError(f"unknown codec format {format_name!r}; supported: {', '.join(FORMATS)}")


def make_codec(config: CodecConfig, *, dead_letter_raw_bytes: int = 4096) -> CodecRouter:
    """Return a router that decodes each topic with the format ``config.routes`` assigns to it."""
    routes = [(route.topics, route.format) for route in config.routes]
    return CodecRouter(
        routes, config.format, lambda name: build_codec(name, config, dead_letter_raw_bytes=dead_letter_raw_bytes)
    )


__all__ = ["FORMATS", "CodecRouter", "Decoded", "JsonCodec", "build_codec", "make_codec", "topic_matches"]
