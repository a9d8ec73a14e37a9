"""Turning Python objects into the bytes stored in Redis, and back.

Plain ``pickle`` is tried first because it is several times faster than
cloudpickle on ordinary data; cloudpickle takes over for what pickle cannot
handle (lambdas, local functions) and for what pickle would store by a name
the workers do not have (functions and classes of ``__main__``: a script or
a notebook).

Signed payloads: with a shared secret (``Rush(..., secret=...)`` or the
``RUSH_SECRET`` environment variable) every pickle is written as
``MAGIC + HMAC-SHA256(secret, pickle) + pickle`` and :func:`loads` checks
the HMAC (constant-time) before it unpickles anything: a payload written by
someone without the secret is refused with :class:`PayloadSignatureError`
and never unpickled. Without a secret, payloads are plain pickles as before.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import pickle
from typing import Any

import cloudpickle

from .errors import PayloadSignatureError

PROTOCOL = pickle.HIGHEST_PROTOCOL
SECRET_ENV = "RUSH_SECRET"
# A pickle of protocol >= 2 starts with 0x80, so this prefix never starts a plain pickle.
MAGIC = b"RSIG1"
_HEADER = len(MAGIC) + hashlib.sha256().digest_size


def resolve_secret(secret: str | bytes | None) -> bytes | None:
    """The signing key: ``secret``, else ``$RUSH_SECRET``, else None (payloads not signed).

    >>> resolve_secret("s3cret")
    b's3cret'
    """
    if secret is None:
        secret = os.environ.get(SECRET_ENV) or None
        if secret is None:
            return None
    if isinstance(secret, str):
        secret = os.fsencode(secret)  # the inverse of how spawn_worker puts it in the environment
    if not isinstance(secret, bytes) or not secret:
        raise ValueError(f"secret must be a non-empty str or bytes, got {type(secret).__name__}")
    return secret


@functools.lru_cache(maxsize=8)
def _keyed(secret: bytes) -> hmac.HMAC:
    # The keyed HMAC state, set up once per secret and copied for each payload.
    return hmac.new(secret, digestmod=hashlib.sha256)


def mac(secret: bytes, data: bytes | memoryview) -> bytes:
    """HMAC-SHA256 of ``data`` under ``secret``; equal to ``hmac.digest(secret, data, "sha256")``.

    >>> mac(b"k", b"abc") == hmac.digest(b"k", b"abc", "sha256")
    True
    """
    state = _keyed(secret).copy()
    state.update(data)
    return state.digest()


def sign(data: bytes, secret: bytes | None) -> bytes:
    """``data`` with its HMAC in front (unchanged without a secret).

    >>> loads(sign(pickle.dumps(1), b"k"), b"k")
    1
    """
    if secret is None:
        return data
    return MAGIC + mac(secret, data) + data


def verify(data: bytes, secret: bytes | None) -> bytes | memoryview:
    """The pickle inside a payload, after checking its signature; raises PayloadSignatureError.

    >>> verify(sign(b"abc", b"k"), b"k").tobytes()
    b'abc'
    """
    signed = data[:len(MAGIC)] == MAGIC
    if secret is None:
        if signed:
            raise PayloadSignatureError(
                "payload is signed but this process has no secret: set the RUSH_SECRET "
                "environment variable (or pass secret=) to the network's secret")
        return data
    if not signed:
        raise PayloadSignatureError(
            "payload signature missing: written by someone without the network's secret "
            "(or by a client or worker that runs without a secret); refused, not unpickled")
    body = memoryview(data)[_HEADER:]
    if not hmac.compare_digest(mac(secret, body), data[len(MAGIC):_HEADER]):
        raise PayloadSignatureError(
            "payload signature invalid: written by someone without the network's secret "
            "(or signed with another secret); refused, not unpickled")
    return body


def dumps(obj: Any, secret: bytes | None = None) -> bytes:
    """Serialize ``obj`` (signed with ``secret`` if given); raise TypeError naming the object if it cannot be.

    >>> loads(dumps({"x": 1}))
    {'x': 1}
    >>> loads(dumps({"x": 1}, b"key"), b"key")
    {'x': 1}
    """
    try:
        data = pickle.dumps(obj, protocol=PROTOCOL)
        # pickle stores functions and classes by name; those of __main__ (a script, a
        # notebook) do not exist under that name on a worker: ship them by value.
        if b"__main__" not in data:
            return data if secret is None else sign(data, secret)
    except Exception:
        pass
    try:
        return sign(cloudpickle.dumps(obj, protocol=PROTOCOL), secret)
    except Exception as exc:
        raise TypeError(
            f"cannot serialize {_describe(obj)}: {type(exc).__name__}: {exc}. "
            "Pass values and functions that pickle or cloudpickle can serialize "
            "(no open files, sockets, locks or database connections)."
        ) from exc


def dumps_function(fun: Any, secret: bytes | None = None) -> bytes:
    """Serialize a function by value where needed (cloudpickle), raising a clear TypeError."""
    if not callable(fun):
        raise TypeError(f"expected a function, got {_describe(fun)}")
    try:
        return sign(cloudpickle.dumps(fun, protocol=PROTOCOL), secret)
    except Exception as exc:
        raise TypeError(
            f"cannot serialize function {_describe(fun)}: {type(exc).__name__}: {exc}. "
            "Functions sent to workers must be picklable with cloudpickle: move "
            "unpicklable objects (connections, locks) inside the function."
        ) from exc


def loads(data: bytes, secret: bytes | None = None) -> Any:
    """Inverse of :func:`dumps`: check the signature (see :func:`verify`), then unpickle.

    Every payload read back from Redis goes through here.
    """
    if secret is None and data[:1] == b"\x80":  # the fast path: a plain pickle, no secret
        return pickle.loads(data)
    return pickle.loads(verify(data, secret))


def content_id(data: bytes) -> str:
    """A short stable id of a payload, used to store a function once per network."""
    return hashlib.blake2b(data, digest_size=12).hexdigest()


def _describe(obj: Any) -> str:
    name = getattr(obj, "__qualname__", None) or type(obj).__name__
    return f"{name!s} ({type(obj).__module__}.{type(obj).__qualname__})"
