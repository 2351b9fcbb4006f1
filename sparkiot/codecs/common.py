"""Pieces every codec shares: the rejection it raises internally and topic pattern matching."""

from __future__ import annotations

from sparkiot.readings import Reason


class Reject(Exception):
    """A payload, or part of one, that becomes a dead letter with ``reason`` and ``detail``."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class TopicPattern:
    """Names topic segments by a pattern such as ``sensors/{site}/{device_id}/{metric}``.

    A placeholder fills one whole segment; ``{_}`` matches any segment and names nothing. A
    topic with another number of segments, another literal segment, or an empty segment in a
    placeholder's place raises :class:`Reject` with ``topic_mismatch``.

    >>> TopicPattern("sensors/{site}/{device_id}").fields("sensors/roof/d1")
    {'site': 'roof', 'device_id': 'd1'}
    """

    def __init__(self, pattern: str | None) -> None:
        self.pattern = pattern
        self._segments = pattern.split("/") if pattern else None

    def names(self) -> list[str]:
        """Return the placeholders of the pattern, such as ``['site', 'device_id']``."""
        return [segment[1:-1] for segment in self._segments or [] if segment.startswith("{") and segment != "{_}"]

    def fields(self, topic: str) -> dict[str, str]:
        """Return the named segments of ``topic`` (empty without a pattern)."""
        if self._segments is None:
            return {}
        segments = topic.split("/")
        if len(segments) != len(self._segments):
            raise Reject(
                Reason.TOPIC_MISMATCH,
                f"topic {topic!r} has {len(segments)} segments but codec.topic_pattern {self.pattern!r} "
                f"has {len(self._segments)}",
            )
        fields: dict[str, str] = {}
        for name, segment in zip(self._segments, segments):
            if not name.startswith("{"):
                if name != segment:
                    raise Reject(
                        Reason.TOPIC_MISMATCH,
                        f"topic {topic!r} does not match codec.topic_pattern {self.pattern!r} at {segment!r}",
                    )
            elif name != "{_}":
                if not segment:
                    raise Reject(Reason.TOPIC_MISMATCH, f"topic {topic!r} has an empty segment for {name}")
                fields[name[1:-1]] = segment
        return fields
