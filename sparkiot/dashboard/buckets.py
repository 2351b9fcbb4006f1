"""Histograms kept as bucket counts, observed a batch of values at a time.

prometheus-client's ``Histogram`` observes one value per call. The dashboard observes the
end-to-end latency of every stored reading, tens of thousands per poll on a large table. So it
counts them per bucket with one vectorized call, and a custom collector
(:mod:`sparkiot.dashboard.metrics`) exposes the totals in Prometheus' cumulative form.
"""

from __future__ import annotations

import math

import numpy as np

# Upper bounds in seconds; Prometheus' +Inf bucket is added in the exposition.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0, 300.0, 900.0)
BATCH_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)


class BucketCounts:
    """Counts of observations per bucket with the given upper bounds (seconds), and their sum."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = np.asarray(bounds, dtype=float)
        # One count per finite bound, then the overflow bucket.
        self.counts = np.zeros(len(bounds) + 1, dtype=np.int64)
        self.sum = 0.0

    def observe(self, values) -> None:
        """Count every finite value; a value equal to a bound falls in that bound's bucket."""
        values = np.asarray(values, dtype=float)
        values = values[np.isfinite(values)]
        if values.size == 0:
            return
        self.counts += np.bincount(np.searchsorted(self.bounds, values, side="left"), minlength=len(self.counts))
        self.sum += float(values.sum())

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def cumulative(self) -> list[tuple[str, int]]:
        """Return ``(le, cumulative count)`` pairs ending with ``+Inf``, as Prometheus exposes them."""
        totals = np.cumsum(self.counts)
        labels = [_format_bound(bound) for bound in self.bounds] + ["+Inf"]
        return list(zip(labels, (int(total) for total in totals)))

    def quantile(self, q: float) -> float | None:
        """Return the upper bound of the bucket holding quantile ``q`` (None before any observation)."""
        total = self.count
        if total == 0:
            return None
        index = int(np.searchsorted(np.cumsum(self.counts), math.ceil(q * total), side="left"))
        return float(self.bounds[index]) if index < len(self.bounds) else math.inf


def _format_bound(bound: float) -> str:
    return repr(float(bound))
