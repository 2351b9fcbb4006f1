"""Evaluate scaling policies on held-out traces against static sizes and the offline optimum.

Every policy plays the same held-out days, each with its bursts and outages drawn once. The
baselines are tuned on training days, as the learned policies are trained on them:

- static for the peak: the fewest executors that meet the latency target at the training
  days' peak rate (the cost baseline, 1.0x);
- static for the mean: the same at the training days' mean rate;
- static best in hindsight: per held-out day, the executor count with the lowest objective,
  chosen knowing the day (the strongest static allocation);
- threshold and PID: their settings picked by grid search on a sample of training days;
- target tracking: the control plane's default policy as it is configured by default;
- the offline optimum of each day (:mod:`sparkiot.optimize.oracle`).

Costs are summed over all held-out days before taking ratios. Latency quantiles are over every
reading stored in those days. "Over target" is the share of steps whose worst reading latency
exceeded the target.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparkiot.config import ServerlessConfig
from sparkiot.optimize.calibration import Calibration, WorkerPrices
from sparkiot.optimize.env import Objective, Record, latency_quantile, run_policy
from sparkiot.optimize.oracle import PlannedPolicy, optimum, step_objective
from sparkiot.optimize.policies import LearnedPolicy, PIDPolicy, StaticPolicy, ThresholdPolicy, sized_for
from sparkiot.optimize.traces import Trace, inject
from sparkiot.serverless.scaling import TargetTracking


@dataclass
class Outcome:
    """The totals of one policy over the held-out days."""

    name: str
    cost: float = 0.0
    objective: float = 0.0
    steps: int = 0
    over: int = 0
    histogram: np.ndarray | None = None
    executors: list[int] = field(default_factory=list)

    def add(self, record: Record, calibration: Calibration, prices: WorkerPrices, objective: Objective) -> None:
        self.cost += record.total_cost
        self.objective += float(step_objective(np.asarray(record.executors), np.asarray(record.worst_latency),
                                               prices, objective, calibration.max_executors).sum())
        self.steps += len(record.worst_latency)
        self.over += int(np.sum(np.asarray(record.worst_latency) > objective.latency_target))
        self.histogram = record.histogram.copy() if self.histogram is None else self.histogram + record.histogram
        self.executors.extend(record.executors)

    @property
    def over_share(self) -> float:
        return self.over / self.steps if self.steps else 0.0

    def quantile(self, q: float) -> float:
        return latency_quantile(self.histogram, q) if self.histogram is not None else math.nan


def held_out_days(days: list[Trace], per_source: int | None) -> list[Trace]:
    """Return the held-out days with their events, at most ``per_source`` of each source, spread over its days."""
    chosen: list[Trace] = []
    for source in sorted({day.source for day in days}):
        of_source = [day for day in days if day.source == source]
        if per_source is not None and len(of_source) > per_source:
            picks = np.linspace(0, len(of_source) - 1, per_source).round().astype(int)
            of_source = [of_source[i] for i in sorted(set(picks))]
        chosen.extend(inject(day, salt=0) for day in of_source)
    return chosen


def _score(make: Callable[[], object], days: list[Trace], calibration, prices, objective) -> float:
    total = 0.0
    for day in days:
        record = run_policy(make(), day, calibration, prices, objective, record_latencies=False)
        total += float(step_objective(np.asarray(record.executors), np.asarray(record.worst_latency),
                                      prices, objective, calibration.max_executors).sum())
    return total


def tune_baselines(training: list[Trace], calibration: Calibration, prices: WorkerPrices, objective: Objective,
                   *, sample: int = 12) -> dict:
    """Pick the threshold and PID settings with the lowest objective on ``sample`` training days."""
    days = held_out_days(training, max(1, sample // 4))
    top = calibration.max_executors
    threshold = min(
        ((_score(lambda: ThresholdPolicy(latency_target=objective.latency_target, scale_up=up, scale_down=down,
                                         idle_decisions=idle, max_executors=top), days, calibration, prices, objective),
          {"scale_up": up, "scale_down": down, "idle_decisions": idle})
         for up, down, idle in itertools.product((0.5, 0.7, 0.9), (0.3, 0.45, 0.6), (1, 3)) if down < up),
        key=lambda pair: pair[0],
    )[1]
    pid = min(
        ((_score(lambda: PIDPolicy(latency_target=objective.latency_target, setpoint=setpoint, kp=kp, ki=ki, kd=0.0,
                                   max_executors=top), days, calibration, prices, objective),
          {"setpoint": setpoint, "kp": kp, "ki": ki, "kd": 0.0})
         for setpoint, kp, ki in itertools.product((0.5, 0.7, 0.85), (0.5, 1.0, 2.0), (0.05, 0.2))),
        key=lambda pair: pair[0],
    )[1]
    return {"threshold": threshold, "pid": pid}


def evaluate(training: list[Trace], held_out: list[Trace], calibration: Calibration, prices: WorkerPrices,
             objective: Objective, *, learned: dict[str, list[Path]], tuned: dict | None = None,
             progress: Callable[[str], None] = lambda text: None) -> dict:
    """Run every policy on ``held_out`` and return the outcomes by name (learned ones by algorithm, one per seed)."""
    top = calibration.max_executors
    training_rates = np.concatenate([day.rates for day in training])
    peak = sized_for(float(training_rates.max()), calibration, objective)
    mean = sized_for(float(training_rates.mean()), calibration, objective)
    tuned = tuned or tune_baselines(training, calibration, prices, objective)
    progress(f"static for the peak: {peak} executors; for the mean: {mean}; tuned {tuned}")
    target_tracking = ServerlessConfig(runtime="standalone", max_executors=top)
    makers: dict[str, Callable[[], object]] = {
        "static for the peak": lambda: StaticPolicy(executors=peak),
        "static for the mean": lambda: StaticPolicy(executors=mean),
        "threshold": lambda: ThresholdPolicy(latency_target=objective.latency_target, max_executors=top, **tuned["threshold"]),
        "target tracking": lambda: TargetTracking(target_tracking),
        "PID on latency": lambda: PIDPolicy(latency_target=objective.latency_target, max_executors=top, **tuned["pid"]),
    }
    outcomes: dict[str, Outcome] = {name: Outcome(name) for name in makers}
    outcomes["static best in hindsight"] = Outcome("static best in hindsight")
    outcomes["offline optimum"] = Outcome("offline optimum")
    seeds: dict[str, list[Outcome]] = {algorithm: [Outcome(path.stem) for path in paths] for algorithm, paths in learned.items()}
    policies = {algorithm: [LearnedPolicy(policy_file=path) for path in paths] for algorithm, paths in learned.items()}
    for number, day in enumerate(held_out, start=1):
        for name, make in makers.items():
            outcomes[name].add(run_policy(make(), day, calibration, prices, objective), calibration, prices, objective)
        statics = [run_policy(StaticPolicy(executors=n), day, calibration, prices, objective) for n in range(1, top + 1)]
        best = min(statics, key=lambda record: float(step_objective(
            np.asarray(record.executors), np.asarray(record.worst_latency), prices, objective, top).sum()))
        outcomes["static best in hindsight"].add(best, calibration, prices, objective)
        plan = optimum(day, calibration, prices, objective)
        outcomes["offline optimum"].add(run_policy(PlannedPolicy(plan.executors), day, calibration, prices, objective),
                                        calibration, prices, objective)
        for algorithm, group in policies.items():
            for outcome, policy in zip(seeds[algorithm], group):
                outcome.add(run_policy(policy, day, calibration, prices, objective), calibration, prices, objective)
        progress(f"{number}/{len(held_out)} {day.name}")
    return {"outcomes": outcomes, "learned": seeds, "static_peak": peak, "static_mean": mean, "tuned": tuned}


def _row(outcome: Outcome, peak: Outcome, best: Outcome) -> dict:
    return {
        "cost_vs_peak": outcome.cost / peak.cost,
        "cost_vs_optimum": outcome.cost / best.cost,
        "objective_vs_optimum": outcome.objective / best.objective,
        "p50": outcome.quantile(0.5),
        "p99": outcome.quantile(0.99),
        "over_target": outcome.over_share,
        "mean_executors": float(np.mean(outcome.executors)) if outcome.executors else math.nan,
    }


def table(result: dict) -> list[dict]:
    """Return one row per policy; learned policies carry the mean and the standard deviation over seeds."""
    outcomes = result["outcomes"]
    peak, best = outcomes["static for the peak"], outcomes["offline optimum"]
    rows = [{"policy": name, "seeds": 1, **_row(outcome, peak, best)} for name, outcome in outcomes.items()]
    for algorithm, group in result["learned"].items():
        per_seed = [_row(outcome, peak, best) for outcome in group]
        row: dict = {"policy": algorithm.upper(), "seeds": len(per_seed)}
        for key in per_seed[0]:
            values = [entry[key] for entry in per_seed]
            row[key] = statistics.fmean(values)
            row[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        row["per_seed"] = per_seed
        rows.append(row)
    order = ["static for the peak", "static for the mean", "static best in hindsight", "threshold", "target tracking",
             "PID on latency", "DQN", "PPO", "offline optimum"]
    return sorted(rows, key=lambda row: order.index(row["policy"]) if row["policy"] in order else len(order))


def format_table(rows: list[dict]) -> str:
    """Format the evaluation table as Markdown."""
    lines = [
        "| policy | seeds | cost vs static peak | cost vs optimum | objective vs optimum | p50 latency | p99 latency | intervals over target | mean executors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(row: dict, key: str, fmt: str) -> str:
        text = format(row[key], fmt)
        spread = row.get(f"{key}_sd")
        return f"{text} ± {format(spread, fmt)}" if spread is not None and row["seeds"] > 1 else text

    for row in rows:
        lines.append(
            f"| {row['policy']} | {row['seeds']} | {cell(row, 'cost_vs_peak', '.3f')} | {cell(row, 'cost_vs_optimum', '.3f')} | "
            f"{cell(row, 'objective_vs_optimum', '.3f')} | {cell(row, 'p50', '.2f')} s | {cell(row, 'p99', '.2f')} s | "
            f"{row['over_target'] * 100:.2f}%{' ± ' + format(row['over_target_sd'] * 100, '.2f') + '%' if row['seeds'] > 1 else ''} | "
            f"{cell(row, 'mean_executors', '.2f')} |"
        )
    return "\n".join(lines)
