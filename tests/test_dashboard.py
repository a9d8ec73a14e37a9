"""The dashboard over HTTP: metrics, snapshots, control, the command, errors, hidden passwords.

Real Redis servers, real worker processes; the page itself is tested in a
browser in test_dashboard_browser.py.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import funcs
import pytest
from conftest import wait_until
from test_cli import ROOT, TIMEOUT, cli_env, run_cli

pytest.importorskip("aiohttp", reason="the dashboard extra: pip install 'rush-dask[dashboard]'")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from rush_dask.core.server import RedisServer  # noqa: E402
from rush_dask.dashboard import start_in_thread  # noqa: E402


def get(url: str, **headers: str) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as response:
        return response.read()


def post(url: str, body: dict, **headers: str) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def base(page_url: str) -> str:
    return page_url.split("?")[0]


def metric_values(text: str) -> dict[tuple, float]:
    """(sample name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def first_event(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        for line in response:
            if line.startswith(b"data: "):
                return json.loads(line[6:])
    raise AssertionError("no event")


def test_metrics_report_tasks_workers_durations_and_redis(rush):
    rush.start_workers(funcs.sleep_then, n_workers=2)
    rush.wait_for_workers(2, timeout=TIMEOUT)
    page = rush.dashboard(port=0)
    get(base(page) + "metrics")  # the monitor starts watching here: the tasks below are seen finishing
    keys = rush.push_tasks([{"x": i, "duration": 0.05} for i in range(6)])
    rush.wait_for_tasks(keys, timeout=TIMEOUT)
    failed = rush.push_tasks([{"x": -1}], fun=funcs.fail_if_negative)
    rush.wait_for_tasks(failed, timeout=TIMEOUT)
    values = metric_values(get(base(page) + "metrics").decode())
    net = ("network", rush.network_id)
    assert values[("rush_tasks", (net, ("state", "finished")))] == 6
    assert values[("rush_tasks", (net, ("state", "failed")))] == 1
    assert values[("rush_tasks", (net, ("state", "queued")))] == 0
    assert values[("rush_workers", (net, ("state", "running")))] == 2
    assert values[("rush_workers", (net, ("state", "lost")))] == 0
    assert values[("rush_tasks_finished_total", (net,))] == 6
    assert values[("rush_tasks_failed_total", (net,))] == 1
    # the six tasks of 50 ms, seen finishing (failed ones are not in the histogram)
    assert values[("rush_task_duration_seconds_count", (net,))] == 6
    assert values[("rush_task_duration_seconds_bucket", (("le", "0.01"), net))] <= 1
    assert 0.3 <= values[("rush_task_duration_seconds_sum", (net,))] < 10
    [(memory_key, used)] = [(k, v) for k, v in values.items() if k[0] == "rush_redis_memory_used_bytes"]
    assert used > 100_000
    assert values[("rush_redis_memory_peak_bytes", memory_key[1])] >= used


def test_snapshot_shows_workers_memory_tasks_done_logs_and_failures(rush):
    ids = rush.start_workers(funcs.log_something, n_workers=2, heartbeat_period=0.2)
    rush.wait_for_workers(2, timeout=TIMEOUT)
    keys = rush.push_tasks([{"x": i} for i in range(4)])
    rush.wait_for_tasks(keys, timeout=TIMEOUT)
    rush.wait_for_tasks(rush.push_tasks([{"x": -1}], fun=funcs.fail_if_negative), timeout=TIMEOUT)
    page = rush.dashboard(port=0)
    url = base(page) + f"api/snapshot?network={rush.network_id}"
    wait_until(
        lambda: sum(w["n_done"] for w in json.loads(get(url))["workers"]) == 5,
        10,
        "tasks done reported with the heartbeats",
    )
    snap = json.loads(get(url))
    assert sorted(w["worker_id"] for w in snap["workers"]) == sorted(ids)
    assert all(w["state"] == "running" and w["rss"] > 10 * 2**20 and w["heartbeat_age"] < 5 for w in snap["workers"])
    assert snap["counts"] == {"queued": 0, "priority": 0, "running": 0, "finished": 4, "failed": 1, "tasks": 5}
    [failure] = snap["failed"]
    assert failure["error"] == "ValueError: negative input -1" and "fail_if_negative" in failure["traceback"]
    assert any("hello from task 2" in line["message"] for line in snap["logs"])
    assert snap["redis"]["used_memory"] > 0 and snap["redis"]["network_keys"] > 0
    assert rush.network_id in snap["networks"]


def test_events_stream_snapshots_and_unknown_network_is_404(rush, network_id):
    rush.push_tasks([{"x": 1}])
    page = rush.dashboard(port=0)
    event = first_event(base(page) + f"events?network={rush.network_id}")
    assert event["network"] == rush.network_id and event["counts"]["queued"] == 1
    with pytest.raises(urllib.error.HTTPError) as info:
        get(base(page) + "events?network=nobody-here")
    assert info.value.code == 404
    assert json.loads(info.value.read())["error"].startswith("unknown network 'nobody-here'")


def test_control_is_off_by_default_and_needs_the_page_token(rush, redis_url):
    first, second = rush.start_workers(funcs.add, n_workers=2)
    rush.wait_for_workers(2, timeout=TIMEOUT)
    read_only = rush.dashboard(port=0)
    status, _ = post(base(read_only) + "api/stop", {"worker_id": first, "type": "kill"})
    assert status == 403
    assert json.loads(get(base(read_only) + "api/config"))["token"] is None
    with_control = rush.dashboard(port=0, allow_control=True)
    status, _ = post(base(with_control) + "api/stop", {"worker_id": first, "type": "kill"})
    assert status == 403  # no token: another site's page cannot stop workers
    token = json.loads(get(base(with_control) + "api/config"))["token"]
    status, body = post(
        base(with_control) + "api/stop", {"worker_id": "nobody", "type": "kill"}, **{"X-Rush-Token": token}
    )
    assert status == 400 and "unknown worker id" in json.loads(body)["error"]
    status, body = post(
        base(with_control) + "api/stop",
        {"network": rush.network_id, "worker_id": first, "type": "terminate"},
        **{"X-Rush-Token": token},
    )
    assert status == 200 and json.loads(body) == {"stopped": [first], "type": "terminate"}
    wait_until(lambda: rush.terminated_worker_ids == [first], TIMEOUT, "the worker terminated")
    assert rush.running_worker_ids == [second]


def test_the_password_never_reaches_the_page(tmp_path):
    password = "dash-Secret-42"
    server = RedisServer(tcp=True, password=password).start()
    try:
        from rush_dask import Rush

        rush = Rush("pw-dash", url=server.url)
        try:
            rush.start_workers(funcs.add, n_workers=1, log_dir=tmp_path)
            rush.wait_for_tasks(rush.push_tasks([{"x1": 1, "x2": 1}]), timeout=TIMEOUT)
            page = rush.dashboard(port=0)
            bodies = [
                get(base(page)),
                get(base(page) + "static/app.js"),
                get(base(page) + "api/config"),
                get(base(page) + "api/snapshot?network=pw-dash"),
                get(base(page) + "metrics"),
                json.dumps(first_event(base(page) + "events?network=pw-dash")).encode(),
            ]
            assert b"127.0.0.1" in bodies[2] and b"***" in bodies[2]  # the redacted URL is there
            assert all(password.encode() not in body for body in bodies)
        finally:
            rush.reset()
            rush.close()
    finally:
        server.stop()


# ---------------------------------------------------------------------- the command
def test_command_serves_until_ctrl_c(rush, redis_url):
    rush.push_tasks([{"x": 1}])
    proc = subprocess.Popen(
        [sys.executable, "-m", "rush_dask.deploy.cli", "dashboard", "--network", rush.network_id, "--port", "0"],
        cwd=ROOT,
        env=cli_env(redis_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"dashboard of network {rush.network_id!r} at "), line
        page = re.search(r"(http://127\.0\.0\.1:\d+/\?network=\S+);", line).group(1)
        assert json.loads(get(base(page) + "api/config"))["network"] == rush.network_id
        assert b"<title>rush_dask dashboard</title>" in get(page)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(TIMEOUT) == 0
    finally:
        proc.kill()
        proc.wait()


def test_command_errors_are_one_line(rush, redis_url, network_id):
    out = run_cli("dashboard", "--network", network_id, url=redis_url)
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1
    assert out.stderr.startswith(f"Error: unknown network {network_id!r} at ")

    rush.push_tasks([{"x": 1}])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = run_cli("dashboard", "--network", rush.network_id, "--port", str(port), url=redis_url)
    assert out.returncode == 1
    assert out.stderr.startswith(f"Error: cannot serve on 127.0.0.1:{port} (")
    assert out.stderr.rstrip().endswith("choose another --port or --host")
    assert len(out.stderr.strip().splitlines()) == 1

    server = RedisServer(tcp=True, password="right-one").start()
    try:
        out = run_cli("dashboard", "--network", "n", url=f"redis://:wrong-pw@127.0.0.1:{server.port}/0")
        assert out.returncode == 1 and "refused the credentials" in out.stderr
        assert "wrong-pw" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    finally:
        server.stop()


def test_start_in_thread_port_in_use_raises_oserror(rush):
    rush.push_tasks([{"x": 1}])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            start_in_thread(rush.url, rush.network_id, port=taken.getsockname()[1])


def test_python_dashboard_of_a_network_with_nothing_yet(rush):
    page = rush.dashboard(port=0)
    snap = json.loads(get(base(page) + "api/snapshot"))
    assert snap["network"] == rush.network_id and snap["workers"] == []
    assert snap["counts"] == {"queued": 0, "priority": 0, "running": 0, "finished": 0, "failed": 0, "tasks": 0}


def test_redis_going_away_shows_as_a_failure_event_without_the_password():
    password = "gone-Secret-7"
    server = RedisServer(tcp=True, password=password).start()
    try:
        from rush_dask import Rush

        rush = Rush("gone-dash", url=server.url)
        rush.push_tasks([{"x": 1}])
        page = rush.dashboard(port=0)
        with urllib.request.urlopen(base(page) + "events?network=gone-dash", timeout=30) as stream:
            assert stream.readline().startswith(b"data: ")  # live while Redis is up
            server.stop()
            for line in stream:
                if line.startswith(b"event: failure"):
                    failure = json.loads(next(stream)[len(b"data: ") :])
                    break
        assert "Error" in failure["error"] and password not in failure["error"]
        rush.close()  # stops its dashboard
    finally:
        server.stop()
