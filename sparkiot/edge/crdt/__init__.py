"""Delta-state CRDTs for the edge agent's state and its sync with the cloud.

Every type is a join semilattice (Almeida, Shoker, Baquero, "Delta State Replicated Data
Types", Journal of Parallel and Distributed Computing, 2018). ``merge`` is the join, so it is
commutative, associative and idempotent. Each update method changes the state in place and
returns a *delta*, a small state of the same type that contains only the change. A replica sends
deltas, and a receiver merges them in any order, any number of times. The states converge once
every delta, or a full state that includes it, has arrived. A lost delta is repaired by
sending the full state, which is a delta too. Each replica id must have a single writer. The
objects are not thread-safe: guard one that several threads share with a lock.

Types: ``GCounter`` and ``PNCounter`` (counters.py), ``LWWRegister``, ``MaxRegister`` and
``MinRegister`` (registers.py), ``ORSet`` (orset.py), ``Summary`` (summary.py),
``QuantileSketch`` (sketch.py) and ``CrdtMap`` of any of them (map.py), with the hybrid logical
clock that stamps last-writer-wins writes (hlc.py). ``encode`` and ``decode`` (encoding.py)
write every state and delta as compact CBOR with a type tag.

Why these are written here: pycrdt (0.14, bindings for Yrs, the Rust port of Yjs) models
shared documents (maps, arrays, text, XML) and has no counter, min/max register, summary or
sketch with a join. Of the general-purpose CRDT packages on PyPI, python3-crdt (last release
1.0.3, 2019) documents only full-state merge, without deltas or an encoding. crdts (0.0.4,
2023) has delta CRDTs but no min/max register, summary or quantile sketch. The quantile
sketch uses Datadog's ``ddsketch`` package for its bucket mapping and its quantile query.
"""

from __future__ import annotations

from sparkiot.edge.crdt.base import Crdt, join
from sparkiot.edge.crdt.counters import GCounter, PNCounter
from sparkiot.edge.crdt.encoding import CrdtDecodeError, decode, encode
from sparkiot.edge.crdt.hlc import HlcTimestamp, HybridLogicalClock
from sparkiot.edge.crdt.map import CrdtMap
from sparkiot.edge.crdt.orset import ORSet
from sparkiot.edge.crdt.registers import LWWRegister, MaxRegister, MinRegister
from sparkiot.edge.crdt.sketch import QuantileSketch
from sparkiot.edge.crdt.summary import Summary, SummaryValue

__all__ = [
    "Crdt",
    "CrdtDecodeError",
    "CrdtMap",
    "GCounter",
    "HlcTimestamp",
    "HybridLogicalClock",
    "LWWRegister",
    "MaxRegister",
    "MinRegister",
    "ORSet",
    "PNCounter",
    "QuantileSketch",
    "Summary",
    "SummaryValue",
    "decode",
    "encode",
    "join",
]
