"""Graph nodes that run in the client process.

Most nodes of a Dask graph run on the workers. A few must run where the
objects they change or take live, in the client's own process: a worker
would change its unpickled copy, and the client's object would stay as it
was (``da.store(x, numpy_target)`` on any scheduler whose workers are other
processes silently loses the data). The rule, decided per node of the Dask
graph when the graph is built:

1. **Stores into a target that lives in the client.** A node that calls
   Dask's ``load_store_chunk`` (the ``store-map`` layer of ``da.store``)
   runs on the client unless its target is a known out-of-core store (a
   zarr, h5py, TileDB, netCDF4, h5netcdf, TensorStore or xarray object,
   which a worker can write to itself). A numpy array, a memory map or any
   other object is written in place by the client. A target the graph
   computes (a ``Delayed`` target) is made on the client too, and written
   there; a ``Delayed`` holding a known out-of-core store is written by the
   workers.
2. **Nodes that take a lock that only holds in the client** (a
   ``lock=`` argument, as Dask's getters and store functions take): any
   lock other than Dask's plain ``SerializableLock`` (which is what
   ``lock=True`` gives, and which excludes nothing across processes
   anyway) — a ``threading.Lock``, a ``multiprocessing`` lock, a lock class
   of one's own.
3. **Nodes that cannot be pickled** (a lock, a generator, an open file in
   the node). Found while the graph is serialized for Redis, which happens
   anyway: no extra pickling pass. When the node is data (a ``DataNode``),
   the nodes that take it as input run on the client as well: the value
   cannot leave the process.

Everything else runs on the workers as before; a graph with no client node
takes exactly the path it took before.

How a client node runs
----------------------
It is a Redis task like the others (same counters, same scripts), queued on
a resource queue that no worker pops (``@client:<graph>=1``). The client
takes the ready ones off that queue while it follows the graph, runs them in
a thread pool (inputs from Redis, from its host's store, or — for inputs
that are client nodes themselves — the very objects in its memory), and
settles each with the script ``settle_on_client``, which does what a
worker's settle does: the result is stored (in Redis when small, held on the
client's host when large, as data the client embeds in a graph is), the
inputs lose a reference, dependents on workers are queued, errors are
retried or fail the node and its dependents. A result that only the client
needs (no worker takes it) is not written at all.

A compute follows its client nodes as it follows the rest. A persist (or a
``submit``) whose graph has client nodes returns once the client ran them,
as ``dask.persist`` with a local scheduler does. When a compute fails, the
client nodes already running finish before the error is raised, and none
starts after it: nothing is left half-written by the client.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Hashable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from dask._task_spec import Alias, DataNode, GraphNode, Task, TaskRef

from ..core.constants import TaskState
from ..core.dataplane import OFFLOAD_MIN
from ..core.errors import PayloadTooLargeError
from ..core.scripts import Outcome
from ..core.serialize import dumps

if TYPE_CHECKING:
    from .graph import GraphRun

logger = logging.getLogger("rush_dask")

# Resource name of the queues client nodes wait on: no worker has it, so no worker pops them.
CLIENT_RESOURCE = "@client"

# Top-level modules of out-of-core stores: a target of theirs is written by the workers.
OUT_OF_CORE_MODULES = frozenset({"zarr", "h5py", "tiledb", "netCDF4", "h5netcdf", "tensorstore", "xarray"})


def client_spec(graph_id: str) -> str:
    """The resource spec of a graph's client nodes (their queue is ``rq:<spec>``)."""
    return f"{CLIENT_RESOURCE}:{graph_id}=1"


def _dask_functions() -> tuple[Any, frozenset[Any], Any, Any]:
    """(load_store_chunk, the functions that take a lock, _execute_subgraph, SerializableLock);
    (None, empty, ...) while ``dask.array`` is not imported: no graph can hold its tasks then."""
    import sys

    from dask._task_spec import _execute_subgraph
    from dask.utils import SerializableLock

    core = sys.modules.get("dask.array.core")
    if core is None:
        return None, frozenset(), _execute_subgraph, SerializableLock
    locking = frozenset(
        getattr(core, name)
        for name in ("getter", "getter_nofancy", "getter_inline", "load_store_chunk", "load_chunk")
        if hasattr(core, name)
    )
    return core.load_store_chunk, locking, _execute_subgraph, SerializableLock


def _tasks(
    node: Any, scope: Mapping[Hashable, Any], execute_subgraph: Any, wanted: frozenset[Any]
) -> Iterator[tuple[Task, Mapping[Hashable, Any]]]:
    """The tasks of ``wanted`` functions in ``node``: the node itself, or the tasks of a fused
    subgraph (Dask's blockwise fusion), each with the map from the placeholder keys of its
    subgraph to what the fused node passes for them."""
    if not isinstance(node, Task):
        return
    if node.func in wanted:
        yield node, scope
        return
    args = node.args
    if node.func is execute_subgraph and len(args) >= 3 and isinstance(args[0], Mapping):
        inner = args[0]
        if not any(isinstance(t, Task) and (t.func in wanted or t.func is execute_subgraph) for t in inner.values()):
            return  # the common case: nothing to look at more closely
        inkeys, outer = args[2], args[3:]
        inner_scope = {k: _through(v, scope) for k, v in zip(inkeys, outer)}
        for task in inner.values():
            yield from _tasks(task, inner_scope, execute_subgraph, wanted)


def _through(arg: Any, scope: Mapping[Hashable, Any]) -> Any:
    """``arg`` with a reference to a placeholder of a fused subgraph replaced by what it stands for."""
    seen = 0
    while isinstance(arg, TaskRef) and arg.key in scope and seen < 100:
        arg, seen = scope[arg.key], seen + 1
    return arg


def _is_client_lock(lock: Any, serializable_lock: Any) -> bool:
    if lock is None or isinstance(lock, bool) or not (hasattr(lock, "acquire") and hasattr(lock, "release")):
        return False
    return type(lock) is not serializable_lock


def _is_out_of_core(target: Any) -> bool:
    return type(target).__module__.split(".", 1)[0] in OUT_OF_CORE_MODULES


def client_keys(graph: Mapping[Hashable, GraphNode]) -> set[Hashable]:
    """The keys of ``graph`` whose nodes run on the client by rules 1 and 2 (see the module).

    Only Dask's array getters and store functions are looked at (a node that is one, or a
    fused subgraph holding one): for other graphs this is one test per node.

    >>> import numpy as np, dask.array as da
    >>> from dask._task_spec import convert_legacy_graph
    >>> stored = da.store(da.ones(4, chunks=2), np.zeros(4), compute=False)
    >>> graph = convert_legacy_graph(dict(stored.__dask_graph__()))
    >>> sorted(str(key[0])[:9] for key in client_keys(graph))
    ['store-map', 'store-map']
    """
    load_store_chunk, locking, execute_subgraph, serializable_lock = _dask_functions()
    keys: set[Hashable] = set()
    if not locking:
        return keys
    for key, node in graph.items():
        # Inline, the cheap test that rules out almost every node (about 0.5 µs per node of a
        # fused array graph; generators here cost twice as much).
        if not isinstance(node, Task):
            continue
        func = node.func
        if func is execute_subgraph:
            inner = node.args[0] if node.args else None
            if not isinstance(inner, Mapping) or not any(
                isinstance(t, Task) and (t.func in locking or t.func is execute_subgraph) for t in inner.values()
            ):
                continue
        elif func not in locking:
            continue
        for task, scope in _tasks(node, {}, execute_subgraph, locking):
            lock = _through(task.kwargs.get("lock"), scope)
            if isinstance(lock, DataNode):
                lock = lock.value
            if _is_client_lock(lock, serializable_lock):
                keys.add(key)
            if task.func is load_store_chunk:
                keys.update(_store_placement(key, task, scope, graph))
    return keys


def _store_placement(
    key: Hashable, task: Task, scope: Mapping[Hashable, Any], graph: Mapping[Hashable, GraphNode]
) -> tuple[Hashable, ...]:
    """The keys that run on the client for one store task in node ``key`` (rule 1)."""
    out = _through(task.args[1] if len(task.args) > 1 else task.kwargs.get("out"), scope)
    if isinstance(out, (TaskRef, Alias)):
        ref = out.target if isinstance(out, Alias) else out.key
        producer = graph.get(ref)
        if producer is None:  # a future of an earlier graph: a copy is all a worker can have
            return ()
        # A target the graph makes (a Delayed): made on the client and written there, unless
        # it is data that is a known out-of-core store.
        if isinstance(producer, DataNode) and _is_out_of_core(producer.value):
            return ()
        return (key, ref)
    if isinstance(out, DataNode):
        return () if _is_out_of_core(out.value) else (key,)
    if isinstance(out, GraphNode):  # computed inside this very node
        return (key,)
    return () if _is_out_of_core(out) else (key,)


class ClientNodes:
    """The client nodes of one graph run: takes them off their queue when ready, runs them in
    a thread pool, settles them in Redis (see the module)."""

    def __init__(self, run: GraphRun, task_keys: set[str]):
        self.run = run
        self.rush = run.rush
        self.tasks = task_keys  # Redis task keys run here
        self.spec = client_spec(run.graph_id)
        self.queue = run.rush.keys.resource_queue(self.spec)
        self.by_task_key = {task_key: key for key, task_key in run.task_keys.items()}
        self.values: dict[str, Any] = {}  # results of client nodes, the very objects
        self.dependents: Mapping[Hashable, list[str]] = {}  # task keys by Dask key, set by GraphRun.submit
        self.pending = set(task_keys)  # not settled yet
        # Runs of each node under way: a retried node is taken again while its failed run
        # is still settling, so a node may briefly have two.
        self.running: dict[str, int] = {}
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._stopped = False
        self.failure: BaseException | None = None  # settling a node failed (Redis unreachable)

    # ------------------------------------------------------------- taking and running
    def pump(self, block: float = 0.0) -> int:
        """Start the client nodes that are ready (waiting ``block`` s for a first one); returns how many.
        Raises what kept a node from being settled in Redis (the node would never finish)."""
        if self.failure is not None:
            raise self.failure
        client = self.rush.client
        if block > 0:
            first = client.bzpopmin(self.queue, timeout=block)
            popped = [first[1]] if first else []
            if popped:
                popped += [item for item, _ in client.zpopmin(self.queue, 10_000)]
        else:
            popped = [item for item, _ in client.zpopmin(self.queue, 10_000)]
        started = 0
        for raw in popped:
            task_key = raw.decode() if isinstance(raw, bytes) else raw
            with self._lock:
                if self._stopped or task_key not in self.pending:
                    continue
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(thread_name_prefix="rush-client-node")
                self.running[task_key] = self.running.get(task_key, 0) + 1
                self._pool.submit(self._run_and_settle, task_key)
            started += 1
        return started

    def _run_and_settle(self, task_key: str) -> None:
        try:
            outcome, holder = self._run(task_key)
        except BaseException as exc:  # the node's error, sent as a worker's would be
            try:
                blob = dumps(exc, self.rush.secret, self.rush._where(task_key, "exception"))
            except Exception:
                blob = b""
            outcome, holder = (
                Outcome(task_key, "error", f"{type(exc).__name__}: {exc}", traceback.format_exc(), blob),
                "",
            )
        try:
            notes = self.rush.scripts.settle_on_client(holder or f"client:{self.run.graph_id}", [outcome])
        except BaseException as exc:
            self.failure = exc
            raise
        finally:
            with self._lock:
                left = self.running.pop(task_key, 1) - 1
                if left:
                    self.running[task_key] = left
        if notes and notes[0] in ("finished", "failed", "dropped"):
            with self._lock:
                self.pending.discard(task_key)

    def _run(self, task_key: str) -> tuple[Outcome, str]:
        """Run one client node; (its outcome for Redis, the holder id when its result is held)."""
        run = self.run
        key = self.by_task_key[task_key]
        node = run.graph[key]
        values, remote = {}, []
        for dep in node.dependencies:
            dep_task = run.task_key(dep)
            if dep_task in self.values:
                values[dep] = self.values[dep_task]
            else:
                remote.append((dep, dep_task))
        if remote:
            for (dep, _), value in zip(remote, self.rush.plane.read_many([t for _, t in remote])):
                values[dep] = value
        result = node(values)
        self.values[task_key] = result
        if not self._needed_in_redis(task_key):
            return Outcome(task_key, "finished", b""), ""  # only this client reads it: kept here
        return self._encode(task_key, result)

    def _needed_in_redis(self, task_key: str) -> bool:
        """Whether a worker or a future reads this client node's result from Redis."""
        if not self.run.notify and self.by_task_key[task_key] in self.run.outputs:
            return True
        return any(d not in self.tasks for d in self.dependents.get(self.by_task_key[task_key], ()))

    def _encode(self, task_key: str, value: Any) -> tuple[Outcome, str]:
        from dask.sizeof import sizeof

        rush = self.rush
        if sizeof(value) >= OFFLOAD_MIN // 2:
            held = rush.plane.hold(task_key, value)  # on this host's store, when workers share it
            if held is not None:
                holder, _, path, nbytes = held.split("\t")
                return Outcome(task_key, "held", path, nbytes), holder
        payload = dumps(value, rush.secret, rush._where(task_key, "ys"))
        if len(payload) > rush.max_payload_bytes:
            raise PayloadTooLargeError(
                f"the result of client node {self.by_task_key[task_key]!r} is {len(payload):,} bytes "
                f"serialized, over max_payload_bytes={rush.max_payload_bytes:,}"
            )
        return Outcome(task_key, "finished", payload), ""

    # ------------------------------------------------------------- following
    def drain(self) -> None:
        """Run the client nodes until each is settled or failed (a persist or a submit waits here)."""
        check_at = time.monotonic() + 0.5
        while self.pending:
            self.pump(block=0.1)
            if time.monotonic() >= check_at:
                self._forget_failed()
                check_at = time.monotonic() + 0.5
        self.close()

    def _forget_failed(self) -> None:
        """Stop waiting for client nodes that failed (an input failed) or are gone (released)."""
        with self._lock:
            waiting = [k for k in self.pending if k not in self.running]
        if not waiting:
            return
        pipe = self.rush.client.pipeline(transaction=False)
        for task_key in waiting:
            pipe.hget(self.rush.keys.task(task_key), "state")
        for task_key, state in zip(waiting, pipe.execute()):
            if state is None or state.decode() in (TaskState.FAILED, TaskState.FINISHED):
                with self._lock:
                    self.pending.discard(task_key)

    def close(self, wait: bool = True) -> None:
        """Start no client node any more; those running finish first (nothing left half-written)."""
        with self._lock:
            self._stopped = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=True)
        try:
            self.rush.client.srem(self.rush.keys.resource_queues, self.spec)
            self.rush.client.delete(self.queue)
        except Exception:  # Redis gone: the spec is harmless (no worker has the resource)
            logger.debug("could not remove the client queue %s", self.queue, exc_info=True)
