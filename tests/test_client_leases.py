"""What a client holds (persisted results, futures) goes when it dies, with or without workers;
a future passed to another client lives while either holds it; holds and releases apply once.

The clients are real processes, SIGKILLed while they hold work on real workers (or none).
"""

from __future__ import annotations

import base64
import functools
import gc
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import conftest
import dask_funcs as f
import pytest

import rush_dask
from rush_dask.core.connections import current_plan

TIMEOUT = 60
LEASE = 2.0
wait_until = functools.partial(conftest.wait_until, timeout=TIMEOUT)
FAST = {"heartbeat_period": 0.2, "heartbeat_expire": 2.0}

HOLDER = textwrap.dedent("""
    import base64, pickle, sys, time
    import dask, dask.array as da
    sys.path.insert(0, {tests!r})
    import dask_funcs as f
    import rush_dask
    from rush_dask import Rush

    rush_dask.plan(n_workers={n_workers})  # 0: never start local workers, whatever happens
    rush = Rush({network!r}, url={url!r})
    x = da.arange(100, chunks=1) + 1                                   # 100 small chunks
    (kept,) = dask.persist(x, scheduler=rush, lease={lease})
    futures = rush.map(f.slow_inc, range(50), duration=0.2, lease={lease})
    answer = rush.submit(f.inc, 41, lease={lease})
    if {wait_answer}:
        answer.result(timeout=60)
    print(rush._completions.client_id, base64.b64encode(pickle.dumps(answer)).decode(), flush=True)
    time.sleep(600)
""")


@pytest.fixture
def no_local_workers():
    """plan(n_workers=0) for one test: no controller of this process starts workers by itself."""
    previous = current_plan()
    n_workers, url = previous.n_workers, previous.url
    rush_dask.plan(n_workers=0, url=url)
    yield
    rush_dask.plan(n_workers=n_workers, url=url)


def start_holder(rush, *, wait_answer: bool, n_workers: int | None = None) -> tuple[subprocess.Popen, str, bytes]:
    """A client process that persists 100 chunks, maps 50 slow calls and submits one; returns
    it once it holds them, with its client id and its pickled future of ``inc(41)``."""
    code = HOLDER.format(
        tests=str(Path(__file__).parent),
        network=rush.network_id,
        url=rush.url,
        lease=LEASE,
        wait_answer=wait_answer,
        n_workers=n_workers,
    )
    client = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    line = client.stdout.readline().split()
    assert len(line) == 2, f"holder failed: exit code {client.poll()}"
    return client, line[0], base64.b64decode(line[1])


def kill(client: subprocess.Popen) -> None:
    client.send_signal(signal.SIGKILL)
    client.wait()


def leftovers(rush, baseline: set[bytes]) -> list[bytes]:
    """Keys of the network that were not there before, but those the workers make as they run
    (their log lists, the turn of the lost-worker sweep) and the task sequence counter."""
    now = conftest.network_keys(rush.url, rush)
    return sorted(k for k in now - baseline if not (k.endswith((b":seq", b":sweep")) or b":log:" in k))


def test_a_sigkilled_client_leaves_nothing_behind_with_running_workers(rush):
    rush.start_workers(n_workers=2, **FAST)
    rush.wait_for_workers(2, timeout=TIMEOUT)
    baseline = conftest.network_keys(rush.url, rush)
    client, client_id, _ = start_holder(rush, wait_answer=False)
    assert leftovers(rush, baseline)  # it holds 150 nodes, and work is queued
    kill(client)
    # Its lease expires; the workers' heartbeats drop what it held and cancel what still waits.
    wait_until(lambda: leftovers(rush, baseline) == [], what="a dead client's keys gone")
    assert rush.client.zscore(rush.keys.clients, client_id) is None
    wait_until(lambda: rush.n_running_tasks == 0 and rush.n_queued_tasks == 0, what="workers idle")


def test_a_sigkilled_client_leaves_nothing_behind_without_workers(rush, no_local_workers):
    # No worker runs: the sweeping falls to the other controllers that hold something.
    mine = rush.submit(f.inc, 1)
    baseline = conftest.network_keys(rush.url, rush)
    client, client_id, _ = start_holder(rush, wait_answer=False, n_workers=0)
    assert rush.n_running_workers == 0 and rush.n_queued_tasks == 1 + 100 + 50 + 1
    kill(client)
    wait_until(lambda: leftovers(rush, baseline) == [], what="a dead client's keys gone")
    assert rush.n_queued_tasks == 1 and mine.status == "queued"  # ours is untouched


def test_a_future_passed_to_another_client_lives_while_either_holds_it(rush):
    rush.start_workers(n_workers=1, **FAST)
    rush.wait_for_workers(1, timeout=TIMEOUT)
    client, client_id, blob = start_holder(rush, wait_answer=True)
    received = pickle.loads(blob)  # held by this client too, from now on
    task_key = received.task_key
    kill(client)
    wait_until(lambda: rush.client.zscore(rush.keys.clients, client_id) is None, what="the dead client reaped")
    assert received.result(timeout=TIMEOUT) == 42  # still there: this client holds it
    del received
    gc.collect()
    wait_until(lambda: not rush.client.exists(rush.keys.task(task_key)), what="released by its last holder")


def test_holds_and_releases_apply_once_per_request(rush):
    rush.start_workers(n_workers=1, **FAST)
    future = rush.submit(f.inc, 1)
    assert future.result(timeout=TIMEOUT) == 2
    key, cid = future.task_key, "another-client"

    def refs() -> int:
        return int(rush.client.hget(rush.keys.task(key), "refs"))

    assert refs() == 1  # this client's
    for _ in range(2):  # the same request twice: its reply was lost, say
        assert rush.scripts.hold([key], client_id=cid, request="h1", lease=60) == []
    assert refs() == 2 and rush.client.hget(rush.keys.client_refs(cid), key) == b"1"
    assert rush.scripts.release([key], client_id=cid, request="r1") == 1
    assert rush.scripts.release([key], client_id=cid, request="r1") == 0  # applied before
    assert refs() == 1 and not rush.client.exists(rush.keys.client_refs(cid))
    assert future.result() == 2
    assert rush.scripts.hold(["no-such-node"], client_id=cid, request="h2", lease=60) == ["no-such-node"]


def test_closing_a_controller_drops_what_it_held(rush, redis_url, no_local_workers):
    other = rush_dask.Rush(rush.network_id, url=redis_url)
    futures = other.map(f.inc, range(5))  # no worker: they stay queued
    assert rush.n_queued_tasks == 5
    other.close()
    assert rush.n_queued_tasks == 0 and rush.client.zcard(rush.keys.clients) == 0
    del futures


def test_a_released_future_that_has_not_run_is_cancelled_unless_fired_and_forgotten(rush, no_local_workers):
    dropped, kept = rush.submit(f.inc, 1), rush.submit(f.inc, 2)
    rush_dask.fire_and_forget(kept)
    task_keys = dropped.task_key, kept.task_key
    dropped.release()
    kept.release()
    assert not rush.client.exists(rush.keys.task(task_keys[0]))  # nobody would read it: gone
    assert rush.n_queued_tasks == 1  # the forgotten one waits for a worker, and will run
    rush.start_workers(n_workers=1, **FAST)
    wait_until(lambda: not rush.client.exists(rush.keys.task(task_keys[1])), what="it ran, then went")
    assert rush.n_queued_tasks == 0


def test_a_client_reaped_while_paused_drops_nothing_twice(rush):
    # A client whose lease ran out (paused) had its holds dropped for it; when it resumes and
    # releases what it believes it holds, another client's hold on the same node must stay.
    rush.start_workers(n_workers=1, **FAST)
    future = rush.submit(f.inc, 1)
    assert future.result(timeout=TIMEOUT) == 2
    key, paused = future.task_key, "paused-client"

    def refs() -> int:
        return int(rush.client.hget(rush.keys.task(key), "refs"))

    assert rush.scripts.hold([key], client_id=paused, request="h1", lease=0.05) == []
    assert refs() == 2
    wait_until(lambda: refs() == 1, what="the paused client's hold reaped by a heartbeat")
    assert rush.scripts.release([key], client_id=paused, request="r1") == 0  # it has no lease now
    assert rush.scripts.renew_client(paused, lease=60, reap_batch=1000) == -1  # it comes back
    assert rush.scripts.release([key], client_id=paused, request="r2") == 0  # it holds nothing
    assert refs() == 1 and future.result() == 2


def test_a_compute_or_persist_of_held_results_holds_them_exactly_as_long_as_it_needs(rush):
    import dask
    import dask.array as da
    import numpy as np

    rush.start_workers(n_workers=1, **FAST)
    (kept,) = dask.persist(da.arange(10, chunks=5), scheduler=rush)
    refs_key = rush.keys.client_refs(rush._completions.client_id)

    def holds() -> dict[str, int]:
        return {k.decode(): int(v) for k, v in rush.client.hgetall(refs_key).items()}

    def refs() -> dict[str, int]:
        return {k: int(rush.client.hget(rush.keys.task(k), "refs")) for k in chunks}

    chunks = holds()
    assert len(chunks) == 2 and set(chunks.values()) == {1}
    # The chunks are outputs of this compute (their concatenation runs here): it holds them
    # while it reads them, under the client's lease, then gives them back.
    assert np.array_equal(dask.compute(kept, scheduler=rush)[0], np.arange(10))
    assert refs() == chunks and holds() == chunks
    assert dask.compute(kept.sum(), scheduler=rush)[0] == 45  # inputs of a compute
    assert refs() == chunks and holds() == chunks
    (again,) = dask.persist(kept, scheduler=rush)  # the same futures: nothing more is held
    assert refs() == chunks and holds() == chunks
    del kept, again
    gc.collect()
    wait_until(lambda: not any(rush.client.exists(rush.keys.task(k)) for k in chunks), what="chunks released")
    assert holds() == {}


def test_tokenizing_a_future_holds_nothing(rush, redis_url):
    # A pure submit tokenizes its arguments. Tokenized by a pickle round trip, a future was
    # adopted by whichever controller of the network this process has open: a hold, a lease
    # thread, and a lease that stayed in Redis as long as that controller lived.
    from dask.base import tokenize

    from rush_dask import Rush

    others = [Rush(rush.network_id, url=redis_url) for _ in range(3)]
    try:
        rush.start_workers(n_workers=1, **FAST)
        a = rush.submit(f.inc, 1)
        b = rush.submit(f.inc, a)  # pure: the key is a token of (inc, a)
        assert b.result(timeout=TIMEOUT) == 3
        assert tokenize(a) == tokenize(a) != tokenize(b)
        assert int(rush.client.hget(rush.keys.task(a.task_key), "refs")) == 1  # this client's alone
        for other in others:
            assert rush.client.zscore(rush.keys.clients, other._completions.client_id) is None
    finally:
        for other in others:
            other.close()
