"""The joblib backend "rush": scikit-learn's n_jobs on rush workers."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

joblib = pytest.importorskip("joblib")
pytest.importorskip("sklearn")

from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.svm import SVC  # noqa: E402

import rush_dask  # noqa: E402,F401 - registers the backend

GRID = {"C": [0.1, 10.0], "gamma": [1e-3, 1e-2]}


@pytest.fixture
def workers(rush):
    rush.start_workers(n_workers=2)
    rush.wait_for_workers(2, timeout=60)
    return rush


def test_importing_rush_dask_registers_the_backend_without_importing_sklearn():
    code = (
        "import sys, rush_dask; assert 'joblib' not in sys.modules; "  # registered when joblib loads
        "import joblib; from joblib.parallel import BACKENDS; "
        "assert 'rush' in BACKENDS; assert 'sklearn' not in sys.modules; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def test_grid_search_on_rush_equals_n_jobs_1(workers):
    X, y = load_digits(return_X_y=True)
    with joblib.parallel_backend("rush", rush=workers):
        on_rush = GridSearchCV(SVC(), GRID, cv=3, n_jobs=-1).fit(X, y)
    alone = GridSearchCV(SVC(), GRID, cv=3, n_jobs=1).fit(X, y)
    for column in (
        "params",
        "rank_test_score",
        "mean_test_score",
        "std_test_score",
        *[f"split{i}_test_score" for i in range(3)],
    ):
        assert np.array_equal(np.asarray(on_rush.cv_results_[column]), np.asarray(alone.cv_results_[column]))
    assert on_rush.best_params_ == alone.best_params_
    # the 12 fits ran as rush tasks on both workers
    data = workers.fetch_finished_tasks()
    assert len(data) >= 1 and data["worker_id"].nunique() == 2


def test_large_arguments_are_stored_once_per_network(workers):
    big = np.arange(100_000, dtype=np.float64)  # 800 KB
    with joblib.parallel_backend("rush", rush=workers):
        sums = joblib.Parallel(n_jobs=-1, batch_size=1)(joblib.delayed(np.sum)(big) for _ in range(8))
    with joblib.parallel_backend("rush", rush=workers):  # a second Parallel call, a new backend
        more = joblib.Parallel(n_jobs=-1, batch_size=1)(joblib.delayed(np.sum)(big) for _ in range(4))
    assert sums + more == [big.sum()] * 12
    shared = list(workers.client.scan_iter(match=workers.keys.prefix + "shared:*"))
    assert len(shared) == 1  # one copy of the array in Redis
    sizes = [
        len(workers.client.hget(workers.keys.task(k.decode()), "xs"))
        for k in workers.client.lrange(workers.keys.all_tasks, 0, -1)
    ]
    assert len(sizes) == 12 and max(sizes) < 10_000  # the tasks only name it


def test_an_error_in_a_call_is_raised_with_its_type(workers):
    with joblib.parallel_backend("rush", rush=workers), pytest.raises(ValueError, match="invalid literal"):
        joblib.Parallel(n_jobs=-1)(joblib.delayed(int)(s) for s in ["1", "x", "3"])


def test_effective_n_jobs_counts_the_running_workers(workers):
    from rush_dask.joblib_backend import RushBackend

    backend = RushBackend(rush=workers)
    assert backend.effective_n_jobs(-1) == 2
    assert backend.effective_n_jobs(5) == 5
    with pytest.raises(ValueError):
        backend.effective_n_jobs(0)
