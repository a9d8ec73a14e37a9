"""The Rush API on a real Redis with real worker processes."""

from __future__ import annotations

import functools
import signal
import sys
from pathlib import Path

import conftest
import funcs
import pandas as pd
import pytest

from rush_dask import Rush

TIMEOUT = 60
wait_until = functools.partial(conftest.wait_until, timeout=TIMEOUT)


def test_seed_example(rush):
    rush.start_workers(funcs.add, n_workers=2)
    keys = rush.push_tasks([{"x1": 3, "x2": 5}, {"x1": 4, "x2": 6}])
    rush.wait_for_tasks(keys, timeout=TIMEOUT)
    assert rush.n_finished_tasks == 2
    data = rush.data
    assert {"x1", "x2", "y", "pid", "worker_id", "state", "keys"} <= set(data.columns)
    assert sorted(data["y"]) == [8, 10]
    assert set(data["state"]) == {"finished"}
    assert set(data["keys"]) == set(keys)
    assert data["pid"].notna().all()

    keys2 = rush.push_tasks([{"x1": 1, "x2": 1}, {"x1": 2, "x2": 2}])
    rush.wait_for_tasks(keys2, timeout=TIMEOUT)
    assert len(rush.data) == 4
    rush.wait_for_workers(2, timeout=TIMEOUT)  # one worker may have done it all
    assert "2 running workers" in repr(rush)
    assert "4 finished" in repr(rush)
    assert "\n" not in repr(rush)
    assert str(rush).splitlines() == [
        "<Rush>",
        f"* Network: {rush.network_id}",
        "* Running Workers: 2",
        "* Queued Tasks: 0",
        "* Queued Priority Tasks: 0",
        "* Running Tasks: 0",
        "* Finished Tasks: 4",
        "* Failed Tasks: 0",
    ]


def test_worker_states_after_terminate_and_kill(rush):
    first, second = rush.start_workers(funcs.add, n_workers=2)
    rush.wait_for_workers(2, timeout=TIMEOUT)
    assert rush.running_worker_ids == sorted([first, second])
    assert rush.n_running_workers == 2

    rush.stop_workers(type="terminate", worker_ids=[first])
    wait_until(lambda: rush.terminated_worker_ids == [first])
    rush.stop_workers(type="kill", worker_ids=[second])
    assert rush.killed_worker_ids == [second]
    assert rush.running_worker_ids == []
    assert (rush.n_terminated_workers, rush.n_killed_workers, rush.n_lost_workers) == (1, 1, 0)
    info = rush.worker_info.set_index("worker_id")
    assert info.loc[first, "state"] == "terminated"
    assert info.loc[second, "state"] == "killed"
    assert rush.n_workers == 2
    # The state changes in Redis just before the process exits: wait for the exit itself.
    assert rush.local_workers[first].process.wait(TIMEOUT) == 0
    assert not rush.local_workers[first].alive and not rush.local_workers[second].alive


def test_sigterm_finishes_the_running_task_and_leaves_the_queue_alone(rush):
    (wid,) = rush.start_workers(funcs.sleep_then, n_workers=1)
    rush.wait_for_workers(1, timeout=TIMEOUT)
    keys = rush.push_tasks([{"x": float(i), "duration": 0.3} for i in range(20)])
    # (running counts the task being run and the one prefetched while it runs)
    wait_until(lambda: rush.n_running_tasks >= 1, what="a running task")
    rush.local_workers[wid].signal(signal.SIGTERM)
    assert rush.local_workers[wid].process.wait(TIMEOUT) == 0
    assert rush.terminated_worker_ids == [wid]
    # What it held (the running task, at most one prefetched) finished; the rest is still queued.
    assert rush.n_running_tasks == 0 and 1 <= rush.n_finished_tasks <= 3
    assert rush.n_queued_tasks == 20 - rush.n_finished_tasks
    assert sorted(rush.fetch_queued_tasks()["keys"]) == sorted(set(keys) - set(rush.fetch_finished_tasks()["keys"]))


def test_task_states_through_a_run(rush):
    keys = rush.push_tasks([{"x": 0.0, "duration": 0.5}, {"x": 1.0, "duration": 0.0}])
    assert (rush.n_queued_tasks, rush.n_running_tasks, rush.n_finished_tasks) == (2, 0, 0)
    queued = rush.fetch_queued_tasks()
    assert list(queued["keys"]) == keys  # FIFO order
    assert set(queued["state"]) == {"queued"}

    rush.start_workers(funcs.sleep_then, n_workers=1)
    wait_until(lambda: rush.n_running_tasks == 1)
    running = rush.fetch_running_tasks()
    assert list(running["keys"]) == [keys[0]]
    assert running["started_at"].notna().all()
    assert running["state"].tolist() == ["running"]

    rush.wait_for_tasks(keys, timeout=TIMEOUT)
    finished = rush.fetch_finished_tasks()
    assert list(finished["keys"]) == keys
    assert (finished["finished_at"] >= finished["started_at"]).all()
    assert (finished["started_at"] >= finished["queued_at"]).all()
    assert rush.n_tasks == 2 and rush.n_queued_tasks == 0 and rush.n_running_tasks == 0


def test_outputs_extra_and_constants(rush):
    rush.start_workers(funcs.with_constants, n_workers=1, scale=10, offset=1)
    keys = rush.push_tasks([{"x": 1}, {"x": 2}], extra=[{"tag": "a"}, {"tag": "b"}])
    rush.wait_for_tasks(keys, timeout=TIMEOUT)
    data = rush.fetch_finished_tasks().set_index("keys").loc[keys]
    assert data["y"].tolist() == [11, 21]
    assert data["tag"].tolist() == ["a", "b"]  # stored, not passed: with_constants takes no tag


def test_non_dict_result_is_column_y(rush):
    rush.start_workers(funcs.square, n_workers=1)
    keys = rush.push_tasks([{"x": 3}])
    rush.wait_for_tasks(keys, timeout=TIMEOUT)
    assert rush.fetch_finished_tasks()["y"].tolist() == [9]


def test_failed_task_keeps_error_and_traceback(rush):
    rush.start_workers(funcs.fail_if_negative, n_workers=1)
    keys = rush.push_tasks([{"x": -1}, {"x": 2}])
    rush.wait_for_tasks(keys, timeout=TIMEOUT)
    failed = rush.fetch_failed_tasks()
    assert failed["keys"].tolist() == [keys[0]]
    assert failed["state"].tolist() == ["failed"]
    assert failed["error"].iloc[0] == "ValueError: negative input -1"
    traceback = rush.client.hget(rush.keys.task(keys[0]), "traceback").decode()
    assert "fail_if_negative" in traceback and "ValueError" in traceback
    assert rush.n_failed_tasks == 1 and rush.n_finished_tasks == 1


def test_unpicklable_result_fails_the_task_not_the_worker(rush):
    rush.start_workers(funcs.unpicklable_result, n_workers=1)
    keys = rush.push_tasks([{"x": 1}])
    rush.wait_for_tasks(keys, timeout=TIMEOUT)
    assert "cannot serialize" in rush.fetch_failed_tasks()["error"].iloc[0]
    assert rush.n_running_workers == 1


def test_fetch_finished_tasks_is_incremental(rush):
    rush.start_workers(funcs.add, n_workers=1)
    keys = rush.push_tasks([{"x1": i, "x2": 0} for i in range(5)])
    rush.wait_for_tasks(keys, timeout=TIMEOUT)
    first = rush.fetch_finished_tasks()
    assert len(first) == 5 and rush._finished_offset == 5
    more = rush.push_tasks([{"x1": i, "x2": 0} for i in range(5, 8)])
    rush.wait_for_tasks(more, timeout=TIMEOUT)
    # Only the three new tasks are read from Redis; the first five come from the cache.
    rush.client.delete(rush.keys.task(keys[0]))
    second = rush.fetch_finished_tasks()
    assert len(second) == 8
    assert second.set_index("keys").loc[keys[0], "y"] == 0
    assert rush._finished_offset == 8


def test_fetch_new_tasks_returns_each_task_once(rush):
    rush.start_workers(funcs.add, n_workers=1)
    assert rush.fetch_new_tasks().empty
    keys = rush.push_tasks([{"x1": 1, "x2": 1}])
    new = rush.fetch_new_tasks(timeout=TIMEOUT)
    assert new["keys"].tolist() == keys
    assert rush.fetch_new_tasks(timeout=0).empty


def test_wait_for_all_tasks_without_keys(rush):
    rush.start_workers(funcs.add, n_workers=2)
    rush.push_tasks([{"x1": i, "x2": i} for i in range(20)])
    rush.wait_for_tasks(timeout=TIMEOUT)
    assert rush.n_finished_tasks == 20


def test_wait_for_tasks_times_out_with_a_clear_message(rush):
    keys = rush.push_tasks([{"x1": 1, "x2": 1}])
    with pytest.raises(TimeoutError, match="1 tasks not done after 0.3 s"):
        rush.wait_for_tasks(keys, timeout=0.3)


def test_priority_tasks_run_on_their_worker(rush):
    ids = rush.start_workers(funcs.own_pid, n_workers=2)
    rush.wait_for_workers(2, timeout=TIMEOUT)
    targets = [ids[0]] * 6 + [ids[1]] * 6
    keys = rush.push_priority_tasks([{"x": i} for i in range(12)], worker_ids=targets)
    rush.wait_for_tasks(keys, timeout=TIMEOUT)
    data = rush.fetch_finished_tasks().set_index("keys").loc[keys]
    assert data["worker_id"].tolist() == targets


def test_priority_tasks_are_popped_before_the_shared_queue(rush):
    (wid,) = rush.start_workers(funcs.own_pid, n_workers=1)
    rush.wait_for_workers(1, timeout=TIMEOUT)
    rush.stop_workers("terminate")  # keep it from popping while we fill the queues
    wait_until(lambda: rush.n_running_workers == 0)
    (wid,) = rush.start_workers(funcs.sleep_then, n_workers=1)
    rush.wait_for_workers(1, timeout=TIMEOUT)
    blocker = rush.push_tasks([{"x": -1, "duration": 0.5}])
    wait_until(lambda: rush.n_running_tasks == 1)
    shared = rush.push_tasks([{"x": i} for i in range(3)])
    priority = rush.push_priority_tasks([{"x": 10 + i} for i in range(3)], worker_ids=[wid] * 3)
    assert rush.n_queued_priority_tasks == 3
    assert rush.fetch_priority_tasks()["keys"].tolist() == priority
    rush.wait_for_tasks(blocker + shared + priority, timeout=TIMEOUT)
    order = rush.fetch_finished_tasks()["keys"].tolist()
    assert order == blocker + priority + shared


def test_priority_task_for_a_stopped_worker_goes_to_shared_queue(rush):
    (wid,) = rush.start_workers(funcs.add, n_workers=1)
    rush.wait_for_workers(1, timeout=TIMEOUT)
    rush.stop_workers("kill")
    keys = rush.push_priority_tasks([{"x1": 1, "x2": 2}], worker_ids=[wid])
    assert rush.n_queued_tasks == 1 and rush.n_queued_priority_tasks == 0
    rush.start_workers(funcs.add, n_workers=1)
    rush.wait_for_tasks(keys, timeout=TIMEOUT)
    assert rush.fetch_finished_tasks()["y"].tolist() == [3]


def test_user_priority_orders_the_shared_queue(rush):
    low = rush.push_tasks([{"x1": 0, "x2": 0}], priority=-5)
    normal = rush.push_tasks([{"x1": 1, "x2": 0}])
    high = rush.push_tasks([{"x1": 2, "x2": 0}], priority=5)
    assert rush.fetch_queued_tasks()["keys"].tolist() == high + normal + low


def test_empty_queue_fails_queued_tasks_with_a_reason(rush):
    keys = rush.push_tasks([{"x1": i, "x2": 0} for i in range(3)])
    assert rush.empty_queue() == 3
    failed = rush.fetch_failed_tasks()
    assert failed["keys"].tolist() == keys
    assert failed["error"].str.contains("empty_queue").all()
    assert rush.n_queued_tasks == 0 and rush.n_failed_tasks == 3


def test_task_with_its_own_function_runs_on_a_worker_without_one(rush):
    rush.start_workers(n_workers=1)
    keys = rush.push_tasks([{"x": 4}], fun=funcs.square)
    plain = rush.push_tasks([{"x": 4}])
    rush.wait_for_tasks(keys + plain, timeout=TIMEOUT)
    assert rush.fetch_finished_tasks()["y"].tolist() == [16]
    assert "no function" in rush.fetch_failed_tasks()["error"].iloc[0]


def test_lambda_function_is_shipped_by_value_and_stored_once(rush):
    rush.start_workers(n_workers=1)
    negate = lambda x: {"y": -x}  # noqa: E731 - a lambda on purpose: shipped by value
    keys = rush.push_tasks([{"x": i} for i in range(3)], fun=negate)
    rush.push_tasks([{"x": 5}], fun=negate)
    rush.wait_for_tasks(timeout=TIMEOUT)
    assert sorted(rush.fetch_finished_tasks()["y"]) == [-5, -2, -1, 0]
    functions = list(rush.client.scan_iter(match=rush.keys.pattern.replace("*", "fun:*")))
    assert len(functions) == 1  # one function, pushed twice: stored once
    assert len(keys) == 3


def test_worker_loop_decentralized(rush):
    ids = rush.start_workers(worker_loop=funcs.decentralized_loop, n_workers=2, n_tasks=5)
    wait_until(lambda: rush.n_finished_tasks == 10 and rush.n_terminated_workers == 2)
    data = rush.fetch_finished_tasks()
    assert sorted(data["y"]) == sorted([i * 10 for i in range(5)] * 2)
    assert set(data["origin"]) == set(ids)
    assert (data["origin"] == data["worker_id"]).all()


def test_worker_loop_with_pop_task(rush):
    rush.start_workers(worker_loop=funcs.popping_loop, n_workers=1)
    keys = rush.push_tasks([{"x": i} for i in range(4)])
    rush.wait_for_tasks(keys, timeout=TIMEOUT)
    assert sorted(rush.fetch_finished_tasks()["y"]) == [100, 101, 102, 103]
    rush.stop_workers("terminate")
    wait_until(lambda: rush.n_terminated_workers == 1)


def test_a_broken_worker_loop_is_reported(rush):
    (wid,) = rush.start_workers(worker_loop=funcs.raising_loop, n_workers=1)
    wait_until(lambda: rush.n_terminated_workers == 1)
    # close() deregisters the worker before it ships its last log records: wait for them.
    wait_until(
        lambda: rush.read_log([wid])["message"].str.contains("the loop itself is broken").any(),
        what="the loop's error in the log",
    )
    log = rush.read_log([wid])
    assert (log["level"] == "ERROR").any()


def test_many_workers_pop_each_task_exactly_once(rush):
    n_tasks = 3000
    rush.start_workers(funcs.own_pid, n_workers=6)
    keys = rush.push_tasks([{"x": i} for i in range(n_tasks)])
    rush.wait_for_tasks(keys, timeout=TIMEOUT * 2)
    finished = [k.decode() for k in rush.client.lrange(rush.keys.finished, 0, -1)]
    assert len(finished) == n_tasks and set(finished) == set(keys)
    data = rush.fetch_finished_tasks()
    assert (data["attempts"] == 1).all()
    assert data["worker_id"].nunique() > 1
    assert rush.n_failed_tasks == 0 and rush.n_queued_tasks == 0


def test_worker_info_and_wait_for_workers(rush):
    ids = rush.start_workers(funcs.add, n_workers=2, heartbeat_period=1, heartbeat_expire=5)
    rush.wait_for_workers(worker_ids=ids, timeout=TIMEOUT)
    info = rush.worker_info
    assert sorted(info["worker_id"]) == sorted(ids)
    assert set(info["state"]) == {"running"}
    assert info["heartbeat"].all()
    assert (info["heartbeat_period"] == 1).all() and (info["heartbeat_expire"] == 5).all()
    assert set(info["pid"]) == {rush.local_workers[w].process.pid for w in ids}
    assert pd.api.types.is_datetime64_any_dtype(info["started_at"])
    assert rush.worker_ids == sorted(ids)


def test_read_log_collects_worker_and_task_records(rush):
    (wid,) = rush.start_workers(funcs.log_something, n_workers=1)
    keys = rush.push_tasks([{"x": 7}])
    rush.wait_for_tasks(keys, timeout=TIMEOUT)
    wait_until(lambda: rush.read_log()["message"].str.contains("hello from task 7").any())
    log = rush.read_log()
    assert list(log.columns) == ["time", "worker_id", "level", "logger", "message"]
    row = log[log["message"] == "hello from task 7"].iloc[0]
    assert (row["worker_id"], row["level"], row["logger"]) == (wid, "WARNING", "user.code")
    assert log["message"].str.contains(f"worker {wid} started").any()


def test_second_controller_sees_the_same_network(rush, redis_url):
    rush.start_workers(funcs.add, n_workers=1)
    keys = rush.push_tasks([{"x1": 1, "x2": 2}])
    other = Rush(rush.network_id, url=redis_url)
    other.wait_for_tasks(keys, timeout=TIMEOUT)
    assert other.fetch_finished_tasks()["y"].tolist() == [3]
    assert other.running_worker_ids == rush.running_worker_ids
    more = other.push_tasks([{"x1": 5, "x2": 5}])
    rush.wait_for_tasks(more, timeout=TIMEOUT)
    assert rush.n_finished_tasks == 2


def test_reset_deletes_only_its_own_network(rush, redis_url, network_id):
    neighbour = Rush(network_id + "-neighbour", url=redis_url)
    try:
        neighbour.push_tasks([{"x": 1}])
        rush.push_tasks([{"x": 1}])
        rush.reset()
        assert rush.n_tasks == 0
        assert neighbour.n_tasks == 1
    finally:
        neighbour.reset()


def test_worker_script_starts_a_worker_from_a_shell(rush, tmp_path):
    import os
    import shlex
    import subprocess

    command = rush.worker_script(funcs.add, heartbeat_period=0.5)
    assert command.startswith("python -m rush_dask.core.worker --network ")
    assert rush.url not in command  # the URL (and any password) stays out of the command
    argv = shlex.split(command)
    env = dict(
        os.environ,
        RUSH_REDIS_URL=rush.url,
        PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
    )
    process = subprocess.Popen([sys.executable, *argv[1:]], env=env, stderr=subprocess.PIPE)
    try:
        rush.wait_for_workers(1, timeout=TIMEOUT)
        keys = rush.push_tasks([{"x1": 2, "x2": 3}])
        rush.wait_for_tasks(keys, timeout=TIMEOUT)
        assert rush.fetch_finished_tasks()["y"].tolist() == [5]
        rush.stop_workers("terminate")
        assert process.wait(TIMEOUT) == 0
        assert rush.n_terminated_workers == 1
    finally:
        process.kill()
        process.wait()


def test_detect_lost_workers_returns_the_lost_ids(rush):
    import os
    import signal

    victim, _ = rush.start_workers(funcs.add, n_workers=2)
    rush.wait_for_workers(2, timeout=TIMEOUT)
    assert rush.detect_lost_workers() == []
    os.kill(rush.local_workers[victim].process.pid, signal.SIGKILL)
    rush.local_workers[victim].process.wait()
    assert rush.detect_lost_workers() == [victim]
    assert rush.detect_lost_workers() == []  # first writer wins: declared once
    assert rush.lost_worker_ids == [victim]


def test_context_manager_stops_its_workers(redis_url, network_id):
    with Rush(network_id, url=redis_url) as rush:
        (wid,) = rush.start_workers(funcs.add, n_workers=1)
        rush.wait_for_workers(1, timeout=TIMEOUT)
        process = rush.local_workers[wid].process
    assert process.poll() == 0  # SIGTERM: a graceful stop
    assert rush.terminated_worker_ids == [wid]
    rush.reset()


def test_repr_hides_the_password():
    from rush_dask.core.connections import redact

    assert redact("redis://:hunter2@h:1/0") == "redis://:***@h:1/0"
    assert redact("rediss://user:hunter2@h:1/0") == "rediss://user:***@h:1/0"
    assert redact("unix:///tmp/s.sock?password=hunter2&db=0") == "unix:///tmp/s.sock?password=***&db=0"
    assert redact("redis://h:1/0") == "redis://h:1/0"


def test_workers_are_stopped_gracefully_when_the_controller_exits(redis_url, network_id):
    import subprocess
    import textwrap

    from rush_dask.core.network import pid_alive

    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import funcs
        from rush_dask import Rush
        rush = Rush({network_id!r}, url={redis_url!r})
        rush.start_workers(funcs.add, n_workers=2)
        rush.wait_for_workers(2, timeout=60)
        rush.wait_for_tasks(rush.push_tasks([{{"x1": 1, "x2": 1}}]), timeout=60)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    rush = Rush(network_id, url=redis_url)
    try:
        assert rush.n_terminated_workers == 2 and rush.n_running_workers == 0
        assert not any(pid_alive(int(pid)) for pid in rush.worker_info["pid"])
    finally:
        rush.reset()
