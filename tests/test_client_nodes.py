"""Nodes that must stay in the client process run there (rush_dask.dask.clientnodes): stores into
a numpy target, client-side locks, nodes that cannot be pickled. Real Redis, real workers."""

from __future__ import annotations

import gc
import os
import threading
import time

import dask
import dask.array as da
import dask.bag as db
import numpy as np
import pytest
from conftest import fresh_network, wait_until
from dask.delayed import delayed

import rush_dask
from rush_dask.dask.clientnodes import CLIENT_RESOURCE, client_keys

TIMEOUT = 120


def graph_keys(rush) -> list[bytes]:
    """Keys a graph leaves behind: node hashes, graph bookkeeping, client queues."""
    pattern = rush.keys.prefix.replace("{", "\\{").replace("}", "\\}")
    keys = []
    for kind in ("task:*.*", "graph:*", "gdone:*", "rq:*"):
        keys += list(rush.client.scan_iter(match=pattern + kind))
    return keys


def no_client_queue(rush) -> bool:
    return not any(
        spec.decode().startswith(CLIENT_RESOURCE) for spec in rush.client.smembers(rush.keys.resource_queues)
    )


class CountingLock:
    """A lock of the client (it holds a threading.Lock: it cannot be pickled) that counts its uses."""

    def __init__(self):
        self.lock = threading.Lock()
        self.acquired = self.released = 0

    def acquire(self, blocking=True, timeout=-1):
        ok = self.lock.acquire(blocking, timeout)
        self.acquired += ok
        return ok

    def release(self):
        self.released += 1
        self.lock.release()


class BrokenAfter:
    """A target whose writes fail from the n-th on; counts the writes that happened."""

    def __init__(self, n):
        self.n, self.writes = n, 0
        self.guard = threading.Lock()

    def __setitem__(self, index, value):
        with self.guard:
            self.writes += 1
            if self.writes >= self.n:
                raise RuntimeError("the target is full")
        time.sleep(0.01)


def pid_and(value):
    return os.getpid(), value


def test_store_into_numpy_target(rush2):
    x = da.arange(64, chunks=8).reshape(8, 8)
    a, b = x + 1, x * 2
    at, bt = np.zeros((8, 8)), np.zeros((8, 8))
    assert da.store([a, b], [at, bt], scheduler=rush2) is None
    np.testing.assert_array_equal(at, np.arange(64).reshape(8, 8) + 1)
    np.testing.assert_array_equal(bt, np.arange(64).reshape(8, 8) * 2)
    wait_until(lambda: graph_keys(rush2) == [], TIMEOUT, "the graph gone from Redis")
    assert no_client_queue(rush2)


def test_store_regions_and_memmap(rush2, tmp_path):
    target = np.memmap(tmp_path / "t.npy", shape=(4, 10), mode="w+", dtype="f8")
    da.store(da.ones(10, chunks=3) * 7, target, regions=(2,), scheduler=rush2)
    target.flush()
    np.testing.assert_array_equal(np.memmap(tmp_path / "t.npy", shape=(4, 10), dtype="f8")[2], 7)
    assert (target[[0, 1, 3]] == 0).all()


def test_store_compute_false_writes_only_when_computed(rush2):
    at = np.zeros(12)
    stored = da.store(da.arange(12, chunks=4), at, compute=False)
    assert (at == 0).all()
    dask.compute(stored, scheduler=rush2)
    np.testing.assert_array_equal(at, np.arange(12))


@pytest.mark.parametrize("compute", [True, False])
def test_return_stored(rush2, compute):
    at = np.zeros(12)
    with dask.config.set(scheduler=rush2):
        stored = da.store(da.arange(12, chunks=4) + 1, at, return_stored=True, compute=compute)
        if compute:  # persisted: written before store returns, backed by futures
            np.testing.assert_array_equal(at, np.arange(12) + 1)
            assert all(
                isinstance(v, rush_dask.RushFuture)
                for k, v in dict(stored.__dask_graph__()).items()
                if "store-map" in str(k)
            )
        else:
            assert (at == 0).all()
        np.testing.assert_array_equal(stored.compute(), np.arange(12) + 1)
        np.testing.assert_array_equal((stored * 2).sum().compute(), 2 * (np.arange(12) + 1).sum())
    np.testing.assert_array_equal(at, np.arange(12) + 1)
    del stored
    gc.collect()
    wait_until(lambda: graph_keys(rush2) == [], TIMEOUT, "the persisted results released")


def test_delayed_target_is_made_and_written_on_the_client(rush2):
    made = {}

    def make_target():
        made["target"] = np.zeros(6)
        return made["target"]

    da.store(da.arange(6, chunks=2), delayed(make_target)(), scheduler=rush2)
    np.testing.assert_array_equal(made["target"], np.arange(6))


def test_client_lock_is_used(rush2):
    lock = CountingLock()
    at = np.zeros((6, 6))
    x = da.ones((6, 6), chunks=2)
    da.store(x, at, lock=lock, scheduler=rush2)
    assert (at == 1).all()
    assert lock.acquired == lock.released == 9
    # A from_array getter that takes the lock runs here too (its lock would not exist elsewhere).
    y = da.from_array(np.arange(10), chunks=5, lock=lock)
    assert (y + 1).sum().compute(scheduler=rush2) == 55
    assert lock.acquired == lock.released == 11


def test_unpicklable_node_runs_on_the_client_and_feeds_workers(rush2):
    lock = threading.Lock()
    made = delayed(lambda lock, n: np.arange(n), pure=True)(lock, 100_000)  # 800 kB: held on this host
    small = delayed(lambda lock: 5)(lock)
    on_worker = delayed(pid_and)(made.sum())
    (pid, total), five = dask.compute(on_worker, small, scheduler=rush2, fuse=False)
    assert total == np.arange(100_000).sum() and five == 5
    assert pid != os.getpid()  # the dependent ran on a worker, reading the client's result
    wait_until(lambda: graph_keys(rush2) == [], TIMEOUT, "the graph gone from Redis")


def test_unpicklable_data_and_its_consumers_stay_here(rush2):
    def numbers():
        yield from range(10)

    bag = db.Bag({("numbers", 0): numbers()}, "numbers", 1)
    assert bag.sum().compute(scheduler=rush2) == 45


def test_client_node_results_are_signed(redis_url):
    for rush in fresh_network(redis_url, secret="s3cret"):
        rush.start_workers(n_workers=1)
        lock = threading.Lock()
        made = delayed(lambda lock: np.arange(10))(lock)
        pid, total = dask.compute(delayed(pid_and)(made.sum()), scheduler=rush, fuse=False)[0]
        assert total == 45 and pid != os.getpid()


def test_persist_and_submit_with_client_nodes(rush2):
    lock = threading.Lock()
    future = rush2.submit(lambda lock, x: x + 1, lock, 41)
    assert future.done() and future.result(timeout=TIMEOUT) == 42
    (persisted,) = dask.persist(da.from_array(np.arange(10), chunks=5, lock=CountingLock()), scheduler=rush2)
    assert persisted.sum().compute(scheduler=rush2) == 45


def test_failing_store_raises_and_writes_nothing_after(rush2):
    lock = CountingLock()
    target = BrokenAfter(5)
    with pytest.raises(RuntimeError, match="the target is full"):
        da.store(da.ones((20, 20), chunks=2), target, lock=False, scheduler=rush2)
    writes = target.writes
    time.sleep(0.5)
    assert target.writes == writes  # no client node still writing, none started after the error
    with pytest.raises(RuntimeError, match="the target is full"):
        da.store(da.ones((4, 4), chunks=2), BrokenAfter(1), lock=lock, scheduler=rush2)
    assert lock.acquired == lock.released > 0
    wait_until(lambda: graph_keys(rush2) == [], TIMEOUT, "the cancelled graph gone from Redis")
    assert no_client_queue(rush2)


def test_bad_input_clear_error_nothing_written(rush2):
    at = np.zeros(4)
    before = set(rush2.client.scan_iter(match=rush2.keys.prefix.replace("{", "\\{").replace("}", "\\}") + "*"))
    with pytest.raises(ValueError, match="Different number of sources"):
        da.store([da.ones(4, chunks=2)], [at, at], scheduler=rush2)
    after = set(rush2.client.scan_iter(match=rush2.keys.prefix.replace("{", "\\{").replace("}", "\\}") + "*"))
    assert {k for k in after - before if b":task:" in k or b":graph:" in k} == set()
    assert (at == 0).all()
    # A client node's result that a worker needs but that cannot leave the process: a clear error.
    gen = delayed(lambda lock: (i for i in range(3)))(threading.Lock())
    with pytest.raises(TypeError, match="cannot serialize"):
        dask.compute(delayed(list)(gen), scheduler=rush2, fuse=False)
    wait_until(lambda: graph_keys(rush2) == [], TIMEOUT, "the failed graph gone from Redis")


def test_rule_leaves_ordinary_graphs_and_out_of_core_targets_alone():
    class ZarrLike:  # stands for a zarr array: the rule goes by the type's top-level module
        __module__ = "zarr.core"
        shape, dtype, ndim = (4,), np.dtype("f8"), 1

        def __setitem__(self, index, value):
            pass

    ordinary = (da.ones(8, chunks=2) + 1).sum()
    assert client_keys(dask.base.collections_to_expr([ordinary]).__dask_graph__()) == set()
    from dask._task_spec import convert_legacy_graph

    def keys_of(stored):
        return client_keys(convert_legacy_graph(dict(stored.__dask_graph__())))

    assert keys_of(da.store(da.ones(4, chunks=2), ZarrLike(), compute=False)) == set()
    assert len(keys_of(da.store(da.ones(4, chunks=2), np.zeros(4), compute=False))) == 2
    assert len(keys_of(da.store(da.ones(4, chunks=2), delayed(ZarrLike()), compute=False))) == 0
    assert len(keys_of(da.store(da.ones(4, chunks=2), delayed(np.zeros)(4), compute=False))) == 3


def test_client_node_is_retried(rush2):
    attempts = []

    def flaky(lock):
        attempts.append(1)
        if len(attempts) < 3:
            raise OSError("not yet")
        return len(attempts)

    node = delayed(flaky)(threading.Lock())
    assert dask.compute(node, scheduler=rush2, retries=2)[0] == 3
    attempts.clear()
    with pytest.raises(OSError, match="not yet"):
        dask.compute(node, scheduler=rush2, retries=1)
    assert len(attempts) == 2
