"""The interface every CRDT of this package implements, and the helpers they share.

A CRDT state here is an element of a join semilattice. ``merge`` computes the join (least upper
bound) in place, so it is commutative, associative and idempotent, and replicas that have
merged the same set of states hold equal states whatever the order and however often each
state arrived. An update method (``inc``, ``add``, ``set`` ...) changes the state and returns a
*delta*: a state of the same type that contains only the change, so that
``before.copy().merge(delta)`` equals the updated state. Deltas are sent instead of full states
and may be lost, reordered or duplicated. A lost delta is repaired by sending the full state.
"""

from __future__ import annotations

from typing import Protocol, Self, TypeVar, runtime_checkable

C = TypeVar("C", bound="Crdt")


@runtime_checkable
class Crdt(Protocol):
    """A delta-state CRDT: a join semilattice with in-place merge and a binary encoding.

    ``__eq__`` compares lattice elements, so two states built by different paths that hold
    the same information compare equal (a counter entry of 0 equals a missing entry).
    """

    def merge(self, other: Self) -> None:
        """Join ``other`` into this state in place.

        Raises TypeError when ``other`` is of another type.
        """
        ...

    def copy(self) -> Self:
        """Return an independent copy: changing one never changes the other."""
        ...

    def value(self) -> object:
        """Return the value the state represents (an int, a set, a summary ...)."""
        ...

    def is_empty(self) -> bool:
        """Return True for the bottom element: the state of a new, never updated object."""
        ...

    def to_bytes(self) -> bytes:
        """Encode the state as CBOR bytes that ``from_bytes`` and ``encoding.decode`` read."""
        ...

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Decode bytes made by ``to_bytes``; raises CrdtDecodeError on malformed input."""
        ...


def join(a: C, b: C) -> C:
    """Return the join of ``a`` and ``b`` as a new object, leaving both unchanged.

    Raises TypeError when ``a`` and ``b`` are of different types, and whatever ``merge`` of
    that type raises (ValueError for sketches of different relative accuracy).
    """
    if type(a) is not type(b):
        raise TypeError(f"cannot join a {type(a).__name__} with a {type(b).__name__}: both must be of one CRDT type")

    result = a.copy()
    result.merge(b)
    return result


def check_same_type(state: object, other: object) -> None:
    """Raise TypeError unless ``other`` has exactly the type of ``state``."""
    if type(other) is not type(state):
        raise TypeError(
            f"cannot merge a {type(other).__name__} into a {type(state).__name__}: "
            "merge only states of the same CRDT type"
        )


def check_replica(replica: object) -> str:
    """Return ``replica`` when it is a non-empty str; raise TypeError or ValueError otherwise."""
    if not isinstance(replica, str):
        raise TypeError(f"replica id must be a str, got {type(replica).__name__}: {replica!r}")
    if not replica:
        raise ValueError("replica id must be a non-empty str, got ''")
    return replica
