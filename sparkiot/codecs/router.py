"""Routing: one pipeline reads several fleets by mapping topic filters to payload formats.

Routes are tried in configuration order and the first whose MQTT topic filter matches the topic
decides the format; a topic no route matches uses ``codec.format``. Filters follow MQTT: ``+``
matches one level, a final ``#`` matches any number of levels (also none), and wildcards at the
first level do not match topics that start with ``$``.
"""

from __future__ import annotations

from collections.abc import Callable

from sparkiot.codecs.json import Decoded


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Return True when ``topic`` matches the MQTT ``topic_filter``.

    >>> topic_matches("spBv1.0/+/NDATA/#", "spBv1.0/plant/NDATA/node-1")
    True
    >>> topic_matches("sensors/#", "sensors")
    True
    >>> topic_matches("#", "$SYS/broker/uptime")
    False
    """
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    if topic.startswith("$") and filter_levels[0] in ("+", "#"):
        return False
    for index, level in enumerate(filter_levels):
        if level == "#":
            return index == len(filter_levels) - 1
        if index >= len(topic_levels):
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    return len(topic_levels) == len(filter_levels)


class CodecRouter:
    """Decode each payload with the codec its topic routes to; codecs are built on first use.

    ``routes`` are (topic filter, codec key) pairs; ``build`` makes the codec of a key, and the
    key ``None`` names the default codec for topics no route matches.
    """

    def __init__(self, routes: list[tuple[str, object]], build: Callable[[object], object]) -> None:
        self._routes = routes
        self._build = build
        self._codecs: dict[object, object] = {}

    def codec_for(self, topic: str):
        """Return the codec that decodes payloads on ``topic``."""
        key = None
        for topic_filter, route_key in self._routes:
            if topic_matches(topic_filter, topic):
                key = route_key
                break
        codec = self._codecs.get(key)
        if codec is None:
            codec = self._codecs[key] = self._build(key)
        return codec

    def decode(self, payload: bytes, topic: str, received_us: int) -> Decoded:
        return self.codec_for(topic).decode(payload, topic, received_us)

    def take_commands(self) -> list[tuple[str, bytes]]:
        """Return and clear the MQTT messages codecs want published (such as Sparkplug rebirth requests)."""
        commands: list[tuple[str, bytes]] = []
        for codec in self._codecs.values():
            take = getattr(codec, "take_commands", None)
            if take is not None:
                commands.extend(take())
        return commands

    def counters(self) -> dict[str, int]:
        """Return the codecs' own counters (such as Sparkplug sequence gaps), prefixed by format."""
        totals: dict[str, int] = {}
        for codec in self._codecs.values():
            prefix = type(codec).__name__.removesuffix("Codec").lower()
            for key, value in getattr(codec, "counters", {}).items():
                totals[f"{prefix}_{key}"] = totals.get(f"{prefix}_{key}", 0) + value
        return totals

    def take_events(self) -> list[dict]:
        """Return and clear the events codecs observed (such as Sparkplug births and deaths)."""
        events: list[dict] = []
        for codec in self._codecs.values():
            take = getattr(codec, "take_events", None)
            if take is not None:
                events.extend(take())
        return events
