"""The heartbeat thread of a worker.

Every ``period`` seconds it refreshes the worker's heartbeat key with a TTL
of ``expire`` seconds, unless the worker's state is no longer ``running``.
The reply carries the orders given through Redis: a worker marked
``killed`` or ``lost`` hard-exits at once (its late results would be
dropped anyway); a terminate flag is passed to the worker loop.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable

import redis

from .constants import WorkerState

logger = logging.getLogger("rush_dask.worker")

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

EXIT_KILLED = 137
EXIT_LOST = 75
EXIT_REDIS_GONE = 69


class Heartbeat(threading.Thread):
    def __init__(
        self,
        beat: Callable[[], tuple[str, bool]],
        period: float,
        redis_retry_timeout: float,
        on_terminate: Callable[[], None],
        after_beat: Callable[[], None] = lambda: None,
    ):
        super().__init__(name="rush-heartbeat", daemon=True)
        self.beat = beat
        self.period = period
        self.redis_retry_timeout = redis_retry_timeout
        self.on_terminate = on_terminate
        self.after_beat = after_beat
        self.stopped = threading.Event()

    def run(self) -> None:
        last_success = time.monotonic()
        while not self.stopped.wait(self.period):
            try:
                state, terminate = self.beat()
                last_success = time.monotonic()
            except (redis.RedisError, OSError) as exc:
                # Unreachable, restarting, or a cluster moving the network's slot to another
                # master: keep beating until redis_retry_timeout, never let the thread die.
                if not isinstance(exc, (redis.ConnectionError, redis.TimeoutError, OSError)):
                    logger.warning("heartbeat failed: %s: %s", type(exc).__name__, exc)
                if time.monotonic() - last_success > self.redis_retry_timeout:
                    print(
                        f"rush worker: Redis unreachable for {self.redis_retry_timeout:.0f} s ({exc}); exiting",
                        file=sys.stderr,
                        flush=True,
                    )
                    os._exit(EXIT_REDIS_GONE)
                continue
            if state in (WorkerState.KILLED, WorkerState.LOST, "unknown"):
                print(f"rush worker: state is {state!r} in Redis; exiting now", file=sys.stderr, flush=True)
                os._exit(EXIT_KILLED if state == WorkerState.KILLED else EXIT_LOST)
            if state != WorkerState.RUNNING:  # terminated: the main loop is on its way out
                return
            if terminate:
                self.on_terminate()
            try:
                self.after_beat()
            except Exception:  # shipping logs must not stop the heartbeat
                pass

    def stop(self) -> None:
        self.stopped.set()


def rss_bytes() -> int:
    """Resident memory of this process in bytes (Linux: now; elsewhere: the peak so far).

    >>> rss_bytes() > 0
    True
    """
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere
