"""Unit tests of the rolling z-score detector, checked against a pandas reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sparkiot.anomaly import RollingZScore

KEY = ("d1", "temp")


def random_walk_with_spikes() -> np.ndarray:
    """Return a deterministic random walk of 2000 steps with spikes added at known indices."""
    rng = np.random.default_rng(7)
    series = 20.0 + np.cumsum(rng.normal(0.0, 1.0, 2000))
    for index, jump in [(150, 25.0), (400, -30.0), (777, 18.0), (1300, 40.0), (1800, -22.0)]:
        series[index] += jump
    return series


def pandas_reference(values: np.ndarray, window: int, warmup: int) -> pd.DataFrame:
    """Return the mean, sample stddev and z-score of each value against the previous ``window`` values.

    Each window is computed on its own with NumPy's two-pass formulas, because pandas' rolling
    variance is an online update that loses precision when an outlier leaves the window.
    """
    means, stddevs = [], []
    for index in range(len(values)):
        previous = values[max(index - window, 0):index]
        if len(previous) < warmup:
            means.append(np.nan)
            stddevs.append(np.nan)
        else:
            means.append(previous.mean())
            stddevs.append(previous.std(ddof=1))
    mean, stddev = pd.Series(means), pd.Series(stddevs)
    return pd.DataFrame({"mean": mean, "stddev": stddev, "score": (pd.Series(values) - mean) / stddev})


def run(detector: RollingZScore, values, key=KEY) -> dict:
    """Feed ``values`` to ``detector`` and return the scores it flagged, by index."""
    flagged = {}
    for index, value in enumerate(values):
        result = detector.score_and_learn(key, float(value))
        if result is not None:
            flagged[index] = result
    return flagged


@pytest.mark.parametrize(("window", "warmup", "threshold"), [(50, 20, 4.0), (60, 30, 3.0), (10, 10, 2.5)])
def test_matches_pandas_reference(window, warmup, threshold):
    values = random_walk_with_spikes()
    reference = pandas_reference(values, window, warmup)
    expected = reference[reference["score"].abs() >= threshold]

    flagged = run(RollingZScore(window=window, warmup=warmup, threshold=threshold), values)

    assert len(expected) > 0
    assert sorted(flagged) == list(expected.index)
    for index, row in expected.iterrows():
        assert flagged[index].score == pytest.approx(row["score"], rel=1e-9), index
        assert flagged[index].mean == pytest.approx(row["mean"], rel=1e-9, abs=1e-9), index
        assert flagged[index].stddev == pytest.approx(row["stddev"], rel=1e-9), index


def test_injected_spikes_flagged():
    flagged = run(RollingZScore(window=50, warmup=20, threshold=4.0), random_walk_with_spikes())

    assert {150, 400, 777, 1300, 1800} <= set(flagged)
    assert flagged[400].score < 0
    assert flagged[1300].score > 0


def test_warmup_suppresses_early():
    warmup = 10
    varied = [10.0, 11.0] * 10

    early = RollingZScore(window=30, warmup=warmup, threshold=3.0)
    late = RollingZScore(window=30, warmup=warmup, threshold=3.0)
    early_flags = run(early, varied[: warmup - 1] + [1000.0])
    late_flags = run(late, varied[:warmup] + [1000.0])

    assert early_flags == {}
    assert list(late_flags) == [warmup]


def test_warmup_exceeding_window():
    with pytest.raises(ValueError, match="warmup"):
        RollingZScore(window=5, warmup=6)


@pytest.mark.parametrize("jump", [500.0, -500.0])
def test_constant_series_no_alert(jump):
    detector = RollingZScore(window=20, warmup=5, threshold=3.0)
    values = [7.25] * 100 + [jump]

    assert run(detector, values) == {}


def test_threshold_boundary_inclusive():
    # The window [1, 3, 5] has mean 3 and sample stddev 2, so 9 scores exactly 3.
    values = [1.0, 3.0, 5.0, 9.0]

    flagged = run(RollingZScore(window=3, warmup=3, threshold=3.0), values)

    assert list(flagged) == [3]
    assert flagged[3].score == 3.0


def test_series_keys_independent():
    values = random_walk_with_spikes()[:400]
    alone = run(RollingZScore(window=50, warmup=20, threshold=4.0), values)

    detector = RollingZScore(window=50, warmup=20, threshold=4.0)
    mixed = {}
    for index, value in enumerate(values):
        detector.score_and_learn(("d2", "temp"), 1000.0 + (index % 7) * 50.0)
        result = detector.score_and_learn(KEY, float(value))
        if result is not None:
            mixed[index] = result

    assert len(alone) > 0
    assert mixed == alone
    assert len(detector) == 2


def test_other_key_not_warmup():
    detector = RollingZScore(window=10, warmup=3, threshold=3.0)
    for value in [1.0, 2.0, 1.0, 2.0, 1.0]:
        detector.score_and_learn(("d2", "temp"), value)

    assert detector.score_and_learn(KEY, 1000.0) is None


def test_learn_counts_toward_warmup():
    values = [10.0, 11.0] * 5
    scored = RollingZScore(window=20, warmup=10, threshold=3.0)
    learned = RollingZScore(window=20, warmup=10, threshold=3.0)
    run(scored, values)
    for value in values:
        learned.learn(KEY, value)

    expected = scored.score_and_learn(KEY, 100.0)
    result = learned.score_and_learn(KEY, 100.0)

    assert expected is not None
    assert result == expected


# Edge cases that once broke: each test states the correct behaviour.


def test_constant_window_after_change():
    detector = RollingZScore(window=5, warmup=3, threshold=4.0)
    values = [0.3, 0.6, 0.9] + [0.1] * 10 + [0.2]

    flagged = run(detector, values)

    # The last reading is judged against a window of five 0.1 readings, whose stddev is 0.
    assert 13 not in flagged


def test_level_far_from_first_value():
    rng = np.random.default_rng(7)
    values = np.concatenate([[0.0], 1e6 + rng.normal(0.0, 0.01, 200)])
    window = 50
    # A threshold of 0 returns a score for every reading whose window has a nonzero stddev.
    flagged = run(RollingZScore(window=window, warmup=20, threshold=0.0), values)
    reference = pandas_reference(values, window, 20)

    for index in range(window + 1, len(values)):
        assert index in flagged, index
        assert flagged[index].score == pytest.approx(reference["score"][index], rel=1e-6, abs=1e-6), index
