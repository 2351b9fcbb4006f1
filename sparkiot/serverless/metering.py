"""Cost metering: what a pipeline's Spark runtime held, priced with a platform's price table.

A :class:`Holding` is one worker (the driver or one executor) with the cores and memory it held
from ``start`` to ``end``. :func:`price` turns holdings into a :class:`Bill` the way the
serverless platforms bill workers. Each worker's held time is rounded up to the platform's
increment and raised to its minimum. That time is then priced at the worker's vCPU and memory
rates (EMR Serverless), its DCUs (Dataproc Serverless) or its vCores (Synapse).

Money is computed with :class:`decimal.Decimal` from the table's figures and rounded half up to
the cent once, on the total.

The price table is a YAML data file (``prices.yaml`` beside this module); a user's file replaces
whole platforms by key. No registry package carries the three platforms' serverless Spark prices
with their billing increments, so the table and the arithmetic are written here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sparkiot.config import ConfigError, read_yaml_mapping, validate_model

DEFAULT_PRICES = Path(__file__).with_name("prices.yaml")
_CENT = Decimal("0.01")
_HOUR = Decimal(3600)
_MIB_PER_GB = Decimal(1024)


class Rate(BaseModel):
    """One price: US dollars per unit, where the figure was read, and when."""

    model_config = ConfigDict(extra="forbid")
    usd: Decimal = Field(ge=0)
    source: str = Field(min_length=1)
    date: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$", description="the day the figure was read, YYYY-MM-DD")
    note: str = Field(default="", description="how the figure was obtained, where that matters")


_MODEL_RATES = {
    "vcpu_memory": ("vcpu_hour", "gb_hour"),
    "dcu": ("dcu_hour",),
    "vcore": ("vcore_hour",),
}


class Platform(BaseModel):
    """One platform's billing rules and rates."""

    model_config = ConfigDict(extra="forbid")
    title: str
    model: Literal["vcpu_memory", "dcu", "vcore"]
    region: str
    increment_seconds: int = Field(ge=1)
    minimum_seconds: int = Field(ge=0)
    rates: dict[str, Rate]
    dcu_per_vcpu: Decimal | None = None
    dcu_per_gb: Decimal | None = None
    dcu_per_gb_above: Decimal | None = None
    gb_per_vcpu_threshold: Decimal | None = None
    notes: str = ""

    @model_validator(mode="after")
    def _check_rates(self) -> "Platform":
        missing = [name for name in _MODEL_RATES[self.model] if name not in self.rates]
        if missing:
            raise ValueError(f"model {self.model!r} needs the rates {', '.join(missing)}")
        if self.model == "dcu":
            weights = ("dcu_per_vcpu", "dcu_per_gb", "dcu_per_gb_above", "gb_per_vcpu_threshold")
            absent = [name for name in weights if getattr(self, name) is None]
            if absent:
                raise ValueError(f"model 'dcu' needs {', '.join(absent)}")
        return self


class PriceTable(BaseModel):
    model_config = ConfigDict(extra="forbid")
    currency: Literal["USD"] = "USD"
    platforms: dict[str, Platform]


def load_prices(path: str | Path | None = None) -> PriceTable:
    """Return the built-in price table, with the platforms of the file at ``path`` replacing its own.

    Raises :class:`~sparkiot.config.ConfigError` naming the field and the value when a file is invalid.
    """
    base = validate_model(PriceTable, read_yaml_mapping(DEFAULT_PRICES, label="price table"),
                          origin=str(DEFAULT_PRICES), label="price table", example=str(DEFAULT_PRICES))
    if path is None:
        return base
    override = validate_model(PriceTable, read_yaml_mapping(path, label="price table"),
                              origin=str(path), label="price table", example=str(DEFAULT_PRICES))
    return PriceTable(currency=base.currency, platforms={**base.platforms, **override.platforms})


def platform(table: PriceTable, key: str) -> Platform:
    try:
        return table.platforms[key]
    except KeyError:
        raise ConfigError(f"unknown platform {key!r}; the price table has {', '.join(sorted(table.platforms))}") from None


@dataclass(frozen=True)
class Holding:
    """One worker held by a pipeline: ``kind`` is ``driver`` or ``executor``; times are Unix seconds."""

    kind: str
    resource_id: str
    cores: float
    memory_mib: int
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)


@dataclass(frozen=True)
class BillLine:
    holding: Holding
    billed_seconds: int
    units: dict[str, Decimal]
    usd: Decimal


@dataclass
class Bill:
    platform: str
    title: str
    region: str
    lines: list[BillLine] = field(default_factory=list)

    @property
    def usd(self) -> Decimal:
        """The exact total before rounding."""
        return sum((line.usd for line in self.lines), Decimal(0))

    @property
    def total(self) -> Decimal:
        """The total rounded half up to the cent."""
        return self.usd.quantize(_CENT, rounding=ROUND_HALF_UP)

    def units(self) -> dict[str, Decimal]:
        totals: dict[str, Decimal] = {}
        for line in self.lines:
            for name, amount in line.units.items():
                totals[name] = totals.get(name, Decimal(0)) + amount
        return totals

    def as_dict(self) -> dict:
        return {
            "platform": self.platform,
            "title": self.title,
            "region": self.region,
            "currency": "USD",
            "total": str(self.total),
            "exact": _exact(self.usd),
            "units": {name: str(amount) for name, amount in self.units().items()},
            "workers": len(self.lines),
            "held_seconds": round(sum(line.holding.seconds for line in self.lines), 3),
            "billed_seconds": sum(line.billed_seconds for line in self.lines),
        }


def _exact(amount: Decimal) -> str:
    return f"{amount.quantize(Decimal('1e-10'), rounding=ROUND_HALF_UP).normalize():f}"


def held_memory_mib(memory_bytes: int) -> int:
    """Return the memory in MiB that a Spark driver or executor container holds: heap plus Spark's default overhead.

    Spark adds ``max(384 MiB, 10%)`` of overhead to each container, and the platforms size
    workers to fit both.
    """
    mib = memory_bytes // 1024**2
    return mib + max(384, math.ceil(mib * 0.10))


def billed_seconds(seconds: float, rules: Platform) -> int:
    """Held seconds rounded up to the platform's increment, then raised to its minimum."""
    increment = rules.increment_seconds
    # A small tolerance keeps 60.0000001 s (float noise) from becoming a second increment.
    rounded = math.ceil(seconds / increment - 1e-9) * increment
    return max(rules.minimum_seconds, rounded)


def _line(holding: Holding, rules: Platform) -> BillLine:
    seconds = billed_seconds(holding.seconds, rules)
    hours = Decimal(seconds) / _HOUR
    cores = Decimal(str(holding.cores))
    gb = Decimal(holding.memory_mib) / _MIB_PER_GB
    if rules.model == "vcpu_memory":
        units = {"vcpu_hours": cores * hours, "gb_hours": gb * hours}
        usd = units["vcpu_hours"] * rules.rates["vcpu_hour"].usd + units["gb_hours"] * rules.rates["gb_hour"].usd
    elif rules.model == "dcu":
        threshold = rules.gb_per_vcpu_threshold * cores
        below, above = min(gb, threshold), max(gb - threshold, Decimal(0))
        dcus = cores * rules.dcu_per_vcpu + below * rules.dcu_per_gb + above * rules.dcu_per_gb_above
        units = {"dcu_hours": dcus * hours}
        usd = units["dcu_hours"] * rules.rates["dcu_hour"].usd
    else:
        units = {"vcore_hours": cores * hours}
        usd = units["vcore_hours"] * rules.rates["vcore_hour"].usd
    return BillLine(holding, seconds, units, usd)


def price(holdings: list[Holding], table: PriceTable, key: str) -> Bill:
    """Price ``holdings`` with the platform ``key`` of ``table``."""
    rules = platform(table, key)
    bill = Bill(key, rules.title, rules.region)
    bill.lines = [_line(holding, rules) for holding in holdings if holding.seconds > 0]
    return bill


def format_bill(bill: Bill, pipeline: str) -> str:
    """Format the bill for a terminal: the total, then the usage it comes from."""
    held_seconds = sum(line.holding.seconds for line in bill.lines)
    billed = sum(line.billed_seconds for line in bill.lines)
    drivers = sum(1 for line in bill.lines if line.holding.kind == "driver")
    lines = [
        f"pipeline {pipeline} on {bill.title} ({bill.region})",
        f"  total: ${bill.total} (exact {_exact(bill.usd)} USD)",
        f"  workers: {len(bill.lines)} ({drivers} driver, {len(bill.lines) - drivers} executor)",
        f"  held {held_seconds:.1f} worker-seconds, billed {billed} (increments and minimums applied)",
    ]
    for name, amount in bill.units().items():
        lines.append(f"  {name.replace('_', '-')}: {amount.quantize(Decimal('0.000001'))}")
    return "\n".join(lines)
