"""States, defaults and the Redis key layout of a network.

Every key of network ``NET`` starts with ``rush:{NET}:``. The braces are a
Redis Cluster hash tag: all keys of one network land in one hash slot, so the
Lua scripts may touch any of them and a clustered Redis can host many
networks side by side.
"""

from __future__ import annotations

import re
import sys
from enum import Enum

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:  # requires-python >= 3.10: the same behaviour, for the states below

    class StrEnum(str, Enum):
        """``enum.StrEnum`` of Python 3.11: members are strings, shown and formatted as their value."""

        def __str__(self) -> str:
            return str(self.value)

        def __format__(self, format_spec: str) -> str:
            return format(str(self.value), format_spec)


class TaskState(StrEnum):
    """The state of a task (the Lua scripts write the same strings to Redis).

    A member equals its string, so ``rush.data["state"] == "finished"`` and
    ``state == TaskState.FINISHED`` both hold; Redis replies are bytes:
    decode them before comparing.

    >>> TaskState.FINISHED == "finished", f"{TaskState.FAILED}"
    (True, 'failed')
    """

    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    WAITING = "waiting"  # graph nodes only: some inputs are not done yet


class WorkerState(StrEnum):
    """The state of a worker: ``running``, ``terminated`` (stopped), ``killed`` (by the user),
    ``lost`` (crashed or unreachable).

    >>> sorted(WorkerState) == sorted(["running", "terminated", "killed", "lost"])
    True
    """

    RUNNING = "running"
    TERMINATED = "terminated"
    KILLED = "killed"
    LOST = "lost"


DEFAULT_HEARTBEAT_PERIOD = 5.0
DEFAULT_HEARTBEAT_EXPIRE = 30.0
DEFAULT_MAX_LOST = 3  # like distributed's allowed-failures
DEFAULT_REDIS_RETRY_TIMEOUT = 60.0
# A compute whose client has not renewed its graph's lease for this long (the
# client died or hangs) is cancelled by the workers' heartbeats, a batch of
# REAP_BATCH nodes per beat, so that nothing of it is left in Redis.
DEFAULT_GRAPH_LEASE = 60.0
REAP_BATCH = 2_000
LOG_MAX_RECORDS = 10_000  # per worker; older records are trimmed
INLINE_LIMIT = 65_536  # bytes: smaller graph inputs travel inside the pop reply
# bytes: a ready node goes to the local queue of the worker holding this much of its inputs
LOCALITY_MIN = 1_048_576
# bytes: largest serialized task, input or result (Redis refuses values over 512 MB)
MAX_PAYLOAD_BYTES = 100 * 2**20

_NETWORK_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")


def check_network_id(network_id: str) -> str:
    """Return ``network_id`` if it is a usable network name, else raise ValueError."""
    if not isinstance(network_id, str) or not _NETWORK_ID.match(network_id):
        raise ValueError(f"network_id must be 1-128 characters of letters, digits, '_', '.' or '-'; got {network_id!r}")
    return network_id


class Keys:
    """Names of the Redis keys of one network.

    >>> Keys("test").task("abc")
    'rush:{test}:task:abc'
    >>> Keys("test").fixed("queue")
    'rush:{test}:queue'
    """

    # The keys a network has one of (the Lua scripts receive them as KEYS) ...
    FIXED = (
        "tasks",
        "queue",
        "running",
        "finished",
        "archive",
        "failed",
        "seq",
        "leases",
        "worker_states",
        "wake",
        "lqs",
        "rqueues",
        "clients",
    )
    # ... and the families the scripts build from the prefix (``task:<key>`` ...).
    FAMILIES = (
        "task",
        "worker",
        "hb",
        "held",
        "pq",
        "lq",
        "rq",
        "wake",
        "graph",
        "gdone",
        "fdone",
        "gc",
        "crefs",
        "creq",
    )

    def __init__(self, network_id: str):
        self.network_id = check_network_id(network_id)
        self.prefix = f"rush:{{{network_id}}}:"

    def fixed(self, name: str) -> str:
        """The key of one of the network's fixed keys (see ``FIXED``), by its name in the scripts."""
        if name not in self.FIXED:
            raise ValueError(f"{name!r} is not a fixed key of a network; they are {', '.join(self.FIXED)}")
        return self.prefix + name

    # Tasks
    def task(self, key: str) -> str:  # hash: xs, ys, state, worker_id, timestamps ...
        return f"{self.prefix}task:{key}"

    @property
    def all_tasks(self) -> str:  # list of every task key, in push order
        return self.prefix + "tasks"

    @property
    def queue(self) -> str:  # sorted set: the shared queue, lowest score first
        return self.prefix + "queue"

    def priority_queue(self, worker_id: str) -> str:  # list: one worker's own queue
        return f"{self.prefix}pq:{worker_id}"

    @property
    def running(self) -> str:  # set of running task keys
        return self.prefix + "running"

    @property
    def finished(self) -> str:  # list of finished task keys, in finish order
        return self.prefix + "finished"

    @property
    def archive(self) -> str:  # list of packed rows of finished tasks, aligned with `finished`
        return self.prefix + "archive"

    @property
    def failed(self) -> str:  # list of failed task keys, in failure order
        return self.prefix + "failed"

    @property
    def seq(self) -> str:  # counter giving every task its submission number
        return self.prefix + "seq"

    @property
    def leases(self) -> str:  # sorted set: graph id -> lease expiry (server time) of a compute
        return self.prefix + "leases"

    @property
    def clients(self) -> str:  # sorted set: controller id -> lease expiry of what it holds
        return self.prefix + "clients"

    def client_refs(self, client_id: str) -> str:  # hash: task key -> references the client holds
        return f"{self.prefix}crefs:{client_id}"

    def client_requests(self, client_id: str) -> str:  # sorted set: its writes applied, by time
        return f"{self.prefix}creq:{client_id}"

    @property
    def resource_queues(self) -> str:  # set of resource specs ('GPU=1') that have a queue
        return self.prefix + "rqueues"

    def resource_queue(self, spec: str) -> str:  # sorted set: tasks that need those resources
        return f"{self.prefix}rq:{spec}"

    # Dask graphs
    def graph(self, graph_id: str) -> str:  # hash: n, live, done, reaped, held, batch marks
        return f"{self.prefix}graph:{graph_id}"

    def graph_done(self, graph_id: str) -> str:  # list: nodes of a compute done ('!' + key: failed)
        return f"{self.prefix}gdone:{graph_id}"

    def futures_done(self, client_id: str) -> str:  # list: futures of one client that are done
        return f"{self.prefix}fdone:{client_id}"

    def function(self, fun_id: str) -> str:  # a pickled function shared by many tasks
        return f"{self.prefix}fun:{fun_id}"

    def shared(self, content_id: str) -> str:  # a large input value shared by many tasks
        return f"{self.prefix}shared:{content_id}"

    # Workers
    @property
    def worker_states(self) -> str:  # hash worker_id -> state
        return self.prefix + "worker_states"

    def worker(self, worker_id: str) -> str:  # hash: pid, hostname, started_at ...
        return f"{self.prefix}worker:{worker_id}"

    def heartbeat(self, worker_id: str) -> str:  # string with a TTL
        return f"{self.prefix}hb:{worker_id}"

    def held(self, worker_id: str) -> str:  # set of task keys a worker holds
        return f"{self.prefix}held:{worker_id}"

    def start_config(self, start_id: str) -> str:  # hash: fun, loop, constants
        return f"{self.prefix}start:{start_id}"

    def log(self, worker_id: str) -> str:  # list of JSON log records
        return f"{self.prefix}log:{worker_id}"

    @property
    def wake(self) -> str:  # list of tokens that wake idle workers
        return self.prefix + "wake"

    def wake_worker(self, worker_id: str) -> str:
        return f"{self.prefix}wake:{worker_id}"

    @property
    def sweep_turn(self) -> str:  # string with a TTL: who sweeps for lost workers now (see sweeps)
        return self.prefix + "sweep"

    # The data plane (graph results held on their producer's host)
    def local_queue(self, worker_id: str) -> str:  # sorted set: ready nodes whose inputs it holds
        return f"{self.prefix}lq:{worker_id}"

    @property
    def local_queues(self) -> str:  # set of worker ids whose local queue may be non-empty
        return self.prefix + "lqs"

    def garbage(self, host: str) -> str:  # list of result files to delete on that host
        return f"{self.prefix}gc:{host}"

    @property
    def pattern(self) -> str:
        """A SCAN pattern matching every key of this network (and nothing else)."""
        escaped = re.sub(r"([\[\]*?\\])", r"\\\1", self.prefix)
        return escaped + "*"
