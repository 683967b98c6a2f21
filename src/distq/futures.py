"""The futures an executor hands out: one per task, cancelled through the executor."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable
from typing import Any

#: Cancels futures where possible; one answer each (the executor's thread decides).
Cancel = Callable[[list["DistqFuture"]], list[bool]]


class DistqFuture(concurrent.futures.Future[Any]):
    """A :class:`concurrent.futures.Future` for one distq task.

    ``task_id`` and ``task_name`` name the task. The future stays pending until the
    task's result arrives (``running()`` is never true: a worker does not say when it
    starts). ``result(timeout)`` and ``exception(timeout)`` raise :class:`TimeoutError`
    with a message naming the task.
    """

    def __init__(self, cancel: Cancel, task_id: str, name: str) -> None:
        super().__init__()
        self.task_id, self.task_name = task_id, name
        self.submitted = time.monotonic()
        self._cancel = cancel

    def cancel(self) -> bool:
        """Cancel the task if it has not started; True if the future is now cancelled.

        Manager and Redis take the task back out of the ready queue: True means it will
        never run; False means a worker has it already (or it waits out a retry delay).
        RabbitMQ cannot take a message back out of a queue, so there cancel() returns
        False unless the task was not sent yet. A task not yet sent is never sent.
        """
        if self.done():
            return self.cancelled()
        return self._cancel([self])[0]

    def result(self, timeout: float | None = None) -> Any:
        try:
            return super().result(timeout)
        except TimeoutError:
            if not self.done():
                raise TimeoutError(self._waiting(timeout)) from None
            raise

    def exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            return super().exception(timeout)
        except TimeoutError:
            if not self.done():
                raise TimeoutError(self._waiting(timeout)) from None
            raise

    def _waiting(self, timeout: float | None) -> str:
        age = time.monotonic() - self.submitted
        return (
            f"no result for task {self.task_name} [{self.task_id}] after waiting "
            f"{timeout or 0:.1f} s ({age:.1f} s since it was submitted): it is queued, running "
            "or retrying; is a worker running with it registered? (`distq status` shows "
            "ready tasks and attached workers)"
        )
