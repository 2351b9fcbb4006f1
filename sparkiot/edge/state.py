"""The aggregate state an edge agent keeps for its site, as one map of CRDTs.

Every admitted reading updates these entries (the replica id is the agent's, by default the site):

| key | CRDT | value |
|---|---|---|
| ``readings`` | G-Counter | readings admitted by the rules |
| ``dead_letters`` | G-Counter | payloads or rows that could not become readings |
| ``devices`` | OR-Set | device ids seen |
| ``alerts_active`` | PN-Counter | local alerts raised and not yet cleared |
| ``summary/DEVICE/METRIC`` | summary | count, sum, sum of squares, min, max |
| ``quantiles/DEVICE/METRIC`` | quantile sketch | DDSketch buckets (relative accuracy from the config) |
| ``latest/DEVICE/METRIC`` | LWW-Register | the value of the reading processed last (hybrid logical clock) |
| ``last_seen/DEVICE`` | max register | the newest event time of the device, in microseconds |

A ``/`` or ``%`` inside a device id or metric is written ``%2F`` or ``%25`` in keys, so device
``a/b`` with metric ``c`` and device ``a`` with metric ``b/c`` keep separate entries.

The changes since the last :meth:`EdgeState.take_delta` accumulate in one map delta, which the
agent stores and sends as one delta group. Each entry's full state is also kept, so that the
agent can send the full state during anti-entropy when the cloud lost deltas.
"""

from __future__ import annotations

from sparkiot.edge.crdt import (
    CrdtMap,
    GCounter,
    HybridLogicalClock,
    LWWRegister,
    MaxRegister,
    ORSet,
    PNCounter,
    QuantileSketch,
    Summary,
)
from sparkiot.readings import Reading


def _key_part(name: str) -> str:
    """Escape ``/`` (and ``%``) in a device id or metric, so that keys of different series never collide."""
    return name.replace("%", "%25").replace("/", "%2F")


class EdgeState:
    """The site's CRDT map, updated per reading, with the pending delta since the last take."""

    def __init__(self, replica: str, *, relative_accuracy: float = 0.01, state: CrdtMap | None = None) -> None:
        self.replica = replica
        self.relative_accuracy = relative_accuracy
        self.state = state if state is not None else CrdtMap()
        self.clock = HybridLogicalClock(replica)
        self._pending = CrdtMap()
        self._changed: set[str] = set()
        devices = self.state.get("devices")
        self._devices: set[str] = set(devices.value()) if devices is not None else set()

    def _update(self, key: str, kind, mutate, factory=None) -> None:
        delta = self.state.update(key, kind, mutate, factory=factory)
        self._pending.merge(delta)
        self._changed.add(key)

    def _sketch(self) -> QuantileSketch:
        return QuantileSketch(relative_accuracy=self.relative_accuracy)

    def observe(self, readings: list[Reading]) -> None:
        """Fold admitted readings into the state; raises ValueError as :meth:`observe_one` does."""
        for reading in readings:
            self.observe_one(reading)

    def observe_one(self, reading: Reading) -> None:
        """Fold one admitted reading into the state.

        Raises ValueError, before changing anything, when the value's square or the series' sums
        would overflow a double (magnitudes above about 1e154).
        """
        replica = self.replica
        device = _key_part(reading.device_id)
        series = f"{device}/{_key_part(reading.metric)}"
        value = reading.value
        self._update(f"summary/{series}", Summary, lambda summary: summary.add(replica, value))

        self._update("readings", GCounter, lambda counter: counter.inc(replica, 1))
        if reading.device_id not in self._devices:
            self._update("devices", ORSet, lambda members: members.add(replica, reading.device_id))
            self._devices.add(reading.device_id)
        self._update_sketch(f"quantiles/{series}", value)
        stamp = self.clock.now()
        self._update(f"latest/{series}", LWWRegister, lambda register: register.set(value, stamp=stamp))
        self._update(f"last_seen/{device}", MaxRegister, lambda register: register.update(float(reading.ts_us)))

    def _update_sketch(self, key: str, value: float) -> None:
        self._update(key, QuantileSketch, lambda sketch: sketch.add(self.replica, value), factory=self._sketch)

    def count_dead_letters(self, count: int) -> None:
        if count:
            self._update("dead_letters", GCounter, lambda counter: counter.inc(self.replica, count))

    def alert_transitions(self, raised: int, cleared: int) -> None:
        if raised:
            self._update("alerts_active", PNCounter, lambda counter: counter.inc(self.replica, raised))
        if cleared:
            self._update("alerts_active", PNCounter, lambda counter: counter.dec(self.replica, cleared))

    def merge(self, other: CrdtMap) -> None:
        """Join a state received from the cloud (anti-entropy) into the local state."""
        self.state.merge(other)
        self._changed.update(other.keys())
        devices = self.state.get("devices")
        self._devices = set(devices.value()) if devices is not None else set()

    def take_delta(self) -> tuple[CrdtMap | None, dict[str, bytes]]:
        """Return the pending delta (None when nothing changed) and the changed entries, encoded."""
        changed = self.state.encoded(self._changed)
        delta = self._pending if not self._pending.is_empty() else None
        self._pending = CrdtMap()
        self._changed = set()
        return delta, changed
