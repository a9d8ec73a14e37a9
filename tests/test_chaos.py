"""The chaos suite, short: the driver of ``python -m benchmarks.chaos`` with a small budget.

Real worker processes get SIGKILL and SIGSTOP/SIGCONT, Redis (AOF on) is
restarted, while a Dask graph, plain tasks and persist/futures/release cycles
(with a second client process, SIGKILLed while it holds a future) run; every
invariant of the long run is asserted here too, reference counts included. No timing threshold: the budget only bounds
how long faults are injected.
"""

from __future__ import annotations

import sys
from pathlib import Path

import funcs
import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmarks/ is a package at the repository root
    sys.path.insert(0, str(ROOT))

from benchmarks.chaos import Chaos, Stats, check_network, check_refs, stencil_graph, stencil_shape

pytestmark = pytest.mark.slow  # runs in CI; `pytest -m 'not slow'` skips it

KINDS = ("sigkill", "sigstop_resume", "sigstop_until_lost", "redis_restart", "redis_sigkill")


@pytest.mark.timeout(600)  # a bound for a hang on a very loaded machine, not a timing check
def test_short_chaos_run_keeps_every_invariant(tmp_path):
    stats = Chaos(
        seconds=25, workers=3, seed=7, nodes=1_500, tasks=300, hang_timeout=240, directory=str(tmp_path), verbose=False
    ).run()
    assert stats.violations == []
    assert all(stats.faults[kind] >= 1 for kind in KINDS), stats.faults
    assert stats.work["graph computes"] >= 1 and stats.work["plain tasks"] >= 300
    # Results were held, passed to a second client, released; a second client died holding one.
    assert stats.work["holding rounds"] >= 1 and stats.faults["holder_sigkill"] >= 1
    # The faults were seen and repaired, not missed: killed and stopped workers were declared lost.
    assert stats.recovered["workers declared lost"] >= stats.faults["sigstop_until_lost"] >= 1
    assert stats.recovered["workers declared lost while stopped"] == stats.faults["sigstop_until_lost"]


def test_the_checks_catch_a_duplicate_a_lost_task_and_a_leftover_key(rush):
    """The invariants can fail: plant each kind of damage in a finished network."""
    rush.start_workers(funcs.square, n_workers=1)
    keys = rush.push_tasks([{"x": x} for x in range(3)])
    rush.wait_for_tasks(keys, timeout=60)
    expected = {key: x * x for key, x in zip(keys, range(3))}

    clean = Stats()
    check_network(rush, expected, clean)
    assert clean.violations == []

    rush.client.rpush(rush.keys.finished, keys[0])  # recorded twice
    rush.client.set(rush.keys.prefix + "graph:abc", "1")  # a graph key left behind
    damaged = Stats()
    check_network(rush, {**expected, "never-pushed": 1}, damaged)  # a task that was lost
    text = "\n".join(damaged.violations)
    assert "recorded twice in 'finished'" in text
    assert "'tasks' misses 1 tasks" in text
    assert "unexpected keys left in Redis" in text and "graph:abc" in text


def test_the_refs_check_catches_a_count_off_and_a_hold_on_a_gone_node(rush):
    rush.start_workers(funcs.square, n_workers=1)
    future = rush.submit(funcs.square, 3)
    future.result(timeout=60)
    assert check_refs(rush) == []
    rush.client.hincrby(rush.keys.task(future.task_key), "refs", 1)  # a reference nobody holds
    rush.client.hset(rush.keys.client_refs("ghost"), "gone.0", 1)  # a hold on nothing
    found = "\n".join(check_refs(rush))
    assert f"{future.task_key}: refs 2, held by clients 1, needed by dependents 0" in found
    assert "gone.0: held 1 times by clients, but the node is gone" in found


def test_stencil_graph_value_is_computed_exactly():
    width, depth = stencil_shape(300)
    graph, expected = stencil_graph(width, depth, salt=3)
    assert 250 <= len(graph.dask) <= 350
    assert graph.compute(scheduler="sync") == expected
