"""Turning Python objects into the bytes stored in Redis, and back.

Plain ``pickle`` is tried first because it is several times faster than
cloudpickle on ordinary data; cloudpickle takes over for what pickle cannot
handle (lambdas, local functions) and for what pickle would store by a name
the workers do not have (functions and classes of ``__main__``: a script or
a notebook).

Signed payloads: with a shared secret (``Rush(..., secret=...)`` or the
``RUSH_SECRET`` environment variable) every pickle is written as
``MAGIC + HMAC-SHA256(secret, where + pickle) + pickle`` and :func:`loads`
checks the HMAC (constant-time) before it unpickles anything: a payload
written by someone without the secret is refused with
:class:`PayloadSignatureError` and never unpickled. ``where`` (see
:func:`place`) names where the payload is stored: the network, the task key
and the field. It is not stored in the payload; the reader supplies the
place it read from, so a signed payload copied to another task, field or
network no longer verifies. Without a secret, payloads are plain pickles as
before.
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
# RSIG1 (up to 0.x): HMAC over the pickle only; RSIG2: HMAC over the place and the pickle.
MAGIC = b"RSIG2"
_OLD_MAGIC = b"RSIG1"
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


def place(prefix: str, key: str, field: str) -> bytes:
    """Where a payload is stored, as signed: the network's key prefix, a key, a field name.

    Each part is length-prefixed, so no two places have the same bytes.

    >>> place("rush:{net}:", "k1", "xs") == place("rush:{net}:", "k", "1xs")
    False
    """
    out = bytearray()
    for part in (prefix, key, field):
        data = part.encode()
        out += len(data).to_bytes(4, "big") + data
    return bytes(out)


def mac(secret: bytes, data: bytes | memoryview, where: bytes = b"") -> bytes:
    """HMAC-SHA256 of ``where`` (length-prefixed) and ``data`` under ``secret``.

    With an empty ``where`` it is the HMAC of ``data`` alone:

    >>> mac(b"k", b"abc") == hmac.digest(b"k", b"abc", "sha256")
    True
    >>> mac(b"k", b"abc", b"x") == hmac.digest(b"k", b"\\x00\\x00\\x00\\x01xabc", "sha256")
    True
    """
    state = _keyed(secret).copy()
    if where:
        state.update(len(where).to_bytes(4, "big") + where)
    state.update(data)
    return state.digest()


def sign(data: bytes, secret: bytes | None, where: bytes = b"") -> bytes:
    """``data`` with its HMAC (bound to the place ``where``) in front; unchanged without a secret.

    >>> loads(sign(pickle.dumps(1), b"k", b"here"), b"k", b"here")
    1
    """
    if secret is None:
        return data
    return MAGIC + mac(secret, data, where) + data


def verify(data: bytes, secret: bytes | None, where: bytes = b"") -> bytes | memoryview:
    """The pickle inside a payload read from ``where``, after checking its signature.

    Raises PayloadSignatureError for a payload without a valid signature,
    signed with another secret, or signed for another place.

    >>> verify(sign(b"abc", b"k", b"here"), b"k", b"here").tobytes()
    b'abc'
    """
    signed = data[: len(MAGIC)] in (MAGIC, _OLD_MAGIC)
    if secret is None:
        if signed:
            raise PayloadSignatureError(
                "payload is signed but this process has no secret: set the RUSH_SECRET "
                "environment variable (or pass secret=) to the network's secret"
            )
        return data
    if not signed:
        raise PayloadSignatureError(
            "payload signature missing: written by someone without the network's secret "
            "(or by a client or worker that runs without a secret); refused, not unpickled"
        )
    if data[: len(MAGIC)] == _OLD_MAGIC:
        raise PayloadSignatureError(
            "payload signature invalid: signed by an older rush_dask whose signatures are not "
            "bound to their task (RSIG1); push it again; refused, not unpickled"
        )
    body = memoryview(data)[_HEADER:]
    if not hmac.compare_digest(mac(secret, body, where), data[len(MAGIC) : _HEADER]):
        raise PayloadSignatureError(
            "payload signature invalid: written by someone without the network's secret, "
            "signed with another secret, or moved here from another task, field or network; "
            "refused, not unpickled"
        )
    return body


def dumps(obj: Any, secret: bytes | None = None, where: bytes = b"") -> bytes:
    """Serialize ``obj`` (signed with ``secret`` for the place ``where``, if given).

    Raises TypeError naming the object if it cannot be serialized.

    >>> loads(dumps({"x": 1}))
    {'x': 1}
    >>> loads(dumps({"x": 1}, b"key", b"here"), b"key", b"here")
    {'x': 1}
    """
    try:
        data = pickle.dumps(obj, protocol=PROTOCOL)
        # pickle stores functions and classes by name; those of __main__ (a script, a
        # notebook) do not exist under that name on a worker: ship them by value.
        if b"__main__" not in data:
            return data if secret is None else sign(data, secret, where)
    except Exception:
        pass
    try:
        return sign(cloudpickle.dumps(obj, protocol=PROTOCOL), secret, where)
    except Exception as exc:
        raise TypeError(
            f"cannot serialize {_describe(obj)}: {type(exc).__name__}: {exc}. "
            "Pass values and functions that pickle or cloudpickle can serialize "
            "(no open files, sockets, locks or database connections)."
        ) from exc


def dumps_function(fun: Any, secret: bytes | None = None, where: bytes = b"") -> bytes:
    """Serialize a function by value where needed (cloudpickle), raising a clear TypeError.

    >>> loads(dumps_function(len, b"k", b"fun"), b"k", b"fun") is len
    True
    """
    if not callable(fun):
        raise TypeError(f"expected a function, got {_describe(fun)}")
    try:
        return sign(cloudpickle.dumps(fun, protocol=PROTOCOL), secret, where)
    except Exception as exc:
        raise TypeError(
            f"cannot serialize function {_describe(fun)}: {type(exc).__name__}: {exc}. "
            "Functions sent to workers must be picklable with cloudpickle: move "
            "unpicklable objects (connections, locks) inside the function."
        ) from exc


def loads(data: bytes, secret: bytes | None = None, where: bytes = b"") -> Any:
    """Inverse of :func:`dumps`: check the signature for the place ``where`` (see :func:`verify`), then unpickle.

    Every payload read back from Redis goes through here.

    >>> loads(dumps([1, 2]))
    [1, 2]
    """
    if secret is None and data[:1] == b"\x80":  # the fast path: a plain pickle, no secret
        return pickle.loads(data)
    return pickle.loads(verify(data, secret, where))


def content_id(data: bytes) -> str:
    """A short stable id of a payload, used to store a function once per network."""
    return hashlib.blake2b(data, digest_size=12).hexdigest()


def _describe(obj: Any) -> str:
    name = getattr(obj, "__qualname__", None) or type(obj).__name__
    return f"{name!s} ({type(obj).__module__}.{type(obj).__qualname__})"
