"""What the dashboard costs Redis: CPU per second with 16 workers, one page open, 1 refresh/s.

Two windows of ``--seconds`` each on a private Redis with 16 idle workers
(only their heartbeats talk to Redis): without the dashboard, then with a
dashboard polling once per second for one event stream (what an open page
does). Redis time is the sum of ``usec`` over ``INFO commandstats`` (the
time Redis spent in commands) and, more coarsely, ``used_cpu_user +
used_cpu_sys``. Target (issue 15): the dashboard costs at most 1 % of one
Redis core.

    python benchmarks/bench_dashboard.py [--seconds 20] [--workers 16]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

if not __package__:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TARGET = 0.01  # fraction of one Redis core


def redis_time(client) -> tuple[float, float]:
    """(seconds spent in commands, seconds of CPU) of the Redis server so far."""
    stats = client.info("commandstats")
    usec = sum(entry["usec"] for entry in stats.values())
    cpu = client.info("cpu")
    return usec / 1e6, cpu["used_cpu_user"] + cpu["used_cpu_sys"]


def window(client, seconds: float) -> tuple[float, float]:
    """Redis command time and CPU time per second over ``seconds``."""
    c0, u0 = redis_time(client)
    time.sleep(seconds)
    c1, u1 = redis_time(client)
    return (c1 - c0) / seconds, (u1 - u0) / seconds


def follow(url: str, stop: threading.Event, events: list) -> None:
    """An open page: read the event stream until ``stop``."""
    with urllib.request.urlopen(url, timeout=30) as response:
        for line in response:
            if line.startswith(b"data: "):
                events.append(json.loads(line[6:])["time"])
            if stop.is_set():
                return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args(argv)

    from rush_dask import Rush
    from rush_dask.core.server import RedisServer
    from rush_dask.dashboard import start_in_thread

    server = RedisServer(tcp=True).start()
    rush = Rush(f"bench-dash-{uuid.uuid4().hex[:6]}", url=server.url)
    try:
        rush.start_workers(lambda x, **kw: {"y": x}, n_workers=args.workers)
        rush.wait_for_workers(args.workers, timeout=120)
        rush.wait_for_tasks(rush.push_tasks([{"x": i} for i in range(100)]), timeout=120)
        time.sleep(2)
        base_cmd, base_cpu = window(rush.client, args.seconds)
        dash = start_in_thread(server.url, rush.network_id, port=0, period=1.0)
        stop, events = threading.Event(), []
        reader = threading.Thread(
            target=follow, args=(dash.url.replace("/?network=", "/events?network="), stop, events), daemon=True
        )
        reader.start()
        time.sleep(2)  # the first poll reads the archive tail and the logs: not steady state
        dash_cmd, dash_cpu = window(rush.client, args.seconds)
        stop.set()
        dash.stop()
    finally:
        rush.reset()
        rush.close()
        server.stop()
    cost_cmd, cost_cpu = dash_cmd - base_cmd, dash_cpu - base_cpu
    print(f"{args.workers} idle workers, {args.seconds:g} s windows, {len(events)} events received")
    print(
        f"Redis command time: {base_cmd * 1e3:.3f} ms/s without the dashboard, {dash_cmd * 1e3:.3f} ms/s "
        f"with it: the dashboard costs {cost_cmd * 100:.3f} % of a core"
    )
    print(
        f"Redis CPU (user+sys): {base_cpu * 1e3:.2f} ms/s without, {dash_cpu * 1e3:.2f} ms/s with: "
        f"{cost_cpu * 100:.2f} % of a core (coarse: includes network I/O)"
    )
    met = "met" if max(cost_cmd, cost_cpu) <= TARGET else "NOT met"
    print(f"target <= {TARGET * 100:g} % of a core: {met}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
