"""Other task queues on bench_rush's workloads: RQ, Celery and dask.distributed's ``client.map``.

Each peer is started once, its 2 worker processes running before the first
timed run, and runs a :class:`benchmarks.bench_rush.Workload` (the same task
functions, called as ``fun(x=i)``) with :meth:`Peer.run`, which returns the
seconds from the first push until the client knows every task is done, and
checks the results (untimed). They are optional (``pip install
rush-dask[bench]``); :func:`start_peer` returns why a peer cannot run instead.

* **RQ**: ``rq worker --worker-class rq.worker.SimpleWorker`` processes (no
  fork per job) on the benchmark's Redis server; the client enqueues every
  job in one pipeline (``Queue.enqueue_many``) and polls the size of the
  finished-job registry every 10 ms.
* **Celery**: ``celery worker --pool=solo`` processes, Redis as broker and
  result backend; the client sends a ``group`` and waits with
  ``GroupResult.get``.
* **distributed**: a ``LocalCluster`` of 2 single-threaded worker processes;
  ``client.map(fun, range(n), pure=False)`` then ``client.gather``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis

from benchmarks.bench_rush import Workload
from benchmarks.common import N_WORKERS, ROOT, WAIT_TIMEOUT

RQ = "RQ"
CELERY = "Celery"
DISTRIBUTED = "distributed client.map"
PEERS = (RQ, CELERY, DISTRIBUTED)
_MODULES = {RQ: "rq", CELERY: "celery", DISTRIBUTED: "distributed"}
START_TIMEOUT = 120.0


class Peer:
    """A running peer system: ``run(workload)`` -> seconds; ``close()`` stops its workers."""

    name = ""

    def run(self, workload: Workload) -> float:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def start_peer(name: str, url: str, log_dir: str, n_workers: int = N_WORKERS) -> Peer | str:
    """The peer ``name`` with its workers running, or the reason why it cannot run.

    >>> peer = start_peer("RQ", server.url, "/tmp")   # doctest: +SKIP
    >>> seconds = peer.run(Workload("trivial", add_one, 1000)); peer.close()  # doctest: +SKIP
    """
    module = _MODULES[name]
    if importlib.util.find_spec(module) is None:
        return f"not installed (`pip install rush-dask[bench]`): no module {module!r}"
    cls = {RQ: RQPeer, CELERY: CeleryPeer, DISTRIBUTED: DistributedPeer}[name]
    return cls(url, log_dir, n_workers)


def _worker_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _script(name: str) -> str:
    """The console script ``name`` of this Python's environment."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: install the benchmark extras (`pip install rush-dask[bench]`)")
    return str(path)


def _stop_processes(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + 15
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait(condition, what: str, procs: list[subprocess.Popen], timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"{what}: a worker process exited with code {dead[0].returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached in {timeout} s")
        time.sleep(0.05)


def _check(values: list, workload: Workload, name: str) -> None:
    if [v["y"] for v in values] != [i + 1 for i in range(workload.n_tasks)]:
        raise RuntimeError(f"{name}, {workload.name}: missing or wrong results")


class RQPeer(Peer):
    name = RQ

    def __init__(self, url: str, log_dir: str, n_workers: int):
        from rq import Queue, Worker

        self.client = redis.Redis.from_url(url)
        self.queue = Queue(f"bench-{uuid.uuid4().hex[:8]}", connection=self.client)
        self.procs: list[subprocess.Popen] = []
        try:
            for i in range(n_workers):
                log = open(Path(log_dir) / f"rq-{i}.log", "wb")  # noqa: SIM115 - the worker owns it
                self.procs.append(
                    subprocess.Popen(
                        [
                            _script("rq"),
                            "worker",
                            "--worker-class",
                            "rq.worker.SimpleWorker",
                            "--url",
                            url,
                            "--name",
                            f"{self.queue.name}-{i}",
                            "--quiet",
                            self.queue.name,
                        ],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=_worker_env(),
                        cwd=ROOT,
                    )
                )
            _wait(lambda: Worker.count(queue=self.queue) >= n_workers, "RQ workers", self.procs)
        except BaseException:
            self.close()
            raise

    def run(self, workload: Workload) -> float:
        from rq import Queue

        registry = self.queue.finished_job_registry
        failed = self.queue.failed_job_registry
        # get_job_count(cleanup=False): `.count` cleans the registry up on every call.
        done0, failed0 = registry.get_job_count(cleanup=False), failed.get_job_count(cleanup=False)
        xss = workload.inputs()
        t0 = time.perf_counter()
        jobs = self.queue.enqueue_many([Queue.prepare_data(workload.fun, kwargs=xs, result_ttl=3600) for xs in xss])
        deadline = time.monotonic() + WAIT_TIMEOUT
        while registry.get_job_count(cleanup=False) - done0 < len(xss):
            if failed.get_job_count(cleanup=False) > failed0:
                raise RuntimeError(f"RQ, {workload.name}: some jobs failed, see the worker logs")
            if time.monotonic() > deadline:
                raise TimeoutError(f"RQ, {workload.name}: not done after {WAIT_TIMEOUT} s")
            time.sleep(0.01)
        seconds = time.perf_counter() - t0
        _check([job.return_value() for job in jobs], workload, self.name)
        return seconds

    def close(self) -> None:
        _stop_processes(self.procs)
        self.client.close()


def _celery_url(url: str) -> str:
    """redis-py's ``unix:///path`` is kombu's ``redis+socket:///path``."""
    return "redis+socket://" + url.removeprefix("unix://") if url.startswith("unix://") else url


class CeleryPeer(Peer):
    name = CELERY

    def __init__(self, url: str, log_dir: str, n_workers: int):
        os.environ["BENCH_CELERY_URL"] = _celery_url(url)  # read when celery_app is imported
        from benchmarks import celery_app

        self.app = celery_app.app
        self.app.conf.broker_url = self.app.conf.result_backend = _celery_url(url)
        self.tasks = celery_app.TASKS
        self.procs: list[subprocess.Popen] = []
        try:
            for i in range(n_workers):
                log = open(Path(log_dir) / f"celery-{i}.log", "wb")  # noqa: SIM115 - the worker owns it
                self.procs.append(
                    subprocess.Popen(
                        [
                            _script("celery"),
                            "-A",
                            "benchmarks.celery_app",
                            "worker",
                            "--pool=solo",
                            "--concurrency=1",
                            "-n",
                            f"bench{i}@%h",
                            "-Q",
                            "bench",
                            "--without-gossip",
                            "--without-mingle",
                            "--without-heartbeat",
                            "--loglevel=WARNING",
                        ],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=_worker_env(BENCH_CELERY_URL=_celery_url(url)),
                        cwd=ROOT,
                    )
                )
            _wait(lambda: len(self.app.control.ping(timeout=0.5) or []) >= n_workers, "Celery workers", self.procs)
        except BaseException:
            self.close()
            raise

    def run(self, workload: Workload) -> float:
        from celery import group

        task = self.tasks[workload.fun]
        xss = workload.inputs()
        t0 = time.perf_counter()
        result = group(task.s(**xs) for xs in xss).apply_async(queue="bench")
        values = result.get(timeout=WAIT_TIMEOUT)
        seconds = time.perf_counter() - t0
        result.forget()
        _check(values, workload, self.name)
        return seconds

    def close(self) -> None:
        _stop_processes(self.procs)


class DistributedPeer(Peer):
    name = DISTRIBUTED

    def __init__(self, url: str, log_dir: str, n_workers: int):
        import distributed

        logging.getLogger("distributed").setLevel(logging.ERROR)
        self.cluster = distributed.LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None
        )
        self.client = distributed.Client(self.cluster)
        self.client.wait_for_workers(n_workers, timeout=START_TIMEOUT)

    def run(self, workload: Workload) -> float:
        n = workload.n_tasks
        t0 = time.perf_counter()
        futures = self.client.map(workload.fun, range(n), pure=False)
        values = self.client.gather(futures)
        seconds = time.perf_counter() - t0
        del futures
        _check(values, workload, self.name)
        return seconds

    def close(self) -> None:
        self.client.close()
        self.cluster.close()
