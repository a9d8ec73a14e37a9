"""A light handle on a network, and stopping workers.

:class:`Network` is the read side (:class:`~rush_dask.core.network.NetworkView`)
plus :func:`stop_workers`, without the Dask scheduler: it imports neither
dask nor pandas (pandas only when a DataFrame is asked for), so the command
line and the dashboard start fast. :class:`~rush_dask.rush.Rush` stops
workers with the same :func:`stop_workers`.

>>> net = Network("test", "redis://127.0.0.1:6379/0")   # doctest: +SKIP
>>> net.stop_workers("terminate")                        # doctest: +SKIP
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from . import constants as C
from .connections import connect
from .network import HOSTNAME, NetworkView, pid_alive
from .scripts import Scripts


class Network(NetworkView):
    """Counters, worker lists, logs and :meth:`stop_workers` of one network at ``url``.

    >>> Network("test", "redis://127.0.0.1:6379/0").running_worker_ids   # doctest: +SKIP
    ['0a1b2c3d4e5f']
    """

    def __init__(self, network_id: str, url: str, client: Any = None):
        self.keys = C.Keys(network_id)
        self.url = url
        self.client = connect(url) if client is None else client  # a client may serve many networks
        self.scripts = Scripts(self.client, self.keys)
        self._init_view()

    def exists(self) -> bool:
        """Whether the network holds any worker or task.

        >>> Network("nobody", "redis://127.0.0.1:6379/0").exists()   # doctest: +SKIP
        False
        """
        keys = self.keys
        return bool(self.client.exists(keys.worker_states, keys.all_tasks, keys.queue, keys.seq))

    def stop_workers(self, type: str = "terminate", worker_ids: Iterable[str] | None = None) -> list[str]:
        """As :meth:`rush_dask.Rush.stop_workers`: ask workers to stop; the ids asked.

        >>> net.stop_workers("kill", ["0a1b2c3d4e5f"])   # doctest: +SKIP
        ['0a1b2c3d4e5f']
        """
        return stop_workers(self, type, worker_ids)

    def close(self) -> None:
        """Close the connections to Redis."""
        self.client.close()


def stop_workers(
    view: NetworkView,
    type: str = "terminate",
    worker_ids: Iterable[str] | None = None,
    processes: Mapping[str, Any] | None = None,
) -> list[str]:
    """Stop workers of ``view``'s network: ``terminate`` after their task, or ``kill`` now.

    A kill marks them ``killed`` in Redis (their running tasks fail) and
    sends SIGKILL to those on this host (``processes``: the
    :class:`~rush_dask.deploy.processes.WorkerProcess` objects a controller
    started, by id, waited for); the others hard-exit at their next
    heartbeat. A terminate sets their flag and wakes them. Returns the ids.

    >>> stop_workers(rush, "terminate")   # doctest: +SKIP
    ['0a1b2c3d4e5f', '6a7b8c9d0e1f']
    """
    if type not in ("terminate", "kill"):
        raise ValueError(f"type must be 'terminate' or 'kill', got {type!r}")
    ids = view.running_worker_ids if worker_ids is None else view._check_worker_ids(worker_ids)
    if not ids:
        return []
    keys = view.keys
    if type == "kill":
        view.scripts.mark_workers(ids, state=C.WorkerState.KILLED, reason="worker killed by the user")
        signal_local(view, ids, signal.SIGKILL, processes or {})
    else:
        pipe = view.client.pipeline(transaction=True)
        for wid in ids:
            pipe.hset(keys.worker(wid), "terminate", "1")
            pipe.lpush(keys.wake_worker(wid), "1")
        pipe.execute()
    return ids


def signal_local(view: NetworkView, worker_ids: Sequence[str], signum: int, processes: Mapping[str, Any]) -> None:
    """Send ``signum`` to the workers among ``worker_ids`` that run on this host."""
    pipe = view.client.pipeline(transaction=False)
    for wid in worker_ids:
        pipe.hmget(view.keys.worker(wid), "hostname", "pid")
    for wid, (host, pid) in zip(worker_ids, pipe.execute()):
        proc = processes.get(wid)
        if proc is not None:
            proc.signal(signum)
            try:
                proc.process.wait(5)
            except Exception:
                pass
        elif host is not None and host.decode() == HOSTNAME and pid and pid_alive(int(pid)):
            try:
                os.kill(int(pid), signum)
            except ProcessLookupError:
                pass
