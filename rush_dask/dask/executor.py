"""A ``concurrent.futures.Executor`` on a rush network: any library that takes an
executor runs its calls on the rush workers.

>>> with rush.get_executor(retries=1) as pool:            # doctest: +SKIP
...     squares = list(pool.map(pow, range(10), [2] * 10, chunksize=5))
"""

from __future__ import annotations

import concurrent.futures
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .futures import RushFuture, _deadline

if TYPE_CHECKING:
    from .protocols import Controller

_READ_BATCH = 10_000  # results read per round trip, at most


def _run_chunk(fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> list[Any]:
    return [fn(*args) for args in chunk]


class RushExecutor(concurrent.futures.Executor):
    """``submit``, ``map(timeout=, chunksize=)`` and ``shutdown`` on the workers of ``rush``.

    ``submit`` returns a ``concurrent.futures.Future``, resolved when the
    worker's result comes (pushed, not polled). ``map`` submits every call at
    once, as one graph, and yields the results in order; a call that raised
    re-raises there. Options (``retries``, ``priority``, ``resources``) apply
    to every call.

    >>> pool = RushExecutor(rush)                 # doctest: +SKIP
    >>> pool.submit(pow, 2, 10).result()          # doctest: +SKIP
    1024
    """

    def __init__(self, rush: Controller, **options: Any):
        unknown = set(options) - {"retries", "priority", "resources", "pure"}
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)} for get_executor()")
        self._rush = rush
        self._options = {
            "retries": options.get("retries") or 0,
            "priority": options.get("priority", 0),
            "resources": options.get("resources"),
        }
        self._lock = threading.Lock()
        self._outstanding: set[RushFuture] = set()
        self._submitted: set[concurrent.futures.Future[Any]] = set()  # of submit(), not resolved yet
        self._shutdown = False

    def _calls(self, fn: Callable[..., Any], calls: list[tuple[tuple[Any, ...], dict[str, Any]]]) -> list[RushFuture]:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new calls after shutdown")
        name = getattr(fn, "__name__", type(fn).__name__)
        keys = [f"{name}-{uuid.uuid4().hex}" for _ in calls]
        futures = self._rush._submit_calls(fn, calls, keys, **self._options)
        with self._lock:
            self._outstanding.update(futures)
        for future in futures:
            future.add_done_callback(self._discard)
        return futures

    def _discard(self, future: RushFuture) -> None:
        with self._lock:
            self._outstanding.discard(future)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """Run ``fn(*args, **kwargs)`` on a worker; returns a ``concurrent.futures.Future``.

        >>> pool.submit(sum, [1, 2, 3]).result()      # doctest: +SKIP
        6
        """
        if not callable(fn):
            raise TypeError(f"expected a function, got {fn!r}")
        (rush_future,) = self._calls(fn, [(args, kwargs)])
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        future.set_running_or_notify_cancel()

        def transfer(done: RushFuture) -> None:
            try:
                value = self._rush._read_futures([done], raise_errors=False)[done.task_key]
            except BaseException as exc:  # Redis gone
                value = exc
            if isinstance(value, BaseException):
                future.set_exception(value)
            else:
                future.set_result(value)

        with self._lock:
            self._submitted.add(future)
        future.add_done_callback(self._submitted.discard)
        rush_future.add_done_callback(transfer)
        return future

    def map(
        self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None, chunksize: int = 1
    ) -> Iterator[Any]:
        """``fn`` over the zipped iterables on the workers; yields results in order.

        ``chunksize`` calls run as one task (fewer, larger tasks for very short
        calls). ``TimeoutError`` if a result is not there ``timeout`` seconds
        after the call to ``map``; stopping the iteration early cancels what is left.

        >>> list(pool.map(pow, [2, 3], [5, 2], timeout=60))     # doctest: +SKIP
        [32, 9]
        """
        if not callable(fn):
            raise TypeError(f"expected a function, got {fn!r}")
        if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be an integer >= 1, got {chunksize!r}")
        deadline = _deadline(timeout)
        args = list(zip(*iterables))
        if chunksize == 1:
            futures = self._calls(fn, [(a, {}) for a in args])
        else:
            futures = self._calls(
                _run_chunk, [((fn, args[i : i + chunksize]), {}) for i in range(0, len(args), chunksize)]
            )
        return self._results(futures, deadline, timeout, chunked=chunksize > 1)

    def _results(
        self, futures: list[RushFuture], deadline: float | None, timeout: float | None, chunked: bool
    ) -> Iterator[Any]:
        completions = self._rush._completions
        i = 0
        try:
            while i < len(futures):
                if not completions.wait([futures[i].task_key], deadline):
                    raise concurrent.futures.TimeoutError(
                        f"{len(futures) - i} results of map() not there after {timeout} s"
                    )
                j = i + 1
                while j < len(futures) and j - i < _READ_BATCH and completions.is_done(futures[j].task_key):
                    j += 1
                values = self._rush._read_futures(futures[i:j], raise_errors=False)
                for future in futures[i:j]:
                    value = values[future.task_key]
                    futures[i] = None  # type: ignore[call-overload]  # let it be released
                    i += 1
                    if isinstance(value, BaseException):
                        raise value
                    if chunked:
                        yield from value
                    else:
                        yield value
        finally:
            left = [f for f in futures[i:] if f is not None and not completions.is_done(f.task_key)]
            if left:
                self._cancel(left)

    def _cancel(self, futures: list[RushFuture]) -> None:
        rush = self._rush
        keys = [f.task_key for f in futures]
        for start in range(0, len(keys), 10_000):
            rush.scripts.cancel_futures(keys[start : start + 10_000], reason="cancelled: the executor's map was left")

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No new calls; with ``cancel_futures`` cancel those not done; with ``wait`` wait for the rest.

        >>> pool.shutdown(wait=True)      # doctest: +SKIP
        """
        with self._lock:
            self._shutdown = True
            outstanding = list(self._outstanding)
        if cancel_futures and outstanding:
            for future in outstanding:
                future.cancel()
        if wait and outstanding:
            self._rush._completions.wait([f.task_key for f in outstanding if not f.cancelled()], None)
        if wait:  # the results of submit() are handed over by the listener thread
            with self._lock:
                submitted = list(self._submitted)
            concurrent.futures.wait(submitted)
