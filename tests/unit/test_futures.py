"""The executor's futures and their callback thread, without a broker or an executor."""

from __future__ import annotations

import concurrent.futures
import os
import threading
import time
from typing import Any

import pytest

from distq import futures as futures_module
from distq.errors import TaskTimeout
from distq.futures import Callbacks, DistqFuture
from seam import answered_as_the_wait_ends


def _never(futures: list[DistqFuture[Any]], wait: bool = True) -> list[bool]:
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

    def cancel(futures: list[DistqFuture[Any]], wait: bool = True) -> list[bool]:
        asked.append([f.task_id for f in futures])
        return [False]

    future = DistqFuture[Any](cancel, "t1", "square")
    assert future.cancel() is False and asked == [["t1"]]


def test_a_wait_that_ends_without_a_result_names_the_task() -> None:
    future = DistqFuture[Any](_never, "t1", "jobs:resize")
    for wait in (future.result, future.exception):
        with pytest.raises(TimeoutError, match=r"no result for task jobs:resize \[t1\] after"):
            wait(0.01)


@pytest.mark.parametrize("wait", ["result", "exception"])
def test_a_wait_whose_result_comes_as_it_ends_names_the_task_as_any_other(wait: str) -> None:
    """A result in at the moment the wait timed out: ``result()`` and ``exception()``
    raised the standard library's bare ``TimeoutError()``, naming nothing. A task's own
    TimeoutError (its TaskTimeout) is still raised (or returned) as it is."""
    future = DistqFuture[Any](_never, "t1", "jobs:resize")
    with answered_as_the_wait_ends(4), pytest.raises(TimeoutError) as raised:
        getattr(future, wait)(0.01)
    assert str(raised.value).startswith("no result for task jobs:resize [t1] after ")
    late = DistqFuture[Any](_never, "t2", "jobs:resize")
    own = TaskTimeout("jobs:resize [t2] is past its task_timeout")
    threading.Timer(0.05, late.set_exception, (own,)).start()
    if wait == "exception":
        assert late.exception(10) is own
        return
    with pytest.raises(TaskTimeout) as raised_own:
        late.result(10)
    assert raised_own.value is own


@pytest.mark.parametrize("timeout", [1e300, float("inf"), 10**400])
def test_a_wait_longer_than_a_lock_can_hold_waits_until_the_answer(timeout: float) -> None:
    """Was: result(timeout=1e300) (or inf, 10**400) raised OverflowError from the
    lock's wait, as the standard library's futures do: it now waits as None does."""
    for wait in ("result", "exception"):
        future = DistqFuture[Any](_never, "t1", "square")
        threading.Timer(0.05, future.set_result, (9,)).start()
        assert getattr(future, wait)(timeout) == (9 if wait == "result" else None)


def test_a_negative_wait_waits_not_and_nan_is_refused_naming_the_range() -> None:
    """A negative timeout is no wait, as the standard library's (a deadline already
    past); nan was no wait either, said as 'after waiting nan s': now a ValueError."""
    future = DistqFuture[Any](_never, "t1", "square")
    for wait in (future.result, future.exception):
        with pytest.raises(TimeoutError, match=r"\[t1\] after waiting 0.0 s "):
            wait(-1)
        with pytest.raises(ValueError, match=r"^timeout is nan; use seconds \(0 or less: no"):
            wait(float("nan"))


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


def test_a_future_has_every_attribute_of_the_standard_librarys_but_its_condition() -> None:
    """DistqFuture sets Future.__init__'s attributes itself, to leave out the Condition
    (made on first use): one added in a later Python would be missing, and Future's
    methods would fail on it."""
    standard = set(vars(concurrent.futures.Future()))
    ours = set(vars(DistqFuture[Any](_never, "t1", "square")))
    assert standard - ours == {"_condition"}


def test_a_waiting_future_holds_no_condition_until_one_is_asked_for() -> None:
    waiting = DistqFuture[Any](_never, "t1", "square")
    assert not waiting.done()
    assert waiting._made is None  # done() read its state without making one
    condition = waiting._condition
    assert isinstance(condition, threading.Condition) and waiting._condition is condition
    waiting.set_result(4)
    assert waiting.result() == 4 and waiting._condition is condition


def test_threads_that_first_ask_for_a_futures_condition_at_once_get_the_same_one() -> None:
    def ask(future: DistqFuture[Any], barrier: threading.Barrier, got: list[Any]) -> None:
        barrier.wait()
        got.append(future._condition)

    for _ in range(50):
        future = DistqFuture[Any](_never, "t1", "square")
        barrier, got = threading.Barrier(4), list[Any]()
        threads = [threading.Thread(target=ask, args=(future, barrier, got)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len({id(condition) for condition in got}) == 1


def test_wait_and_as_completed_see_futures_resolved_from_another_thread() -> None:
    futures = [DistqFuture[Any](_never, f"t{n}", "square") for n in range(20)]

    def resolve() -> None:
        for n, future in enumerate(futures):
            time.sleep(0.001)
            future.set_result(n * n)

    threading.Thread(target=resolve).start()
    done, not_done = concurrent.futures.wait(futures, timeout=30)
    assert len(done) == 20 and not not_done
    assert sorted(f.result() for f in concurrent.futures.as_completed(futures)) == sorted(
        n * n for n in range(20)
    )


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() only")
def test_a_child_made_by_fork_while_a_condition_was_being_made_can_make_its_own() -> None:
    """A thread of the parent held the lock that makes Conditions at the fork: the
    child's first future must not wait for it for ever."""
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with futures_module._MAKING:
            entered.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    entered.wait(10)
    try:
        pid = os.fork()
        if pid == 0:  # the child: a future's Condition, within a second, or exit 1
            made = threading.Event()

            def make() -> None:
                assert DistqFuture[Any](_never, "c", "square")._condition is not None
                made.set()

            threading.Thread(target=make, daemon=True).start()
            os._exit(0 if made.wait(5) else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
        holder.join()
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_future_answered_before_anyone_waits_makes_no_condition() -> None:
    answered = DistqFuture[Any](_never, "t1", "square")
    answered.set_result(4)
    assert answered.done() and answered.result() == 4 and answered._made is None
    failed = DistqFuture[Any](_never, "t2", "square")
    failed.set_exception(ValueError("no"))
    assert failed._made is None and isinstance(failed.exception(), ValueError)
    with pytest.raises(ValueError, match="no"):
        failed.result()


def test_a_future_answered_twice_says_so_with_or_without_a_condition() -> None:
    for asked in (False, True):
        future = DistqFuture[Any](_never, "t1", "square")
        if asked:
            assert future._condition is not None
        future.set_result(4)
        with pytest.raises(concurrent.futures.InvalidStateError, match="FINISHED"):
            future.set_result(5)
        with pytest.raises(concurrent.futures.InvalidStateError, match="FINISHED"):
            future.set_exception(ValueError())
        assert future.result() == 4


def test_a_future_answered_while_another_thread_starts_to_wait_wakes_it() -> None:
    """The answer and a first wait race for who makes the Condition: whichever wins,
    the waiter gets the value (no TimeoutError, no wait for ever)."""
    for _ in range(20):
        futures = [DistqFuture[Any](_never, f"t{n}", "square") for n in range(500)]
        got: list[Any] = []

        def wait_each(futures: list[DistqFuture[Any]] = futures, got: list[Any] = got) -> None:
            got.extend(future.result(10) for future in futures)

        waiter = threading.Thread(target=wait_each)
        waiter.start()
        for n, future in enumerate(futures):
            future.set_result(n)
        waiter.join(30)
        assert got == list(range(500))


def test_a_callback_added_before_the_answer_runs_once_it_comes() -> None:
    ran: list[int] = []
    future = DistqFuture[Any](_never, "t1", "square")
    future.add_done_callback(lambda f: ran.append(f.result()))
    future.set_result(9)
    assert ran == [9]
    later = DistqFuture[Any](_never, "t2", "square")
    later.set_result(16)
    later.add_done_callback(lambda f: ran.append(f.result()))  # runs at once
    assert ran == [9, 16]


def test_a_callback_added_to_a_resolved_future_runs_at_once_in_the_adding_thread() -> None:
    """As README says, and as concurrent.futures does: not on the callback thread, where
    the callbacks of futures resolved later run."""
    callbacks = Callbacks()
    ran: list[str] = []
    pending = DistqFuture[Any](_never, "t1", "square", callbacks)
    pending.add_done_callback(lambda _f: ran.append(threading.current_thread().name))
    pending.set_result(9)
    callbacks.close()
    callbacks.join(10)
    resolved = DistqFuture[Any](_never, "t2", "square", Callbacks())
    resolved.set_result(16)
    resolved.add_done_callback(lambda _f: ran.append(threading.current_thread().name))
    assert ran == ["distq-executor-callbacks", threading.current_thread().name]


def test_a_ctrl_c_in_the_wait_for_the_callbacks_leaves_them_running_and_waited_for() -> None:
    """Ctrl-C in ``shutdown()``'s wait for the done-callbacks lands in ``Thread.join``,
    which, interrupted, marks a thread still running as stopped (CPython releases the
    lock the running thread holds): ``busy()`` said False while a callback still ran,
    and the exit, which waits only for busy callback threads, cut it off."""
    import signal

    callbacks = Callbacks()
    release = threading.Event()
    future = DistqFuture[Any](_never, "t1", "square", callbacks)
    future.add_done_callback(lambda _f: release.wait(10))
    future.set_result(1)
    callbacks.close()
    main = threading.main_thread().ident
    assert main is not None
    # a SIGINT to the main thread, as Ctrl-C: _thread.interrupt_main() wakes no wait
    threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGINT)).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            callbacks.join()  # the callback runs until released: waits until the Ctrl-C
        assert callbacks.busy()  # still running: the exit waits for it
    finally:
        release.set()
        callbacks.join(5)
    assert not callbacks.busy()
