"""Running one delivery: read the task, find its function, call it, say how it ended.

Tasks run on the calling thread (a worker slot's own). Nothing here raises for bad
input: a malformed body, an unknown name, arguments that do not fit and exceptions
from the task itself (``SystemExit`` and ``KeyboardInterrupt`` too: a task's
``sys.exit()`` must not end the slot) all become an :class:`~distq.ending.Ending`, and
so does an error in distq's own handling of a task (:meth:`~distq.ending.Endings.
unhandled`): raised to the slot, it would hand the task back to fail again forever. In
a worker, each task first passes its batch's gate (:meth:`distq.batch.Batch.admit`): a
task whose master is gone is dead-lettered unrun.
"""

from __future__ import annotations

import time
from typing import Protocol

from distq.console import Console
from distq.ending import Ending, Endings
from distq.envelope import Task, not_bytes
from distq.errors import EnvelopeError, NoAttemptsLeft, Shutdown, UnknownTask
from distq.errortext import MAX_MESSAGE_CHARS, cut
from distq.tasks import Registry
from distq.transport.base import Delivery


class Gate(Protocol):
    """Says whether a decoded task may run: see :meth:`distq.batch.Batch.admit`."""

    def admit(self, task: Task) -> bool | None: ...


class TaskRunner:
    """Runs deliveries' tasks from ``registry``; prints each ``Get task ...`` line on
    ``console``. A failure's line is its ending's ``note``: the worker prints it once the
    ending is settled (before, "dead-lettered" could name a settle that then failed)."""

    def __init__(self, registry: Registry, endings: Endings, console: Console) -> None:
        self.registry, self.endings, self.console = registry, endings, console
        self.codec = endings.codec

    def __call__(self, delivery: Delivery) -> Ending:
        """Run ``delivery``'s task, whoever its master."""
        ending = self.gated(delivery, None)
        assert ending is not None  # without a gate, every task runs
        return ending

    def gated(self, delivery: Delivery, gate: Gate | None) -> Ending | None:
        """Run ``delivery``'s task if ``gate`` admits it; None when the gate says to stop."""
        try:
            task = self.codec.open_task(delivery.body)
        except EnvelopeError as exc:
            return self.endings.malformed(delivery, exc)
        except Exception:
            if type(delivery.body) is bytes:
                raise
            # not bytes at all: a manager peer can put any plain value (a str, a list),
            # which the codec's checks raise TypeError or AttributeError on: bad input too
            return self.endings.malformed(delivery, not_bytes(delivery.body, "task"))
        if gate is not None:
            admitted = gate.admit(task)
            if admitted is None:
                return None
            if not admitted:
                return self.endings.orphaned(delivery, task)
        try:
            if self.console.task_lines:  # skips formatting the line, on the hot path
                named = self.registry.show(task)
                if len(named) > MAX_MESSAGE_CHARS:  # cut(): its call only when it cuts
                    named = cut(named)
                self.console.task_line(f"Get task {named} from task_queue.")
            started_at, started = time.time(), time.perf_counter()
            try:
                function = self.registry.resolve(task.name, task.args, task.kwargs)
            except (UnknownTask, TypeError) as exc:
                return self.endings.failed(delivery, task, exc, started_at, 0.0)
            # exhausted: fails for good unrun, as on its last; after resolve, so a task that
            # could run at no attempt says why, not to requeue it (then it failed for that)
            if task.attempt > task.max_attempts:
                return self.endings.failed(delivery, task, _no_attempts_left(task), started_at, 0.0)
            try:  # without keywords, no dict is built for the call
                value = function(*task.args, **task.kwargs) if task.kwargs else function(*task.args)
            except Shutdown:
                raise
            except BaseException as exc:  # sys.exit() in a task is the task's error too
                duration = time.perf_counter() - started
                if exc.__traceback__ is not None:  # the remote traceback starts in its code
                    exc.__traceback__ = exc.__traceback__.tb_next
                return self.endings.failed(
                    delivery, task, exc, started_at, duration, retryable=True
                )
            duration = time.perf_counter() - started
            return self.endings.ok(delivery, task, value, started_at, duration)
        except Shutdown:
            raise
        except BaseException as exc:  # distq's own handling failed: never hand it back
            return self.endings.unhandled(delivery, task, exc)  # to loop (nor end the slot)


def _no_attempts_left(task: Task) -> NoAttemptsLeft:
    """Why ``task``, past its last attempt, is not run: run, it failed as "failed 5 of
    3 attempts" of an attempt that was no failure, or returned a result it had no attempt
    for."""
    return NoAttemptsLeft(
        f"attempt {task.attempt} is past its last ({task.max_attempts}, its max_attempts), "
        "so it has no attempt left; `distq requeue-dead` starts it over at attempt 1"
    )
