"""How a delivery ends: ok, retried with backoff, failed for good, or malformed.

Pure decisions, no I/O: given what happened to a delivery (its task's value, the
error it raised, or why it could not be read), :class:`Endings` says what the consumer
publishes (a :class:`~distq.transport.base.Settlement`) and how it counts (an
:data:`Outcome`). The worker runs tasks (:mod:`distq.runner`) and settles; this module
only decides.

- the function returned a JSON value: ``ok``, an ok result;
- it raised and attempts are left: ``retried``, the next attempt after :func:`retry_delay`;
- it raised on its last attempt: ``failed``, an error result and a dead letter;
- it cannot run (unknown name, arguments that do not fit, a value that is not JSON):
  ``failed`` at once, as no retry would change that;
- the body is not a task envelope: ``malformed``, a dead letter only (no one to answer);
- its master is gone (stopped, or died and its reply queue lapsed): ``orphaned``, a dead
  letter only, the task not run (nobody would read its result);
- it ran past its time limit (:class:`~distq.errors.TimeLimitExceeded`): like any
  error, ``retried`` or ``failed`` (see :meth:`Endings.timed_out`).
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

from distq.envelope import DeadLetter, Result, Task
from distq.errors import EnvelopeError, TimeLimitExceeded
from distq.transport.base import Delivery, Settlement

Outcome = Literal["ok", "failed", "retried", "malformed", "orphaned"]


def retry_delay(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff before attempt ``attempt + 1``: 0.5 s, 1 s, 2 s, ... capped."""
    return float(min(cap, base * 2 ** (attempt - 1)))


class Ending(NamedTuple):
    """How one delivery ended: what to settle, how it counts, and what to tell the operator.

    ``task`` is None for a malformed message; ``started_at`` (wall clock) and
    ``duration`` (seconds the function ran, 0 if it never ran) describe the run;
    ``note`` is the error line to print, None when all went well. (A named tuple: one
    is made per task, and a frozen dataclass costs about three times as much to make.)
    """

    settlement: Settlement
    outcome: Outcome
    task: Task | None = None
    started_at: float = 0.0
    duration: float = 0.0
    note: str | None = None


class Endings:
    """The endings one worker gives its deliveries: results and dead letters name it."""

    def __init__(self, worker_id: str, queue: str) -> None:
        self.worker_id, self.queue = worker_id, queue

    def ok(
        self, delivery: Delivery, task: Task, value: Any, started_at: float, duration: float
    ) -> Ending:
        """The function returned ``value``; it fails for good if ``value`` is not JSON."""
        try:
            body = self._result(task, started_at, duration, status="ok", value=value)
        except (TypeError, ValueError) as exc:  # no retry will change the value
            return self.failed(delivery, task, exc, started_at, duration, retryable=False)
        settlement = Settlement(delivery, reply_to=task.reply_to, result=body)
        return Ending(settlement, "ok", task, started_at, duration)

    def failed(
        self,
        delivery: Delivery,
        task: Task,
        error: BaseException,
        started_at: float,
        duration: float,
        *,
        retryable: bool,
    ) -> Ending:
        """The task raised ``error`` (``retryable``) or cannot run at all (not retryable)."""
        message = f"{type(error).__name__}: {error}"
        if retryable and task.attempt < task.max_attempts:
            delay = retry_delay(task.attempt)
            note = (
                f"task {task.name} {task.id} attempt {task.attempt}/{task.max_attempts} "
                f"failed ({message}); retrying in {delay:g} s"
            )
            settlement = Settlement(delivery, retry=task.next_attempt().encode(), retry_delay=delay)
            return Ending(settlement, "retried", task, started_at, duration, note)
        reason = (
            f"failed {task.attempt} of {task.max_attempts} attempts; last error: {message}"
            if retryable
            else f"cannot run: {message}"
        )
        result = self._result(
            task,
            started_at,
            duration,
            status="error",
            error_type=type(error).__name__,
            error_message=reason,
        )
        settlement = Settlement(
            delivery,
            reply_to=task.reply_to,
            result=result,
            dead_letter=self._dead(delivery, reason),
        )
        note = f"task {task.name} {task.id} dead-lettered: {reason}"
        return Ending(settlement, "failed", task, started_at, duration, note)

    def timed_out(
        self, delivery: Delivery, task: Task, limit: float, started_at: float, duration: float
    ) -> Ending:
        """The task ran past its ``limit`` (seconds): a failed attempt, retried per policy."""
        error = TimeLimitExceeded(f"ran past its time limit of {limit:g} s")
        return self.failed(delivery, task, error, started_at, duration, retryable=True)

    def orphaned(self, delivery: Delivery, task: Task) -> Ending:
        """The task's master is gone: dead-lettered unrun, no result (nobody waits)."""
        reason = (
            f"its master is gone (no live master holds reply queue {task.reply_to!r}: "
            "it stopped, or died and the queue lapsed); not run"
        )
        settlement = Settlement(delivery, dead_letter=self._dead(delivery, reason))
        note = f"task {task.name} {task.id} dead-lettered: {reason}"
        return Ending(settlement, "orphaned", task, note=note)

    def malformed(self, delivery: Delivery, error: EnvelopeError) -> Ending:
        """The body is not a task: dead-lettered with the reason, nobody to answer."""
        reason = f"malformed message: {error}"
        settlement = Settlement(delivery, dead_letter=self._dead(delivery, reason))
        return Ending(settlement, "malformed", note=f"dead-lettered a {reason}")

    def _result(self, task: Task, started_at: float, duration: float, **fields: Any) -> bytes:
        return Result(
            task_id=task.id,
            worker=self.worker_id,
            attempt=task.attempt,
            started_at=started_at,
            duration=duration,
            **fields,
        ).encode()

    def _dead(self, delivery: Delivery, reason: str) -> bytes:
        return DeadLetter(
            body=delivery.body, reason=reason, queue=self.queue, worker=self.worker_id
        ).encode()
