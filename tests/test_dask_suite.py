"""Dask's own tests (a cut of those its wheel ships) with every local scheduler redirected
to one rush_dask network: everything that passes natively must pass, except the short list
of expected differences below, each with its reason. Marked slow (minutes):
``python -m pytest -m slow tests/test_dask_suite.py``; ``.ci/run`` runs it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import dask
import pytest

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
DASK = Path(dask.__file__).resolve().parent

# The cut that CI runs: what fits its budget (about 8 minutes on 2 cores). Measured at commit
# time: these files without linalg took 2 min 14 s on 2 quiet cores (load 0.2 to 1.9);
# test_linalg.py took 1.2 times as long as test_array_core.py when both ran alone.
# RUSH_DASK_SUITE=full adds test_reductions.py and test_multi.py: 11 minutes on 2 quiet cores.
# Measured at commit time: 2,319 passed, 10 failed, all on the list below (2 fail natively too):
# 2,319 of the 2,327 that pass natively, 99.7 %. Before client nodes (rush_dask.dask.clientnodes): 2,304.
CUT = [
    "tests/test_delayed.py",
    "tests/test_base.py",
    "bag/tests/test_bag.py",
    "array/tests/test_array_core.py",
    "array/tests/test_linalg.py",
    "dataframe/tests/test_shuffle.py",
]
FULL = CUT + [
    "array/tests/test_reductions.py",
    "dataframe/tests/test_multi.py",
]
# Left out even then, for time: dataframe/tests/test_groupby.py (over 15 minutes natively on 2
# busy cores).

_PROCESS = "the task runs in a worker process"
_IDENTITY = "object identity: a value computed on a worker comes back as a copy"
_CLIENT_FUNCTION = (
    "a function of the graph changes a variable of the client process (a counter, a flag, "
    "through a closure or a monkeypatched function); it runs on a worker, which changes its "
    "own copy. Only stores into client objects, client locks and unpicklable nodes run on "
    "the client (rush_dask.dask.clientnodes), not the functions around them"
)

# test id (path relative to the dask package :: name) -> why it differs on rush_dask.
EXPECTED = {
    "tests/test_base.py::test_num_workers_config[threads]": (
        f"counts the threads that ran the tasks with num_workers=3; {_PROCESS}"
    ),
    "tests/test_base.py::test_num_workers_config[processes]": (
        f"counts the processes that ran the tasks with num_workers=3; {_PROCESS}"
    ),
    "bag/tests/test_bag.py::test_to_delayed_optimize_graph": _CLIENT_FUNCTION,
    "bag/tests/test_bag.py::test_repartition_partition_size_complex_dtypes": (
        f"compares lists of numpy arrays with ==, true natively only because both sides hold "
        f"the same array objects; {_IDENTITY}"
    ),
    "bag/tests/test_bag.py::test_bag_with_single_callable": _IDENTITY,
    "array/tests/test_array_core.py::test_binary_operator_delegation": (
        "needs the pytest-mock fixture 'mocker', not installed (errors natively too)"
    ),
    "array/tests/test_reductions.py::test_nanquantile_all_nan": (
        "expects a RuntimeWarning raised as an exception, as Dask's own pytest configuration "
        "(not shipped in the wheel) makes warnings; fails natively too"
    ),
    **{
        f"array/tests/test_array_core.py::{name}": _CLIENT_FUNCTION
        for name in (
            "test_store_sources_unoptimized_nocompute",
            "test_from_array_getitem[True-True]",
            "test_from_array_getitem[False-True]",
        )
    },
}


def run_suite(tests: list[str], junit: Path, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE / "dask_suite"), str(HERE)])}
    env.pop("RUSH_REDIS_URL", None)
    command = [
        sys.executable,
        "-X",
        "faulthandler",
        "-m",
        "pytest",
        "-q",
        "--tb=short",
        "-c",
        str(HERE / "dask_suite" / "pytest.ini"),
        "--rootdir",
        str(DASK),
        "-p",
        "rush_everywhere",
        f"--junitxml={junit}",
        *[str(DASK / t) for t in tests],
    ]
    proc = subprocess.Popen(
        command, cwd=HERE / "dask_suite", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # Ctrl-C: pytest stops and the plugin stops its workers and Redis server (a kill would
        # leave them behind: they run in sessions of their own).
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        raise AssertionError(f"the Dask suite did not finish in {timeout} s:\n{out[-3000:]}") from None
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def outcomes(junit: Path) -> dict[str, str]:
    """test id -> passed, failed, error or skipped."""
    result = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        module = case.get("classname", "").replace(".", "/")
        path = module.split("dask/", 1)[1] + ".py" if "dask/" in module else module + ".py"
        state = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                state = "failed" if child.tag == "failure" else child.tag
        result[f"{path}::{case.get('name')}"] = state
    return result


@pytest.mark.timeout(1800)
def test_dask_suite_on_rush(tmp_path):
    junit = tmp_path / "junit.xml"
    tests = FULL if os.environ.get("RUSH_DASK_SUITE") == "full" else CUT
    proc = run_suite(tests, junit, timeout=1500)
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]  # not a crash
    assert "computes ran on rush_dask" in proc.stdout
    computes = int(proc.stdout.split("rush_everywhere: ")[1].split()[0])
    assert computes > 500, "the redirection did not happen"
    results = outcomes(junit)
    bad = {t for t, s in results.items() if s in ("failed", "error")}
    unexpected = sorted(bad - set(EXPECTED))
    assert not unexpected, f"{len(unexpected)} unexpected failures: {unexpected}\n{proc.stdout[-4000:]}"
    passed = sum(1 for s in results.values() if s == "passed")
    assert passed > 800
    fixed = sorted(t for t in EXPECTED if results.get(t) == "passed")
    print(f"{passed} passed, {len(bad)} expected differences; now passing (remove from EXPECTED): {fixed}")
    print(proc.stdout[-400:])


def test_memmap_store_passes_without_crash(tmp_path):
    """The segfault: a failing test_memmap closed its memory map while the array lived and
    pytest's long traceback rendered it. The store into the memory map now runs on the client
    (rush_dask.dask.clientnodes), so the test passes; --tb=short stays, in case it fails again."""
    junit = tmp_path / "junit.xml"
    proc = run_suite(["array/tests/test_array_core.py::test_memmap"], junit, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]  # passed, not -11
    assert "Segmentation fault" not in proc.stderr
    assert outcomes(junit) == {"array/tests/test_array_core.py::test_memmap": "passed"}
