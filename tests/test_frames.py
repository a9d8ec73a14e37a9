"""Task tables: the column builders and the cache behind fetch_finished_tasks.

The first tests run the builders on raw values as Redis returns them; the
last ones check, on a real network, that a table grown by many incremental
fetches is the table a cold reader gets.
"""

import funcs
import numpy as np
import pandas as pd
import pytest

from rush_dask.core import frames
from rush_dask.core.frames import ARROW_MIN_ROWS, GrowingFrame, dict_columns, task_frame

STR = pd.array([], dtype=str).dtype
TIMEOUT = 60


def raw_rows(n, worker=b"w1"):
    """The raw fields of n finished tasks, as the archive holds them."""
    return (
        [f"key-{i}".encode() for i in range(n)],
        [{"x": i, "name": f"n{i}"} for i in range(n)],
        [{"y": i * 0.5} for i in range(n)],
        [{} for _ in range(n)],
        [b"finished"] * n,
        [worker] * n,
        [4242] * n,
        [b"1700000000.000001"] * n,
        [b"1700000000.5"] * n,
        [f"1700000001.{i % 1_000_000:06d}".encode() for i in range(n)],
        [str(i % 3).encode() for i in range(n)],
        [None] * n,
    )


@pytest.mark.parametrize("n", [0, 1, ARROW_MIN_ROWS + 1])
def test_task_frame_types_are_the_same_for_few_and_many_rows(n):
    frame = task_frame(*raw_rows(n))
    assert list(frame.columns) == (["x", "name", "y"] if n else []) + list(frames.META_COLUMNS)
    expected = {
        "pid": "Int64",
        "worker_id": STR,
        "state": STR,
        "keys": STR,
        "queued_at": "datetime64[us, UTC]",
        "finished_at": "datetime64[us, UTC]",
        "attempts": "int64",
        "error": STR,
    }
    for name, dtype in expected.items():
        assert frame[name].dtype == dtype, name
    if n:
        assert frame["x"].dtype == "int64" and frame["y"].dtype == "float64"
        assert frame["name"].dtype == STR
        assert frame["keys"].iloc[-1] == f"key-{n - 1}"
        assert frame["error"].isna().all()
        assert frame["attempts"].tolist() == [i % 3 for i in range(n)]
        last = pd.Timestamp(1700000001 + (n - 1) / 1e6, unit="s", tz="UTC").round("us")
        assert frame["finished_at"].iloc[-1] == last


def test_timestamps_keep_every_microsecond():
    raw = [f"1732812345.{us:06d}".encode() for us in range(0, 1_000_000, 997)]
    for values in (raw[:3], raw):  # the Python path and the Arrow path
        micros = [t.value // 1000 for t in frames.times(values)]
        assert micros == [1732812345_000000 + int(v.split(b".")[1]) for v in values]


def test_missing_values_become_nat_nan_and_zero():
    assert frames.times([None, b"1.5"]).isna().tolist() == [True, False]
    assert frames.counts([None, b"2"]).tolist() == [0, 2]
    assert frames.text([None, b"a"]).isna().tolist() == [True, False]
    many = [None] * (ARROW_MIN_ROWS + 1)
    assert frames.text(many).dtype == STR and frames.text(many).isna().all()
    assert frames.times(many).isna().all()


def test_text_takes_bytes_str_and_none_together():
    # fetch_tasks() passes task keys as str, worker ids and states as bytes.
    for n in (1, ARROW_MIN_ROWS):
        values = frames.text([b"a", "b", None] * n)
        assert values.dtype == STR and list(values[:2]) == ["a", "b"] and values.isna().sum() == n


def test_dict_columns_fill_gaps_and_outputs_shadow_inputs():
    columns = dict_columns([{"a": 1, "b": 2}, {"a": 3}], [{"b": 9}, {"c": "x"}])
    assert columns == {"a": [1, 3], "b": [9, None], "c": [None, "x"]}


def test_gc_paused_restores_the_collector_even_on_error():
    import gc

    assert gc.isenabled()
    with pytest.raises(RuntimeError), frames.gc_paused():
        assert not gc.isenabled()
        with frames.gc_paused():
            pass
        assert not gc.isenabled()  # the inner block did not switch it back on
        raise RuntimeError
    assert gc.isenabled()


def test_growing_frame_appends_like_concat():
    table = GrowingFrame()
    rows = raw_rows(804)
    for start, stop in [(0, 500), (500, 501), (501, 504), (504, 804)]:
        table.append(frames.task_columns(*[field[start:stop] for field in rows]))
    pd.testing.assert_frame_equal(table.frame(), task_frame(*rows))


def test_growing_frame_falls_back_when_a_type_or_column_changes():
    table = GrowingFrame()
    table.append({"x": [1, 2], "s": ["a", "b"]})
    table.append({"x": [2.5], "s": ["c"]})  # int -> float
    table.append({"x": [None], "s": [None]})  # missing values
    table.append({"x": [4], "s": ["d"], "z": [True]})  # a new column
    frame = table.frame()
    assert frame["x"].dtype == "float64" and np.isnan(frame["x"].iloc[3])
    assert frame["x"].tolist()[:3] == [1.0, 2.0, 2.5]
    assert frame["s"].tolist()[:3] == ["a", "b", "c"] and pd.isna(frame["s"].iloc[3])
    assert frame["z"].tolist()[-1] is True and len(frame) == 5


def test_growing_frame_merges_arrow_chunks():
    table = GrowingFrame()
    table.append({"s": frames.text([b"a"] * 10)})
    for _ in range(GrowingFrame.COMPACT_EVERY * 2 + 5):
        table.append({"s": frames.text([b"b"])})
    frame = table.frame()
    assert len(frame) == 10 + GrowingFrame.COMPACT_EVERY * 2 + 5
    arrow = frame["s"].array
    if hasattr(arrow, "_pa_array"):  # Arrow storage: a bounded number of chunks
        assert arrow._pa_array.num_chunks <= GrowingFrame.COMPACT_EVERY
    assert frame["s"].tolist() == ["a"] * 10 + ["b"] * (len(frame) - 10)


def test_growing_frame_result_can_be_changed_without_touching_the_table():
    table = GrowingFrame()
    table.append({"x": [1, 2], "s": ["a", "b"]})
    mine = table.frame()
    mine.loc[0, "x"] = 100
    mine.loc[1, "s"] = "changed"
    table.append({"x": [3], "s": ["c"]})
    assert table.frame()["x"].tolist() == [1, 2, 3]
    assert table.frame()["s"].tolist() == ["a", "b", "c"]


def test_incremental_fetches_equal_a_cold_read(rush):
    """Many small fetches of a changing archive give what one fresh reader reads at once."""
    rush.start_workers(funcs.echo, n_workers=2)
    kinds = [{"x": i, "label": f"t{i}"} for i in range(30)] + [
        {"x": 0.5, "label": None},
        {"x": 7, "label": "after", "extra_input": True},
    ]
    for i in range(0, len(kinds), 4):
        keys = rush.push_tasks(kinds[i : i + 4])
        rush.wait_for_tasks(keys, timeout=TIMEOUT)
        mine = rush.fetch_finished_tasks()
        mine.loc[0, "x"] = -1  # the caller's changes never reach the cache
    cached = rush.fetch_finished_tasks()
    cold = type(rush)(rush.network_id, url=rush.url)
    try:
        pd.testing.assert_frame_equal(cached, cold.fetch_finished_tasks())
    finally:
        cold.close()
    assert len(cached) == len(kinds)
