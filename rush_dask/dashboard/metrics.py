"""Prometheus metrics of the watched networks, from the same snapshots as the page.

Gauges and counters are read from Redis at scrape time (a snapshot younger
than the poll period is reused); the task duration histogram accumulates
the run times the monitors saw since the dashboard started. Names and
labels are listed in ``docs/dashboard.md``.

>>> registry = metrics_registry(lambda: monitors)    # doctest: +SKIP
>>> prometheus_client.generate_latest(registry)      # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .snapshot import Monitor

TASK_STATES = ("queued", "priority", "running", "finished", "failed")
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 1800.0, float("inf"))


class NetworkCollector:
    """Collects the gauges and counters of every monitored network at scrape time."""

    def __init__(
        self,
        monitors: Callable[[], Iterable[Monitor]],
        max_age: float,
        after_poll: Callable[[Monitor], None] = lambda monitor: None,
    ):
        self.monitors = monitors
        self.max_age = max_age
        self.after_poll = after_poll

    def describe(self) -> list[Any]:
        return []  # the metrics are read from Redis: nothing to collect at registration

    def collect(self) -> Iterable[Any]:
        tasks = GaugeMetricFamily(
            "rush_tasks",
            "Tasks of the network by state (priority: queued on a worker's own queue)",
            labels=["network", "state"],
        )
        workers = GaugeMetricFamily(
            "rush_workers",
            "Workers of the network by state (lost includes workers whose heartbeat expired)",
            labels=["network", "state"],
        )
        finished = CounterMetricFamily(
            "rush_tasks_finished",
            "Rush tasks finished since the network started (graph nodes are not counted)",
            labels=["network"],
        )
        failed = CounterMetricFamily(
            "rush_tasks_failed", "Tasks failed for good since the network started", labels=["network"]
        )
        computes = GaugeMetricFamily("rush_computes_running", "Dask computes in progress", labels=["network"])
        throughput = GaugeMetricFamily(
            "rush_throughput_tasks_per_second",
            "Tasks finished or failed per second over the last 10 s",
            labels=["network"],
        )
        keys = GaugeMetricFamily(
            "rush_network_keys", "Redis keys of the network (counted every 30 s)", labels=["network"]
        )
        memory = GaugeMetricFamily("rush_redis_memory_used_bytes", "Redis used_memory", labels=["redis"])
        peak = GaugeMetricFamily("rush_redis_memory_peak_bytes", "Redis used_memory_peak", labels=["redis"])
        clients = GaugeMetricFamily("rush_redis_connected_clients", "Redis connected_clients", labels=["redis"])
        servers = set()
        for monitor in self.monitors():
            snap = monitor.poll(max_age=self.max_age)
            self.after_poll(monitor)
            net = snap["network"]
            for state in TASK_STATES:
                tasks.add_metric([net, state], snap["counts"][state])
            for state, n in snap["worker_counts"].items():
                workers.add_metric([net, state], n)
            finished.add_metric([net], snap["counts"]["finished"])
            failed.add_metric([net], snap["counts"]["failed"])
            computes.add_metric([net], sum(1 for c in snap["computes"] if c["state"] == "running"))
            throughput.add_metric([net], snap["throughput"])
            if snap["redis"].get("network_keys") is not None:
                keys.add_metric([net], snap["redis"]["network_keys"])
            if snap["url"] not in servers and snap["redis"].get("used_memory") is not None:
                servers.add(snap["url"])
                memory.add_metric([snap["url"]], snap["redis"]["used_memory"])
                peak.add_metric([snap["url"]], snap["redis"]["used_memory_peak"])
                clients.add_metric([snap["url"]], snap["redis"]["connected_clients"])
        yield from (tasks, workers, finished, failed, computes, throughput, keys, memory, peak, clients)


class Metrics:
    """The registry of one dashboard: the collector plus the task duration histogram."""

    def __init__(self, monitors: Callable[[], Iterable[Monitor]], max_age: float):
        self.registry = CollectorRegistry()
        # Registered first, so collected first: the histogram then holds what that poll saw.
        self.registry.register(NetworkCollector(monitors, max_age, self.observe))
        self.durations = Histogram(
            "rush_task_duration_seconds",
            "Run time of the tasks that finished while the dashboard watched (graph nodes: to the poll period)",
            ["network"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.monitors = monitors

    def observe(self, monitor: Monitor) -> None:
        """Move the run times ``monitor`` saw since the last call into the histogram."""
        histogram = self.durations.labels(monitor.keys.network_id)
        for seconds in monitor.take_durations():
            histogram.observe(max(0.0, seconds))

    def text(self) -> bytes:
        """The metrics in the Prometheus text format."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
