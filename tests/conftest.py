"""Fixtures: a real Redis server and a fresh network per test.

By default the suite starts its own private Redis server. Set
``RUSH_TEST_REDIS_URL`` (for example ``redis://127.0.0.1:6379/0``) to run it
against an external Redis instead; the suite then deletes only the keys of
the networks it created, never anything else.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest
import redis

from rush_dask import Rush
from rush_dask.core.server import RedisServer


@pytest.fixture(scope="session")
def redis_url():
    external = os.environ.get("RUSH_TEST_REDIS_URL")
    if external:
        yield external
        return
    server = RedisServer().start()
    yield server.url
    server.stop()


@pytest.fixture
def network_id():
    return f"test-{uuid.uuid4().hex[:10]}"


def fresh_network(url: str, network_id: str | None = None, **options):
    """A controller on a network of its own; afterwards reset(), close() and no key of it left.

    For fixtures: ``yield from fresh_network(redis_url, secret="...")``.
    """
    controller = Rush(network_id or f"test-{uuid.uuid4().hex[:10]}", url=url, **options)
    yield controller
    controller.reset()
    controller.close()
    leftover = list(redis.Redis.from_url(url).scan_iter(match=controller.keys.pattern))
    assert leftover == [], f"reset() left keys behind: {leftover[:5]}"


@pytest.fixture
def rush(redis_url, network_id):
    yield from fresh_network(redis_url, network_id)


@pytest.fixture
def rush2(rush):
    """``rush`` with two running workers that heartbeat fast (lost within about a second)."""
    rush.start_workers(n_workers=2, heartbeat_period=0.2, heartbeat_expire=1.0)
    rush.wait_for_workers(2, timeout=120)
    return rush


def wait_until(condition, timeout: float, what: str = "condition") -> None:
    """Poll ``condition`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout} s")
        time.sleep(0.02)


def network_keys(url: str, network: Rush) -> set[bytes]:
    """Every key of one network, for 'nothing was written' checks."""
    return set(redis.Redis.from_url(url).scan_iter(match=network.keys.pattern))
