"""An Optuna study on rush workers: TPE tunes the SVC of hpo_common, no controller in the loop.

The study lives in the network's Redis (``rush_dask.optuna.storage``);
``rush_dask.optuna.optimize`` starts the workers, each of which asks
Optuna for a trial, evaluates it and tells the result, until ``--evals``
trials are COMPLETE. Writes two plots: the best score so far per worker
and the workers' utilization over time.

    python examples/hpo_optuna.py --evals 60 --workers 2 --out optuna.png
"""

from __future__ import annotations

import hpo_common
import optuna

from rush_dask import Rush, plots
from rush_dask.optuna import optimize, storage


def objective(trial: optuna.Trial) -> float:
    """3-fold cross-validated accuracy of the SVC with the trial's C and gamma."""
    config = {name: trial.suggest_float(name, low, high) for name, (low, high) in hpo_common.SPACE.items()}
    return hpo_common.evaluate(**config)["score"]


def main(
    n_evals: int = 60,
    n_workers: int = 2,
    url: str | None = None,
    out: str = "hpo_optuna.png",
    seed: int | None = None,
    network_id: str = "hpo-optuna",
) -> tuple[dict[str, float], float]:
    """Run the study; returns (best configuration, best accuracy). Plots go to ``out`` and ``*_busy.png``."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rush = Rush(network_id, url=url)
    rush.reset()
    try:
        study = optuna.create_study(
            storage=storage(rush),
            study_name="svc",
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=10),
        )
        optimize(study, objective, n_trials=n_evals, rush=rush, n_workers=n_workers)
        data = rush.fetch_finished_tasks()
        hpo_common.print_best("optuna (TPE)", study.best_params, study.best_value, len(data))
        print(
            f"trials per worker: {data['worker_id'].value_counts().to_dict()}; "
            f"utilization {plots.utilization_of(data):.1%}"
        )
        save = hpo_common.save_figure
        save(
            plots.best_so_far(data, score="value", minimize=False, title=f"Optuna TPE on {n_workers} rush workers"), out
        )
        save(plots.utilization(data, title=f"{n_workers} workers"), hpo_common.sibling_path(out, "busy"))
        return study.best_params, study.best_value
    finally:
        rush.reset()
        rush.close()


if __name__ == "__main__":
    args = hpo_common.command_line(__doc__, evals=60, evals_help="trials to complete", out="hpo_optuna.png", seed=True)
    main(n_evals=args.evals, n_workers=args.workers, url=args.url, out=args.out, seed=args.seed)
