"""Worker log records, kept in Redis per worker.

A :class:`RedisLogHandler` buffers records in memory (bounded) and the
worker flushes the buffer with one pipeline: after a task that logged, on
every heartbeat, and at exit. Each worker's list is trimmed to the newest
``LOG_MAX_RECORDS`` entries so logs cannot fill Redis.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
from typing import Any

from .constants import LOG_MAX_RECORDS


class RedisLogHandler(logging.Handler):
    """A logging handler that ships records to ``rush:{NET}:log:<worker_id>``."""

    def __init__(self, log_key: str, level: int = logging.INFO, capacity: int = LOG_MAX_RECORDS):
        super().__init__(level)
        self.log_key = log_key
        self.capacity = capacity
        self._buffer: collections.deque[str] = collections.deque(maxlen=capacity)
        self._flush_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.exc_info and record.exc_info[0] is not None:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            self._buffer.append(
                json.dumps(
                    {
                        "time": record.created,
                        "level": record.levelname,
                        "logger": record.name,
                        "message": message,
                    }
                )
            )
        except Exception:  # a handler must never raise into the code that logs
            self.handleError(record)

    @property
    def pending(self) -> bool:
        return bool(self._buffer)

    def ship(self, client: Any) -> None:
        """Write buffered records to Redis in one round trip."""
        with self._flush_lock:
            if not self._buffer:
                return
            entries = list(self._buffer)
            pipe = client.pipeline(transaction=False)
            pipe.rpush(self.log_key, *entries)
            pipe.ltrim(self.log_key, -self.capacity, -1)
            pipe.execute()
            for _ in entries:
                self._buffer.popleft()
