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
