"""Payload formats to readings. Every codec returns a :class:`~sparkiot.codecs.json.Decoded`."""

from __future__ import annotations

from sparkiot.codecs.json import Decoded, JsonCodec
from sparkiot.config import CodecConfig


def make_codec(config: CodecConfig, *, dead_letter_raw_bytes: int = 4096) -> JsonCodec:
    """Return the codec that ``config.format`` names."""
    if config.format == "json":
        return JsonCodec(config, dead_letter_raw_bytes=dead_letter_raw_bytes)
    raise ValueError(f"unknown codec format {config.format!r}; supported: json")


__all__ = ["Decoded", "JsonCodec", "make_codec"]
