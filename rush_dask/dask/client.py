"""The futures API of :class:`~rush_dask.Rush`, as ``distributed.Client`` scripts use it.

>>> a = rush.submit(pow, 2, 10)                     # doctest: +SKIP
>>> futures = rush.map(inc, range(100), retries=2)  # doctest: +SKIP
>>> rush.gather(futures)                            # doctest: +SKIP
>>> total = rush.compute(x.sum())                   # a future of the collection's value  # doctest: +SKIP
>>> [data] = rush.scatter([big_array])              # doctest: +SKIP
>>> with rush.get_executor() as pool:               # doctest: +SKIP
...     list(pool.map(inc, range(100)))
"""

from __future__ import annotations

import concurrent.futures
import logging
import uuid
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..core import taskwarnings
from ..core.connections import is_cluster_client
from ..core.constants import TaskState
from ..core.dataplane import RESULT_FIELDS
from .shuffle import task_shuffle

if TYPE_CHECKING:
    from .futures import RushFuture
    from .protocols import Controller

logger = logging.getLogger("rush_dask")
_FETCHED = ("state", *RESULT_FIELDS)  # what reading a future's result needs


def _apply(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return fn(*args, **kwargs)


class FuturesClient:
    """Mixin of :class:`~rush_dask.Rush`: submit, map, gather, scatter, compute, get_executor."""

    def submit(
        self: Controller,
        fn: Callable[..., Any],
        *args: Any,
        key: Hashable | None = None,
        pure: bool = True,
        retries: int | None = None,
        priority: int = 0,
        resources: Mapping[str, float] | None = None,
        lease: float | None = None,
        **kwargs: Any,
    ) -> RushFuture:
        """Run ``fn(*args, **kwargs)`` on a worker; returns a :class:`RushFuture` at once.

        Arguments may be futures (or contain them): the worker reads their
        results from Redis. As in distributed: ``pure=True`` (default) names
        the node after its function and arguments, so the same call while its
        future lives returns that future; ``key=`` names it yourself;
        ``retries``, ``priority`` (higher first) and ``resources`` apply to it.
        ``lease`` (seconds, default 60): if this client stops renewing its lease
        for that long (it died, or hangs), its futures are released; one lease,
        the shortest asked for, covers everything a client holds.

        >>> a = rush.submit(pow, 2, 10)          # doctest: +SKIP
        >>> b = rush.submit(sum, [a, a])         # doctest: +SKIP
        >>> b.result()                           # doctest: +SKIP
        2048
        """
        if key is not None and not isinstance(key, (str, tuple)):
            raise TypeError(f"key must be a string or a tuple, got {key!r}")
        return self.map(
            fn,
            *([arg] for arg in args),
            key=[key] if key is not None else None,
            pure=pure,
            retries=retries,
            priority=priority,
            resources=resources,
            lease=lease,
            **kwargs,
        )[0]

    def map(
        self: Controller,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        key: str | Sequence[Hashable] | None = None,
        pure: bool = True,
        retries: int | None = None,
        priority: int = 0,
        resources: Mapping[str, float] | None = None,
        lease: float | None = None,
        **kwargs: Any,
    ) -> list[RushFuture]:
        """``submit`` for each element of the iterables (zipped), in one graph; returns futures.

        Other keywords are passed to every call, as in distributed. ``key``: a
        list of keys, or a prefix for them.

        >>> futures = rush.map(lambda x, k: x * k, range(5), k=2, retries=1)   # doctest: +SKIP
        >>> rush.gather(futures)                                              # doctest: +SKIP
        [0, 2, 4, 6, 8]
        """
        from dask.base import tokenize

        if not callable(fn):
            raise TypeError(f"expected a function, got {fn!r}")
        if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int) or retries < 0):
            raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise TypeError(f"priority must be an integer, got {priority!r}")
        if resources is not None and not isinstance(resources, Mapping):
            raise TypeError(f"resources must be a dict like {{'GPU': 1}}, got {resources!r}")
        columns = [list(it) for it in iterables]
        n = len(columns[0]) if columns else 0
        if any(len(c) != n for c in columns):
            raise ValueError("all iterables given to map() must have the same length")
        name = getattr(fn, "__name__", type(fn).__name__)
        if isinstance(key, list):
            keys = list(key)
            if len(keys) != n:
                raise ValueError(f"got {len(keys)} keys for {n} calls")
        elif isinstance(key, str) or key is None:
            prefix = key or name
            if pure:
                token = tokenize(fn, kwargs)
                keys = [f"{prefix}-{tokenize(token, *(c[i] for c in columns))}" for i in range(n)]
            else:
                keys = [f"{prefix}-{uuid.uuid4().hex}" for _ in range(n)]
        else:
            raise TypeError(f"key must be a string prefix or a list of keys, got {key!r}")
        options = {"lease": lease} if lease is not None else {}
        return self._submit_calls(
            fn,
            [(tuple(c[i] for c in columns), kwargs) for i in range(n)],
            keys,
            priority=priority,
            retries=retries or 0,
            resources=resources,
            **options,
        )

    def _submit_calls(
        self: Controller,
        fn: Callable[..., Any],
        calls: Sequence[tuple[tuple[Any, ...], dict[str, Any]]],
        keys: Sequence[Hashable],
        **options: Any,
    ) -> list[RushFuture]:
        """One graph with one node ``fn(*args, **kwargs)`` per call; a key whose future
        lives (a pure call made before) is not run again."""
        from dask._task_spec import Task, parse_input

        existing: dict[Hashable, Any] = {k: self._futures_by_key.get(k) for k in keys}  # a RushFuture or None
        todo = [i for i, k in enumerate(keys) if existing[k] is None or not existing[k]._finalizer.alive]
        new: dict[Hashable, RushFuture] = {}
        if todo:
            # parse_input finds futures nested in lists, dicts and tuples of the arguments.
            # (ignore: parse_input returns object, which mypy matches against Task's _data_producer: bool)
            graph = {
                keys[i]: Task(
                    keys[i],
                    fn,
                    *[parse_input(a) for a in calls[i][0]],
                    **{k: parse_input(v) for k, v in calls[i][1].items()},  # type: ignore[arg-type]
                )
                for i in todo
            }
            new = self._submit_graph(graph, list(graph), **options)
        return [new[k] if k in new else existing[k] for k in keys]

    def _read_futures(self: Controller, futures: Sequence[RushFuture], raise_errors: bool = True) -> dict[str, Any]:
        """Results of done futures by task key, in one round trip; raises the first failure
        (or, with ``raise_errors=False``, returns the exception as its value)."""
        unique = list({f.task_key: f for f in futures}.values())
        graphs = list(dict.fromkeys(f.task_key.rsplit(".", 1)[0] for f in unique))
        # A cluster pipeline does not load scripts (a plain one does): there, call them directly.
        direct = is_cluster_client(self.client)
        pipe = self.client.pipeline(transaction=False)
        chunks = []
        for start in range(0, len(unique), 10_000):  # one command per 10,000 (not one per future)
            task_keys = [f.task_key for f in unique[start : start + 10_000]]
            if direct:
                chunks.append(self.scripts.fetch_tasks(task_keys, _FETCHED))
            else:
                self.scripts.fetch_tasks(task_keys, _FETCHED, client=pipe)
        for graph_id in graphs:  # in the same round trip: did these nodes warn?
            pipe.exists(taskwarnings.warnings_key(self.keys.prefix, graph_id))
        replies = pipe.execute()
        n_reads = 0 if direct else -(-len(unique) // 10_000)
        warned = [g for g, n in zip(graphs, replies[n_reads:]) if n]
        if warned:
            self._reemit_warnings(warned)
        rows = [row for chunk in (chunks if direct else replies[:n_reads]) for row in chunk]
        results: dict[str, Any] = {}
        for future, (raw_state, *where) in zip(unique, rows):
            state = raw_state.decode() if raw_state is not None else None
            try:
                if future._cancelled:
                    raise concurrent.futures.CancelledError(f"future {future.key!r} was cancelled")
                if state == TaskState.FINISHED:
                    results[future.task_key] = self.plane.read(future.task_key, where)
                elif state == TaskState.FAILED:
                    from .graph import raise_node_error

                    raise_node_error(self, future.task_key, future.key)
                elif state is None:
                    raise KeyError(f"the result of {future.key!r} was released")
                else:
                    raise RuntimeError(f"future {future.key!r} is {state}, not done")
            except BaseException as exc:
                if raise_errors:
                    raise
                results[future.task_key] = exc
        return results

    def gather(self: Controller, futures: Any, errors: str = "raise", timeout: float | None = None) -> Any:
        """Wait for futures (a future, or lists, tuples, dicts of them) and return their results.

        ``errors="skip"`` leaves failed futures out (of lists) instead of raising.
        ``TimeoutError`` after ``timeout`` seconds.

        >>> rush.gather([rush.submit(abs, -1), rush.submit(abs, -2)])   # doctest: +SKIP
        [1, 2]
        """
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
        from .futures import RushFuture, _deadline, _flat

        if isinstance(futures, RushFuture):
            return self.gather([futures], errors, timeout)[0]
        flat = _flat(futures)
        deadline = _deadline(timeout)
        keys = list(dict.fromkeys(f.task_key for f in flat if not f._cancelled))
        if len(self._completions.wait(keys, deadline)) < len(keys):
            raise TimeoutError(f"futures not done after {timeout} s")
        results = self._read_futures(flat, raise_errors=errors == "raise")
        return _pack(futures, results, skip=errors == "skip")

    def _reemit_warnings(self: Controller, graph_ids: list[str]) -> None:
        keys = {f.task_key: f.key for f in list(self._futures_by_key.values())}
        for graph_id in graph_ids:
            taskwarnings.reemit(self, graph_id, lambda task_key: keys.get(task_key, task_key))

    def scatter(self: Controller, data: Any, hash: bool = True) -> Any:
        """Store values in Redis for later submits; returns futures shaped like ``data``.

        A list (or tuple) gives a list of futures, a dict a dict, anything else one future.

        >>> [big] = rush.scatter([np.ones(10**6)])     # doctest: +SKIP
        >>> rush.submit(np.sum, big).result()          # doctest: +SKIP
        1000000.0
        """
        from dask._task_spec import DataNode
        from dask.base import tokenize

        if isinstance(data, dict):
            names = [k if isinstance(k, (str, tuple)) else str(k) for k in data]
            values = list(data.values())
        else:
            values = list(data) if isinstance(data, (list, tuple, set, frozenset)) else [data]
            names = [f"{type(v).__name__}-{tokenize(v) if hash else uuid.uuid4().hex}" for v in values]
        graph = {name: DataNode(name, value) for name, value in zip(names, values)}
        futures = self._submit_graph(graph, list(graph)) if graph else {}
        if isinstance(data, dict):
            return {k: futures[name] for k, name in zip(data, names)}
        if isinstance(data, (list, tuple, set, frozenset)):
            return [futures[name] for name in names]
        return futures[names[0]]

    def compute(self: Controller, collections: Any, optimize_graph: bool = True, **kwargs: Any) -> Any:
        """Start computing a Dask collection (or a list of them); returns a future of its value.

        DataFrame shuffles are task-based unless you chose a method (see :mod:`rush_dask.dask.shuffle`).
        Keywords: ``priority``, ``retries``, ``resources``, as for ``rush.get``.

        >>> total = rush.compute(x.sum())       # doctest: +SKIP
        >>> total.result()                      # doctest: +SKIP
        """
        from dask._expr import FinalizeCompute
        from dask.base import collections_to_expr, is_dask_collection

        from .graph import flat_keys

        single = not isinstance(collections, (list, tuple))
        items = [collections] if single else list(collections)
        futures = []
        options = self._graph_options(kwargs)
        for item in items:
            if not is_dask_collection(item):
                futures.append(self.scatter(item, hash=False))
                continue
            with task_shuffle():
                expr = FinalizeCompute(collections_to_expr([item], optimize_graph)).optimize()
            (key,) = flat_keys(expr.__dask_keys__())
            futures.append(self._submit_graph(expr, [key], **options)[key])
        return futures[0] if single else futures

    def get_executor(self: Controller, **submit_options: Any) -> concurrent.futures.Executor:
        """A ``concurrent.futures.Executor`` whose calls run on this network's workers.

        ``submit_options`` (``retries``, ``priority``, ``resources``, ``pure``)
        apply to every call. See :class:`rush_dask.dask.executor.RushExecutor`.

        >>> with rush.get_executor() as pool:           # doctest: +SKIP
        ...     list(pool.map(pow, range(5), range(5)))
        [1, 1, 4, 27, 256]
        """
        from .executor import RushExecutor

        return RushExecutor(self, **submit_options)


def _pack(futures: Any, results: Mapping[str, Any], skip: bool) -> Any:
    from .futures import RushFuture

    if isinstance(futures, RushFuture):
        return results[futures.task_key]
    if isinstance(futures, dict):
        return {k: _pack(v, results, skip) for k, v in futures.items()}
    items = [_pack(f, results, skip) for f in futures]
    if skip:
        items = [v for v in items if not isinstance(v, BaseException)]
    return type(futures)(items) if isinstance(futures, (list, tuple, set)) else items
