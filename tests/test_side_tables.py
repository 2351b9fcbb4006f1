"""Side tables: landing logs copied to Parquet exactly once, by offset range."""

from __future__ import annotations

import pandas as pd

from sparkiot.ingest.landing import LandingLog
from sparkiot.readings import DEAD_LETTER_SCHEMA, DeadLetter, dead_letters_to_batch
from sparkiot.stream.side_tables import SideTable

DAY_US = 86_400_000_000
BASE_US = 1_700_000_000_000_000


def letters(count: int, start_us: int) -> list[DeadLetter]:
    return [DeadLetter(b"x", 1, "t", "invalid_json", f"letter {i}", start_us + i * DAY_US // 4) for i in range(count)]


def side_table(tmp_path) -> SideTable:
    return SideTable(
        name="dead_letters", log_dir=tmp_path / "log", table_dir=tmp_path / "table",
        checkpoint=tmp_path / "checkpoint.json", date_column="received_ts",
    )


def test_copies_each_record_once(tmp_path):
    log = LandingLog(tmp_path / "log", DEAD_LETTER_SCHEMA)
    log.append(dead_letters_to_batch(letters(6, BASE_US)))
    table = side_table(tmp_path)

    assert table.step() == 6
    assert table.step() == 0
    log.append(dead_letters_to_batch(letters(3, BASE_US + 2 * DAY_US)))
    assert table.step() == 3

    copied = pd.read_parquet(tmp_path / "table")
    assert len(copied) == 9
    expected_dates = sorted(pd.to_datetime([BASE_US + i * DAY_US // 4 for i in range(6)]
                                           + [BASE_US + 2 * DAY_US + i * DAY_US // 4 for i in range(3)], unit="us").strftime("%Y-%m-%d"))
    assert sorted(copied["date"].astype(str)) == expected_dates
    log.close()


def test_step_repeated_after_crash(tmp_path):
    log = LandingLog(tmp_path / "log", DEAD_LETTER_SCHEMA)
    log.append(dead_letters_to_batch(letters(5, BASE_US)))
    table = side_table(tmp_path)
    table.step()
    # A crash after the files were written but before the offset was recorded.
    (tmp_path / "checkpoint.json").unlink()

    assert table.step() == 5

    assert len(pd.read_parquet(tmp_path / "table")) == 5
    log.close()
