"""The soak, short: ``python -m benchmarks.soak`` for half a minute against its own Redis.

Real worker processes, real controllers in subprocesses SIGKILLed mid-work.
Every result must be right, the network's keys must be back to their
baseline once the dead clients' leases expired (whether they computed,
persisted or held futures), Redis memory within 1 MB of its baseline, and no
worker's memory growing without bound. No timing
threshold: the duration only bounds how many rounds run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmarks/ is a package at the repository root
    sys.path.insert(0, str(ROOT))

from benchmarks.soak import report, soak  # noqa: E402 - after the path above
from rush_dask.core.server import RedisServer  # noqa: E402

pytestmark = pytest.mark.slow  # runs in CI; `pytest -m 'not slow'` skips it


@pytest.mark.timeout(300)  # a bound for a hang on a very loaded machine, not a timing check
def test_short_soak_leaves_nothing_behind():
    # A server of its own: Redis memory is compared with its baseline, other tests' keys would blur it.
    server = RedisServer(tcp=True).start()
    try:
        stats = soak(server.url, minutes=0.5, n_workers=2, lease=5.0, memory_tolerance=1 << 20)
    finally:
        server.stop()
    print(report(stats, 0.5))
    assert stats.violations == []
    assert stats.rounds >= 1 and stats.computes >= 2 and stats.plain_tasks >= 100
    assert sum(stats.dead_clients.values()) == stats.rounds
    assert stats.rss, "no worker reported its memory"
