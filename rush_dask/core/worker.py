"""The worker side: :class:`RushWorker`, the default loop and the process entry point.

A worker registers itself (id, pid, hostname, start time), starts a
heartbeat thread, and then runs a loop. The default loop spends one Redis
round trip per task in steady state: the ``settle_and_pop`` script records
the outcome of the task just run and hands out the next one (several at
once when tasks are very short). When the
queues are empty the worker blocks on a wake list (BLPOP) that pushers fill,
so it reacts at once to new work without polling; every now and then an
idle worker also sweeps for lost workers, so their tasks come back even
when no controller is attached.

Start one from a shell (the URL comes from ``$RUSH_REDIS_URL``)::

    python -m rush_dask.core.worker --network test --start-id <id>

where ``<id>`` names the configuration (function, constants, heartbeat)
that ``Rush.start_workers`` or ``Rush.worker_script`` stored in Redis. If
the network signs its payloads, the secret comes from ``$RUSH_SECRET``
(never from the command line); a worker with a missing or different secret
refuses the configuration and exits with a clear error.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import pickle
import random
import signal
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from types import FrameType
from typing import Any, NoReturn, TypeVar, cast

import redis

from . import constants as C
from . import sweeps, taskwarnings
from .cache import ResultCache
from .connections import URL_ENV, connect, hide_secrets, redact, resolve_url
from .dataplane import DataPlane
from .errors import (
    PayloadSignatureError,
    PayloadTooLargeError,
    RedisUnavailableError,
    TaskTimeoutError,
    WorkerLostError,
)
from .heartbeat import EXIT_LOST, EXIT_REDIS_GONE, Heartbeat, rss_bytes
from .logs import RedisLogHandler
from .network import HOSTNAME, NetworkView
from .scripts import Outcome, PoppedTask, RunningTask, Scripts, SettleReply
from .serialize import content_id, dumps, loads, place, resolve_secret, sign, verify
from .shared import resolve
from .tasks import check_xss, new_keys

logger = logging.getLogger("rush_dask.worker")
T = TypeVar("T")

BATCH_MAX = 32  # tasks per round trip, at most
BATCH_SECONDS = 0.002  # aim for about this much work per round trip
PREFETCH_MIN_QUEUE = 4  # a busy worker prefetches only while the queue is at least this long

_RETRYABLE = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)


@dataclass
class Task:
    """A task handed to a worker: ``key``, inputs ``xs`` and how to run it."""

    key: str
    payload: bytes
    fun_id: str | None = None
    timeout: float | None = None
    seed: int | None = None
    seq: int = 0
    attempts: int = 1
    graph: str | None = None  # set for nodes of a Dask graph
    # Graph inputs: task key -> (value sent inline or None, holder's worker id, host, path)
    inputs: dict[str, tuple[bytes | None, str, str, str]] = field(default_factory=dict)
    # load(payload, key): verifies (for the place of this task's inputs), then unpickles
    load: Callable[[bytes, str], Any] = field(default=lambda payload, key: loads(payload), repr=False)

    @cached_property
    def xs(self) -> Any:
        """The inputs (a dict; for a graph node, the node and its input keys)."""
        return self.load(self.payload, self.key)

    @classmethod
    def from_reply(cls, reply: PoppedTask, load: Callable[[bytes, str], Any] | None = None) -> Task:
        key, xs, fun, timeout, seed, seq, attempts, graph, inputs = reply
        return cls(
            key=key.decode(),
            payload=xs,
            fun_id=fun.decode() if fun else None,
            timeout=float(timeout) if timeout else None,
            seed=int(seed) if seed else None,
            seq=int(seq) if seq else 0,
            attempts=int(attempts) if attempts else 1,
            graph=graph.decode() if graph else None,
            inputs={
                inputs[i].decode(): (
                    inputs[i + 1] or None,
                    inputs[i + 2].decode(),
                    inputs[i + 3].decode(),
                    inputs[i + 4].decode(),
                )
                for i in range(0, len(inputs), 5)
            },
            **({"load": load} if load is not None else {}),
        )


def seed_task(seed: int, seq: int) -> None:
    """Seed ``random`` and ``numpy.random`` for the task with submission number ``seq``.

    The stream depends only on the network seed and the task's position, not
    on which worker runs it or how often it was retried.
    """
    import numpy as np

    sequence = np.random.SeedSequence(entropy=seed, spawn_key=(seq,))
    state = sequence.generate_state(4)
    random.seed(int.from_bytes(state.tobytes(), "little"))
    np.random.seed(state)


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`TaskTimeoutError` in the main thread after ``seconds``."""
    if not seconds:
        yield
        return

    def alarm(signum: int, frame: FrameType | None) -> NoReturn:
        raise TaskTimeoutError(f"task exceeded its timeout of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def describe_error(exc: BaseException, secret: bytes | None = None, where: bytes = b"") -> tuple[str, str, bytes]:
    """(``"Type: message"``, traceback text, pickled exception (signed with ``secret`` for ``where``) or b"").

    >>> describe_error(ValueError("bad"))[0]
    'ValueError: bad'
    """
    text = f"{type(exc).__name__}: {exc}"
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        blob = pickle.dumps(exc)
        pickle.loads(blob)
    except Exception:
        blob = b""
    return text, tb, sign(blob, secret, where) if blob else blob


def load_function(blob: bytes, fun_id: str, secret: bytes | None, where: bytes = b"") -> Callable[..., Any]:
    """The stored function ``fun:<fun_id>``: its signature checked, and its content against its id.

    A function id is the content id of its payload, so a signed function
    copied over another id of the same network is refused too.

    >>> from rush_dask.core.serialize import dumps_function
    >>> blob = dumps_function(len, b"k", b"fun")
    >>> load_function(blob, content_id(blob), b"k", b"fun") is len
    True
    """
    fun: Callable[..., Any]
    if secret is None:
        fun = loads(blob)
        return fun
    body = verify(blob, secret, where)
    if content_id(blob) != fun_id:
        raise PayloadSignatureError(
            f"payload signature invalid for function {fun_id}: it is the signed payload of another "
            "function of this network, moved here; refused, not unpickled"
        )
    fun = pickle.loads(body)
    return fun


class RushWorker(NetworkView):
    """One worker of a network; what a custom worker loop receives.

    >>> def loop(worker, **loop_args):
    ...     while not worker.terminated:
    ...         task = worker.pop_task(timeout=1)
    ...         if task is not None:
    ...             worker.finish_tasks([task.key], [{"y": task.xs["x"] ** 2}])

    Create one directly to take part in a network from any process::

        worker = RushWorker("test", url="redis://host:6379/0")
    """

    def __init__(
        self,
        network_id: str,
        url: str | None = None,
        worker_id: str | None = None,
        *,
        heartbeat_period: float = C.DEFAULT_HEARTBEAT_PERIOD,
        heartbeat_expire: float | None = None,
        resources: dict[str, float] | None = None,
        redis_retry_timeout: float = C.DEFAULT_REDIS_RETRY_TIMEOUT,
        fun: Callable[..., Any] | None = None,
        constants: dict[str, Any] | None = None,
        log_level: int = logging.INFO,
        start_id: str | None = None,
        secret: str | bytes | None = None,
        max_payload_bytes: int = C.MAX_PAYLOAD_BYTES,
    ):
        self.keys = C.Keys(network_id)
        self.secret = resolve_secret(secret)  # default: $RUSH_SECRET
        self.max_payload_bytes = max_payload_bytes
        self.worker_id = worker_id or uuid.uuid4().hex[:12]
        self.heartbeat_period, self.heartbeat_expire = check_heartbeat(heartbeat_period, heartbeat_expire)
        self.resources = dict(resources or {})
        self._resource_spec = ",".join(f"{k}={v}" for k, v in sorted(self.resources.items()))
        self.cache = ResultCache()  # results of graph nodes made or read here
        self.redis_retry_timeout = redis_retry_timeout
        self.fun = fun
        self.constants = dict(constants or {})
        self.url = resolve_url(url)
        self.client = connect(self.url)
        self.scripts = Scripts(self.client, self.keys)
        # Large graph results stay on this host; other hosts fetch them from this server.
        self.plane = DataPlane(
            self.client, self.keys, secret=self.secret, url=self.url, transfer_timeout=max(5.0, self.heartbeat_expire)
        )
        data_server = self.plane.serve()
        self._init_view()
        self._functions: dict[str, Callable[..., Any]] = {}
        self._terminate_requested = False
        self._requests = 0  # request ids make a repeated settle_and_pop idempotent
        self._n_done = 0  # tasks settled (finished or failed) here, reported with the heartbeat
        self._task_seconds: float | None = None  # moving average of task run time
        self._last_sweep = time.monotonic()
        self._next_sweep_turn = sweeps.next_attempt(self.heartbeat_period, self._last_sweep)
        self._reported: dict[str, int] = {}

        self.log_handler = RedisLogHandler(self.keys.log(self.worker_id), level=log_level)
        root = logging.getLogger()
        root.addHandler(self.log_handler)
        if root.level > log_level or root.level == logging.NOTSET:
            root.setLevel(log_level)

        fields = {
            "pid": os.getpid(),
            "hostname": HOSTNAME,
            "heartbeat_period": self.heartbeat_period,
            "heartbeat_expire": self.heartbeat_expire,
            "resources": json.dumps(self.resources),
            "start_id": start_id or "",
            "python": sys.version.split()[0],
            "host": self.plane.host,
            **data_server,
            "rss": rss_bytes(),
            "n_done": 0,
        }
        registered = self.scripts.register(
            self.worker_id, heartbeat_expire_ms=int(self.heartbeat_expire * 1000), fields=fields
        )
        if not registered:
            raise ValueError(f"worker id {self.worker_id!r} is already taken in network {network_id!r}")
        self._heartbeat = Heartbeat(
            beat=self._beat,
            period=self.heartbeat_period,
            redis_retry_timeout=redis_retry_timeout,
            on_terminate=self._request_terminate,
            after_beat=self._after_beat,
        )
        # A timeout, so that a silent partition (a stalled TCP connection raises
        # nothing) counts against redis_retry_timeout; redis-py < 8 sets none.
        self._heartbeat_client = connect(
            self.url, check=False, socket_timeout=self.heartbeat_expire, socket_connect_timeout=self.heartbeat_expire
        )
        self._heartbeat_scripts = Scripts(self._heartbeat_client, self.keys)
        self._heartbeat.start()
        logger.info("worker %s started (pid %s on %s)", self.worker_id, os.getpid(), HOSTNAME)

    def __repr__(self) -> str:
        return f"<RushWorker {self.worker_id} network={self.network_id!r} url={redact(self.url)}>"

    # ------------------------------------------------------------ Redis access
    def _retry(self, call: Callable[[], T]) -> T:
        """Run ``call``, retrying with backoff while Redis is unreachable.

        Every script that a retry may repeat is idempotent, so a call whose
        reply was lost can be sent again safely.
        """
        deadline = time.monotonic() + self.redis_retry_timeout
        delay = 0.05
        while True:
            try:
                return call()
            except _RETRYABLE as exc:
                if time.monotonic() > deadline:
                    raise RedisUnavailableError(
                        f"Redis at {redact(self.url)} unreachable for {self.redis_retry_timeout:g} s: "
                        f"{hide_secrets(str(exc), self.url)}"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _beat(self) -> tuple[str, bool]:
        beat = self._heartbeat_scripts.heartbeat(
            self.worker_id,
            heartbeat_expire_ms=int(self.heartbeat_expire * 1000),
            reap_batch=C.REAP_BATCH,
            host=self.plane.host,
        )
        self.plane.collect(beat.garbage)
        counters = self.plane.counters()
        if counters != self._reported:  # for benchmarks and the dashboard: bytes moved so far
            # redis-py types the mapping's keys as a union, invariantly: a dict[str, int] is refused
            self._heartbeat_client.hset(self.keys.worker(self.worker_id), mapping=counters)  # type: ignore[arg-type]
            self._reported = counters
        return beat.state, beat.terminate

    def _after_beat(self) -> None:
        """Ship the log records; report memory and tasks done (for the dashboard and worker_info)."""
        self.log_handler.ship(self._heartbeat_client)
        worker_key = self.keys.worker(self.worker_id)
        with self._heartbeat_client.pipeline(transaction=True) as pipe:
            try:  # only while registered: a reset() that deleted the network must not bring keys back
                pipe.watch(self.keys.worker_states)
                if pipe.hget(self.keys.worker_states, self.worker_id) != C.WorkerState.RUNNING.encode():
                    return
                pipe.multi()
                pipe.hset(worker_key, mapping={"rss": rss_bytes(), "n_done": self._n_done})
                pipe.execute()
            except redis.WatchError:
                pass

    def _request_terminate(self) -> None:
        self._terminate_requested = True

    @property
    def terminated(self) -> bool:
        """True once a graceful stop was asked (``stop_workers`` or SIGTERM): finish and return."""
        return self._terminate_requested

    @property
    def state(self) -> str:
        """This worker's state in Redis."""
        value = self.client.hget(self.keys.worker_states, self.worker_id)
        return value.decode() if value else "unknown"

    # ------------------------------------------------------------------- tasks
    def _settle_and_pop(self, outcomes: Sequence[Outcome] = (), want: int = 1, min_queue: int = 0) -> SettleReply:
        """One round trip: report what became of tasks that ran here, pop ``want`` tasks."""
        self._requests += 1
        request = self._requests
        reply = self._retry(
            lambda: self.scripts.settle_and_pop(
                self.worker_id,
                request=request,
                outcomes=outcomes,
                want=want,
                min_queue=min_queue,
                resources=self._resource_spec,
                host=self.plane.host,
            )
        )
        if reply.garbage:
            self.plane.collect(reply.garbage)
            for path in reply.garbage:
                self.cache.discard(os.path.basename(os.fsdecode(path)))
        why = (
            f"{self.worker_id} is {reply.reason} in Redis"
            if reply.kind == "stop"
            else f"the task is no longer held by {self.worker_id} (first writer wins)"
        )
        for outcome, note in zip(outcomes, reply.notes):
            if note in (C.TaskState.FINISHED, C.TaskState.FAILED):
                self._n_done += 1
            elif note == "dropped":
                logger.warning("result of task %s dropped: %s", outcome[0], why)
        return reply

    def pop_task(self, timeout: float | None = 0) -> Task | None:
        """Pop the next task (own queue first, then the shared queue) and mark it running.

        Waits up to ``timeout`` seconds (``None``: until a task comes or a
        stop is asked). Returns ``None`` if nothing came, or if this worker
        was asked to stop.

        >>> task = worker.pop_task(timeout=1)     # doctest: +SKIP
        >>> task.key, task.xs                     # doctest: +SKIP
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            reply = self._settle_and_pop()
            if reply.kind == "tasks":
                return Task.from_reply(reply.tasks[0], self._load_task)
            if reply.kind == "stop":
                self._on_stop_reply(reply)
                return None
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0 or self.terminated:
                return None
            self._wait_for_work(remaining)

    def _wait_for_work(self, limit: float | None) -> None:
        """Block until a wake token arrives (or about a second passes), sweeping now and then."""
        now = time.monotonic()
        if now >= self._next_sweep_turn:  # lost workers: one sweep per network per turn
            self._next_sweep_turn = sweeps.next_attempt(self.heartbeat_period, now)
            if self._retry(lambda: sweeps.take_turn(self.client, self.keys, self.worker_id)):
                self._retry(lambda: self._sweep_lost_workers(self._dead_local_workers()))
        if now - self._last_sweep > self.heartbeat_expire:  # this host's result files
            self._last_sweep = now
            self._retry(self.plane.sweep)
        wait = 1.0 if limit is None else max(min(limit, 1.0), 0.001)
        self._retry(lambda: self.client.blpop([self.keys.wake_worker(self.worker_id), self.keys.wake], timeout=wait))

    def _on_stop_reply(self, reply: SettleReply) -> None:
        reason = reply.reason
        if reason == "terminate":
            self._terminate_requested = True
        else:
            raise WorkerLostError(f"worker {self.worker_id} is {reason!r} in Redis; its results are no longer accepted")

    def push_running_tasks(
        self, xss: Sequence[dict[str, Any]], extra: Sequence[dict[str, Any]] | None = None
    ) -> list[str]:
        """Create tasks that this worker runs itself (the decentralized mode); returns their keys.

        >>> keys = worker.push_running_tasks([{"x": 0.3}])   # doctest: +SKIP
        >>> worker.finish_tasks(keys, [{"y": 0.09}])         # doctest: +SKIP
        """
        check_xss(xss, extra)
        keys = new_keys(len(xss))
        tasks = [
            RunningTask(
                key,
                dumps(dict(xss[i]), self.secret, self._where(key, "xs")),
                dumps(dict(extra[i]), self.secret, self._where(key, "extra")) if extra else b"",
            )
            for i, key in enumerate(keys)
        ]
        self._retry(lambda: self.scripts.push_running(self.worker_id, tasks))
        return keys

    def finish_tasks(self, keys: Sequence[str], yss: Sequence[dict[str, Any]]) -> list[str]:
        """Store outputs of running tasks held by this worker and mark them finished.

        Returns one note per key: ``finished``, or ``dropped`` if the task
        was no longer this worker's (it was declared lost meanwhile). A
        result over ``max_payload_bytes`` raises PayloadTooLargeError and
        none of the results is stored.

        >>> keys = worker.push_running_tasks([{"x": 1}])   # doctest: +SKIP
        >>> worker.finish_tasks(keys, [{"y": 2}])          # doctest: +SKIP
        ['finished']
        """
        keys = [keys] if isinstance(keys, str) else list(keys)
        if len(keys) != len(yss):
            raise ValueError(f"got {len(keys)} keys but {len(yss)} results")
        # Every result is checked before any is stored: a refused call writes nothing.
        outcomes = [
            Outcome(
                key,
                "finished",
                self._check_result(
                    dumps(ys if isinstance(ys, dict) else {"y": ys}, self.secret, self._where(key, "ys")), key
                ),
            )
            for key, ys in zip(keys, yss)
        ]
        return self._settle(outcomes)

    def fail_tasks(self, keys: Sequence[str], errors: Sequence[BaseException | str]) -> list[str]:
        """Mark running tasks held by this worker as failed (or retried, within ``max_retries``)."""
        keys = [keys] if isinstance(keys, str) else list(keys)
        if len(keys) != len(errors):
            raise ValueError(f"got {len(keys)} keys but {len(errors)} errors")
        outcomes = [
            Outcome(key, "error", *describe_error(e, self.secret, self._where(key, "exception")))
            if isinstance(e, BaseException)
            else Outcome(key, "error", str(e))
            for key, e in zip(keys, errors)
        ]
        return self._settle(outcomes)

    def _settle(self, outcomes: list[Outcome]) -> list[str]:
        return self._settle_and_pop(outcomes, want=0).notes

    # --------------------------------------------------------------- execution
    def _function(self, fun_id: str | None) -> Callable[..., Any]:
        if fun_id is None:
            if self.fun is None:
                raise RuntimeError(
                    "this worker has no function: pass fun= to start_workers, or push the task with fun="
                )
            return self.fun
        fun = self._functions.get(fun_id)
        if fun is None:
            blob = self._retry(lambda: self.client.get(self.keys.function(fun_id)))
            if blob is None:
                raise RuntimeError(f"function {fun_id} is missing from Redis (network was reset?)")
            fun = self._functions[fun_id] = load_function(blob, fun_id, self.secret, self._where("", "fun"))
        return fun

    def _graph_inputs(self, task: Task, deps: dict[Any, str]) -> dict[Any, Any]:
        """Values of a graph node's inputs: cached here, sent inline, held on a host, or in Redis."""
        values, missing = {}, []
        for dask_key, task_key in deps.items():
            if task_key in self.cache:
                values[dask_key] = self.cache[task_key]
                continue
            inline, holder, host, path = task.inputs.get(task_key) or (None, "", "", "")
            if inline is not None:
                values[dask_key] = loads(inline, self.secret, self._where(task_key, "ys"))
                self.cache.put(task_key, values[dask_key], len(inline))
            elif path:
                values[dask_key] = self.plane.read_held(task_key, holder, host, path)
            else:
                missing.append((dask_key, task_key))
        if missing:
            pipe = self.client.pipeline(transaction=False)
            for _, task_key in missing:
                pipe.hget(self.keys.task(task_key), "ys")
            blobs = self._retry(pipe.execute)
            for (dask_key, task_key), blob in zip(missing, blobs):
                if blob is None:
                    raise RuntimeError(f"the result of input {dask_key!r} is no longer in Redis")
                values[dask_key] = loads(blob, self.secret, self._where(task_key, "ys"))
                self.cache.put(task_key, values[dask_key], len(blob))
        return values

    def _run_graph_node(self, task: Task) -> tuple[str, bytes | str, str, bytes]:
        """Run a graph node; its result goes to Redis when small, else stays on this host."""
        node, deps = task.xs
        result = node(self._graph_inputs(task, deps))
        outcome, payload, size = self.plane.encode(task.key, result)
        if outcome == "finished":
            self._check_result(payload)  # type: ignore[arg-type]
        self.cache.put(task.key, result, size)
        return outcome, payload, str(size) if outcome == "held" else "", b""

    def _run_graph_node_shipping_warnings(self, task: Task, graph_id: str) -> tuple[str, bytes | str, str, bytes]:
        """``_run_graph_node``, the warnings it raises pushed for the client (see taskwarnings)."""
        with taskwarnings.recorded() as caught:
            try:
                return self._run_graph_node(task)
            finally:
                if caught:
                    self._retry(
                        lambda: taskwarnings.ship(
                            self.client, self.keys.prefix, graph_id, task.key, caught, self.secret
                        )
                    )

    def _load_task(self, payload: bytes, key: str) -> Any:
        """Task ``key``'s inputs: signature checked, shared large values put back in."""
        xs = loads(payload, self.secret, self._where(key, "xs"))
        if isinstance(xs, dict):
            resolve([xs], self._shared_inputs)
        return xs

    def _shared_inputs(self, ids: list[str]) -> dict[str, bytes]:
        """Verified pickles of shared inputs, read from Redis once per worker (then cached)."""
        key = "shared:{}".format
        missing = [i for i in ids if key(i) not in self.cache]
        bodies = self._retry(lambda: super(RushWorker, self)._shared_inputs(missing)) if missing else {}
        for cid, body in bodies.items():
            self.cache.put(key(cid), body, len(body))
        return {i: bodies[i] if i in bodies else self.cache[key(i)] for i in ids}

    def _check_result(self, payload: bytes, key: str | None = None) -> bytes:
        if len(payload) > self.max_payload_bytes:
            of_task = f" of task {key}" if key else ""
            raise PayloadTooLargeError(
                f"the result{of_task} is {len(payload):,} bytes serialized, over max_payload_bytes="
                f"{self.max_payload_bytes:,}: return a path to the data instead, or raise "
                "Rush(max_payload_bytes=...)"
            )
        return payload

    def execute(self, task: Task) -> tuple[str, Any, str, bytes]:
        """Run one task here; returns (outcome, payload, traceback, pickled exception)."""
        try:
            if task.graph is not None:
                return self._run_graph_node_shipping_warnings(task, task.graph)
            fun = self._function(task.fun_id)
            if task.seed is not None:
                seed_task(task.seed, task.seq)
            with time_limit(task.timeout):
                result = fun(**task.xs, **self.constants)
            ys = result if isinstance(result, dict) else {"y": result}
            bad = [name for name in ys if not isinstance(name, str)]
            if bad:
                raise TypeError(f"output names must be strings, got {bad!r}")
            return "finished", self._check_result(dumps(ys, self.secret, self._where(task.key, "ys"))), "", b""
        except Exception as exc:
            text, tb, blob = describe_error(exc, self.secret, self._where(task.key, "exception"))
            if isinstance(exc, PayloadSignatureError):
                logger.error("task %s refused, its payload was not unpickled: %s", task.key, exc)
            else:
                logger.info("task %s failed: %s", task.key, text)
            return "error", text, tb, blob

    def _batch_size(self) -> int:
        """How many tasks to pop at once: 1, unless tasks take well under a millisecond."""
        if self._task_seconds is None:
            return 1
        return max(1, min(BATCH_MAX, int(BATCH_SECONDS / max(self._task_seconds, 1e-6))))

    def run(self) -> None:
        """The default loop: pop, run, store, repeat, until asked to stop.

        One round trip per task in steady state: the outcomes of the tasks
        just run and the next pop travel in the same script call. That call
        is sent from a background thread while the next task runs (when the
        queue is long enough to prefetch), so the worker does not wait for
        Redis between tasks. When tasks are very short, one call carries
        several of them (at most ``BATCH_MAX``, about ``BATCH_SECONDS`` of work).
        """
        local: collections.deque[Task] = collections.deque()
        outcomes: list[Outcome] = []
        courier = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rush-courier")
        in_flight: Future[SettleReply] | None = None
        try:
            while True:
                if in_flight is not None and (not local or in_flight.done()):
                    reply, in_flight = in_flight.result(), None
                    self._accept(reply, local)
                if not local and self.terminated:
                    # Asked to stop (SIGTERM or stop_workers): report what ran, take nothing new.
                    self._accept(self._settle_and_pop(outcomes, want=0), local)
                    return
                if not local:
                    reply = self._settle_and_pop(outcomes, want=self._batch_size())
                    outcomes = []
                    if not self._accept(reply, local):
                        if self.terminated:
                            return
                        self._wait_for_work(None)
                    continue
                task = local.popleft()
                if in_flight is None and not local and not self.terminated:
                    # Report what ran so far and prefetch, while this task runs.
                    in_flight = courier.submit(self._settle_and_pop, outcomes, self._batch_size(), PREFETCH_MIN_QUEUE)
                    outcomes = []
                started = time.perf_counter()
                outcomes.append(Outcome(task.key, *self.execute(task)))
                elapsed = time.perf_counter() - started
                self._task_seconds = elapsed if self._task_seconds is None else 0.8 * self._task_seconds + 0.2 * elapsed
                if self.log_handler.pending:
                    self._retry(lambda: self.log_handler.ship(self.client))
        finally:
            courier.shutdown(wait=True)

    def _accept(self, reply: SettleReply, local: collections.deque[Task]) -> bool:
        """Queue the tasks of a reply locally; handle stop orders. True if tasks came."""
        if reply.kind == "tasks":
            local.extend(Task.from_reply(raw, self._load_task) for raw in reply.tasks)
            return True
        if reply.kind == "stop":
            self._on_stop_reply(reply)
        return False

    def close(self) -> None:
        """Deregister (state ``terminated`` unless already lost or killed) and stop the heartbeat."""
        self._heartbeat.stop()
        self.plane.close()
        try:
            # Ship what was logged first: whoever sees the final state must also see the logs.
            self._retry(lambda: self.log_handler.ship(self.client))
            self._retry(lambda: self.scripts.deregister(self.worker_id))
            logger.info("worker %s stopped", self.worker_id)
            self.log_handler.ship(self.client)
        finally:
            logging.getLogger().removeHandler(self.log_handler)


def check_heartbeat(period: float, expire: float | None) -> tuple[float, float]:
    """Validate heartbeat settings; ``expire`` defaults to 6 periods."""
    if not isinstance(period, (int, float)) or period <= 0:
        raise ValueError(f"heartbeat_period must be a positive number of seconds, got {period!r}")
    expire = period * 6 if expire is None else expire
    if not isinstance(expire, (int, float)) or expire <= period:
        raise ValueError(
            f"heartbeat_expire ({expire!r} s) must be longer than heartbeat_period ({period!r} s), "
            "or a live worker would be declared lost between two beats"
        )
    return float(period), float(expire)


def run_worker(network_id: str, start_id: str, worker_id: str | None = None, url: str | None = None) -> int:
    """Start a worker from the configuration ``start_id`` stored in Redis and run it to the end."""
    client = connect(resolve_url(url))
    keys = C.Keys(network_id)
    # connect() makes clients with bytes replies (no decode_responses)
    raw = cast("dict[bytes, bytes]", client.hgetall(keys.start_config(start_id)))
    if not raw:
        raise SystemExit(f"no worker configuration {start_id!r} in network {network_id!r}")
    config: dict[str, bytes] = {k.decode(): v for k, v in raw.items()}
    fun_id = config.get("fun", b"").decode()
    secret = resolve_secret(None)
    fun_blob = cast("bytes | None", client.get(keys.function(fun_id))) if fun_id else None
    if fun_id and fun_blob is None:
        raise SystemExit(
            f"rush worker: function {fun_id} of configuration {start_id!r} is missing "
            f"from network {network_id!r} (was it reset?)"
        )
    try:

        def where(key: str, field: str) -> bytes:
            return place(keys.prefix, key, field) if secret is not None else b""

        fun = load_function(fun_blob, fun_id, secret, where("", "fun")) if fun_blob is not None else None
        loop = loads(config["loop"], secret, where(start_id, "loop")) if config.get("loop") else None
        constants = loads(config["constants"], secret, where(start_id, "constants")) if config.get("constants") else {}
    except PayloadSignatureError as exc:
        raise SystemExit(
            f"rush worker: refusing worker configuration {start_id!r} of network {network_id!r}: {exc}"
        ) from None
    client.close()

    # A controller may send SIGTERM as soon as it sees the worker registered,
    # before the handler below is set: remember such a stop instead of dying.
    early_stop: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: early_stop.append(signum))
    worker = RushWorker(
        network_id,
        url=url,
        worker_id=worker_id,
        heartbeat_period=float(config["heartbeat_period"]),
        heartbeat_expire=float(config["heartbeat_expire"]),
        resources=json.loads(config.get("resources", b"{}")),
        redis_retry_timeout=float(config["redis_retry_timeout"]),
        fun=fun,
        constants={} if loop else constants,
        log_level=int(config.get("log_level", logging.INFO)),
        start_id=start_id,
        secret=secret,
        max_payload_bytes=int(config.get("max_payload_bytes", C.MAX_PAYLOAD_BYTES)),
    )
    signal.signal(signal.SIGTERM, lambda signum, frame: worker._request_terminate())
    if early_stop:
        worker._request_terminate()
    try:
        if loop is not None:
            loop(worker, **constants)
        else:
            worker.run()
    except WorkerLostError as exc:
        logger.warning("%s", exc)
        print(f"rush worker: {exc}", file=sys.stderr, flush=True)
        return EXIT_LOST
    except RedisUnavailableError as exc:
        print(f"rush worker: {exc}; exiting", file=sys.stderr, flush=True)
        return EXIT_REDIS_GONE
    except BaseException:
        logger.exception("worker %s crashed", worker.worker_id)
        worker.close()
        raise
    worker.close()
    return 0


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rush_dask.core.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--network", required=True, help="network id")
    parser.add_argument("--start-id", required=True, help="worker configuration stored by the controller")
    parser.add_argument("--worker-id", default=None, help="id of this worker (default: random)")
    parser.add_argument(
        "--url", default=None, help=f"Redis URL without a password (default: ${URL_ENV}, the place for one)"
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.url and hide_secrets(args.url, args.url) != args.url:
        parser.error(
            f"--url {redact(args.url)} holds a password, which ps would show to every user "
            f"of this machine: put the URL in ${URL_ENV} instead"
        )
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    return run_worker(args.network, args.start_id, worker_id=args.worker_id, url=args.url)


if __name__ == "__main__":
    sys.exit(main())
