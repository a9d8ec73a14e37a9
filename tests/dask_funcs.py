"""Functions for the Dask tests, importable by worker processes."""

from __future__ import annotations

import os
import time
from pathlib import Path


def inc(x):
    return x + 1


def add(a, b):
    return a + b


def slow_inc(x, duration=0.05):
    time.sleep(duration)
    return x + 1


def boom(x):
    raise ZeroDivisionError(f"boom on {x}")


def record_order(x, path):
    with open(path, "a") as handle:
        handle.write(f"{x}\n")
    return x


def fail_first_time(x, marker_dir):
    marker = Path(marker_dir) / f"seen-{x}"
    if not marker.exists():
        marker.write_text("1")
        raise RuntimeError("first attempt fails")
    return x * 10


def which_worker(x):
    return os.getpid()


def sigkill_once(x, marker_dir):
    """Kill the worker process the first time this runs."""
    import signal

    marker = Path(marker_dir) / f"killed-{x}"
    if not marker.exists():
        marker.write_text("1")
        os.kill(os.getpid(), signal.SIGKILL)
    return x + 100


def kill_self(x):
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def square_dict(x, **kwargs):
    return {"y": x * x}


def wait_for_file(x, path):
    """Return x + 1 once ``path`` exists (the test opens the gate when it is ready)."""
    while not os.path.exists(path):
        time.sleep(0.02)
    return x + 1


class CountsUnpickling:
    """A value of ``size`` bytes that appends a line to ``path`` each time it is unpickled."""

    def __init__(self, path, size):
        self.path, self.payload = str(path), b"x" * size

    def __setstate__(self, state):
        self.__dict__.update(state)
        with open(self.path, "a") as log:
            log.write("unpickled\n")


def counted_value(path, size):
    return CountsUnpickling(path, size)


def piece_of(value, i):
    return len(value.payload) + i


def big_array(n_bytes, fill=1.0):
    """A float64 array of ``n_bytes`` bytes (large enough to stay on its producer's host)."""
    import numpy as np

    return np.full(n_bytes // 8, fill)


def array_sum(a, *rest):
    return float(a.sum())


def gate(path, *after, timeout=60.0):
    """Block until ``path`` exists (a gate the test opens); ``after``: inputs to wait for first."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.02)
    return 0


def slow_inc_killing_once_at(x, target, marker_dir):
    """slow_inc, except that the worker running ``target`` is SIGKILLed the first time."""
    if x == target:
        return sigkill_once(x, marker_dir) - 100 + 1
    return slow_inc(x, 0.02)


def warn_and_return(x, message="careful"):
    import warnings

    warnings.warn(f"{message} {x}", UserWarning, stacklevel=1)
    return x


def config_value(name, _=None):
    import dask.config

    return dask.config.get(name, None)
