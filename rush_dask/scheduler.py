"""The Dask front end of :class:`~rush_dask.Rush`: a ``Rush`` object is a Dask scheduler.

>>> import dask
>>> dask.compute(x, scheduler=rush)               # doctest: +SKIP
>>> with dask.config.set(scheduler=rush):         # doctest: +SKIP
...     x.compute()
>>> future = rush.submit(sum, [1, 2, 3])          # doctest: +SKIP

Graph nodes become Redis tasks run by the same workers as Rush tasks (see
:mod:`rush_dask.graph`). If the network has no running worker when a graph
arrives, local workers are started (``plan(n_workers=...)`` or one per core).
"""

from __future__ import annotations

import logging
import uuid
import weakref
from typing import Any, Callable, Hashable, Iterable, Sequence

from .dataplane import RESULT_FIELDS, DataPlane
from .errors import ResultLostError
from .graph import GraphRun, flat_keys, pack_results, raise_node_error
from .waiting import Patience

logger = logging.getLogger("rush_dask")

# A compute whose held results were lost with their worker runs again, at most this often.
MAX_LINEAGE_RUNS = 3

# compute(...) keywords that Dask forwards and the scheduler has no use for.
_IGNORED = {"num_workers", "pool", "chunksize", "optimize_graph", "traverse", "rerun_exceptions_locally"}


def use_task_shuffle() -> None:
    """Make DataFrame shuffles task-based unless the user chose a method.

    Without a distributed Client, Dask shuffles on the local disk, which is
    wrong when workers run on several machines.
    """
    import dask

    if dask.config.get("dataframe.shuffle.method", None) is None:
        dask.config.set({"dataframe.shuffle.method": "tasks"})


class DaskScheduler:
    """Mixin that makes a Rush controller a Dask scheduler and a futures client."""

    def _init_scheduler(self) -> None:
        self._futures_by_key: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        # Reads graph results where they are: in Redis, or on the host that made them.
        self.plane = DataPlane(self.client, self.keys, secret=self.secret, url=self.url)
        use_task_shuffle()

    def _ensure_workers(self) -> None:
        if self.n_running_workers == 0 and not any(p.alive for p in self._processes.values()):
            ids = self.start_workers()
            logger.info("no running worker in network %r: started %d local workers",
                        self.network_id, len(ids))

    def _graph_options(self, kwargs: dict) -> dict:
        options = {k: kwargs.pop(k) for k in ("priority", "retries", "resources", "max_lost", "fuse", "lease")
                   if k in kwargs}
        unknown = set(kwargs) - _IGNORED - {"callbacks"}
        if unknown:
            raise TypeError(f"unknown keyword(s) for the rush scheduler: {sorted(unknown)}")
        return options

    def __call__(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        return self.get(dsk, keys, **kwargs)

    def get(self, dsk: Any, keys: Any, *, timeout: float | None = None, **kwargs: Any) -> Any:
        """Compute ``keys`` of a Dask graph (an expression or a dict) on the workers.

        Keywords: ``priority``, ``retries``, ``resources`` (also taken from
        ``dask.annotate``), ``timeout``, ``callbacks``; ``fuse``: small
        subtrees run as one task and independent outputs in bundles (see
        :mod:`rush_dask.fusion`), ``False`` turns that off, an integer caps
        the nodes per task; ``lease`` (60 s): if this client stops following
        the compute for that long (it died or hangs), the workers cancel it.

        >>> rush.get({"a": 1, "b": (inc, "a")}, "b")   # doctest: +SKIP
        2
        """
        from dask.callbacks import local_callbacks, unpack_callbacks

        callbacks = kwargs.pop("callbacks", None)
        options = self._graph_options(kwargs)
        outputs = flat_keys(keys)
        run = GraphRun(self, dsk, outputs, notify=True, **options)
        with local_callbacks(callbacks) as active:
            start, start_state, pretask, posttask, finish = unpack_callbacks(active)
            graph = run.dask_graph
            state = {"ready": [], "waiting": set(graph), "running": set(),
                     "finished": set(), "cache": {}, "released": set()}
            for f in start:
                f(graph)
            for f in start_state:
                f(graph, state)

            def on_done(key: Hashable) -> None:
                state["waiting"].discard(key)
                state["finished"].add(key)
                for f in pretask:
                    f(key, graph, state)
                for f in posttask:
                    f(key, None, graph, state, None)

            self._ensure_workers()
            errored = True
            try:
                results = self._run_with_lineage(run, dsk, outputs, options, on_done, timeout)
                errored = False
            finally:
                for f in finish:
                    f(graph, state, errored)
        return pack_results(keys, results)

    def _run_with_lineage(self, run: GraphRun, dsk: Any, outputs: list, options: dict,
                          on_done: Callable[[Hashable], None], timeout: float | None) -> dict:
        """Submit and follow ``run``; if a result held on another host was lost with its
        worker, compute the graph again from its lineage (a few times at most)."""
        for attempt in range(1, MAX_LINEAGE_RUNS + 1):
            run.submit()
            try:
                return run.wait(on_done=on_done, timeout=timeout)
            except ResultLostError as exc:
                if attempt == MAX_LINEAGE_RUNS:
                    raise
                logger.warning("compute again (run %d of at most %d): %s", attempt + 1, MAX_LINEAGE_RUNS, exc)
                run = GraphRun(self, dsk, outputs, notify=True, **options)
        raise AssertionError("unreachable")

    def persist(self, collections: Sequence[Any], optimize_graph: bool = True, **kwargs: Any) -> list[Any]:
        """Start computing collections and return them at once, backed by futures in Redis.

        Called by ``dask.persist(x, scheduler=rush)``; later computes reuse the results.

        >>> (y,) = dask.persist(x, scheduler=rush)      # doctest: +SKIP
        """
        from dask.base import collections_to_expr

        options = self._graph_options(kwargs)
        expr = collections_to_expr(list(collections), optimize_graph).optimize()
        keys = expr.__dask_keys__()
        if len(collections) == 1 and len(keys) != 1:
            keys = [keys]
        run = GraphRun(self, expr, flat_keys(keys), notify=False, **options)
        self._ensure_workers()
        run.submit()
        futures = run.futures()
        return [rebuild({k: futures[k] for k in flat_keys(ks)}, *args)
                for (rebuild, args), ks in zip((c.__dask_postpersist__() for c in collections), keys)]

    def submit(self, fn: Callable, *args: Any, key: Hashable | None = None, **kwargs: Any):
        """Run ``fn(*args, **kwargs)`` on a worker; returns a :class:`RushFuture` at once.

        Arguments may be futures (or contain them): the worker reads their results from Redis.

        >>> a = rush.submit(pow, 2, 10)          # doctest: +SKIP
        >>> b = rush.submit(sum, [a, a])         # doctest: +SKIP
        >>> b.result()                           # doctest: +SKIP
        2048
        """
        return self.map(fn, *([arg] for arg in args), keys=[key] if key is not None else None,
                        **{k: [v] for k, v in kwargs.items()})[0]

    def map(self, fn: Callable, *iterables: Iterable[Any], keys: Sequence[Hashable] | None = None,
            **kwargs: Iterable[Any]) -> list:
        """``submit`` for each element of the iterables (zipped), in one graph; returns futures.

        >>> futures = rush.map(lambda x: x * 2, range(5))   # doctest: +SKIP
        >>> rush.gather(futures)                             # doctest: +SKIP
        [0, 2, 4, 6, 8]
        """
        from dask._task_spec import Task, parse_input

        if not callable(fn):
            raise TypeError(f"expected a function, got {fn!r}")
        columns = [list(it) for it in iterables]
        named = {k: list(v) for k, v in kwargs.items()}
        n = len(columns[0]) if columns else (len(next(iter(named.values()))) if named else 0)
        if any(len(c) != n for c in [*columns, *named.values()]):
            raise ValueError("all iterables given to map() must have the same length")
        name = getattr(fn, "__name__", type(fn).__name__)
        keys = list(keys) if keys is not None else [f"{name}-{uuid.uuid4().hex}" for _ in range(n)]
        # parse_input finds futures nested in lists, dicts and tuples of the arguments.
        graph = {key: Task(key, fn, *[parse_input(c[i]) for c in columns],
                           **{k: parse_input(v[i]) for k, v in named.items()})
                 for i, key in enumerate(keys)}
        run = GraphRun(self, graph, keys, notify=False)
        self._ensure_workers()
        run.submit()
        futures = run.futures()
        return [futures[k] for k in keys]

    def gather(self, futures: Any, timeout: float | None = None) -> Any:
        """Wait for futures (a future, or lists of them) and return their results.

        >>> rush.gather([rush.submit(abs, -1), rush.submit(abs, -2)])   # doctest: +SKIP
        [1, 2]
        """
        from .futures import RushFuture

        if isinstance(futures, RushFuture):
            return self.gather([futures], timeout)[0]
        pending = {f.task_key: f for f in flat_keys(futures)}
        results: dict[str, Any] = {}
        patience = Patience(timeout, self._health_check)
        while pending:
            pipe = self.client.pipeline(transaction=False)
            for task_key in pending:
                pipe.hmget(self.keys.task(task_key), "state", *RESULT_FIELDS)
            for (task_key, future), (state, *where) in zip(list(pending.items()), pipe.execute()):
                if state == b"finished":
                    results[task_key] = self.plane.read(task_key, where)
                    del pending[task_key]
                elif state == b"failed":
                    raise_node_error(self, task_key, future.key)
                elif state is None:
                    raise KeyError(f"the result of {future.key!r} was released")
            if not pending:
                break
            patience.check(lambda: f"{len(pending)} futures not done")
            patience.sleep()
        return _pack_futures(futures, results)


def _pack_futures(futures: Any, results: dict[str, Any]) -> Any:
    if isinstance(futures, (list, tuple)):
        return type(futures)(_pack_futures(f, results) for f in futures)
    return results[futures.task_key]
