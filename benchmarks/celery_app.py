"""The Celery application of the benchmark (imported by ``celery -A benchmarks.celery_app worker``).

Broker and result backend are the Redis server named by ``BENCH_CELERY_URL``
(a ``redis://`` or ``redis+socket://`` URL); the tasks are bench_rush's.
"""

from __future__ import annotations

import os

from celery import Celery

from benchmarks import bench_rush

app = Celery(
    "rush_bench",
    broker=os.environ.get("BENCH_CELERY_URL", "redis://127.0.0.1:6379/0"),
    backend=os.environ.get("BENCH_CELERY_URL", "redis://127.0.0.1:6379/0"),
)
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_default_queue="bench",
    result_expires=3600,
)

add_one = app.task(name="bench.add_one")(bench_rush.add_one)
sleep_then_add_one = app.task(name="bench.sleep_then_add_one")(bench_rush.sleep_then_add_one)
TASKS = {bench_rush.add_one: add_one, bench_rush.sleep_then_add_one: sleep_then_add_one}
