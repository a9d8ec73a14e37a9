"""Decentralized search: the workers drive it, Redis is the shared archive.

Each worker runs :func:`worker_loop`: until the shared budget is spent, it
reads every evaluation finished so far in the network
(``worker.fetch_finished_tasks()``, incremental), proposes a configuration
(with probability 0.5 a perturbation of one of the 5 best so far, else a
random one), registers it as its own running task with
``worker.push_running_tasks``, evaluates it and stores the score with
``worker.finish_tasks``. The controller is not in the loop: it only starts
the workers, waits until the budget is reached and stops them.

    python examples/hpo_decentralized.py --evals 60 --workers 2 --out decentralized.png
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import hpo_common
import numpy as np

from rush_dask import Rush

logger = logging.getLogger("hpo_decentralized")

P_PERTURB = 0.5  # probability of a local move around one of the best configurations
N_BEST = 5  # how many of the best configurations a local move starts from


def propose(archive: Any, rng: np.random.Generator) -> dict[str, float]:
    """The next configuration, given the shared archive of finished evaluations."""
    if len(archive) and "score" in archive and rng.random() < P_PERTURB:
        best = archive.nlargest(N_BEST, "score")
        parent = best.iloc[int(rng.integers(len(best)))]
        return hpo_common.perturb_config(parent, rng)
    return hpo_common.sample_config(rng)


def worker_loop(
    worker: Any,
    budget: int,
    objective: Callable[..., dict] = hpo_common.evaluate,
    seed: int | None = None,
    **kwargs: Any,
) -> None:
    """One worker's search: propose, evaluate, record, until ``budget`` evaluations are spent.

    The budget counts every evaluation in the network, finished or failed
    (a configuration that crashes the objective has been tried, too). Each
    worker checks it before starting an evaluation, so the network may
    overshoot by at most one evaluation per worker.
    """
    rng = np.random.default_rng(None if seed is None else [seed, os.getpid()])
    while not worker.terminated and worker.n_finished_tasks + worker.n_failed_tasks < budget:
        xs = propose(worker.fetch_finished_tasks(), rng)
        keys = worker.push_running_tasks([xs])
        try:
            ys = objective(**xs)
        except Exception as exc:  # noqa: BLE001 - any error of the objective fails the task, not the worker
            logger.warning("evaluation of %s failed: %s: %s", xs, type(exc).__name__, exc)
            worker.fail_tasks(keys, [exc])
            continue
        worker.finish_tasks(keys, [ys])


def main(
    n_evals: int = 60,
    n_workers: int = 2,
    url: str | None = None,
    out: str = "hpo_decentralized.png",
    seed: int | None = None,
    network_id: str = "hpo-decentralized",
    timeout: float = 300.0,
) -> tuple[dict[str, float] | None, float]:
    """Run the search; returns (best configuration, best cross-validated accuracy)."""
    rush = Rush(network_id, url=url)
    rush.reset()  # a fresh network: the budget counts this run's evaluations only
    try:
        start = time.time()
        rush.start_workers(worker_loop=worker_loop, n_workers=n_workers, budget=n_evals, seed=seed)
        deadline = time.monotonic() + timeout
        # The controller only watches: the workers stop by themselves at the budget.
        while rush.n_finished_tasks + rush.n_failed_tasks < n_evals:
            if time.monotonic() > deadline:
                raise TimeoutError(f"budget of {n_evals} not reached after {timeout:g} s")
            # A worker that died is declared lost (its process is gone or its heartbeat
            # expired) and its running evaluation fails: the others spend the budget.
            rush.detect_lost_workers()
            if rush.worker_ids and not rush.running_worker_ids:
                raise RuntimeError(f"all workers ended before the budget; log:\n{rush.read_log()}")
            time.sleep(0.2)
        rush.stop_workers("terminate")  # a worker in an evaluation finishes it, then returns
        while rush.n_running_workers and time.monotonic() < deadline:
            time.sleep(0.1)

        data = rush.fetch_finished_tasks()
        config, score = hpo_common.best_row(data)
        hpo_common.print_best("decentralized search", config, score, len(data))
        print(f"evaluations per worker: {data['worker_id'].value_counts().to_dict()}")
        hpo_common.plot_best_so_far(
            hpo_common.archive_to_plot_rows(data, start), out, f"Decentralized search, {n_workers} workers"
        )
        return config, score
    finally:
        rush.reset()
        rush.close()


if __name__ == "__main__":
    args = hpo_common.command_line(
        __doc__, evals=60, evals_help="shared budget of evaluations", out="hpo_decentralized.png", seed=True
    )
    main(n_evals=args.evals, n_workers=args.workers, url=args.url, out=args.out, seed=args.seed)
