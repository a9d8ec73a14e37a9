"""Fetching the archive: 100,000 finished tasks into pandas, then one new task.

Targets (issue 5): a full fetch of 100,000 finished tasks in at most 1 s, and
afterwards a fetch that brings one newly finished task in at most 2 ms (the
R package needs 3.5 s and 6.1 ms). Also times the push of the 100,000 tasks
and a lazy ``to_dask_dataframe()`` computed with the sync scheduler.

    python benchmarks/bench_archive.py [--tasks 100000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

from rush_dask import Rush
from rush_dask.server import RedisServer


def task(x, w, **kwargs):
    return {"y": x * 2, "label": "done"}


def spread(values: list[float], scale: float = 1.0, unit: str = "s") -> str:
    values = [v * scale for v in values]
    return f"{statistics.median(values):.3f} {unit} [{min(values):.3f} – {max(values):.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    server = RedisServer().start()
    try:
        rush = Rush("archive-bench", url=server.url)
        rush.start_workers(task, n_workers=2)
        rush.wait_for_workers(2)
        started = time.perf_counter()
        keys = rush.push_tasks([{"x": i, "w": 0.5} for i in range(args.tasks)])
        pushed = time.perf_counter() - started
        rush.wait_for_tasks(keys)

        full, incremental, lazy = [], [], []
        for _ in range(args.repeats):
            reader = Rush("archive-bench", url=server.url)  # a cold cache each time
            t = time.perf_counter()
            frame = reader.fetch_finished_tasks()
            full.append(time.perf_counter() - t)
            assert len(frame) >= args.tasks
            rush.wait_for_tasks(rush.push_tasks([{"x": -1, "w": 0.0}]))
            t = time.perf_counter()
            frame = reader.fetch_finished_tasks()
            incremental.append(time.perf_counter() - t)
            t = time.perf_counter()
            n = len(reader.to_dask_dataframe(partition_size=10_000).compute(scheduler="sync"))
            lazy.append(time.perf_counter() - t)
            assert n == len(frame)
        memory = rush.client.info("memory")["used_memory"] / rush.n_tasks
        print(f"# Archive fetch, {args.tasks:,} finished tasks, median of {args.repeats} [min – max]\n")
        print("| measure | value | target |\n|---|---:|---:|")
        print(f"| push {args.tasks:,} tasks (one call) | {pushed:.3f} s | |")
        print(f"| full fetch into pandas | {spread(full)} | ≤ 1 s |")
        print(f"| then one new task | {spread(incremental, 1e3, 'ms')} | ≤ 2 ms |")
        print(f"| `to_dask_dataframe().compute(scheduler='sync')` | {spread(lazy)} | |")
        print(f"| Redis memory per finished task | {memory:,.0f} bytes | |")
        rush.reset()
        rush.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
