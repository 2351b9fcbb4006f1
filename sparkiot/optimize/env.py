"""The optimizer's simulator as a gymnasium environment, and the loop that runs any scaling policy on it.

:class:`Simulation` steps :func:`sparkiot.optimize.model.advance` along one trace, bills the
driver and the executors held each step, and reports after each step the same
:class:`~sparkiot.serverless.scaling.Metrics` that the control plane gives a policy of a real
pipeline. Every policy, learned or not, decides from those metrics alone; :func:`observe` turns
them into the vector the learned policies read, in the simulator and on a live pipeline alike.

:class:`ScalingEnv` wraps a simulation for reinforcement learning. Its actions are either
``delta`` (remove one executor, hold, add one) or ``target`` (the executor count, 1 to the
maximum). Its reward per step is minus the step's cost, in units of what the largest
allocation costs per step, minus a penalty when the step's worst latency exceeds the target: the
objective's ``penalty`` unless training sets ``reward_penalty`` apart from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import gymnasium as gym
import numpy as np

from sparkiot.optimize.calibration import Calibration, WorkerPrices
from sparkiot.optimize.model import advance, backlog_levels, latency_edges
from sparkiot.optimize.traces import Trace
from sparkiot.serverless.scaling import Decision, Metrics

OBSERVATION_SIZE = 9


@dataclass(frozen=True)
class Objective:
    """The terms a policy is judged by: a latency target and the weight of missing it."""

    latency_target: float = 10.0
    penalty: float = 4.0
    step_seconds: float = 60.0


@dataclass(frozen=True)
class Clock:
    """Maps a pipeline's clock (``Metrics.time``) to the time of day of the load it replays.

    In the simulator ``Metrics.time`` counts seconds from the trace's start and each step of
    ``step_seconds`` covers ``trace_step`` seconds of the trace. A live run sets ``origin`` to the
    Unix time at which its replay started.
    """

    day_start: float = 0.0
    speed: float = 10.0
    origin: float = 0.0

    def day_fraction(self, now: float) -> float:
        return ((self.day_start + (now - self.origin) * self.speed) / 86_400) % 1.0


def estimated_latency(metrics: Metrics) -> float:
    """Seconds a reading arriving now would wait: the backlog ahead of it, a trigger and a batch."""
    rate = metrics.process_rate if metrics.process_rate > 0 else 0.0
    if rate > 0:
        queued = metrics.backlog / rate
    else:
        queued = math.inf if metrics.backlog > 0 else 0.0
    return min(metrics.trigger + metrics.batch_duration + queued, 3600.0)


def observe(metrics: Metrics, previous: Metrics | None, *, rate_scale: float, max_executors: int, latency_target: float,
            clock: Clock) -> np.ndarray:
    """Return the learned policies' observation of one pipeline, each feature within [-1, 10].

    ``previous`` is the metrics of the decision before, which give the input rate's trend.
    """
    day = clock.day_fraction(metrics.time)
    trend = (metrics.input_rate - previous.input_rate) / rate_scale if previous is not None else 0.0
    features = [
        metrics.input_rate / rate_scale,
        trend,
        metrics.process_rate / rate_scale,
        metrics.backlog / (rate_scale * 60.0),
        metrics.executors / max_executors,
        metrics.batch_duration / max(latency_target, 1e-9),
        estimated_latency(metrics) / max(latency_target, 1e-9),
        math.sin(2 * math.pi * day),
        math.cos(2 * math.pi * day),
    ]
    return np.clip(np.asarray(features, dtype=np.float32), -1.0, 10.0)


@dataclass
class Record:
    """Record one simulated run: per step the executors held, the cost, the worst latency; and the reading latencies."""

    trace: str
    executors: list[int] = field(default_factory=list)
    cost: list[float] = field(default_factory=list)
    worst_latency: list[float] = field(default_factory=list)
    processed: float = 0.0
    dropped: float = 0.0
    histogram: np.ndarray | None = None

    @property
    def total_cost(self) -> float:
        return float(sum(self.cost))

    def over_target(self, target: float) -> float:
        """Return the share of steps whose worst latency exceeded ``target``."""
        return float(np.mean(np.asarray(self.worst_latency) > target)) if self.worst_latency else 0.0


def latency_quantile(histogram: np.ndarray, q: float, edges: np.ndarray | None = None) -> float:
    """Return the ``q`` quantile of a latency histogram, linear within the bin."""
    edges = latency_edges() if edges is None else edges
    cumulative = np.cumsum(histogram)
    total = cumulative[-1] if len(cumulative) else 0.0
    if total <= 0:
        return math.nan
    rank = q * total
    index = min(int(np.searchsorted(cumulative, rank)), len(histogram) - 1)
    before = cumulative[index - 1] if index > 0 else 0.0
    inside = (rank - before) / max(cumulative[index] - before, 1e-12)
    return float(edges[index] + inside * (edges[index + 1] - edges[index]))


class Simulation:
    """One trace played through the model: call :meth:`step` with an executor count until :attr:`done`."""

    def __init__(
        self,
        trace: Trace,
        calibration: Calibration,
        prices: WorkerPrices,
        objective: Objective = Objective(),
        *,
        initial_executors: int = 1,
        levels: np.ndarray | None = None,
        record_latencies: bool = False,
    ) -> None:
        self.trace = trace
        self.calibration = calibration
        self.prices = prices
        self.objective = objective
        self.levels = levels if levels is not None else default_levels(calibration, objective)
        self.edges = latency_edges() if record_latencies else None
        self.index = 0
        self.executors = initial_executors
        self.backlog = 0.0
        self.record = Record(trace.name, histogram=np.zeros(len(self.edges) - 1) if self.edges is not None else None)
        self.previous: Metrics | None = None
        self.metrics = Metrics(
            time=0.0, input_rate=float(trace.rates[0]), process_rate=float(trace.rates[0]),
            batch_duration=calibration.overheads[initial_executors - 1], trigger=calibration.trigger, backlog=0,
            watermark_lag=None, executors=initial_executors, target_executors=initial_executors,
            cores_per_executor=calibration.executor_cores,
        )

    @property
    def done(self) -> bool:
        return self.index >= len(self.trace)

    def clock(self) -> Clock:
        start = self.trace.start
        return Clock(day_start=start.hour * 3600 + start.minute * 60 + start.second,
                     speed=self.trace.trace_step / self.objective.step_seconds)

    def step_cost(self, executors: int) -> float:
        """US dollars for one step of the driver and ``executors`` executors."""
        return (self.prices.driver + executors * self.prices.executor) * self.objective.step_seconds

    def step(self, executors: int) -> tuple[float, float]:
        """Hold ``executors`` for the next step; return ``(cost, worst latency)`` of the step."""
        if self.done:
            raise RuntimeError("the trace has ended")
        executors = int(min(max(executors, 1), self.calibration.max_executors))
        rate = float(self.trace.rates[self.index])
        previous = float(self.trace.rates[self.index - 1]) if self.index else rate
        result = advance(self.calibration, self.executors, executors, self.backlog, rate, previous,
                         self.levels, self.objective.step_seconds, self.edges)
        cost = self.step_cost(executors)

        worst = float(result.worst_latency)
        busy = float(result.busy_seconds)
        batches = int(result.batches)
        self.backlog = float(result.backlog)
        self.record.executors.append(executors)
        self.record.cost.append(cost)
        self.record.worst_latency.append(worst)
        self.record.processed += float(result.processed)
        self.record.dropped += float(result.dropped)
        if self.edges is not None:
            self.record.histogram += result.latency_histogram
        self.executors = executors
        self.index += 1
        self.previous = self.metrics
        self.metrics = Metrics(
            time=self.index * self.objective.step_seconds,
            input_rate=rate,
            process_rate=float(result.processed) / busy if busy > 0 else 0.0,
            batch_duration=busy / batches if batches else 0.0,
            trigger=self.calibration.trigger,
            backlog=int(round(self.backlog)),
            watermark_lag=None,
            executors=executors,
            target_executors=executors,
            cores_per_executor=self.calibration.executor_cores,
        )
        return cost, worst


def default_levels(calibration: Calibration, objective: Objective) -> np.ndarray:
    """Return the backlog grid: up to ten steps of the largest allocation's throughput."""
    return backlog_levels(10 * objective.step_seconds * calibration.throughput[-1])


def apply(decision: Decision | None, current: int) -> int:
    """Return the executor count after a policy's decision (None or no count keeps the current one)."""
    if decision is None or decision.executors is None:
        return current
    return int(decision.executors)


def run_policy(policy, trace: Trace, calibration: Calibration, prices: WorkerPrices, objective: Objective = Objective(),
               *, initial_executors: int = 1, record_latencies: bool = True, lead_in: bool = False) -> Record:
    """Play ``trace`` with a scaling policy (an object with ``decide(metrics)``) and return the record.

    With ``lead_in``, one unrecorded step at the trace's first rate and ``initial_executors`` runs
    first. The first decision then reads a pipeline already under that load, as in a replay that
    starts in the middle of a day, in place of an empty one.
    """
    simulation = Simulation(trace, calibration, prices, objective, initial_executors=initial_executors,
                            record_latencies=record_latencies)
    if lead_in:
        warm = Simulation(replace(trace, rates=trace.rates[:1].copy()), calibration, prices, objective,
                          initial_executors=initial_executors, levels=simulation.levels)
        warm.step(initial_executors)
        simulation.backlog = warm.backlog
        simulation.metrics = replace(warm.metrics, time=0.0)
    if hasattr(policy, "reset"):
        policy.reset(simulation)
    while not simulation.done:
        decision = policy.decide(simulation.metrics)
        simulation.step(apply(decision, simulation.executors))
    return simulation.record


class ScalingEnv(gym.Env):
    """Play day traces as a gymnasium environment; each episode plays one trace from its start."""

    metadata = {"render_modes": []}

    def __init__(
        self,
        traces: list[Trace],
        calibration: Calibration,
        prices: WorkerPrices,
        objective: Objective = Objective(),
        *,
        mode: str = "delta",
        rate_scale: float | None = None,
        initial_executors: int = 1,
        reward_penalty: float | None = None,
    ) -> None:
        if mode not in ("delta", "target"):
            raise ValueError(f"mode must be 'delta' or 'target', got {mode!r}")
        if not traces:
            raise ValueError("ScalingEnv needs at least one trace")
        self.traces = traces
        self.calibration = calibration
        self.prices = prices
        self.objective = objective
        self.mode = mode
        self.rate_scale = rate_scale or float(calibration.throughput[-1])
        self.initial_executors = initial_executors
        self.reward_penalty = objective.penalty if reward_penalty is None else reward_penalty
        self.max_executors = calibration.max_executors
        self.levels = default_levels(calibration, objective)
        self.action_space = gym.spaces.Discrete(3 if mode == "delta" else self.max_executors)
        self.observation_space = gym.spaces.Box(low=-1.0, high=10.0, shape=(OBSERVATION_SIZE,), dtype=np.float32)
        self.reference_cost = (prices.driver + self.max_executors * prices.executor) * objective.step_seconds
        self.simulation: Simulation | None = None

    def _observe(self) -> np.ndarray:
        simulation = self.simulation
        return observe(simulation.metrics, simulation.previous, rate_scale=self.rate_scale, max_executors=self.max_executors,
                       latency_target=self.objective.latency_target, clock=simulation.clock())

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        index = options.get("trace") if options else None
        if index is None:
            index = int(self.np_random.integers(len(self.traces)))
        self.simulation = Simulation(self.traces[index], self.calibration, self.prices, self.objective,
                                     initial_executors=self.initial_executors, levels=self.levels)
        return self._observe(), {"trace": self.traces[index].name}

    def executors_for(self, action: int, current: int) -> int:
        if self.mode == "delta":
            return int(min(max(current + int(action) - 1, 1), self.max_executors))
        return int(action) + 1

    def step(self, action):
        simulation = self.simulation
        executors = self.executors_for(int(action), simulation.executors)
        cost, worst = simulation.step(executors)
        over = worst > self.objective.latency_target
        reward = -cost / self.reference_cost - (self.reward_penalty if over else 0.0)
        info = {"cost": cost, "worst_latency": worst, "executors": executors, "over_target": over}
        return self._observe(), float(reward), simulation.done, False, info
