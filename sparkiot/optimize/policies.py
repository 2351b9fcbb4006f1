"""Scaling policies for the control plane: static sizes, a threshold rule, a PID controller and learned policies.

Each class follows the control plane's scaling interface
(:mod:`sparkiot.serverless.scaling`): built with the pipeline's
:class:`~sparkiot.config.ServerlessConfig`, whose ``scaling.options`` carries its settings, and
asked ``decide(metrics)`` every interval. The simulator builds them with keyword arguments
instead. ``reset(simulation)`` clears what a policy remembers before a new trace.

A learned policy is a stable-baselines3 model file (``.zip``) with a ``.json`` beside it that
records how its observations were scaled; :class:`LearnedPolicy` loads both and acts
deterministically. ``sparkiot optimize train`` writes such pairs, and the trained ones ship in
``trained/`` beside this module.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from sparkiot.config import ConfigError, ServerlessConfig
from sparkiot.optimize.calibration import read_json_object
from sparkiot.optimize.env import Clock, estimated_latency, observe
from sparkiot.serverless.scaling import Decision, Metrics

TRAINED = Path(__file__).with_name("trained")


def _options(config: ServerlessConfig | None) -> dict:
    return dict(config.scaling.options) if config is not None else {}


def _bounds(config: ServerlessConfig | None, max_executors: int | None) -> tuple[int, int]:
    if config is not None:
        return config.min_executors, config.max_executors
    return 1, max_executors or 1


def _change(current: int, chosen_count: int, reason: str) -> Decision | None:
    return Decision(executors=chosen_count, reason=reason) if chosen_count != current else None


class StaticPolicy:
    """Holds a fixed executor count (``options.executors``)."""

    def __init__(self, config: ServerlessConfig | None = None, *, executors: int | None = None) -> None:
        chosen = executors if executors is not None else _options(config).get("executors", config.initial_executors if config else 1)
        self.executors = int(chosen)

    def decide(self, metrics: Metrics) -> Decision | None:
        return _change(metrics.target_executors, self.executors, f"static {self.executors}")


class ThresholdPolicy:
    """Adds executors while the estimated latency stays high and removes one after sustained low latency.

    It works in the manner of Spark's dynamic allocation. While the latency estimate exceeds
    ``scale_up`` times the target, each decision adds twice as many executors as the previous
    one (1, 2, 4, ...). After ``idle_decisions`` decisions below ``scale_down`` times the target,
    it removes one.
    """

    def __init__(self, config: ServerlessConfig | None = None, *, latency_target: float | None = None,
                 scale_up: float | None = None, scale_down: float | None = None, idle_decisions: int | None = None,
                 max_executors: int | None = None) -> None:
        options = _options(config)
        self.target = float(latency_target or options.get("latency_target", 10.0))
        self.scale_up = float(scale_up or options.get("scale_up", 0.6))
        self.scale_down = float(scale_down or options.get("scale_down", 0.3))
        self.idle_decisions = int(idle_decisions or options.get("idle_decisions", 3))
        self.low, self.high = _bounds(config, max_executors)
        self.reset()

    def reset(self, simulation=None) -> None:
        self._step = 1
        self._calm = 0

    def decide(self, metrics: Metrics) -> Decision | None:
        current = max(metrics.target_executors, 1)
        latency = estimated_latency(metrics)
        if latency > self.scale_up * self.target:
            self._calm = 0
            chosen_count = min(self.high, current + self._step)
            self._step *= 2
            return _change(current, chosen_count, f"latency {latency:.1f}s above {self.scale_up * self.target:.1f}s")
        self._step = 1
        if latency < self.scale_down * self.target:
            self._calm += 1
            if self._calm >= self.idle_decisions:
                self._calm = 0
                return _change(current, max(self.low, current - 1), f"latency {latency:.1f}s low for {self.idle_decisions} decisions")
        else:
            self._calm = 0
        return None


class PIDPolicy:
    """A PID controller on the estimated latency, with ``setpoint`` a share of the target.

    The output is the executor count: ``base + kp*e + ki*sum(e) + kd*(e - previous e)`` with
    ``e = (latency - setpoint) / setpoint``, rounded and clamped. The integral stops growing while
    the output is clamped (anti-windup).
    """

    def __init__(self, config: ServerlessConfig | None = None, *, latency_target: float | None = None,
                 setpoint: float | None = None, kp: float | None = None, ki: float | None = None, kd: float | None = None,
                 max_executors: int | None = None) -> None:
        options = _options(config)
        target = float(latency_target or options.get("latency_target", 10.0))
        self.setpoint = target * float(setpoint or options.get("setpoint", 0.5))
        self.kp = float(kp if kp is not None else options.get("kp", 1.0))
        self.ki = float(ki if ki is not None else options.get("ki", 0.2))
        self.kd = float(kd if kd is not None else options.get("kd", 0.5))
        self.low, self.high = _bounds(config, max_executors)
        self.reset()

    def reset(self, simulation=None) -> None:
        self._integral = 0.0
        self._previous: float | None = None

    def decide(self, metrics: Metrics) -> Decision | None:
        latency = estimated_latency(metrics)
        error = (latency - self.setpoint) / self.setpoint
        derivative = error - self._previous if self._previous is not None else 0.0
        self._previous = error
        output = self.low + self.kp * error + self.ki * (self._integral + error) + self.kd * derivative
        chosen_count = int(min(max(round(output), self.low), self.high))
        if self.low < output < self.high:
            self._integral += error
        return _change(max(metrics.target_executors, 1), chosen_count, f"pid on latency {latency:.1f}s")


def read_policy_meta(path: Path) -> dict:
    meta_path = path.with_suffix(".json")
    meta = read_json_object(meta_path, f"learned policy {path}")
    needed = ("algorithm", "mode", "rate_scale", "max_executors", "latency_target", "clock_speed")
    missing = [name for name in needed if name not in meta]
    if missing:
        raise ConfigError(f"learned policy {path}: {meta_path} lacks {', '.join(missing)}; retrain with sparkiot optimize train")
    return meta


def resolve_policy_file(name: str | Path) -> Path:
    """Return the model file for a path or for the name of a shipped policy such as ``ppo-seed0``."""
    path = Path(name)
    if path.suffix != ".zip":
        shipped = TRAINED / f"{name}.zip"
        path = shipped if shipped.exists() else path.with_suffix(".zip")
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in TRAINED.glob("*.zip"))) or "none"
        raise ConfigError(f"learned policy {name}: no file {path}; give a .zip from sparkiot optimize train or a shipped name ({available})")
    return path


class LearnedPolicy:
    """A DQN or PPO policy trained in the simulator, acting on a pipeline's metrics.

    Options: ``policy_file`` (a path or a shipped name such as ``ppo-seed0``), and for a live
    run the clock of the replayed load: ``day_start`` (seconds after midnight at which the load
    starts) and ``origin`` (Unix time at which it started). Without them the time-of-day
    features read the pipeline's own clock at the training speed. ``load_scale`` multiplies the
    rates and the backlog in the policy's observation. A small cluster then replays a load that many times
    smaller than the one the policy was trained for, and the policy decides as it would at full
    size.
    """

    def __init__(self, config: ServerlessConfig | None = None, *, policy_file: str | Path | None = None,
                 clock: Clock | None = None, load_scale: float | None = None) -> None:
        options = _options(config)
        self.load_scale = float(load_scale if load_scale is not None else options.get("load_scale", 1.0))
        if not math.isfinite(self.load_scale) or self.load_scale <= 0:
            raise ConfigError(f"learned policy option load_scale must be a positive number, got {self.load_scale!r}")
        self.path = resolve_policy_file(policy_file or options.get("policy_file", "ppo-seed0"))
        self.meta = read_policy_meta(self.path)
        self.model = _load_model(self.path, self.meta["algorithm"])
        self.max_executors = int(self.meta["max_executors"])
        if config is not None and config.max_executors < self.max_executors:
            raise ConfigError(
                f"learned policy {self.path.name} was trained for up to {self.max_executors} executors; "
                f"set serverless.max_executors to at least that (it is {config.max_executors})"
            )
        self.clock = clock or Clock(day_start=float(options.get("day_start", 0.0)), speed=float(self.meta["clock_speed"]),
                                    origin=float(options.get("origin", 0.0)))
        self._previous: Metrics | None = None

    def reset(self, simulation=None) -> None:
        self._previous = None
        if simulation is not None:
            self.clock = simulation.clock()

    def observation(self, metrics: Metrics):
        """Return the observation of ``metrics``; the metrics of the call before give the rate's trend."""
        if self.load_scale != 1.0:
            metrics = replace(metrics, input_rate=metrics.input_rate * self.load_scale,
                              process_rate=metrics.process_rate * self.load_scale,
                              backlog=int(metrics.backlog * self.load_scale))
        previous, self._previous = self._previous, metrics
        return observe(metrics, previous, rate_scale=float(self.meta["rate_scale"]), max_executors=self.max_executors,
                       latency_target=float(self.meta["latency_target"]), clock=self.clock)

    def decide(self, metrics: Metrics) -> Decision | None:
        action, _ = self.model.predict(self.observation(metrics), deterministic=True)
        current = max(metrics.target_executors, 1)
        if self.meta["mode"] == "delta":
            chosen_count = min(max(current + int(action) - 1, 1), self.max_executors)
        else:
            chosen_count = int(action) + 1
        return _change(current, chosen_count, f"{self.meta['algorithm']} policy {self.path.stem}")


def _load_model(path: Path, algorithm: str):
    from stable_baselines3 import DQN, PPO

    classes = {"dqn": DQN, "ppo": PPO}
    if algorithm not in classes:
        raise ConfigError(f"learned policy {path}: unknown algorithm {algorithm!r}; expected dqn or ppo")
    try:
        return classes[algorithm].load(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file
        raise ConfigError(f"learned policy {path}: cannot load the {algorithm} model: {exc}") from None


def sized_for(rate: float, calibration, objective) -> int:
    """Return the smallest executor count whose steady state at a constant ``rate`` meets the latency target."""
    import numpy as np

    from sparkiot.optimize.model import advance, backlog_levels

    levels = backlog_levels(10 * objective.step_seconds * calibration.throughput[-1])
    for executors in range(1, calibration.max_executors + 1):
        backlog = 0.0
        worst = math.inf
        for _ in range(6):
            result = advance(calibration, executors, executors, backlog, rate, rate, levels, objective.step_seconds)
            backlog = float(result.backlog)
            worst = float(np.max(result.worst_latency))
        if worst <= objective.latency_target:
            return executors
    return calibration.max_executors
