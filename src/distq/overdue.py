"""Futures past their ``task_timeout`` that the executor's thread could not fail in time.

The executor's thread fails a future at its deadline itself (:mod:`distq.dispatcher`),
unless it is stuck in a call to a broker that does not answer. :class:`Overdue` is the
watchdog for that case: a thread of its own that fails such futures shortly after their
deadline, whatever the executor's thread is doing.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import heapq
import itertools
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from distq.errors import TaskTimeout
from distq.futures import DistqFuture

if TYPE_CHECKING:
    from distq.dispatcher import Entry

#: Deadlines of answered tasks are dropped once a heap holds more than this many and
#: more than twice the open tasks (:class:`Overdue`'s, and the executor thread's:
#: :meth:`distq.dispatcher.Dispatcher._prune_deadlines`).
DEADLINES_KEPT = 1024


def time_out(future: DistqFuture[Any], why: str) -> None:
    """Fail ``future`` with :class:`TaskTimeout` saying ``why``; one already resolved (by
    :class:`Overdue`, a cancel) stays as it is."""
    if future.done():
        return
    waited = time.monotonic() - future.submitted
    with contextlib.suppress(concurrent.futures.InvalidStateError):  # resolved meanwhile
        future.set_exception(
            TaskTimeout(
                f"task {future.task_name} [{future.task_id}] had no result after "
                f"{waited:.1f} s (task_timeout): {why}"
            )
        )


#: How long after its deadline :class:`Overdue` fails a future the executor's thread has
#: not failed: that thread is then stuck in a broker call.
OVERDUE_GRACE = 0.5


class Overdue:
    """Fails the futures past their ``task_timeout`` that the executor's thread did not
    fail :data:`OVERDUE_GRACE` s after it, from a thread of its own (started with the
    first deadline): the executor's thread is stuck in a call to a broker that does not
    answer (stopped, a lost network), which blocks up to a socket timeout per call, and
    several in a row while it reconnects; a 4 s ``task_timeout`` fired after 13 s (exec16).

    A task not sent yet is taken back first, under the executor's lock, as a cancel()
    takes it (so the thread never sends it); one sent is failed as not withdrawn, and the
    thread withdraws it once it can. It holds each future by a weak reference (an
    answered one the caller dropped, with its result, is not kept until its deadline:
    1.5 GB of 1 MB results, diff16), and drops the deadlines of answered tasks as the
    heap grows (at most twice those still pending, and :data:`DEADLINES_KEPT`).
    """

    def __init__(self, lock: threading.Lock | threading.RLock, not_sent: set[str]) -> None:
        self._changed = threading.Condition(lock)
        self._not_sent = not_sent
        self._heap: list[tuple[float, int, weakref.ref[DistqFuture[Any]]]] = []
        self._count = itertools.count()
        self._kept = DEADLINES_KEPT
        self._thread: threading.Thread | None = None
        self._ended = False

    def watch(self, entry: Entry) -> None:
        """Watch ``entry`` (which has a deadline); the caller holds the executor's lock."""
        assert entry.deadline is not None
        item = (entry.deadline + OVERDUE_GRACE, next(self._count), weakref.ref(entry.future))
        heapq.heappush(self._heap, item)
        if len(self._heap) > 2 * self._kept:
            self._heap = [item for item in self._heap if _pending(item[2])]
            heapq.heapify(self._heap)
            self._kept = max(DEADLINES_KEPT, len(self._heap))
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="distq-executor-deadlines", daemon=True
            )
            self._thread.start()
        elif self._heap[0][2] is item[2]:  # sooner than the one it waits for
            self._changed.notify()

    def end(self) -> None:
        """Stop watching (the executor's thread has ended); the caller holds the lock."""
        self._ended = True
        self._changed.notify()

    def _run(self) -> None:
        while True:
            overdue: list[tuple[DistqFuture[Any], bool]] = []
            with self._changed:
                while True:
                    if self._ended:
                        return
                    now = time.monotonic()
                    while self._heap and self._heap[0][0] <= now:
                        future = heapq.heappop(self._heap)[2]()
                        if future is not None and not future.done():
                            unsent = future.task_id in self._not_sent
                            self._not_sent.discard(future.task_id)
                            overdue.append((future, unsent))
                    if overdue:
                        break
                    # at most TIMEOUT_MAX: a deadline days away (task_timeout=1e10)
                    # overflowed the wait, and the thread died (input17)
                    wait = (
                        min(self._heap[0][0] - now, threading.TIMEOUT_MAX) if self._heap else None
                    )
                    self._changed.wait(wait)
            # outside the lock: callbacks run here. Why the executor's thread did not fail
            # them itself is not known here: a long backlog to send, or a broker that does
            # not answer (diff16: "does not answer" of a healthy one)
            for future, unsent in overdue:
                time_out(
                    future,
                    "it was never sent: the executor was still sending earlier tasks, or "
                    "waiting on a broker that does not answer"
                    if unsent
                    else "the executor could not withdraw it in time (a broker that does not "
                    "answer, or a backlog): it may still run; its result will be ignored",
                )


def _pending(future: weakref.ref[DistqFuture[Any]]) -> bool:
    """Whether the future behind ``future`` is still there and unresolved."""
    alive = future()
    return alive is not None and not alive.done()
