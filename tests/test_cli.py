"""The command line `rush-dask`, run as real processes against a real Redis."""

from __future__ import annotations

import json
import os
import queue
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import dask
import funcs
import pytest
import redis
from click.testing import CliRunner
from conftest import network_keys, wait_until

from rush_dask import RedisUnavailableError, Rush
from rush_dask.core.network import pid_alive
from rush_dask.deploy.cli import (
    LogReader,
    format_log_record,
    main,
    parse_resources,
    redact_text,
)

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
TIMEOUT = 90


def wait_for_file(x, path=None, **kwargs):
    """A task that runs until ``path`` exists (so a test decides when it ends, not a clock)."""
    while path is not None and not os.path.exists(path):
        time.sleep(0.02)
    return {"y": x}


def cli_env(url: str | None = None, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), env.get("PYTHONPATH", "")])
    env.pop("RUSH_REDIS_URL", None)
    env.pop("RUSH_REDIS_PASSWORD", None)
    if url:
        env["RUSH_REDIS_URL"] = url
    env.update(extra)
    return env


def run_cli(*args: str, url: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rush_dask.deploy.cli", *args],
        cwd=ROOT,
        env=env or cli_env(url),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


class Cli:
    """A CLI process in the background; its stdout is read line by line."""

    def __init__(self, *args: str, url: str | None = None, env: dict | None = None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rush_dask.deploy.cli", *args],
            cwd=ROOT,
            env=env or cli_env(url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout, True), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr, False), daemon=True).start()

    def _read(self, stream, into: list[str], to_queue: bool) -> None:
        for line in stream:
            into.append(line)
            if to_queue:
                self.lines.put(line.rstrip("\n"))

    def wait_for(self, predicate, timeout: float = TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                exited = self.proc.poll() is not None and self.lines.empty()
                if exited or time.monotonic() > deadline:
                    raise AssertionError(
                        f"no such line ({'exited' if exited else 'timeout'}); stdout "
                        f"{self.stdout}, stderr {self.stderr}"
                    ) from None
                continue
            if predicate(line):
                return line

    def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        return self.proc.wait(TIMEOUT)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextmanager
def cli_workers(rush: Rush, redis_url: str, *args: str, n: int = 1):
    """``rush-dask worker`` in the background; yields it and its worker ids; all gone afterwards."""
    cli = Cli("worker", "--network", rush.network_id, "-n", str(n), *args, url=redis_url)
    ids: list[str] = []
    try:
        ids = [cli.wait_for(lambda line: line.startswith("worker ")).split()[1] for _ in range(n)]
        cli.wait_for(lambda line: "workers running" in line)
        yield cli, ids
    finally:
        pids = [int(p) for p in rush.worker_info["pid"].dropna()] if ids else []
        cli.close()
        wait_until(lambda: not any(pid_alive(pid) for pid in pids), TIMEOUT, "worker processes gone")


# ---------------------------------------------------------------------------- worker
def test_generic_workers_run_pushed_functions_and_dask_graphs_then_stop(rush, redis_url):
    with cli_workers(rush, redis_url, n=2) as (cli, ids):
        assert sorted(rush.running_worker_ids) == sorted(ids)
        keys = rush.push_tasks([{"x1": i, "x2": 10} for i in range(6)], fun=funcs.add)
        rush.wait_for_tasks(keys, timeout=TIMEOUT)
        data = rush.fetch_finished_tasks()
        assert sorted(data["y"]) == [10 + i for i in range(6)]
        assert set(data["worker_id"]) <= set(ids)
        assert dask.delayed(sum)([1, 2, 3]).compute(scheduler=rush) == 6
        # A generic worker has no function of its own: a task pushed without fun= fails.
        (bare,) = rush.push_tasks([{"x1": 1, "x2": 2}])
        rush.wait_for_tasks([bare], timeout=TIMEOUT)
        assert "no function" in rush.fetch_failed_tasks()["error"].iloc[0]

        out = run_cli("status", "--network", rush.network_id, url=redis_url)
        assert out.returncode == 0, out.stderr
        for wid in ids:
            assert any(line.split()[:2] == [wid, "running"] for line in out.stdout.splitlines())
        assert "workers: 2 running" in out.stdout
        assert "0 queued, 0 queued priority, 0 running, 6 finished, 1 failed" in out.stdout

        stopped = run_cli("stop", "--network", rush.network_id, url=redis_url)
        assert stopped.returncode == 0, stopped.stderr
        assert "asked 2 workers to terminate" in stopped.stdout
        assert cli.proc.wait(TIMEOUT) == 0
        assert sorted(rush.terminated_worker_ids) == sorted(ids)
        wait_until(
            lambda: all(f"worker {wid} exited with code 0 (terminated)\n" in cli.stdout for wid in ids),
            TIMEOUT,
            "exit lines",
        )
        out = run_cli("status", "--network", rush.network_id, url=redis_url)
        assert "workers: 2 terminated" in out.stdout and "2 stopped workers not shown" in out.stdout
        out = run_cli("status", "--network", rush.network_id, "--all", url=redis_url)
        assert sum(" terminated " in line for line in out.stdout.splitlines()) == 2


def test_fun_and_resources_then_stop_kill(rush, redis_url):
    with cli_workers(rush, redis_url, "--fun", "test_cli:wait_for_file", "--resources", "GPU=1,MEM=0.5", n=1) as (
        cli,
        (wid,),
    ):
        info = rush.worker_info
        assert info["resources"].iloc[0] == {"GPU": 1, "MEM": 0.5}
        keys = rush.push_tasks([{"x": 3}])  # no fun=: the worker's --fun runs it
        rush.wait_for_tasks(keys, timeout=TIMEOUT)
        assert rush.fetch_finished_tasks()["y"].tolist() == [3]
        out = run_cli("status", "--network", rush.network_id, url=redis_url)
        assert "GPU=1,MEM=0.5" in out.stdout and str(info["pid"].iloc[0]) in out.stdout

        rush.push_tasks([{"x": 4, "path": "/nonexistent/never"}])
        wait_until(lambda: rush.n_running_tasks == 1, TIMEOUT, "task running")
        killed = run_cli("stop", "--network", rush.network_id, "--worker", wid, "--kill", url=redis_url)
        assert killed.returncode == 0, killed.stderr
        assert f"killed 1 workers (their running tasks failed): {wid}" in killed.stdout
        assert cli.proc.wait(TIMEOUT) == 0  # killed by the user: not a failure of the CLI
        assert rush.killed_worker_ids == [wid]
        assert "killed" in rush.fetch_failed_tasks()["error"].iloc[0]
        assert not pid_alive(int(info["pid"].iloc[0]))


def test_sigterm_to_the_cli_lets_the_running_task_finish(rush, redis_url, tmp_path):
    release = tmp_path / "release"
    with cli_workers(rush, redis_url, "--fun", "test_cli:wait_for_file") as (cli, (wid,)):
        (long_key,) = rush.push_tasks([{"x": 1, "path": str(release)}])
        wait_until(lambda: rush.n_running_tasks == 1, TIMEOUT, "task running")
        rush.push_tasks([{"x": i} for i in range(2, 6)])
        cli.proc.send_signal(signal.SIGTERM)
        cli.wait_for(lambda line: line.startswith("stopping the workers"))
        wait_until(lambda: rush.client.hget(rush.keys.worker(wid), "terminate") == b"1", TIMEOUT, "terminate order")
        assert cli.proc.poll() is None  # still waiting for the running task
        release.touch()
        assert cli.proc.wait(TIMEOUT) == 0
        assert rush.terminated_worker_ids == [wid]
        assert long_key in rush.fetch_finished_tasks()["keys"].tolist()
        # It took no new task; one may have been prefetched while the long one started.
        assert rush.n_queued_tasks >= 3 and rush.n_finished_tasks + rush.n_queued_tasks == 5


def test_a_sigtermed_worker_process_takes_no_new_task(rush, redis_url, tmp_path):
    release = tmp_path / "release"
    with cli_workers(rush, redis_url, "--fun", "test_cli:wait_for_file") as (cli, (wid,)):
        rush.push_tasks([{"x": 1, "path": str(release)}])
        wait_until(lambda: rush.n_running_tasks == 1, TIMEOUT, "task running")
        rush.push_tasks([{"x": i} for i in range(2, 6)])
        os.kill(int(rush.worker_info["pid"].iloc[0]), signal.SIGTERM)  # the worker alone, no Redis order
        time.sleep(0.5)  # let the signal land while the task still runs
        release.touch()
        assert cli.proc.wait(TIMEOUT) == 0
        assert rush.terminated_worker_ids == [wid]
        # Before, a SIGTERMed worker emptied the queue first. At most one task was prefetched
        # while the long one started (and one popped if the signal landed late).
        assert rush.n_queued_tasks >= 2 and rush.n_finished_tasks + rush.n_queued_tasks == 5


def test_second_signal_kills_the_workers(rush, redis_url):
    with cli_workers(rush, redis_url, "--fun", "test_cli:wait_for_file") as (cli, (wid,)):
        rush.push_tasks([{"x": 1, "path": "/nonexistent/never"}])
        wait_until(lambda: rush.n_running_tasks == 1, TIMEOUT, "task running")
        cli.proc.send_signal(signal.SIGINT)
        cli.wait_for(lambda line: line.startswith("stopping the workers"))
        cli.proc.send_signal(signal.SIGINT)
        cli.wait_for(lambda line: line == "killing the workers")
        assert cli.proc.wait(TIMEOUT) == 0
        assert rush.killed_worker_ids == [wid]
        assert rush.n_failed_tasks == 1


def test_a_crashed_worker_is_reported_lost_and_the_cli_fails(rush, redis_url):
    with cli_workers(rush, redis_url, "--fun", "test_cli:wait_for_file") as (cli, (wid,)):
        rush.push_tasks([{"x": 1, "path": "/nonexistent/never"}], max_lost=0)
        wait_until(lambda: rush.n_running_tasks == 1, TIMEOUT, "task running")
        os.kill(int(rush.worker_info["pid"].iloc[0]), signal.SIGKILL)
        cli.wait_for(lambda line: line == f"worker {wid} exited with code -9 (lost)")
        assert cli.proc.wait(TIMEOUT) == 1
        assert "last lines of" in "".join(cli.stderr)
        assert rush.lost_worker_ids == [wid]
        assert rush.n_failed_tasks == 1  # lost with its worker, max_lost=0: failed at once


def test_worker_from_a_stored_start_id(rush, redis_url):
    command = rush.worker_script(funcs.with_constants, scale=3)
    start_id = command.split("--start-id ")[1]
    with cli_workers(rush, redis_url, "--start-id", start_id):
        keys = rush.push_tasks([{"x": 2}])
        rush.wait_for_tasks(keys, timeout=TIMEOUT)
        assert rush.fetch_finished_tasks()["y"].tolist() == [6]


def test_start_id_errors_write_nothing(rush, redis_url):
    rush.worker_script(funcs.add)
    before = network_keys(redis_url, rush)
    out = run_cli(
        "worker",
        "--network",
        rush.network_id,
        "--start-id",
        "abc",
        "--fun",
        "funcs:add",
        "--resources",
        "GPU=1",
        url=redis_url,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == "Error: --start-id uses the stored configuration; drop --fun, --resources"
    out = run_cli("worker", "--network", rush.network_id, "--start-id", "nosuchid", url=redis_url)
    assert out.returncode == 2 and "no worker configuration 'nosuchid'" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert network_keys(redis_url, rush) == before and rush.n_workers == 0


# ------------------------------------------------------------------------------ logs
def test_logs_prints_filters_and_follows(rush, redis_url):
    with cli_workers(rush, redis_url, "--heartbeat-period", "1", n=2) as (_, ids):
        keys = rush.push_tasks([{"x": 7}], fun=funcs.log_something)
        rush.wait_for_tasks(keys, timeout=TIMEOUT)
        # Idle workers ship their log lines with the next heartbeat.
        wait_until(
            lambda: rush.read_log()["message"].str.contains("hello from task 7|started").sum() == 3,
            TIMEOUT,
            "log lines in Redis",
        )
        ran = rush.fetch_finished_tasks()["worker_id"].iloc[0]
        other = next(w for w in ids if w != ran)

        out = run_cli("logs", "--network", rush.network_id, url=redis_url)
        assert out.returncode == 0, out.stderr
        assert any(line.endswith(f"{ran} WARNING user.code: hello from task 7") for line in out.stdout.splitlines())
        assert f"worker {other} started" in out.stdout

        out = run_cli("logs", "--network", rush.network_id, "--worker", other, url=redis_url)
        assert f"worker {other} started" in out.stdout and "hello from task" not in out.stdout
        out = run_cli("logs", "--network", rush.network_id, "--tail", "1", "--worker", ran, url=redis_url)
        assert out.stdout.strip().endswith("hello from task 7")

        follower = Cli("logs", "--network", rush.network_id, "--follow", url=redis_url)
        try:
            follower.wait_for(lambda line: line.endswith("hello from task 7"))
            keys = rush.push_tasks([{"x": 8}], fun=funcs.log_something)
            rush.wait_for_tasks(keys, timeout=TIMEOUT)
            follower.wait_for(lambda line: line.endswith("hello from task 8"))
            assert follower.stop(signal.SIGINT) == 0
            assert sum("hello from task" in line for line in follower.stdout) == 2
        finally:
            follower.close()


def test_log_reader_keeps_up_when_the_log_is_trimmed(rush):
    key = rush.keys.log("w1")

    def entry(i: int) -> str:
        return json.dumps({"time": 1000 + i, "level": "INFO", "logger": "t", "message": f"line {i}"})

    rush.client.rpush(key, *[entry(i) for i in range(5)])
    reader = LogReader(rush, ["w1"])
    assert [r["message"] for r in reader.read()] == [f"line {i}" for i in range(5)]
    assert reader.read() == []
    rush.client.rpush(key, *[entry(i) for i in range(5, 8)])
    rush.client.ltrim(key, -4, -1)  # what a full log does: the oldest lines go
    assert [r["message"] for r in reader.read()] == ["line 5", "line 6", "line 7"]
    rush.client.rpush(key, entry(8))
    assert [r["message"] for r in reader.read()] == ["line 8"]


def test_status_watch_refreshes_until_ctrl_c(rush, redis_url):
    rush.push_tasks([{"x": 1}])
    watcher = Cli("status", "--network", rush.network_id, "--watch", "0.2", url=redis_url)
    try:
        for _ in range(2):
            watcher.wait_for(lambda line: line.startswith("tasks: 1 queued"))
        assert watcher.stop(signal.SIGINT) == 0
        assert not any("Traceback" in line for line in watcher.stderr)
    finally:
        watcher.close()


# ---------------------------------------------------------------------------- server
def _export_url(line: str) -> str:
    name, _, url = shlex.split(line)[1].partition("=")
    assert name == "RUSH_REDIS_URL"
    return url


def test_server_prints_a_password_url_and_stops_on_sigterm(network_id):
    server = Cli("server", "--port", "0")
    try:
        url = _export_url(server.wait_for(lambda line: line.startswith("export ")))
        parts = urlsplit(url)
        assert parts.hostname == "127.0.0.1" and len(parts.password) >= 20
        with Rush(network_id, url=url) as client:
            client.push_tasks([{"x": 1}])
            assert client.n_tasks == 1
            client.reset()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host=parts.hostname, port=parts.port).ping()
        with pytest.raises(RedisUnavailableError, match="needs a password"):
            Rush(network_id, url=f"redis://{parts.hostname}:{parts.port}/0")
        processes = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True).stdout
        assert parts.password not in processes
        assert server.stop(signal.SIGTERM) == 0
        assert "".join(server.stdout).count(parts.password) == 1
        assert parts.password not in "".join(server.stderr)
        assert "Redis server stopped" in "".join(server.stderr)
        with pytest.raises(OSError):
            socket.create_connection((parts.hostname, parts.port), timeout=5).close()
    finally:
        server.close()


def test_server_dir_keeps_the_data_across_restarts(tmp_path):
    env = cli_env(RUSH_REDIS_PASSWORD="pw-from-the-environment")
    for round_ in range(2):
        server = Cli("server", "--port", "0", "--dir", str(tmp_path / "data"), env=env)
        try:
            url = _export_url(server.wait_for(lambda line: line.startswith("export ")))
            assert urlsplit(url).password == "pw-from-the-environment"
            client = redis.Redis.from_url(url)
            if round_ == 0:
                client.set("kept", "yes")
            else:
                assert client.get("kept") == b"yes"
            client.close()
            assert server.stop(signal.SIGTERM) == 0
            assert f"data kept in {tmp_path / 'data'}" in "".join(server.stderr)
        finally:
            server.close()


def test_server_on_a_busy_port_says_so():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = run_cli("server", "--port", str(port))
    assert out.returncode == 1
    assert out.stderr.startswith(f"Error: cannot listen on 127.0.0.1:{port} (Address already in use)")
    assert "choose another --port" in out.stderr and len(out.stderr.strip().splitlines()) == 1


# -------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("spec", ["GPU", "GPU=x", "=1", "GPU=-1", "GPU=1,GPU=2", "GPU=inf", "GPU=1,"])
def test_bad_resources_parse_errors(spec):
    result = CliRunner().invoke(
        main, ["worker", "--network", "n", "--url", "redis://127.0.0.1:1/0", "--resources", spec]
    )
    assert result.exit_code == 2
    assert result.output.startswith(f"Error: bad --resources {spec!r}")
    assert len(result.output.strip().splitlines()) == 1


def test_bad_resources_exit_2_and_write_nothing(rush, redis_url):
    out = run_cli("worker", "--network", rush.network_id, "--resources", "GPU:1", url=redis_url)
    assert out.returncode == 2
    assert out.stderr == (
        "Error: bad --resources 'GPU:1': give NAME=AMOUNT pairs separated by commas, e.g. --resources GPU=1,MEM=4\n"
    )
    assert network_keys(redis_url, rush) == set()


def test_parse_resources_and_redaction():
    assert parse_resources("GPU=1, MEM=4.5") == {"GPU": 1, "MEM": 4.5}
    assert parse_resources(None) is None
    assert (
        redact_text("at redis://:s3cret@h:1/0 and unix:///s.sock?password=x")
        == "at redis://:***@h:1/0 and unix:///s.sock?password=***"
    )
    line = format_log_record(
        {"time": 0.5, "worker_id": "w", "level": "ERROR", "logger": "l", "message": "lost redis://u:pw@h:1/0"}
    )
    assert line == "1970-01-01 00:00:00.500 w ERROR   l: lost redis://u:***@h:1/0"


@pytest.mark.parametrize("command", ["worker", "status", "logs", "stop"])
def test_unreachable_redis_is_one_line_without_the_password(command):
    out = run_cli(command, "--network", "n", url="redis://:hunter2@127.0.0.1:1/0")
    assert out.returncode == 1
    assert out.stderr == (
        "Error: cannot reach Redis at redis://:***@127.0.0.1:1/0: start a server there "
        "(rush-dask server) or pass the right --url / $RUSH_REDIS_URL\n"
    )
    assert out.stdout == ""


def test_no_url():
    out = run_cli("status", "--network", "n")
    assert out.returncode == 2
    assert out.stderr == (
        "Error: no Redis URL: pass --url redis://HOST:PORT/0 or set $RUSH_REDIS_URL (rush-dask server starts one)\n"
    )


def test_wrong_password_says_so():
    from rush_dask.core.server import RedisServer

    server = RedisServer(tcp=True, password="right-one").start()
    try:
        out = run_cli("status", "--network", "n", url=f"redis://:wrong@127.0.0.1:{server.port}/0")
        assert out.returncode == 1 and "refused the credentials" in out.stderr
        assert "wrong" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    finally:
        server.stop()


@pytest.mark.parametrize("command", ["status", "logs", "stop"])
def test_unknown_network(command, redis_url, network_id):
    out = run_cli(command, "--network", network_id, url=redis_url)
    assert out.returncode == 1
    assert out.stderr.startswith(f"Error: unknown network {network_id!r} at ")
    assert "check --network and --url" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_unknown_worker_id(rush, redis_url):
    rush.push_tasks([{"x": 1}])
    for command in ("stop", "logs"):
        out = run_cli(command, "--network", rush.network_id, "--worker", "nobody", url=redis_url)
        assert out.returncode == 1 and "unknown worker id(s) nobody" in out.stderr


@pytest.mark.parametrize(
    "spec, match",
    [
        ("funcs", "give MODULE:FUNCTION"),
        ("no_such_module_here:f", "cannot import 'no_such_module_here'"),
        ("funcs:no_such_function", "has no function 'no_such_function'"),
    ],
)
def test_bad_fun(spec, match):
    result = CliRunner().invoke(main, ["worker", "--network", "n", "--url", "redis://127.0.0.1:1/0", "--fun", spec])
    assert result.exit_code == 2 and match in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_every_command_has_help():
    for command in ("worker", "status", "logs", "stop", "server"):
        result = CliRunner().invoke(main, [command, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output
