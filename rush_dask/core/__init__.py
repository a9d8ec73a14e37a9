"""The queue core: a network's tasks, workers and results in Redis.

Everything a worker process needs lives here, and nothing here imports Dask
(``tests/test_tools.py`` checks it): the key layout and states
(:mod:`~rush_dask.core.constants`), connecting to Redis and the embedded
server (:mod:`~rush_dask.core.connections`, :mod:`~rush_dask.core.server`),
the Lua scripts and their typed layer (``lua/``,
:mod:`~rush_dask.core.scripts`), the read side shared by controller and
workers (:mod:`~rush_dask.core.network`), the worker
(:mod:`~rush_dask.core.worker`) and the data plane that keeps large results
out of Redis (:mod:`~rush_dask.core.dataplane`).
"""
