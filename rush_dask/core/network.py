"""The read side of a network, shared by the controller and the workers.

:class:`NetworkView` answers "what is in Redis now": counters, worker lists,
tasks as pandas DataFrames, logs. It holds no state of its own except an
incremental cache of finished tasks, so any number of views, in any
process, see the same network.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import socket
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, overload

from msgpack import unpackb

from . import constants as C
from .errors import PayloadSignatureError
from .frames import META_COLUMNS, GrowingFrame, Raw, frame_of, gc_paused, task_columns
from .serialize import loads, place
from .shared import check_shared, resolve
from .waiting import Patience

if TYPE_CHECKING:  # pandas is imported lazily: workers that never fetch don't pay for it
    import dask.dataframe as dd
    import pandas as pd

    from .scripts import Scripts

HOSTNAME = socket.gethostname()
logger = logging.getLogger("rush_dask")

# Fields read for every task row, in this order.
_TASK_FIELDS = (
    "xs",
    "extra",
    "state",
    "worker_id",
    "queued_at",
    "started_at",
    "finished_at",
    "attempts",
    "error",
    "archive_index",
)
_BATCH = 2_000  # tasks read per script call (a few ms of Redis time each)
_ARCHIVE_BATCH = 10_000  # archive rows per LRANGE


def unpack_row(raw: bytes) -> list[Any]:
    """An archive row: [key, xs, ys, extra, worker_id, queued_at, started_at, finished_at, attempts]."""
    row: list[Any] = unpackb(raw, raw=True)
    return row


@overload
def _text(value: bytes | str) -> str: ...
@overload
def _text(value: None) -> None: ...
def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# Secrets passed to Rush(secret=...) in this process, by network id, for the views that
# partitions of to_dask_dataframe open (the secret never goes into a graph or to Redis).
known_secrets: dict[str, bytes] = {}


class NetworkView:
    """Counters, worker lists and DataFrames of one network (needs ``client``, ``keys``)."""

    client: Any
    keys: C.Keys
    scripts: Scripts
    url: str  # the Redis URL (set by the classes that connect; see to_dask_dataframe)
    secret: bytes | None = None  # payloads are signed and verified with it (see serialize)

    def _init_view(self) -> None:
        self._finished_offset = 0
        self._finished = GrowingFrame(tail=META_COLUMNS)  # the cache behind fetch_finished_tasks
        self._new_offset = 0
        self._pids: dict[bytes | str, int | None] = {}

    @property
    def network_id(self) -> str:
        return self.keys.network_id

    def _where(self, key: str | bytes, field: str) -> bytes:
        """The place a payload of this network is signed for (b"" without a secret: nothing signed).

        >>> view._where("3f2a...", "xs")   # doctest: +SKIP
        """
        if self.secret is None:
            return b""
        return place(self.keys.prefix, key.decode() if isinstance(key, bytes) else str(key), field)

    # ------------------------------------------------------------------ workers
    def _worker_states(self) -> dict[str, str]:
        raw = self.client.hgetall(self.keys.worker_states)
        return {k.decode(): v.decode() for k, v in raw.items()}

    def _ids_in_state(self, state: str) -> list[str]:
        return sorted(w for w, s in self._worker_states().items() if s == state)

    @property
    def worker_ids(self) -> list[str]:
        """Ids of every worker that ever registered with the network."""
        return sorted(self._worker_states())

    @property
    def running_worker_ids(self) -> list[str]:
        """Ids of the workers in state ``running``."""
        return self._ids_in_state(C.WorkerState.RUNNING)

    @property
    def terminated_worker_ids(self) -> list[str]:
        """Ids of the workers that stopped gracefully."""
        return self._ids_in_state(C.WorkerState.TERMINATED)

    @property
    def killed_worker_ids(self) -> list[str]:
        """Ids of the workers killed by ``stop_workers(type="kill")``."""
        return self._ids_in_state(C.WorkerState.KILLED)

    @property
    def lost_worker_ids(self) -> list[str]:
        """Ids of the workers that crashed or became unreachable."""
        return self._ids_in_state(C.WorkerState.LOST)

    @property
    def n_workers(self) -> int:
        """Number of workers ever registered."""
        return len(self.worker_ids)

    @property
    def n_running_workers(self) -> int:
        """Running workers."""
        return len(self.running_worker_ids)

    @property
    def n_terminated_workers(self) -> int:
        """Terminated workers."""
        return len(self.terminated_worker_ids)

    @property
    def n_killed_workers(self) -> int:
        """Killed workers."""
        return len(self.killed_worker_ids)

    @property
    def n_lost_workers(self) -> int:
        """Lost workers."""
        return len(self.lost_worker_ids)

    def _worker_records(self, worker_ids: Sequence[str]) -> list[dict[str, Any]]:
        pipe = self.client.pipeline(transaction=False)
        for wid in worker_ids:
            pipe.hgetall(self.keys.worker(wid))
            pipe.pttl(self.keys.heartbeat(wid))
        replies = pipe.execute()
        records = []
        for i, wid in enumerate(worker_ids):
            raw = {k.decode(): v.decode() for k, v in replies[2 * i].items()}
            ttl = replies[2 * i + 1]
            raw["worker_id"] = wid
            raw["heartbeat_ttl"] = ttl / 1000 if ttl and ttl > 0 else None
            records.append(raw)
        return records

    def _worker_rows(self) -> list[dict[str, Any]]:
        """:attr:`worker_info` as plain dicts (times in epoch seconds), without pandas."""
        states = self._worker_states()
        rows = []
        for rec in self._worker_records(sorted(states)):
            rows.append(
                {
                    "worker_id": rec["worker_id"],
                    "state": states[rec["worker_id"]],
                    "pid": int(rec["pid"]) if rec.get("pid") else None,
                    "hostname": rec.get("hostname"),
                    "heartbeat_period": float(rec["heartbeat_period"]) if rec.get("heartbeat_period") else None,
                    "heartbeat_expire": float(rec["heartbeat_expire"]) if rec.get("heartbeat_expire") else None,
                    "heartbeat": rec["heartbeat_ttl"] is not None,
                    # Each beat sets the TTL to heartbeat_expire, so what has run off is the age.
                    "heartbeat_age": float(rec["heartbeat_expire"]) - rec["heartbeat_ttl"]
                    if rec["heartbeat_ttl"] is not None and rec.get("heartbeat_expire")
                    else None,
                    "resources": json.loads(rec.get("resources") or "{}"),
                    "started_at": _timestamp(rec.get("started_at")),
                    "stopped_at": _timestamp(rec.get("stopped_at")),
                    # Written with the heartbeat (see worker.RushWorker._report): may lag one period.
                    "rss": int(rec["rss"]) if rec.get("rss") else None,
                    "n_done": int(rec["n_done"]) if rec.get("n_done") else 0,
                }
            )
        return sorted(rows, key=lambda row: row["started_at"] if row["started_at"] is not None else float("inf"))

    @property
    def worker_info(self) -> pd.DataFrame:
        """One row per worker: worker_id, pid, hostname, state, heartbeat, resources, times.

        ``heartbeat_age``: seconds since the last beat (empty once it expired);
        ``rss``: resident memory in bytes and ``n_done``: tasks it settled, as
        of its last heartbeat.

        >>> rush.worker_info[["worker_id", "state"]]   # doctest: +SKIP
        """
        import pandas as pd

        columns = [
            "worker_id",
            "state",
            "pid",
            "hostname",
            "heartbeat_period",
            "heartbeat_expire",
            "heartbeat",
            "heartbeat_age",
            "resources",
            "started_at",
            "stopped_at",
            "rss",
            "n_done",
        ]
        frame = pd.DataFrame(self._worker_rows(), columns=columns)
        for col in ("started_at", "stopped_at"):
            frame[col] = pd.to_datetime(frame[col], unit="s", utc=True)
        return frame

    def _check_worker_ids(self, worker_ids: Iterable[str]) -> list[str]:
        if isinstance(worker_ids, str):
            worker_ids = [worker_ids]
        worker_ids = list(worker_ids)
        known = self._worker_states()
        unknown = [w for w in worker_ids if w not in known]
        if unknown:
            raise ValueError(
                f"unknown worker id(s) {unknown} in network {self.network_id!r}; "
                f"known ids are in rush.worker_ids ({len(known)} workers)"
            )
        return worker_ids

    def _dead_local_workers(self) -> list[str]:
        """Running workers on this host whose process no longer exists."""
        running = self.running_worker_ids
        if not running:
            return []
        pipe = self.client.pipeline(transaction=False)
        for wid in running:
            pipe.hmget(self.keys.worker(wid), "hostname", "pid")
        dead = []
        for wid, (host, pid) in zip(running, pipe.execute()):
            if host is not None and pid and host.decode() == HOSTNAME and not pid_alive(int(pid)):
                dead.append(wid)
        return dead

    def _sweep_lost_workers(self, dead: Sequence[str] = ()) -> list[str]:
        reason = "worker lost (heartbeat expired or process gone); the task was lost too often"
        return self.scripts.mark_workers(dead, state=C.WorkerState.LOST, reason=reason, scan_heartbeats=True)

    # -------------------------------------------------------------------- tasks
    @property
    def n_queued_tasks(self) -> int:
        """Tasks waiting for any worker: the shared queue, the queues of tasks that need
        resources, and graph nodes queued near their inputs (which any idle worker may take).
        Tasks pushed to one worker's own queue are :attr:`n_queued_priority_tasks`."""
        resource_specs = [s.decode() for s in self.client.smembers(self.keys.resource_queues)]
        near = [w.decode() for w in self.client.smembers(self.keys.local_queues)]
        pipe = self.client.pipeline(transaction=False)
        pipe.zcard(self.keys.queue)
        for spec in resource_specs:
            pipe.zcard(self.keys.resource_queue(spec))
        for wid in near:
            pipe.zcard(self.keys.local_queue(wid))
        return sum(pipe.execute())

    @property
    def n_queued_priority_tasks(self) -> int:
        """Tasks waiting in the workers' own queues."""
        workers = list(self._worker_states())
        pipe = self.client.pipeline(transaction=False)
        for wid in workers:
            pipe.llen(self.keys.priority_queue(wid))
        return sum(pipe.execute()) if workers else 0

    @property
    def n_running_tasks(self) -> int:
        """Tasks that a worker is running now."""
        return int(self.client.scard(self.keys.running))

    @property
    def n_finished_tasks(self) -> int:
        """Tasks that finished."""
        return int(self.client.llen(self.keys.finished))

    @property
    def n_failed_tasks(self) -> int:
        """Tasks that failed for good."""
        return int(self.client.llen(self.keys.failed))

    @property
    def n_tasks(self) -> int:
        """Every task ever pushed to the network."""
        return int(self.client.llen(self.keys.all_tasks))

    def _counts(self) -> dict[str, int]:
        states = self._worker_states()
        pipe = self.client.pipeline(transaction=False)
        pipe.zcard(self.keys.queue)
        for wid in states:
            pipe.llen(self.keys.priority_queue(wid))
        pipe.scard(self.keys.running)
        pipe.llen(self.keys.finished)
        pipe.llen(self.keys.failed)
        replies = pipe.execute()
        return {
            "running_workers": sum(1 for s in states.values() if s == C.WorkerState.RUNNING),
            "queued": replies[0],
            "priority": sum(replies[1:-3]),
            "running": replies[-3],
            "finished": replies[-2],
            "failed": replies[-1],
        }

    def _read_task_fields(self, keys: Sequence[str]) -> list[list[bytes | None]]:
        records: list[list[bytes | None]] = []
        for start in range(0, len(keys), _BATCH):
            records.extend(self.scripts.fetch_tasks(keys[start : start + _BATCH], _TASK_FIELDS))
        return records

    def _task_rows(self, keys: Sequence[str]) -> pd.DataFrame:
        """One row per task (any state): inputs, outputs and extra columns, then the meta columns."""
        keys = list(keys)
        records = self._read_task_fields(keys)
        with gc_paused():
            columns = list(zip(*records)) if records else [()] * len(_TASK_FIELDS)
            xs, extra, state, wid, qat, sat, fat, attempts, error, index = columns
            # The outputs of finished tasks are in their archive rows.
            rows = self._archive_rows_at([int(i) for i in index if i is not None])
            ys = [self._verified(rows[int(i)][2], k, "ys") if i is not None else None for i, k in zip(index, keys)]
            return self._frame(keys, xs, ys, extra, state, wid, qat, sat, fat, attempts, error)

    def _archive_rows_at(self, indexes: Sequence[int]) -> dict[int, list[Any]]:
        """Archive rows by position: a few with LINDEX, many with ranged LRANGE reads."""
        if not indexes:
            return {}
        if len(indexes) < 1_000:
            pipe = self.client.pipeline(transaction=False)
            for i in indexes:
                pipe.lindex(self.keys.archive, i)
            return {i: unpack_row(raw) for i, raw in zip(indexes, pipe.execute())}
        lo, hi = min(indexes), max(indexes) + 1
        rows = dict(zip(range(lo, hi), self._archive_range(lo, hi)))
        return {i: rows[i] for i in indexes}

    def _archive_range(self, start: int, stop: int | None = None) -> list[list[Any]]:
        """Unpacked archive rows ``start`` to ``stop - 1`` (to the end with ``stop=None``)."""
        rows: list[list[Any]] = []
        lo = start
        while stop is None or lo < stop:
            want = _ARCHIVE_BATCH if stop is None else min(_ARCHIVE_BATCH, stop - lo)
            chunk = self.client.lrange(self.keys.archive, lo, lo + want - 1)
            rows.extend([unpackb(raw, raw=True) for raw in chunk])
            lo += len(chunk)
            if len(chunk) < want:  # the end of the list (no LLEN round trip needed)
                break
        return rows

    def _archive_frame(self, start: int, stop: int | None = None) -> pd.DataFrame:
        """Finished tasks ``start`` to ``stop - 1`` (finish order) as a DataFrame, from the archive."""
        return frame_of(self._archive_columns(start, stop))

    def _archive_columns(
        self, start: int, stop: int | None = None, rows: list[list[Any]] | None = None
    ) -> dict[str, Any]:
        """:meth:`_archive_frame` as columns (see :func:`rush_dask.core.frames.task_columns`);
        ``rows``: archive rows already read from ``start`` on."""
        with gc_paused():
            if rows is None:
                rows = self._archive_range(start, stop)
            key, xs, ys, extra, wid, qat, sat, fat, attempts = zip(*rows) if rows else ([] for _ in range(9))
            n = len(rows)
            return self._columns(
                key,
                xs,
                self._verified_all(ys, key, "ys"),
                extra,
                [b"finished"] * n,
                wid,
                qat,
                sat,
                fat,
                attempts,
                [None] * n,
            )

    def _frame(self, *fields: Any) -> pd.DataFrame:
        """A DataFrame of tasks from their raw fields (see :meth:`_columns`)."""
        return frame_of(self._columns(*fields))

    def _columns(
        self,
        keys: Raw,
        xs: Sequence[bytes | None],
        ys: Sequence[dict[str, Any] | None],
        extra: Sequence[bytes | None],
        state: Raw,
        wid: Raw,
        qat: Raw,
        sat: Raw,
        fat: Raw,
        attempts: Raw,
        error: Raw,
    ) -> dict[str, Any]:
        """Columns of tasks from their raw fields: payloads checked and unpickled, pids looked up."""
        inputs = self._verified_all(xs, keys, "xs")
        if self._has_shared_inputs(xs):
            resolve(inputs, self._shared_inputs)
        return task_columns(
            keys,
            inputs,
            [y or {} for y in ys],
            self._verified_all(extra, keys, "extra"),
            state,
            wid,
            self._pids_of(wid),
            qat,
            sat,
            fat,
            attempts,
            error,
        )

    def _verified_all(self, blobs: Sequence[bytes | None], keys: Sequence[Any], field: str) -> list[dict[str, Any]]:
        """:meth:`_verified` for many payloads; plain pickles without a secret in one quick pass."""
        if self.secret is None:
            try:  # the common case: nothing is signed, nothing to check
                return [pickle.loads(b) if b else {} for b in blobs]
            except Exception:
                pass  # a signed or damaged payload among them: check one by one
        return [self._verified(b, k, field) for b, k in zip(blobs, keys)]

    @staticmethod
    def _has_shared_inputs(blobs: Sequence[bytes | None]) -> bool:
        """Whether any pickled inputs may hold a SharedInput (its class name is in the pickle)."""
        return any(b and b"SharedInput" in b for b in blobs)

    def _verified(self, blob: bytes | None, key: Any, field: str) -> dict[str, Any]:
        """A stored dict (``field``: xs, ys or extra of task ``key``), or {} if its signature is refused.

        A table must stay readable when someone forged one task: the refused
        payload is left out (and logged), never unpickled.
        """
        if not blob:
            return {}
        try:
            value: dict[str, Any] = loads(blob, self.secret, self._where(key, field))
            return value
        except PayloadSignatureError as exc:
            if isinstance(key, bytes):
                key = key.decode()
            logger.warning("task %s: %s; its columns are left empty", key, exc)
            return {}

    def _shared_inputs(self, ids: list[str]) -> dict[str, bytes]:
        """Verified pickles of shared input values (see :mod:`rush_dask.core.shared`)."""
        payloads = self.client.mget([self.keys.shared(i) for i in ids])
        return {i: check_shared(i, p, self.secret, self._where(i, "shared")) for i, p in zip(ids, payloads)}

    def _pids_of(self, worker_ids: Sequence[bytes | str | None]) -> list[int | None]:
        """The pid of each worker id (raw bytes as read from Redis, or str), cached per view."""
        missing = sorted({w for w in worker_ids if w and w not in self._pids})
        if missing:
            pipe = self.client.pipeline(transaction=False)
            for wid in missing:
                pipe.hget(self.keys.worker(_text(wid)), "pid")
            for wid, pid in zip(missing, pipe.execute()):
                self._pids[wid] = int(pid) if pid else None
        pids = self._pids
        return [pids.get(w) if w else None for w in worker_ids]

    def _keys_of(self, key: str, *, sorted_set: bool = False) -> list[str]:
        raw = self.client.zrange(key, 0, -1) if sorted_set else self.client.lrange(key, 0, -1)
        return [k.decode() for k in raw]

    def fetch_tasks(self) -> pd.DataFrame:
        """Every task of the network, in push order, with inputs, outputs and state.

        >>> rush.fetch_tasks()[["x1", "x2", "y", "state"]]   # doctest: +SKIP
        """
        return self._task_rows(self._keys_of(self.keys.all_tasks))

    @property
    def data(self) -> pd.DataFrame:
        """All tasks as a DataFrame (same as :meth:`fetch_tasks`)."""
        return self.fetch_tasks()

    def fetch_queued_tasks(self) -> pd.DataFrame:
        """Tasks waiting in the shared queue, in the order they will be popped."""
        return self._task_rows(self._keys_of(self.keys.queue, sorted_set=True))

    def fetch_priority_tasks(self) -> pd.DataFrame:
        """Tasks waiting in the workers' own queues (column ``worker_id`` is empty until popped)."""
        keys: list[str] = []
        for wid in self.worker_ids:
            keys.extend(self._keys_of(self.keys.priority_queue(wid)))
        return self._task_rows(keys)

    def fetch_running_tasks(self) -> pd.DataFrame:
        """Tasks that a worker is running now."""
        keys = sorted(k.decode() for k in self.client.smembers(self.keys.running))
        return self._task_rows(keys)

    def fetch_failed_tasks(self) -> pd.DataFrame:
        """Tasks that failed for good, with the ``error`` column set."""
        return self._task_rows(self._keys_of(self.keys.failed))

    def fetch_finished_tasks(self) -> pd.DataFrame:
        """Finished tasks, in finish order. Incremental: each call reads only the new ones.

        >>> rush.fetch_finished_tasks()["y"].max()   # doctest: +SKIP
        """
        rows = self._archive_range(self._finished_offset)
        if rows or self._finished_offset == 0:  # the first call builds the (maybe empty) table
            self._finished.append(self._archive_columns(self._finished_offset, rows=rows))
            self._finished_offset += len(rows)
        return self._finished.frame()

    def fetch_new_tasks(self, timeout: float = 0) -> pd.DataFrame:
        """Tasks finished since the previous call; waits up to ``timeout`` s for at least one.

        >>> for _ in range(10):
        ...     new = rush.fetch_new_tasks(timeout=5)    # doctest: +SKIP
        """
        patience = Patience(timeout)
        while True:  # one LRANGE per try: what is new, if anything
            rows = self._archive_range(self._new_offset)
            if rows or patience.expired:
                break
            patience.sleep()
        columns = self._archive_columns(self._new_offset, rows=rows)
        self._new_offset += len(rows)
        return frame_of(columns)

    def to_dask_dataframe(
        self, states: Sequence[str] | str = ("finished",), partition_size: int = 10_000
    ) -> dd.DataFrame:
        """The tasks in ``states`` as a lazy Dask DataFrame that reads Redis partition by partition.

        ``states`` may contain ``"finished"``, ``"failed"`` or ``"all"``
        (every task). Partitions are ranges of the state's list in Redis,
        read when computed, with any scheduler (rush included); columns and
        types are those of :meth:`fetch_finished_tasks`.

        >>> ddf = rush.to_dask_dataframe(partition_size=5_000)   # doctest: +SKIP
        >>> ddf.y.mean().compute(scheduler=rush)                 # doctest: +SKIP
        """
        from .archive import _LISTS, to_dask_dataframe

        states = [states] if isinstance(states, str) else list(states)
        unknown = [s for s in states if s not in _LISTS]
        if unknown or not states:
            raise ValueError(f"states must be among {sorted(_LISTS)}, got {states!r}")
        if isinstance(partition_size, bool) or not isinstance(partition_size, int) or partition_size < 1:
            raise ValueError(f"partition_size must be a positive integer, got {partition_size!r}")
        lengths = {s: self.client.llen(getattr(self.keys, _LISTS[s])) for s in states}
        return to_dask_dataframe(self.network_id, self.url, lengths, states, partition_size)

    # --------------------------------------------------------------------- logs
    def read_log(self, worker_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Log records that workers (and code in tasks) wrote with ``logging``.

        Returns columns time, worker_id, level, logger, message, oldest first.

        >>> rush.read_log()[["worker_id", "message"]]   # doctest: +SKIP
        """
        import pandas as pd

        ids = self.worker_ids if worker_ids is None else self._check_worker_ids(worker_ids)
        pipe = self.client.pipeline(transaction=False)
        for wid in ids:
            pipe.lrange(self.keys.log(wid), 0, -1)
        rows = []
        for wid, entries in zip(ids, pipe.execute() if ids else []):
            for entry in entries:
                record = json.loads(entry)
                record["worker_id"] = wid
                rows.append(record)
        frame = pd.DataFrame(rows, columns=["time", "worker_id", "level", "logger", "message"])
        frame["time"] = pd.to_datetime(frame["time"], unit="s", utc=True)
        return frame.sort_values("time", kind="stable").reset_index(drop=True)


def _timestamp(value: str | None) -> float | None:
    return float(value) if value else None
