"""Futures: results of graph nodes that stay in Redis until needed.

A :class:`RushFuture` is a ``dask._task_spec.TaskRef``, so Dask treats it as
a reference to a computed key: pass it to ``dask.delayed`` calls or to
another ``rush.submit`` and the node that uses it reads the result straight
from Redis. The result is released (deleted from Redis once nothing else
needs it) when the future is garbage collected or ``release()``d.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from dask._task_spec import TaskRef

from .waiting import Patience

if TYPE_CHECKING:
    from .rush import Rush


def _release(scripts: Any, prefix: str, task_key: str) -> None:
    try:
        scripts.release(args=[prefix, task_key])
    except Exception:  # Redis gone at exit: nothing left to release
        pass


class RushFuture(TaskRef):
    """The result of one graph node, computed (or being computed) by the workers.

    >>> future = rush.submit(pow, 2, 10)     # doctest: +SKIP
    >>> future.result()                     # doctest: +SKIP
    1024
    """

    def __init__(self, key: Any, task_key: str, rush: "Rush"):
        super().__init__(key)
        self.task_key = task_key
        self._rush = rush
        self._finalizer = weakref.finalize(self, _release, rush.scripts, rush.keys.prefix, task_key)
        rush._futures_by_key[key] = self

    @property
    def status(self) -> str:
        """``waiting``, ``queued``, ``running``, ``finished``, ``failed`` or ``released``."""
        if not self._finalizer.alive:
            return "released"
        state = self._rush.client.hget(self._rush.keys.task(self.task_key), "state")
        return state.decode() if state else "released"

    def done(self) -> bool:
        """Whether the node finished or failed."""
        return self.status in ("finished", "failed", "released")

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the result and return it; re-raises the node's exception if it failed."""
        return self._rush.gather([self], timeout=timeout)[0]

    def release(self) -> None:
        """Let Redis delete the result as soon as no other node needs it."""
        self._finalizer()

    def __repr__(self) -> str:
        return f"<RushFuture {self.key!r} {self.status}>"


def as_completed(futures: Iterable[RushFuture], timeout: float | None = None) -> Iterator[RushFuture]:
    """Yield futures as they finish (or fail), in completion order.

    >>> for future in as_completed(rush.map(inc, range(10))):   # doctest: +SKIP
    ...     print(future.result())
    """
    pending = list(futures)
    patience = Patience(timeout)
    while pending:
        by_rush: dict[int, list[RushFuture]] = {}
        for future in pending:
            by_rush.setdefault(id(future._rush), []).append(future)
        ready = []
        for group in by_rush.values():
            rush = group[0]._rush
            pipe = rush.client.pipeline(transaction=False)
            for future in group:
                pipe.hget(rush.keys.task(future.task_key), "state")
            for future, state in zip(group, pipe.execute()):
                if state in (b"finished", b"failed", None):
                    ready.append(future)
        for future in ready:
            pending.remove(future)
            yield future
        if ready:
            patience.progressed()
            continue
        patience.check(lambda: f"{len(pending)} futures not done")
        patience.sleep()
