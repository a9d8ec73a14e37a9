"""The worker processes a controller starts, and :class:`LocalWorkers`, which owns them.

Each worker is ``python -m rush_dask.core.worker`` in its own session (so a
Ctrl-C in the controller's terminal does not hit it), with the Redis URL in
its environment (never on the command line, where ``ps`` would show a
password; the signing secret likewise, in ``RUSH_SECRET``) and
stdout/stderr kept in files, so that a worker that dies while starting can
say why.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.connections import URL_ENV
from ..core.errors import WorkerStartError
from ..core.serialize import SECRET_ENV

BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass
class WorkerProcess:
    worker_id: str
    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    registered: bool = field(default=False)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stderr_tail(self, lines: int = 20) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def signal(self, signum: int) -> None:
        if self.alive:
            try:
                self.process.send_signal(signum)
            except ProcessLookupError:
                pass


def spawn_worker(
    network_id: str, start_id: str, worker_id: str, url: str, log_dir: Path, secret: bytes | None = None
) -> WorkerProcess:
    """Start one local worker process (with the controller's secret, or none)."""
    env = dict(os.environ)
    env[URL_ENV] = url
    env.pop(SECRET_ENV, None)
    if secret is not None:
        env[SECRET_ENV] = os.fsdecode(secret)
    env["RUSH_DASK_WORKER"] = "1"
    # One thread per numerical library in each worker, as distributed's nanny does: the
    # workers are the parallelism, and n workers x n BLAS threads oversubscribe the cores.
    # A value the user exported is kept.
    for var in BLAS_THREAD_VARIABLES:
        env.setdefault(var, "1")
    # The worker must import what the controller imports (functions pickled by reference).
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), *[p for p in sys.path if p]])
    stdout_path = log_dir / f"worker-{worker_id}.out"
    stderr_path = log_dir / f"worker-{worker_id}.err"
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rush_dask.core.worker",
                "--network",
                network_id,
                "--start-id",
                start_id,
                "--worker-id",
                worker_id,
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            env=env,
            start_new_session=True,
        )
    return WorkerProcess(worker_id, process, stdout_path, stderr_path)


def stop_processes(processes: list[WorkerProcess], grace: float = 5.0) -> None:
    """SIGTERM (finish the current task), then SIGKILL whatever is still alive after ``grace`` s."""
    for proc in processes:
        proc.signal(signal.SIGTERM)
    for proc in processes:
        try:
            proc.process.wait(grace)
        except subprocess.TimeoutExpired:
            proc.signal(signal.SIGKILL)
            proc.process.wait()


class LocalWorkers:
    """The workers one controller started: processes on this machine, and workers it
    launched on a Dask cluster. It starts them, says why one died before it registered,
    stops them, and removes the temporary directory of their logs.

    >>> workers = LocalWorkers("net", "redis://127.0.0.1:6379/0", secret=None)
    >>> ids = workers.spawn("5f0c2a9e", 2)            # doctest: +SKIP
    >>> workers[ids[0]].process.pid                   # doctest: +SKIP
    4242
    >>> len(workers), workers.any_alive()
    (0, False)
    """

    def __init__(self, network_id: str, url: str, *, secret: bytes | None):
        self.network_id, self.url, self.secret = network_id, url, secret
        self.processes: dict[str, WorkerProcess] = {}
        self.on_cluster: list[Any] = []  # launch.ClusterWorker
        self._temporary_log_dir: Path | None = None

    def __len__(self) -> int:
        return len(self.processes) + len(self.on_cluster)

    def __getitem__(self, worker_id: str) -> WorkerProcess:
        return self.processes[worker_id]

    def __contains__(self, worker_id: object) -> bool:
        return worker_id in self.processes

    def __iter__(self) -> Iterator[WorkerProcess]:
        return iter(list(self.processes.values()))

    def log_dir(self, chosen: str | Path | None = None) -> Path:
        """``chosen``, else a temporary directory of this controller's (removed by :meth:`close`)."""
        if chosen:
            directory = Path(chosen)
        else:
            if self._temporary_log_dir is None:
                self._temporary_log_dir = Path(tempfile.mkdtemp(prefix=f"rush-{self.network_id}-"))
            directory = self._temporary_log_dir
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def spawn(self, start_id: str, n: int, log_dir: str | Path | None = None) -> list[str]:
        """Start ``n`` worker processes from the stored configuration ``start_id``; their ids."""
        directory = self.log_dir(log_dir)
        ids = []
        for _ in range(n):
            wid = uuid.uuid4().hex[:12]
            self.processes[wid] = spawn_worker(self.network_id, start_id, wid, self.url, directory, secret=self.secret)
            ids.append(wid)
        return ids

    def adopt(self, cluster_workers: list[Any]) -> None:
        """Keep the workers launched on a Dask cluster (see :mod:`rush_dask.deploy.launch`)."""
        self.on_cluster.extend(cluster_workers)

    def check_started(self, states: Mapping[str, str]) -> None:
        """Raise :class:`WorkerStartError` for a worker that ended before it registered
        (``states``: every worker's state in Redis, by id), with its last stderr lines."""
        if self.on_cluster:
            from .launch import check_cluster_workers

            check_cluster_workers(self.on_cluster, dict(states))
        for proc in self.processes.values():
            if proc.registered:
                continue
            if proc.worker_id in states:
                proc.registered = True
            elif not proc.alive:
                raise WorkerStartError(
                    f"worker {proc.worker_id} exited with code {proc.process.returncode} before it "
                    f"registered. Last lines of its stderr ({proc.stderr_path}):\n{proc.stderr_tail()}"
                )

    def any_alive(self) -> bool:
        """Whether a local worker process still runs."""
        return any(proc.alive for proc in self.processes.values())

    def reap(self) -> None:
        """Collect exited processes, so that their pids are really gone."""
        for proc in self.processes.values():
            proc.process.poll()

    def kill(self) -> None:
        """SIGKILL every local process now and forget every worker (``Rush.reset``)."""
        stop_processes(list(self.processes.values()), grace=0)
        self.processes.clear()
        self.on_cluster.clear()

    def stop(self, ask_to_terminate: Callable[[list[str]], None]) -> None:
        """Stop them all: ``ask_to_terminate(ids)`` (through Redis, which also wakes idle ones;
        any failure is ignored), then SIGTERM and, after 5 s, SIGKILL for local processes."""
        alive = [proc for proc in self.processes.values() if proc.alive]
        asked = [proc.worker_id for proc in alive] + [w.worker_id for w in self.on_cluster]
        if asked:
            try:
                ask_to_terminate(asked)
            except Exception:  # Redis gone: the signals still stop the local ones
                pass
        stop_processes(alive, grace=5)
        self.processes.clear()
        self.on_cluster.clear()

    def close(self) -> None:
        """Remove the temporary log directory (a ``log_dir`` the user chose is kept)."""
        if self._temporary_log_dir is not None:
            shutil.rmtree(self._temporary_log_dir, ignore_errors=True)
            self._temporary_log_dir = None
