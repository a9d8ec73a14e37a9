"""Data-heavy Dask graphs: megabyte chunks on rush_dask, the threads scheduler and a LocalCluster.

The graphs of issue 12 and a few of the same kind, each computed with
``dask.compute`` end to end on

* **rush_dask**: ``Rush(url=server.url)`` with 2 local workers (large results
  stay on the host, see ``rush_dask.core.dataplane``);
* **threads**: ``scheduler="threads", num_workers=2`` (one process, no copy at all);
* **LocalCluster**: ``distributed.LocalCluster(n_workers=2, threads_per_worker=1)``.

Workloads (full size):

* **matmul**: ``(x @ x.T).sum()``, x 6000 x 6000 random, chunks 1500 (18 MB);
* **svd**: tall-and-skinny ``da.linalg.svd`` of 20000 x 2000, chunks 2000 x 2000,
  all of u, s, v computed (u alone is 320 MB);
* **groupby**: ``groupby("k").mean()`` of a 4,000,000-row DataFrame in 40 partitions;
* **merge**: the same frame merged with a groupby result on its key, then summed;
* **rechunk**: 8000 x 8000 random, chunks (8000, 500) rechunked to (500, 8000), summed
  (every output chunk takes a piece of every input chunk);
* **big result**: a 1 GiB array (16384 x 8192, chunks 2048 rows) returned to the client.

For rush_dask the report adds what crossed Redis (``INFO stats``: network
bytes in and out of the server during the run) and what its workers wrote to
and mapped from their host's shared memory, and Redis' peak memory during the
svd. Every figure is the median of ``--repeats`` runs with [min - max]; ratios
pair the runs of one repetition.

    python benchmarks/bench_data.py                 # full size, 3 repeats
    python benchmarks/bench_data.py --quick         # small sizes, 1 repeat
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dask
import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd
import redis

from benchmarks.common import N_WORKERS, WAIT_TIMEOUT, Quiet, fmt, ratios
from rush_dask import Rush

RUSH, THREADS, CLUSTER = "rush_dask", "threads", "LocalCluster"
SYSTEMS = (RUSH, THREADS, CLUSTER)

# (matmul n, matmul chunk), (svd rows, cols), (frame rows, partitions), rechunk n, big result rows
SIZES = {
    "full": {"matmul": (6000, 1500), "svd": (20000, 2000), "frame": (4_000_000, 40), "rechunk": 8000, "big": 16384},
    "quick": {"matmul": (2000, 500), "svd": (4000, 400), "frame": (400_000, 8), "rechunk": 2000, "big": 2048},
    "tiny": {"matmul": (400, 200), "svd": (800, 100), "frame": (20_000, 4), "rechunk": 400, "big": 256},
}


@dataclass
class Workload:
    name: str
    description: str
    build: Callable[[], list]
    check: Callable[[tuple], None] = lambda results: None


def _frame(rows: int, partitions: int) -> dd.DataFrame:
    rng = np.random.default_rng(0)
    pdf = pd.DataFrame({"k": rng.integers(0, 1000, rows), "x": rng.random(rows), "y": rng.random(rows)})
    return dd.from_pandas(pdf, npartitions=partitions)


def make_workloads(size: str) -> list[Workload]:
    s = SIZES[size]
    n, chunk = s["matmul"]
    rows, cols = s["svd"]
    frame_rows, parts = s["frame"]
    r = s["rechunk"]
    big = s["big"]

    def matmul() -> list:
        x = da.random.RandomState(0).random_sample((n, n), chunks=chunk)
        return [(x @ x.T).sum()]

    def svd() -> list:
        x = da.random.RandomState(1).random_sample((rows, cols), chunks=(cols, cols))
        return list(da.linalg.svd(x))

    def check_svd(results: tuple) -> None:
        u, s_, v = results
        assert u.shape == (rows, cols) and s_.shape == (cols,) and v.shape == (cols, cols)
        assert np.all(np.diff(s_) <= 1e-9 * s_[0])  # singular values come sorted

    def groupby() -> list:
        return [_frame(frame_rows, parts).groupby("k").mean()]

    def merge() -> list:
        df = _frame(frame_rows, parts)
        means = df.groupby("k").x.mean().rename("xm").reset_index()
        return [df.merge(means, on="k").xm.sum()]

    def rechunk() -> list:
        x = da.random.RandomState(2).random_sample((r, r), chunks=(r, max(r // 16, 1)))
        return [x.rechunk((max(r // 16, 1), r)).sum()]

    def big_result() -> list:
        return [da.ones((big, 8192), chunks=(max(big // 8, 1), 8192), dtype="f8") * 2]

    def check_big(results: tuple) -> None:
        assert results[0].shape == (big, 8192) and float(results[0][-1, -1]) == 2.0

    return [
        Workload("matmul", f"`(x @ x.T).sum()`, x {n:,}² random, chunks {chunk}", matmul),
        Workload(
            "svd", f"tall-skinny `da.linalg.svd` of {rows:,}×{cols:,}, chunks {cols}², u s v returned", svd, check_svd
        ),
        Workload("groupby", f"`groupby('k').mean()`, {frame_rows:,} rows, {parts} partitions", groupby),
        Workload("merge", f"merge with a groupby result on `k`, {frame_rows:,} rows, then a sum", merge),
        Workload("rechunk", f"{r:,}² random rechunked from column to row blocks, summed", rechunk),
        Workload(
            "big result", f"a {big * 8192 * 8 / 2**30:.2g} GiB array returned to the client", big_result, check_big
        ),
    ]


class Systems:
    """rush_dask, the threads scheduler and a LocalCluster, each with 2 workers running."""

    def __init__(self, redis_url: str, log_dir: str):
        import distributed

        self.redis = redis.Redis.from_url(redis_url)
        self.rush = Rush(url=redis_url)
        self.cluster = self.client = None
        try:
            self.rush.start_workers(n_workers=N_WORKERS, log_dir=log_dir, heartbeat_period=0.5)
            logging.getLogger("distributed").setLevel(logging.ERROR)
            self.cluster = distributed.LocalCluster(
                n_workers=N_WORKERS, threads_per_worker=1, processes=True, dashboard_address=None
            )
            # Not the process's default client: graphs built for the other systems must not
            # pick distributed's P2P rechunk or shuffle, which only a distributed cluster runs.
            self.client = distributed.Client(self.cluster, set_as_default=False)
            self.rush.wait_for_workers(N_WORKERS, timeout=120)
            self.client.wait_for_workers(N_WORKERS, timeout=120)
        except BaseException:
            self.close()
            raise

    def build(self, system: str, w: Workload) -> list:
        """The workload's collections as a user of ``system`` would build them."""
        if system == CLUSTER:
            with self.client.as_current():  # P2P rechunk and shuffle where Dask picks them
                return w.build()
        return w.build()

    def optimize(self, system: str, collections: list) -> list:
        """The collections after Dask's own optimization, done before the clock starts.

        It is the same client-side work for every scheduler (only the shuffle method
        differs), and Dask caches its results by token: timed inside the run, it was paid
        by whichever system ran a workload first and came free to the others (measured:
        0.35 s of ``from_pandas`` divisions on the 4 M-row frame).
        """

        def optimized() -> list:  # DataFrame expressions: arrays are cheap to optimize
            return [c.optimize() if hasattr(c, "expr") else c for c in collections]

        if system == CLUSTER:
            with self.client.as_current():
                return optimized()
        return optimized()

    def compute(self, system: str, collections: list) -> tuple:
        if system == RUSH:
            return dask.compute(*collections, scheduler=self.rush, timeout=WAIT_TIMEOUT)
        if system == THREADS:
            return dask.compute(*collections, scheduler="threads", num_workers=N_WORKERS)
        if system == CLUSTER:
            with self.client.as_current():
                return dask.compute(*collections, scheduler=self.client)
        raise ValueError(system)

    def worker_bytes(self) -> dict[str, int]:
        """Bytes the rush workers (and this client) wrote to and mapped from shared memory, or
        fetched over TCP, so far."""
        totals = dict(self.rush.plane.counters())
        for wid in self.rush.running_worker_ids:
            raw = self.redis.hmget(self.rush.keys.worker(wid), *totals)
            for name, value in zip(list(totals), raw):
                totals[name] += int(value or 0)
        return totals

    def redis_net_bytes(self) -> int:
        info = self.redis.info("stats")
        return int(info["total_net_input_bytes"]) + int(info["total_net_output_bytes"])

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self.rush.reset()
        self.rush.close()


class PeakMemory:
    """Redis' peak memory during a run: ``MEMORY RESET``-free, sampled in a thread every 20 ms."""

    def __init__(self, client: redis.Redis):
        import threading

        self.client, self.peak, self._stop = client, 0, threading.Event()
        self.base = int(client.info("memory")["used_memory"])
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, int(self.client.info("memory")["used_memory"]))

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def run_data(
    redis_url: str, size: str, repeats: int, log_dir: str, quiet: Quiet, only: list[str] | None = None
) -> dict:
    """Every workload (or those named in ``only``) on every system, ``repeats`` times;
    returns the figures for the report."""
    workloads = [w for w in make_workloads(size) if only is None or w.name in only]
    systems = Systems(redis_url, log_dir)
    runs: dict[str, dict[str, list[float]]] = {x: {w.name: [] for w in workloads} for x in SYSTEMS}
    moved: dict[str, dict[str, list[int]]] = {
        w.name: {"redis": [], "held": [], "mapped": [], "fetched": []} for w in workloads
    }
    peaks: dict[str, list[int]] = {w.name: [] for w in workloads}
    try:
        for system in SYSTEMS:  # untimed warm-up of every system on a small graph
            systems.compute(system, [da.ones(10, chunks=5).sum()])
        for rep in range(1, repeats + 1):
            for w in workloads:
                for system in SYSTEMS:
                    collections = systems.optimize(system, systems.build(system, w))
                    quiet.wait()
                    before_net, before_w = systems.redis_net_bytes(), systems.worker_bytes()
                    with PeakMemory(systems.redis) as peak:
                        t0 = time.perf_counter()
                        results = systems.compute(system, collections)
                        seconds = time.perf_counter() - t0
                    w.check(results)
                    del results
                    runs[system][w.name].append(seconds)
                    if system == RUSH:
                        time.sleep(0.6)  # one heartbeat: workers report their byte counters
                        after_w = systems.worker_bytes()
                        m = moved[w.name]
                        m["redis"].append(systems.redis_net_bytes() - before_net)
                        m["held"].append(after_w["bytes_held"] - before_w["bytes_held"])
                        m["mapped"].append(after_w["bytes_mapped"] - before_w["bytes_mapped"])
                        m["fetched"].append(after_w["bytes_fetched"] - before_w["bytes_fetched"])
                        peaks[w.name].append(max(peak.peak - peak.base, 0))
                    print(
                        f"repeat {rep}/{repeats}  {w.name:<11} {system:<13} {seconds:7.2f} s",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        systems.close()
    return {
        "workloads": {w.name: w.description for w in workloads},
        "systems": list(SYSTEMS),
        "runs": runs,
        "moved": moved,
        "redis_peak": peaks,
    }


def data_lines(s: dict) -> list[str]:
    """The report's tables: seconds per system, rush_dask's speed ratios, bytes moved."""
    systems, names = s["systems"], list(s["workloads"])
    lines = [
        "| graph | " + " | ".join(f"{x} (s)" for x in systems) + f" | rush_dask / {CLUSTER} | rush_dask / {THREADS} |",
        "|---|" + "---:|" * (len(systems) + 2),
    ]
    for name in names:
        r = s["runs"]
        lines.append(
            f"| {name} | "
            + " | ".join(fmt(r[x][name], 2) for x in systems)
            + f" | {fmt(ratios(r[CLUSTER][name], r[RUSH][name]), 2)}×"
            + f" | {fmt(ratios(r[THREADS][name], r[RUSH][name]), 2)}× |"
        )
    lines += [
        "",
        "Ratios are speed: the peer's time over rush_dask's (above 1: rush_dask is faster).",
        "",
        "| graph (rush_dask) | through Redis (MB) | written to shared memory (MB) "
        "| mapped by consumers (MB) | fetched worker-to-worker (MB) "
        "| Redis peak above baseline (MB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        m = s["moved"][name]
        mb = [[v / 1e6 for v in m[k]] for k in ("redis", "held", "mapped", "fetched")]
        lines.append(
            f"| {name} | "
            + " | ".join(fmt(v, 1) for v in mb)
            + f" | {fmt([v / 1e6 for v in s['redis_peak'][name]], 1)} |"
        )
    lines += ["", "Workloads: " + "; ".join(f"**{n}**: {d}" for n, d in s["workloads"].items()) + "."]
    return lines


def main(argv: list[str] | None = None) -> int:
    import argparse

    from rush_dask.core.server import RedisServer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repeat")
    parser.add_argument("--tiny", action="store_true", help="the smallest sizes, 1 repeat")
    parser.add_argument("--no-wait", action="store_true", help="do not wait while tests run")
    parser.add_argument(
        "--only", default=None, help="comma-separated workloads (matmul,svd,groupby,merge,rechunk,'big result')"
    )
    args = parser.parse_args(argv)
    size = "tiny" if args.tiny else "quick" if args.quick else "full"
    repeats = 1 if size != "full" else args.repeats
    server = RedisServer().start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-data-") as log_dir:
            result = run_data(
                server.url,
                size,
                repeats,
                log_dir,
                Quiet(0 if args.no_wait else 900),
                only=args.only.split(",") if args.only else None,
            )
    finally:
        server.stop()
    print("\n".join(data_lines(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
