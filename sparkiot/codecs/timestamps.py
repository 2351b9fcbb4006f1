"""Event-time decoding shared by every codec: epoch numbers and ISO 8601 text to UTC microseconds.

Integer epochs are converted with integer arithmetic, so a nanosecond epoch keeps every digit
down to the microsecond (the stored resolution) and is never rounded through a float. The unit of
an epoch is configured, or guessed by magnitude with ``auto``: below 1e11 seconds, below 1e14
milliseconds, below 1e17 microseconds, else nanoseconds. Seconds below 1e11 reach the year 5138,
so the guess is unambiguous for any plausible sensor time.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_US = timedelta(microseconds=1)
_US_PER_UNIT = {"s": 1_000_000, "ms": 1_000, "us": 1}
_FRACTION_RE = re.compile(r"(\.\d{6})\d+")


class TimestampError(ValueError):
    """A timestamp that cannot be decoded; the message names the value and the reason."""


def guess_epoch_unit(magnitude: float) -> str:
    """Return ``s``, ``ms``, ``us`` or ``ns`` for an epoch number by its magnitude."""
    magnitude = abs(magnitude)
    if magnitude < 1e11:
        return "s"
    if magnitude < 1e14:
        return "ms"
    if magnitude < 1e17:
        return "us"
    return "ns"


def epoch_to_us(value: int | float, unit: str) -> int:
    """Convert an epoch number in ``unit`` (or ``auto``) to integer microseconds."""
    if unit == "auto":
        unit = guess_epoch_unit(value)
    if isinstance(value, int):
        if unit == "ns":
            return value // 1000
        return value * _US_PER_UNIT[unit]
    if value != value or value in (float("inf"), float("-inf")):
        raise TimestampError(f"timestamp {value!r} is not a finite number")
    if unit == "ns":
        return int(value // 1000)
    return round(value * _US_PER_UNIT[unit])


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo | timezone:
    return timezone.utc if name == "UTC" else ZoneInfo(name)


def iso_to_us(text: str, default_zone: str) -> int:
    """Convert ISO 8601 text to UTC microseconds; a time without a zone is in ``default_zone``.

    Fractions finer than a microsecond are truncated toward the microsecond.
    """
    cleaned = _FRACTION_RE.sub(r"\1", text.strip())
    try:
        parsed = datetime.fromisoformat(cleaned)
    except ValueError:
        raise TimestampError(f"timestamp {text!r} is not ISO 8601 (such as '2024-05-01T12:00:00Z')") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=_zone(default_zone))
    return (parsed - _EPOCH) // _ONE_US


def to_us(value: object, unit: str, default_zone: str) -> int:
    """Convert a decoded JSON timestamp (number or text) to UTC microseconds."""
    if isinstance(value, bool):
        raise TimestampError(f"timestamp {value!r} is a boolean, not a time")
    if isinstance(value, (int, float)):
        return epoch_to_us(value, unit)
    if isinstance(value, str):
        stripped = value.strip()
        if re.fullmatch(r"-?\d{1,30}", stripped):
            return epoch_to_us(int(stripped), unit)
        if re.fullmatch(r"-?\d+", stripped):
            raise TimestampError(f"timestamp {stripped[:40]}... has too many digits for an epoch")
        return iso_to_us(stripped, default_zone)
    shown = getattr(value, "text", None) or repr(value)[:60]
    raise TimestampError(f"timestamp {shown} is neither a finite number nor ISO 8601 text")


def us_to_iso(ts_us: int) -> str:
    """Format UTC microseconds as ISO 8601 with a ``Z`` suffix."""
    return (_EPOCH + timedelta(microseconds=ts_us)).isoformat().replace("+00:00", "Z")
