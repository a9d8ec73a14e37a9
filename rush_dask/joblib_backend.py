"""The joblib backend ``"rush"``: joblib (and scikit-learn's ``n_jobs``) on rush workers.

>>> import joblib
>>> import rush_dask                                   # registers "rush" with joblib
>>> from sklearn.model_selection import GridSearchCV  # doctest: +SKIP
>>> with joblib.parallel_backend("rush", rush=rush):  # doctest: +SKIP
...     GridSearchCV(SVC(), grid, n_jobs=-1).fit(X, y)

Without ``rush=``, the process-wide default network (:func:`rush_dask.default_rush`).
Each batch of calls that joblib dispatches becomes one rush task (pushed
with ``push_tasks(..., fun=run_batch)``), so the calls appear in
``rush.data`` and the workers' logs like any task.

Large arguments travel once per network: every top-level argument of a
call that pickles to more than 64 KB (the training data of a
``GridSearchCV``) is stored once under its content-addressed
``shared:<id>`` key, as ``push_tasks`` does for large inputs, and the task
only names it. A worker reads each shared value once and keeps it in its
cache; the same array passed to 200 fits is pickled once per backend and
sent to Redis once per network.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase

from .core.constants import INLINE_LIMIT, TaskState
from .core.serialize import content_id, dumps, loads, sign
from .core.shared import SharedInput

_POLL = 0.002  # seconds between two looks at the finished and failed lists, at first
_MAX_POLL = 0.05


class _Placeholder:
    """Stands, in a call's arguments, for the shared value passed as keyword ``name``."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __reduce__(self) -> tuple[Any, ...]:
        return _Placeholder, (self.name,)


def run_batch(calls: list[tuple[Callable[..., Any], Any, Any]], **shared: Any) -> list[Any]:
    """Run a batch of joblib calls on a worker; ``shared`` holds the large arguments by name.

    >>> run_batch([(max, (1, _Placeholder("s_a")), {})], s_a=5)
    [5]
    """

    def put_back(value: Any) -> Any:
        return shared[value.name] if isinstance(value, _Placeholder) else value

    return [
        func(*[put_back(a) for a in args], **{k: put_back(v) for k, v in kwargs.items()})
        for func, args, kwargs in calls
    ]


class RushFuture:
    """A joblib batch running as one rush task (what :meth:`RushBackend.submit` returns)."""

    def __init__(self, key: str, callback: Callable[[Any], Any] | None):
        self.key = key
        self.callback = callback
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def get(self, timeout: float | None = None) -> Any:
        if not self.done.wait(timeout):
            raise TimeoutError(f"joblib batch {self.key} not done after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result


class RushBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib backend running each batch of calls as a rush task on the network's workers.

    ``rush``: the network (default: the process-wide default one). If no
    worker is running when a ``Parallel`` call starts, local workers are
    started as ``rush.start_workers()`` would (see :func:`rush_dask.plan`).

    >>> with joblib.parallel_backend("rush", rush=rush):                   # doctest: +SKIP
    ...     joblib.Parallel(n_jobs=-1)(joblib.delayed(pow)(i, 2) for i in range(10))
    [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]
    """

    supports_retrieve_callback = True
    supports_timeout = True
    default_n_jobs = -1

    def __init__(
        self,
        rush: Any = None,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        **backend_kwargs: Any,
    ):
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads, **backend_kwargs)
        if rush is None:
            from .default import default_rush

            rush = default_rush()
        self.rush = rush
        self._shared_ids: dict[int, tuple[Any, str | None]] = {}  # id(value) -> (value, content id)
        self._stored: set[str] = set()
        self._pending: dict[str, RushFuture] = {}
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._closed = False
        self._offsets: list[int] | None = None  # read positions in the finished and failed lists

    def __reduce__(self) -> tuple[Any, ...]:
        # joblib may pickle the backend for nested calls: keep the network only
        return RushBackend, (self.rush,)

    # ------------------------------------------------------------- joblib API
    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """How many batches may run at once: the running workers for ``n_jobs=-1``."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None or n_jobs < 0:
            running = self.rush.n_running_workers
            return max(1, int(running or self.rush._check_n_workers(None)))
        return n_jobs

    def configure(self, n_jobs: int = 1, parallel: Any = None, **backend_kwargs: Any) -> int:
        self.parallel = parallel
        self._closed = False
        if self._offsets is None:  # before the first push: no result can be missed
            self._offsets = [self.rush.n_finished_tasks, self.rush.n_failed_tasks]
        if self.rush.n_running_workers == 0:
            self.rush._ensure_workers()
        return self.effective_n_jobs(n_jobs)

    def submit(self, func: Callable[..., Any], callback: Callable[[Any], Any] | None = None) -> RushFuture:
        """Push one batch of calls as a rush task; ``callback`` runs when it is done."""
        calls, shared = self._split(func)
        (key,) = self.rush.push_tasks([{"calls": calls, **shared}], fun=run_batch)
        future = RushFuture(key, callback)
        with self._lock:
            self._pending[key] = future
            if self._watcher is None or not self._watcher.is_alive():
                self._watcher = threading.Thread(target=self._watch, name="rush-joblib", daemon=True)
                self._watcher.start()
        return future

    def retrieve_result_callback(self, future: RushFuture) -> Any:
        return future.get()

    def terminate(self) -> None:
        """Stop watching; the workers and the archive stay."""
        self._closed = True
        self._shared_ids.clear()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Forget the batches still out (they run to their end; their results are dropped)."""
        with self._lock:
            self._pending.clear()
        if not ensure_ready:
            self.terminate()

    # ---------------------------------------------------------------- helpers
    def _split(self, batch: Any) -> tuple[list[Any], dict[str, SharedInput]]:
        """(calls with large arguments replaced by placeholders, shared references by name)."""
        items = getattr(batch, "items", None)
        if items is None:  # not a joblib BatchedCalls: one call without arguments
            return [(batch, (), {})], {}
        shared: dict[str, SharedInput] = {}

        def swap(value: Any) -> Any:
            cid = self._shared_id(value)
            if cid is None:
                return value
            name = f"s_{cid}"
            shared[name] = SharedInput(cid)
            return _Placeholder(name)

        calls = [
            (func, tuple(swap(a) for a in args), {k: swap(v) for k, v in kwargs.items()})
            for func, args, kwargs in items
        ]
        return calls, shared

    def _shared_id(self, value: Any) -> str | None:
        """The content id of a large value (stored in Redis once), or None for a small one."""
        if (
            value is None
            or isinstance(value, (bool, int, float, complex))
            or (isinstance(value, (str, bytes)) and len(value) <= INLINE_LIMIT)
        ):
            return None
        known = self._shared_ids.get(id(value))
        if known is not None and known[0] is value:
            return known[1]
        if getattr(value, "nbytes", INLINE_LIMIT + 1) <= INLINE_LIMIT // 2:
            cid = None  # an array known to be small: no need to pickle it to find out
        else:
            blob = dumps(value)
            cid = content_id(blob) if len(blob) > INLINE_LIMIT else None
            if cid is not None and cid not in self._stored:
                self._check_size(blob)
                signed = sign(blob, self.rush.secret, self.rush._where(cid, "shared"))
                self.rush.client.set(self.rush.keys.shared(cid), signed, nx=True)
                self._stored.add(cid)
        self._shared_ids[id(value)] = (value, cid)  # holding the value keeps its id unique
        return cid

    def _check_size(self, blob: bytes) -> None:
        if len(blob) > self.rush.max_payload_bytes:
            from .core.errors import PayloadTooLargeError

            raise PayloadTooLargeError(
                f"an argument is {len(blob):,} bytes serialized, over max_payload_bytes="
                f"{self.rush.max_payload_bytes:,}: raise Rush(max_payload_bytes=...)"
            )

    def _watch(self) -> None:
        """Background thread: settle futures as their tasks finish or fail."""
        rush = self.rush
        if self._offsets is None:
            self._offsets = [0, 0]
        delay = _POLL
        next_check = time.monotonic() + 0.5
        while not self._closed:
            with self._lock:
                if not self._pending:
                    self._watcher = None
                    return
            pipe = rush.client.pipeline(transaction=False)
            pipe.lrange(rush.keys.finished, self._offsets[0], -1)
            pipe.lrange(rush.keys.failed, self._offsets[1], -1)
            finished, failed = pipe.execute()
            self._offsets[0] += len(finished)
            self._offsets[1] += len(failed)
            with self._lock:
                mine_ok = [k.decode() for k in finished if k.decode() in self._pending]
                mine_bad = [k.decode() for k in failed if k.decode() in self._pending]
            if mine_ok or mine_bad:
                self._settle(mine_ok, mine_bad)
                delay = _POLL
            else:
                time.sleep(delay)
                delay = min(delay * 1.5, _MAX_POLL)
            if time.monotonic() > next_check:
                next_check = time.monotonic() + 0.5
                rush.detect_lost_workers()  # requeue the tasks of workers that died
                self._settle_by_state()

    def _settle_by_state(self) -> None:
        """Settle pending batches by their task state (a safety net behind the list offsets)."""
        with self._lock:
            keys = list(self._pending)
        if not keys:
            return
        pipe = self.rush.client.pipeline(transaction=False)
        for key in keys:
            pipe.hget(self.rush.keys.task(key), "state")
        states = [s.decode() if s is not None else None for s in pipe.execute()]
        self._settle(
            [k for k, s in zip(keys, states) if s == TaskState.FINISHED],
            [k for k, s in zip(keys, states) if s == TaskState.FAILED],
        )

    def _settle(self, ok: list[str], bad: list[str]) -> None:
        rush = self.rush
        pipe = rush.client.pipeline(transaction=False)
        for key in ok:
            pipe.hget(rush.keys.task(key), "archive_index")
        for key in bad:
            pipe.hmget(rush.keys.task(key), "error", "exception")
        replies = pipe.execute()
        indexes = replies[: len(ok)]
        rows = rush._archive_rows_at([int(i) for i in indexes])
        for key, index in zip(ok, indexes):
            future = self._pending.pop(key, None)
            if future is None:
                continue
            row = rows[int(index)]  # key, xs, ys, ...
            future.result = loads(row[2], rush.secret, rush._where(key, "ys"))["y"]
            self._done(future)
        for key, (error, exception) in zip(bad, replies[len(ok) :]):
            future = self._pending.pop(key, None)
            if future is None:
                continue
            future.error = _exception(error, exception, rush.secret, rush._where(key, "exception"))
            self._done(future)

    @staticmethod
    def _done(future: RushFuture) -> None:
        future.done.set()
        if future.callback is not None:
            future.callback(future)


def _exception(error: bytes | None, exception: bytes | None, secret: bytes | None, where: bytes = b"") -> BaseException:
    """The exception a call raised on the worker (or a RuntimeError with its text)."""
    if exception:
        try:
            exc = loads(exception, secret, where)
            if isinstance(exc, BaseException):
                return exc
        except Exception:  # noqa: BLE001 - fall back to the text
            pass
    return RuntimeError(f"joblib call failed on a rush worker: {(error or b'?').decode()}")
