"""The lease under which a controller holds persisted results and futures.

A compute is followed by its client, which renews the compute's own lease
while it waits (see :class:`rush_dask.dask.graph.GraphRun`). Persisted results and
futures outlive the call that made them, so their client renews one lease
for all of them: :class:`ClientLease` starts a thread the first time the
controller holds something, and renews every ``min(lease / 4, 5 s)`` with one
script call (``renew_client.lua``). Redis records each reference the client
holds (``crefs:<client>``); when the client stops renewing (SIGKILL, a hang,
a lost machine) for ``lease`` seconds, whoever comes next drops those
references as if the client had released them: the next renewal of any
other controller, or the next heartbeat of any worker. So a dead client's
results, futures and queued work leave Redis within the lease plus one
sweep, with or without running workers.

Each renewal also reaps part of an abandoned compute, as workers' heartbeats
do, so that sweeping never needs a running worker.

    >>> lease = ClientLease(rush)                 # doctest: +SKIP
    >>> lease.hold(60.0)                          # doctest: +SKIP
    60.0
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import TYPE_CHECKING, Any

from ..core import constants as C

if TYPE_CHECKING:
    from .protocols import Controller

logger = logging.getLogger("rush_dask")

RENEW_EVERY_MAX = 5.0  # seconds: a dead client's holdings go within its lease and about this


class ClientLease:
    """One controller's lease on what it holds; renewed by a thread once it holds something."""

    def __init__(self, rush: Controller, client_id: str):
        self._rush: Any = weakref.proxy(rush)
        self.client_id = client_id
        self.seconds = C.DEFAULT_GRAPH_LEASE
        self.expired = False  # Redis reaped what it held: it stopped renewing for too long
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def hold(self, lease: float | None = None) -> float:
        """Start renewing (if not yet); ``lease`` seconds, if shorter than the current lease,
        becomes the lease (one lease covers all of a client's holdings). Returns the lease.

        >>> lease.hold(30.0)   # doctest: +SKIP
        30.0
        """
        if lease is not None:
            if isinstance(lease, bool) or not isinstance(lease, (int, float)) or not lease > 0:
                raise ValueError(f"lease must be a positive number of seconds, got {lease!r}")
            self.seconds = min(self.seconds, float(lease))
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self.renew()
            self._thread = threading.Thread(target=self._run, name="rush-lease", daemon=True)
            self._thread.start()
        return self.seconds

    def renew(self) -> None:
        """One renewal (and a bit of sweeping); notes when Redis reaped this client's holdings."""
        state = self._rush.scripts.renew_client(self.client_id, lease=self.seconds, reap_batch=C.REAP_BATCH)
        if state == 0 or (state == -1 and self._thread is not None):
            self.expired = True
            logger.warning(
                "rush controller %s did not renew its lease for %g s (was the process paused, or cut "
                "off from Redis?): its persisted results and futures were released",
                self.client_id,
                self.seconds,
            )

    def _run(self) -> None:
        while not self._stop.wait(min(self.seconds / 4, RENEW_EVERY_MAX)):
            try:
                self.renew()
            except ReferenceError:  # the controller is gone
                return
            except Exception as exc:  # Redis away for a moment: the next round tries again
                logger.debug("rush lease renewal failed: %s", exc)

    def forget(self) -> None:
        """Stop renewing, without a word to Redis (``Rush.reset`` deletes the keys anyway)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=RENEW_EVERY_MAX + 1)
        self._thread = None
        self.expired = False

    def close(self) -> None:
        """Stop renewing and drop everything this controller holds (it is closing)."""
        thread = self._thread
        self.forget()
        if thread is not None:
            try:
                self._rush.scripts.renew_client(self.client_id, lease=0.0, reap_batch=C.REAP_BATCH)
            except Exception:  # Redis gone: the lease expires, and others reap it
                pass
