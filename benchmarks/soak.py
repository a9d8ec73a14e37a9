"""Soak: a mix of every workload for M minutes on one Redis; nothing may pile up.

    python -m benchmarks.soak --minutes 30 --workers 2

On a private Redis server, one network with ``--workers`` real worker
processes runs rounds of:

* plain tasks (``push_tasks``, squares) on a second network of its own,
  whose archive is the point of plain tasks: it is ``reset()`` at the end;
* a Dask compute (a stencil of delayed nodes and a ``dask.array`` sum);
* a persist, a compute on the persisted collection, then its release;
* futures (``submit``, ``map``, a future passed into ``dask.delayed``),
  gathered, then released;
* a **dying client**: a controller in a subprocess attached to the network
  that starts a compute (or, in turn, a persist or futures) of slow nodes and
  is SIGKILLed in the middle.

Checks, at the end (exit status 1 on any violation):

* every result was right;
* the key count of the network is back to its baseline (taken after a
  warm-up round) and Redis ``used_memory`` within ``--memory-tolerance``
  of it, once the leases of the dead clients expired. Every dying client
  works under a lease of ``--lease`` s: a compute's own lease, or the lease
  under which a client holds its persisted results and futures. So a dead
  client must leave nothing, whatever it was doing: its keys must be gone
  within the lease and a sweep (the wait is bounded by ``--lease`` + 30 s);
* no worker's resident memory grows without bound: the median of the last
  third of the samples is at most ``1.5 ×`` the first third's + 50 MB.

``tests/test_soak.py`` runs it for half a minute.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field

import dask
import dask.array as da
import redis

from rush_dask import Rush
from rush_dask.core.server import RedisServer

PRIME = 1_000_003


def square(x: int, **kwargs) -> dict:
    return {"y": x * x}


def inc(x: int) -> int:
    return x + 1


def slow_inc(x: int, seconds: float = 0.2) -> int:
    time.sleep(seconds)
    return x + 1


def add(*values: int) -> int:
    return sum(values) % PRIME


def stencil(width: int, depth: int, salt: int):
    """A layered graph of delayed nodes and its expected value (computed here)."""
    layer = [dask.delayed(inc)(salt + i) for i in range(width)]
    values = [salt + i + 1 for i in range(width)]
    for _ in range(depth):
        layer = [dask.delayed(add)(layer[i - 1], layer[i], layer[(i + 1) % width]) for i in range(width)]
        values = [(values[i - 1] + values[i] + values[(i + 1) % width]) % PRIME for i in range(width)]
    return dask.delayed(add)(*layer), sum(values) % PRIME


@dataclass
class Stats:
    rounds: int = 0
    plain_tasks: int = 0
    computes: int = 0
    persists: int = 0
    futures: int = 0
    dead_clients: dict = field(default_factory=lambda: {"compute": 0, "persist": 0, "futures": 0})
    violations: list = field(default_factory=list)
    settled_in: float = 0.0  # seconds from the end of the last round until the dead clients' keys were gone
    rss: dict = field(default_factory=dict)  # worker id -> [rss samples]

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.violations.append(what)


# ------------------------------------------------------------ dying clients
_DYING = r"""
import sys, time, dask, dask.array as da
sys.path.insert(0, {root!r})
from benchmarks.soak import slow_inc
from rush_dask import Rush
rush = Rush({network!r}, url={url!r})
mode = {mode!r}
nodes = [dask.delayed(slow_inc)(i) for i in range(40)]
if mode == "compute":
    print("started", flush=True)
    dask.compute(*nodes, scheduler=rush, lease={lease!r})
elif mode == "persist":
    kept = dask.persist(*nodes, scheduler=rush, lease={lease!r})
    print("started", flush=True)
    time.sleep(60)
else:
    futures = rush.map(slow_inc, range(40), lease={lease!r})
    print("started", flush=True)
    time.sleep(60)
"""


def dying_client(url: str, network: str, mode: str, lease: float) -> None:
    """Start a controller in a subprocess, let it work a moment, SIGKILL it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = _DYING.format(root=root, network=network, url=url, mode=mode, lease=lease)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline()  # the graph is being sent (compute) or was sent
        if line.strip() != b"started":
            raise RuntimeError(f"dying client did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


# --------------------------------------------------------------- workloads
def plain_round(plain: Rush, n: int, offset: int, stats: Stats) -> None:
    keys = plain.push_tasks([{"x": offset + i} for i in range(n)])
    plain.wait_for_tasks(keys, timeout=300)
    data = plain.fetch_tasks().set_index("keys").loc[keys]
    stats.check(list(data.y) == [(offset + i) ** 2 for i in range(n)], "plain task results wrong")
    stats.plain_tasks += n


def dask_round(rush: Rush, salt: int, stats: Stats) -> None:
    graph, expected = stencil(8, 4, salt)
    x = da.arange(20_000, chunks=2_000) + salt
    value, total = dask.compute(graph, x.sum(), scheduler=rush)
    stats.check(value == expected, f"compute stencil {salt}: {value} != {expected}")
    stats.check(int(total) == sum(range(20_000)) + 20_000 * salt, f"compute array sum {salt} wrong")
    stats.computes += 1

    kept = dask.persist(x * 2, scheduler=rush)[0]
    got = int(dask.compute(kept.sum(), scheduler=rush)[0])
    stats.check(got == 2 * (sum(range(20_000)) + 20_000 * salt), f"persisted sum {salt} wrong")
    del kept
    stats.persists += 1

    one = rush.submit(inc, salt)
    many = rush.map(inc, range(salt, salt + 20))
    later = dask.delayed(add)(one, 1)
    stats.check(rush.gather(many) == [i + 1 for i in range(salt, salt + 20)], "map results wrong")
    stats.check(dask.compute(later, scheduler=rush)[0] == salt + 2, "future in a delayed call wrong")
    stats.check(one.result(timeout=300) == salt + 1, "submit result wrong")
    for future in (one, *many):
        future.release()
    del one, many, later
    stats.futures += 21
    gc.collect()


# ----------------------------------------------------------------- checking
def keys_of(client: redis.Redis, rush: Rush) -> set[bytes]:
    """The network's keys, but its sweep turn (a key with a 1 s TTL that comes and goes)."""
    return set(client.scan_iter(match=rush.keys.pattern, count=1000)) - {rush.keys.sweep_turn.encode()}


def used_memory(client: redis.Redis) -> int:
    client.execute_command("MEMORY", "PURGE")  # give back the allocator's free pages first (jemalloc)
    return int(client.info("memory")["used_memory"])


def sample_rss(rush: Rush, stats: Stats) -> None:
    """Each running worker's resident memory, as it reports it with its heartbeat."""
    for wid in rush.running_worker_ids:
        rss = rush.client.hget(rush.keys.worker(wid), "rss")
        if rss is not None:
            stats.rss.setdefault(wid, []).append(int(rss))


def rss_growth(samples: list[int]) -> tuple[float, float]:
    """(median of the first third, median of the last third) of a worker's RSS samples, in MB."""
    third = max(1, len(samples) // 3)
    return statistics.median(samples[:third]) / 2**20, statistics.median(samples[-third:]) / 2**20


def wait_settled(client: redis.Redis, rush: Rush, baseline: set[bytes], seconds: float) -> set[bytes]:
    """The keys beyond the baseline once they stop shrinking (or after ``seconds``)."""
    deadline = time.monotonic() + seconds
    extra = keys_of(client, rush) - baseline
    while extra and time.monotonic() < deadline:
        time.sleep(1.0)
        extra = keys_of(client, rush) - baseline
    return extra


def soak(url: str, minutes: float, n_workers: int, lease: float, memory_tolerance: int) -> Stats:
    stats = Stats()
    client = redis.Redis.from_url(url)
    network = f"soak-{uuid.uuid4().hex[:6]}"
    rush = Rush(network, url=url)
    plain = Rush(network + "-plain", url=url)
    modes = ["compute", "persist", "futures"]
    try:
        rush.start_workers(n_workers=n_workers)
        plain.start_workers(square, n_workers=1)
        rush.wait_for_workers(n_workers, timeout=120)
        plain.wait_for_workers(1, timeout=120)
        dask_round(rush, 0, stats)  # warm-up: every kind of key has been created once
        extra = wait_settled(client, rush, set(), 0)
        time.sleep(2.0)  # releases of the warm-up's futures (batched by the listener)
        baseline_keys = keys_of(client, rush)
        baseline_memory = used_memory(client)
        plain_baseline = keys_of(client, plain)
        deadline = time.monotonic() + minutes * 60
        while time.monotonic() < deadline:
            stats.rounds += 1
            salt = stats.rounds
            plain_round(plain, 100, salt * 1000, stats)
            dask_round(rush, salt, stats)
            mode = modes[(salt - 1) % len(modes)]
            dying_client(url, network, mode, lease)
            stats.dead_clients[mode] += 1
            sample_rss(rush, stats)
        # Let the lease of every dead client expire and a sweep (a worker's heartbeat) drop
        # what it held: its compute's graph, its persisted results, its futures.
        settling = time.monotonic()
        extra = wait_settled(client, rush, baseline_keys, lease + 30)
        stats.settled_in = time.monotonic() - settling
        stats.check(
            not extra,
            f"{len(extra)} keys of dead clients left {lease + 30:g} s after the last round, e.g. {sorted(extra)[:5]}",
        )
        final = keys_of(client, rush)
        added, removed = sorted(final - baseline_keys)[:5], sorted(baseline_keys - final)[:5]
        stats.check(
            final == baseline_keys, f"key count {len(final)} != baseline {len(baseline_keys)}: +{added} -{removed}"
        )
        plain.reset()  # the archive of plain tasks is kept until a reset, by design
        stats.check(not keys_of(client, plain), "the plain network's reset left keys")
        del plain_baseline
        memory = used_memory(client)
        stats.memory = (baseline_memory, memory)  # type: ignore[attr-defined]
        stats.check(
            abs(memory - baseline_memory) <= memory_tolerance,
            f"Redis used_memory {memory:,} B vs baseline {baseline_memory:,} B (tolerance {memory_tolerance:,} B)",
        )
        for wid, samples in stats.rss.items():
            first, last = rss_growth(samples)
            stats.check(last <= 1.5 * first + 50, f"worker {wid} RSS grew from {first:.0f} MB to {last:.0f} MB")
        return stats
    finally:
        for controller in (rush, plain):
            try:
                controller.reset()
            except Exception:  # noqa: BLE001 - Redis gone: nothing left to reset
                pass
            controller.close()


def report(stats: Stats, minutes: float) -> str:
    baseline, memory = getattr(stats, "memory", (0, 0))
    left = any("of dead clients left" in v for v in stats.violations)
    dead = (
        "dead clients' keys: some left (see the violations)"
        if left
        else f"dead clients' keys (computes, persists, futures alike): all gone {stats.settled_in:.1f} s "
        "after the last round"
    )
    lines = [
        f"soak of {minutes:g} min: {stats.rounds} rounds, {stats.plain_tasks} plain tasks, "
        f"{stats.computes} computes, {stats.persists} persists, {stats.futures} futures, "
        f"dead clients {stats.dead_clients}",
        f"Redis used_memory: baseline {baseline:,} B, end {memory:,} B ({memory - baseline:+,} B)",
        dead,
    ]
    for wid, samples in sorted(stats.rss.items()):
        first, last = rss_growth(samples)
        lines.append(
            f"worker {wid}: RSS {first:.0f} MB (first third) -> {last:.0f} MB (last third), {len(samples)} samples"
        )
    lines.append("violations: " + ("none" if not stats.violations else "; ".join(stats.violations)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--lease",
        type=float,
        default=5.0,
        help="lease of the dying clients (their computes, persists and futures), in s",
    )
    parser.add_argument("--memory-tolerance", type=int, default=1 << 20, help="bytes (default 1 MB)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    server = RedisServer(tcp=True).start()
    try:
        stats = soak(server.url, args.minutes, args.workers, args.lease, args.memory_tolerance)
    finally:
        server.stop()
    print(report(stats, args.minutes))
    if args.json:
        print(json.dumps({k: v for k, v in vars(stats).items() if k != "rss"}, default=str))
    return 1 if stats.violations else 0


if __name__ == "__main__":
    sys.exit(main())
