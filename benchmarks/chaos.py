"""Chaos run: Dask graphs and plain tasks while workers and Redis are killed at random.

    python -m benchmarks.chaos --seconds 120 --workers 4 --nodes 10000 --tasks 2000 --seed 1

Two workloads run side by side on one network, on a private Redis server with
AOF on: (a) a Dask graph of about ``--nodes`` nodes (a stencil of integer nodes,
each depending on three nodes of the layer before, reduced to one sum, plus a
``dask.array`` sum and a matmul of 0.7 MB integer chunks whose intermediates
stay in files on the host, not in Redis) computed with ``scheduler=rush`` again and again, and (b)
batches of ``--tasks`` plain tasks pushed with ``push_tasks``. Meanwhile a
driver thread SIGKILLs workers, SIGSTOPs them (SIGCONT before or after they
are declared lost), restarts Redis (SIGTERM, or SIGKILL) and starts new workers.

At the end it checks that every result is exact, no task is lost or recorded
twice (``tasks``, ``finished`` and ``archive`` hold each key once), no key of
any graph is left in Redis nor any result file on the host, and ``reset()``
leaves nothing. It prints the
faults it injected and what the network recovered, and exits with 1 on any
violation. ``tests/test_chaos.py`` runs the same code with a small budget.
"""

from __future__ import annotations

import argparse
import base64
import collections
import gc
import os
import pickle
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np
import redis
from dask.delayed import Delayed
from msgpack import unpackb

from rush_dask import Rush, plan
from rush_dask.core.connections import current_plan
from rush_dask.core.errors import RedisUnavailableError
from rush_dask.core.heartbeat import EXIT_LOST, EXIT_REDIS_GONE
from rush_dask.core.server import RedisServer

PRIME = 1_000_003
MAX_LOST = 1_000_000  # a task may be lost any number of times here: kills are the point


# ------------------------------------------------------------ worker functions
def mix(left: int, middle: int, right: int, layer: int) -> int:
    """One stencil node: depends on three nodes of the layer before."""
    return (left + 2 * middle + 3 * right + layer) % PRIME


def total(*values: int) -> int:
    return sum(values)


def square_task(x: int, duration: float = 0.0, **kwargs) -> dict:
    """The plain task: sleep a little so that kills hit running tasks."""
    if duration:
        time.sleep(duration)
    return {"y": x * x + 1}


def inc_square(x: int, salt: int) -> int:
    """A future of the holdings workload."""
    return x * x + salt


# --------------------------------------------------------------------- graphs
def stencil_shape(nodes: int) -> tuple[int, int]:
    """(width, depth) of a stencil with about ``nodes`` nodes in all (sum tree included)."""
    width = max(4, int(nodes**0.5))
    fan_in = 8
    reduce_nodes = sum(-(-width // fan_in**i) for i in range(1, 8) if width > fan_in ** (i - 1))
    depth = max(1, (nodes - reduce_nodes) // width)
    return width, depth


def stencil_graph(width: int, depth: int, salt: int) -> tuple[Delayed, int]:
    """A Delayed for the stencil graph and its exact value, computed here."""
    name = f"stencil-{salt}"
    dsk: dict = {}
    values = [(salt * 7919 + j) % PRIME for j in range(width)]
    for j in range(width):
        dsk[(name, 0, j)] = values[j]
    for layer in range(1, depth):
        new = []
        for j in range(width):
            left, right = (j - 1) % width, (j + 1) % width
            dsk[(name, layer, j)] = (
                mix,
                (name, layer - 1, left),
                (name, layer - 1, j),
                (name, layer - 1, right),
                layer,
            )
            new.append(mix(values[left], values[j], values[right], layer))
        values = new
    level = [(name, depth - 1, j) for j in range(width)]
    step = 0
    while len(level) > 1:  # sum tree, fan-in 8
        step += 1
        nxt = []
        for i in range(0, len(level), 8):
            key = (f"{name}-sum", step, i // 8)
            dsk[key] = (total, *level[i : i + 8])
            nxt.append(key)
        level = nxt
    return Delayed(level[0], dsk), sum(values)


def array_sum(n: int, chunks: int):
    """A dask.array reduction and its exact value."""
    return da.arange(n, chunks=chunks, dtype="int64").sum(), n * (n - 1) // 2


def large_chunk_matmul(n: int, chunk: int, scale: int):
    """``(x @ x.T).sum()`` of an integer matrix of 0.7 MB chunks (held on their workers'
    host, not in Redis) and its exact value."""
    x = da.full((n, n), scale, chunks=chunk, dtype="int64")
    return (x @ x.T).sum(), scale * scale * n**3


# ---------------------------------------------------------------------- chaos
@dataclass
class Stats:
    faults: Counter = field(default_factory=Counter)
    recovered: Counter = field(default_factory=Counter)
    work: Counter = field(default_factory=Counter)
    violations: list = field(default_factory=list)

    def violation(self, text: str) -> None:
        self.violations.append(text)
        print(f"VIOLATION: {text}", file=sys.stderr, flush=True)


class Chaos:
    """One chaos run. ``Chaos(seconds=30, nodes=2000).run()`` returns :class:`Stats`."""

    def __init__(
        self,
        *,
        seconds: float = 120,
        workers: int = 4,
        seed: int = 0,
        nodes: int = 10_000,
        tasks: int = 2_000,
        heartbeat_period: float = 0.25,
        heartbeat_expire: float = 2.0,
        hang_timeout: float = 600,
        directory: str | None = None,
        verbose: bool = True,
        matmul_size: int = 1200,
        holder_lease: float = 30.0,
        receiver_lease: float = 8.0,
    ):
        self.seconds, self.n_workers, self.nodes, self.n_tasks = seconds, workers, nodes, tasks
        self.matmul_size = matmul_size  # large chunks: results held on the host, not in Redis
        self.random = random.Random(seed)  # the driver's faults
        self.durations = random.Random(seed + 1)  # the plain tasks' sleeps
        self.worker_options = {
            "heartbeat_period": heartbeat_period,
            "heartbeat_expire": heartbeat_expire,
            "redis_retry_timeout": 120,
        }
        self.hang_timeout = hang_timeout
        self.own_directory = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="rush-chaos-")
        self.verbose = verbose
        self.stats = Stats()
        self.network = f"chaos-{seed}-{os.getpid()}"
        self.done = threading.Event()  # the fault budget is spent: workloads finish their round
        self.stopped: dict[str, tuple[float | None, object]] = {}  # wid -> (resume at, process)
        self.plain_expected: dict[str, int] = {}
        # The holdings workload: the lease of its first client (which the driver's load must not
        # starve) and of the second one, a process of its own that is SIGKILLed now and then.
        self.holder_lease, self.receiver_lease = holder_lease, receiver_lease
        self.holdings_random = random.Random(seed + 2)

    def log(self, text: str) -> None:
        if self.verbose:
            print(f"[{time.monotonic() - self.t0:7.1f} s] {text}", flush=True)

    # ------------------------------------------------------------ run
    def run(self) -> Stats:
        """Start Redis and the workers, run both workloads under faults, check, clean up.

        >>> stats = Chaos(seconds=20, nodes=1_000, tasks=200).run()   # doctest: +SKIP
        >>> stats.violations                                          # doctest: +SKIP
        []
        """
        self.t0 = time.monotonic()
        # Workers are the driver's alone: a controller that finds none running (all declared
        # lost during a Redis outage) waits for the replacements instead of starting its own.
        previous = current_plan()
        restore = (previous.n_workers, previous.url)
        plan(n_workers=0, url=previous.url)
        try:
            return self._run()
        finally:
            plan(*restore)

    def _run(self) -> Stats:
        self.server = RedisServer(os.path.join(self.directory, "redis"), appendonly=True)
        os.makedirs(self.server.directory, exist_ok=True)
        self.server.start()
        # One controller per thread: the driver (owns the worker processes) and one per workload.
        self.driver = Rush(self.network, url=self.server.url)
        try:
            self.driver.start_workers(
                square_task, self.n_workers, log_dir=os.path.join(self.directory, "logs"), **self.worker_options
            )
            self.driver.wait_for_workers(self.n_workers, timeout=self.hang_timeout)
            threads = [
                threading.Thread(target=self._guard, args=(target,), name=target.__name__)
                for target in (self.graph_workload, self.plain_workload, self.holdings_workload)
            ]
            for thread in threads:
                thread.start()
            self.drive(threads)
            for thread in threads:
                thread.join(self.hang_timeout)
                if thread.is_alive():
                    self.stats.violation(
                        f"{thread.name} still running {self.hang_timeout} s after the fault budget ended (hang)"
                    )
            if not any(t.is_alive() for t in threads):
                self.check_end_state()
        finally:
            self.cleanup()
        return self.stats

    def _guard(self, target) -> None:
        try:
            target()
        except Exception as exc:  # noqa: BLE001 - any exception in a workload is a violation
            self.stats.violation(f"{target.__name__} raised {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------ workloads
    def graph_workload(self) -> None:
        """Compute the stencil graph and an array sum again and again; each value must be exact."""
        rush = Rush(self.network, url=self.server.url)
        try:
            width, depth = stencil_shape(self.nodes)
            round_ = 0
            while not self.done.is_set():
                round_ += 1
                graph, expected = stencil_graph(width, depth, salt=round_)
                array, array_expected = array_sum(100_000 + round_, chunks=1_000)
                matmul, matmul_expected = large_chunk_matmul(self.matmul_size, 300, scale=round_)
                while rush.n_running_workers == 0:  # else compute would start default workers itself
                    time.sleep(0.05)
                got = dask.compute(graph, array, matmul, scheduler=rush, max_lost=MAX_LOST, timeout=self.hang_timeout)
                if got != (expected, array_expected, matmul_expected):
                    self.stats.violation(
                        f"graph round {round_}: got {got}, expected {(expected, array_expected, matmul_expected)}"
                    )
                self.stats.work["graph computes"] += 1
                self.stats.work["graph nodes"] += len(graph.dask) + len(array.dask) + len(matmul.dask)
                self.log(
                    f"graph round {round_} exact ({len(graph.dask) + len(array.dask)} nodes and a "
                    f"{self.matmul_size}² matmul of 0.7 MB chunks)"
                )
        finally:
            rush.close()  # what it may still hold goes with it

    def plain_workload(self) -> None:
        """Push batches of plain tasks and wait for them; the results are checked at the end."""
        rush = Rush(self.network, url=self.server.url)
        try:
            start = 0
            while not self.done.is_set():
                xs = range(start, start + self.n_tasks)
                start += self.n_tasks
                durations = [self.durations.choice((0.0, 0.0, 0.001, 0.01)) for _ in xs]
                keys = rush.push_tasks([{"x": x, "duration": d} for x, d in zip(xs, durations)], max_lost=MAX_LOST)
                self.plain_expected.update({k: x * x + 1 for k, x in zip(keys, xs)})
                rush.wait_for_tasks(keys, timeout=self.hang_timeout, progress=False)
                self.stats.work["plain tasks"] += len(keys)
                self.log(f"plain batch of {len(keys)} done")
        finally:
            rush.close()  # what it may still hold goes with it

    def holdings_workload(self) -> None:
        """Hold results under client leases and let go of them, round after round.

        A first client persists an array, maps futures and submits one that sums them; it
        computes on what it holds (the persisted chunks as inputs, and as outputs), persists
        the persisted array again, then passes the sum's future by pickle to a second client
        (a process of its own, see :func:`receiver_main`) and releases its own. Between the
        two, :func:`check_refs` compares every node's ``refs`` with what really holds it.
        The second client reads the sum and releases it, or is SIGKILLed while it holds it
        (its lease then expires and a sweep drops what it held). The first client releases
        everything; its record in Redis must then be empty.
        """
        rush = Rush(self.network, url=self.server.url)
        receiver = Receiver(self)
        self.log(f"holdings: first client {rush._completions.client_id}, second {receiver.client_id}")
        round_ = 0
        try:
            while not self.done.is_set():
                round_ += 1
                salt = round_
                x = da.arange(2_000, chunks=100, dtype="int64") * salt
                (kept,) = dask.persist(x, scheduler=rush, lease=self.holder_lease, max_lost=MAX_LOST)
                # (Futures take no max_lost: 3 losses of one instant call are not to be expected.)
                futures = rush.map(inc_square, range(20), salt=salt, lease=self.holder_lease)
                summed = rush.submit(total, *futures, lease=self.holder_lease)
                expected_sum = sum(i * i + salt for i in range(20))
                got_sum, got_chunks = dask.compute(
                    kept.sum(), kept, scheduler=rush, max_lost=MAX_LOST, timeout=self.hang_timeout
                )
                if got_sum != salt * 1_999_000 or not np.array_equal(got_chunks, np.arange(2_000) * salt):
                    self.stats.violation(
                        f"holdings round {round_}: computes on the persisted array "
                        f"got {got_sum} and {got_chunks[:5]}..."
                    )
                (again,) = dask.persist(kept, scheduler=rush)  # what is held already: nothing more
                receiver.ask(f"hold {base64.b64encode(pickle.dumps((summed, expected_sum))).decode()}", expect="held")
                summed.release()  # from now on, only the second client holds the sum
                for problem in check_refs(rush):
                    self.stats.violation(f"holdings round {round_}: {problem}")
                receiver.ask("check", expect="ok")
                if round_ == 1 or self.holdings_random.random() < 0.3:
                    receiver.kill()  # while it holds the sum: its lease must take it away
                    self.stats.faults["holder_sigkill"] += 1
                    self.log(f"holder_sigkill: second client {receiver.client_id} killed holding a future")
                    receiver = Receiver(self)
                    self.log(f"holdings: new second client {receiver.client_id}")
                else:
                    receiver.ask("release", expect="released")
                for future in futures:
                    future.release()
                del kept, again, x, got_chunks
                gc.collect()  # the persisted chunks' futures go: released by the client's listener
                self.stats.work["holding rounds"] += 1
                self.log(f"holdings round {round_} exact")
            # Everything was released: nothing is recorded under the first client's lease.
            client_refs = rush.keys.client_refs(rush._completions.client_id)
            deadline = time.monotonic() + self.hang_timeout
            while rush.client.exists(client_refs) and time.monotonic() < deadline:
                time.sleep(0.1)
            left = rush.client.hgetall(client_refs)
            if left:
                self.stats.violation(
                    f"the first holder released everything but still holds {len(left)} "
                    f"nodes, e.g. {sorted(left.items())[:3]}"
                )
        finally:
            receiver.close()
            rush.close()

    # ------------------------------------------------------------ faults
    def _victims(self) -> list[str]:
        running = set(self.driver.running_worker_ids)
        return [
            wid
            for wid, proc in self.driver.local_workers.processes.items()
            if proc.alive and wid in running and wid not in self.stopped
        ]

    def drive(self, threads: list[threading.Thread]) -> None:
        """Inject faults until the budget is spent; each kind once first, then at random."""
        plan = collections.deque(["sigkill", "sigstop_resume", "sigstop_until_lost", "redis_restart", "redis_sigkill"])
        kinds = [
            "sigkill",
            "sigkill",
            "sigstop_resume",
            "sigstop_until_lost",
            "redis_restart",
            "redis_sigkill",
            "start_worker",
        ]
        deadline = self.t0 + self.seconds
        last_restart = 0.0
        while (time.monotonic() < deadline or plan) and any(t.is_alive() for t in threads):
            time.sleep(self.random.uniform(0.2, 1.2))
            self.maintain()
            from_plan = bool(plan)
            kind = plan.popleft() if plan else self.random.choice(kinds)
            if kind.startswith("redis") and time.monotonic() - last_restart < 5 and not from_plan:
                continue
            victims = self._victims()
            if kind.startswith("sig") and len(victims) < 2:  # keep one worker going
                if from_plan:
                    plan.appendleft(kind)
                continue
            if kind == "sigkill":
                wid = self.random.choice(victims)
                self.driver.local_workers.processes[wid].signal(signal.SIGKILL)
            elif kind.startswith("sigstop"):
                wid = self.random.choice(victims)
                expire = self.worker_options["heartbeat_expire"]
                resume_at = (
                    time.monotonic() + self.random.uniform(0.1, 0.8 * expire) if kind == "sigstop_resume" else None
                )
                self.driver.local_workers.processes[wid].signal(signal.SIGSTOP)
                self.stopped[wid] = (resume_at, self.driver.local_workers.processes[wid])
            elif kind.startswith("redis"):
                started = time.monotonic()
                if kind == "redis_restart":  # SIGTERM: Redis finishes its AOF and exits
                    self.server.restart()
                else:  # SIGKILL: with appendfsync always, every reply sent is on disk
                    self.server.process.kill()
                    self.server.process.wait()
                    self.server.start()
                last_restart = time.monotonic()
                self.log(f"{kind}: Redis back in {last_restart - started:.2f} s")
            else:
                self.driver.start_workers(
                    square_task, 1, log_dir=os.path.join(self.directory, "logs"), **self.worker_options
                )
            self.stats.faults[kind] += 1
            if not kind.startswith("redis"):
                self.log(kind)
        self.done.set()
        self.log("fault budget spent; resuming stopped workers and letting the workloads finish")
        while self.stopped:
            self.maintain(final=True)
            time.sleep(0.1)
        while any(t.is_alive() for t in threads):
            self.maintain()
            time.sleep(0.2)

    def maintain(self, final: bool = False) -> None:
        """Resume stopped workers when due (those left until lost: once declared lost),
        detect lost workers, and start workers until ``workers`` are running and not stopped."""
        self.driver.detect_lost_workers()
        states = self.driver._worker_states()
        for wid, (resume_at, proc) in list(self.stopped.items()):
            lost = states.get(wid) == "lost"
            if resume_at is None and lost or resume_at is not None and (final or time.monotonic() >= resume_at):
                proc.signal(signal.SIGCONT)
                del self.stopped[wid]
                if resume_at is None:
                    self.stats.recovered["workers declared lost while stopped"] += 1
        active = [wid for wid in self._victims()]
        starting = [p for wid, p in self.driver.local_workers.processes.items() if p.alive and wid not in states]
        missing = self.n_workers - len(active) - len(starting)
        if missing > 0:
            self.driver.start_workers(
                square_task, missing, log_dir=os.path.join(self.directory, "logs"), **self.worker_options
            )
            self.stats.recovered["replacement workers started"] += missing

    # ------------------------------------------------------------ checks
    def check_end_state(self) -> None:
        # A SIGKILLed holder's lease must expire and a sweep (a worker's heartbeat) drop what it held.
        self.wait_for_dead_holders(self.receiver_lease + 10)
        for problem in check_refs(self.driver):
            self.stats.violation(f"at the end: {problem}")
        check_network(self.driver, self.plain_expected, self.stats)
        check_result_files(self.driver, self.stats, timeout=30 * self.worker_options["heartbeat_expire"])

    def wait_for_dead_holders(self, seconds: float) -> None:
        """Wait (at most ``seconds``) until no client holds anything: every holder closed, or
        died and was reaped. What is left then is reported by ``check_network``."""
        k, client = self.driver.keys, self.driver.client
        deadline = time.monotonic() + seconds

        def holding() -> bool:
            return bool(client.zcard(k.clients)) or any(
                next(client.scan_iter(match=f"{k.prefix}{family}:*", count=1000), None) is not None
                for family in ("crefs", "creq")
            )

        while holding() and time.monotonic() < deadline:
            time.sleep(0.2)
        if holding():  # reported by check_network as unexpected keys; here, what they are
            now = float(client.time()[0])
            leases = {
                cid.decode(): round(score - now, 1) for cid, score in client.zrange(k.clients, 0, -1, withscores=True)
            }
            self.log(
                f"still holding after {seconds:g} s: clients (s left of their lease) {leases}, "
                f"crefs/creq {sorted(client.scan_iter(match=k.prefix + 'c*:*'))}"
            )

    def cleanup(self) -> None:
        for _, proc in list(self.stopped.values()):
            proc.signal(signal.SIGCONT)
        self.stopped.clear()
        driver = getattr(self, "driver", None)
        if driver is not None:
            try:
                codes = Counter(p.process.poll() for p in driver.local_workers.processes.values())
                self.stats.recovered["workers that came back and exited as lost"] = codes.get(EXIT_LOST, 0)
                if codes.get(EXIT_REDIS_GONE):
                    self.stats.violation(f"{codes[EXIT_REDIS_GONE]} workers gave up on Redis")
                driver.reset()
                left = list(driver.client.scan_iter(match=driver.keys.pattern))
                if left:
                    self.stats.violation(f"reset() left {len(left)} keys, e.g. {left[:3]}")
            except redis.RedisError as exc:
                self.stats.violation(f"cleanup failed: {type(exc).__name__}: {exc}")
            driver.close()
        self.server.stop(cleanup=True)
        if self.stats.violations:
            print(f"worker logs kept in {self.directory}/logs", file=sys.stderr)
        elif self.own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)


def check_network(rush: Rush, expected: dict[str, int], stats: Stats) -> None:
    """Check the invariants on a network whose work is done; ``expected``: plain task key -> y.

    Violations go to ``stats.violations``, what was recovered to ``stats.recovered``.

    >>> stats = Stats(); check_network(rush, {key: 1}, stats); stats.violations   # doctest: +SKIP
    []
    """
    client = rush.client
    k = rush.keys
    finished = [key.decode() for key in client.lrange(k.finished, 0, -1)]
    failed = [key.decode() for key in client.lrange(k.failed, 0, -1)]
    all_tasks = [key.decode() for key in client.lrange(k.all_tasks, 0, -1)]
    archive_keys = [unpackb(row, raw=True)[0].decode() for row in client.lrange(k.archive, 0, -1)]
    for name, keys in (("finished", finished), ("tasks", all_tasks), ("archive", archive_keys)):
        twice = [key for key, n in Counter(keys).items() if n > 1]
        if twice:
            stats.violation(f"{len(twice)} tasks recorded twice in '{name}', e.g. {twice[:3]}")
        if set(keys) != set(expected):
            stats.violation(
                f"'{name}' misses {len(set(expected) - set(keys))} tasks and has "
                f"{len(set(keys) - set(expected))} unknown ones"
            )
    if archive_keys != finished:
        stats.violation("'archive' rows are not aligned with 'finished'")
    if failed:
        stats.violation(f"{len(failed)} tasks failed, e.g. {failed[:3]}")
    data = rush.fetch_finished_tasks()
    wrong = [key for key, y in zip(data["keys"], data["y"]) if expected.get(key) != y]
    if wrong:
        stats.violation(f"{len(wrong)} plain tasks have a wrong result, e.g. {wrong[:3]}")
    keys = list(expected)
    fields = [
        f
        for i in range(0, len(keys), 10_000)
        for f in rush.scripts.fetch_tasks(keys[i : i + 10_000], ("state", "n_lost", "attempts"))
    ]
    states = Counter(f[0].decode() if f[0] else None for f in fields)
    if states != Counter({"finished": len(expected)}):
        stats.violation(f"plain task states at the end: {dict(states)}")
    stats.recovered["plain tasks requeued after a lost worker"] = sum(int(f[1] or 0) for f in fields)
    stats.recovered["plain tasks run more than once"] = sum(int(f[2] or 0) > 1 for f in fields)

    # Only the expected kinds of keys are left: nothing of any graph, nothing queued or running.
    plain = {k.task(key).encode() for key in expected}
    allowed = (
        "tasks",
        "finished",
        "archive",
        "seq",
        "worker_states",
        "worker:",
        "start:",
        "fun:",
        "log:",
        "hb:",
        "wake",
        "gc:",
        "lqs",
        "sweep",
    )
    left = [key for key in client.scan_iter(match=k.pattern, count=1000) if key not in plain]
    odd = [key.decode() for key in left if not key.decode()[len(k.prefix) :].startswith(allowed)]
    if odd:
        stats.violation(f"{len(odd)} unexpected keys left in Redis, e.g. {sorted(odd)[:5]}")

    worker_states = Counter(s.decode() for s in client.hvals(k.worker_states))
    stats.recovered["workers declared lost"] = worker_states.get("lost", 0)


# What holds a graph node, read in one atomic step: the client holds recorded under the
# clients' leases (crefs:<client>), the dependents that still have to run (their deps), and
# the holds of computes on outputs that were futures (field held of their graph). Nodes of
# computes (notify '1') are left out: their client's own references are recorded nowhere.
_REFS_CHECK = """
local p = ARGV[1]
local held, need, nodes, out = {}, {}, {}, {}
for _, ck in ipairs(redis.call('KEYS', p .. 'crefs:*')) do
  local kv = redis.call('HGETALL', ck)
  for i = 1, #kv, 2 do held[kv[i]] = (held[kv[i]] or 0) + tonumber(kv[i + 1]) end
end
for _, tk in ipairs(redis.call('KEYS', p .. 'task:*')) do
  local f = redis.call('HMGET', tk, 'graph', 'state', 'deps', 'refs', 'notify')
  if f[1] then
    if f[2] ~= 'finished' and f[2] ~= 'failed' then
      for dep in string.gmatch(f[3] or '', '%S+') do need[dep] = (need[dep] or 0) + 1 end
    end
    if f[5] ~= '1' then nodes[#nodes + 1] = {string.sub(tk, #p + 6), tonumber(f[4] or '0')} end
  end
end
for _, gk in ipairs(redis.call('KEYS', p .. 'graph:*')) do
  if redis.call('TYPE', gk)['ok'] == 'hash' then
    for key in string.gmatch(redis.call('HGET', gk, 'held') or '', '%S+') do need[key] = (need[key] or 0) + 1 end
  end
end
for _, n in ipairs(nodes) do
  local h, d = held[n[1]] or 0, need[n[1]] or 0
  if n[2] ~= h + d then
    out[#out + 1] = n[1] .. ': refs ' .. n[2] .. ', held by clients ' .. h .. ', needed by dependents ' .. d
  end
end
for key, n in pairs(held) do
  if redis.call('EXISTS', p .. 'task:' .. key) == 0 then
    out[#out + 1] = key .. ': held ' .. n .. ' times by clients, but the node is gone'
  end
end
return out
"""


def check_refs(rush: Rush) -> list[str]:
    """Nodes whose ``refs`` is not what really holds them: their dependents still to run plus
    the client holds recorded under leases; and holds recorded on nodes that are gone.
    One atomic read (a script), so that it can run while workers and clients write.

    >>> check_refs(rush)   # doctest: +SKIP
    []
    """
    found = rush.client.eval(_REFS_CHECK, 0, rush.keys.prefix)
    return [line.decode() for line in found]


class Receiver:
    """The second client of the holdings workload: a process of its own (``receiver_main``),
    driven line by line; a reply it did not give or a wrong one is a violation."""

    def __init__(self, chaos: Chaos):
        self.chaos = chaos
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        code = (
            f"import sys; sys.path.insert(0, {root!r}); from benchmarks.chaos import receiver_main; "
            f"receiver_main({chaos.network!r}, {chaos.server.url!r}, {chaos.receiver_lease!r}, "
            f"{chaos.hang_timeout!r})"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.client_id = self._read() or "?"

    def _read(self) -> str | None:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], self.chaos.hang_timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            self.chaos.stats.violation(
                f"second client {getattr(self, 'client_id', '?')} did not answer (exit code {self.process.poll()})"
            )
            return None
        return line.strip()

    def ask(self, line: str, expect: str) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(line + "\n")
            self.process.stdin.flush()
        except OSError as exc:
            self.chaos.stats.violation(f"second client {self.client_id} is gone: {exc}")
            return
        reply = self._read()
        if reply is not None and reply != expect:
            self.chaos.stats.violation(f"second client {self.client_id}, asked {line.split()[0]!r}: {reply}")

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def close(self) -> None:
        if self.process.poll() is None:
            self.ask("exit", expect="closed")
            self.process.wait(timeout=60)


def receiver_main(network: str, url: str, lease: float, timeout: float) -> None:
    """The second client: it receives futures by pickle (held anew by its own controller, see
    ``rush_dask.dask.futures.adopt_future``), reads them, releases them; one command per line."""
    deadline = time.monotonic() + timeout
    while True:  # it may start while Redis restarts: Rush() does not wait for a server
        try:
            rush = Rush(network, url=url)
            break
        except RedisUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    rush.client_lease.hold(lease)  # this client's lease: short, so that its death is noticed soon
    print(rush._completions.client_id, flush=True)
    held: Any = None
    expected: Any = None
    for line in sys.stdin:
        command, _, arg = line.strip().partition(" ")
        if command == "exit":
            break
        try:
            if command == "hold":
                held, expected = pickle.loads(base64.b64decode(arg))
                reply = "held"
            elif command == "check":
                value = held.result(timeout=timeout)
                reply = "ok" if value == expected else f"got {value!r}, expected {expected!r}"
            elif command == "release":
                held.release()
                held = None
                reply = "released"
            else:
                reply = f"unknown command {command!r}"
        except Exception as exc:  # noqa: BLE001 - any error is reported to the driver
            reply = f"{type(exc).__name__}: {exc}"
        print(reply, flush=True)
    rush.close()
    print("closed", flush=True)


def check_result_files(rush: Rush, stats: Stats, timeout: float) -> None:
    """No result file of a finished graph stays on the host: the live workers delete what the
    garbage lists name and, when idle, sweep files whose node is gone (an entry lost in a crash)."""
    store = rush.plane.store
    deadline = time.monotonic() + timeout

    def files() -> list:
        return [p for d in (store.shm_dir, store.spill_dir) if d is not None and d.is_dir() for p in d.iterdir()]

    while files() and time.monotonic() < deadline:
        time.sleep(0.2)
    left = files()
    if left:
        stats.violation(f"{len(left)} result files left on the host, e.g. {[p.name for p in left[:3]]}")


def report(stats: Stats, seconds: float) -> str:
    lines = [f"chaos run of {seconds:.0f} s"]
    for title, counter in (
        ("work done", stats.work),
        ("faults injected", stats.faults),
        ("recovered", stats.recovered),
    ):
        lines.append(f"{title}:")
        lines += [f"  {name:45s} {n}" for name, n in sorted(counter.items())]
    lines.append(f"violations: {len(stats.violations)}")
    lines += [f"  {v}" for v in stats.violations]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120, help="fault budget in seconds (default 120)")
    parser.add_argument("--workers", type=int, default=4, help="workers kept running (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault schedule (default 0)")
    parser.add_argument("--nodes", type=int, default=10_000, help="nodes of the stencil graph (default 10,000)")
    parser.add_argument("--tasks", type=int, default=2_000, help="plain tasks per batch (default 2,000)")
    parser.add_argument("--quiet", action="store_true", help="print only the final report")
    args = parser.parse_args(argv)
    started = time.monotonic()
    stats = Chaos(
        seconds=args.seconds,
        workers=args.workers,
        seed=args.seed,
        nodes=args.nodes,
        tasks=args.tasks,
        verbose=not args.quiet,
    ).run()
    print(report(stats, time.monotonic() - started))
    return 1 if stats.violations else 0


if __name__ == "__main__":
    # Run the module's own copy, so workers get functions pickled by reference to
    # benchmarks.chaos rather than by value from __main__.
    import importlib

    sys.exit(importlib.import_module("benchmarks.chaos").main())
