"""Fetching the archive: 100,000 finished tasks into pandas, then one new task.

Targets (issue 5): a full fetch of 100,000 finished tasks in at most 1 s, and
afterwards a fetch that brings one newly finished task in at most 2 ms (the
R package needs 3.5 s and 6.1 ms). The incremental fetch is timed both ways:
``fetch_finished_tasks()`` (the whole table, the new row appended) and
``fetch_new_tasks()`` (the new row alone). Also times the push of the 100,000
tasks and a lazy ``to_dask_dataframe()`` computed with the sync scheduler.

    python benchmarks/bench_archive.py [--tasks 100000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

if not __package__:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import N_WORKERS, WAIT_TIMEOUT, fmt
from rush_dask import Rush
from rush_dask.core.server import RedisServer

TARGET_FULL = 1.0  # seconds
TARGET_INCREMENTAL = 2e-3  # seconds


def task(x, w, **kwargs):
    return {"y": x * 2, "label": "done"}


def run_archive(url: str, n_tasks: int, repeats: int, log_dir: str | None = None) -> dict:
    """Push and run ``n_tasks`` tasks, then time ``repeats`` full and incremental fetches.

    Returns lists of seconds per repetition (``full``, ``incremental``,
    ``new_only``, ``lazy``), ``push`` seconds and Redis ``memory_per_task`` in bytes.

    >>> run_archive(server.url, 100_000, 5)["full"]  # doctest: +SKIP
    [0.41, 0.40, 0.43, 0.41, 0.42]
    """
    network = f"archive-bench-{uuid.uuid4().hex[:8]}"
    rush = Rush(network, url=url)
    try:
        rush.start_workers(task, n_workers=N_WORKERS, log_dir=log_dir)
        rush.wait_for_workers(N_WORKERS)
        started = time.perf_counter()
        keys = rush.push_tasks([{"x": i, "w": 0.5} for i in range(n_tasks)])
        pushed = time.perf_counter() - started
        rush.wait_for_tasks(keys, timeout=WAIT_TIMEOUT, progress=False)

        full, incremental, new_only, lazy = [], [], [], []
        for _ in range(repeats):
            reader = Rush(network, url=url)  # a cold cache each time
            t = time.perf_counter()
            frame = reader.fetch_finished_tasks()
            full.append(time.perf_counter() - t)
            assert len(frame) >= n_tasks
            reader.fetch_new_tasks()  # untimed: its own offset, to the end of the archive
            rush.wait_for_tasks(rush.push_tasks([{"x": -1, "w": 0.0}]), progress=False)
            t = time.perf_counter()
            frame = reader.fetch_finished_tasks()
            incremental.append(time.perf_counter() - t)
            reader.fetch_new_tasks()  # untimed: past the task that fetch_finished_tasks brought
            rush.wait_for_tasks(rush.push_tasks([{"x": -2, "w": 0.0}]), progress=False)
            t = time.perf_counter()
            new = reader.fetch_new_tasks()
            new_only.append(time.perf_counter() - t)
            assert new["x"].tolist() == [-2]
            t = time.perf_counter()
            n = len(reader.to_dask_dataframe(partition_size=10_000).compute(scheduler="sync"))
            lazy.append(time.perf_counter() - t)
            assert n == len(frame) + 1  # the task that fetch_new_tasks brought
            reader.close()
        memory = rush.client.info("memory")["used_memory"] / rush.n_tasks
        return {
            "n_tasks": n_tasks,
            "push": pushed,
            "full": full,
            "incremental": incremental,
            "new_only": new_only,
            "lazy": lazy,
            "memory_per_task": memory,
        }
    finally:
        rush.reset()
        rush.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    server = RedisServer().start()
    try:
        r = run_archive(server.url, args.tasks, args.repeats)
    finally:
        server.stop()
    print(f"# Archive fetch, {args.tasks:,} finished tasks, median of {args.repeats} [min – max]\n")
    print("| measure | value | target |\n|---|---:|---:|")
    print(f"| push {args.tasks:,} tasks (one call) | {r['push']:.3f} s | |")
    print(f"| full fetch into pandas | {fmt(r['full'], 3)} s | ≤ {TARGET_FULL:g} s |")
    print(
        f"| then one new task, `fetch_finished_tasks()` | {fmt([t * 1e3 for t in r['incremental']], 3)} ms "
        f"| ≤ {TARGET_INCREMENTAL * 1e3:g} ms |"
    )
    print(
        f"| then one new task, `fetch_new_tasks()` | {fmt([t * 1e3 for t in r['new_only']], 3)} ms "
        f"| ≤ {TARGET_INCREMENTAL * 1e3:g} ms |"
    )
    print(f"| `to_dask_dataframe().compute(scheduler='sync')` | {fmt(r['lazy'], 3)} s | |")
    print(f"| Redis memory per finished task | {r['memory_per_task']:,.0f} bytes | |")


if __name__ == "__main__":
    main()
