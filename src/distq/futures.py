"""The futures an executor hands out: one per task, cancelled through the executor.

Their done-callbacks run on a thread of their own (:class:`Callbacks`, one per
executor), not on the executor's thread that resolves them: a slow callback then holds
up only the callbacks after it, never the results, the broker connection or the
master's registration that keeps its tasks alive.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING
from typing import Any, TypeVar

from distq.flagtypes import MAX_SECONDS

log = logging.getLogger("distq.executor")

#: Cancels futures where possible, one answer each (the executor's thread decides);
#: False: without waiting for the broker, answered False where it would be asked.
Cancel = Callable[[list["DistqFuture[Any]"], bool], list[bool]]
_T = TypeVar("_T")
#: What a worker's refusal of a task for its signature says when both sides' keys are
#: alike (errors.BadSignature, errors.OldSignature, errors.NewerSignature): no keys to
#: give, another fix.
_KEYS_ALIKE = ("has a bad signature for key id", "signed by an older distq", "a newer distq writes")
#: The states in which ``done()`` is true.
_DONE = frozenset({CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED})


def _in_event_loop() -> bool:
    """Whether this thread runs an asyncio event loop (not imported: none)."""
    asyncio = sys.modules.get("asyncio")
    return asyncio is not None and asyncio._get_running_loop() is not None


def _making_lock() -> None:
    """A new lock that makes futures' Conditions: at import, and in a child made by
    fork() (a thread of the parent may have held the parent's at the fork)."""
    global _MAKING
    _MAKING = threading.RLock()  # reentrant: see Callbacks._lock


_MAKING: threading.RLock
_making_lock()
os.register_at_fork(after_in_child=_making_lock)


def _wait_limit(timeout: float | None) -> float | None:
    """What a lock's wait takes for ``result(timeout)``'s: None (no limit) for a wait past
    :data:`~distq.flagtypes.MAX_SECONDS` (inf, 1e300 raised OverflowError from the
    lock, as the standard library's futures do). A negative is no wait, as there;
    nan (no wait there) raises ``ValueError``."""
    if timeout is None or timeout > MAX_SECONDS:
        return None
    if timeout != timeout:
        raise ValueError(
            "timeout is nan; use seconds (0 or less: no wait), or None to wait until the "
            "task's result is in"
        )
    return timeout


class Callbacks:
    """Runs the done-callbacks of an executor's futures, one future at a time, in the
    order they resolved, on a thread started at the first callback and ended by
    :meth:`close` once every callback handed to it has run."""

    def __init__(self) -> None:
        # reentrant: a signal handler's Executor.close() fails futures on the thread it
        # interrupted, maybe here (a cancel() resolving one)
        self._lock = threading.RLock()
        self._queue: queue.SimpleQueue[DistqFuture[Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        # set as the thread ends: busy() and join() read it, not the thread (see join)
        self._finished = threading.Event()

    def put(self, future: DistqFuture[Any]) -> None:
        """Run ``future``'s callbacks on the thread (here, after :meth:`close`)."""
        with self._lock:
            if not self._closed:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="distq-executor-callbacks", daemon=True
                    )
                    self._thread.start()
                self._queue.put(future)
                return
        future.run_callbacks()  # the thread is gone: run them in the resolving thread

    def close(self) -> None:
        """No more callbacks to come: the thread ends after the ones it has."""
        with self._lock:
            self._closed = True
            if self._thread is not None:
                self._queue.put(None)

    def busy(self) -> bool:
        """Whether its thread still runs (callbacks to run, or :meth:`close` not called)."""
        return self._thread is not None and not self._finished.is_set()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the callbacks handed over so far (from another thread than theirs).

        On an event the thread sets as it ends, not ``Thread.join``: interrupted (Ctrl-C
        in a shutdown's wait), that marks a thread still running as stopped (CPython
        releases the lock the running thread holds), and the exit, which waits for busy
        callback threads only, cut off the callbacks still to run."""
        thread = self._thread
        mine = thread is threading.current_thread()
        if thread is not None and not mine and self._finished.wait(timeout):
            thread.join()  # past its last callback: it ends at once

    def forked(self) -> None:
        """In a child made by fork(), where its thread does not exist: not busy."""
        self._finished = threading.Event()  # a new one: a parent's thread may hold its lock
        self._finished.set()

    def _run(self) -> None:
        try:
            while (future := self._queue.get()) is not None:
                future.run_callbacks()
        finally:
            self._finished.set()


class DistqFuture(concurrent.futures.Future[_T]):
    """A :class:`concurrent.futures.Future` for one distq task.

    Generic in the result's type as the standard library's futures are:
    ``submit(square, 3)`` of a ``def square(n: int) -> int`` is a ``DistqFuture[int]``
    to a type checker (a result comes back as its JSON value: a tuple as a list).
    ``task_id`` and ``task_name`` name the task. The future stays pending until the
    task's result arrives (``running()`` is never true: a worker does not say when it
    starts). ``result(timeout)`` and ``exception(timeout)`` raise :class:`TimeoutError`
    with a message naming the task. Done-callbacks run on ``callbacks``' thread.
    """

    #: what an unsigned answer for it said, dropped (:class:`~distq.errors.UnverifiedRefusal`)
    refused: str | None = None

    def __init__(
        self, cancel: Cancel, task_id: str, name: str, callbacks: Callbacks | None = None
    ) -> None:
        # Future.__init__'s attributes, but its Condition (see _condition)
        self._made: threading.Condition | None = None
        self._state, self._result, self._exception = PENDING, None, None
        self._waiters: list[Any] = []
        self._done_callbacks: list[Callable[[concurrent.futures.Future[_T]], object]] = []
        self.task_id, self.task_name = task_id, name
        self.submitted = time.monotonic()
        self._cancel = cancel
        self._callbacks = callbacks

    @property
    def _condition(self) -> threading.Condition:
        """The Condition ``Future``'s methods lock and wait on, made when one first asks
        for it (a wait, a callback added, a cancel), not with the future: a future waiting
        for its task holds none, and one answered before anyone waits on it never makes
        one (:meth:`_resolved_alone`). A Condition is eight objects the garbage
        collector tracks (an RLock, a deque, five bound methods); made with each future,
        the full collections while a 50,000-task ``map()`` waited took about 13 µs per
        task, half of the executor's CPU per task.
        """
        made = self._made
        if made is None:
            with _MAKING:
                made = self._made
                if made is None:
                    made = self._made = threading.Condition()
        return made

    @_condition.setter
    def _condition(self, condition: threading.Condition) -> None:
        self._made = condition

    def set_result(self, result: _T) -> None:
        if not self._resolved_alone(result, None):
            super().set_result(result)

    def set_exception(self, exception: BaseException | None) -> None:
        if not self._resolved_alone(None, exception):
            super().set_exception(exception)

    def _resolved_alone(self, result: _T | None, exception: BaseException | None) -> bool:
        """Resolve the future without a Condition if none was made yet: then no thread
        waits on it, and no waiter nor done-callback was added (each takes it first).
        False: one was made, and ``Future`` resolves the future its own way."""
        if self._made is not None:
            return False
        with _MAKING:  # nobody makes one meanwhile
            if self._made is not None:
                return False
            if self._state in _DONE:  # as Future says it, but for its repr, which locks
                raise concurrent.futures.InvalidStateError(
                    f"{self._state}: task {self.task_name} [{self.task_id}]"
                )
            self._result, self._exception = result, exception
            self._state = FINISHED
        return True

    def done(self) -> bool:
        """Whether the future is resolved or cancelled: its state read as it is, without
        making its Condition (the executor's thread asks each future before resolving it)."""
        return self._state in _DONE

    def _invoke_callbacks(self) -> None:
        """Hand the callbacks to the executor's callback thread (Future calls this once
        it is done); none: nothing to do, no thread involved."""
        if self._done_callbacks:
            if self._callbacks is None:
                self.run_callbacks()
            else:
                self._callbacks.put(self)

    def run_callbacks(self) -> None:
        """Call the done-callbacks, in the order added; one that raises, even
        ``SystemExit``, is logged and the others run (the standard library's catch
        ``Exception`` only: a ``sys.exit()`` in one ended the callback thread, silently,
        and no later callback of the executor ran)."""
        for callback in self._done_callbacks:
            try:
                callback(self)
            except BaseException:
                log.exception(
                    "a done-callback of task %s [%s] raised", self.task_name, self.task_id
                )

    def fail_inherited(self, error: BaseException) -> None:
        """In a child made by fork(): fail this future of the parent's executor, if it is
        pending. Its waiters and done-callbacks are the parent's: none is run here. A
        lock a thread of the parent held at the fork would never be released: the future
        gets a new one (the child has no other thread). It was skipped, and every
        ``done()`` or ``result()`` on it in the child blocked for ever (exec18)."""
        condition = self._condition
        if not condition.acquire(blocking=False):
            condition = self._condition = threading.Condition()
            condition.acquire()
        try:
            if not self.done():
                self._waiters.clear()
                self._done_callbacks.clear()
                self.set_exception(error)
        finally:
            condition.release()

    def cancel(self) -> bool:
        """Cancel the task if it has not started; True if the future is now cancelled.

        Manager and Redis take the task back out of the ready queue, or its retry after a
        failed attempt, queued again or waiting out its delay: True means it will never
        run (again); False means a worker has it already, or had it (queued again after
        its worker stalled past the lease, or handed it back: that copy may still run).
        RabbitMQ cannot take a message back out of a queue, so there cancel() returns
        False unless the task was not sent yet. A task not yet sent is never sent.

        In the thread of a running asyncio event loop (``asyncio.wrap_future``'s future
        cancelled) it does not wait for the broker: a task sent is withdrawn meanwhile,
        False now, and the future cancelled once it is withdrawn. It waited there for the
        executor's thread, and every coroutine with it (12 s against a stopped Redis).
        """
        if self.done():
            return self.cancelled()
        return self._cancel([self], not _in_event_loop())[0]

    def result(self, timeout: float | None = None) -> _T:
        if self._state == FINISHED and self._exception is None:  # no lock to take
            return self._result  # type: ignore[return-value]
        try:
            return super().result(_wait_limit(timeout))
        except TimeoutError as exc:
            # the wait's, not the task's own (a TaskTimeout): named, though its result
            # came in as the wait ended (the standard library's bare one named nothing)
            if exc is not self._exception:
                raise TimeoutError(self.waiting(timeout)) from None
            raise

    def exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            return super().exception(_wait_limit(timeout))
        except TimeoutError:  # only the wait's: the task's own error is returned
            raise TimeoutError(self.waiting(timeout)) from None

    @property
    def refused_with_keys_alike(self) -> bool:
        """The answer that refused it says the keys are not what differs: its signature
        was bad for a key the worker holds (signed for another queue, altered, forged)
        or of an older or a newer distq. False when no answer refused it."""
        return self.refused is not None and any(said in self.refused for said in _KEYS_ALIKE)

    def waiting(self, timeout: float | None) -> str:
        """Why a wait of ``timeout`` s for this future ended without its result."""
        age = time.monotonic() - self.submitted
        refused = (
            "it came back unsigned, refused by a worker for its signature, as that answer "
            "says (dropped: a result must be signed with this process's keys)"
        )
        why = (
            "it is queued, running or retrying; is a worker running with it registered? "
            "(`distq status` shows ready tasks and attached workers)"
            if self.refused is None
            else f"{refused}; the keys are alike: it was signed for another queue, altered "
            "or forged, or by an older distq, and that answer says what runs it"
            if self.refused_with_keys_alike
            else f"{refused}; give the workers and this process the same DISTQ_SIGNING_KEYS"
        )
        return (
            f"no result for task {self.task_name} [{self.task_id}] after waiting "
            f"{max(timeout or 0, 0):.1f} s ({age:.1f} s since it was submitted): {why}"
        )
