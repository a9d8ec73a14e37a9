"""Deployment: the command line, local worker processes, and workers on a Dask cluster.

:mod:`~rush_dask.deploy.cli` is ``rush-dask``;
:mod:`~rush_dask.deploy.processes` owns the worker processes a controller
starts on its own host (:class:`~rush_dask.deploy.processes.LocalWorkers`);
:mod:`~rush_dask.deploy.launch` starts rush workers as long-running tasks of
an existing dask.distributed cluster.
"""
