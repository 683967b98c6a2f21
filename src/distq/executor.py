"""``distq.Executor``: :class:`concurrent.futures.Executor` over distq's workers.

Submit functions the workers registered (``"mypkg.jobs:resize"``, or the function
object, sent by its ``module:name`` path) and get :class:`~concurrent.futures.Future`
objects back; ``map`` yields results in order. It is a master like ``distq master``:
one reply queue of its own, each task's first result once (:class:`~distq.collector.
Collector`), retries and dead letters on the workers, leases on the broker.

One background thread owns the transport's producer (pika is not thread-safe):
``submit``, ``map`` and ``cancel`` hand it commands through a queue, and it resolves
the futures. Their done-callbacks run on a second thread, one at a time in the order
the futures resolved, so a slow callback delays only the callbacks after it (one added
to a future already resolved runs at once, in the adding thread). With the
manager transport the executor hosts the queues, like ``distq master``: workers connect
to its ``DISTQ_MANAGER_ADDRESS`` while it is open.

What each way of waiting does:

- ``future.result(timeout)`` raises :class:`TimeoutError` naming the task when the
  result is not in after ``timeout`` seconds; the task stays submitted.
- ``task_timeout`` (seconds from submit) fails a task's future with
  :class:`~distq.errors.TaskTimeout` when its result is late; it is withdrawn from the
  queue where the transport can (see :meth:`DistqFuture.cancel`).
- A broker unreachable for ``OUTAGE_SECONDS`` (it reconnects meanwhile, and sends
  again what the broker lost) fails every unanswered future with
  :class:`~distq.errors.BrokenExecutor`; so do :meth:`Executor.close` and leaving the
  interpreter with the executor still open, or garbage-collected without
  :meth:`~Executor.shutdown` (until the exit, a collected executor still resolves its
  futures). After ``shutdown(wait=False)`` the interpreter waits at exit for the
  futures, as ``concurrent.futures`` does.

An executor belongs to the process that created it: in a child made by ``fork()``,
``submit`` and ``map`` raise :class:`~distq.errors.BrokenExecutor` at once, the futures
inherited fail with it (their done-callbacks do not run there), and a manager
executor's listening socket is closed in the child (:mod:`distq.dispatcher`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, overload

from distq import executor_threads
from distq.chunks import CHUNK_TASK, chunk_arguments
from distq.codec import Codec
from distq.config import Settings
from distq.counts import counted
from distq.dispatcher import FORKED, Dispatcher, Entry, Stop, Submit
from distq.envelope import MAX_ATTEMPTS, MOST_ATTEMPTS, Task, new_id
from distq.errors import BrokenExecutor, EnvelopeError, MessageTooLarge
from distq.executor_settings import load_settings
from distq.flagtypes import MAX_SECONDS
from distq.futures import Callbacks, DistqFuture
from distq.jsonvalue import MAX_CHUNK_DEPTH, MAX_DEPTH, check_arguments
from distq.ranges import Number, out_of_range, shown_number, whole_numbers
from distq.security import notices
from distq.tasks import bound, task_name
from distq.transport import QueueStats, open_transport

__all__ = ["DistqFuture", "Executor", "load_settings"]

_P = ParamSpec("_P")
_T = TypeVar("_T")

log = logging.getLogger(__name__)


#: How long close() waits for the executor's thread to take back what it can and close
#: the connection before it fails the unanswered futures itself (a broker that hangs).
CLOSE_WAIT_SECONDS = 2.0


#: A wait an Executor argument gives, as a flag of seconds reads it (:mod:`distq.flagtypes`):
#: greater than 0 (``task_timeout``), or 0 too (``map``'s ``timeout``).
_WAIT = Number(float, 0.0, MAX_SECONDS, " seconds", above=True)
_WAIT_OR_ZERO = Number(float, 0.0, MAX_SECONDS, " seconds")


def _seconds(name: str, value: float | None, *, zero: bool = False) -> float | None:
    """A wait in seconds an Executor argument ``name`` gives (0 too with ``zero``): None
    (or inf) for no limit. Raises ``ValueError`` for one no deadline can hold (nan, a
    negative, a bool, past :data:`~distq.flagtypes.MAX_SECONDS`): 10**400 was taken,
    then each submit raised OverflowError (``map()``: its iterator). Refused as the
    flags and variables of seconds are (:class:`~distq.ranges.Number`): "task_timeout is
    1e+300; use a number greater than 0, at most 1000000000 seconds, or None for no
    limit"."""
    if value is None or value == math.inf:  # no limit, as None says
        return None
    try:
        (_WAIT_OR_ZERO if zero else _WAIT).check(value)
    except ValueError as exc:
        raise ValueError(f"{name} {exc}, or None for no limit") from None
    return value


def _check_attempts(max_attempts: int) -> None:
    """Raise ``ValueError`` unless ``max_attempts`` is a whole number from 1 to
    :data:`~distq.envelope.MOST_ATTEMPTS`, as ``--max-attempts`` is: 10**23 was taken."""
    whole = isinstance(max_attempts, int) and not isinstance(max_attempts, bool)
    if not (whole and 1 <= max_attempts <= MOST_ATTEMPTS):
        shown = shown_number(max_attempts) if whole else f"{max_attempts!r:.40}"
        raise ValueError(f"max_attempts {out_of_range(shown, whole_numbers(1, MOST_ATTEMPTS))}")


class Executor(concurrent.futures.Executor):
    """Runs registered tasks on distq workers, over the transport the settings name.

    ``settings``: a :class:`~distq.config.Settings`; by default read from the same
    ``DISTQ_*`` environment as the ``distq`` command. Keyword ``overrides`` set single
    settings by field name (``transport="redis"``, ``redis_url="redis://..."``,
    ``queue="images"``); a string is parsed like its environment variable.
    ``max_attempts`` is each task's number of attempts before it fails for good;
    ``task_timeout`` fails a task's future with :class:`~distq.errors.TaskTimeout` when
    it has no result that many seconds after submit (default: no limit).
    ``host`` (manager transport only): True hosts the queues in this process (workers
    connect to it); False connects to the master that hosts them, as ``distq submit``
    does.

    Raises :class:`~distq.errors.ConfigError` for a bad setting and
    :class:`~distq.errors.ConnectionFailed` when the broker cannot be reached.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        max_attempts: int = MAX_ATTEMPTS,
        task_timeout: float | None = None,
        host: bool = True,
        **overrides: Any,
    ) -> None:
        _check_attempts(max_attempts)
        task_timeout = _seconds("task_timeout", task_timeout)
        self.settings = load_settings(settings, overrides, os.environ)
        self.max_attempts, self.task_timeout = max_attempts, task_timeout
        # before the transport opens: a setting it refuses (a Settings field of another
        # type) left the transport open, a manager's address bound for good
        self._codec = Codec.from_settings(self.settings)  # signs tasks, checks results
        self._transport = open_transport(self.settings, "master" if host else "worker")
        if host and self._transport.queues_in_master:  # hosting them, as `distq master` does
            for level, line in notices(self.settings, "master"):
                if level == "warning":  # the info lines are a command's start, not a library's
                    log.warning("%s", line)
        try:
            self.reply_to = self._transport.reply_queue(new_id())
            producer = self._transport.producer(self.reply_to)
        except BaseException:
            self._transport.close()
            raise
        self._callbacks = Callbacks()
        self._dispatcher = Dispatcher(self._transport, producer, self._codec, self._callbacks)
        # reentrant: a signal handler's close() runs on the thread it interrupted, maybe
        # in _submit's locked blocks (a plain lock blocked it there for good)
        self._lock = threading.RLock()
        self._shutdown = False
        # close() gave up on its thread, stuck in a call to a broker that does not answer
        # (its futures failed): no shutdown() waits for it, it ends when back
        self._left = False
        executor_threads.started(self._dispatcher)
        try:
            self._dispatcher.start()
        except BaseException:  # "can't start new thread": nothing runs to close them
            executor_threads.running.discard(self._dispatcher)
            with contextlib.suppress(Exception):
                producer.close()
            self._transport.close()
            raise
        # forgotten without shutdown(): stop once the futures are answered; at interpreter
        # exit it is still "open" (its futures fail), not waited for without end
        # (without the dispatcher's lock: the collector may run it in a thread holding it)
        finalizer = weakref.finalize(self, self._dispatcher.stop_soon)
        finalizer.atexit = False

    def describe(self) -> str:
        """The transport and where it is, as ``distq master`` names them."""
        return self._transport.describe()

    def stats(self) -> QueueStats:
        """The task queue's counts: ready, in flight, dead, attached worker slots."""
        if not self._dispatcher.is_alive():
            why = self._dispatcher.broken or "the executor has stopped"
            raise RuntimeError(f"{why}; its connection is closed: make a new Executor")
        return self._transport.stats()

    @overload
    def submit(
        self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> DistqFuture[_T]: ...

    @overload
    def submit(self, fn: str, /, *args: Any, **kwargs: Any) -> DistqFuture[Any]: ...

    def submit(
        self, fn: str | Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> DistqFuture[Any]:
        """Send one call of ``fn`` (a task name or a module-level function, or a
        ``functools.partial`` of one: its arguments go first) to the workers.

        Typed as the standard library's: a function's arguments are checked and its
        future is of its return type (a name's, ``DistqFuture[Any]``).

        Raises ``TypeError`` naming the argument when one is not a JSON value, and
        :class:`~distq.errors.MessageTooLarge` when the task would exceed
        ``DISTQ_MAX_MESSAGE_BYTES``, before anything is sent; ``RuntimeError`` after
        :meth:`shutdown`; :class:`~distq.errors.BrokenExecutor` once the executor has
        stopped (a lost broker) and in a child made by ``fork()``.
        """
        fn, before, keywords = bound(fn)
        name = task_name(fn)
        args, kwargs = (*before, *args), {**keywords, **kwargs}
        check_arguments(name, args, kwargs)
        return self._submit([(name, list(args), kwargs, name)])[0]

    @overload
    def map(
        self,
        fn: Callable[..., _T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Generator[_T, None, None]: ...

    @overload
    def map(
        self,
        fn: str,
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Generator[Any, None, None]: ...

    def map(
        self,
        fn: str | Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Generator[Any, None, None]:
        """``fn`` over the arguments from ``iterables``, results in order.

        Every call is checked and submitted now (``TypeError`` before anything is sent if
        an argument is not a JSON value; ``RuntimeError`` after :meth:`shutdown`, unless
        there is no call: then, as the standard library's, an empty iterator); the
        iterator raises the first remote error in order, and ``TimeoutError`` when a
        result is not in ``timeout`` seconds after this call. ``chunksize`` > 1 sends
        that many calls as one task (a chunk): fewer messages, but a failing call fails
        (and retries) its whole chunk, and its calls take no keywords (``TypeError`` for
        a ``functools.partial`` that binds some). Leaving the iterator early cancels the
        tasks not answered yet; one never advanced (closed or dropped before its first
        ``next()``) cancels nothing.
        """
        if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be >= 1, not {chunksize!r:.40}; use a whole number")
        timeout = _seconds("timeout", timeout, zero=True)
        end = None if timeout is None else time.monotonic() + timeout
        fn, before, keywords = bound(fn)
        name = task_name(fn)
        if keywords and chunksize > 1:
            raise TypeError(
                f"map() of {name} with chunksize={chunksize}: a chunk's calls take no "
                f"keywords, and the partial binds {', '.join(keywords)}; bind them "
                "positionally, or pass chunksize=1"
            )
        calls = [[*before, *args] for args in zip(*iterables, strict=False)]
        depth = MAX_DEPTH if chunksize == 1 else MAX_CHUNK_DEPTH  # a chunk nests 2 more
        for number, call in enumerate(calls, 1):
            try:
                check_arguments(name, call, keywords, depth)
            except TypeError as exc:
                raise TypeError(f"call {number} of map(): {exc}") from None
        if chunksize == 1:
            futures = self._submit(
                [(name, call, dict(keywords), name) for call in calls], mapped=True
            )
            return self._results(futures, timeout, end, None)
        chunks = [calls[i : i + chunksize] for i in range(0, len(calls), chunksize)]
        try:
            futures = self._submit(
                [
                    (
                        CHUNK_TASK,
                        chunk_arguments(name, chunk),
                        {},
                        f"{name} (chunk of {len(chunk)})",
                    )
                    for chunk in chunks
                ]
            )
        except MessageTooLarge as exc:  # it named a chunk task never sent, not the fix
            why = str(exc).partition("cannot be submitted: ")[2].partition("; ")[0]
            raise MessageTooLarge(
                f"map() of {name} with chunksize={chunksize}: a chunk of its calls would "
                f"be too large to send ({why.removeprefix('task ')}); nothing was sent: "
                "pass a smaller chunksize, or large data by reference"
            ) from None
        return self._results(futures, timeout, end, [len(chunk) for chunk in chunks])

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more submissions; once every future is resolved, close the connection.

        ``cancel_futures`` cancels every future whose task can still be cancelled (see
        :meth:`DistqFuture.cancel`); ``wait`` returns only when the rest are resolved
        (set ``task_timeout`` to bound that), their done-callbacks have run and the
        connection is closed (with a broker that does not answer, every future resolved,
        after 2 s more: the executor's thread closes it once its call times out). Without
        ``wait``, the interpreter waits for them at exit.
        """
        if self._dispatcher.forked():
            return  # the parent's: nothing to stop here (see close)
        with self._lock:
            first, self._shutdown = not self._shutdown, True
        try:
            if first or cancel_futures:
                self._dispatcher.put(Stop(cancel_futures))  # marks it finishing
            if wait:
                self._join()
        except KeyboardInterrupt:
            # Ctrl-C (the end of a ``with`` block, no worker): the exit no longer waits
            # for the results either, and fails the unanswered futures as for an
            # executor left open; until then it answers what it can. The exit waited
            # for them as after a shutdown(wait=False), for good, until a second Ctrl-C,
            # the futures still pending; caught in the wait only, a Ctrl-C as the Stop
            # was handed over (before the wait) still left it so
            if wait:
                self._dispatcher.finishing = False
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        """The end of a ``with`` block: :meth:`shutdown`, waiting, as
        ``concurrent.futures`` does; after a Ctrl-C in the block or in that wait,
        :meth:`close`: the user stopped it, so what can be is withdrawn and the rest fails
        with :class:`~distq.errors.BrokenExecutor` now, as ``distq submit --wait`` does on
        a Ctrl-C. It waited for results no worker might ever give, until a second
        Ctrl-C; and a program that caught the first (a REPL, a notebook) kept it open,
        its futures pending and, on manager, its address taken."""
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self.close()
            return
        try:
            self.shutdown(wait=True)
        except KeyboardInterrupt:
            self.close()
            raise

    def close(self, *, cancel_futures: bool = True) -> None:
        """Stop now: cancel what can be cancelled, fail every other unanswered future with
        :class:`~distq.errors.BrokenExecutor`, close the connection, then return.

        For a program that must not wait for results any longer (a signal, a deadline of
        its own); :meth:`shutdown` waits for them. ``cancel_futures=False`` leaves the
        tasks sent on the queue (``distq submit --wait`` past its ``--timeout``); with
        nobody waiting, a worker that reaches one dead-letters it unrun ("its master is
        gone"), as it does any task whose master went away. With a broker that does not
        answer (stopped, cut off), it returns after :data:`CLOSE_WAIT_SECONDS`, every
        unanswered future failed; the executor's thread closes the connection once its
        call times out (a :meth:`shutdown` after it or waiting meanwhile, the end of a
        ``with`` block, does not wait for that).
        """
        if self._dispatcher.forked():
            # the parent's: its futures failed at the fork. Not its lock: a thread of the
            # parent that held it at the fork never releases it here (1 child in 30 hung
            # in shutdown(), or at the end of a ``with`` block, exec18)
            return
        with self._lock:
            self._shutdown = True
        why = "the executor was closed"
        self._dispatcher.put(Stop(cancel_futures, abandon=why))
        # not again for a thread a close() gave up on: its futures are failed (a second
        # close() waited CLOSE_WAIT_SECONDS more for the same hung call)
        if threading.current_thread() is not self._dispatcher and not self._left:
            # in a call to a broker that does not answer, its thread's unanswered futures
            # fail from here, as at exit: the thread's call, its reconnect and its last
            # calls each waited out a timeout (a stopped Redis: 20 s for close(),
            # documented to stop at once); it ends when back
            deadline = time.monotonic() + CLOSE_WAIT_SECONDS
            executor_threads.join_or_fail([self._dispatcher], deadline, why)
            self._left = self._dispatcher.is_alive()
            if self._left:  # nor the exit: after a shutdown(wait=False) it waited for the
                # thread to finish (about 45 s), as for one with futures to answer
                self._dispatcher.finishing = False
        self._callbacks.join()

    def _join(self) -> None:
        """Wait for the executor's thread to end, then for the callbacks it handed on
        (not from one of those threads: a callback may shut its executor down). Not for
        a thread close() gave up on, before this wait or during it (a close() on another
        thread, bounding it): each waited for it, retrying a hung broker, about 45 s.
        A Ctrl-C here: see :meth:`shutdown`."""
        # every future resolved, the thread in a call to a broker that does not answer:
        # left as close() leaves it (20 s with a hung Redis, task_timeout=1)
        if threading.current_thread() is not self._dispatcher and (
            executor_threads.join_finishing(self._dispatcher, lambda: self._left)
        ):
            self._left = True
        self._callbacks.join()

    def _submit(
        self,
        calls: Sequence[tuple[str, list[Any], Mapping[str, Any], str]],
        mapped: bool = False,
    ) -> list[DistqFuture[Any]]:
        """Futures for ``calls`` (name, arguments, keywords, the name shown), all sent or
        none; ``mapped``: a task too large is named as ``map()``'s call N, not by the id
        of a task never sent."""
        if self._dispatcher.forked():
            raise BrokenExecutor(FORKED)
        with self._lock:
            # none to schedule, none refused: a map() of nothing after shutdown() is empty,
            # as concurrent.futures' is (its map submits nothing)
            if self._shutdown and calls:
                raise RuntimeError("cannot schedule new futures after shutdown")
        now = time.monotonic()
        deadline = None if self.task_timeout is None else now + self.task_timeout
        cancel = self._dispatcher.cancel  # one bound method for all, not one per future
        entries = []
        for number, (name, args, kwargs, shown) in enumerate(calls, 1):
            task = Task(
                name=name,
                args=args,
                kwargs=dict(kwargs),
                reply_to=self.reply_to,
                max_attempts=self.max_attempts,
            )
            try:
                sealed = self._codec.seal_task(task)
            except MessageTooLarge as exc:
                if not mapped:
                    raise
                why = str(exc).partition("cannot be submitted: ")[2]
                raise type(exc)(
                    f"map() of {shown}: call {number} cannot be submitted: {why}; nothing was sent"
                ) from None
            future: DistqFuture[Any]
            future = DistqFuture(cancel, task.id, shown, self._callbacks)
            entries.append(Entry(task, sealed, future, deadline))
        # checked again and handed on under the lock: a shutdown() either comes first
        # (RuntimeError) or after, and then its Stop is queued behind these tasks
        with self._lock:
            if self._shutdown and entries:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if entries and not self._dispatcher.put(Submit(entries)):
                error = BrokenExecutor(self._dispatcher.broken or "the executor has stopped")
                raise error from self._dispatcher.broken_by
        return [entry.future for entry in entries]

    def _results(
        self,
        futures: list[DistqFuture[Any]],
        timeout: float | None,
        end: float | None,
        chunks: list[int] | None,
    ) -> Generator[Any, None, None]:
        """Each future's result in order (a chunk's: its list, one by one); past ``end``
        (``timeout`` s after the map() call), ``TimeoutError``."""
        futures.reverse()  # pop() from the end: each future is dropped once yielded
        sizes = list(reversed(chunks)) if chunks is not None else None
        try:
            while futures:
                future = futures[-1]
                if end is None:
                    value = future.result()
                else:
                    try:
                        value = future.result(max(0.0, end - time.monotonic()))
                    except TimeoutError as exc:
                        # the task's own error, a TaskTimeout; not the wait's, though a
                        # result came in as it ended (it lacked "map(): ")
                        done = future.done() and not future.cancelled()
                        if done and future.exception(0) is exc:
                            raise
                        raise TimeoutError(f"map(): {future.waiting(timeout)}") from None
                futures.pop()
                if sizes is None:
                    yield value
                    continue
                size = sizes.pop()
                if not isinstance(value, list) or len(value) != size:
                    raise EnvelopeError(
                        f"{future.task_name} [{future.task_id}] returned {value!r:.200}, "
                        f"not a list of {counted(size, 'result')}"
                    )
                yield from value
        finally:
            if futures:  # maybe in a finalizer, in a thread holding the executor's lock
                self._dispatcher.cancel_soon(futures)
