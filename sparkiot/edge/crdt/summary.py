"""A mergeable summary of a series: count, sum, sum of squares, minimum and maximum.

A sum is not monotone when values can be negative, so it cannot be joined by a maximum. The
state therefore keeps one entry per replica, ``(count, sum, sum_squares, min, max)`` of the
values that replica added, and joins per replica by keeping the entry with the larger count.
Each ``add`` raises its replica's count by one, so the larger count is the later entry.

Guarantees: ``value`` sums the entries with ``math.fsum``, so equal states give identical
floats whatever order the deltas arrived in. Limits: each replica id must have a single
writer, because entries with equal counts are taken as the same entry. The population variance
is computed as ``sum_squares / count - mean ** 2``, which loses precision when the spread is tiny
against the magnitude: about ``log10(mean ** 2 / variance)`` of the 16 significant digits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Self

from sparkiot.edge.crdt.base import check_replica, check_same_type
from sparkiot.edge.crdt.encoding import WireCodec, WireReader, wire_type


@dataclass(frozen=True, order=True, slots=True)
class _Entry:
    """The values one replica added; entries order by count first, so the later entry is larger."""

    count: int
    sum: float
    sum_squares: float
    min: float
    max: float


@dataclass(frozen=True, slots=True)
class SummaryValue:
    """Count, sum, sum of squares, minimum and maximum of all values; min and max are None when count is 0."""

    count: int
    sum: float
    sum_squares: float
    min: float | None
    max: float | None

    @property
    def mean(self) -> float | None:
        """Arithmetic mean, or None when count is 0."""
        if self.count == 0:
            return None
        return self.sum / self.count

    @property
    def stddev(self) -> float | None:
        """Population standard deviation, or None when count is 0."""
        mean = self.mean
        if mean is None:
            return None
        # Rounding can make the difference slightly negative for a constant series.
        return math.sqrt(max(self.sum_squares / self.count - mean * mean, 0.0))


def _check_value(value: object) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"Summary takes an int or float, got {type(value).__name__}: {value!r}")
    try:
        number = float(value) + 0.0
    except OverflowError as error:
        raise ValueError(f"Summary takes values within the float range, got an int of {int(value).bit_length()} bits") from error
    if not math.isfinite(number):
        raise ValueError(f"Summary takes finite values only, got {number}: drop NaN and infinite readings before adding them")
    return number


@wire_type(tag=7)
class Summary(WireCodec):
    """Count, sum, sum of squares, minimum and maximum, mergeable across replicas.

    >>> summary = Summary()
    >>> for reading in (20.0, 22.0, 24.0):
    ...     delta = summary.add("gw-1", reading)
    >>> result = summary.value()
    >>> result.count, result.mean, result.min, result.max, round(result.stddev, 6)
    (3, 22.0, 20.0, 24.0, 1.632993)
    """

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        """Create an empty summary."""
        self._entries: dict[str, _Entry] = {}

    def add(self, replica: str, value: float) -> Summary:
        """Add one value on behalf of ``replica`` and return the delta: that replica's new entry.

        Raises TypeError when ``value`` is not an int or float, and ValueError when it is NaN
        or infinite or when its square or the replica's sums would overflow a float.
        """
        check_replica(replica)
        number = _check_value(value)

        entry = self._entries.get(replica)
        if entry is None:
            updated = _Entry(1, number, number * number, number, number)
        else:
            updated = _Entry(
                entry.count + 1,
                entry.sum + number,
                entry.sum_squares + number * number,
                min(entry.min, number),
                max(entry.max, number),
            )
        if not (math.isfinite(updated.sum) and math.isfinite(updated.sum_squares)):
            raise ValueError(f"adding {number} would overflow the sum or sum of squares of replica {replica!r}")
        self._entries[replica] = updated

        delta = Summary()
        delta._entries[replica] = updated
        return delta

    def merge(self, other: Summary) -> None:
        """Join ``other`` into this summary: per replica, the entry with the larger count."""
        check_same_type(self, other)
        for replica, theirs in other._entries.items():
            mine = self._entries.get(replica)
            # Equal counts come from one writer and are equal. The tuple order decides only
            # when that contract was broken, and keeps the join deterministic even then.
            if mine is None or theirs > mine:
                self._entries[replica] = theirs

    def value(self) -> SummaryValue:
        """Return the summary of the values of all replicas."""
        entries = self._entries.values()
        if not entries:
            return SummaryValue(count=0, sum=0.0, sum_squares=0.0, min=None, max=None)
        return SummaryValue(
            count=sum(entry.count for entry in entries),
            sum=_total([entry.sum for entry in entries]),
            sum_squares=_total([entry.sum_squares for entry in entries]),
            min=min(entry.min for entry in entries),
            max=max(entry.max for entry in entries),
        )

    def replicas(self) -> frozenset[str]:
        """Return the ids of the replicas that added values."""
        return frozenset(self._entries)

    def copy(self) -> Self:
        """Return an independent copy."""
        clone = type(self)()
        clone._entries = dict(self._entries)
        return clone

    def is_empty(self) -> bool:
        """Return True when no value was ever added."""
        return not self._entries

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._entries == other._entries  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Summary({dict(sorted(self._entries.items()))!r})"

    def _wire_body(self) -> object:
        return {replica: [e.count, e.sum, e.sum_squares, e.min, e.max] for replica, e in self._entries.items()}

    @classmethod
    def _from_wire_body(cls, body: object, reader: WireReader) -> Self:
        state = cls()
        for replica, fields in reader.mapping(body, "entries").items():
            field = f"entries[{replica!r}]"
            count, total, squares, low, high = reader.array(fields, field, length=5)
            entry = _Entry(
                reader.integer(count, f"{field}.count", minimum=1),
                reader.number(total, f"{field}.sum"),
                reader.number(squares, f"{field}.sum_squares"),
                reader.number(low, f"{field}.min"),
                reader.number(high, f"{field}.max"),
            )
            _check_entry(entry, field, reader)
            state._entries[replica] = entry
        return state


def _check_entry(entry: _Entry, field: str, reader: WireReader) -> None:
    if entry.sum_squares < 0:
        raise reader.error(f"{field}.sum_squares", f"must be >= 0, got {entry.sum_squares}")
    if entry.min > entry.max:
        raise reader.error(f"{field}.min", f"must not exceed max, got min {entry.min} and max {entry.max}")


def _total(values: list[float]) -> float:
    """Return ``math.fsum(values)``, or the signed infinity it overflows to across replicas."""
    try:
        return math.fsum(values)
    except OverflowError:
        return sum(values)
