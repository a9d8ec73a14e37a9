"""pytest's setup for the examples in rush_dask's docstrings (collected by ``--doctest-modules``).

They get a real Redis through their namespace: ``redis_url`` (a private server
for the session, or ``RUSH_TEST_REDIS_URL``) and ``rush`` (a controller on a
fresh network, no worker, reset afterwards). Here, not in a root conftest.py:
tests and their worker processes ``import conftest`` (tests/conftest.py) with
the repository root on the path. Loaded by pytest only.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def _doctest_redis_url() -> Iterator[str]:
    from rush_dask.core.server import RedisServer

    external = os.environ.get("RUSH_TEST_REDIS_URL")
    if external:
        yield external
        return
    server = RedisServer().start()
    yield server.url
    server.stop()


@pytest.fixture(autouse=True)
def _doctest_namespace(request: pytest.FixtureRequest, doctest_namespace: dict[str, Any]) -> Iterator[None]:
    if not isinstance(request.node, pytest.DoctestItem):
        yield
        return
    from rush_dask import Rush

    url = request.getfixturevalue("_doctest_redis_url")
    rush = Rush(f"doctest-{uuid.uuid4().hex[:10]}", url=url)
    doctest_namespace.update(redis_url=url, rush=rush)
    yield
    rush.reset()
    rush.close()
