"""Rush workers launched on a Dask distributed cluster (LocalCluster with worker processes)."""

from __future__ import annotations

import os
import signal
import socket
import time

import conftest
import funcs
import psutil
import pytest
import redis
from conftest import network_keys, wait_until
from distributed import Client, LocalCluster

from rush_dask import Rush
from rush_dask.core import constants as C
from rush_dask.core.errors import WorkerStartError
from rush_dask.core.network import pid_alive
from rush_dask.core.server import RedisServer
from rush_dask.deploy.launch import HiddenEnv, submit_workers

TIMEOUT = 60
FAST = {"heartbeat_period": 0.2, "heartbeat_expire": 1.5}


def new_cluster(**options) -> tuple[LocalCluster, Client]:
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=40, **options
    )
    return cluster, Client(cluster)


@pytest.fixture(scope="module")
def tcp_url():
    server = RedisServer(tcp=True).start()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def cluster_client():
    cluster, client = new_cluster()
    yield client
    client.close()
    cluster.close()


@pytest.fixture
def tcp_rush(tcp_url):
    yield from conftest.fresh_network(tcp_url)


@pytest.fixture
def remote_view(monkeypatch):
    """Make this controller see the cluster's workers as remote: only Redis reaches them.

    Without this the controller, on the same host, would signal their pids
    directly; real cluster workers on other machines get orders only through
    their heartbeat.
    """
    monkeypatch.setattr("rush_dask.core.control.HOSTNAME", "controller-elsewhere")
    monkeypatch.setattr("rush_dask.core.network.HOSTNAME", "controller-elsewhere")


def cluster_worker_pids(client: Client) -> dict[str, int]:
    return client.run(os.getpid)


def info_of(rush: Rush, ids) -> dict[str, dict]:
    info = rush.worker_info.set_index("worker_id")
    return {wid: info.loc[wid].to_dict() for wid in ids}


def states_of(rush: Rush, ids) -> set[str]:
    return {row["state"] for row in info_of(rush, ids).values()}


def finished_by_cluster_worker(rush: Rush, ids) -> list:
    return [rush.local_workers.on_cluster[i].future.result(timeout=TIMEOUT) for i in range(len(ids))]


def test_unix_socket_url_is_refused_and_nothing_is_written(rush, redis_url, cluster_client):
    assert redis_url.startswith("unix://")
    with pytest.raises(ValueError, match="TCP Redis.*rush-dask server"):
        rush.start_workers(funcs.add, client=cluster_client)
    with pytest.raises(TypeError, match="distributed.Client"):
        rush.start_workers(funcs.add, client="tcp://127.0.0.1:8786")
    assert network_keys(redis_url, rush) == set()


def test_bad_cluster_input_is_refused_and_nothing_is_written(tcp_rush, tcp_url, cluster_client):
    with pytest.raises(ValueError, match="n_workers must be an integer >= 1"):
        tcp_rush.start_workers(funcs.add, n_workers=0, client=cluster_client)
    with (
        LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as empty,
        Client(empty) as client,
        pytest.raises(ValueError, match="no workers yet.*wait_for_workers"),
    ):
        tcp_rush.start_workers(funcs.add, client=client)
    assert network_keys(tcp_url, tcp_rush) == set()


def test_hidden_env_shows_no_values():
    env = HiddenEnv({"RUSH_REDIS_URL": "redis://:hunter2@db:6379/0", "RUSH_SECRET": "s3cr3t"})
    assert "hunter2" not in repr(env) and "s3cr3t" not in str(env)
    assert dict(env)["RUSH_SECRET"] == "s3cr3t"


def test_workers_run_on_the_cluster_spread_over_its_workers_and_stop_with_the_controller(tcp_rush, cluster_client):
    ids = tcp_rush.start_workers(funcs.sleep_then, n_workers=3, client=cluster_client, **FAST)
    tcp_rush.wait_for_workers(timeout=TIMEOUT)  # counts the cluster workers it started
    keys = tcp_rush.push_tasks([{"x": i, "duration": 0.05} for i in range(12)])
    tcp_rush.wait_for_tasks(keys, timeout=TIMEOUT)

    info = info_of(tcp_rush, ids)
    assert states_of(tcp_rush, ids) == {C.WorkerState.RUNNING}
    assert {row["hostname"] for row in info.values()} == {socket.gethostname()}
    pids = {int(row["pid"]) for row in info.values()}
    assert len(pids) == 3 and os.getpid() not in pids
    # Each Rush worker is a child process of a distributed worker: two on one, one on the other.
    parents = sorted(psutil.Process(pid).ppid() for pid in pids)
    dask_pids = sorted(cluster_worker_pids(cluster_client).values())
    assert set(parents) == set(dask_pids) and len(set(parents)) == 2
    data = tcp_rush.fetch_finished_tasks()
    assert sorted(data["x"]) == list(range(12))
    assert set(data["worker_id"]) <= set(ids)
    assert set(data["pid"]) <= pids  # the function ran in those processes

    # Closing the controller stops the cluster workers it started, like its local ones.
    futures = [w.future for w in tcp_rush.local_workers.on_cluster]
    tcp_rush.close()
    assert [f.result(timeout=TIMEOUT)[0] for f in futures] == [0, 0, 0]
    assert states_of(tcp_rush, ids) == {C.WorkerState.TERMINATED}


def test_stop_workers_terminate_reaches_cluster_workers_through_redis(tcp_rush, cluster_client, remote_view):
    ids = tcp_rush.start_workers(funcs.sleep_then, client=cluster_client, **FAST)
    assert len(ids) == 2  # one per distributed worker by default
    tcp_rush.wait_for_workers(worker_ids=ids, timeout=TIMEOUT)
    pids = [int(info_of(tcp_rush, ids)[w]["pid"]) for w in ids]
    [key] = tcp_rush.push_tasks([{"x": 1, "duration": 1.0}])
    wait_until(lambda: tcp_rush.n_running_tasks == 1, TIMEOUT, "task running")

    tcp_rush.stop_workers("terminate")
    # The distributed tasks end when the Rush workers end, with exit code 0.
    assert [code for code, _ in finished_by_cluster_worker(tcp_rush, ids)] == [0, 0]
    assert tcp_rush.fetch_tasks().set_index("keys").loc[key, "state"] == C.TaskState.FINISHED  # finished first
    assert states_of(tcp_rush, ids) == {C.WorkerState.TERMINATED}
    assert not any(pid_alive(pid) for pid in pids)
    assert all(not tasks for tasks in cluster_client.processing().values())


def test_stop_workers_kill_reaches_cluster_workers_at_their_next_heartbeat(tcp_rush, cluster_client, remote_view):
    ids = tcp_rush.start_workers(funcs.sleep_then, client=cluster_client, **FAST)
    tcp_rush.wait_for_workers(worker_ids=ids, timeout=TIMEOUT)
    [key] = tcp_rush.push_tasks([{"x": 1, "duration": 120}])
    wait_until(lambda: tcp_rush.n_running_tasks == 1, TIMEOUT, "task running")

    tcp_rush.stop_workers("kill")
    results = finished_by_cluster_worker(tcp_rush, ids)
    # Exit code 137 from the heartbeat thread (a SIGKILL from here would read -9).
    assert [code for code, _ in results] == [137, 137]
    assert all("'killed' in Redis" in tail for _, tail in results)
    assert states_of(tcp_rush, ids) == {C.WorkerState.KILLED}
    failed = tcp_rush.fetch_failed_tasks().set_index("keys")
    assert "worker killed" in failed.loc[key, "error"]


def test_a_worker_that_cannot_start_on_the_cluster_is_reported(tcp_rush, cluster_client):
    started = submit_workers(
        cluster_client,
        sorted(cluster_worker_pids(cluster_client))[:1],
        tcp_rush.network_id,
        "no-such-start-id",
        tcp_rush.url,
    )
    tcp_rush.local_workers.on_cluster.extend(started)
    with pytest.raises(WorkerStartError, match="no worker configuration 'no-such-start-id'"):
        tcp_rush.wait_for_workers(timeout=TIMEOUT)


def hold_on_cluster(x, **kwargs):
    """Never returns on the test's cluster (its workers have RUSH_TEST_ON_CLUSTER set)."""
    while os.environ.get("RUSH_TEST_ON_CLUSTER"):
        time.sleep(0.05)
    return {"y": x}


def test_crashed_or_closed_cluster_makes_its_workers_lost_and_their_tasks_finish_elsewhere(tcp_rush, remote_view):
    cluster, client = new_cluster(env={"RUSH_TEST_ON_CLUSTER": "1"})
    try:
        ids = tcp_rush.start_workers(hold_on_cluster, client=client, **FAST)
        tcp_rush.wait_for_workers(worker_ids=ids, timeout=TIMEOUT)
        pids = [int(info_of(tcp_rush, ids)[w]["pid"]) for w in ids]
        keys = tcp_rush.push_tasks([{"x": i} for i in range(10)])
        wait_until(
            lambda: set(tcp_rush.fetch_running_tasks()["worker_id"]) == set(ids), TIMEOUT, "both cluster workers busy"
        )
        # A distributed worker crashes: its Rush worker dies with it (not orphaned).
        os.kill(psutil.Process(pids[0]).ppid(), signal.SIGKILL)
        wait_until(lambda: not pid_alive(pids[0]), TIMEOUT, "Rush worker of the crashed Dask worker gone")
    finally:  # then the whole cluster goes away: the other Rush worker dies too
        client.close()
        cluster.close()
    wait_until(lambda: not pid_alive(pids[1]), TIMEOUT, "Rush worker of the closed cluster gone")
    held = set(tcp_rush.fetch_running_tasks()["keys"])  # a worker may hold a prefetched task too
    assert len(held) >= 2 and tcp_rush.n_finished_tasks == 0 and tcp_rush.n_failed_tasks == 0

    local = tcp_rush.start_workers(hold_on_cluster, n_workers=2, **FAST)
    tcp_rush.wait_for_tasks(keys, timeout=TIMEOUT)  # detects the lost workers on the way
    assert states_of(tcp_rush, ids) == {C.WorkerState.LOST}
    finished = [k.decode() for k in redis.Redis.from_url(tcp_rush.url).lrange(tcp_rush.keys.finished, 0, -1)]
    assert sorted(finished) == sorted(keys)  # each task finished exactly once
    data = tcp_rush.fetch_finished_tasks()
    assert set(data["worker_id"]) <= set(local)
    assert set(data[data["attempts"] == 2]["keys"]) == held  # requeued once each
    assert set(data["attempts"]) <= {1, 2}


@pytest.fixture
def signed_rush(tcp_url):
    yield from conftest.fresh_network(tcp_url, secret="s3cr3t-for-the-test")


def test_url_and_secret_reach_cluster_workers_through_the_environment(signed_rush, cluster_client):
    tcp_rush = signed_rush  # its payloads are signed: the workers must have the same secret

    def environment(x, **kwargs):  # a local function: shipped by value
        return {"secret": os.environ.get("RUSH_SECRET"), "url": os.environ.get("RUSH_REDIS_URL")}

    ids = tcp_rush.start_workers(environment, n_workers=1, client=cluster_client, **FAST)
    tcp_rush.wait_for_workers(worker_ids=ids, timeout=TIMEOUT)
    keys = tcp_rush.push_tasks([{"x": 1}])
    tcp_rush.wait_for_tasks(keys, timeout=TIMEOUT)
    row = tcp_rush.fetch_finished_tasks().iloc[0]
    assert (row["secret"], row["url"]) == ("s3cr3t-for-the-test", tcp_rush.url)
    pid = int(info_of(tcp_rush, ids)[ids[0]]["pid"])
    command = " ".join(psutil.Process(pid).cmdline())
    assert "rush_dask.deploy.launch" in command and ids[0] in command
    assert tcp_rush.url not in command and "s3cr3t" not in command
