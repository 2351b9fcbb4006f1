"""Hybrid logical clocks (Kulkarni et al., "Logical Physical Clocks", OPODIS 2014).

A timestamp is (wall_ms, logical, node). ``wall_ms`` follows the largest wall-clock reading
seen, local or remote, and ``logical`` counts events within one millisecond. Guarantees:
timestamps from one clock strictly increase, even when the wall clock steps back. A timestamp
made after observing a remote one is greater than it, so causally later writes win
last-writer-wins. The node id breaks ties, so timestamps of different nodes never compare
equal. Limit: a remote clock that runs ahead drags ``wall_ms`` ahead with it, and
``max_offset_ms`` rejects remote timestamps too far in the future.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sparkiot.edge.crdt.base import check_replica


def _system_wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, order=True, slots=True)
class HlcTimestamp:
    """A hybrid logical clock reading, ordered by (wall_ms, logical, node).

    ``wall_ms`` is milliseconds since the Unix epoch, ``logical`` a counter within that
    millisecond and ``node`` the id of the clock that made it. Raises ValueError or TypeError
    for a negative or non-int field or an empty node id.
    """

    wall_ms: int
    logical: int
    node: str

    def __post_init__(self) -> None:
        for name in ("wall_ms", "logical"):
            field = getattr(self, name)
            if not isinstance(field, int) or isinstance(field, bool):
                raise TypeError(f"HlcTimestamp.{name} must be an int, got {type(field).__name__}: {field!r}")
            if field < 0:
                raise ValueError(f"HlcTimestamp.{name} must be >= 0, got {field}")
        check_replica(self.node)


class HybridLogicalClock:
    """A hybrid logical clock for one node; ``now`` and ``observe`` are thread-safe.

    >>> wall = iter([1_000, 1_000, 990]).__next__
    >>> clock = HybridLogicalClock("gw-1", wall_clock_ms=wall)
    >>> clock.now(), clock.now(), clock.now()  # doctest: +NORMALIZE_WHITESPACE
    (HlcTimestamp(wall_ms=1000, logical=0, node='gw-1'),
     HlcTimestamp(wall_ms=1000, logical=1, node='gw-1'),
     HlcTimestamp(wall_ms=1000, logical=2, node='gw-1'))
    """

    def __init__(
        self,
        node: str,
        *,
        wall_clock_ms: Callable[[], int] = _system_wall_clock_ms,
        max_offset_ms: int | None = None,
    ) -> None:
        """Create a clock for ``node``.

        ``wall_clock_ms`` returns the current time in milliseconds since the Unix epoch.
        ``max_offset_ms``, when given, is how far ahead of the local wall clock a remote
        timestamp may be before ``observe`` rejects it.
        """
        self.node = check_replica(node)
        self._wall_clock_ms = wall_clock_ms
        self._max_offset_ms = max_offset_ms
        self._lock = threading.Lock()
        self._wall_ms = 0
        self._logical = 0

    def now(self) -> HlcTimestamp:
        """Return a timestamp for a local event, greater than every one this clock returned."""
        physical_ms = self._wall_clock_ms()
        with self._lock:
            if physical_ms > self._wall_ms:
                self._wall_ms = physical_ms
                self._logical = 0
            else:
                self._logical += 1
            return HlcTimestamp(self._wall_ms, self._logical, self.node)

    def observe(self, remote: HlcTimestamp) -> HlcTimestamp:
        """Advance past ``remote`` (a timestamp received from another node) and return the new reading.

        The result is greater than ``remote`` and than every timestamp this clock returned.
        Raises ValueError, leaving the clock unchanged, when ``max_offset_ms`` is set and
        ``remote.wall_ms`` is more than that ahead of the local wall clock.
        """
        physical_ms = self._wall_clock_ms()
        if self._max_offset_ms is not None and remote.wall_ms - physical_ms > self._max_offset_ms:
            raise ValueError(
                f"remote timestamp from node {remote.node!r} is {remote.wall_ms - physical_ms} ms ahead of the "
                f"local wall clock of node {self.node!r}, more than max_offset_ms={self._max_offset_ms}; "
                "check the clock of both nodes"
            )

        with self._lock:
            wall_ms = max(self._wall_ms, remote.wall_ms, physical_ms)
            if wall_ms == self._wall_ms and wall_ms == remote.wall_ms:
                logical = max(self._logical, remote.logical) + 1
            elif wall_ms == self._wall_ms:
                logical = self._logical + 1
            elif wall_ms == remote.wall_ms:
                logical = remote.logical + 1
            else:
                logical = 0

            self._wall_ms = wall_ms
            self._logical = logical
            return HlcTimestamp(wall_ms, logical, self.node)
