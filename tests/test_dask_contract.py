"""Dask's contract for foreign get functions (dask.utils_test.GetFunctionTestMixin), on real workers."""

from __future__ import annotations

import logging

import dask
import pytest
from dask.utils_test import GetFunctionTestMixin

from conftest import fresh_network

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
