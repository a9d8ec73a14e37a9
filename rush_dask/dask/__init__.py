"""The Dask front end: a :class:`~rush_dask.Rush` is a Dask scheduler and a futures client.

Graphs become Redis tasks (:mod:`~rush_dask.dask.graph`,
:mod:`~rush_dask.dask.fusion`), ``dask.compute(..., scheduler=rush)`` runs
them (:mod:`~rush_dask.dask.scheduler`), and the futures API that
``distributed.Client`` scripts use lives in :mod:`~rush_dask.dask.client`,
:mod:`~rush_dask.dask.futures` and :mod:`~rush_dask.dask.executor`. Dask is
imported here, never in :mod:`rush_dask.core`.
"""
