"""Which DataFrame shuffle runs on rush_dask; nothing changes Dask's config for the process."""

from __future__ import annotations

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from conftest import network_keys

from rush_dask import RushWorker

TIMEOUT = 120


def shuffled_lengths():
    pdf = pd.DataFrame({"k": np.arange(300) % 7, "v": np.arange(300)})
    return dd.from_pandas(pdf, npartitions=3).shuffle("k").map_partitions(len)


def test_disk_shuffle_across_machines_is_refused_before_anything_is_written(rush, redis_url):
    rush.start_workers(n_workers=1)
    rush.wait_for_workers(1, timeout=TIMEOUT)
    elsewhere = RushWorker(rush.network_id, url=redis_url)  # a worker that says it runs on another host
    try:
        rush.client.hset(rush.keys.worker(elsewhere.worker_id), "hostname", "another-host")
        before = network_keys(redis_url, rush)
        with pytest.raises(RuntimeError, match="on local disk.*run on 2 machines"):
            shuffled_lengths().compute(scheduler=rush)
        assert network_keys(redis_url, rush) == before
        # the task shuffle is fine anywhere: rush.compute uses it by default
        assert rush.compute(shuffled_lengths()).result(timeout=TIMEOUT).sum() == 300
        with dask.config.set({"dataframe.shuffle.method": "tasks"}):
            assert shuffled_lengths().compute(scheduler=rush).sum() == 300
    finally:
        elsewhere.close()
    assert dask.config.get("dataframe.shuffle.method", None) is None


def test_a_p2p_shuffle_picked_for_a_distributed_client_is_refused_with_what_to_do(rush, redis_url):
    import distributed

    rush.start_workers(n_workers=1)
    rush.wait_for_workers(1, timeout=TIMEOUT)
    with distributed.Client(processes=False, n_workers=1, dashboard_address=None):  # the default client
        p2p = shuffled_lengths()  # Dask picks distributed's P2P shuffle for it
        before = network_keys(redis_url, rush)
        with pytest.raises(RuntimeError, match="P2P shuffle or rechunk.*rush.compute"):
            p2p.compute(scheduler=rush)
        assert network_keys(redis_url, rush) == before  # refused before anything was written
        assert rush.compute(shuffled_lengths()).result(timeout=TIMEOUT).sum() == 300  # task shuffle
