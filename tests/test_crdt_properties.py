"""Property tests of every CRDT type: lattice laws, delta convergence and the binary encoding.

Each case runs random updates on 2 to 4 replicas, with full-state syncs between them, and
collects the delta of every update. The laws are checked on the states reached that way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparkiot.edge.crdt import (
    Crdt,
    CrdtDecodeError,
    CrdtMap,
    GCounter,
    HlcTimestamp,
    LWWRegister,
    MaxRegister,
    MinRegister,
    ORSet,
    PNCounter,
    QuantileSketch,
    Summary,
    decode,
    encode,
    join,
)

PROPERTY_SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ELEMENTS = ("valve-1", "valve-2", "pump", "fan", "")


@dataclass(frozen=True)
class Case:
    """One CRDT type under test: how to make an empty state, draw an operation and apply it."""

    name: str
    kind: type
    operation: st.SearchStrategy
    apply: Callable[[Crdt, str, object], Crdt]
    factory: Callable[[], Crdt] | None = None
    # Puts at least 8 entries into a state; None for the registers, which contain one entry.
    fill: Callable[[Crdt], None] | None = None

    def empty(self) -> Crdt:
        return self.factory() if self.factory is not None else self.kind()


def _apply_pn(state: PNCounter, replica: str, operation: tuple[bool, int]) -> PNCounter:
    increment, amount = operation
    return state.inc(replica, amount) if increment else state.dec(replica, amount)


def _apply_lww(state: LWWRegister, replica: str, operation: tuple[int, int, object]) -> LWWRegister:
    wall_ms, logical, value = operation
    return state.set(value, stamp=HlcTimestamp(wall_ms=wall_ms, logical=logical, node=replica))


def _apply_orset(state: ORSet, replica: str, operation: tuple[bool, str]) -> ORSet:
    adding, element = operation
    return state.add(replica, element) if adding else state.remove(element)


def _fill_per_replica(update: Callable[[Crdt, str], object]) -> Callable[[Crdt], None]:
    def fill(state: Crdt) -> None:
        for index in range(8):
            update(state, f"gateway-{index}")

    return fill


def _fill_orset(state: ORSet) -> None:
    for index in range(8):
        state.add("gateway-0", f"valve-{index}")


def _fill_sketch(state: QuantileSketch) -> None:
    for index in range(8):
        state.add("gateway-0", 2.0**index)


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=6),
    st.binary(max_size=6),
)
FINITE = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)

GCOUNTER = Case(
    "GCounter",
    GCounter,
    st.integers(0, 5),
    lambda s, r, o: s.inc(r, o),
    fill=_fill_per_replica(lambda s, r: s.inc(r, 3)),
)
PNCOUNTER = Case(
    "PNCounter",
    PNCounter,
    st.tuples(st.booleans(), st.integers(0, 5)),
    _apply_pn,
    fill=_fill_per_replica(lambda s, r: s.dec(r, 3)),
)
LWW = Case("LWWRegister", LWWRegister, st.tuples(st.integers(0, 6), st.integers(0, 2), SCALARS), _apply_lww)
MAX = Case("MaxRegister", MaxRegister, st.floats(allow_nan=False), lambda s, r, o: s.update(o))
MIN = Case("MinRegister", MinRegister, st.floats(allow_nan=False), lambda s, r, o: s.update(o))
ORSET = Case("ORSet", ORSet, st.tuples(st.booleans(), st.sampled_from(ELEMENTS)), _apply_orset, fill=_fill_orset)
SUMMARY = Case("Summary", Summary, FINITE, lambda s, r, o: s.add(r, o), fill=_fill_per_replica(lambda s, r: s.add(r, 21.5)))
SKETCH = Case(
    "QuantileSketch",
    QuantileSketch,
    st.one_of(FINITE, st.just(0.0), st.floats(min_value=-1e-300, max_value=1e-300)),
    lambda s, r, o: s.add(r, o),
    fill=_fill_sketch,
)
INNER_CASES = {
    "readings": GCOUNTER,
    "balance": PNCOUNTER,
    "mode": LWW,
    "temp_max": MAX,
    "temp_min": MIN,
    "valves": ORSET,
    "temp": SUMMARY,
    "latency": SKETCH,
    "latency_coarse": Case(
        "QuantileSketch", QuantileSketch, SKETCH.operation, SKETCH.apply, factory=lambda: QuantileSketch(relative_accuracy=0.05)
    ),
}


def _apply_map(state: CrdtMap, replica: str, operation: tuple[str, object]) -> CrdtMap:
    key, inner_operation = operation
    inner = INNER_CASES[key]
    return state.update(key, inner.kind, lambda entry: inner.apply(entry, replica, inner_operation), factory=inner.factory)


def _fill_map(state: CrdtMap) -> None:
    operations = (1, (True, 1), (1, 0, "on"), 1.0, 1.0, (True, "fan"), 1.0, 1.0, 1.0)
    for key, value in zip(INNER_CASES, operations, strict=True):
        _apply_map(state, "gateway-0", (key, value))


MAP = Case(
    "CrdtMap",
    CrdtMap,
    st.one_of([st.tuples(st.just(key), inner.operation) for key, inner in INNER_CASES.items()]),
    _apply_map,
    fill=_fill_map,
)
CASES = [GCOUNTER, PNCOUNTER, LWW, MAX, MIN, ORSET, SUMMARY, SKETCH, MAP]
GROWING_CASES = [case for case in CASES if case.fill is not None]


@dataclass
class Run:
    states: list[Crdt]
    deltas: list[Crdt]


@st.composite
def runs(draw: st.DrawFn, case: Case) -> Run:
    """Draw and play random updates and full-state syncs on 2 to 4 replicas.

    Every update is checked for the delta contract: the state before it joined with its delta
    equals the state after it.
    """
    replica_count = draw(st.integers(2, 4))
    replica_index = st.integers(0, replica_count - 1)
    update = st.tuples(st.just("update"), replica_index, case.operation)
    sync = st.tuples(st.just("sync"), replica_index, replica_index)
    steps = draw(st.lists(st.one_of(update, update, update, sync), max_size=30))

    states = [case.empty() for _ in range(replica_count)]
    deltas = []
    for action, index, argument in steps:
        state = states[index]
        if action == "sync":
            state.merge(states[argument])
            continue
        before = state.copy()
        delta = case.apply(state, f"replica-{index}", argument)
        assert type(delta) is type(state)
        assert join(before, delta) == state
        deltas.append(delta)
    return Run(states, deltas)


def join_all(states: list[Crdt], empty: Crdt) -> Crdt:
    return reduce(join, states, empty)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_merge_is_a_join(case: Case, data: st.DataObject) -> None:
    run = data.draw(runs(case))
    candidates = [*run.states, case.empty()]
    a, b, c = (data.draw(st.sampled_from(candidates)) for _ in range(3))
    a_before = a.copy()

    assert join(a, b) == join(b, a)
    assert encode(join(a, b)) == encode(join(b, a))
    assert join(join(a, b), c) == join(a, join(b, c))
    assert join(a, a) == a
    assert join(a, case.empty()) == a
    assert a == a_before


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_deltas_in_any_order_converge(case: Case, data: st.DataObject) -> None:
    run = data.draw(runs(case))
    duplicates = data.draw(st.lists(st.sampled_from(run.deltas), max_size=10)) if run.deltas else []
    delivery = data.draw(st.permutations(run.deltas + duplicates))

    receiver = case.empty()
    for delta in delivery:
        receiver.merge(decode(encode(delta)))
    expected = join_all(run.states, case.empty())

    assert receiver == expected
    assert receiver.value() == expected.value()


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_encoding_round_trips(case: Case, data: st.DataObject) -> None:
    run = data.draw(runs(case))
    for state in [*run.states, *run.deltas, join_all(run.states, case.empty())]:
        encoded = encode(state)

        assert decode(encoded) == state
        assert type(state).from_bytes(state.to_bytes()) == state
        assert encode(decode(encoded)) == encoded


@pytest.mark.parametrize("case", GROWING_CASES, ids=lambda case: case.name)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_delta_encoding_smaller_than_state(case: Case, data: st.DataObject) -> None:
    state = case.empty()
    case.fill(state)
    replica = data.draw(st.sampled_from([f"gateway-{index}" for index in range(8)]))

    delta = case.apply(state, replica, data.draw(case.operation))

    assert len(encode(delta)) < len(encode(state))


def test_gcounter_delta_encoding_bound() -> None:
    counter = GCounter()
    for index in range(64):
        counter.inc(f"edge-gateway-{index:02d}", 1_000)

    delta = counter.inc("edge-gateway-07", 1)

    # Array header and tag take 2 bytes, the map header 2 (1 for one entry), and each entry 19:
    # a 15-character replica id with its 1-byte header, and a 3-byte total.
    assert len(encode(counter)) == 2 + 2 + 64 * 19
    assert len(encode(delta)) == 2 + 1 + 19


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=64))
def test_decode_random_bytes_raises_only_decode_error(data: bytes) -> None:
    try:
        state = decode(data)
    except CrdtDecodeError:
        return
    assert decode(encode(state)) == state


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_decode_damaged_encoding_raises_only_decode_error(case: Case, data: st.DataObject) -> None:
    state = join_all(data.draw(runs(case)).states, case.empty())
    encoded = encode(state)

    cut = data.draw(st.integers(0, len(encoded) - 1))
    with pytest.raises(CrdtDecodeError):
        decode(encoded[:cut])

    position = data.draw(st.integers(0, len(encoded) - 1))
    damaged = bytearray(encoded)
    damaged[position] = data.draw(st.integers(0, 255))
    try:
        decoded = decode(bytes(damaged))
    except CrdtDecodeError:
        return
    assert decode(encode(decoded)) == decoded
