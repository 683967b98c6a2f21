"""What a lone task (``--max-in-flight 1``: each batch one task) costs a worker's slot
and a master's job loop: work done once per batch or per job that only matters when
something is set (time limits, a failed batch, lines to print) is not redone for each
task when it is not (issue 16)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import pytest

import micro
from distq.backoff import Backoff
from distq.batch import Batch
from distq.console import Console
from distq.envelope import Task
from distq.health import HealthSnapshot, WorkerHealth
from distq.slots import Slot
from distq.tasks import Registry
from distq.timelimits import TimeLimits
from distq.transport.base import Delivery, Settlement
from distq.worker import Worker, WorkerOptions

LONE_TASKS = 20


class LoneTasks(micro.LoneTasks):
    """``bench/micro.py``'s consumer of lone tasks (each settle brings the next, the last
    stops the worker), keeping what was settled."""

    def __init__(self, worker: Worker, bodies: list[bytes]) -> None:
        super().__init__(worker, bodies)
        self.settled: list[Settlement] = []

    def settle_then_fetch(
        self, settlements: Sequence[Settlement], max_count: int, timeout: float = 0.0
    ) -> list[Delivery]:
        self.settled.extend(settlements)
        return super().settle_then_fetch(settlements, max_count, timeout)

    def settle(self, settlements: Sequence[Settlement]) -> None:
        self.settled.extend(settlements)


def run_lone_tasks(worker: Worker) -> LoneTasks:
    """``LONE_TASKS`` squares run by one slot of ``worker``, one batch each."""
    codec = worker.runner.codec
    bodies = [codec.seal_task(Task("square", [n], "r")) for n in range(LONE_TASKS)]
    slot = Slot(0)
    consumer = slot.consumer = LoneTasks(worker, bodies)
    worker.masters.learn(["r"], set())  # its master known alive: no question asked
    worker._work_on(slot, 0)
    return consumer


def lone_worker() -> Worker:
    quiet = Console(quiet=True, out=io.StringIO(), err=io.StringIO())
    return Worker(None, Registry(), WorkerOptions(worker_id="w"), quiet)  # type: ignore[arg-type]


def test_a_slot_asks_no_time_limits_nor_resets_a_backoff_per_lone_task(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without time limits, whether there are any is known once per worker, not asked of
    each batch (``TimeLimits.__bool__``, a Python call); a slot whose batches never
    failed has no backoff to reset after each one. Every task still runs and settles."""
    calls = {"limits": 0, "reset": 0}
    limits_bool, reset = TimeLimits.__bool__, Backoff.reset

    def counted_bool(self: TimeLimits) -> bool:
        calls["limits"] += 1
        return limits_bool(self)

    def counted_reset(self: Backoff) -> None:
        calls["reset"] += 1
        reset(self)

    worker = lone_worker()
    monkeypatch.setattr(TimeLimits, "__bool__", counted_bool)
    monkeypatch.setattr(Backoff, "reset", counted_reset)
    consumer = run_lone_tasks(worker)
    assert len(consumer.settled) == LONE_TASKS
    assert worker.health.tasks_ok == LONE_TASKS
    assert calls == {"limits": 0, "reset": 0}


def test_a_slot_with_time_limits_still_gives_each_batch_its_limits() -> None:
    """The limits known once per worker reach every batch: each lone task, run under a
    default limit, is kept for the keeper while it runs."""
    quiet = Console(quiet=True, out=io.StringIO(), err=io.StringIO())
    options = WorkerOptions(worker_id="w", time_limits=TimeLimits(default=30.0))
    worker = Worker(None, Registry(), options, quiet)  # type: ignore[arg-type]
    limited: list[float] = []
    run = worker.runner.gated

    def gated(delivery: Delivery, gate: object) -> object:
        ending = run(delivery, gate)  # type: ignore[arg-type]
        limited.append(gate.running.limit)  # type: ignore[attr-defined]
        return ending

    worker.runner.gated = gated  # type: ignore[method-assign,assignment]
    consumer = run_lone_tasks(worker)
    assert len(consumer.settled) == LONE_TASKS
    assert limited == [30.0] * LONE_TASKS


def test_a_slot_resets_its_backoff_after_a_batch_that_follows_a_failure() -> None:
    """A failed batch's backoff still starts afresh once a batch settles."""
    worker = lone_worker()
    codec = worker.runner.codec
    slot = Slot(0)
    slot.failing.next()  # a batch failed before
    bodies = [codec.seal_task(Task("square", [n], "r")) for n in range(2)]
    slot.consumer = LoneTasks(worker, bodies)
    worker.masters.learn(["r"], set())
    worker._work_on(slot, 0)
    assert slot.failing.attempts == 0


def test_a_batch_that_ran_whole_has_no_rest_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lone task's batch ran its one task: nothing is left to hand back, and no list
    of the rest is made to say so (``Batch.take_rest``, a Python call, per task)."""
    taken: list[int] = []
    take_rest = Batch.take_rest

    def counted(self: Batch) -> list[Delivery]:
        rest = take_rest(self)
        taken.append(len(rest))
        return rest

    monkeypatch.setattr(Batch, "take_rest", counted)
    worker = lone_worker()
    consumer = run_lone_tasks(worker)
    assert len(consumer.settled) == LONE_TASKS and worker.health.tasks_ok == LONE_TASKS
    assert taken == []


def test_a_lone_task_that_ended_ok_is_counted_without_the_table_of_outcomes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A settle of one task that ended ok counts it as ok, out of the hand, with no
    keywords spread into ``WorkerHealth.finished`` (its sums of six outcomes, most of
    them 0): the counts are the same."""
    spread: list[dict[str, object]] = []
    finished = WorkerHealth.finished

    def counted(self: WorkerHealth, **counts: Any) -> None:
        spread.append(counts)
        finished(self, **counts)

    monkeypatch.setattr(WorkerHealth, "finished", counted)
    worker = lone_worker()
    consumer = run_lone_tasks(worker)
    assert len(consumer.settled) == LONE_TASKS
    assert (worker.health.tasks_ok, worker.health.in_hand) == (LONE_TASKS, 0)
    assert worker.health.snapshot() == HealthSnapshot(LONE_TASKS, 0, 0, 0)
    assert spread == []
