"""The hpo benchmark's report.

Made-up figures: the report only renders; the benchmark itself is not run here.
"""

from __future__ import annotations

import pytest

pytest.importorskip("optuna")


def test_hpo_report_gives_each_figure_and_ratio(tmp_path):
    from benchmarks import report

    figures = {
        "load_before": "1.00 1.00 1.00",
        "load_after_utilization": "2.00 1.00 1.00",
        "workers": 8,
        "n_util": 160,
        "n_noop": 800,
        "utilization": {"rush": [[0.97, 0.95], [0.96, 0.94]], "optuna": [[0.90, 0.80], [0.96, 0.94]]},
        "trials_per_second": {
            "rush_redis": [300.0, 330.0],
            "rush_list": [250.0, 260.0],
            "rush_optuna_backend": [150.0, 150.0],
            "optuna_redis": [150.0, 165.0],
            "optuna_list": [200.0, 220.0],
            "optuna_backend": [100.0, 110.0],
        },
        "grid_search_seconds": {"rush": [3.0, 3.0], "dask": [6.0, 4.5]},
    }
    results = {
        "started": "2026-01-01 00:00 UTC",
        "repeats": 2,
        "quick": False,
        "size": "full",
        "sections": ["hpo"],
        "command": "python -m benchmarks --only hpo",
        "seconds": 100.0,
        "noisy_runs": 0,
        "timed_runs": 1,
        "machine": {
            "cpu": "Test CPU",
            "cores": 2,
            "ram_gb": 8.0,
            "os": "Linux",
            "python": "3.11",
            "rush_dask": "abc123",
        },
        "hpo": figures,
    }
    text = report.write(results, tmp_path).read_text()
    assert "## Hyperparameter search" in text
    assert "load_after" not in text and "after: utilization 2.00 1.00 1.00" in text
    assert "| 0.965 [0.960 – 0.970] |" in text  # rush utilization, median [min – max]
    assert "| 1.04 [1.00 – 1.08] | rush >= 0.95 |" in text  # paired ratios per repetition
    assert "| RedisStorage: 315 [300 – 330] |" in text and "| 3.00 [3.00 – 3.00] | >= 3 |" in text
    assert "| trials/s, both on RedisStorage | 315 [300 – 330] | 158 [150 – 165] | 2.00 [2.00 – 2.00] | |" in text
    assert "speed 1.75 [1.50 – 2.00] | >= 1.0 |" in text
