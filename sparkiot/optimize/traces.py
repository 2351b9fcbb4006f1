"""Load traces from real public series, scaled to readings per second, split by time.

Each source is a time series whose shape stands for an IoT load. The sources are taxi
passengers per 30 minutes in New York (NAB ``nyc_taxi.csv``) and a machine's temperature and an
autoscaling group's CPU (NAB ``machine_temperature_system_failure.csv`` and
``cpu_utilization_asg_misconfiguration.csv``). The fourth is the light level of an office whose
occupancy the UCI data set records. The files are read in
place from a data directory (``--data-dir``, or the ``SPARKIOT_TRACE_DATA`` environment variable);
sparkiot ships no copy of them.

A series is resampled to one value per simulator step, cut into whole days, and scaled so that
its busiest step is ``peak_rate`` readings per second, above a floor of ``floor`` times the peak
(sensors report something even at night). The last ``held_out`` share of each source's days is
kept for evaluation; training never uses them. :func:`inject` then adds, with a seed derived from
the trace's name, bursts (load multiplied for a few steps) and outages (no input for a few steps,
then the readings buffered at the edge arrive on top of the load as the uplink returns).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from sparkiot.config import ConfigError

SOURCES = {
    "taxi": "nab/realKnownCause/nyc_taxi.csv",
    "machine": "nab/realKnownCause/machine_temperature_system_failure.csv",
    "cpu": "nab/realKnownCause/cpu_utilization_asg_misconfiguration.csv",
    "occupancy": "uci-occupancy",
}
DATA_ENV = "SPARKIOT_TRACE_DATA"


@dataclass(frozen=True)
class Trace:
    """One day of load: ``rates[i]`` readings per second during step ``i``, which starts at ``start + i * trace_step``."""

    name: str
    source: str
    rates: np.ndarray = field(repr=False)
    start: pd.Timestamp
    trace_step: float
    events: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.rates)

    def day_fraction(self, step: int) -> float:
        """Return the time of day at the start of ``step``, as a fraction of the day."""
        moment = self.start + pd.Timedelta(seconds=step * self.trace_step)
        return (moment.hour * 3600 + moment.minute * 60 + moment.second) / 86_400


def data_dir(path: str | Path | None = None) -> Path:
    """Return the folder with ``nab/`` and ``uci-occupancy/``; raise when it is not given or absent."""
    chosen = path or os.environ.get(DATA_ENV)
    if not chosen:
        raise ConfigError(
            f"the traces are read from the NAB and UCI occupancy data sets: pass --data-dir DIR or set {DATA_ENV} "
            "to a folder holding nab/realKnownCause/ and uci-occupancy/"
        )
    folder = Path(chosen)
    if not folder.is_dir():
        raise ConfigError(f"trace data folder {folder} does not exist or is not a folder; pass the folder holding nab/ and uci-occupancy/")
    return folder


def read_source(folder: Path, source: str) -> pd.Series:
    """Return a source's raw values indexed by time, sorted, without duplicated times."""
    if source not in SOURCES:
        raise ConfigError(f"unknown trace source {source!r}; the sources are {', '.join(SOURCES)}")
    path = folder / SOURCES[source]
    try:
        series = _read_series(path, source)
    except (KeyError, ValueError, TypeError, pd.errors.ParserError) as exc:
        raise ConfigError(
            f"trace source {source}: cannot read {path}: {exc}; it needs the columns of the published data set "
            "(timestamp,value for NAB; date,Light for UCI occupancy)"
        ) from None
    series = series[~series.index.duplicated()].sort_index()
    series = series[np.isfinite(series.to_numpy())]
    if series.empty:
        raise ConfigError(f"trace source {source}: {path} has no finite values")
    return series


def _read_series(path: Path, source: str) -> pd.Series:
    if source == "occupancy":
        files = [path / name for name in ("datatest.txt", "datatraining.txt", "datatest2.txt")]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise ConfigError(f"trace source occupancy: missing {', '.join(missing)}")
        frame = pd.concat([pd.read_csv(f, usecols=["date", "Light"]) for f in files])
        return pd.Series(frame["Light"].to_numpy(float), index=pd.to_datetime(frame["date"]))
    if not path.is_file():
        raise ConfigError(f"trace source {source}: {path} does not exist")
    frame = pd.read_csv(path)
    return pd.Series(frame["value"].to_numpy(float), index=pd.to_datetime(frame["timestamp"]))


def days_of(series: pd.Series, trace_step: float) -> list[tuple[pd.Timestamp, np.ndarray]]:
    """Resample to ``trace_step`` seconds (mean of a step, linear between samples) and cut whole days."""
    step = pd.Timedelta(seconds=trace_step)
    grid = pd.date_range(series.index[0].ceil("D"), series.index[-1].floor("D"), freq=step, inclusive="left")
    if len(grid) == 0:
        return []
    # Interpolate on the union of both time axes, then keep the grid points.
    joined = series.reindex(series.index.union(grid)).interpolate(method="time", limit_area="inside")
    values = joined.reindex(grid).to_numpy(float)
    per_day = int(round(86_400 / trace_step))
    days = []
    for first in range(0, len(values) - per_day + 1, per_day):
        chunk = values[first:first + per_day]
        if np.isfinite(chunk).all():
            days.append((grid[first], chunk))
    return days


def load_traces(
    folder: str | Path | None,
    *,
    sources: tuple[str, ...] = tuple(SOURCES),
    trace_step: float = 600.0,
    peak_rate: float = 5000.0,
    floor: float = 0.05,
    held_out: float = 0.3,
) -> tuple[list[Trace], list[Trace]]:
    """Return ``(training, held_out)`` day traces of every source, scaled to readings per second.

    The scale is set per source on its training days, so a held-out day can peak above
    ``peak_rate``, as a real day can exceed what the past showed.
    """
    folder = data_dir(folder)
    training: list[Trace] = []
    evaluation: list[Trace] = []
    for source in sources:
        days = days_of(read_source(folder, source), trace_step)
        if len(days) < 2:
            raise ConfigError(f"trace source {source}: fewer than two whole days in the data")
        cut = len(days) - max(1, int(round(len(days) * held_out)))
        train_values = np.concatenate([values for _, values in days[:cut]])
        low, high = float(np.min(train_values)), float(np.max(train_values))
        span = high - low if high > low else 1.0
        for index, (start, values) in enumerate(days):
            shape = np.clip((values - low) / span, 0.0, None)
            rates = peak_rate * (floor + (1.0 - floor) * shape)
            trace = Trace(f"{source}-{start:%Y-%m-%d}", source, rates, start, trace_step)
            (training if index < cut else evaluation).append(trace)
    return training, evaluation


def _seed(name: str, salt: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{name}/{salt}".encode()).digest()[:8], "little")


def inject(trace: Trace, *, bursts: float = 1.0, outages: float = 0.5, salt: int = 0) -> Trace:
    """Return ``trace`` with bursts and outages added; the expected count of each per day is given.

    A burst multiplies the load by 1.5 to 2.5 for 1 to 3 steps. An outage stops the input for 1
    to 6 steps. The readings it held back arrive over the next 2 steps, on top of the load.
    The same trace name and ``salt`` always give the same events.
    """
    rng = np.random.default_rng(_seed(trace.name, salt))
    rates = trace.rates.copy()
    events = []
    steps = len(rates)
    for _ in range(rng.poisson(bursts)):
        at, length, factor = int(rng.integers(0, steps)), int(rng.integers(1, 4)), float(rng.uniform(1.5, 2.5))
        rates[at:at + length] *= factor
        events.append(f"burst x{factor:.1f} at step {at} for {length}")
    for _ in range(rng.poisson(outages)):
        at, length = int(rng.integers(0, steps - 1)), int(rng.integers(1, 7))
        held = float(rates[at:at + length].sum())
        rates[at:at + length] = 0.0
        after = slice(at + length, min(steps, at + length + 2))
        width = after.stop - after.start
        if width:
            rates[after] += held / width
        events.append(f"outage at step {at} for {length}")
    return replace(trace, rates=rates, events=tuple(events))
