"""A failure whose error result cannot fit even cut down is still an ending: a dead
letter with the reason, and no result, not an exception out of :class:`Endings`."""

from __future__ import annotations

import io
import threading
import time
from typing import Any

import pytest

from distq.codec import Codec
from distq.console import Console
from distq.ending import Ending, Endings
from distq.envelope import DeadLetter, Task
from distq.tasks import Registry
from distq.timelimits import TimeLimits
from distq.transport import Delivery, Producer, Transport
from distq.worker import Worker, WorkerOptions
from seam import results_of

#: The smallest DISTQ_MAX_MESSAGE_BYTES, and a task id that fits a task under it, not
#: the error result that names the task and its worker.
SMALLEST = 1024
LONG_ID = "t" * 850


def test_a_failure_whose_result_cannot_fit_is_dead_lettered_without_a_result() -> None:
    """Endings.failed raised MessageTooLarge out of _too_large: the runner turned it into
    "the worker could not handle it", but the keeper's time limit (Endings.timed_out)
    and the slot's late ending called it unguarded."""
    endings = Endings("w1", "q", Codec(max_message_bytes=SMALLEST))
    task = Task("sleepy", [1.0], "replies", id=LONG_ID, max_attempts=1)
    body = task.encode()
    assert len(body) < SMALLEST
    for ending in (
        endings.timed_out(Delivery(body, 1), task, 0.5, 0.0, 0.6),
        endings.failed(Delivery(body, 1), task, ValueError("x"), 0.0, 0.1, retryable=True),
    ):
        s = ending.settlement
        assert ending.outcome == "failed", ending
        assert (s.result, s.reply_to) == (None, None)
        assert s.dead_letter is not None
        letter = DeadLetter.decode(s.dead_letter)
        assert letter.body == body and "failed 1 of 1 attempts" in letter.reason


def _sleepy_worker(
    transport: Transport, producer: Producer, task: Task, codec: Codec | None = None
) -> tuple[list[int], str]:
    """``task`` (a ``sleepy`` of 1 s under a 0.3 s limit), submitted by ``producer``, run
    by a one-slot worker that exits once idle 1.5 s: its exit codes (none if it was still
    running after 20 s) and its lines."""
    producer.submit([task.encode()])
    registry = Registry()
    registry.register("sleepy", time.sleep)
    out = io.StringIO()
    options = WorkerOptions(
        worker_id="w",
        exit_when_idle=1.5,
        prefetch=1,
        heartbeat_interval=0.2,
        time_limits=TimeLimits.parse("sleepy=0.3"),
    )
    worker = Worker(transport, registry, options, Console(out=out, err=out), codec=codec)
    codes: list[int] = []
    runs = threading.Thread(target=lambda: codes.append(worker.run()), daemon=True)
    runs.start()
    runs.join(20)
    return codes, out.getvalue()


def test_a_time_limit_whose_result_cannot_fit_does_not_lose_the_slot(
    transport: Transport,
) -> None:
    """The keeper's give-up made the ending after it had moved the slot's generation on:
    the MessageTooLarge left the slot without a thread ("keeping a long batch failed"),
    its task unsettled, and the worker never exited."""
    producer = transport.producer("replies")
    task = Task("sleepy", [1.0], "replies", id=LONG_ID, max_attempts=1)
    codes, said = _sleepy_worker(transport, producer, task, Codec(max_message_bytes=SMALLEST))
    assert codes == [0], said
    assert "keeping a long batch failed" not in said, said
    assert "ran past its time limit of 0.3 s" in said, said
    assert "0 ok, 1 failed for good, 0 retried, 1 dead-lettered" in said, said
    producer.close()


def test_a_time_limit_whose_ending_fails_is_dead_lettered_and_the_slot_goes_on(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any error of distq's own in making a timed-out attempt's ending (the keeper's, or
    the slot's for one that returned late) is what the runner makes of such an error in
    any task: a dead letter with the reason (Endings.unhandled). Raised in the keeper,
    after the slot's generation had moved on, it left the slot without a thread."""

    def boom(*args: Any, **kwargs: Any) -> Ending:
        raise RuntimeError("boom")

    monkeypatch.setattr(Endings, "timed_out", boom)
    producer = transport.producer("replies")
    task = Task("sleepy", [1.0], "replies", id="t-boom", max_attempts=3)
    codes, said = _sleepy_worker(transport, producer, task)
    assert codes == [0], said
    assert "keeping a long batch failed" not in said, said
    assert (
        "task sleepy t-boom dead-lettered: the worker could not handle it: RuntimeError: boom"
    ) in said, said
    assert "0 ok, 1 failed for good, 0 retried, 1 dead-lettered" in said, said
    (result,) = results_of(producer, 1, within=5)
    assert (result.status, result.error_type) == ("error", "WorkerError"), result
    producer.close()
