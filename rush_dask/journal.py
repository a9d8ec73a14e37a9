"""An Optuna journal kept in one Redis list under the network's prefix.

Optuna's ``JournalStorage`` replays a log of operations that every process
appends to. Its own ``JournalRedisBackend`` stores each log entry under a
key of its own and reads new entries with one GET each, so a process that
syncs after 8 other processes each appended 5 entries pays 40 round trips.
:class:`RedisListJournal` keeps the whole log in one Redis list: appending
any number of entries is one RPUSH (atomic, in order) and reading every
entry since the last sync is one LRANGE. The key starts with the network's
prefix ``rush:{NET}:``, so ``rush.reset()`` deletes it with the rest.

>>> from optuna.storages.journal import JournalStorage                 # doctest: +SKIP
>>> storage = JournalStorage(RedisListJournal(rush.url, "rush:{hpo}:optuna"))   # doctest: +SKIP
"""

from __future__ import annotations

import json
from typing import Any, Iterator

from optuna.storages.journal import BaseJournalBackend

from .connections import connect


class RedisListJournal(BaseJournalBackend):
    """Optuna journal backend: the log is the Redis list ``key``.

    Picklable (it reconnects from the URL), so a storage built on it travels
    to worker processes.

    >>> backend = RedisListJournal("redis://127.0.0.1:6379/0", "rush:{hpo}:optuna")   # doctest: +SKIP
    >>> backend.append_logs([{"op_code": 0}])                                         # doctest: +SKIP
    """

    def __init__(self, url: str, key: str):
        self._url = url
        self._key = key
        self._client = connect(url, retry_timeout=60)

    def __getstate__(self) -> dict[str, Any]:
        return {"_url": self._url, "_key": self._key}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["_url"], state["_key"])

    def __repr__(self) -> str:
        return f"RedisListJournal(key={self._key!r})"  # no URL: it may hold a password

    @property
    def key(self) -> str:
        """The Redis list that holds the log."""
        return self._key

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        """Every entry from ``log_number_from`` on, in one LRANGE."""
        for raw in self._client.lrange(self._key, log_number_from, -1):
            yield json.loads(raw)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        """Append ``logs`` in one RPUSH: all of them, in order, or none."""
        if logs:
            self._client.rpush(self._key, *[json.dumps(log) for log in logs])
