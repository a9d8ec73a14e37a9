"""Warnings raised inside graph nodes reach the client that computes them.

A local Dask scheduler runs tasks in the caller's process, so their warnings
show there. On rush_dask the worker records the warnings a node raises and
pushes them to the list ``gwarn:<graph>``; the client that computes the
graph re-emits each one once the compute ends, the task's key added to the
message, through the client's own warning filters (so ``pytest.warns``,
``warnings.simplefilter("error")`` and ``-W`` behave as with a local run).

>>> import warnings
>>> def noisy(x):
...     warnings.warn("careful")
...     return x
>>> dask.delayed(noisy)(1).compute(scheduler=rush)   # doctest: +SKIP
UserWarning: careful (in task 'noisy-...')
"""

from __future__ import annotations

import contextlib
import pickle
import warnings
from collections.abc import Callable, Hashable, Iterator
from typing import TYPE_CHECKING, Any

from .serialize import dumps, loads, place

if TYPE_CHECKING:
    from ..dask.protocols import Controller

MAX_PER_NODE = 100  # a node that warns in a loop ships this many
KEEP_SECONDS = 24 * 3600  # a list nobody reads (its client died) expires

_registries: dict[str, dict[Any, Any]] = {}  # per file: the client's "once per location" memory


def warnings_key(prefix: str, graph_id: str) -> str:
    return f"{prefix}gwarn:{graph_id}"


@contextlib.contextmanager
def recorded() -> Iterator[list[warnings.WarningMessage]]:
    """Record every warning raised in the block (worker side), whatever the worker's filters."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def _portable(message: Warning | str) -> Warning | str:
    try:
        pickle.loads(pickle.dumps(message))
        return message
    except Exception:  # a warning class the client may not unpickle: keep its text
        return UserWarning(f"{type(message).__name__}: {message}")


def ship(
    client: Any, prefix: str, graph_id: str, task_key: str, caught: list[warnings.WarningMessage], secret: bytes | None
) -> None:
    """Push the recorded warnings of one node to its graph's list (worker side)."""
    where = place(prefix, graph_id, "warnings") if secret else b""
    items = [
        dumps((task_key, _portable(w.message), w.filename, w.lineno), secret, where) for w in caught[:MAX_PER_NODE]
    ]
    if not items:
        return
    key = warnings_key(prefix, graph_id)
    pipe = client.pipeline(transaction=False)
    pipe.rpush(key, *items)
    pipe.expire(key, KEEP_SECONDS)
    pipe.execute()


def _with_key(message: Warning, key: Hashable) -> Warning:
    try:
        tagged = type(message)(f"{message} (in task {key!r})")
        return tagged if str(tagged) != str(message) else message
    except Exception:  # a warning class whose constructor takes other arguments
        return message


def reemit(rush: Controller, graph_id: str, dask_key_of: Callable[[str], Hashable]) -> None:
    """Re-emit, in this process, the warnings the nodes of a graph raised; then forget them."""
    key = warnings_key(rush.keys.prefix, graph_id)
    pipe = rush.client.pipeline(transaction=True)
    pipe.lrange(key, 0, -1)
    pipe.delete(key)
    blobs, _ = pipe.execute()
    for blob in blobs:
        try:
            task_key, message, filename, lineno = loads(blob, rush.secret, rush._where(graph_id, "warnings"))
        except Exception:  # not signed with our secret, or unpicklable here: skip it
            continue
        message = _with_key(message, dask_key_of(task_key))
        warnings.warn_explicit(message, type(message), filename, lineno, registry=_registries.setdefault(filename, {}))


def forget(rush: Controller, graph_id: str) -> None:
    """Drop the warnings of a graph that nobody will re-emit (a future's graph)."""
    rush.client.delete(warnings_key(rush.keys.prefix, graph_id))
