"""Rush as a Dask scheduler, compared with Dask's synchronous scheduler."""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from pathlib import Path

import dask
import dask.array as da
import dask.bag as db
import dask.dataframe as dd
import dask_funcs as f
import numpy as np
import pandas as pd
import pytest
from conftest import wait_until

import rush_dask
from rush_dask import KilledWorker, Rush

TIMEOUT = 120


def graph_keys(rush) -> list[bytes]:
    """Keys that a graph leaves behind (node hashes, graph bookkeeping)."""
    pattern = rush.keys.prefix.replace("{", "\\{").replace("}", "\\}")
    keys = []
    for kind in ("task:*.*", "graph:*", "gdone:*"):
        keys += list(rush.client.scan_iter(match=pattern + kind))
    return keys


def same(a, b):
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a.sort_index(), b.sort_index())
    elif isinstance(a, pd.Series):
        pd.testing.assert_series_equal(a.sort_index(), b.sort_index())
    else:
        np.testing.assert_equal(a, b)


def test_delayed(rush2):
    total = dask.delayed(sum)([dask.delayed(f.inc)(i) for i in range(50)])
    assert dask.compute(total, scheduler=rush2) == dask.compute(total, scheduler="sync")
    assert total.compute(scheduler=rush2) == 1275
    assert graph_keys(rush2) == []


def test_array(rush2):
    x = da.random.RandomState(0).random((200, 200), chunks=(50, 50))
    y = (x @ x.T + 1).sum(axis=0)
    same(y.compute(scheduler=rush2), y.compute(scheduler="sync"))
    same(x.mean().compute(scheduler=rush2), x.mean().compute(scheduler="sync"))
    assert graph_keys(rush2) == []


def _frames(tmp_path):
    rng = np.random.default_rng(0)
    pdf = pd.DataFrame({"k": rng.integers(0, 10, 400), "v": rng.random(400), "i": np.arange(400)})
    other = pd.DataFrame({"k": range(10), "name": [f"n{i}" for i in range(10)]})
    return dd.from_pandas(pdf, npartitions=4), dd.from_pandas(other, npartitions=2), pdf


def test_dataframe_groupby_merge_set_index(rush2, tmp_path):
    ddf, other, _ = _frames(tmp_path)
    grouped = ddf.groupby("k").v.sum()
    merged = ddf.merge(other, on="k").groupby("name").i.count()
    indexed = ddf.set_index("v").i
    with dask.config.set({"dataframe.shuffle.method": "tasks"}):
        for expr in (grouped, merged, indexed):
            same(expr.compute(scheduler=rush2), expr.compute(scheduler="sync"))
    assert graph_keys(rush2) == []


def test_task_shuffle_on_rush_only_and_no_global_change(rush2):
    from dask.base import collections_to_expr

    from rush_dask.dask.shuffle import has_disk_shuffle, task_shuffle

    assert dask.config.get("dataframe.shuffle.method", None) is None  # Rush() changed nothing
    ddf, _, pdf = _frames(None)
    counts = ddf.shuffle("k").map_partitions(len)
    with task_shuffle():
        graph = dict(collections_to_expr([counts]).optimize().__dask_graph__())
    assert not has_disk_shuffle(dask._task_spec.convert_legacy_graph(graph))
    assert rush2.compute(counts).result(timeout=TIMEOUT).sum() == len(pdf)  # task shuffle
    (persisted,) = dask.persist(counts, scheduler=rush2)
    assert persisted.compute(scheduler=rush2).sum() == len(pdf)
    # dask.compute optimizes before it calls the scheduler: Dask's disk shuffle, fine on one machine
    assert counts.compute(scheduler=rush2).sum() == len(pdf)
    assert dask.config.get("dataframe.shuffle.method", None) is None


def test_read_csv_and_parquet(rush2, tmp_path):
    _, _, pdf = _frames(tmp_path)
    for i in range(3):
        pdf.iloc[i * 100 : (i + 1) * 100].to_csv(tmp_path / f"part-{i}.csv", index=False)
    from_csv = dd.read_csv(str(tmp_path / "part-*.csv")).groupby("k").v.mean()
    same(from_csv.compute(scheduler=rush2), from_csv.compute(scheduler="sync"))
    dd.from_pandas(pdf, npartitions=3).to_parquet(str(tmp_path / "pq"))
    from_parquet = dd.read_parquet(str(tmp_path / "pq")).v.sum()
    assert from_parquet.compute(scheduler=rush2) == pytest.approx(pdf.v.sum())


def test_bag(rush2):
    bag = db.from_sequence(range(100), npartitions=7).map(f.inc).filter(lambda x: x % 3 == 0)
    assert bag.compute(scheduler=rush2) == bag.compute(scheduler="sync")
    assert bag.frequencies().compute(scheduler=rush2) == bag.frequencies().compute(scheduler="sync")


def test_plain_dict_graph_and_nested_keys(rush2):
    graph = {"a": 1, "b": (f.inc, "a"), "c": (f.add, "a", "b"), "d": (sum, ["a", "b", "c"])}
    assert rush2.get(graph, "d") == 6
    assert rush2.get(graph, [["a", "b"], "c"]) == ((1, 2), 3)  # tuples, as Dask's own get
    assert graph_keys(rush2) == []


def test_config_set_and_named_scheduler(rush2):
    value = dask.delayed(f.inc)(41)
    with dask.config.set(scheduler=rush2):
        assert value.compute() == 42
    assert rush2.n_tasks == 0  # graph nodes are not Rush tasks: the archive stays clean


def test_error_reraises_original_type_with_remote_traceback(rush2):
    good = dask.delayed(f.slow_inc)(1, duration=2)
    bad = dask.delayed(f.boom)(7)
    with pytest.raises(ZeroDivisionError, match="boom on 7") as info:
        dask.compute(good, dask.delayed(f.add)(bad, good), scheduler=rush2)
    assert "dask_funcs.py" in info.value.remote_traceback
    assert "boom" in info.value.remote_traceback
    time.sleep(2.5)  # the slow node finishes after the cancel: its result must be dropped
    assert graph_keys(rush2) == []
    assert dask.delayed(f.inc)(1).compute(scheduler=rush2) == 2  # still usable


def test_retries_keyword_and_annotation(rush2, tmp_path):
    flaky = dask.delayed(f.fail_first_time)(1, str(tmp_path))
    assert flaky.compute(scheduler=rush2, retries=1) == 10
    with dask.annotate(retries=1):
        other = dask.delayed(f.fail_first_time)(2, str(tmp_path))
    assert dask.compute(other, scheduler=rush2, optimize_graph=False) == (20,)
    with pytest.raises(RuntimeError, match="first attempt fails"):
        dask.delayed(f.fail_first_time)(3, str(tmp_path)).compute(scheduler=rush2)


def test_priority_order_with_one_worker(rush, tmp_path):
    rush.start_workers(n_workers=1)
    rush.wait_for_workers(1, timeout=TIMEOUT)
    path = str(tmp_path / "order.txt")
    low = [dask.delayed(f.record_order)(i, path, dask_key_name=f"low-{i}") for i in range(3)]
    with dask.annotate(priority=10):
        high = [dask.delayed(f.record_order)(10 + i, path, dask_key_name=f"high-{i}") for i in range(3)]
    dask.compute(low + high, scheduler=rush, optimize_graph=False)
    ran = [int(x) for x in Path(path).read_text().split()]
    assert sorted(ran[:3]) == [10, 11, 12]  # every high-priority node before any other

    Path(path).write_text("")
    items = [dask.delayed(f.record_order)(i, path, dask_key_name=f"kw-{i}") for i in range(3)]
    dask.compute(items, scheduler=rush, priority=5)  # keyword form: all the same priority
    assert sorted(int(x) for x in Path(path).read_text().split()) == [0, 1, 2]


def test_resources_send_nodes_to_workers_that_have_them(rush):
    plain = rush.start_workers(n_workers=1)
    gpu = rush.start_workers(n_workers=1, resources={"GPU": 1})
    rush.wait_for_workers(2, timeout=TIMEOUT)
    pids = {w: rush.local_workers[w].process.pid for w in plain + gpu}
    with dask.annotate(resources={"GPU": 1}):
        on_gpu = [dask.delayed(f.which_worker)(i, dask_key_name=f"g-{i}") for i in range(8)]
    got = dask.compute(on_gpu, scheduler=rush, optimize_graph=False)[0]
    assert set(got) == {pids[gpu[0]]}
    got = dask.compute([dask.delayed(f.which_worker)(i) for i in range(4)], scheduler=rush, resources={"GPU": 1})[0]
    assert set(got) == {pids[gpu[0]]}


def test_nodes_that_need_resources_count_as_queued(rush):
    futures = rush.map(f.inc, range(3), resources={"GPU": 1})  # no worker runs: they wait
    assert rush.n_queued_tasks == 3
    assert [future.status for future in futures] == ["queued"] * 3


def test_worker_sigkilled_mid_graph(rush2, tmp_path):
    leaves = [dask.delayed(f.slow_inc)(i, duration=0.02) for i in range(40)]
    victim = dask.delayed(f.sigkill_once)(5, str(tmp_path))
    total = dask.delayed(sum)(leaves + [victim])
    assert total.compute(scheduler=rush2) == sum(range(1, 41)) + 105
    assert rush2.n_lost_workers == 1
    assert graph_keys(rush2) == []


def test_node_lost_too_often_raises_killed_worker(rush, tmp_path):
    rush.start_workers(n_workers=3, heartbeat_period=0.2, heartbeat_expire=1.0)
    rush.wait_for_workers(3, timeout=TIMEOUT)
    deadly = dask.delayed(f.kill_self)(1)
    with pytest.raises(KilledWorker, match="lost"):
        deadly.compute(scheduler=rush, max_lost=1)
    assert graph_keys(rush) == []


def test_persist_then_reuse(rush2):
    x = da.arange(100, chunks=10) * 2
    (persisted,) = dask.persist(x, scheduler=rush2)
    assert all(isinstance(v, rush_dask.RushFuture) for v in dict(persisted.__dask_graph__()).values())
    n_before = rush2.client.zcard(rush2.keys.queue)
    assert (persisted + 1).sum().compute(scheduler=rush2) == (x + 1).sum().compute(scheduler="sync")
    assert persisted.sum().compute(scheduler=rush2) == 9900
    assert n_before >= 0
    del persisted
    gc.collect()  # released by the client's listener thread, in one batch
    wait_until(lambda: graph_keys(rush2) == [], TIMEOUT, "the persisted results released")


def test_futures_submit_map_gather_as_completed(rush2):
    a = rush2.submit(f.inc, 1)
    b = rush2.submit(f.add, a, 10)  # a future as argument of another submit
    assert b.result(timeout=TIMEOUT) == 12
    assert a.status == "finished" and a.done()
    nested = rush2.submit(sum, [a, a, 1], start=0)  # futures inside a list argument
    keyed = rush2.submit(f.add, {"x": a}["x"], b=b)  # and as keyword arguments
    assert nested.result(timeout=TIMEOUT) == 5 and keyed.result(timeout=TIMEOUT) == 14
    futures = rush2.map(f.add, range(5), range(5))
    assert rush2.gather(futures) == [0, 2, 4, 6, 8]
    done = list(rush_dask.as_completed(futures))
    assert sorted(x.result() for x in done) == [0, 2, 4, 6, 8]
    failing = rush2.submit(f.boom, 3)
    with pytest.raises(ZeroDivisionError, match="boom on 3"):
        failing.result(timeout=TIMEOUT)
    with pytest.raises(ZeroDivisionError):  # building on a failed future re-raises its error
        rush2.submit(f.inc, failing).result(timeout=TIMEOUT)
    slow = rush2.submit(f.slow_inc, 1, 0.5)
    doomed = rush2.submit(f.boom, slow)  # fails later, after its input finished
    after = rush2.submit(f.inc, doomed)  # ... and so does what depends on it
    with pytest.raises(ZeroDivisionError, match="boom on 2"):
        after.result(timeout=TIMEOUT)


def test_future_inside_delayed(rush2):
    future = rush2.submit(f.inc, 41)
    assert dask.delayed(f.add)(future, 1).compute(scheduler=rush2) == 43
    assert dask.delayed(sum)([future, future]).compute(scheduler=rush2) == 84


def test_future_released_on_garbage_collection_and_release(rush2):
    future = rush2.submit(f.inc, 1)
    assert future.result() == 2
    key = rush2.keys.task(future.task_key)
    assert rush2.client.exists(key)
    future.release()
    assert not rush2.client.exists(key) and future.status == "released"
    other = rush2.submit(f.inc, 2)
    other.result()
    key = rush2.keys.task(other.task_key)
    del other
    gc.collect()  # the release of collected futures is batched by the client's listener thread
    wait_until(lambda: not rush2.client.exists(key), TIMEOUT, "the collected future released")
    assert graph_keys(rush2) == []


def test_two_clients_with_equal_keys(rush2, redis_url):
    other = Rush(rush2.network_id, url=redis_url)
    results = {}

    def run(name, client, offset):
        graph = {"x": offset, "y": (f.slow_inc, "x", 0.01), "z": (f.add, "x", "y")}
        results[name] = [client.get(graph, "z") for _ in range(5)]

    threads = [threading.Thread(target=run, args=("a", rush2, 0)), threading.Thread(target=run, args=("b", other, 100))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert results == {"a": [1] * 5, "b": [201] * 5}
    assert graph_keys(rush2) == []


def test_progress_bar_and_callbacks(rush2, capsys):
    from dask.callbacks import Callback
    from dask.diagnostics import ProgressBar

    seen = []

    class Record(Callback):
        def _start(self, dsk):
            seen.append(("start", len(dsk)))

        def _posttask(self, key, result, dsk, state, worker_id):
            seen.append(("post", key))

        def _finish(self, dsk, state, errored):
            seen.append(("finish", len(state["finished"]), errored))

    values = [dask.delayed(f.slow_inc)(i, 0.05) for i in range(10)]
    with ProgressBar(minimum=0, dt=0.01), Record():
        dask.compute(values, scheduler=rush2)
    out = capsys.readouterr().out
    assert "100% Completed" in out
    assert seen[0][0] == "start" and seen[-1] == ("finish", seen[0][1], False)
    assert sum(1 for s in seen if s[0] == "post") == seen[0][1]


def test_named_scheduler_rush_uses_the_default_network(tmp_path):
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import dask, rush_dask
        rush_dask.plan(n_workers=1)
        print("RESULT", dask.delayed(sum)([1, 2, 3]).compute(scheduler="rush"))
        (p,) = dask.persist(dask.delayed(sum)([4, 5]), scheduler="rush")
        print("PERSIST", p.compute(scheduler="rush"))
    """)
    env = {k: v for k, v in os.environ.items() if k != "RUSH_REDIS_URL"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=TIMEOUT, env=env)
    assert out.returncode == 0, out.stderr
    assert "RESULT 6" in out.stdout and "PERSIST 9" in out.stdout


def test_unknown_compute_keyword_is_ignored_and_logged(rush2, caplog):
    with caplog.at_level(logging.DEBUG, logger="rush_dask"):
        assert dask.delayed(f.inc)(1).compute(scheduler=rush2, priorty=3, foo="bar") == 2
    assert "ignoring compute keyword(s) ['foo', 'priorty']" in caplog.text
    assert graph_keys(rush2) == []


def test_functions_and_classes_of_main_run_on_workers(redis_url, tmp_path):
    """A script's own functions and classes are shipped by value, not by a name workers lack."""
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "user_script.py"
    script.write_text(
        textwrap.dedent(f"""
        import dask
        from rush_dask import Rush

        class Point:
            def __init__(self, x):
                self.x = x

        def double(p):
            return {{"y": p.x * 2}}

        def triple(x):
            return x * 3

        rush = Rush("main-{os.getpid()}", url={redis_url!r})
        rush.start_workers(n_workers=1)
        keys = rush.push_tasks([{{"p": Point(4)}}], fun=double)
        rush.wait_for_tasks(keys, timeout=60)
        print("PUSH", rush.fetch_finished_tasks()["y"].tolist(), rush.n_failed_tasks)
        print("SUBMIT", rush.submit(triple, 5).result(timeout=60))
        print("DELAYED", dask.delayed(triple)(2).compute(scheduler=rush))
        rush.reset()
    """)
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=TIMEOUT, cwd=str(tmp_path)
    )
    assert out.returncode == 0, out.stderr
    assert "PUSH [8] 0" in out.stdout and "SUBMIT 15" in out.stdout and "DELAYED 6" in out.stdout


def test_failure_while_the_graph_is_still_being_pushed(rush2):
    """Nodes pushed after their input failed fail at once; nothing waits forever or leaks."""
    bad = dask.delayed(f.boom)(1, dask_key_name="bad")
    items = [dask.delayed(f.add)(bad, i) for i in range(2000)]
    with pytest.raises(ZeroDivisionError, match="boom on 1"):
        dask.compute(*items, scheduler=rush2)
    assert graph_keys(rush2) == []

    persisted = dask.persist(*items, scheduler=rush2)
    with pytest.raises(ZeroDivisionError, match="boom on 1"):
        dask.compute(persisted[-1], scheduler=rush2)
    futures = [v for p in persisted for v in dict(p.__dask_graph__()).values()]
    assert all(fut.status == "failed" for fut in futures)
    del persisted, futures
    gc.collect()  # released by the client's listener thread, in one batch
    wait_until(lambda: graph_keys(rush2) == [], TIMEOUT, "the collected futures released")


def test_to_dask_dataframe_matches_fetch_finished_tasks(rush2):
    keys = rush2.push_tasks([{"x": i, "label": f"n{i % 7}"} for i in range(3000)], fun=f.square_dict)
    rush2.wait_for_tasks(keys, timeout=TIMEOUT)
    expected = rush2.fetch_finished_tasks()
    ddf = rush2.to_dask_dataframe(partition_size=700)
    assert ddf.npartitions == 5
    for scheduler in ("sync", rush2):
        got = ddf.compute(scheduler=scheduler).reset_index(drop=True)
        # Dask turns text columns into its own string dtype: same text, both strings.
        for column in expected:
            if pd.api.types.is_string_dtype(expected[column]):
                assert pd.api.types.is_string_dtype(got[column]), column
                got[column] = got[column].astype("string")
            else:
                assert got[column].dtype == expected[column].dtype, column
        strings = {c: "string" for c in expected if pd.api.types.is_string_dtype(expected[c])}
        pd.testing.assert_frame_equal(got, expected.astype(strings))
    assert ddf.y.sum().compute(scheduler=rush2) == sum(i * i for i in range(3000))
    assert pd.api.types.is_integer_dtype(ddf.y.dtype) and pd.api.types.is_integer_dtype(ddf.pid.dtype)
    assert pd.api.types.is_datetime64_any_dtype(ddf.finished_at.dtype)
    assert graph_keys(rush2) == []


def test_to_dask_dataframe_bad_arguments(rush2):
    with pytest.raises(ValueError, match="states must be among"):
        rush2.to_dask_dataframe(states=("done",))
    with pytest.raises(ValueError, match="partition_size"):
        rush2.to_dask_dataframe(partition_size=0)
    assert rush2.to_dask_dataframe().compute().empty
