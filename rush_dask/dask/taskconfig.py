"""The client's ``dask.config`` travels with the graph nodes it submits.

distributed forwards the client's configuration to the workers; so does
rush_dask: what the client changed from Dask's defaults (``temporary_directory``,
``array.chunk-size``, ``dataframe.shuffle.method`` ...) is applied with
``dask.config.set`` around each node it submits, on whichever worker runs it.

>>> with dask.config.set(temporary_directory="/scratch"):      # doctest: +SKIP
...     x.compute(scheduler=rush)          # tasks see temporary_directory="/scratch"

Only plain values are shipped (strings, numbers, booleans, None, lists and
dicts of them); the ``distributed`` section and what names the scheduler
itself (``scheduler``, ``get``, ``pool``, ``callbacks``) stay on the client.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_LOCAL = {"scheduler", "get", "pool", "callbacks", "shuffle", "distributed"}
_PLAIN = (str, int, float, bool, type(None))


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in tree.items():
        if not isinstance(name, str):
            continue
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, f"{prefix}{name}."))
        else:
            out[prefix + name] = value
    return out


def _plain(value: Any) -> bool:
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def config_snapshot() -> dict[str, Any]:
    """The client's ``dask.config`` settings that differ from Dask's defaults, as dotted keys.

    >>> import dask
    >>> with dask.config.set({"array.chunk-size": "7MiB"}):
    ...     config_snapshot()["array.chunk-size"]
    '7MiB'
    """
    import dask.config

    defaults = _flat(dask.config.merge(*dask.config.defaults))
    missing = object()
    return {
        key: value
        for key, value in _flat(dask.config.config).items()
        if key.split(".", 1)[0] not in _LOCAL and defaults.get(key, missing) != value and _plain(value)
    }


class WithConfig:
    """A graph node that runs under the client's configuration: ``node(values)`` inside
    ``dask.config.set(config)``. What the worker unpickles instead of the bare node.

    The node is pickled inside, and unpickled under the configuration too: some objects
    read ``dask.config`` when they are rebuilt (the disk shuffle's partd maker reads
    ``dataframe.shuffle.compression`` in its constructor).
    """

    __slots__ = ("node", "config")

    def __init__(self, node: Any, config: Mapping[str, Any]):
        self.node = node
        self.config = dict(config)

    @property
    def dependencies(self) -> Any:
        return self.node.dependencies

    def __call__(self, values: Mapping[Any, Any]) -> Any:
        import dask.config

        with dask.config.set(self.config):
            return self.node(values)

    def __reduce__(self) -> tuple[Any, ...]:
        from ..core.serialize import dumps

        # Unsigned inside: the payload around it is signed as a whole.
        return (_rebuild, (self.config, dumps(self.node)))


def _rebuild(config: dict[str, Any], node_blob: bytes) -> WithConfig:
    import dask.config

    from ..core.serialize import loads

    with dask.config.set(config):
        return WithConfig(loads(node_blob), config)


def with_config(node: Any, config: Mapping[str, Any] | None) -> Any:
    """``node`` wrapped to run under ``config``, or ``node`` itself when there is nothing to apply."""
    return WithConfig(node, config) if config else node
