"""The seed example: two workers add numbers, results come back as a DataFrame.

Run it with ``python examples/quickstart.py``: with no Redis URL configured,
rush_dask starts a private Redis server and stops it at exit.
"""

from rush_dask import Rush


def fun(x1, x2, **kwargs):
    return {"y": x1 + x2}


if __name__ == "__main__":
    rush = Rush("test")
    rush.start_workers(fun, n_workers=2)
    keys = rush.push_tasks([{"x1": 3, "x2": 5}, {"x1": 4, "x2": 6}])
    rush.wait_for_tasks(keys)
    print("finished tasks:", rush.n_finished_tasks)
    print(rush.data[["x1", "x2", "y", "pid", "worker_id", "state", "keys"]])

    keys = rush.push_tasks([{"x1": 10, "x2": 20}, {"x1": 30, "x2": 40}])
    rush.wait_for_tasks(keys)
    print(rush)

    rush.stop_workers(type="terminate")
    rush.wait_for_tasks()
    print(rush.data[["x1", "x2", "y", "state"]])
