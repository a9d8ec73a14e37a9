"""Futures: results of graph nodes that stay in Redis until needed.

A :class:`RushFuture` is a ``dask._task_spec.TaskRef``, so Dask treats it as
a reference to a computed key: pass it to ``dask.delayed`` calls or to
another ``rush.submit`` and the node that uses it reads the result straight
from Redis. The result is released (deleted from Redis once nothing else
needs it) when the future is garbage collected or ``release()``d; releasing
never stops the node from running.

The calls of ``distributed`` scripts work the same way: ``result(timeout)``,
``exception()``, ``traceback()``, ``cancel()``, ``add_done_callback()``,
:func:`wait`, :func:`as_completed` and :func:`fire_and_forget`. A client learns
that a future finished from a list the finishing worker pushes to (see
:mod:`rush_dask.dask.completions`), not by polling.
"""

from __future__ import annotations

import collections
import concurrent.futures
import queue
import sys
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from dask._task_spec import TaskRef

if TYPE_CHECKING:
    from .protocols import Controller

FIRST_COMPLETED = "FIRST_COMPLETED"
FIRST_EXCEPTION = "FIRST_EXCEPTION"
ALL_COMPLETED = "ALL_COMPLETED"


def _release(completions: Any, task_key: str) -> None:
    try:
        completions.release(task_key)
    except Exception:  # Redis gone at exit: nothing left to release
        pass


def _deadline(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        raise ValueError(f"timeout must be a number of seconds >= 0 or None, got {timeout!r}")
    return time.monotonic() + timeout


class RushFuture(TaskRef):
    """The result of one graph node, computed (or being computed) by the workers.

    >>> future = rush.submit(pow, 2, 10)     # doctest: +SKIP
    >>> future.result()                     # doctest: +SKIP
    1024
    """

    def __init__(self, key: Any, task_key: str, rush: Controller):
        super().__init__(key)
        self.task_key = task_key
        self._rush = rush
        self._cancelled = False
        self._finalizer = weakref.finalize(self, _release, rush._completions, task_key)
        rush._futures_by_key[key] = self

    @property
    def status(self) -> str:
        """``waiting``, ``queued``, ``running``, ``finished``, ``failed``, ``cancelled`` or ``released``."""
        if self._cancelled:
            return "cancelled"
        if not self._finalizer.alive:
            return "released"
        state = self._rush.client.hget(self._rush.keys.task(self.task_key), "state")
        return state.decode() if state else "released"

    def done(self) -> bool:
        """Whether the node finished, failed or was cancelled.

        >>> rush.submit(abs, -1).done()          # doctest: +SKIP
        False
        """
        if self._cancelled or self._rush._completions.is_done(self.task_key):
            return True
        return self.status in ("finished", "failed", "released")

    def _wait(self, timeout: float | None) -> None:
        deadline = _deadline(timeout)
        if self._cancelled:
            raise concurrent.futures.CancelledError(f"future {self.key!r} was cancelled")
        if not self._rush._completions.wait([self.task_key], deadline):
            raise TimeoutError(f"future {self.key!r} not done after {timeout} s")
        if self._cancelled:
            raise concurrent.futures.CancelledError(f"future {self.key!r} was cancelled")

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the result and return it; re-raises the node's exception if it failed.

        Raises ``TimeoutError`` after ``timeout`` seconds (the node keeps running)
        and ``concurrent.futures.CancelledError`` if it was cancelled.

        >>> rush.submit(pow, 2, 10).result(timeout=60)     # doctest: +SKIP
        1024
        """
        self._wait(timeout)
        return self._rush._read_futures([self])[self.task_key]

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """Wait, then return the exception the node failed with (``None`` if it finished).

        >>> rush.submit(int, "x").exception()    # doctest: +SKIP
        ValueError("invalid literal for int() with base 10: 'x'")
        """
        self._wait(timeout)
        try:
            self._rush._read_futures([self])
        except concurrent.futures.CancelledError:
            raise
        except BaseException as exc:  # the node's own exception, re-created here
            return exc
        return None

    def traceback(self, timeout: float | None = None) -> str | None:
        """Wait, then return the remote traceback (text) of a failed node, ``None`` otherwise.

        >>> print(rush.submit(int, "x").traceback())     # doctest: +SKIP
        Traceback (most recent call last): ...
        """
        exc = self.exception(timeout)
        return getattr(exc, "remote_traceback", None) if exc is not None else None

    def cancel(self) -> bool:
        """Stop the node if it is not done (queued, waiting or running) and fail what depends on it.

        Returns whether the future is cancelled now. A running node's worker
        finishes its call, but its result is dropped.

        >>> future = rush.submit(time.sleep, 60)      # doctest: +SKIP
        >>> future.cancel()                           # doctest: +SKIP
        True
        """
        if self._cancelled:
            return True
        rush = self._rush
        if rush.scripts.cancel_futures([self.task_key], reason=f"cancelled by the client ({self.key!r})"):
            self._cancelled = True
            rush._completions._mark([(self.task_key, True)])
        return self._cancelled

    def cancelled(self) -> bool:
        """Whether :meth:`cancel` stopped this future."""
        return self._cancelled

    def add_done_callback(self, fn: Callable[[RushFuture], Any]) -> None:
        """Call ``fn(future)`` once the future is done (at once if it is), in a background thread.

        >>> rush.submit(pow, 2, 10).add_done_callback(lambda f: print(f.result()))   # doctest: +SKIP
        """
        ref = self  # the callback keeps the future (and its result) alive until it ran
        self._rush._completions.on_done(self.task_key, lambda: fn(ref))

    def release(self) -> None:
        """Let Redis delete the result as soon as no other node needs it (at once: the
        release of a garbage-collected future is batched and follows within a moment)."""
        if self._finalizer.detach():
            self._rush._completions.forget(self.task_key)
            self._rush._completions.release_now([self.task_key])

    def __dask_tokenize__(self) -> tuple[str, str, str]:
        # Dask tokenizes the arguments of a pure submit: by the node, not by a pickle round
        # trip, whose unpickling would make a controller of this process hold the node anew.
        return ("RushFuture", self._rush.network_id, self.task_key)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled, a future is its network and keys. Unpickled where a controller of that
        # network is open, that controller holds it anew (see adopt_future); elsewhere (a
        # worker reading a graph node that names it) it is Dask's plain TaskRef, as before.
        return adopt_future, (self._rush.network_id, self.key, self.task_key)

    def __repr__(self) -> str:
        return f"<RushFuture {self.key!r} {self.status}>"


def adopt_future(network_id: str, key: Any, task_key: str) -> RushFuture | TaskRef:
    """A future received from another client (pickled), held by an open controller of its
    network in this process: the result stays in Redis while either client holds it. With
    no such controller here (a worker), Dask's plain reference to the key.

    >>> other = pickle.loads(pickle.dumps(future))   # in another process with a Rush of the network
    ...                                              # doctest: +SKIP
    """
    from ..rush import live_controller

    rush = live_controller(network_id) if "rush_dask.rush" in sys.modules else None
    if rush is None:
        return TaskRef(key)
    existing: RushFuture | None = rush._futures_by_key.get(key)
    if existing is not None and existing.task_key == task_key and existing._finalizer.alive:
        return existing
    lease = rush.client_lease.hold()
    gone = rush.scripts.hold([task_key], client_id=rush._completions.client_id, request=uuid.uuid4().hex, lease=lease)
    if gone:
        raise KeyError(f"the result of {key!r} was released by every client that held it")
    future = RushFuture(key, task_key, rush)
    rush._completions.watch([task_key])
    return future


class DoneAndNotDoneFutures(NamedTuple):
    done: set[RushFuture]
    not_done: set[RushFuture]


def _flat(futures: Any) -> list[RushFuture]:
    if isinstance(futures, RushFuture):
        return [futures]
    if isinstance(futures, dict):
        futures = list(futures.values())
    out: list[RushFuture] = []
    for item in futures:
        if isinstance(item, RushFuture):
            out.append(item)
        elif isinstance(item, (list, tuple, set, dict)):
            out += _flat(item)
        else:
            raise TypeError(f"expected rush futures, got {type(item).__name__}: {item!r:.80}")
    return out


def wait(futures: Any, timeout: float | None = None, return_when: str = ALL_COMPLETED) -> DoneAndNotDoneFutures:
    """Wait until all (or the first, or the first failed) of the futures are done.

    Returns ``(done, not_done)`` sets; raises ``TimeoutError`` after ``timeout``
    seconds, as distributed's ``wait`` does.

    >>> done, not_done = wait(rush.map(inc, range(10)), return_when="FIRST_COMPLETED")   # doctest: +SKIP
    """
    if return_when not in (ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION):
        raise ValueError(
            f"return_when must be {ALL_COMPLETED!r}, {FIRST_COMPLETED!r} or {FIRST_EXCEPTION!r}, got {return_when!r}"
        )
    flat = list(dict.fromkeys(_flat(futures)))
    deadline = _deadline(timeout)
    by_rush: dict[int, list[RushFuture]] = collections.defaultdict(list)
    for future in flat:
        by_rush[id(future._rush)].append(future)

    def done_now() -> set[RushFuture]:
        return {f for f in flat if f._cancelled or f._rush._completions.is_done(f.task_key)}

    while True:
        done = done_now()
        if (
            len(done) == len(flat)
            or return_when == FIRST_COMPLETED
            and done
            or return_when == FIRST_EXCEPTION
            and any(f._cancelled or f._rush._completions.failed.get(f.task_key) for f in done)
        ):
            return DoneAndNotDoneFutures(done, set(flat) - done)
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"{len(flat) - len(done)} of {len(flat)} futures not done after {timeout} s")
        # Block on one client's futures; the others are checked after each wake-up.
        group = next(g for g in by_rush.values() if any(f not in done for f in g))
        keys = [f.task_key for f in group if f not in done]
        step = None if deadline is None else deadline
        if len(by_rush) > 1:
            step = min(step, time.monotonic() + 0.05) if step is not None else time.monotonic() + 0.05
        group[0]._rush._completions.wait(keys, step, count=None if return_when == ALL_COMPLETED else 1)


class as_completed:
    """Iterate over futures as they finish (or fail), in completion order.

    ``with_results=True`` yields ``(future, result)`` pairs (results read in
    batches); a failed future then raises its exception, unless
    ``raise_errors=False`` (the pair holds the exception). :meth:`add` adds
    futures while iterating. ``timeout`` bounds the wait for the next one.

    >>> for future, result in as_completed(rush.map(inc, range(10)), with_results=True):   # doctest: +SKIP
    ...     print(result)
    """

    def __init__(
        self,
        futures: Iterable[RushFuture] = (),
        timeout: float | None = None,
        with_results: bool = False,
        raise_errors: bool = True,
    ):
        self.timeout = timeout
        self.with_results = with_results
        self.raise_errors = raise_errors
        self._ready: queue.SimpleQueue[RushFuture] = queue.SimpleQueue()
        self._left = 0
        self._pending_batch: collections.deque[Any] = collections.deque()
        self.update(futures)

    def add(self, future: RushFuture) -> None:
        """Add one future to the iteration.

        >>> ac = as_completed([a]); ac.add(b)    # doctest: +SKIP
        """
        if not isinstance(future, RushFuture):
            raise TypeError(f"expected a rush future, got {type(future).__name__}: {future!r:.80}")
        self._left += 1
        future._rush._completions.on_done(future.task_key, lambda: self._ready.put(future))

    def update(self, futures: Iterable[RushFuture]) -> None:
        """Add several futures."""
        for future in _flat(list(futures)):
            self.add(future)

    def count(self) -> int:
        """How many futures are still to be yielded."""
        return self._left

    def is_empty(self) -> bool:
        return self._left == 0

    def __iter__(self) -> Iterator[Any]:
        return self

    def _take(self) -> list[RushFuture]:
        try:
            batch = [self._ready.get(timeout=self.timeout)]
        except queue.Empty:
            raise TimeoutError(f"{self._left} futures not done after {self.timeout} s") from None
        while True:
            try:
                batch.append(self._ready.get_nowait())
            except queue.Empty:
                return batch

    def batches(self) -> Iterator[list[Any]]:
        """Yield lists of whatever finished since the last list (fewer round trips).

        >>> for batch in as_completed(futures, with_results=True).batches():   # doctest: +SKIP
        ...     print(len(batch))
        """
        while self._left:
            batch = self._take()
            self._left -= len(batch)
            if not self.with_results:
                yield batch
                continue
            yield self._with_results(batch)

    def _with_results(self, batch: list[RushFuture]) -> list[tuple[RushFuture, Any]]:
        by_rush: dict[int, list[RushFuture]] = collections.defaultdict(list)
        for future in batch:
            by_rush[id(future._rush)].append(future)
        values: dict[int, Any] = {}
        for group in by_rush.values():
            read = group[0]._rush._read_futures(group, raise_errors=self.raise_errors)
            values.update({id(f): read[f.task_key] for f in group})
        return [(f, values[id(f)]) for f in batch]

    def __next__(self) -> Any:
        if not self._pending_batch:
            if not self._left:
                raise StopIteration
            batch = self._take()
            self._left -= len(batch)
            self._pending_batch = collections.deque(self._with_results(batch) if self.with_results else batch)
        return self._pending_batch.popleft()


def fire_and_forget(futures: Any) -> None:
    """Let futures run to the end even when nothing holds them any more.

    A node whose last future is released (or whose client died) is
    cancelled if it has not run yet; these run to the end, and their
    result is then deleted.

    >>> fire_and_forget(rush.submit(send_report))    # doctest: +SKIP
    """
    flat = _flat(futures)
    by_client: dict[int, list[RushFuture]] = {}
    for future in flat:
        by_client.setdefault(id(future._rush), []).append(future)
    for group in by_client.values():
        rush = group[0]._rush
        pipe = rush.client.pipeline(transaction=False)
        for future in group:
            pipe.hset(rush.keys.task(future.task_key), "keep", "1")
        pipe.execute()
