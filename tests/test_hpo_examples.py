"""The Optuna and ASHA examples, end to end on a small budget against the test Redis."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")
pytest.importorskip("optuna")
pytestmark = pytest.mark.slow  # runs in CI; `pytest -m 'not slow'` skips it

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))  # workers import the example modules by name

import hpo_asha  # noqa: E402
import hpo_optuna  # noqa: E402
from test_examples import assert_no_keys_left, assert_png  # noqa: E402


def test_optuna_example(redis_url, network_id, tmp_path):
    out = tmp_path / "optuna.png"
    config, score = hpo_optuna.main(n_evals=8, n_workers=2, url=redis_url, out=str(out), seed=1, network_id=network_id)
    assert set(config) == {"log_C", "log_gamma"} and 0.5 < score <= 1.0
    assert_png(out)
    assert_png(tmp_path / "optuna_busy.png")
    assert_no_keys_left(redis_url, network_id)


def test_asha_example(redis_url, network_id, tmp_path):
    out = tmp_path / "asha.png"
    config, error = hpo_asha.main(n_evals=30, n_workers=2, url=redis_url, out=str(out), seed=1, network_id=network_id)
    assert set(config) == {"log_eta0", "log_alpha"} and 0.0 <= error < 0.5
    for path in (out, tmp_path / "asha_best.png", tmp_path / "asha_busy.png"):
        assert_png(path)
    assert_no_keys_left(redis_url, network_id)
