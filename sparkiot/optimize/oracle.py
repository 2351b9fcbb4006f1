"""The offline optimum: the executor counts that minimize a trace's objective, knowing the whole trace.

Between steps the simulated pipeline's state is ``(executors, backlog level)``
(:mod:`sparkiot.optimize.model`), and the step's outcome depends on that state, the count chosen
and the trace's rates alone. Backward induction over that finite state space therefore gives the
exact minimum of ``sum(cost / reference) + penalty * (steps over the latency target)``, the
objective the learned policies are trained on, over every sequence of executor counts, including
jumps of more than one executor. No policy can do better in this model; the tests check it
against brute force on short traces.

Each backward step runs all states and all counts in one call of
:func:`~sparkiot.optimize.model.advance`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparkiot.optimize.calibration import Calibration, WorkerPrices
from sparkiot.optimize.env import Objective, default_levels
from sparkiot.optimize.model import advance
from sparkiot.optimize.traces import Trace
from sparkiot.serverless.scaling import Decision, Metrics


@dataclass
class Plan:
    """The optimal executor count of each step and the objective it reaches."""

    executors: list[int]
    objective: float


def step_objective(executors: np.ndarray, worst: np.ndarray, prices: WorkerPrices, objective: Objective, max_executors: int) -> np.ndarray:
    """Return one step's share of the objective: cost in units of the largest allocation, plus the penalty when late."""
    reference = prices.driver + max_executors * prices.executor
    cost = (prices.driver + executors * prices.executor) / reference
    return cost + objective.penalty * (worst > objective.latency_target)


def optimum(trace: Trace, calibration: Calibration, prices: WorkerPrices, objective: Objective = Objective(),
            *, initial_executors: int = 1, levels: np.ndarray | None = None) -> Plan:
    """Return the optimal plan for ``trace`` from ``initial_executors`` and an empty backlog."""
    levels = default_levels(calibration, objective) if levels is None else levels
    counts = calibration.max_executors
    steps = len(trace)
    n_old, level, n_new = np.meshgrid(np.arange(1, counts + 1), np.arange(len(levels)), np.arange(1, counts + 1), indexing="ij")
    value = np.zeros((counts, len(levels)))
    choice = np.zeros((steps, counts, len(levels)), dtype=np.int64)
    for step in range(steps - 1, -1, -1):
        rate = float(trace.rates[step])
        previous = float(trace.rates[step - 1]) if step else rate
        result = advance(calibration, n_old, n_new, levels[level], rate, previous, levels, objective.step_seconds)
        total = step_objective(n_new, result.worst_latency, prices, objective, counts) + value[n_new - 1, result.backlog_level]
        best = np.argmin(total, axis=2)
        choice[step] = best + 1
        value = np.take_along_axis(total, best[..., None], axis=2)[..., 0]

    plan = []
    executors, state_level = initial_executors, 0
    for step in range(steps):
        chosen = int(choice[step, executors - 1, state_level])
        rate = float(trace.rates[step])
        previous = float(trace.rates[step - 1]) if step else rate
        result = advance(calibration, executors, chosen, levels[state_level], rate, previous, levels, objective.step_seconds)
        plan.append(chosen)
        executors, state_level = chosen, int(result.backlog_level)
    return Plan(plan, float(value[initial_executors - 1, 0]))


class PlannedPolicy:
    """Replays a fixed list of executor counts, one per decision: the oracle's plan or a brute-force candidate."""

    def __init__(self, executors: list[int]) -> None:
        self.executors = list(executors)
        self.index = 0

    def reset(self, simulation=None) -> None:
        self.index = 0

    def decide(self, metrics: Metrics) -> Decision | None:
        count = self.executors[self.index]
        self.index += 1
        return Decision(executors=count, reason="offline optimum")
