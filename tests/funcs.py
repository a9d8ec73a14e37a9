"""Functions that worker processes run in the tests (importable by the workers)."""

from __future__ import annotations

import logging
import os
import random
import signal
import time
from pathlib import Path


def add(x1, x2, **kwargs):
    return {"y": x1 + x2}


def echo(x, label=None, **kwargs):
    return {"y": x, "upper": label.upper() if label else None}


def square(x, **kwargs):
    return x * x  # not a dict: stored as column y


def with_constants(x, scale, offset=0, **kwargs):
    return {"y": x * scale + offset}


def sleep_then(x, duration=0.0, **kwargs):
    time.sleep(duration)
    return {"y": x, "pid": os.getpid()}


def fail_if_negative(x, **kwargs):
    if x < 0:
        raise ValueError(f"negative input {x}")
    return {"y": x}


def fail_until(x, counter_dir, succeed_on, **kwargs):
    """Raise until this task has been attempted ``succeed_on`` times (counted in files)."""
    path = Path(counter_dir) / f"attempts-{x}"
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    if n < succeed_on:
        raise RuntimeError(f"attempt {n} fails")
    return {"y": x, "attempt_seen": n}


def randoms(x, **kwargs):
    import numpy as np

    return {"py": random.random(), "np": float(np.random.rand())}


def log_something(x, **kwargs):
    logging.getLogger("user.code").warning("hello from task %s", x)
    return {"y": x}


def kill_self(x, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)


def own_pid(x, **kwargs):
    return {"pid": os.getpid()}


def unpicklable_result(x, **kwargs):
    import threading

    return {"lock": threading.Lock()}


def decentralized_loop(worker, n_tasks, **kwargs):
    """A custom loop: create tasks, evaluate them, finish them."""
    for i in range(n_tasks):
        if worker.terminated:
            break
        keys = worker.push_running_tasks([{"x": i}], extra=[{"origin": worker.worker_id}])
        worker.finish_tasks(keys, [{"y": i * 10}])


def popping_loop(worker, **kwargs):
    """A custom loop on top of pop_task."""
    while not worker.terminated:
        task = worker.pop_task(timeout=0.5)
        if task is not None:
            worker.finish_tasks([task.key], [{"y": task.xs["x"] + 100}])


def oversized_loop(worker, n, **kwargs):
    """A custom loop whose second result is too large: finish_tasks refuses both, writes neither."""
    keys = worker.push_running_tasks([{"x": 1}, {"x": 2}])
    try:
        worker.finish_tasks(keys, [{"y": 0}, {"y": b"\0" * n}])
    except Exception as exc:
        worker.fail_tasks(keys, [exc, exc])


def raising_loop(worker, **kwargs):
    raise RuntimeError("the loop itself is broken")


def random_then_fail_until(x, counter_dir, succeed_on, **kwargs):
    """Draw a random number, then fail until attempt ``succeed_on``."""
    drawn = random.random()
    fail_until(x, counter_dir, succeed_on)
    return {"y": drawn}


class MarkerPayload:
    """A forged payload: unpickling it creates the file ``path`` (stands for arbitrary code)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path(self.path).touch, ())


def array_sum(x, data, **kwargs):
    data[:] = 0  # a task that mutates its input must not change what the next task sees
    return {"y": x}


def first_value(x, data, **kwargs):
    return {"y": float(data[0]) + x}


def touch(path, **kwargs):
    Path(path).touch()
    return {"y": 1}


def big_result(n, **kwargs):
    return {"y": b"\0" * n}


def double_on_host(x, duration=0.0, **kwargs):
    """Twice ``x``, with where it ran: the host name given to the worker and its network namespace."""
    time.sleep(duration)
    return {"y": 2 * x, "host": os.environ.get("RUSH_TEST_HOST"), "netns": os.readlink("/proc/self/ns/net")}
