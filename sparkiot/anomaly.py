"""Rolling z-score anomaly detection per series (device_id, metric).

A reading ``x`` of a series scores ``z = (x - mean) / stddev`` against the previous ``window``
readings of that series (sample standard deviation). It is flagged when ``|z| >= threshold`` and
the series has at least ``warmup`` earlier readings, because a fresh estimate of the spread is
too noisy to judge by. Every reading, flagged or not, then enters the window.

NOTE: a series whose window is constant (stddev 0) never alerts, even on a jump; a stuck sensor
is a different rule.

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
    __slots__ = ("values", "shift", "total", "total_sq")

    def __init__(self, window: int, first: float) -> None:
        self.values: deque[float] = deque(maxlen=window)
        # Sums of (x - shift) keep the variance accurate when values are large and close together.
        self.shift = first
        self.total = 0.0
        self.total_sq = 0.0


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
            series = self._series[key] = _Series(self.window, value)
        result = None
        count = len(series.values)
        if count >= self.warmup:
            mean_shifted = series.total / count
            variance = (series.total_sq - series.total * mean_shifted) / (count - 1)
            stddev = math.sqrt(variance) if variance > 0 else 0.0
            if stddev > 0:
                mean = mean_shifted + series.shift
                score = (value - mean) / stddev
                if abs(score) >= self.threshold:
                    result = Score(score, mean, stddev)
        self._learn(series, value)
        return result

    def learn(self, key: tuple[str, str], value: float) -> None:
        """Add ``value`` to the window of series ``key`` without scoring it (used to warm up after a restart)."""
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = _Series(self.window, value)
        self._learn(series, value)

    @staticmethod
    def _learn(series: _Series, value: float) -> None:
        if len(series.values) == series.values.maxlen:
            old = series.values[0] - series.shift
            series.total -= old
            series.total_sq -= old * old
        shifted = value - series.shift
        series.values.append(value)
        series.total += shifted
        series.total_sq += shifted * shifted

    def __len__(self) -> int:
        return len(self._series)
