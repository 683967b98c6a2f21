"""Every Prometheus metric distq exports, owned here and created on demand (never at import).

A process exports metrics only when ``DISTQ_METRICS_PORT`` is set; each object gets
its own registry so tests and several roles in one process do not collide. Units are
base units (seconds); counters end in ``_total``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class WorkerMetrics:
    """What a worker reports: tasks settled by outcome, task run time, tasks in hand."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.tasks = Counter(
            "distq_worker_tasks_total",
            "Tasks this worker settled, by outcome (ok, failed, retried, malformed, released).",
            ["outcome"],
            registry=self.registry,
        )
        self.task_seconds = Histogram(
            "distq_worker_task_duration_seconds",
            "Time spent running one task's function.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_hand = Gauge(
            "distq_worker_tasks_in_hand",
            "Tasks leased to this worker and not yet settled.",
            registry=self.registry,
        )


class MasterMetrics:
    """What a master reports: tasks submitted, results received, round-trip time."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.submitted = Counter(
            "distq_master_tasks_submitted_total", "Tasks submitted.", registry=self.registry
        )
        self.results = Counter(
            "distq_master_results_total",
            "First results received per task, by status (ok, error).",
            ["status"],
            registry=self.registry,
        )
        self.duplicates = Counter(
            "distq_master_duplicate_results_total",
            "Redelivered results dropped because the task already had one.",
            registry=self.registry,
        )
        self.round_trip = Histogram(
            "distq_master_task_round_trip_seconds",
            "Time from submitting a task to receiving its result.",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )


def serve(port: int, registry: CollectorRegistry, host: str = "0.0.0.0") -> None:
    """Expose ``registry`` on ``http://host:port/metrics`` from a daemon thread."""
    start_http_server(port, addr=host, registry=registry)
