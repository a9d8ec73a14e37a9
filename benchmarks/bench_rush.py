"""Throughput of rush_dask against a bare Redis list queue, on one private Redis server.

What is measured (2 local worker processes, one private Redis server on a
unix socket for everything, started here and stopped at the end):

* **trivial**: 10,000 tasks whose function returns ``{"y": x + 1}``: the
  per-task overhead of the system itself.
* **sleep**: 1,000 tasks of ``time.sleep(0.01)``: how close the system gets
  to the ideal 2 workers / 0.01 s = 200 tasks/s (5 s for 1,000 tasks).

Each workload runs on

* **rush_dask**: one ``Rush`` per repetition with a fresh network id,
  ``start_workers(fun, n_workers=2)`` and ``wait_for_workers(2)`` before the
  clock starts; timed from ``push_tasks`` (one call for all tasks) until
  ``wait_for_tasks`` returns; then ``reset()``.
* **bare queue**: the practical limit of a one-task-at-a-time Redis work
  queue, written here: the controller pipelines one LPUSH per pickled task,
  2 worker processes loop BRPOP task -> compute -> LPUSH pickled result, and
  the controller BRPOPs (then RPOPs in bulk) until it holds every result.
* **bare queue, batches of 32**: the same, but a worker's one round trip
  pushes the results of its last batch and pops up to 32 tasks (RPOP with a
  count), like rush_dask's workers do for very short tasks.

Timings include pickling the inputs and end when the controller knows every
task is done. Every figure is the median of ``--repeats`` runs (default 3)
with [min - max]; the workloads are interleaved within each repetition, and
ratios pair the runs of one repetition. Before each timed run the script
waits while pytest or another benchmark runs (15 minutes at most in all;
``--no-wait`` to skip), and the report says how many runs were not quiet.
Also reported:

* the time of the push alone, the time until the workers are ready (not
  part of the timed run), and the Redis server's CPU per task (``INFO cpu``);
* Redis commands per task of the rush trivial run, from ``INFO commandstats``
  (``CONFIG RESETSTAT`` right before the push). Commandstats also counts the
  commands that Lua scripts run, so it measures server work, not round trips;
* round trips: one extra, untimed rush trivial run watched with ``MONITOR``
  (in a separate process), which splits the commands sent by clients
  (EVALSHA broken down by script) from the commands run inside scripts.

Run from the repository root::

    python benchmarks/bench_rush.py               # full run, 3 repeats (about 1 minute on 2 cores)
    python benchmarks/bench_rush.py --repeats 5
    python benchmarks/bench_rush.py --quick       # smoke run: 1,000 + 200 tasks, 1 repeat

The Markdown tables are printed and written to ``benchmarks/results/rush_core.md``.
"""

from __future__ import annotations

import multiprocessing
import pickle
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

if not __package__:  # run as a script: make `benchmarks` importable (here and in the workers)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (
    N_WORKERS,
    QUIET_BUDGET,
    RESULTS_DIR,
    SLEEP_SECONDS,
    WAIT_TIMEOUT,
    Quiet,
    fmt,
    machine,
    measured_sleep,
    parse_arguments,
    ratios,
    redis_cpu_seconds,
)
from rush_dask import Rush
from rush_dask.core.server import RedisServer

BARE_BATCH = 32  # tasks per round trip of the batched bare queue (rush_dask's BATCH_MAX)
RESULTS_FILE = RESULTS_DIR / "rush_core.md"
RUSH = "rush_dask"
BARE = "bare queue"
BATCHED = f"bare queue, batches of {BARE_BATCH}"
SYSTEMS = (RUSH, BARE, BATCHED)
PICKLE = pickle.HIGHEST_PROTOCOL


# ------------------------------------------------------------ task functions
# Module level, so that workers can load them: rush pickles them with
# cloudpickle (by value when this file runs as __main__), the bare queue's
# spawned processes re-import this file.


def add_one(x, **kwargs):
    return {"y": x + 1}


def sleep_then_add_one(x, **kwargs):
    time.sleep(SLEEP_SECONDS)
    return {"y": x + 1}


@dataclass(frozen=True)
class Workload:
    name: str
    fun: Callable
    n_tasks: int

    def inputs(self) -> list[dict]:
        return [{"x": i} for i in range(self.n_tasks)]

    @property
    def ideal_seconds(self) -> float | None:
        """Time with zero overhead (only for the sleep workload)."""
        if self.fun is sleep_then_add_one:
            return self.n_tasks * SLEEP_SECONDS / N_WORKERS
        return None


@dataclass
class Run:
    seconds: float  # push -> every task done
    push_seconds: float  # the push alone
    ready_seconds: float  # workers started -> ready (not part of `seconds`)
    redis_cpu: float  # server CPU seconds (user + sys) during `seconds`
    commandstats: dict[str, dict] = field(default_factory=dict)


# ---------------------------------------------------------------- rush_dask
def run_rush(
    url: str,
    workload: Workload,
    log_dir: str,
    quiet: Quiet | None = None,
    *,
    monitor: bool = False,
    n_workers: int = N_WORKERS,
) -> Run | Counter:
    """One timed rush_dask run; with ``monitor=True`` an untimed MONITOR pass instead."""
    rush = Rush(f"bench-{uuid.uuid4().hex[:10]}", url=url)
    try:
        t0 = time.perf_counter()
        rush.start_workers(workload.fun, n_workers=n_workers, log_dir=log_dir)
        rush.wait_for_workers(n_workers, timeout=120)
        ready = time.perf_counter() - t0
        xss = workload.inputs()
        if monitor:
            return _monitored_rush_run(rush, xss, url)
        if quiet:
            quiet.wait()
        rush.client.config_resetstat()
        cpu0, t0 = redis_cpu_seconds(rush.client), time.perf_counter()
        keys = rush.push_tasks(xss)
        pushed = time.perf_counter()
        rush.wait_for_tasks(keys, timeout=WAIT_TIMEOUT, progress=False)
        done = time.perf_counter()
        run = Run(
            done - t0, pushed - t0, ready, redis_cpu_seconds(rush.client) - cpu0, rush.client.info("commandstats")
        )
        _check_rush(rush, workload.n_tasks)
        return run
    finally:
        rush.reset()
        rush.close()


def _check_rush(rush: Rush, n_tasks: int) -> None:
    finished, failed = rush.n_finished_tasks, rush.n_failed_tasks
    if finished != n_tasks or failed:
        raise RuntimeError(f"rush run: {finished} finished and {failed} failed of {n_tasks} tasks")


def _monitored_rush_run(rush: Rush, xss: list[dict], url: str) -> Counter:
    """Push and wait while a separate process counts every command with MONITOR."""
    script_names = rush.scripts.names_by_sha()
    stop_token = f"bench-monitor-stop-{uuid.uuid4().hex}"
    ctx = multiprocessing.get_context("spawn")
    replies = ctx.Queue()
    watcher = ctx.Process(target=monitor_commands, args=(url, stop_token, script_names, replies))
    watcher.start()
    try:
        if replies.get(timeout=60) != "ready":
            raise RuntimeError("MONITOR process did not start")
        keys = rush.push_tasks(xss)
        rush.wait_for_tasks(keys, timeout=WAIT_TIMEOUT, progress=False)
        rush.client.echo(stop_token)
        counts = replies.get(timeout=300)
        _check_rush(rush, len(xss))
        return counts
    finally:
        watcher.join(10)
        if watcher.is_alive():
            watcher.terminate()
            watcher.join()


def monitor_commands(url: str, stop_token: str, script_names: dict[str, str], replies) -> None:
    """(In its own process.) Count commands seen by MONITOR until ``ECHO stop_token``.

    Keys: ``("top", "evalsha settle_and_pop")``, ``("top", "lrange")``, ...
    for commands sent by clients, ``("lua", "hset")``, ... for commands run
    inside scripts.
    """
    counts: Counter = Counter()
    stop = stop_token.encode()
    with redis.Redis.from_url(url, socket_timeout=None).monitor() as mon:
        replies.put("ready")
        while True:
            # A line looks like: 1700000000.123456 [0 unix:/path/redis.sock] "evalsha" "8a50..." "0" ...
            line = mon.connection.read_response()
            where, _, command = line.partition(b"] ")
            parts = command.split(b'"', 4)  # ['', name, ' ', first argument, rest]
            name = parts[1].decode().lower()
            first_arg = parts[3] if len(parts) > 3 else b""
            if name == "echo" and first_arg == stop:
                break
            if where.endswith(b" lua"):
                counts[("lua", name)] += 1
            elif name in ("evalsha", "eval"):
                counts[("top", f"{name} {script_names.get(first_arg.decode(), 'other script')}")] += 1
            else:
                counts[("top", name)] += 1
    replies.put(counts)


# --------------------------------------------------------------- bare queue
def bare_worker(url: str, queue: str, results: str, ready: str, fun: Callable) -> None:
    """(In its own process.) BRPOP a task, run it, LPUSH the result; ``None`` stops."""
    # No socket timeout: redis-py >= 8 gives up reading after 5 s by default, and BRPOP blocks longer.
    client = redis.Redis.from_url(url, socket_timeout=None)
    client.lpush(ready, b"1")
    while True:
        _, payload = client.brpop([queue], timeout=0)
        task = pickle.loads(payload)
        if task is None:
            return
        task_id, xs = task
        client.lpush(results, pickle.dumps((task_id, fun(**xs)), protocol=PICKLE))


def batched_bare_worker(url: str, queue: str, results: str, ready: str, fun: Callable) -> None:
    """(In its own process.) One round trip: LPUSH the last results + RPOP up to BARE_BATCH tasks."""
    client = redis.Redis.from_url(url, socket_timeout=None)
    client.lpush(ready, b"1")
    done: list[bytes] = []
    while True:
        pipe = client.pipeline(transaction=False)
        if done:
            pipe.lpush(results, *done)
        pipe.rpop(queue, BARE_BATCH)
        payloads = pipe.execute()[-1] or [client.brpop([queue], timeout=0)[1]]
        done = []
        for i, payload in enumerate(payloads):
            task = pickle.loads(payload)
            if task is None:  # stop; give back the other workers' stop markers
                if payloads[i + 1 :]:
                    client.rpush(queue, *payloads[i + 1 :])
                return
            task_id, xs = task
            done.append(pickle.dumps((task_id, fun(**xs)), protocol=PICKLE))


def run_bare(url: str, workload: Workload, quiet: Quiet | None = None, *, batched: bool = False) -> Run:
    """One timed run of the bare Redis list queue."""
    client = redis.Redis.from_url(url, socket_timeout=None)
    prefix = f"bare:{uuid.uuid4().hex[:10]}:"
    queue, results, ready = prefix + "queue", prefix + "results", prefix + "ready"
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters, like rush's workers
    target = batched_bare_worker if batched else bare_worker
    workers = [ctx.Process(target=target, args=(url, queue, results, ready, workload.fun)) for _ in range(N_WORKERS)]
    t0 = time.perf_counter()
    for proc in workers:
        proc.start()
    try:
        for _ in workers:
            if client.brpop([ready], timeout=120) is None:
                raise RuntimeError("bare queue workers did not start")
        ready_seconds = time.perf_counter() - t0
        xss = workload.inputs()
        if quiet:
            quiet.wait()
        cpu0, t0 = redis_cpu_seconds(client), time.perf_counter()
        pipe = client.pipeline(transaction=False)
        for i, xs in enumerate(xss):
            pipe.lpush(queue, pickle.dumps((i, xs), protocol=PICKLE))
        pipe.execute()
        pushed = time.perf_counter()
        raw = collect_results(client, results, len(xss))
        done = time.perf_counter()
        run = Run(done - t0, pushed - t0, ready_seconds, redis_cpu_seconds(client) - cpu0)
        _check_bare(raw, len(xss))
        return run
    finally:
        _stop_bare_workers(client, queue, workers)
        client.delete(queue, results, ready)
        client.close()


def collect_results(client: redis.Redis, key: str, n: int) -> list[bytes]:
    """Block for one result, then take whatever else is there in one RPOP; until ``n``."""
    out: list[bytes] = []
    deadline = time.monotonic() + WAIT_TIMEOUT
    while len(out) < n:
        item = client.brpop([key], timeout=1)
        if item is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"bare queue: {len(out)} of {n} results after {WAIT_TIMEOUT} s")
            continue
        out.append(item[1])
        out.extend(client.rpop(key, n - len(out)) or [])
    return out


def _check_bare(raw: list[bytes], n_tasks: int) -> None:
    results = dict(pickle.loads(blob) for blob in raw)
    if sorted(results) != list(range(n_tasks)) or any(ys["y"] != i + 1 for i, ys in results.items()):
        raise RuntimeError("bare queue: missing or wrong results")


def _stop_bare_workers(client: redis.Redis, queue: str, workers: list) -> None:
    client.lpush(queue, *[pickle.dumps(None)] * len(workers))
    for proc in workers:
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
            proc.join()


# ------------------------------------------------------------------ reports
_OWN_COMMANDS = {"cmdstat_config|resetstat", "cmdstat_info"}  # sent by this benchmark, not by rush


def commands_per_task(stats: list[dict[str, dict]], n_tasks: int) -> list[tuple[str, list[float], list[float]]]:
    """(command, calls per task in each run, µs per call in each run), most calls first."""
    names = sorted({name for run in stats for name in run if name not in _OWN_COMMANDS})
    rows = []
    for name in names:
        calls = [run.get(name, {}).get("calls", 0) / n_tasks for run in stats]
        usec = [run[name]["usec_per_call"] for run in stats if name in run]
        rows.append((name.removeprefix("cmdstat_"), calls, usec))
    return sorted(rows, key=lambda row: -statistics.median(row[1]))


def throughput_table(results: dict, workloads: list[Workload]) -> list[str]:
    lines = [
        (
            "| workload | system | tasks | time (s) | tasks/s | ms per task per worker | push (s) "
            "| Redis CPU µs/task | workers ready (s) |"
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for w in workloads:
        for system in SYSTEMS:
            runs = results[system, w.name]
            lines.append(
                f"| {w.name} | {system} | {w.n_tasks:,} | {fmt([r.seconds for r in runs], 3)} "
                f"| {fmt([w.n_tasks / r.seconds for r in runs])} "
                f"| {fmt([r.seconds * N_WORKERS / w.n_tasks * 1e3 for r in runs], 3)} "
                f"| {fmt([r.push_seconds for r in runs], 3)} "
                f"| {fmt([r.redis_cpu / w.n_tasks * 1e6 for r in runs], 1)} "
                f"| {fmt([r.ready_seconds for r in runs], 2)} |"
            )
        if w.ideal_seconds:
            lines.append(
                f"| {w.name} | ideal | {w.n_tasks:,} | {w.ideal_seconds:.3f} "
                f"| {w.n_tasks / w.ideal_seconds:,.0f} | {SLEEP_SECONDS * 1e3:.3f} | | | |"
            )
    return lines


def ratio_table(results: dict, trivial: Workload, sleep: Workload, sleep_seconds: float) -> list[str]:
    """Ratios per repetition (the runs of one repetition paired), then median [min – max]."""

    def rate(system: str, w: Workload) -> list[float]:
        return [w.n_tasks / r.seconds for r in results[system, w.name]]

    ideal = sleep.n_tasks / sleep.ideal_seconds
    rows = [
        ("rush / bare queue, trivial tasks/s", ratios(rate(RUSH, trivial), rate(BARE, trivial))),
        ("rush / bare queue, sleep tasks/s", ratios(rate(RUSH, sleep), rate(BARE, sleep))),
        (f"rush / {BATCHED}, trivial tasks/s", ratios(rate(RUSH, trivial), rate(BATCHED, trivial))),
        (f"rush / {BATCHED}, sleep tasks/s", ratios(rate(RUSH, sleep), rate(BATCHED, sleep))),
        *[
            (f"{system} sleep / ideal ({ideal:,.0f} tasks/s)", [r / ideal for r in rate(system, sleep)])
            for system in SYSTEMS
        ],
        (
            (
                f"ceiling: {SLEEP_SECONDS * 1e3:g} ms / measured time.sleep({SLEEP_SECONDS:g}) "
                f"({sleep_seconds * 1e3:.3f} ms)"
            ),
            [SLEEP_SECONDS / sleep_seconds],
        ),
    ]
    return ["| ratio | value |", "|---|---:|", *[f"| {name} | {fmt(values, 3)} |" for name, values in rows]]


def commandstats_table(runs: list[Run], n_tasks: int) -> list[str]:
    rows = commands_per_task([r.commandstats for r in runs], n_tasks)
    total = [sum(row[1][i] for row in rows) for i in range(len(runs))]
    lines = ["| command | calls per task | µs per call |", "|---|---:|---:|"]
    lines += [f"| {name} | {fmt(calls, 4)} | {fmt(usec, 2) if usec else ''} |" for name, calls, usec in rows]
    lines.append(f"| **all commands (sent by clients + run inside scripts)** | {fmt(total, 2)} | |")
    return lines


def monitor_table(counts: Counter, n_tasks: int) -> list[str]:
    top = sorted(((name, c) for (kind, name), c in counts.items() if kind == "top"), key=lambda x: -x[1])
    lua_total = sum(c for (kind, _), c in counts.items() if kind == "lua")
    lines = ["| command sent by a client | per task |", "|---|---:|"]
    lines += [f"| {name} | {c / n_tasks:.4f} |" for name, c in top]
    lines.append(f"| **all commands sent by clients** | {sum(c for _, c in top) / n_tasks:.4f} |")
    lines.append(f"| commands run inside scripts | {lua_total / n_tasks:.2f} |")
    return lines


def environment(url: str) -> str:
    m = machine(url)
    return (
        f"Python {m['python']}, redis-py {m['redis-py']}, Redis {m['redis_server']} (private server, "
        f"unix socket), {m['cores']} cores, {N_WORKERS} workers, rush_dask at {m['rush_dask']}"
    )


def report(
    results: dict,
    workloads: list[Workload],
    counts: Counter,
    sleep_seconds: float,
    quiet: Quiet,
    repeats: int,
    env: str,
) -> str:
    trivial, sleep = workloads
    noisy = (
        f" **{quiet.noisy_runs} of {quiet.runs} timed runs started while other test or benchmark "
        "processes were running: their figures may be low.**"
        if quiet.noisy_runs
        else ""
    )
    return "\n".join(
        [
            "# rush_dask core throughput",
            "",
            (
                f"{env}. Median of {repeats} repeat(s) [min – max]; generated by `benchmarks/bench_rush.py` "
                f"on {time.strftime('%Y-%m-%d %H:%M')}.{noisy}"
            ),
            "",
            "## Throughput",
            "",
            (
                "`time`: from the push to the controller knowing that every task is done; `push`: the push "
                "alone (included in `time`); `workers ready`: start to ready, not included."
            ),
            "",
            *throughput_table(results, workloads),
            "",
            "## Ratios",
            "",
            *ratio_table(results, trivial, sleep, sleep_seconds),
            "",
            f"## Redis commands per task, rush_dask {trivial.name} run (INFO commandstats)",
            "",
            "Counts include the commands that Lua scripts run; µs per call of `evalsha` includes them too.",
            "",
            *commandstats_table(results[RUSH, trivial.name], trivial.n_tasks),
            "",
            f"## Round trips per task, rush_dask {trivial.name} run (one untimed run under MONITOR)",
            "",
            (
                "Commands in a pipeline are counted one by one (the controller's wait loop sends 2 LRANGE "
                "per round trip)."
            ),
            "",
            *monitor_table(counts, trivial.n_tasks),
            "",
        ]
    )


# --------------------------------------------------------------------- main
def run_once(system: str, url: str, workload: Workload, log_dir: str, quiet: Quiet) -> Run:
    if system == RUSH:
        return run_rush(url, workload, log_dir, quiet)
    return run_bare(url, workload, quiet, batched=system == BATCHED)


def run_all(url: str, workloads: list[Workload], repeats: int, log_dir: str, quiet: Quiet) -> dict:
    results: dict = {}
    for rep in range(1, repeats + 1):
        for w in workloads:
            for system in SYSTEMS:
                run = run_once(system, url, w, log_dir, quiet)
                results.setdefault((system, w.name), []).append(run)
                print(
                    f"repeat {rep}/{repeats}  {w.name:<8} {system:<26} {run.seconds:7.3f} s  "
                    f"{w.n_tasks / run.seconds:9,.0f} tasks/s",
                    file=sys.stderr,
                    flush=True,
                )
    return results


def main(argv: list[str] | None = None) -> int:
    args, repeats = parse_arguments(argv, __doc__, quick_help="1,000 + 200 tasks, 1 repeat")
    workloads = [
        Workload("trivial", add_one, 1_000 if args.quick else 10_000),
        Workload("sleep", sleep_then_add_one, 200 if args.quick else 1_000),
    ]
    quiet = Quiet(0 if args.no_wait else QUIET_BUDGET)
    server = RedisServer().start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-rush-logs-") as log_dir:
            env = environment(server.url)
            results = run_all(server.url, workloads, repeats, log_dir, quiet)
            counts = run_rush(server.url, workloads[0], log_dir, monitor=True)
    finally:
        server.stop()
    text = report(results, workloads, counts, measured_sleep(), quiet, repeats, env)
    print(text, flush=True)
    RESULTS_FILE.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_FILE.write_text(text)
    print(f"(written to {RESULTS_FILE})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
