"""Smoke tests of ``python -m benchmarks``: it runs and writes its report, whatever the timings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # runs in CI; `pytest -m 'not slow'` skips it

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("matplotlib")


def run_benchmarks(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_tiny_run_writes_markdown_pngs_and_json(tmp_path):
    out = tmp_path / "out"
    proc = run_benchmarks("--tiny", "--no-peers", "--no-wait", "--only", "rush,scaling,cost,archive", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (out / "benchmarks.md").read_text()
    for title in (
        "The rush API against other task queues",
        "Scaling with the number of workers",
        "Cost: memory and time per task",
        "The archive: fetching finished tasks",
    ):
        assert f"## {title}" in text
    assert "Machine: " in text and "Redis " in text
    assert "| trivial tasks/s | 100 |" in text  # the tiny size ran
    assert "skipped (--no-peers)" in text
    assert "## Dask graphs" not in text  # not selected
    for name in ("bench-rush.png", "bench-scaling.png"):
        assert (out / "img" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "img" / "bench-dask.png").exists()
    [raw] = out.glob("benchmarks-*.json")
    results = json.loads(raw.read_text())
    assert results["sections"] == ["rush", "scaling", "cost", "archive"]
    assert set(results["rush"]["systems"]) == {"rush_dask", "bare queue", "bare queue, batches of 32"}


def synthetic_results() -> dict:
    """Results of every section as the benchmark stores them, made up (the report only renders)."""
    runs3 = [1.0, 1.1, 0.9]
    return {
        "started": "2026-01-01 00:00 UTC",
        "repeats": 3,
        "quick": False,
        "size": "full",
        "sections": ["rush", "dask", "scaling", "cost", "archive"],
        "command": "python -m benchmarks",
        "seconds": 600.0,
        "noisy_runs": 1,
        "timed_runs": 10,
        "machine": {
            "cpu": "Test CPU",
            "cores": 2,
            "ram_gb": 8.0,
            "os": "Linux",
            "python": "3.11",
            "rush_dask": "abc123",
            "redis_server": "7.0.0",
            "dask": "2026.1.0",
        },
        "rush": {
            "tasks": {"trivial": 10_000, "sleep": 1_000},
            "ideal": {"sleep": 5.0},
            "systems": ["rush_dask", "bare queue", "RQ"],
            "runs": {s: {"trivial": runs3, "sleep": [5.5, 5.6, 5.4]} for s in ("rush_dask", "bare queue", "RQ")},
            "skipped": {"Celery": "not installed (`pip install rush-dask[bench]`)"},
        },
        "dask": {
            "workloads": {
                "trivial": {"size": 10, "tasks": 10, "description": "d"},
                "sleep": {"size": 10, "tasks": 10, "description": "s"},
            },
            "ideal": {"sleep": 0.05},
            "systems": ["rush_dask", "sync", "LocalCluster"],
            "runs": {s: {"trivial": runs3, "sleep": runs3} for s in ("rush_dask", "sync", "LocalCluster")},
        },
        "scaling": {"n_tasks": 320, "sleep": 0.05, "runs": {"1": [16.5, 16.6, 16.4], "2": [8.3, 8.4, 8.2]}},
        "cost": {
            "n_tasks": 100_000,
            "n_nodes": 99_991,
            "push_seconds": runs3,
            "queued_bytes": [400, 410, 390],
            "queued_hash_bytes": [260, 260, 260],
            "finished_bytes": 700.0,
            "finished_hash_bytes": 360.0,
            "archive_bytes": 140.0,
            "submit_seconds": runs3,
            "peak_bytes": 2**27,
            "graph_bytes": 2**25,
        },
        "archive": {
            "n_tasks": 100_000,
            "push": 1.0,
            "full": [0.5, 0.6, 0.4],
            "incremental": [0.001] * 3,
            "lazy": runs3,
            "memory_per_task": 900.0,
        },
    }


def test_report_renders_every_section_and_plot(tmp_path):
    from benchmarks import report

    md = report.write(synthetic_results(), tmp_path)
    text = md.read_text()
    assert text.count("\n## ") == 5
    assert "2 cores, 8.0 GB RAM" in text
    assert "1 of 10 timed runs started while other tests" in text
    assert "- Celery: not installed" in text
    assert "| 2 | 8.00 | 8.300 [8.200 – 8.400] |" in text  # scaling: ideal, median [min – max]
    assert "1.00 [1.00 – 1.00]" in text  # rush / itself, paired per repetition
    assert "| 128.0 |" in text and "4.0× the graph dict itself" in text  # cost: peak MiB, ratio
    for name in ("bench-rush.png", "bench-dask.png", "bench-scaling.png"):
        assert (tmp_path / "img" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](img/{name})" in text


def test_unknown_section_is_refused_and_writes_nothing(tmp_path):
    proc = run_benchmarks("--only", "rush,nope", "--out", str(tmp_path / "out"), timeout=60)
    assert proc.returncode == 2
    assert "unknown section" in proc.stderr and "nope" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_bench_futures_runs_both_sides_and_prints_ratios():
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_futures", "--n", "50", "--repeats", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| as_completed |" in proc.stdout and "| executor map |" in proc.stdout
    assert "distributed / rush_dask" in proc.stdout and "load average" in proc.stdout
