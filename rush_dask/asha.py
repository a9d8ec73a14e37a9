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
worker, whenever it is free, makes one decision in one Redis round trip (a
Lua script on a sorted set of scores per rung): from the highest rung down,
it looks for a configuration among the best ``floor(n / eta)`` of the ``n``
evaluations finished in its rung that has not been promoted yet, claims it
(first caller wins: two workers never promote the same configuration) and
evaluates it with ``eta`` times the budget. With nothing to promote, it
samples a new configuration at the lowest rung. The same call records the
score of the evaluation the worker just finished. No worker waits for a
rung to fill: there is no synchronisation barrier, as in Li et al. (2020),
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

from .core.constants import WorkerState
from .core.serialize import dumps, loads, place

logger = logging.getLogger("rush_dask.asha")

WORKER_OPTIONS = frozenset(
    {"heartbeat_period", "heartbeat_expire", "resources", "redis_retry_timeout", "client", "log_dir", "log_level"}
)


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
    budgets = [min_budget * eta**k for k in range(top + 1)]
    if isinstance(min_budget, int) and isinstance(eta, int):
        budgets = [int(b) for b in budgets]
    return budgets


def promotable(archive: Any, rung: int, eta: float, score: str = "y", minimize: bool = True) -> list[str]:
    """Config ids among the best ``floor(n / eta)`` of the ``n`` evaluations finished in ``rung``, best first.

    The promotion rule, on an archive (a DataFrame with columns
    ``config_id``, ``rung`` and ``score``, as :func:`search` returns); the
    workers apply the same rule in Redis. Whether one of them was already
    promoted is not checked here.

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


# One round trip per decision. KEYS: spent counter, promoted set, configs hash, then one sorted set
# per rung (config id -> score). ARGV: n_evals, eta, '1' to minimize, then the evaluation this
# worker just finished ('' or config id, its rung, its score, its pickled configuration if new),
# then '1' to take the next evaluation. Returns {-1} (budget spent), {0} (sample a new
# configuration) or {rung, config id, pickled configuration} (a promotion this caller claimed).
_DECIDE = """
local n_evals, eta, minimize = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3] == '1'
local done_id, done_rung = ARGV[4], tonumber(ARGV[5])
if done_id ~= '' then
  if ARGV[7] ~= '' then redis.call('HSET', KEYS[3], done_id, ARGV[7]) end
  redis.call('ZADD', KEYS[4 + done_rung], ARGV[6], done_id)
end
if ARGV[8] ~= '1' then return {-1} end
if redis.call('INCR', KEYS[1]) > n_evals then return {-1} end
for k = #KEYS - 5, 0, -1 do
  local key = KEYS[4 + k]
  local top = math.floor(redis.call('ZCARD', key) / eta)
  if top > 0 then
    local ids
    if minimize then ids = redis.call('ZRANGE', key, 0, top - 1)
    else ids = redis.call('ZREVRANGE', key, 0, top - 1) end
    for _, id in ipairs(ids) do
      if redis.call('SADD', KEYS[2], id .. ':' .. (k + 1)) == 1 then
        return {k + 1, id, redis.call('HGET', KEYS[3], id)}
      end
    end
  end
end
return {0}
"""


class Rungs:
    """The Redis state of one search: a sorted set of scores per rung, configurations, claims, budget.

    Keys ``rush:{NET}:asha:<run id>:*``, deleted by :meth:`delete` (and ``rush.reset()``).

    >>> rungs = Rungs(worker.client, worker.keys.prefix, "run1", n_rungs=3)     # doctest: +SKIP
    >>> rungs.decide(n_evals=100, eta=3, minimize=True)                         # doctest: +SKIP
    (None, None, 0)
    """

    def __init__(self, client: Any, prefix: str, run_id: str, n_rungs: int, secret: bytes | None = None):
        base = f"{prefix}asha:{run_id}:"
        self.client = client
        self.secret = secret
        self.prefix, self.run_id = prefix, run_id
        self.spent = base + "spent"
        self.keys = [self.spent, base + "promoted", base + "configs", *[f"{base}rung:{k}" for k in range(n_rungs)]]
        self._decide = client.register_script(_DECIDE)

    def decide(
        self, n_evals: int, eta: float, minimize: bool, done: tuple[Any, ...] | None = None, take: bool = True
    ) -> tuple[str | None, dict[str, Any] | None, int]:
        """Record ``done`` = (config id, rung, score, configuration or None), then choose the next job.

        Returns (config id, configuration, rung) of a claimed promotion,
        (None, None, 0) to sample a new configuration, or (None, None, -1)
        once the budget is spent (or with ``take=False``).
        """
        args: list[Any] = [n_evals, eta, "1" if minimize else "0", "", 0, 0, ""]
        if done is not None:
            config_id, rung, score, config = done
            args[3:7] = [
                config_id,
                rung,
                repr(float(score)),
                dumps(config, self.secret, self._where(config_id)) if config is not None else "",
            ]
        args.append("1" if take else "0")
        reply = self._decide(keys=self.keys, args=args)
        if int(reply[0]) <= 0:
            return None, None, int(reply[0])
        config_id = reply[1].decode()
        return config_id, loads(reply[2], self.secret, self._where(config_id)), int(reply[0])

    def _where(self, config_id: str) -> bytes:
        """The place a configuration is signed for: this run, its id (see serialize.place)."""
        return place(self.prefix, f"asha:{self.run_id}:{config_id}", "config") if self.secret else b""

    def n_spent(self) -> int:
        return int(self.client.get(self.spent) or 0)

    def delete(self) -> None:
        self.client.delete(*self.keys)


def worker_loop(
    worker: Any,
    objective: Callable[..., Any],
    sample: Callable[[np.random.Generator], dict[str, Any]],
    budgets: list[float],
    eta: float,
    n_evals: int,
    run_id: str,
    score: str = "y",
    minimize: bool = True,
    seed: int | None = None,
    **kwargs: Any,
) -> None:
    """One ASHA worker: promote or sample, evaluate, record; until ``n_evals`` are spent.

    Runs in a worker process (``rush.start_workers(worker_loop=worker_loop, ...)``).
    Each decision is one script call on :class:`Rungs`, which also records
    the score of the evaluation just finished.
    """
    rng = np.random.default_rng(None if seed is None else [seed, os.getpid()])
    rungs = Rungs(worker.client, worker.keys.prefix, run_id, len(budgets), worker.secret)
    done = None
    while True:
        config_id, config, rung = rungs.decide(n_evals, eta, minimize, done, take=not worker.terminated)
        if rung < 0:
            return
        done = None
        if config_id is None:
            config_id, config = uuid.uuid4().hex[:12], dict(sample(rng))
        assert config is not None  # decide() returns a configuration with its id
        keys = worker.push_running_tasks(
            [{**config, "budget": budgets[rung]}], extra=[{"config_id": config_id, "rung": rung, "asha_run": run_id}]
        )
        try:
            result = objective(**config, budget=budgets[rung])
            ys = result if isinstance(result, dict) else {score: result}
            value = float(ys[score])
        except Exception as exc:  # noqa: BLE001 - the evaluation fails, the worker goes on
            logger.warning(
                "evaluation of %s at budget %s failed: %s: %s", config, budgets[rung], type(exc).__name__, exc
            )
            worker.fail_tasks(keys, [exc])
            continue
        worker.finish_tasks(keys, [ys])
        if not math.isnan(value):  # a NaN score cannot be ranked: never promoted
            done = (config_id, rung, value, config if rung == 0 else None)


def _with_configs(archive: Any, run_id: str) -> Any:
    """The archive rows of this search (other tasks of the network left out)."""
    if len(archive) == 0 or "asha_run" not in archive:
        return archive.iloc[:0]
    return archive[archive["asha_run"] == run_id]


def search(
    rush: Any,
    objective: Callable[..., Any],
    sample: Callable[[np.random.Generator], dict[str, Any]],
    *,
    min_budget: float,
    max_budget: float,
    eta: float = 3,
    n_evals: int,
    n_workers: int | None = None,
    score: str = "y",
    minimize: bool = True,
    seed: int | None = None,
    timeout: float | None = None,
    **worker_options: Any,
) -> Any:
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
    from .core.serialize import dumps_function

    for name, fun in (("objective", objective), ("sample", sample)):
        try:
            dumps_function(fun, rush.secret)
        except Exception as exc:
            raise TypeError(f"{name} cannot be pickled for the workers ({type(exc).__name__}: {exc})") from None
    run_id = uuid.uuid4().hex[:12]
    rungs = Rungs(rush.client, rush.keys.prefix, run_id, len(budgets), rush.secret)
    ids = rush.start_workers(
        worker_loop=worker_loop,
        n_workers=n_workers,
        objective=objective,
        sample=sample,
        budgets=budgets,
        eta=eta,
        n_evals=n_evals,
        run_id=run_id,
        score=score,
        minimize=minimize,
        seed=seed,
        **worker_options,
    )
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            rush._check_started_processes()
            rush.detect_lost_workers()
            states = rush._worker_states()
            # (a worker not registered yet counts as running)
            if not any(states.get(w, WorkerState.RUNNING) == WorkerState.RUNNING for w in ids):
                break  # every worker spent its last evaluation (or died)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"ASHA: {rungs.n_spent()} of {n_evals} evaluations after {timeout} s")
            time.sleep(0.1)
        spent = rungs.n_spent()
    finally:
        running = [w for w in ids if rush._worker_states().get(w) == WorkerState.RUNNING]
        if running:
            rush.stop_workers("terminate", running)
        rungs.delete()
    if spent < n_evals:
        raise RuntimeError(
            f"ASHA: every worker ended after {spent} of {n_evals} evaluations; their log:\n{rush.read_log().tail(20)}"
        )
    return _with_configs(rush.fetch_finished_tasks(), run_id).drop(columns=["asha_run"])
