"""Fault tolerance with real signals: no task is lost, none is recorded twice."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import conftest
import funcs

from rush_dask import Rush
from rush_dask.core.heartbeat import EXIT_KILLED, EXIT_LOST, EXIT_REDIS_GONE
from rush_dask.core.server import RedisServer

TIMEOUT = 90
wait_until = functools.partial(conftest.wait_until, timeout=TIMEOUT)
FAST = {"heartbeat_period": 0.2, "heartbeat_expire": 1.0}


def finished_records(rush) -> list[str]:
    return [k.decode() for k in rush.client.lrange(rush.keys.finished, 0, -1)]


def assert_each_finished_once(rush, keys) -> None:
    records = finished_records(rush)
    duplicates = [k for k, n in Counter(records).items() if n > 1]
    assert duplicates == [], f"tasks recorded twice: {duplicates}"
    assert set(records) == set(keys), f"missing: {set(keys) - set(records)}"
    assert rush.n_failed_tasks == 0


def task_held_by(rush, worker_id) -> str | None:
    held = rush.client.smembers(rush.keys.held(worker_id))
    return next(iter(held)).decode() if held else None


def test_sigkill_mid_task_loses_nothing(rush):
    victim, survivor = rush.start_workers(funcs.sleep_then, n_workers=2, **FAST)
    rush.wait_for_workers(2, timeout=TIMEOUT)
    keys = rush.push_tasks([{"x": i, "duration": 0.2} for i in range(20)])
    wait_until(lambda: task_held_by(rush, victim) is not None, what="victim running a task")
    interrupted = task_held_by(rush, victim)
    os.kill(rush.local_workers[victim].process.pid, signal.SIGKILL)

    rush.wait_for_tasks(keys, timeout=TIMEOUT)
    assert_each_finished_once(rush, keys)
    assert rush.lost_worker_ids == [victim]
    data = rush.fetch_finished_tasks().set_index("keys")
    assert data.loc[interrupted, "worker_id"] == survivor
    assert data.loc[interrupted, "attempts"] == 2
    assert int(rush.client.hget(rush.keys.task(interrupted), "n_lost")) == 1


def test_sigstop_past_heartbeat_then_sigcont_records_nothing_twice(rush):
    frozen, survivor = rush.start_workers(funcs.sleep_then, n_workers=2, **FAST)
    rush.wait_for_workers(2, timeout=TIMEOUT)
    keys = rush.push_tasks([{"x": i, "duration": 0.8} for i in range(6)])
    wait_until(lambda: task_held_by(rush, frozen) is not None, what="worker running a task")
    held = task_held_by(rush, frozen)
    process = rush.local_workers[frozen].process
    os.kill(process.pid, signal.SIGSTOP)
    try:
        rush.wait_for_tasks(keys, timeout=TIMEOUT)  # detects the lost worker while waiting
        assert rush.lost_worker_ids == [frozen]
    finally:
        os.kill(process.pid, signal.SIGCONT)
    assert process.wait(30) in (EXIT_LOST, 0)  # it learns it is lost and exits
    assert_each_finished_once(rush, keys)
    assert rush.fetch_finished_tasks().set_index("keys").loc[held, "worker_id"] == survivor
    assert rush.lost_worker_ids == [frozen]


def test_idle_workers_requeue_tasks_of_a_lost_worker_without_a_controller(rush):
    victim, survivor = rush.start_workers(funcs.sleep_then, n_workers=2, **FAST)
    rush.wait_for_workers(2, timeout=TIMEOUT)
    keys = rush.push_tasks([{"x": i, "duration": 0.1} for i in range(6)])
    wait_until(lambda: task_held_by(rush, victim) is not None)
    os.kill(rush.local_workers[victim].process.pid, signal.SIGKILL)
    rush.wait_for_tasks(keys, timeout=TIMEOUT, detect_lost_workers=False)
    assert_each_finished_once(rush, keys)
    assert rush.lost_worker_ids == [victim]


def test_task_lost_too_often_fails_with_a_readable_reason(rush):
    rush.start_workers(funcs.kill_self, n_workers=3, **FAST)
    rush.wait_for_workers(3, timeout=TIMEOUT)
    (key,) = rush.push_tasks([{"x": 1}], max_lost=1)
    rush.wait_for_tasks([key], timeout=TIMEOUT)
    failed = rush.fetch_failed_tasks()
    assert failed["keys"].tolist() == [key]
    assert "lost" in failed["error"].iloc[0] and "attempt 2" in failed["error"].iloc[0]
    assert rush.n_lost_workers == 2 and rush.n_running_workers == 1


def test_kill_fails_the_running_task(rush):
    (wid,) = rush.start_workers(funcs.sleep_then, n_workers=1)
    keys = rush.push_tasks([{"x": 1, "duration": 60}])
    wait_until(lambda: rush.n_running_tasks == 1)
    rush.stop_workers(type="kill")
    assert rush.killed_worker_ids == [wid]
    failed = rush.fetch_failed_tasks()
    assert failed["keys"].tolist() == keys
    assert "worker killed" in failed["error"].iloc[0]
    assert rush.local_workers[wid].process.poll() == -signal.SIGKILL


def test_terminate_lets_the_running_task_finish(rush):
    (wid,) = rush.start_workers(funcs.sleep_then, n_workers=1)
    keys = rush.push_tasks([{"x": 1, "duration": 0.5}, {"x": 2, "duration": 0.5}])
    wait_until(lambda: rush.n_running_tasks == 1)
    rush.stop_workers(type="terminate")
    assert rush.local_workers[wid].process.wait(30) == 0
    assert rush.terminated_worker_ids == [wid]
    assert rush.fetch_finished_tasks()["keys"].tolist() == keys[:1]
    assert rush.n_queued_tasks == 1  # the second task waits for another worker


def test_kill_reaches_a_worker_through_redis(rush):
    """A worker this controller cannot signal (remote) hard-exits at its next heartbeat."""
    (wid,) = rush.start_workers(funcs.sleep_then, n_workers=1, **FAST)
    keys = rush.push_tasks([{"x": 1, "duration": 60}])
    wait_until(lambda: rush.n_running_tasks == 1)
    rush.scripts.mark_workers([wid], state="killed", reason="worker killed by the user")
    assert rush.local_workers[wid].process.wait(10) == EXIT_KILLED
    assert "worker killed" in rush.fetch_failed_tasks()["error"].iloc[0]
    assert keys == rush.fetch_failed_tasks()["keys"].tolist()


def test_stop_all_workers(rush):
    ids = rush.start_workers(funcs.add, n_workers=3)
    rush.wait_for_workers(3, timeout=TIMEOUT)
    assert sorted(rush.stop_workers("terminate")) == sorted(ids)
    wait_until(lambda: rush.n_terminated_workers == 3)
    more = rush.start_workers(funcs.add, n_workers=2)
    rush.wait_for_workers(worker_ids=more, timeout=TIMEOUT)
    assert sorted(rush.stop_workers("kill")) == sorted(more)
    assert rush.n_killed_workers == 2 and rush.n_running_workers == 0


def test_retries(rush, tmp_path):
    rush.start_workers(funcs.fail_until, n_workers=1, counter_dir=str(tmp_path), succeed_on=3)
    ok = rush.push_tasks([{"x": 1}], max_retries=2)
    short = rush.push_tasks([{"x": 2}], max_retries=1)
    rush.wait_for_tasks(ok + short, timeout=TIMEOUT)
    finished = rush.fetch_finished_tasks()
    assert finished["keys"].tolist() == ok
    assert finished["attempts"].tolist() == [3] and finished["attempt_seen"].tolist() == [3]
    failed = rush.fetch_failed_tasks()
    assert failed["keys"].tolist() == short and failed["attempts"].tolist() == [2]
    assert failed["error"].iloc[0] == "RuntimeError: attempt 2 fails"


def test_timeout_interrupts_the_task_and_the_worker_goes_on(rush):
    (wid,) = rush.start_workers(funcs.sleep_then, n_workers=1)
    slow = rush.push_tasks([{"x": 1, "duration": 30}], timeout=0.5)
    fast = rush.push_tasks([{"x": 2, "duration": 0}])
    rush.wait_for_tasks(slow + fast, timeout=TIMEOUT)
    failed = rush.fetch_failed_tasks()
    assert failed["error"].iloc[0] == "TaskTimeoutError: task exceeded its timeout of 0.5 s"
    assert rush.fetch_finished_tasks()["keys"].tolist() == fast
    assert rush.running_worker_ids == [wid]


def _random_results(redis_url, n_workers, seed) -> list[tuple]:
    rush = Rush(f"seeds-{os.urandom(4).hex()}", url=redis_url, seed=seed)
    try:
        rush.start_workers(funcs.randoms, n_workers=n_workers)
        keys = rush.push_tasks([{"x": i} for i in range(12)])
        rush.wait_for_tasks(keys, timeout=TIMEOUT)
        data = rush.fetch_finished_tasks().set_index("keys").loc[keys]
        return list(zip(data["py"], data["np"]))
    finally:
        rush.reset()
        rush.close()


def test_same_seed_same_results_whatever_the_worker_count(redis_url):
    one = _random_results(redis_url, 1, seed=7)
    three = _random_results(redis_url, 3, seed=7)
    other = _random_results(redis_url, 1, seed=8)
    assert one == three
    assert len(set(one)) == 12  # every task has its own stream
    assert one != other


def test_seed_survives_retries(redis_url, tmp_path):
    def run(succeed_on, counter_dir):
        rush = Rush(f"retry-seed-{os.urandom(4).hex()}", url=redis_url, seed=3)
        try:
            rush.start_workers(
                funcs.random_then_fail_until, n_workers=1, counter_dir=str(counter_dir), succeed_on=succeed_on
            )
            keys = rush.push_tasks([{"x": i} for i in range(3)], max_retries=2)
            rush.wait_for_tasks(keys, timeout=TIMEOUT)
            data = rush.fetch_finished_tasks().set_index("keys").loc[keys]
            return data["y"].tolist(), data["attempts"].tolist()
        finally:
            rush.reset()
            rush.close()

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first_try, attempts = run(1, tmp_path / "a")
    third_try, retried = run(3, tmp_path / "b")
    assert attempts == [1, 1, 1] and retried == [3, 3, 3]
    assert first_try == third_try


def test_controller_crash_loses_nothing(redis_url, network_id, tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import funcs
        from rush_dask import Rush
        rush = Rush({network_id!r}, url={redis_url!r})
        rush.start_workers(funcs.sleep_then, n_workers=2)
        rush.wait_for_workers(2, timeout=60)
        keys = rush.push_tasks([{{"x": i, "duration": 0.05}} for i in range(30)])
        print("PUSHED", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == -signal.SIGKILL and "PUSHED" in out.stdout, out.stderr
    rush = Rush(network_id, url=redis_url)
    try:
        assert rush.n_tasks == 30
        assert rush.n_running_workers == 2
        rush.wait_for_tasks(timeout=TIMEOUT)
        assert rush.n_finished_tasks == 30
        assert_each_finished_once(rush, rush.fetch_tasks()["keys"].tolist())
    finally:
        rush.reset()
    wait_until(lambda: rush.n_running_workers == 0)


def test_redis_restart_with_aof_loses_and_doubles_nothing(tmp_path):
    server = RedisServer(str(tmp_path), tcp=True, appendonly=True).start()
    rush = Rush("restart", url=server.url)
    try:
        rush.start_workers(
            funcs.sleep_then, n_workers=2, heartbeat_period=0.5, heartbeat_expire=10, redis_retry_timeout=60
        )
        rush.wait_for_workers(2, timeout=TIMEOUT)
        keys = rush.push_tasks([{"x": i, "duration": 0.01} for i in range(300)])
        wait_until(lambda: rush.n_finished_tasks >= 50)
        server.restart()
        rush.wait_for_tasks(keys, timeout=TIMEOUT)
        assert_each_finished_once(rush, keys)
        assert rush.n_running_workers == 2
    finally:
        rush.reset()
        rush.close()
        server.stop()


def test_worker_gives_up_when_redis_stays_away(tmp_path):
    server = RedisServer(str(tmp_path), tcp=True).start()
    rush = Rush("gone", url=server.url)
    try:
        (wid,) = rush.start_workers(funcs.add, n_workers=1, redis_retry_timeout=1.0, **FAST)
        rush.wait_for_workers(1, timeout=TIMEOUT)
        server.stop(cleanup=False)
        proc = rush.local_workers[wid]
        assert proc.process.wait(30) == EXIT_REDIS_GONE
        assert "unreachable" in proc.stderr_path.read_text()
    finally:
        rush.close()
        server.stop()


def test_controller_survives_a_redis_restart_during_a_compute(tmp_path):
    """The controller retries through the outage; the graph's result is exact and nothing is left."""
    import threading

    import dask
    import dask_funcs

    server = RedisServer(str(tmp_path), tcp=True, appendonly=True).start()
    rush = Rush("restart-graph", url=server.url)
    outcome: dict = {}

    def compute():
        try:
            leaves = [dask.delayed(dask_funcs.wait_for_file)(i, str(tmp_path / "gate")) for i in range(4)]
            outcome["value"] = dask.delayed(sum)(leaves).compute(scheduler=rush)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = exc

    try:
        rush.start_workers(n_workers=2, heartbeat_period=0.5, heartbeat_expire=10, redis_retry_timeout=60)
        rush.wait_for_workers(2, timeout=TIMEOUT)
        thread = threading.Thread(target=compute)
        thread.start()
        wait_until(lambda: rush.n_running_tasks == 2, what="the compute under way")
        server.restart()
        (tmp_path / "gate").write_text("open")
        thread.join(TIMEOUT)
        assert outcome == {"value": 1 + 2 + 3 + 4}
        left = [k for k in rush.client.scan_iter(match=rush.keys.pattern) if b"graph:" in k or b"gdone:" in k]
        assert left == []
    finally:
        rush.reset()
        rush.close()
        server.stop()


def test_a_repeated_push_call_applies_once(rush):
    """A push whose reply was lost is sent again: it must not requeue or list its tasks twice."""
    from rush_dask.core.serialize import dumps

    (wid,) = rush.start_workers(funcs.sleep_then, n_workers=1)
    args = [rush.keys.prefix, 1, "", 0, "", "", 0, 3, "repeated-key", dumps({"x": 1, "duration": 60}), b"", ""]
    rush.scripts.push(args=args)
    wait_until(lambda: rush.n_running_tasks == 1)
    rush.scripts.push(args=args)  # the same call again, while the task runs
    assert rush.n_queued_tasks == 0
    assert rush.client.lrange(rush.keys.all_tasks, 0, -1) == [b"repeated-key"]
    assert rush.client.hget(rush.keys.task("repeated-key"), "state") == b"running"
