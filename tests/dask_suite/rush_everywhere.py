"""A pytest plugin that runs Dask's own tests on rush_dask: every local scheduler of Dask
(``scheduler="sync"``/``"threads"``/``"processes"``, ``dask.get``, ``dask.threaded.get``,
``dask.multiprocessing.get``, ``dask.local.get_sync`` and the collections' defaults)
is redirected to one rush_dask network with local workers.

    python -m pytest -p rush_everywhere --pyargs dask.tests.test_delayed

(with this directory on ``PYTHONPATH``). The Redis server is private to the
run unless ``RUSH_SUITE_REDIS_URL`` names one; ``RUSH_SUITE_WORKERS`` sets the
number of workers (default 2). The summary line says how many computes ran
on rush_dask, so a run that silently bypassed it shows.
"""

from __future__ import annotations

import os

_state: dict = {"computes": 0}


def _redirect(rush) -> None:
    import dask
    import dask.array
    import dask.bag
    import dask.base
    import dask.dataframe
    import dask.delayed
    import dask.local
    import dask.multiprocessing
    import dask.threaded
    from dask.delayed import Delayed

    def rushed(original):
        """A stand-in for one local get function: distinct per original, so that collections
        whose defaults differ (arrays: threads, bags: processes) still differ."""

        def rush_get(dsk, keys, **kwargs):
            _state["computes"] += 1
            return rush.get(dsk, keys, **kwargs)

        rush_get.__name__ = rush_get.__qualname__ = f"rush_get_for_{original.__module__}"
        return rush_get

    threads, processes, sync = (
        rushed(dask.threaded.get),
        rushed(dask.multiprocessing.get),
        rushed(dask.local.get_sync),
    )
    by_original = {dask.threaded.get: threads, dask.multiprocessing.get: processes, dask.local.get_sync: sync}
    for name, get in dict(dask.base.named_schedulers).items():
        if get in by_original:
            dask.base.named_schedulers[name] = by_original[get]
    from dask.dataframe.dask_expr._collection import FrameBase

    classes = [dask.array.Array, dask.bag.Bag, dask.bag.core.Item, Delayed, FrameBase]
    try:
        from dask.array._array_expr._collection import Array as ExprArray

        classes.append(ExprArray)
    except ImportError:
        pass
    for cls in classes:
        original = cls.__dict__.get("__dask_scheduler__")
        original = getattr(original, "__func__", original)
        cls.__dask_scheduler__ = staticmethod(by_original.get(original, threads))
    dask.threaded.get, dask.multiprocessing.get, dask.local.get_sync = threads, processes, sync
    dask.get = sync


def pytest_configure(config):
    import faulthandler

    faulthandler.enable()
    from rush_dask import Rush
    from rush_dask.core.server import RedisServer

    url = os.environ.get("RUSH_SUITE_REDIS_URL")
    if not url:
        _state["server"] = RedisServer().start()
        url = _state["server"].url
    rush = Rush(url=url)
    n = int(os.environ.get("RUSH_SUITE_WORKERS", "2"))
    rush.start_workers(n_workers=n)
    rush.wait_for_workers(n, timeout=120)
    _state["rush"] = rush
    _redirect(rush)


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"rush_everywhere: {_state['computes']} computes ran on rush_dask")


def pytest_unconfigure(config):
    rush = _state.pop("rush", None)
    if rush is not None:
        rush.reset()
        rush.close()
    server = _state.pop("server", None)
    if server is not None:
        server.stop()
