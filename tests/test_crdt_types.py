"""Unit tests of each CRDT type with exact values, the hybrid logical clock and decode errors."""

from __future__ import annotations

import math
import random
import statistics
import threading

import cbor2
import numpy as np
import pytest
from ddsketch import DDSketch, LogarithmicMapping

from sparkiot.edge.crdt import (
    Crdt,
    CrdtDecodeError,
    CrdtMap,
    GCounter,
    HlcTimestamp,
    HybridLogicalClock,
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


def stamp(wall_ms: int, logical: int, node: str) -> HlcTimestamp:
    return HlcTimestamp(wall_ms=wall_ms, logical=logical, node=node)


def scripted_clock(readings: list[int]):
    """Return a wall clock that returns ``readings`` in turn, then repeats the last one."""
    remaining = list(readings)

    def read() -> int:
        return remaining.pop(0) if len(remaining) > 1 else remaining[0]

    return read


# Hybrid logical clock


def test_hlc_timestamp_orders_by_wall_logical_node():
    ordered = [stamp(999, 9, "z"), stamp(1000, 0, "z"), stamp(1000, 1, "a"), stamp(1000, 1, "b")]

    assert sorted(reversed(ordered)) == ordered


def test_hlc_timestamp_rejects_negative_fields():
    with pytest.raises(ValueError, match="wall_ms must be >= 0"):
        stamp(-1, 0, "a")
    with pytest.raises(ValueError, match="non-empty"):
        stamp(0, 0, "")


def test_hlc_monotonic_when_wall_clock_steps_back():
    clock = HybridLogicalClock("gw-1", wall_clock_ms=scripted_clock([1000, 1000, 500, 400, 1001]))

    readings = [clock.now() for _ in range(5)]

    assert [(reading.wall_ms, reading.logical) for reading in readings] == [
        (1000, 0),
        (1000, 1),
        (1000, 2),
        (1000, 3),
        (1001, 0),
    ]
    assert readings == sorted(readings)


@pytest.mark.parametrize(
    ("local_wall", "physical", "remote", "expected"),
    [
        pytest.param(1000, 1000, (2000, 5), (2000, 6), id="remote-ahead"),
        pytest.param(3000, 1000, (2000, 9), (3000, 1), id="local-ahead"),
        pytest.param(2000, 1500, (2000, 7), (2000, 8), id="equal-walls"),
        pytest.param(1000, 5000, (2000, 7), (5000, 0), id="physical-ahead"),
    ],
)
def test_hlc_observe_receive_rule(local_wall, physical, remote, expected):
    clock = HybridLogicalClock("gw-1", wall_clock_ms=scripted_clock([local_wall, physical]))
    local = clock.now()

    observed = clock.observe(stamp(*remote, "gw-2"))

    assert (observed.wall_ms, observed.logical) == expected
    assert observed > local
    assert observed > stamp(*remote, "gw-2")
    assert observed.node == "gw-1"


def test_hlc_observe_rejects_remote_beyond_max_offset():
    clock = HybridLogicalClock("gw-1", wall_clock_ms=lambda: 1000, max_offset_ms=500)
    before = clock.now()

    with pytest.raises(ValueError, match="601 ms ahead"):
        clock.observe(stamp(1601, 0, "gw-2"))

    assert clock.now() == stamp(before.wall_ms, before.logical + 1, "gw-1")


def test_hlc_now_is_thread_safe():
    clock = HybridLogicalClock("gw-1", wall_clock_ms=lambda: 1000)
    per_thread: list[list[HlcTimestamp]] = [[] for _ in range(4)]

    def work(readings: list[HlcTimestamp]) -> None:
        for _ in range(2000):
            readings.append(clock.now())

    threads = [threading.Thread(target=work, args=(readings,)) for readings in per_thread]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    everything = [reading for readings in per_thread for reading in readings]
    assert len(set(everything)) == 8000
    for readings in per_thread:
        assert readings == sorted(readings)


# Counters


def test_gcounter_negative_amount_raises():
    with pytest.raises(ValueError, match="amount must be >= 0, got -1"):
        GCounter().inc("gw-1", -1)


def test_gcounter_zero_entry_equals_missing_entry():
    assert GCounter({"gw-1": 0, "gw-2": 2}) == GCounter({"gw-2": 2})
    assert GCounter().inc("gw-1", 0).is_empty()


def test_gcounter_joins_by_maximum_per_replica():
    a = GCounter({"gw-1": 5, "gw-2": 1})
    b = GCounter({"gw-1": 3, "gw-2": 4, "gw-3": 2})

    assert join(a, b) == GCounter({"gw-1": 5, "gw-2": 4, "gw-3": 2})
    assert join(a, b).value() == 11


def test_pncounter_value_is_increments_minus_decrements():
    counter = PNCounter()
    counter.inc("gw-1", 10)
    counter.dec("gw-2", 4)
    delta = counter.dec("gw-1", 1)

    assert counter.value() == 5
    assert delta == PNCounter(decrements=GCounter({"gw-1": 1}))


def test_pncounter_dec_rejects_negative_amount():
    with pytest.raises(ValueError, match="amount must be >= 0"):
        PNCounter().dec("gw-1", -3)


# Registers


def test_lww_tie_broken_by_logical_then_node():
    lower_logical, higher_logical = LWWRegister(), LWWRegister()
    lower_logical.set("open", stamp=stamp(1000, 1, "gw-9"))
    higher_logical.set("closed", stamp=stamp(1000, 2, "gw-1"))
    node_a, node_b = LWWRegister(), LWWRegister()
    node_a.set("open", stamp=stamp(1000, 2, "gw-a"))
    node_b.set("closed", stamp=stamp(1000, 2, "gw-b"))

    assert join(lower_logical, higher_logical).value() == "closed"
    assert join(higher_logical, lower_logical).value() == "closed"
    assert join(node_a, node_b).value() == "closed"
    assert join(node_b, node_a).stamp == stamp(1000, 2, "gw-b")


def test_lww_losing_write_returns_empty_delta():
    register = LWWRegister()
    register.set(1, stamp=stamp(2000, 0, "gw-1"))

    delta = register.set(2, stamp=stamp(1000, 0, "gw-2"))

    assert delta.is_empty()
    assert register.value() == 1


def test_lww_empty_register_is_none():
    register = LWWRegister()

    assert register.value() is None
    assert register.stamp is None
    assert register.is_empty()


def test_lww_same_stamp_different_values_merge_commutes():
    a, b = LWWRegister(), LWWRegister()
    a.set("open", stamp=stamp(1000, 0, "gw-1"))
    b.set("closed", stamp=stamp(1000, 0, "gw-1"))

    assert join(a, b) == join(b, a)


def test_lww_distinguishes_true_from_one():
    as_bool, as_int = LWWRegister(), LWWRegister()
    as_bool.set(True, stamp=stamp(1000, 0, "gw-1"))
    as_int.set(1, stamp=stamp(1000, 0, "gw-1"))

    assert as_bool != as_int
    assert decode(encode(as_bool)).value() is True


def test_lww_rejects_invalid_values():
    with pytest.raises(TypeError, match="must be None, bool, int, float, str or bytes"):
        LWWRegister().set([1, 2], stamp=stamp(1000, 0, "gw-1"))
    with pytest.raises(ValueError, match="NaN"):
        LWWRegister().set(math.nan, stamp=stamp(1000, 0, "gw-1"))
    with pytest.raises(TypeError, match="HlcTimestamp"):
        LWWRegister().set(1, stamp=(1000, 0, "gw-1"))


@pytest.mark.parametrize("kind", [MaxRegister, MinRegister])
def test_extremum_register_rejects_nan(kind):
    with pytest.raises(ValueError, match="rejects NaN"):
        kind().update(math.nan)


@pytest.mark.parametrize("kind", [MaxRegister, MinRegister])
def test_extremum_register_empty_value_is_none(kind):
    assert kind().value() is None
    assert kind().is_empty()


def test_max_and_min_registers_keep_extremes():
    readings = [21.5, -3.0, 40.25, 7.0]
    largest, smallest = MaxRegister(), MinRegister()
    for reading in readings:
        largest.update(reading)
        smallest.update(reading)

    assert largest.value() == 40.25
    assert smallest.value() == -3.0
    assert largest.update(39.0).is_empty()
    assert smallest.update(-4.0) == MinRegister(-4.0)


def test_max_register_stores_negative_zero_as_zero():
    register = MaxRegister()
    register.update(-0.0)

    assert math.copysign(1.0, register.value()) == 1.0
    assert encode(register) == encode(MaxRegister(0.0))


# ORSet


def test_orset_concurrent_add_and_remove_add_wins():
    gateway, cloud = ORSet(), ORSet()
    cloud.merge(gateway.add("gw-1", "valve-7"))

    removal = cloud.remove("valve-7")
    re_add = gateway.add("gw-1", "valve-7")
    gateway.merge(removal)
    cloud.merge(re_add)

    assert gateway.value() == frozenset({"valve-7"})
    assert cloud.value() == frozenset({"valve-7"})
    assert gateway == cloud


def test_orset_remove_of_observed_add_removes_everywhere():
    gateway, cloud = ORSet(), ORSet()
    cloud.merge(gateway.add("gw-1", "valve-7"))
    gateway.add("gw-1", "pump")

    gateway.merge(cloud.remove("valve-7"))

    assert "valve-7" not in gateway
    assert gateway.value() == frozenset({"pump"})


def test_orset_remove_absent_returns_empty_delta():
    state = ORSet()
    state.add("gw-1", "pump")

    assert state.remove("fan").is_empty()
    assert state.value() == frozenset({"pump"})


def test_orset_remove_delta_arriving_first():
    origin = ORSet()
    add_delta = origin.add("gw-1", "fan")
    remove_delta = origin.remove("fan")

    receiver = ORSet()
    receiver.merge(remove_delta)
    receiver.merge(add_delta)

    assert receiver.value() == frozenset()
    assert receiver == origin


def test_orset_context_compacts_out_of_order_deltas():
    origin = ORSet()
    deltas = [origin.add("gw-1", f"valve-{index}") for index in range(5)]
    receiver = ORSet()

    receiver.merge(deltas[0])
    receiver.merge(deltas[2])
    assert receiver.context.version_vector == {"gw-1": 1}
    assert receiver.context.cloud == {("gw-1", 3)}

    for index in (4, 3, 1):
        receiver.merge(deltas[index])
    assert receiver.context.version_vector == {"gw-1": 5}
    assert receiver.context.cloud == set()
    assert receiver == origin


def test_orset_readd_supersedes_earlier_dot():
    state = ORSet()
    state.add("gw-1", "pump")
    delta = state.add("gw-1", "pump")

    assert len(state) == 1
    assert delta.context.version_vector == {"gw-1": 2}


def test_orset_full_state_removes_compacted_dot():
    gateway = ORSet()
    gateway.add("gw-1", "pump")
    gateway.add("gw-1", "fan")
    cloud = gateway.copy()
    cloud.remove("pump")

    # Both contexts are the version vector {"gw-1": 2}, so only the entries show the removal.
    gateway.merge(cloud)

    assert gateway.value() == frozenset({"fan"})
    assert gateway == cloud


def test_orset_decoded_and_copied_apply_removal():
    origin = ORSet()
    for index in range(5):
        origin.add("gw-1", f"valve-{index}")
    encoded = origin.to_bytes()
    snapshot = origin.copy()
    removal = origin.remove("valve-2")

    for receiver in (ORSet.from_bytes(encoded), snapshot):
        receiver.merge(removal)

        assert "valve-2" not in receiver
        assert receiver == origin


class _NoIterationDict(dict):
    """A dict whose iteration fails, to show that a merge does not walk the receiving entries."""

    def __iter__(self):
        raise AssertionError("the merge iterated the entries of the receiving set")

    def keys(self):
        raise AssertionError("the merge iterated the entries of the receiving set")

    def items(self):
        raise AssertionError("the merge iterated the entries of the receiving set")

    def values(self):
        raise AssertionError("the merge iterated the entries of the receiving set")


def test_orset_delta_merge_skips_receiving_entries():
    fleet = ORSet()
    for index in range(1000):
        fleet.add(f"site-{index % 4}", f"dev-{index}")
    gateway = fleet.copy()
    # The delta contexts cover dots in a cloud, in a version vector entry of a known replica
    # (dev-0 has the dot ("site-0", 1)) and of a new replica.
    deltas = [
        gateway.add("site-1", "dev-5"),
        gateway.add("site-0", "dev-0"),
        gateway.add("site-9", "dev-new"),
        gateway.remove("dev-6"),
        gateway.add("site-2", "dev-6"),
    ]
    fleet._entries = _NoIterationDict(fleet._entries)

    for delta in deltas:
        fleet.merge(delta)
    # dict.items bypasses the override, so the plain copy can be compared.
    fleet._entries = dict(dict.items(fleet._entries))

    assert fleet == gateway


# Summary


def test_summary_mean_and_stddev_match_statistics_and_numpy():
    rng = random.Random(11)
    values = [rng.gauss(21.0, 3.5) for _ in range(600)]
    replicas = [Summary(), Summary(), Summary()]
    for index, value in enumerate(values):
        replicas[index % 3].add(f"gw-{index % 3}", value)

    merged = join(join(replicas[0], replicas[1]), replicas[2]).value()

    assert merged.count == 600
    assert merged.min == min(values)
    assert merged.max == max(values)
    assert merged.sum == pytest.approx(math.fsum(values), rel=1e-12)
    assert merged.mean == pytest.approx(statistics.fmean(values), rel=1e-12)
    assert merged.stddev == pytest.approx(statistics.pstdev(values), rel=1e-9)
    assert merged.stddev == pytest.approx(float(np.std(values)), rel=1e-9)


def test_summary_empty_has_no_mean_or_stddev():
    result = Summary().value()

    assert result.count == 0
    assert result.mean is None
    assert result.stddev is None
    assert result.min is None


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_summary_rejects_nan_and_infinity(bad):
    with pytest.raises(ValueError, match="finite values only"):
        Summary().add("gw-1", bad)


def test_summary_join_keeps_entry_with_larger_count():
    newer, older = Summary(), Summary()
    older.add("gw-1", -5.0)
    newer.add("gw-1", -5.0)
    newer.add("gw-1", -7.0)

    assert join(older, newer).value().sum == -12.0
    assert join(newer, older).value().count == 2


# QuantileSketch

QUANTILES = [0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0]


def test_sketch_quantiles_equal_ddsketch():
    rng = random.Random(5)
    values = [rng.lognormvariate(0.0, 2.0) * rng.choice((1, 1, -1)) for _ in range(3000)] + [0.0] * 40
    rng.shuffle(values)
    replicas = [QuantileSketch(relative_accuracy=0.02) for _ in range(3)]
    reference = DDSketch(relative_accuracy=0.02)
    for index, value in enumerate(values):
        replicas[index % 3].add(f"gw-{index % 3}", value)
        reference.add(value)

    merged = join(join(replicas[0], replicas[1]), replicas[2])

    assert merged.count() == len(values)
    for q in QUANTILES:
        assert merged.quantile(q) == reference.get_quantile_value(q), q


def test_sketch_quantiles_within_relative_accuracy_of_exact():
    rng = np.random.default_rng(3)
    values = rng.lognormal(mean=3.0, sigma=1.5, size=5000) * rng.choice([-1.0, 1.0, 1.0], size=5000)
    sketch = QuantileSketch(relative_accuracy=0.01)
    for index, value in enumerate(values):
        sketch.add(f"gw-{index % 4}", float(value))

    for q in QUANTILES:
        # DDSketch returns the bucket of rank q * (n - 1) rounded down, the order statistic of method="lower".
        exact = float(np.quantile(values, q, method="lower"))
        assert abs(sketch.quantile(q) - exact) <= 0.01 * abs(exact) * (1 + 1e-12), q


def test_sketch_merge_of_different_accuracy_raises():
    with pytest.raises(ValueError, match="relative_accuracy 0.05 into one of 0.01"):
        QuantileSketch(relative_accuracy=0.01).merge(QuantileSketch(relative_accuracy=0.05))


def test_sketch_empty_and_invalid_quantile():
    sketch = QuantileSketch()

    assert sketch.quantile(0.5) is None
    with pytest.raises(ValueError, match=r"quantile q must be a number in \[0, 1\], got 1.5"):
        sketch.quantile(1.5)


def test_sketch_delta_is_one_bucket():
    sketch = QuantileSketch(relative_accuracy=0.01)
    for value in range(1, 200):
        sketch.add("gw-1", float(value))
    mapping = LogarithmicMapping(0.01)
    same_bucket = [value for value in range(1, 200) if mapping.key(value) == mapping.key(150.0)]

    delta = sketch.add("gw-1", 150.0)

    assert delta.count() == len(same_bucket) + 1
    assert delta.quantile(0.5) == pytest.approx(150.0, rel=0.01)
    assert len(encode(delta)) < 40


# CrdtMap


def test_map_delta_contains_changed_key_only():
    state = CrdtMap()
    state.update("readings", GCounter, lambda counter: counter.inc("gw-1", 5))
    state.update("valves", ORSet, lambda valves: valves.add("gw-1", "valve-1"))

    delta = state.update("readings", GCounter, lambda counter: counter.inc("gw-1", 2))

    assert delta.keys() == frozenset({"readings"})
    assert delta.get("readings") == GCounter({"gw-1": 7})
    assert state.value() == {"readings": 7, "valves": frozenset({"valve-1"})}
    assert len(state) == 2


def test_map_update_of_other_type_raises():
    state = CrdtMap()
    state.update("temp", MaxRegister, lambda register: register.update(20.0))

    with pytest.raises(TypeError, match="key 'temp' contains a MaxRegister, not a MinRegister"):
        state.update("temp", MinRegister, lambda register: register.update(10.0))


def test_map_merge_of_other_type_raises_without_change():
    state, other = CrdtMap(), CrdtMap()
    state.update("a", GCounter, lambda counter: counter.inc("gw-1"))
    state.update("temp", MaxRegister, lambda register: register.update(20.0))
    other.update("a", GCounter, lambda counter: counter.inc("gw-2"))
    other.update("temp", MinRegister, lambda register: register.update(10.0))
    before = state.copy()

    with pytest.raises(TypeError, match="key 'temp'"):
        state.merge(other)

    assert state == before


def test_map_empty_inner_delta_stores_nothing():
    state = CrdtMap()

    delta = state.update("readings", GCounter, lambda counter: counter.inc("gw-1", 0))

    assert delta.is_empty()
    assert "readings" not in state


def test_map_factory_sets_sketch_accuracy():
    state = CrdtMap()
    state.update(
        "latency",
        QuantileSketch,
        lambda sketch: sketch.add("gw-1", 12.0),
        factory=lambda: QuantileSketch(relative_accuracy=0.05),
    )

    assert state.get("latency").relative_accuracy == 0.05


def test_map_from_entries_decodes_each_key():
    state = CrdtMap()
    state.update("readings", GCounter, lambda counter: counter.inc("gw-1", 3))
    state.update("valves", ORSet, lambda valves: valves.add("gw-1", "valve-1"))
    rows = {key: entry.to_bytes() for key, entry in state.items()}

    assert CrdtMap.from_entries(rows) == state
    with pytest.raises(CrdtDecodeError, match="CrdtMap entry 'valves': invalid CRDT encoding"):
        CrdtMap.from_entries({**rows, "valves": b"\xff"})


def test_map_mutate_must_return_a_delta():
    with pytest.raises(TypeError, match="must return the GCounter delta"):
        CrdtMap().update("readings", GCounter, lambda counter: None)


# Common interface


def test_every_type_satisfies_protocol():
    kinds = (GCounter, PNCounter, LWWRegister, MaxRegister, MinRegister, ORSet, Summary, QuantileSketch, CrdtMap)
    for kind in kinds:
        assert isinstance(kind(), Crdt), kind.__name__


def test_join_rejects_mixed_types():
    with pytest.raises(TypeError, match="cannot join a GCounter with a PNCounter"):
        join(GCounter(), PNCounter())


# Decode errors


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"", "not well-formed CBOR", id="empty"),
        pytest.param(encode(GCounter({"gw-1": 1})) + b"\x00", "1 unexpected bytes after", id="trailing"),
        pytest.param(cbor2.dumps("gcounter"), "must be a 2-item array", id="not-array"),
        pytest.param(cbor2.dumps([99, {}]), "unknown type tag 99", id="unknown-tag"),
        pytest.param(cbor2.dumps([1, [1, 2]]), "GCounter encoding (tag 1): counts must be a map", id="wrong-body"),
        pytest.param(cbor2.dumps([1, {"gw-1": -1}]), "counts['gw-1'] must be >= 0, got -1", id="negative-count"),
        pytest.param(cbor2.dumps([1, {"gw-1": True}]), "must be an integer, got bool", id="bool-count"),
        pytest.param(cbor2.dumps([8, [1.5, {}]]), "relative_accuracy must lie in (0, 1)", id="sketch-accuracy"),
        pytest.param(
            cbor2.dumps([6, [["gw-1"], [0], [], {"fan": [0, 1]}]]), "which is missing from the causal context", id="orset-dot"
        ),
        pytest.param(cbor2.dumps([9, {"k": [42, []]}]), "unknown type tag 42 in CrdtMap entry 'k'", id="map-entry-tag"),
        pytest.param(cbor2.dumps([7, {"gw-1": [1, 2.0, 4.0, 3.0, 1.0]}]), "min must not exceed max", id="summary-min-max"),
    ],
)
def test_decode_error_names_problem(data, message):
    with pytest.raises(CrdtDecodeError) as raised:
        decode(data)

    assert message in str(raised.value)
    assert "request the full state" in str(raised.value)


def test_from_bytes_of_other_type_raises():
    with pytest.raises(CrdtDecodeError, match=r"expected a GCounter encoding \(tag 1\), got tag 6 \(ORSet\)"):
        GCounter.from_bytes(ORSet().to_bytes())


def test_decode_rejects_non_bytes():
    with pytest.raises(TypeError, match="expects bytes, got str"):
        decode("not bytes")
