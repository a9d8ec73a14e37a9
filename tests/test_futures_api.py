"""The futures calls of distributed scripts, on real workers: one test per call."""

from __future__ import annotations

import concurrent.futures
import threading
import time

import dask
import dask.array as da
import dask_funcs as f
import numpy as np
import pytest

import rush_dask
from rush_dask import as_completed, fire_and_forget, wait

TIMEOUT = 120


def gate_file(tmp_path):
    return str(tmp_path / "gate")


def test_result_timeout_raises_timeouterror_and_the_node_keeps_running(rush2, tmp_path):
    future = rush2.submit(f.wait_for_file, 1, gate_file(tmp_path))
    with pytest.raises(TimeoutError):
        future.result(timeout=0.2)
    open(gate_file(tmp_path), "w").close()
    assert future.result(timeout=TIMEOUT) == 2


def test_exception_and_traceback(rush2):
    bad = rush2.submit(f.boom, 3)
    exc = bad.exception(timeout=TIMEOUT)
    assert isinstance(exc, ZeroDivisionError) and "boom on 3" in str(exc)
    assert "in boom" in bad.traceback()
    good = rush2.submit(f.inc, 1)
    assert good.exception(timeout=TIMEOUT) is None and good.traceback() is None


def test_cancel_queued_and_running_futures_and_their_dependents(rush2, tmp_path):
    running = [rush2.submit(f.wait_for_file, i, gate_file(tmp_path)) for i in range(2)]  # both workers busy
    queued = rush2.submit(f.inc, 5)
    after = rush2.submit(f.inc, queued)
    assert queued.cancel() and queued.cancelled() and queued.done()
    assert running[0].cancel() and running[0].cancelled()
    with pytest.raises(concurrent.futures.CancelledError):
        queued.result(timeout=TIMEOUT)
    with pytest.raises(Exception, match="cancelled"):
        after.result(timeout=TIMEOUT)  # what depends on a cancelled future fails
    open(gate_file(tmp_path), "w").close()
    assert running[1].result(timeout=TIMEOUT) == 2
    finished = rush2.submit(f.inc, 1)
    finished.result(timeout=TIMEOUT)
    assert not finished.cancel() and not finished.cancelled()  # too late: it is done
    assert rush2.n_running_tasks == 0


def test_add_done_callback_runs_once_done_and_at_once_when_done(rush2):
    seen, event = [], threading.Event()
    future = rush2.submit(f.slow_inc, 1, 0.2)
    future.add_done_callback(lambda fut: (seen.append(fut.result()), event.set()))
    assert event.wait(TIMEOUT) and seen == [2]
    later = []
    future.add_done_callback(lambda fut: later.append(fut.key))
    assert later == [future.key]


def test_wait_all_first_completed_first_exception_and_timeout(rush2, tmp_path):
    gate = gate_file(tmp_path)
    blocked = rush2.submit(f.wait_for_file, 0, gate)
    quick = rush2.submit(f.inc, 1)
    done, not_done = wait([blocked, quick], return_when="FIRST_COMPLETED", timeout=TIMEOUT)
    assert done == {quick} and not_done == {blocked}
    bad = rush2.submit(f.boom, 1)
    done, not_done = wait([quick, blocked, bad], return_when="FIRST_EXCEPTION", timeout=TIMEOUT)
    assert bad in done and quick in done and blocked in not_done  # quick was done already
    with pytest.raises(TimeoutError):
        wait([blocked, quick], timeout=0.2)
    open(gate, "w").close()
    done, not_done = wait([blocked, quick, bad], timeout=TIMEOUT)
    assert len(done) == 3 and not not_done
    with pytest.raises(ValueError, match="return_when"):
        wait([quick], return_when="SOMETIMES")


def test_as_completed_with_results_add_and_errors(rush2):
    futures = rush2.map(f.inc, range(20))
    ac = as_completed(futures[:10], with_results=True)
    ac.update(futures[10:15])
    ac.add(futures[15])
    pairs = list(ac)
    assert sorted(r for _, r in pairs) == list(range(1, 17))
    assert all(fut.result() == r for fut, r in pairs)
    failing = [rush2.submit(f.boom, 1), rush2.submit(f.inc, 2)]
    with pytest.raises(ZeroDivisionError):
        list(as_completed(failing, with_results=True))
    pairs = list(as_completed(failing, with_results=True, raise_errors=False))
    assert sorted(type(r).__name__ for _, r in pairs) == ["ZeroDivisionError", "int"]
    assert sorted(fut.key for fut in as_completed(futures)) == sorted(fut.key for fut in futures)


def test_as_completed_adds_while_iterating(rush2):
    ac = as_completed([rush2.submit(f.inc, 0)])
    seen = []
    for future in ac:
        seen.append(future.result())
        if future.result() < 5:
            ac.add(rush2.submit(f.inc, future))
    assert seen == [1, 2, 3, 4, 5]


def test_as_completed_with_a_worker_sigkilled(rush2, tmp_path):
    futures = rush2.map(f.slow_inc, range(30), duration=0.02)
    futures.append(rush2.submit(f.sigkill_once, 7, str(tmp_path)))
    results = sorted(r for _, r in as_completed(futures, with_results=True, timeout=TIMEOUT))
    assert results == sorted([i + 1 for i in range(30)] + [107])
    assert rush2.n_lost_workers == 1


def test_scatter_list_dict_and_single_value(rush2):
    array = np.arange(1000)
    [fa] = rush2.scatter([array])
    assert rush2.submit(np.sum, fa).result(timeout=TIMEOUT) == array.sum()
    by_name = rush2.scatter({"a": 1, "b": 2})
    assert rush2.submit(f.add, by_name["a"], by_name["b"]).result(timeout=TIMEOUT) == 3
    single = rush2.scatter(41)
    assert rush2.submit(f.inc, single).result(timeout=TIMEOUT) == 42
    assert rush2.scatter([array])[0].key == fa.key  # hashed by content, as distributed does


def test_fire_and_forget_runs_the_task_after_the_future_is_dropped(rush2, tmp_path):
    path = tmp_path / "order.txt"
    fire_and_forget(rush2.submit(f.record_order, 7, str(path)))
    deadline = time.monotonic() + TIMEOUT
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert path.read_text() == "7\n"
    with pytest.raises(TypeError, match="rush futures"):
        fire_and_forget([1])


def test_compute_and_persist_return_futures(rush2):
    x = da.arange(100, chunks=10)
    total = rush2.compute(x.sum())
    assert isinstance(total, rush_dask.RushFuture) and total.result(timeout=TIMEOUT) == 4950
    a, b = rush2.compute([x.sum(), dask.delayed(f.inc)(1)])
    assert (a.result(timeout=TIMEOUT), b.result(timeout=TIMEOUT)) == (4950, 2)
    (persisted,) = rush2.persist([x + 1])
    assert persisted.sum().compute(scheduler=rush2) == 5050


def test_submit_and_map_keywords(rush2, tmp_path):
    flaky = rush2.submit(f.fail_first_time, 3, str(tmp_path), retries=1)
    assert flaky.result(timeout=TIMEOUT) == 30
    futures = rush2.map(f.fail_first_time, [4, 5], marker_dir=str(tmp_path), retries=2)
    assert rush2.gather(futures) == [40, 50]  # map: keywords go to every call, as in distributed
    named = rush2.submit(f.inc, 1, key="my-key", priority=5, lease=30)
    assert named.key == "my-key" and named.result(timeout=TIMEOUT) == 2
    assert rush2.submit(f.inc, 10) is rush2.submit(f.inc, 10)  # pure: same call, same future
    assert rush2.submit(f.inc, 10, pure=False) is not rush2.submit(f.inc, 10, pure=False)
    assert [fut.key for fut in rush2.map(f.inc, [1, 2], key=["k1", "k2"])] == ["k1", "k2"]
    with pytest.raises(ValueError, match="retries"):
        rush2.submit(f.inc, 1, retries=-1)
    with pytest.raises(TypeError, match="resources"):
        rush2.submit(f.inc, 1, resources=["GPU"])


def test_gather_errors_skip_and_timeout(rush2, tmp_path):
    futures = [rush2.submit(f.inc, 1), rush2.submit(f.boom, 2), rush2.submit(f.inc, 3)]
    assert rush2.gather(futures, errors="skip") == [2, 4]
    assert rush2.gather({"a": futures[0]}) == {"a": 2}
    with pytest.raises(TimeoutError):
        rush2.gather([rush2.submit(f.wait_for_file, 1, gate_file(tmp_path))], timeout=0.2)
    open(gate_file(tmp_path), "w").close()


def test_executor_submit_map_chunksize_timeout_shutdown(rush2, tmp_path):
    with rush2.get_executor() as pool:
        assert isinstance(pool, concurrent.futures.Executor)
        assert pool.submit(f.add, 2, b=3).result(timeout=TIMEOUT) == 5
        failing = pool.submit(f.boom, 1)
        assert isinstance(failing.exception(timeout=TIMEOUT), ZeroDivisionError)
        assert list(pool.map(f.add, range(10), range(10), timeout=TIMEOUT)) == list(range(0, 20, 2))
        assert list(pool.map(f.inc, range(25), chunksize=4)) == list(range(1, 26))
        with pytest.raises(ZeroDivisionError):
            list(pool.map(f.boom, [1]))
        gate = gate_file(tmp_path)
        with pytest.raises(TimeoutError):
            list(pool.map(f.wait_for_file, [1, 2], [gate, gate], timeout=0.3))
        with pytest.raises(ValueError, match="chunksize"):
            pool.map(f.inc, [1], chunksize=0)
        open(gate, "w").close()
        last = pool.submit(f.slow_inc, 1, 0.3)
    assert last.done() and last.result() == 2  # shutdown(wait=True) waited
    with pytest.raises(RuntimeError, match="shutdown"):
        pool.submit(f.inc, 1)


def test_executor_map_with_a_worker_sigkilled(rush2, tmp_path):
    pool = rush2.get_executor()
    items = list(range(30))
    results = list(pool.map(f.slow_inc_killing_once_at, items, [12] * 30, [str(tmp_path)] * 30, timeout=TIMEOUT))
    assert results == [i + 1 for i in items]  # the killed worker's call was requeued
    assert rush2.n_lost_workers == 1
    pool.shutdown()
