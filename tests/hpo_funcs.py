"""Objectives that worker processes run in the hyperparameter-search tests (importable by name)."""

from __future__ import annotations

import time

import optuna


def quadratic(trial):
    """Minimum 0 at x = 2."""
    x = trial.suggest_float("x", -10, 10)
    time.sleep(0.01)
    return (x - 2) ** 2


def stuck_at_trial_3(trial):
    """Trial 3 sleeps for a minute (the test kills its worker); the others are quick."""
    x = trial.suggest_float("x", -10, 10)
    time.sleep(60 if trial.number == 3 else 0.02)
    return x * x


def prune_odd(trial):
    """Odd trial numbers are pruned after one report; even ones complete."""
    x = trial.suggest_float("x", 0, 1)
    trial.report(x, step=0)
    if trial.number % 2:
        raise optuna.TrialPruned()
    return x


def raise_value_error(trial):
    trial.suggest_float("x", 0, 1)
    raise ValueError("bad objective")


def fail_trial_1(trial):
    """Trial 1 raises KeyError (caught with catch=(KeyError,)); the others complete."""
    x = trial.suggest_float("x", 0, 1)
    if trial.number == 1:
        raise KeyError("trial 1")
    return x


def sample_quality(rng):
    """A configuration whose score is known: its quality q (lower is better)."""
    return {"q": float(rng.uniform())}


def known_ranking(q, budget):
    """The score does not depend on the budget: the ranking of configurations is known."""
    time.sleep(0.005)
    return {"y": q}


def learning_curve(trial):
    """Two parameters, 9 reported steps (for pruners); minimum 0 at x = 2, y = -1."""
    x = trial.suggest_float("x", -5, 5)
    y = trial.suggest_float("y", -5, 5)
    loss = (x - 2) ** 2 + (y + 1) ** 2
    for step in range(1, 10):
        trial.report(loss + 1.0 / step, step)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return loss


def sleep_quarter_second(trial):
    trial.suggest_float("x", 0, 1)
    time.sleep(0.25)
    return 1.0
