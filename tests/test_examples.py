"""The hyperparameter-search examples, end to end on a small budget against the test Redis."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import pytest
import redis

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
if str(EXAMPLES) not in sys.path:
    # Workers import the example modules by name; local workers inherit this sys.path.
    sys.path.insert(0, str(EXAMPLES))

import hpo_dask_grid
import hpo_decentralized
import hpo_random_search

from rush_dask import Rush
from rush_dask.core import constants as C

N_EVALS = 12
N_WORKERS = 2
import conftest

TIMEOUT = 60
wait_until = functools.partial(conftest.wait_until, timeout=TIMEOUT)


def broken_objective(log_C, log_gamma, **kwargs):
    """An objective that always raises (module-level: the workers import it by name)."""
    raise ValueError(f"cannot evaluate C=10**{log_C:.2f}")


def assert_png(path: Path) -> None:
    assert path.is_file()
    blob = path.read_bytes()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(blob) > 5_000  # axes, points and lines, not an empty canvas


def assert_no_keys_left(url: str, network_id: str) -> None:
    leftover = list(redis.Redis.from_url(url).scan_iter(match=C.Keys(network_id).pattern))
    assert leftover == [], f"the example left keys behind: {leftover[:5]}"


def assert_sensible(config, score) -> None:
    assert 0.5 < score <= 1.0
    assert set(config) == {"log_C", "log_gamma"}


def test_random_search(redis_url, network_id, tmp_path):
    out = tmp_path / "random.png"
    config, score = hpo_random_search.main(
        n_evals=N_EVALS, n_workers=N_WORKERS, url=redis_url, out=str(out), network_id=network_id, timeout=TIMEOUT
    )
    assert_sensible(config, score)
    assert_png(out)
    assert_no_keys_left(redis_url, network_id)


def test_decentralized_search(redis_url, network_id, tmp_path, monkeypatch):
    # Look at the network just before main() resets it.
    snapshots = []
    real_reset = Rush.reset

    def reset_after_snapshot(self, *args, **kwargs):
        if self.n_tasks:
            snapshots.append((self.fetch_tasks(), self.n_running_tasks, self.n_failed_tasks, self.n_running_workers))
        return real_reset(self, *args, **kwargs)

    monkeypatch.setattr(Rush, "reset", reset_after_snapshot)
    out = tmp_path / "decentralized.png"
    config, score = hpo_decentralized.main(
        n_evals=N_EVALS,
        n_workers=N_WORKERS,
        url=redis_url,
        out=str(out),
        seed=1,
        network_id=network_id,
        timeout=TIMEOUT,
    )
    assert_sensible(config, score)
    assert_png(out)
    assert_no_keys_left(redis_url, network_id)

    ((tasks, n_running, n_failed, n_running_workers),) = snapshots
    assert n_running == 0 and n_failed == 0 and n_running_workers == 0
    assert set(tasks["state"]) == {"finished"}
    # Each worker checks the budget before it starts an evaluation: at most one extra per worker.
    assert N_EVALS <= len(tasks) <= N_EVALS + N_WORKERS - 1
    assert tasks["worker_id"].nunique() > 1
    assert tasks["score"].max() == score


def test_dask_grid(redis_url, network_id, tmp_path):
    out = tmp_path / "grid.png"
    config, score = hpo_dask_grid.main(
        n_evals=N_EVALS, n_workers=N_WORKERS, url=redis_url, out=str(out), network_id=network_id, timeout=TIMEOUT
    )
    assert_sensible(config, score)
    assert_png(out)
    assert_no_keys_left(redis_url, network_id)


def test_decentralized_failing_objective_fails_tasks_not_workers(rush):
    budget = 4
    ids = rush.start_workers(
        worker_loop=hpo_decentralized.worker_loop, n_workers=N_WORKERS, budget=budget, objective=broken_objective
    )
    wait_until(lambda: rush.n_terminated_workers == N_WORKERS)
    # Failed evaluations spend the budget; the loop goes on and stops there, gracefully.
    assert sorted(rush.terminated_worker_ids) == sorted(ids)
    assert rush.n_finished_tasks == 0 and rush.n_running_tasks == 0
    failed = rush.fetch_failed_tasks()
    assert budget <= len(failed) <= budget + N_WORKERS - 1
    assert failed["error"].str.startswith("ValueError: cannot evaluate C=10**").all()
    traceback = rush.client.hget(rush.keys.task(failed["keys"].iloc[0]), "traceback").decode()
    assert "broken_objective" in traceback

    def warnings():  # a worker ships its last log records just after it deregisters
        log = rush.read_log()
        return log[(log["level"] == "WARNING") & (log["logger"] == "hpo_decentralized")]

    wait_until(lambda: len(warnings()) == len(failed))
    assert warnings()["message"].str.contains("failed: ValueError: cannot evaluate").all()


def test_decentralized_search_survives_a_dead_worker(rush):
    import os
    import signal

    budget = 10
    victim, survivor = rush.start_workers(worker_loop=hpo_decentralized.worker_loop, n_workers=2, budget=budget)
    wait_until(lambda: rush.n_finished_tasks >= 2)
    os.kill(rush.local_workers[victim].process.pid, signal.SIGKILL)
    # What the example's controller does while it waits: declare dead workers lost.
    wait_until(lambda: rush.detect_lost_workers() == [] and rush.n_terminated_workers == 1)
    assert rush.lost_worker_ids == [victim] and rush.terminated_worker_ids == [survivor]
    assert rush.n_running_tasks == 0
    assert rush.n_finished_tasks + rush.n_failed_tasks >= budget
    # The evaluation the victim was running (if any) failed with it; it is not requeued.
    assert rush.fetch_failed_tasks()["error"].str.contains("lost").all()
