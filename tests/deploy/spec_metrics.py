"""The metric families distq exports (README "Metrics"), as the deploy files may use them.

The alert rules and the dashboard are checked against this table, so renaming a metric
or a label on either side breaks a test instead of a panel or an alert in production.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["counter", "gauge", "histogram"]
Role = Literal["master", "worker", "prometheus"]
#: ``"process"``: exported by every distq process that serves /metrics (master and worker).
Exporter = Literal["master", "worker", "process", "prometheus"]

# Labels Prometheus itself adds to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


@dataclass(frozen=True)
class Family:
    """One metric family: its exported name, type, labels and closed label value sets."""

    name: str
    kind: Kind
    role: Exporter
    labels: tuple[str, ...]
    values: Mapping[str, frozenset[str]] = field(default_factory=dict)


def _values(**sets: str) -> dict[str, frozenset[str]]:
    return {label: frozenset(words.split()) for label, words in sets.items()}


_TQ = ("transport", "queue")
FAMILIES: tuple[Family, ...] = (
    Family(
        "distq_worker_tasks_total",
        "counter",
        "worker",
        (*_TQ, "task", "outcome"),
        _values(outcome="ok failed retried orphaned malformed released"),
    ),
    Family("distq_worker_task_duration_seconds", "histogram", "worker", (*_TQ, "task")),
    Family("distq_worker_queue_wait_seconds", "histogram", "worker", _TQ),
    Family("distq_worker_redeliveries_total", "counter", "worker", _TQ),
    Family("distq_worker_tasks_in_hand", "gauge", "worker", _TQ),
    Family("distq_ready", "gauge", "process", _TQ),
    Family("distq_master_tasks_submitted_total", "counter", "master", _TQ),
    Family(
        "distq_master_results_total",
        "counter",
        "master",
        (*_TQ, "status"),
        _values(status="ok error"),
    ),
    Family("distq_master_duplicate_results_total", "counter", "master", _TQ),
    Family("distq_master_task_round_trip_seconds", "histogram", "master", _TQ),
    Family("distq_master_tasks_outstanding", "gauge", "master", _TQ),
    Family(
        "distq_queue_depth",
        "gauge",
        "master",
        (*_TQ, "state"),
        _values(state="ready in_flight dead"),
    ),
    Family("distq_workers", "gauge", "master", _TQ),
)

# Prometheus' own series per target; the rules and the dashboard may use it.
UP = Family("up", "gauge", "prometheus", ())


def series_names() -> dict[str, Family]:
    """Every series name a query may select, mapped to its family (histograms: _bucket...)."""
    names = {UP.name: UP}
    for family in FAMILIES:
        if family.kind == "histogram":
            names.update({family.name + suffix: family for suffix in HISTOGRAM_SUFFIXES})
        else:
            names[family.name] = family
    return names


def all_labels() -> frozenset[str]:
    """Every label a query may group by: the families', the targets' and histograms' le."""
    labels = {label for family in FAMILIES for label in family.labels}
    return frozenset(labels | TARGET_LABELS | {"le"})
