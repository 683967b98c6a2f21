"""The executor's thread on its own: what it does when the broker fails under it."""

from __future__ import annotations

import time
from typing import Any

from distq.codec import Codec
from distq.dispatcher import Dispatcher, Entry, Stop, Submit
from distq.envelope import Task
from distq.errors import BrokenExecutor, TransportError
from distq.futures import Callbacks, DistqFuture


class BrokerGoneAtWithdraw:
    """A producer whose broker answers nothing, then fails when a task is taken back."""

    def submit_then_results(self, bodies: Any, max_count: int, timeout: float) -> list[bytes]:
        return []

    def results(self, max_count: int, timeout: float) -> list[bytes]:
        time.sleep(timeout)
        return []

    def withdraw(self, bodies: Any) -> list[bool]:
        raise TransportError("Redis at 127.0.0.1:1 went away")

    def close(self) -> None:
        pass


class Closed:
    def close(self) -> None:
        pass


def test_a_task_timing_out_as_the_broker_fails_is_failed_not_left_pending() -> None:
    callbacks = Callbacks()
    dispatcher = Dispatcher(Closed(), BrokerGoneAtWithdraw(), Codec(), callbacks)  # type: ignore[arg-type]
    task = Task(name="square", args=[3], reply_to="r")
    future = DistqFuture(dispatcher.cancel, task.id, "square", callbacks)
    entry = Entry(task, task.encode(), future, deadline=time.monotonic() + 0.2)
    dispatcher.start()
    assert dispatcher.put(Submit([entry]))
    # sent, then past its task_timeout: the withdraw fails, and the thread's end fails it
    error = future.exception(timeout=10)
    assert isinstance(error, BrokenExecutor), error
    assert "went away" in str(error)
    dispatcher.join(10)
    assert not dispatcher.is_alive() and not dispatcher.put(Stop(False))
