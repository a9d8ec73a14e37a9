"""The command line starts light: which modules `rush-dask status|logs|stop|dashboard` import.

Run as real processes against a real network; no timing thresholds (see
benchmarks/bench_cli.py for the times).
"""

from __future__ import annotations

import subprocess
import sys

import funcs
import pytest
from test_cli import ROOT, TIMEOUT, cli_env

HEAVY = ("dask", "pandas", "numpy", "distributed", "aiohttp", "prometheus_client")

# Runs the command in-process, then prints which heavy modules it imported (stdout, last line).
PROBE = """
import sys
from rush_dask.deploy.cli import main
try:
    main(sys.argv[1:], prog_name="rush-dask")
except SystemExit:
    pass
print("LOADED=" + ",".join(m for m in {heavy!r} if m in sys.modules))
"""


def loaded(*args: str, url: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *args],
        cwd=ROOT,
        env=cli_env(url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("LOADED="), out.stdout + out.stderr
    return [m for m in last[len("LOADED=") :].split(",") if m]


def test_status_logs_stop_and_help_import_neither_dask_nor_pandas(rush, redis_url):
    first, second = rush.start_workers(funcs.add, n_workers=2)
    rush.wait_for_workers(2, timeout=TIMEOUT)
    rush.wait_for_tasks(rush.push_tasks([{"x1": 1, "x2": 2}]), timeout=TIMEOUT)
    rush.stop_workers("terminate", [first])
    net = rush.network_id
    assert loaded("status", "--network", net, "--all", url=redis_url) == []
    assert loaded("logs", "--network", net, "--tail", "5", url=redis_url) == []
    assert loaded("stop", "--network", net, "--worker", second, url=redis_url) == []
    assert loaded("--help", url=redis_url) == []
    assert loaded("dashboard", "--help", url=redis_url) == []


def test_the_package_imports_without_dask_and_registers_the_scheduler_when_dask_comes():
    code = (
        "import sys, rush_dask\n"
        "assert 'dask' not in sys.modules and 'pandas' not in sys.modules, sorted(sys.modules)\n"
        "from rush_dask import Rush\n"  # the controller loads no dask either (tests/test_tools.py)
        "import dask.base\n"
        "print(repr(dask.base.named_schedulers['rush']))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "<rush_dask default scheduler>"


def test_a_serving_dashboard_imports_neither_dask_nor_pandas(rush, redis_url):
    pytest.importorskip("aiohttp", reason="the dashboard extra: pip install 'rush-dask[dashboard]'")
    rush.start_workers(funcs.add, n_workers=1)
    rush.wait_for_tasks(rush.push_tasks([{"x1": 1, "x2": 2}]), timeout=TIMEOUT)
    code = (
        "import sys, urllib.request\n"
        "from rush_dask.dashboard import start_in_thread\n"
        f"server = start_in_thread({redis_url!r}, {rush.network_id!r}, port=0)\n"
        "base = server.url.split('?')[0]\n"
        "for path in ('api/snapshot', 'metrics', 'api/config'):\n"
        "    urllib.request.urlopen(base + path, timeout=30).read()\n"
        "server.stop()\n"
        "print('LOADED=' + ','.join(m for m in ('dask', 'pandas', 'numpy') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "LOADED="
