"""Asynchronous successive halving (ASHA) on rush workers, without Optuna.

>>> from rush_dask import Rush
>>> from rush_dask.asha import search
>>> def sample(rng):                      # a new configuration
...     return {"lr": 10 ** rng.uniform(-4, -1)}
>>> def objective(lr, budget):            # train for `budget` epochs, return the loss
...     return {"y": train(lr, epochs=budget)}
>>> rush = Rush("asha")                                                     # doctest: +SKIP
>>> archive = search(rush, objective, sample, min_budget=1, max_budget=27,
...                  eta=3, n_evals=200, n_workers=8)                       # doctest: +SKIP

Budgets form rungs ``min_budget * eta**k`` up to ``max_budget``. Each
worker, whenever it is free, reads the shared archive
(``worker.fetch_finished_tasks()``, incremental) and, from the highest rung
down, looks for a configuration that is among the best ``1/eta`` of the
evaluations finished in its rung and has not been promoted yet; it claims
it (one ``SADD``: two workers never promote the same configuration) and
evaluates it with ``eta`` times the budget. With nothing to promote, it
samples a new configuration at the lowest rung. No worker waits for a rung
to fill: there is no synchronisation barrier, as in Li et al. (2020),
"A System for Massively Parallel Hyperparameter Tuning", and mlr3hyperband's
asynchronous successive halving.

Every evaluation is a rush task of the worker that runs it (inputs: the
configuration and ``budget``; extra columns ``config_id`` and ``rung``;
outputs: what the objective returns), so the archive, the logs and
:mod:`rush_dask.plots` work as for any network. The search spends exactly
``n_evals`` evaluations (a Redis counter hands them out).
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

logger = logging.getLogger("rush_dask.asha")

WORKER_OPTIONS = frozenset({"heartbeat_period", "heartbeat_expire", "resources", "redis_retry_timeout",
                            "client", "log_dir", "log_level"})


def rung_budgets(min_budget: float, max_budget: float, eta: float) -> list[float]:
    """Budgets of the rungs: ``min_budget * eta**k`` for every k that stays within ``max_budget``.

    >>> rung_budgets(1, 27, 3)
    [1, 3, 9, 27]
    >>> rung_budgets(1, 10, 3)
    [1, 3, 9]
    """
    if not (isinstance(eta, (int, float)) and eta > 1):
        raise ValueError(f"eta must be a number > 1, got {eta!r}")
    if not (isinstance(min_budget, (int, float)) and min_budget > 0):
        raise ValueError(f"min_budget must be a positive number, got {min_budget!r}")
    if not (isinstance(max_budget, (int, float)) and max_budget >= min_budget):
        raise ValueError(f"max_budget must be a number >= min_budget ({min_budget}), got {max_budget!r}")
    top = int(math.floor(math.log(max_budget / min_budget, eta) + 1e-9))
    budgets = [min_budget * eta ** k for k in range(top + 1)]
    if isinstance(min_budget, int) and isinstance(eta, int):
        budgets = [int(b) for b in budgets]
    return budgets


def promotable(archive: Any, rung: int, eta: float, score: str = "y", minimize: bool = True) -> list[str]:
    """Config ids among the best ``floor(n / eta)`` of the ``n`` evaluations finished in ``rung``, best first.

    ``archive`` is a DataFrame with columns ``config_id``, ``rung`` and
    ``score``. Whether one of them was already promoted is the caller's
    business (the claim in Redis decides).

    >>> import pandas as pd
    >>> archive = pd.DataFrame({"config_id": list("abcdef"), "rung": [0] * 6, "y": [5, 1, 4, 2, 6, 3]})
    >>> promotable(archive, 0, eta=3)
    ['b', 'd']
    """
    if len(archive) == 0 or "rung" not in archive or score not in archive:
        return []
    rows = archive[(archive["rung"] == rung) & archive[score].notna()]
    n_top = int(len(rows) // eta)
    if n_top == 0:
        return []
    best = rows.sort_values(score, ascending=minimize, kind="stable").head(n_top)
    return list(best["config_id"])


class Claims:
    """The Redis set of promotions already taken, and the evaluation counter, of one search.

    >>> claims = Claims(worker.client, worker.keys.prefix, "run1")   # doctest: +SKIP
    >>> claims.promote("c0ffee", rung=1)                            # doctest: +SKIP
    True
    """

    def __init__(self, client: Any, prefix: str, run_id: str):
        self.client = client
        self.promoted = f"{prefix}asha:{run_id}:promoted"
        self.spent = f"{prefix}asha:{run_id}:spent"
        self._taken: set[str] = set()  # promotions known to be claimed: no round trip for them again

    def promote(self, config_id: str, rung: int) -> bool:
        """Claim the promotion of ``config_id`` to ``rung``; True for the first caller only."""
        member = f"{config_id}:{rung}"
        if member in self._taken:
            return False
        self._taken.add(member)
        return bool(self.client.sadd(self.promoted, member))

    def spend(self, n_evals: int) -> bool:
        """Take one evaluation of the budget; False once ``n_evals`` were taken."""
        return self.client.incr(self.spent) <= n_evals

    def n_spent(self) -> int:
        return int(self.client.get(self.spent) or 0)

    def delete(self) -> None:
        self.client.delete(self.promoted, self.spent)


def next_job(archive: Any, budgets: list[float], eta: float, claims: Claims, score: str,
             minimize: bool) -> tuple[str, dict[str, Any], int] | None:
    """(config id, configuration, rung) of a promotion this worker claimed, or None.

    Looks from the highest rung that can still promote down to the lowest.
    """
    if len(archive) == 0 or "rung" not in archive:
        return None
    for rung in range(len(budgets) - 2, -1, -1):
        for config_id in promotable(archive, rung, eta, score, minimize):
            if claims.promote(config_id, rung + 1):
                row = archive[(archive["config_id"] == config_id) & (archive["rung"] == rung)].iloc[0]
                return config_id, row["config"], rung + 1
    return None


def worker_loop(worker: Any, objective: Callable[..., Any], sample: Callable[[np.random.Generator], dict],
                budgets: list[float], eta: float, n_evals: int, run_id: str, score: str = "y",
                minimize: bool = True, seed: int | None = None, **kwargs: Any) -> None:
    """One ASHA worker: promote or sample, evaluate, record; until ``n_evals`` are spent.

    Runs in a worker process (``rush.start_workers(worker_loop=worker_loop, ...)``).
    """
    rng = np.random.default_rng(None if seed is None else [seed, os.getpid()])
    claims = Claims(worker.client, worker.keys.prefix, run_id)
    while not worker.terminated and claims.spend(n_evals):
        archive = _with_configs(worker.fetch_finished_tasks(), run_id)
        job = next_job(archive, budgets, eta, claims, score, minimize)
        if job is None:
            job = (uuid.uuid4().hex[:12], dict(sample(rng)), 0)
        config_id, config, rung = job
        keys = worker.push_running_tasks([{**config, "budget": budgets[rung]}],
                                         extra=[{"config_id": config_id, "rung": rung, "asha_run": run_id,
                                                 "config": config}])
        try:
            result = objective(**config, budget=budgets[rung])
        except Exception as exc:  # noqa: BLE001 - the evaluation fails, the worker goes on
            logger.warning("evaluation of %s at budget %s failed: %s: %s", config, budgets[rung],
                           type(exc).__name__, exc)
            worker.fail_tasks(keys, [exc])
            continue
        worker.finish_tasks(keys, [result if isinstance(result, dict) else {score: result}])


def _with_configs(archive: Any, run_id: str) -> Any:
    """The archive rows of this search (other tasks of the network left out)."""
    if len(archive) == 0 or "asha_run" not in archive:
        return archive.iloc[:0]
    return archive[archive["asha_run"] == run_id]


def search(rush: Any, objective: Callable[..., Any], sample: Callable[[np.random.Generator], dict], *,
           min_budget: float, max_budget: float, eta: float = 3, n_evals: int,
           n_workers: int | None = None, score: str = "y", minimize: bool = True,
           seed: int | None = None, timeout: float | None = None, **worker_options: Any) -> Any:
    """Run ASHA on ``n_workers`` new workers until ``n_evals`` evaluations are done; returns them.

    ``objective(**config, budget=b)`` returns a dict with column ``score``
    (or a number); ``sample(rng)`` returns a new configuration (a dict),
    ``rng`` a ``numpy.random.Generator`` seeded from ``seed`` and the
    worker's pid. Returns the finished evaluations of this search (a
    DataFrame: the configuration, ``budget``, ``config_id``, ``rung``,
    ``score``, ``worker_id``, times). ``worker_options`` go to
    ``rush.start_workers``.

    >>> archive = search(rush, objective, sample, min_budget=1, max_budget=9, n_evals=60)   # doctest: +SKIP
    >>> archive.sort_values("y").head(1)                                                   # doctest: +SKIP
    """
    budgets = rung_budgets(min_budget, max_budget, eta)
    if isinstance(n_evals, bool) or not isinstance(n_evals, int) or n_evals < 1:
        raise ValueError(f"n_evals must be a positive integer, got {n_evals!r}")
    if not callable(objective) or not callable(sample):
        raise TypeError("objective and sample must be functions")
    unknown = sorted(set(worker_options) - WORKER_OPTIONS)
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for search(); worker options are {sorted(WORKER_OPTIONS)}")
    from .serialize import dumps_function

    for name, fun in (("objective", objective), ("sample", sample)):
        try:
            dumps_function(fun, rush.secret)
        except Exception as exc:
            raise TypeError(f"{name} cannot be pickled for the workers ({type(exc).__name__}: {exc})") from None
    run_id = uuid.uuid4().hex[:12]
    claims = Claims(rush.client, rush.keys.prefix, run_id)
    ids = rush.start_workers(worker_loop=worker_loop, n_workers=n_workers, objective=objective, sample=sample,
                             budgets=budgets, eta=eta, n_evals=n_evals, run_id=run_id, score=score,
                             minimize=minimize, seed=seed, **worker_options)
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            rush._check_started_processes()
            rush.detect_lost_workers()
            states = rush._worker_states()
            if not any(states.get(w, "running") == "running" for w in ids):  # not registered yet: running
                break  # every worker spent its last evaluation (or died)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"ASHA: {claims.n_spent()} of {n_evals} evaluations after {timeout} s")
            time.sleep(0.1)
        spent = claims.n_spent()
    finally:
        running = [w for w in ids if rush._worker_states().get(w) == "running"]
        if running:
            rush.stop_workers("terminate", running)
        claims.delete()
    if spent < n_evals:
        raise RuntimeError(f"ASHA: every worker ended after {spent} of {n_evals} evaluations; their log:\n"
                           f"{rush.read_log().tail(20)}")
    return _with_configs(rush.fetch_finished_tasks(), run_id).drop(columns=["config", "asha_run"])
