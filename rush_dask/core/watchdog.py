"""Stop a process when the process that owns it dies.

A client that started its own (embedded) Redis stops it at exit. A client that
is SIGKILLed or crashes (a segfault in an extension) runs no exit handler, and
its server would run on as an orphan, with the workers connected to it. So
:func:`rush_dask.core.server.embedded_server` starts this watchdog beside the
server: a small process that waits for the client's death (a pidfd on Linux,
no polling) and then stops the server; the workers find Redis gone and exit
after their ``redis_retry_timeout``. The watchdog exits by itself when the
server stops first.

    python -m rush_dask.core.watchdog OWNER_PID TARGET_PID
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time

GRACE = 10.0  # seconds between SIGTERM and SIGKILL (Redis exits at once on SIGTERM)


def alive(pid: int) -> bool:
    """Whether a process with this pid runs (a zombie, dead but not reaped, does not).

    >>> alive(os.getpid())
    True
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] != b"Z"
    except OSError:  # no /proc (not Linux): kill() said it exists
        return True


def wait_for_first_exit(*pids: int) -> int:
    """Block until one of ``pids`` exits; returns it."""
    try:
        fds = {os.pidfd_open(pid): pid for pid in pids}
    except (AttributeError, OSError):  # no pidfd (not Linux >= 5.3, or a pid already gone): poll
        while all(alive(pid) for pid in pids):
            time.sleep(0.5)
        return next(pid for pid in pids if not alive(pid))
    ready, _, _ = select.select(list(fds), [], [])
    return fds[ready[0]]


def stop(pid: int, grace: float = GRACE) -> None:
    """SIGTERM, then SIGKILL if ``pid`` still runs after ``grace`` seconds."""
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def watch(owner: int, target: int) -> None:
    """Stop ``target`` when ``owner`` dies; return when either is gone.

    >>> watch(os.getpid(), server_pid)   # doctest: +SKIP
    """
    if wait_for_first_exit(owner, target) == owner:
        stop(target)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not all(a.isdigit() for a in args):
        print("usage: python -m rush_dask.core.watchdog OWNER_PID TARGET_PID", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C in the owner's terminal is for the owner
    watch(int(args[0]), int(args[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
