"""Where Redis comes from, and how clients connect to it.

The URL is resolved in this order: the ``url=`` argument, the
``RUSH_REDIS_URL`` environment variable, :func:`rush_dask.plan`, and finally
the embedded private server of :mod:`rush_dask.core.server`.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qs, parse_qsl, unquote, urlsplit

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .errors import RedisUnavailableError

URL_ENV = "RUSH_REDIS_URL"
# Seconds to open a connection (TCP and TLS handshake); without it a rediss:// URL
# that points at a plain port waits forever.
CONNECT_TIMEOUT = 10.0
_SECRET_QUERY = ("password", "ssl_password")
_HOST_PORT = re.compile(r"([^:\[\]]+|\[[0-9a-fA-F:.]*\])(:\d+)?")
_TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_ca_path")


@dataclass
class Plan:
    """Process-wide defaults set by :func:`plan`."""

    n_workers: int | None = None
    url: str | None = None


_plan = Plan()


def plan(n_workers: int | None = None, url: str | None = None) -> Plan:
    """Set process-wide defaults for every ``Rush`` created afterwards.

    ``n_workers`` is how many local workers a compute (or a future) starts when
    its network has no running worker; ``0``: start none, wait for workers
    started elsewhere (a controller on a login node, say).

    >>> import rush_dask
    >>> rush_dask.plan(n_workers=2)          # doctest: +SKIP
    Plan(n_workers=2, url=None)
    """
    if n_workers is not None and (isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 0):
        raise ValueError(f"n_workers must be an integer >= 0, got {n_workers!r}")
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

    Hides ``user:pass@``, ``:pass@``, ``pass@`` and the query values
    ``password=`` and ``ssl_password=``. A malformed URL whose password holds
    an unescaped ``/``, ``?`` or ``#`` loses everything up to its last ``@``.

    >>> redact("rediss://alice:secret@host:6380/0?ssl_ca_certs=/ca.pem")
    'rediss://alice:***@host:6380/0?ssl_ca_certs=/ca.pem'
    """
    scheme, sep, _ = url.partition("://")
    if not sep:
        return "***" if "@" in url or "password" in url else url
    parts = urlsplit(url)
    userinfo, host = _split_authority(url)
    if userinfo is not None and "@" not in parts.netloc:
        # urlsplit cut the authority at a "/", "?" or "#" inside the password
        return f"{scheme}://***@{host}"
    netloc = parts.netloc
    if userinfo is not None:
        user = userinfo.split(":", 1)[0] if ":" in userinfo else ""
        netloc = f"{user}:***@{host}" if user or ":" in userinfo else f"***@{host}"
    query = "&".join(
        f"{item.split('=', 1)[0]}=***" if item.split("=", 1)[0] in _SECRET_QUERY else item
        for item in parts.query.split("&")
    )
    text = f"{parts.scheme}://{netloc}{parts.path}"  # keeps unix:///path as it was
    return text + (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")


def hide_secrets(text: str, url: str) -> str:
    """``text`` with every password of ``url`` (raw or percent-decoded) replaced by ``***``.

    For messages that quote something a library said about a connection.

    >>> hide_secrets("login with s3cret failed", "redis://:s3cret@host/0")
    'login with *** failed'
    """
    for secret in sorted(_secrets(url), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _secrets(url: str) -> set[str]:
    found: set[str] = set()
    userinfo = _split_authority(url)[0]
    if userinfo and ":" in userinfo:  # without a colon it is a user name (redis-py's reading)
        found.add(userinfo.split(":", 1)[1])
    for item in urlsplit(url).query.split("&"):
        name, _, value = item.partition("=")
        if name in _SECRET_QUERY:
            found.add(value)
    found |= {unquote(value) for value in found}
    return {value for value in found if value}


def _split_authority(url: str) -> tuple[str | None, str]:
    """(userinfo or None, the rest after its "@"), also for a password with an unescaped / ? or #."""
    rest = url.partition("://")[2]
    netloc = urlsplit(url).netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        return userinfo, host
    if netloc and "@" in rest and not _HOST_PORT.fullmatch(netloc):
        userinfo, host = rest.rsplit("@", 1)
        return userinfo, host
    return None, netloc


class SecretUrl:
    """A Redis URL that travels in pickles without its password.

    Code that runs later somewhere else (a Dask task reading the archive)
    holds one of these instead of the URL string. In this process ``.url`` is
    the full URL; a pickled copy carries only the redacted URL and, where it
    is loaded, takes the full one from this process's own record, from
    ``$RUSH_REDIS_URL`` (every worker has it) or from :func:`plan`.

    >>> ref = SecretUrl("redis://:s3cret@host:6379/0")
    >>> ref.url, ref
    ('redis://:s3cret@host:6379/0', SecretUrl('redis://:***@host:6379/0'))
    """

    def __init__(self, url: str):
        self.url = url
        self.redacted = redact(url)
        if self.redacted != url:
            _known_urls[self.redacted] = url

    def __reduce__(self) -> tuple[Any, ...]:
        if self.redacted == self.url:
            return SecretUrl, (self.url,)
        return _secret_url_here, (self.redacted,)

    def __repr__(self) -> str:
        return f"SecretUrl({self.redacted!r})"


_known_urls: dict[str, str] = {}


def _secret_url_here(redacted: str) -> SecretUrl:
    for url in (_known_urls.get(redacted), os.environ.get(URL_ENV), _plan.url):
        if url and redact(url) == redacted:
            return SecretUrl(url)
    raise RedisUnavailableError(
        f"this code needs Redis at {redacted}, whose password is never sent along: set "
        f"${URL_ENV} to that URL (with its password) in the process that runs it"
    )


def check_url(url: str) -> None:
    """Raise :class:`RedisUnavailableError` for TLS options that cannot work, before connecting.

    TLS options (``ssl_*`` query parameters) need the ``rediss://`` scheme,
    and the certificate and key files they name must exist on this machine.

    >>> check_url("redis://host:6379/0?ssl_ca_certs=/ca.pem")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    rush_dask.core.errors.RedisUnavailableError: ... has TLS options (ssl_ca_certs) but the scheme is redis://: ...
    """
    parts = urlsplit(url)
    options = parse_qs(parts.query)
    tls_options = sorted(name for name in options if name.startswith("ssl_"))
    if tls_options and parts.scheme != "rediss":
        raise RedisUnavailableError(
            f"Redis URL {redact(url)} has TLS options ({', '.join(tls_options)}) but the scheme is "
            f"{parts.scheme}://: use rediss://host:port/db for a TLS connection"
        )
    for name in _TLS_FILES:
        for path in options.get(name, []):
            if not os.path.exists(path):
                raise RedisUnavailableError(
                    f"Redis URL {redact(url)}: {name}={path} does not exist on {socket.gethostname()}. "
                    "Every machine that runs a controller or a worker needs the certificate files "
                    "at the path the URL names."
                )


def connect(url: str, *, check: bool = True, retry_timeout: float | None = None, **options: Any) -> redis.Redis:
    """A redis-py client for ``url`` (bytes replies), checked with PING.

    Raises :class:`RedisUnavailableError` with a message that never shows the
    password when the server is down, refuses the credentials or the TLS
    handshake fails. TLS settings travel in the URL (``rediss://...?ssl_ca_certs=...``).
    With ``retry_timeout``, every command of the client is retried with
    backoff for about that many seconds while Redis is unreachable (a
    restart); the first check still fails at once.

    >>> connect("redis://:secret@127.0.0.1:6379/0")   # doctest: +SKIP
    Redis<ConnectionPool<Connection<host=127.0.0.1,port=6379,db=0>>>
    >>> connect(redis_url).ping()  # the test suite's server
    True
    """
    check_url(url)
    options.setdefault("socket_connect_timeout", CONNECT_TIMEOUT)  # a value in the URL wins
    if is_cluster_url(url):  # a RedisCluster: the same commands, typed as a Redis for the callers
        return cast(redis.Redis, _connect_cluster(url, check=check, retry_timeout=retry_timeout, **options))
    try:
        client = redis.Redis.from_url(url, decode_responses=False, **options)
    except ValueError as exc:
        raise RedisUnavailableError(f"invalid Redis URL {redact(url)}: {hide_secrets(str(exc), url)}") from None
    if check:
        try:
            client.ping()
        except (redis.AuthenticationError, redis.ResponseError) as exc:
            if not isinstance(exc, redis.AuthenticationError) and "NOAUTH" not in str(exc):
                raise
            if _has_password(url):
                raise RedisUnavailableError(
                    f"authentication failed at Redis {redact(url)}: the server refused the credentials "
                    f"(user name and password). Check the password (and user) in the URL or in ${URL_ENV}; "
                    "percent-encode special characters in them (urllib.parse.quote(password, safe=''))"
                ) from None
            raise RedisUnavailableError(
                f"authentication failed at Redis {redact(url)}: the server needs a password. Put it "
                f"in the URL (redis://:PASSWORD@host:port/0, or redis://USER:PASSWORD@... for an "
                f"ACL user) or in ${URL_ENV}"
            ) from None
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            raise RedisUnavailableError(_connection_failure(url, exc)) from None
    if _cluster_enabled(client, must_answer=check):  # any node's plain URL of a cluster works
        client.close()
        return cast(redis.Redis, _connect_cluster(url, check=check, retry_timeout=retry_timeout, **options))
    if retry_timeout:
        # Backoff 0.05, 0.1, ... capped at 1 s: about retry_timeout seconds in all.
        retries = 5 + int(retry_timeout)
        client.set_retry(Retry(ExponentialBackoff(cap=1.0, base=0.05), retries))
    return client


def is_cluster_url(url: str) -> bool:
    """Whether ``url`` names a Redis Cluster explicitly (``redis+cluster://``, ``rediss+cluster://``).

    >>> is_cluster_url("redis+cluster://10.0.0.1:7000/0")
    True
    """
    return urlsplit(url).scheme.endswith("+cluster")


def is_cluster_client(client: Any) -> bool:
    """Whether ``client`` talks to a Redis Cluster (see :func:`connect`)."""
    return hasattr(client, "get_default_node")


def _cluster_enabled(client: redis.Redis, must_answer: bool = True) -> bool:
    """Whether the server is a node of a Redis Cluster (asked once, when connecting)."""
    try:
        return bool(client.info("cluster").get("cluster_enabled"))
    except redis.ResponseError:  # a server (or proxy) without the section
        return False
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        if must_answer:
            raise
        return False  # unchecked connections may be made while Redis restarts


def _connect_cluster(url: str, *, check: bool, retry_timeout: float | None = None, **options: Any) -> Any:
    """A Redis Cluster client from the URL of any of its nodes.

    Every key of a network shares one hash tag (``rush:{NET}:``), so each
    script and pipeline of a network goes to the one master that owns its
    slot; different networks spread over the masters.
    """
    from redis.cluster import RedisCluster

    plain = url.replace("+cluster://", "://", 1)
    if retry_timeout:  # through a failover too: the client learns the new topology and retries
        options["retry"] = Retry(ExponentialBackoff(cap=1.0, base=0.05), 5 + int(retry_timeout))
    try:
        client = RedisCluster.from_url(plain, decode_responses=False, **options)
        if check:
            client.ping()
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise RedisUnavailableError(_connection_failure(url, exc)) from None
    except redis.RedisClusterException as exc:
        raise RedisUnavailableError(
            f"cannot use the Redis Cluster at {redact(url)}: {hide_secrets(str(exc), url)}"
        ) from None
    return client


def _connection_failure(url: str, exc: BaseException) -> str:
    """A message that says why a connection failed and what to change."""
    detail = hide_secrets(f"{type(exc).__name__}: {exc}", url)
    cause = exc.__cause__ or exc.__context__
    text = f"{exc} {cause or ''}"
    where = f"Redis at {redact(url)}"
    tls = url.startswith("rediss://")
    if tls and "CERTIFICATE_VERIFY_FAILED" in text and "mismatch" in text:
        return (
            f"TLS handshake with {where} failed: the server's certificate does not name that "
            f"host ({detail}). Connect with a host name the certificate holds."
        )
    if tls and "CERTIFICATE_VERIFY_FAILED" in text:
        return (
            f"TLS handshake with {where} failed: the server's certificate is not signed by a "
            f"trusted CA ({detail}). Give the CA certificate in the URL: "
            "rediss://host:port/0?ssl_ca_certs=/path/ca.pem"
        )
    if tls and any(
        mark in text
        for mark in ("UNKNOWN_CA", "CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "EOF occurred in violation of protocol")
    ):
        return (
            f"TLS handshake with {where} failed: the server refused this client ({detail}). "
            "It probably requires a client certificate signed by a CA it trusts: add "
            "ssl_certfile=/path/client.crt&ssl_keyfile=/path/client.key to the URL"
        )
    if tls and (isinstance(exc, redis.TimeoutError) or "WRONG_VERSION_NUMBER" in text):
        return (
            f"TLS handshake with {where} failed ({detail}): the port does not seem to speak "
            "TLS. For a plain port use redis:// instead of rediss://"
        )
    if not tls and ("reset by peer" in text or "closed by server" in text):
        return (
            f"{where} closed the connection ({detail}). If that port only accepts TLS, use "
            "rediss://host:port/0?ssl_ca_certs=/path/ca.pem"
        )
    return (
        f"cannot reach {where} ({detail}). Start a server there, or give another url= or "
        f"${URL_ENV}; without any URL rush_dask starts a private server itself."
    )


def _has_password(url: str) -> bool:
    parts = urlsplit(url)
    return bool(parts.password) or any(name == "password" for name, _ in parse_qsl(parts.query))
