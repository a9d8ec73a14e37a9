"""Large task inputs stored once in Redis and shared by every task that uses them.

When ``push_tasks`` serializes a task larger than ``INLINE_LIMIT``, each of
its input values that serializes to more than ``INLINE_LIMIT`` bytes is
stored once, under the content-addressed key ``shared:<content id>``, and
the task keeps only a :class:`SharedInput` reference to it. The same object
passed to 1,000 tasks is serialized once and stored once; equal values of
different objects land on the same key too.

A worker reads a shared value once (it keeps the verified bytes in its
result cache) and unpickles a fresh copy for every task, so a task that
mutates its input does not change what the next task sees. The content id
is checked against the bytes read, and the bytes carry the network's
signature like every other payload.

Lifetime: like pushed functions, shared values stay until ``reset()``
(they are part of the inputs that ``rush.data`` shows for every task).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from typing import Any

from .constants import INLINE_LIMIT
from .errors import PayloadSignatureError, PayloadTooLargeError
from .serialize import content_id, dumps, sign, verify


class SharedInput:
    """A reference, inside a task's inputs, to a value stored once under ``shared:<id>``.

    >>> SharedInput("0a1b")
    SharedInput('0a1b')
    """

    __slots__ = ("id",)

    def __init__(self, id: str):
        self.id = id

    def __repr__(self) -> str:
        return f"SharedInput({self.id!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return SharedInput, (self.id,)


def pack_inputs(
    xss: Sequence[dict[str, Any]],
    secret: bytes | None,
    limit: int = INLINE_LIMIT,
    max_bytes: int | None = None,
    where: Callable[[str, str], bytes] | None = None,
    keys: Sequence[str] | None = None,
) -> tuple[list[bytes], dict[str, bytes]]:
    """(one payload per task, shared payloads by content id), large values moved out.

    With a secret, task ``i``'s inputs are signed for ``where(keys[i], "xs")``
    and a shared value for ``where(content_id, "shared")`` (see
    :func:`rush_dask.core.serialize.place`). Raises PayloadTooLargeError for a
    value over ``max_bytes``, naming it.

    >>> blobs, shared = pack_inputs([{"x": 1}], None)
    >>> len(blobs), shared
    (1, {})
    """
    refs: dict[int, SharedInput | None] = {}  # id(value) -> its reference (None: small)
    shared: dict[str, bytes] = {}
    blobs = []
    for index, xs in enumerate(xss):
        xs = dict(xs)
        if refs:  # values already known to be large: no need to serialize them again
            for name, value in xs.items():
                ref = refs.get(id(value))
                if ref is not None:
                    xs[name] = ref
        blob = dumps(xs)
        if len(blob) > limit:
            moved = False
            for name, value in xs.items():
                if isinstance(value, SharedInput) or id(value) in refs:
                    continue
                data = dumps(value)
                if len(data) <= limit:
                    refs[id(value)] = None
                    continue
                if max_bytes is not None and len(data) > max_bytes:
                    raise PayloadTooLargeError(
                        f"input {name!r} of task {index} is {len(data):,} bytes serialized, over "
                        f"max_payload_bytes={max_bytes:,}: keep large data out of the task (a "
                        "file or object store path) or raise Rush(max_payload_bytes=...)"
                    )
                cid = content_id(data)
                if cid not in shared:
                    shared[cid] = sign(data, secret, where(cid, "shared") if where else b"")
                refs[id(value)] = xs[name] = SharedInput(cid)
                moved = True
            if moved:
                blob = dumps(xs)
        blobs.append(sign(blob, secret, where(keys[index], "xs") if where and keys else b""))
    return blobs, shared


def check_shared(cid: str, payload: bytes, secret: bytes | None, where: bytes = b"") -> bytes:
    """The verified pickle of a shared value read from ``where``; raises PayloadSignatureError if it was altered."""
    if payload is None:
        raise RuntimeError(f"shared input {cid} is missing from Redis (network was reset?)")
    body = bytes(verify(payload, secret, where))
    if content_id(body) != cid:
        raise PayloadSignatureError(f"shared input {cid} does not match its content id: altered in Redis")
    return body


def resolve(dicts: list[dict[str, Any]], fetch: Callable[[list[str]], dict[str, bytes]]) -> None:
    """Replace, in place, every SharedInput value of ``dicts`` by a copy of its value.

    ``fetch(ids)`` returns the verified pickles of the given shared ids.
    """
    wanted = {v.id for d in dicts for v in d.values() if isinstance(v, SharedInput)}
    if not wanted:
        return
    bodies = fetch(sorted(wanted))
    for d in dicts:
        for name, value in d.items():
            if isinstance(value, SharedInput):
                d[name] = pickle.loads(bodies[value.id])
