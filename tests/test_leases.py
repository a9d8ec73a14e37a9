"""A compute whose client dies or hangs is cancelled by the workers; nothing of it stays in Redis.

The clients here are real processes, stopped with SIGKILL or SIGSTOP while
their graph runs on real workers.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import conftest
import dask
import dask_funcs as f
import pytest
from test_dask import graph_keys

TIMEOUT = 60
wait_until = functools.partial(conftest.wait_until, timeout=TIMEOUT)
FAST = {"heartbeat_period": 0.2, "heartbeat_expire": 2.0}

CLIENT = textwrap.dedent("""
    import sys
    import dask
    sys.path.insert(0, {tests!r})
    import dask_funcs as f
    from rush_dask import Rush

    rush = Rush({network!r}, url={url!r})
    values = [dask.delayed(f.slow_inc)(i, 0.3) for i in range(40)]
    print(sum(dask.compute(*values, scheduler=rush, lease={lease})), flush=True)
""")


@pytest.fixture
def rush2(rush):
    rush.start_workers(n_workers=2, **FAST)
    rush.wait_for_workers(2, timeout=TIMEOUT)
    return rush


def start_client(rush, lease: float) -> subprocess.Popen:
    """A client process computing 40 slow nodes on ``rush``'s network; returns once they run."""
    code = CLIENT.format(tests=str(Path(__file__).parent), network=rush.network_id, url=rush.url, lease=lease)
    client = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: rush.n_running_tasks > 0 or client.poll() is not None, what="graph running")
    assert client.poll() is None, client.communicate()
    return client


def leases(rush) -> list[bytes]:
    return rush.client.zrange(rush.keys.leases, 0, -1)


def test_a_sigkilled_client_leaves_nothing_behind(rush2):
    client = start_client(rush2, lease=1)
    assert graph_keys(rush2) and len(leases(rush2)) == 1
    client.send_signal(signal.SIGKILL)
    client.wait()
    # The workers' heartbeats find the expired lease and cancel the graph.
    wait_until(lambda: graph_keys(rush2) == [] and leases(rush2) == [], what="abandoned graph reaped")
    wait_until(lambda: rush2.n_running_tasks == 0 and rush2.n_queued_tasks == 0, what="workers idle")
    # The network is as good as new: the next compute runs and leaves nothing either.
    values = [dask.delayed(f.inc)(i) for i in range(30)]
    assert dask.compute(*values, scheduler=rush2) == tuple(range(1, 31))
    assert graph_keys(rush2) == [] and leases(rush2) == []
    assert rush2.n_running_workers == 2


def test_a_client_that_follows_its_compute_keeps_it_past_the_lease(rush2):
    values = [dask.delayed(f.slow_inc)(i, 0.2) for i in range(24)]  # about 2.4 s on 2 workers
    assert dask.compute(*values, scheduler=rush2, lease=0.5) == tuple(range(1, 25))
    assert graph_keys(rush2) == [] and leases(rush2) == []


def test_a_client_paused_past_its_lease_gets_a_clear_error(rush2):
    client = start_client(rush2, lease=1)
    os.kill(client.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: graph_keys(rush2) == [], what="paused client's graph reaped")
    finally:
        os.kill(client.pid, signal.SIGCONT)
    out, err = client.communicate(timeout=TIMEOUT)
    assert client.returncode != 0 and out == ""
    assert "ComputeCancelledError" in err and "did not renew the graph's lease for 1 s" in err
    assert graph_keys(rush2) == [] and leases(rush2) == []


def test_persisted_results_are_held_under_the_clients_lease_not_a_graphs(rush2):
    persisted = dask.persist(*[dask.delayed(f.inc)(i) for i in range(3)], scheduler=rush2)
    assert leases(rush2) == []  # no compute lease: they outlive the call
    assert rush2.client.zscore(rush2.keys.clients, rush2.client_lease.client_id) is not None
    assert rush2.client.hlen(rush2.keys.client_refs(rush2.client_lease.client_id)) == 3
    assert dask.compute(*persisted, scheduler=rush2) == (1, 2, 3)
    del persisted


@pytest.mark.parametrize("bad", [0, -1, "60", True])
def test_bad_lease_is_refused_before_anything_is_written(rush2, bad):
    before = conftest.network_keys(rush2.url, rush2)
    with pytest.raises(ValueError, match="lease must be a positive number of seconds"):
        dask.compute(dask.delayed(f.inc)(1), scheduler=rush2, lease=bad)
    assert conftest.network_keys(rush2.url, rush2) == before
