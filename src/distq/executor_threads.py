"""Every executor's thread in this process, and what fork() and the interpreter's exit do
with them.

:mod:`distq.dispatcher` is one executor's thread; this module is the process-wide part:
which of those threads still run, the done-callbacks of those that ended, and the two
hooks the process runs once for all of them. In a child made by fork() no executor thread
exists, so each inherited executor refuses work and its futures fail
(:meth:`Dispatcher.fork_in_child <distq.dispatcher.Dispatcher.fork_in_child>`). At the
interpreter's exit an executor told to finish is waited for, as ``concurrent.futures``
waits for pending futures; any other is stopped without waiting for results.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distq.dispatcher import Dispatcher
    from distq.futures import Callbacks

log = logging.getLogger("distq.executor")

#: Executors' threads still running. At interpreter exit, one told to finish (shutdown
#: with wait=False) is waited for, as concurrent.futures waits for pending futures; any
#: other (open, or collected without shutdown) handles the commands it has (a shutdown's
#: cancel_futures, say), then stops without waiting for results.
running: set[Dispatcher] = set()
#: The done-callbacks of executors whose thread has ended (collected without shutdown,
#: or broken by a lost broker): the exit waits for them as for those of open ones. They
#: were cut off: their thread is a daemon, and the exit waited only for executors still
#: running (exec18).
ended_callbacks: set[Callbacks] = set()
ENDED_LOCK = threading.Lock()

#: Why an executor still open at the interpreter's exit stops.
AT_EXIT = "the interpreter is exiting with the executor still open"


def started(dispatcher: Dispatcher) -> None:
    """``dispatcher``'s thread is starting: the exit hook stops or waits for it."""
    running.add(dispatcher)


def ended(dispatcher: Dispatcher) -> None:
    """``dispatcher``'s thread has ended: the exit waits for its done-callbacks still."""
    with ENDED_LOCK:  # the exit waits for their callbacks too (see _stop_at_exit)
        ended_callbacks.difference_update([c for c in ended_callbacks if not c.busy()])
        ended_callbacks.add(dispatcher.callbacks)
    running.discard(dispatcher)


#: How often a wait for an executor's thread told to finish looks whether every future is
#: resolved; then it waits for the thread (closing its connection) :data:`FINISH_GRACE`
#: seconds more, as close() does.
ANSWERED_LOOK_SECONDS = 1.0
FINISH_GRACE = 2.0
#: How often that wait (a shutdown(wait=True)) looks whether a close() meanwhile gave
#: the thread up.
JOIN_SLICE_SECONDS = 0.1


def join_finishing(dispatcher: Dispatcher, gone: Callable[[], bool] = lambda: False) -> bool:
    """Wait for ``dispatcher``'s thread, told to finish, to end (until ``gone()``: a
    close() gave it up meanwhile). Once every future is resolved (a task_timeout answers
    them while the thread waits on a broker that does not answer), at most
    :data:`FINISH_GRACE` s more; then leave it, as close() does: it takes no more
    commands and closes its connection once its call returns. True when left so. It
    waited for the thread's read, reconnect and last calls, each timing out: 20 s with
    a stopped Redis and task_timeout=1, in shutdown() and at the exit after
    shutdown(wait=False). Not from the thread itself."""
    answered_at: float | None = None  # when every future was found resolved
    looked = time.monotonic()
    while not gone() and dispatcher.is_alive():
        dispatcher.join(JOIN_SLICE_SECONDS)
        now = time.monotonic()
        if answered_at is None:
            if now - looked >= ANSWERED_LOOK_SECONDS:
                looked = now
                try:
                    answered = all(future.done() for future in dispatcher.futures)
                except RuntimeError:  # a Submit queued before the shutdown added one
                    answered = False
                if answered:
                    answered_at = now
        elif now - answered_at >= FINISH_GRACE and dispatcher.is_alive():
            dispatcher.fail_stuck("the executor was shut down, its broker not answering")
            dispatcher.finishing = False  # nor the exit: it is left
            return True
    return False


def join_or_fail(stopping: Sequence[Dispatcher], deadline: float, why: str) -> list[int]:
    """Wait until ``deadline`` (``time.monotonic()``, for all of them at once) for the
    threads of ``stopping``, each told to stop; then fail the unanswered futures of each
    still in a broker call (a broker that hangs), saying ``why``, its broker not
    answering. How many futures each failed (0: its thread ended). For
    :meth:`Executor.close <distq.executor.Executor.close>` and the exit."""
    for dispatcher in stopping:
        dispatcher.join(timeout=max(0.0, deadline - time.monotonic()))
    return [
        dispatcher.fail_stuck(f"{why}, its broker not answering") if dispatcher.is_alive() else 0
        for dispatcher in stopping
    ]


def _after_fork_in_child() -> None:
    """In a child made by fork(), where no executor thread exists: each executor refuses
    work and its inherited futures fail (:meth:`Dispatcher.fork_in_child`)."""
    global ENDED_LOCK
    ENDED_LOCK = threading.Lock()  # a parent thread may have held it at the fork
    for callbacks in ended_callbacks:  # the parent's: their thread does not exist here
        callbacks.forked()  # not busy: a close() here waited for it for good
    ended_callbacks.clear()
    for dispatcher in list(running):
        dispatcher.fork_in_child()
    running.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _stop_at_exit() -> None:
    stopping: list[Dispatcher] = []
    for dispatcher in list(running):
        if dispatcher.finishing:
            join_finishing(dispatcher)
            dispatcher.callbacks.join()
            continue
        if dispatcher.stop_at_exit(AT_EXIT):
            stopping.append(dispatcher)
    deadline = time.monotonic() + 5  # for all of them at once, not 5 s each
    for failed in join_or_fail(stopping, deadline, AT_EXIT):
        if failed:
            log.warning(
                "the executor's thread was still waiting for the broker at exit: "
                "%d unanswered futures failed without it",
                failed,
            )
    for dispatcher in stopping:
        dispatcher.callbacks.join(timeout=max(0.0, deadline + 5 - time.monotonic()))
    with ENDED_LOCK:
        ended = list(ended_callbacks)
    for callbacks in ended:
        callbacks.join(timeout=max(0.0, deadline + 5 - time.monotonic()))
