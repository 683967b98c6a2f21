"""A real Prometheus scrapes a master and two workers during a job, on every transport."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import Target
from endpoints import get, promtool_check, wait_for
from launch import LocalPrometheus, free_port
from procs import Distq

pytestmark = pytest.mark.integration

TASKS = 400
RATE = 40  # tasks/s: the job lasts about 10 s, many scrapes
CONCURRENCY = 2


def eventually(
    what: str, check: Callable[[], Any], timeout: float = 60, equals: object = True
) -> Any:
    """Poll ``check`` until it returns ``equals`` (or, by default, anything true); fail naming
    ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got == equals or (equals is True and got):
            return got
        if time.monotonic() > deadline:
            wanted = "" if equals is True else f" == {equals!r}"
            raise AssertionError(f"{what}{wanted}: not within {timeout} s (last: {got!r})")
        time.sleep(0.5)


def scalar(prometheus: LocalPrometheus, expr: str) -> float | None:
    result = prometheus.query(expr)
    return float(result[0]["value"][1]) if result else None


def test_prometheus_counts_the_job_and_the_attached_slots(target: Target, tmp_path: Path) -> None:
    worker_ports, master_port = [free_port(), free_port()], free_port()
    endpoints = [f"127.0.0.1:{port}" for port in [*worker_ports, master_port]]
    prometheus = LocalPrometheus(
        tmp_path / "prometheus",
        "scrape_configs:\n"
        "  - job_name: distq\n"
        f"    static_configs: [{{targets: [{', '.join(endpoints)}]}}]\n",
        scrape_interval="1s",
    )
    queue = target.settings.queue
    common = {"DISTQ_METRICS_HOST": "127.0.0.1", "DISTQ_STATS_SECONDS": "0.5"}
    processes: list[Distq] = []
    with prometheus.start():
        try:
            for port in worker_ports:
                env = target.process_env(**common, DISTQ_METRICS_PORT=str(port))
                argv = ["worker", "--quiet", "--concurrency", str(CONCURRENCY)]
                processes.append(Distq([*argv, "--exit-when-idle", "300"], env))
            argv = ["master", "--tasks", str(TASKS), "--rate", str(RATE), "--quiet"]
            argv += ["--wait-workers", str(2 * CONCURRENCY), "--timeout", "120"]
            master = Distq(argv, target.process_env(**common, DISTQ_METRICS_PORT=str(master_port)))
            processes.append(master)

            # during the job: every endpoint lints clean and Prometheus scrapes each one
            wait_for([master_port, *worker_ports], "/readyz", 200, timeout=60)
            for port in [master_port, *worker_ports]:
                promtool_check(get(port, "/metrics")[1])
            eventually(
                "every target up",
                lambda: [t["health"] for t in prometheus.targets()] == ["up"] * 3,
            )
            # the broker saw every slot (the master may be done by the time Prometheus says)
            workers = f'max_over_time(distq_workers{{queue="{queue}"}}[5m])'
            eventually(workers, lambda: scalar(prometheus, workers), equals=4)

            assert master.wait(120) == 0, master.output()
            done = f'sum(distq_worker_tasks_total{{queue="{queue}",outcome="ok"}})'
            eventually(done, lambda: scalar(prometheus, done), timeout=30, equals=TASKS)
            by_worker = prometheus.query(
                f'distq_worker_tasks_total{{queue="{queue}",outcome="ok",task="square"}}'
            )
            assert len(by_worker) == 2 and all(float(s["value"][1]) > 0 for s in by_worker)
            assert {s["metric"]["transport"] for s in by_worker} == {target.name}
            submitted = scalar(
                prometheus,
                f'max_over_time(distq_master_tasks_submitted_total{{queue="{queue}"}}[1m])',
            )
            assert submitted is not None and 0 < submitted <= TASKS
        finally:
            for process in processes:
                process.stop()
