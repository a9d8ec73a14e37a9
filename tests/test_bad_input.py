"""Bad input raises a clear error before anything is written to Redis."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import funcs
import pytest
from conftest import network_keys

from rush_dask import RedisUnavailableError, Rush, WorkerStartError
from rush_dask.core.server import RedisServer


def _unchanged(rush, redis_url, action, error, match):
    before = network_keys(redis_url, rush)
    n_tasks = rush.n_tasks
    with pytest.raises(error, match=match):
        action()
    assert network_keys(redis_url, rush) == before
    assert rush.n_tasks == n_tasks


BAD_PUSHES = [
    ({"x": 1}, TypeError, "list of dicts.*wrap it"),
    ("abc", TypeError, "list of dicts"),
    (42, TypeError, "list of dicts"),
    ([{"x": 1}, 5], TypeError, r"xss\[1\] must be a dict"),
    ([{1: 2}], TypeError, "not valid Python identifiers"),
    ([{"not an identifier": 2}], TypeError, "not valid Python identifiers"),
    ([{"x": threading.Lock()}], TypeError, "cannot serialize"),
]


@pytest.mark.parametrize("xss, error, match", BAD_PUSHES)
def test_bad_xss(rush, redis_url, xss, error, match):
    rush.push_tasks([{"x": 0}])  # the network has something to lose
    _unchanged(rush, redis_url, lambda: rush.push_tasks(xss), error, match)


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"max_retries": -1}, ValueError, "max_retries"),
        ({"max_retries": 1.5}, TypeError, "max_retries must be an integer"),
        ({"timeout": 0}, ValueError, "timeout must be a positive"),
        ({"timeout": "10"}, ValueError, "timeout must be a positive"),
        ({"priority": 10**6}, ValueError, "priority"),
        ({"seed": -3}, ValueError, "seed"),
        ({"fun": 42}, TypeError, "expected a function"),
        ({"fun": lambda x, _lock=threading.Lock(): x}, TypeError, "cannot serialize function"),  # noqa: B008
        ({"extra": [{"a": 1}, {"a": 2}]}, ValueError, "extra has 2 entries"),
        ({"max_lost": -1}, ValueError, "max_lost must be between 0"),
        ({"max_lost": "3"}, TypeError, "max_lost must be an integer"),
    ],
)
def test_bad_push_options(rush, redis_url, options, error, match):
    _unchanged(rush, redis_url, lambda: rush.push_tasks([{"x": 1}], **options), error, match)


def test_push_is_all_or_nothing_when_one_task_is_bad(rush, redis_url):
    xss = [{"x": i} for i in range(2500)] + [{"x": threading.Lock()}]
    _unchanged(rush, redis_url, lambda: rush.push_tasks(xss), TypeError, "cannot serialize")


def test_unknown_worker_id(rush, redis_url):
    _unchanged(
        rush,
        redis_url,
        lambda: rush.push_priority_tasks([{"x": 1}], worker_ids=["nobody"]),
        ValueError,
        "unknown worker id",
    )
    _unchanged(rush, redis_url, lambda: rush.stop_workers("kill", ["nobody"]), ValueError, "unknown worker id")
    _unchanged(rush, redis_url, lambda: rush.read_log(["nobody"]), ValueError, "unknown worker id")


def test_priority_tasks_need_one_worker_id_per_task(rush, redis_url):
    _unchanged(
        rush,
        redis_url,
        lambda: rush.push_priority_tasks([{"x": 1}, {"x": 2}], worker_ids=["a"]),
        ValueError,
        "one worker id per task",
    )


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"n_workers": 0}, ValueError, "n_workers must be an integer >= 1"),
        ({"n_workers": 2.5}, ValueError, "n_workers must be an integer >= 1"),
        ({"n_workers": 1, "heartbeat_period": 5, "heartbeat_expire": 5}, ValueError, "must be longer"),
        ({"n_workers": 1, "heartbeat_period": -1}, ValueError, "heartbeat_period"),
        ({"n_workers": 1, "worker_loop": "loop"}, TypeError, "worker_loop must be a function"),
        ({"n_workers": 1, "resources": ["GPU"]}, TypeError, "resources must be a dict"),
        ({"n_workers": 1, "lock": threading.Lock()}, TypeError, "cannot serialize"),
        ({"n_workers": 1, "redis_retry_timeout": -1}, ValueError, "redis_retry_timeout must be >= 0"),
    ],
)
def test_bad_start_workers(rush, redis_url, kwargs, error, match):
    _unchanged(rush, redis_url, lambda: rush.start_workers(funcs.add, **kwargs), error, match)
    assert len(rush.local_workers) == 0


def test_unpicklable_function(rush, redis_url):
    lock = threading.Lock()
    _unchanged(
        rush, redis_url, lambda: rush.start_workers(lambda x: lock, n_workers=1), TypeError, "cannot serialize function"
    )


def test_bad_stop_type(rush, redis_url):
    _unchanged(rush, redis_url, lambda: rush.stop_workers("pause"), ValueError, "'terminate' or 'kill'")


@pytest.mark.parametrize("network_id", ["has space", "a*b", "", "x" * 200, "{braces}"])
def test_bad_network_id(redis_url, network_id):
    with pytest.raises(ValueError, match="network_id must be"):
        Rush(network_id, url=redis_url)


def test_redis_down():
    with pytest.raises(RedisUnavailableError, match="cannot reach Redis at redis://127.0.0.1:1/0.*url="):
        Rush("x", url="redis://127.0.0.1:1/0")


def test_wrong_password_is_not_shown():
    server = RedisServer(tcp=True, password="s3cret-pw").start()
    try:
        with pytest.raises(RedisUnavailableError, match="refused the credentials") as info:
            Rush("x", url=f"redis://:wrong-pw@127.0.0.1:{server.port}/0")
        assert "wrong-pw" not in str(info.value)
        with pytest.raises(RedisUnavailableError, match="needs a password") as info:
            Rush("x", url=f"redis://127.0.0.1:{server.port}/0")
        good = Rush("x", url=server.url)
        assert "s3cret-pw" not in repr(good) and "s3cret-pw" not in str(good.local_workers.log_dir())
        assert good.n_tasks == 0
    finally:
        server.stop()


def test_invalid_url():
    with pytest.raises(RedisUnavailableError, match="invalid Redis URL"):
        Rush("x", url="http://:pw@nowhere")


def test_worker_that_crashes_during_start_up_says_why(rush, tmp_path, monkeypatch):
    module = tmp_path / "vanishing_module.py"
    module.write_text("def fun(x):\n    return x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import vanishing_module

    rush.start_workers(vanishing_module.fun, n_workers=1)  # pickled by reference ...
    module.unlink()  # ... to a module the worker cannot import
    with pytest.raises(WorkerStartError, match="(?s)before it registered.*vanishing_module"):
        rush.wait_for_workers(1, timeout=60)
    keys = rush.push_tasks([{"x": 1}])
    with pytest.raises(WorkerStartError, match="vanishing_module"):
        rush.wait_for_tasks(keys, timeout=60)


def test_embedded_server_and_url_resolution(tmp_path):
    """With no URL anywhere, a private server starts and its URL goes to the workers."""
    script = textwrap.dedent("""
        import os, sys
        os.environ.pop("RUSH_REDIS_URL", None)
        sys.path.insert(0, %r)
        import funcs
        import rush_dask
        from rush_dask import Rush
        rush = Rush("embedded")
        assert rush.url.startswith("unix://"), rush.url
        rush.start_workers(funcs.add, n_workers=1)
        keys = rush.push_tasks([{"x1": 20, "x2": 22}])
        rush.wait_for_tasks(keys, timeout=60)
        print("RESULT", rush.data["y"].tolist())
        rush_dask.plan(url="redis://127.0.0.1:1/0")
        try:
            Rush("planned")
        except rush_dask.RedisUnavailableError as exc:
            print("PLAN", "127.0.0.1:1" in str(exc))
        os.environ["RUSH_REDIS_URL"] = rush.url
        print("ENV", Rush("env").url == rush.url)
    """) % str(__import__("pathlib").Path(__file__).parent)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "RESULT [42]" in out.stdout
    assert "PLAN True" in out.stdout
    assert "ENV True" in out.stdout
