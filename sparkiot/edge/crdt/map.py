"""A map from string keys to CRDTs of any type of this package, itself a delta CRDT.

The map joins entry by entry: a key present on one side is copied, a key present on both sides
is joined with that type's ``merge``. Keys only grow. No operation removes a key, because a
removed key would come back with the next delta that mentions it. Model removal with an
``ORSet`` of live keys beside the map, and read only the keys that set contains.

An entry whose state is empty (the bottom of its type) is the same lattice element as a missing
key, so the map never stores one. Limit: the type of a key is fixed by its first non-empty
update, and merging an entry of another type under that key raises TypeError.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Self, TypeVar

from sparkiot.edge.crdt.base import Crdt, check_same_type
from sparkiot.edge.crdt.encoding import CrdtDecodeError, WireCodec, WireReader, decode, decode_entry, wire_entry, wire_type

C = TypeVar("C", bound=Crdt)


def _check_key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"a CrdtMap key must be a str, got {type(key).__name__}: {key!r}")
    return key


@wire_type(tag=9)
class CrdtMap(WireCodec):
    """A grow-only map of keys to CRDTs, updated through deltas that contain only the changed keys.

    >>> from sparkiot.edge.crdt.counters import GCounter
    >>> from sparkiot.edge.crdt.registers import MaxRegister
    >>> state = CrdtMap()
    >>> delta = state.update("readings", GCounter, lambda counter: counter.inc("gw-1", 10))
    >>> _ = state.update("temp_max", MaxRegister, lambda register: register.update(21.5))
    >>> delta.value(), state.value()
    ({'readings': 10}, {'readings': 10, 'temp_max': 21.5})
    """

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        """Create an empty map."""
        self._entries: dict[str, Crdt] = {}

    @classmethod
    def from_entries(cls, entries: Mapping[str, bytes]) -> Self:
        """Build a map from one encoding per key (each entry's ``to_bytes()``), as a store keeps them.

        Empty entries are dropped. Raises CrdtDecodeError naming the key when an encoding is
        malformed, and TypeError for a key that is not a str.
        """
        state = cls()
        for key, data in entries.items():
            _check_key(key)
            try:
                entry = decode(data)
            except CrdtDecodeError as error:
                raise CrdtDecodeError(f"CrdtMap entry {key!r}: {error}") from error
            if not entry.is_empty():
                state._entries[key] = entry
        return state

    def update(self, key: str, kind: type[C], mutate: Callable[[C], C], *, factory: Callable[[], C] | None = None) -> CrdtMap:
        """Apply ``mutate`` to the entry under ``key`` and return a map delta containing only ``{key: inner delta}``.

        A missing entry is created with ``factory()``, or ``kind()`` when no factory is given
        (pass a factory for a QuantileSketch of another accuracy). ``mutate`` receives the
        entry and returns the delta of its update method. The returned map is empty when the
        inner delta is empty. Raises TypeError when the entry is not exactly of type ``kind``
        or ``mutate`` returns something other than a ``kind``.
        """
        _check_key(key)
        entry = self._entries.get(key)
        created = entry is None
        if entry is None:
            entry = factory() if factory is not None else kind()
        if type(entry) is not kind:
            raise TypeError(
                f"CrdtMap key {key!r} contains a {type(entry).__name__}, not a {kind.__name__}: "
                "a key keeps the type of its first update, so use another key"
            )

        inner_delta = mutate(entry)
        if type(inner_delta) is not kind:
            raise TypeError(
                f"mutate for CrdtMap key {key!r} must return the {kind.__name__} delta of an update method, "
                f"got {type(inner_delta).__name__}"
            )
        if inner_delta is entry:
            inner_delta = entry.copy()
        if created and not entry.is_empty():
            self._entries[key] = entry

        delta = CrdtMap()
        if not inner_delta.is_empty():
            delta._entries[key] = inner_delta
        return delta

    def merge(self, other: CrdtMap) -> None:
        """Join ``other`` into this map, entry by entry.

        Raises TypeError, before changing anything, when a key has different types on the two
        sides. Errors of an inner merge (ValueError for sketches of different accuracy) can
        leave earlier keys merged and later ones not, which is still a valid state: merging
        ``other`` again after fixing the cause completes the join.
        """
        check_same_type(self, other)
        for key, theirs in other._entries.items():
            mine = self._entries.get(key)
            if mine is not None and type(mine) is not type(theirs):
                raise TypeError(
                    f"cannot merge CrdtMap key {key!r}: this map contains a {type(mine).__name__} and the other "
                    f"a {type(theirs).__name__}; a key keeps the type of its first update on every replica"
                )

        for key, theirs in other._entries.items():
            mine = self._entries.get(key)
            if mine is None:
                self._entries[key] = theirs.copy()
            else:
                mine.merge(theirs)

    def get(self, key: str) -> Crdt | None:
        """Return a copy of the entry under ``key``, or None when the key is missing."""
        entry = self._entries.get(key)
        return None if entry is None else entry.copy()

    def encoded(self, keys) -> dict[str, bytes]:
        """Return the encoded entries under ``keys`` (missing keys are left out), without copying them."""
        return {key: self._entries[key].to_bytes() for key in keys if key in self._entries}

    def keys(self) -> frozenset[str]:
        """Return the keys present."""
        return frozenset(self._entries)

    def items(self) -> list[tuple[str, Crdt]]:
        """Return (key, copy of the entry) pairs, sorted by key."""
        return [(key, entry.copy()) for key, entry in sorted(self._entries.items())]

    def value(self) -> dict[str, object]:
        """Return the value of every entry by key."""
        return {key: entry.value() for key, entry in self._entries.items()}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def copy(self) -> Self:
        """Return an independent copy, entries included."""
        clone = type(self)()
        clone._entries = {key: entry.copy() for key, entry in self._entries.items()}
        return clone

    def is_empty(self) -> bool:
        """Return True when the map has no key."""
        return not self._entries

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._entries == other._entries  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CrdtMap({dict(sorted(self._entries.items()))!r})"

    def _wire_body(self) -> object:
        return {key: wire_entry(entry) for key, entry in self._entries.items()}

    @classmethod
    def _from_wire_body(cls, body: object, reader: WireReader) -> Self:
        state = cls()
        for key, item in reader.mapping(body, "entries", allow_empty_keys=True).items():
            entry = decode_entry(item, where=f"CrdtMap entry {key!r}")
            if not entry.is_empty():
                state._entries[key] = entry
        return state
