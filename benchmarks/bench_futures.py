"""Futures against dask.distributed, in the same run: ``python -m benchmarks.bench_futures``
(also the section ``futures`` of ``python -m benchmarks``).

Two workloads, each on rush_dask (a private Redis, 2 worker processes) and on
a distributed ``LocalCluster`` (2 worker processes, 1 thread each):

* **as_completed**: ``map`` of N trivial calls, then iterate
  ``as_completed(futures, with_results=True)`` to the last result;
* **executor map**: ``list(executor.map(f, range(N)))`` with ``rush.get_executor()``
  and ``client.get_executor()``.

Each figure is the wall time from the first call to the last result, the
median of ``--repeats`` runs with [min – max]; the ratio is distributed's
time over rush_dask's (higher: rush_dask faster), per run, so a busy moment
of a shared machine hits both sides. The load average is printed with them.

    python -m benchmarks.bench_futures                 # N = 10,000, 3 repeats
    python -m benchmarks.bench_futures --n 1000 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable


def inc(x: int) -> int:
    return x + 1


def _timed(run: Callable[[], int], n: int) -> float:
    start = time.perf_counter()
    got = run()
    elapsed = time.perf_counter() - start
    assert got == n, f"expected {n} results, got {got}"
    return elapsed


def rush_runs(n: int, url: str):
    import rush_dask
    from rush_dask import Rush

    rush = Rush(f"bench-futures-{os.getpid()}", url=url)
    rush.start_workers(n_workers=2)
    rush.wait_for_workers(2, timeout=120)
    pool = rush.get_executor()

    def as_completed() -> int:
        futures = rush.map(inc, range(n), pure=False)
        return sum(1 for _ in rush_dask.as_completed(futures, with_results=True))

    def executor_map() -> int:
        return len(list(pool.map(inc, range(n))))

    return rush, {"as_completed": as_completed, "executor map": executor_map}


def distributed_runs(n: int):
    import distributed

    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = distributed.Client(cluster)
    pool = client.get_executor()

    def as_completed() -> int:
        futures = client.map(inc, range(n), pure=False)
        return sum(1 for _ in distributed.as_completed(futures, with_results=True))

    def executor_map() -> int:
        return len(list(pool.map(inc, range(n))))

    return (client, cluster), {"as_completed": as_completed, "executor map": executor_map}


def fmt(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f} – {max(values):.{digits}f}]"


def run_futures(url: str, n: int, repeats: int) -> dict:
    """Both workloads on both systems, ``repeats`` times; the figures for the report.

    >>> run_futures("redis://127.0.0.1:6379/0", 100, 1)["times"]["as_completed"]["rush_dask"]  # doctest: +SKIP
    [0.05]
    """
    rush, rush_work = rush_runs(n, url)
    (client, cluster), dist_work = distributed_runs(n)
    times: dict[str, dict[str, list[float]]] = {w: {"rush_dask": [], "distributed": []} for w in rush_work}
    loads = []
    try:
        for workload in rush_work:  # one warm-up each (imports, function caches)
            _timed(rush_work[workload], n)
            _timed(dist_work[workload], n)
        for _ in range(repeats):
            for workload in rush_work:
                loads.append(os.getloadavg()[0])
                times[workload]["rush_dask"].append(_timed(rush_work[workload], n))
                times[workload]["distributed"].append(_timed(dist_work[workload], n))
    finally:
        client.close()
        cluster.close()
        rush.reset()
        rush.close()
    return {"n": n, "repeats": repeats, "times": times, "loads": loads}


def futures_lines(s: dict) -> list[str]:
    """The report's table: seconds on each side and distributed's time over rush_dask's."""
    loads = s["loads"]
    lines = [
        f"N = {s['n']:,} trivial calls, 2 workers, {s['repeats']} repeats; "
        f"load average (1 min) during the runs: {min(loads):.1f} – {max(loads):.1f}",
        "",
        "| workload | rush_dask s | distributed s | distributed / rush_dask |",
        "|---|---|---|---|",
    ]
    for workload, by_system in s["times"].items():
        ratio = [d / r for r, d in zip(by_system["rush_dask"], by_system["distributed"])]
        lines.append(
            f"| {workload} | {fmt(by_system['rush_dask'])} | {fmt(by_system['distributed'])} | {fmt(ratio, 1)}× |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    from rush_dask.core.server import RedisServer

    server = RedisServer().start()
    try:
        result = run_futures(server.url, args.n, args.repeats)
    finally:
        server.stop()
    print("\n".join(futures_lines(result)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
