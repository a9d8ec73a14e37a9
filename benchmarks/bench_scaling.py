"""Scaling: rush_dask on 1, 2, 4, 8 and 16 workers, tasks of ``time.sleep(0.05)``.

The efficiency of a run is the ideal time ``n_tasks * 0.05 / n_workers``
over the measured time (push until every task is done, timed as in
bench_rush; the workers are started and ready before the clock starts).
The same number of tasks runs on every worker count, so the ideal time
halves when the workers double. Sleeping tasks need no CPU: 16 workers on a
2-core machine measure rush_dask's own overhead, not the cores.

    python -m benchmarks --only scaling [--repeats 3] [--quick]
"""

from __future__ import annotations

import sys
import time

from benchmarks.bench_rush import Workload, run_rush
from benchmarks.common import Quiet

SCALING_SLEEP = 0.05
WORKER_COUNTS = (1, 2, 4, 8, 16)


def sleep_50ms(x, **kwargs):
    time.sleep(SCALING_SLEEP)
    return {"y": x + 1}


def ideal_seconds(n_tasks: int, n_workers: int) -> float:
    """Time with zero overhead.

    >>> ideal_seconds(320, 16)
    1.0
    """
    return n_tasks * SCALING_SLEEP / n_workers


def run_scaling(
    url: str, n_tasks: int, worker_counts: tuple[int, ...], repeats: int, log_dir: str, quiet: Quiet
) -> dict:
    """``{"n_tasks": n, "sleep": s, "runs": {n_workers: [seconds of each repetition]}}``.

    >>> run_scaling(server.url, 320, (1, 2, 4), 3, "/tmp/logs", Quiet(0))["runs"][4]  # doctest: +SKIP
    [4.21, 4.19, 4.25]
    """
    workload = Workload("sleep 50 ms", sleep_50ms, n_tasks)
    runs: dict[int, list[float]] = {}
    for rep in range(1, repeats + 1):
        for n_workers in worker_counts:
            run = run_rush(url, workload, log_dir, quiet, n_workers=n_workers)
            runs.setdefault(n_workers, []).append(run.seconds)
            eff = ideal_seconds(n_tasks, n_workers) / run.seconds
            print(
                f"repeat {rep}/{repeats}  scaling {n_workers:>2} workers {run.seconds:7.3f} s  efficiency {eff:.3f}",
                file=sys.stderr,
                flush=True,
            )
    return {"n_tasks": n_tasks, "sleep": SCALING_SLEEP, "runs": runs}
