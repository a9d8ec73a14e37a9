"""rush_dask: asynchronous, decentralized parallelization on Redis, and a Dask scheduler.

>>> from rush_dask import Rush
>>> rush = Rush("test")      # doctest: +SKIP

Imports are lazy so that a worker process (``python -m rush_dask.worker``)
starts without loading pandas or dask.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Rush": "rush_dask.rush",
    "RushWorker": "rush_dask.worker",
    "Task": "rush_dask.worker",
    "plan": "rush_dask.connections",
    "RedisServer": "rush_dask.server",
    "RushError": "rush_dask.errors",
    "RedisUnavailableError": "rush_dask.errors",
    "WorkerStartError": "rush_dask.errors",
    "TaskTimeoutError": "rush_dask.errors",
    "WorkerLostError": "rush_dask.errors",
    "KilledWorker": "rush_dask.errors",
    "TaskFailedError": "rush_dask.errors",
    "ComputeCancelledError": "rush_dask.errors",
    "PayloadSignatureError": "rush_dask.errors",
    "PayloadTooLargeError": "rush_dask.errors",
    "RushFuture": "rush_dask.futures",
    "as_completed": "rush_dask.futures",
    "wait": "rush_dask.futures",
    "fire_and_forget": "rush_dask.futures",
    "RushExecutor": "rush_dask.executor",
    "default_rush": "rush_dask.default",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rush_dask' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


def _register_named_scheduler() -> None:
    """Make ``scheduler="rush"`` mean the process-wide default network (needs dask)."""
    import os

    if os.environ.get("RUSH_DASK_WORKER") == "1":  # worker processes don't need it; start faster
        return
    from dask.base import named_schedulers

    from .default import DEFAULT_SCHEDULER

    named_schedulers.setdefault("rush", DEFAULT_SCHEDULER)


_register_named_scheduler()
