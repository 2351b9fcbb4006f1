"""The control plane's registry: pipelines, their configs and states, cost ledgers and cold starts.

SQLite by default (``sqlite:///PATH``), PostgreSQL by URL (``postgresql://user@127.0.0.1/db``),
through SQLAlchemy Core so that both run the same statements. Every change is committed at once:
a control plane killed at any moment restarts from what the registry holds.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from sqlalchemy import (
    Column, Float, Integer, MetaData, String, Table, Text, UniqueConstraint, create_engine, delete, event, insert,
    select, update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from sparkiot.serverless.metering import Holding

metadata = MetaData()

pipelines = Table(
    "pipelines", metadata,
    Column("name", String(64), primary_key=True),
    Column("yaml", Text, nullable=False),
    Column("config", Text, nullable=False),
    Column("data_dir", Text, nullable=False),
    Column("desired", String(16), nullable=False),
    Column("state", String(16), nullable=False),
    Column("message", Text, nullable=False, default=""),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("epoch", Integer, nullable=False, default=0),
    Column("ingest_pid", Integer),
    Column("ingest_started", Float),
    Column("runner_pid", Integer),
    Column("runner_started", Float),
    Column("ledger_offset", Integer, nullable=False, default=0),
    Column("restarts", Integer, nullable=False, default=0),
    Column("idle_since", Float),
)

holdings = Table(
    "holdings", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("pipeline", String(64), nullable=False, index=True),
    Column("epoch", Integer, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("resource_id", String(64), nullable=False),
    Column("cores", Float, nullable=False),
    Column("memory_mib", Integer, nullable=False),
    Column("start", Float, nullable=False),
    Column("end", Float),
    UniqueConstraint("pipeline", "epoch", "resource_id", "start", name="holding_once"),
)

starts = Table(
    "starts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("pipeline", String(64), nullable=False, index=True),
    Column("epoch", Integer, nullable=False),
    Column("reason", String(32), nullable=False),
    Column("requested_at", Float, nullable=False),
    Column("ready_at", Float),
    Column("first_batch_at", Float),
    Column("ready_seconds", Float),
    Column("seconds", Float),
)

scaling_events = Table(
    "scaling_events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("pipeline", String(64), nullable=False, index=True),
    Column("time", Float, nullable=False),
    Column("executors_from", Integer),
    Column("executors_to", Integer),
    Column("trigger", Float),
    Column("reason", Text, nullable=False),
)


class Conflict(ValueError):
    """A pipeline of that name already exists."""


def engine_for(url: str) -> Engine:
    """Create an engine for ``url``; ``postgresql://`` uses the psycopg 3 driver."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
        return create_engine(url, pool_pre_ping=True)
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _wal(connection, _record) -> None:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")

        return engine
    raise ValueError(f"registry URL {url!r} is neither sqlite:///PATH nor postgresql://USER@HOST/DB")


class Registry:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = engine_for(url)
        metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- pipelines -----------------------------------------------------------------------------

    def create(self, name: str, yaml_text: str, config: dict, data_dir: str) -> dict:
        now = time.time()
        row = {"name": name, "yaml": yaml_text, "config": json.dumps(config), "data_dir": data_dir,
               "desired": "running", "state": "starting", "message": "", "created_at": now, "updated_at": now,
               "epoch": 0, "ledger_offset": 0, "restarts": 0}
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(pipelines).values(**row))
        except IntegrityError:
            raise Conflict(f"a pipeline named {name!r} exists; delete it first or choose another name") from None
        return self.get(name)

    def get(self, name: str) -> dict | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(pipelines).where(pipelines.c.name == name)).mappings().first()
        return _pipeline(row) if row else None

    def list(self) -> list[dict]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(pipelines).order_by(pipelines.c.name)).mappings().all()
        return [_pipeline(row) for row in rows]

    def update(self, name: str, **fields) -> None:
        fields["updated_at"] = time.time()
        with self.engine.begin() as connection:
            connection.execute(update(pipelines).where(pipelines.c.name == name).values(**fields))

    def delete(self, name: str) -> None:
        with self.engine.begin() as connection:
            for table in (holdings, starts, scaling_events):
                connection.execute(delete(table).where(table.c.pipeline == name))
            connection.execute(delete(pipelines).where(pipelines.c.name == name))

    # -- the cost ledger -----------------------------------------------------------------------

    def apply_ledger(self, name: str, records: list[dict], offset: int) -> None:
        """Apply a runtime's ledger lines and remember how far its file was read, in one transaction."""
        with self.engine.begin() as connection:
            for record in records:
                if record["event"] == "start":
                    exists = connection.execute(select(holdings.c.id).where(
                        holdings.c.pipeline == name, holdings.c.epoch == record["epoch"],
                        holdings.c.resource_id == record["id"], holdings.c.start == record["time"])).first()
                    if exists is None:
                        connection.execute(insert(holdings).values(
                            pipeline=name, epoch=record["epoch"], kind=record["kind"], resource_id=record["id"],
                            cores=record["cores"], memory_mib=record["memory_mib"], start=record["time"]))
                else:
                    connection.execute(update(holdings).where(
                        holdings.c.pipeline == name, holdings.c.epoch == record["epoch"],
                        holdings.c.resource_id == record["id"], holdings.c.end.is_(None)).values(end=record["time"]))
            connection.execute(update(pipelines).where(pipelines.c.name == name).values(ledger_offset=offset))

    def close_holdings(self, name: str, epoch: int, at: float) -> int:
        """End the holdings of a runtime that died without closing them; return how many."""
        with self.engine.begin() as connection:
            result = connection.execute(update(holdings).where(
                holdings.c.pipeline == name, holdings.c.epoch == epoch, holdings.c.end.is_(None),
            ).values(end=at))
        return result.rowcount

    def holdings(self, name: str, now: float | None = None) -> list[Holding]:
        """Return every worker the pipeline held; one still held is counted up to ``now``."""
        now = time.time() if now is None else now
        with self.engine.connect() as connection:
            rows = connection.execute(select(holdings).where(holdings.c.pipeline == name)
                                      .order_by(holdings.c.start)).mappings().all()
        return [Holding(row["kind"], f"{row['epoch']}/{row['resource_id']}", row["cores"], row["memory_mib"],
                        row["start"], row["end"] if row["end"] is not None else max(now, row["start"]))
                for row in rows]

    # -- starts and scaling --------------------------------------------------------------------

    def record_start(self, name: str, epoch: int, reason: str, requested_at: float) -> None:
        with self.engine.begin() as connection:
            connection.execute(insert(starts).values(pipeline=name, epoch=epoch, reason=reason,
                                                     requested_at=requested_at))

    def finish_start(self, name: str, epoch: int, ready_at: float | None, first_batch_at: float | None) -> None:
        with self.engine.begin() as connection:
            row = connection.execute(select(starts).where(starts.c.pipeline == name, starts.c.epoch == epoch)).mappings().first()
            if row is None or row["first_batch_at"] is not None:
                return
            values = {"ready_at": ready_at}
            if ready_at is not None:
                values["ready_seconds"] = ready_at - row["requested_at"]
            if first_batch_at is not None:
                values.update(first_batch_at=first_batch_at, seconds=first_batch_at - row["requested_at"])
            connection.execute(update(starts).where(starts.c.id == row["id"]).values(**values))

    def starts(self, name: str) -> list[dict]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(starts).where(starts.c.pipeline == name).order_by(starts.c.epoch)).mappings().all()
        return [dict(row) for row in rows]

    def record_scaling(self, name: str, executors_from: int | None, executors_to: int | None,
                       trigger: float | None, reason: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(insert(scaling_events).values(pipeline=name, time=time.time(), executors_from=executors_from,
                                                             executors_to=executors_to, trigger=trigger, reason=reason))

    def scaling_events(self, name: str, limit: int = 100) -> list[dict]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(scaling_events).where(scaling_events.c.pipeline == name)
                                      .order_by(scaling_events.c.id.desc()).limit(limit)).mappings().all()
        return [dict(row) for row in reversed(rows)]


def _pipeline(row) -> dict:
    record = dict(row)
    record["config"] = json.loads(record["config"])
    return record
