from __future__ import annotations

import urllib.request

from conftest import free_port
from distq.metrics import MasterMetrics, WorkerMetrics, serve


def test_metrics_are_served_in_base_units_with_total_counters() -> None:
    worker = WorkerMetrics()
    worker.tasks.labels("ok").inc(3)
    worker.task_seconds.observe(0.002)
    port = free_port()
    serve(port, worker.registry, host="127.0.0.1")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert 'distq_worker_tasks_total{outcome="ok"} 3.0' in text
    assert "distq_worker_task_duration_seconds_count 1.0" in text


def test_each_instance_has_its_own_registry() -> None:
    one, two = MasterMetrics(), MasterMetrics()
    one.submitted.inc(5)
    assert two.registry.get_sample_value("distq_master_tasks_submitted_total") == 0.0
    assert one.registry.get_sample_value("distq_master_tasks_submitted_total") == 5.0
