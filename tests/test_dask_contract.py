"""Dask's contract for foreign get functions (dask.utils_test.GetFunctionTestMixin), on real
workers; and what a local scheduler does that a remote one must match: unknown keywords,
data returned as itself, the caller's config seen by tasks, task warnings shown to the caller."""

from __future__ import annotations

import warnings

import dask
import dask_funcs as f
import pytest
from conftest import fresh_network
from dask.utils_test import GetFunctionTestMixin, inc

TIMEOUT = 120


@pytest.fixture(scope="module")
def module_rush(redis_url):
    gen = fresh_network(redis_url)
    rush = next(gen)
    rush.start_workers(n_workers=2)
    rush.wait_for_workers(2, timeout=TIMEOUT)
    yield rush
    gen.close()


class TestRushGet(GetFunctionTestMixin):
    """All eleven checks Dask applies to a get function, against ``rush.get``."""

    @pytest.fixture(autouse=True)
    def _bind(self, module_rush):
        self.get = module_rush.get


def test_unknown_keywords_are_accepted(module_rush):
    assert module_rush.get({"x": 1, "y": (inc, "x")}, "y", num_workers=3, foo=1) == 2


def test_data_comes_back_as_itself(module_rush):
    class Thing:
        pass

    thing = Thing()
    assert dask.delayed(thing).compute(scheduler=module_rush) is thing
    listed = [thing, 1]
    assert dask.delayed(listed, traverse=False).compute(scheduler=module_rush)[0] is thing


def test_client_config_reaches_the_workers(module_rush, tmp_path):
    with dask.config.set({"temporary_directory": str(tmp_path), "array.chunk-size": "3MiB"}):
        value = dask.delayed(f.config_value)("temporary_directory").compute(scheduler=module_rush)
        assert value == str(tmp_path)
        future = module_rush.submit(f.config_value, "array.chunk-size", pure=False)
        assert future.result(timeout=TIMEOUT) == "3MiB"
    # outside the block, the workers' own configuration again
    assert dask.delayed(f.config_value)("temporary_directory").compute(scheduler=module_rush) is None


def test_warnings_in_tasks_reach_the_caller(module_rush):
    with pytest.warns(UserWarning, match=r"careful 7 \(in task 'warn_and_return-"):
        assert dask.delayed(f.warn_and_return)(7).compute(scheduler=module_rush) == 7
    with pytest.warns(UserWarning, match="careful 8"):
        assert module_rush.submit(f.warn_and_return, 8).result(timeout=TIMEOUT) == 8
    with pytest.warns(UserWarning, match="careful 10"):
        module_rush.gather([module_rush.submit(f.warn_and_return, 10)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # as with a local scheduler, the caller's filters apply
        with pytest.raises(UserWarning, match="careful 9"):
            dask.delayed(f.warn_and_return)(9).compute(scheduler=module_rush)
    assert module_rush.client.keys(module_rush.keys.prefix.replace("{", "\\{").replace("}", "\\}") + "gwarn:*") == []
