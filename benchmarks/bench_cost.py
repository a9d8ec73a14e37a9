"""Cost: Redis memory per queued and per finished task, client memory and time for 100,000 tasks.

* **push**: ``push_tasks`` of 100,000 tasks in one call (no workers running);
  Redis ``used_memory`` (``INFO memory``) before and after, per task; and
  ``MEMORY USAGE`` of one queued task's hash (median of 100 tasks).
* **finished**: then 2 workers run them (trivial tasks); ``used_memory``
  per task again, ``MEMORY USAGE`` of a finished task's hash and the archive
  list per task. Run once (the last repetition): running 100,000 tasks is
  the archive benchmark's job.
* **graph**: a Dask graph of 100,000 tasks (99,000 leaves ``inc(i)``, summed
  by 990 nodes of 100 leaves, then one total), handed to rush_dask as a
  low-level graph: ``GraphRun(...)`` + ``submit()`` timed; then once more
  under ``tracemalloc`` (which slows it down) for the peak of the client's
  Python allocations during them. Nothing runs the graph; the network is
  reset afterwards.

    python -m benchmarks --only cost [--repeats 3] [--quick]
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
import tracemalloc
import uuid

from benchmarks.bench_dask import inc
from benchmarks.bench_rush import add_one
from benchmarks.common import N_WORKERS, WAIT_TIMEOUT, Quiet
from rush_dask import Rush
from rush_dask.dask.graph import GraphRun

LEAVES_PER_GROUP = 100


def used_memory(rush: Rush) -> int:
    """The Redis server's ``used_memory`` in bytes (``INFO memory``)."""
    return int(rush.client.info("memory")["used_memory"])


def hash_memory(rush: Rush, keys: list[str], n: int = 100) -> float:
    """Median ``MEMORY USAGE`` of the hashes of (up to) ``n`` of these tasks."""
    sample = keys[:: max(1, len(keys) // n)][:n]
    return statistics.median(rush.client.memory_usage(rush.keys.task(k), samples=0) for k in sample)


def graph_of(n_tasks: int) -> tuple[dict, list]:
    """A low-level graph of about ``n_tasks`` nodes: leaves, sums of 100 leaves, one total.

    >>> len(graph_of(1_000)[0]), graph_of(1_000)[1]
    (910, ['total'])
    """
    n_groups = max(1, n_tasks // (LEAVES_PER_GROUP + 1))
    dsk: dict = {("leaf", i): (inc, i) for i in range(n_groups * LEAVES_PER_GROUP)}
    for j in range(n_groups):
        dsk["group", j] = (sum, [("leaf", j * LEAVES_PER_GROUP + k) for k in range(LEAVES_PER_GROUP)])
    dsk["total"] = (sum, [("group", j) for j in range(n_groups)])
    return dsk, ["total"]


def graph_cost(url: str, n_tasks: int, *, trace: bool = False) -> dict:
    """Seconds of ``GraphRun`` + ``submit`` of a graph of about ``n_tasks``; with ``trace``, memory.

    ``trace=True`` also gives the peak of the client's Python allocations
    during them and the size of the graph dict, from ``tracemalloc``, which
    slows allocations down: its run is not the one timed.

    >>> graph_cost(server.url, 100_000, trace=True)["peak_bytes"]  # doctest: +SKIP
    """
    dsk, outputs = graph_of(n_tasks)
    rush = Rush(f"cost-{uuid.uuid4().hex[:10]}", url=url)
    out: dict = {"n_nodes": len(dsk)}
    try:
        gc.collect()
        if trace:
            tracemalloc.start()
        t0 = time.perf_counter()
        GraphRun(rush, dsk, outputs, notify=True).submit()
        out["submit_seconds"] = time.perf_counter() - t0
        if trace:
            out["peak_bytes"] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            tracemalloc.start()  # the graph itself, for scale
            before = tracemalloc.get_traced_memory()[0]
            dsk, outputs = graph_of(n_tasks)
            out["graph_bytes"] = tracemalloc.get_traced_memory()[0] - before
        return out
    finally:
        if tracemalloc.is_tracing():
            tracemalloc.stop()
        rush.reset()
        rush.close()


def run_cost(url: str, n_tasks: int, repeats: int, log_dir: str, quiet: Quiet) -> dict:
    """Lists of per-repetition figures (``finished_*`` from the last repetition only).

    >>> run_cost(server.url, 100_000, 3, "/tmp/logs", Quiet(0))["queued_bytes"]  # doctest: +SKIP
    [421.3, 421.3, 421.4]
    """
    out: dict = {
        "n_tasks": n_tasks,
        "push_seconds": [],
        "queued_bytes": [],
        "queued_hash_bytes": [],
        "submit_seconds": [],
    }
    for rep in range(1, repeats + 1):
        rush = Rush(f"cost-{uuid.uuid4().hex[:10]}", url=url)
        try:
            xss = [{"x": i} for i in range(n_tasks)]
            base = used_memory(rush)
            quiet.wait()
            t0 = time.perf_counter()
            keys = rush.push_tasks(xss)
            out["push_seconds"].append(time.perf_counter() - t0)
            out["queued_bytes"].append((used_memory(rush) - base) / n_tasks)
            out["queued_hash_bytes"].append(hash_memory(rush, keys))
            if rep == repeats:
                rush.start_workers(add_one, n_workers=N_WORKERS, log_dir=log_dir)
                rush.wait_for_tasks(keys, timeout=WAIT_TIMEOUT, progress=False)
                rush.stop_workers()
                out["finished_bytes"] = (used_memory(rush) - base) / n_tasks
                out["finished_hash_bytes"] = hash_memory(rush, keys)
                out["archive_bytes"] = (rush.client.memory_usage(rush.keys.archive, samples=0) or 0) / n_tasks
        finally:
            rush.reset()
            rush.close()
        quiet.wait()
        graph = graph_cost(url, n_tasks)
        out["n_nodes"] = graph["n_nodes"]
        out["submit_seconds"].append(graph["submit_seconds"])
        print(
            f"repeat {rep}/{repeats}  cost: push {out['push_seconds'][-1]:.3f} s, "
            f"{out['queued_bytes'][-1]:,.0f} B/queued task, graph submit {graph['submit_seconds']:.3f} s",
            file=sys.stderr,
            flush=True,
        )
    traced = graph_cost(url, n_tasks, trace=True)
    out["peak_bytes"], out["graph_bytes"] = traced["peak_bytes"], traced["graph_bytes"]
    return out
