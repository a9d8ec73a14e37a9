"""A live web dashboard of rush networks, with Prometheus metrics at ``/metrics``.

Modules, one concept each: :mod:`.snapshot` reads what a network looks like
now (plain dicts, no pandas); :mod:`.metrics` turns snapshots into
Prometheus metrics; :mod:`.app` serves the page, the server-sent events
and the metrics with aiohttp; ``static/`` holds the page and its script.

>>> from rush_dask.dashboard import start_in_thread       # doctest: +SKIP
>>> server = start_in_thread("redis://127.0.0.1:6379/0", "test", port=8787)   # doctest: +SKIP
>>> server.url                                             # doctest: +SKIP
'http://127.0.0.1:8787/?network=test'

From the shell: ``rush-dask dashboard --network test``. Needs the
``dashboard`` extra (``pip install 'rush-dask[dashboard]'``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import DashboardThread

MISSING_HINT = "the dashboard needs aiohttp and prometheus-client: pip install 'rush-dask[dashboard]'"


def start_in_thread(
    url: str,
    network_id: str,
    host: str = "127.0.0.1",
    port: int = 8787,
    *,
    allow_control: bool = False,
    period: float = 0.5,
) -> DashboardThread:
    """Serve the dashboard of ``network_id`` from a background thread; returns once it listens.

    ``port=0`` takes a free port. ``server.url`` is the page's address,
    ``server.stop()`` stops it.

    >>> server = start_in_thread(rush.url, rush.network_id, port=0)   # doctest: +SKIP
    """
    from .app import DashboardThread

    return DashboardThread(url, network_id, host, port, allow_control=allow_control, period=period).start()


def __getattr__(name: str) -> Any:
    if name == "DashboardThread":
        from .app import DashboardThread

        return DashboardThread
    raise AttributeError(f"module 'rush_dask.dashboard' has no attribute {name!r}")
