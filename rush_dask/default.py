"""The process-wide default network behind ``scheduler="rush"``.

>>> import dask, rush_dask
>>> dask.compute(x, scheduler="rush")     # doctest: +SKIP
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .rush import Rush

_lock = threading.Lock()
_default: Rush | None = None


def default_rush() -> Rush:
    """The ``Rush`` used by ``scheduler="rush"``: created on first use (Redis as ``Rush()`` resolves it)."""
    global _default
    with _lock:
        if _default is None:
            from .rush import Rush

            _default = Rush()
        return _default


class _DefaultScheduler:
    """Callable registered in ``dask.base.named_schedulers``; also offers ``persist``."""

    def __call__(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        return default_rush().get(dsk, keys, **kwargs)

    def persist(self, collections: Any, **kwargs: Any) -> Any:
        return default_rush().persist(collections, **kwargs)

    def __repr__(self) -> str:
        return "<rush_dask default scheduler>"


DEFAULT_SCHEDULER = _DefaultScheduler()
