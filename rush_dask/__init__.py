"""rush_dask: asynchronous, decentralized parallelization on Redis, and a Dask scheduler.

>>> from rush_dask import Rush
>>> rush = Rush("test")      # doctest: +SKIP

Imports are lazy so that a worker process (``python -m rush_dask.core.worker``)
starts without loading pandas or dask.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Rush": "rush_dask.rush",
    "RushWorker": "rush_dask.core.worker",
    "Task": "rush_dask.core.worker",
    "plan": "rush_dask.core.connections",
    "RedisServer": "rush_dask.core.server",
    "RushError": "rush_dask.core.errors",
    "RedisUnavailableError": "rush_dask.core.errors",
    "WorkerStartError": "rush_dask.core.errors",
    "TaskTimeoutError": "rush_dask.core.errors",
    "WorkerLostError": "rush_dask.core.errors",
    "KilledWorker": "rush_dask.core.errors",
    "TaskFailedError": "rush_dask.core.errors",
    "ComputeCancelledError": "rush_dask.core.errors",
    "PayloadSignatureError": "rush_dask.core.errors",
    "PayloadTooLargeError": "rush_dask.core.errors",
    "RushFuture": "rush_dask.dask.futures",
    "as_completed": "rush_dask.dask.futures",
    "wait": "rush_dask.dask.futures",
    "fire_and_forget": "rush_dask.dask.futures",
    "RushExecutor": "rush_dask.dask.executor",
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
    """Make ``scheduler="rush"`` mean the process-wide default network.

    Registered in ``dask.base.named_schedulers`` as soon as dask is imported
    (now, if it already is): importing rush_dask alone does not load dask, so
    the command line and the worker processes start fast.
    """
    import os
    import sys

    if os.environ.get("RUSH_DASK_WORKER") == "1":  # worker processes don't need it
        return
    if "dask.base" in sys.modules:
        _add_to_named_schedulers(sys.modules["dask.base"])
    else:
        sys.meta_path.insert(0, _AfterImportHook("dask.base", _add_to_named_schedulers))


def _add_to_named_schedulers(dask_base: Any) -> None:
    from .default import DEFAULT_SCHEDULER

    dask_base.named_schedulers.setdefault("rush", DEFAULT_SCHEDULER)


class _AfterImportHook:
    """An import hook that calls ``register(module)`` right after module ``name`` is executed."""

    def __init__(self, name: str, register: Any):
        self.name = name
        self.register = register

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name != self.name:
            return None
        import importlib.util
        import sys

        sys.meta_path.remove(self)  # find the real module, and hook only once
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_and_register(module: Any) -> None:
            exec_module(module)
            self.register(module)

        loader.exec_module = exec_and_register  # type: ignore[method-assign]
        return spec


_register_named_scheduler()


def _register_joblib_backend() -> None:
    """Make ``joblib.parallel_backend("rush")`` known as soon as joblib is imported (now, if it is).

    Importing rush_dask alone does not load joblib (nor numpy, which joblib
    imports), and the backend's module loads only when the backend is used.
    """
    import os
    import sys

    if os.environ.get("RUSH_DASK_WORKER") == "1":
        return
    if "joblib" in sys.modules:
        _add_joblib_backend(sys.modules["joblib"])
    else:
        sys.meta_path.insert(0, _AfterImportHook("joblib", _add_joblib_backend))


def _add_joblib_backend(joblib: Any) -> None:
    def backend(**kwargs: Any) -> Any:
        from .joblib_backend import RushBackend

        return RushBackend(**kwargs)

    joblib.register_parallel_backend("rush", backend)


_register_joblib_backend()
