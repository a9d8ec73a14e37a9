"""Plots of a search read from the archive: best so far, worker utilization, ASHA rungs.

Each function takes the DataFrame of ``rush.fetch_finished_tasks()`` (or
the archive that :func:`rush_dask.asha.search` returns) and returns a
matplotlib ``Figure``; save it with ``fig.savefig("best.png")``.

>>> from rush_dask import plots
>>> data = rush.fetch_finished_tasks()                         # doctest: +SKIP
>>> plots.best_so_far(data, score="value").savefig("best.png")  # doctest: +SKIP
>>> plots.utilization(data).savefig("busy.png")                # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")  # files, not windows: works without a display
    import matplotlib.pyplot as plt

    return plt


def _seconds(column: Any, start: float) -> np.ndarray:
    """Seconds since ``start`` of a column of UTC timestamps."""
    return np.array([t.timestamp() for t in column], dtype=float) - start


def busy_intervals(data: Any) -> tuple[list[str], list[np.ndarray], float]:
    """(worker ids, each worker's ``[start, end]`` rows in seconds, the common time origin).

    >>> ids, intervals, origin = busy_intervals(rush.fetch_finished_tasks())   # doctest: +SKIP
    """
    origin = min(t.timestamp() for t in data["started_at"]) if len(data) else 0.0
    ids, intervals = [], []
    for wid, group in data.groupby("worker_id", sort=True):
        ids.append(wid)
        intervals.append(
            np.column_stack([_seconds(group["started_at"], origin), _seconds(group["finished_at"], origin)])
        )
    return ids, intervals, origin


def utilization_of(data: Any) -> float:
    """Busy time / wall time: the summed task time of each worker over its span (first start to last end).

    >>> utilization_of(rush.fetch_finished_tasks())   # doctest: +SKIP
    0.97
    """
    _, intervals, _ = busy_intervals(data)
    busy = sum(float((iv[:, 1] - iv[:, 0]).sum()) for iv in intervals)
    wall = sum(float(iv[:, 1].max() - iv[:, 0].min()) for iv in intervals if len(iv))
    return busy / wall if wall > 0 else float("nan")


def best_so_far(data: Any, score: str = "y", minimize: bool = True, title: str = "Best so far") -> Any:
    """Every evaluation (a colour per worker), each worker's best so far, and the network's.

    >>> plots.best_so_far(rush.fetch_finished_tasks(), score="value").savefig("best.png")   # doctest: +SKIP
    """
    plt = _pyplot()
    rows = data[data[score].notna()] if score in data else data.iloc[:0]
    origin = min(t.timestamp() for t in data["started_at"]) if len(data) else 0.0
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=80)
    cmap = plt.get_cmap("tab10")

    def best(series: Any) -> Any:
        return series.cummin() if minimize else series.cummax()

    rows = rows.assign(seconds=_seconds(rows["finished_at"], origin)).sort_values("seconds", kind="stable")
    for i, (wid, group) in enumerate(rows.groupby("worker_id", sort=True)):
        colour = cmap(i % 10)
        ax.scatter(group["seconds"], group[score], s=12, color=colour, alpha=0.45)
        ax.step(
            group["seconds"],
            best(group[score].astype(float)),
            where="post",
            color=colour,
            linewidth=1.2,
            label=f"worker {str(wid)[:8]} ({len(group)})",
        )
    if len(rows):
        ax.step(
            rows["seconds"],
            best(rows[score].astype(float)),
            where="post",
            color="black",
            linewidth=2,
            label="best so far, all workers",
        )
    ax.set_xlabel("seconds since the first start")
    ax.set_ylabel(score)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=7)
    fig.tight_layout()
    return fig


def utilization(data: Any, n_bins: int = 40, title: str = "Worker utilization") -> Any:
    """Top: each worker's busy intervals (a bar per task). Bottom: busy fraction of all workers over time.

    >>> plots.utilization(rush.fetch_finished_tasks()).savefig("busy.png")   # doctest: +SKIP
    """
    plt = _pyplot()
    ids, intervals, _ = busy_intervals(data)
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(6.4, 4.2), dpi=80, sharex=True, gridspec_kw={"height_ratios": [2, 1]}
    )
    cmap = plt.get_cmap("tab10")
    for i, iv in enumerate(intervals):
        top.broken_barh([(s, e - s) for s, e in iv], (i - 0.4, 0.8), color=cmap(i % 10))
    top.set_yticks(range(len(ids)), [str(w)[:8] for w in ids], fontsize=7)
    top.set_ylabel("worker")
    top.set_title(f"{title}: {utilization_of(data):.1%} busy" if len(data) else title)
    end = max((float(iv[:, 1].max()) for iv in intervals if len(iv)), default=1.0)
    edges = np.linspace(0.0, end, n_bins + 1)
    busy = np.zeros(n_bins)
    for iv in intervals:
        for s, e in iv:
            busy += np.clip(np.minimum(edges[1:], e) - np.maximum(edges[:-1], s), 0, None)
    width = edges[1] - edges[0]
    bottom.step(edges[:-1], busy / (max(len(ids), 1) * width), where="post", color="black")
    bottom.set_ylim(0, 1.05)
    bottom.set_ylabel("busy fraction")
    bottom.set_xlabel("seconds since the first start")
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def rungs(archive: Any, score: str = "y", title: str = "ASHA rungs") -> Any:
    """Every evaluation at its budget; a line joins the rungs of one promoted configuration.

    >>> plots.rungs(rush_dask.asha.search(...)).savefig("rungs.png")   # doctest: +SKIP
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=80)
    rows = archive[archive[score].notna()] if score in archive else archive.iloc[:0]
    for _, group in rows.groupby("config_id"):
        if len(group) > 1:
            group = group.sort_values("rung")
            ax.plot(group["budget"], group[score], color="grey", linewidth=0.8, alpha=0.6, zorder=1)
    counts = rows.groupby("rung").size()
    scatter = ax.scatter(rows["budget"], rows[score], c=rows["rung"], cmap="viridis", s=16, zorder=2)
    ax.set_xscale("log")
    budgets = sorted(set(rows["budget"]))
    ax.set_xticks(budgets, [f"{b:g}\n({counts.get(r, 0)} evals)" for r, b in enumerate(budgets)])
    ax.minorticks_off()
    ax.set_xlabel("budget (rung)")
    ax.set_ylabel(score)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.colorbar(scatter, ax=ax, label="rung")
    fig.tight_layout()
    return fig
