"""The embedded Redis belongs to its client: it goes with it, even when the client is SIGKILLed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import conftest

from rush_dask.core.watchdog import alive

CLIENT = textwrap.dedent("""
    import time
    from rush_dask import Rush
    from rush_dask.core.server import embedded_server

    rush = Rush("orphans")  # no URL: the process's embedded Redis
    rush.start_workers(n_workers=1, redis_retry_timeout=3, heartbeat_period=0.2, heartbeat_expire=2.0)
    rush.wait_for_workers(1, timeout=60)
    print(embedded_server().process.pid, *rush.worker_info.pid, flush=True)
    time.sleep(600)
""")


def test_a_sigkilled_client_takes_its_embedded_redis_and_its_workers_with_it(tmp_path):
    client = subprocess.Popen([sys.executable, "-c", CLIENT], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        server_pid, worker_pid = map(int, client.stdout.readline().split())
        assert alive(server_pid) and alive(worker_pid)
        client.kill()  # no exit handler runs
        client.wait()
        conftest.wait_until(lambda: not alive(server_pid), timeout=15, what="the embedded Redis stopped")
        conftest.wait_until(lambda: not alive(worker_pid), timeout=30, what="its worker exited")
    finally:
        client.kill()
        client.wait()


def test_a_client_that_exits_normally_leaves_no_watchdog(tmp_path):
    code = (
        "from rush_dask import Rush\nfrom rush_dask.core.server import embedded_server\n"
        "Rush('tidy').client.ping()\nprint(embedded_server().watchdog.pid, flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    watchdog_pid = int(done.stdout.split()[0])
    conftest.wait_until(lambda: not alive(watchdog_pid), timeout=15, what="the watchdog left with the server")
