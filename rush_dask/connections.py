"""Where Redis comes from, and how clients connect to it.

The URL is resolved in this order: the ``url=`` argument, the
``RUSH_REDIS_URL`` environment variable, :func:`rush_dask.plan`, and finally
the embedded private server of :mod:`rush_dask.server`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .errors import RedisUnavailableError

URL_ENV = "RUSH_REDIS_URL"


@dataclass
class Plan:
    """Process-wide defaults set by :func:`plan`."""

    n_workers: int | None = None
    url: str | None = None


_plan = Plan()


def plan(n_workers: int | None = None, url: str | None = None) -> Plan:
    """Set process-wide defaults for every ``Rush`` created afterwards.

    >>> import rush_dask
    >>> rush_dask.plan(n_workers=2)          # doctest: +SKIP
    Plan(n_workers=2, url=None)
    """
    if n_workers is not None and (not isinstance(n_workers, int) or n_workers < 1):
        raise ValueError(f"n_workers must be a positive integer, got {n_workers!r}")
    _plan.n_workers = n_workers
    _plan.url = url
    return _plan


def current_plan() -> Plan:
    return _plan


def resolve_url(url: str | None = None) -> str:
    """The Redis URL to use, starting the embedded server if nothing else is configured."""
    if url:
        return url
    if os.environ.get(URL_ENV):
        return os.environ[URL_ENV]
    if _plan.url:
        return _plan.url
    from .server import embedded_server

    return embedded_server().url


def redact(url: str) -> str:
    """The URL with any password replaced by ``***``, for messages and logs.

    >>> redact("redis://user:secret@host:6379/0")
    'redis://user:***@host:6379/0'
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
        netloc = f"{user}:***@{host}" if user or ":" in userinfo else f"***@{host}"
    query = "&".join(
        "password=***" if item.startswith("password=") else item for item in parts.query.split("&")
    )
    text = f"{parts.scheme}://{netloc}{parts.path}"  # keeps unix:///path as it was
    return text + (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")


def connect(url: str, *, check: bool = True, retry_timeout: float | None = None, **options) -> redis.Redis:
    """A redis-py client for ``url`` (bytes replies), checked with PING.

    Raises :class:`RedisUnavailableError` with a message that never shows the
    password when the server is down or refuses the credentials.
    With ``retry_timeout``, every command of the client is retried with
    backoff for about that many seconds while Redis is unreachable (a
    restart); the first check still fails at once.

    >>> client = connect("redis://127.0.0.1:6379/0", retry_timeout=60)   # doctest: +SKIP
    """
    try:
        client = redis.Redis.from_url(url, decode_responses=False, **options)
    except ValueError as exc:
        raise RedisUnavailableError(f"invalid Redis URL {redact(url)}: {exc}") from None
    if check:
        try:
            client.ping()
        except (redis.AuthenticationError, redis.ResponseError) as exc:
            if not isinstance(exc, redis.AuthenticationError) and "NOAUTH" not in str(exc):
                raise
            if _has_password(url):
                raise RedisUnavailableError(
                    f"Redis at {redact(url)} refused the credentials: check the password "
                    f"(and user) in the URL or in ${URL_ENV}"
                ) from None
            raise RedisUnavailableError(
                f"Redis at {redact(url)} needs a password: put it in the URL "
                f"(redis://:PASSWORD@host:port/0) or in ${URL_ENV}"
            ) from None
        except (redis.ConnectionError, OSError) as exc:
            raise RedisUnavailableError(
                f"cannot reach Redis at {redact(url)} ({type(exc).__name__}: "
                f"{redact(str(exc))}). Start a server there, or give another url= or "
                f"${URL_ENV}; without any URL rush_dask starts a private server itself."
            ) from None
    if retry_timeout:
        # Backoff 0.05, 0.1, ... capped at 1 s: about retry_timeout seconds in all.
        retries = 5 + int(retry_timeout)
        client.set_retry(Retry(ExponentialBackoff(cap=1.0, base=0.05), retries))
    return client


def _has_password(url: str) -> bool:
    parts = urlsplit(url)
    return bool(parts.password) or "password=" in parts.query
