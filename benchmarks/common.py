"""What every benchmark shares: sizes, figures, quiet-machine waiting, machine and versions.

Every benchmark module imports this one as ``benchmarks.common``. Run as a
script (``python benchmarks/bench_rush.py``) a module first puts the
repository root on ``sys.path`` (:func:`importable`), so that worker
processes can import the task functions as ``benchmarks.<module>.<name>``.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
N_WORKERS = 2
SLEEP_SECONDS = 0.01
WAIT_TIMEOUT = 600.0  # seconds; a run that takes longer is broken
QUIET_BUDGET = 900.0  # seconds, in all, of waiting for other benchmarks or tests to end


def fmt(values: list[float], digits: int = 0) -> str:
    """Median [min – max] of the values (just the value if there is one).

    >>> fmt([1.0, 3.0, 2.0], 1)
    '2.0 [1.0 – 3.0]'
    """
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:,.{digits}f}"
    return f"{med:,.{digits}f} [{min(values):,.{digits}f} – {max(values):,.{digits}f}]"


def ratios(a: list[float], b: list[float]) -> list[float]:
    """``a[i] / b[i]`` for the runs of each repetition (paired, never across repetitions).

    >>> ratios([4.0, 6.0], [2.0, 2.0])
    [2.0, 3.0]
    """
    return [x / y for x, y in zip(a, b)]


def measured_sleep(seconds: float = SLEEP_SECONDS, n: int = 100) -> float:
    """What ``time.sleep(seconds)`` really takes here (it always overshoots a little)."""
    t0 = time.perf_counter()
    for _ in range(n):
        time.sleep(seconds)
    return (time.perf_counter() - t0) / n


def redis_cpu_seconds(client: redis.Redis) -> float:
    """CPU seconds (user + sys) the Redis server has used so far."""
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class Quiet:
    """Wait before a timed run while pytest or another benchmark runs, within a total budget.

    Two benchmarks that wait for each other would wait forever, so the wait
    is bounded; runs that start while others are busy are counted.
    """

    def __init__(self, budget: float):
        self.budget = budget
        self.noisy_runs = 0
        self.runs = 0

    def wait(self) -> None:
        self.runs += 1
        others = other_busy_processes()
        if others and self.budget > 0:
            print(
                f"waiting (at most {self.budget:.0f} s): {len(others)} other test/benchmark "
                f"process(es) running, e.g. {others[0][:100]!r}",
                file=sys.stderr,
                flush=True,
            )
        while others and self.budget > 0:
            time.sleep(5)
            self.budget -= 5
            others = other_busy_processes()
        if others:
            self.noisy_runs += 1

    def note(self) -> str:
        """A warning for the report if some runs were not quiet, else ``""``."""
        if not self.noisy_runs:
            return ""
        return (
            f"**{self.noisy_runs} of {self.runs} timed runs started while other test or benchmark "
            "processes were running: their figures may be low.**"
        )


def other_busy_processes() -> list[str]:
    """Command lines of running pytest or benchmark processes, other than us and our family."""
    out = subprocess.run(
        ["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True, timeout=10, check=False
    ).stdout
    procs = {}
    for line in out.splitlines():
        pid, ppid, args = (line.split(None, 2) + [""])[:3]
        procs[int(pid)] = (int(ppid), args)
    family, pid = set(), os.getpid()
    while pid in procs and pid not in family:  # ourselves and our ancestors
        family.add(pid)
        pid = procs[pid][0]
    grew = True
    while grew:  # our descendants
        grew = False
        for pid, (ppid, _) in procs.items():
            if ppid in family and pid not in family:
                family.add(pid)
                grew = True
    return [
        args
        for pid, (_, args) in procs.items()
        if pid not in family
        and re.search(r"pytest|bench_\w+\.py|benchmarks\.bench_|-m benchmarks", args)
        and re.search(r"python|pytest", args)
    ]


def git_revision() -> str:
    """Short commit of the repository, with a note if rush_dask has uncommitted changes."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
        dirty = (
            subprocess.run(
                ["git", "diff", "--quiet", "HEAD", "--", "rush_dask"], cwd=ROOT, timeout=10, check=False
            ).returncode
            != 0
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown revision"
    return f"{rev}{' + uncommitted changes' if dirty else ''}" if rev else "unknown revision"


def package_version(name: str) -> str | None:
    """Installed version of a distribution, or ``None``."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def machine(url: str | None = None) -> dict:
    """The machine and the versions of everything measured.

    >>> machine()["cores"] >= 1
    True
    """
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "ram_gb": round(ram_bytes() / 2**30, 1) if ram_bytes() else None,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "rush_dask": git_revision(),
    }
    for name in ("redis", "dask", "distributed", "rq", "celery", "pandas", "numpy"):
        info[name if name != "redis" else "redis-py"] = package_version(name)
    if url:
        info["redis_server"] = redis.Redis.from_url(url).info("server")["redis_version"]
    return info


def parse_arguments(argv: list[str] | None, doc: str, quick_help: str) -> tuple[argparse.Namespace, int]:
    """The options the single benchmarks take: ``--repeats``, ``--quick``, ``--no-wait``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (default 3)")
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {quick_help}")
    parser.add_argument("--no-wait", action="store_true", help="do not wait while pytest or other benchmarks run")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else args.repeats
    if repeats < 1:
        parser.error("--repeats must be >= 1")
    return args, repeats
