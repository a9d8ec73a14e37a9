"""A real Redis Cluster: 3 masters with a replica each, started here.

The cluster is built with the cluster commands themselves (CLUSTER
ADDSLOTSRANGE, MEET, REPLICATE), as ``redis-cli --cluster create`` does, so
the test needs only the server binary (Redis or Valkey >= 7). Every key of
a network shares one hash tag, so its scripts and pipelines go to one
master; different networks spread over the masters; a master that dies is
replaced by its replica and the network goes on.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import conftest
import dask
import dask.array as da
import dask_funcs as f
import funcs
import pytest
import redis

from rush_dask import Rush
from rush_dask.core.server import find_server_binary

pytestmark = pytest.mark.slow  # runs in CI; `pytest -m 'not slow'` skips it

TIMEOUT = 90
wait_until = functools.partial(conftest.wait_until, timeout=TIMEOUT)
FAST = {"heartbeat_period": 0.2, "heartbeat_expire": 2.0}


@dataclass
class Node:
    port: int
    process: subprocess.Popen
    client: redis.Redis
    node_id: str = ""


@dataclass
class Cluster:
    nodes: list[Node] = field(default_factory=list)

    @property
    def url(self) -> str:  # any node's plain URL: rush_dask finds out it is a cluster
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def master_of(self, key: str) -> Node:
        """The master that serves ``key``'s slot now (asked of a node that is up)."""
        live = next(n for n in self.nodes if n.process.poll() is None)
        slot = live.client.execute_command("CLUSTER", "KEYSLOT", key)
        for start, end, master, *_ in live.client.execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return next(n for n in self.nodes if n.port == master[1])
        raise AssertionError(f"no master serves slot {slot}")


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too, so both are below 65536."""
    import random
    import socket

    while True:
        port = random.randrange(20_000, 50_000)
        try:
            for p in (port, port + 10_000):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue


def _start_node(binary: str, directory: Path) -> Node:
    port = _cluster_port()
    directory.mkdir(parents=True)
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str(directory / "nodes.conf"),
            "--cluster-node-timeout",
            "1500",
            "--dir",
            str(directory),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    client = redis.Redis(port=port)

    def up() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{binary} --cluster-enabled exited with {process.returncode}")
        return _pings(client)

    wait_until(up, what=f"cluster node on port {port} answering")
    return Node(port, process, client, client.execute_command("CLUSTER", "MYID").decode())


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    binary = os.environ.get("RUSH_CLUSTER_SERVER") or find_server_binary()
    base = tmp_path_factory.mktemp("cluster")
    c = Cluster()
    try:
        c.nodes = [_start_node(binary, base / f"node{i}") for i in range(6)]
        masters, replicas = c.nodes[:3], c.nodes[3:]
        bounds = [0, 5461, 10923, 16384]
        for i, node in enumerate(masters):
            node.client.execute_command("CLUSTER", "ADDSLOTSRANGE", bounds[i], bounds[i + 1] - 1)
        for node in c.nodes[1:]:
            node.client.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
            c.nodes[0].client.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        wait_until(
            lambda: all(len(n.client.execute_command("CLUSTER", "NODES").splitlines()) == 6 for n in c.nodes),
            what="every node knows the others",
        )
        for master, replica in zip(masters, replicas):
            replica.client.execute_command("CLUSTER", "REPLICATE", master.node_id)
        wait_until(
            lambda: all(n.client.cluster("info")["cluster_state"] == "ok" for n in c.nodes), what="cluster state ok"
        )
        wait_until(
            lambda: all(r.client.execute_command("ROLE")[3] == b"connected" for r in replicas), what="replicas in sync"
        )
        yield c
    finally:
        for node in c.nodes:
            if node.process.poll() is None:
                node.process.kill()
            node.process.wait()


def networks_on_each_master(cluster: Cluster, n: int = 3) -> list[str]:
    """Network ids whose hash tags fall on ``n`` different masters."""
    chosen: dict[int, str] = {}
    i = 0
    while len(chosen) < n:
        name = f"cl-{os.getpid()}-{i}"
        chosen.setdefault(cluster.master_of(f"rush:{{{name}}}:seq").port, name)
        i += 1
    return list(chosen.values())


def test_a_network_runs_on_a_cluster_from_any_nodes_plain_url(cluster, tmp_path):
    rush = Rush(networks_on_each_master(cluster, 1)[0], url=f"redis://127.0.0.1:{cluster.nodes[2].port}/0")
    try:
        assert type(rush.client).__name__ == "RedisCluster"
        rush.start_workers(funcs.add, n_workers=2, log_dir=tmp_path, **FAST)
        rush.wait_for_workers(2, timeout=TIMEOUT)
        keys = rush.push_tasks([{"x1": i, "x2": 10 * i} for i in range(30)])
        rush.wait_for_tasks(keys, timeout=TIMEOUT)
        assert sorted(rush.data["y"]) == [11 * i for i in range(30)]
        assert rush.n_finished_tasks == 30 and rush.n_running_workers == 2
        # Every key of the network is in one slot, on one master.
        keys_here = list(rush.client.scan_iter(match=rush.keys.pattern))
        slots = {rush.client.cluster_keyslot(k) for k in keys_here}
        assert len(keys_here) > 30 and len(slots) == 1
    finally:
        rush.reset()
        assert list(rush.client.scan_iter(match=rush.keys.pattern)) == []
        rush.close()


def test_dask_graphs_run_on_networks_spread_over_the_masters(cluster, tmp_path):
    names = networks_on_each_master(cluster, 3)
    assert len({cluster.master_of(f"rush:{{{n}}}:seq").port for n in names}) == 3
    for name in names:
        rush = Rush(name, url=f"redis+cluster://127.0.0.1:{cluster.nodes[1].port}/0")
        try:
            rush.start_workers(n_workers=2, log_dir=tmp_path / name, **FAST)
            x = da.ones((1500, 1500), chunks=500)  # 2 MB chunks: held on the host, not in Redis
            assert (x @ x.T).sum().compute(scheduler=rush) == 1500**3
            tree = sum(dask.delayed(f.inc)(i) for i in range(50))
            assert tree.compute(scheduler=rush) == sum(range(1, 51))
            futures = rush.map(f.inc, range(20))  # futures: their completions and results
            assert rush.gather(futures) == list(range(1, 21))
        finally:
            rush.reset()
            rush.close()


def test_the_network_survives_its_master_failing_over_to_the_replica(cluster, tmp_path):
    name = networks_on_each_master(cluster, 1)[0]
    rush = Rush(name, url=cluster.url)
    victim = cluster.master_of(f"rush:{{{name}}}:seq")
    try:
        # The heartbeats outlast the failover (node timeout 1.5 s, then the election): workers that
        # cannot reach Redis for longer than heartbeat_expire are rightly declared lost, and exit.
        rush.start_workers(
            funcs.add,
            n_workers=2,
            log_dir=tmp_path,
            redis_retry_timeout=60,
            heartbeat_period=0.2,
            heartbeat_expire=15.0,
        )
        rush.wait_for_workers(2, timeout=TIMEOUT)
        before = rush.push_tasks([{"x1": i, "x2": 1} for i in range(10)])
        rush.wait_for_tasks(before, timeout=TIMEOUT)
        victim.client.execute_command("WAIT", 1, 5000)  # what was acknowledged is on the replica
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait()
        # The replica takes over within the node timeout; clients follow the new topology.
        others = [n for n in cluster.nodes if n is not victim]
        wait_until(lambda: all(_state_ok(n) for n in others), what="cluster ok again after failover")
        after = rush.push_tasks([{"x1": i, "x2": 2} for i in range(10)])
        rush.wait_for_tasks(after, timeout=TIMEOUT)
        assert rush.n_finished_tasks == 20
        assert sorted(rush.data["y"]) == sorted([i + 1 for i in range(10)] + [i + 2 for i in range(10)])
        assert rush.n_running_workers == 2  # the same workers, through the failover
        values = [dask.delayed(f.inc)(i) for i in range(20)]
        assert dask.compute(*values, scheduler=rush, timeout=30) == tuple(range(1, 21))
    except BaseException:
        for log in sorted(tmp_path.glob("worker-*.err")):  # why, when it fails
            print(log.name, log.read_text()[-3000:])
        raise
    finally:
        rush.reset()
        rush.close()


def _state_ok(node: Node) -> bool:
    try:
        return node.client.cluster("info")["cluster_state"] == "ok"
    except redis.ConnectionError:
        return False


def test_a_cluster_url_for_a_server_that_is_not_a_cluster_says_so():
    from rush_dask.core.errors import RedisUnavailableError
    from rush_dask.core.server import RedisServer

    server = RedisServer(tcp=True).start()
    try:
        with pytest.raises(RedisUnavailableError, match="Redis Cluster"):
            Rush("x", url=server.url.replace("redis://", "redis+cluster://", 1))
    finally:
        server.stop()
