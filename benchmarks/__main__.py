"""One benchmark command: ``python -m benchmarks``.

Sections (``--only rush,dask,scaling,cost,archive,data,futures,cli,hpo``; all by default), on one
private Redis server (unix socket) started here, 2 workers unless stated:

* **rush**: the rush API (10,000 trivial tasks, 1,000 ``time.sleep(0.01)``)
  on rush_dask, the bare Redis list queue (one task and batches of 32 per
  round trip), RQ, Celery and dask.distributed's ``client.map``
  (bench_rush.py, peers.py);
* **dask**: Dask graphs (10,000 trivial delayed tasks, a 1,000-leaf tree
  reduction, a dask.array sum over 1,000 chunks, a dataframe groupby, a
  task-based shuffle, 1,000 sleeps) on rush_dask, Dask's sync, threads and
  processes schedulers and a distributed LocalCluster (bench_dask.py);
* **scaling**: rush_dask on 1, 2, 4, 8, 16 workers, ``time.sleep(0.05)``
  tasks (bench_scaling.py);
* **cost**: Redis memory per queued and finished task, client memory and
  time for 100,000 tasks (bench_cost.py);
* **archive**: full and incremental fetch of 100,000 finished tasks
  (bench_archive.py);
* **data**: data-heavy Dask graphs (megabyte chunks: a matmul, a
  tall-skinny SVD, groupby and merge of 4 M rows, a rechunk, a 1 GiB
  result) on rush_dask, the threads scheduler and a LocalCluster, with the
  bytes that crossed Redis and shared memory (bench_data.py);
* **futures**: ``rush.map`` + ``as_completed`` and ``get_executor().map``
  of 10,000 trivial calls against the same on a LocalCluster (bench_futures.py);
* **cli**: start-up time of each ``rush-dask`` command, whole process
  (bench_cli.py);
* **hpo**: rush_dask.optuna against Optuna's own processes on
  JournalRedisBackend (utilization of 8 workers on a 0.2 s objective, trials
  per second with a no-op one) and the joblib backend "rush" against
  distributed's "dask" on a GridSearchCV (bench_hpo.py).

Writes ``docs/benchmarks.md`` and ``docs/img/bench-*.png`` (``--out DIR``:
``DIR/benchmarks.md`` and ``DIR/img/``), and the raw figures as JSON to
``benchmarks/results/`` (``DIR/`` with ``--out``). Every figure is the
median of ``--repeats`` runs (default 3) with [min – max].

    python -m benchmarks                      # everything, about 15 minutes on 2 quiet cores
    python -m benchmarks --quick              # smoke run: small sizes, 1 repeat
    python -m benchmarks --only rush,scaling --repeats 5
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import QUIET_BUDGET, RESULTS_DIR, ROOT, Quiet, machine

# The section modules are imported where they are used: the bare queue's worker
# processes are spawned, and re-import this module (not dask, distributed...).

SECTIONS = ("rush", "dask", "scaling", "cost", "archive", "data", "futures", "cli", "hpo")
# Per size: rush (trivial, sleep tasks); dask (see bench_dask.make_workloads); scaling (tasks,
# worker counts); cost tasks; archive tasks; hpo (workers, trials of 0.2 s, no-op trials).
SIZES = {
    "full": {
        "rush": (10_000, 1_000),
        "dask": (10_000, 1_000, 1_000, 100, 1_000),
        "scaling": (320, (1, 2, 4, 8, 16)),
        "cost": 100_000,
        "archive": 100_000,
        "data": "full",
        "futures": 10_000,
        "hpo": (8, 160, 800),
    },
    "quick": {
        "rush": (1_000, 100),
        "dask": (1_000, 100, 100, 10, 200),
        "scaling": (32, (1, 2, 4)),
        "cost": 5_000,
        "archive": 5_000,
        "data": "quick",
        "futures": 1_000,
        "hpo": (8, 32, 100),
    },
    "tiny": {
        "rush": (100, 10),
        "dask": (50, 16, 8, 2, 10),
        "scaling": (8, (1, 2)),
        "cost": 200,
        "archive": 200,
        "data": "tiny",
        "futures": 50,
        "hpo": (2, 8, 20),
    },
}


@dataclass
class Context:
    url: str
    log_dir: str
    repeats: int
    sizes: dict
    quiet: Quiet
    peers: bool


def rush_section(ctx: Context) -> dict:
    """bench_rush's systems and the peers; a peer runs only while it is measured.

    Each peer is started (and its workers ready) before its runs of a
    repetition and stopped after them, so its idle processes do not take CPU
    from the other systems' runs. A peer that is missing or fails is skipped
    and the reason reported.
    """
    from benchmarks import bench_rush, peers

    n_trivial, n_sleep = ctx.sizes["rush"]
    workloads = [
        bench_rush.Workload("trivial", bench_rush.add_one, n_trivial),
        bench_rush.Workload("sleep", bench_rush.sleep_then_add_one, n_sleep),
    ]
    skipped: dict[str, str] = {} if ctx.peers else {name: "skipped (--no-peers)" for name in peers.PEERS}
    runs: dict = {}

    def record(rep: int, system: str, w: bench_rush.Workload, seconds: float) -> None:
        runs.setdefault(system, {}).setdefault(w.name, []).append(seconds)
        print(
            f"repeat {rep}/{ctx.repeats}  {w.name:<8} {system:<26} {seconds:7.3f} s  "
            f"{w.n_tasks / seconds:9,.0f} tasks/s",
            file=sys.stderr,
            flush=True,
        )

    for rep in range(1, ctx.repeats + 1):
        for system in bench_rush.SYSTEMS:
            for w in workloads:
                run = bench_rush.run_once(system, ctx.url, w, ctx.log_dir, ctx.quiet)
                record(rep, system, w, run.seconds)
        for name in peers.PEERS:
            if name in skipped:
                continue
            try:
                peer = peers.start_peer(name, ctx.url, ctx.log_dir)
            except Exception as exc:  # noqa: BLE001 - a peer that cannot start is reported, not fatal
                peer = f"failed to start: {type(exc).__name__}: {exc}"
            if isinstance(peer, str):
                skipped[name] = peer
                print(f"skipping {name}: {peer}", file=sys.stderr, flush=True)
                continue
            try:
                for w in workloads:
                    ctx.quiet.wait()
                    record(rep, name, w, peer.run(w))
            except Exception as exc:  # noqa: BLE001 - a failing peer is reported, not fatal
                skipped[name] = f"failed: {type(exc).__name__}: {exc}"
                print(f"{name} failed: {exc}", file=sys.stderr, flush=True)
            finally:
                peer.close()
    runs = {system: per_w for system, per_w in runs.items() if system not in skipped}
    return {
        "tasks": {w.name: w.n_tasks for w in workloads},
        "ideal": {w.name: w.ideal_seconds for w in workloads if w.ideal_seconds},
        "systems": list(runs),
        "runs": runs,
        "skipped": skipped,
    }


def dask_section(ctx: Context) -> dict:
    from benchmarks import bench_dask

    workloads = bench_dask.make_workloads(False, frames=True, sizes=ctx.sizes["dask"])
    systems = bench_dask.Systems(ctx.url, ctx.log_dir)
    try:
        r = bench_dask.run_all(systems, workloads, ctx.repeats, ctx.quiet, detail=False)
    finally:
        systems.close()
    runs: dict = {}
    for (system, name), seconds in r.times.items():
        runs.setdefault(system, {})[name] = seconds
    return {
        "workloads": {
            w.name: {"size": w.size, "tasks": r.nodes[w.name], "description": w.description} for w in workloads
        },
        "ideal": {w.name: w.ideal_seconds for w in workloads if w.ideal_seconds},
        "systems": list(bench_dask.SYSTEMS),
        "runs": runs,
    }


def scaling_section(ctx: Context) -> dict:
    from benchmarks import bench_scaling

    n_tasks, counts = ctx.sizes["scaling"]
    return bench_scaling.run_scaling(ctx.url, n_tasks, counts, ctx.repeats, ctx.log_dir, ctx.quiet)


def cost_section(ctx: Context) -> dict:
    from benchmarks import bench_cost

    return bench_cost.run_cost(ctx.url, ctx.sizes["cost"], ctx.repeats, ctx.log_dir, ctx.quiet)


def archive_section(ctx: Context) -> dict:
    from benchmarks import bench_archive

    ctx.quiet.wait()
    return bench_archive.run_archive(ctx.url, ctx.sizes["archive"], ctx.repeats, ctx.log_dir)


def data_section(ctx: Context) -> dict:
    from benchmarks import bench_data

    return bench_data.run_data(ctx.url, ctx.sizes["data"], ctx.repeats, ctx.log_dir, ctx.quiet)


def futures_section(ctx: Context) -> dict:
    from benchmarks import bench_futures

    ctx.quiet.wait()
    return bench_futures.run_futures(ctx.url, ctx.sizes["futures"], ctx.repeats)


def cli_section(ctx: Context) -> dict:
    from benchmarks import bench_cli

    ctx.quiet.wait()
    return bench_cli.run_cli(ctx.url, max(ctx.repeats, 5))


def hpo_section(ctx: Context) -> dict:
    from benchmarks import bench_hpo

    n_workers, n_util, n_noop = ctx.sizes["hpo"]
    ctx.quiet.wait()
    return bench_hpo.run_hpo(ctx.url, ctx.log_dir, ctx.repeats, n_workers, n_util, n_noop)


RUNNERS = {
    "rush": rush_section,
    "dask": dask_section,
    "scaling": scaling_section,
    "cost": cost_section,
    "archive": archive_section,
    "data": data_section,
    "futures": futures_section,
    "cli": cli_section,
    "hpo": hpo_section,
}


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (default 3)")
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes, 1 repeat")
    parser.add_argument(
        "--tiny", action="store_true", help="the smallest sizes, 1 repeat (for the test suite; implies --quick)"
    )
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run (default: all of {','.join(SECTIONS)})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write benchmarks.md, img/ and the JSON here instead of docs/ and benchmarks/results/",
    )
    parser.add_argument("--no-peers", action="store_true", help="skip RQ, Celery and distributed client.map")
    parser.add_argument("--no-wait", action="store_true", help="do not wait while pytest or other benchmarks run")
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in args.sections if s not in SECTIONS]
    if unknown or not args.sections:
        parser.error(f"--only: unknown section(s) {unknown}; choose from {','.join(SECTIONS)}")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    args.quick = args.quick or args.tiny
    args.size = "tiny" if args.tiny else "quick" if args.quick else "full"
    if args.quick:
        args.repeats = 1
    return args


def main(argv: list[str] | None = None) -> int:
    from benchmarks import report
    from rush_dask.core.server import RedisServer

    args = parse_arguments(argv)
    docs = args.out if args.out is not None else ROOT / "docs"
    json_dir = args.out if args.out is not None else RESULTS_DIR
    quiet = Quiet(0 if args.no_wait else QUIET_BUDGET)
    started = time.time()
    results: dict = {
        "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "repeats": args.repeats,
        "quick": args.quick,
        "size": args.size,
        "sections": args.sections,
        "command": "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    server = RedisServer().start()
    try:
        results["machine"] = machine(server.url)
        with tempfile.TemporaryDirectory(prefix="bench-logs-") as log_dir:
            ctx = Context(server.url, log_dir, args.repeats, SIZES[args.size], quiet, not args.no_peers)
            for section in args.sections:
                t0 = time.perf_counter()
                print(f"== {section}", file=sys.stderr, flush=True)
                results[section] = RUNNERS[section](ctx)
                results.setdefault("section_seconds", {})[section] = time.perf_counter() - t0
    finally:
        server.stop()
    results["seconds"] = time.time() - started
    results["noisy_runs"], results["timed_runs"] = quiet.noisy_runs, quiet.runs
    json_dir.mkdir(parents=True, exist_ok=True)
    raw = json_dir / f"benchmarks-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(started))}.json"
    raw.write_text(json.dumps(results, indent=1, default=str))
    md = report.write(results, docs)
    print(f"written: {md}, {docs / 'img'}/bench-*.png, {raw} ({results['seconds']:.0f} s in all)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
