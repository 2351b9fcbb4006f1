"""The observed-remove set with add-wins semantics, as a causal delta CRDT.

Each add tags the element with a fresh *dot* (replica id, sequence number). A remove deletes
the dots it has observed. The *causal context* records every dot a state has seen, whether
the dot is still live or was removed. A join keeps a dot when both sides have it, or when one
side has it and the other has never seen it. So an add concurrent with a remove survives
(add wins), and a removed dot never comes back. The context is a version vector plus a cloud of
dots beyond it, compacted after every change, so the join is exact on any states and deltas
arriving in any order, duplicated, or after a gap.

Limits: each replica id must have a single writer, because two writers under one id mint the
same dots. The context grows with the number of replica ids, not with the number of operations,
once the deltas of each replica have all arrived.

Cost of ``a.merge(b)``: time linear in the size of ``b``, not of ``a``. The merge visits the dots
in the entries and in the cloud of ``b`` and, for each version vector entry of ``b``, the
smaller of that entry and the number of live dots of that replica in ``a``. To that add the
counters by which the version vector of ``a`` rises and, amortized, the cloud dots of ``a`` that
move into its vector. A delta of one ``add`` or ``remove`` contains a few dots, so merging it
takes the same time whatever the size of ``a``. Merging a full state ``b`` may still visit
every live dot of ``a``, because ``b`` may have removed any of them. An index from dot to
element, kept beside the entries and rebuilt on copy and decode, finds the dots of ``a`` that
``b`` has observed without a scan of ``a``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Self

from sparkiot.edge.crdt.base import check_replica, check_same_type
from sparkiot.edge.crdt.encoding import WireCodec, WireReader, wire_type

Dot = tuple[str, int]


class CausalContext:
    """A set of dots stored as a version vector plus a cloud of dots beyond it.

    Canonical form: ``version_vector[r] = n`` when dots (r, 1) ... (r, n) are all present and
    (r, n + 1) is not, and the cloud contains the other dots. Equal dot sets have equal forms.
    """

    __slots__ = ("version_vector", "cloud")

    def __init__(self, dots: Iterable[Dot] = ()) -> None:
        self.version_vector: dict[str, int] = {}
        self.cloud: set[Dot] = set(dots)
        self._compact()

    def __contains__(self, dot: Dot) -> bool:
        replica, counter = dot
        return counter <= self.version_vector.get(replica, 0) or dot in self.cloud

    def max_counter(self, replica: str) -> int:
        """Return the largest sequence number of ``replica`` in this context, 0 when none."""
        largest = self.version_vector.get(replica, 0)
        for cloud_replica, counter in self.cloud:
            if cloud_replica == replica and counter > largest:
                largest = counter
        return largest

    def add(self, dot: Dot) -> None:
        """Add one dot, keeping the canonical form."""
        if dot not in self:
            self.cloud.add(dot)
            self._absorb(dot[0])

    def merge(self, other: CausalContext) -> None:
        """Add every dot of ``other``, keeping the canonical form.

        Costs time linear in the size of ``other``, plus for each vector entry that rises the
        smaller of the rise and the cloud size, plus the cloud dots absorbed into the vector.
        A cloud dot is absorbed at most once, so that last part is amortized over the merges
        that added those dots.
        """
        if other is self:
            return

        changed: set[str] = set()
        for replica, counter in other.version_vector.items():
            known = self.version_vector.get(replica, 0)
            if counter > known:
                self.version_vector[replica] = counter
                self._discard_cloud_range(replica, known, counter)
                changed.add(replica)
        for dot in other.cloud:
            if dot not in self:
                self.cloud.add(dot)
                changed.add(dot[0])
        for replica in changed:
            self._absorb(replica)

    def copy(self) -> CausalContext:
        """Return an independent copy."""
        clone = CausalContext()
        clone.version_vector = dict(self.version_vector)
        clone.cloud = set(self.cloud)
        return clone

    def _compact(self) -> None:
        # In ascending order, a dot that extends the vector by one is absorbed into it, and a
        # dot at or below the vector is dropped, which leaves only the gaps in the cloud.
        remaining: set[Dot] = set()
        for replica, counter in sorted(self.cloud):
            known = self.version_vector.get(replica, 0)
            if counter == known + 1:
                self.version_vector[replica] = counter
            elif counter > known:
                remaining.add((replica, counter))
        self.cloud = remaining

    def _absorb(self, replica: str) -> None:
        # Moves the cloud dots that continue the vector entry of ``replica`` into the entry.
        counter = self.version_vector.get(replica, 0)
        while (replica, counter + 1) in self.cloud:
            counter += 1
            self.cloud.remove((replica, counter))
        if counter:
            self.version_vector[replica] = counter

    def _discard_cloud_range(self, replica: str, previous: int, counter: int) -> None:
        # Called after the vector entry of ``replica`` rose from ``previous`` to ``counter``. The
        # canonical form kept only dots above ``previous`` in the cloud, so the dots now covered
        # are those in (previous, counter]. The loop walks that range or the cloud, whichever is
        # shorter.
        if not self.cloud:
            return
        if counter - previous <= len(self.cloud):
            for covered in range(previous + 1, counter + 1):
                self.cloud.discard((replica, covered))
        else:
            self.cloud = {dot for dot in self.cloud if dot[0] != replica or dot[1] > counter}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CausalContext):
            return NotImplemented
        return self.version_vector == other.version_vector and self.cloud == other.cloud

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CausalContext(version_vector={dict(sorted(self.version_vector.items()))!r}, cloud={sorted(self.cloud)!r})"


def _check_element(element: object) -> str:
    if not isinstance(element, str):
        raise TypeError(f"an ORSet element must be a str, got {type(element).__name__}: {element!r}")
    return element


@wire_type(tag=6)
class ORSet(WireCodec):
    """An add-wins observed-remove set of strings.

    >>> gateway, cloud = ORSet(), ORSet()
    >>> cloud.merge(gateway.add("gw-1", "valve-7"))
    >>> removal = cloud.remove("valve-7")      # the cloud removes the add it has seen
    >>> re_add = gateway.add("gw-1", "valve-7")  # while the gateway adds the element again
    >>> gateway.merge(removal); cloud.merge(re_add)
    >>> sorted(gateway.value()), sorted(cloud.value())
    (['valve-7'], ['valve-7'])
    """

    __slots__ = ("_entries", "_context", "_owners")

    def __init__(self) -> None:
        """Create an empty set."""
        self._entries: dict[str, set[Dot]] = {}
        self._context = CausalContext()
        # The inverse of ``_entries``: replica -> counter -> element, for every live dot. It is
        # derived state, so the encoding leaves it out, and decoding and ``copy`` rebuild it.
        self._owners: dict[str, dict[int, str]] = {}

    def add(self, replica: str, element: str) -> ORSet:
        """Add ``element`` on behalf of ``replica`` and return the delta.

        The delta tags ``element`` with a new dot and removes the dots it had before, which the
        new dot supersedes. Raises TypeError or ValueError for an invalid replica id and
        TypeError when ``element`` is not a str.
        """
        check_replica(replica)
        _check_element(element)

        dot = (replica, self._context.max_counter(replica) + 1)
        superseded = self._pop_element(element)
        self._insert(element, dot)
        self._context.add(dot)

        delta = ORSet()
        delta._insert(element, dot)
        delta._context = CausalContext(superseded | {dot})
        return delta

    def remove(self, element: str) -> ORSet:
        """Remove ``element`` and return the delta, whose context contains the removed dots.

        Only the adds this state has observed are removed, so a concurrent add elsewhere wins.
        Removing an absent element changes nothing and returns an empty delta.
        """
        _check_element(element)
        observed = self._pop_element(element)

        delta = ORSet()
        if observed:
            delta._context = CausalContext(observed)
        return delta

    def merge(self, other: ORSet) -> None:
        """Join ``other`` into this set (see the module docstring for the rule and the cost).

        Per element, the join keeps the dots both sides have, the dots of this side that
        ``other`` has never observed, and the dots of ``other`` that this side has never
        observed. Only the dots that ``other``'s context or entries contain can change, so the
        merge visits those and leaves the rest of this set untouched.
        """
        check_same_type(self, other)
        if other is self:
            return

        # A dot of this side that ``other`` has observed but does not contain was removed there.
        removed = [
            (element, dot)
            for element, dot in self._live_dots_in(other._context)
            if dot not in other._entries.get(element, ())
        ]
        for element, dot in removed:
            self._discard(element, dot)

        # A dot of ``other`` that this side has never observed is a new add. Every dot in the
        # entries of this side is in its context, so a dot of ``other`` that this side has
        # observed is either here already or was removed here.
        for element, dots in other._entries.items():
            for dot in dots:
                if dot not in self._context:
                    self._insert(element, dot)

        self._context.merge(other._context)

    def value(self) -> frozenset[str]:
        """Return the elements present."""
        return frozenset(self._entries)

    def __contains__(self, element: object) -> bool:
        return element in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def context(self) -> CausalContext:
        """A copy of the causal context: every dot this state has observed."""
        return self._context.copy()

    def copy(self) -> Self:
        """Return an independent copy."""
        clone = type(self)()
        clone._entries = {element: set(dots) for element, dots in self._entries.items()}
        clone._context = self._context.copy()
        clone._owners = {replica: dict(counters) for replica, counters in self._owners.items()}
        return clone

    def is_empty(self) -> bool:
        """Return True for the bottom element: no element and no observed dot."""
        return not self._entries and not self._context.version_vector and not self._context.cloud

    def _insert(self, element: str, dot: Dot) -> None:
        self._entries.setdefault(element, set()).add(dot)
        replica, counter = dot
        self._owners.setdefault(replica, {})[counter] = element

    def _discard(self, element: str, dot: Dot) -> None:
        dots = self._entries[element]
        dots.remove(dot)
        if not dots:
            del self._entries[element]
        self._forget_owner(dot)

    def _pop_element(self, element: str) -> set[Dot]:
        # Removes ``element`` and returns its dots, an empty set when it is absent.
        dots = self._entries.pop(element, set())
        for dot in dots:
            self._forget_owner(dot)
        return dots

    def _forget_owner(self, dot: Dot) -> None:
        replica, counter = dot
        counters = self._owners[replica]
        del counters[counter]
        if not counters:
            del self._owners[replica]

    def _live_dots_in(self, context: CausalContext) -> Iterator[tuple[str, Dot]]:
        """Yield ``(element, dot)`` for every live dot of this set that ``context`` contains.

        Costs time linear in the cloud of ``context``, plus for each of its vector entries the
        smaller of that entry and the number of live dots of that replica here.
        """
        for replica, counter in context.cloud:
            element = self._owners.get(replica, {}).get(counter)
            if element is not None:
                yield element, (replica, counter)

        for replica, observed in context.version_vector.items():
            counters = self._owners.get(replica)
            if not counters:
                continue
            if observed < len(counters):
                for counter in range(1, observed + 1):
                    element = counters.get(counter)
                    if element is not None:
                        yield element, (replica, counter)
            else:
                for counter, element in counters.items():
                    if counter <= observed:
                        yield element, (replica, counter)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._entries == other._entries and self._context == other._context  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        entries = {element: sorted(dots) for element, dots in sorted(self._entries.items())}
        return f"ORSet(entries={entries!r}, context={self._context!r})"

    def _wire_body(self) -> object:
        # Dots refer to replicas by index into one sorted table, so each replica id is written once.
        replicas = set(self._context.version_vector) | {replica for replica, _ in self._context.cloud}
        for dots in self._entries.values():
            replicas.update(replica for replica, _ in dots)
        table = sorted(replicas)
        index = {replica: position for position, replica in enumerate(table)}

        def flat(dots: Iterable[Dot]) -> list[int]:
            return [number for replica, counter in sorted(dots) for number in (index[replica], counter)]

        version_vector = [self._context.version_vector.get(replica, 0) for replica in table]
        entries = {element: flat(dots) for element, dots in self._entries.items()}
        return [table, version_vector, flat(self._context.cloud), entries]

    @classmethod
    def _from_wire_body(cls, body: object, reader: WireReader) -> Self:
        table, version_vector, cloud, entries = reader.array(body, "body", length=4)
        replicas = [reader.text(replica, "replicas[]") for replica in reader.array(table, "replicas")]
        if len(set(replicas)) != len(replicas):
            raise reader.error("replicas", "must not repeat a replica id")
        counters = reader.array(version_vector, "version_vector", length=len(replicas))

        def dots(flat: object, field: str) -> list[Dot]:
            numbers = reader.array(flat, field)
            if len(numbers) % 2:
                raise reader.error(field, f"must contain (replica index, counter) pairs, got {len(numbers)} numbers")
            pairs = []
            for position in range(0, len(numbers), 2):
                replica_index = reader.integer(numbers[position], f"{field}[{position}]", minimum=0)
                if replica_index >= len(replicas):
                    raise reader.error(
                        f"{field}[{position}]", f"is replica index {replica_index}, beyond the {len(replicas)} replicas"
                    )
                counter = reader.integer(numbers[position + 1], f"{field}[{position + 1}]", minimum=1)
                pairs.append((replicas[replica_index], counter))
            return pairs

        state = cls()
        state._context = CausalContext(dots(cloud, "dot_cloud"))
        vector = {
            replica: reader.integer(counter, f"version_vector[{replica!r}]", minimum=0)
            for replica, counter in zip(replicas, counters, strict=True)
        }
        state._context.merge(_vector_context(vector))

        for element, flat_dots in reader.mapping(entries, "entries", allow_empty_keys=True).items():
            element_dots = set(dots(flat_dots, f"entries[{element!r}]"))
            if not element_dots:
                raise reader.error(f"entries[{element!r}]", "must contain at least one dot")
            for dot in element_dots:
                if dot not in state._context:
                    raise reader.error(f"entries[{element!r}]", f"contains dot {dot}, which is missing from the causal context")
                replica, counter = dot
                owner = state._owners.setdefault(replica, {}).setdefault(counter, element)
                if owner != element:
                    raise reader.error(f"entries[{element!r}]", f"contains dot {dot}, which element {owner!r} contains too")
            state._entries[element] = element_dots
        return state


def _vector_context(vector: dict[str, int]) -> CausalContext:
    context = CausalContext()
    context.version_vector = {replica: counter for replica, counter in vector.items() if counter}
    return context
