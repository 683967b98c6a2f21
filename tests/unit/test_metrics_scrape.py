"""A scrape of a master's metrics while its job loop counts: the families agree."""

from __future__ import annotations

import sys
import threading
import time

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from distq.envelope import Result, Task
from distq.metrics import MasterMetrics
from distq.telemetry import MasterTelemetry

BATCH = 10


def counts(body: bytes) -> tuple[float, float, float]:
    """(submitted, results, outstanding) as one scrape shows them."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name in found and sample.name == "distq_master_results_total":
                found[sample.name] += sample.value
            else:
                found.setdefault(sample.name, sample.value)
    return (
        found["distq_master_tasks_submitted_total"],
        found["distq_master_results_total"],
        found["distq_master_tasks_outstanding"],
    )


def test_one_scrape_sees_the_counters_and_the_outstanding_gauge_of_one_moment() -> None:
    """The master set ``distq_master_tasks_outstanding`` after its counters, outside
    their lock, and a scrape reads family after family: a scrape could show the counters
    of one batch and the gauge of another (submitted - results != outstanding)."""
    metrics = MasterMetrics("redis", "q")
    telemetry = MasterTelemetry(metrics)
    tasks = [Task(name="square", args=[n], reply_to="r") for n in range(BATCH)]
    results = [Result(t.id, "ok", "w", 1, 0.0, 0.001) for t in tasks]
    round_trips = [0.002] * len(results)
    stop = threading.Event()

    def job() -> None:  # the master's loop: a batch submitted, then its results
        for _ in range(200_000):  # bounded; stopped as soon as the scrapes are done
            if stop.is_set():
                return
            telemetry.submitted(tasks, outstanding=BATCH)
            telemetry.collected(0, firsts=results, round_trips=round_trips)

    seen: list[tuple[float, float, float]] = []
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # many thread switches: many chances to fall between
    loop = threading.Thread(target=job, daemon=True)
    loop.start()
    try:
        deadline = time.monotonic() + 10
        while len(seen) < 300 and time.monotonic() < deadline and loop.is_alive():
            seen.append(counts(generate_latest(metrics.registry)))
    finally:
        stop.set()
        loop.join(30)
        sys.setswitchinterval(interval)
    assert seen
    wrong = [s for s in seen if s[0] - s[1] != s[2]]
    assert not wrong, f"{len(wrong)} of {len(seen)} scrapes do not add up, e.g. {wrong[:3]}"
