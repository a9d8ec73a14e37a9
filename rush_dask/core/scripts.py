"""The Lua scripts of rush_dask, as typed Python methods.

The scripts themselves are in ``rush_dask/core/lua/*.lua`` (read by
:mod:`rush_dask.core.lualoader`); this module is the only place that knows their
positional ARGV and their replies: callers pass named arguments and get named
tuples back.

Each state change of a task or a worker is one of these scripts, so it is
atomic: Redis runs a script to the end before it serves anyone else. That is
what makes "first writer wins" hold: a worker that was declared lost and
comes back finds its state changed and its result is dropped.

Each script receives the fixed keys of the network it touches as KEYS (its
header names them) and the network's prefix (``rush:{NET}:``) as ARGV[1],
from which it builds the per-task and per-worker keys; every key of a network
shares one hash tag, so a script runs within one slot of a Redis Cluster.
See ``docs/scripts.md`` for the state transitions each script makes.

Task hash fields (``task:<key>``): xs, extra, state, fun, seq, score,
queued_at, started_at, finished_at, worker_id, attempts, max_retries,
n_errors, max_lost, n_lost, timeout, seed, own, error, traceback, exception,
archive_index. The outputs of a finished task live in its archive row: the
list ``archive`` holds one msgpack row per finished task (key, xs, ys,
extra, worker_id, queued_at, started_at, finished_at, attempts), in the
order of ``finished``.

Nodes of a Dask graph are the same kind of task, popped by the same script,
with a few more fields: graph (its id), deps and dependents (space-separated
task keys), waiting (inputs not finished yet; queued at 0), refs (results
not yet read: dependents still to run, plus one for the client; deleted at
0), res (resources it needs) and notify (a client reads ``gdone:<graph>``).
Their extra state ``waiting`` means "inputs not ready". A node's result is
either in ``ys`` (small results) or held on its producer's host (see
:mod:`rush_dask.core.dataplane`): then ``at`` (the producer's worker id),
``host``, ``path`` (its file there) and ``nbytes``; ``lq`` names the worker
on whose local queue the node was put, near its largest inputs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar, cast

from .constants import INLINE_LIMIT, LOCALITY_MIN, Keys
from .lualoader import LuaScript, load_all

_CONSTANTS = {"INLINE_LIMIT": INLINE_LIMIT, "LOCALITY_MIN": LOCALITY_MIN}


# ------------------------------------------------------------------ arguments
class NewTask(NamedTuple):
    """A task for :meth:`Scripts.push`: serialized inputs, and a worker to queue it on ('' for any)."""

    key: str
    xs: bytes
    extra: bytes = b""
    target: str = ""


class RunningTask(NamedTuple):
    """A task a worker creates and runs itself (:meth:`Scripts.push_running`)."""

    key: str
    xs: bytes
    extra: bytes = b""


class Outcome(NamedTuple):
    """What became of a task a worker ran, for :meth:`Scripts.settle_and_pop`.

    ``outcome`` is ``finished`` (``payload``: the serialized ``ys``), ``held``
    (a graph node's result stays in a file: ``payload`` is its path,
    ``traceback`` its size in bytes) or ``error`` (``payload``: the message).
    """

    key: str
    outcome: str
    payload: bytes | str
    traceback: bytes | str = ""
    exception: bytes = b""


class NewNode(NamedTuple):
    """One node of a Dask graph for :meth:`Scripts.push_graph`."""

    key: str
    xs: bytes
    refs: int  # dependents + 1 if the client reads it
    deps: Sequence[str]  # task keys of its inputs
    dependents: Sequence[str]
    score: float  # lower runs first
    resources: str = ""  # 'GPU=1' or ''
    max_retries: int = 0
    max_lost: int = 0
    held: str = ""  # born finished: 'holder<TAB>host<TAB>path<TAB>nbytes'
    mine: bool = False  # refs counts one reference of the graph's owner (recorded under its lease)


# -------------------------------------------------------------------- replies
class PoppedTask(NamedTuple):
    """A task handed to a worker, as Redis sent it (decoded by ``worker.Task.from_reply``)."""

    key: bytes
    xs: bytes
    fun: bytes | None
    timeout: bytes | None
    seed: bytes | None
    seq: bytes | None
    attempts: int | bytes | None
    graph: bytes | None
    inputs: list[bytes]  # per input: key, value ('' if large), holder, host, path


class SettleReply(NamedTuple):
    """The reply of :meth:`Scripts.settle_and_pop`.

    ``kind`` is ``tasks``, ``empty`` or ``stop`` (``reason``: ``terminate``,
    ``lost``, ``killed``, ``unknown``); one note per outcome (``finished``,
    ``retried``, ``failed``, ``dropped``); ``garbage``: result files to delete
    on the worker's host.
    """

    kind: str
    reason: str
    notes: list[str]
    garbage: list[bytes]
    tasks: list[PoppedTask]


class HeartbeatReply(NamedTuple):
    """The reply of :meth:`Scripts.heartbeat`: the worker's state, a stop request, files to delete."""

    state: str
    terminate: bool
    garbage: list[bytes]


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


# --------------------------------------------------------------------- layer
@functools.cache
def sources() -> dict[str, LuaScript]:
    """Every script, read from its file once per process (see :mod:`rush_dask.core.lualoader`)."""
    return load_all(_CONSTANTS)


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _raw_args_accepted(method: _Method) -> _Method:
    """Let ``scripts.<name>(args=[prefix, ...])`` pass a raw ARGV straight to the script.

    Kept for code that forges exact calls (tests of repeated or hostile
    calls, the scale model); everything else uses the named parameters.
    """
    name = method.__name__

    @functools.wraps(method)
    def dispatch(self: Scripts, *args: Any, **kwargs: Any) -> Any:
        if not args and "args" in kwargs:
            return self.call(name, kwargs["args"], client=kwargs.get("client"))
        return method(self, *args, **kwargs)

    return cast(_Method, dispatch)


class Scripts:
    """The scripts of one network, registered on one client (a ``Redis`` or a ``RedisCluster``).

    redis-py sends EVALSHA and falls back to EVAL if the server lost its
    script cache (after a restart), so the scripts survive Redis restarts.
    Methods that take ``client=`` accept a pipeline: the call is then only
    queued, and its reply comes, undecoded, from ``pipe.execute()``.

    >>> scripts = Scripts(redis.Redis(), Keys("test"))            # doctest: +SKIP
    >>> scripts.renew_lease("g1", lease=60.0)                     # doctest: +SKIP
    False
    """

    def __init__(self, client: Any, keys: Keys):
        self.keys = keys
        self.prefix = keys.prefix
        self._scripts = {name: client.register_script(s.source) for name, s in sources().items()}
        self._keys = {name: [keys.fixed(k) for k in s.keys] for name, s in sources().items()}

    def names_by_sha(self) -> dict[str, str]:
        """Script names by SHA1 digest (to read EVALSHA in MONITOR output or SLOWLOG)."""
        return {script.sha: name for name, script in self._scripts.items()}

    def call(self, name: str, args: Sequence[Any], client: Any = None) -> Any:
        """Run script ``name`` with a raw ARGV (``args[0]`` is the prefix); the reply is undecoded."""
        return self._scripts[name](keys=self._keys[name], args=args, client=client)

    # ------------------------------------------------------------ tasks
    @_raw_args_accepted
    def push(
        self,
        tasks: Sequence[NewTask],
        *,
        fun_id: str = "",
        max_retries: int = 0,
        timeout: float | None = None,
        seed: int | None = None,
        priority: float = 0,
        max_lost: int = 0,
        client: Any = None,
    ) -> int | None:
        """Create one batch of tasks; returns the sequence number before the first (None if pipelined).

        >>> scripts.push([NewTask("k1", dumps({"x": 1}))], max_lost=3)   # doctest: +SKIP
        41
        """
        args: list[Any] = [
            self.prefix,
            len(tasks),
            fun_id,
            max_retries,
            "" if timeout is None else timeout,
            "" if seed is None else seed,
            priority,
            max_lost,
        ]
        for task in tasks:
            args += task
        reply = self.call("push", args, client)
        return None if client is not None else int(reply)

    @_raw_args_accepted
    def push_running(self, worker_id: str, tasks: Sequence[RunningTask]) -> int:
        """Create tasks that ``worker_id`` runs itself; returns the sequence number before the first."""
        args: list[Any] = [self.prefix, worker_id, len(tasks)]
        for task in tasks:
            args += task
        return int(self.call("push_running", args))

    @_raw_args_accepted
    def settle_and_pop(
        self,
        worker_id: str,
        *,
        request: int,
        outcomes: Sequence[Outcome] = (),
        want: int = 1,
        min_queue: int = 0,
        resources: str = "",
        host: str = "",
    ) -> SettleReply:
        """Record the outcomes of tasks ``worker_id`` ran, and pop up to ``want`` tasks.

        >>> reply = scripts.settle_and_pop("w1", request=7, want=1)   # doctest: +SKIP
        >>> reply.kind, [t.key for t in reply.tasks]                  # doctest: +SKIP
        ('tasks', [b'3f2a...'])
        """
        args: list[Any] = [self.prefix, worker_id, request, resources, want, min_queue, len(outcomes), host]
        for outcome in outcomes:
            args += outcome
        reply = self.call("settle_and_pop", args)
        return SettleReply(
            reply[0].decode(),
            _text(reply[1]),
            [n.decode() for n in reply[2]],
            reply[3],
            [PoppedTask(*raw) for raw in reply[4:]],
        )

    @_raw_args_accepted
    def empty_queue(self, reason: str) -> int:
        """Fail every queued task with ``reason``; returns how many."""
        return int(self.call("empty_queue", [self.prefix, reason]))

    @_raw_args_accepted
    def fetch_tasks(
        self, task_keys: Sequence[str], fields: Sequence[str], client: Any = None
    ) -> list[list[bytes | None]]:
        """The values of ``fields`` of each task, in one call (a pipelined call returns [])."""
        reply = self.call("fetch_tasks", [self.prefix, len(fields), *fields, *task_keys], client)
        return [] if client is not None else cast("list[list[bytes | None]]", reply)

    # ---------------------------------------------------------- workers
    @_raw_args_accepted
    def register(self, worker_id: str, *, heartbeat_expire_ms: int, fields: Mapping[str, Any]) -> bool:
        """Add worker ``worker_id`` (state running) with these fields; False if the id is taken."""
        args: list[Any] = [self.prefix, worker_id, heartbeat_expire_ms]
        for item in fields.items():
            args += item
        return bool(self.call("register", args))

    @_raw_args_accepted
    def heartbeat(self, worker_id: str, *, heartbeat_expire_ms: int, reap_batch: int, host: str) -> HeartbeatReply:
        """Refresh the heartbeat of a running worker (and reap a little of an abandoned compute).

        >>> scripts.heartbeat("w1", heartbeat_expire_ms=30_000, reap_batch=2000, host="h")  # doctest: +SKIP
        HeartbeatReply(state='running', terminate=False, garbage=[])
        """
        state, terminate, garbage = self.call(
            "heartbeat", [self.prefix, worker_id, heartbeat_expire_ms, reap_batch, host]
        )
        return HeartbeatReply(state.decode(), terminate == b"1", garbage)

    @_raw_args_accepted
    def deregister(self, worker_id: str) -> str | None:
        """A graceful stop: the worker's state after the call (None for an unknown worker)."""
        state = self.call("deregister", [self.prefix, worker_id])
        return state.decode() if state is not None else None

    @_raw_args_accepted
    def mark_workers(
        self, worker_ids: Iterable[str] = (), *, state: str, reason: str, scan_heartbeats: bool = False
    ) -> list[str]:
        """Declare running workers ``lost`` or ``killed`` (with ``scan_heartbeats``, also every
        running worker whose heartbeat expired); returns the ids whose state changed.

        >>> scripts.mark_workers(["w1"], state="killed", reason="killed by the user")   # doctest: +SKIP
        ['w1']
        """
        changed = self.call("mark_workers", [self.prefix, state, reason, "1" if scan_heartbeats else "0", *worker_ids])
        return [wid.decode() for wid in changed]

    # ------------------------------------------------------------ graphs
    @_raw_args_accepted
    def push_graph(
        self,
        graph_id: str,
        nodes: Sequence[NewNode],
        *,
        n_nodes: int,
        notify: str,
        lease: float,
        owner: str = "",
        owner_lease: float = 0.0,
    ) -> int:
        """Create one batch of a graph's nodes; returns how many were queued (0: a repeated batch).

        ``notify`` is '1' (a compute reads ``gdone``), '0' (nobody) or the id of a futures client;
        ``lease`` is a compute's (0: none); ``owner`` the client that holds the nodes marked
        ``mine`` under its lease of ``owner_lease`` seconds (persisted results, futures).
        """
        args: list[Any] = [self.prefix, graph_id, n_nodes, notify, repr(lease), owner, repr(owner_lease)]
        for node in nodes:
            args += [
                node.key,
                node.xs,
                node.refs,
                " ".join(node.deps),
                " ".join(node.dependents),
                repr(node.score),
                node.resources,
                node.max_retries,
                node.max_lost,
                node.held,
                "1" if node.mine else "0",
            ]
        return int(self.call("push_graph", args))

    @_raw_args_accepted
    def release(self, task_keys: Iterable[str], *, client_id: str = "", request: str = "") -> int:
        """Drop one reference from each node; returns how many were dropped (0: request
        ``request`` of ``client_id`` was applied before). With ``client_id``, the references
        were held under that client's lease, and only those it still holds there are dropped
        (none once it was reaped). A node nothing needs any more is deleted, or cancelled if
        not done.

        >>> scripts.release(["g1.0"], client_id="c0ffee", request="r1")   # doctest: +SKIP
        1
        """
        return int(self.call("release", [self.prefix, client_id, request, *task_keys]))

    def hold(self, task_keys: Iterable[str], *, client_id: str, request: str, lease: float) -> list[str]:
        """Take one reference on each node for ``client_id``, under its lease; returns the keys
        that are gone (nothing held on them). Applies once per ``request``.

        >>> scripts.hold(["g1.0"], client_id="c0ffee", request="r2", lease=60.0)   # doctest: +SKIP
        []
        """
        reply = self.call("hold", [self.prefix, client_id, request, repr(lease), *task_keys])
        return [key.decode() for key in reply]

    def renew_client(self, client_id: str, *, lease: float, reap_batch: int) -> int:
        """Renew a client's lease; also reap part of an expired client and of an abandoned
        compute. Returns 1 (renewed), 0 (it had expired: what it held is gone) or -1 (it had
        no lease: new, or reaped by someone else).

        >>> scripts.renew_client("c0ffee", lease=60.0, reap_batch=1000)   # doctest: +SKIP
        1
        """
        return int(self.call("renew_client", [self.prefix, client_id, repr(lease), reap_batch]))

    def settle_on_client(self, holder: str, outcomes: Sequence[Outcome]) -> list[str]:
        """Record the outcomes of graph nodes their client ran itself (see
        :mod:`rush_dask.dask.clientnodes`); one note per outcome (``finished``, ``retried``,
        ``failed``, ``dropped``). ``holder`` is the id results held on the client's host are under.

        >>> scripts.settle_on_client("client-1", [Outcome("g1.0", "finished", dumps(1))])  # doctest: +SKIP
        ['finished']
        """
        args: list[Any] = [self.prefix, holder, len(outcomes)]
        for outcome in outcomes:
            args += outcome
        return [note.decode() for note in self.call("settle_on_client", args)]

    @_raw_args_accepted
    def cancel_graph(self, graph_id: str, task_keys: Iterable[str]) -> None:
        """Delete these nodes of graph ``graph_id`` and the graph's bookkeeping."""
        self.call("cancel_graph", [self.prefix, graph_id, *task_keys])

    @_raw_args_accepted
    def cancel_futures(self, task_keys: Iterable[str], *, reason: str) -> int:
        """Fail the nodes not done yet (and what depends on them); returns how many."""
        return int(self.call("cancel_futures", [self.prefix, reason, *task_keys]))

    @_raw_args_accepted
    def renew_lease(self, graph_id: str, *, lease: float) -> bool:
        """Extend a compute's lease by ``lease`` seconds; False if it was cancelled meanwhile."""
        return bool(self.call("renew_lease", [self.prefix, graph_id, repr(lease)]))
