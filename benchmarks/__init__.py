"""Benchmarks of rush_dask (run them as scripts, see README.md)."""
