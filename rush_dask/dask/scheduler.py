"""The Dask front end of :class:`~rush_dask.Rush`: a ``Rush`` object is a Dask scheduler.

>>> import dask
>>> dask.compute(x, scheduler=rush)               # doctest: +SKIP
>>> with dask.config.set(scheduler=rush):         # doctest: +SKIP
...     x.compute()
>>> future = rush.submit(sum, [1, 2, 3])          # doctest: +SKIP

Graph nodes become Redis tasks run by the same workers as Rush tasks (see
:mod:`rush_dask.dask.graph`). If the network has no running worker when a graph
arrives, local workers are started (``plan(n_workers=...)`` or one per core).
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any

from ..core import taskwarnings
from ..core.connections import current_plan
from ..core.constants import Keys
from ..core.dataplane import DataPlane
from ..core.errors import ResultLostError
from .lease import ClientLease
from .shuffle import check_disk_shuffle, check_p2p, task_shuffle
from .taskconfig import config_snapshot

if TYPE_CHECKING:
    from ..deploy.processes import LocalWorkers
    from .completions import Completions
    from .futures import RushFuture
    from .graph import GraphRun
    from .protocols import Controller

logger = logging.getLogger("rush_dask")

# A compute whose held results were lost with their worker runs again, at most this often.
MAX_LINEAGE_RUNS = 3

# compute(...) keywords of Dask's local schedulers: accepted, of no use here.
_LOCAL_ONLY = {"num_workers", "pool", "chunksize", "optimize_graph", "traverse", "rerun_exceptions_locally"}


def _local_value(node: Any) -> tuple[bool, Any]:
    """(True, value) for a node that is data (nothing to run): its value is returned as
    the very object the graph holds, as a local scheduler would, not a copy from a worker."""
    from dask._task_spec import DataNode, Task
    from dask.core import literal

    if isinstance(node, DataNode):
        return True, node.value
    if (
        type(node) is Task
        and isinstance(node.func, literal)
        and not node.args
        and not node.kwargs
        and not node.dependencies
    ):
        return True, node.func()
    return False, None


class DaskScheduler:
    """Mixin that makes a Rush controller a Dask scheduler (the futures API is in
    :mod:`rush_dask.dask.client`)."""

    # Set by the controller that mixes this in (rush_dask.rush.Rush):
    client: Any  # its Redis connection
    keys: Keys
    url: str
    secret: bytes | None
    local_workers: LocalWorkers  # started by _ensure_workers when the network has none
    # Set by _init_scheduler:
    plane: DataPlane
    _completions: Completions
    _futures_by_key: weakref.WeakValueDictionary[Hashable, RushFuture]  # the live futures of this client
    client_lease: ClientLease  # what this client holds, under one lease
    # What it needs of the rest of the controller (NetworkView, Rush, the futures client) is
    # declared in rush_dask.dask.protocols.Controller: the methods below that use it take self: Controller.

    def _init_scheduler(self: Controller) -> None:
        from .completions import Completions

        self._futures_by_key = weakref.WeakValueDictionary()
        # Reads graph results where they are: in Redis, or on the host that made them.
        self.plane = DataPlane(self.client, self.keys, secret=self.secret, url=self.url)
        self._completions = Completions(self)
        # What this client holds (persisted results, futures) goes if it stops renewing this.
        self.client_lease = ClientLease(self, self._completions.client_id)

    def _ensure_workers(self: Controller) -> None:
        """Start local workers if the network has none running (unless ``plan(n_workers=0)``)."""
        if current_plan().n_workers == 0:
            return
        if self.n_running_workers == 0 and not self.local_workers.any_alive():
            ids = self.start_workers()
            logger.info("no running worker in network %r: started %d local workers", self.network_id, len(ids))

    def _graph_options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        options: dict[str, Any] = {
            k: kwargs.pop(k) for k in ("priority", "retries", "resources", "max_lost", "fuse", "lease") if k in kwargs
        }
        unknown = set(kwargs) - _LOCAL_ONLY - {"callbacks"}
        if unknown:  # Dask forwards every compute() keyword to the scheduler, as for local ones
            logger.debug("rush scheduler: ignoring compute keyword(s) %s", sorted(unknown))
        return options

    def _submit_graph(
        self: Controller, dsk: Any, outputs: list[Hashable], **options: Any
    ) -> dict[Hashable, RushFuture]:
        """Submit a graph whose outputs become futures of this client; returns them by key."""
        from .graph import GraphRun

        run = GraphRun(
            self, dsk, outputs, notify=False, config=config_snapshot(), done_list=self._completions.client_id, **options
        )
        self._ensure_workers()
        futures = run.futures()  # before submit: a node may finish before the listener follows it
        self._completions.watch([f.task_key for f in futures.values()])
        run.submit()
        if run.client_nodes is not None:  # nodes that run in this process: run them before returning
            run.client_nodes.drain()
        return futures

    def __call__(self: Controller, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        return self.get(dsk, keys, **kwargs)

    def get(self: Controller, dsk: Any, keys: Any, *, timeout: float | None = None, **kwargs: Any) -> Any:
        """Compute ``keys`` of a Dask graph (an expression or a dict) on the workers.

        Keywords: ``priority``, ``retries``, ``resources`` (also taken from
        ``dask.annotate``), ``timeout``, ``callbacks``; ``fuse``: small
        subtrees run as one task and independent outputs in bundles (see
        :mod:`rush_dask.dask.fusion`), ``False`` turns that off, an integer caps
        the nodes per task; ``lease`` (60 s): if this client stops following
        the compute for that long (it died or hangs), the workers cancel it.

        >>> rush.get({"a": 1, "b": (inc, "a")}, "b")   # doctest: +SKIP
        2
        """
        from dask.callbacks import local_callbacks, unpack_callbacks

        from .graph import GraphRun, flat_keys, pack_results

        callbacks = kwargs.pop("callbacks", None)
        options = self._graph_options(kwargs)
        outputs = flat_keys(keys)
        run = GraphRun(self, dsk, outputs, notify=True, config=config_snapshot(), **options)
        check_p2p(run.dask_graph)
        check_disk_shuffle(self, run.dask_graph)
        data = {}
        for key in outputs:
            is_data, value = _local_value(run.dask_graph.get(key))
            if is_data:
                data[key] = value
        with local_callbacks(callbacks) as active:
            start, start_state, pretask, posttask, finish = unpack_callbacks(active)
            graph = run.dask_graph
            state: dict[str, Any] = {
                "ready": [],
                "waiting": set(graph),
                "running": set(),
                "finished": set(),
                "cache": {},
                "released": set(),
            }
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

            errored = True
            try:
                if len(data) < len(outputs):
                    self._ensure_workers()
                    results = self._run_with_lineage(run, dsk, outputs, options, on_done, timeout)
                else:  # nothing to run: every output is data the graph holds
                    results = {}
                results.update(data)
                errored = False
            finally:
                for f in finish:
                    f(graph, state, errored)
        return pack_results(keys, results)

    def _run_with_lineage(
        self: Controller,
        run: GraphRun,
        dsk: Any,
        outputs: list[Hashable],
        options: dict[str, Any],
        on_done: Callable[[Hashable], None],
        timeout: float | None,
    ) -> dict[Hashable, Any]:
        """Submit and follow ``run``; if a result held on another host was lost with its
        worker, compute the graph again from its lineage (a few times at most)."""
        from .graph import GraphRun

        for attempt in range(1, MAX_LINEAGE_RUNS + 1):
            run.submit()
            try:
                return self._follow(run, on_done, timeout)
            except ResultLostError as exc:
                if attempt == MAX_LINEAGE_RUNS:
                    raise
                logger.warning("compute again (run %d of at most %d): %s", attempt + 1, MAX_LINEAGE_RUNS, exc)
                run = GraphRun(self, dsk, outputs, notify=True, config=run.config, **options)
        raise AssertionError("unreachable")

    def _follow(
        self: Controller, run: GraphRun, on_done: Callable[[Hashable], None], timeout: float | None
    ) -> dict[Hashable, Any]:
        """Wait for ``run``; the warnings its tasks raised are shown here, even when it fails."""
        by_task_key = {task_key: key for key, task_key in run.task_keys.items()}

        def dask_key(task_key: str) -> Hashable:
            key = by_task_key.get(task_key, task_key)
            return run.dask_keys(key)[-1] if key in run.graph else key

        try:
            results = run.wait(on_done=on_done, timeout=timeout)
        except BaseException:
            with contextlib.suppress(Exception):  # the compute's own error comes first
                taskwarnings.reemit(self, run.graph_id, dask_key)
            raise
        taskwarnings.reemit(self, run.graph_id, dask_key)
        return results

    def persist(self: Controller, collections: Sequence[Any], optimize_graph: bool = True, **kwargs: Any) -> list[Any]:
        """Start computing collections and return them at once, backed by futures in Redis.

        Called by ``dask.persist(x, scheduler=rush)``; later computes reuse the results.
        DataFrame shuffles are task-based unless you chose a method (see :mod:`rush_dask.dask.shuffle`).

        >>> (y,) = dask.persist(x, scheduler=rush)      # doctest: +SKIP
        """
        from dask.base import collections_to_expr

        from .graph import flat_keys

        options = self._graph_options(kwargs)
        with task_shuffle():
            expr = collections_to_expr(list(collections), optimize_graph).optimize()
        keys = expr.__dask_keys__()
        if len(collections) == 1 and len(keys) != 1:
            keys = [keys]
        futures = self._submit_graph(expr, flat_keys(keys), **options)
        return [
            rebuild({k: futures[k] for k in flat_keys(ks)}, *args)
            for (rebuild, args), ks in zip((c.__dask_postpersist__() for c in collections), keys)
        ]
