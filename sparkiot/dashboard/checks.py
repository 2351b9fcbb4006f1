"""Checks of the values that the dashboard reads from files written by other processes.

The JSON files, the progress log and the sync store come from other processes, an older
sparkiot or a hand edit, so any value may have any type. A value that fails its check is left
out, and a rate-limited warning names it, so it cannot stop a poll or reach a page or a metric.
"""

from __future__ import annotations

import logging
import math
import time

# Repeats of one warning are logged at most this often.
WARNING_EVERY_SECONDS = 60.0


def non_negative_number(value: object) -> int | float | None:
    """Return ``value`` if it is a finite int or float of at least 0, else None. A bool is not a number here."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        finite = math.isfinite(value)
    except OverflowError:
        # An int too large for a float, which every later float() would reject too.
        return None
    return value if finite and value >= 0 else None


def shown(value: object, limit: int = 80) -> str:
    """Return ``repr(value)`` cut to ``limit`` characters, for a log line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RateLimitedLog:
    """A warning log per key: the first occurrence is logged, then at most one line per ``every`` seconds with the count so far."""

    def __init__(self, logger: logging.Logger, every: float = WARNING_EVERY_SECONDS) -> None:
        self.logger = logger
        self.every = every
        self.counts: dict[str, int] = {}
        self._logged_at: dict[str, float] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        count = self.counts[key] = self.counts.get(key, 0) + 1
        now = time.monotonic()
        logged_at = self._logged_at.get(key)
        if logged_at is not None and now - logged_at < self.every:
            return
        self._logged_at[key] = now
        self.logger.warning(message + " (occurrences so far: %d)", *args, count)
