"""Bytes sent per update by the edge CRDTs: the encoded delta beside the encoded full state.

Method: nothing is timed. Every figure is ``len(x.to_bytes())``, the canonical CBOR that the
edge agent stores as a delta group, without the sync protocol's own CBOR framing.

* Workload A, the edge agent's state: an ``EdgeState`` (replica ``site-a``, 1 % sketch accuracy)
  with K series (devices ``dev-0`` ... ``dev-{K-1}``, metric ``temp``), warmed with
  ``--warm`` readings per series in batches of 500 readings. Values come from a seeded
  ``random.Random``: a Gaussian of mean 21 and deviation 2, rounded to 0.01. Event times
  advance by 1 ms per reading. Then ``--updates`` single readings on random series follow,
  each folded in with ``observe([reading])`` and closed with ``take_delta()``. Each update's
  group contains the ``readings`` counter, the series' summary, its quantile sketch, its latest
  value (LWW register) and its device's ``last_seen`` register. The full state
  (``state.state.to_bytes()``) is encoded at ``--samples`` evenly spaced updates, because
  encoding it after every update costs about 45 ms at K = 1,000. The table reports the mean of
  those samples, and the JSON output also records the smallest and the largest.
* Workload A, batched: ``--batches`` groups of 100 readings each on random series, one
  ``observe`` and one ``take_delta`` per group, as the agent commits one group per batch
  under load. The figure is the group's bytes divided by 100, per reading.
* Workload B, one type per map: a ``CrdtMap`` of K ``GCounter`` entries and a ``CrdtMap`` of K
  ``Summary`` entries, replica ``site-a``. Each is warmed with ``--warm`` updates per key, then
  gets ``--updates`` updates (``inc`` by 1 or ``add`` of a value) on random keys. The delta is
  the one-key map delta that ``CrdtMap.update`` returns.

Sizes: K = 10, 100 and 1,000. The full-to-delta ratio is the full state's bytes divided by the
mean delta bytes: how many times more an uplink would carry if it sent the full state per update.
The ``deltas`` column counts the measured deltas: single updates, or groups of 100 readings.

    python benchmarks/crdt_delta_size.py --json results/crdt_delta_size.json
    python benchmarks/crdt_delta_size.py --quick
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine_info, percentile, write_json  # noqa: E402

from sparkiot.edge.crdt import CrdtMap, GCounter, Summary  # noqa: E402
from sparkiot.edge.state import EdgeState  # noqa: E402
from sparkiot.readings import Reading  # noqa: E402

REPLICA = "site-a"
# 2024-05-01T12:00:00Z in microseconds.
BASE_US = 1_714_564_800_000_000
BATCH = 100


class ReadingSource:
    """Seeded readings of K series ``dev-i/temp`` with event times 1 ms apart."""

    def __init__(self, keys: int, seed: int) -> None:
        self.keys = keys
        self.rng = random.Random(seed)
        self.ts_us = BASE_US

    def value(self) -> float:
        return round(self.rng.gauss(21.0, 2.0), 2)

    def reading(self, device: int) -> Reading:
        self.ts_us += 1000
        return Reading(f"dev-{device}", "temp", self.ts_us, self.value(), "Cel", REPLICA,
                       f"msg-{self.ts_us}", self.ts_us, "bench")

    def random_reading(self) -> Reading:
        return self.reading(self.rng.randrange(self.keys))


def sample_points(updates: int, samples: int) -> set[int]:
    """Return ``samples`` update indexes spread evenly from the first to the last update."""
    if samples <= 1 or updates <= 1:
        return {updates - 1}
    return {round(i * (updates - 1) / (samples - 1)) for i in range(samples)}


def summarize(keys: int, workload: str, delta_bytes: list[float], full_bytes: list[int]) -> dict:
    mean = statistics.fmean(delta_bytes)
    full = statistics.fmean(full_bytes)
    return {"keys": keys, "workload": workload, "deltas": len(delta_bytes), "delta_mean_bytes": round(mean, 1),
            "delta_p95_bytes": round(percentile(delta_bytes, 95), 1), "full_state_bytes": round(full),
            "full_state_min_bytes": min(full_bytes), "full_state_max_bytes": max(full_bytes),
            "full_over_delta": round(full / mean, 1)}


def measure_edge_state(keys: int, args: argparse.Namespace) -> list[dict]:
    source = ReadingSource(keys, args.seed)
    edge = EdgeState(REPLICA)
    warm = [source.reading(device) for _ in range(args.warm) for device in range(keys)]
    for start in range(0, len(warm), 500):
        edge.observe(warm[start:start + 500])
        edge.take_delta()

    sampled = sample_points(args.updates, args.samples)
    delta_bytes, full_bytes = [], []
    for index in range(args.updates):
        edge.observe([source.random_reading()])
        delta, _ = edge.take_delta()
        delta_bytes.append(len(delta.to_bytes()))
        if index in sampled:
            full_bytes.append(len(edge.state.to_bytes()))
    rows = [summarize(keys, "EdgeState, 1 reading per group", delta_bytes, full_bytes)]

    per_reading = []
    for _ in range(args.batches):
        edge.observe([source.random_reading() for _ in range(BATCH)])
        delta, _ = edge.take_delta()
        per_reading.append(len(delta.to_bytes()) / BATCH)
    rows.append(summarize(keys, f"EdgeState, {BATCH} readings per group, per reading", per_reading,
                          [len(edge.state.to_bytes())]))
    return rows


def measure_map(keys: int, kind: type, args: argparse.Namespace) -> dict:
    rng = random.Random(args.seed)
    if kind is GCounter:
        def mutate(counter: GCounter) -> GCounter:
            return counter.inc(REPLICA, 1)
    else:
        def mutate(summary: Summary) -> Summary:
            return summary.add(REPLICA, round(rng.gauss(21.0, 2.0), 2))

    state = CrdtMap()
    names = [f"dev-{i}/temp" for i in range(keys)]
    for _ in range(args.warm):
        for name in names:
            state.update(name, kind, mutate)

    sampled = sample_points(args.updates, args.samples)
    delta_bytes, full_bytes = [], []
    for index in range(args.updates):
        delta = state.update(names[rng.randrange(keys)], kind, mutate)
        delta_bytes.append(len(delta.to_bytes()))
        if index in sampled:
            full_bytes.append(len(state.to_bytes()))
    return summarize(keys, f"CrdtMap of {kind.__name__}", delta_bytes, full_bytes)


def print_markdown(headers: list[str], rows: list[list]) -> None:
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" if i == 1 else "---:" for i in range(len(headers))) + "|")
    for row in rows:
        print("| " + " | ".join(f"{cell:,}" if isinstance(cell, (int, float)) else str(cell) for cell in row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, nargs="+", default=[10, 100, 1000], help="map sizes (default 10 100 1000)")
    parser.add_argument("--warm", type=int, default=50, help="warm-up updates per key before measuring (default 50)")
    parser.add_argument("--updates", type=int, default=1000, help="measured single updates per map (default 1000)")
    parser.add_argument("--samples", type=int, default=10, help="full-state encodings per map (default 10)")
    parser.add_argument("--batches", type=int, default=20, help=f"groups of {BATCH} readings per size (default 20)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the value and key generator (default 7)")
    parser.add_argument("--quick", action="store_true", help="small run for development: 200 updates, 3 samples, 5 batches")
    parser.add_argument("--json", help="write the results and the machine facts as JSON to this file")
    args = parser.parse_args()
    if args.quick:
        args.updates, args.batches, args.samples = 200, 5, 3

    rows = []
    for keys in args.keys:
        rows.extend(measure_edge_state(keys, args))
        rows.append(measure_map(keys, GCounter, args))
        rows.append(measure_map(keys, Summary, args))

    machine = machine_info()
    machine.update({"cbor2": version("cbor2"), "ddsketch": version("ddsketch")})
    print("machine: " + ", ".join(f"{key} {value}" for key, value in machine.items()))
    print(f"warm-up {args.warm} updates per key, {args.updates} measured updates, full state encoded at "
          f"{args.samples} of them, {args.batches} groups of {BATCH} readings; bytes of canonical CBOR\n")
    print_markdown(
        ["keys", "workload", "deltas", "delta mean B", "delta p95 B", "full state B", "full / delta"],
        [[row["keys"], row["workload"], row["deltas"], row["delta_mean_bytes"], row["delta_p95_bytes"],
          row["full_state_bytes"], row["full_over_delta"]] for row in rows],
    )
    write_json(args.json, {"benchmark": "crdt_delta_size", "machine": machine,
                           "settings": {key: getattr(args, key) for key in ("keys", "warm", "updates", "samples",
                                                                             "batches", "seed")},
                           "rows": rows})


if __name__ == "__main__":
    main()
