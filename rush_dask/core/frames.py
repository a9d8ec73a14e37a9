"""Tasks as pandas DataFrames, built column by column from raw Redis fields.

Redis hands back bytes: keys and worker ids, timestamps written by the Lua
scripts as ``"seconds.micros"``, attempt counters, and pickled dicts of
inputs, outputs and extra columns. :func:`task_frame` turns them into one
DataFrame with the types a user expects: numbers numeric, text as pandas
strings, times as UTC datetimes, ``pid`` as a nullable integer.

It is on the hot path of ``fetch_finished_tasks`` (100,000 rows in well
under a second, one new row in about a millisecond), hence three choices:

* the cyclic garbage collector is paused while rows are unpacked and
  columns built (:func:`gc_paused`): the hundreds of thousands of small
  containers would otherwise set off full collections of the whole heap
  that cost as much as the work itself;
* when pandas keeps strings in Arrow (pandas 3 with pyarrow, the default),
  text and number columns are converted from bytes by one Arrow call each
  instead of a Python loop;
* each column is typed once; the DataFrame constructor only assembles them.

>>> frame = task_frame([b"k1"], [{"x": 1}], [{"y": 2}], [{}], [b"finished"], [b"w1"],
...                    [4242], [b"1700000000.000001"], [b"1700000000.5"],
...                    [b"1700000001.25"], [b"0"], [None])
>>> frame[["x", "y", "keys", "state", "attempts"]].to_dict("records")
[{'x': 1, 'y': 2, 'keys': 'k1', 'state': 'finished', 'attempts': 0}]
>>> str(frame.finished_at[0])
'2023-11-14 22:13:21.250000+00:00'
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

Raw = Sequence[Any]  # bytes, str or None per row

# The columns every task row has after its inputs, outputs and extra columns.
META_COLUMNS = ("pid", "worker_id", "state", "keys", "queued_at", "started_at", "finished_at", "attempts", "error")


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for a block that allocates many small objects.

    Reference counting still frees everything; only the cycle search waits.
    Nested use is fine: the collector is enabled again only by the block
    that paused it.

    >>> with gc_paused():
    ...     rows = [[i] for i in range(100_000)]
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# Below this many rows a Python loop beats the fixed cost of an Arrow call.
ARROW_MIN_ROWS = 256


@cache
def _arrow() -> Any:
    """The pyarrow module when pandas' default string dtype is stored in Arrow, else None."""
    if getattr(_default_str(), "storage", None) != "pyarrow":
        return None
    import pyarrow

    return pyarrow


def text(values: Raw) -> Any:
    """A pandas string array (pandas' default ``str`` dtype) from bytes, str or None values."""
    import pandas as pd

    pa = _arrow() if len(values) >= ARROW_MIN_ROWS else None
    if pa is None:
        return pd.array([v.decode() if isinstance(v, bytes) else v for v in values], dtype=str)
    array = pa.array(values)
    if not pa.types.is_string(array.type):  # binary (bytes), or null (nothing but None)
        array = array.cast(pa.string())
    return pd.array(array, dtype=str)


def _floats(values: Raw) -> Any:
    """A float64 numpy array from numbers written as bytes; None becomes NaN."""
    import numpy as np

    pa = _arrow() if len(values) >= ARROW_MIN_ROWS else None
    if pa is None:
        return np.fromiter((float(v) if v else np.nan for v in values), dtype=float, count=len(values))
    array = pa.array(values, type=pa.binary()).cast(pa.string()).cast(pa.float64())
    return array.to_numpy(zero_copy_only=False)


def times(values: Raw) -> Any:
    """UTC datetimes (microseconds) from ``"seconds.micros"`` bytes; None becomes NaT."""
    import numpy as np
    import pandas as pd

    micros = np.rint(_floats(values) * 1e6)  # rint: 0.999999 µs of float error must not drop a µs
    return pd.DatetimeIndex(micros.astype("datetime64[us]")).tz_localize("UTC").array


def counts(values: Raw) -> Any:
    """An int64 numpy array from counters written as bytes; None (never counted) becomes 0."""
    import numpy as np

    return np.nan_to_num(_floats(values), nan=0.0).astype("int64")


def dict_columns(*dict_lists: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """One list per name found in the dicts, None where a row lacks it.

    Each argument holds one dict per row (inputs, outputs, extra). Names
    are ordered as they first appear reading row by row, each row's dicts
    in argument order, so that appending rows only ever adds names at the
    end. A name in a later argument shadows the same name in an earlier one.

    >>> dict_columns([{"x": 1}, {"x": 2, "z": 0}], [{"y": 3, "x": 0}, {}])
    {'x': [0, None], 'y': [3, None], 'z': [None, 0]}
    """
    groups = [list(dicts) for dicts in dict_lists if len(dicts)]
    group_names = [set().union(*dicts) for dicts in groups]
    if all(len(names) == len(dicts[0]) for names, dicts in zip(group_names, groups)):
        # The common case: within each argument every row has the same names.
        order = dict.fromkeys(name for dicts in groups for name in dicts[0])
    else:
        order = dict.fromkeys(name for row in zip(*groups) for d in row for name in d)
    columns: dict[str, list[Any]] = dict.fromkeys(order)  # type: ignore[assignment]
    for dicts, names in zip(groups, group_names):
        for name in names:
            columns[name] = [d.get(name) for d in dicts]
    return columns


def task_columns(
    keys: Raw,
    xs: Sequence[dict[str, Any]],
    ys: Sequence[dict[str, Any]],
    extra: Sequence[dict[str, Any]],
    state: Raw,
    worker_ids: Raw,
    pids: Sequence[int | None],
    queued_at: Raw,
    started_at: Raw,
    finished_at: Raw,
    attempts: Raw,
    error: Raw,
) -> dict[str, Any]:
    """The columns of :func:`task_frame`: lists for inputs, outputs and extra, typed arrays for the rest."""
    import pandas as pd

    n = len(keys)
    # One conversion for the four text columns and one for the three times, then
    # slices (views): each pandas call has a fixed cost that dominates for few rows.
    texts = text([*worker_ids, *state, *keys, *error])
    stamps = times([*queued_at, *started_at, *finished_at])
    meta = {
        "pid": pd.array(pids, dtype="Int64"),
        "worker_id": texts[:n],
        "state": texts[n : 2 * n],
        "keys": texts[2 * n : 3 * n],
        "queued_at": stamps[:n],
        "started_at": stamps[n : 2 * n],
        "finished_at": stamps[2 * n :],
        "attempts": counts(attempts),
        "error": texts[3 * n :],
    }
    columns: dict[str, Any] = {name: values for name, values in dict_columns(xs, ys, extra).items() if name not in meta}
    columns.update(meta)
    return columns


def task_frame(*fields: Any) -> pd.DataFrame:
    """One row per task: inputs, outputs and extra columns, then :data:`META_COLUMNS`.

    Takes the arguments of :func:`task_columns`, one value per task in
    each: ``xs``, ``ys`` and ``extra`` as unpickled dicts, the rest as raw
    fields (bytes or None).
    """
    return frame_of(task_columns(*fields))


def frame_of(columns: dict[str, Any]) -> pd.DataFrame:
    """A DataFrame over the columns (lists are typed by pandas; arrays are not copied)."""
    import pandas as pd

    n = len(next(iter(columns.values()))) if columns else 0
    return pd.DataFrame(columns, index=pd.RangeIndex(n), copy=False)


class GrowingFrame:
    """A DataFrame that grows at the bottom only, extended faster than by ``pd.concat``.

    It keeps one array per column. New rows whose columns have the same
    names and types as the table's are appended column by column (a numpy
    concatenation, or one more Arrow chunk) and a DataFrame is assembled
    over the results: about a third of what ``pd.concat`` costs for a few
    rows. Anything else (a new column, a type that changes) goes through
    ``pd.concat``; new columns then come after the old ones but before the
    names in ``tail``.

    >>> table = GrowingFrame()
    >>> table.append({"x": [1, 2], "name": ["a", "b"]})
    >>> table.append({"x": [3], "name": ["c"]})
    >>> table.frame().to_dict("list")
    {'x': [1, 2, 3], 'name': ['a', 'b', 'c']}
    """

    # Arrow-backed columns get one chunk per append; merge them this often.
    COMPACT_EVERY = 256

    def __init__(self, tail: Sequence[str] = ()) -> None:
        self.tail = tuple(tail)
        self._frame: pd.DataFrame | None = None
        self._arrays: dict[str, Any] = {}
        self._appends = 0

    def __len__(self) -> int:
        return 0 if self._frame is None else len(self._frame)

    def append(self, columns: dict[str, Any]) -> None:
        """Add rows below the table: ``columns`` maps each name to one value or array per row."""
        typed = self._typed_like_table(columns)
        if typed is None:
            frame = self._concat(columns) if len(self) else frame_of(columns)
            self._arrays = {name: _array_of(frame[name]) for name in frame.columns}
        else:
            self._appends += 1
            compact = self._appends % self.COMPACT_EVERY == 0
            self._arrays = {name: _concat(old, typed[name], compact) for name, old in self._arrays.items()}
            frame = frame_of(self._arrays)
        self._frame = frame

    def _concat(self, columns: dict[str, Any]) -> pd.DataFrame:
        """The table with rows of other columns or types below it, typed as if read at once.

        A column whose type is the same above and below is concatenated; any
        other column is rebuilt from its Python values and typed by pandas,
        so that (say) integers followed by a float become a float column and
        a column new to the table holds None above, as a fresh read gives.
        """
        import pandas as pd

        old, rows = self._frame, frame_of(columns)
        assert old is not None  # called on a table that has rows
        names = [*old.columns, *(name for name in rows.columns if name not in old.columns)]
        names = [n for n in names if n not in self.tail] + [n for n in self.tail if n in names]
        data: dict[str, Any] = {}
        for name in names:
            above, below = old.get(name), rows.get(name)
            if above is not None and below is not None and above.dtype == below.dtype:
                data[name] = pd.concat([above, below], ignore_index=True)
                continue
            values = columns.get(name)
            data[name] = (above.tolist() if above is not None else [None] * len(old)) + (
                values if isinstance(values, list) else below.tolist() if below is not None else [None] * len(rows)
            )
        return pd.DataFrame(data, index=pd.RangeIndex(len(old) + len(rows)))

    def frame(self) -> pd.DataFrame:
        """The whole table, as a DataFrame the caller may change without touching the table."""
        import pandas as pd

        if self._frame is None:
            return pd.DataFrame()
        # With copy-on-write (pandas >= 3) a shallow copy is enough.
        return self._frame.copy(deep=not _copy_on_write())

    def _typed_like_table(self, columns: dict[str, Any]) -> dict[str, Any] | None:
        """The new columns as arrays of the table's types, or None if any does not fit."""
        import numpy as np

        if not len(self) or list(columns) != list(self._arrays):
            return None
        typed = {}
        for name, values in columns.items():
            old = self._arrays[name]
            if not isinstance(values, list):  # already typed (the meta columns)
                if values.dtype != old.dtype:
                    return None
                typed[name] = values
            elif isinstance(old, np.ndarray) and old.dtype.kind in "iufb":
                array = np.array(values)
                if array.dtype != old.dtype or array.ndim != 1:
                    return None
                typed[name] = array
            elif old.dtype == _default_str() and all(type(v) is str for v in values):
                typed[name] = text(values)
            else:
                return None
        return typed


def _array_of(column: pd.Series) -> Any:
    """A column's values: a numpy array for numpy dtypes, else its pandas ExtensionArray."""
    import numpy as np

    values = column.array
    return values.to_numpy() if isinstance(column.dtype, np.dtype) and column.dtype.kind in "iufb" else values


def _concat(old: Any, new: Any, compact: bool) -> Any:
    """``old`` with ``new`` below it; with ``compact``, Arrow strings are merged into one chunk."""
    import numpy as np
    import pandas as pd

    if isinstance(old, np.ndarray):
        return np.concatenate([old, new])
    joined = type(old)._concat_same_type([old, new])
    pa = _arrow() if compact else None
    if pa is not None and joined.dtype == _default_str():
        arrow = pa.array(joined)  # the column's own ChunkedArray, no copy
        if isinstance(arrow, pa.ChunkedArray):
            joined = pd.array(arrow.combine_chunks(), dtype=str)
    return joined


@cache
def _default_str() -> Any:
    import pandas as pd

    return pd.array([], dtype=str).dtype


@cache
def _copy_on_write() -> bool:
    from importlib.metadata import version

    return int(version("pandas").split(".")[0]) >= 3
