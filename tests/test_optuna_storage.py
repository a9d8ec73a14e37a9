"""rush_dask.optuna_storage.RedisStorage: the storage contract as Optuna uses it, on a real Redis."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from conftest import network_keys  # noqa: E402
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # noqa: E402
from optuna.exceptions import DuplicatedStudyError, UpdateFinishedTrialError  # noqa: E402
from optuna.study import StudyDirection  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from rush_dask.optuna import storage  # noqa: E402
from rush_dask.optuna_storage import RedisStorage  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)
ROOT = Path(__file__).resolve().parent.parent
MIN = [StudyDirection.MINIMIZE]


@pytest.fixture
def store(rush):
    return storage(rush)


def other(store):
    """A second storage object on the same keys (as another process would have): nothing cached."""
    return RedisStorage(store._url, store.prefix)


def test_it_is_the_default_and_its_keys_live_under_the_network_prefix(rush, redis_url, store):
    assert isinstance(store, RedisStorage)
    assert store.prefix == rush.keys.prefix + "optuna-store:"
    study = optuna.create_study(storage=store, study_name="s")
    study.enqueue_trial({"x": 0.5})
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    keys = network_keys(redis_url, rush)
    assert keys and all(k.startswith(rush.keys.prefix.encode()) for k in keys)  # one hash tag: one slot
    rush.reset()
    assert network_keys(redis_url, rush) == set()


def test_storage_names_its_backends(rush):
    with pytest.raises(ValueError, match="backend must be 'redis', 'list' or 'journal'"):
        storage(rush, backend="sql")


def test_ask_report_tell_and_every_field_of_a_trial(store):
    study = optuna.create_study(storage=store, study_name="fields", direction="maximize")
    trial = study.ask()
    assert trial.number == 0
    x = trial.suggest_float("x", -1.0, 1.0)
    n = trial.suggest_int("n", 1, 10, log=True)
    c = trial.suggest_categorical("c", ["a", None, 3])
    trial.report(0.5, step=1)
    trial.report(float("nan"), step=2)
    trial.set_user_attr("curve", [1, 2.5, "three"])
    store.set_trial_system_attr(trial._trial_id, "note", {"k": [1]})
    frozen = study.tell(trial, 1.25)
    assert frozen.state == TrialState.COMPLETE and frozen.value == 1.25
    for t in (store.get_trial(trial._trial_id), other(store).get_trial(trial._trial_id)):
        assert t.number == 0 and t.state == TrialState.COMPLETE and t.values == [1.25]
        assert t.params == {"x": x, "n": n, "c": c}
        assert t.distributions == {
            "x": FloatDistribution(-1.0, 1.0),
            "n": IntDistribution(1, 10, log=True),
            "c": CategoricalDistribution(["a", None, 3]),
        }
        assert t.intermediate_values[1] == 0.5 and t.intermediate_values[2] != t.intermediate_values[2]  # NaN
        assert t.user_attrs == {"curve": [1, 2.5, "three"]} and t.system_attrs == {"note": {"k": [1]}}
        assert t.datetime_start <= t.datetime_complete
    assert study.best_value == 1.25 and study.best_params == {"x": x, "n": n, "c": c}


def test_pruned_and_failed_trials(store):
    study = optuna.create_study(storage=store, study_name="prune")
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    trial.report(3.0, step=4)
    assert study.tell(trial, state=TrialState.PRUNED).value == 3.0  # the last intermediate value
    trial = study.ask()
    assert study.tell(trial, state=TrialState.FAIL).values is None
    assert [t.state for t in other(store).get_all_trials(study._study_id)] == [TrialState.PRUNED, TrialState.FAIL]


def test_get_all_trials_filters_by_state_and_sees_other_objects_writes(store):
    study = optuna.create_study(storage=store, study_name="states")
    for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.COMPLETE):
        trial = study.ask()
        study.tell(trial, 1.0 if state == TrialState.COMPLETE else None, state=state)
    running = study.ask()
    study.enqueue_trial({"x": 0.25})
    reader = other(store)
    sid = study._study_id

    def numbers(storage, states=None):
        return [t.number for t in storage.get_all_trials(sid, deepcopy=False, states=states)]

    for s in (store, reader):
        assert numbers(s) == [0, 1, 2, 3, 4, 5]
        assert numbers(s, [TrialState.COMPLETE]) == [0, 3]
        assert numbers(s, (TrialState.PRUNED, TrialState.FAIL)) == [1, 2]
        assert numbers(s, [TrialState.RUNNING]) == [4]
        assert numbers(s, [TrialState.WAITING]) == [5]
        assert numbers(s, [TrialState.RUNNING, TrialState.COMPLETE]) == [0, 3, 4]
        assert s.get_n_trials(sid) == 6 and s.get_n_trials(sid, TrialState.COMPLETE) == 2
    # the reader's cache holds the finished trials; what finishes later is read on top of it
    study.tell(running, 2.0)
    assert numbers(reader, [TrialState.COMPLETE]) == [0, 3, 4]
    waiting = study.ask()  # takes the enqueued trial
    assert waiting.number == 5 and waiting.suggest_float("x", 0, 1) == 0.25
    assert numbers(reader, [TrialState.RUNNING]) == [5] and numbers(reader, [TrialState.WAITING]) == []
    study.tell(waiting, 0.0)
    assert [t.value for t in reader.get_all_trials(sid, states=[TrialState.COMPLETE])] == [1.0, 1.0, 2.0, 0.0]
    # deepcopy=True hands out copies; a finished trial read twice without it is the same object
    a, b = reader.get_all_trials(sid), reader.get_all_trials(sid)
    assert a[0] is not b[0] and a[0] == b[0]
    assert reader.get_all_trials(sid, deepcopy=False)[0] is reader.get_all_trials(sid, deepcopy=False)[0]
    assert reader.get_trial_id_from_study_id_trial_number(sid, 5) == waiting._trial_id


def test_a_finished_trial_cannot_change_and_running_twice_is_refused(store):
    sid = store.create_new_study(MIN, "refuse")
    tid = store.create_new_trial(sid)
    assert store.set_trial_state_values(tid, TrialState.RUNNING) is False  # already RUNNING
    assert store.set_trial_state_values(tid, TrialState.COMPLETE, [1.0]) is True
    for s in (store, other(store)):
        with pytest.raises(UpdateFinishedTrialError):
            s.set_trial_state_values(tid, TrialState.FAIL)
        with pytest.raises(UpdateFinishedTrialError):
            s.set_trial_param(tid, "x", 0.5, FloatDistribution(0, 1))
        with pytest.raises(UpdateFinishedTrialError):
            s.set_trial_intermediate_value(tid, 0, 1.0)
        with pytest.raises(UpdateFinishedTrialError):
            s.set_trial_user_attr(tid, "k", 1)
        with pytest.raises(UpdateFinishedTrialError):
            s.set_trial_system_attr(tid, "k", 1)
        trial = s.get_trial(tid)
        assert trial.state == TrialState.COMPLETE and trial.values == [1.0] and trial.params == {}


def test_a_waiting_trial_is_taken_once_by_racing_threads_and_objects(store):
    study = optuna.create_study(storage=store, study_name="race")
    study.enqueue_trial({"x": 0.1})
    (waiting,) = store.get_all_trials(study._study_id, states=[TrialState.WAITING])
    objects = [other(store) for _ in range(8)]
    results, start = [], threading.Barrier(8)

    def take(s):
        start.wait()
        results.append(s.set_trial_state_values(waiting._trial_id, TrialState.RUNNING))

    threads = [threading.Thread(target=take, args=(s,)) for s in objects]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert store.get_trial(waiting._trial_id).state == TrialState.RUNNING
    assert store.get_all_trials(study._study_id, states=[TrialState.WAITING]) == []


_WORKER = """
import sys, optuna
from rush_dask.optuna_storage import RedisStorage
optuna.logging.set_verbosity(optuna.logging.WARNING)
url, prefix, name, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
study = optuna.load_study(study_name=name, storage=RedisStorage(url, prefix),
                          sampler=optuna.samplers.RandomSampler())
study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=n)
"""


def run_processes(store, name, n_processes, n_trials):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, store._url, store.prefix, name, str(n_trials)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(n_processes)
    ]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out.decode()


def test_enqueued_trials_are_each_taken_exactly_once_by_concurrent_processes(store):
    study = optuna.create_study(storage=store, study_name="enqueued")
    xs = [i / 40 for i in range(20)]
    for x in xs:
        study.enqueue_trial({"x": x})
    run_processes(store, "enqueued", n_processes=4, n_trials=10)
    trials = study.get_trials()
    assert len(trials) == 40 and {t.state for t in trials} == {TrialState.COMPLETE}
    assert sorted(t.params["x"] for t in trials if "fixed_params" in t.system_attrs) == xs
    assert sorted(t.number for t in trials) == list(range(40))


def test_load_study_from_a_second_process_and_read_back_here(store):
    study = optuna.create_study(storage=store, study_name="shared", direction="minimize")
    study.set_user_attr("dataset", "digits")
    study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=2)
    run_processes(store, "shared", n_processes=1, n_trials=5)
    assert len(study.trials) == 7 and study.best_value == min(t.value for t in study.trials)
    again = optuna.load_study(study_name="shared", storage=other(store))
    assert again.user_attrs == {"dataset": "digits"} and len(again.trials) == 7


def test_studies_attributes_names_and_deletion(store):
    a = store.create_new_study(MIN, "a")
    b = store.create_new_study([StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE], "b")
    assert b != a and store.get_study_id_from_name("b") == b and store.get_study_name_from_id(a) == "a"
    assert other(store).get_study_directions(b) == [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    store.set_study_user_attr(a, "u", {"v": 1})
    store.set_study_system_attr(a, "s", [1, 2])
    assert other(store).get_study_user_attrs(a) == {"u": {"v": 1}}
    assert other(store).get_study_system_attrs(a) == {"s": [1, 2]}
    studies = other(store).get_all_studies()
    assert [(s.study_name, s._study_id) for s in studies] == [("a", a), ("b", b)]
    assert studies[0].user_attrs == {"u": {"v": 1}} and studies[1].directions[0] == StudyDirection.MAXIMIZE
    tid = store.create_new_trial(a)
    store.set_trial_state_values(tid, TrialState.COMPLETE, [0.0])
    assert len(store.get_all_trials(a)) == 1
    store.delete_study(a)
    assert [s.study_name for s in store.get_all_studies()] == ["b"]
    for call in (
        lambda: store.get_study_id_from_name("a"),
        lambda: store.get_all_trials(a),
        lambda: other(store).get_trial(tid),
        lambda: store.delete_study(a),
    ):
        with pytest.raises(KeyError):
            call()
    assert store.create_new_study(MIN, "a") not in (a, b)  # ids are never reused
    assert optuna.get_all_study_names(store) == ["b", "a"]


def test_bad_input_raises_and_writes_nothing(store, rush, redis_url):
    sid = store.create_new_study(MIN, "bad")
    tid = store.create_new_trial(sid)
    store.set_trial_param(tid, "x", 0.5, FloatDistribution(0, 1))
    before = network_keys(redis_url, rush)
    with pytest.raises(DuplicatedStudyError):
        store.create_new_study(MIN, "bad")
    with pytest.raises(KeyError):
        store.create_new_trial(sid + 100)
    with pytest.raises(KeyError):
        store.get_trial(tid + 100)
    with pytest.raises(KeyError):
        store.set_trial_state_values(tid + 100, TrialState.COMPLETE, [1.0])
    with pytest.raises(KeyError):
        store.get_trial_id_from_study_id_trial_number(sid, 5)
    with pytest.raises(KeyError):
        store.set_study_user_attr(sid + 100, "k", 1)
    with pytest.raises(ValueError):  # 'x' is a float in this study: a categorical is incompatible
        store.set_trial_param(tid, "x", 0, CategoricalDistribution(["a"]))
    with pytest.raises(TypeError):
        store.set_trial_user_attr(tid, "k", object())  # not JSON
    with pytest.raises(TypeError):
        store.get_trial("0")
    with pytest.raises(ValueError):
        store.create_new_study([], "none")
    assert network_keys(redis_url, rush) == before
    # a different range of the same kind is compatible (as in Optuna's own storages)
    store.set_trial_param(tid, "y", 2, IntDistribution(0, 3))
    tid2 = store.create_new_trial(sid)
    store.set_trial_param(tid2, "y", 5, IntDistribution(0, 9))
    assert other(store).get_trial(tid2).params == {"y": 5}


def test_a_trial_failed_by_another_process_cannot_be_told(store):
    study = optuna.create_study(storage=store, study_name="lost")
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    sweeper = other(store)  # what a sweep in another worker does to the trial of a lost worker
    sweeper.set_trial_system_attr(trial._trial_id, "fail_reason", "worker lost")
    assert sweeper.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    with pytest.raises(UpdateFinishedTrialError):
        study.tell(trial, 1.0)
    final = store.get_trial(trial._trial_id)
    assert final.state == TrialState.FAIL and final.system_attrs == {"fail_reason": "worker lost"}


def test_it_pickles_without_its_connection(store):
    study = optuna.create_study(storage=store, study_name="pickled")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    copy = pickle.loads(pickle.dumps(store))
    assert repr(copy) == repr(store) and "redis" not in repr(store).lower().replace("redisstorage", "")
    assert len(copy.get_all_trials(study._study_id)) == 2


@pytest.mark.parametrize("sampler", ["TPESampler", "CmaEsSampler"])
def test_optunas_samplers_on_it(store, sampler):
    if sampler == "CmaEsSampler":
        pytest.importorskip("cmaes")
    study = optuna.create_study(
        storage=store,
        study_name=sampler,
        sampler=getattr(optuna.samplers, sampler)(n_startup_trials=4, seed=1),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2),
    )

    def objective(trial):
        x, y = trial.suggest_float("x", -5, 5), trial.suggest_float("y", -5, 5)
        for step in range(3):
            trial.report((x - 2) ** 2 + y**2 + 1 / (step + 1), step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return (x - 2) ** 2 + y**2

    study.optimize(objective, n_trials=20)
    assert len(study.trials) == 20
    assert {t.state for t in study.trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    if sampler == "CmaEsSampler":  # CMA-ES keeps its state in the trials' system attributes
        assert any(key.startswith("cma:") for t in study.trials for key in t.system_attrs)
    # same trials through a fresh object (nothing cached) as through the one that wrote them
    fresh = other(store).get_all_trials(study._study_id)
    assert [json.dumps(t.params) for t in fresh] == [json.dumps(t.params) for t in study.trials]
    assert [t.intermediate_values for t in fresh] == [t.intermediate_values for t in study.trials]
