"""Running a Dask graph as Redis tasks.

How a graph runs
----------------
The client converts the graph (``convert_legacy_graph``) and numbers its
nodes. Node ``i`` of graph ``G`` becomes the Redis task ``G.i``: a task hash
like any Rush task, with the pickled node (``Task``, ``DataNode`` or
``Alias``) and a map from each input's Dask key to its task key. It also
carries two counters:

* ``waiting``: inputs not finished yet. At 0 the node is queued, with score
  ``-priority * 1e12 + (graph offset + dask.order rank)``: user priority
  first, then submission order across graphs, then ``dask.order``.
* ``refs``: who still needs its result: dependents that have not finished,
  plus one for the client if it is an output (or a future).

The graph is written in batches, inputs before the nodes that use them
(``dask.order`` is a topological order), and workers start on the first
batch while the client builds the next. From then on the client is not in
the loop: a worker pops a node (its small inputs come in the same reply,
large ones from Redis; either is taken unpickled from the worker's own cache
when it has it), runs ``node(inputs)``, and one
script stores the result, decrements ``refs`` of the inputs (deleting the
results nobody needs any more), decrements ``waiting`` of the dependents
(queueing those that are ready), tells the client through the list
``gdone:G`` — and pops the next node.

The client blocks on ``gdone:G`` (BLMPOP), runs the Dask callbacks, reads the
outputs and releases them; when the last node of ``G`` is deleted the
graph's bookkeeping goes too, so nothing of ``G`` is left in Redis. The first
node that fails (after its retries) fails its dependents too; the client
cancels the rest of the graph and re-raises the original exception.

Before any of this, small subtrees are fused into one Redis task each and,
for a compute, outputs that no node needs are bundled a few hundred to a
task (:mod:`rush_dask.dask.fusion`): a task's key stands for all the Dask keys
it computes, and a bundle's result is the tuple the client splits.

Inputs that are not in the graph are results of earlier graphs (persisted
collections, futures): the new graph holds a reference on them while it
needs them.

A few nodes run in the client instead of on a worker: stores into objects of
the client, nodes that take a lock of the client, nodes that cannot be
pickled. They are Redis tasks like the others, on a queue no worker pops;
the client runs and settles them while it follows the graph
(:mod:`rush_dask.dask.clientnodes`).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any, cast

from dask._task_spec import DataNode, GraphNode, convert_legacy_graph
from dask.core import flatten
from dask.order import order

from ..core import constants as C
from ..core.constants import TaskState
from ..core.dataplane import OFFLOAD_MIN, RESULT_FIELDS
from ..core.errors import ComputeCancelledError, KilledWorker, PayloadTooLargeError, TaskFailedError
from ..core.scripts import NewNode
from ..core.serialize import dumps, loads
from ..core.waiting import Patience
from .clientnodes import ClientNodes, client_keys, client_spec
from .fusion import MAX_GROUP, TASKS_PER_WORKER, bundle_limit, bundle_outputs, fuse_subtrees, group_limit
from .taskconfig import with_config

if TYPE_CHECKING:
    from dask.typing import Key

    from .futures import RushFuture
    from .protocols import Controller

logger = logging.getLogger("rush_dask")

_BATCH = 250  # nodes per push call: workers start on the first batch while the rest is built


def to_task_graph(dsk: Any) -> tuple[dict[Hashable, GraphNode], dict[Hashable, Any], dict[str, dict[Any, Any]]]:
    """(graph nodes, futures standing for keys, annotations) of an expression or a dict graph."""
    from .futures import RushFuture

    annotations: dict[str, dict[Any, Any]] = {}
    if hasattr(dsk, "__dask_graph__"):
        get_annotations = getattr(dsk, "__dask_annotations__", None)
        annotations = dict(get_annotations() or {}) if get_annotations else {}
        dsk = dsk.__dask_graph__()
    raw = dict(dsk)
    futures = {k: v for k, v in raw.items() if isinstance(v, RushFuture)}
    graph = convert_legacy_graph({k: v for k, v in raw.items() if k not in futures})
    return graph, futures, annotations


def _resource_spec(resources: Mapping[str, float] | None) -> str:
    if not resources:
        return ""
    if not isinstance(resources, Mapping):
        raise TypeError(f"resources must be a dict like {{'GPU': 1}}, got {resources!r}")
    return ",".join(f"{name}={amount:g}" for name, amount in sorted(resources.items()))


def raise_node_error(rush: Controller, task_key: str, dask_key: Any) -> None:
    """Re-raise the exception a node failed with, its remote traceback attached."""
    error, tb, blob = rush.client.hmget(rush.keys.task(task_key), "error", "traceback", "exception")
    text = error.decode() if error else "unknown error"
    remote_tb = tb.decode() if tb else ""
    exc: BaseException | None = None
    if blob:
        try:
            exc = loads(blob, rush.secret, rush._where(task_key, "exception"))
        except Exception:  # unpicklable here, or not signed with the network's secret
            exc = None
    if exc is None:
        cls = KilledWorker if "lost" in text else TaskFailedError
        exc = cls(f"task {dask_key!r} failed: {text}")
    exc.remote_traceback = remote_tb  # type: ignore[attr-defined]
    if remote_tb and hasattr(exc, "add_note"):
        exc.add_note(f"Remote traceback of task {dask_key!r}:\n{remote_tb.rstrip()}")
    raise exc


class GraphRun:
    """One graph pushed to Redis: submit it, follow it, cancel it."""

    def __init__(
        self,
        rush: Controller,
        dsk: Any,
        outputs: list[Hashable],
        *,
        notify: bool,
        priority: int = 0,
        retries: int = 0,
        resources: Mapping[str, float] | None = None,
        max_lost: int = C.DEFAULT_MAX_LOST,
        fuse: bool | int = True,
        lease: float = C.DEFAULT_GRAPH_LEASE,
        config: Mapping[str, Any] | None = None,
        done_list: str | None = None,
    ):
        if isinstance(lease, bool) or not isinstance(lease, (int, float)) or not lease > 0:
            raise ValueError(f"lease must be a positive number of seconds, got {lease!r}")
        self.rush = rush
        # A compute's client renews this lease while it follows the run; if it stops
        # (dies, hangs), workers cancel the graph. Futures (persist, submit) are held under
        # the client's own lease instead (see rush_dask.dask.lease): their graph has none.
        self.lease = float(lease) if notify else 0.0
        self.owner = "" if notify else rush._completions.client_id
        self.owner_lease = 0.0 if notify else rush.client_lease.hold(lease)
        self.dask_graph, futures, self.annotations = to_task_graph(dsk)
        self.notify = notify
        self.done_list = done_list  # futures: the client's list fdone:<id> (see completions)
        self.graph_id = uuid.uuid4().hex[:12]
        self.outputs = list(dict.fromkeys(outputs))
        # A compute's finalize nodes (the concatenation of an array's chunks into the one
        # array returned) run here, over inputs the client maps from its host; on a worker,
        # the whole result would be written once more for the client to read.
        self.on_client = self._finalize_on_client() if notify else {}
        self.external: dict[Hashable, RushFuture] = dict(futures)
        self._find_external_inputs()
        self.defaults = {"priority": priority, "retries": retries, "resources": resources}
        # Nodes that must run in this process (see rush_dask.dask.clientnodes): by the graph's
        # contents here, and those that cannot be pickled once submit serializes them.
        self.client_keys = client_keys(self.dask_graph)
        self.max_lost = max_lost
        self.config = config  # the client's dask.config, applied around each node (taskconfig)
        # The Redis tasks: the Dask graph with small subtrees fused and, when the client
        # reads the outputs itself, independent outputs bundled (see rush_dask.dask.fusion).
        self.graph, self.groups, self.bundles = self._fuse(fuse, bundle=notify)
        self.in_bundle = {key: (bundle, i) for bundle, members in self.bundles.items() for i, key in enumerate(members)}
        self.task_keys = {key: f"{self.graph_id}.{i}" for i, key in enumerate(self.graph)}
        self.born_finished: set[str] = set()  # large DataNodes the client holds (see submit)
        self.client_nodes: ClientNodes | None = None  # set by submit when the graph has client nodes

    def _fuse(
        self, fuse: bool | int, bundle: bool
    ) -> tuple[dict[Hashable, GraphNode], dict[Hashable, list[Hashable]], dict[Hashable, list[Hashable]]]:
        """(Redis-task graph, Dask keys of each fused task, outputs of each bundle)."""
        if isinstance(fuse, bool) or fuse is None:
            cap = None if fuse else 1
        elif isinstance(fuse, int) and fuse >= 1:
            cap = fuse
        else:
            raise ValueError(f"fuse must be True, False or the largest number of nodes per task, got {fuse!r}")
        # With fuse=True both limits are 1 below this size whatever the worker count:
        # skip the Redis call.
        if cap == 1 or (cap is None and len(self.dask_graph) < 2 * TASKS_PER_WORKER):
            return dict(self.dask_graph), {}, {}
        n_workers = max(self.rush.n_running_workers, os.cpu_count() or 1)
        options = [self._per_node(name) for name in ("priority", "resources", "retries")]

        def options_of(key: Hashable) -> tuple[str, ...]:
            return (*(repr(option(key)) for option in options), "client" if key in self.client_keys else "")

        # Large data embedded in the graph stays a node of its own: the client writes it to
        # its host's store (see submit) instead of sending it inside a consumer's task.
        from dask.sizeof import sizeof

        large_data = [
            key
            for key, node in self.dask_graph.items()
            if isinstance(node, DataNode) and sizeof(node.value) >= OFFLOAD_MIN
        ]
        graph, groups = fuse_subtrees(
            self.dask_graph,
            keep=[*self.outputs, *large_data],
            options_of=options_of,
            limit=cap or group_limit(len(self.dask_graph), n_workers),
        )
        if not bundle:
            return graph, groups, {}
        limit = min(cap or MAX_GROUP, bundle_limit(len(self.outputs), n_workers))
        graph, bundles = bundle_outputs(
            graph, self.outputs, limit, prefix=f"rush-bundle-{self.graph_id}", options_of=options_of
        )
        for bundle_key, members in bundles.items():
            groups[bundle_key] = [k for member in members for k in groups.pop(member, [member])]
        return graph, groups, bundles

    def _finalize_on_client(self) -> dict[Hashable, GraphNode]:
        """Take the outputs that finalize a collection out of the graph; their inputs become outputs."""
        from dask.utils import key_split

        local = {
            key: self.dask_graph[key]
            for key in self.outputs
            if key in self.dask_graph
            and key_split(key).startswith("finalize")  # also dask.compute's
            and self.dask_graph[key].dependencies
            and all(dep in self.dask_graph for dep in self.dask_graph[key].dependencies)
        }
        for key in local:
            del self.dask_graph[key]
        if local:
            inputs = [dep for node in local.values() for dep in node.dependencies]
            self.outputs = list(dict.fromkeys([*(k for k in self.outputs if k not in local), *inputs]))
        return local

    def dask_keys(self, key: Hashable) -> list[Hashable]:
        """The keys of the Dask graph that the task ``key`` computes (more than one if fused)."""
        return self.groups.get(key, [key])

    def _find_external_inputs(self) -> None:
        needed = {dep for node in self.dask_graph.values() for dep in node.dependencies}
        needed.update(self.outputs)
        for key in needed:
            if key in self.dask_graph or key in self.external:
                continue
            future = self.rush._futures_by_key.get(key)
            if future is None:
                raise KeyError(
                    f"the graph needs key {key!r}, which is neither in the graph nor the key of "
                    "a live rush future (was it released?)"
                )
            self.external[key] = future

    def task_key(self, key: Hashable) -> str:
        """The Redis task that holds the result of ``key`` (an output may be in a bundle)."""
        if key in self.graph:
            return self.task_keys[key]
        if key in self.in_bundle:
            return self.task_keys[self.in_bundle[key][0]]
        return self.external[key].task_key

    def _per_node(self, name: str) -> Callable[[Hashable], Any]:
        """The value of option ``name`` for a node: its annotation, else the compute keyword."""
        default = self.defaults[name]
        values = self.annotations.get(name)
        if not isinstance(values, Mapping) or not values:
            return lambda key: default
        return lambda key: values.get(key, default)

    def submit(self) -> None:
        """Write every node to Redis, inputs first, in batches that workers start on at once."""
        graph, task_keys = self.graph, self.task_keys
        self._check_external_inputs()
        dependents: dict[Hashable, list[str]] = {key: [] for key in graph}
        for key, node in graph.items():
            for dep in node.dependencies:
                if dep in graph:
                    dependents[dep].append(task_keys[key])
        if any(dependents.values()):
            # dask.order types its keys as dask.typing.Key; ours are the same keys, typed Hashable
            ranks: dict[Hashable, Any] = {
                key: getattr(rank, "priority", rank)
                for key, rank in order(cast("Mapping[Key, GraphNode]", graph)).items()
            }
        else:  # no edges: any order is dask.order's order, and computing it is costly
            ranks = {key: i for i, key in enumerate(graph)}
        outputs = {*self.outputs, *self.bundles}  # the client holds one reference on each
        priority_of, resources_of, retries_of = (self._per_node(name) for name in ("priority", "resources", "retries"))
        base = self.rush.client.incrby(self.rush.keys.seq, max(len(graph), 1)) - len(graph)
        notify = "1" if self.notify else (self.done_list or "0")
        on_client = (
            {task_keys[key] for key in graph if any(k in self.client_keys for k in self.dask_keys(key))}
            if self.client_keys
            else set()
        )

        def push(batch: list[NewNode]) -> None:
            self.rush.scripts.push_graph(
                self.graph_id,
                batch,
                n_nodes=len(graph),
                notify=notify,
                lease=self.lease,
                owner=self.owner,
                owner_lease=self.owner_lease,
            )

        batch: list[NewNode] = []
        # Inputs before the nodes that use them (dask.order is topological), in batches
        # that are sent as soon as they are built.
        for key in sorted(graph, key=ranks.__getitem__):
            node = graph[key]
            deps = {dep: self.task_key(dep) for dep in node.dependencies}
            held, payload = None, b""
            if task_keys[key] not in on_client:
                try:
                    held = self.rush.plane.hold(task_keys[key], node.value) if isinstance(node, DataNode) else None
                    if held is not None:  # written to this host's store: workers map it, nothing runs it
                        self.born_finished.add(task_keys[key])
                    else:
                        payload = dumps(
                            (with_config(node, self.config), deps),
                            self.rush.secret,
                            self.rush._where(task_keys[key], "xs"),
                        )
                except TypeError:  # cannot be pickled: it runs here (see rush_dask.dask.clientnodes)
                    on_client.add(task_keys[key])
                    if isinstance(node, DataNode):  # and so does what takes the value itself
                        on_client.update(dependents[key])
            if task_keys[key] in on_client:
                self.client_nodes = self.client_nodes or ClientNodes(self, on_client)
            if len(payload) > self.rush.max_payload_bytes:
                self.cancel()  # the batches already sent
                raise PayloadTooLargeError(
                    f"task {key!r} of the graph is {len(payload):,} bytes serialized, over "
                    f"max_payload_bytes={self.rush.max_payload_bytes:,}: load large data inside "
                    "a task (dask.delayed) instead of embedding it in the graph"
                )
            batch.append(
                NewNode(
                    task_keys[key],
                    payload,
                    refs=len(dependents[key]) + (key in outputs),
                    deps=list(deps.values()),
                    dependents=dependents[key],
                    score=-int(priority_of(key)) * 1e12 + base + ranks[key],
                    resources=(
                        client_spec(self.graph_id) if task_keys[key] in on_client else _resource_spec(resources_of(key))
                    ),
                    max_retries=int(retries_of(key) or 0),
                    max_lost=self.max_lost,
                    held=held or "",
                    mine=bool(self.owner) and key in outputs,
                )
            )
            if len(batch) == _BATCH:
                push(batch)
                batch = []
        if batch:
            push(batch)
        if self.client_nodes is not None:
            self.client_nodes.dependents = dependents
            self.client_nodes.pending = set(on_client)
        # Outputs that are futures of earlier graphs: a compute holds one more reference on
        # each until it has read them, recorded under the client's lease (it goes if the
        # client dies) and taken once (a repeat after a lost reply takes nothing twice). A
        # persist returns those very futures, which hold their references already.
        held_keys = list(dict.fromkeys(self.external[k].task_key for k in self._external_outputs()))
        if held_keys and self.notify:
            rush = self.rush
            gone = rush.scripts.hold(
                held_keys,
                client_id=rush._completions.client_id,
                request=uuid.uuid4().hex,
                lease=rush.client_lease.hold(),
            )
            if gone:  # released since _check_external_inputs: nothing of this compute may stay
                self.cancel()
                rush._completions.release_now([k for k in held_keys if k not in gone])
                raise KeyError(f"the result of {gone[0]!r} was released; persist or submit it again")

    def _check_external_inputs(self) -> None:
        if not self.external:
            return
        pipe = self.rush.client.pipeline(transaction=False)
        futures = list(self.external.items())
        for _, future in futures:
            pipe.hget(self.rush.keys.task(future.task_key), "state")
        for (key, future), state in zip(futures, pipe.execute()):
            if state is None:
                raise KeyError(f"the result of {key!r} was released; persist or submit it again")
            if state.decode() == TaskState.FAILED:
                raise_node_error(self.rush, future.task_key, key)

    def wait(
        self, *, on_done: Callable[[Hashable], None] = lambda key: None, timeout: float | None = None
    ) -> dict[Hashable, Any]:
        """Follow the run until every node finished; returns the outputs' values."""
        rush = self.rush
        by_task_key = {task_key: key for key, task_key in self.task_keys.items()}
        done_key = rush.keys.graph_done(self.graph_id)
        external = self._external_outputs()
        not_here = set(external)
        outputs_here = [k for k in self.outputs if k not in not_here]
        unseen = set(by_task_key) - self.born_finished
        for task_key in self.born_finished:
            for key in self.dask_keys(by_task_key[task_key]):
                on_done(key)
        patience = Patience(timeout, rush._health_check)
        idle_since, resync_after = time.monotonic(), 1.0
        renew_at = time.monotonic() + self.lease / 4
        block = min(0.2, self.lease / 4) if self.lease else 0.2  # renewals must not wait longer
        client_nodes = self.client_nodes
        try:
            if client_nodes is not None:
                client_nodes.pump()
            while unseen:
                if time.monotonic() >= renew_at:
                    self._renew_lease()
                    renew_at = time.monotonic() + self.lease / 4
                reply = rush.client.blmpop(block, 1, done_key, direction="LEFT", count=10_000)
                items = [item.decode() for item in reply[1]] if reply else []
                if items:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > resync_after:
                    # A pop whose reply was lost (Redis restarted meanwhile) took its items
                    # with it: read the states instead, less often while nothing changes.
                    items = self._done_by_state(unseen)
                    idle_since = time.monotonic()
                    resync_after = 1.0 if items else min(resync_after * 2, 30.0)
                if client_nodes is not None:  # a node finished: client nodes may be ready now
                    client_nodes.pump()
                for item in items:
                    if item.startswith("!"):
                        raise_node_error(rush, item[1:], by_task_key.get(item[1:], item[1:]))
                    if item in unseen:  # an item can come twice: from the list and from its state
                        unseen.discard(item)
                        for key in self.dask_keys(by_task_key[item]):
                            on_done(key)
                patience.check(lambda: f"{len(unseen)} of {len(self.graph)} tasks not done")
        except BaseException:
            self.cancel()
            self._release(external)  # the hold taken on earlier futures in submit()
            raise
        if client_nodes is not None:
            client_nodes.close()
        try:
            results = self._read_outputs(outputs_here)
            if external:
                results.update(zip(external, rush.gather([self.external[k] for k in external])))
        finally:  # even when an earlier future failed or a result cannot be read
            self._release(self.outputs)
        for key, node in self.on_client.items():
            results[key] = node({dep: results[dep] for dep in node.dependencies})
            on_done(key)
        return results

    def _renew_lease(self) -> None:
        if not self.rush.scripts.renew_lease(self.graph_id, lease=self.lease):
            raise ComputeCancelledError(
                f"the workers cancelled this compute: its client did not renew the graph's "
                f"lease for {self.lease:g} s (was the process paused, or cut off from Redis?); "
                "compute it again, with a longer compute(..., lease=) if pauses are expected"
            )

    def _external_outputs(self) -> list[Hashable]:
        """Outputs that are futures of earlier graphs (not computed by this one)."""
        return [k for k in self.outputs if k not in self.graph and k not in self.in_bundle]

    def _read_outputs(self, keys: list[Hashable]) -> dict[Hashable, Any]:
        """The values of outputs of this graph; a bundle's result is read once and split."""
        task_keys = list(dict.fromkeys(self.task_key(k) for k in keys))
        values = dict(zip(task_keys, self._read(task_keys)))
        results = {}
        for key in keys:
            value = values[self.task_key(key)]
            results[key] = value[self.in_bundle[key][1]] if key in self.in_bundle else value
        return results

    def _release(self, keys: list[Hashable]) -> None:
        """Drop the client's reference on these outputs (results nobody else needs are deleted).
        Those on futures of earlier graphs were taken under the client's lease (see submit)."""
        external = set(self._external_outputs())
        # The outputs in one bundle share one reference.
        own = list(dict.fromkeys(self.task_key(k) for k in keys if k not in external))
        held = list(dict.fromkeys(self.task_key(k) for k in keys if k in external))
        if own:
            self.rush.scripts.release(own)
        if held:
            self.rush._completions.release_now(held)

    def _done_by_state(self, task_keys: set[str]) -> list[str]:
        """Nodes among ``task_keys`` that are done, as ``wait`` reads them from ``gdone``:
        failed ones first (``!`` + key); a node already deleted finished and was used up."""
        keys = list(task_keys)
        pipe = self.rush.client.pipeline(transaction=False)
        for task_key in keys:
            pipe.hget(self.rush.keys.task(task_key), "state")
        states = [raw.decode() if raw is not None else None for raw in pipe.execute()]
        failed = ["!" + k for k, state in zip(keys, states) if state == TaskState.FAILED]
        return failed + [k for k, state in zip(keys, states) if state in (TaskState.FINISHED, None)]

    def _read(self, task_keys: list[str]) -> list[Any]:
        """Values of finished nodes: from Redis, or from the host that holds them (see dataplane);
        those of client nodes are the objects the client made."""
        if self.client_nodes is not None and any(k in self.client_nodes.values for k in task_keys):
            here = self.client_nodes.values
            elsewhere = [k for k in task_keys if k not in here]
            read = dict(zip(elsewhere, self._read(elsewhere))) if elsewhere else {}
            return [here[k] if k in here else read[k] for k in task_keys]
        pipe = self.rush.client.pipeline(transaction=False)
        for task_key in task_keys:
            pipe.hmget(self.rush.keys.task(task_key), *RESULT_FIELDS)
        rows = pipe.execute()
        if any(row[0] is None and row[3] is None for row in rows):
            self._renew_lease()  # raises if the compute was cancelled: the likely cause
            raise ComputeCancelledError("a result of this compute is gone from Redis (was the network reset?)")
        return [self.rush.plane.read(k, row) for k, row in zip(task_keys, rows)]

    def cancel(self) -> None:
        """Delete what is left of this graph (queued nodes, late results are dropped)."""
        if self.client_nodes is not None:  # the client nodes running finish first, no new one starts
            self.client_nodes.close()
        keys = list(self.task_keys.values())
        for start in range(0, max(len(keys), 1), 10_000):
            self.rush.scripts.cancel_graph(self.graph_id, keys[start : start + 10_000])

    def futures(self) -> dict[Hashable, RushFuture]:
        """One future per output (for persist and submit)."""
        from .futures import RushFuture

        out = {}
        for key in self.outputs:
            if key in self.graph:
                out[key] = RushFuture(key, self.task_keys[key], self.rush)
            else:
                out[key] = self.external[key]
        return out


def pack_results(keys: Any, results: Mapping[Hashable, Any]) -> Any:
    """Arrange results like ``keys`` (a key, or nested lists of keys), lists as tuples
    (as Dask's own get functions do)."""
    if isinstance(keys, list):
        return tuple(pack_results(k, results) for k in keys)
    return results[keys]


def flat_keys(keys: Any) -> list[Any]:
    return list(flatten(keys)) if isinstance(keys, list) else [keys]
