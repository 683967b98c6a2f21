"""Metrics: what master and worker count, in the names, types and labels the README promises."""

from __future__ import annotations

import io
import json
import random
import re
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Collection, Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conftest import REPO
from distq.chunks import CHUNK_TASK
from distq.console import Console
from distq.ending import Ending, Endings, Outcome
from distq.envelope import DeadLetter, Result, Status, Task
from distq.errors import TransportError
from distq.health import Readiness
from distq.logs import JsonConsole
from distq.metrics import (
    BUCKETS,
    RUN_BUCKETS,
    UNKNOWN,
    HistogramTable,
    MasterMetrics,
    Together,
    WorkerMetrics,
)
from distq.sampler import StatsSampler
from distq.slots import Slot
from distq.tasks import Registry
from distq.telemetry import MasterTelemetry, WorkerTelemetry
from distq.transport import (
    Consumer,
    Delivery,
    Producer,
    QueueStats,
    Revive,
    Settlement,
    Transport,
    original_body,
)
from distq.worker import Worker, WorkerOptions

BASE = {"transport": "redis", "queue": "q"}


def readme_table() -> dict[str, tuple[str, set[str]]]:
    """The README's metrics table: name -> (type, label names)."""
    rows: dict[str, tuple[str, set[str]]] = {}
    text = (REPO / "README.md").read_text()
    table = text.split("| metric | type | labels | meaning |", 1)[1].split("\n\n", 1)[0]
    for line in table.splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name = cells[0].strip("`")
        labels = set(re.findall(r"`([a-z_]+)`", cells[2]))
        rows[name] = (cells[1], labels)
    return rows


def families(registry: CollectorRegistry) -> dict[str, tuple[str, set[str]]]:
    """What a registry exports: family name -> (type, label names of its samples)."""
    found: dict[str, tuple[str, set[str]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        labels: set[str] = set()
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                labels |= set(sample.labels) - {"le"}
        name = family.name + ("_total" if family.type == "counter" else "")
        found[name] = (family.type, labels)
    return found


def worker_metrics() -> tuple[WorkerMetrics, WorkerTelemetry]:
    metrics = WorkerMetrics("redis", "q", ["square", "resize"])
    return metrics, WorkerTelemetry(metrics)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {**BASE, **labels})


def task(name: str = "square", created_at: float | None = None) -> Task:
    return Task(
        name=name,
        args=[3],
        reply_to="r",
        created_at=time.time() if created_at is None else created_at,
    )


def test_every_family_is_in_the_readme_table_with_its_type_and_labels() -> None:
    worker, _ = worker_metrics()
    master = MasterMetrics("redis", "q")
    master.sampled(QueueStats(ready=1, in_flight=2, dead=3, consumers=4))
    exported = {**families(worker.registry), **families(master.registry)}
    assert exported == readme_table()
    for _kind, labels in exported.values():
        assert {"transport", "queue"} <= labels


def ending(
    task: Task | None, outcome: Outcome, started_at: float = 0.0, duration: float = 0.0
) -> Ending:
    return Ending(Settlement(Delivery(b"", 1)), outcome, task, started_at, duration)


def test_worker_counts_each_settled_task_by_registered_name_and_outcome() -> None:
    metrics, telemetry = worker_metrics()
    registry = metrics.registry
    telemetry.fetched([Delivery(b"", 1, redelivered=True), Delivery(b"", 2), Delivery(b"", 3)])
    now = time.time()
    endings = [
        ending(task("square", created_at=now - 0.3), "ok", now, 0.002),
        ending(task("resize", created_at=now - 0.3), "retried", now, 0.2),
        ending(task("rm -rf /", created_at=now - 0.3), "failed", now, 0.0),  # never ran
        ending(None, "malformed"),
    ]
    telemetry.settled(endings, released=2)
    assert value(registry, "distq_worker_tasks_total", task="square", outcome="ok") == 1
    assert value(registry, "distq_worker_tasks_total", task="resize", outcome="retried") == 1
    assert value(registry, "distq_worker_tasks_total", task="(unregistered)", outcome="failed") == 1
    assert value(registry, "distq_worker_tasks_total", task="(unknown)", outcome="malformed") == 1
    assert value(registry, "distq_worker_tasks_total", task="(unknown)", outcome="released") == 2
    assert value(registry, "distq_worker_redeliveries_total") == 1
    # the task that never ran (an unknown name) has no queue wait: a wait ends when a run
    # starts, and the count of waits stays the count of runs (obs16)
    assert value(registry, "distq_worker_queue_wait_seconds_count") == 2
    wait = value(registry, "distq_worker_queue_wait_seconds_sum")
    assert wait is not None and 0.59 < wait < 0.61
    assert value(registry, "distq_worker_task_duration_seconds_count", task="square") == 1
    assert value(registry, "distq_worker_task_duration_seconds_count", task="resize") == 1
    assert value(registry, "distq_worker_task_duration_seconds_sum", task="resize") == 0.2
    assert "rm -rf" not in generate_latest(registry).decode()


@pytest.mark.parametrize("count", [1, 20])  # task by task, and a batch by columns
def test_a_chunk_counts_once_under_the_function_it_calls(count: int) -> None:
    """Every chunk counted as task="distq:chunk": no alert or panel could say which
    function failed or slowed, and a chunk of an unknown name was not (unregistered)."""
    metrics, telemetry = worker_metrics()
    registry = metrics.registry
    now = time.time()

    def chunk(name: object) -> Task:
        return Task(name=CHUNK_TASK, args=[name, [[1], [2]]], reply_to="r", created_at=now)

    telemetry.settled([ending(chunk("resize"), "ok", now, 0.01)] * count)
    telemetry.settled([ending(chunk("nope:fn"), "failed", now, 0.0)] * count)
    assert value(registry, "distq_worker_tasks_total", task="resize", outcome="ok") == count
    assert value(registry, "distq_worker_task_duration_seconds_count", task="resize") == count
    failed = value(registry, "distq_worker_tasks_total", task="(unregistered)", outcome="failed")
    assert failed == count
    assert value(registry, "distq_worker_tasks_total", task=CHUNK_TASK, outcome="ok") is None


def test_chunks_of_two_functions_in_one_small_batch_count_each_under_its_own() -> None:
    # task by task, a label is looked up once per name in a batch: not a chunk's, whose
    # name is the same for every function
    metrics, telemetry = worker_metrics()
    registry = metrics.registry
    now = time.time()
    chunks = [
        Task(name=CHUNK_TASK, args=[name, [[1]]], reply_to="r", created_at=now)
        for name in ("resize", "nope:fn", "resize")
    ]
    telemetry.settled([ending(t, "ok", now, 0.01) for t in [*chunks, task(created_at=now)]])
    assert value(registry, "distq_worker_tasks_total", task="resize", outcome="ok") == 2
    assert value(registry, "distq_worker_tasks_total", task="(unregistered)", outcome="ok") == 1
    assert value(registry, "distq_worker_tasks_total", task="square", outcome="ok") == 1


@pytest.mark.parametrize("count", [3, 20])  # task by task, and a batch of one name (8+)
def test_a_task_whose_master_is_gone_is_orphaned_not_a_failed_run_nor_a_zero_wait(
    count: int,
) -> None:
    """Tasks dead-lettered unrun because their master is gone counted as failed runs of
    their task (the error-ratio alert paged about a task that never raised) and as
    queue waits of 0 s (they never started, and had waited seconds). Each outcome a
    known task can have exists at 0 from the start (``released`` was missing: a rate()
    missed the first late task, out22 F5)."""
    metrics, telemetry = worker_metrics()
    registry = metrics.registry
    made = task("square", created_at=time.time() - 8)
    orphan = Endings("w1", "q").orphaned(Delivery(made.encode(), 1), made)
    assert orphan.started_at - made.created_at >= 8  # its line's queue_wait: how long
    assert value(registry, "distq_worker_tasks_total", task="square", outcome="released") == 0
    telemetry.settled([orphan] * count, released=0)
    assert value(registry, "distq_worker_tasks_total", task="square", outcome="orphaned") == count
    assert value(registry, "distq_worker_tasks_total", task="square", outcome="failed") == 0
    assert value(registry, "distq_worker_queue_wait_seconds_count") == 0


class Settles(Consumer):
    """A consumer whose settle and release succeed, or raise like a lost broker."""

    def __init__(self, fail: bool) -> None:
        self.fail = fail

    def fetch(self, max_count: int, timeout: float) -> list[Delivery]:
        return []

    def heartbeat(self) -> None:
        pass

    def gone(self, reply_to: Collection[str]) -> set[str]:
        return set()

    def settle(self, settlements: Sequence[Settlement]) -> None:
        if self.fail:
            raise TransportError("Redis at 127.0.0.1:6379: Connection reset by peer")

    def release(self, deliveries: Sequence[Delivery]) -> int:
        return len(deliveries)

    def close(self) -> None:
        pass


def slot(consumer: Consumer) -> Slot:
    """A worker slot holding ``consumer``, with the four deliveries of the test in hand."""
    held = Slot(0)
    held.consumer, held.in_hand = consumer, 4
    return held


@pytest.mark.parametrize("fail", [False, True])
def test_the_worker_counts_a_batch_once_it_is_settled(fail: bool) -> None:
    metrics, telemetry = worker_metrics()
    console = Console(quiet=True, out=io.StringIO(), err=io.StringIO())
    worker = Worker(
        None,  # type: ignore[arg-type]  # the runner and _settle do not touch the transport
        Registry(),
        WorkerOptions(worker_id="w1"),
        console,
        telemetry=telemetry,
    )
    bodies = [task().encode(), b"{not json", task("nope").encode(), task().encode()]
    deliveries = [Delivery(body, i) for i, body in enumerate(bodies)]
    endings = [worker.runner(d) for d in deliveries[:3]]  # the last one never started
    assert [e.outcome for e in endings] == ["ok", "malformed", "failed"]
    registry = metrics.registry
    if fail:  # the tasks come back and run again: counting them now would count twice
        with pytest.raises(TransportError):
            worker._settle(slot(Settles(fail=True)), endings, deliveries[len(endings) :])
        assert value(registry, "distq_worker_tasks_total", task="square", outcome="ok") == 0
        return
    worker._settle(slot(Settles(fail=False)), endings, deliveries[len(endings) :])
    assert value(registry, "distq_worker_tasks_total", task="square", outcome="ok") == 1
    assert value(registry, "distq_worker_tasks_total", task="(unknown)", outcome="malformed") == 1
    assert value(registry, "distq_worker_tasks_total", task="(unregistered)", outcome="failed") == 1
    assert value(registry, "distq_worker_tasks_total", task="(unknown)", outcome="released") == 1
    # the unknown task never ran: it has no run time
    assert value(registry, "distq_worker_task_duration_seconds_count", task="square") == 1
    assert (
        value(registry, "distq_worker_task_duration_seconds_count", task="(unregistered)") is None
    )


class SettlesLate(Settles):
    """A consumer whose settle finds its first delivery late: its lease had lapsed, so
    its retry or dead letter was not published (:attr:`Consumer.late`)."""

    def settle(self, settlements: Sequence[Settlement]) -> None:
        self.late = frozenset({settlements[0].delivery.tag})


def failing_worker(console: Console, log: JsonConsole | None = None) -> Worker:
    """A worker whose task ``square`` always raises, counting into fresh metrics (its
    ``telemetry.metrics``; ``value()`` reads their labels) and ``log``'s JSON lines."""
    registry = Registry()

    def square(x: int) -> int:
        time.sleep(0.01)  # a run time to record
        raise ValueError(f"no square of {x} today")

    registry.register("square", square)
    return Worker(
        None,  # type: ignore[arg-type]  # the runner and _settle do not touch the transport
        registry,
        WorkerOptions(worker_id="w1"),
        console,
        telemetry=WorkerTelemetry(WorkerMetrics("redis", "q", ["square"]), log=log),
    )


def test_a_task_found_late_counts_as_released_under_its_name_with_its_run_time() -> None:
    """A task that failed after its lease lapsed, its retry not sent: it counted as
    released under task="unknown", with no run time and no `task settled` line
    (late21 F3); now under its own name, with both."""
    out = io.StringIO()
    log = JsonConsole("worker", out=out, err=out, worker="w1")
    worker = failing_worker(log, log)
    deliveries = [Delivery(task().encode(), tag) for tag in (7, 8)]
    worker.health.took(2)
    endings = [worker.runner(d) for d in deliveries]
    assert [e.outcome for e in endings] == ["retried", "retried"]
    worker._settle(slot(SettlesLate(fail=False)), endings, [])
    assert worker.telemetry.metrics is not None
    got = worker.telemetry.metrics.registry
    assert value(got, "distq_worker_tasks_total", task="square", outcome="released") == 1
    assert value(got, "distq_worker_tasks_total", task="square", outcome="retried") == 1
    assert not value(got, "distq_worker_tasks_total", task=UNKNOWN, outcome="released")
    assert value(got, "distq_worker_task_duration_seconds_count", task="square") == 2
    assert worker.health.tasks_retried == 1 and worker.health.in_hand == 0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    settled = [(s["outcome"], s["task"]) for s in lines if s.get("event") == "task settled"]
    assert sorted(settled) == [("released", "square"), ("retried", "square")], lines
    said = [s["message"] for s in lines if "not retried" in s.get("message", "")]
    assert len(said) == 1 and "retrying" not in said[0], lines


class Bounces(Settles):
    """A consumer whose settle finds the dead letters of deliveries 7 and 9 refused
    (RabbitMQ: a full dead-letter queue): back in 30 s (:attr:`Consumer.bounced`)."""

    def settle(self, settlements: Sequence[Settlement]) -> None:
        tags = {s.delivery.tag for s in settlements}
        self.bounced = {tag: 30.0 for tag in (7, 9) if tag in tags}


def test_a_task_whose_dead_letter_was_refused_counts_as_retried_and_says_so() -> None:
    """It was said "dead-lettered" and counted failed for good, each time it ran again
    every 30 s (the worker did not know the letter was refused). A malformed message so
    refused is back unrun, to be dead-lettered again: released, not retried (out22b N1)."""
    out = io.StringIO()
    worker = failing_worker(Console(out=out, err=out))
    failing, other = (Task(name="square", args=[n], reply_to="r", max_attempts=1) for n in (3, 4))
    deliveries = [Delivery(failing.encode(), 7), Delivery(other.encode(), 8)]
    deliveries.append(Delivery(b"{not json", 9))
    worker.health.took(3)
    endings = [worker.runner(d) for d in deliveries]
    assert [e.outcome for e in endings] == ["failed", "failed", "malformed"]
    worker._settle(slot(Bounces(fail=False)), endings, [])
    assert worker.telemetry.metrics is not None
    got = worker.telemetry.metrics.registry
    assert value(got, "distq_worker_tasks_total", task="square", outcome="retried") == 1
    assert value(got, "distq_worker_tasks_total", task="square", outcome="failed") == 1
    assert value(got, "distq_worker_tasks_total", task=UNKNOWN, outcome="released") == 1
    assert value(got, "distq_worker_tasks_total", task=UNKNOWN, outcome="malformed") == 0
    health = worker.health
    assert (health.tasks_retried, health.tasks_failed, health.dead_lettered) == (1, 1, 1)
    assert health.in_hand == 0
    assert 29 < health._retry_due - health.now() <= 30  # --exit-when-idle waits for it
    said = out.getvalue()
    assert said.count(" dead-lettered: failed") == 1, said
    assert f"task square {other.id} dead-lettered: failed 1 of 1 attempts" in said, said
    assert f"task square {failing.id}: failed 1 of 1 attempts; last error: " in said, said
    assert "today; not dead-lettered: its dead letter was refused by the dead-letter" in said
    assert "no error result sent: the task runs again in 30 s" in said, said
    assert said.count("runs again") == 1, said  # not the malformed message
    assert "the message is back in the queue in 30 s, unrun" in said, said


class Refuses(Settles):
    """RabbitMQ at a length limit: the broker refuses the hand-back, the consumer keeps
    the deliveries (its next fetch hands them out again) and says none went back."""

    def release(self, deliveries: Sequence[Delivery]) -> int:
        return 0


def test_deliveries_the_broker_refused_to_take_back_are_not_counted_released() -> None:
    """They come back from the consumer's next fetch and run: counted released first,
    they were counted twice, as handed back unrun and then as ok."""
    metrics, telemetry = worker_metrics()
    console = Console(quiet=True, out=io.StringIO(), err=io.StringIO())
    worker = Worker(
        None,  # type: ignore[arg-type]  # _settle does not touch the transport
        Registry(),
        WorkerOptions(worker_id="w1"),
        console,
        telemetry=telemetry,
    )
    deliveries = [Delivery(task().encode(), i) for i in range(4)]
    held = slot(Refuses(fail=False))
    worker.health.took(len(deliveries))  # as the slot's fetch does
    endings = [worker.runner(deliveries[0])]
    worker._settle(held, endings, deliveries[1:])
    registry = metrics.registry
    assert value(registry, "distq_worker_tasks_total", task="(unknown)", outcome="released") == 0
    assert value(registry, "distq_worker_tasks_total", task="square", outcome="ok") == 1
    assert held.in_hand == 0  # out of the slot's hands: its fetch takes them in again
    # and out of the worker's count too: it stayed 3 too high for good (the next fetch
    # took them again), so --exit-when-idle never came and the in-hand gauge lied
    assert worker.health.in_hand == 0


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample a registry exports but the process's own, by name and labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(generate_latest(registry).decode())
        for s in f.samples
        if s.name.startswith("distq_")
    }


@pytest.mark.parametrize(
    ("name", "outcomes", "never_ran"),
    [
        ("square", ["ok", "failed", "retried", "orphaned"], True),
        ("rm -rf /", ["ok", "failed", "retried", "orphaned"], True),
        ("square", ["ok"], False),  # the common batch: one outcome, every function ran
        ("square", ["failed"], True),
        ("square", ["ok", "failed"], False),
    ],
)
def test_a_batch_of_one_task_name_counts_as_it_does_task_by_task(
    name: str, outcomes: list[Outcome], never_ran: bool
) -> None:
    # a batch of one name takes the column-wise path; task by task is the reference
    rng = random.Random(7)
    now = time.time()
    runs = [0.0, 1e-6] if never_ran else [1e-6]  # 0: the function never ran
    endings = [
        ending(
            task(name, created_at=now - rng.uniform(-0.01, 2.0)),  # some from a clock ahead
            rng.choice(outcomes),
            now,
            rng.choice(runs) * rng.uniform(0.0, 400e6),  # some past +Inf
        )
        for _ in range(300)
    ]
    column_wise, one_by_one = WorkerMetrics("redis", "q"), WorkerMetrics("redis", "q")
    WorkerTelemetry._count(column_wise, endings, released=3)
    WorkerTelemetry._count_each(one_by_one, endings, released=3)
    ours, reference = samples(column_wise.registry), samples(one_by_one.registry)
    assert ours == pytest.approx(reference)
    started = sum(1 for e in endings if e.duration > 0)  # an orphan (0) never started
    assert ours[("distq_worker_queue_wait_seconds_count", tuple(sorted(BASE.items())))] == started
    assert any(key[0] == "distq_worker_task_duration_seconds_sum" for key in ours)


def mixed_endings(count: int, one_name: bool) -> list[Ending]:
    """``count`` endings drawn from one seed: of one name, all ok (the common batch), or
    of every kind a worker settles (names known and not, chunks, undecoded, never ran,
    waits from a clock ahead or an absurd ``created_at``, run times on bucket bounds)."""
    rng = random.Random(count)
    now = time.time()
    chunk = Task(name=CHUNK_TASK, args=["resize", [[1]]], reply_to="r", created_at=now - 0.2)
    stray = Task(name=CHUNK_TASK, args=["nope:fn", [[1]]], reply_to="r", created_at=now - 0.2)
    made = []
    for _ in range(count):
        run = rng.choice([*RUN_BUCKETS[:8], rng.uniform(1e-7, 3e-3)])
        wait = rng.choice([*BUCKETS[:6], rng.uniform(1e-4, 2.0)])
        if one_name:  # some from a clock ahead, or made at an absurd time
            made_at = rng.choice([now - wait, now - wait, now + 0.01, 0.0])
            made.append(ending(task(created_at=made_at), "ok", now, run))
            continue
        made.append(
            rng.choice(
                [
                    ending(task(created_at=now - wait), "ok", now, run),
                    ending(task("resize", created_at=now - wait), "retried", now, run),
                    ending(task(created_at=now + 0.01), "ok", now, run),  # a clock ahead
                    ending(task(created_at=0.0), "failed", now, run),  # an absurd time
                    ending(task("rm -rf /", created_at=now - wait), "failed", now, 0.0),
                    ending(task(created_at=now - wait), "orphaned", now, 0.0),
                    ending(chunk, "ok", now, run),
                    ending(stray, "failed", now, 0.0),
                    ending(None, "malformed"),
                ]
            )
        )
    return made


def expected_label(task: Task | None) -> str:
    """The ``task`` label of :func:`mixed_endings`'s tasks, with :func:`worker_metrics`."""
    if task is None:
        return UNKNOWN
    name = task.args[0] if task.name == CHUNK_TASK else task.name  # a chunk: its function's
    return name if name in ("square", "resize") else "(unregistered)"


@pytest.mark.parametrize("one_name", [True, False])
@pytest.mark.parametrize("size", [1, 2, 8, 16, 32])
def test_a_workers_tasks_scrape_the_same_in_batches_of_any_size(size: int, one_name: bool) -> None:
    # a worker's batches are of one task when its tasks are short and its window half
    # empty: the same tasks settled in batches of ``size`` read as settled in one batch
    endings = mixed_endings(96, one_name)
    whole, batched = worker_metrics()[0], worker_metrics()[0]
    WorkerTelemetry(whole).settled(endings, released=len(endings) // size)
    for start in range(0, len(endings), size):
        WorkerTelemetry(batched).settled(endings[start : start + size], released=1)
    ours, reference = samples(batched.registry), samples(whole.registry)
    assert ours == pytest.approx(reference, rel=1e-12)
    # and each task once, under its label: the reference above is of the same code (a
    # batch of several names is counted task by task whatever its size)
    settled = Counter((expected_label(e.task), e.outcome) for e in endings)
    settled[UNKNOWN, "released"] += len(endings) // size
    counted = {
        (dict(labels)["task"], dict(labels)["outcome"]): count
        for (name, labels), count in ours.items()
        if name == "distq_worker_tasks_total" and count
    }
    assert counted == settled


@pytest.mark.parametrize("size", [1, 2, 8, 16, 32])
def test_a_masters_results_scrape_the_same_in_collections_of_any_size(size: int) -> None:
    rng = random.Random(size)
    trips = [rng.choice([*BUCKETS[:8], rng.uniform(1e-5, 2.0)]) for _ in range(96)]
    firsts = [
        Result(f"t{n}", rng.choice(["ok", "ok", "error"]), "w", 1, 0.0, 0.1)
        for n in range(len(trips))
    ]
    whole, batched = MasterMetrics("redis", "q"), MasterMetrics("redis", "q")
    MasterTelemetry(whole).collected(
        0, firsts=firsts, round_trips=trips, duplicates=len(trips) // size
    )
    for start in range(0, len(trips), size):
        part = slice(start, start + size)
        MasterTelemetry(batched).collected(
            0, firsts=firsts[part], round_trips=trips[part], duplicates=1
        )
    ours, reference = samples(batched.registry), samples(whole.registry)
    assert ours == pytest.approx(reference, rel=1e-12)
    base = tuple(sorted(BASE.items()))
    assert ours[("distq_master_task_round_trip_seconds_count", base)] == len(trips)
    for status, count in Counter(result.status for result in firsts).items():
        labels = tuple(sorted({**BASE, "status": status}.items()))
        assert ours[("distq_master_results_total", labels)] == count


@pytest.mark.parametrize("size", [1, 40])  # one by one, and a batch of one name (in C)
def test_a_task_made_at_an_absurd_time_does_not_make_the_wait_sum_infinite(size: int) -> None:
    """A hand-written producer's ``created_at`` of -1.7e308 passed as a finite number:
    two such tasks made the queue wait's sum +Inf until the worker restarted (every rate
    over it NaN); one of 0 added 55 years. Such waits count as 0, as a clock ahead's."""
    now = time.time()
    for created_at in (-1.7e308, 0.0, now - 0.5):
        metrics, _ = worker_metrics()
        endings = [ending(task(created_at=created_at), "ok", now, 0.001) for _ in range(size)]
        WorkerTelemetry._count(metrics, endings, released=0)
        assert value(metrics.registry, "distq_worker_queue_wait_seconds_count") == size
        wait = value(metrics.registry, "distq_worker_queue_wait_seconds_sum")
        assert wait == pytest.approx(0.5 * size if created_at > 0 else 0.0, abs=0.1 * size)


def test_a_batch_with_an_undecoded_task_is_counted_task_by_task() -> None:
    now = time.time()
    endings = [ending(task(created_at=now - 0.1), "ok", now, 0.001) for _ in range(40)]
    endings[17] = ending(None, "malformed", now)
    metrics, _ = worker_metrics()
    WorkerTelemetry._count(metrics, endings, released=0)
    registry = metrics.registry
    assert value(registry, "distq_worker_queue_wait_seconds_count") == 39
    assert value(registry, "distq_worker_tasks_total", task="square", outcome="ok") == 39
    assert value(registry, "distq_worker_tasks_total", task=UNKNOWN, outcome="malformed") == 1


@pytest.mark.parametrize("ordered", [False, True])
@pytest.mark.parametrize("size", [1, 7, 8, 9, 50, 300])
def test_a_histogram_takes_a_batch_of_any_size_as_prometheus_client_would(
    size: int, ordered: bool
) -> None:
    # a few values are bisected one by one, more are sorted first: both as the reference;
    # a batch its caller sorted (a worker's) is taken as it is, with the same counts
    rng = random.Random(size)
    values = [
        rng.choice([*BUCKETS, rng.uniform(0, 400), rng.uniform(0, 0.01)]) for _ in range(size)
    ]
    if ordered:
        values.sort()
    ours = HistogramTable("h", "h", [], BUCKETS, threading.Lock())
    with ours.lock:
        ours.observe(ours.series(()), values, ordered)
    together = Together(ours.lock, [ours], CollectorRegistry())
    reference = Histogram("h", "h", buckets=BUCKETS, registry=CollectorRegistry())
    for seconds in values:
        reference.observe(seconds)

    def samples(histogram: Any) -> dict[tuple[str, str], float]:
        return {
            (s.name, s.labels.get("le", "")): s.value
            for family in histogram.collect()
            for s in family.samples
            if s.name != "h_created"
        }

    assert samples(together) == pytest.approx(samples(reference))


@pytest.mark.parametrize(
    "values",
    [
        [2.0 + n / 100 for n in range(12)],  # one bucket, far above the least ones
        [BUCKETS[3]] * 9 + [BUCKETS[4]],  # at the bounds, two buckets next to each other
        [BUCKETS[-1] + n for n in range(10)],  # all beyond the last bound: +Inf
        [0.0] * 8 + [BUCKETS[-1] * 2],  # the first bucket and +Inf, none between
    ],
)
def test_a_batch_above_the_least_buckets_counts_as_prometheus_client_would(
    values: list[float],
) -> None:
    # the buckets below a sorted batch's least value and above its largest's are not
    # visited (a worker's batch of a few waits of seconds): its counts stay the reference's
    ours = HistogramTable("h", "h", [], BUCKETS, threading.Lock())
    with ours.lock:
        ours.observe(ours.series(()), values, ordered=True)
    reference = Histogram("h", "h", buckets=BUCKETS, registry=CollectorRegistry())
    for seconds in values:
        reference.observe(seconds)
    got = Together(ours.lock, [ours], CollectorRegistry()).collect()
    assert [(s.name, s.labels, s.value) for f in got for s in f.samples] == [
        (s.name, s.labels, s.value)
        for f in reference.collect()
        for s in f.samples
        if s.name != "h_created"
    ]


def test_buckets_reach_an_hour_so_a_long_wait_is_not_read_as_five_minutes() -> None:
    """Past the last bound ``histogram_quantile`` answers that bound: with 300 s the
    last, a backlog whose tasks all waited 30 minutes showed p50 = p99 = 300 s."""
    assert BUCKETS[-1] >= 3600 and 1800.0 in BUCKETS
    assert list(BUCKETS) == sorted(set(BUCKETS))


def quantile(q: float, buckets: dict[str, float]) -> float:
    """``histogram_quantile(q, ...)`` as Prometheus computes it from cumulative buckets
    (``le`` -> count): linear within the bucket the rank falls in, from 0 for the first."""
    bounds = sorted((float(le), count) for le, count in buckets.items())
    rank, lower, below = q * bounds[-1][1], 0.0, 0.0
    for bound, count in bounds:
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    raise AssertionError("unreachable")


@pytest.mark.parametrize("seconds", [13e-6, 40e-6, 150e-6])
def test_the_run_time_panel_reads_a_fast_tasks_run_time(seconds: float) -> None:
    """The dashboard's "Run time by task" is histogram_quantile over these buckets. The
    README's own square runs in 13 us (its JSON line's duration 1.3e-05), and a fast
    task's whole cost is some 10-30 us (Performance): with 0.5 ms the first bound, every
    such run fell in it and the panel read p50 0.25 ms and p99 0.495 ms, 20 to 40 times
    the run, whatever the task took."""
    metrics, telemetry = worker_metrics()
    now = time.time()
    for _ in range(10):
        telemetry.settled([ending(task(), "ok", now, seconds) for _ in range(100)])
    buckets = {
        s.labels["le"]: s.value
        for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        for s in f.samples
        if s.name == "distq_worker_task_duration_seconds_bucket" and s.labels["task"] == "square"
    }
    for q in (0.5, 0.99):
        read = quantile(q, buckets)
        assert seconds / 2 <= read <= seconds * 2, f"p{q * 100:g} reads {read} for {seconds}"


def test_histogram_buckets_match_prometheus_clients_own() -> None:
    metrics, telemetry = worker_metrics()
    reference = Histogram("ref", "ref", buckets=RUN_BUCKETS, registry=CollectorRegistry())
    values = [1e-9, 0.0005, 0.00051, 0.001, 0.3, 1.0, 2.5, 299.0, 300.0, 301.0, 1800.0, 1e6]
    telemetry.settled([ending(task(), "ok", time.time(), seconds) for seconds in values])
    for seconds in values:
        reference.observe(seconds)
    ours = {
        s.labels["le"]: s.value
        for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        for s in f.samples
        if s.name == "distq_worker_task_duration_seconds_bucket" and s.labels["task"] == "square"
    }
    theirs = {
        s.labels["le"]: s.value
        for f in reference.collect()
        for s in f.samples
        if s.name == "ref_bucket"
    }
    assert ours == theirs and ours["+Inf"] == len(values)


def test_master_counts_results_round_trips_and_outstanding_tasks() -> None:
    metrics = MasterMetrics("redis", "q")
    telemetry = MasterTelemetry(metrics)
    tasks = [task() for _ in range(3)]
    telemetry.submitted(tasks, outstanding=3)
    statuses: tuple[Status, Status] = ("ok", "error")
    results = [
        Result(task_id=t.id, status=status, worker="w", attempt=1, started_at=0, duration=0.1)
        for t, status in zip(tasks[:2], statuses, strict=True)
    ]
    telemetry.collected(outstanding=1, firsts=results, round_trips=[0.004] * 2)
    telemetry.collected(outstanding=1, duplicates=1)  # results[1] again
    registry = metrics.registry
    assert value(registry, "distq_master_tasks_submitted_total") == 3
    assert value(registry, "distq_master_results_total", status="ok") == 1
    assert value(registry, "distq_master_results_total", status="error") == 1
    assert value(registry, "distq_master_duplicate_results_total") == 1
    assert value(registry, "distq_master_task_round_trip_seconds_count") == 2
    assert value(registry, "distq_master_task_round_trip_seconds_bucket", le="0.005") == 2
    assert value(registry, "distq_master_tasks_outstanding") == 1


@pytest.mark.parametrize(
    "kinds",
    [
        ["ok"] * 40,  # the common batch: one status, no duplicate
        ["ok", "error", "ok", "dup", "error", "dup", "ok"],
        ["dup", "dup"],  # only duplicates
        ["error"],
    ],
)
def test_a_masters_batch_counts_as_its_results_one_by_one(kinds: list[str]) -> None:
    metrics = MasterMetrics("redis", "q")
    firsts, trips = [], []
    for n, kind in enumerate(kinds):
        if kind != "dup":
            status: Status = "error" if kind == "error" else "ok"
            firsts.append(Result(f"t{n}", status, "w", 1, 0.0, 0.1))
            trips.append(0.001 * (n + 1))
    telemetry = MasterTelemetry(metrics)
    telemetry.collected(5, firsts=firsts, round_trips=trips, duplicates=kinds.count("dup"))
    registry = metrics.registry
    for status in ("ok", "error"):
        assert value(registry, "distq_master_results_total", status=status) == kinds.count(status)
    assert value(registry, "distq_master_duplicate_results_total") == kinds.count("dup")
    assert value(registry, "distq_master_task_round_trip_seconds_count") == len(trips)
    assert value(registry, "distq_master_task_round_trip_seconds_sum") == pytest.approx(sum(trips))
    assert value(registry, "distq_master_tasks_outstanding") == 5


def test_a_first_sample_without_in_flight_still_shows_the_queue() -> None:
    """RabbitMQ over AMQP (no management API) has no in_flight from its first sample on:
    removing the series that was never set raised KeyError in prometheus-client before
    0.22 (pyproject allows 0.20), so each sample failed before ``distq_workers`` was set
    and the master printed "sampling the broker failed ... a bug in distq" every time."""
    metrics = MasterMetrics("rabbitmq", "q")
    labels: dict[str, Any] = {"transport": "rabbitmq", "queue": "q"}
    metrics.sampled(QueueStats(ready=4, in_flight=0, dead=1, consumers=3, in_flight_known=False))
    get = metrics.registry.get_sample_value
    assert get("distq_queue_depth", {**labels, "state": "ready"}) == 4
    assert get("distq_queue_depth", {**labels, "state": "in_flight"}) is None
    assert get("distq_workers", labels) == 3


def test_queue_samples_replace_and_vanish_rather_than_go_stale() -> None:
    metrics = MasterMetrics("rabbitmq", "q")
    labels: dict[str, Any] = {"transport": "rabbitmq", "queue": "q"}
    metrics.sampled(QueueStats(ready=5, in_flight=2, dead=1, consumers=3))
    get = metrics.registry.get_sample_value
    assert get("distq_queue_depth", {**labels, "state": "in_flight"}) == 2
    assert get("distq_workers", labels) == 3
    metrics.sampled(QueueStats(ready=4, in_flight=0, dead=1, consumers=3, in_flight_known=False))
    assert get("distq_queue_depth", {**labels, "state": "ready"}) == 4
    assert get("distq_queue_depth", {**labels, "state": "in_flight"}) is None
    metrics.sampled(None)
    assert get("distq_queue_depth", {**labels, "state": "ready"}) is None
    assert get("distq_workers", labels) is None


def promtool_check(exposition: bytes) -> subprocess.CompletedProcess[bytes]:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool is not installed: run `make test` (it installs Debian's prometheus), "
            "or apt-get install prometheus"
        )
    return subprocess.run(
        [promtool, "check", "metrics"], input=exposition, capture_output=True, timeout=60
    )


def test_promtool_finds_nothing_to_lint() -> None:
    worker, telemetry = worker_metrics()
    telemetry.settled([ending(task(), "ok", time.time(), 0.001)], released=1)
    master = MasterMetrics("redis", "q")
    master.sampled(QueueStats(ready=1, in_flight=2, dead=3, consumers=4))
    for registry in (worker.registry, master.registry):
        done = promtool_check(generate_latest(registry))
        assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_would_catch_a_bad_name() -> None:
    from prometheus_client import Counter

    registry = CollectorRegistry()
    Counter("distq_bad_milliseconds", "Not base units.", registry=registry).inc()
    done = promtool_check(generate_latest(registry))
    assert done.returncode != 0


class Counts(Transport):
    """A transport whose stats() answers what the test says, or raises."""

    name = "stub"

    def __init__(self) -> None:
        self.answer: QueueStats | Exception = QueueStats(1, 2, 3, 4)

    def stats(self) -> QueueStats:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def describe(self) -> str:
        return "stub"

    def reply_queue(self, job_id: str) -> str:
        return job_id

    def producer(self, reply_to: str) -> Producer:
        raise NotImplementedError

    def consumer(self, consumer_id: str) -> Consumer:
        raise NotImplementedError

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return []

    def requeue_dead(self, limit: int | None, revive: Revive = original_body) -> int:
        return 0

    def close(self) -> None:
        pass


def test_a_workers_sampler_only_pings_the_broker() -> None:
    """Without metrics to feed (a worker's), the sampler asks the broker to answer
    (``ping``), not for counts: RabbitMQ's count the retry queues too."""
    pinged: list[bool] = []

    class Pinged(Counts):
        def ping(self) -> None:
            pinged.append(True)
            if isinstance(self.answer, Exception):
                raise self.answer

        def stats(self) -> QueueStats:
            raise AssertionError("a worker's sampler asks for no counts")

    transport, readiness = Pinged(), Readiness()
    sampler = StatsSampler(transport, 60, readiness.link("broker"))
    assert sampler.sample() is None and pinged == [True]
    assert readiness.check().ok
    refused = "RabbitMQ at 127.0.0.1:5672: Connection refused"
    transport.answer = TransportError(refused)
    assert sampler.sample() is None
    assert readiness.check().body["reason"] == f"broker: {refused}"


def test_one_sample_that_raises_does_not_end_the_sampling() -> None:
    """A management API answer that broke http.client killed the sampler thread: the
    master never sampled the broker again (no queue depth, no readiness check)."""
    transport, metrics, readiness = Counts(), MasterMetrics("stub", "q"), Readiness()
    transport.answer = QueueStats(1, 0, 3, 4, in_flight_known=False)
    calls: list[float] = []

    class Broken:
        shown = "the RabbitMQ management API"

        def read(self) -> Any:
            calls.append(time.monotonic())
            raise RuntimeError("something no one expected")

    out = io.StringIO()
    broken: Any = Broken()  # reads as a ManagementApi whose read() raises
    sampler = StatsSampler(
        transport, 0.05, readiness.link("broker"), metrics, broken, Console(out=out, err=out)
    )
    sampler.start()
    deadline = time.monotonic() + 10  # 0.5 s was short of 3 samples on a loaded host
    while len(calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    sampler.stop()
    assert len(calls) >= 3, out.getvalue()  # it went on sampling
    assert "sampling the broker failed: RuntimeError: something no one expected" in out.getvalue()


def test_the_sampler_feeds_the_gauges_and_the_brokers_readiness() -> None:
    transport, metrics, readiness = Counts(), MasterMetrics("stub", "q"), Readiness()
    sampler = StatsSampler(transport, 60, readiness.link("broker"), metrics)
    labels = {"transport": "stub", "queue": "q"}
    get = metrics.registry.get_sample_value
    assert sampler.sample() == QueueStats(1, 2, 3, 4)
    assert readiness.check().ok
    assert get("distq_queue_depth", {**labels, "state": "in_flight"}) == 2
    assert get("distq_workers", labels) == 4
    transport.answer = TransportError("Redis at 127.0.0.1:6379: Connection refused")
    assert sampler.sample() is None
    assert readiness.check().body["reason"] == "broker: Redis at 127.0.0.1:6379: Connection refused"
    assert get("distq_workers", labels) is None
    transport.answer = QueueStats(5, 0, 0, 1, in_flight_known=False)  # RabbitMQ over AMQP
    sampler.sample()
    assert readiness.check().ok
    assert get("distq_queue_depth", {**labels, "state": "ready"}) == 5
    assert get("distq_queue_depth", {**labels, "state": "in_flight"}) is None


def test_a_masters_batch_given_as_the_collector_has_it_pins_every_bucket() -> None:
    """The collector hands the metrics its batch as it has it: the first results, their
    round trips in a list of their own (its latencies), and how many were duplicates, with
    no (result, round trip) pair made per result. Round trips on and either side of bucket
    bounds, in no order: each bucket, the sum and the count as prometheus-client's own."""
    metrics = MasterMetrics("redis", "q")
    trips = [0.0005, 0.00051, 0.0001, 1.0, 0.001, 3600.0, 3600.5, 0.0005, 0.1, 2.5, 1e-9]
    trips += [0.05 * n for n in range(1, 10)]  # 20 in all: sorted and bisected per bound
    firsts = [
        Result(f"t{n}", "error" if n % 7 == 3 else "ok", "w", 1, 0.0, 0.1)
        for n in range(len(trips))
    ]
    reference = Histogram("ref", "ref", buckets=BUCKETS, registry=CollectorRegistry())
    for trip in trips:
        reference.observe(trip)
    MasterTelemetry(metrics).collected(5, firsts=firsts, round_trips=trips, duplicates=2)
    registry = metrics.registry
    name = "distq_master_task_round_trip_seconds"
    ours = {
        s.labels["le"]: s.value
        for f in text_string_to_metric_families(generate_latest(registry).decode())
        for s in f.samples
        if s.name == f"{name}_bucket"
    }
    samples = next(iter(reference.collect())).samples
    theirs = {s.labels["le"]: s.value for s in samples if "le" in s.labels}
    assert ours == theirs
    assert (ours["0.0005"], ours["0.001"], ours["3600.0"], ours["+Inf"]) == (4, 6, 19, 20)
    assert value(registry, f"{name}_count") == len(trips)
    assert value(registry, f"{name}_sum") == pytest.approx(sum(trips))
    errors = sum(r.status == "error" for r in firsts)
    assert value(registry, "distq_master_results_total", status="error") == errors == 3
    assert value(registry, "distq_master_results_total", status="ok") == len(trips) - errors
    assert value(registry, "distq_master_duplicate_results_total") == 2
    assert value(registry, "distq_master_tasks_outstanding") == 5


def test_a_workers_batch_of_one_name_pins_every_bucket_at_the_bounds() -> None:
    """A batch of one name (the column-wise path) whose run times and queue waits fall on,
    just below and just above bucket bounds, in no order: each bucket, the sum and the
    count of both histograms as prometheus-client's own, and the tasks counted once."""
    runs = [b * f for b in RUN_BUCKETS[:12] for f in (1.0, 1 - 1e-12, 1 + 1e-12)]
    waits = [b * f for b in BUCKETS[:12] for f in (1.0, 1 - 1e-12, 1 + 1e-12)]
    random.Random(3).shuffle(runs)
    # started at twice the wait after a creation at the wait: exactly the wait (Sterbenz)
    endings = [
        ending(task(created_at=wait), "ok", 2 * wait, run)
        for run, wait in zip(runs, waits, strict=True)
    ]
    assert len(endings) >= 16  # by columns
    metrics = WorkerMetrics("redis", "q")
    WorkerTelemetry(metrics).settled(endings)
    ours = samples(metrics.registry)
    for name, values, buckets in (
        ("distq_worker_task_duration_seconds", runs, RUN_BUCKETS),
        ("distq_worker_queue_wait_seconds", waits, BUCKETS),
    ):
        reference = Histogram(name, "", buckets=buckets, registry=CollectorRegistry())
        for seconds in values:
            reference.observe(seconds)
        theirs = {
            (s.name, s.labels.get("le")): s.value
            for s in next(iter(reference.collect())).samples
            if not s.name.endswith("_created")
        }
        mine = {
            (key[0], dict(key[1]).get("le")): seconds
            for key, seconds in ours.items()
            if key[0].startswith(name)
        }
        assert mine == pytest.approx(theirs, rel=1e-12)
        assert mine[(f"{name}_bucket", "0.0005")] == sum(v <= 0.0005 for v in values)
    assert value(metrics.registry, "distq_worker_tasks_total", task="square", outcome="ok") == 36


def test_a_pause_the_broker_answered_after_does_not_let_the_next_sample_hang_longer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sample may take as long as recent ones that answered before it counts as hanging
    (a RabbitMQ master's is a dozen round trips). One that answered only once a paused
    broker resumed (8 s) is no measure of the broker's latency: taken as one, the next
    pause said "no answer" 10 s in, not 2 s, and /readyz stayed 200 meanwhile."""
    now = [100.0]
    monkeypatch.setattr("distq.sampler.time.monotonic", lambda: now[0])
    seen: list[tuple[bool, str]] = []

    class Paused(Counts):
        takes = 0.01

        def ping(self) -> None:
            now[0] += self.takes
            verdict = readiness.check()
            seen.append((verdict.ok, verdict.body.get("reason", "")))

    transport, readiness = Paused(), Readiness(clock=lambda: now[0])
    sampler = StatsSampler(transport, 60, readiness.link("broker"))
    for takes in (0.01, 0.01, 8.0):  # answered at once, twice; then after an 8 s pause
        transport.takes = takes
        sampler.sample()
    assert readiness.check().ok
    transport.takes = 3.0  # paused again: 3 s without an answer
    sampler.sample()
    ok, reason = seen[-1]
    assert not ok and "no answer from the broker for 3.0 s" in reason, seen
