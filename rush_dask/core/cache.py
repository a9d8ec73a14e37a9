"""A worker's small cache of graph results, bounded by their serialized size.

A dependent that runs on the worker that made (or already read) its input
takes it from here instead of downloading it from Redis again, or, for an
input small enough to come inline with the task, instead of unpickling it
again: in a task-based shuffle ten consumers take one piece each of the
same group of pieces. Tiny results are not kept; unpickling them is cheaper
than the bookkeeping.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

MIN_BYTES = 2_048  # smaller results are not kept


class ResultCache:
    """Least-recently-used mapping task key -> value, at most ``max_bytes`` of payload.

    >>> cache = ResultCache(max_bytes=200_000)
    >>> cache.put("a", [1, 2], 100_000)
    >>> "a" in cache, cache["a"]
    (True, [1, 2])
    """

    def __init__(self, max_bytes: int = 256 * 2**20):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._bytes = 0

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __getitem__(self, key: str) -> Any:
        self._entries.move_to_end(key)
        return self._entries[key][0]

    def __len__(self) -> int:
        return len(self._entries)

    def discard(self, key: str) -> None:
        """Forget ``key`` (its node was deleted), if it is here."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry[1]

    def put(self, key: str, value: Any, size: int) -> None:
        if size < MIN_BYTES or size > self.max_bytes or key in self._entries:
            return
        self._entries[key] = (value, size)
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, (_, old_size) = self._entries.popitem(last=False)
            self._bytes -= old_size
