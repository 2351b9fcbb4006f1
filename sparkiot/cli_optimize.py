"""The ``sparkiot optimize`` commands: train scaling policies in the simulator and evaluate them on held-out days."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

# The load's peak, as a share of the largest allocation's throughput, when --peak-rate is not given.
DEFAULT_PEAK_SHARE = 0.25


def _number(low: float, *, integer: bool = False, above: bool = False):
    def parse(text: str):
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'a whole number' if integer else 'a number'}") from None
        if not math.isfinite(value) or value < low or (above and value == low):
            raise argparse.ArgumentTypeError(f"{text} must be {'above' if above else 'at least'} {low:g}")
        return value
    return parse


def _seeds(text: str) -> list[int]:
    try:
        if "-" in text:
            first, last = (int(part) for part in text.split("-", 1))
            seeds = list(range(first, last + 1))
        else:
            seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give seeds as 0-4 or 0,1,2") from None
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give at least one seed, each 0 or more")
    return seeds


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="folder holding nab/ and uci-occupancy/ (or set SPARKIOT_TRACE_DATA)")
    parser.add_argument("--calibration", help="calibration JSON (default: the one measured for sparkiot's benchmark machine)")
    parser.add_argument("--executors", choices=["linear", "measured"], default="linear",
                        help="linear: each executor adds the measured first executor's throughput, as on a cluster of "
                             "separate machines (default); measured: the calibration's own table")
    parser.add_argument("--max-executors", type=_number(1, integer=True), default=4,
                        help="largest executor count with --executors linear (default 4)")
    parser.add_argument("--platform", default="emr_serverless", help="price table platform (default emr_serverless)")
    parser.add_argument("--prices", help="price table YAML replacing built-in platforms")
    parser.add_argument("--latency-target", type=_number(0, above=True), default=10.0, help="seconds (default 10)")
    parser.add_argument("--penalty", type=_number(0), default=4.0,
                        help="objective weight of a step over the latency target, in steps of the largest allocation (default 4)")
    parser.add_argument("--peak-rate", type=_number(0, above=True),
                        help=f"readings/s of the training days' busiest step (default {DEFAULT_PEAK_SHARE} of the top throughput)")
    parser.add_argument("--step", type=_number(1), default=60.0, help="seconds between decisions (default 60)")
    parser.add_argument("--trace-step", type=_number(1), default=600.0, help="seconds of the trace per decision (default 600)")


def _setup(args):
    from sparkiot.optimize.calibration import load_calibration, scaled_out, worker_prices
    from sparkiot.optimize.env import Objective
    from sparkiot.optimize.traces import load_traces

    calibration = load_calibration(args.calibration)
    if args.executors == "linear":
        calibration = scaled_out(calibration, args.max_executors)
    prices = worker_prices(calibration, args.platform, args.prices)
    objective = Objective(latency_target=args.latency_target, penalty=args.penalty, step_seconds=args.step)
    peak = args.peak_rate or DEFAULT_PEAK_SHARE * calibration.throughput[-1]
    training, held_out = load_traces(args.data_dir, trace_step=args.trace_step, peak_rate=peak)
    return calibration, prices, objective, training, held_out


def cmd_train(args) -> int:
    from sparkiot.optimize.training import train

    calibration, prices, objective, training, _ = _setup(args)
    algorithms = ["dqn", "ppo"] if args.algorithm == "both" else [args.algorithm]
    print(f"training on {len(training)} days of {len({d.source for d in training})} sources; policies go to {args.out}")
    for algorithm in algorithms:
        for seed in args.seeds:
            started = time.time()
            path = train(algorithm, seed, training, calibration, prices, objective, timesteps=args.timesteps,
                         out_dir=Path(args.out), reward_penalty=args.reward_penalty)
            print(f"  {path} ({time.time() - started:.0f} s)", flush=True)
    return 0


def cmd_evaluate(args) -> int:
    from sparkiot.optimize.evaluation import evaluate, format_table, held_out_days, table
    from sparkiot.optimize.policies import TRAINED

    calibration, prices, objective, training, held_out = _setup(args)
    folder = Path(args.policies) if args.policies else TRAINED
    learned = {algorithm: sorted(folder.glob(f"{algorithm}-seed*.zip")) for algorithm in ("dqn", "ppo")}
    learned = {algorithm: paths for algorithm, paths in learned.items() if paths}
    if not learned:
        print(f"note: no trained policies in {folder}; evaluating the baselines only", file=sys.stderr)
    days = held_out_days(held_out, args.days_per_source)
    print(f"evaluating on {len(days)} held-out days ({', '.join(sorted({d.source for d in days}))}); "
          f"latency target {objective.latency_target:g} s", flush=True)
    result = evaluate(training, days, calibration, prices, objective, learned=learned,
                      progress=(lambda text: print("  " + text, file=sys.stderr, flush=True)) if args.verbose_progress else (lambda text: None))
    rows = table(result)
    print(format_table(rows))
    if args.json:
        document = {
            "days": [day.name for day in days], "events": {day.name: list(day.events) for day in days},
            "static_peak_executors": result["static_peak"], "static_mean_executors": result["static_mean"],
            "tuned": result["tuned"], "calibration": calibration.as_dict(), "platform": prices.platform,
            "objective": {"latency_target": objective.latency_target, "penalty": objective.penalty, "step_seconds": objective.step_seconds},
            "rows": rows,
        }
        Path(args.json).write_text(json.dumps(document, indent=2, default=float) + "\n")
    return 0


def add_optimize_commands(commands) -> None:
    optimize = commands.add_parser("optimize", help="train and evaluate autoscaling policies in the calibrated simulator")
    actions = optimize.add_subparsers(dest="optimize_command", required=True)

    train = actions.add_parser("train", help="train DQN and PPO policies on the training days")
    _common(train)
    train.add_argument("--algorithm", choices=["dqn", "ppo", "both"], default="both")
    train.add_argument("--seeds", type=_seeds, default=[0, 1, 2, 3, 4], help="seeds such as 0-4 or 0,3 (default 0-4)")
    train.add_argument("--timesteps", type=_number(1, integer=True), default=60_000, help="steps per policy (default 60000)")
    train.add_argument("--reward-penalty", type=_number(0),
                       help="training reward's penalty for a step over the target (default: --penalty)")
    train.add_argument("--out", default="policies", help="folder for the model files (default ./policies)")
    train.set_defaults(handler=cmd_train)

    evaluate = actions.add_parser("evaluate", help="compare every policy on held-out days")
    _common(evaluate)
    evaluate.add_argument("--policies", help="folder of trained policies (default: the shipped ones)")
    evaluate.add_argument("--days-per-source", type=_number(1, integer=True), default=12,
                          help="held-out days of each source, spread over its held-out period (default 12)")
    evaluate.add_argument("--json", help="also write the table and its inputs to this file")
    evaluate.add_argument("--verbose-progress", action="store_true", help="print each day as it is evaluated")
    evaluate.set_defaults(handler=cmd_evaluate)

