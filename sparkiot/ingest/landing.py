"""The landing log: durable, ordered, offset-addressed records between ingest and Spark.

Guarantee: :meth:`LandingLog.append` returns only after its frame is written and fsynced, so an
ingest that acknowledges a message after ``append`` returns loses nothing in a crash. Offsets
number records (readings, dead letters, ...) from 0 without gaps; a frame holds one Arrow record
batch and its header records the batch's first offset and record count. Readers see only whole
frames whose CRC-32 matches, so a torn write from a crash is invisible, and the next writer
truncates it when it opens the log.

Limits: one writer per log (an exclusive file lock enforces it); retention deletes whole
segments, consumed ones first (consumers record their committed offset with
:meth:`LogReader.commit`); when unconsumed segments must go to respect ``retention_bytes``, the
records lost are counted and logged.

Layout: ``DIR/00000000000000000000.log`` (named by first offset), ``DIR/consumers/NAME.json``.
A frame is a 32-byte header (magic ``SIL1``, payload length, first offset, record count, max
event time in microseconds or -1, then a CRC-32 of the header's other fields and the payload)
followed by an Arrow IPC stream. A frame is valid only when its CRC matches, its payload and
count are not empty, and its first offset continues the previous frame.

Why hand-written: the production form of this stage is Kafka. The embedded form must run with no
server, be readable by offset from Spark's Python data source in another process, and fsync each
append before an MQTT acknowledgement; no maintained PyPI library offers such a log.
"""

from __future__ import annotations

import bisect
import fcntl
import json
import logging
import os
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

log = logging.getLogger(__name__)

_FIELDS = struct.Struct("<4sIqIq")
_CRC = struct.Struct("<I")
_HEADER_SIZE = _FIELDS.size + _CRC.size
_MAGIC = b"SIL1"
_SUFFIX = ".log"


@dataclass(frozen=True)
class Frame:
    """The location of one record batch in a segment and the offsets it contains."""

    segment: Path
    position: int
    length: int
    base_offset: int
    count: int
    max_event_us: int

    @property
    def end_offset(self) -> int:
        return self.base_offset + self.count


def _segment_name(base_offset: int) -> str:
    return f"{base_offset:020d}{_SUFFIX}"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """Return ``(base_offset, path)`` of every segment, oldest first."""
    segments = []
    for path in directory.glob(f"*{_SUFFIX}"):
        try:
            segments.append((int(path.stem), path))
        except ValueError:
            continue
    return sorted(segments)


def scan_frames(segment: Path, position: int = 0, *, expected_offset: int | None = None) -> Iterator[Frame]:
    """Yield the valid frames of ``segment`` from byte ``position``; stop at the first invalid one.

    ``expected_offset`` is the first offset the next frame must have; by default the segment's
    own base offset when scanning from the start, and unchecked otherwise.
    """
    if expected_offset is None and position == 0:
        try:
            expected_offset = int(segment.stem)
        except ValueError:
            expected_offset = None
    with open(segment, "rb") as handle:
        handle.seek(position)
        while True:
            fields = handle.read(_FIELDS.size)
            checksum = handle.read(_CRC.size)
            if len(fields) < _FIELDS.size or len(checksum) < _CRC.size:
                return
            magic, length, base_offset, count, max_event_us = _FIELDS.unpack(fields)
            if magic != _MAGIC or length == 0 or count == 0:
                return
            if expected_offset is not None and base_offset != expected_offset:
                return
            payload = handle.read(length)
            if len(payload) < length or zlib.crc32(payload, zlib.crc32(fields)) != _CRC.unpack(checksum)[0]:
                return
            yield Frame(segment, position, length, base_offset, count, max_event_us)
            position += _HEADER_SIZE + length
            expected_offset = base_offset + count


def read_frame(frame: Frame) -> pa.RecordBatch:
    with open(frame.segment, "rb") as handle:
        handle.seek(frame.position + _HEADER_SIZE)
        payload = handle.read(frame.length)
    with pa.ipc.open_stream(payload) as stream:
        return stream.read_next_batch()


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LandingLog:
    """The single writer of one landing log directory.

    ``append`` is durable on return. Opening the log recovers from a crash by truncating a torn
    frame at the end of the newest segment.
    """

    def __init__(self, directory: str | Path, schema: pa.Schema, *, segment_bytes: int = 64 * 1024**2) -> None:
        self.directory = Path(directory)
        self.schema = schema
        self.segment_bytes = segment_bytes
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "consumers").mkdir(exist_ok=True)

        self._lock = open(self.directory / ".writer.lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise RuntimeError(
                f"landing log {self.directory} is already open by another writer; stop the other "
                "ingest process or give this one its own data directory"
            ) from None

        self.end_offset = 0
        self.max_event_us = -1
        self._handle = self._recover()

    def _recover(self):
        segments = list_segments(self.directory)
        if not segments:
            return self._open_segment(0)
        base_offset, path = segments[-1]
        self.end_offset = base_offset
        valid_end = 0
        for frame in scan_frames(path):
            self.end_offset = frame.end_offset
            valid_end = frame.position + _HEADER_SIZE + frame.length
            if frame.max_event_us >= 0:
                self.max_event_us = max(self.max_event_us, frame.max_event_us)
        size = path.stat().st_size
        if size > valid_end:
            log.warning(
                "landing log %s: truncating %d bytes of an incomplete frame at the end of %s (left by a crash)",
                self.directory, size - valid_end, path.name,
            )
            with open(path, "r+b") as handle:
                handle.truncate(valid_end)
                os.fsync(handle.fileno())
        if self.max_event_us < 0 and len(segments) > 1:
            # The newest segment is empty, so the previous one contains the last max event time.
            for frame in scan_frames(segments[-2][1]):
                self.max_event_us = max(self.max_event_us, frame.max_event_us)
        return open(path, "ab")

    def _open_segment(self, base_offset: int):
        handle = open(self.directory / _segment_name(base_offset), "ab")
        _fsync_directory(self.directory)
        return handle

    def append(self, batch: pa.RecordBatch, *, max_event_us: int = -1) -> int:
        """Append ``batch`` durably and return the offset after it (its last offset + 1).

        ``max_event_us`` is stored in the frame header so a restarted writer can recover the
        event-time watermark. An empty batch writes nothing.
        """
        if batch.num_rows == 0:
            return self.end_offset
        if batch.schema != self.schema:
            raise ValueError(f"landing log {self.directory}: batch schema does not match the log's schema")
        if self._handle.tell() >= self.segment_bytes:
            self._handle.close()
            self._handle = self._open_segment(self.end_offset)

        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, self.schema) as writer:
            writer.write_batch(batch)
        payload = sink.getvalue().to_pybytes()
        self.max_event_us = max(self.max_event_us, max_event_us)
        fields = _FIELDS.pack(_MAGIC, len(payload), self.end_offset, batch.num_rows, self.max_event_us)
        checksum = _CRC.pack(zlib.crc32(payload, zlib.crc32(fields)))
        self._handle.write(fields + checksum + payload)
        self._handle.flush()
        os.fdatasync(self._handle.fileno())
        self.end_offset += batch.num_rows
        return self.end_offset

    def enforce_retention(self, *, retention_bytes: int, retention_age: float, now: float | None = None) -> int:
        """Delete old segments; return the number of unconsumed records that had to be dropped.

        A segment is deleted when every consumer has committed past it and it is older than
        ``retention_age`` seconds, or when the log exceeds ``retention_bytes``. The newest segment
        is never deleted. Unconsumed segments are deleted only for the size bound.
        """
        now = time.time() if now is None else now
        committed = min(LogReader(self.directory).committed_offsets().values(), default=0)
        segments = list_segments(self.directory)
        sizes = {path: path.stat().st_size for _, path in segments}
        total = sum(sizes.values())
        dropped = 0
        for index, (base_offset, path) in enumerate(segments[:-1]):
            next_base = segments[index + 1][0]
            consumed = next_base <= committed
            too_old = now - path.stat().st_mtime > retention_age
            too_big = total > retention_bytes
            if not ((consumed and too_old) or too_big):
                continue
            if not consumed:
                lost = next_base - max(base_offset, committed)
                dropped += lost
                log.warning(
                    "landing log %s: deleting unconsumed segment %s (%d records) to stay under "
                    "retention_bytes=%d; raise landing.retention_bytes or speed up the Spark job",
                    self.directory, path.name, lost, retention_bytes,
                )
            path.unlink()
            total -= sizes[path]
        return dropped

    def close(self) -> None:
        self._handle.close()
        self._lock.close()


class LogReader:
    """Reads a landing log by offsets; safe to use while a writer appends, from any process.

    Instances keep an index of the frames seen so far, so repeated :meth:`end_offset` calls
    read only what was appended since the previous call.
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._frames: list[Frame] = []
        self._scan_position: dict[Path, int] = {}
        self._bases: list[int] = []

    def _refresh(self) -> None:
        segments = list_segments(self.directory)
        live = {path for _, path in segments}
        if self._frames and self._frames[0].segment not in live:
            self._frames = [frame for frame in self._frames if frame.segment in live]
            self._scan_position = {path: pos for path, pos in self._scan_position.items() if path in live}
        for _, path in segments:
            position = self._scan_position.get(path, 0)
            expected = None
            if position and self._frames and self._frames[-1].segment == path:
                expected = self._frames[-1].end_offset
            for frame in scan_frames(path, position, expected_offset=expected):
                self._frames.append(frame)
                position = frame.position + _HEADER_SIZE + frame.length
            self._scan_position[path] = position
        self._bases = [frame.base_offset for frame in self._frames]

    def end_offset(self) -> int:
        """Return the offset after the last whole frame (0 for an empty log)."""
        self._refresh()
        return self._frames[-1].end_offset if self._frames else self.first_offset()

    def first_offset(self) -> int:
        segments = list_segments(self.directory)
        return segments[0][0] if segments else 0

    def frames(self, start: int, end: int) -> list[Frame]:
        """Return the frames that hold any offset in ``[start, end)``."""
        if not self._frames or self._frames[-1].end_offset < end:
            self._refresh()
        first = max(bisect.bisect_right(self._bases, start) - 1, 0)
        selected = []
        for frame in self._frames[first:]:
            if frame.base_offset >= end:
                break
            if frame.end_offset > start:
                selected.append(frame)
        return selected

    def read(self, start: int, end: int) -> Iterator[pa.RecordBatch]:
        """Yield the records at offsets ``[start, end)`` as record batches, in offset order."""
        for frame in self.frames(start, end):
            try:
                batch = read_frame(frame)
            except FileNotFoundError:
                log.warning("landing log %s: segment %s was deleted by retention before it was read",
                            self.directory, frame.segment.name)
                continue
            lo = max(start - frame.base_offset, 0)
            hi = min(end - frame.base_offset, frame.count)
            yield batch.slice(lo, hi - lo)

    def commit(self, consumer: str, offset: int) -> None:
        """Record that ``consumer`` has processed every offset below ``offset`` (atomic replace)."""
        path = self.directory / "consumers" / f"{consumer}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"offset": offset, "time": time.time()}))
        os.replace(temporary, path)

    def committed_offsets(self) -> dict[str, int]:
        """Return the committed offset of each consumer."""
        offsets = {}
        for path in (self.directory / "consumers").glob("*.json"):
            try:
                offsets[path.stem] = int(json.loads(path.read_text())["offset"])
            except (ValueError, KeyError, OSError):
                log.warning("landing log %s: ignoring unreadable consumer file %s", self.directory, path.name)
        return offsets
