"""Who sweeps a network for lost workers, and when.

A sweep (the MARK_WORKERS script with a scan, plus this host's check of
worker pids) reads every worker of the network: its cost grows with N.
Idle workers used to sweep each every ``heartbeat_expire``, so a network of
N idle workers ran N sweeps of O(N) work per period: O(N²), which the scale
model (``benchmarks/scale_model.py``) showed at N = 1,000.

Now the sweep is a *turn* of the network: an idle worker asks for it every
``heartbeat_period`` or so (jittered, so that workers started together do
not ask together) with one ``SET NX PX`` on the network's turn key, and only
the worker that gets the turn sweeps. The network then sweeps at most once
per :data:`SWEEP_TURN_MS` whatever N: the work is O(N) per second in all, a
constant per worker, and a lost worker is declared within
``heartbeat_expire`` + about a second once the network has a few idle
workers (with one idle worker: + up to 1.5 ``heartbeat_period``).
``Rush.detect_lost_workers()`` sweeps at once, without a turn.
"""

from __future__ import annotations

import random
from typing import Any

from .constants import Keys

SWEEP_TURN_MS = 1_000  # at most one sweep per network per this many milliseconds


def next_attempt(period: float, now: float) -> float:
    """When (monotonic seconds) an idle worker next asks for the sweep turn: ``period`` ± 50 %.

    >>> 5.0 <= next_attempt(10.0, 0.0) <= 15.0
    True
    """
    return now + period * random.uniform(0.5, 1.5)


def take_turn(client: Any, keys: Keys, holder: str, turn_ms: int = SWEEP_TURN_MS) -> bool:
    """Whether ``holder`` got the network's sweep turn (nobody else had it in the last ``turn_ms``).

    One round trip: ``SET <prefix>sweep <holder> NX PX <turn_ms>``; the key
    expires by itself, so a sweeper that dies holds nothing.

    >>> take_turn(client, Keys("net"), "w1")    # doctest: +SKIP
    True
    """
    return bool(client.set(keys.sweep_turn, holder, nx=True, px=turn_ms))
