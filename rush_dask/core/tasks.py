"""Checking and encoding tasks before anything is written to Redis."""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from typing import Any

_counter = itertools.count()


def new_keys(n: int) -> list[str]:
    """``n`` task keys unique across processes and hosts (random prefix + counter)."""
    prefix = os.urandom(8).hex()
    return [f"{prefix}{next(_counter):x}" for _ in range(n)]


def check_xss(xss: Any, extra: Any = None, *, name: str = "xss") -> None:
    """Raise a clear error unless ``xss`` is a list of dicts with string keys.

    >>> check_xss([{"x": 1}])
    >>> check_xss({"x": 1})
    Traceback (most recent call last):
    ...
    TypeError: xss must be a list of dicts (one dict of inputs per task), got a dict; wrap it: [{...}]
    """
    if isinstance(xss, dict):
        raise TypeError(f"{name} must be a list of dicts (one dict of inputs per task), got a dict; wrap it: [{{...}}]")
    if isinstance(xss, (str, bytes)) or not isinstance(xss, Sequence):
        raise TypeError(f"{name} must be a list of dicts (one dict of inputs per task), got {type(xss).__name__}")
    for i, xs in enumerate(xss):
        if not isinstance(xs, dict):
            raise TypeError(f"{name}[{i}] must be a dict of inputs, got {type(xs).__name__}: {xs!r:.80}")
        bad = [k for k in xs if not isinstance(k, str) or not k.isidentifier()]
        if bad:
            raise TypeError(
                f"{name}[{i}] has input names that are not valid Python identifiers: "
                f"{bad!r:.80}; inputs are passed as keyword arguments"
            )
    if extra is not None:
        check_xss(extra, name="extra")
        if len(extra) != len(xss):
            raise ValueError(f"extra has {len(extra)} entries but xss has {len(xss)}; give one dict per task")
