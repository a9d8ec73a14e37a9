"""The archive of a network as a lazy Dask DataFrame.

Each partition reads one range of a state's list of task keys straight from
Redis when it is computed (on any scheduler, rush included); the client
reads only the first partition, to learn the column types.

>>> ddf = rush.to_dask_dataframe(partition_size=10_000)   # doctest: +SKIP
>>> ddf.groupby("worker_id").y.mean().compute()           # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import constants as C
from .connections import SecretUrl, connect
from .network import NetworkView, known_secrets
from .scripts import Scripts
from .serialize import resolve_secret

if TYPE_CHECKING:
    import dask.dataframe as dd
    import pandas as pd

# States whose keys live in an append-only list, so index ranges are stable.
_LISTS = {C.TaskState.FINISHED.value: "finished", C.TaskState.FAILED.value: "failed", "all": "all_tasks"}


class _ArchiveView(NetworkView):
    """A read-only view opened where a partition is computed."""

    def __init__(self, network_id: str, url: str):
        self.keys = C.Keys(network_id)
        self.client = connect(url)
        self.scripts = Scripts(self.client, self.keys)
        self.secret = known_secrets.get(network_id) or resolve_secret(None)
        self._init_view()


def read_partition(network_id: str, url: str, state: str, start: int, stop: int) -> pd.DataFrame:
    """Rows ``start`` to ``stop - 1`` of the list of tasks in ``state``."""
    view = _ArchiveView(network_id, url)
    try:
        if state == C.TaskState.FINISHED:  # packed rows: one LRANGE
            frame = view._archive_frame(start, stop)
        else:
            list_key = getattr(view.keys, _LISTS[state])
            frame = view._task_rows([k.decode() for k in view.client.lrange(list_key, start, stop - 1)])
        frame.index = range(start, start + len(frame))
        return frame
    finally:
        view.client.close()


def to_dask_dataframe(
    network_id: str, url: str, lengths: dict[str, int], states: Sequence[str], partition_size: int
) -> dd.DataFrame:
    """A Dask DataFrame over the tasks in ``states`` (see :meth:`Rush.to_dask_dataframe`)."""
    import dask.dataframe as dd

    ranges = [
        (state, start, min(start + partition_size, lengths[state]))
        for state in states
        for start in range(0, lengths[state], partition_size)
    ]
    if not ranges:
        ranges = [(states[0], 0, 0)]
    first = read_partition(network_id, url, *ranges[0])
    meta = first.iloc[:0]
    ref = SecretUrl(url)  # the partitions are pickled into Redis tasks: no password in them

    def load(part: tuple[str, int, int]) -> pd.DataFrame:
        frame = read_partition(network_id, ref.url, *part)
        return frame.astype(meta.dtypes.to_dict()) if len(frame) else meta

    frame: dd.DataFrame = dd.from_map(load, ranges, meta=meta, enforce_metadata=False)
    return frame
