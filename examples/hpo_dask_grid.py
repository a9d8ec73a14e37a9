"""Grid search as a Dask graph, computed on Rush workers.

Every grid point is a ``dask.delayed`` evaluation; ``dask.compute(...,
scheduler=rush)`` runs them on the workers and returns the results in
order. The graph's tasks leave no record in Redis once the compute returns,
so each evaluation reports its own process id and finish time for the plot.

    python examples/hpo_dask_grid.py --evals 64 --workers 2 --out dask_grid.png
"""

from __future__ import annotations

import time

import dask
import hpo_common
import pandas as pd

from rush_dask import Rush


def main(
    n_evals: int = 64,
    n_workers: int = 2,
    url: str | None = None,
    out: str = "hpo_dask_grid.png",
    network_id: str = "hpo-dask-grid",
    timeout: float = 300.0,
) -> tuple[dict[str, float] | None, float]:
    """Run the grid; returns (best configuration, best cross-validated accuracy)."""
    rush = Rush(network_id, url=url)
    rush.reset()
    try:
        start = time.time()
        rush.start_workers(n_workers=n_workers)  # no function: they run graph nodes
        lazy = [dask.delayed(hpo_common.evaluate_with_origin)(config) for config in hpo_common.grid_configs(n_evals)]
        (results,) = dask.compute(lazy, scheduler=rush, timeout=timeout)
        data = pd.DataFrame(results)

        # Name each evaluation by its worker: the worker table maps process ids to worker ids.
        info = rush.worker_info
        worker_of_pid = dict(zip(info["pid"].astype(int), info["worker_id"]))
        data["worker"] = data["pid"].map(worker_of_pid).fillna(data["pid"].astype(str))
        data["seconds"] = data["finished_at"] - start
        rush.stop_workers("terminate")

        config, score = hpo_common.best_row(data)
        hpo_common.print_best("grid search (Dask)", config, score, len(data))
        hpo_common.plot_best_so_far(data, out, f"Grid search as a Dask graph, {n_workers} workers")
        return config, score
    finally:
        rush.reset()
        rush.close()


if __name__ == "__main__":
    args = hpo_common.command_line(__doc__, evals=64, evals_help="number of grid points", out="hpo_dask_grid.png")
    main(n_evals=args.evals, n_workers=args.workers, url=args.url, out=args.out)
