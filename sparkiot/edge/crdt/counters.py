"""Grow-only and increment/decrement counters.

A ``GCounter`` keeps one non-negative total per replica and joins by the maximum per replica,
so its value (the sum of the totals) only grows. A ``PNCounter`` is a pair of GCounters, one
for increments and one for decrements, and its value is their difference.

Requirement: each replica id must have a single writer. Two processes that increment under
the same replica id lose increments, because the join keeps only the larger of their totals.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Self

from sparkiot.edge.crdt.base import check_replica, check_same_type
from sparkiot.edge.crdt.encoding import WireCodec, WireReader, wire_type


def _check_amount(amount: object) -> int:
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise TypeError(f"amount must be an int, got {type(amount).__name__}: {amount!r}")
    if amount < 0:
        raise ValueError(
            f"amount must be >= 0, got {amount}: a GCounter only grows, so use a PNCounter and its dec() to subtract"
        )
    return amount


@wire_type(tag=1)
class GCounter(WireCodec):
    """A grow-only counter: one total per replica, joined by the maximum.

    >>> counter = GCounter()
    >>> delta = counter.inc("gw-1", 3)
    >>> counter.inc("gw-2").value(), counter.value(), delta.value()
    (1, 4, 3)
    """

    __slots__ = ("_counts",)

    def __init__(self, counts: Mapping[str, int] | None = None) -> None:
        """Create a counter holding ``counts`` (replica id to total); zero totals are dropped."""
        self._counts: dict[str, int] = {}
        for replica, total in (counts or {}).items():
            check_replica(replica)
            if _check_amount(total):
                self._counts[replica] = total

    def inc(self, replica: str, amount: int = 1) -> GCounter:
        """Add ``amount`` to the total of ``replica`` and return the delta.

        The delta contains the new total of ``replica`` (empty when ``amount`` is 0). Raises
        ValueError when ``amount`` is negative and TypeError when it is not an int.
        """
        check_replica(replica)
        if _check_amount(amount) == 0:
            return GCounter()

        total = self._counts.get(replica, 0) + amount
        self._counts[replica] = total
        return GCounter({replica: total})

    def merge(self, other: GCounter) -> None:
        """Join ``other`` into this counter: the maximum total per replica."""
        check_same_type(self, other)
        for replica, total in other._counts.items():
            if total > self._counts.get(replica, 0):
                self._counts[replica] = total

    def value(self) -> int:
        """Return the sum of the totals of all replicas."""
        return sum(self._counts.values())

    def totals(self) -> dict[str, int]:
        """Return a copy of the non-zero totals by replica id."""
        return dict(self._counts)

    def copy(self) -> Self:
        """Return an independent copy."""
        clone = type(self)()
        clone._counts = dict(self._counts)
        return clone

    def is_empty(self) -> bool:
        """Return True when no replica has a non-zero total."""
        return not self._counts

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._counts == other._counts  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"GCounter({dict(sorted(self._counts.items()))!r})"

    def _wire_body(self) -> object:
        return self._counts

    @classmethod
    def _from_wire_body(cls, body: object, reader: WireReader, *, field: str = "counts") -> Self:
        counts = reader.mapping(body, field)
        for replica, total in counts.items():
            reader.integer(total, f"{field}[{replica!r}]", minimum=0)
        return cls(counts)


@wire_type(tag=2)
class PNCounter(WireCodec):
    """A counter that goes up and down: increments minus decrements, each a GCounter.

    >>> counter = PNCounter()
    >>> _ = counter.inc("gw-1", 5)
    >>> delta = counter.dec("gw-2", 7)
    >>> counter.value(), delta.value()
    (-2, -7)
    """

    __slots__ = ("_increments", "_decrements")

    def __init__(self, increments: GCounter | None = None, decrements: GCounter | None = None) -> None:
        """Create a counter from copies of the given increment and decrement counters."""
        self._increments = increments.copy() if increments is not None else GCounter()
        self._decrements = decrements.copy() if decrements is not None else GCounter()

    def inc(self, replica: str, amount: int = 1) -> PNCounter:
        """Add ``amount`` (>= 0) for ``replica`` and return the delta; raises like ``GCounter.inc``."""
        return PNCounter(increments=self._increments.inc(replica, amount))

    def dec(self, replica: str, amount: int = 1) -> PNCounter:
        """Subtract ``amount`` (>= 0) for ``replica`` and return the delta; raises like ``GCounter.inc``."""
        return PNCounter(decrements=self._decrements.inc(replica, amount))

    def merge(self, other: PNCounter) -> None:
        """Join ``other`` into this counter, increments and decrements separately."""
        check_same_type(self, other)
        self._increments.merge(other._increments)
        self._decrements.merge(other._decrements)

    def value(self) -> int:
        """Return the increments minus the decrements of all replicas."""
        return self._increments.value() - self._decrements.value()

    def copy(self) -> Self:
        """Return an independent copy."""
        return type(self)(self._increments, self._decrements)

    def is_empty(self) -> bool:
        """Return True when nothing was ever added or subtracted."""
        return self._increments.is_empty() and self._decrements.is_empty()

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._increments == other._increments and self._decrements == other._decrements  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PNCounter(increments={self._increments!r}, decrements={self._decrements!r})"

    def _wire_body(self) -> object:
        return [self._increments._wire_body(), self._decrements._wire_body()]

    @classmethod
    def _from_wire_body(cls, body: object, reader: WireReader) -> Self:
        increments, decrements = reader.array(body, "body", length=2)
        return cls(
            GCounter._from_wire_body(increments, reader, field="increments"),
            GCounter._from_wire_body(decrements, reader, field="decrements"),
        )
