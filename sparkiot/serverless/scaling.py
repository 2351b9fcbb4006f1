"""The scaling interface: a policy reads a pipeline's metrics and sets its executors and trigger.

The control plane calls :meth:`ScalingPolicy.decide` every ``serverless.scaling.interval`` for
each running standalone pipeline, with the :class:`Metrics` its runtime last reported. A policy
returns a :class:`Decision`, or None to leave things as they are. The control plane clamps the
executor count to ``[min_executors, max_executors]`` and passes it to the runtime, which
requests or releases executors from the Spark standalone master.

A policy of your own is a class with a ``decide`` method, named in the pipeline file::

    serverless:
      scaling:
        policy: mypackage.policies:MyPolicy
        options: {target_latency: 2.0}

It is built as ``MyPolicy(config)`` with the pipeline's :class:`~sparkiot.config.ServerlessConfig`,
whose ``scaling.options`` carries its own settings.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Protocol

from sparkiot.config import ConfigError, ServerlessConfig


@dataclass(frozen=True)
class Metrics:
    """The metrics a policy reads of one pipeline; rates are readings per second, times are seconds."""

    time: float
    input_rate: float
    process_rate: float
    batch_duration: float
    trigger: float
    backlog: int
    watermark_lag: float | None
    executors: int
    target_executors: int
    cores_per_executor: int

    @property
    def utilization(self) -> float:
        """The busy share of each trigger interval (above 1 when batches take longer than the trigger)."""
        return self.batch_duration / self.trigger if self.trigger > 0 else 0.0


@dataclass(frozen=True)
class Decision:
    executors: int | None = None
    trigger: float | None = None
    reason: str = ""


class ScalingPolicy(Protocol):
    def decide(self, metrics: Metrics) -> Decision | None: ...


class FixedPolicy:
    """Keeps the executor count the pipeline started with (``initial_executors``)."""

    def __init__(self, config: ServerlessConfig) -> None:
        self.executors = config.initial_executors

    def decide(self, metrics: Metrics) -> Decision | None:
        if metrics.target_executors != self.executors:
            return Decision(executors=self.executors, reason="fixed size")
        return None


class TargetTracking:
    """Keeps the busy share of each trigger interval near a target, like a cloud target-tracking policy.

    The needed count is ``ceil(executors * utilization / target)``. A backlog that the current
    rate cannot clear within one interval counts as full utilization. Scaling out waits
    ``scale_out_cooldown`` after the previous change, and scaling in waits ``scale_in_cooldown``.
    Scaling in removes one executor at a time, so a short lull does not drop capacity that the
    next peak needs.
    """

    def __init__(self, config: ServerlessConfig) -> None:
        self.target = config.scaling.target_utilization
        self.out_cooldown = config.scaling.scale_out_cooldown
        self.in_cooldown = config.scaling.scale_in_cooldown
        self._last_change = -math.inf

    def decide(self, metrics: Metrics) -> Decision | None:
        current = max(metrics.target_executors, 1)
        utilization = metrics.utilization
        if metrics.backlog > 0 and metrics.process_rate > 0:
            if metrics.backlog / metrics.process_rate > metrics.trigger:
                utilization = max(utilization, 1.0)
        needed = max(1, math.ceil(current * utilization / self.target - 1e-9))
        since = metrics.time - self._last_change
        if needed > current and since >= self.out_cooldown:
            self._last_change = metrics.time
            return Decision(executors=needed, reason=f"utilization {utilization:.2f} above {self.target:.2f}")
        if needed < current and since >= self.in_cooldown:
            self._last_change = metrics.time
            return Decision(executors=current - 1, reason=f"utilization {utilization:.2f} below {self.target:.2f}")
        return None


def load_policy(config: ServerlessConfig) -> ScalingPolicy:
    """Build the policy named by ``config.scaling.policy``; raise :class:`ConfigError` when it cannot be loaded."""
    name = config.scaling.policy
    if name == "target_tracking":
        return TargetTracking(config)
    if name == "fixed":
        return FixedPolicy(config)
    module_name, _, class_name = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"serverless.scaling.policy {name!r}: cannot import {module_name}: {exc}") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ConfigError(f"serverless.scaling.policy {name!r}: {module_name} has no {class_name}")
    try:
        policy = cls(config)
    except Exception as exc:  # noqa: BLE001 - any construction failure is the policy's configuration
        raise ConfigError(f"serverless.scaling.policy {name!r}: {class_name}(config) failed: {exc}") from None
    if not callable(getattr(policy, "decide", None)):
        raise ConfigError(f"serverless.scaling.policy {name!r}: {class_name} has no decide(metrics) method")
    return policy
