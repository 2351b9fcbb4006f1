"""The measured constants of the optimizer's simulator, and what a worker costs per second.

A :class:`Calibration` describes one streaming pipeline on one cluster. It gives how long a
micro-batch takes (a fixed overhead plus its rows over the throughput of the executors held) and
how long a requested executor takes to run its first task. It also gives the trigger and the
sizes of the driver and the executors that the platforms bill. ``calibration.json`` beside this module contains the figures
measured on the project's benchmark machine by ``benchmarks/optimizer_calibration.py``; a user
measures their own cluster with that script and passes the file to ``sparkiot optimize``.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, replace
from pathlib import Path

from sparkiot.config import ConfigError

DEFAULT_CALIBRATION = Path(__file__).with_name("calibration.json")


@dataclass(frozen=True)
class Calibration:
    """The simulator's constants; rates are readings per second and times are seconds.

    ``throughput[n - 1]`` is the readings per second that a micro-batch processes, beyond its
    fixed overhead, while ``n`` executors run it. The list covers 1 to ``max_executors``; a
    measured cluster where one more executor adds nothing repeats the previous figure.
    ``batch_overhead`` is either one overhead for every executor count or a list with one
    overhead per count, 1 to ``max_executors``.
    """

    batch_overhead: float | tuple[float, ...]
    throughput: tuple[float, ...]
    executor_start: float
    trigger: float
    executor_cores: int = 1
    executor_memory_mib: int = 896
    driver_cores: int = 1
    driver_memory_mib: int = 1408
    measured: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not self.throughput:
            raise ConfigError("calibration throughput must list the readings per second of 1, 2, ... executors")
        for count, rate in enumerate(self.throughput, start=1):
            if not _is_number(rate) or rate <= 0:
                raise ConfigError(f"calibration throughput of {count} executors must be a positive number, got {rate!r}")
        if isinstance(self.batch_overhead, (list, tuple)):
            overheads = tuple(self.batch_overhead)
            if len(overheads) != len(self.throughput):
                raise ConfigError(f"calibration batch_overhead lists {len(overheads)} overheads but throughput lists "
                                  f"{len(self.throughput)} executor counts; give one overhead per count or a single number")
            for count, value in enumerate(overheads, start=1):
                if not _is_number(value) or value < 0:
                    raise ConfigError(f"calibration batch_overhead of {count} executors must be a finite number of "
                                      f"seconds >= 0, got {value!r}")
            # The frozen dataclass stores a tuple, so that calibrations compare by value.
            object.__setattr__(self, "batch_overhead", overheads)
        numbers = {"executor_start": self.executor_start, "trigger": self.trigger}
        if not isinstance(self.batch_overhead, tuple):
            numbers["batch_overhead"] = self.batch_overhead
        for name, value in numbers.items():
            if not _is_number(value) or value < 0:
                raise ConfigError(f"calibration {name} must be a finite number of seconds >= 0, got {value!r}")
        if self.trigger <= 0:
            raise ConfigError(f"calibration trigger must be above 0 seconds, got {self.trigger!r}")
        if not isinstance(self.measured, dict):
            raise ConfigError(f"calibration measured must be a JSON object describing the measurement, got {self.measured!r}")
        for name in ("executor_cores", "executor_memory_mib", "driver_cores", "driver_memory_mib"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"calibration {name} must be a whole number >= 1, got {value!r}")

    @property
    def max_executors(self) -> int:
        return len(self.throughput)

    @property
    def overheads(self) -> tuple[float, ...]:
        """The fixed overhead of a micro-batch run by 1, 2, ... ``max_executors`` executors."""
        if isinstance(self.batch_overhead, tuple):
            return self.batch_overhead
        return (float(self.batch_overhead),) * self.max_executors

    def as_dict(self) -> dict:
        document = asdict(self)
        document["throughput"] = list(self.throughput)
        if isinstance(self.batch_overhead, tuple):
            document["batch_overhead"] = list(self.batch_overhead)
        return document


def _is_number(value: object) -> bool:
    """Tell whether ``value`` is a finite int or float and not a bool."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        # An int beyond the float range is no usable figure either.
        return False


def scaled_out(calibration: Calibration, max_executors: int) -> Calibration:
    """Return ``calibration`` with each executor adding the first executor's throughput, up to ``max_executors``.

    On a cluster of separate machines each executor brings its own cores, so throughput grows
    with the executor count until something shared (the driver, the source, the sink) limits
    it. A calibration measured on a small machine cannot show that growth, because there every
    executor shares the same cores. This function builds the larger cluster's model from the
    same measured per-executor rate, one-executor overhead and start delay.
    """
    if max_executors < 1:
        raise ConfigError(f"max_executors must be 1 or more, got {max_executors}")
    first = calibration.throughput[0]
    return replace(calibration, batch_overhead=calibration.overheads[0],
                   throughput=tuple(first * count for count in range(1, max_executors + 1)),
                   measured={**calibration.measured, "scaled_out": f"throughput of n executors = n x {first:g}"})


def read_json_object(path: Path, label: str) -> dict:
    """Return the JSON object in ``path``; raise :class:`ConfigError` naming ``label`` when it is unreadable or not an object."""
    try:
        document = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{label}: {path} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{label}: {path} must hold a JSON object")
    return document


def load_calibration(path: str | Path | None = None) -> Calibration:
    """Read a calibration file (JSON); the default is the one measured on the benchmark machine."""
    path = Path(path) if path is not None else DEFAULT_CALIBRATION
    document = read_json_object(path, f"calibration file (such as {DEFAULT_CALIBRATION})")
    known = set(Calibration.__dataclass_fields__)
    unknown = sorted(set(document) - known)
    if unknown:
        raise ConfigError(f"calibration file {path}: unknown fields {', '.join(unknown)}; the fields are {', '.join(sorted(known))}")
    required = [name for name, spec in Calibration.__dataclass_fields__.items()
                if spec.default is MISSING and spec.default_factory is MISSING]
    missing = [name for name in required if name not in document]
    if missing:
        raise ConfigError(f"calibration file {path} lacks the field {', '.join(missing)}; "
                          f"measure one with benchmarks/optimizer_calibration.py --write-calibration")
    throughput = document.pop("throughput")
    if not isinstance(throughput, list):
        raise ConfigError(f"calibration file {path}: throughput must be a list of readings per second, got {throughput!r}")
    try:
        return Calibration(throughput=tuple(throughput), **document)
    except ConfigError as exc:
        raise ConfigError(f"calibration file {path}: {exc}; correct the file or measure it again") from None
    except TypeError as exc:
        raise ConfigError(f"calibration file {path}: {exc}") from None


@dataclass(frozen=True)
class WorkerPrices:
    """US dollars per second that one driver and one executor cost on a platform, before minimums."""

    platform: str
    driver: float
    executor: float
    increment_seconds: int
    minimum_seconds: int


def worker_prices(calibration: Calibration, platform: str = "emr_serverless", prices_path: str | Path | None = None) -> WorkerPrices:
    """Price an hour of the calibrated driver and executor with the control plane's price table."""
    from sparkiot.serverless.metering import Holding, load_prices, price
    from sparkiot.serverless.metering import platform as platform_rules

    table = load_prices(prices_path)
    rules = platform_rules(table, platform)
    hour = 3600.0
    driver = price([Holding("driver", "d", calibration.driver_cores, calibration.driver_memory_mib, 0.0, hour)], table, platform)
    executor = price([Holding("executor", "e", calibration.executor_cores, calibration.executor_memory_mib, 0.0, hour)], table, platform)
    return WorkerPrices(platform, float(driver.usd) / hour, float(executor.usd) / hour, rules.increment_seconds, rules.minimum_seconds)
