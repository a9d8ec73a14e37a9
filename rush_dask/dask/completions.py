"""How a futures client learns that its futures finished: pushed, not polled.

Every graph node behind a future names its client's list ``fdone:<id>``; the
script that finishes the node (or fails it) pushes the node's key there
(``!`` + key for a failure). One daemon thread per client blocks on that
list (BLMPOP) and wakes whoever waits — ``result()``, ``wait``,
``as_completed``, an executor — and runs ``add_done_callback`` callbacks. Nothing
loops over Redis while futures run.

While futures are pending the thread also detects lost workers once a
second, so the nodes of a worker that died are requeued. A pop whose reply
is lost (Redis restarted meanwhile) and the dependents of a failed node
learn nothing from the list; for them the thread reads the
states of the futures still pending when the list stays quiet, less often
the longer it stays so (1 s, then up to 10 s).

>>> rush.submit(pow, 2, 10).add_done_callback(print)    # doctest: +SKIP
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..core.constants import TaskState

if TYPE_CHECKING:
    from .protocols import Controller

logger = logging.getLogger("rush_dask")

_BLOCK = 1.0  # seconds per blocking pop; the thread notices close() within this


class Completions:
    """The done states of one client's futures, kept current by a listener thread."""

    def __init__(self, rush: Controller):
        self._rush = weakref.proxy(rush)
        self.client_id = uuid.uuid4().hex[:16]
        self.list_key = rush.keys.futures_done(self.client_id)
        self.cond = threading.Condition()
        self.failed: dict[str, bool] = {}  # task key -> failed?, for every done future
        self.pending: set[str] = set()  # task keys of live futures not known done
        self._callbacks: dict[str, list[Callable[[], None]]] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._to_release: collections.deque[str] = collections.deque()  # by the listener, in batches
        self._wake_sent = False

    # ------------------------------------------------------------------ client side
    def watch(self, task_keys: list[str]) -> None:
        """Follow these nodes (futures just created); starts the listener on first use."""
        with self.cond:
            self.pending.update(k for k in task_keys if k not in self.failed)
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._listen, name="rush-completions", daemon=True)
                self._thread.start()

    def forget(self, task_key: str) -> None:
        """A future was released: stop following its node."""
        with self.cond:
            self.pending.discard(task_key)
            self.failed.pop(task_key, None)
            self._callbacks.pop(task_key, None)

    def release(self, task_key: str) -> None:
        """Drop the client's reference on a node (its future was released or collected).

        Called by finalizers, so it must not block or take locks: the key is queued and
        the listener releases the queue in one script call, woken by one marker on its
        list per burst (10,000 futures collected at once cost two round trips, not 10,000).
        """
        self.forget(task_key)
        thread = self._thread
        if thread is None or not thread.is_alive():
            self.release_now([task_key])
            return
        self._to_release.append(task_key)
        if not self._wake_sent:
            self._wake_sent = True
            self._rush.client.rpush(self.list_key, "")

    def _release_queued(self) -> None:
        self._wake_sent = False
        keys = []
        while self._to_release:
            keys.append(self._to_release.popleft())
        for start in range(0, len(keys), 10_000):
            self.release_now(keys[start : start + 10_000])

    def release_now(self, task_keys: list[str]) -> None:
        """Drop this client's references, recorded under its lease; one request id per call,
        so that a call repeated after a lost reply (a Redis restart) releases nothing twice."""
        self._rush.scripts.release(task_keys, client_id=self.client_id, request=uuid.uuid4().hex)

    def is_done(self, task_key: str) -> bool:
        return task_key in self.failed

    def on_done(self, task_key: str, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once the node is done (now, if it is); from the listener thread."""
        with self.cond:
            if task_key not in self.failed:
                self._callbacks.setdefault(task_key, []).append(callback)
                return
        callback()

    def wait(self, task_keys: list[str], deadline: float | None, count: int | None = None) -> list[str]:
        """Block until ``count`` (default: all) of the nodes are done or the deadline passes;
        returns the done ones."""
        need = len(task_keys) if count is None else count
        with self.cond:
            while True:
                done = [k for k in task_keys if k in self.failed]
                if len(done) >= need:
                    return done
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return done
                self.cond.wait(_BLOCK if remaining is None else min(remaining, _BLOCK))
                if self._thread is None or not self._thread.is_alive():
                    raise RuntimeError("the futures client was closed while futures were awaited")

    def close(self) -> None:
        """Stop the listener, release what is queued and delete the client's list."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=_BLOCK + 1)
        try:
            self._release_queued()
            self._rush.client.delete(self.list_key)
        except Exception:  # Redis gone: nothing to delete
            pass

    # ------------------------------------------------------------------ listener
    def _mark(self, items: list[tuple[str, bool]]) -> None:
        ready: list[Callable[[], None]] = []
        with self.cond:
            for task_key, failed in items:
                if task_key not in self.pending:
                    continue  # released meanwhile, or told twice
                self.pending.discard(task_key)
                self.failed[task_key] = failed
                ready += self._callbacks.pop(task_key, [])
            self.cond.notify_all()
        for callback in ready:
            try:
                callback()
            except Exception:  # a user callback must not stop the listener
                logger.exception("a future's done callback raised")

    def _listen(self) -> None:
        idle_since, resync_after = time.monotonic(), 1.0
        next_health_check = time.monotonic() + _BLOCK
        while not self._stop.is_set():
            if self.pending and time.monotonic() > next_health_check:
                # While futures run, requeue the nodes of workers that died (as a compute's wait does).
                next_health_check = time.monotonic() + _BLOCK
                try:
                    self._rush.detect_lost_workers()
                except ReferenceError:
                    return
                except Exception as exc:
                    logger.debug("futures listener: %s", exc)
            try:
                rush = self._rush
                reply = rush.client.blmpop(_BLOCK, 1, self.list_key, direction="LEFT", count=10_000)
            except ReferenceError:  # the controller is gone
                return
            except Exception as exc:  # Redis down: the redis client retried already; try again
                logger.debug("futures listener: %s", exc)
                time.sleep(_BLOCK)
                continue
            if self._to_release or self._wake_sent:
                try:
                    self._release_queued()
                except Exception as exc:  # Redis gone: the nodes stay until the network is reset
                    logger.debug("futures listener: release failed: %s", exc)
            if reply:
                items = [item.decode() for item in reply[1] if item]
                self._mark([(i[1:], True) if i.startswith("!") else (i, False) for i in items])
                idle_since, resync_after = time.monotonic(), 1.0
            elif self.pending and time.monotonic() - idle_since > resync_after:
                found = self._read_states()
                self._mark(found)
                idle_since = time.monotonic()
                resync_after = 1.0 if found else min(resync_after * 2, 10.0)

    def _read_states(self) -> list[tuple[str, bool]]:
        with self.cond:
            keys = list(self.pending)
        pipe = self._rush.client.pipeline(transaction=False)
        for task_key in keys:
            pipe.hget(self._rush.keys.task(task_key), "state")
        states = [raw.decode() if raw is not None else None for raw in pipe.execute()]
        # A node already deleted was used up; its future learns why when it reads it.
        return [
            (k, state in (TaskState.FAILED, None))
            for k, state in zip(keys, states)
            if state in (TaskState.FINISHED, TaskState.FAILED, None)
        ]
