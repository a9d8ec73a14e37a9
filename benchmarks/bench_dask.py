"""Dask graphs on rush_dask against Dask's local schedulers and a distributed LocalCluster.

What is measured (2 local workers everywhere, one private Redis server on a
unix socket for rush_dask, started here and stopped at the end):

* **trivial**: 10,000 independent ``delayed(inc)(i)``, computed together;
* **tree**: 1,000 ``delayed(inc)`` leaves summed by pairwise ``delayed(add)``
  up to one result (1,999 tasks);
* **array**: ``da.ones(100_000, chunks=100).sum()``: 1,000 chunks of 100
  elements, so the graph, not the arithmetic, is the work;
* **groupby**: ``groupby("k").x.sum()`` of a dataframe of 100 partitions
  (1,000 rows each, 100 keys);
* **shuffle**: a task-based ``shuffle("k")`` of the same dataframe, then the
  distinct keys per partition, summed;
* **sleep**: 1,000 ``delayed`` calls of ``time.sleep(0.01)``: the ideal on 2
  workers is 5 s (200 tasks/s).

Each workload is computed with ``dask.compute(*collections, scheduler=...)`` on

* **rush_dask**: ``Rush(url=server.url)``, ``start_workers(n_workers=2)``;
* **sync**: ``scheduler="sync"`` (one thread, no parallelism);
* **threads**: ``scheduler="threads", num_workers=2``;
* **processes**: ``scheduler="processes"`` with a ``ProcessPoolExecutor`` of 2
  processes passed as ``pool=`` (without it Dask starts a new pool in every
  compute, and its start-up would be timed);
* **LocalCluster**: ``distributed.LocalCluster(n_workers=2, threads_per_worker=1,
  processes=True)`` (no dashboard) and a ``Client``, passed as ``scheduler=client``.

Every system is started, with its workers running, before the first timed
run (and runs one small untimed graph). A run is timed from ``dask.compute``
until it returns, so it includes Dask's own client-side work, which every
system pays. The collections are built (untimed) afresh for every run; the
systems run one after the other on each workload, workloads in turn,
repetitions outside. Before each timed run the script waits while pytest or
another benchmark runs (``common.Quiet``: 15 minutes at most in all;
``--no-wait`` to skip), and the report says how many runs were not quiet.

Dask's client-side work is timed separately, once per workload and
repetition, by doing the steps of ``dask.compute`` by hand:
``unpack_collections`` + ``collections_to_expr``,
``FinalizeCompute(...).optimize()``, ``__dask_graph__()`` (materializes and
culls the graph), ``convert_legacy_graph`` and, after the run, ``repack``
(results into the shape of the arguments); between them rush_dask's own
steps on the prepared graph: ``GraphRun(...)`` (convert and number the
nodes, fuse and bundle), ``.submit()`` (order, write in batches) and ``.wait()`` (until the
last node is done, outputs read).

The schedulers alone are timed too, on every workload but sleep:
the low-level graph that ``dask.compute`` would hand them is prepared
(untimed) and given to ``rush.get``, ``dask.local.get_sync``,
``dask.threaded.get``, ``dask.multiprocessing.get`` and ``client.get``.

Every figure is the median of ``--repeats`` runs (default 3) with
[min – max]; ratios pair the runs of one repetition. Task counts are the
nodes of the optimized graph.

Run from the repository root::

    python benchmarks/bench_dask.py               # full run, 3 repeats (about 9 minutes)
    python benchmarks/bench_dask.py --repeats 5
    python benchmarks/bench_dask.py --quick       # smoke run: 1,000 / 100 / 100 / 10 / 200, 1 repeat

The Markdown tables are printed and written to ``benchmarks/results/rush_dask.md``.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import dask.dataframe as dd
import dask.local
import dask.multiprocessing
import dask.threaded
import distributed
import numpy as np
import pandas as pd
from dask import delayed
from dask._expr import FinalizeCompute
from dask._task_spec import convert_legacy_graph
from dask.base import collections_to_expr, unpack_collections
from dask.core import flatten

if not __package__:  # run as a script: make `benchmarks` importable (here and in the workers)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (
    N_WORKERS,
    QUIET_BUDGET,
    RESULTS_DIR,
    SLEEP_SECONDS,
    WAIT_TIMEOUT,
    Quiet,
    fmt,
    machine,
    measured_sleep,
    parse_arguments,
    ratios,
)
from rush_dask import Rush
from rush_dask.core.server import RedisServer
from rush_dask.dask.graph import GraphRun, flat_keys, pack_results

RESULTS_FILE = RESULTS_DIR / "rush_dask.md"
RUSH = "rush_dask"
SYNC = "sync"
THREADS = "threads"
PROCESSES = "processes"
CLUSTER = "LocalCluster"
SYSTEMS = (RUSH, SYNC, THREADS, PROCESSES, CLUSTER)
# Targets of rush_dask, checked on every run of this benchmark.
TARGET_VS_CLUSTER = 5.0  # rush / LocalCluster throughput on the graphs of trivial tasks
TARGET_VS_SYNC = 0.5  # rush / sync throughput
TARGET_VS_IDEAL = 0.95  # rush sleep / ideal throughput
TARGET_GRAPHS = ("trivial", "tree", "array")  # the graphs of trivial tasks the targets are for


# ------------------------------------------------------------ task functions
# Module level, and pickled by reference as ``bench_dask.inc`` etc.: run as a
# script, this file re-imports itself under its module name (see the end of
# the file), and every worker can import it (rush_dask's workers get the
# client's sys.path in PYTHONPATH; distributed's and the pool's processes are
# spawned with it).


def inc(x):
    return x + 1


def add(x, y):
    return x + y


def sleep_inc(x):
    time.sleep(SLEEP_SECONDS)
    return x + 1


# ------------------------------------------------------------------ workloads
def build_trivial(n: int) -> list:
    return [delayed(inc)(i) for i in range(n)]


def build_tree(n: int) -> list:
    level = [delayed(inc)(i) for i in range(n)]
    while len(level) > 1:
        level = [
            delayed(add)(level[i], level[i + 1]) if i + 1 < len(level) else level[i] for i in range(0, len(level), 2)
        ]
    return level


def build_array(n: int) -> list:
    return [da.ones(n * 100, chunks=100).sum()]


def build_sleep(n: int) -> list:
    return [delayed(sleep_inc)(i) for i in range(n)]


ROWS_PER_PARTITION = 1_000
N_GROUPS = 100


def frame(n_partitions: int) -> pd.DataFrame:
    """The pandas frame behind the dataframe workloads: key ``k`` (N_GROUPS values), value ``x``."""
    i = np.arange(n_partitions * ROWS_PER_PARTITION)
    return pd.DataFrame({"k": i % N_GROUPS, "x": i.astype(float)})


def build_groupby(n: int) -> list:
    return [dd.from_pandas(frame(n), npartitions=n, sort=False).groupby("k").x.sum()]


def distinct_keys(df: pd.DataFrame) -> pd.Series:
    return pd.Series([df["k"].nunique()])


def build_shuffle(n: int) -> list:
    shuffled = dd.from_pandas(frame(n), npartitions=n, sort=False).shuffle("k", shuffle_method="tasks")
    # After a shuffle on k, each key is in one partition: the distinct keys per partition add up to N_GROUPS.
    return [shuffled.map_partitions(distinct_keys, meta=(None, "int64")).sum()]


def expected_groupby(n: int) -> list:
    return [frame(n).groupby("k").x.sum()]


def same(a: Any, b: Any) -> bool:
    """Equal results, pandas objects compared by value (index order ignored)."""
    if isinstance(a, pd.Series) or isinstance(b, pd.Series):
        return isinstance(a, pd.Series) and isinstance(b, pd.Series) and a.sort_index().equals(b.sort_index())
    return a == b


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    build_fun: Callable[[int], list]
    size: int  # delayed calls, leaves or chunks
    expected: Callable[[int], list]

    def build(self) -> list:
        """Fresh collections (``dask.compute(*collections)``)."""
        return self.build_fun(self.size)

    def check(self, results: Any, system: str) -> None:
        expected = self.expected(self.size)
        if len(results) != len(expected) or not all(same(a, b) for a, b in zip(results, expected)):
            raise RuntimeError(f"{system}, {self.name}: wrong results")

    @property
    def ideal_seconds(self) -> float | None:
        """Time with zero overhead (only for the sleep workload)."""
        if self.build_fun is build_sleep:
            return self.size * SLEEP_SECONDS / N_WORKERS
        return None


FULL_SIZES = (10_000, 1_000, 1_000, 100, 1_000)  # trivial, tree leaves, array chunks, partitions, sleeps
QUICK_SIZES = (1_000, 100, 100, 10, 200)


def make_workloads(
    quick: bool, frames: bool = False, sizes: tuple[int, int, int, int, int] | None = None
) -> list[Workload]:
    """The workloads; ``frames=True`` adds the dataframe groupby and shuffle.

    ``sizes``: (trivial tasks, tree leaves, array chunks, dataframe partitions,
    sleep tasks), by default FULL_SIZES or, with ``quick``, QUICK_SIZES.
    """
    trivial, tree, array, parts, sleep = sizes or (QUICK_SIZES if quick else FULL_SIZES)
    extra = (
        [
            Workload(
                "groupby",
                f"`groupby('k').x.sum()` of {N_GROUPS} keys, {ROWS_PER_PARTITION:,} rows per partition",
                build_groupby,
                parts,
                expected_groupby,
            ),
            Workload(
                "shuffle",
                f"task-based `shuffle('k')`, {ROWS_PER_PARTITION:,} rows per partition, "
                "then distinct keys per partition, summed",
                build_shuffle,
                parts,
                lambda n: [N_GROUPS],
            ),
        ]
        if frames
        else []
    )
    return [
        Workload(
            "trivial",
            "independent `delayed(inc)(i)`, computed together",
            build_trivial,
            trivial,
            lambda n: [i + 1 for i in range(n)],
        ),
        Workload(
            "tree",
            "`delayed(inc)` leaves, pairwise `delayed(add)` to one result",
            build_tree,
            tree,
            lambda n: [n * (n + 1) // 2],
        ),
        Workload("array", "`da.ones(chunks * 100, chunks=100).sum()`", build_array, array, lambda n: [float(n * 100)]),
        *extra,
        Workload(
            "sleep",
            f"independent `delayed(sleep_inc)(i)`, `time.sleep({SLEEP_SECONDS})` each",
            build_sleep,
            sleep,
            lambda n: [i + 1 for i in range(n)],
        ),
    ]


# -------------------------------------------------------------------- systems
class Systems:
    """Every scheduler, started once with its workers running; ``compute`` or ``get`` runs one."""

    def __init__(self, redis_url: str, log_dir: str):
        self.rush = Rush(url=redis_url)
        self.pool: ProcessPoolExecutor | None = None
        self.cluster: distributed.LocalCluster | None = None
        self.client: distributed.Client | None = None
        try:
            self.rush.start_workers(n_workers=N_WORKERS, log_dir=log_dir)
            self.pool = start_process_pool()
            logging.getLogger("distributed").setLevel(logging.ERROR)
            self.cluster = distributed.LocalCluster(
                n_workers=N_WORKERS, threads_per_worker=1, processes=True, dashboard_address=None
            )
            # Not the process's default client: graphs built for the other systems must not get
            # distributed's P2P shuffle, which only a distributed cluster runs.
            self.client = distributed.Client(self.cluster, set_as_default=False)
            self.rush.wait_for_workers(N_WORKERS, timeout=120)
            self.client.wait_for_workers(N_WORKERS, timeout=120)
        except BaseException:
            self.close()
            raise

    def compute(self, system: str, collections: list) -> tuple:
        if system == RUSH:
            return dask.compute(*collections, scheduler=self.rush, timeout=WAIT_TIMEOUT)
        if system == SYNC:
            return dask.compute(*collections, scheduler="sync")
        if system == THREADS:
            return dask.compute(*collections, scheduler="threads", num_workers=N_WORKERS)
        if system == PROCESSES:
            return dask.compute(*collections, scheduler="processes", pool=self.pool)
        if system == CLUSTER:
            with self.client.as_current():
                return dask.compute(*collections, scheduler=self.client)
        raise ValueError(system)

    def build(self, system: str, w: Workload) -> list:
        """The workload's collections as a user of ``system`` would build them."""
        if system == CLUSTER:
            with self.client.as_current():  # Dask picks P2P where it would for a distributed user
                return w.build()
        return w.build()

    def get(self, system: str, graph: dict, keys: list) -> list:
        """The scheduler alone, on a graph that Dask already prepared."""
        if system == RUSH:
            return self.rush.get(graph, keys, timeout=WAIT_TIMEOUT)
        if system == SYNC:
            return dask.local.get_sync(graph, keys)
        if system == THREADS:
            return dask.threaded.get(graph, keys, num_workers=N_WORKERS)
        if system == PROCESSES:
            return dask.multiprocessing.get(graph, keys, pool=self.pool)
        if system == CLUSTER:
            return self.client.get(graph, keys)
        raise ValueError(system)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
        self.rush.reset()
        self.rush.close()


def start_process_pool() -> ProcessPoolExecutor:
    """The pool ``scheduler="processes"`` would start, started now, both processes running."""
    from dask.multiprocessing import get_context, initialize_worker_process

    pool = ProcessPoolExecutor(
        N_WORKERS, mp_context=get_context(), initializer=partial(initialize_worker_process, user_initializer=None)
    )
    # Two tasks that overlap in time make the pool start both processes.
    pids = set(pool.map(_pid_after_a_while, range(N_WORKERS)))
    if len(pids) != N_WORKERS:
        raise RuntimeError(f"process pool: {len(pids)} processes ran, not {N_WORKERS}")
    return pool


def _pid_after_a_while(_: int) -> int:
    time.sleep(0.5)
    return os.getpid()


# ---------------------------------------------------------------- the runs
def warm_up(systems: Systems) -> None:
    """One small untimed graph on every system: workers import this module, pools fill."""
    for system in SYSTEMS:
        systems.compute(system, [*build_tree(8), *build_array(4), *build_sleep(2)])


def timed_compute(systems: Systems, system: str, w: Workload, quiet: Quiet) -> float:
    collections = systems.build(system, w)
    gc.collect()
    quiet.wait()
    t0 = time.perf_counter()
    results = systems.compute(system, collections)
    seconds = time.perf_counter() - t0
    w.check(results, system)
    return seconds


def prepared_graph(w: Workload) -> tuple[dict, list, Callable]:
    """What ``dask.compute`` hands a scheduler, as a low-level graph: (graph, keys, repack)."""
    collections, repack = unpack_collections(*w.build())
    expr = FinalizeCompute(collections_to_expr(collections, True)).optimize()
    keys = list(flatten(expr.__dask_keys__()))
    return convert_legacy_graph(expr.__dask_graph__()), keys, repack


def timed_get(systems: Systems, system: str, w: Workload, quiet: Quiet) -> float:
    graph, keys, repack = prepared_graph(w)
    gc.collect()
    quiet.wait()
    t0 = time.perf_counter()
    results = systems.get(system, graph, keys)
    seconds = time.perf_counter() - t0
    w.check(repack(results), f"{system} (prepared graph)")
    return seconds


BUILD = "build collections"
DASK_STEPS = ("collections_to_expr", "optimize", "__dask_graph__", "convert_legacy_graph", "repack")
RUSH_STEPS = ("GraphRun()", "submit()", "wait()")


def phases(systems: Systems, w: Workload, quiet: Quiet) -> tuple[dict[str, float], int]:
    """Seconds of each step of ``dask.compute(..., scheduler=rush)`` done by hand; number of nodes."""
    gc.collect()
    quiet.wait()
    t = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        t[name], clock = now - clock, now

    collections = w.build()
    lap(BUILD)
    collections, repack = unpack_collections(*collections)
    expr = collections_to_expr(collections, True)
    lap("collections_to_expr")
    expr = FinalizeCompute(expr).optimize()
    keys = list(flatten(expr.__dask_keys__()))
    lap("optimize")
    graph = expr.__dask_graph__()
    lap("__dask_graph__")
    n_nodes = len(convert_legacy_graph(graph))
    lap("convert_legacy_graph")
    run = GraphRun(systems.rush, expr, flat_keys(keys), notify=True)
    lap("GraphRun()")
    run.submit()
    lap("submit()")
    results = run.wait(timeout=WAIT_TIMEOUT)
    lap("wait()")
    values = repack(pack_results(keys, results))
    lap("repack")
    w.check(values, f"{RUSH} (by hand)")
    return t, n_nodes


def run_all(systems: Systems, workloads: list[Workload], repeats: int, quiet: Quiet, *, detail: bool = True) -> Results:
    """Every workload on every system, ``repeats`` times; ``detail=False`` times ``dask.compute`` only.

    The detail is Dask's client-side work step by step and the schedulers
    alone on the prepared graph (about as long again as the end-to-end runs).
    """
    r = Results()
    warm_up(systems)
    for rep in range(1, repeats + 1):
        for w in workloads:
            if not detail:
                r.nodes.setdefault(w.name, len(prepared_graph(w)[0]))
                for system in SYSTEMS:
                    seconds = timed_compute(systems, system, w, quiet)
                    r.times.setdefault((system, w.name), []).append(seconds)
                    print(
                        f"repeat {rep}/{repeats}  {w.name:<8} {system:<12} {seconds:7.3f} s  "
                        f"{r.nodes[w.name] / seconds:9,.0f} tasks/s",
                        file=sys.stderr,
                        flush=True,
                    )
                continue
            t, r.nodes[w.name] = phases(systems, w, quiet)
            for name, seconds in t.items():
                r.steps.setdefault((w.name, name), []).append(seconds)
            prep = sum(t[s] for s in DASK_STEPS)
            print(
                f"repeat {rep}/{repeats}  {w.name:<8} Dask client-side work {prep:7.3f} s, "
                f"rush submit {t['submit()']:.3f} s, wait {t['wait()']:.3f} s",
                file=sys.stderr,
                flush=True,
            )
            for system in SYSTEMS:
                seconds = timed_compute(systems, system, w, quiet)
                r.times.setdefault((system, w.name), []).append(seconds)
                print(
                    f"repeat {rep}/{repeats}  {w.name:<8} {system:<12} {seconds:7.3f} s  "
                    f"{r.nodes[w.name] / seconds:9,.0f} tasks/s",
                    file=sys.stderr,
                    flush=True,
                )
            if w.ideal_seconds is not None:
                continue  # Dask's work is small there, and a second round would take a minute
            for system in SYSTEMS:
                seconds = timed_get(systems, system, w, quiet)
                r.sched.setdefault((system, w.name), []).append(seconds)
                print(
                    f"repeat {rep}/{repeats}  {w.name:<8} {system:<12} {seconds:7.3f} s  "
                    f"{r.nodes[w.name] / seconds:9,.0f} tasks/s  (prepared graph)",
                    file=sys.stderr,
                    flush=True,
                )
    return r


# ------------------------------------------------------------------ reports
@dataclass
class Results:
    times: dict = field(default_factory=dict)  # (system, workload) -> seconds: dask.compute
    sched: dict = field(default_factory=dict)  # (system, workload) -> seconds: the prepared graph
    steps: dict = field(default_factory=dict)  # (workload, step) -> seconds of each repetition
    nodes: dict = field(default_factory=dict)  # workload -> tasks in the optimized graph

    def dask_work(self, w: Workload) -> list[float]:
        """Dask's client-side work (building the collections excluded) in each repetition."""
        return [sum(vals) for vals in zip(*(self.steps[w.name, s] for s in DASK_STEPS))]


def throughput_table(runs: dict, workloads: list[Workload], nodes: dict) -> list[str]:
    lines = ["| workload | system | tasks | time (s) | tasks/s |", "|---|---|---:|---:|---:|"]
    for w in workloads:
        n = nodes[w.name]
        if (RUSH, w.name) not in runs:
            continue
        for system in SYSTEMS:
            seconds = runs[system, w.name]
            lines.append(f"| {w.name} | {system} | {n:,} | {fmt(seconds, 3)} | {fmt([n / s for s in seconds])} |")
        if w.ideal_seconds:
            lines.append(f"| {w.name} | ideal | {n:,} | {w.ideal_seconds:.3f} | {n / w.ideal_seconds:,.0f} |")
    return lines


def ratio_table(r: Results, workloads: list[Workload], sleep_seconds: float) -> list[str]:
    """Throughput ratios per repetition (same tasks: inverse time ratios), then median [min – max].

    The targets are judged on the scheduler's own time (the prepared graph; for
    the sleep graph, rush_dask's own steps), on the graphs of trivial tasks;
    end-to-end ratios and the dataframe graphs are shown without a target.
    """
    graphs = [w for w in workloads if w.ideal_seconds is None]
    sleeps = [w for w in workloads if w.ideal_seconds is not None]
    rows = []
    for other, target in ((CLUSTER, TARGET_VS_CLUSTER), (SYNC, TARGET_VS_SYNC)):
        for w in graphs:
            rows.append(
                (
                    f"rush / {other}, {w.name}, scheduler alone (prepared graph)",
                    ratios(r.sched[other, w.name], r.sched[RUSH, w.name]),
                    target if w.name in TARGET_GRAPHS else None,
                )
            )
        for w in graphs if other == CLUSTER else workloads:
            rows.append(
                (f"rush / {other}, {w.name}, end to end", ratios(r.times[other, w.name], r.times[RUSH, w.name]), None)
            )
    for w in sleeps:
        own = [sum(vals) for vals in zip(*(r.steps[w.name, s] for s in RUSH_STEPS))]
        rows.append(
            (
                f"{RUSH} {w.name} / ideal, scheduler alone (GraphRun + submit + wait)",
                [w.ideal_seconds / s for s in own],
                TARGET_VS_IDEAL,
            )
        )
        for system in SYSTEMS:
            rows.append(
                (f"{system} {w.name} / ideal, end to end", [w.ideal_seconds / s for s in r.times[system, w.name]], None)
            )
        rows.append(
            (
                (
                    f"ceiling: {SLEEP_SECONDS * 1e3:g} ms / measured time.sleep({SLEEP_SECONDS:g}) "
                    f"({sleep_seconds * 1e3:.3f} ms)"
                ),
                [SLEEP_SECONDS / sleep_seconds],
                None,
            )
        )
    lines = ["| throughput ratio | value | rush_dask target | met |", "|---|---:|---:|:---:|"]
    for name, values, target in rows:
        met = "" if target is None else ("yes" if statistics.median(values) >= target else "**no**")
        lines.append(f"| {name} | {fmt(values, 3)} | {'' if target is None else f'≥ {target:g}'} | {met} |")
    return lines


def prep_table(r: Results, workloads: list[Workload]) -> list[str]:
    head = [BUILD, *DASK_STEPS]
    lines = [
        "| workload | tasks | "
        + " | ".join(f"`{s}`" if "_" in s else s for s in head)
        + " | Dask work | share of rush_dask time | share of sync time |",
        "|---|---:|" + "---:|" * (len(head) + 3),
    ]
    for w in workloads:
        total = r.dask_work(w)
        share_rush = [100 * p / t for p, t in zip(total, r.times[RUSH, w.name])]
        share_sync = [100 * p / t for p, t in zip(total, r.times[SYNC, w.name])]
        lines.append(
            f"| {w.name} | {r.nodes[w.name]:,} | "
            + " | ".join(fmt(r.steps[w.name, s], 3) for s in head)
            + f" | {fmt(total, 3)} | {fmt(share_rush)} % | {fmt(share_sync)} % |"
        )
    return lines


def rush_steps_table(r: Results, workloads: list[Workload]) -> list[str]:
    lines = [
        (
            "| workload | tasks | `GraphRun()` | `submit()` | `wait()` | sum | tasks/s (submit + wait) "
            "| `rush.get` on the prepared graph |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for w in workloads:
        own = [sum(vals) for vals in zip(*(r.steps[w.name, s] for s in RUSH_STEPS))]
        sw = [a + b for a, b in zip(r.steps[w.name, "submit()"], r.steps[w.name, "wait()"])]
        lines.append(
            f"| {w.name} | {r.nodes[w.name]:,} | "
            + " | ".join(fmt(r.steps[w.name, s], 3) for s in RUSH_STEPS)
            + f" | {fmt(own, 3)} | {fmt([r.nodes[w.name] / s for s in sw])} "
            f"| {fmt(r.sched[RUSH, w.name], 3) if (RUSH, w.name) in r.sched else ''} |"
        )
    return lines


def environment(url: str) -> str:
    m = machine(url)
    return (
        f"Python {m['python']}, dask {m['dask']}, distributed {m['distributed']}, Redis "
        f"{m['redis_server']} (private server, unix socket), {m['cores']} cores, {N_WORKERS} "
        f"workers per system, rush_dask at {m['rush_dask']}"
    )


def report(r: Results, workloads: list[Workload], sleep_seconds: float, quiet: Quiet, repeats: int, env: str) -> str:
    noisy = (
        f" **{quiet.noisy_runs} of {quiet.runs} timed runs started while other test or benchmark "
        "processes were running: their figures may be low.**"
        if quiet.noisy_runs
        else ""
    )
    return "\n".join(
        [
            "# rush_dask as a Dask scheduler",
            "",
            (
                f"{env}. Median of {repeats} repeat(s) [min – max]; generated by `benchmarks/bench_dask.py` "
                f"on {time.strftime('%Y-%m-%d %H:%M')}.{noisy}"
            ),
            "",
            "Workloads: " + "; ".join(f"**{w.name}** ({w.size:,}): {w.description}" for w in workloads) + ".",
            "",
            "## Throughput: `dask.compute` end to end",
            "",
            "From `dask.compute(...)` to its return: Dask's client-side work (below) included.",
            "",
            *throughput_table(r.times, workloads, r.nodes),
            "",
            "## Throughput: the scheduler alone, on the prepared graph",
            "",
            (
                "The low-level graph that `dask.compute` would hand the scheduler (optimized, "
                "materialized, converted; untimed) given to each scheduler's `get`: `rush.get`, "
                "`dask.local.get_sync`, `dask.threaded.get`, `dask.multiprocessing.get`, `client.get`. "
                "Results are repacked outside the timing. Not run for the sleep workload."
            ),
            "",
            *throughput_table(r.sched, workloads, r.nodes),
            "",
            "## Ratios (within this run)",
            "",
            (
                "The targets (issue 4) are for the graphs of trivial tasks (trivial, tree, array) and the "
                "sleep graph, judged on the scheduler's own time: the prepared graph, and for the sleep "
                "graph rush_dask's own steps. Dask's client-side work, the same for every scheduler, is "
                "reported on its own below; end-to-end ratios, which include it, are shown too."
            ),
            "",
            *ratio_table(r, workloads, sleep_seconds),
            "",
            "## Dask's client-side work (s)",
            "",
            (
                "The steps of `dask.compute` done by hand, with rush_dask as the scheduler: "
                "`collections_to_expr` (with `unpack_collections`), `optimize` (of `FinalizeCompute`), "
                "`__dask_graph__` (materialize and cull), `convert_legacy_graph` and, after the run, "
                "`repack`. Every system pays them (LocalCluster materializes the graph in its scheduler, "
                "the local schedulers in `get_async`). `Dask work` is their sum; building the "
                "collections is in neither it nor the end-to-end timings."
            ),
            "",
            *prep_table(r, workloads),
            "",
            "## rush_dask's own steps on the prepared graph (s)",
            "",
            (
                "Between `convert_legacy_graph` and `repack` above: `GraphRun()` reads the (now cached) "
                "graph, converts it again, fuses small subtrees, bundles independent outputs and numbers "
                "the tasks; `submit()` orders them (`dask.order`) and writes them in batches of 250, one "
                "script call each; `wait()` returns when the last task is "
                "done and the outputs are read. The sum should be close to the last column, the time of "
                "`rush.get` in the prepared-graph table."
            ),
            "",
            *rush_steps_table(r, workloads),
            "",
        ]
    )


# --------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args, repeats = parse_arguments(argv, __doc__, quick_help="smaller graphs, 1 repeat")
    workloads = make_workloads(args.quick, frames=True)
    quiet = Quiet(0 if args.no_wait else QUIET_BUDGET)
    server = RedisServer().start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-dask-logs-") as log_dir:
            env = environment(server.url)
            systems = Systems(server.url, log_dir)
            try:
                results = run_all(systems, workloads, repeats, quiet)
            finally:
                systems.close()
    finally:
        server.stop()
    text = report(results, workloads, measured_sleep(), quiet, repeats, env)
    print(text)
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(text)
    print(f"(written to {RESULTS_FILE})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    # rush_dask pickles graph nodes with plain pickle first, which stores a
    # function of __main__ by reference ("__main__.inc"), and a rush worker's
    # __main__ is rush_dask.core.worker: the task would fail there. So run the same
    # code as the importable module benchmarks.bench_dask.
    module = importlib.import_module("benchmarks.bench_dask")
    sys.exit(module.main())
