"""Unit tests of the landing log: offsets, segments, crash recovery, the writer lock and retention."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa
import pytest

from sparkiot.ingest.landing import LandingLog, LogReader, list_segments

SCHEMA = pa.schema([pa.field("value", pa.int64(), nullable=False)])
# Row counts of the batches that tests append. They are uneven, so frame borders fall at irregular offsets.
BATCH_SIZES = [3, 1, 5, 2, 4, 1, 6, 3]


def batch_of(values: list[int]) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array(values, type=pa.int64())], schema=SCHEMA)


def fill(log: LandingLog, sizes: list[int], start: int = 0) -> list[int]:
    """Append batches of ``sizes`` rows of consecutive values from ``start`` and return all the values."""
    values = []
    next_value = start
    for size in sizes:
        chunk = list(range(next_value, next_value + size))
        log.append(batch_of(chunk), max_event_us=chunk[-1])
        values.extend(chunk)
        next_value += size
    return values


def read_values(directory: Path, start: int, end: int, reader: LogReader | None = None) -> list[int]:
    reader = reader or LogReader(directory)
    values = []
    for batch in reader.read(start, end):
        values.extend(batch.column("value").to_pylist())
    return values


def newest_segment(directory: Path) -> Path:
    return list_segments(directory)[-1][1]


def ipc_size(values: list[int]) -> int:
    """Return the size of ``values`` as one Arrow IPC stream, the payload of one frame."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, SCHEMA) as writer:
        writer.write_batch(batch_of(values))
    return len(sink.getvalue())


@pytest.fixture
def log(tmp_path):
    opened = LandingLog(tmp_path / "landing", SCHEMA)
    yield opened
    opened.close()


# Appending and reading


def test_append_returns_end_offset(log):
    assert log.append(batch_of([1, 2, 3])) == 3
    assert log.append(batch_of([4])) == 4
    assert log.end_offset == 4


def test_append_empty_batch_noop(log):
    log.append(batch_of([1, 2]))

    assert log.append(batch_of([])) == 2
    assert LogReader(log.directory).end_offset() == 2


def test_append_wrong_schema(log):
    other = pa.RecordBatch.from_arrays([pa.array(["x"])], names=["value"])

    with pytest.raises(ValueError, match="schema"):
        log.append(other)


def test_read_every_sub_range(log):
    values = fill(log, BATCH_SIZES)
    reader = LogReader(log.directory)
    total = len(values)

    assert reader.end_offset() == total
    for start in range(total + 1):
        for end in range(start, total + 1):
            assert read_values(log.directory, start, end, reader) == values[start:end], (start, end)


def test_read_past_end(log):
    values = fill(log, [4, 4])

    assert read_values(log.directory, 6, 100) == values[6:]


def test_empty_log_offsets(log):
    reader = LogReader(log.directory)

    assert reader.end_offset() == 0
    assert read_values(log.directory, 0, 10) == []


def test_segments_split_and_read(tmp_path):
    directory = tmp_path / "landing"
    log = LandingLog(directory, SCHEMA, segment_bytes=600)
    values = fill(log, BATCH_SIZES * 3)
    log.close()
    segments = list_segments(directory)
    reader = LogReader(directory)
    total = len(values)

    assert len(segments) > 3
    assert segments[0][0] == 0
    assert reader.end_offset() == total
    for start in range(total + 1):
        for end in range(start, total + 1, 3):
            assert read_values(directory, start, end, reader) == values[start:end], (start, end)


def test_segment_names_are_base_offsets(tmp_path):
    directory = tmp_path / "landing"
    log = LandingLog(directory, SCHEMA, segment_bytes=1)
    fill(log, [2, 3, 4])
    log.close()

    assert [base for base, _ in list_segments(directory)] == [0, 2, 5]


def test_reader_sees_later_appends(log):
    reader = LogReader(log.directory)
    first = fill(log, [3])

    assert reader.end_offset() == 3
    second = fill(log, [2], start=100)
    assert reader.end_offset() == 5
    assert read_values(log.directory, 0, 5, reader) == first + second


# Reopening and crash recovery


def test_reopen_recovers_state(tmp_path):
    directory = tmp_path / "landing"
    log = LandingLog(directory, SCHEMA, segment_bytes=400)
    for values, event_us in [([1, 2], 500), ([3], 9000), ([4, 5, 6], 700), ([7], 800)]:
        log.append(batch_of(values), max_event_us=event_us)
    log.close()

    reopened = LandingLog(directory, SCHEMA, segment_bytes=400)
    try:
        assert reopened.end_offset == 7
        assert reopened.max_event_us == 9000
        assert reopened.append(batch_of([8])) == 8
    finally:
        reopened.close()
    assert read_values(directory, 0, 8) == [1, 2, 3, 4, 5, 6, 7, 8]


def test_reopen_empty_newest_segment(tmp_path):
    directory = tmp_path / "landing"
    log = LandingLog(directory, SCHEMA)
    log.append(batch_of([1, 2, 3]), max_event_us=4242)
    log.close()
    (directory / f"{3:020d}.log").touch()

    reopened = LandingLog(directory, SCHEMA)
    try:
        assert reopened.end_offset == 3
        assert reopened.max_event_us == 4242
    finally:
        reopened.close()


def test_reopen_without_event_times(tmp_path):
    directory = tmp_path / "landing"
    log = LandingLog(directory, SCHEMA)
    log.append(batch_of([1]))
    log.close()

    reopened = LandingLog(directory, SCHEMA)
    try:
        assert reopened.max_event_us == -1
    finally:
        reopened.close()


def test_garbage_tail_truncated(tmp_path):
    directory = tmp_path / "landing"
    log = LandingLog(directory, SCHEMA)
    values = fill(log, [3, 2])
    log.close()
    segment = newest_segment(directory)
    valid_size = segment.stat().st_size
    with open(segment, "ab") as handle:
        handle.write(b"garbage left by a crash " * 4)

    assert LogReader(directory).end_offset() == 5
    assert read_values(directory, 0, 10) == values

    reopened = LandingLog(directory, SCHEMA)
    try:
        assert segment.stat().st_size == valid_size
        assert reopened.end_offset == 5
        assert reopened.append(batch_of([99])) == 6
    finally:
        reopened.close()
    assert read_values(directory, 0, 10) == values + [99]


def test_short_garbage_tail_truncated(tmp_path):
    directory = tmp_path / "landing"
    log = LandingLog(directory, SCHEMA)
    fill(log, [2])
    log.close()
    segment = newest_segment(directory)
    valid_size = segment.stat().st_size
    with open(segment, "ab") as handle:
        handle.write(b"SIL")

    LandingLog(directory, SCHEMA).close()

    assert segment.stat().st_size == valid_size


def test_torn_last_frame_truncated(tmp_path):
    directory = tmp_path / "landing"
    log = LandingLog(directory, SCHEMA)
    first = fill(log, [3, 2])
    size_before_last = newest_segment(directory).stat().st_size
    fill(log, [4], start=50)
    log.close()
    segment = newest_segment(directory)
    with open(segment, "r+b") as handle:
        handle.truncate(segment.stat().st_size - 10)

    assert LogReader(directory).end_offset() == 5
    assert read_values(directory, 0, 10) == first

    reopened = LandingLog(directory, SCHEMA)
    try:
        assert segment.stat().st_size == size_before_last
        assert reopened.end_offset == 5
        assert reopened.append(batch_of([7, 8])) == 7
    finally:
        reopened.close()
    assert read_values(directory, 0, 10) == first + [7, 8]


def test_corrupt_byte_hides_frame(tmp_path):
    directory = tmp_path / "landing"
    log = LandingLog(directory, SCHEMA)
    first = fill(log, [3, 2])
    fill(log, [4], start=50)
    log.close()
    segment = newest_segment(directory)
    data = bytearray(segment.read_bytes())
    data[-20] ^= 0xFF
    segment.write_bytes(bytes(data))

    reader = LogReader(directory)

    assert reader.end_offset() == 5
    assert read_values(directory, 0, 9, reader) == first


# Writer lock


def test_second_writer_rejected(log):
    with pytest.raises(RuntimeError, match="already open"):
        LandingLog(log.directory, SCHEMA)


def test_writer_lock_released_on_close(tmp_path):
    directory = tmp_path / "landing"
    LandingLog(directory, SCHEMA).close()

    again = LandingLog(directory, SCHEMA)

    assert again.end_offset == 0
    again.close()


# Consumers and retention


def test_commit_round_trip(tmp_path):
    reader = LogReader(tmp_path)

    reader.commit("spark", 42)
    reader.commit("alerts", 7)
    reader.commit("spark", 50)

    assert LogReader(tmp_path).committed_offsets() == {"spark": 50, "alerts": 7}


def test_committed_offsets_skip_unreadable(tmp_path):
    reader = LogReader(tmp_path)
    reader.commit("spark", 5)
    (tmp_path / "consumers" / "broken.json").write_text("{not json")

    assert reader.committed_offsets() == {"spark": 5}


def retention_log(tmp_path: Path, age_seconds: float) -> tuple[LandingLog, list[int]]:
    """Return a log of five one-frame segments of 10 records each, all ``age_seconds`` old."""
    log = LandingLog(tmp_path / "landing", SCHEMA, segment_bytes=1)
    values = fill(log, [10] * 5)
    then = time.time() - age_seconds
    for _, path in list_segments(log.directory):
        os.utime(path, (then, then))
    return log, values


def segment_bases(log: LandingLog) -> list[int]:
    return [base for base, _ in list_segments(log.directory)]


def test_retention_deletes_consumed_old(tmp_path):
    log, values = retention_log(tmp_path, age_seconds=7200)
    LogReader(log.directory).commit("spark", 20)

    dropped = log.enforce_retention(retention_bytes=10**12, retention_age=3600)

    assert dropped == 0
    assert segment_bases(log) == [20, 30, 40]
    assert read_values(log.directory, 0, 50) == values[20:]
    log.close()


def test_retention_slowest_consumer_wins(tmp_path):
    log, _ = retention_log(tmp_path, age_seconds=7200)
    reader = LogReader(log.directory)
    reader.commit("fast", 50)
    reader.commit("slow", 15)

    dropped = log.enforce_retention(retention_bytes=10**12, retention_age=3600)

    assert dropped == 0
    assert segment_bases(log) == [10, 20, 30, 40]
    log.close()


def test_retention_keeps_consumed_young(tmp_path):
    log, _ = retention_log(tmp_path, age_seconds=0)
    LogReader(log.directory).commit("spark", 50)

    dropped = log.enforce_retention(retention_bytes=10**12, retention_age=3600)

    assert dropped == 0
    assert segment_bases(log) == [0, 10, 20, 30, 40]
    log.close()


def test_retention_keeps_unconsumed_old(tmp_path):
    log, _ = retention_log(tmp_path, age_seconds=10 * 86400)

    dropped = log.enforce_retention(retention_bytes=10**12, retention_age=3600)

    assert dropped == 0
    assert segment_bases(log) == [0, 10, 20, 30, 40]
    log.close()


def test_retention_size_drops_unconsumed(tmp_path):
    log, values = retention_log(tmp_path, age_seconds=0)
    LogReader(log.directory).commit("spark", 15)
    sizes = {base: path.stat().st_size for base, path in list_segments(log.directory)}
    # The bound is met once the segments at 0, 10 and 20 are gone. Offsets 15..29 were never consumed.
    bound = sizes[30] + sizes[40]

    dropped = log.enforce_retention(retention_bytes=bound, retention_age=3600)

    assert dropped == (20 - 15) + (30 - 20)
    assert segment_bases(log) == [30, 40]
    assert read_values(log.directory, 0, 50) == values[30:]
    log.close()


def test_retention_size_without_consumers(tmp_path):
    log, _ = retention_log(tmp_path, age_seconds=0)
    sizes = {base: path.stat().st_size for base, path in list_segments(log.directory)}

    dropped = log.enforce_retention(retention_bytes=sum(sizes.values()) - 1, retention_age=3600)

    assert dropped == 10
    assert segment_bases(log) == [10, 20, 30, 40]
    log.close()


def test_retention_never_deletes_newest(tmp_path):
    log, values = retention_log(tmp_path, age_seconds=7200)
    LogReader(log.directory).commit("spark", 50)

    dropped = log.enforce_retention(retention_bytes=0, retention_age=0)

    assert dropped == 0
    assert segment_bases(log) == [40]
    assert LogReader(log.directory).first_offset() == 40
    assert read_values(log.directory, 0, 50) == values[40:]
    log.close()


def test_retention_newest_kept_unconsumed(tmp_path):
    log, _ = retention_log(tmp_path, age_seconds=0)

    dropped = log.enforce_retention(retention_bytes=0, retention_age=0)

    assert dropped == 40
    assert segment_bases(log) == [40]
    log.close()


def test_stale_reader_after_retention(tmp_path):
    log, values = retention_log(tmp_path, age_seconds=7200)
    reader = LogReader(log.directory)
    assert reader.end_offset() == 50
    reader.commit("spark", 30)

    log.enforce_retention(retention_bytes=10**12, retention_age=3600)

    assert read_values(log.directory, 0, 50, reader) == values[30:]
    log.close()


# Edge cases that once broke: each test states the correct behaviour.


def test_frame_header_documented_size(log):
    log.append(batch_of([1, 2, 3]))
    segment = newest_segment(log.directory)

    assert segment.stat().st_size == 32 + ipc_size([1, 2, 3])


# A header of magic "SIL1" and zero bytes: payload length 0, whose CRC-32 is 0, first offset 0, count 0.
ZERO_HEADER = b"SIL1" + b"\x00" * 28


def test_zero_header_live_reader(log):
    values = fill(log, [2, 2])
    reader = LogReader(log.directory)
    assert reader.end_offset() == 4
    with open(newest_segment(log.directory), "ab") as handle:
        handle.write(ZERO_HEADER)

    assert reader.end_offset() == 4
    assert read_values(log.directory, 0, 10, reader) == values


def test_zero_header_tail_reopen(tmp_path):
    directory = tmp_path / "landing"
    log = LandingLog(directory, SCHEMA)
    values = fill(log, [2, 2])
    log.close()
    with open(newest_segment(directory), "ab") as handle:
        handle.write(ZERO_HEADER)

    reopened = LandingLog(directory, SCHEMA)
    try:
        assert reopened.end_offset == 4
        reopened.append(batch_of([99]))
    finally:
        reopened.close()
    assert read_values(directory, 0, 10) == values + [99]


def test_corrupt_header_count(tmp_path):
    directory = tmp_path / "landing"
    log = LandingLog(directory, SCHEMA)
    fill(log, [3, 2])
    last_frame_position = newest_segment(directory).stat().st_size
    fill(log, [4], start=50)
    log.close()
    segment = newest_segment(directory)
    data = bytearray(segment.read_bytes())
    # The record count follows the magic (4 bytes), payload length (4) and first offset (8).
    data[last_frame_position + 16] ^= 0x01
    segment.write_bytes(bytes(data))

    assert LogReader(directory).end_offset() == 5
