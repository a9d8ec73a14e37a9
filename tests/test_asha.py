"""rush_dask.asha: asynchronous successive halving on rush workers."""

from __future__ import annotations

import threading

import hpo_funcs as f
import pandas as pd
import pytest
from conftest import network_keys

from rush_dask.asha import promotable, rung_budgets, search


def test_rung_budgets():
    assert rung_budgets(1, 27, 3) == [1, 3, 9, 27]
    assert rung_budgets(1, 10, 3) == [1, 3, 9]
    assert rung_budgets(0.5, 2, 2) == [0.5, 1.0, 2.0]


def test_promotable_is_the_best_fraction_of_a_rung():
    archive = pd.DataFrame({"config_id": list("abcdefg") + ["a"], "rung": [0] * 7 + [1], "y": [5, 1, 4, 2, 6, 3, 7, 5]})
    assert promotable(archive, 0, eta=3) == ["b", "d"]  # 7 finished: the best 2
    assert promotable(archive, 0, eta=3, minimize=False) == ["g", "e"]
    assert promotable(archive, 1, eta=3) == []  # 1 finished: none yet


def check_structure(archive, budgets, n_evals):
    assert len(archive) == n_evals
    assert set(archive["budget"]) <= set(budgets)
    assert (archive["budget"] == [budgets[r] for r in archive["rung"]]).all()
    assert not archive.duplicated(["config_id", "rung"]).any()  # never promoted twice
    first = archive.groupby("config_id")["started_at"].min()
    for row in archive[archive["rung"] > 0].itertuples():
        lower = archive[(archive["config_id"] == row.config_id) & (archive["rung"] == row.rung - 1)]
        assert len(lower) == 1 and lower["finished_at"].iloc[0] <= row.started_at
        assert first[row.config_id] < row.started_at


def test_one_worker_promotes_exactly_the_best_third_of_each_rung(rush):
    budgets = rung_budgets(1, 9, 3)
    archive = search(
        rush, f.known_ranking, f.sample_quality, min_budget=1, max_budget=9, eta=3, n_evals=40, n_workers=1, seed=3
    )
    check_structure(archive, budgets, 40)
    assert (archive["y"] == archive["q"]).all()
    promotions = archive[archive["rung"] > 0]
    assert len(promotions) > 3
    for row in promotions.itertuples():
        # what the worker saw when it chose: every evaluation of the lower rung finished before
        seen = archive[(archive["rung"] == row.rung - 1) & (archive["finished_at"] <= row.started_at)]
        best = seen.nsmallest(len(seen) // 3, "y")["config_id"]
        assert row.config_id in set(best)
    # one worker promotes whenever it can: a new configuration is sampled only when every
    # configuration in the best third of a rung was already promoted
    for row in archive[archive["rung"] == 0].itertuples():
        before = archive[archive["started_at"] < row.started_at]
        for rung in (0, 1):
            seen = before[(before["rung"] == rung) & (before["finished_at"] <= row.started_at)]
            best = set(seen.nsmallest(len(seen) // 3, "y")["config_id"])
            assert best <= set(before[before["rung"] == rung + 1]["config_id"])


def test_two_workers_never_promote_a_configuration_twice(rush):
    archive = search(
        rush, f.known_ranking, f.sample_quality, min_budget=1, max_budget=9, eta=3, n_evals=40, n_workers=2
    )
    check_structure(archive, rung_budgets(1, 9, 3), 40)
    assert (archive["rung"] > 0).any()
    assert not [k for k in network_keys(rush.url, rush) if b":asha:" in k]  # the claims are gone


@pytest.mark.parametrize(
    "bad, error",
    [
        (dict(eta=1), ValueError),
        (dict(n_evals=0), ValueError),
        (dict(min_budget=0), ValueError),
        (dict(max_budget=0.5), ValueError),
        (dict(heartbeat_every=1), TypeError),
        (dict(objective=lambda q, budget, _=threading.Lock(): q), TypeError),  # noqa: B008 (unpicklable)
    ],
)
def test_bad_input_raises_and_writes_nothing(rush, redis_url, bad, error):
    args = (
        dict(objective=f.known_ranking, sample=f.sample_quality, min_budget=1, max_budget=9, n_evals=5, n_workers=1)
        | bad
    )
    with pytest.raises(error):
        search(rush, **args)
    assert network_keys(redis_url, rush) == set()
