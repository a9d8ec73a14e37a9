"""The Lua scripts as files with a header, their declared keys, and the typed layer over them."""

from __future__ import annotations

import re
from importlib import resources

import pytest
import redis

from rush_dask.core.constants import Keys
from rush_dask.core.lualoader import build, load_script, parse_header, script_names
from rush_dask.core.scripts import (
    HeartbeatReply,
    NewNode,
    NewTask,
    Outcome,
    PoppedTask,
    Scripts,
    SettleReply,
    sources,
)
from rush_dask.core.serialize import dumps

SCRIPTS = script_names()


def test_every_script_is_a_file_with_a_full_header():
    assert len(SCRIPTS) == 17
    folder = resources.files("rush_dask.core").joinpath("lua")
    for name in SCRIPTS:
        text = folder.joinpath(f"{name}.lua").read_text()
        assert text.startswith(f"-- {name}: "), f"{name}.lua must open with '-- {name}: what it does'"
        header = parse_header(name, text)
        assert header["ARGV"].startswith("prefix"), name  # ARGV[1] is always the prefix
        assert header["Reply"], name
        assert header["KEYS"], name  # at least one key: a Redis Cluster routes by it


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_script_uses_only_the_keys_it_declares(name):
    script = sources()[name]
    assert load_script(name, {"INLINE_LIMIT": 1, "LOCALITY_MIN": 1}).keys == script.keys
    used = set(re.findall(r"\bK\.(\w+)", script.source))
    assert used <= set(script.keys)
    assert "KEYS[" not in script.source.split("end})\n", 1)[1]  # only the prologue binds KEYS


def test_the_loader_refuses_undeclared_keys_and_families():
    head = "-- bad: x\n-- KEYS: queue\n-- Families: task\n-- ARGV: prefix\n-- Reply: 1\n"
    with pytest.raises(ValueError, match="uses K.running without declaring it"):
        build("bad", head + "return redis.call('SCARD', K.running)")
    with pytest.raises(ValueError, match="builds held:<...> keys without declaring that family"):
        build("bad", head + "return redis.call('SCARD', p .. 'held:' .. ARGV[2])")
    with pytest.raises(ValueError, match="not a fixed key"):
        build("bad", head.replace("queue", "queue nope") + "return 1")
    with pytest.raises(ValueError, match="lacks the line"):
        build("bad", "-- bad: x\n-- KEYS: queue\nreturn 1")


def test_an_undeclared_key_is_an_error_at_run_time(redis_url):
    client = redis.Redis.from_url(redis_url)
    source = build(
        "tiny", "-- tiny: x\n-- KEYS: queue\n-- Families:\n-- ARGV: prefix\n-- Reply: 1\nreturn K[ARGV[2]]"
    ).source
    keys = Keys("lua-check")
    assert client.eval(source, 1, keys.queue, keys.prefix, "queue") == keys.queue.encode()
    with pytest.raises(redis.ResponseError, match="key running is not declared"):
        client.eval(source, 1, keys.queue, keys.prefix, "running")


def test_the_typed_layer_round_trip(rush):
    """A task pushed, popped, finished and a worker stopped, through the typed methods only."""
    scripts = rush.scripts
    assert isinstance(scripts, Scripts)
    assert scripts.register("w-typed", heartbeat_expire_ms=30_000, fields={"pid": 1, "host": "h"})
    assert not scripts.register("w-typed", heartbeat_expire_ms=30_000, fields={})
    base = scripts.push([NewTask("t1", dumps({"x": 1})), NewTask("t2", dumps({"x": 2}))], max_lost=3)
    assert isinstance(base, int)
    reply = scripts.settle_and_pop("w-typed", request=1, want=1, host="h")
    assert isinstance(reply, SettleReply) and reply.kind == "tasks" and reply.notes == []
    (task,) = reply.tasks
    assert isinstance(task, PoppedTask) and task.key == b"t1" and task.attempts == 1
    # A repeated request id gets the same task back, not a new one.
    assert scripts.settle_and_pop("w-typed", request=1, want=1, host="h").tasks[0].key == b"t1"
    reply = scripts.settle_and_pop(
        "w-typed", request=2, want=0, host="h", outcomes=[Outcome("t1", "finished", dumps({"y": 1}))]
    )
    assert (reply.kind, reply.notes, reply.tasks) == ("empty", ["finished"], [])
    assert scripts.fetch_tasks(["t1", "t2"], ["state"]) == [[b"finished"], [b"queued"]]
    assert scripts.heartbeat("w-typed", heartbeat_expire_ms=30_000, reap_batch=10, host="h") == HeartbeatReply(
        "running", False, []
    )
    assert scripts.mark_workers(["w-typed"], state="killed", reason="test") == ["w-typed"]
    assert scripts.mark_workers(["w-typed"], state="killed", reason="test") == []
    stop = scripts.settle_and_pop("w-typed", request=3, host="h", outcomes=[Outcome("t2", "finished", b"")])
    assert (stop.kind, stop.reason, stop.notes) == ("stop", "killed", ["dropped"])
    assert scripts.deregister("w-typed") == "killed"
    assert scripts.empty_queue("emptied") == 1


def test_a_typed_graph_batch(rush):
    scripts = rush.scripts
    nodes = [
        NewNode("g.0", b"a", refs=1, deps=[], dependents=["g.1"], score=0.0),
        NewNode("g.1", b"b", refs=1, deps=["g.0"], dependents=[], score=1.0),
    ]
    assert scripts.push_graph("g", nodes, n_nodes=2, notify="1", lease=60.0) == 1
    assert scripts.push_graph("g", nodes, n_nodes=2, notify="1", lease=60.0) == 0  # applies once
    assert scripts.fetch_tasks(["g.0", "g.1"], ["state", "waiting"]) == [[b"queued", b"0"], [b"waiting", b"1"]]
    assert scripts.renew_lease("g", lease=60.0)
    scripts.cancel_graph("g", ["g.0", "g.1"])
    assert not scripts.renew_lease("g", lease=60.0)
    assert rush.client.exists(rush.keys.task("g.0"), rush.keys.graph("g")) == 0
