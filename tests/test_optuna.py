"""rush_dask.optuna: studies in the network's Redis, trials run by rush workers."""

from __future__ import annotations

import os
import signal
import threading

import pytest

optuna = pytest.importorskip("optuna")

import hpo_funcs as f  # noqa: E402
from conftest import network_keys, wait_until  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from rush_dask.optuna import optimize, storage  # noqa: E402

optuna.logging.set_verbosity(optuna.logging.WARNING)
TIMEOUT = 90


def states(study):
    return [t.state for t in study.get_trials(deepcopy=False)]


def test_import_gets_the_real_optuna():
    import rush_dask.optuna as ours

    assert ours.optuna is optuna
    assert hasattr(ours.optuna, "create_study")


def test_storage_lives_under_the_network_prefix_and_reset_removes_it(rush, redis_url):
    for backend in ("redis", "list", "journal", "optuna"):
        study = optuna.create_study(storage=storage(rush, backend=backend), study_name=f"s-{backend}")
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
        again = optuna.load_study(study_name=f"s-{backend}", storage=storage(rush, backend=backend))
        assert len(again.trials) == 3
    assert network_keys(redis_url, rush)  # the journals are there ...
    rush.reset()
    assert network_keys(redis_url, rush) == set()  # ... and reset() removes them


def test_optimize_completes_exactly_n_trials_on_the_workers(rush):
    study = optuna.create_study(
        storage=storage(rush), study_name="quad", sampler=optuna.samplers.TPESampler(n_startup_trials=5)
    )
    optimize(study, f.quadratic, n_trials=20, rush=rush, n_workers=2)
    assert states(study) == [TrialState.COMPLETE] * 20
    archive = rush.fetch_finished_tasks()
    assert sorted(archive["trial"]) == list(range(20))
    assert archive["worker_id"].nunique() == 2  # both workers ran trials
    assert set(archive["trial_state"]) == {"COMPLETE"}
    by_trial = {t.number: t for t in study.trials}
    for row in archive.itertuples():
        assert row.value == by_trial[row.trial].value
        assert row.params_x == by_trial[row.trial].params["x"]
    assert rush.n_running_workers == 0  # the workers ended with the search


def test_timeout_stops_starting_trials_and_lets_the_running_ones_end(rush):
    study = optuna.create_study(storage=storage(rush), study_name="timeout")
    optimize(study, f.sleep_quarter_second, n_trials=10_000, rush=rush, n_workers=2, timeout=1.0)
    assert 0 < len(study.trials) < 10_000
    assert set(states(study)) == {TrialState.COMPLETE}  # nothing left RUNNING, nothing failed
    assert rush.n_running_workers == 0 and rush.n_running_tasks == 0


def test_each_trial_is_in_the_network_log_at_optunas_info_level(rush):
    study = optuna.create_study(storage=storage(rush), study_name="log")
    optuna.logging.set_verbosity(optuna.logging.INFO)  # the workers take the controller's level
    try:
        optimize(study, f.quadratic, n_trials=3, rush=rush, n_workers=1)
    finally:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    wait_until(
        lambda: (rush.read_log()["logger"] == "rush_dask.optuna").sum() == 3,
        TIMEOUT,
        "three 'trial ... complete' records",
    )
    log = rush.read_log()
    messages = log[log["logger"] == "rush_dask.optuna"]["message"]
    assert messages.str.match(r"trial \d complete with value").all()


def test_pruned_trials_do_not_count_and_are_replaced(rush):
    study = optuna.create_study(
        storage=storage(rush), study_name="prune", pruner=optuna.pruners.SuccessiveHalvingPruner()
    )
    optimize(study, f.prune_odd, n_trials=6, rush=rush, n_workers=2)
    counts = {s: states(study).count(s) for s in set(states(study))}
    assert counts[TrialState.COMPLETE] == 6
    assert counts.get(TrialState.RUNNING, 0) == 0
    assert counts.get(TrialState.PRUNED, 0) >= 5  # every odd trial number was pruned


@pytest.mark.parametrize(
    "sampler, pruner",
    [
        ("TPESampler", "HyperbandPruner"),
        ("CmaEsSampler", "SuccessiveHalvingPruner"),
    ],
)
def test_optunas_own_samplers_and_pruners_run_in_the_workers(rush, sampler, pruner):
    if sampler == "CmaEsSampler":
        pytest.importorskip("cmaes")
    study = optuna.create_study(
        storage=storage(rush),
        study_name="own",
        sampler=getattr(optuna.samplers, sampler)(n_startup_trials=4),
        pruner=getattr(optuna.pruners, pruner)(),
    )
    optimize(study, f.learning_curve, n_trials=16, rush=rush, n_workers=2)
    counts = {s: states(study).count(s) for s in set(states(study))}
    assert counts[TrialState.COMPLETE] == 16 and TrialState.RUNNING not in counts
    # every trial was sampled (both parameters) and reported to the pruner
    trials = study.get_trials(states=[TrialState.COMPLETE, TrialState.PRUNED])
    assert all(set(t.params) == {"x", "y"} for t in trials)
    assert all(len(t.intermediate_values) >= 1 for t in trials)
    if sampler == "CmaEsSampler":  # CMA-ES ran in the workers: it keeps its state on the trials
        assert any(key.startswith("cma:") for t in trials for key in t.system_attrs)


def test_a_sigkilled_worker_fails_its_trial_and_a_new_trial_takes_its_place(rush):
    study = optuna.create_study(storage=storage(rush), study_name="kill")
    done = threading.Event()
    errors = []

    def run():
        try:
            optimize(
                study, f.stuck_at_trial_3, n_trials=10, rush=rush, n_workers=2, heartbeat_period=0.5, heartbeat_expire=2
            )
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=run)
    thread.start()

    def holder_of_trial_3():
        running = rush.fetch_running_tasks()
        rows = running[running["trial"] == 3] if len(running) and "trial" in running else running.iloc[:0]
        return rows["worker_id"].iloc[0] if len(rows) else None

    wait_until(lambda: holder_of_trial_3() is not None, TIMEOUT, "trial 3 running")
    worker_id = holder_of_trial_3()
    info = rush.worker_info.set_index("worker_id")
    os.kill(int(info.loc[worker_id, "pid"]), signal.SIGKILL)
    assert done.wait(TIMEOUT), "optimize did not return"
    thread.join()
    assert errors == []
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert by_number[3].state == TrialState.FAIL
    assert "lost" in by_number[3].system_attrs["fail_reason"]
    assert states(study).count(TrialState.COMPLETE) == 10  # a new trial took the place of trial 3
    assert TrialState.RUNNING not in states(study)
    assert worker_id in rush.lost_worker_ids


def run_in_thread(target):
    """Start ``target`` in a thread; returns (done event, list that gets its exception)."""
    done, errors = threading.Event(), []

    def run():
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - the test asserts there is none
            errors.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    return done, errors


def holder_of_trial(rush, number):
    running = rush.fetch_running_tasks()
    if not len(running) or "trial" not in running:
        return None
    rows = running[running["trial"] == number]
    return rows["worker_id"].iloc[0] if len(rows) else None


def test_a_stopped_worker_is_lost_when_its_heartbeat_expires_and_its_trial_fails(rush):
    study = optuna.create_study(storage=storage(rush), study_name="stop")
    done, errors = run_in_thread(
        lambda: optimize(
            study, f.stuck_at_trial_3, n_trials=8, rush=rush, n_workers=2, heartbeat_period=0.3, heartbeat_expire=1.5
        )
    )
    wait_until(lambda: holder_of_trial(rush, 3) is not None, TIMEOUT, "trial 3 running")
    worker_id = holder_of_trial(rush, 3)
    pid = int(rush.worker_info.set_index("worker_id").loc[worker_id, "pid"])
    os.kill(pid, signal.SIGSTOP)  # alive but silent: only the heartbeat can tell
    try:
        assert done.wait(TIMEOUT), "optimize did not return"
        assert errors == []
        by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
        assert by_number[3].state == TrialState.FAIL
        assert states(study).count(TrialState.COMPLETE) == 8
        assert TrialState.RUNNING not in states(study)
        assert worker_id in rush.lost_worker_ids
    finally:
        os.kill(pid, signal.SIGKILL)


def test_without_a_controller_the_workers_fail_the_trial_of_a_dead_worker(rush):
    """The decentralized path: no optimize() waiting; the surviving worker's sweep does the work."""
    from rush_dask.optuna import Run, trial_loop

    study = optuna.create_study(storage=storage(rush), study_name="alone")
    run = Run(rush.client, rush.keys.prefix, "alone")
    run.create(8, None)
    rush.start_workers(
        worker_loop=trial_loop,
        n_workers=2,
        heartbeat_period=0.3,
        heartbeat_expire=1.5,
        run_id="alone",
        study_name="alone",
        storage=storage(rush),
        sampler=study.sampler,
        pruner=study.pruner,
        objective=f.stuck_at_trial_3,
    )
    wait_until(lambda: holder_of_trial(rush, 3) is not None, TIMEOUT, "trial 3 running")
    worker_id = holder_of_trial(rush, 3)
    os.kill(int(rush.worker_info.set_index("worker_id").loc[worker_id, "pid"]), signal.SIGKILL)
    wait_until(lambda: rush.n_terminated_workers == 1, TIMEOUT, "the survivor ends the search")
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert by_number[3].state == TrialState.FAIL
    assert states(study).count(TrialState.COMPLETE) == 8
    assert TrialState.RUNNING not in states(study)
    assert rush.lost_worker_ids == [worker_id]  # declared lost by the other worker, not by us
    run.delete()


def test_an_error_in_the_objective_stops_the_search_and_is_raised(rush):
    study = optuna.create_study(storage=storage(rush), study_name="err")
    with pytest.raises(ValueError, match="bad objective"):
        optimize(study, f.raise_value_error, n_trials=5, rush=rush, n_workers=2)
    assert TrialState.FAIL in states(study)
    assert TrialState.RUNNING not in states(study)
    assert rush.n_running_workers == 0


def test_caught_errors_fail_the_trial_and_the_search_goes_on(rush):
    study = optuna.create_study(storage=storage(rush), study_name="catch")
    optimize(study, f.fail_trial_1, n_trials=4, rush=rush, n_workers=1, catch=(KeyError,))
    assert states(study).count(TrialState.COMPLETE) == 4
    assert study.trials[1].state == TrialState.FAIL
    failed = rush.fetch_failed_tasks()
    assert list(failed["trial"]) == [1] and "KeyError" in failed["error"].iloc[0]


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (dict(n_trials=0), ValueError, "n_trials must be a positive integer"),
        (dict(n_trials=-3), ValueError, "n_trials must be a positive integer"),
        (dict(timeout=0), ValueError, "timeout must be a positive number"),
        (dict(objective=lambda t, lock=threading.Lock(): 0.0), TypeError, "objective cannot be pickled"),  # noqa: B008
        (dict(heartbeat_every=3), TypeError, "unknown option"),
    ],
)
def test_bad_input_raises_and_writes_nothing(rush, redis_url, bad, error, match):
    study = optuna.create_study(storage=storage(rush), study_name="bad")
    before = network_keys(redis_url, rush)
    args = dict(study=study, objective=f.quadratic, n_trials=5, rush=rush, n_workers=1) | bad
    with pytest.raises(error, match=match):
        optimize(**args)
    assert network_keys(redis_url, rush) == before
    assert rush.worker_ids == []


def test_an_in_memory_study_is_refused(rush):
    with pytest.raises(ValueError, match="in memory"):
        optimize(optuna.create_study(), f.quadratic, n_trials=2, rush=rush)


def test_a_tell_refused_after_a_sweep_failed_the_trial_does_not_stop_the_search(rush, redis_url):
    """A worker declared lost that comes back (SIGSTOP, then SIGCONT) may tell before its heartbeat
    sees it was lost: that tell is refused, and the search goes on (the trial was replaced)."""
    from rush_dask import RushWorker
    from rush_dask.optuna import Run, _one_trial

    study = optuna.create_study(storage=storage(rush), study_name="refused")
    run = Run(rush.client, rush.keys.prefix, "refused")
    run.create(3, None)
    worker = RushWorker(rush.network_id, url=redis_url)

    elsewhere = storage(rush)  # another worker's storage: this worker's caches do not see its writes

    def failed_by_a_sweep_meanwhile(trial):  # what the Reconciler of another worker does
        elsewhere.set_trial_system_attr(trial._trial_id, "fail_reason", "worker lost")
        elsewhere.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        return 1.0

    try:  # (closed before the fixture's teardown, which kills the network's workers: this process)
        assert run.take() == 1
        assert _one_trial(worker, study, failed_by_a_sweep_meanwhile, (), run) == 1  # the next ticket
        assert run.state()["stop"] is None
        (trial,) = study.get_trials(deepcopy=False)
        assert trial.state == TrialState.FAIL and trial.system_attrs["fail_reason"] == "worker lost"
        assert _one_trial(worker, study, lambda trial: 2.0, (), run) == 1
        assert states(study) == [TrialState.FAIL, TrialState.COMPLETE]
    finally:
        worker.close()
        run.delete()
