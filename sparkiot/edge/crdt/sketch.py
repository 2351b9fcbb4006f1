"""A mergeable quantile sketch: DDSketch buckets kept as grow-only counters per replica.

DDSketch (Masson, Rim, Lee, "DDSketch: A Fast and Fully-Mergeable Quantile Sketch with
Relative-Error Guarantees", VLDB 2019) maps a value ``x > 0`` to the bucket
``ceil(log_gamma(x))`` with ``gamma = (1 + alpha) / (1 - alpha)``, and negative values to the
same buckets of ``-x`` on a separate side. Values closer to zero than the mapping can resolve
go to a zero bucket. The bucket mapping and the quantile query come from Datadog's
``ddsketch`` package (``LogarithmicMapping``, ``DenseStore``). This module adds the lattice:
one count per (replica, bucket), each a grow-only counter joined by the maximum.

Guarantee: ``quantile(q)`` returns the same value as a ``ddsketch.DDSketch`` of the same
relative accuracy fed all the values added on every replica. That value is within
``relative_accuracy`` (relative error) of the sorted value at index ``floor(q * (count - 1))``,
which ``numpy.quantile`` returns with ``method="lower"``. Limits: each replica id must have a
single writer. There is no bucket limit: a replica keeps up to ``ln(max / min) / ln(gamma)``
buckets per side, 914 for values from 1 ms to 1 day (in ms) at 1 % accuracy.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Self

from ddsketch.ddsketch import BaseDDSketch
from ddsketch.mapping import LogarithmicMapping
from ddsketch.store import DenseStore

from sparkiot.edge.crdt.base import check_replica, check_same_type
from sparkiot.edge.crdt.encoding import WireCodec, WireReader, wire_type

POSITIVE, NEGATIVE, ZERO = 1, -1, 0

# (replica id, side, bucket key). The zero side has the single key 0.
Cell = tuple[str, int, int]


def _mapping(relative_accuracy: object) -> LogarithmicMapping:
    if not isinstance(relative_accuracy, float) or not 0.0 < relative_accuracy < 1.0:
        raise ValueError(f"relative_accuracy must be a float in (0, 1), got {relative_accuracy!r}")
    return LogarithmicMapping(relative_accuracy)


@wire_type(tag=8)
class QuantileSketch(WireCodec):
    """A DDSketch whose bucket counts are per-replica grow-only counters.

    >>> sketch = QuantileSketch(relative_accuracy=0.01)
    >>> for reading in range(1, 101):
    ...     delta = sketch.add("gw-1", float(reading))
    >>> sketch.count(), abs(sketch.quantile(0.5) - 50.0) <= 0.5
    (100, True)
    """

    __slots__ = ("_relative_accuracy", "_mapping", "_counts")

    def __init__(self, relative_accuracy: float = 0.01) -> None:
        """Create an empty sketch; raises ValueError unless ``relative_accuracy`` is a float in (0, 1)."""
        self._mapping = _mapping(relative_accuracy)
        self._relative_accuracy = relative_accuracy
        self._counts: dict[Cell, int] = {}

    @property
    def relative_accuracy(self) -> float:
        """Relative accuracy of the quantiles, 0.01 for 1 %."""
        return self._relative_accuracy

    def add(self, replica: str, value: float) -> QuantileSketch:
        """Add one value on behalf of ``replica`` and return the delta: the one bucket count it raised.

        Raises TypeError when ``value`` is not an int or float, and ValueError when it is NaN,
        infinite or beyond the range the mapping can hold (about 1.7e308 at 1 % accuracy).
        """
        check_replica(replica)
        cell = (replica, *self._bucket(value))
        count = self._counts.get(cell, 0) + 1
        self._counts[cell] = count

        delta = QuantileSketch(self._relative_accuracy)
        delta._counts[cell] = count
        return delta

    def _bucket(self, value: object) -> tuple[int, int]:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TypeError(f"QuantileSketch takes an int or float, got {type(value).__name__}: {value!r}")
        number = float(value) if abs(value) <= self._mapping.max_possible else math.inf
        if not math.isfinite(number):
            raise ValueError(
                f"QuantileSketch takes finite values within +-{self._mapping.max_possible:.3g}, got {value!r:.40}: "
                "drop NaN and infinite readings before adding them"
            )

        # The same thresholds as ddsketch's BaseDDSketch.add, so both pick the same bucket.
        if number > self._mapping.min_possible:
            return POSITIVE, self._mapping.key(number)
        if number < -self._mapping.min_possible:
            return NEGATIVE, self._mapping.key(-number)
        return ZERO, 0

    def merge(self, other: QuantileSketch) -> None:
        """Join ``other`` into this sketch: the maximum count per (replica, bucket).

        Raises ValueError when the relative accuracies differ, because the buckets would not match.
        """
        check_same_type(self, other)
        if other._relative_accuracy != self._relative_accuracy:
            raise ValueError(
                f"cannot merge a QuantileSketch of relative_accuracy {other._relative_accuracy} into one of "
                f"{self._relative_accuracy}: their buckets differ, so create both with the same relative_accuracy"
            )
        for cell, count in other._counts.items():
            if count > self._counts.get(cell, 0):
                self._counts[cell] = count

    def count(self) -> int:
        """Return the number of values added on all replicas."""
        return sum(self._counts.values())

    def quantile(self, q: float) -> float | None:
        """Return the value at quantile ``q`` (0 for the minimum, 1 for the maximum), None when empty.

        The value comes from ``ddsketch``'s own query on the summed bucket counts. Raises
        ValueError unless ``0 <= q <= 1``.
        """
        return self.quantiles([q])[0]

    def quantiles(self, qs: list[float]) -> list[float | None]:
        """Return the values at several quantiles, building the ddsketch query once; see :meth:`quantile`."""
        for q in qs:
            if not isinstance(q, (int, float)) or isinstance(q, bool) or not 0.0 <= q <= 1.0:
                raise ValueError(f"quantile q must be a number in [0, 1], got {q!r}")
        if not self._counts:
            return [None] * len(qs)

        totals: dict[tuple[int, int], int] = defaultdict(int)
        for (_, side, key), count in self._counts.items():
            totals[side, key] += count

        positive, negative, zero_count = DenseStore(), DenseStore(), 0.0
        for (side, key), count in sorted(totals.items()):
            if side == POSITIVE:
                positive.add(key, float(count))
            elif side == NEGATIVE:
                negative.add(key, float(count))
            else:
                zero_count += count
        sketch = BaseDDSketch(mapping=self._mapping, store=positive, negative_store=negative, zero_count=zero_count)
        results = [sketch.get_quantile_value(q) for q in qs]
        return [None if result is None else float(result) for result in results]

    def copy(self) -> Self:
        """Return an independent copy."""
        clone = type(self)(self._relative_accuracy)
        clone._counts = dict(self._counts)
        return clone

    def is_empty(self) -> bool:
        """Return True when no value was ever added."""
        return not self._counts

    def value(self) -> dict[str, object]:
        """Return the count and the quantiles 0.5, 0.9, 0.95 and 0.99 (None when empty)."""
        levels = (0.5, 0.9, 0.95, 0.99)
        return {"count": self.count(), **{f"p{round(q * 100)}": value for q, value in zip(levels, self.quantiles(list(levels)))}}

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._relative_accuracy == other._relative_accuracy and self._counts == other._counts  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"QuantileSketch(relative_accuracy={self._relative_accuracy!r}, counts={dict(sorted(self._counts.items()))!r})"

    def _wire_body(self) -> object:
        replicas: dict[str, list[Any]] = {}
        for (replica, side, key), count in sorted(self._counts.items()):
            positive, negative, _ = replicas.setdefault(replica, [[], [], 0])
            if side == POSITIVE:
                positive.extend((key, count))
            elif side == NEGATIVE:
                negative.extend((key, count))
            else:
                replicas[replica][2] = count
        return [self._relative_accuracy, replicas]

    @classmethod
    def _from_wire_body(cls, body: object, reader: WireReader) -> Self:
        accuracy, replicas = reader.array(body, "body", length=2)
        accuracy = reader.number(accuracy, "relative_accuracy")
        if not 0.0 < accuracy < 1.0:
            raise reader.error("relative_accuracy", f"must lie in (0, 1), got {accuracy}")
        state = cls(accuracy)

        # Keys beyond the mapping's range would make the dense store of a query allocate
        # millions of bins, so they are rejected here.
        lowest_key = state._mapping.key(state._mapping.min_possible)
        highest_key = state._mapping.key(state._mapping.max_possible)
        for replica, sides in reader.mapping(replicas, "buckets").items():
            positive, negative, zero = reader.array(sides, f"buckets[{replica!r}]", length=3)
            for side, flat in ((POSITIVE, positive), (NEGATIVE, negative)):
                field = f"buckets[{replica!r}].{'positive' if side == POSITIVE else 'negative'}"
                numbers = reader.array(flat, field)
                if len(numbers) % 2:
                    raise reader.error(field, f"must contain (key, count) pairs, got {len(numbers)} numbers")
                for position in range(0, len(numbers), 2):
                    key = reader.integer(numbers[position], f"{field}[{position}]", minimum=lowest_key)
                    if key > highest_key:
                        raise reader.error(f"{field}[{position}]", f"must be <= {highest_key}, got {key}")
                    count = reader.integer(numbers[position + 1], f"{field}[{position + 1}]", minimum=1)
                    if (replica, side, key) in state._counts:
                        raise reader.error(field, f"repeats bucket key {key}")
                    state._counts[replica, side, key] = count
            zero_count = reader.integer(zero, f"buckets[{replica!r}].zero", minimum=0)
            if zero_count:
                state._counts[replica, ZERO, 0] = zero_count
        return state
