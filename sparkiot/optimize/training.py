"""Train DQN and PPO scaling policies in the simulator with stable-baselines3.

DQN acts in ``delta`` mode (remove one executor, hold, add one) and PPO in ``target`` mode (the
executor count). Both learn on the training days of every trace source, each day played three
times with different injected bursts and outages. A trained policy is written as the model file
``ALGORITHM-seedN.zip`` and ``ALGORITHM-seedN.json``, which records the observation scale, the
objective and the calibration it was trained with.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from sparkiot.optimize.calibration import Calibration, WorkerPrices
from sparkiot.optimize.env import Objective, ScalingEnv
from sparkiot.optimize.traces import Trace, inject

# Hyperparameters, chosen on the training days only.
DQN_SETTINGS = dict(learning_rate=5e-4, buffer_size=100_000, learning_starts=2_000, batch_size=64, gamma=0.98,
                    train_freq=4, target_update_interval=1_000, exploration_fraction=0.3, exploration_final_eps=0.02,
                    policy_kwargs=dict(net_arch=[64, 64]))
PPO_SETTINGS = dict(learning_rate=3e-4, n_steps=1_440, batch_size=144, n_epochs=10, gamma=0.98, gae_lambda=0.95,
                    ent_coef=0.01, policy_kwargs=dict(net_arch=[64, 64]))
MODES = {"dqn": "delta", "ppo": "target"}
TRAINING_VARIANTS = 3


def training_set(days: list[Trace]) -> list[Trace]:
    """Return every training day with ``TRAINING_VARIANTS`` draws of bursts and outages."""
    return [inject(day, salt=1000 + variant) for day in days for variant in range(TRAINING_VARIANTS)]


def train(algorithm: str, seed: int, days: list[Trace], calibration: Calibration, prices: WorkerPrices,
          objective: Objective, *, timesteps: int, out_dir: Path, reward_penalty: float | None = None) -> Path:
    """Train one policy and write its model and description to ``out_dir``; return the model path."""
    import torch
    from stable_baselines3 import DQN, PPO

    if algorithm not in MODES:
        raise ValueError(f"algorithm must be dqn or ppo, got {algorithm!r}")
    torch.set_num_threads(1)
    env = ScalingEnv(training_set(days), calibration, prices, objective, mode=MODES[algorithm], reward_penalty=reward_penalty)
    settings = DQN_SETTINGS if algorithm == "dqn" else PPO_SETTINGS
    cls = DQN if algorithm == "dqn" else PPO
    model = cls("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **settings)
    started = time.time()
    model.learn(total_timesteps=timesteps)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{algorithm}-seed{seed}.zip"
    model.save(str(path))
    trace_step = days[0].trace_step
    meta = {
        "algorithm": algorithm,
        "mode": MODES[algorithm],
        "seed": seed,
        "timesteps": timesteps,
        "training_seconds": round(time.time() - started, 1),
        "trained": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "rate_scale": env.rate_scale,
        "max_executors": calibration.max_executors,
        "latency_target": objective.latency_target,
        "penalty": objective.penalty,
        "reward_penalty": env.reward_penalty,
        "step_seconds": objective.step_seconds,
        "trace_step": trace_step,
        "clock_speed": trace_step / objective.step_seconds,
        "training_days": len(days),
        "sources": sorted({day.source for day in days}),
        "platform": prices.platform,
        "calibration": calibration.as_dict(),
        "objective": asdict(objective),
    }
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return path
