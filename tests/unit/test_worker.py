"""How the worker decides each delivery's fate (no broker needed: process() is pure)."""

from __future__ import annotations

import io
from typing import Any

import pytest

from distq.console import Console
from distq.envelope import DeadLetter, Result, Task
from distq.tasks import Registry
from distq.transport import Delivery
from distq.worker import HAND_BACK_AFTER_SECONDS, Worker, WorkerOptions, _Slot, retry_delay


def boom(n: int) -> int:
    raise ValueError(f"bad {n}")


def unjsonable(n: int) -> object:
    return {n}


@pytest.fixture
def worker() -> Worker:
    registry = Registry()
    registry.register("boom", boom)
    registry.register("unjsonable", unjsonable)
    console = Console(quiet=True, out=io.StringIO(), err=io.StringIO())
    return Worker(None, registry, WorkerOptions(worker_id="w1"), console)  # type: ignore[arg-type]


def deliver(body: bytes) -> Delivery:
    return Delivery(body=body, tag=1)


def task(name: str, *args: Any, **kw: Any) -> Task:
    return Task(name=name, args=list(args), reply_to="replies", **kw)


def test_ok_result(worker: Worker) -> None:
    settlement, outcome = worker.process(deliver(task("square", 12).encode()))
    assert outcome == "ok" and settlement.reply_to == "replies"
    assert settlement.result is not None
    result = Result.decode(settlement.result)
    assert (result.status, result.value, result.worker) == ("ok", 144, "w1")
    assert settlement.retry is None and settlement.dead_letter is None


def test_malformed_message_is_dead_lettered_without_a_result(worker: Worker) -> None:
    settlement, outcome = worker.process(deliver(b"\x00garbage"))
    assert outcome == "malformed" and settlement.result is None
    assert settlement.dead_letter is not None
    letter = DeadLetter.decode(settlement.dead_letter)
    assert letter.body == b"\x00garbage" and letter.reason.startswith("malformed message")


def test_unknown_task_fails_for_good_at_once(worker: Worker) -> None:
    settlement, outcome = worker.process(deliver(task("nope", 1).encode()))
    assert outcome == "failed" and settlement.retry is None
    assert settlement.result is not None and settlement.dead_letter is not None
    assert Result.decode(settlement.result).error_type == "UnknownTask"
    assert "no task named 'nope'" in DeadLetter.decode(settlement.dead_letter).reason


def test_bad_arguments_are_not_retried(worker: Worker) -> None:
    settlement, outcome = worker.process(deliver(task("square", 1, 2, 3).encode()))
    assert outcome == "failed" and settlement.retry is None


def test_failure_is_retried_with_backoff_then_fails_for_good(worker: Worker) -> None:
    first = task("boom", 5, max_attempts=3)
    settlement, outcome = worker.process(deliver(first.encode()))
    assert outcome == "retried" and settlement.result is None
    assert settlement.retry is not None and settlement.retry_delay == retry_delay(1) == 0.5
    second = Task.decode(settlement.retry)
    assert (second.id, second.attempt) == (first.id, 2)
    last = second.next_attempt()
    settlement, outcome = worker.process(deliver(last.encode()))
    assert outcome == "failed" and settlement.retry is None
    assert settlement.result is not None and settlement.dead_letter is not None
    result = Result.decode(settlement.result)
    assert (result.status, result.error_type, result.attempt) == ("error", "ValueError", 3)
    assert "failed 3 of 3 attempts" in DeadLetter.decode(settlement.dead_letter).reason


def test_a_result_that_is_not_json_fails_for_good(worker: Worker) -> None:
    settlement, outcome = worker.process(deliver(task("unjsonable", 1).encode()))
    assert outcome == "failed" and settlement.retry is None


def test_backoff_grows_and_is_capped() -> None:
    assert [retry_delay(a) for a in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert retry_delay(50) == 30.0


def test_a_batch_running_past_its_budget_stops_before_the_next_task(worker: Worker) -> None:
    slow = task("square", 2, kwargs={"delay": HAND_BACK_AFTER_SECONDS * 1.5})
    batch = [deliver(task("square", 1).encode()), deliver(slow.encode())]
    batch += [deliver(task("square", n).encode()) for n in range(3, 6)]
    settled = worker._run(_Slot(0), batch)
    assert [outcome for _, outcome in settled] == ["ok", "ok"]  # the rest goes back


def test_a_batch_of_fast_tasks_runs_whole(worker: Worker) -> None:
    batch = [deliver(task("square", n).encode()) for n in range(200)]
    assert len(worker._run(_Slot(0), batch)) == 200
