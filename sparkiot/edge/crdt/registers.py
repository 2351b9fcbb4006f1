"""Registers: last-writer-wins by hybrid logical clock, and the running maximum and minimum.

``LWWRegister`` keeps the write with the greatest ``HlcTimestamp``. Two writes with the same
timestamp (only possible when one clock is misused) are ordered by the canonical CBOR bytes of
their values, so the join stays deterministic. Guarantee: the write that wins is the one a
causally later writer made, provided writers take their stamps from a ``HybridLogicalClock``
that observed the earlier write. Concurrent writes are resolved by timestamp, so one of them is
lost (that is the contract of last-writer-wins).

``MaxRegister`` and ``MinRegister`` keep the largest and smallest value ever written. They
accept infinities, reject NaN, and store -0.0 as 0.0 so that the join has one result.
"""

from __future__ import annotations

import math
from typing import Self

import cbor2

from sparkiot.edge.crdt.base import check_same_type
from sparkiot.edge.crdt.encoding import WireCodec, WireReader, wire_type
from sparkiot.edge.crdt.hlc import HlcTimestamp

Scalar = None | bool | int | float | str | bytes

# Integers outside this range need a CBOR bignum tag; the register stores plain CBOR integers only.
_INT_MIN = -(2**64)
_INT_MAX = 2**64 - 1


def _check_scalar(value: object) -> bytes:
    """Return the canonical CBOR bytes of ``value``; raise TypeError or ValueError when it is no valid scalar."""
    if value is not None and not isinstance(value, (bool, int, float, str, bytes)):
        raise TypeError(
            f"an LWWRegister value must be None, bool, int, float, str or bytes, got {type(value).__name__}: "
            "store a structured value as several registers in a CrdtMap"
        )
    if isinstance(value, float) and math.isnan(value):
        raise ValueError("an LWWRegister value must not be NaN, because NaN never equals itself")
    if isinstance(value, int) and not isinstance(value, bool) and not _INT_MIN <= value <= _INT_MAX:
        raise ValueError(f"an LWWRegister int must lie in [-2**64, 2**64 - 1], got {value}")
    return cbor2.dumps(value, canonical=True)


@wire_type(tag=3)
class LWWRegister(WireCodec):
    """A last-writer-wins register of one scalar, ordered by hybrid logical clock timestamp.

    >>> register = LWWRegister()
    >>> _ = register.set("open", stamp=HlcTimestamp(wall_ms=2_000, logical=0, node="gw-1"))
    >>> register.set("closed", stamp=HlcTimestamp(wall_ms=1_000, logical=5, node="gw-2")).is_empty()
    True
    >>> register.value()
    'open'
    """

    __slots__ = ("_stamp", "_value", "_value_bytes")

    def __init__(self) -> None:
        """Create an empty register: value None and no stamp."""
        self._stamp: HlcTimestamp | None = None
        self._value: Scalar = None
        self._value_bytes = b""

    @property
    def stamp(self) -> HlcTimestamp | None:
        """Timestamp of the winning write, or None for an empty register."""
        return self._stamp

    def set(self, value: Scalar, *, stamp: HlcTimestamp) -> LWWRegister:
        """Write ``value`` at ``stamp`` and return the delta.

        The write wins when ``stamp`` is greater than the current stamp. A write that loses
        changes nothing and returns an empty register. Raises TypeError for a value that is
        not None, bool, int, float, str or bytes, or a stamp that is not an HlcTimestamp, and
        ValueError for NaN or an int outside the CBOR integer range.
        """
        if not isinstance(stamp, HlcTimestamp):
            raise TypeError(f"stamp must be an HlcTimestamp, got {type(stamp).__name__}")
        value_bytes = _check_scalar(value)

        if not self._loses_to(stamp, value_bytes):
            return LWWRegister()
        self._assign(stamp, value, value_bytes)

        delta = LWWRegister()
        delta._assign(stamp, value, value_bytes)
        return delta

    def merge(self, other: LWWRegister) -> None:
        """Join ``other`` into this register: the write with the greater stamp wins."""
        check_same_type(self, other)
        if other._stamp is not None and self._loses_to(other._stamp, other._value_bytes):
            self._assign(other._stamp, other._value, other._value_bytes)

    def value(self) -> Scalar:
        """Return the value of the winning write, or None for an empty register."""
        return self._value

    def copy(self) -> Self:
        """Return an independent copy."""
        clone = type(self)()
        clone._assign(self._stamp, self._value, self._value_bytes)
        return clone

    def is_empty(self) -> bool:
        """Return True when nothing was ever written."""
        return self._stamp is None

    def _loses_to(self, stamp: HlcTimestamp, value_bytes: bytes) -> bool:
        return self._stamp is None or (stamp, value_bytes) > (self._stamp, self._value_bytes)

    def _assign(self, stamp: HlcTimestamp | None, value: Scalar, value_bytes: bytes) -> None:
        self._stamp = stamp
        self._value = value
        self._value_bytes = value_bytes

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        # The bytes tell 1, 1.0 and True apart, which Python's == does not.
        return (self._stamp, self._value_bytes) == (other._stamp, other._value_bytes)  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LWWRegister(value={self._value!r}, stamp={self._stamp!r})"

    def _wire_body(self) -> object:
        if self._stamp is None:
            return []
        return [self._stamp.wall_ms, self._stamp.logical, self._stamp.node, self._value]

    @classmethod
    def _from_wire_body(cls, body: object, reader: WireReader) -> Self:
        fields = reader.array(body, "body")
        register = cls()
        if not fields:
            return register

        wall_ms, logical, node, value = reader.array(fields, "body", length=4)
        stamp = HlcTimestamp(
            reader.integer(wall_ms, "wall_ms", minimum=0),
            reader.integer(logical, "logical", minimum=0),
            reader.text(node, "node"),
        )
        try:
            value_bytes = _check_scalar(value)
        except (TypeError, ValueError) as error:
            raise reader.error("value", f"is invalid: {error}") from error
        register._assign(stamp, value, value_bytes)
        return register


class _ExtremumRegister(WireCodec):
    """A register that keeps the best value written; subclasses define what better means."""

    __slots__ = ("_value",)

    def __init__(self, value: float | None = None) -> None:
        """Create a register holding ``value`` (None for empty); raises like ``update``."""
        self._value = None if value is None else self._check_number(value)

    @staticmethod
    def _is_better(candidate: float, current: float) -> bool:
        raise NotImplementedError

    @classmethod
    def _check_number(cls, value: object) -> float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise TypeError(f"{cls.__name__} takes an int or float, got {type(value).__name__}: {value!r}")
        try:
            # Adding 0.0 turns -0.0 into 0.0, which compares equal but encodes differently.
            number = float(value) + 0.0
        except OverflowError as error:
            raise ValueError(
                f"{cls.__name__} takes values within the float range, got an int of {int(value).bit_length()} bits"
            ) from error
        if math.isnan(number):
            raise ValueError(f"{cls.__name__} rejects NaN, because NaN is neither larger nor smaller than any value")
        return number

    def update(self, value: float) -> Self:
        """Write ``value`` and return the delta: the register holding ``value`` when it won, else an empty one.

        Raises TypeError when ``value`` is not an int or float, and ValueError for NaN or an
        int too large for a float.
        """
        number = self._check_number(value)
        if self._value is not None and not self._is_better(number, self._value):
            return type(self)()
        self._value = number
        return type(self)(number)

    def merge(self, other: Self) -> None:
        """Join ``other`` into this register: keep the better of the two values."""
        check_same_type(self, other)
        if other._value is not None:
            self.update(other._value)

    def value(self) -> float | None:
        """Return the best value written, or None for an empty register."""
        return self._value

    def copy(self) -> Self:
        """Return an independent copy."""
        return type(self)(self._value)

    def is_empty(self) -> bool:
        """Return True when nothing was ever written."""
        return self._value is None

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._value == other._value  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._value!r})"

    def _wire_body(self) -> object:
        return [] if self._value is None else [self._value]

    @classmethod
    def _from_wire_body(cls, body: object, reader: WireReader) -> Self:
        fields = reader.array(body, "body")
        if not fields:
            return cls()
        (value,) = reader.array(fields, "body", length=1)
        return cls(reader.number(value, "value", finite=False))


@wire_type(tag=4)
class MaxRegister(_ExtremumRegister):
    """The largest value ever written.

    >>> register = MaxRegister()
    >>> _ = register.update(21.5)
    >>> register.update(19.0).is_empty(), register.value()
    (True, 21.5)
    """

    __slots__ = ()

    @staticmethod
    def _is_better(candidate: float, current: float) -> bool:
        return candidate > current


@wire_type(tag=5)
class MinRegister(_ExtremumRegister):
    """The smallest value ever written.

    >>> register = MinRegister()
    >>> _ = register.update(21.5)
    >>> register.update(19.0).value(), register.value()
    (19.0, 19.0)
    """

    __slots__ = ()

    @staticmethod
    def _is_better(candidate: float, current: float) -> bool:
        return candidate < current
