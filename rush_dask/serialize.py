"""Turning Python objects into the bytes stored in Redis, and back.

Plain ``pickle`` is tried first because it is several times faster than
cloudpickle on ordinary data; cloudpickle takes over for what pickle cannot
handle (lambdas, local functions) and for what pickle would store by a name
the workers do not have (functions and classes of ``__main__``: a script or
a notebook).
"""

from __future__ import annotations

import hashlib
import pickle
from typing import Any

import cloudpickle

PROTOCOL = pickle.HIGHEST_PROTOCOL


def dumps(obj: Any) -> bytes:
    """Serialize ``obj``; raise TypeError naming the object if it cannot be.

    >>> loads(dumps({"x": 1}))
    {'x': 1}
    """
    try:
        data = pickle.dumps(obj, protocol=PROTOCOL)
        # pickle stores functions and classes by name; those of __main__ (a script, a
        # notebook) do not exist under that name on a worker: ship them by value.
        if b"__main__" not in data:
            return data
    except Exception:
        pass
    try:
        return cloudpickle.dumps(obj, protocol=PROTOCOL)
    except Exception as exc:
        raise TypeError(
            f"cannot serialize {_describe(obj)}: {type(exc).__name__}: {exc}. "
            "Pass values and functions that pickle or cloudpickle can serialize "
            "(no open files, sockets, locks or database connections)."
        ) from exc


def dumps_function(fun: Any) -> bytes:
    """Serialize a function by value where needed (cloudpickle), raising a clear TypeError."""
    if not callable(fun):
        raise TypeError(f"expected a function, got {_describe(fun)}")
    try:
        return cloudpickle.dumps(fun, protocol=PROTOCOL)
    except Exception as exc:
        raise TypeError(
            f"cannot serialize function {_describe(fun)}: {type(exc).__name__}: {exc}. "
            "Functions sent to workers must be picklable with cloudpickle: move "
            "unpicklable objects (connections, locks) inside the function."
        ) from exc


def loads(data: bytes) -> Any:
    """Inverse of :func:`dumps`."""
    return pickle.loads(data)


def content_id(data: bytes) -> str:
    """A short stable id of a payload, used to store a function once per network."""
    return hashlib.blake2b(data, digest_size=12).hexdigest()


def _describe(obj: Any) -> str:
    name = getattr(obj, "__qualname__", None) or type(obj).__name__
    return f"{name!s} ({type(obj).__module__}.{type(obj).__qualname__})"
