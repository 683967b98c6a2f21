"""Every Prometheus metric distq exports, owned here and created on demand (never at import).

A process exports metrics only when ``DISTQ_METRICS_PORT`` is set; each object gets
its own registry so tests and several roles in one process do not collide. Units are
base units (seconds); counters end in ``_total``. Every family carries the labels
``transport`` and ``queue``; the README's metrics table lists them all.

Counters and histograms (:class:`CounterTable`, :class:`HistogramTable`) are updated a
batch at a time under one lock and read by prometheus-client at scrape time, through
its collector interface: its own ``Counter``/``Histogram`` take a lock per update,
which measured 1.5-2 µs per observation, several percent of what a fast task costs a
worker. A process's tables (and the master's outstanding gauge, a :class:`GaugeTable`)
are read together, in one hold of that lock (:class:`Together`): a scrape shows them as
of one moment, not family after family while a batch is counted. The other gauges are
prometheus-client's.
"""

from __future__ import annotations

import bisect
import contextlib
import threading
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from distq.chunks import CHUNK_TASK
from distq.transport.base import QueueStats

#: Seconds, from a fast task's half millisecond to an hour: a backlog's queue waits run
#: to many minutes, and past the last bound a quantile reads as that bound (all waits of
#: 30 minutes read "5 min" when it was 300 s).
BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
)
#: A task's run time: :data:`BUCKETS` from 10 µs. A fast task runs in tens of µs (the
#: README's square in 13): all in the 0.5 ms bucket, its p50 read 0.25 ms and its p99
#: 0.495 ms on the dashboard, 20 to 40 times the run, however long it took.
RUN_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, *BUCKETS)
BASE = ("transport", "queue")
UNREGISTERED = "(unregistered)"  # a task name this worker does not know
UNKNOWN = "(unknown)"  # the message was not decoded, so it has no name
Labels = tuple[str, ...]


class CounterTable:
    """A counter family updated in batches: ``add`` under ``lock``, read at scrape time
    by a :class:`Together` with the other tables of its lock."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        lock: threading.Lock,
    ) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, list(labelnames)
        self.lock = lock
        self.values: dict[Labels, list[float]] = {}  # a series' value in a list of one

    def cell(self, labels: Labels) -> list[float]:
        """The running value of ``labels`` (created at 0), ``[value]``: a caller that
        keeps it adds to ``cell[0]`` with no labels hashed again; caller holds ``lock``."""
        cell = self.values.get(labels)
        if cell is None:
            cell = self.values[labels] = [0.0]
        return cell

    def add(self, labels: Labels, amount: float) -> None:
        """Count ``amount`` more for ``labels`` (caller holds ``lock``)."""
        self.cell(labels)[0] += amount

    def snapshot(self) -> list[tuple[Labels, float]]:
        """The values as they are (caller holds ``lock``)."""
        return [(labels, cell[0]) for labels, cell in self.values.items()]

    def family(self, values: list[tuple[Labels, float]]) -> Metric:
        """The family of a :meth:`snapshot`."""
        family = CounterMetricFamily(
            self.name.removesuffix("_total"), self.documentation, labels=self.labelnames
        )
        for labels, value in values:
            family.add_metric(labels, value)
        return family


class GaugeTable(CounterTable):
    """A gauge family ``set`` under ``lock`` with the counters it goes with, read at
    scrape time (by a :class:`Together`, in the same hold of the lock as they are)."""

    def set(self, labels: Labels, value: float) -> None:
        """``labels`` is ``value`` now (caller holds ``lock``)."""
        self.cell(labels)[0] = value

    def family(self, values: list[tuple[Labels, float]]) -> Metric:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labels, value in values:
            family.add_metric(labels, value)
        return family


class HistogramTable:
    """A histogram family updated in batches: ``observe`` under ``lock``, read at scrape
    time by a :class:`Together`, as a :class:`CounterTable` is."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        lock: threading.Lock,
    ) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, list(labelnames)
        self.bounds = list(buckets)
        self.lock = lock
        self.counts: dict[Labels, list[float]] = {}  # per bucket, then +Inf, then the sum

    def series(self, labels: Labels) -> list[float]:
        """The running counts of ``labels`` (created at zero); caller holds ``lock``."""
        counts = self.counts.get(labels)
        if counts is None:
            counts = self.counts[labels] = [0.0] * (len(self.bounds) + 2)
        return counts

    def observe(self, counts: list[float], values: Sequence[float], ordered: bool = False) -> None:
        """``values`` into ``counts`` (from :meth:`series`); caller holds ``lock``.
        ``ordered``: the caller has sorted ``values`` already (a worker's batch).

        A batch is sorted once, then bisected once per bucket bound from its least value's
        bucket to its largest's: a few dozen nanoseconds per value, where a bisection per
        value in Python costs about 140. Buckets below its least value are not visited: a
        small batch of waits of seconds went through 20 of them (a worker's batches are of
        a few tasks once a task takes a millisecond).
        """
        bounds = self.bounds
        if len(values) < 8:  # a few: a bisection each costs less than sorting
            for value in values:
                counts[bisect.bisect_left(bounds, value)] += 1  # "less or equal"
                counts[-1] += value
            return
        ordered_values = values if ordered else sorted(values)
        bucket = bisect.bisect_left(bounds, ordered_values[0])  # the least value's
        last = bisect.bisect_left(bounds, ordered_values[-1])  # len(bounds): +Inf
        counted = 0
        while bucket < last:
            upto = bisect.bisect_right(ordered_values, bounds[bucket])  # "less or equal"
            counts[bucket] += upto - counted
            counted = upto
            bucket += 1
        counts[last] += len(ordered_values) - counted
        counts[-1] += sum(ordered_values)

    def snapshot(self) -> list[tuple[Labels, list[float]]]:
        """The counts as they are (caller holds ``lock``)."""
        return [(labels, list(counts)) for labels, counts in self.counts.items()]

    def family(self, snapshot: list[tuple[Labels, list[float]]]) -> Metric:
        """The family of a :meth:`snapshot`."""
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        edges = [*(floatToGoString(b) for b in self.bounds), "+Inf"]  # type: ignore[no-untyped-call]
        for labels, counts in snapshot:
            cumulative, total = [], 0.0
            for edge, count in zip(edges, counts[:-1], strict=True):
                total += count
                cumulative.append((edge, total))
            family.add_metric(labels, cumulative, counts[-1])
        return family


Table = CounterTable | HistogramTable


class Together(Collector):
    """``tables`` read in one hold of their ``lock``: a scrape sees them as of one
    moment, never a batch counted in one family and not yet in the next."""

    def __init__(
        self, lock: threading.Lock, tables: Sequence[Table], registry: CollectorRegistry
    ) -> None:
        self.lock, self.tables = lock, list(tables)
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            snapshots = [table.snapshot() for table in self.tables]
        for table, snapshot in zip(self.tables, snapshots, strict=True):
            yield table.family(snapshot)  # type: ignore[arg-type]


def ready_gauge(base: Labels, registry: CollectorRegistry) -> Gauge:
    """``distq_ready`` for the process with labels ``base``: the caller gives it the
    process's readiness verdict with ``set_function``, so it is read at scrape time."""
    return Gauge(
        "distq_ready",
        "1 while this process is ready (its /readyz answers 200: every connection to the "
        "broker works), 0 while it is not (the broker does not answer, or the process is "
        "starting or stopping).",
        BASE,
        registry=registry,
    ).labels(*base)


class WorkerMetrics:
    """What a worker reports: tasks settled by task and outcome, run time, queue wait,
    redeliveries, tasks in hand, readiness.

    ``task`` labels are the worker's registered names, :data:`UNREGISTERED` or
    :data:`UNKNOWN`: a name from the wire never becomes a label by itself.
    """

    def __init__(
        self,
        transport: str,
        queue: str,
        task_names: Iterable[str] = ("square",),
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self.base = base = (transport, queue)
        self.lock = threading.Lock()
        self.tasks = CounterTable(
            "distq_worker_tasks_total",
            "Tasks this worker settled, by task name and outcome (ok, failed, retried, "
            "orphaned, malformed, released).",
            [*BASE, "task", "outcome"],
            self.lock,
        )
        self.task_seconds = HistogramTable(
            "distq_worker_task_duration_seconds",
            "Time spent running one task's function, by task name.",
            [*BASE, "task"],
            RUN_BUCKETS,
            self.lock,
        )
        self.queue_wait = HistogramTable(
            "distq_worker_queue_wait_seconds",
            "Time from a task's creation by its master to the start of this run "
            "(across machines: includes their clock difference).",
            BASE,
            BUCKETS,
            self.lock,
        )
        self.redeliveries = CounterTable(
            "distq_worker_redeliveries_total",
            "Deliveries flagged redelivered: back after a lease expired or a worker handed "
            "them back.",
            BASE,
            self.lock,
        )
        tables: list[Table] = [self.tasks, self.task_seconds, self.queue_wait, self.redeliveries]
        Together(self.lock, tables, self.registry)
        self.in_hand = Gauge(
            "distq_worker_tasks_in_hand",
            "Tasks leased to this worker and not yet settled.",
            BASE,
            registry=self.registry,
        ).labels(*base)
        self.ready = ready_gauge(base, self.registry)
        self.known = frozenset(task_names)
        #: a registered name's counter and run times by (name, outcome), kept so that a
        #: batch finds both in one lookup (a chunk's, whose label is its function's, not)
        self.by_name: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
        with self.lock:  # the series that can happen exist from the start, at 0
            for name in self.known:
                runs = self.task_seconds.series((*base, name))
                for outcome in ("ok", "failed", "retried", "orphaned", "released"):
                    counted = self.tasks.cell((*base, name, outcome))
                    if name != CHUNK_TASK:
                        self.by_name[name, outcome] = (counted, runs)
            self.tasks.add((*base, UNREGISTERED, "failed"), 0)
            self.tasks.add((*base, UNKNOWN, "malformed"), 0)
            self.released = self.tasks.cell((*base, UNKNOWN, "released"))
            self.waits = self.queue_wait.series(base)
            self.redeliveries.add(base, 0)


class MasterMetrics:
    """What a master reports: tasks submitted and outstanding, results, round trips,
    readiness, and the queue as the broker sees it (sampled, see
    :class:`distq.sampler.StatsSampler`)."""

    def __init__(
        self, transport: str, queue: str, registry: CollectorRegistry | None = None
    ) -> None:
        self.registry = registry or CollectorRegistry()
        base = self.base = (transport, queue)
        self.lock = threading.Lock()
        self.submitted = CounterTable(
            "distq_master_tasks_submitted_total", "Tasks submitted.", BASE, self.lock
        )
        self.results = CounterTable(
            "distq_master_results_total",
            "First results received per task, by status (ok, error).",
            [*BASE, "status"],
            self.lock,
        )
        self.duplicates = CounterTable(
            "distq_master_duplicate_results_total",
            "Redelivered results dropped because the task already had one.",
            BASE,
            self.lock,
        )
        self.round_trip = HistogramTable(
            "distq_master_task_round_trip_seconds",
            "Time from submitting a task to receiving its result.",
            BASE,
            BUCKETS,
            self.lock,
        )
        # set with the counters, under their lock: a scrape reads them all at once
        self.outstanding = GaugeTable(
            "distq_master_tasks_outstanding",
            "Tasks this master submitted that have no result yet.",
            BASE,
            self.lock,
        )
        with self.lock:  # each series kept, added to with no labels hashed
            self.by_status = {
                status: self.results.cell((*base, status)) for status in ("ok", "error")
            }
            self.submitted_now = self.submitted.cell(base)
            self.duplicates_now = self.duplicates.cell(base)
            self.round_trips = self.round_trip.series(base)
            self.outstanding_now = self.outstanding.cell(base)
        tables: list[Table] = [self.submitted, self.results, self.duplicates, self.round_trip]
        Together(self.lock, [*tables, self.outstanding], self.registry)
        self.ready = ready_gauge(base, self.registry)
        self.queue_depth = Gauge(
            "distq_queue_depth",
            "Tasks in the queue by state, sampled from the broker: ready (waiting, delayed "
            "retries included), in_flight (leased, not settled), dead (dead letters). "
            "RabbitMQ without DISTQ_RABBITMQ_MANAGEMENT_URL has no in_flight sample: AMQP "
            "cannot count unacknowledged messages (nor those in lease records).",
            [*BASE, "state"],
            registry=self.registry,
        )
        self.workers = Gauge(
            "distq_workers",
            "Worker slots attached to the queue as the broker sees them (a worker with "
            "--concurrency C has C). RabbitMQ: a slot whose task has run past a lease stops "
            "consuming until it is done, and is not counted meanwhile.",
            BASE,
            registry=self.registry,
        )

    def sampled(self, stats: QueueStats | None) -> None:
        """Show a sample of the queue; None (the broker did not answer) removes the values
        rather than leave stale ones."""
        base = self.base
        if stats is None:
            self.queue_depth.clear()
            self.workers.clear()
            return
        self.queue_depth.labels(*base, "ready").set(stats.ready)
        self.queue_depth.labels(*base, "dead").set(stats.dead)
        if stats.in_flight_known:
            self.queue_depth.labels(*base, "in_flight").set(stats.in_flight)
        else:  # none yet: prometheus-client before 0.22 raises KeyError for it
            with contextlib.suppress(KeyError):
                self.queue_depth.remove(*base, "in_flight")
        self.workers.labels(*base).set(stats.consumers)
