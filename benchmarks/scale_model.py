"""A scale model: N simulated workers against one Redis, speaking rush_dask's own scripts.

    python -m benchmarks.scale_model --workers 10,100,1000 --seconds 20

A simulated worker is a coroutine (``redis.asyncio``) that does what a real
worker does to Redis, and nothing else: it registers, beats every
``heartbeat_period`` (the HEARTBEAT script), and runs the default loop: one
SETTLE_AND_POP per task, and when the queues are empty a BLPOP on its wake
lists, sweeping for lost workers now and then (MARK_WORKERS) as an idle
worker does. Tasks are no-ops, so what is measured is Redis, not Python.

Two sweep policies (``--sweep``): ``turn`` is what workers do now (an idle
worker asks for the network's sweep turn every ``heartbeat_period`` ± 50 %
with one SET NX PX, see :mod:`rush_dask.core.sweeps`; one sweep per network per
second); ``every-worker`` is what they did before (every idle worker swept
every ``heartbeat_expire``: N sweeps of O(N) each per period).

For each N it measures, on a network of its own:

* **idle**: Redis commands and Redis CPU per worker per second, all workers
  idle, at the default heartbeat settings;
* **detection**: how long after a worker stops (its coroutine is cancelled
  mid-beat, as a SIGKILL would) it is declared ``lost``, against
  ``heartbeat_expire``;
* **busy**: the ceiling of plain no-op tasks per second through the network
  (pushed in batches, popped and settled by all N workers), and Redis' CPU
  share meanwhile (1.0: one Redis core saturated).

"Commands" are what Redis counts (the commands inside a script too);
"round trips" are the calls a worker makes.

Runs on one machine, so at N = 1,000 the client side (1,000 coroutines in
one Python process) may be what saturates first; the report says which.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from dataclasses import dataclass

import redis
import redis.asyncio as aredis

from rush_dask.core import constants as C
from rush_dask.core import sweeps
from rush_dask.core.scripts import Scripts
from rush_dask.core.serialize import dumps
from rush_dask.core.server import RedisServer


@dataclass
class Settings:
    heartbeat_period: float = C.DEFAULT_HEARTBEAT_PERIOD
    heartbeat_expire: float = C.DEFAULT_HEARTBEAT_EXPIRE
    idle_block: float = 1.0  # the real worker's BLPOP timeout while idle
    sweep: str = "turn"  # "turn" (rush_dask.core.sweeps) or "every-worker" (before: each idle worker)


class SimWorker:
    """One simulated worker: the Redis traffic of rush_dask.core.worker.RushWorker, no task code."""

    def __init__(self, client: aredis.Redis, keys: C.Keys, settings: Settings):
        self.client, self.keys, self.s = client, keys, settings
        self.scripts = Scripts(client, keys)
        self.worker_id = uuid.uuid4().hex[:12]
        self.request = 0
        self.done = 0
        self.sweeps = 0
        self.calls = 0  # round trips to Redis (a script call is one, whatever it does inside)
        self.tasks: list[asyncio.Task] = []
        self.closing = False

    async def register(self) -> None:
        await self.scripts.register(
            args=[
                self.keys.prefix,
                self.worker_id,
                int(self.s.heartbeat_expire * 1000),
                "pid",
                os.getpid(),
                "hostname",
                "scale-model",
                "host",
                "scale-model",
            ]
        )

    def start(self) -> None:
        self.tasks = [
            asyncio.create_task(self._quietly(self._beat())),
            asyncio.create_task(self._quietly(self._loop())),
        ]

    def kill(self) -> None:
        self.closing = True
        for task in self.tasks:
            task.cancel()

    async def _quietly(self, coroutine) -> None:
        """Run a worker coroutine; the connection errors of the teardown are not failures."""
        try:
            await coroutine
        except (redis.ConnectionError, aredis.ConnectionError):
            if not self.closing:
                raise

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.s.heartbeat_period)
            self.calls += 1
            await self.scripts.heartbeat(
                args=[
                    self.keys.prefix,
                    self.worker_id,
                    int(self.s.heartbeat_expire * 1000),
                    C.REAP_BATCH,
                    "scale-model",
                ]
            )

    async def _settle_and_pop(self, outcomes: list) -> list:
        self.request += 1
        self.calls += 1
        args = [self.keys.prefix, self.worker_id, self.request, "", 1, 0, len(outcomes), "scale-model"]
        for outcome in outcomes:
            args.extend(outcome)
        return await self.scripts.settle_and_pop(args=args)

    async def _sweep(self) -> None:
        """MARK_WORKERS with a scan, and the pid check's reads (HGETALL, one HMGET per worker)."""
        self.sweeps += 1
        self.calls += 3
        await self.scripts.mark_workers(args=[self.keys.prefix, C.LOST, "scale model", "1"])
        states = await self.client.hgetall(self.keys.worker_states)
        pipe = self.client.pipeline(transaction=False)
        for wid, state in states.items():
            if state == b"running":
                pipe.hmget(self.keys.worker(wid.decode()), "hostname", "pid")
        await pipe.execute()

    async def _loop(self) -> None:
        outcomes: list = []
        last_sweep = time.monotonic()
        next_turn = sweeps.next_attempt(self.s.heartbeat_period, last_sweep)
        result = dumps({"y": 1})
        while True:
            reply = await self._settle_and_pop(outcomes)
            outcomes = []
            if reply[0] == b"tasks":
                for task in reply[4:]:
                    outcomes.append((task[0], "finished", result, "", b""))
                    self.done += 1
                continue
            if reply[0] == b"stop":
                return
            now = time.monotonic()
            if self.s.sweep == "every-worker" and now - last_sweep > self.s.heartbeat_expire:
                last_sweep = now
                await self._sweep()
            elif self.s.sweep == "turn" and now >= next_turn:
                next_turn = sweeps.next_attempt(self.s.heartbeat_period, now)
                self.calls += 1
                if await self.client.set(self.keys.sweep_turn, self.worker_id, nx=True, px=sweeps.SWEEP_TURN_MS):
                    await self._sweep()
            self.calls += 1
            await self.client.blpop([self.keys.wake_worker(self.worker_id), self.keys.wake], timeout=self.s.idle_block)


_T0 = time.monotonic()


def _phase(text: str) -> None:
    print(f"  [{time.monotonic() - _T0:7.1f} s] {text}", file=sys.stderr, flush=True)


def redis_counters(client: redis.Redis) -> tuple[int, float]:
    """(commands processed, CPU seconds) of the server so far."""
    stats, cpu = client.info("stats"), client.info("cpu")
    return int(stats["total_commands_processed"]), float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


async def measure(url: str, n: int, seconds: float, settings: Settings) -> dict:
    """Idle cost, detection time and busy ceiling of one network of ``n`` simulated workers."""
    sync = redis.Redis.from_url(url)
    keys = C.Keys(f"scale-{n}-{uuid.uuid4().hex[:6]}")
    pool = aredis.BlockingConnectionPool.from_url(url, max_connections=n + 16, timeout=60)
    client = aredis.Redis(connection_pool=pool)
    workers = [SimWorker(client, keys, settings) for _ in range(n)]
    try:
        for start in range(0, n, 100):
            await asyncio.gather(*(w.register() for w in workers[start : start + 100]))
        for w in workers:
            w.start()
        await asyncio.sleep(min(2.0, settings.heartbeat_period))  # every loop blocked, every beat started
        _phase(f"{n} workers registered and started")

        # Idle.
        c0, cpu0, t0, s0 = *redis_counters(sync), time.monotonic(), sum(w.sweeps for w in workers)
        r0 = sum(w.calls for w in workers)
        await asyncio.sleep(seconds)
        c1, cpu1, t1, s1 = *redis_counters(sync), time.monotonic(), sum(w.sweeps for w in workers)
        idle = {
            "round_trips_per_worker_s": (sum(w.calls for w in workers) - r0) / n / (t1 - t0),
            "commands_per_worker_s": (c1 - c0) / n / (t1 - t0),
            "redis_cpu_per_worker_s": (cpu1 - cpu0) / n / (t1 - t0),
            "redis_cpu_share": (cpu1 - cpu0) / (t1 - t0),
            "sweeps_per_s": (s1 - s0) / (t1 - t0),
        }

        # Detection: one worker stops at once; the others' sweeps must declare it lost.
        victim = workers[-1]
        victim.kill()
        killed_at = time.monotonic()
        expired_at = None  # when its heartbeat key expired: from then on, the sweeps' lag
        while sync.hget(keys.worker_states, victim.worker_id) != b"lost":
            if expired_at is None and not sync.exists(keys.heartbeat(victim.worker_id)):
                expired_at = time.monotonic()
            if time.monotonic() - killed_at > 4 * settings.heartbeat_expire + 30:
                break
            await asyncio.sleep(0.05)
        detection = time.monotonic() - killed_at
        after_expiry = time.monotonic() - (expired_at or killed_at)
        _phase(
            f"idle measured; lost worker detected after {detection:.1f} s "
            f"({after_expiry:.1f} s after its heartbeat expired)"
        )

        # Busy: no-op tasks through every worker.
        n_tasks = max(2_000, 20 * n)
        scripts = Scripts(sync, keys)
        blob = dumps({"x": 1})
        c0, cpu0, t0 = *redis_counters(sync), time.monotonic()
        own0 = time.process_time()
        done0 = sum(w.done for w in workers)
        for start in range(0, n_tasks, 500):
            batch = min(500, n_tasks - start)
            args: list = [keys.prefix, batch, "", 0, "", "", 0, 0]
            for _ in range(batch):
                args += [uuid.uuid4().hex[:17], blob, b"", ""]
            scripts.push(args=args)
            await asyncio.sleep(0)
        while sum(w.done for w in workers) - done0 < n_tasks:
            if time.monotonic() - t0 > 600:
                break
            if int(time.monotonic() - t0) % 30 == 29:
                _phase(
                    f"busy: {sum(w.done for w in workers) - done0} of {n_tasks} tasks popped; "
                    f"{sum(1 for w in workers for t in w.tasks if t.done())} coroutines ended"
                )
                await asyncio.sleep(1)
            await asyncio.sleep(0.01)
        c1, cpu1, t1 = *redis_counters(sync), time.monotonic()
        busy = {
            "tasks_per_s": n_tasks / (t1 - t0),
            "redis_cpu_share": (cpu1 - cpu0) / (t1 - t0),
            "model_cpu_share": (time.process_time() - own0) / (t1 - t0),
            "commands_per_task": (c1 - c0) / n_tasks,
        }
        _phase(f"busy: {busy['tasks_per_s']:,.0f} tasks/s")
        return {
            "workers": n,
            "sweep": settings.sweep,
            "idle": idle,
            "detection_s": detection,
            "detection_after_expiry_s": after_expiry,
            "heartbeat_expire": settings.heartbeat_expire,
            "busy": busy,
        }
    finally:
        for w in workers:
            w.kill()
        # A redis.asyncio BLPOP cancelled mid-read may never finish (seen at N = 300 and 1,000:
        # the run hung here): wait a bounded time, then drop the connections under it.
        tasks = [t for w in workers for t in w.tasks]
        done, pending = await asyncio.wait(tasks, timeout=10) if tasks else (set(), set())
        errors = [t.exception() for t in done if not t.cancelled() and t.exception() is not None]
        if errors or pending:
            _phase(f"teardown: {len(errors)} coroutines failed (e.g. {errors[:1]!r}), {len(pending)} still blocked")
        try:
            await asyncio.wait_for(pool.disconnect(inuse_connections=True), 10)
        except asyncio.TimeoutError:
            _phase("teardown: connections not closed in 10 s")
        for key in sync.scan_iter(match=keys.pattern, count=1000):
            sync.unlink(key)


def report(rows: list[dict]) -> str:
    lines = [
        "| sweep | workers | idle: round trips / worker / s | idle: commands / worker / s "
        "| idle: Redis CPU / worker / s "
        "| idle: Redis CPU share | idle: sweeps / s | lost worker detected after (s) "
        "| of which after its heartbeat expired (s) | busy: tasks / s | busy: Redis CPU share "
        "| busy: model CPU share | commands / task |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['sweep']} | {r['workers']:,} | {r['idle']['round_trips_per_worker_s']:.2f} | "
            f"{r['idle']['commands_per_worker_s']:.2f} | "
            f"{r['idle']['redis_cpu_per_worker_s'] * 1e6:.0f} µs | {r['idle']['redis_cpu_share']:.3f} | "
            f"{r['idle']['sweeps_per_s']:.2f} | "
            f"{r['detection_s']:.1f} (expire {r['heartbeat_expire']:g}) | "
            f"{r['detection_after_expiry_s']:.1f} | {r['busy']['tasks_per_s']:,.0f} | "
            f"{r['busy']['redis_cpu_share']:.2f} | {r['busy']['model_cpu_share']:.2f} | "
            f"{r['busy']['commands_per_task']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", default="10,100,1000", help="comma-separated worker counts")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the idle measurement")
    parser.add_argument("--heartbeat-period", type=float, default=C.DEFAULT_HEARTBEAT_PERIOD)
    parser.add_argument("--heartbeat-expire", type=float, default=C.DEFAULT_HEARTBEAT_EXPIRE)
    parser.add_argument("--sweep", default="turn", help="comma-separated sweep policies: turn, every-worker")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON too")
    args = parser.parse_args(argv)
    server = RedisServer(tcp=True).start()
    try:
        try:  # 1,000 workers need 1,000 connections and more
            redis.Redis.from_url(server.url).config_set("maxclients", 10_000)
        except redis.ResponseError as exc:
            print(f"maxclients not raised ({exc}); large N may be refused", file=sys.stderr)
        rows = []
        for policy in args.sweep.split(","):
            settings = Settings(
                heartbeat_period=args.heartbeat_period, heartbeat_expire=args.heartbeat_expire, sweep=policy
            )
            for n in (int(x) for x in args.workers.split(",")):
                print(f"{n} simulated workers, sweep {policy} ...", file=sys.stderr, flush=True)
                rows.append(asyncio.run(measure(server.url, n, args.seconds, settings)))
    except Exception:
        print(server.read_log()[-2000:], file=sys.stderr)
        raise
    finally:
        server.stop()
    print(report(rows))
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
