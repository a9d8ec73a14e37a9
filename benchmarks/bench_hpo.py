"""Hyperparameter search: rush_dask.optuna against Optuna's own processes, and joblib backends.

Three measurements, each against its peer in the same run, on one private
Redis server (unix socket):

* **utilization** (busy time / wall time) of ``--workers`` workers (default 8)
  on an objective that sleeps 0.2 s, ``n_trials`` trials: ``rush_dask.optuna.optimize``
  against Optuna's multiprocessing recipe (one process per worker, each
  ``optuna.load_study(...).optimize(objective, n_trials=n/P)``) on
  ``JournalRedisBackend``. The objective records its own start and end
  (one ``set_user_attr``, on both sides); busy time is the sum of those
  intervals, wall time the sum over workers of first start to last end.
  ``whole run`` divides the busy time by workers x (last end - first start).
* **trials per second** with a no-op objective (one ``suggest_float``),
  ``RandomSampler`` on both sides (so that the sampler's CPU does not hide the
  storage and the loop), the same number of processes: trials / (last
  trial's end - first trial's start) from the trials' own timestamps.
  The target row: rush_dask.optuna on its default storage
  (``rush_dask.optuna_storage.RedisStorage``) against Optuna's processes on
  ``JournalRedisBackend``. Also both sides on each of the three storages
  (RedisStorage, the list journal, ``JournalRedisBackend``), so the gain of
  the storage and of the loop can be told apart.
* **GridSearchCV** (SVC on digits, a 4 x 4 grid, 3 folds: 48 fits) through
  the joblib backend ``"rush"`` on 2 workers against distributed's
  ``"dask"`` backend on a LocalCluster of 2 single-threaded worker processes,
  timing the ``fit`` only (workers started before the clock).

    python benchmarks/bench_hpo.py [--quick] [--repeats 3] [--workers 8]
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable (workers need it)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS_DIR, fmt, machine, ratios  # noqa: E402

SLEEP = 0.2


def sleep_objective(trial):
    """Sleeps 0.2 s; records its own busy interval (pid, start, end) on the trial."""
    trial.suggest_float("x", -1.0, 1.0)
    start = time.time()
    time.sleep(SLEEP)
    trial.set_user_attr("busy", [os.getpid(), start, time.time()])
    return 0.0


def noop_objective(trial):
    return trial.suggest_float("x", -1.0, 1.0) ** 2


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ------------------------------------------------------------------ Optuna's own processes
def _optuna_process(storage, study_name: str, objective, n_trials: int) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=optuna.samplers.RandomSampler())
    study.optimize(objective, n_trials=n_trials)


def run_optuna_processes(storage, objective, n_trials: int, n_processes: int):
    """Optuna's multiprocessing recipe: P processes, each optimize(n_trials / P) on one storage."""
    import optuna

    name = f"optuna-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler())
    context = multiprocessing.get_context("spawn")
    share = [n_trials // n_processes + (i < n_trials % n_processes) for i in range(n_processes)]
    procs = [context.Process(target=_optuna_process, args=(storage, name, objective, k)) for k in share]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"an Optuna process exited with {p.exitcode}")
    return study


def run_rush_optuna(rush, storage_backend: str, objective, n_trials: int, n_workers: int, log_dir: str):
    import optuna

    from rush_dask.optuna import optimize, storage

    name = f"rush-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(
        study_name=name, storage=storage(rush, backend=storage_backend), sampler=optuna.samplers.RandomSampler()
    )
    optimize(study, objective, n_trials=n_trials, rush=rush, n_workers=n_workers, log_dir=log_dir)
    return study


# ---------------------------------------------------------------------------- figures
def busy_intervals(study) -> dict[int, list[tuple[float, float]]]:
    by_pid: dict[int, list[tuple[float, float]]] = {}
    for t in study.get_trials(deepcopy=False, states=[__import__("optuna").trial.TrialState.COMPLETE]):
        pid, start, end = t.user_attrs["busy"]
        by_pid.setdefault(pid, []).append((start, end))
    return by_pid


def utilization(study) -> tuple[float, float]:
    """(per-worker span utilization, whole-run utilization) from the objective's own intervals."""
    by_pid = busy_intervals(study)
    busy = sum(e - s for iv in by_pid.values() for s, e in iv)
    spans = sum(max(e for _, e in iv) - min(s for s, _ in iv) for iv in by_pid.values())
    first = min(s for iv in by_pid.values() for s, _ in iv)
    last = max(e for iv in by_pid.values() for _, e in iv)
    return busy / spans, busy / (len(by_pid) * (last - first))


def trials_per_second(study) -> float:
    import optuna

    trials = study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
    first = min(t.datetime_start for t in trials)
    last = max(t.datetime_complete for t in trials)
    return len(trials) / (last - first).total_seconds()


# -------------------------------------------------------------------------- GridSearchCV
def grid_search(n_jobs: int = -1):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    X, y = load_digits(return_X_y=True)
    grid = {"C": [0.1, 1.0, 10.0, 100.0], "gamma": [1e-4, 1e-3, 1e-2, 1e-1]}
    return GridSearchCV(SVC(), grid, cv=3, n_jobs=n_jobs), X / 16.0, y


def time_rush_grid(rush) -> float:
    import joblib

    search, X, y = grid_search()
    start = time.perf_counter()
    with joblib.parallel_backend("rush", rush=rush):
        search.fit(X, y)
    return time.perf_counter() - start


def time_dask_grid(client) -> float:
    import joblib

    search, X, y = grid_search()
    start = time.perf_counter()
    with joblib.parallel_backend("dask"):
        search.fit(X, y)
    return time.perf_counter() - start


# ------------------------------------------------------------------------------- main
SECTIONS = ("utilization", "throughput", "joblib")


def run_hpo(
    url: str,
    log_dir: str,
    repeats: int = 3,
    n_workers: int = 8,
    n_util: int = 160,
    n_noop: int = 800,
    sections: tuple[str, ...] = SECTIONS,
) -> dict:
    """Every measurement, ``repeats`` times, on the Redis at ``url``; the raw figures as a dict.

    >>> run_hpo(server.url, "/tmp/logs", repeats=1, n_util=32,
    ...         n_noop=100)["trials_per_second"]  # doctest: +SKIP
    """
    import warnings

    import optuna
    from optuna.storages.journal import JournalRedisBackend, JournalStorage

    from rush_dask import Rush
    from rush_dask.journal import RedisListJournal
    from rush_dask.optuna_storage import RedisStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    results: dict = {"load_before": load_avg(), "workers": n_workers, "n_util": n_util, "n_noop": n_noop}
    rush = Rush(f"bench-hpo-{uuid.uuid4().hex[:6]}", url=url)

    def optuna_storage(kind: str):
        prefix = f"{rush.keys.prefix}bench-{uuid.uuid4().hex[:6]}"
        if kind == "redis":
            return RedisStorage(url, prefix + ":")
        if kind == "list":
            return JournalStorage(RedisListJournal(url, prefix))
        return JournalStorage(JournalRedisBackend(url, prefix=prefix))

    try:
        if "utilization" in sections:
            util: dict[str, list] = {"rush": [], "optuna": []}
            for rep in range(repeats):
                study = run_rush_optuna(rush, "redis", sleep_objective, n_util, n_workers, log_dir)
                util["rush"].append(utilization(study))
                study = run_optuna_processes(optuna_storage("optuna"), sleep_objective, n_util, n_workers)
                util["optuna"].append(utilization(study))
                print(
                    f"utilization {rep + 1}/{repeats}: rush {util['rush'][-1]}, "
                    f"optuna {util['optuna'][-1]} (load {load_avg()})",
                    file=sys.stderr,
                    flush=True,
                )
            results["utilization"] = util
            results["load_after_utilization"] = load_avg()
        if "throughput" in sections:
            tps: dict[str, list[float]] = {
                k: []
                for k in (
                    "rush_redis",
                    "rush_list",
                    "rush_optuna_backend",
                    "optuna_redis",
                    "optuna_list",
                    "optuna_backend",
                )
            }
            for rep in range(repeats):
                tps["rush_redis"].append(
                    trials_per_second(run_rush_optuna(rush, "redis", noop_objective, n_noop, n_workers, log_dir))
                )
                tps["rush_list"].append(
                    trials_per_second(run_rush_optuna(rush, "list", noop_objective, n_noop, n_workers, log_dir))
                )
                tps["rush_optuna_backend"].append(
                    trials_per_second(run_rush_optuna(rush, "optuna", noop_objective, n_noop, n_workers, log_dir))
                )
                tps["optuna_redis"].append(
                    trials_per_second(run_optuna_processes(optuna_storage("redis"), noop_objective, n_noop, n_workers))
                )
                tps["optuna_list"].append(
                    trials_per_second(run_optuna_processes(optuna_storage("list"), noop_objective, n_noop, n_workers))
                )
                tps["optuna_backend"].append(
                    trials_per_second(run_optuna_processes(optuna_storage("optuna"), noop_objective, n_noop, n_workers))
                )
                last = ", ".join(f"{k} {v[-1]:.0f}" for k, v in tps.items())
                print(f"trials/s {rep + 1}/{repeats}: {last} (load {load_avg()})", file=sys.stderr, flush=True)
            results["trials_per_second"] = tps
            results["load_after_throughput"] = load_avg()
        if "joblib" in sections:
            from distributed import Client, LocalCluster

            grid: dict[str, list[float]] = {"rush": [], "dask": []}
            rush.start_workers(n_workers=2, log_dir=log_dir)
            rush.wait_for_workers(2)
            with (
                LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
                Client(cluster) as client,
            ):
                time_rush_grid(rush), time_dask_grid(client)  # warm up: imports in the workers
                for rep in range(repeats):
                    grid["rush"].append(time_rush_grid(rush))
                    grid["dask"].append(time_dask_grid(client))
                    print(
                        f"GridSearchCV {rep + 1}/{repeats}: rush {grid['rush'][-1]:.2f} s, "
                        f"dask {grid['dask'][-1]:.2f} s (load {load_avg()})",
                        file=sys.stderr,
                        flush=True,
                    )
            rush.stop_workers("terminate")
            results["grid_search_seconds"] = grid
            results["load_after_joblib"] = load_avg()
    finally:
        rush.reset()
        rush.close()
    return results


def main(argv: list[str] | None = None) -> dict:
    import argparse

    from rush_dask.core.server import RedisServer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repeat")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"among {','.join(SECTIONS)}")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    server = RedisServer().start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-hpo-") as log_dir:
            results = {
                "machine": machine(server.url),
                **run_hpo(
                    server.url,
                    log_dir,
                    repeats,
                    args.workers,
                    n_util=args.workers * (4 if args.quick else 20),
                    n_noop=100 if args.quick else 800,
                    sections=tuple(args.only.split(",")),
                ),
            }
    finally:
        server.stop()
    print(report(results))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"hpo-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    print(f"raw figures: {path}", file=sys.stderr)
    return results


def report(results: dict) -> str:
    """A Markdown table of the figures and the ratios against the targets."""
    return "\n".join(hpo_lines(results))


def hpo_lines(results: dict) -> list[str]:
    """The report's lines (also the ``hpo`` section of ``python -m benchmarks``)."""
    loads = ", ".join(f"{k.removeprefix('load_after_')} {v}" for k, v in results.items() if k.startswith("load_after_"))
    lines = [
        f"Load average (1, 5, 15 min) before: {results['load_before']}; after: {loads}. {results['workers']} workers.",
        "",
        "| measurement | rush_dask | peer | ratio | target |",
        "|---|---|---|---|---|",
    ]
    if "utilization" in results:
        u = results["utilization"]
        r_span, o_span = [x[0] for x in u["rush"]], [x[0] for x in u["optuna"]]
        r_all, o_all = [x[1] for x in u["rush"]], [x[1] for x in u["optuna"]]
        lines.append(
            f"| utilization, 0.2 s objective, {results['n_util']} trials (per-worker span) | "
            f"{fmt(r_span, 3)} | Optuna processes on JournalRedisBackend: {fmt(o_span, 3)} | "
            f"{fmt(ratios(r_span, o_span), 2)} | rush >= 0.95 |"
        )
        lines.append(
            f"| utilization, whole run | {fmt(r_all, 3)} | {fmt(o_all, 3)} | {fmt(ratios(r_all, o_all), 2)} | |"
        )
    if "trials_per_second" in results:
        t = results["trials_per_second"]
        ours = "rush_redis" if "rush_redis" in t else "rush_list"  # results from before RedisStorage
        lines.append(
            f"| trials/s, no-op objective, {results['n_noop']} trials | "
            f"{'RedisStorage' if ours == 'rush_redis' else 'list journal'}: "
            f"{fmt(t[ours])} | Optuna processes on JournalRedisBackend: "
            f"{fmt(t['optuna_backend'])} | {fmt(ratios(t[ours], t['optuna_backend']), 2)}"
            " | >= 3 |"
        )
        if "rush_redis" in t and "optuna_redis" in t:
            lines.append(
                f"| trials/s, both on RedisStorage | {fmt(t['rush_redis'])} | {fmt(t['optuna_redis'])} "
                f"| {fmt(ratios(t['rush_redis'], t['optuna_redis']), 2)} | |"
            )
        lines.append(
            f"| trials/s, both on JournalRedisBackend | {fmt(t['rush_optuna_backend'])} | "
            f"{fmt(t['optuna_backend'])} "
            f"| {fmt(ratios(t['rush_optuna_backend'], t['optuna_backend']), 2)} | |"
        )
        lines.append(
            f"| trials/s, both on the list journal | {fmt(t['rush_list'])} "
            f"| {fmt(t['optuna_list'])} | {fmt(ratios(t['rush_list'], t['optuna_list']), 2)} | |"
        )
    if "grid_search_seconds" in results:
        g = results["grid_search_seconds"]
        lines.append(
            f"| GridSearchCV 48 fits, 2 workers, seconds | {fmt(g['rush'], 2)} | distributed "
            f'"dask" backend: {fmt(g["dask"], 2)} '
            f"| speed {fmt(ratios(g['dask'], g['rush']), 2)} | >= 1.0 |"
        )
    return lines


if __name__ == "__main__":
    main()
