"""Rolling z-score anomaly detection per series (device_id, metric).

A reading ``x`` of a series scores ``z = (x - mean) / stddev`` against the previous ``window``
readings of that series (sample standard deviation). It is flagged when ``|z| >= threshold`` and
the series has at least ``warmup`` earlier readings, because a fresh estimate of the spread is
too noisy to judge by. Every reading, flagged or not, then enters the window.

NOTE: a series whose window is constant (stddev 0, or below 1e-12 of its mean) never alerts,
even on a jump; a stuck sensor is a different rule.

>>> detector = RollingZScore(window=5, warmup=3, threshold=3.0)
>>> [detector.score_and_learn(("d", "t"), x) for x in (10.0, 10.5, 9.5, 10.0)][-1] is None
True
>>> round(detector.score_and_learn(("d", "t"), 30.0).score, 2)
48.99
"""

from __future__ import annotations

import math
from collections import deque
from typing import NamedTuple


class Score(NamedTuple):
    """A flagged reading: its z-score and the window statistics it was judged against."""

    score: float
    mean: float
    stddev: float


class _Series:
    __slots__ = ("values", "mean", "m2", "learned")

    def __init__(self, window: int) -> None:
        self.values: deque[float] = deque(maxlen=window)
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations from the mean
        self.learned = 0

    def learn(self, value: float) -> None:
        """Add ``value`` (dropping the oldest when full) with Welford's update, recomputed exactly when needed."""
        values = self.values
        previous_m2 = self.m2
        if len(values) < values.maxlen:
            values.append(value)
            delta = value - self.mean
            self.mean += delta / len(values)
            self.m2 += delta * (value - self.mean)
        else:
            old = values[0]
            values.append(value)
            new_mean = self.mean + (value - old) / len(values)
            self.m2 += (value - old) * (value - new_mean + old - self.mean)
            self.mean = new_mean
        self.learned += 1
        # Rounding residue builds up with each update, and an outlier leaving the window cancels
        # most of m2; in both cases two exact passes over the window restore full precision.
        if self.learned % values.maxlen == 0 or self.m2 < 1e-6 * previous_m2 or self.m2 < 0:
            self.mean = math.fsum(values) / len(values)
            self.m2 = math.fsum((x - self.mean) ** 2 for x in values)


class RollingZScore:
    """Score readings against the rolling mean and standard deviation of their series."""

    def __init__(self, *, window: int = 60, warmup: int = 30, threshold: float = 4.0) -> None:
        if warmup > window:
            raise ValueError(f"warmup={warmup} cannot exceed window={window}: the window holds at most {window} readings")
        self.window = window
        self.warmup = warmup
        self.threshold = threshold
        self._series: dict[tuple[str, str], _Series] = {}

    def score_and_learn(self, key: tuple[str, str], value: float) -> Score | None:
        """Return a :class:`Score` when ``value`` is anomalous for series ``key``, else None; then learn it."""
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(self.window)
        result = None
        count = len(series.values)
        if count >= self.warmup:
            stddev = math.sqrt(series.m2 / (count - 1)) if series.m2 > 0 else 0.0
            # A spread below this share of the level is rounding noise of a constant window.
            if stddev > 1e-12 * max(abs(series.mean), 1.0):
                score = (value - series.mean) / stddev
                if abs(score) >= self.threshold:
                    result = Score(score, series.mean, stddev)
        series.learn(value)
        return result

    def learn(self, key: tuple[str, str], value: float) -> None:
        """Add ``value`` to the window of series ``key`` without scoring it (used to warm up after a restart)."""
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(self.window)
        series.learn(value)

    def __len__(self) -> int:
        return len(self._series)
