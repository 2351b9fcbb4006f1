"""Merges per second of each edge CRDT type, beside pycrdt (Yrs) map updates as a reference.

Method, per sparkiot type:

1. Four replicas (``site-0`` ... ``site-3``) each update their own state (the warm-up below),
   and the receiving state is the join of the four. Every replica then starts from a copy of
   that join, as replicas that have synced.
2. ``--deltas`` (M) single-update deltas are generated in advance, from the replicas in turn.
3. Timed: ``target.merge(delta)`` for every delta, on a fresh copy of the receiving state
   (the copy is not timed). Separately timed: ``target.merge(Type.from_bytes(data))`` on the
   encoded deltas, the cloud's work per received delta. After the first pass the target must
   equal the join of the receiving state and every replica's final state.

Workloads, each update changing one replica's part:

* ``GCounter`` and ``PNCounter`` of 4 replica entries: ``inc`` by 1, and ``dec`` in turn.
* ``LWWRegister``: a float ``set``, stamped by the replica's hybrid logical clock. The clocks
  share a wall clock that advances 1 ms each time a clock reads it, so every write wins.
* ``MaxRegister`` and ``MinRegister``: each update is a new extreme, so no delta is empty.
* ``ORSet`` of 1,000 elements, 250 added per replica. Each update re-adds a random element.
* ``Summary`` of 4 replica entries of 250 values. Each update adds one value.
* ``QuantileSketch`` of 1,000 values at 1 % accuracy, 250 per replica, log-normal like latencies
  in ms. Each update adds one value.
* ``CrdtMap`` of 1,000 ``Summary`` entries (5 values per replica per key), and ``CrdtMap`` of
  1,000 ``LWWRegister`` entries containing a float. Each update changes one random key.

Reference, pycrdt (Yrs) 0.14: a seed ``Doc`` fills a root ``Map`` with the same 1,000 keys and
float values, and its full update is applied to four sender Docs and to the receiver. The
senders set one random key per change in turn (one transaction each), M changes in all. Each
change is captured twice: as the update since the sender's previous state vector
(``get_update(state)``, then ``get_state()``), and as the transaction's update that a
``Doc.observe`` callback receives, the form pycrdt's usage guide sends on the wire. Yrs writes
the document's whole delete set into an update since a state vector, so that form grows with
every overwritten value, while a transaction update contains only its own inserts and deletions.
Timed: ``apply_update(update)`` for the M updates of one form on a fresh receiver, which must
then hold the senders' joined map. ``apply_update`` takes bytes, so it compares with the
decode-and-merge figure. A Yrs map entry is a last-writer-wins value, so the like-for-like row
is the ``CrdtMap`` of ``LWWRegister``. The counters, summary and sketch have no Yrs type.

Each measurement runs ``--repeat`` times (``time.perf_counter``, one process, garbage
collection left on); the table shows the median rate and the slowest and fastest run.

    python benchmarks/crdt_merge_throughput.py --json results/crdt_merge_throughput.json
    python benchmarks/crdt_merge_throughput.py --quick
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import CpuAccount, machine_info, wait_for_quiet, write_json  # noqa: E402
from pycrdt import Doc, Map  # noqa: E402

from sparkiot.edge.crdt import CrdtMap, GCounter, HybridLogicalClock, LWWRegister, MaxRegister  # noqa: E402
from sparkiot.edge.crdt import MinRegister, ORSet, PNCounter, QuantileSketch, Summary  # noqa: E402

REPLICAS = [f"site-{k}" for k in range(4)]
KEYS = [f"dev-{i}/temp" for i in range(1000)]
# 2024-05-01T12:00:00Z in milliseconds.
BASE_MS = 1_714_564_800_000


def build_case(new_state, warm, update, deltas: int):
    """Return the receiving state, M pre-generated deltas and the state expected after merging them."""
    replicas = [new_state() for _ in REPLICAS]
    for state, replica in zip(replicas, REPLICAS):
        warm(state, replica)
    receiver = new_state()
    for state in replicas:
        receiver.merge(state)
    replicas = [receiver.copy() for _ in REPLICAS]
    generated = [update(replicas[i % 4], REPLICAS[i % 4], i) for i in range(deltas)]
    expected = receiver.copy()
    for state in replicas:
        expected.merge(state)
    return receiver, generated, expected


def cases(rng: random.Random):
    """Yield (name, state size, factory, warm-up, update) for every sparkiot workload."""
    ticks = itertools.count(BASE_MS).__next__
    clocks = {replica: HybridLogicalClock(replica, wall_clock_ms=ticks) for replica in REPLICAS}

    def value() -> float:
        return round(rng.gauss(21.0, 2.0), 2)

    def latency() -> float:
        return round(rng.lognormvariate(3.0, 1.0), 3)

    def map_case(kind, count):
        def change(state, key, replica):
            if kind is Summary:
                return state.update(key, Summary, lambda entry: entry.add(replica, value()))
            return state.update(key, LWWRegister, lambda entry: entry.set(value(), stamp=clocks[replica].now()))

        def warm(state, replica):
            for index, key in enumerate(KEYS):
                if kind is Summary or replica == REPLICAS[index % 4]:
                    for _ in range(count):
                        change(state, key, replica)
        return CrdtMap, warm, lambda state, replica, _: change(state, rng.choice(KEYS), replica)

    yield ("GCounter", "4 replica entries", GCounter, lambda s, r: s.inc(r, rng.randint(1, 100)),
           lambda s, r, i: s.inc(r, 1))
    yield ("PNCounter", "4 replica entries per side", PNCounter,
           lambda s, r: (s.inc(r, rng.randint(1, 100)), s.dec(r, rng.randint(1, 100))),
           lambda s, r, i: s.inc(r, 1) if i % 2 else s.dec(r, 1))
    yield ("LWWRegister", "1 float", LWWRegister, lambda s, r: s.set(value(), stamp=clocks[r].now()),
           lambda s, r, i: s.set(value(), stamp=clocks[r].now()))
    yield ("MaxRegister", "1 float", MaxRegister, lambda s, r: s.update(value()), lambda s, r, i: s.update(1e6 + i))
    yield ("MinRegister", "1 float", MinRegister, lambda s, r: s.update(value()), lambda s, r, i: s.update(-1e6 - i))
    yield ("ORSet", "1,000 elements", ORSet,
           lambda s, r: [s.add(r, f"dev-{i}") for i in range(REPLICAS.index(r), 1000, 4)],
           lambda s, r, i: s.add(r, f"dev-{rng.randrange(1000)}"))
    yield ("Summary", "4 replica entries", Summary, lambda s, r: [s.add(r, value()) for _ in range(250)],
           lambda s, r, i: s.add(r, value()))
    yield ("QuantileSketch", "1,000 values", QuantileSketch, lambda s, r: [s.add(r, latency()) for _ in range(250)],
           lambda s, r, i: s.add(r, latency()))
    yield ("CrdtMap of Summary", "1,000 keys x 4 replicas", *map_case(Summary, 5))
    yield ("CrdtMap of LWWRegister", "1,000 keys", *map_case(LWWRegister, 1))


def rates(run, count: int, repeat: int) -> dict:
    """Call ``run()`` ``repeat`` times and return the median, min and max of ``count`` per second it returned."""
    per_second = [count / run() for _ in range(repeat)]
    return {"median": round(statistics.median(per_second)), "min": round(min(per_second)), "max": round(max(per_second))}


def measure_sparkiot(name, size, kind, warm, update, args) -> dict:
    receiver, deltas, expected = build_case(kind, warm, update, args.deltas)
    encoded = [delta.to_bytes() for delta in deltas]
    checked = []

    def run_pass(decode=None) -> float:
        target = receiver.copy()
        started = time.perf_counter()
        if decode is None:
            for delta in deltas:
                target.merge(delta)
        else:
            for data in encoded:
                target.merge(decode(data))
        elapsed = time.perf_counter() - started
        checked.append(target == expected)
        return elapsed

    merge = rates(run_pass, len(deltas), args.repeat)
    decode_merge = rates(lambda: run_pass(kind.from_bytes), len(deltas), args.repeat)
    if not all(checked):
        raise SystemExit(f"{name}: the merged state differs from the join of the replicas, so the figures are invalid")
    return {"type": name, "state": size, "deltas": len(deltas),
            "delta_mean_bytes": round(statistics.fmean(len(data) for data in encoded), 1),
            "merge_per_s": merge, "decode_merge_per_s": decode_merge}


def measure_pycrdt(args, rng: random.Random) -> list[dict]:
    seed = Doc(client_id=100)
    seed_map = seed.get("m", type=Map)
    with seed.transaction():
        for key in KEYS:
            seed_map[key] = round(rng.gauss(21.0, 2.0), 2)
    initial = seed.get_update()

    senders = [Doc(client_id=k + 1) for k in range(len(REPLICAS))]
    for sender in senders:
        sender.apply_update(initial)
    maps = [sender.get("m", type=Map) for sender in senders]
    states = [sender.get_state() for sender in senders]
    committed: list[bytes] = []
    for sender in senders:
        sender.observe(lambda event: committed.append(event.update))
    since_state = []
    for i in range(args.deltas):
        k = i % len(senders)
        maps[k][rng.choice(KEYS)] = round(rng.gauss(21.0, 2.0), 2)
        since_state.append(senders[k].get_update(states[k]))
        states[k] = senders[k].get_state()
    if len(committed) != len(since_state):
        raise SystemExit(f"pycrdt: expected one transaction update per change, got {len(committed)} for {len(since_state)}")

    expected = Doc()
    for update in [initial, *(sender.get_update() for sender in senders)]:
        expected.apply_update(update)
    expected_value = expected.get("m", type=Map).to_py()
    rows = []
    for label, updates in (("update since state vector", since_state), ("transaction update", committed)):
        checked = []

        def apply_all() -> float:
            receiver = Doc()
            receiver.apply_update(initial)
            started = time.perf_counter()
            for update in updates:
                receiver.apply_update(update)
            elapsed = time.perf_counter() - started
            checked.append(receiver.get("m", type=Map).to_py() == expected_value)
            return elapsed

        applied = rates(apply_all, len(updates), args.repeat)
        if not all(checked):
            raise SystemExit(f"pycrdt, {label}: the receiver's map differs from the senders' joined map, "
                             "so the figures are invalid")
        rows.append({"type": f"pycrdt {version('pycrdt')} Map, {label}", "state": "1,000 keys", "deltas": len(updates),
                     "delta_mean_bytes": round(statistics.fmean(len(update) for update in updates), 1),
                     "delta_first_bytes": len(updates[0]), "delta_last_bytes": len(updates[-1]),
                     "merge_per_s": None, "decode_merge_per_s": applied})
    return rows


def print_markdown(headers: list[str], rows: list[list]) -> None:
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join("---" if i < 2 else "---:" for i in range(len(headers))) + "|")
    for row in rows:
        print("| " + " | ".join(f"{cell:,}" if isinstance(cell, (int, float)) else str(cell) for cell in row) + " |")


def spread(figure: dict | None) -> list:
    if figure is None:
        return ["-", "-"]
    return [figure["median"], f"{figure['min']:,} - {figure['max']:,}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deltas", type=int, default=2000, help="pre-generated deltas per type, M (default 2000)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per measurement (default 5)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the value and key generator (default 7)")
    parser.add_argument("--quiet-wait", type=float, default=20.0,
                        help="seconds to wait for other processes to go idle before measuring (default 20)")
    parser.add_argument("--quick", action="store_true", help="small run for development: 200 deltas, 3 runs")
    parser.add_argument("--json", help="write the results and the machine facts as JSON to this file")
    args = parser.parse_args()
    if args.quick:
        args.deltas, args.repeat, args.quiet_wait = 200, 3, 0.0

    rng = random.Random(args.seed)
    wait_for_quiet(args.quiet_wait)
    account = CpuAccount()
    rows = [measure_sparkiot(*case, args) for case in cases(rng)]
    rows.extend(measure_pycrdt(args, rng))
    cpu = account.read()

    machine = machine_info()
    machine.update({"cbor2": version("cbor2"), "ddsketch": version("ddsketch"), "pycrdt": version("pycrdt")})
    print("machine: " + ", ".join(f"{key} {value}" for key, value in machine.items()))
    print(f"{args.deltas} deltas per type, {args.repeat} runs each; other processes used {cpu['other_cpu_pct']}% "
          f"CPU (100% = one core) during the {cpu['seconds']} s of measurement\n")
    print_markdown(
        ["type", "state", "delta mean B", "merges/s median", "merges/s min - max",
         "decode+merge/s median", "decode+merge/s min - max"],
        [[row["type"], row["state"], row["delta_mean_bytes"], *spread(row["merge_per_s"]),
          *spread(row["decode_merge_per_s"])] for row in rows],
    )
    first, last = rows[-2]["delta_first_bytes"], rows[-2]["delta_last_bytes"]
    print("\npycrdt rows: apply_update(bytes) per update decodes and integrates, so it compares with decode+merge. "
          "Its map entries are last-writer-wins floats, like the CrdtMap of LWWRegister row. An update since a "
          f"state vector carries the whole delete set, so it grew from {first} to {last} bytes over the run.")
    write_json(args.json, {"benchmark": "crdt_merge_throughput", "machine": machine, "cpu_during_measurement": cpu,
                           "settings": {"deltas": args.deltas, "repeat": args.repeat, "seed": args.seed},
                           "rows": rows})


if __name__ == "__main__":
    main()
