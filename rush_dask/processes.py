"""Local worker processes started by a controller.

Each worker is ``python -m rush_dask.worker`` in its own session (so a
Ctrl-C in the controller's terminal does not hit it), with the Redis URL in
its environment (never on the command line, where ``ps`` would show a
password; the signing secret likewise, in ``RUSH_SECRET``) and
stdout/stderr kept in files, so that a worker that dies while starting can
say why.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .connections import URL_ENV
from .serialize import SECRET_ENV

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


def spawn_worker(network_id: str, start_id: str, worker_id: str, url: str, log_dir: Path,
                 secret: bytes | None = None) -> WorkerProcess:
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
            [sys.executable, "-m", "rush_dask.worker", "--network", network_id,
             "--start-id", start_id, "--worker-id", worker_id],
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
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
