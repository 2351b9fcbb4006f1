"""The optimizer: the micro-batch model against an independent event loop, the environment, the oracle
against brute force, the traces, the baselines and the shipped learned policies."""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from gymnasium.utils.env_checker import check_env

from sparkiot.cli import main
from sparkiot.config import ConfigError, ServerlessConfig
from sparkiot.optimize.calibration import Calibration, load_calibration, scaled_out, worker_prices
from sparkiot.optimize.env import Objective, ScalingEnv, Simulation, default_levels, latency_quantile, run_policy
from sparkiot.optimize.model import advance, backlog_levels, latency_edges
from sparkiot.optimize.oracle import PlannedPolicy, optimum, step_objective
from sparkiot.optimize.policies import TRAINED, LearnedPolicy, PIDPolicy, StaticPolicy, ThresholdPolicy, sized_for
from sparkiot.optimize.traces import Trace, inject, load_traces, read_source
from sparkiot.serverless.scaling import Metrics, load_policy

CAL = Calibration(batch_overhead=2.0, throughput=(4000.0, 7000.0, 9000.0), executor_start=8.0, trigger=1.0)
# The same cluster where each executor count has its own batch overhead.
PER_COUNT = replace(CAL, batch_overhead=(1.5, 2.5, 4.0))
PRICES = worker_prices(CAL)
OBJECTIVE = Objective(latency_target=10.0, penalty=4.0, step_seconds=60.0)
LEVELS = backlog_levels(10 * 60 * CAL.throughput[-1])


def trace(rates, name="synthetic") -> Trace:
    return Trace(name, "synthetic", np.asarray(rates, dtype=float), pd.Timestamp("2014-07-01"), 600.0)


def reference_step(rate: float, executors: int, step: float = 60.0, calibration: Calibration = CAL) -> dict:
    """The same micro-batch rules as an event loop over single batches, with no backlog and no scaling."""
    mu = calibration.throughput[executors - 1]
    overhead = calibration.batch_overhead
    if isinstance(overhead, tuple):
        overhead = overhead[executors - 1]
    free, since, previous_start, oldest = 0.0, 0.0, -math.inf, 0.0
    processed, batches, worst = 0.0, 0, 0.0
    while True:
        start = max(free, previous_start + calibration.trigger)
        if start >= step:
            return {"processed": processed, "batches": batches, "worst": worst, "waiting": rate * (step - since)}
        rows = rate * (start - since)
        if rows <= 0:
            # A trigger with nothing to read runs no batch.
            free = since = previous_start = oldest = start
            continue
        end = start + overhead + rows / mu
        if end > step:
            done = min(max((step - start - overhead) * mu, 0.0), rows)
            return {"processed": processed + done, "batches": batches + 1, "worst": max(worst, step - oldest),
                    "waiting": rows - done + rate * (step - start)}
        processed, batches, worst = processed + rows, batches + 1, max(worst, end - oldest)
        free, since, previous_start, oldest = end, start, start, start


@pytest.mark.parametrize("calibration", [CAL, PER_COUNT], ids=["one-overhead", "overhead-per-count"])
@pytest.mark.parametrize("rate,executors", [(50.0, 1), (1500.0, 1), (3000.0, 2), (6500.0, 3), (3900.0, 1)])
def test_step_matches_an_event_loop_of_single_batches(rate, executors, calibration):
    result = advance(calibration, executors, executors, 0.0, rate, rate, LEVELS)
    expected = reference_step(rate, executors, calibration=calibration)
    assert int(result.batches) == expected["batches"]
    assert float(result.processed) == pytest.approx(expected["processed"], rel=1e-9)
    assert float(result.worst_latency) == pytest.approx(expected["worst"], rel=1e-9)
    assert float(result.waiting) == pytest.approx(expected["waiting"], rel=1e-9)


def test_step_conserves_readings_and_rounds_the_backlog_up():
    lanes_old, lanes_new, backlog = np.meshgrid([1, 2, 3], [1, 2, 3], [0.0, 500.0, 80_000.0, 2e6], indexing="ij")
    result = advance(CAL, lanes_old, lanes_new, backlog, 5000.0, 4000.0, LEVELS)
    assert np.allclose(result.processed + result.waiting, backlog + 5000.0 * 60.0)
    carried = np.minimum(result.waiting, LEVELS[-1])
    assert np.all(result.backlog >= carried - 1e-6)
    # The grid's next level down would be below what waits: the rounding is to the nearest level up.
    below = LEVELS[np.maximum(result.backlog_level - 1, 0)]
    assert np.all((below < carried) | (result.backlog_level == 0))
    assert np.allclose(result.dropped, np.clip(result.waiting - LEVELS[-1], 0, None))


def test_steady_cycle_follows_the_batch_overhead():
    # With every batch longer than the trigger, batches run back to back: C = overhead / (1 - rate / throughput).
    rate, executors = 2000.0, 1
    cycle = CAL.batch_overhead / (1 - rate / CAL.throughput[executors - 1])
    result = advance(CAL, executors, executors, 0.0, rate, rate, LEVELS, step_seconds=3600.0)
    assert int(result.batches) == pytest.approx(3600.0 / cycle, abs=2)


def test_new_executors_add_capacity_after_the_start_delay():
    slow = advance(CAL, 1, 1, 200_000.0, 3000.0, 3000.0, LEVELS)
    scaled = advance(CAL, 1, 3, 200_000.0, 3000.0, 3000.0, LEVELS)
    instant = advance(replace(CAL, executor_start=0.0), 1, 3, 200_000.0, 3000.0, 3000.0, LEVELS)
    assert float(slow.processed) < float(scaled.processed) < float(instant.processed)


def test_scaling_uses_new_count_overhead():
    arguments = (200_000.0, 3000.0, 3000.0, LEVELS)
    at_once = advance(replace(PER_COUNT, executor_start=0.0), 1, 3, *arguments)
    three_throughout = advance(PER_COUNT, 3, 3, *arguments)
    assert int(at_once.batches) == int(three_throughout.batches)
    assert float(at_once.processed) == pytest.approx(float(three_throughout.processed), rel=1e-12)
    # An executor that starts after the step ends leaves the step as it was with one executor.
    never = advance(replace(PER_COUNT, executor_start=61.0), 1, 3, *arguments)
    alone = advance(PER_COUNT, 1, 1, *arguments)
    assert int(never.batches) == int(alone.batches)
    assert float(never.processed) == pytest.approx(float(alone.processed), rel=1e-12)


def test_lead_in_shows_a_loaded_pipeline():
    seen = []

    class Recorder:
        def decide(self, metrics):
            seen.append(metrics)
            return None

    day = trace(np.full(3, 3900.0))
    record = run_policy(Recorder(), day, CAL, PRICES, OBJECTIVE, lead_in=True)
    one_step = advance(CAL, 1, 1, 0.0, 3900.0, 3900.0, default_levels(CAL, OBJECTIVE))
    assert float(one_step.backlog) > 0
    assert seen[0].backlog == int(round(float(one_step.backlog)))
    assert seen[0].time == 0.0
    assert len(record.executors) == 3
    run_policy(Recorder(), day, CAL, PRICES, OBJECTIVE)
    assert seen[3].backlog == 0


def test_latency_histogram_counts_every_stored_reading():
    result = advance(CAL, 1, 1, 0.0, 1000.0, 1000.0, LEVELS, edges=latency_edges())
    assert result.latency_histogram.sum() == pytest.approx(float(result.processed))
    p100 = latency_quantile(result.latency_histogram, 1.0)
    assert p100 == pytest.approx(float(result.worst_latency), rel=0.05)


def test_environment_passes_the_gymnasium_checker():
    days = [trace(np.linspace(100, 8000, 12)), trace(np.full(12, 3000.0), "flat")]
    for mode in ("delta", "target"):
        env = ScalingEnv(days, CAL, PRICES, OBJECTIVE, mode=mode)
        check_env(env, skip_render_check=True)
        assert env.action_space.n == (3 if mode == "delta" else 3)


def test_environment_reward_is_cost_and_penalty():
    env = ScalingEnv([trace([200.0, 200.0, 8500.0])], CAL, PRICES, OBJECTIVE, mode="target")
    env.reset(seed=1)
    rewards = [env.step(action)[1:] for action in (0, 2, 0)]
    reference = (PRICES.driver + 3 * PRICES.executor) * 60
    first, second, third = rewards
    assert first[0] == pytest.approx(-(PRICES.driver + PRICES.executor) * 60 / reference)
    assert second[0] == pytest.approx(-1.0)
    # 8,500 readings/s on one executor of 4,000/s: late, so the penalty applies; the episode ends.
    assert third[3]["over_target"] is True
    assert third[0] == pytest.approx(-(PRICES.driver + PRICES.executor) * 60 / reference - 4.0)
    assert third[1] is True


def _objective_of(record) -> float:
    return float(step_objective(np.asarray(record.executors), np.asarray(record.worst_latency), PRICES, OBJECTIVE,
                                CAL.max_executors).sum())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_oracle_equals_brute_force_on_short_traces(seed):
    rng = np.random.default_rng(seed)
    day = trace(rng.uniform(0, 9000, size=5))
    best = min(_objective_of(run_policy(PlannedPolicy(list(plan)), day, CAL, PRICES, OBJECTIVE, record_latencies=False))
               for plan in itertools.product(range(1, 4), repeat=5))
    plan = optimum(day, CAL, PRICES, OBJECTIVE)
    assert plan.objective == pytest.approx(best, rel=1e-12)
    replayed = run_policy(PlannedPolicy(plan.executors), day, CAL, PRICES, OBJECTIVE, record_latencies=False)
    assert _objective_of(replayed) == pytest.approx(best, rel=1e-12)


def test_no_baseline_beats_the_oracle():
    rng = np.random.default_rng(7)
    day = trace(np.clip(4000 + 3000 * np.sin(np.arange(48) / 6) + rng.normal(0, 800, 48), 0, None))
    bound = optimum(day, CAL, PRICES, OBJECTIVE).objective
    policies = [StaticPolicy(executors=n) for n in (1, 2, 3)] + [
        ThresholdPolicy(max_executors=3), PIDPolicy(max_executors=3)]
    for policy in policies:
        assert _objective_of(run_policy(policy, day, CAL, PRICES, OBJECTIVE, record_latencies=False)) >= bound - 1e-9


def test_static_size_for_a_rate():
    # In steady state a batch cycle is C = overhead / (1 - rate / throughput) and the worst latency
    # about 2C: a reading arriving as a batch starts waits one cycle, then its own batch takes one.
    # The batch split at each step boundary adds up to one more overhead.
    assert sized_for(1500.0, CAL, OBJECTIVE) == 1  # 1 executor: 2C = 6.4 s
    assert sized_for(2500.0, CAL, OBJECTIVE) == 2  # 1 executor: 2C = 10.7 s; 2: 2C = 6.2 s
    assert sized_for(3500.0, CAL, OBJECTIVE) == 3  # 2 executors: 2C = 8 s, over 10 s with the split
    assert sized_for(9000.0, CAL, OBJECTIVE) == CAL.max_executors  # no count keeps up


def test_threshold_doubles_then_removes_one():
    policy = ThresholdPolicy(latency_target=10.0, scale_up=0.6, scale_down=0.3, idle_decisions=2, max_executors=8)
    busy = Metrics(0, 5000, 1000, 4.0, 1.0, 20_000, None, 1, 1, 1)
    assert policy.decide(busy).executors == 2
    assert policy.decide(replace(busy, target_executors=2)).executors == 4
    calm = Metrics(0, 100, 5000, 0.5, 1.0, 0, None, 4, 4, 1)
    assert policy.decide(calm) is None
    assert policy.decide(calm).executors == 3


def test_learned_policy_loads_through_the_scaling_interface():
    config = ServerlessConfig(runtime="standalone", max_executors=8, scaling={
        "policy": "sparkiot.optimize.policies:LearnedPolicy", "options": {"policy_file": "ppo-seed0"}})
    policy = load_policy(config)
    assert isinstance(policy, LearnedPolicy)
    assert policy.meta["algorithm"] == "ppo"


def test_learned_policy_names_a_missing_file():
    config = ServerlessConfig(runtime="standalone", scaling={
        "policy": "sparkiot.optimize.policies:LearnedPolicy", "options": {"policy_file": "no-such-policy"}})
    with pytest.raises(ConfigError, match="no-such-policy.*shipped name"):
        load_policy(config)


@pytest.mark.parametrize("name", ["dqn-seed0", "ppo-seed0"])
def test_shipped_policy_acts_deterministically(name):
    meta = json.loads((TRAINED / f"{name}.json").read_text())
    calibration = Calibration(**{**meta["calibration"], "throughput": tuple(meta["calibration"]["throughput"])})
    prices = worker_prices(calibration)
    objective = Objective(**meta["objective"])
    rng = np.random.default_rng(3)
    day = trace(np.clip(meta["rate_scale"] * (0.3 + 0.2 * np.sin(np.arange(36) / 5)) + rng.normal(0, 200, 36), 0, None))
    first = run_policy(LearnedPolicy(policy_file=name), day, calibration, prices, objective)
    second = run_policy(LearnedPolicy(policy_file=TRAINED / f"{name}.zip"), day, calibration, prices, objective)
    assert first.executors == second.executors
    assert first.total_cost == second.total_cost
    assert set(first.executors) <= set(range(1, calibration.max_executors + 1))


def test_calibration_rejects_bad_values(tmp_path):
    with pytest.raises(ConfigError, match="throughput of 2 executors must be a positive number, got -5"):
        Calibration(batch_overhead=1.0, throughput=(10.0, -5.0), executor_start=1.0, trigger=1.0)
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"batch_overhead": 1, "throughput": [5], "executor_start": 1, "trigger": 1, "speed": 3}))
    with pytest.raises(ConfigError, match="unknown fields speed"):
        load_calibration(path)
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="calibration.json must hold a JSON object"):
        load_calibration(path)
    with pytest.raises(ConfigError, match="batch_overhead lists 2 overheads but throughput lists 3 executor counts"):
        replace(CAL, batch_overhead=(1.0, 2.0))
    with pytest.raises(ConfigError, match="batch_overhead of 2 executors must be a finite number of seconds >= 0, got nan"):
        replace(CAL, batch_overhead=(1.0, math.nan, 2.0))
    path.write_text(json.dumps({"batch_overhead": 1, "throughput": 5, "executor_start": 1, "trigger": 1}))
    with pytest.raises(ConfigError, match="throughput must be a list of readings per second, got 5"):
        load_calibration(path)
    path.write_text(json.dumps({"batch_overhead": 1, "throughput": [5], "executor_start": 1}))
    with pytest.raises(ConfigError, match="lacks the field trigger"):
        load_calibration(path)
    path.write_text(json.dumps({"batch_overhead": 1, "throughput": [5], "executor_start": 1, "trigger": 1, "measured": [1]}))
    with pytest.raises(ConfigError, match="measured must be a JSON object"):
        load_calibration(path)
    path.write_text('{"batch_overhead": 1, "throughput": [5], "executor_start": 1' + "0" * 400 + ', "trigger": 1}')
    with pytest.raises(ConfigError, match="executor_start must be a finite number of seconds"):
        load_calibration(path)


def test_overhead_per_count_round_trips(tmp_path):
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(PER_COUNT.as_dict()))
    loaded = load_calibration(path)
    assert loaded == PER_COUNT
    assert loaded.overheads == (1.5, 2.5, 4.0)
    assert CAL.overheads == (2.0, 2.0, 2.0)
    # The scaled-out model gives every executor count the one-executor overhead.
    assert scaled_out(PER_COUNT, 4).overheads == (1.5, 1.5, 1.5, 1.5)


def test_shipped_calibration_loads():
    calibration = load_calibration()
    assert calibration.max_executors >= 2
    assert list(calibration.throughput) == sorted(calibration.throughput)


def test_outage_holds_back_readings_and_releases_them():
    day = trace(np.full(144, 1000.0), "outage-test")
    changed = inject(day, bursts=0.0, outages=3.0, salt=5)
    assert changed.events, "the seed draws at least one outage"
    ends_inside = all(int(event.split()[3]) + int(event.split()[-1]) + 2 <= 144 for event in changed.events)
    if ends_inside:
        assert changed.rates.sum() == pytest.approx(day.rates.sum())
    assert (changed.rates == 0).any()
    assert inject(day, bursts=0.0, outages=3.0, salt=5).events == changed.events


def test_traces_split_and_scaled(shared_data):
    training, held_out = load_traces(shared_data, peak_rate=3000.0)
    for source in ("taxi", "machine", "cpu", "occupancy"):
        train_days = [t for t in training if t.source == source]
        test_days = [t for t in held_out if t.source == source]
        assert train_days and test_days
        assert max(t.start for t in train_days) < min(t.start for t in test_days)
        assert max(t.rates.max() for t in train_days) == pytest.approx(3000.0)
        assert all(len(t) == 144 for t in train_days + test_days)
    # Independent count of whole days of taxi data: 10-minute grid from the first midnight to the last.
    raw = read_source(shared_data, "taxi")
    days = (raw.index[-1].floor("D") - raw.index[0].ceil("D")).days
    assert len([t for t in training + held_out if t.source == "taxi"]) == days


def test_taxi_day_matches_raw_series(shared_data):
    training, _ = load_traces(shared_data, sources=("taxi",), peak_rate=1.0, floor=0.0)
    first = training[0]
    raw = read_source(shared_data, "taxi")
    day = raw[str(first.start.date())]
    low, high = min(t.rates.min() for t in training), 1.0
    # On the grid points that fall on a half hour the scaled value is the raw value scaled.
    train_raw = raw[raw.index < training[-1].start + pd.Timedelta(days=1)]
    scaled = (day.iloc[0] - train_raw.min()) / (train_raw.max() - train_raw.min())
    assert first.rates[0] == pytest.approx(scaled)
    assert low >= 0.0
    assert first.rates.max() <= high


def test_evaluate_command_names_a_missing_data_folder(tmp_path, capsys):
    assert main(["optimize", "evaluate", "--data-dir", str(tmp_path / "absent")]) == 2
    assert "trace data folder" in capsys.readouterr().err


def test_simulation_bills_the_driver_and_executors():
    simulation = Simulation(trace([100.0, 100.0]), CAL, PRICES, OBJECTIVE)
    cost, _ = simulation.step(3)
    assert cost == pytest.approx((PRICES.driver + 3 * PRICES.executor) * 60)
    cost, _ = simulation.step(9)
    assert simulation.executors == CAL.max_executors
    assert simulation.done


def test_load_scale_shows_the_policy_the_larger_load():
    small = Metrics(time=600.0, input_rate=1500.0, process_rate=9000.0, batch_duration=2.5, trigger=1.0, backlog=2000,
                    watermark_lag=None, executors=2, target_executors=2, cores_per_executor=1)
    large = replace(small, input_rate=6000.0, process_rate=36000.0, backlog=8000)
    scaled = LearnedPolicy(policy_file="ppo-seed0", load_scale=4.0).observation(small)
    plain = LearnedPolicy(policy_file="ppo-seed0").observation(large)
    assert scaled.tolist() == plain.tolist()
    with pytest.raises(ConfigError, match="load_scale must be a positive number, got -1.0"):
        LearnedPolicy(policy_file="ppo-seed0", load_scale=-1.0)


@pytest.mark.parametrize("text,message", [
    ("timestamp,value\n2014-07-01 00:00:00,lots\n", "cannot read .*nyc_taxi.csv"),
    ("time,count\n2014-07-01 00:00:00,5\n", "cannot read .*needs the columns"),
    ("timestamp,value\n2014-07-01 00:00:00,inf\n", "has no finite values"),
])
def test_unreadable_trace_file_is_named(tmp_path, text, message):
    path = tmp_path / "nab" / "realKnownCause" / "nyc_taxi.csv"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_traces(tmp_path, sources=("taxi",))
