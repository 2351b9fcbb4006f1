"""The bill of a known executor timeline, priced to the cent on each platform's table."""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal

import pytest
import yaml

from sparkiot.config import ConfigError
from sparkiot.serverless.metering import DEFAULT_PRICES, Holding, billed_seconds, format_bill, load_prices, price

HOUR = 3600.0

# A driver for ten hours, and an executor that lived 30 s, under every minimum. Another executor
# lived three hours and half a second. The last has two cores and 20 GiB, beyond Dataproc's
# 8 GB per vCPU.
TIMELINE = [
    Holding("driver", "driver", 1, 1408, 1000.0, 1000.0 + 10 * HOUR + 0.4),
    Holding("executor", "executor-1", 1, 896, 1010.0, 1040.0),
    Holding("executor", "executor-2", 1, 896, 1020.0, 1020.0 + 3 * HOUR + 0.5),
    Holding("executor", "executor-3", 2, 20480, 1050.0, 1050.0 + 2 * HOUR),
]


def rates() -> dict:
    """The table's figures, read straight from the data file."""
    table = yaml.safe_load(DEFAULT_PRICES.read_text())["platforms"]
    return {key: {name: Decimal(str(rate["usd"])) for name, rate in platform["rates"].items()} for key, platform in table.items()}


def cents(amount: Decimal) -> Decimal:
    return amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def test_emr_bill_per_second_minute_minimum():
    r = rates()["emr_serverless"]
    # Seconds billed: ceil to the second, at least 60.
    billed = [36001, 60, 10801, 7200]
    expected = sum(
        (Decimal(cores) * r["vcpu_hour"] + Decimal(mib) / 1024 * r["gb_hour"]) * Decimal(seconds) / 3600
        for (cores, mib), seconds in zip([(1, 1408), (1, 896), (1, 896), (2, 20480)], billed)
    )
    bill = price(TIMELINE, load_prices(), "emr_serverless")
    assert [line.billed_seconds for line in bill.lines] == billed
    assert bill.total == cents(expected)
    # By hand: 17.017222 vCPU-hours x 0.052624 + 56.390208 GB-hours x 0.0057785 = 1.2214.
    assert bill.total == Decimal("1.22")


def test_dataproc_bill_memory_weights():
    r = rates()["dataproc_serverless"]["dcu_hour"]
    billed = [36001, 60, 10801, 7200]
    dcus = [
        Decimal("0.6") + Decimal("0.1") * Decimal(1408) / 1024,
        Decimal("0.6") + Decimal("0.1") * Decimal(896) / 1024,
        Decimal("0.6") + Decimal("0.1") * Decimal(896) / 1024,
        # 2 vCPU: 16 GB at 0.1 DCU, the other 4 GB at 0.2 DCU.
        2 * Decimal("0.6") + 16 * Decimal("0.1") + 4 * Decimal("0.2"),
    ]
    expected = sum(d * Decimal(s) / 3600 * r for d, s in zip(dcus, billed))
    bill = price(TIMELINE, load_prices(), "dataproc_serverless")
    assert bill.total == cents(expected)
    assert bill.units()["dcu_hours"] == sum(d * Decimal(s) / 3600 for d, s in zip(dcus, billed))


def test_synapse_bill_per_started_minute():
    r = rates()["synapse"]["vcore_hour"]
    # Minutes started: 601, 1, 181, 120.
    billed = [601 * 60, 60, 181 * 60, 120 * 60]
    expected = sum(Decimal(c) * Decimal(s) / 3600 * r for c, s in zip([1, 1, 1, 2], billed))
    bill = price(TIMELINE, load_prices(), "synapse")
    assert [line.billed_seconds for line in bill.lines] == billed
    assert bill.total == cents(expected)


def test_billed_seconds_rounding_and_minimums():
    table = load_prices()
    emr, synapse = table.platforms["emr_serverless"], table.platforms["synapse"]
    assert billed_seconds(0.2, emr) == 60
    assert billed_seconds(60.0, emr) == 60
    assert billed_seconds(60.0000000001, emr) == 60
    assert billed_seconds(60.2, emr) == 61
    assert billed_seconds(61.0, synapse) == 120
    assert billed_seconds(120.0, synapse) == 120


def test_user_price_table_replaces_platform(tmp_path):
    override = tmp_path / "prices.yaml"
    override.write_text(yaml.safe_dump({"platforms": {"synapse": {
        "title": "Synapse, negotiated", "model": "vcore", "region": "westeurope", "increment_seconds": 60,
        "minimum_seconds": 300, "rates": {"vcore_hour": {"usd": 0.1, "source": "our contract", "date": "2026-12-01"}}}}}))
    table = load_prices(override)
    assert table.platforms["synapse"].region == "westeurope"
    assert table.platforms["emr_serverless"].rates["vcpu_hour"].usd == rates()["emr_serverless"]["vcpu_hour"]
    bill = price([Holding("executor", "e", 2, 1024, 0.0, 30.0)], table, "synapse")
    # Five minutes minimum at 2 vCores and $0.10 per vCore-hour.
    assert bill.usd == Decimal(2) * Decimal(300) / 3600 * Decimal("0.1")


def test_rates_name_source_and_date():
    for platform in load_prices().platforms.values():
        for rate in platform.rates.values():
            assert rate.source.startswith("https://")
            assert len(rate.date) == 10


@pytest.mark.parametrize(
    "platform, message",
    [
        ({"title": "x", "model": "dcu", "region": "r", "increment_seconds": 1, "minimum_seconds": 60,
          "rates": {"dcu_hour": {"usd": 1, "source": "s", "date": "2026-01-01"}}}, "dcu_per_vcpu"),
        ({"title": "x", "model": "vcpu_memory", "region": "r", "increment_seconds": 1, "minimum_seconds": 60,
          "rates": {"vcpu_hour": {"usd": 1, "source": "s", "date": "2026-01-01"}}}, "gb_hour"),
        ({"title": "x", "model": "vcore", "region": "r", "increment_seconds": 0, "minimum_seconds": 60,
          "rates": {"vcore_hour": {"usd": 1, "source": "s", "date": "2026-01-01"}}}, "increment_seconds"),
        ({"title": "x", "model": "vcore", "region": "r", "increment_seconds": 1, "minimum_seconds": 60,
          "rates": {"vcore_hour": {"usd": -1, "source": "s", "date": "2026-01-01"}}}, "usd"),
        ({"title": "x", "model": "vcore", "region": "r", "increment_seconds": 1, "minimum_seconds": 60,
          "rates": {"vcore_hour": {"usd": 1, "source": "s", "date": "last week"}}}, "date"),
    ],
)
def test_invalid_price_table_names_field(tmp_path, platform, message):
    path = tmp_path / "prices.yaml"
    path.write_text(yaml.safe_dump({"platforms": {"mine": platform}}))
    with pytest.raises(ConfigError) as error:
        load_prices(path)
    assert message in str(error.value)


def test_unknown_platform_lists_known_ones():
    with pytest.raises(ConfigError) as error:
        price(TIMELINE, load_prices(), "lambda")
    assert "dataproc_serverless, emr_serverless, synapse" in str(error.value)


def test_printed_bill_shows_total_and_minimums():
    text = format_bill(price(TIMELINE, load_prices(), "emr_serverless"), "p")
    assert "total: $1.22" in text
    held = sum(h.end - h.start for h in TIMELINE)
    assert f"held {held:.1f} worker-seconds, billed {36001 + 60 + 10801 + 7200}" in text
    assert math.isclose(held, 10 * HOUR + 0.4 + 30 + 3 * HOUR + 0.5 + 2 * HOUR)
