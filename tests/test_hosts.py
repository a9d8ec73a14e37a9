"""Workers on separate hosts: Linux network namespaces joined by a bridge.

Each "host" is a network namespace with one veth link to a bridge in the
root namespace; Redis listens only on the bridge's address. Cutting a
host off (see ``SIDES``) is a network partition: the worker process keeps
running but can neither reach Redis nor be reached. The test needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN); the
module is skipped where namespaces cannot be created.
"""

from __future__ import annotations

import functools
import os
import random
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import conftest
import funcs
import pytest

from rush_dask import Rush
from rush_dask.core.heartbeat import EXIT_LOST, EXIT_REDIS_GONE
from rush_dask.core.network import unpack_row
from rush_dask.core.server import RedisServer

pytestmark = pytest.mark.slow  # runs in CI; `pytest -m 'not slow'` skips it

TIMEOUT = 60
N_HOSTS = 3
N_TASKS = 30
DURATION = 0.3  # seconds per task
HEARTBEAT = {"heartbeat_period": 0.2, "heartbeat_expire": 1.5}
RETRY_TIMEOUT = 3.0  # redis_retry_timeout of the worker cut off for good
IP = shutil.which("ip") or "/usr/sbin/ip"
BRIDGE = shutil.which("bridge") or "/usr/sbin/bridge"
# How a host is cut off. cable: its link goes down at the bridge (the host
# sees its carrier go). interface: its own interface goes down (sends fail
# at once with "network unreachable"). switch: the bridge port drops every
# frame while both links stay up; with a static ARP entry the host gets no
# error at all, its TCP connections just stall (the hardest case).
SIDES = ("cable", "interface", "switch")
wait_until = functools.partial(conftest.wait_until, timeout=TIMEOUT)


def run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"`{shlex.join(cmd)}` failed: {result.stderr.strip()}")
    return result


def ip(*args: str, netns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return run([IP, *(("-n", netns) if netns else ()), *args], check=check)


@dataclass
class Hosts:
    """The namespaces, their links and the processes started in them."""

    token: str
    bridge: str = ""
    bridge_ip: str = ""
    bridge_mac: str = ""  # set, not chosen by the kernel, so each host can have a static ARP entry
    namespaces: list[str] = field(default_factory=list)
    host_links: list[str] = field(default_factory=list)  # the bridge-side end of each veth
    ns_links: list[str] = field(default_factory=list)  # the end inside each namespace
    processes: list[subprocess.Popen] = field(default_factory=list)

    def spawn(self, i: int, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
        """Run ``argv`` inside host ``i``; stdout and stderr go to ``log``."""
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [IP, "netns", "exec", self.namespaces[i], *argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def cut(self, i: int, side: str) -> None:
        """Take host ``i`` off the network; ``side`` says how (see :data:`SIDES`)."""
        self._set(i, side, up=False)

    def restore(self, i: int, side: str) -> None:
        self._set(i, side, up=True)

    def _set(self, i: int, side: str, up: bool) -> None:
        if side == "cable":
            ip("link", "set", self.host_links[i], "up" if up else "down")
        elif side == "interface":
            ip("link", "set", self.ns_links[i], "up" if up else "down", netns=self.namespaces[i])
        else:  # switch: port state 3 is forwarding, 0 disabled
            run([BRIDGE, "link", "set", "dev", self.host_links[i], "state", "3" if up else "0"])

    def teardown(self) -> None:
        for process in self.processes:  # a process inside would keep its namespace alive
            if process.poll() is None:
                process.kill()
            process.wait()
        for name in self.namespaces:
            ip("netns", "del", name, check=False)  # takes the veth pair with it
        for link in self.host_links:
            ip("link", "del", link, check=False)
        if self.bridge:
            ip("link", "del", self.bridge, check=False)


def _claim_subnet(hosts: Hosts) -> str:
    """Give the bridge a free 10.231.X.0/24; returns the prefix ``10.231.X``.

    Another run of the suite may pick the same X at the same moment: after
    adding the address, check that ours is the only one in that subnet, and
    try another X if not.
    """
    for _ in range(50):
        prefix = f"10.231.{random.randrange(256)}"
        if prefix + "." in ip("-4", "-o", "addr", "show").stdout:
            continue
        ip("addr", "add", f"{prefix}.1/24", "dev", hosts.bridge)
        owners = ip("-4", "-o", "addr", "show", "to", f"{prefix}.0/24").stdout.strip().splitlines()
        if len(owners) == 1:
            return prefix
        ip("addr", "del", f"{prefix}.1/24", "dev", hosts.bridge, check=False)
    raise RuntimeError("no free subnet 10.231.X.0/24 after 50 tries")


def _build(hosts: Hosts) -> None:
    hosts.bridge = f"rb-{hosts.token}"
    ip("link", "add", hosts.bridge, "type", "bridge")
    hosts.bridge_mac = "02:72:" + ":".join(hosts.token[i : i + 2] for i in (0, 2, 4)) + ":01"
    ip("link", "set", hosts.bridge, "address", hosts.bridge_mac)
    prefix = _claim_subnet(hosts)
    hosts.bridge_ip = f"{prefix}.1"
    ip("link", "set", hosts.bridge, "up")
    for i in range(N_HOSTS):
        name, host_link, ns_link = f"rushtest-{hosts.token}-{i}", f"rh{hosts.token}{i}", f"rn{hosts.token}{i}"
        ip("netns", "add", name)
        hosts.namespaces.append(name)
        ip("link", "add", host_link, "type", "veth", "peer", "name", ns_link, "netns", name)
        hosts.host_links.append(host_link)
        hosts.ns_links.append(ns_link)
        ip("link", "set", host_link, "master", hosts.bridge, "up")
        ip("addr", "add", f"{prefix}.{10 + i}/24", "dev", ns_link, netns=name)
        ip("link", "set", ns_link, "up", netns=name)
        ip("link", "set", "lo", "up", netns=name)
        ip(
            "neigh",
            "replace",
            hosts.bridge_ip,
            "lladdr",
            hosts.bridge_mac,
            "dev",
            ns_link,
            "nud",
            "permanent",
            netns=name,
        )


@pytest.fixture(scope="module")
def hosts():
    if not sys.platform.startswith("linux"):
        pytest.skip("network namespaces are a Linux feature")
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root")
    if not os.path.exists(IP):
        pytest.skip("`ip` (iproute2) is not installed")
    hosts = Hosts(token=secrets.token_hex(3))
    probe = f"rushtest-{hosts.token}-probe"
    result = ip("netns", "add", probe, check=False)
    if result.returncode != 0:
        pytest.skip(
            f"`ip netns add` is not permitted here ({result.stderr.strip()}); "
            "the test needs CAP_SYS_ADMIN and CAP_NET_ADMIN, e.g. root outside a container"
        )
    ip("netns", "del", probe, check=False)
    try:
        try:
            _build(hosts)
        except RuntimeError as exc:
            pytest.skip(f"cannot build the test network: {exc}")
        yield hosts
    finally:
        hosts.teardown()


@pytest.fixture(scope="module")
def server(hosts):
    """A Redis with a password, listening only on the bridge (reachable from every host)."""
    srv = RedisServer(tcp=True, bind=hosts.bridge_ip, password=secrets.token_hex(16)).start()
    yield srv
    srv.stop()


def start_worker(hosts: Hosts, i: int, rush: Rush, start_id: str, url: str, log_dir: Path):
    """``python -m rush_dask.core.worker`` on host ``i``, as Rush.worker_script says to run it."""
    worker_id = f"host{i}-{uuid.uuid4().hex[:6]}"
    # RUSH_HOST_ID: the namespaces share this machine's /dev/shm, but each is a host of its own,
    # so large graph results travel between them over TCP, as between machines.
    env = dict(
        os.environ,
        RUSH_REDIS_URL=url,
        RUSH_TEST_HOST=hosts.namespaces[i],
        RUSH_HOST_ID=hosts.namespaces[i],
        PYTHONPATH=os.pathsep.join([os.getcwd(), *[p for p in sys.path if p]]),
    )
    argv = [
        sys.executable,
        "-m",
        "rush_dask.core.worker",
        "--network",
        rush.network_id,
        "--start-id",
        start_id,
        "--worker-id",
        worker_id,
    ]
    log = log_dir / f"{worker_id}.log"
    return worker_id, hosts.spawn(i, argv, env, log), log


def start_workers(hosts: Hosts, rush: Rush, url: str, log_dir: Path, n: int, *, first: int = 0, **options) -> dict:
    """One worker on each of hosts ``first`` .. ``first + n - 1``.

    Returns {worker_id: (process, log path)}.
    """
    command = rush.worker_script(funcs.double_on_host, **HEARTBEAT, **options, duration=DURATION)
    argv = shlex.split(command)
    start_id = argv[argv.index("--start-id") + 1]
    workers = {}
    for i in range(first, first + n):
        wid, process, log = start_worker(hosts, i, rush, start_id, url, log_dir)
        workers[wid] = (process, log)
    wait_registered(rush, workers)
    return workers


def assert_each_finished_once(rush: Rush, keys: list[str]) -> None:
    """Each key in ``finished`` exactly once, the archive aligned with it, every y = 2x."""
    finished = [k.decode() for k in rush.client.lrange(rush.keys.finished, 0, -1)]
    assert [k for k, n in Counter(finished).items() if n > 1] == []
    assert sorted(finished) == sorted(keys)
    rows = [unpack_row(raw) for raw in rush.client.lrange(rush.keys.archive, 0, -1)]
    assert [row[0].decode() for row in rows] == finished  # archive[i] is finished[i]
    assert rush.n_failed_tasks == 0
    results = rush.fetch_finished_tasks()
    assert (results["y"] == 2 * results["x"]).all()


def requeued_keys(rush: Rush, keys: list[str]) -> list[str]:
    """Tasks that went back to the queue because their worker was declared lost."""
    return [k for k in keys if rush.client.hget(rush.keys.task(k), "n_lost") == b"1"]


def wait_registered(rush: Rush, workers: dict) -> None:
    def ready() -> bool:
        for wid, (process, log) in workers.items():
            if process.poll() is not None:
                raise AssertionError(f"worker {wid} exited with {process.returncode}: {log.read_text()[-2000:]}")
        states = rush._worker_states()
        return all(states.get(wid) == "running" for wid in workers)

    wait_until(ready, what="every host's worker running")


def cut_while_running(hosts: Hosts, rush: Rush, victim: str, side: str) -> None:
    """Cut host 0 off while its worker runs a task and the network is well under way."""
    wait_until(
        lambda: rush.n_finished_tasks >= N_HOSTS and rush.client.scard(rush.keys.held(victim)),
        what="the victim running a task",
    )
    hosts.cut(0, side)


def kill_all(hosts: Hosts, rush: Rush) -> None:
    for process in hosts.processes:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
    rush.reset()
    rush.close()


@pytest.mark.parametrize("side", SIDES)
def test_partitioned_host_is_lost_and_writes_nothing(hosts, server, tmp_path, side):
    """Cut one host off mid-run, let the others finish everything, reconnect it."""
    if side == "switch" and not os.path.exists(BRIDGE):
        pytest.skip("the `bridge` tool of iproute2 is not installed")
    rush = Rush(f"hosts-{uuid.uuid4().hex[:8]}", url=server.url)
    try:
        workers = start_workers(hosts, rush, server.url, tmp_path, N_HOSTS)
        victim, *healthy = workers
        victim_process, victim_log = workers[victim]
        keys = rush.push_tasks([{"x": i} for i in range(N_TASKS)])
        cut_while_running(hosts, rush, victim, side)
        try:
            wait_until(
                lambda: victim in rush.detect_lost_workers() or victim in rush.lost_worker_ids,
                what="the partitioned worker declared lost",
            )
            requeued = requeued_keys(rush, keys)
            assert requeued, "the partitioned worker held no task when it was declared lost"
            rush.wait_for_tasks(keys, timeout=TIMEOUT)  # the other hosts finish everything
            # Partitioned, the worker cannot know: it is still alive, waiting for Redis.
            assert victim_process.poll() is None
        finally:
            hosts.restore(0, side)
        # Back on the network, it reads 'lost' (heartbeat or next settle) and exits.
        restored = time.monotonic()
        assert victim_process.wait(TIMEOUT) == EXIT_LOST, victim_log.read_text()[-2000:]
        reconnect_seconds = time.monotonic() - restored
        assert "'lost'" in victim_log.read_text()

        assert_each_finished_once(rush, keys)
        results = rush.fetch_finished_tasks().set_index("keys")
        # The requeued tasks ran again, elsewhere, and only that result was kept.
        for key in requeued:
            assert results.loc[key, "worker_id"] in healthy
            assert results.loc[key, "host"] != hosts.namespaces[0]
            assert results.loc[key, "attempts"] >= 2

        # Each worker ran in its own namespace, none in the root one.
        root_netns = os.readlink("/proc/self/ns/net")
        netns_of = results.groupby("worker_id")["netns"].unique()
        assert all(len(v) == 1 and v[0] != root_netns for v in netns_of)
        assert len({v[0] for v in netns_of}) == len(netns_of)
        host_of = results.groupby("worker_id")["host"].unique()
        assert {w: v[0] for w, v in host_of.items()} == {w: hosts.namespaces[int(w[4])] for w in host_of.index}

        # The lost worker stays lost: no heartbeat, no new registration.
        info = rush.worker_info.set_index("worker_id")
        assert info.loc[victim, "state"] == "lost"
        assert not info.loc[victim, "heartbeat"]
        assert sorted(rush.running_worker_ids) == sorted(healthy)

        rush.stop_workers("terminate", healthy)
        for wid in healthy:
            assert workers[wid][0].wait(TIMEOUT) == 0, workers[wid][1].read_text()[-2000:]
        assert sorted(rush.terminated_worker_ids) == sorted(healthy)
        print(f"{side}: partitioned worker exited {reconnect_seconds:.1f} s after its link came back")
    finally:
        kill_all(hosts, rush)


def test_host_cut_off_past_redis_retry_timeout_exits_on_its_own(hosts, server, tmp_path):
    """A silent partition (switch) that outlasts ``redis_retry_timeout``: the worker gives up by itself.

    Its TCP connections stall without any error, so only a socket timeout on
    the heartbeat connection lets it notice; without one it would wait for
    the kernel to give up on the connection (about 15 minutes).
    """
    if not os.path.exists(BRIDGE):
        pytest.skip("the `bridge` tool of iproute2 is not installed")
    rush = Rush(f"hosts-{uuid.uuid4().hex[:8]}", url=server.url)
    try:
        workers = start_workers(hosts, rush, server.url, tmp_path, 2, redis_retry_timeout=RETRY_TIMEOUT)
        victim, healthy = workers
        victim_process, victim_log = workers[victim]
        keys = rush.push_tasks([{"x": i} for i in range(N_TASKS // 2)])
        cut_while_running(hosts, rush, victim, "switch")
        try:
            cut = time.monotonic()
            assert victim_process.wait(TIMEOUT) == EXIT_REDIS_GONE, victim_log.read_text()[-2000:]
            gave_up_seconds = time.monotonic() - cut
            assert "unreachable" in victim_log.read_text()
            rush.wait_for_tasks(keys, timeout=TIMEOUT)
        finally:
            hosts.restore(0, "switch")
        assert rush.lost_worker_ids == [victim]
        requeued = requeued_keys(rush, keys)
        assert requeued
        assert_each_finished_once(rush, keys)
        results = rush.fetch_finished_tasks().set_index("keys")
        assert (results.loc[requeued, "worker_id"] == healthy).all()
        print(f"worker gave up {gave_up_seconds:.1f} s after the cut (redis_retry_timeout {RETRY_TIMEOUT} s)")
    finally:
        kill_all(hosts, rush)


def test_results_move_between_hosts_and_a_link_cut_mid_transfer_loses_nothing(hosts, server, tmp_path, caplog):
    """A 24 MB result held on host 0 is fetched by host 1 over a link slowed to 40 Mbit/s;
    host 0 is cut off (silently, at the switch) while the transfer runs. The consumer's
    fetch stalls, gives up, and the compute runs again from its lineage on the other hosts."""
    if not os.path.exists(BRIDGE) or not shutil.which("tc"):
        pytest.skip("the `bridge` and `tc` tools of iproute2 are needed")
    import threading

    import dask
    import dask_funcs

    rush = Rush(f"hosts-{uuid.uuid4().hex[:8]}", url=server.url)
    tc = ["ip", "netns", "exec", hosts.namespaces[0], shutil.which("tc"), "qdisc"]
    try:
        run(
            [*tc, "add", "dev", hosts.ns_links[0], "root", "tbf", "rate", "40mbit", "burst", "32kb", "latency", "400ms"]
        )
        [producer] = start_workers(hosts, rush, server.url, tmp_path, 1)
        gate = tmp_path / "gate"
        big = dask.delayed(dask_funcs.big_array)(24 * 2**20, 3.0, dask_key_name="big")
        wait = dask.delayed(dask_funcs.gate)(str(gate), big, dask_key_name="gate")
        result: list = []
        with dask.annotate(resources={"reader": 1}):  # only the workers of hosts 1 and 2
            total = dask.delayed(dask_funcs.array_sum)(big, wait, dask_key_name="total")
        thread = threading.Thread(
            target=lambda: result.append(total.compute(scheduler=rush, fuse=False, timeout=TIMEOUT))
        )
        thread.start()

        def producer_at_gate() -> bool:
            held = rush.client.smembers(rush.keys.held(producer))
            return any(rush.client.hget(rush.keys.task(k.decode()), "deps") for k in held)

        wait_until(producer_at_gate, what="big made on host 0, its worker at the gate")
        readers = start_workers(hosts, rush, server.url, tmp_path, 2, first=1, resources={"reader": 1})
        gate.touch()

        def reader_fetching() -> bool:
            return any(rush.client.scard(rush.keys.held(w)) for w in readers)

        wait_until(reader_fetching, what="a reader on host 1 or 2 running the consumer")
        time.sleep(0.5)  # well inside the transfer: 24 MB at 40 Mbit/s take about 5 s
        hosts.cut(0, "switch")
        try:
            with caplog.at_level("WARNING", logger="rush_dask"):
                thread.join(TIMEOUT)
            assert result == [3.0 * 24 * 2**20 / 8]
        finally:
            hosts.restore(0, "switch")
        assert producer in rush.lost_worker_ids or producer in rush.detect_lost_workers()

        def counter(name: str) -> int:  # reported by the workers with their heartbeats
            return sum(int(rush.client.hget(rush.keys.worker(w), name) or 0) for w in readers)

        # The consumer's fetch from host 0 stalled and gave up: the compute ran again, and
        # made 'big' again on a reader's host.
        assert "compute again" in caplog.text and "could not be fetched" in caplog.text
        wait_until(lambda: counter("bytes_held") >= 24 * 2**20, what="big made again by a reader")
    finally:
        run([*tc, "del", "dev", hosts.ns_links[0], "root"], check=False)
        kill_all(hosts, rush)


def test_a_matmul_of_megabyte_chunks_moves_them_between_hosts(hosts, server, tmp_path):
    """Three hosts compute ``(x @ x.T).sum()`` of 2 MB integer chunks exactly; the chunks go
    from host to host over TCP (each host has its own id), none of them through Redis."""
    import dask.array as da
    import numpy as np

    rush = Rush(f"hosts-{uuid.uuid4().hex[:8]}", url=server.url)
    try:
        workers = start_workers(hosts, rush, server.url, tmp_path, N_HOSTS)
        n, chunk = 1500, 500
        x = (da.arange(n * n, dtype="int64", chunks=chunk * n).reshape(n, n) % 7).rechunk(chunk)
        expected = int(
            (
                (np.arange(n * n, dtype="int64").reshape(n, n) % 7)
                @ (np.arange(n * n, dtype="int64").reshape(n, n) % 7).T
            ).sum()
        )
        assert int((x @ x.T).sum().compute(scheduler=rush, timeout=TIMEOUT)) == expected

        def fetched() -> int:
            return sum(int(rush.client.hget(rush.keys.worker(w), "bytes_fetched") or 0) for w in workers)

        wait_until(lambda: fetched() >= 2 * 2**20, what="chunks fetched between hosts")
    finally:
        kill_all(hosts, rush)
