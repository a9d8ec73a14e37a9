"""The controller :class:`Rush`: start workers, push tasks, wait, fetch results."""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .core import constants as C
from .core.connections import connect, current_plan, is_cluster_client, redact, resolve_url
from .core.control import stop_workers
from .core.errors import PayloadTooLargeError, RedisUnavailableError, WorkerStartError
from .core.network import NetworkView, known_secrets
from .core.scripts import NewTask, Scripts
from .core.serialize import content_id, dumps, dumps_function, resolve_secret
from .core.server import before_embedded_stop
from .core.shared import pack_inputs
from .core.tasks import check_xss, new_keys
from .core.waiting import Patience
from .core.worker import check_heartbeat
from .dask.client import FuturesClient
from .dask.scheduler import DaskScheduler
from .deploy.processes import LocalWorkers

if TYPE_CHECKING:
    from .dashboard.app import DashboardThread

logger = logging.getLogger("rush_dask")

_PUSH_BATCH = 1_000  # tasks per script call; calls are pipelined
_PUSH_BYTES = 16 * 2**20  # about this much payload per script call, at most
_live_controllers: weakref.WeakSet[Rush] = weakref.WeakSet()
_all_controllers: weakref.WeakSet[Rush] = weakref.WeakSet()  # closed ones too


def live_controller(network_id: str) -> Rush | None:
    """An open controller of ``network_id`` in this process, if there is one."""
    return next((rush for rush in list(_live_controllers) if rush.network_id == network_id), None)


def _stop_all_at_exit() -> None:
    for rush in list(_live_controllers):
        rush.close()
    # What runs later at exit (futures released by their finalizers) must try Redis
    # once, not retry for a minute while the embedded server stops.
    for rush in list(_all_controllers):
        rush.client.set_retry(Retry(NoBackoff(), 0))


atexit.register(_stop_all_at_exit)
before_embedded_stop.append(_stop_all_at_exit)  # the atexit order would stop Redis first


class Rush(FuturesClient, DaskScheduler, NetworkView):
    """The controller of a network: start workers, push tasks, wait, read results.

    >>> from rush_dask import Rush
    >>> rush = Rush("test")                           # doctest: +SKIP
    >>> def fun(x1, x2, **kwargs):
    ...     return {"y": x1 + x2}
    >>> rush.start_workers(fun, n_workers=2)          # doctest: +SKIP
    >>> keys = rush.push_tasks([{"x1": 3, "x2": 5}])  # doctest: +SKIP
    >>> rush.wait_for_tasks(keys)                     # doctest: +SKIP
    >>> rush.data[["x1", "x2", "y", "state"]]         # doctest: +SKIP

    Redis comes from ``url=``, else ``$RUSH_REDIS_URL``, else
    :func:`rush_dask.plan`, else a private server started on first use.
    Any number of controllers, in any process, may attach to one network.

    ``secret`` (default ``$RUSH_SECRET``) signs every pickled payload; workers
    then refuse payloads without a valid signature (see ``docs/security.md``).
    ``max_payload_bytes`` bounds a serialized task, shared input or result.
    """

    def __init__(
        self,
        network_id: str | None = None,
        url: str | None = None,
        *,
        seed: int | None = None,
        secret: str | bytes | None = None,
        max_payload_bytes: int = C.MAX_PAYLOAD_BYTES,
        **options: Any,
    ):
        if options:
            raise TypeError(f"unknown option(s) {sorted(options)} for Rush()")
        if seed is not None and (not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        _check_int("max_payload_bytes", max_payload_bytes, minimum=1024, maximum=512 * 2**20 - 2**16)
        self.secret = resolve_secret(secret)
        self.max_payload_bytes = max_payload_bytes
        self.keys = C.Keys(f"rush-{uuid.uuid4().hex[:8]}" if network_id is None else network_id)
        self.url = resolve_url(url)
        # Commands are retried through a Redis restart; the scripts that a retry may
        # repeat (push, push_graph) apply once, and GraphRun.wait recovers lost replies.
        self.client = connect(self.url, retry_timeout=C.DEFAULT_REDIS_RETRY_TIMEOUT)
        self.scripts = Scripts(self.client, self.keys)
        self.seed = seed
        if self.secret is not None:
            known_secrets[self.keys.network_id] = self.secret
        self._init_view()
        self._init_scheduler()
        self.local_workers = LocalWorkers(self.network_id, self.url, secret=self.secret)
        self._dashboards: list[DashboardThread] = []  # served by dashboard()
        _live_controllers.add(self)
        _all_controllers.add(self)

    def __repr__(self) -> str:
        try:
            if not self._redis_answers():
                raise ConnectionError("no answer")
            c = self._counts()
        except Exception as exc:  # a repr must not raise
            return f"<Rush network={self.network_id!r} url={redact(self.url)} (unreachable: {type(exc).__name__})>"
        return (
            f"<Rush network={self.network_id!r}: {c['running_workers']} running workers; tasks: "
            f"{c['queued']} queued, {c['priority']} queued priority, {c['running']} running, "
            f"{c['finished']} finished, {c['failed']} failed>"
        )

    def __str__(self) -> str:
        """What ``print(rush)`` shows: the counts of the network, one per line (as Rush in R).

        >>> print(rush)    # doctest: +SKIP
        <Rush>
        * Network: test
        * Running Workers: 2
        * Queued Tasks: 0
        * Queued Priority Tasks: 0
        * Running Tasks: 0
        * Finished Tasks: 4
        * Failed Tasks: 0
        """
        lines = ["<Rush>", f"* Network: {self.network_id}"]
        try:
            if not self._redis_answers():
                raise ConnectionError("no answer")
            c = self._counts()
        except Exception as exc:  # printing must not raise
            return "\n".join([*lines, f"* Redis: {redact(self.url)} (unreachable: {type(exc).__name__})"])
        for label, name in (
            ("Running Workers", "running_workers"),
            ("Queued Tasks", "queued"),
            ("Queued Priority Tasks", "priority"),
            ("Running Tasks", "running"),
            ("Finished Tasks", "finished"),
            ("Failed Tasks", "failed"),
        ):
            lines.append(f"* {label}: {c[name]}")
        return "\n".join(lines)

    def dashboard(self, port: int = 8787, host: str = "127.0.0.1", *, allow_control: bool = False) -> str:
        """Serve the live web dashboard of this network from a background thread; returns its URL.

        The page shows workers, task counts over time, Dask computes, failed
        tasks, the log and Redis; ``/metrics`` serves Prometheus metrics
        (``docs/dashboard.md``). ``port=0`` takes a free port. It stops with
        :meth:`close` or the process. Needs ``pip install 'rush-dask[dashboard]'``.

        >>> rush.dashboard(port=8787)     # doctest: +SKIP
        'http://127.0.0.1:8787/?network=test'
        """
        try:
            from .dashboard import start_in_thread

            server = start_in_thread(self.url, self.network_id, host, port, allow_control=allow_control)
        except ImportError:
            from .dashboard import MISSING_HINT

            raise ImportError(MISSING_HINT) from None
        self._dashboards.append(server)
        return server.url

    def _redis_answers(self) -> bool:
        """Whether Redis answers at once (one try: self.client would retry for a minute)."""
        try:
            connect(self.url).close()
        except RedisUnavailableError:
            return False
        return True

    def __enter__(self) -> Rush:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ workers
    def start_workers(
        self,
        fun: Callable[..., Any] | None = None,
        n_workers: int | None = None,
        *,
        worker_loop: Callable[..., Any] | None = None,
        heartbeat_period: float = C.DEFAULT_HEARTBEAT_PERIOD,
        heartbeat_expire: float | None = None,
        resources: dict[str, float] | None = None,
        redis_retry_timeout: float = C.DEFAULT_REDIS_RETRY_TIMEOUT,
        client: Any = None,
        log_dir: str | Path | None = None,
        log_level: int = logging.INFO,
        start_id: str | None = None,
        **constants: Any,
    ) -> list[str]:
        """Start ``n_workers`` local worker processes; returns their ids at once.

        Each worker calls ``fun(**xs, **constants)`` for every task it pops
        (or runs ``worker_loop(worker, **constants)`` instead). Worker
        stdout/stderr go to files in ``log_dir`` (a temporary directory by
        default). Use :meth:`wait_for_workers` to wait until they registered.
        ``start_id`` starts them from a configuration stored before (the id
        in the command of :meth:`worker_script`) instead of ``fun`` and the
        other options.

        >>> ids = rush.start_workers(fun, n_workers=2, scale=10)   # doctest: +SKIP
        >>> rush.wait_for_workers(2)                               # doctest: +SKIP

        With ``client=`` (a ``distributed.Client``) the workers run on that
        Dask cluster instead, one per distributed worker by default (``n_workers``
        spreads over them; their stderr goes to the distributed workers' logs);
        see :mod:`rush_dask.deploy.launch` and docs/deploy.md.
        """
        if client is not None:
            from .deploy import launch

            addresses = launch.plan_cluster(client, n_workers, self.url)  # checks, writes nothing
        n = self._check_n_workers(n_workers)
        if start_id is None:
            start_id = self._store_start_config(
                fun,
                worker_loop,
                heartbeat_period,
                heartbeat_expire,
                resources,
                redis_retry_timeout,
                log_level,
                constants,
            )
        elif fun is not None or worker_loop is not None or constants:
            raise TypeError(
                "start_id= names a stored worker configuration; do not pass fun, worker_loop or constants with it"
            )
        elif not self.client.exists(self.keys.start_config(start_id)):
            raise ValueError(
                f"no worker configuration {start_id!r} in network {self.network_id!r}: "
                "use the --start-id that worker_script() printed for this network"
            )
        if client is not None:
            started = launch.submit_workers(client, addresses, self.network_id, start_id, self.url, secret=self.secret)
            self.local_workers.adopt(started)
            logger.info("started %d workers on the Dask cluster %s", len(started), client.scheduler.address)
            return [w.worker_id for w in started]
        ids = self.local_workers.spawn(start_id, n, log_dir)
        logger.info("started %d workers (logs in %s)", n, self.local_workers.log_dir(log_dir))
        return ids

    def worker_script(
        self,
        fun: Callable[..., Any] | None = None,
        *,
        worker_loop: Callable[..., Any] | None = None,
        heartbeat_period: float = C.DEFAULT_HEARTBEAT_PERIOD,
        heartbeat_expire: float | None = None,
        resources: dict[str, float] | None = None,
        redis_retry_timeout: float = C.DEFAULT_REDIS_RETRY_TIMEOUT,
        **constants: Any,
    ) -> str:
        """A shell command that starts one worker anywhere that reaches Redis.

        The Redis URL is not in the command: set ``RUSH_REDIS_URL`` on the
        worker's machine (so a password never shows in ``ps`` or in logs).
        If the network has a secret, set ``RUSH_SECRET`` there too (never on
        the command line): without it the worker refuses the signed
        configuration and exits with a clear error.

        >>> print(rush.worker_script(fun))    # doctest: +SKIP
        python -m rush_dask.core.worker --network test --start-id 5f0c...
        """
        start_id = self._store_start_config(
            fun,
            worker_loop,
            heartbeat_period,
            heartbeat_expire,
            resources,
            redis_retry_timeout,
            logging.INFO,
            constants,
        )
        return f"python -m rush_dask.core.worker --network {self.network_id} --start-id {start_id}"

    def _check_n_workers(self, n_workers: int | None) -> int:
        n = n_workers if n_workers is not None else current_plan().n_workers
        if n is None or n == 0 and n_workers is None:  # plan(n_workers=0) is for computes alone
            n = os.cpu_count() or 1
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n_workers must be an integer >= 1, got {n_workers!r}")
        return n

    def _store_start_config(
        self,
        fun: Callable[..., Any] | None,
        worker_loop: Callable[..., Any] | None,
        heartbeat_period: float,
        heartbeat_expire: float | None,
        resources: dict[str, float] | None,
        redis_retry_timeout: float,
        log_level: int,
        constants: dict[str, Any],
    ) -> str:
        # Everything is checked and serialized before the first write.
        period, expire = check_heartbeat(heartbeat_period, heartbeat_expire)
        if worker_loop is not None and not callable(worker_loop):
            raise TypeError(f"worker_loop must be a function loop(worker, **loop_args), got {worker_loop!r}")
        if resources is not None and (
            not isinstance(resources, dict)
            or not all(isinstance(k, str) and isinstance(v, (int, float)) for k, v in resources.items())
        ):
            raise TypeError(f"resources must be a dict of name -> amount, got {resources!r}")
        if not isinstance(redis_retry_timeout, (int, float)) or redis_retry_timeout < 0:
            raise ValueError(f"redis_retry_timeout must be >= 0 seconds, got {redis_retry_timeout!r}")
        fun_blob = dumps_function(fun, self.secret, self._where("", "fun")) if fun is not None else None
        start_id = uuid.uuid4().hex[:16]
        config: dict[str, Any] = {
            "heartbeat_period": period,
            "heartbeat_expire": expire,
            "resources": json.dumps(resources or {}),
            "redis_retry_timeout": redis_retry_timeout,
            "log_level": int(log_level),
            "constants": dumps(constants, self.secret, self._where(start_id, "constants")),
            "max_payload_bytes": self.max_payload_bytes,
        }
        if worker_loop is not None:
            config["loop"] = dumps_function(worker_loop, self.secret, self._where(start_id, "loop"))
        pipe = self.client.pipeline(transaction=True)
        if fun_blob is not None:
            config["fun"] = self._fun_id(fun_blob, pipe)
        pipe.hset(self.keys.start_config(start_id), mapping=config)
        pipe.execute()
        return start_id

    def _fun_id(self, blob: bytes, pipe: Any) -> str:
        fun_id = content_id(blob)
        pipe.set(self.keys.function(fun_id), blob, nx=True)
        return fun_id

    def _check_started_processes(self) -> None:
        """Raise WorkerStartError for a worker this controller started that died before it registered."""
        if len(self.local_workers):
            self.local_workers.check_started(self._worker_states())

    def wait_for_workers(
        self, n: int | None = None, worker_ids: Sequence[str] | None = None, timeout: float | None = None
    ) -> None:
        """Wait until ``n`` workers (or the given ids) are running.

        Raises :class:`WorkerStartError` with the worker's last stderr lines
        if a local worker dies while starting, ``TimeoutError`` after ``timeout``.

        >>> rush.wait_for_workers(2, timeout=30)   # doctest: +SKIP
        """
        if n is None and worker_ids is None:
            n = len(self.local_workers)
        patience = Patience(timeout, max_delay=0.02)
        while True:
            self._check_started_processes()
            states = self._worker_states()
            running = [w for w, s in states.items() if s == C.WorkerState.RUNNING]
            if worker_ids is not None:
                done = all(states.get(w) == C.WorkerState.RUNNING for w in worker_ids)
                gone = [w for w in worker_ids if states.get(w) not in (None, C.WorkerState.RUNNING)]
                if gone:
                    raise WorkerStartError(f"workers {gone} stopped ({[states[w] for w in gone]})")
            else:
                done = n is not None and len(running) >= n  # n is set when worker_ids is None
            if done:
                return
            # check() calls the message at once, if at all: this round's value is the one meant.
            patience.check(
                lambda: (
                    f"{len(running)} of "  # noqa: B023
                    f"{n if n is not None else len(worker_ids or ())} workers running"
                )
            )
            patience.sleep()

    def stop_workers(self, type: str = "terminate", worker_ids: Iterable[str] | None = None) -> list[str]:
        """Stop workers: ``terminate`` lets the current task finish, ``kill`` stops them now.

        A killed worker's running task fails with "worker killed"; local
        processes get SIGKILL, remote ones hard-exit at their next heartbeat.
        Returns the ids that were asked to stop.

        >>> rush.stop_workers(type="kill", worker_ids=[rush.running_worker_ids[0]])  # doctest: +SKIP
        """
        return stop_workers(self, type, worker_ids, self.local_workers.processes)

    def _health_check(self) -> None:
        """Run while waiting: fail fast on workers that died starting, requeue tasks of lost ones."""
        self._check_started_processes()
        self.detect_lost_workers()

    def detect_lost_workers(self) -> list[str]:
        """Mark workers whose heartbeat expired (or whose local process is gone) as ``lost``.

        Their tasks go back to the queue (or fail after ``max_lost`` losses).
        Returns the ids newly marked lost.

        >>> rush.detect_lost_workers()   # doctest: +SKIP
        []
        """
        self.local_workers.reap()
        lost = self._sweep_lost_workers(self._dead_local_workers())
        if lost:
            logger.warning("workers lost: %s", lost)
        return lost

    # -------------------------------------------------------------------- tasks
    def push_tasks(
        self,
        xss: Sequence[dict[str, Any]],
        extra: Sequence[dict[str, Any]] | None = None,
        *,
        fun: Callable[..., Any] | None = None,
        max_retries: int = 0,
        timeout: float | None = None,
        seed: int | None = None,
        priority: int = 0,
        max_lost: int = C.DEFAULT_MAX_LOST,
    ) -> list[str]:
        """Queue one task per dict of inputs; returns their keys.

        ``extra`` (one dict per task) is stored with the task as extra
        columns, not passed to the function. ``fun`` runs these tasks instead
        of the workers' function. ``max_retries``: a task that raises is
        queued again up to that many times. ``timeout``: seconds before a
        running task is interrupted and failed. ``seed``: reproducible random
        streams (default: the controller's seed). ``priority``: higher runs first.

        >>> keys = rush.push_tasks([{"x1": 1, "x2": 2}], max_retries=2)   # doctest: +SKIP
        """
        check_xss(xss, extra)
        return self._push(
            xss,
            extra,
            [""] * len(xss),
            fun=fun,
            max_retries=max_retries,
            timeout=timeout,
            seed=seed,
            priority=priority,
            max_lost=max_lost,
        )

    def push_priority_tasks(
        self,
        xss: Sequence[dict[str, Any]],
        worker_ids: Sequence[str],
        extra: Sequence[dict[str, Any]] | None = None,
        **options: Any,
    ) -> list[str]:
        """Queue each task on one worker's own queue (popped before the shared queue).

        ``worker_ids`` gives one worker id per task. A task for a worker that is
        not running goes to the shared queue. Other options as :meth:`push_tasks`.

        >>> keys = rush.push_priority_tasks([{"x": 1}], worker_ids=[rush.running_worker_ids[0]])  # doctest: +SKIP
        """
        check_xss(xss, extra)
        targets = [worker_ids] if isinstance(worker_ids, str) else list(worker_ids)
        if len(targets) != len(xss):
            raise ValueError(
                f"worker_ids has {len(targets)} entries but xss has {len(xss)}; give one worker id per task"
            )
        self._check_worker_ids(set(targets))
        return self._push(xss, extra, targets, **options)

    def _push(
        self,
        xss: Sequence[dict[str, Any]],
        extra: Sequence[dict[str, Any]] | None,
        targets: Sequence[str],
        *,
        fun: Callable[..., Any] | None = None,
        max_retries: int = 0,
        timeout: float | None = None,
        seed: int | None = None,
        priority: int = 0,
        max_lost: int = C.DEFAULT_MAX_LOST,
    ) -> list[str]:
        """Validate options, serialize, then write (``xss`` was checked by the caller)."""
        _check_int("max_retries", max_retries, minimum=0)
        _check_int("max_lost", max_lost, minimum=0)
        _check_int("priority", priority, minimum=-1000, maximum=1000)
        if timeout is not None and (not isinstance(timeout, (int, float)) or not timeout > 0 or math.isinf(timeout)):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        seed = self.seed if seed is None else seed
        if seed is not None:
            _check_int("seed", seed, minimum=0)
        # Serialize everything first: a bad task must leave the network untouched.
        # Signatures are bound to the task keys (see serialize.place).
        keys = new_keys(len(xss))
        blobs, shared = pack_inputs(xss, self.secret, max_bytes=self.max_payload_bytes, where=self._where, keys=keys)
        extras = (
            [dumps(dict(e), self.secret, self._where(k, "extra")) if e else b"" for e, k in zip(extra, keys)]
            if extra
            else [b""] * len(xss)
        )
        fun_blob = dumps_function(fun, self.secret, self._where("", "fun")) if fun is not None else None
        self._check_sizes(blobs, extras, fun_blob)
        # Each batch is one atomic script; no MULTI around them, so workers start on the
        # first batch while the rest is sent, and Redis serves other clients in between.
        fun_id = content_id(fun_blob) if fun_blob is not None else ""

        def push(batch: list[NewTask], client: Any = None) -> None:
            self.scripts.push(
                batch,
                fun_id=fun_id,
                max_retries=max_retries,
                timeout=timeout,
                seed=seed,
                priority=priority,
                max_lost=max_lost,
                client=client,
            )

        batches: list[list[NewTask]] = []
        start = 0
        while start < len(keys):
            batch: list[NewTask] = []
            size, i = 0, start
            # A batch ends at _PUSH_BATCH tasks or _PUSH_BYTES of payload (Redis closes a
            # client whose command exceeds its 1 GB query buffer).
            while i < len(keys) and i - start < _PUSH_BATCH and (i == start or size < _PUSH_BYTES):
                batch.append(NewTask(keys[i], blobs[i], extras[i], targets[i]))
                size += len(blobs[i]) + len(extras[i])
                i += 1
            start = i
            batches.append(batch)
        # A Redis restart while the pipeline runs empties the script cache (NOSCRIPT
        # after the reconnect); a batch applies only once, so sending them again is safe.
        for attempt in range(2):
            pipe = self.client.pipeline(transaction=False)
            for cid, blob in shared.items():  # before the tasks that use them
                pipe.set(self.keys.shared(cid), blob, nx=True)
            if fun_blob is not None:
                self._fun_id(fun_blob, pipe)
            if is_cluster_client(self.client):
                # A cluster pipeline does not load scripts (a plain one does): the batches
                # go after the shared inputs and the function they use, one call each.
                pipe.execute()
                for batch in batches:
                    push(batch)
                break
            for batch in batches:
                push(batch, client=pipe)
            try:
                pipe.execute()
                break
            except redis.exceptions.NoScriptError:
                if attempt:
                    raise
        return keys

    def _check_sizes(self, blobs: list[bytes], extras: list[bytes], fun_blob: bytes | None) -> None:
        """Raise PayloadTooLargeError, before anything is written, for a payload over the limit."""
        limit = self.max_payload_bytes
        hint = (
            f"Rush(max_payload_bytes=...) is {limit:,} bytes; keep large data out of the "
            "task (a file or object store path) or raise the limit (Redis stores at most 512 MB)"
        )
        for i, (blob, more) in enumerate(zip(blobs, extras)):
            if len(blob) + len(more) > limit:
                raise PayloadTooLargeError(
                    f"task {i} is {len(blob) + len(more):,} bytes serialized, over the limit: {hint}"
                )
        if fun_blob is not None and len(fun_blob) > limit:
            raise PayloadTooLargeError(f"fun is {len(fun_blob):,} bytes serialized, over the limit: {hint}")

    def wait_for_tasks(
        self,
        keys: Sequence[str] | None = None,
        timeout: float | None = None,
        *,
        detect_lost_workers: bool = True,
        progress: bool | None = None,
    ) -> None:
        """Wait until the tasks are finished or failed (all tasks of the network by default).

        While waiting it detects lost workers (their tasks are requeued) and
        raises :class:`WorkerStartError` if local workers died while starting.
        A progress bar appears on a terminal when the wait lasts over 2 s.
        Raises ``TimeoutError`` after ``timeout`` seconds.

        >>> rush.wait_for_tasks(keys, timeout=60)   # doctest: +SKIP
        """
        from tqdm.auto import tqdm

        pending = set(keys) if keys is not None else None
        total = len(pending) if pending is not None else self.n_tasks
        offsets = [0, 0]
        patience = Patience(timeout, self._health_check if detect_lost_workers else self._check_started_processes)
        # disable=None: tqdm shows the bar only on a terminal.
        bar = tqdm(
            total=total, unit="task", delay=2, desc=self.network_id, disable=None if progress is None else not progress
        )
        try:
            while True:
                pipe = self.client.pipeline(transaction=False)
                pipe.lrange(self.keys.finished, offsets[0], -1)
                pipe.lrange(self.keys.failed, offsets[1], -1)
                if pending is None:
                    pipe.zcard(self.keys.queue)
                    pipe.scard(self.keys.running)
                replies = pipe.execute()
                done_now = 0
                for i in (0, 1):
                    offsets[i] += len(replies[i])
                    if pending is not None:
                        before = len(pending)
                        pending.difference_update(k.decode() for k in replies[i])
                        done_now += before - len(pending)
                    else:
                        done_now += len(replies[i])
                if done_now:
                    bar.update(done_now)
                    patience.progressed()
                if pending is not None and not pending:
                    return
                if pending is None and replies[2] == 0 and replies[3] == 0 and self.n_queued_priority_tasks == 0:
                    return
                left = len(pending) if pending is not None else replies[2] + replies[3]
                patience.check(lambda: f"{left} tasks not done")  # noqa: B023 - called at once, if at all
                patience.sleep()
        finally:
            bar.close()

    def empty_queue(self, reason: str = "removed from the queue by empty_queue()") -> int:
        """Fail every queued task (shared and priority queues); returns how many.

        >>> rush.empty_queue()   # doctest: +SKIP
        3
        """
        return self.scripts.empty_queue(reason)

    def reset(self, workers: bool = True) -> None:
        """Delete every key of this network from Redis (and kill its workers first).

        Only this network's keys are touched, never the rest of the database.

        >>> rush.reset()   # doctest: +SKIP
        """
        if workers:
            running = self.running_worker_ids
            if running:
                self.stop_workers("kill", running)
            self.local_workers.kill()
        self._completions.close()  # its releases in flight must not write after the scan below
        self.client_lease.forget()  # everything it held goes with the keys
        keys = list(self.client.scan_iter(match=self.keys.pattern, count=1000))
        for start in range(0, len(keys), 1000):
            self.client.unlink(*keys[start : start + 1000])
        self.plane.store.remove_all()  # result files of the network on this host
        self._init_view()

    def _ask_to_terminate(self, worker_ids: list[str]) -> None:
        """Ask those of ``worker_ids`` still running to finish their task and stop; through Redis,
        which also wakes idle ones at once. With Redis gone there is nobody to tell."""
        if self._redis_answers():
            running = set(self.running_worker_ids)
            ids = [wid for wid in worker_ids if wid in running]
            if ids:
                self.stop_workers("terminate", ids)

    def close(self) -> None:
        """Stop the local worker processes that this controller started (SIGTERM, then SIGKILL).

        Also removes the temporary directory of their stdout/stderr files
        (a ``log_dir`` you chose is kept), and stops the dashboards it serves.
        """
        for server in self._dashboards:
            server.stop()
        self._dashboards.clear()
        self._completions.close()
        self.client_lease.close()  # what it still holds goes now, not after its lease
        self.local_workers.stop(self._ask_to_terminate)
        self.local_workers.close()
        self.plane.close()
        _live_controllers.discard(self)


def _check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        raise ValueError(f"{name} must be between {minimum} and {maximum}, got {value}")
