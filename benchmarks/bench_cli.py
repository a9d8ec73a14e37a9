"""Start-up time of the ``rush-dask`` commands, whole process, median of ``--repeats``.

Each command runs in a fresh ``python -m rush_dask.deploy.cli`` process against a
network with 2 running workers and a few finished tasks on a private Redis:
``--help``, ``status``, ``logs``, ``stop`` (of a worker id that is not
running: the command reads the network and prints, and nothing stops) and
``dashboard --help``. Also lists whether the process imported dask or pandas.
Target (issue 15): ``rush-dask status`` starts and prints in at most 0.5 s.

    python benchmarks/bench_cli.py [--repeats 5]
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

if not __package__:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import fmt, parse_arguments

TARGET_STATUS = 0.5  # seconds

# What a command loaded: printed by the child at exit (see _PROBE).
_PROBE = (
    "import atexit, sys; atexit.register(lambda: sys.stderr.write("
    "'\\nHEAVY=' + ','.join(m for m in ('dask', 'pandas', 'numpy') if m in sys.modules) + '\\n'));"
    "from rush_dask.deploy.cli import main; main(prog_name='rush-dask')"
)


def commands(network: str, stopped_worker: str) -> dict[str, list[str]]:
    """The measured command lines (arguments after ``rush-dask``)."""
    return {
        "--help": ["--help"],
        "status": ["status", "--network", network],
        "logs": ["logs", "--network", network, "--tail", "20"],
        "stop": ["stop", "--network", network, "--worker", stopped_worker],
        "dashboard --help": ["dashboard", "--help"],
    }


def time_command(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Seconds from exec to exit of one command, and the heavy modules it imported."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"rush-dask {' '.join(args)} failed: {proc.stderr[-500:]}")
    heavy = proc.stderr.rsplit("HEAVY=", 1)[-1].strip()
    return seconds, heavy or "-"


def run_cli(url: str, repeats: int) -> dict:
    """Median seconds (and the list) per command, with the heavy modules each imported."""
    from rush_dask import Rush

    network = f"bench-cli-{uuid.uuid4().hex[:6]}"
    rush = Rush(network, url=url)
    try:
        rush.start_workers(lambda x, **kw: {"y": x}, n_workers=2)
        rush.wait_for_workers(2, timeout=60)
        rush.wait_for_tasks(rush.push_tasks([{"x": i} for i in range(10)]), timeout=60)
        stopped = rush.running_worker_ids[0]
        rush.stop_workers("terminate", [stopped])  # stop --worker on it: read, print, stop nothing
        while stopped in rush.running_worker_ids:
            time.sleep(0.05)
        env = {**os.environ, "RUSH_REDIS_URL": url}
        results = {}
        for name, args in commands(network, stopped).items():
            times, heavy = [], "-"
            try:
                for _ in range(repeats):
                    seconds, heavy = time_command(args, env)
                    times.append(seconds)
            except RuntimeError as exc:  # e.g. a command this version lacks
                print(f"{name:<18} skipped: {exc}", file=sys.stderr, flush=True)
                continue
            results[name] = {"seconds": times, "median": statistics.median(times), "imports": heavy}
            print(f"{name:<18} {fmt(times, 3)} s   heavy imports: {heavy}", file=sys.stderr, flush=True)
        return results
    finally:
        rush.reset()
        rush.close()


def main(argv: list[str] | None = None) -> int:
    args, repeats = parse_arguments(argv, __doc__, "1 repeat")
    from rush_dask.core.server import RedisServer

    server = RedisServer(tcp=True).start()
    try:
        results = run_cli(server.url, max(repeats, 5) if not args.quick else 1)
    finally:
        server.stop()
    status = results["status"]["median"]
    print(
        f"rush-dask status: median {status:.3f} s (target <= {TARGET_STATUS} s: "
        f"{'met' if status <= TARGET_STATUS else 'NOT met'})"
    )
    for name, r in results.items():
        print(f"| {name} | {r['median']:.3f} s | {r['imports']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
