"""Rush workers launched as long-running tasks on a Dask distributed cluster.

``rush.start_workers(fun, client=client)`` submits one task per Rush worker
to the cluster (``fire_and_forget``, pinned to one distributed worker each).
The task leaves the cluster's thread pool (``secede``) and runs the Rush
worker in a child process, ``python -m rush_dask.deploy.launch``, because a Rush
worker needs a main thread of its own (SIGALRM task timeouts, SIGTERM) and
its heartbeat thread. The task ends when the Rush worker ends.

The Rush worker connects to Redis itself, so the URL must be reachable from
the cluster (TCP, not a unix socket). The URL and ``$RUSH_SECRET`` travel to
the task inside an object whose repr hides them, and reach the child process
through its environment, never its command line.

When the distributed worker closes, the task kills its Rush worker; when it
crashes, the child dies with it (``PR_SET_PDEATHSIG`` on Linux, a parent-pid
watch elsewhere). Either way the Rush worker stops beating without a word,
is declared ``lost`` when its heartbeat expires, and its tasks are requeued.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ..core.connections import URL_ENV, redact
from ..core.errors import WorkerStartError
from ..core.heartbeat import EXIT_LOST

logger = logging.getLogger("rush_dask")

SECRET_ENV = "RUSH_SECRET"
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_WATCH_PERIOD = 0.2  # seconds between two looks at the distributed worker's status
# Statuses of a distributed worker that is shutting down (distributed.core.Status names).
_GOING_AWAY = frozenset({"closing", "closing_gracefully", "closed", "stopping", "stopped", "failed"})


class HiddenEnv(dict[str, str]):
    """Environment variables for the Rush worker whose repr shows no value.

    Distributed may print a task's arguments (dashboard, "Compute Failed"
    logs); this keeps the Redis password and the secret out of them.

    >>> HiddenEnv({"RUSH_REDIS_URL": "redis://:pw@host:6379/0"})
    <environment ['RUSH_REDIS_URL'], values hidden>
    """

    def __repr__(self) -> str:
        return f"<environment {sorted(self)}, values hidden>"

    __str__ = __repr__

    def __reduce__(self) -> tuple[Any, ...]:  # pickled as a plain dict would lose the class
        return (HiddenEnv, (dict(self),))


def check_cluster_url(url: str) -> None:
    """Refuse a Redis URL that workers on other machines cannot reach.

    >>> check_cluster_url("redis://:pw@redis-host:6379/0")
    >>> check_cluster_url("unix:///tmp/rush/redis.sock")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ValueError: Redis URL unix:///tmp/rush/redis.sock cannot be reached from a Dask cluster: ...
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):  # unix:// is a socket of this machine only
        raise ValueError(
            f"Redis URL {redact(url)} cannot be reached from a Dask cluster: workers on a "
            "cluster need a TCP Redis (redis://host:port/0 or rediss://...). Start one with "
            "`rush-dask server` (or any Redis >= 7) and pass its URL with Rush(url=...), "
            f"rush_dask.plan(url=...) or ${URL_ENV}."
        )


@dataclass
class ClusterWorker:
    """A Rush worker started on a distributed cluster, and the task that runs it."""

    worker_id: str
    address: str
    future: Any
    registered: bool = False


def cluster_addresses(client: Any) -> list[str]:
    """Addresses of the cluster's distributed workers (sorted); raise if there are none.

    >>> cluster_addresses(Client(LocalCluster(n_workers=2)))   # doctest: +SKIP
    ['tcp://127.0.0.1:40331', 'tcp://127.0.0.1:42931']
    """
    try:  # some distributed versions list only the first 5 workers by default
        info = client.scheduler_info(n_workers=-1)
    except TypeError:
        info = client.scheduler_info()
    addresses = sorted(info["workers"])
    if not addresses:
        raise ValueError(
            "the Dask cluster has no workers yet: scale it (cluster.scale(...)) and "
            "wait for them (client.wait_for_workers(n)) before start_workers"
        )
    return addresses


def plan_cluster(client: Any, n_workers: int | None, url: str) -> list[str]:
    """Check everything before anything is written; one address per Rush worker to start.

    >>> plan_cluster(client, 3, "redis://redis-host:6379/0")   # doctest: +SKIP
    ['tcp://10.0.0.5:40331', 'tcp://10.0.0.6:38113', 'tcp://10.0.0.5:40331']
    """
    from distributed import Client

    if not isinstance(client, Client):
        raise TypeError(f"client must be a distributed.Client, got {type(client).__name__}")
    check_cluster_url(url)
    addresses = cluster_addresses(client)
    n = len(addresses) if n_workers is None else n_workers
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n_workers must be an integer >= 1, got {n_workers!r}")
    return [addresses[i % len(addresses)] for i in range(n)]


def submit_workers(
    client: Any, addresses: list[str], network_id: str, start_id: str, url: str, secret: str | bytes | None = None
) -> list[ClusterWorker]:
    """Submit one long-running task per address; each runs one Rush worker.

    ``secret`` (default ``$RUSH_SECRET``) reaches the workers as ``$RUSH_SECRET``.

    >>> started = submit_workers(client, addresses, "hpo", start_id, url)   # doctest: +SKIP
    >>> [w.worker_id for w in started]                                      # doctest: +SKIP
    """
    from distributed import fire_and_forget

    env = HiddenEnv({URL_ENV: url})
    secret = secret or os.environ.get(SECRET_ENV)
    if secret:
        env[SECRET_ENV] = os.fsdecode(secret)  # the controller's key is bytes
    launched = []
    for address in addresses:
        worker_id = uuid.uuid4().hex[:12]
        future = client.submit(
            run_on_cluster,
            network_id,
            start_id,
            worker_id,
            env,
            key=f"rush-worker-{network_id}-{worker_id}",
            pure=False,
            workers=[address],
            allow_other_workers=False,
        )
        fire_and_forget(future)  # keeps running when this client goes away
        launched.append(ClusterWorker(worker_id, address, future))
    return launched


def check_cluster_workers(launched: Iterable[ClusterWorker], states: dict[str, str]) -> None:
    """Raise WorkerStartError for a cluster worker whose task ended before it registered.

    >>> check_cluster_workers(rush.local_workers.on_cluster, rush._worker_states())   # doctest: +SKIP
    """
    for worker in launched:
        if worker.registered:
            continue
        if worker.worker_id in states:
            worker.registered = True
        elif worker.future.done():
            try:
                code, tail = worker.future.result(timeout=5)
            except Exception as exc:  # noqa: BLE001 - any failure of the task is reported
                code, tail = None, f"{type(exc).__name__}: {exc}"
            raise WorkerStartError(
                f"worker {worker.worker_id} on the Dask worker {worker.address} ended (exit code "
                f"{code}) before it registered. Last lines of its stderr:\n{tail}"
            )


def run_on_cluster(network_id: str, start_id: str, worker_id: str, env: dict[str, str]) -> tuple[int, str]:
    """The distributed task: run one Rush worker in a child process until it ends.

    Returns the worker's exit code and the last lines of its stderr (which
    also go to the distributed worker's stderr as they come). When the
    distributed worker closes, the Rush worker is killed at once (it becomes
    ``lost``) rather than holding up the close until the nanny kills both.

    >>> fire_and_forget(client.submit(run_on_cluster, "hpo", start_id, "w1", env,
    ...                               pure=False, workers=[address]))   # doctest: +SKIP
    """
    from distributed import get_worker, secede

    dask_worker = get_worker()
    secede()  # a long-running task: do not hold a thread of the cluster's pool
    child_env = dict(os.environ)
    child_env.update(env)
    child_env["RUSH_DASK_WORKER"] = "1"
    # The Rush worker must import what this distributed worker imports.
    child_env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), *[p for p in sys.path if p]])
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rush_dask.deploy.launch",
            "--parent-pid",
            str(os.getpid()),
            "--network",
            network_id,
            "--start-id",
            start_id,
            "--worker-id",
            worker_id,
        ],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=child_env,
        start_new_session=True,  # a Ctrl-C in the cluster's terminal is not for it
    )
    tail: collections.deque[str] = collections.deque(maxlen=20)
    reader = threading.Thread(target=_echo_stderr, args=(process, tail), daemon=True)
    reader.start()
    while True:
        try:
            code = process.wait(_WATCH_PERIOD)
            break
        except subprocess.TimeoutExpired:
            if dask_worker.status.name in _GOING_AWAY:
                process.kill()
    reader.join(_WATCH_PERIOD)
    return code, "\n".join(tail)


def _echo_stderr(process: subprocess.Popen[bytes], tail: collections.deque[str]) -> None:
    assert process.stderr is not None
    for raw in process.stderr:
        line = raw.decode(errors="replace")
        tail.append(line.rstrip("\n"))
        sys.stderr.write(line)


def die_with_parent(parent_pid: int) -> None:
    """Exit at once (no goodbye to Redis: the worker becomes ``lost``) when ``parent_pid`` dies.

    >>> die_with_parent(os.getppid())   # doctest: +SKIP
    """
    libc_name = ctypes.util.find_library("c") if sys.platform.startswith("linux") else None
    if libc_name:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent_pid:  # the parent died before prctl took effect
                os._exit(EXIT_LOST)
            return

    def watch() -> None:
        while os.getppid() == parent_pid:
            stop.wait(1.0)
        os._exit(EXIT_LOST)

    stop = threading.Event()
    if os.getppid() != parent_pid:
        os._exit(EXIT_LOST)
    threading.Thread(target=watch, name="rush-parent-watch", daemon=True).start()


def main(argv: Iterable[str] | None = None) -> int:
    """``python -m rush_dask.deploy.launch --parent-pid P <worker options>``: a worker tied to process P.

    >>> main(["--parent-pid", "4242", "--network", "hpo", "--start-id", "5f0c"])   # doctest: +SKIP
    """
    from ..core.worker import main as worker_main

    parser = argparse.ArgumentParser(prog="python -m rush_dask.deploy.launch", add_help=False)
    parser.add_argument("--parent-pid", type=int, required=True)
    args, rest = parser.parse_known_args(list(argv) if argv is not None else None)
    die_with_parent(args.parent_pid)
    return worker_main(rest)


if __name__ == "__main__":
    sys.exit(main())
