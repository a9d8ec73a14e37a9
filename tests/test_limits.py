"""Payload limits and large inputs shared by many tasks (stored once in Redis)."""

from __future__ import annotations

import pickle

import conftest
import dask
import funcs
import numpy as np
import pytest
from conftest import network_keys

from rush_dask import PayloadTooLargeError, Rush
from rush_dask.core.constants import INLINE_LIMIT

LIMIT = 200_000


@pytest.fixture
def small(redis_url):
    yield from conftest.fresh_network(redis_url, max_payload_bytes=LIMIT)


@pytest.mark.parametrize(
    "xss, match",
    [
        # a value over the limit (it would be stored as a shared input)
        ([{"x": 1}, {"x": 2}, {"x": b"\1" * (LIMIT + 1)}], r"input 'x' of task 2 is 200,0\d\d bytes"),
        # values under INLINE_LIMIT each stay in the task: together over the limit
        (
            [{"x": 1}, {f"v{i}": bytes([i]) * 60_000 for i in range(4)}],
            r"task 1 is 240,\d{3} bytes serialized, over the limit",
        ),
    ],
)
def test_too_large_push_names_the_task_and_writes_nothing(small, redis_url, xss, match):
    small.push_tasks([{"x": 0}])  # the network has something to lose
    before = network_keys(redis_url, small)
    with pytest.raises(PayloadTooLargeError, match=match):
        small.push_tasks(xss)
    assert network_keys(redis_url, small) == before
    assert small.n_tasks == 1


@pytest.mark.parametrize(
    "value, error, match",
    [
        (100, ValueError, "max_payload_bytes must be between 1024"),
        (600 * 2**20, ValueError, "max_payload_bytes must be between"),
        (1.5e6, TypeError, "max_payload_bytes must be an integer"),
    ],
)
def test_bad_max_payload_bytes(redis_url, value, error, match):
    with pytest.raises(error, match=match):
        Rush(url=redis_url, max_payload_bytes=value)


def test_too_large_result_fails_the_task_not_the_worker(small):
    small.start_workers(funcs.big_result, n_workers=1)
    keys = small.push_tasks([{"n": LIMIT + 1}, {"n": 10}])
    small.wait_for_tasks(keys, timeout=60)
    failed = small.fetch_failed_tasks()
    assert failed["keys"].tolist() == [keys[0]]
    assert "PayloadTooLargeError: the result is 200,0" in failed.error.iloc[0]
    assert small.fetch_finished_tasks().y.tolist() == [b"\0" * 10]


def test_too_large_result_of_a_custom_loop_is_refused_and_nothing_is_stored(small):
    small.start_workers(worker_loop=funcs.oversized_loop, n_workers=1, n=LIMIT + 1)
    conftest.wait_until(lambda: small.n_failed_tasks == 2, timeout=60, what="both tasks failed")
    failed = small.fetch_failed_tasks()
    second = small.fetch_tasks()["keys"].iloc[1]
    assert all(f"PayloadTooLargeError: the result of task {second} is 200,0" in e for e in failed.error)
    assert small.n_finished_tasks == 0  # the first result, small enough, was not stored either


def test_too_large_graph_node_is_refused_and_leaves_no_graph(small, redis_url):
    small.start_workers(n_workers=1)
    before = {k for k in network_keys(redis_url, small) if b":seq" not in k}
    big = dask.delayed(len)(np.zeros(LIMIT // 8 + 100))
    with pytest.raises(PayloadTooLargeError, match="of the graph is .* bytes serialized"):
        dask.compute(big, scheduler=small)
    after = {k for k in network_keys(redis_url, small) if b":seq" not in k and b":log:" not in k}
    assert after <= before
    assert dask.compute(dask.delayed(len)([1, 2]), scheduler=small)[0] == 2


def test_large_input_shared_by_many_tasks_is_stored_once(rush, redis_url):
    data = np.arange(INLINE_LIMIT // 8 * 4, dtype=np.float64)  # 256 KiB
    data[0] = 7.0
    rush.start_workers(funcs.first_value, n_workers=2)
    keys = rush.push_tasks([{"x": i, "data": data} for i in range(50)])
    copy_keys = rush.push_tasks([{"x": 100, "data": data.copy()}])  # equal content, other object
    shared = [k for k in network_keys(redis_url, rush) if b":shared:" in k]
    assert len(shared) == 1
    assert rush.client.strlen(shared[0]) > data.nbytes
    assert max(rush.client.hstrlen(rush.keys.task(k), "xs") for k in keys) < 1_000
    rush.wait_for_tasks(keys + copy_keys, timeout=60)
    finished = rush.fetch_finished_tasks().sort_values("x")
    assert finished.y.tolist() == [7.0 + i for i in range(50)] + [107.0]
    # The table shows the value itself, not the reference.
    assert all(np.array_equal(d, data) for d in finished["data"])


def test_a_task_that_mutates_a_shared_input_does_not_change_the_next_task(rush):
    data = np.ones(INLINE_LIMIT // 8 * 2)
    rush.start_workers(funcs.array_sum, n_workers=1)
    first = rush.push_tasks([{"x": 0, "data": data}])
    rush.wait_for_tasks(first, timeout=60)
    keys = rush.push_tasks([{"x": 1, "data": data}], fun=funcs.first_value)
    rush.wait_for_tasks(keys, timeout=60)
    assert rush.fetch_finished_tasks().set_index("keys").y[keys[0]] == 2.0


def test_altered_shared_input_fails_the_task(rush, redis_url):
    data = np.ones(INLINE_LIMIT // 8 * 2)
    keys = rush.push_tasks([{"x": 1, "data": data}])
    (shared,) = [k for k in network_keys(redis_url, rush) if b":shared:" in k]
    rush.client.set(shared, pickle.dumps(np.zeros(10), protocol=5))
    rush.start_workers(funcs.first_value, n_workers=1)
    rush.wait_for_tasks(keys, timeout=60)
    error = rush.client.hget(rush.keys.task(keys[0]), "error").decode()
    assert "does not match its content id: altered in Redis" in error
