"""What a network looks like now, as plain dicts: the dashboard's and the metrics' one reader.

A :class:`Monitor` reads one network every ``period`` seconds in a few
pipelined round trips and keeps what only watching over time shows: the
history of the task counts, the throughput, the task stream of graph nodes
(deleted from Redis once released) and the computes that ended. It never writes
to Redis.

Costs per poll: about 6 pipelined round trips, plus two each for newly
finished or failed tasks when there are any; ``INFO`` every 2 s; a ``SCAN`` of
the database (networks and the network's key count) every 30 s.

>>> monitor = Monitor(rush.client, rush.url, rush.network_id)    # rush: a fresh network, no task
>>> monitor.poll()["counts"]["finished"]
0
"""

from __future__ import annotations

import collections
import re
import threading
import time
from typing import Any

from ..core import constants as C
from ..core.connections import redact
from ..core.control import Network
from ..core.network import HOSTNAME, pid_alive
from ..deploy.cli import LogReader, redact_text

HISTORY = 600  # points of the counts chart (5 minutes at 0.5 s)
STREAM = 400  # task stream entries kept
LOG_LINES = 300  # log records kept (newest)
FAILED_SHOWN = 20  # newest failed tasks shown with their error
RUNNING_SHOWN = 1_000  # running tasks read per poll (SRANDMEMBER beyond that)
FINISHED_STEP = 500  # finished tasks read per poll at most (the newest)
INFO_EVERY = 2.0  # seconds between INFO calls
SCAN_EVERY = 30.0  # seconds between SCANs of the whole database
_NETWORK_OF = re.compile(rb"rush:\{([^}]*)\}:")


def count_network_keys(client: Any) -> dict[str, int]:
    """Keys per network id in the database of ``client``: one SCAN over ``rush:{*}:*``.

    SCAN walks the whole keyspace whatever the pattern, so callers do this
    seldom (every 30 s) and never with KEYS.

    >>> count_network_keys(client)   # doctest: +SKIP
    {'test': 34}
    """
    counts: dict[str, int] = collections.Counter()
    for key in client.scan_iter(match="rush:{*}:*", count=1000):
        match = _NETWORK_OF.match(key)
        if match:
            counts[match.group(1).decode(errors="replace")] += 1
    return dict(counts)


def process_gone(pid: int) -> bool:
    """Whether the process ``pid`` of this host is gone or a zombie (dead, not yet reaped by its parent).

    >>> import os
    >>> process_gone(os.getpid())
    False
    """
    if not pid_alive(pid):
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def _text(value: Any) -> str | None:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _str(value: bytes | str) -> str:
    """A key, id or field name (never None) as text."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _int(value: str | None) -> int | None:
    return int(value) if value else None


def _float(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, b"", "") else None
    except (TypeError, ValueError):
        return None


class Monitor:
    """Polls one network; :meth:`poll` returns the snapshot (see the module docstring)."""

    def __init__(self, client: Any, url: str, network_id: str):
        self.net = Network(network_id, url, client=client)
        self.client = client
        self.keys = self.net.keys
        self.url = redact(url)
        self.lock = threading.Lock()  # one poll at a time (executor threads)
        self.history: collections.deque[dict[str, Any]] = collections.deque(maxlen=HISTORY)
        self.stream: collections.deque[dict[str, Any]] = collections.deque(maxlen=STREAM)
        self.logs: collections.deque[dict[str, Any]] = collections.deque(maxlen=LOG_LINES)
        self.durations: list[float] = []  # run times of tasks that finished since the metrics last read
        self.computes: dict[str, dict[str, Any]] = {}
        self._log_reader = LogReader(self.net)
        self._finished_offset: int | None = None
        self._running: dict[str, dict[str, Any]] = {}  # running task key -> stream entry (open)
        self._failed_len = -1
        self._failed: list[dict[str, Any]] = []
        self._info: dict[str, Any] = {}
        self._info_at = 0.0
        self._scan_at = 0.0
        self._n_keys: int | None = None
        self.networks: list[str] = []
        self.last: dict[str, Any] | None = None
        self.last_at = 0.0

    # -------------------------------------------------------------- reading
    def poll(self, max_age: float = 0.0) -> dict[str, Any]:
        """The snapshot, read now unless the last one is younger than ``max_age`` seconds."""
        with self.lock:
            if self.last is not None and time.monotonic() - self.last_at < max_age:
                return self.last
            self.last = self._read()
            self.last_at = time.monotonic()
            return self.last

    def _read(self) -> dict[str, Any]:
        keys, client = self.keys, self.client
        pipe = client.pipeline(transaction=False)
        pipe.hgetall(keys.worker_states)
        pipe.zcard(keys.queue)
        pipe.scard(keys.running)
        pipe.llen(keys.finished)
        pipe.llen(keys.failed)
        pipe.llen(keys.all_tasks)
        pipe.zrange(keys.leases, 0, -1)
        pipe.time()
        states_raw, queued, n_running, finished, failed, n_tasks, leases, server_time = pipe.execute()
        now = server_time[0] + server_time[1] / 1e6
        states = {_str(k): _str(v) for k, v in states_raw.items()}
        wids = sorted(states)
        gids = [_str(g) for g in leases]

        pipe = client.pipeline(transaction=False)
        for wid in wids:
            pipe.hgetall(keys.worker(wid))
            pipe.pttl(keys.heartbeat(wid))
            pipe.llen(keys.priority_queue(wid))
        for gid in gids:
            pipe.hmget(keys.graph(str(gid)), "n", "live", "done")
        if n_running > RUNNING_SHOWN:
            pipe.srandmember(keys.running, RUNNING_SHOWN)
        else:
            pipe.smembers(keys.running)
        replies = pipe.execute()
        running_keys = sorted(_str(k) for k in replies[-1])
        pipe = client.pipeline(transaction=False)
        for key in running_keys:
            pipe.hmget(keys.task(key), "worker_id", "started_at", "graph")
        running_fields = pipe.execute() if running_keys else []

        workers, priority = self._workers(wids, states, replies[: 3 * len(wids)], running_keys, running_fields)
        graph_replies = replies[3 * len(wids) : 3 * len(wids) + len(gids)]
        counts = {
            "queued": queued,
            "priority": priority,
            "running": n_running,
            "finished": finished,
            "failed": failed,
            "tasks": n_tasks,
        }
        self._track_running(now, running_keys, running_fields)
        self._read_finished(finished)
        self._read_failed(failed)
        self.logs.extend(self._log_lines())
        self._track_computes(now, gids, graph_replies)
        self._read_info()
        self._scan()
        point = {"t": now, **{k: counts[k] for k in ("queued", "priority", "running", "finished", "failed")}}
        self.history.append(point)
        by_state: dict[str, int] = {state.value: 0 for state in C.WorkerState}
        for w in workers:
            by_state[w["state"]] = by_state.get(w["state"], 0) + 1
        return {
            "network": self.keys.network_id,
            "url": self.url,
            "time": now,
            "counts": counts,
            "throughput": self._throughput(),
            "workers": workers,
            "worker_counts": by_state,
            "computes": sorted(self.computes.values(), key=lambda c: -c["first_seen"]),
            "failed": self._failed,
            "stream": list(self.stream),
            "logs": list(self.logs),
            "history": list(self.history),
            "redis": {**self._info, "network_keys": self._n_keys},
            "networks": self.networks,
        }

    def _workers(
        self,
        wids: list[str],
        states: dict[str, str],
        replies: list[Any],
        running_keys: list[str],
        running_fields: list[Any],
    ) -> tuple[list[dict[str, Any]], int]:
        current: dict[str, list[str]] = {}
        for key, (wid, _, _) in zip(running_keys, running_fields):
            if wid is not None:
                current.setdefault(_str(wid), []).append(key)
        workers: list[dict[str, Any]] = []
        priority = 0
        for i, wid in enumerate(wids):
            raw = {_str(k): _text(v) for k, v in replies[3 * i].items()}
            ttl, queue_len = replies[3 * i + 1], replies[3 * i + 2]
            priority += queue_len
            state = states[wid]
            expire = _float(raw.get("heartbeat_expire"))
            age = expire - ttl / 1000 if ttl and ttl > 0 and expire else None
            pid = _int(raw.get("pid"))
            shown, note = state, ""
            if state == C.WorkerState.RUNNING and (ttl is None or ttl < 0):  # -2: the heartbeat key expired
                shown, note = C.WorkerState.LOST, "heartbeat expired (not yet marked lost in Redis)"
            elif state == C.WorkerState.RUNNING and raw.get("hostname") == HOSTNAME and pid and process_gone(pid):
                shown, note = C.WorkerState.LOST, "process gone (not yet marked lost in Redis)"
            workers.append(
                {
                    "worker_id": wid,
                    "state": shown,
                    "redis_state": state,
                    "note": note,
                    "hostname": raw.get("hostname"),
                    "pid": pid,
                    "heartbeat_age": age,
                    "n_done": _int(raw.get("n_done")) or 0,
                    "rss": _int(raw.get("rss")),
                    # Dask results kept on its host (the data plane's counter, with the heartbeat)
                    "bytes_held": _int(raw.get("bytes_held")),
                    "current": current.get(wid, []) if state == C.WorkerState.RUNNING else [],
                    "priority_queue": queue_len,
                    "started_at": _float(raw.get("started_at")),
                    "stopped_at": _float(raw.get("stopped_at")),
                    "resources": raw.get("resources") or "{}",
                }
            )
        workers.sort(key=lambda w: (w["state"] != C.WorkerState.RUNNING, w["started_at"] or 0.0, w["worker_id"]))
        return workers, priority

    def _track_running(self, now: float, running_keys: list[str], running_fields: list[Any]) -> None:
        """Open a stream entry for each task seen running; close it when it is gone (to ``now``).

        Rush tasks get their exact times from their hash once in ``finished``;
        graph nodes are deleted once released, so their end is known to the poll period.
        """
        seen = set()
        for key, (wid, started, graph) in zip(running_keys, running_fields):
            seen.add(key)
            if key not in self._running and wid is not None:
                entry: dict[str, Any] = {
                    "key": key,
                    "worker_id": _text(wid),
                    "start": _float(started) or now,
                    "end": None,
                    "graph": _text(graph),
                }
                self._running[key] = entry
                self.stream.append(entry)
        for key in [k for k in self._running if k not in seen]:
            entry = self._running.pop(key)
            entry["end"] = now
            if entry["graph"] is not None:
                self.durations.append(now - entry["start"])

    def _read_finished(self, n_finished: int) -> None:
        """Exact start and end times of the Rush tasks that finished since the last poll.

        Read from the task hashes (three fields each), not the archive rows,
        which carry the inputs and results: those may be megabytes.
        """
        if self._finished_offset is None or n_finished < self._finished_offset:  # first poll, or a reset
            self._finished_offset = max(0, n_finished - STREAM)
        if n_finished <= self._finished_offset:
            return
        start = max(self._finished_offset, n_finished - FINISHED_STEP)
        keys = [_str(k) for k in self.client.lrange(self.keys.finished, start, n_finished - 1)]
        self._finished_offset = n_finished
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(self.keys.task(key), "worker_id", "started_at", "finished_at")
        for key, (wid, started, ended) in zip(keys, pipe.execute()):
            started, ended = _float(started), _float(ended)
            entry = self._running.pop(key, None)
            if entry is None:
                entry = {"key": key, "worker_id": _text(wid), "start": started, "end": ended, "graph": None}
                if started is None:
                    continue  # its hash is gone (a reset meanwhile)
                self.stream.append(entry)
            entry.update(start=started or entry["start"], end=ended)
            if started is not None and ended is not None:
                self.durations.append(ended - started)

    def _read_failed(self, n_failed: int) -> None:
        if n_failed == self._failed_len:
            return
        self._failed_len = n_failed
        keys = [_str(k) for k in self.client.lrange(self.keys.failed, -FAILED_SHOWN, -1)]
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(self.keys.task(key), "worker_id", "error", "traceback", "finished_at")
        failed = []
        for key, (wid, error, tb, at) in zip(keys, pipe.execute() if keys else []):
            failed.append(
                {
                    "key": key,
                    "worker_id": _text(wid),
                    "error": redact_text(_text(error) or ""),
                    "traceback": redact_text(_text(tb) or ""),
                    "time": _float(at),
                }
            )
        self._failed = failed[::-1]  # newest first

    def _log_lines(self) -> list[dict[str, Any]]:
        records = self._log_reader.read()[-LOG_LINES:]
        return [
            {
                "time": r["time"],
                "worker_id": r["worker_id"],
                "level": r["level"],
                "logger": r["logger"],
                "message": redact_text(str(r["message"])),
            }
            for r in records
        ]

    def _track_computes(self, now: float, gids: list[str], replies: list[Any]) -> None:
        """Progress of the computes holding a lease: nodes done of ``n``.

        The graph's hash counts its finished nodes (``done``, one HINCRBY in
        the script that finishes a node). A compute's graph hash goes when its last
        node is released, or when it is cancelled: Redis keeps no trace of
        which, so one that vanished is shown as ``ended`` at 100 %.
        """
        present = set()
        for gid, (n, _live, finished) in zip(gids, replies):
            if n is None:
                continue
            present.add(gid)
            total = int(n)
            compute = self.computes.setdefault(gid, {"graph_id": gid, "first_seen": now, "state": "running"})
            done = min(total, int(finished or 0))
            compute.update(total=total, done=max(0, done), state="running", updated=now)
        for gid, compute in self.computes.items():
            if gid not in present and compute["state"] == "running":
                compute.update(state="ended", done=compute["total"], ended=now)
        ended = [g for g, c in self.computes.items() if c["state"] == "ended"]
        for gid in ended[:-20]:  # keep the last 20 ended computes
            del self.computes[gid]

    def _throughput(self) -> float:
        """Tasks finished per second over the last 10 s of history."""
        if len(self.history) < 2:
            return 0.0
        last = self.history[-1]
        first = next((p for p in self.history if last["t"] - p["t"] <= 10.0), last)
        span = last["t"] - first["t"]
        done = (last["finished"] + last["failed"]) - (first["finished"] + first["failed"])
        return max(0.0, done / span) if span > 0 else 0.0

    def _read_info(self) -> None:
        if time.monotonic() - self._info_at < INFO_EVERY:
            return
        self._info_at = time.monotonic()
        info = self.client.info()
        self._info = {
            name: info.get(name)
            for name in (
                "used_memory",
                "used_memory_peak",
                "maxmemory",
                "connected_clients",
                "redis_version",
                "total_commands_processed",
                "used_cpu_sys",
                "used_cpu_user",
            )
        }

    def _scan(self) -> None:
        if time.monotonic() - self._scan_at < SCAN_EVERY:
            return
        self._scan_at = time.monotonic()
        counts = count_network_keys(self.client)
        self._n_keys = counts.get(self.keys.network_id, 0)
        self.networks = sorted(counts)

    def take_durations(self) -> list[float]:
        """Run times (s) of the tasks that finished since the last call (for the histogram)."""
        with self.lock:
            durations, self.durations = self.durations, []
        return durations
