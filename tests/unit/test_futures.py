"""The executor's futures and their callback thread, without a broker or an executor."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from distq.futures import Callbacks, DistqFuture


def _never(futures: list[DistqFuture[Any]]) -> list[bool]:
    raise AssertionError("a done future must not ask the executor to cancel it")


def test_cancel_of_a_done_future_says_whether_it_was_cancelled_and_asks_nobody() -> None:
    answered = DistqFuture[Any](_never, "t1", "square")
    answered.set_result(4)
    assert answered.cancel() is False and answered.result() == 4
    failed = DistqFuture[Any](_never, "t2", "square")
    failed.set_exception(ValueError("no"))
    assert failed.cancel() is False


def test_cancel_of_a_pending_future_is_the_executors_answer() -> None:
    asked: list[list[str]] = []

    def cancel(futures: list[DistqFuture[Any]]) -> list[bool]:
        asked.append([f.task_id for f in futures])
        return [False]

    future = DistqFuture[Any](cancel, "t1", "square")
    assert future.cancel() is False and asked == [["t1"]]


def test_a_wait_that_ends_without_a_result_names_the_task() -> None:
    future = DistqFuture[Any](_never, "t1", "jobs:resize")
    for wait in (future.result, future.exception):
        with pytest.raises(TimeoutError, match=r"no result for task jobs:resize \[t1\] after"):
            wait(0.01)


def test_callbacks_run_in_order_on_one_thread_that_ends_after_close() -> None:
    callbacks = Callbacks()
    ran: list[tuple[str, str]] = []

    def note(future: object) -> None:
        assert isinstance(future, DistqFuture)
        ran.append((future.task_id, threading.current_thread().name))

    for n in range(3):
        future = DistqFuture[Any](_never, f"t{n}", "square", callbacks)
        future.add_done_callback(note)
        future.set_result(n)
    callbacks.close()
    callbacks.join(5)
    assert [task_id for task_id, _ in ran] == ["t0", "t1", "t2"]
    assert {name for _, name in ran} == {"distq-executor-callbacks"}
    assert callbacks._thread is not None and not callbacks._thread.is_alive()


def test_a_callback_that_exits_is_logged_and_the_later_ones_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A ``sys.exit()`` in one ended the callback thread without a word: no later
    callback of the executor ran, and their futures piled up unread."""
    callbacks = Callbacks()
    ran: list[str] = []

    def leave(future: object) -> None:
        raise SystemExit(3)

    for n in range(3):
        future = DistqFuture[Any](_never, f"t{n}", "square", callbacks)
        if n == 0:
            future.add_done_callback(leave)
        future.add_done_callback(lambda f: ran.append(getattr(f, "task_id", "?")))
        future.set_result(n)
    callbacks.close()
    callbacks.join(5)
    assert ran == ["t0", "t1", "t2"]
    assert any("a done-callback of task square [t0] raised" in r.message for r in caplog.records)


def test_a_slow_callback_holds_up_no_resolving_thread() -> None:
    callbacks = Callbacks()
    release = threading.Event()
    future = DistqFuture[Any](_never, "t1", "square", callbacks)
    future.add_done_callback(lambda _f: release.wait(5))
    started = time.monotonic()
    future.set_result(1)  # returns while the callback still waits
    assert time.monotonic() - started < 3.0  # not its 5 s (a stall may add a second or two)
    release.set()
    callbacks.close()
    callbacks.join(5)


def test_after_close_a_callback_runs_in_the_resolving_thread_not_never() -> None:
    callbacks = Callbacks()
    callbacks.close()
    ran: list[str] = []
    future = DistqFuture[Any](_never, "t1", "square", callbacks)
    future.add_done_callback(lambda _f: ran.append(threading.current_thread().name))
    future.set_result(1)
    assert ran == [threading.current_thread().name]


def test_a_future_without_callbacks_starts_no_thread() -> None:
    callbacks = Callbacks()
    DistqFuture[Any](_never, "t1", "square", callbacks).set_result(1)
    assert callbacks._thread is None


def test_fail_inherited_fails_a_pending_future_without_its_parents_callbacks() -> None:
    ran: list[str] = []
    pending = DistqFuture[Any](_never, "t1", "square")
    pending.add_done_callback(lambda _f: ran.append("callback"))
    pending.fail_inherited(RuntimeError("forked"))
    assert isinstance(pending.exception(0), RuntimeError) and ran == []
    done = DistqFuture[Any](_never, "t2", "square")
    done.set_result(3)
    done.fail_inherited(RuntimeError("forked"))
    assert done.result() == 3  # the fork itself is tested with an executor
