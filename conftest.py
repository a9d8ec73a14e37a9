"""Fixtures shared by the test suite (``tests/``) and the doctests of ``rush_dask``.

``python -m pytest`` collects both (``testpaths`` and ``--doctest-modules`` in
pyproject.toml). Doctests get a real Redis through their namespace:
``redis_url`` (the suite's server) and ``rush`` (a controller on a fresh network
of its own, reset afterwards), so an example that talks to Redis runs instead
of being skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: ``RUSH_TEST_REDIS_URL`` if set, else a private server for the session."""
    from rush_dask.server import RedisServer

    external = os.environ.get("RUSH_TEST_REDIS_URL")
    if external:
        yield external
        return
    server = RedisServer().start()
    yield server.url
    server.stop()


@pytest.fixture(autouse=True)
def _doctest_redis(request: pytest.FixtureRequest, doctest_namespace: dict[str, Any]) -> Iterator[None]:
    """For doctests only: ``redis_url`` and a fresh ``rush`` (no worker) in the namespace."""
    if not isinstance(request.node, pytest.DoctestItem):
        yield
        return
    from rush_dask import Rush

    url = request.getfixturevalue("redis_url")
    rush = Rush(f"doctest-{uuid.uuid4().hex[:10]}", url=url)
    doctest_namespace.update(redis_url=url, rush=rush)
    yield
    rush.reset()
    rush.close()
