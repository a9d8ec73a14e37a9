"""Fusing small subtrees of a Dask graph into one Redis task each.

Every graph node that runs as its own Redis task costs a pop, a settle and a
release in Redis (about 30 µs of Redis time) plus a round trip of the worker.
For trivial nodes (the partial sums of a tree reduction, say) that is far more
than the work itself. So before a graph is written to Redis, a node whose
result is needed by exactly one other node, and by nothing else, is merged
into that node's task: the worker then runs the little subgraph in one go
(``GraphNode.fuse``) and only the subtree's root result goes through Redis.

Groups are capped in size so that a graph still has many more tasks than
there are workers: a wide tree reduction of 2,000 nodes on 2 workers becomes
a few dozen subtree tasks, not one. Nodes with different annotations
(priority, retries, resources) are never merged, and outputs are never
absorbed, since the client reads them by key.

>>> from dask._task_spec import Task, TaskRef
>>> graph = {"a": Task("a", abs, -1), "b": Task("b", abs, -2),
...          "c": Task("c", max, TaskRef("a"), TaskRef("b"))}
>>> fused, members = fuse_subtrees(graph, keep={"c"}, limit=3)
>>> sorted(members["c"])
['a', 'b', 'c']

The same cost hits graphs of many independent outputs (10,000 ``delayed``
calls computed at once): :func:`bundle_outputs` puts outputs that no other
node needs into *bundles*, one Redis task each, whose result is the tuple of
their values; the client splits it. Bundles are kept smaller than fused
groups (``BUNDLES_PER_WORKER``), since their members may be slow tasks that
must still spread evenly over the workers.

>>> graph = {k: Task(k, abs, -i) for i, k in enumerate("abcd")}
>>> bundled, bundles = bundle_outputs(graph, "abcd", limit=2, prefix="g")
>>> bundles
{('g', 0): ['a', 'b'], ('g', 1): ['c', 'd']}
>>> bundled[("g", 1)]({})
(2, 3)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

from dask._task_spec import GraphNode, Task

MAX_GROUP = 256  # nodes per fused task, whatever the graph's size
TASKS_PER_WORKER = 8  # aim for at least this many fused tasks per worker
BUNDLES_PER_WORKER = 32  # and this many bundles of outputs per worker


def group_limit(n_nodes: int, n_workers: int) -> int:
    """The largest group that keeps about ``TASKS_PER_WORKER`` tasks per worker.

    >>> group_limit(2_000, 2)
    125
    """
    return max(1, min(MAX_GROUP, n_nodes // (TASKS_PER_WORKER * max(n_workers, 1))))


def bundle_limit(n_outputs: int, n_workers: int) -> int:
    """The largest bundle that keeps about ``BUNDLES_PER_WORKER`` bundles per worker.

    >>> bundle_limit(10_000, 2)
    156
    """
    return max(1, min(MAX_GROUP, n_outputs // (BUNDLES_PER_WORKER * max(n_workers, 1))))


def bundle_values(*values: Any) -> tuple[Any, ...]:
    """The function of a bundle task: its members' values, in order."""
    return values


def bundle_outputs(
    graph: Mapping[Hashable, GraphNode],
    outputs: Iterable[Hashable],
    limit: int,
    prefix: str,
    options_of: Callable[[Hashable], Any] = lambda key: None,
) -> tuple[dict[Hashable, GraphNode], dict[Hashable, list[Hashable]]]:
    """(the graph with outputs bundled, the member keys of each bundle, in tuple order).

    Only outputs that no node of the graph depends on are bundled, at most
    ``limit`` per bundle, in graph order, and only with outputs of equal
    ``options_of``. Bundle keys are ``(prefix, i)``.
    """
    needed = {dep for node in graph.values() for dep in node.dependencies}
    candidates: dict[Any, list[Hashable]] = {}
    for key in dict.fromkeys(outputs):
        if key in graph and key not in needed:
            candidates.setdefault(options_of(key), []).append(key)
    if limit < 2 or sum(map(len, candidates.values())) < 2:
        return dict(graph), {}
    bundles: dict[Hashable, list[Hashable]] = {}
    for keys in candidates.values():
        for start in range(0, len(keys), limit):
            if len(keys) - start > 1:  # a lone output stays a task of its own
                bundles[(prefix, len(bundles))] = keys[start : start + limit]
    bundled_keys = {key for members in bundles.values() for key in members}
    result = {key: node for key, node in graph.items() if key not in bundled_keys}
    for bundle_key, members in bundles.items():
        result[bundle_key] = Task(bundle_key, bundle_values, *(graph[key] for key in members))
    return result, bundles


def fuse_subtrees(
    graph: Mapping[Hashable, GraphNode],
    keep: Iterable[Hashable],
    limit: int,
    options_of: Callable[[Hashable], Any] = lambda key: None,
) -> tuple[dict[Hashable, GraphNode], dict[Hashable, list[Hashable]]]:
    """(the graph with subtrees fused, the member keys of each fused node, root last).

    ``keep`` are keys that must stay tasks of their own; ``options_of(key)``
    must be equal for two nodes to be merged.
    """
    keep = set(keep)
    dependents: dict[Hashable, list[Hashable]] = {key: [] for key in graph}
    for key, node in graph.items():
        for dep in node.dependencies:
            if dep in dependents:
                dependents[dep].append(key)
    if limit < 2 or not any(dependents.values()):
        return dict(graph), {}

    members: dict[Hashable, list[Hashable]] = {key: [key] for key in graph}
    for key in _topological(graph, dependents):
        group = members[key]
        for dep in graph[key].dependencies:
            if (
                dep in keep
                or len(dependents.get(dep, ())) != 1
                or dep not in members
                or len(group) + len(members[dep]) > limit
                or options_of(dep) != options_of(key)
            ):
                continue
            group[:0] = members.pop(dep)  # inputs before the nodes that use them

    fused: dict[Hashable, GraphNode] = {}
    groups: dict[Hashable, list[Hashable]] = {}
    for root, keys in members.items():
        if len(keys) == 1:
            fused[root] = graph[root]
        else:
            fused[root] = GraphNode.fuse(*(graph[k] for k in keys), key=root)  # type: ignore[arg-type]
            groups[root] = keys
    return fused, groups


def _topological(graph: Mapping[Hashable, GraphNode], dependents: Mapping[Hashable, list[Hashable]]) -> list[Hashable]:
    """Keys with every in-graph dependency before its dependents (Kahn's algorithm)."""
    waiting = {key: sum(dep in graph for dep in node.dependencies) for key, node in graph.items()}
    ready = deque(key for key, n in waiting.items() if n == 0)
    ordered = []
    while ready:
        key = ready.popleft()
        ordered.append(key)
        for dependent in dependents[key]:
            waiting[dependent] -= 1
            if waiting[dependent] == 0:
                ready.append(dependent)
    return ordered
