"""An Optuna journal kept in one Redis list under the network's prefix.

Optuna's ``JournalStorage`` replays a log of operations that every process
appends to. Its own ``JournalRedisBackend`` stores each log entry under a
key of its own and reads new entries with one GET each, so a process that
syncs after 8 other processes each appended 5 entries pays 40 round trips.
:class:`RedisListJournal` keeps the whole log in one Redis list: appending
any number of entries is one RPUSH (atomic, in order) and reading every
entry since the last sync is one LRANGE. ``JournalStorage`` syncs right
after each append; so an append is one script that pushes the entries and
reads back everything from this process's last read on (the entries of
others first, then its own), and that sync is answered without a second
round trip. ``JournalStorage`` also syncs on every read, several times
within one ``ask`` or ``tell``; a read that comes less than
``max_staleness`` seconds (default 2 ms) after this process's last sync
returns nothing new, as if it had come a moment earlier. Its own entries
are always read back. The key starts with the network's
prefix ``rush:{NET}:``, so ``rush.reset()`` deletes it with the rest.

>>> from optuna.storages.journal import JournalStorage                 # doctest: +SKIP
>>> storage = JournalStorage(RedisListJournal(rush.url, "rush:{hpo}:optuna"))   # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any, cast

from optuna.storages.journal import BaseJournalBackend

from .core.connections import connect

# KEYS: the list. ARGV: position read so far, then the entries. Returns the entries from that position.
_APPEND_AND_READ = """
redis.call('RPUSH', KEYS[1], unpack(ARGV, 2))
return redis.call('LRANGE', KEYS[1], ARGV[1], -1)
"""


class RedisListJournal(BaseJournalBackend):
    """Optuna journal backend: the log is the Redis list ``key``.

    Picklable (it reconnects from the URL), so a storage built on it travels
    to worker processes.

    >>> backend = RedisListJournal(redis_url, "rush:{doctest-journal}:optuna")
    >>> backend.append_logs([{"op_code": 0}])
    >>> list(backend.read_logs(0))
    [{'op_code': 0}]
    >>> connect(redis_url).delete(backend.key)
    1
    """

    def __init__(self, url: str, key: str, max_staleness: float = 0.002):
        self._url = url
        self._key = key
        self._max_staleness = max_staleness
        self._synced_at = float("-inf")  # time.monotonic() of the last sync
        self._client = connect(url, retry_timeout=60)
        self._read_to = 0  # entries read so far by the storage on top of this backend
        self._fresh: tuple[int, list[bytes]] | None = None  # (position, entries) read when appending
        self._append = self._client.register_script(_APPEND_AND_READ)

    def __getstate__(self) -> dict[str, Any]:
        return {"_url": self._url, "_key": self._key, "_max_staleness": self._max_staleness}

    def __setstate__(self, state: dict[str, Any]) -> None:
        RedisListJournal.__init__(self, state["_url"], state["_key"], state.get("_max_staleness", 0.002))

    def __repr__(self) -> str:
        return f"RedisListJournal(key={self._key!r})"  # no URL: it may hold a password

    @property
    def key(self) -> str:
        """The Redis list that holds the log."""
        return self._key

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        """Every entry from ``log_number_from`` on, in one LRANGE (or none, see the module)."""
        fresh, self._fresh = self._fresh, None
        now = time.monotonic()
        if fresh is not None and fresh[0] == log_number_from:
            raws: list[bytes] = fresh[1]
        elif log_number_from == self._read_to and now - self._synced_at < self._max_staleness:
            raws = []  # synced a moment ago: what others appended since can wait for the next sync
        else:
            raws = cast("list[bytes]", self._client.lrange(self._key, log_number_from, -1))
            self._synced_at = now
        entries = [json.loads(raw) for raw in raws]
        self._read_to = log_number_from + len(entries)
        yield from entries

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        """Append ``logs`` (all of them, in order, or none) and read what the next sync needs."""
        if not logs:
            return
        encoded = [json.dumps(log) for log in logs]
        start = self._read_to
        self._fresh = (start, self._append(keys=[self._key], args=[start, *encoded]))
        self._synced_at = time.monotonic()
