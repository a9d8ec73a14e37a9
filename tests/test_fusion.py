"""Small subtrees of a Dask graph run as one Redis task (rush_dask.dask.fusion)."""

from __future__ import annotations

from operator import add

import dask
import dask_funcs as f
import pytest
from dask._task_spec import DataNode, Task, TaskRef, execute_graph
from dask.callbacks import Callback
from test_dask import TIMEOUT, graph_keys

from rush_dask.dask.fusion import bundle_limit, bundle_outputs, fuse_subtrees, group_limit


@pytest.fixture
def rush2(rush):
    rush.start_workers(n_workers=2)
    rush.wait_for_workers(2, timeout=TIMEOUT)
    return rush


def binary_tree(leaves: int) -> tuple[dict, str]:
    """A Task graph summing ``range(leaves)`` pairwise; returns (graph, root key)."""
    graph = {f"leaf-{i}": DataNode(f"leaf-{i}", i) for i in range(leaves)}
    level = list(graph)
    depth = 0
    while len(level) > 1:
        depth += 1
        nxt = []
        for i in range(0, len(level) - 1, 2):
            key = f"sum-{depth}-{i}"
            graph[key] = Task(key, add, TaskRef(level[i]), TaskRef(level[i + 1]))
            nxt.append(key)
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return graph, level[0]


def delayed_tree(leaves: int):
    values = [dask.delayed(f.inc)(i) for i in range(leaves)]
    while len(values) > 1:
        values = [
            dask.delayed(f.add)(*values[i : i + 2]) if i + 1 < len(values) else values[i]
            for i in range(0, len(values), 2)
        ]
    return values[0]


def test_subtrees_are_fused_up_to_the_limit_and_compute_the_same():
    graph, root = binary_tree(64)
    fused, groups = fuse_subtrees(graph, keep={root}, limit=15)
    assert root in fused and len(fused) < len(graph) / 4
    assert all(len(members) <= 15 for members in groups.values())
    # Every node is computed by exactly one task, and each group ends with its root.
    covered = [k for root_key in fused for k in groups.get(root_key, [root_key])]
    assert sorted(covered) == sorted(graph)
    assert all(members[-1] == key for key, members in groups.items())
    assert execute_graph(fused, keys={root})[root] == execute_graph(graph, keys={root})[root] == 2016


def test_shared_inputs_outputs_and_different_options_are_not_fused():
    graph = {
        "shared": DataNode("shared", 1),
        "a": Task("a", add, TaskRef("shared"), 1),
        "b": Task("b", add, TaskRef("shared"), 2),  # "shared" has two dependents
        "c": Task("c", add, TaskRef("a"), TaskRef("b")),
    }
    fused, groups = fuse_subtrees(graph, keep={"c", "a"}, limit=10)
    assert set(fused) == {"shared", "a", "c"} and groups == {"c": ["b", "c"]}
    fused, groups = fuse_subtrees(graph, keep={"c"}, limit=10, options_of=lambda key: "high" if key == "b" else None)
    assert set(fused) == {"shared", "b", "c"} and groups == {"c": ["a", "c"]}
    assert fuse_subtrees(graph, keep={"c"}, limit=1) == (graph, {})


def test_group_limit_keeps_several_tasks_per_worker():
    assert group_limit(2_000, 2) == 125
    assert group_limit(10, 4) == 1
    assert group_limit(10**6, 1) == 256


def test_fused_compute_sends_fewer_tasks_and_reports_every_key(rush2):
    tree = delayed_tree(200)
    expected = dask.compute(tree, scheduler="sync")
    seq = rush2.keys.seq
    counts, posted = {}, {}

    class Record(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            posted.setdefault(mode, []).append(key)

        def _start(self, dsk):
            counts[mode] = len(dsk)

    for mode in (False, True):
        before = int(rush2.client.get(seq) or 0)
        with Record():
            assert dask.compute(tree, scheduler=rush2, fuse=mode) == expected
        counts[f"tasks-{mode}"] = int(rush2.client.get(seq)) - before
    assert counts["tasks-False"] == counts[False]  # one Redis task per node
    assert counts["tasks-True"] < counts[False] / 4  # fused into subtrees
    assert sorted(map(str, posted[True])) == sorted(map(str, posted[False]))
    assert len(posted[True]) == counts[True]  # callbacks see every Dask key
    assert graph_keys(rush2) == []


def test_error_inside_a_fused_subtree_reraises_the_original(rush2):
    values = [dask.delayed(f.inc)(i) for i in range(8)]
    values[5] = dask.delayed(f.boom)(5)
    total = dask.delayed(sum)([dask.delayed(f.add)(values[i], values[i + 1]) for i in range(0, 8, 2)])
    with pytest.raises(ZeroDivisionError, match="boom on 5") as info:
        dask.compute(total, scheduler=rush2, fuse=100)
    assert "boom" in info.value.remote_traceback
    assert graph_keys(rush2) == []


@pytest.mark.parametrize("bad", [0, -3, 2.5, "yes"])
def test_bad_fuse_value_is_refused_before_anything_is_written(rush2, bad):
    seq = rush2.client.get(rush2.keys.seq)
    with pytest.raises(ValueError, match="fuse must be"):
        dask.compute(delayed_tree(4), scheduler=rush2, fuse=bad)
    assert rush2.client.get(rush2.keys.seq) == seq and graph_keys(rush2) == []


def test_independent_outputs_are_bundled_in_order_by_options():
    graph = {f"x{i}": Task(f"x{i}", abs, -i) for i in range(7)}
    graph["used"] = DataNode("used", 10)
    graph["y"] = Task("y", add, TaskRef("used"), 1)
    outputs = [*(f"x{i}" for i in range(7)), "used", "y"]
    bundled, bundles = bundle_outputs(graph, outputs, limit=3, prefix="b", options_of=lambda key: key == "x6")
    # "used" is needed by "y": it stays a task. "x6" differs in options and "y" is
    # left over after two full bundles: alone, each stays a task too.
    assert bundles == {("b", 0): ["x0", "x1", "x2"], ("b", 1): ["x3", "x4", "x5"]}
    assert set(bundled) == {("b", 0), ("b", 1), "x6", "used", "y"}
    results = execute_graph(bundled, keys=set(bundled))
    assert results[("b", 1)] == (3, 4, 5)
    assert bundle_outputs(graph, outputs, limit=1, prefix="b") == (graph, {})
    assert bundle_limit(10_000, 2) == 156 and bundle_limit(10, 2) == 1


def test_bundled_compute_sends_few_tasks_and_reports_every_key(rush2):
    values = [dask.delayed(f.inc)(i) for i in range(2_000)]
    seq = rush2.keys.seq
    posted = []

    class Record(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            posted.append(key)

    before = int(rush2.client.get(seq) or 0)
    with Record():
        assert dask.compute(*values, scheduler=rush2) == tuple(range(1, 2_001))
    assert int(rush2.client.get(seq)) - before < 2_000 / 10  # bundles, not one task each
    assert sorted(map(str, posted)) == sorted(str(v.key) for v in values)
    assert graph_keys(rush2) == []
    before = int(rush2.client.get(seq))
    assert dask.compute(*values[:100], scheduler=rush2, fuse=False) == tuple(range(1, 101))
    assert int(rush2.client.get(seq)) - before == 100


def test_error_in_a_bundle_reraises_the_original_and_leaves_nothing(rush2):
    values = [dask.delayed(f.inc)(i) for i in range(500)]
    values[321] = dask.delayed(f.boom)(321)
    with pytest.raises(ZeroDivisionError, match="boom on 321") as info:
        dask.compute(*values, scheduler=rush2)
    assert "boom" in info.value.remote_traceback
    assert graph_keys(rush2) == []
    assert dask.compute(*values[:10], scheduler=rush2) == tuple(range(1, 11))  # still usable


def test_persist_and_futures_are_never_bundled(rush2):
    values = [dask.delayed(f.inc)(i) for i in range(300)]
    persisted = dask.persist(*values, scheduler=rush2)
    futures = [v.dask[v.key] for v in persisted]
    assert len({fut.task_key for fut in futures}) == 300  # one Redis task per future
    assert dask.compute(*persisted, scheduler=rush2) == tuple(range(1, 301))
    del persisted, futures


def test_an_input_read_by_many_nodes_is_unpickled_once_per_worker(rush, tmp_path):
    """Ten nodes take a piece of one 10 KB value (small enough to come inline with
    each of them): the worker keeps it unpickled, as in a task-based shuffle."""
    rush.start_workers(n_workers=1)
    rush.wait_for_workers(1, timeout=TIMEOUT)
    log = tmp_path / "unpickled.log"
    shared = dask.delayed(f.counted_value)(log, 10_000)
    pieces = [dask.delayed(f.piece_of)(shared, i) for i in range(10)]
    assert dask.compute(*pieces, scheduler=rush, fuse=False) == tuple(10_000 + i for i in range(10))
    # The worker made the value itself: it never had to unpickle it (it did ten times before).
    assert not log.exists() or len(log.read_text().splitlines()) <= 1
    assert graph_keys(rush) == []
