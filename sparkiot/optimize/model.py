"""The simulated pipeline: micro-batches of a Spark streaming query under a load, one step at a time.

One step is one decision interval (``step_seconds``, 60 s by default). At its start the
executor count changes from ``n_old`` to ``n_new``: executors released stop at once, executors
requested add capacity ``executor_start`` seconds later and are billed from the request, as the
serverless platforms bill them. Within the step, readings arrive at a constant ``rate``. The
query runs micro-batches the way Spark's processing-time trigger does. A batch takes every
reading waiting when it starts and lasts ``overheads[n - 1] + rows / throughput[n - 1]`` seconds.
The next one starts at the next trigger tick, or at once when the batch overran the trigger.
A batch still running when the step ends is split there: the rows it has processed count in
this step, the rest wait for the next.

The readings waiting at the end of a step (the backlog) are carried to the next step rounded up
to one of the ``levels`` of a geometric grid. That makes the state between steps discrete,
``(executors, backlog level)``, which lets :mod:`sparkiot.optimize.oracle` compute the offline
optimum of this very model by dynamic programming. The carried readings are the newest ones
(the query processes in arrival order), so at the next step the oldest of them is
``backlog / previous rate`` seconds old.

:func:`advance` is written over numpy arrays so that the oracle runs every state and action of
a step in one call; the environment calls it with arrays of one element.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparkiot.optimize.calibration import Calibration

# A rate below this many readings per second counts as no input when ageing a backlog.
_NO_RATE = 1e-9


def backlog_levels(max_backlog: float, first: float = 50.0, ratio: float = 1.05) -> np.ndarray:
    """Return the grid of carried backlogs: 0, then ``first`` growing by ``ratio`` up to ``max_backlog``."""
    if max_backlog <= first:
        return np.array([0.0, float(max_backlog)])
    count = int(np.ceil(np.log(max_backlog / first) / np.log(ratio)))
    levels = first * ratio ** np.arange(count + 1)
    levels[-1] = max_backlog
    return np.concatenate([[0.0], levels])


def latency_edges(low: float = 0.05, high: float = 7200.0, bins: int = 240) -> np.ndarray:
    """Return log-spaced latency bin edges in seconds for the reading-weighted histograms."""
    return np.concatenate([[0.0], np.geomspace(low, high, bins)])


@dataclass
class StepResult:
    """The outcome of one step, per lane.

    ``waiting`` is the readings left at the step's end. ``backlog`` is that count rounded up to the
    grid (index ``backlog_level``) and capped at its top; ``dropped`` counts the excess.
    """

    backlog_level: np.ndarray
    backlog: np.ndarray
    waiting: np.ndarray
    processed: np.ndarray
    dropped: np.ndarray
    worst_latency: np.ndarray
    batches: np.ndarray
    busy_seconds: np.ndarray
    latency_histogram: np.ndarray | None = None


def _add_uniform(histogram: np.ndarray, edges: np.ndarray, low: np.ndarray, high: np.ndarray, weight: np.ndarray) -> None:
    """Spread ``weight`` readings uniformly over latencies ``[low, high]`` into ``histogram`` (lanes by bins)."""
    width = np.maximum(high - low, 1e-9)[:, None]
    overlap = np.minimum(high[:, None], edges[None, 1:]) - np.maximum(low[:, None], edges[None, :-1])
    share = np.clip(overlap, 0.0, None) / width
    # A zero-width spread lands whole in the bin around its value.
    point = (high - low) <= 1e-9
    if point.any():
        share[point] = 0.0
        index = np.clip(np.searchsorted(edges, low[point], side="right") - 1, 0, len(edges) - 2)
        share[np.flatnonzero(point), index] = 1.0
    histogram += share * weight[:, None]


def advance(
    calibration: Calibration,
    n_old: np.ndarray,
    n_new: np.ndarray,
    backlog: np.ndarray,
    rate: float,
    previous_rate: float,
    levels: np.ndarray,
    step_seconds: float = 60.0,
    edges: np.ndarray | None = None,
) -> StepResult:
    """Run one step for every lane of the broadcast arrays ``n_old``, ``n_new`` and ``backlog``.

    ``rate`` is this step's input in readings per second and ``previous_rate`` the last step's,
    which dates the carried backlog. With ``edges``, the result carries each lane's histogram of
    reading latencies (readings stored in this step, by end-to-end latency).
    """
    n_old, n_new, backlog = np.broadcast_arrays(
        np.asarray(n_old, dtype=np.int64), np.asarray(n_new, dtype=np.int64), np.asarray(backlog, dtype=float)
    )
    shape = n_old.shape
    n_old, n_new, backlog = n_old.ravel(), n_new.ravel(), backlog.ravel()
    lanes = n_old.size
    throughput = np.asarray(calibration.throughput, dtype=float)
    overheads = np.asarray(calibration.overheads, dtype=float)
    mu_old, mu_new = throughput[n_old - 1], throughput[n_new - 1]
    overhead_old, overhead_new = overheads[n_old - 1], overheads[n_new - 1]
    ready_at = np.where(n_new > n_old, calibration.executor_start, 0.0)
    trigger = calibration.trigger

    free = np.zeros(lanes)  # when the query can start its next batch
    since = np.zeros(lanes)  # arrivals up to this time are in the queue
    queue = backlog.copy()
    oldest = -backlog / max(previous_rate, rate, _NO_RATE)
    previous_start = np.full(lanes, -np.inf)
    done = np.zeros(lanes, dtype=bool)
    processed = np.zeros(lanes)
    worst = np.zeros(lanes)
    batches = np.zeros(lanes, dtype=np.int64)
    busy = np.zeros(lanes)
    left = np.zeros(lanes)
    histogram = np.zeros((lanes, len(edges) - 1)) if edges is not None else None

    while True:
        start = np.maximum(free, previous_start + trigger)
        active = ~done & (start < step_seconds)
        ended = ~done & ~active
        if ended.any():
            # No batch starts before the step ends: what arrived since wait for the next step.
            left[ended] = queue[ended] + rate * (step_seconds - since[ended])
            done |= ended
        if not active.any():
            break
        rows = np.where(active, queue + rate * (start - since), 0.0)
        ready = start >= ready_at
        mu = np.where(ready, mu_new, mu_old)
        overhead = np.where(ready, overhead_new, overhead_old)
        duration = overhead + rows / mu
        end = start + duration
        empty = active & (rows <= 0)
        whole = active & (rows > 0) & (end <= step_seconds)
        split = active & (rows > 0) & (end > step_seconds)

        # A trigger tick with nothing to read runs no batch.
        free = np.where(empty, start, free)
        since = np.where(empty, start, since)
        previous_start = np.where(empty, start, previous_start)
        oldest = np.where(empty, start, oldest)

        if whole.any():
            worst = np.where(whole, np.maximum(worst, end - oldest), worst)
            processed += np.where(whole, rows, 0.0)
            busy += np.where(whole, duration, 0.0)
            batches += whole
            if histogram is not None:
                index = np.flatnonzero(whole)
                sub = histogram[index]
                _add_uniform(sub, edges, duration[index], (end - oldest)[index], rows[index])
                histogram[index] = sub
            queue = np.where(whole, 0.0, queue)
            since = np.where(whole, start, since)
            free = np.where(whole, end, free)
            previous_start = np.where(whole, start, previous_start)
            oldest = np.where(whole, start, oldest)

        if split.any():
            done_rows = np.clip((step_seconds - start - overhead) * mu, 0.0, rows)
            worst = np.where(split, np.maximum(worst, step_seconds - oldest), worst)
            processed += np.where(split, done_rows, 0.0)
            busy += np.where(split, step_seconds - start, 0.0)
            batches += split
            if histogram is not None:
                index = np.flatnonzero(split & (done_rows > 0))
                if index.size:
                    share = done_rows[index] / rows[index]
                    newest = oldest[index] + share * (start[index] - oldest[index])
                    sub = histogram[index]
                    _add_uniform(sub, edges, step_seconds - newest, step_seconds - oldest[index], done_rows[index])
                    histogram[index] = sub
            left = np.where(split, rows - done_rows + rate * (step_seconds - start), left)
            done |= split

    cap = levels[-1]
    dropped = np.clip(left - cap, 0.0, None)
    carried = np.minimum(left, cap)
    level = np.clip(np.searchsorted(levels, carried - 1e-6, side="left"), 0, len(levels) - 1)
    return StepResult(
        backlog_level=level.reshape(shape),
        backlog=levels[level].reshape(shape),
        waiting=left.reshape(shape),
        processed=processed.reshape(shape),
        dropped=dropped.reshape(shape),
        worst_latency=worst.reshape(shape),
        batches=batches.reshape(shape),
        busy_seconds=busy.reshape(shape),
        latency_histogram=histogram.reshape(shape + (histogram.shape[1],)) if histogram is not None else None,
    )
