"""Optuna studies on rush workers: :func:`storage` and :func:`optimize`.

>>> import optuna
>>> from rush_dask import Rush
>>> from rush_dask.optuna import optimize, storage
>>> rush = Rush("tune")                                                   # doctest: +SKIP
>>> study = optuna.create_study(storage=storage(rush), study_name="svc")  # doctest: +SKIP
>>> optimize(study, objective, n_trials=100, rush=rush, n_workers=8)     # doctest: +SKIP
>>> study.best_params                                                     # doctest: +SKIP

The study lives in the network's Redis (:class:`rush_dask.optuna_storage.RedisStorage`).
:func:`optimize` starts rush workers in the decentralized mode: each one
loops ask, evaluate, tell on its own (Optuna's sampler and pruner decide,
from the shared storage); no controller is in that loop. Each trial is also
a rush task of the worker that runs it (``push_running_tasks``, then
``finish_tasks`` or ``fail_tasks``), so ``rush.fetch_finished_tasks()``,
``rush.read_log()`` and :mod:`rush_dask.plots` work as for any network.

Exactly ``n_trials`` trials end COMPLETE: a Redis counter hands out at most
``n_trials`` tickets at a time, and a trial that ends PRUNED or FAIL gives
its ticket back, so a new trial takes its place. A worker that dies in a
trial (SIGKILL, lost heartbeat) is declared lost by the rush machinery; its
trial's task then fails, and whoever watches — the controller waiting in
:func:`optimize`, or any worker of the run between two trials — marks the
Optuna trial FAIL through the storage API and gives its ticket back. No
trial stays RUNNING.

This module is ``rush_dask.optuna``; inside it ``import optuna`` is the real
Optuna (absolute imports).
"""

from __future__ import annotations

import logging
import math
import time
import uuid
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import optuna
from optuna.storages import BaseStorage, InMemoryStorage
from optuna.storages.journal import JournalRedisBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from .core.connections import connect, is_cluster_url
from .core.constants import WorkerState
from .core.serialize import dumps, dumps_function, loads
from .journal import RedisListJournal
from .optuna_storage import RedisStorage

logger = logging.getLogger("rush_dask.optuna")

# start_workers options that optimize() passes on (anything else is refused up front).
WORKER_OPTIONS = frozenset(
    {"heartbeat_period", "heartbeat_expire", "resources", "redis_retry_timeout", "client", "log_dir", "log_level"}
)
_IDLE_POLL = 0.05  # seconds between two looks for a free ticket, when all are taken
_WATCH_PERIOD = 0.5  # seconds between two sweeps for lost workers

# Tickets: at most n_trials trials that may still end COMPLETE. take(run hash) returns
# {1, complete} (go), {0, complete} (all taken), {-1, complete} (stopped or past the deadline).
_TAKE_FUNCTION = """
local function take(run)
  local complete = tonumber(redis.call('HGET', run, 'complete') or '0')
  local deadline = redis.call('HGET', run, 'deadline')
  if redis.call('HEXISTS', run, 'stop') == 1 then return {-1, complete} end
  if deadline then
    local t = redis.call('TIME')
    if tonumber(t[1]) + tonumber(t[2]) / 1e6 > tonumber(deadline) then return {-1, complete} end
  end
  local taken = redis.call('HINCRBY', run, 'taken', 1)
  if taken <= tonumber(redis.call('HGET', run, 'n_trials')) then return {1, complete} end
  redis.call('HINCRBY', run, 'taken', -1)
  return {0, complete}
end
"""
_TAKE = _TAKE_FUNCTION + "return take(KEYS[1])"
# A trial ended: count it COMPLETE, or give its ticket back. Once per trial, whoever comes first.
# KEYS: run hash, set of settled trial ids. ARGV: trial id, '1' if COMPLETE, '1' to take the next ticket.
_SETTLE = (
    _TAKE_FUNCTION
    + """
if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then
  if ARGV[2] == '1' then redis.call('HINCRBY', KEYS[1], 'complete', 1)
  else redis.call('HINCRBY', KEYS[1], 'taken', -1) end
end
if ARGV[3] == '1' then return take(KEYS[1]) end
return {-1, 0}
"""
)


def storage(rush: Any = None, *, backend: str = "redis") -> BaseStorage:
    """An Optuna storage kept in the network's Redis (deleted by ``rush.reset()``).

    ``backend="redis"`` (default): :class:`rush_dask.optuna_storage.RedisStorage`,
    trials in Redis hashes and indexes (keys ``rush:{NET}:optuna-store:*``);
    a process reads only the trials that finished since its last read, and
    the running ones. ``backend="list"``: Optuna's ``JournalStorage`` over
    :class:`rush_dask.journal.RedisListJournal` (key ``rush:{NET}:optuna``,
    one round trip per sync; every process replays every log entry).
    ``backend="journal"`` (or ``"optuna"``): over Optuna's own
    ``JournalRedisBackend`` (keys ``rush:{NET}:optuna-journal:*``), which
    reads new log entries one GET each. Without ``rush``, the process-wide
    default network.

    >>> study = optuna.create_study(storage=storage(rush), study_name="svc")   # doctest: +SKIP
    """
    rush = _rush_or_default(rush)
    if backend == "redis":
        return RedisStorage(rush.url, rush.keys.prefix + "optuna-store:")
    if backend == "list":
        return JournalStorage(RedisListJournal(rush.url, rush.keys.prefix + "optuna"))
    if backend in ("journal", "optuna"):
        with warnings.catch_warnings():  # "JournalRedisBackend is experimental"
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return JournalStorage(JournalRedisBackend(rush.url, prefix=rush.keys.prefix + "optuna-journal"))
    raise ValueError(f"backend must be 'redis', 'list' or 'journal', got {backend!r}")


def optimize(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], Any],
    n_trials: int,
    rush: Any = None,
    n_workers: int | None = None,
    timeout: float | None = None,
    *,
    catch: Sequence[type[Exception]] | type[Exception] = (),
    **worker_options: Any,
) -> None:
    """Run ``study`` on rush workers until ``n_trials`` more trials are COMPLETE.

    Starts ``n_workers`` workers (default: as ``rush.start_workers``), each
    of which loops ask, ``objective(trial)``, tell. Pruned and failed trials
    do not count: others take their place. ``timeout`` (seconds): no trial
    starts after it; the call returns when the running ones end. ``catch``:
    exception types of the objective that fail the trial and let the search
    go on; any other exception fails the trial, stops the search and is
    raised here (as ``study.optimize`` does). ``worker_options`` go to
    ``rush.start_workers`` (``heartbeat_period``, ``heartbeat_expire``,
    ``log_dir``, ...). A worker that dies is replaced (at most
    ``n_workers`` times in all). The sampler is reseeded in each worker, or
    every worker would propose the same configurations.

    >>> study = optuna.create_study(storage=storage(rush),
    ...                             sampler=optuna.samplers.TPESampler())  # doctest: +SKIP
    >>> optimize(study, objective, n_trials=100, rush=rush, n_workers=8)     # doctest: +SKIP
    >>> len(study.get_trials(states=[optuna.trial.TrialState.COMPLETE]))    # doctest: +SKIP
    100
    """
    # Everything is checked (and pickled) before anything is written.
    if not isinstance(study, optuna.Study):
        raise TypeError(f"study must be an optuna.Study, got {type(study).__name__}")
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
        raise ValueError(f"n_trials must be a positive integer, got {n_trials!r}")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0 or math.isinf(timeout)
    ):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if not callable(objective):
        raise TypeError(f"objective must be a function objective(trial), got {objective!r}")
    catch = (catch,) if isinstance(catch, type) else tuple(catch)
    if not all(isinstance(c, type) and issubclass(c, BaseException) for c in catch):
        raise TypeError(f"catch must be exception types, got {catch!r}")
    unknown = sorted(set(worker_options) - WORKER_OPTIONS)
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for optimize(); worker options are {sorted(WORKER_OPTIONS)}")
    store = study._storage
    if isinstance(store, InMemoryStorage) or isinstance(getattr(store, "_backend", None), InMemoryStorage):
        raise ValueError(
            "the study is in memory, which worker processes cannot reach: create it with "
            "optuna.create_study(storage=rush_dask.optuna.storage(rush), ...)"
        )
    rush = _rush_or_default(rush)
    n = rush._check_n_workers(n_workers)
    try:
        dumps_function(objective, rush.secret)
    except Exception as exc:
        raise TypeError(
            f"the objective cannot be pickled for the workers ({type(exc).__name__}: {exc}); "
            "define it at module level or close over picklable values only"
        ) from None
    for name, value in (("sampler", study.sampler), ("pruner", study.pruner), ("storage", store)):
        try:
            dumps(value, rush.secret)
        except Exception as exc:
            raise TypeError(f"the study's {name} cannot be pickled for the workers: {exc}") from None

    run = Run(rush.client, rush.keys.prefix, uuid.uuid4().hex[:12])
    run.create(n_trials, timeout)
    constants = dict(
        run_id=run.run_id,
        study_name=study.study_name,
        storage=store,
        sampler=study.sampler,
        pruner=study.pruner,
        objective=objective,
        catch=catch,
        verbosity=optuna.logging.get_verbosity(),
    )
    watcher = Reconciler(rush, store, run)
    ours: set[str] = set()
    replacements = n
    try:
        ours.update(rush.start_workers(worker_loop=trial_loop, n_workers=n, **worker_options, **constants))
        next_watch = 0.0
        while True:
            if run.done():
                break
            if time.monotonic() < next_watch:
                time.sleep(_IDLE_POLL)
                continue
            next_watch = time.monotonic() + _WATCH_PERIOD
            rush._check_started_processes()
            rush.detect_lost_workers()
            watcher.sweep()
            states = rush._worker_states()
            lost = [w for w in ours if states.get(w) in (WorkerState.LOST, WorkerState.KILLED)]
            for wid in lost:
                ours.discard(wid)
                if replacements > 0:
                    replacements -= 1
                    logger.warning("worker %s lost; starting a replacement", wid)
                    ours.update(rush.start_workers(worker_loop=trial_loop, n_workers=1, **worker_options, **constants))
            if not any(states.get(w, WorkerState.RUNNING) == WorkerState.RUNNING for w in ours):
                watcher.sweep()
                if run.done() or run.past_deadline():
                    break
                raise RuntimeError(
                    f"every worker of the search ended with {run.state()['complete']} of "
                    f"{n_trials} trials complete; their log:\n{rush.read_log().tail(20)}"
                )
    finally:
        _stop(rush, ours)
        watcher.sweep()
        stop = run.state().get("stop")
        run.delete()
    if stop:
        raise _objective_error(rush, stop)


def trial_loop(
    worker: Any,
    run_id: str,
    study_name: str,
    storage: BaseStorage,
    sampler: Any,
    pruner: Any,
    objective: Callable[..., Any],
    catch: tuple[type[BaseException], ...] = (),
    verbosity: int = optuna.logging.INFO,
    **kwargs: Any,
) -> None:
    """One worker of :func:`optimize`: take a ticket, ask, evaluate, tell, until the run is done.

    Runs in the worker process (``start_workers(worker_loop=trial_loop, ...)``);
    between trials, and while it waits for a ticket, it sweeps for lost
    workers so their trials are failed even with no controller attached.
    """
    optuna.logging.set_verbosity(verbosity)
    # Optuna's records go to the root logger, whose handler ships them to Redis (rush.read_log()).
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    sampler.reseed_rng()
    study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner)
    # The tickets on a connection of their own, held (no pool checkout per call)
    run = Run(
        connect(
            worker.url,
            retry_timeout=worker.redis_retry_timeout,
            **({} if is_cluster_url(worker.url) else {"single_connection_client": True}),
        ),
        worker.keys.prefix,
        run_id,
    )
    watcher = Reconciler(worker, storage, run)
    next_sweep = time.monotonic() + worker.heartbeat_expire
    go = run.take()
    while go >= 0:
        if worker.terminated:
            if go == 1:
                run.give_back()
            return
        if time.monotonic() > next_sweep:
            next_sweep = time.monotonic() + worker.heartbeat_expire
            worker._sweep_lost_workers(worker._dead_local_workers())
            watcher.sweep()
        if go == 0:  # every ticket is out: wait for the run to end, or for a ticket to come back
            if run.state()["complete"] >= run.n_trials:
                return
            time.sleep(_IDLE_POLL)
            go = run.take()
            continue
        go = _one_trial(worker, study, objective, catch, run)


def _one_trial(
    worker: Any, study: optuna.Study, objective: Callable[..., Any], catch: tuple[type[BaseException], ...], run: Run
) -> int:
    """Ask, evaluate, tell one trial and record it as a rush task; then take the next ticket.

    Returns what :meth:`Run.take` returned for the next trial (-1: the search must stop).
    """
    trial = study.ask()
    trial_id = trial._trial_id
    (key,) = worker.push_running_tasks(
        [{"trial": trial.number}], extra=[{"optuna_run": run.run_id, "optuna_trial_id": trial_id}]
    )
    error: BaseException | None = None
    try:
        value = objective(trial)
        frozen = study.tell(trial, value)
    except optuna.TrialPruned:
        frozen = _tell_unless_finished(study, trial, TrialState.PRUNED)
    except Exception as exc:  # noqa: BLE001 - recorded on the trial and the task
        stored = study._storage.get_trial(trial_id)
        if stored.state.is_finished():
            # The tell was refused: a sweep failed this trial meanwhile (this worker was declared
            # lost, then came back) and a new trial took its place. Not the objective's error.
            frozen = stored
            logger.warning("trial %d was failed by a sweep while it ran; its result is dropped", trial.number)
        else:
            error = exc  # the objective raised, or returned what Optuna cannot tell (None, NaN)
            text = f"{type(exc).__name__}: {exc}"
            logger.warning("trial %d failed: %s", trial.number, text)
            study._storage.set_trial_system_attr(trial_id, "fail_reason", text)
            frozen = _tell_unless_finished(study, trial, TrialState.FAIL)
    # What counts is the storage's final word (a sweep may have failed the trial first).
    state = frozen.state if frozen.state.is_finished() else study._storage.get_trial(trial_id).state
    stop = state == TrialState.FAIL and error is not None and not isinstance(error, catch)
    go = run.settle(trial_id, state == TrialState.COMPLETE, take_next=not stop)
    if state == TrialState.FAIL:
        worker.fail_tasks([key], [error if error is not None else "trial failed"])
        if stop:
            run.stop(key)
            return -1
        return go
    ys: dict[str, Any] = {"trial_state": state.name}
    if frozen.values is not None and len(frozen.values) == 1:
        ys["value"] = frozen.values[0]
    elif frozen.values is not None:
        ys.update({f"value_{i}": v for i, v in enumerate(frozen.values)})
    ys.update({f"params_{name}": v for name, v in frozen.params.items()})
    worker.finish_tasks([key], [ys])
    if optuna.logging.get_verbosity() <= optuna.logging.INFO:  # as study.optimize reports each trial
        logger.info(
            "trial %d %s with value %s and parameters %s",
            frozen.number,
            state.name.lower(),
            ys.get("value", frozen.values),
            frozen.params,
        )
    return go


def _tell_unless_finished(study: optuna.Study, trial: optuna.Trial, state: TrialState) -> FrozenTrial:
    """Tell ``state``; if a sweep finished the trial first, the storage's record stands."""
    try:
        return study.tell(trial, state=state)
    except (ValueError, RuntimeError):  # finished meanwhile (declared lost and failed by a sweep)
        return study._storage.get_trial(trial._trial_id)


class Run:
    """The Redis state of one :func:`optimize` call: tickets, COMPLETE count, stop order.

    Keys ``rush:{NET}:optuna-run:<id>`` (hash) and ``...:settled`` (set of trial ids).

    >>> run = Run(rush.client, rush.keys.prefix, "ab12")   # doctest: +SKIP
    >>> run.create(n_trials=10, timeout=None)              # doctest: +SKIP
    >>> run.take()                                         # doctest: +SKIP
    1
    """

    def __init__(self, client: Any, prefix: str, run_id: str):
        self.client = client
        self.run_id = run_id
        self.key = f"{prefix}optuna-run:{run_id}"
        self.settled = self.key + ":settled"
        self._take = client.register_script(_TAKE)
        self._settle = client.register_script(_SETTLE)
        self._n_trials: int | None = None

    def create(self, n_trials: int, timeout: float | None) -> None:
        mapping: dict[str, Any] = {"n_trials": n_trials, "taken": 0, "complete": 0}
        if timeout is not None:
            seconds, micros = self.client.time()
            mapping["deadline"] = seconds + micros / 1e6 + timeout  # Redis's clock, shared by all
        self.client.hset(self.key, mapping=mapping)

    @property
    def n_trials(self) -> int:
        if self._n_trials is None:
            self._n_trials = int(self.client.hget(self.key, "n_trials") or 0)
        return self._n_trials

    def take(self) -> int:
        """Take a ticket: 1 (go), 0 (all are out) or -1 (stopped, or past the deadline)."""
        return int(self._take(keys=[self.key])[0])

    def give_back(self) -> None:
        """Return a ticket taken but not used."""
        self.client.hincrby(self.key, "taken", -1)

    def settle(self, trial_id: int, complete: bool, take_next: bool = False) -> int:
        """Count a finished trial once: COMPLETE, or its ticket back.

        With ``take_next``, also take the next ticket in the same round trip
        and return what :meth:`take` would.
        """
        reply = self._settle(
            keys=[self.key, self.settled], args=[trial_id, "1" if complete else "0", "1" if take_next else "0"]
        )
        return int(reply[0])

    def stop(self, task_key: str) -> None:
        """Stop the search; ``task_key`` names the failed task that holds the error."""
        self.client.hsetnx(self.key, "stop", task_key)

    def state(self) -> dict[str, Any]:
        raw = {k.decode(): v.decode() for k, v in self.client.hgetall(self.key).items()}
        return {
            "complete": int(raw.get("complete", 0)),
            "taken": int(raw.get("taken", 0)),
            "stop": raw.get("stop"),
            "deadline": float(raw["deadline"]) if "deadline" in raw else None,
        }

    def done(self) -> bool:
        """Whether n_trials are COMPLETE or the search was stopped by an error."""
        state = self.state()
        return bool(state["stop"]) or state["complete"] >= self.n_trials

    def past_deadline(self) -> bool:
        deadline = self.client.hget(self.key, "deadline")
        seconds, micros = self.client.time()
        return deadline is not None and seconds + micros / 1e6 > float(deadline)

    def delete(self) -> None:
        self.client.delete(self.key, self.settled)


class Reconciler:
    """Fail the Optuna trials of tasks that failed without their worker telling (worker lost).

    Reads the network's failed-task list incrementally; for each task of this
    run whose trial is still RUNNING, marks the trial FAIL through the
    storage API, then settles it (ticket back, or COMPLETE counted if the
    worker told just before it died).
    """

    def __init__(self, view: Any, storage: BaseStorage, run: Run):
        self.view, self.storage, self.run = view, storage, run
        self.offset = 0

    def sweep(self) -> int:
        """Look at tasks failed since the last sweep; returns how many trials it failed."""
        view = self.view
        keys = view.client.lrange(view.keys.failed, self.offset, -1)
        self.offset += len(keys)
        if not keys:
            return 0
        pipe = view.client.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(view.keys.task(key.decode()), "extra", "error")
        failed = 0
        for key, (extra_blob, error) in zip(keys, pipe.execute()):
            extra = loads(extra_blob, view.secret, view._where(key, "extra")) if extra_blob else {}
            if extra.get("optuna_run") != self.run.run_id:
                continue
            trial_id = int(extra["optuna_trial_id"])
            if self.storage.get_trial(trial_id).state == TrialState.RUNNING:
                reason = (error or b"worker lost").decode()
                try:
                    self.storage.set_trial_system_attr(trial_id, "fail_reason", reason)
                    self.storage.set_trial_state_values(trial_id, TrialState.FAIL)
                    failed += 1
                    logger.warning("trial id %d failed: %s", trial_id, reason)
                except (ValueError, RuntimeError):  # its worker told meanwhile
                    pass
            state = self.storage.get_trial(trial_id).state
            self.run.settle(trial_id, state == TrialState.COMPLETE)
        return failed


def _rush_or_default(rush: Any) -> Any:
    if rush is None:
        from .default import default_rush

        return default_rush()
    return rush


def _stop(rush: Any, worker_ids: set[str], grace: float = 30.0) -> None:
    """Ask the run's workers to stop (a running trial finishes) and wait until they did."""
    running = [w for w, s in rush._worker_states().items() if w in worker_ids and s == WorkerState.RUNNING]
    if running:
        rush.stop_workers("terminate", running)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        states = rush._worker_states()
        if not any(states.get(w) == WorkerState.RUNNING for w in worker_ids):
            return
        rush.detect_lost_workers()
        time.sleep(0.05)


def _objective_error(rush: Any, task_key: str) -> BaseException:
    """The exception that stopped the search, as the worker raised it (or a RuntimeError)."""
    error, exception = rush.client.hmget(rush.keys.task(task_key), "error", "exception")
    if exception:
        try:
            exc = loads(exception, rush.secret, rush._where(task_key, "exception"))
            if isinstance(exc, BaseException):
                return exc
        except Exception:  # noqa: BLE001 - fall back to the text
            pass
    return RuntimeError(f"the objective raised: {(error or b'?').decode()}")
