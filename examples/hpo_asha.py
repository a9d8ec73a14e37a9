"""Asynchronous successive halving (ASHA) on rush workers, without Optuna.

A linear classifier (``SGDClassifier``) on scikit-learn's digits, trained
for ``budget`` epochs; the score is the validation error (lower is better).
Configurations start at 1 epoch; each worker promotes the best third of a
rung to 3 times the epochs (up to 27) as soon as the shared archive allows,
and otherwise samples a new configuration. Writes the rungs plot, the best
error so far per worker and the workers' utilization.

    python examples/hpo_asha.py --evals 120 --workers 2 --out asha.png
"""

from __future__ import annotations

from typing import Any

import hpo_common
import numpy as np

from rush_dask import Rush, plots
from rush_dask.asha import search


def sample(rng: np.random.Generator) -> dict[str, float]:
    """A new configuration: learning rate and L2 penalty (base-10 logarithms)."""
    return {"log_eta0": float(rng.uniform(-4, 0)), "log_alpha": float(rng.uniform(-6, -1))}


def objective(log_eta0: float, log_alpha: float, budget: int, **kwargs: Any) -> dict[str, float]:
    """Validation error after ``budget`` epochs of SGD (same seed, so more epochs continue the same run)."""
    from sklearn.linear_model import SGDClassifier
    from sklearn.model_selection import train_test_split

    X, y = hpo_common._digits()  # cached in the worker process
    X_train, X_valid, y_train, y_valid = train_test_split(X, y, test_size=0.3, random_state=0)
    model = SGDClassifier(learning_rate="constant", eta0=10**log_eta0, alpha=10**log_alpha, random_state=0)
    classes = np.unique(y_train)
    for _ in range(int(budget)):
        model.partial_fit(X_train, y_train, classes=classes)
    return {"y": float(1.0 - model.score(X_valid, y_valid))}


def main(
    n_evals: int = 120,
    n_workers: int = 2,
    url: str | None = None,
    out: str = "hpo_asha.png",
    seed: int | None = None,
    network_id: str = "hpo-asha",
) -> tuple[dict[str, float], float]:
    """Run ASHA; returns (best configuration at the top budget, its validation error)."""
    rush = Rush(network_id, url=url)
    rush.reset()
    try:
        archive = search(
            rush, objective, sample, min_budget=1, max_budget=27, eta=3, n_evals=n_evals, n_workers=n_workers, seed=seed
        )
        top = archive[archive["rung"] == archive["rung"].max()]
        best = top.loc[top["y"].idxmin()]
        config = {"log_eta0": float(best["log_eta0"]), "log_alpha": float(best["log_alpha"])}
        print(
            f"ASHA: {len(archive)} evaluations, per rung {archive.groupby('rung').size().to_dict()}; "
            f"best at {best['budget']} epochs: eta0={10 ** config['log_eta0']:.3g}, "
            f"alpha={10 ** config['log_alpha']:.3g} -> validation error {best['y']:.4f}"
        )
        print(f"utilization {plots.utilization_of(archive):.1%}")
        save, sibling = hpo_common.save_figure, hpo_common.sibling_path
        save(plots.rungs(archive, title=f"ASHA, eta=3, {n_workers} workers"), out)
        save(plots.best_so_far(archive, title="ASHA: validation error"), sibling(out, "best"))
        save(plots.utilization(archive, title=f"ASHA, {n_workers} workers"), sibling(out, "busy"))
        return config, float(best["y"])
    finally:
        rush.reset()
        rush.close()


if __name__ == "__main__":
    args = hpo_common.command_line(__doc__, evals=120, evals_help="evaluations in all", out="hpo_asha.png", seed=True)
    main(n_evals=args.evals, n_workers=args.workers, url=args.url, out=args.out, seed=args.seed)
