"""Asynchronous random search, driven by the controller.

The controller keeps about two evaluations in flight per worker: it pushes
random configurations with ``push_tasks``, collects results with
``fetch_new_tasks(timeout=...)`` and pushes a new configuration as soon as
one finishes, until ``n_evals`` evaluations are done. No worker waits for a
slow neighbour (there are no rounds).

    python examples/hpo_random_search.py --evals 60 --workers 2 --out random_search.png
"""

from __future__ import annotations

import time

import hpo_common
import numpy as np

from rush_dask import Rush

IN_FLIGHT_PER_WORKER = 2


def main(
    n_evals: int = 60,
    n_workers: int = 2,
    url: str | None = None,
    out: str = "hpo_random_search.png",
    seed: int = 0,
    network_id: str = "hpo-random-search",
    timeout: float = 300.0,
) -> tuple[dict[str, float] | None, float]:
    """Run the search; returns (best configuration, best cross-validated accuracy)."""
    rng = np.random.default_rng(seed)
    rush = Rush(network_id, url=url)
    rush.reset()  # a fresh network: nothing left from an earlier run
    try:
        start = time.time()
        rush.start_workers(hpo_common.evaluate, n_workers=n_workers)
        target = IN_FLIGHT_PER_WORKER * n_workers
        pushed = done = 0
        deadline = time.monotonic() + timeout
        while done < n_evals:
            # Top up: at most `target` evaluations queued or running, at most n_evals in all.
            n_new = min(target - (pushed - done), n_evals - pushed)
            if n_new > 0:
                rush.push_tasks([hpo_common.sample_config(rng) for _ in range(n_new)])
                pushed += n_new
            new = rush.fetch_new_tasks(timeout=5)
            done = rush.n_finished_tasks + rush.n_failed_tasks
            if len(new):
                best = new.loc[new["score"].idxmax()]
                print(f"{done:4d}/{n_evals} done; best new score {best['score']:.4f}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {done} of {n_evals} evaluations done after {timeout:g} s")
        rush.stop_workers("terminate")

        data = rush.fetch_finished_tasks()
        config, score = hpo_common.best_row(data)
        hpo_common.print_best("random search", config, score, len(data))
        hpo_common.plot_best_so_far(
            hpo_common.archive_to_plot_rows(data, start), out, f"Asynchronous random search, {n_workers} workers"
        )
        return config, score
    finally:
        rush.reset()
        rush.close()


if __name__ == "__main__":
    args = hpo_common.command_line(__doc__, evals=60, evals_help="number of evaluations", out="hpo_random_search.png")
    main(n_evals=args.evals, n_workers=args.workers, url=args.url, out=args.out)
