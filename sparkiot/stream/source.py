"""A Spark streaming source over a landing log, through PySpark's Python data source API.

Offsets are ``{"offset": N}``: the number of records before the next one to read. Spark records
the end offset of each micro-batch in its checkpoint before the batch runs, so a restarted query
reads exactly the same records for a batch it had started, and continues after the last batch it
committed. :meth:`LandingStreamReader.commit` stores the committed offset in the log's
``consumers/`` folder, which retention respects.

Options: ``path`` (the landing log directory, required), ``log`` (``readings``, ``late``,
``dead_letters``, ``alerts`` or ``events``, which selects the schema), ``consumer`` (the name under which
commits are recorded) and ``maxRecordsPerTrigger`` (admission control for a large backlog).
"""

from __future__ import annotations

from pyspark.sql.datasource import DataSource, DataSourceStreamReader, InputPartition
from pyspark.sql.pandas.types import from_arrow_schema
from pyspark.sql.streaming.datasource import ReadAllAvailable, ReadLimit, ReadMaxRows

from sparkiot.readings import SCHEMAS

SOURCE_NAME = "sparkiot_landing"


class FramesPartition(InputPartition):
    """Offsets ``[start, end)`` and where their frames lie, so a task reads no index."""

    def __init__(self, start: int, end: int, frames: list[tuple[str, int, int, int, int]]) -> None:
        super().__init__((start, end))
        self.start = start
        self.end = end
        self.frames = frames


class LandingSource(DataSource):
    """``spark.readStream.format("sparkiot_landing").option("path", DIR).option("log", NAME)``."""

    @classmethod
    def name(cls) -> str:
        return SOURCE_NAME

    def _log_name(self) -> str:
        name = self.options.get("log", "readings")
        if name not in SCHEMAS:
            raise ValueError(f"option log={name!r} is not a landing log; use one of {sorted(SCHEMAS)}")
        return name

    def schema(self):
        return from_arrow_schema(SCHEMAS[self._log_name()])

    def streamReader(self, schema) -> DataSourceStreamReader:
        if "path" not in self.options:
            raise ValueError("option 'path' is required: the landing log directory")
        return LandingStreamReader(
            path=self.options["path"],
            consumer=self.options.get("consumer", self._log_name()),
            max_records=int(self.options.get("maxRecordsPerTrigger", "0")),
            partition_records=int(self.options.get("recordsPerPartition", "500000")),
        )


class LandingStreamReader(DataSourceStreamReader):
    """Plans micro-batches by offset and reads their frames; runs in the driver's data source process."""

    def __init__(self, *, path: str, consumer: str, max_records: int, partition_records: int) -> None:
        from sparkiot.ingest.landing import LogReader

        self.path = path
        self.consumer = consumer
        self.max_records = max_records
        self.partition_records = partition_records
        self._reader = LogReader(path)

    def initialOffset(self) -> dict:
        return {"offset": self._reader.first_offset()}

    def getDefaultReadLimit(self) -> ReadLimit:
        return ReadMaxRows(self.max_records) if self.max_records > 0 else ReadAllAvailable()

    def latestOffset(self, start: dict, limit: ReadLimit) -> dict:
        end = self._reader.end_offset()
        if isinstance(limit, ReadMaxRows):
            end = min(end, start["offset"] + limit.maxRows)
        return {"offset": max(end, start["offset"])}

    def reportLatestOffset(self) -> dict:
        return {"offset": self._reader.end_offset()}

    def partitions(self, start: dict, end: dict) -> list[FramesPartition]:
        lo, hi = start["offset"], end["offset"]
        partitions = []
        for first in range(lo, hi, self.partition_records):
            last = min(first + self.partition_records, hi)
            frames = [
                (str(frame.segment), frame.position, frame.length, frame.base_offset, frame.count)
                for frame in self._reader.frames(first, last)
            ]
            partitions.append(FramesPartition(first, last, frames))
        return partitions

    def read(self, partition: FramesPartition):
        from pathlib import Path

        from sparkiot.ingest.landing import Frame, read_frame

        for segment, position, length, base_offset, count in partition.frames:
            frame = Frame(Path(segment), position, length, base_offset, count, -1)
            try:
                batch = read_frame(frame)
            except FileNotFoundError:
                # Retention deleted the segment; the ingest counted the records it dropped.
                continue
            lo = max(partition.start - base_offset, 0)
            hi = min(partition.end - base_offset, count)
            yield batch.slice(lo, hi - lo)

    def commit(self, end: dict) -> None:
        self._reader.commit(self.consumer, end["offset"])
