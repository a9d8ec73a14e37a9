"""The house style and the package boundary, held by the suite (so by CI).

``ruff check`` and ``mypy`` run with the configuration in pyproject.toml; each
takes a few seconds (mypy about 12 s without its cache, under 1 s with it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tool(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec(module) is None:
        pytest.fail(f"{module} is not installed: pip install -e '.[test]'")
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


def test_ruff_finds_nothing():
    proc = _tool("ruff", "check", "--no-cache", "--output-format", "concise", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_code_is_formatted():
    proc = _tool("ruff", "format", "--check", "--no-cache", ".")  # fix with: ruff format .
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_finds_nothing():
    proc = _tool("mypy")  # files = ["rush_dask"], strict: [tool.mypy] in pyproject.toml
    assert proc.returncode == 0, proc.stdout + proc.stderr


# What a process has imported after `import rush_dask` and the lines given; in a fresh
# interpreter, so that nothing this test process imported counts.
_PROBE = textwrap.dedent("""
    import json, sys
    {code}
    print(json.dumps(sorted(sys.modules)))
""")
HEAVY = ("dask", "distributed", "pandas", "numpy", "joblib", "optuna", "matplotlib")


def _imported(code: str, env: dict[str, str] | None = None) -> set[str]:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE.format(code=code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, **(env or {})},
    )
    return {name.split(".")[0] for name in json.loads(proc.stdout)}


@pytest.mark.parametrize(
    "code",
    [
        "import rush_dask",
        "import rush_dask; rush_dask.RushError; rush_dask.plan",
    ],
)
def test_importing_the_package_loads_no_dask_pandas_or_numpy(code):
    """The package's imports are lazy: the CLI and the worker processes start fast."""
    assert not _imported(code) & set(HEAVY)


def test_a_worker_process_imports_no_dask_nor_distributed():
    """What ``python -m rush_dask.core.worker`` imports before its first task (a worker of plain
    rush tasks never needs Dask; a Dask node loads it when it runs)."""
    loaded = _imported("import rush_dask.core.worker", env={"RUSH_DASK_WORKER": "1"})
    assert not loaded & {"dask", "distributed", "joblib", "optuna", "matplotlib"}, loaded & set(HEAVY)


def test_the_controller_imports_no_pandas_nor_numpy():
    """``from rush_dask import Rush``: pandas loads with the first DataFrame asked for."""
    loaded = _imported("from rush_dask import Rush")
    assert not loaded & {"pandas", "numpy", "joblib", "optuna", "matplotlib"}, loaded & set(HEAVY)


def test_the_controller_imports_no_dask_nor_distributed():
    """``from rush_dask import Rush`` is the queue's controller: Dask would load on the first compute."""
    loaded = _imported("from rush_dask import Rush")
    assert not loaded & {"dask", "distributed"}, loaded & set(HEAVY)


def test_the_queue_core_imports_no_dask_nor_distributed():
    """Every module of ``rush_dask.core`` (the queue, the worker, the data plane) imports without
    Dask: the layout's one rule. The Dask front end is ``rush_dask.dask``."""
    core = sorted(p.stem for p in (ROOT / "rush_dask" / "core").glob("*.py") if p.stem != "__init__")
    assert "worker" in core and "scripts" in core
    loaded = _imported("\n".join(f"import rush_dask.core.{name}" for name in core))
    assert not loaded & {"dask", "distributed"}, loaded & set(HEAVY)
