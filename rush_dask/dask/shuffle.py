"""Which DataFrame shuffle runs on rush_dask, without changing it for the rest of the process.

Without a distributed Client, Dask picks the *disk* shuffle: partd files in
the ``temporary_directory`` of whichever worker makes them. That works while
every worker is on one machine (they share the disk) and is wrong across
machines. The task-based shuffle works everywhere.

Dask chooses the method while it optimizes a collection, which
``dask.compute`` does *before* it calls the scheduler. So:

* ``rush.compute(x)``, ``rush.persist(x)`` and ``dask.persist(x, scheduler=rush)``
  optimize under :func:`task_shuffle`: the task shuffle unless you chose a method;
* ``dask.compute(x, scheduler=rush)`` and ``x.compute(scheduler=rush)`` get what
  Dask chose (the disk shuffle by default); :func:`check_disk_shuffle` refuses
  a disk shuffle when the network's workers are on several machines, and
  :func:`check_p2p` refuses distributed's P2P shuffle or rechunk, which Dask
  picks when a distributed Client is the default one and which runs only on
  distributed's own workers.

Nothing here touches the process-wide ``dask.config``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..core.connections import redact
from ..core.constants import WorkerState

if TYPE_CHECKING:
    from .protocols import Controller


@contextlib.contextmanager
def task_shuffle() -> Iterator[None]:
    """Within the block, DataFrame shuffles are task-based unless the user chose a method.

    >>> import dask
    >>> with task_shuffle():
    ...     dask.config.get("dataframe.shuffle.method")
    'tasks'
    """
    import dask.config

    if dask.config.get("dataframe.shuffle.method", None) is None:
        with dask.config.set({"dataframe.shuffle.method": "tasks"}):
            yield
    else:
        yield


def has_disk_shuffle(graph: Mapping[Any, Any]) -> bool:
    """Whether a converted graph holds a disk shuffle (a node that makes partd files)."""
    module = sys.modules.get("dask.dataframe.shuffle")
    partd_maker = getattr(module, "maybe_buffered_partd", None)
    if partd_maker is None:  # dask.dataframe never imported: no DataFrame in the graph
        return False
    return any(isinstance(getattr(node, "func", None), partd_maker) for node in graph.values())


def has_p2p(graph: Mapping[Any, Any]) -> bool:
    """Whether a converted graph holds a task of distributed's P2P shuffle or rechunk."""
    if "distributed.shuffle" not in sys.modules:  # never imported: no P2P task can exist
        return False
    return any(
        getattr(getattr(node, "func", None), "__module__", "").startswith("distributed.shuffle")
        for node in graph.values()
    )


def check_p2p(graph: Mapping[Any, Any]) -> None:
    """Raise before anything is written if the graph needs distributed's P2P machinery.

    >>> check_p2p({"x": 1})   # no P2P task: nothing happens
    """
    if has_p2p(graph):
        raise RuntimeError(
            "this graph uses distributed's P2P shuffle or rechunk (Dask picks it when a "
            "distributed Client is the default client), which runs only on distributed's own "
            "workers. Use rush.compute(x) / rush.persist(x) (task shuffle unless you chose one), "
            "build the collection with dask.config.set({'dataframe.shuffle.method': 'tasks', "
            "'array.rechunk.method': 'tasks'}), or create the Client with set_as_default=False"
        )


def check_disk_shuffle(rush: Controller, graph: Mapping[Any, Any]) -> None:
    """Raise before anything is written if a disk shuffle would span several machines."""
    if not has_disk_shuffle(graph):
        return
    running = [w for w, state in rush._worker_states().items() if state == WorkerState.RUNNING]
    if not running:
        return
    pipe = rush.client.pipeline(transaction=False)
    for wid in running:
        pipe.hget(rush.keys.worker(wid), "hostname")
    hosts = {h for h in pipe.execute() if h}
    if len(hosts) > 1:
        raise RuntimeError(
            f"this graph shuffles a DataFrame on local disk (Dask's default without a distributed "
            f"Client), but the workers of network {rush.network_id!r} at {redact(rush.url)} run on "
            f"{len(hosts)} machines, which do not share that disk. Use rush.compute(x) / "
            "rush.persist(x) (task shuffle by default), or set "
            "dask.config.set({'dataframe.shuffle.method': 'tasks'}) around the compute"
        )
