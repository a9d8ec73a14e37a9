"""Redis memory of 1,000 tasks that share one 1 MB numpy array, stored once versus inline.

Pushes ``[{"i": i, "data": data} for i in range(1000)]`` to a private Redis
server and reports ``used_memory`` after the push (no worker runs), with
rush_dask's shared inputs (the array stored once under ``shared:<id>``) and
with sharing switched off (every task carries its own copy, as before).
Also times the push. Run from the repository root::

    python benchmarks/bench_shared_inputs.py
"""

from __future__ import annotations

import time

import numpy as np

import rush_dask.rush as rush_module
from rush_dask import Rush
from rush_dask.core.server import RedisServer
from rush_dask.core.shared import pack_inputs

N_TASKS = 1_000


def measure(url: str, shared: bool) -> tuple[float, float]:
    """(MB of Redis memory used by the pushed tasks, seconds to push)."""
    rush_module.pack_inputs = (
        pack_inputs
        if shared
        else (lambda xss, secret, max_bytes=None: pack_inputs(xss, secret, limit=2**62, max_bytes=max_bytes))
    )
    rush = Rush(url=url, max_payload_bytes=200 * 2**20)
    data = np.random.default_rng(0).random(2**17)  # 1 MiB
    before = rush.client.info("memory")["used_memory"]
    started = time.perf_counter()
    rush.push_tasks([{"i": i, "data": data} for i in range(N_TASKS)])
    seconds = time.perf_counter() - started
    used = (rush.client.info("memory")["used_memory"] - before) / 2**20
    rush.reset()
    rush.close()
    return used, seconds


def main() -> None:
    server = RedisServer().start()
    try:
        for shared in (False, True):
            used, seconds = measure(server.url, shared)
            label = "stored once (shared:<id>)" if shared else "inline in every task"
            print(
                f"{N_TASKS} tasks sharing one 1 MiB array, {label:26s}: "
                f"{used:8.1f} MiB of Redis memory, push {seconds:.2f} s"
            )
    finally:
        rush_module.pack_inputs = pack_inputs
        server.stop()


if __name__ == "__main__":
    main()
