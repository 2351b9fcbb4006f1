"""A compact binary encoding of the CRDT states and deltas, in CBOR (RFC 8949).

Every encoding is one CBOR array ``[tag, body]``: ``tag`` is a small integer naming the type and
``body`` its fields, so a decoder needs no schema and a ``CrdtMap`` entry carries its own type.
The tags are fixed: a changed body layout takes a new tag, and a retired tag is never reused.

=== ============== ========================================================
tag type           body
=== ============== ========================================================
1   GCounter       ``{replica: count}``
2   PNCounter      ``[increments, decrements]``, each a GCounter body
3   LWWRegister    ``[]`` when empty, else ``[wall_ms, logical, node, value]``
4   MaxRegister    ``[]`` when empty, else ``[value]``
5   MinRegister    ``[]`` when empty, else ``[value]``
6   ORSet          ``[replicas, version_vector, dot_cloud, entries]``
7   Summary        ``{replica: [count, sum, sum_squares, min, max]}``
8   QuantileSketch ``[relative_accuracy, {replica: [positive, negative, zero]}]``
9   CrdtMap        ``{key: [tag, body]}``
=== ============== ========================================================

Encoding uses cbor2's canonical mode (map keys sorted, integers and floats in their shortest
exact form), so equal states encode to equal bytes. Decoding checks every field. Malformed input
raises ``CrdtDecodeError`` (a ValueError) naming the type, tag and field, and never another
exception type. The decoder's depth limit (``MAX_DEPTH``) admits 31 levels of ``CrdtMap``
nested in ``CrdtMap``. Deeper maps encode, but their bytes raise ``CrdtDecodeError``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Self, TypeVar

import cbor2

if TYPE_CHECKING:
    from sparkiot.edge.crdt.base import Crdt

T = TypeVar("T", bound=type)

# Depth of nested CBOR containers the decoder accepts. A CrdtMap level takes two.
MAX_DEPTH = 64

_TYPES_BY_TAG: dict[int, type[WireCodec]] = {}
_TAGS_BY_TYPE: dict[type, int] = {}

_WHAT_TO_DO = "discard these bytes and request the full state from the sender"


class CrdtDecodeError(ValueError):
    """Bytes that are not a valid encoding of a CRDT of this package."""


def wire_type(tag: int) -> Callable[[T], T]:
    """Register a class under ``tag``; raises ValueError when the tag or the class is taken."""

    def register(cls: T) -> T:
        if tag in _TYPES_BY_TAG or cls in _TAGS_BY_TYPE:
            raise ValueError(f"CRDT type tag {tag} or class {cls.__name__} is already registered")
        _TYPES_BY_TAG[tag] = cls
        _TAGS_BY_TYPE[cls] = tag
        return cls

    return register


class WireReader:
    """Typed access to the fields of a decoded body; each failed check raises CrdtDecodeError."""

    def __init__(self, type_name: str, tag: int) -> None:
        self.type_name = type_name
        self.tag = tag

    def error(self, field: str, problem: str) -> CrdtDecodeError:
        """Return the error for ``field``; the message names the type, the tag and the problem."""
        return CrdtDecodeError(
            f"invalid {self.type_name} encoding (tag {self.tag}): {field} {problem}; {_WHAT_TO_DO}"
        )

    def array(self, value: object, field: str, *, length: int | None = None) -> list[Any]:
        """Return ``value`` as a list, of exactly ``length`` items when given."""
        if not isinstance(value, list):
            raise self.error(field, f"must be an array, got {_cbor_kind(value)}")
        if length is not None and len(value) != length:
            raise self.error(field, f"must have {length} items, got {len(value)}")
        return value

    def mapping(self, value: object, field: str, *, allow_empty_keys: bool = False) -> dict[str, Any]:
        """Return ``value`` as a dict whose keys are all text strings, non-empty unless allowed."""
        if not isinstance(value, dict):
            raise self.error(field, f"must be a map, got {_cbor_kind(value)}")
        for key in value:
            self.text(key, f"a key of {field}", allow_empty=allow_empty_keys)
        return value

    def integer(self, value: object, field: str, *, minimum: int | None = None) -> int:
        """Return ``value`` as an int (booleans rejected), not below ``minimum`` when given."""
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(field, f"must be an integer, got {_cbor_kind(value)}")
        if minimum is not None and value < minimum:
            raise self.error(field, f"must be >= {minimum}, got {value}")
        return value

    def number(self, value: object, field: str, *, finite: bool = True) -> float:
        """Return ``value`` as a float: never NaN, and finite unless ``finite`` is False."""
        if not isinstance(value, float):
            raise self.error(field, f"must be a float, got {_cbor_kind(value)}")
        if math.isnan(value) or (finite and math.isinf(value)):
            raise self.error(field, f"must be a finite number, got {value}")
        return value

    def text(self, value: object, field: str, *, allow_empty: bool = False) -> str:
        """Return ``value`` as a str, non-empty unless ``allow_empty`` is True."""
        if not isinstance(value, str):
            raise self.error(field, f"must be a text string, got {_cbor_kind(value)}")
        if not value and not allow_empty:
            raise self.error(field, "must not be empty")
        return value


class WireCodec:
    """Base class that gives a registered CRDT class ``to_bytes`` and ``from_bytes``.

    A subclass implements ``_wire_body`` (a value cbor2 can encode) and ``_from_wire_body``
    (the inverse, checking every field through the WireReader it receives).
    """

    __slots__ = ()

    def to_bytes(self) -> bytes:
        """Encode this state; ``from_bytes`` and ``decode`` return an equal state."""
        return encode(self)  # type: ignore[arg-type]

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Decode bytes made by ``to_bytes``.

        Raises CrdtDecodeError when the bytes are malformed or encode another type.
        """
        state = decode(data)
        if not isinstance(state, cls):
            raise CrdtDecodeError(
                f"expected a {cls.__name__} encoding (tag {_TAGS_BY_TYPE[cls]}), got tag "
                f"{_TAGS_BY_TYPE[type(state)]} ({type(state).__name__}); decode it with encoding.decode instead"
            )
        return state

    def _wire_body(self) -> object:
        raise NotImplementedError

    @classmethod
    def _from_wire_body(cls, body: object, reader: WireReader) -> Self:
        raise NotImplementedError


def encode(state: Crdt) -> bytes:
    """Encode a CRDT state or delta as canonical CBOR; raises TypeError for an unregistered type."""
    return cbor2.dumps(wire_entry(state), canonical=True)


def wire_entry(state: Crdt) -> list[object]:
    """Return the ``[tag, body]`` array that encodes ``state``, for embedding in another body."""
    tag = _TAGS_BY_TYPE.get(type(state))  # type: ignore[arg-type]
    if tag is None:
        raise TypeError(f"{type(state).__name__} is not a CRDT type of sparkiot.edge.crdt and has no encoding")
    return [tag, state._wire_body()]  # type: ignore[attr-defined]


def decode(data: bytes) -> Crdt:
    """Decode bytes made by ``encode`` or ``to_bytes`` into a new state of the encoded type.

    Raises CrdtDecodeError for malformed CBOR, trailing bytes, an unknown tag or an invalid
    field, and TypeError when ``data`` is not bytes-like.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode expects bytes, got {type(data).__name__}")

    stream = io.BytesIO(data)
    decoder = cbor2.CBORDecoder(
        stream,
        max_depth=MAX_DEPTH,
        allow_indefinite=False,
        allow_duplicate_keys=False,
        strict_hashable_types=True,
    )
    try:
        item = decoder.decode()
    # cbor2 raises CBORError for malformed input. The stdlib types cover the decoders of
    # semantic tags (dates, decimals, UUIDs), which may raise their own errors.
    except (cbor2.CBORError, ValueError, TypeError, OverflowError) as error:
        raise CrdtDecodeError(f"invalid CRDT encoding: the bytes are not well-formed CBOR ({error}); {_WHAT_TO_DO}") from error

    trailing = len(data) - stream.tell()
    if trailing:
        raise CrdtDecodeError(f"invalid CRDT encoding: {trailing} unexpected bytes after the encoded state; {_WHAT_TO_DO}")
    return decode_entry(item, where="the encoded state")


def decode_entry(item: object, *, where: str) -> Crdt:
    """Decode one ``[tag, body]`` array; ``where`` names its place in error messages."""
    if not isinstance(item, list) or len(item) != 2:
        raise CrdtDecodeError(
            f"invalid CRDT encoding: {where} must be a 2-item array [tag, body], got {_cbor_kind(item)}; {_WHAT_TO_DO}"
        )

    tag, body = item
    cls = _TYPES_BY_TAG.get(tag) if isinstance(tag, int) and not isinstance(tag, bool) else None
    if cls is None:
        known = ", ".join(f"{number} ({known_cls.__name__})" for number, known_cls in sorted(_TYPES_BY_TAG.items()))
        raise CrdtDecodeError(
            f"invalid CRDT encoding: unknown type tag {tag!r} in {where}; known tags are {known}. "
            f"The sender may run a newer version: {_WHAT_TO_DO} or upgrade this replica"
        )
    return cls._from_wire_body(body, WireReader(cls.__name__, tag))  # type: ignore[return-value]


def _cbor_kind(value: object) -> str:
    if isinstance(value, list):
        return f"an array of {len(value)} items"
    if isinstance(value, dict):
        return "a map"
    if value is None:
        return "null"
    return f"{type(value).__name__} {value!r:.40}"
