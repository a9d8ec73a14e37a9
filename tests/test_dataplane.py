"""The data plane: large graph results stay on their host; Redis says where they are.

Real workers, real files in shared memory, real sockets; a SIGKILLed holder.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import time
from pathlib import Path

import conftest
import dask
import dask.array as da
import dask_funcs as f
import numpy as np
import pytest

from rush_dask.core.dataplane import OFFLOAD_MIN
from rush_dask.core.errors import PayloadSignatureError

TIMEOUT = 90
wait_until = functools.partial(conftest.wait_until, timeout=TIMEOUT)
FAST = {"heartbeat_period": 0.2, "heartbeat_expire": 1.0}
MB = 2**20


@pytest.fixture
def two_workers(rush):
    rush.start_workers(n_workers=2, **FAST)
    rush.wait_for_workers(2, timeout=TIMEOUT)
    return rush


def held_files(rush) -> list[Path]:
    return sorted(
        p
        for d in (rush.plane.store.shm_dir, rush.plane.store.spill_dir)
        if d is not None and d.is_dir()
        for p in d.iterdir()
    )


def future_of(persisted):
    """The rush future behind a persisted Delayed."""
    return dict(persisted.__dask_graph__())[persisted.key]


def task_fields(rush, future) -> dict[bytes, bytes]:
    return rush.client.hgetall(rush.keys.task(future.task_key))


def test_a_large_result_stays_in_a_file_on_its_host_and_redis_keeps_where(two_workers):
    rush = two_workers
    future = rush.submit(f.big_array, 4 * MB)
    value = future.result()
    assert value.nbytes == 4 * MB and value[0] == 1.0
    fields = task_fields(rush, future)
    assert b"ys" not in fields  # the bytes never went to Redis
    assert fields[b"at"].decode() in rush.running_worker_ids
    assert fields[b"host"].decode() == rush.plane.host
    path = Path(fields[b"path"].decode())
    assert path.exists() and path.stat().st_size >= 4 * MB
    assert int(fields[b"nbytes"]) == path.stat().st_size
    future.release()
    # The release put the file on the host's garbage list; a worker's next beat deletes it.
    wait_until(lambda: not path.exists(), what="file deleted after release")
    wait_until(lambda: not rush.client.exists(rush.keys.garbage(rush.plane.host)), what="garbage list emptied")


def test_a_small_result_still_travels_through_redis(two_workers):
    rush = two_workers
    future = rush.submit(f.big_array, OFFLOAD_MIN // 4)
    assert future.result().nbytes == OFFLOAD_MIN // 4
    fields = task_fields(rush, future)
    assert b"ys" in fields and b"path" not in fields


def test_consumers_map_the_file_and_nothing_is_left_after_a_compute(two_workers):
    rush = two_workers
    x = da.ones((2000, 2000), chunks=500)  # 2 MB chunks
    result = (x @ x.T + 1).sum().compute(scheduler=rush)
    assert result == 2000 * 2000 * 2001
    wait_until(lambda: held_files(rush) == [], what="every result file deleted")
    leftover = [
        k
        for k in rush.client.scan_iter(match=rush.keys.pattern)
        if b":task:" in k or b":graph:" in k or b":gc:" in k or b":lq:" in k
    ]
    assert leftover == []


@pytest.mark.parametrize(
    "compute",
    [lambda x, rush: x.compute(scheduler=rush), lambda x, rush: dask.compute(x, scheduler=rush)[0]],
    ids=["Array.compute", "dask.compute"],
)
def test_an_arrays_chunks_are_joined_on_the_client_not_copied_again_by_a_worker(two_workers, compute):
    rush = two_workers
    chunks = 4 * 2 * MB
    value = compute(da.ones((1024, 1024), chunks=(256, 1024)) * 2, rush)  # four 2 MiB chunks
    assert value.shape == (1024, 1024) and value[-1, -1] == 2.0

    def written_by_workers() -> int:
        return sum(int(rush.client.hget(rush.keys.worker(w), "bytes_held") or 0) for w in rush.running_worker_ids)

    wait_until(lambda: written_by_workers() >= chunks, what="the workers report the chunks they wrote")
    time.sleep(3 * FAST["heartbeat_period"])  # a late report of a joined copy would come by now
    assert written_by_workers() < 2 * chunks  # the chunks alone: no worker wrote them joined


def test_a_result_over_max_payload_bytes_is_no_wall_when_it_stays_on_its_host(redis_url):
    # The cap is for what Redis stores; a graph result that never enters Redis whole is not capped.
    for rush in conftest.fresh_network(redis_url, max_payload_bytes=1 * MB):
        rush.start_workers(n_workers=1, max_payload_bytes=1 * MB)
        value = da.ones((3000, 3000), chunks=(3000, 3000)).compute(scheduler=rush)  # 72 MB
        assert value.shape == (3000, 3000) and value[-1, -1] == 1.0


def test_results_are_writable_arrays_and_the_file_never_changes(two_workers):
    rush = two_workers
    future = rush.submit(f.big_array, 2 * MB)
    first = future.result()
    first[0] = 42.0  # copy-on-write mapping: writable here, the file keeps its bytes
    assert future.result()[0] == 1.0


def test_a_ready_node_is_queued_near_its_input_and_an_idle_worker_takes_it(rush, tmp_path):
    [holder] = rush.start_workers(n_workers=1, resources={"A": 1}, **FAST)
    [other] = rush.start_workers(n_workers=1, **FAST)
    rush.wait_for_workers(2, timeout=TIMEOUT)
    (big,) = dask.persist(dask.delayed(f.big_array)(2 * MB, fill=2.0), scheduler=rush, resources={"A": 1})
    assert dask.compute(big, scheduler=rush)[0][0] == 2.0
    gate_a, gate_b = tmp_path / "a", tmp_path / "b"
    # Keep both workers busy: the holder on a task only it may run, the other on any task.
    busy_a = dask.persist(dask.delayed(f.gate)(str(gate_a)), scheduler=rush, resources={"A": 1})
    wait_until(lambda: rush.client.scard(rush.keys.held(holder)) == 1, what="holder busy")
    busy_b = rush.submit(f.gate, str(gate_b))
    wait_until(lambda: rush.client.scard(rush.keys.held(other)) == 1, what="other worker busy")

    (total,) = dask.persist(dask.delayed(f.array_sum)(big), scheduler=rush)
    total = future_of(total)
    # Its input is held by `holder`: queued there, not on the shared queue.
    wait_until(
        lambda: rush.client.zscore(rush.keys.local_queue(holder), total.task_key) is not None,
        what="node on the holder's local queue",
    )
    assert rush.client.zscore(rush.keys.queue, total.task_key) is None
    gate_b.touch()  # the other worker is free while the holder still is not: it takes the node
    assert total.result(timeout=TIMEOUT) == 2.0 * 2 * MB / 8
    assert rush.client.scard(rush.keys.held(holder)) == 1  # the holder never stopped waiting
    wait_until(
        lambda: int(rush.client.hget(rush.keys.worker(other), "bytes_mapped") or 0) >= 2 * MB,
        what="the other worker mapped the holder's file",
    )
    gate_a.touch()
    assert rush.gather(busy_b) == 0 and dask.compute(*busy_a, scheduler=rush) == (0,)


def test_a_forged_result_file_is_refused_before_unpickling(redis_url):
    for rush in conftest.fresh_network(redis_url, secret="s3cret"):
        rush.start_workers(n_workers=1, **FAST)
        future = rush.submit(f.big_array, 2 * MB)
        future.result()
        path = task_fields(rush, future)[b"path"].decode()
        data = bytearray(Path(path).read_bytes())
        data[-1] ^= 1  # one bit changed in the array's last byte
        Path(path).write_bytes(bytes(data))
        with pytest.raises(PayloadSignatureError):
            future.result()


def test_a_result_file_moved_to_another_task_is_refused(redis_url):
    for rush in conftest.fresh_network(redis_url, secret="s3cret"):
        rush.start_workers(n_workers=1, **FAST)
        a, b = rush.submit(f.big_array, 2 * MB), rush.submit(f.big_array, 2 * MB, fill=2.0)
        rush.gather([a, b])
        path_a = task_fields(rush, a)[b"path"].decode()
        path_b = task_fields(rush, b)[b"path"].decode()
        os.replace(path_a, path_b)  # a's signed file now stands for b
        with pytest.raises(PayloadSignatureError, match="moved from another task"):
            b.result()


def test_the_file_outlives_a_sigkilled_producer_on_the_same_host(rush):
    a_id, b_id = rush.start_workers(n_workers=2, **FAST)
    rush.wait_for_workers(2, timeout=TIMEOUT)
    future = rush.submit(f.big_array, 2 * MB, fill=3.0)
    future.result()
    holder = task_fields(rush, future)[b"at"].decode()
    os.kill(rush.local_workers[holder].process.pid, signal.SIGKILL)
    wait_until(
        lambda: holder in rush.detect_lost_workers() or holder in rush.lost_worker_ids, what="holder declared lost"
    )
    survivor = b_id if holder == a_id else a_id
    assert rush.running_worker_ids == [survivor]
    # The survivor reads the dead worker's file: nothing to recompute.
    total = dask.delayed(f.array_sum)(future).compute(scheduler=rush)
    assert total == 3.0 * 2 * MB / 8


def test_other_hosts_fetch_over_tcp_and_a_lost_result_is_recomputed(rush, tmp_path, monkeypatch, caplog):
    """Two 'hosts' (distinct RUSH_HOST_ID): a held result of a worker SIGKILLed on host A is
    fetched by host B, fails, and the compute runs again from its lineage, on B."""
    monkeypatch.setenv("RUSH_HOST_ID", "host-a")
    [worker_a] = rush.start_workers(n_workers=1, **FAST)
    rush.wait_for_workers(1, timeout=TIMEOUT)
    gate = tmp_path / "gate"
    big = dask.delayed(f.big_array)(2 * MB, fill=5.0, dask_key_name="big")
    wait = dask.delayed(f.gate)(str(gate), big, dask_key_name="gate")
    total = dask.delayed(f.array_sum)(big, wait, dask_key_name="total")
    with caplog.at_level(logging.WARNING, logger="rush_dask"):
        import threading

        result: list = []
        thread = threading.Thread(
            target=lambda: result.append(total.compute(scheduler=rush, fuse=False, timeout=TIMEOUT))
        )
        thread.start()

        # Worker A made 'big' and now waits at the gate (the node that depends on it).
        def at_the_gate() -> bool:
            held = rush.client.smembers(rush.keys.held(worker_a))
            return any(rush.client.hget(rush.keys.task(k.decode()), "deps") for k in held)

        wait_until(at_the_gate, what="worker A at the gate, big held by it")
        monkeypatch.setenv("RUSH_HOST_ID", "host-b")
        [worker_b] = rush.start_workers(n_workers=1, **FAST)
        rush.wait_for_workers(worker_ids=[worker_b], timeout=TIMEOUT)
        os.kill(rush.local_workers[worker_a].process.pid, signal.SIGKILL)
        gate.touch()
        thread.join(TIMEOUT)
    assert result == [5.0 * 2 * MB / 8]
    assert "compute again" in caplog.text
    assert rush.running_worker_ids == [worker_b]


def test_a_consumer_on_another_host_fetches_from_the_holders_data_server(rush, monkeypatch):
    monkeypatch.setenv("RUSH_HOST_ID", "host-a")
    [worker_a] = rush.start_workers(n_workers=1, resources={"A": 1}, **FAST)
    monkeypatch.setenv("RUSH_HOST_ID", "host-b")
    [worker_b] = rush.start_workers(n_workers=1, resources={"B": 1}, **FAST)
    rush.wait_for_workers(2, timeout=TIMEOUT)
    (big,) = dask.persist(dask.delayed(f.big_array)(2 * MB, fill=7.0), scheduler=rush, resources={"A": 1})
    assert big.compute(scheduler=rush)[0] == 7.0  # the client has a host id of its own: over TCP
    assert rush.plane.bytes_fetched >= 2 * MB
    total = dask.delayed(f.array_sum)(big).compute(scheduler=rush, resources={"B": 1})
    assert total == 7.0 * 2 * MB / 8
    wait_until(
        lambda: int(rush.client.hget(rush.keys.worker(worker_b), "bytes_fetched") or 0) >= 2 * MB,
        what="worker B fetched A's result over TCP",
    )


def test_large_data_embedded_in_a_graph_goes_to_the_hosts_store_not_redis(two_workers):
    import dask.dataframe as dd
    import pandas as pd

    rush = two_workers
    pdf = pd.DataFrame({"k": np.arange(200_000) % 10, "x": np.arange(200_000, dtype="f8")})
    net_before = rush.client.info("stats")["total_net_input_bytes"]
    total = dd.from_pandas(pdf, npartitions=4).groupby("k").x.sum().compute(scheduler=rush)
    assert total.sort_index().tolist() == pdf.groupby("k").x.sum().tolist()
    assert rush.plane.bytes_held >= pdf.memory_usage().sum()  # the client wrote the partitions
    # Redis received the graph's structure, not its 3.2 MB of data.
    assert rush.client.info("stats")["total_net_input_bytes"] - net_before < 1 * MB
    wait_until(lambda: held_files(rush) == [], what="the partitions' files deleted")


def test_a_client_on_a_host_without_workers_sends_its_data_through_redis(rush, monkeypatch):
    import dask.dataframe as dd
    import pandas as pd

    monkeypatch.setenv("RUSH_HOST_ID", "elsewhere")  # the workers' host; the client has its own
    rush.start_workers(n_workers=1, **FAST)
    rush.wait_for_workers(1, timeout=TIMEOUT)
    pdf = pd.DataFrame({"x": np.arange(100_000, dtype="f8")})
    assert dd.from_pandas(pdf, npartitions=2).x.sum().compute(scheduler=rush) == pdf.x.sum()
    assert rush.plane.bytes_held == 0 and rush.plane.holder_id is None
