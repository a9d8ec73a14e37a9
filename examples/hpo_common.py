"""What the three hyperparameter-search examples share.

The problem: tune an RBF support vector classifier on scikit-learn's
``load_digits`` (1,797 8x8 images, shipped with scikit-learn, no download).
A configuration is ``{"log_C": ..., "log_gamma": ...}`` (base-10 logarithms);
its score is the 3-fold cross-validated accuracy, which takes about 0.1-0.3 s.

Workers import this module by name, so it must be importable where they run:
``python examples/hpo_....py`` puts ``examples/`` on ``sys.path``, and
rush_dask passes the controller's ``sys.path`` on to the local workers it
starts (remote workers need ``examples/`` on their ``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from typing import Any

import numpy as np

# The search space: name -> (low, high) of a base-10 logarithm.
SPACE: dict[str, tuple[float, float]] = {
    "log_C": (-2.0, 3.0),
    "log_gamma": (-4.0, 0.0),
}


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return X / 16.0, y


def evaluate(log_C: float, log_gamma: float, **kwargs: Any) -> dict[str, float]:
    """The objective: 3-fold cross-validated accuracy of ``SVC(C=10**log_C, gamma=10**log_gamma)``."""
    from sklearn.model_selection import cross_val_score
    from sklearn.svm import SVC

    X, y = _digits()
    model = SVC(C=10.0**log_C, gamma=10.0**log_gamma)
    return {"score": float(cross_val_score(model, X, y, cv=3).mean())}


def evaluate_with_origin(config: dict[str, float]) -> dict[str, Any]:
    """:func:`evaluate` plus where and when it ran (for a Dask graph, whose tasks leave no record)."""
    result = evaluate(**config)
    return {**config, **result, "pid": os.getpid(), "finished_at": time.time()}


def sample_config(rng: np.random.Generator) -> dict[str, float]:
    """A configuration drawn uniformly from :data:`SPACE`."""
    return {name: float(rng.uniform(low, high)) for name, (low, high) in SPACE.items()}


def perturb_config(config: dict[str, Any], rng: np.random.Generator, scale: float = 0.1) -> dict[str, float]:
    """``config`` moved by Gaussian noise of ``scale`` times each range, clipped to :data:`SPACE`."""
    return {
        name: float(np.clip(config[name] + rng.normal(0.0, scale * (high - low)), low, high))
        for name, (low, high) in SPACE.items()
    }


def grid_configs(n: int) -> list[dict[str, float]]:
    """About ``n`` configurations on a regular grid over :data:`SPACE`.

    The grid is ``k x k`` with ``k*k >= n``, cut to ``n``.
    """
    k = max(1, int(np.ceil(np.sqrt(n))))
    axes = [np.linspace(low, high, k) for low, high in SPACE.values()]
    mesh = np.meshgrid(*axes, indexing="ij")
    points = np.stack([m.ravel() for m in mesh], axis=1)
    # Spread the cut over the whole grid rather than dropping its last rows.
    chosen = np.unique(np.linspace(0, len(points) - 1, n).round().astype(int))
    return [dict(zip(SPACE, map(float, points[i]))) for i in chosen]


def best_row(rows: Any) -> tuple[dict[str, float] | None, float]:
    """(best configuration, its score) of a DataFrame with a ``score`` column; (None, nan) if empty."""
    if rows is None or len(rows) == 0 or "score" not in rows:
        return None, float("nan")
    best = rows.loc[rows["score"].idxmax()]
    return {name: float(best[name]) for name in SPACE}, float(best["score"])


def plot_best_so_far(rows: Any, out: str | os.PathLike, title: str) -> None:
    """Save a PNG: every evaluation (one colour per worker) and the best score so far, over time.

    ``rows`` is a DataFrame with columns ``score``, ``worker`` (any label)
    and ``seconds`` (since the start of the search).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = rows.sort_values("seconds", kind="stable")
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=80)
    cmap = plt.get_cmap("tab10")
    for i, (worker, group) in enumerate(rows.groupby("worker", sort=True)):
        colour = cmap(i % 10)
        ax.scatter(group["seconds"], group["score"], s=14, color=colour, alpha=0.5)
        ax.step(
            group["seconds"],
            group["score"].cummax(),
            where="post",
            color=colour,
            linewidth=1.2,
            label=f"worker {str(worker)[:8]} ({len(group)} evals)",
        )
    ax.step(
        rows["seconds"],
        rows["score"].cummax(),
        where="post",
        color="black",
        linewidth=2,
        label="best so far (all workers)",
    )
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("cross-validated accuracy")
    ax.set_title(title)
    ax.set_ylim(max(0.0, rows["score"].min() - 0.05) if len(rows) else 0.0, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def archive_to_plot_rows(data: Any, start: float) -> Any:
    """The plot's columns from a Rush task DataFrame (``score``, ``worker_id``, ``finished_at``)."""
    import pandas as pd

    seconds = data["finished_at"].map(lambda t: t.timestamp()) - start
    return pd.DataFrame(
        {"score": data["score"].astype(float), "worker": data["worker_id"], "seconds": seconds.astype(float)}
    )


def save_figure(fig: Any, out: str) -> None:
    """Write a matplotlib figure to ``out`` and close it."""
    fig.savefig(out)
    import matplotlib.pyplot as plt

    plt.close(fig)


def sibling_path(out: str, tag: str) -> str:
    """``plot.png`` -> ``plot_<tag>.png``: where an example writes its second and third figure."""
    stem, dot, ext = out.rpartition(".")
    return f"{stem}_{tag}.{ext}" if dot else f"{out}_{tag}.png"


def print_best(name: str, config: dict[str, float] | None, score: float, n: int) -> None:
    """One line: the best configuration found, in plain units."""
    if config is None:
        print(f"{name}: no finished evaluation")
        return
    plain = ", ".join(f"{k[4:]}={10**v:.3g}" for k, v in config.items())
    print(f"{name}: best of {n} evaluations: {plain} -> accuracy {score:.4f}")


def command_line(doc: str, evals: int, evals_help: str, out: str, seed: bool = False) -> argparse.Namespace:
    """The options every example takes: --evals, --workers, --out, --url (and --seed)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--evals", type=int, default=evals, help=f"{evals_help} (default {evals})")
    parser.add_argument("--workers", type=int, default=2, help="number of local workers (default 2)")
    parser.add_argument("--out", default=out, help="PNG plot to write")
    parser.add_argument("--url", default=None, help="Redis URL (default: $RUSH_REDIS_URL or a private server)")
    if seed:
        parser.add_argument("--seed", type=int, default=None, help="seed of the workers' random streams")
    return parser.parse_args()
