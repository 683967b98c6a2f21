"""Batches of tasks in a worker slot: how many to fetch, and how one runs.

A slot fetches about ``TARGET_BATCH_SECONDS`` of work at once (:class:`BatchSizer`):
enough tasks per broker round trip for throughput, few enough that slow tasks do not
pile up in one worker. A batch still running after ``HAND_BACK_AFTER_SECONDS`` holds
tasks slower than it was sized for: :func:`run_batch` stops there, and the worker hands
the tasks not started back to the queue, for idle workers.

While it runs, a :class:`Batch` is shared by two threads without a lock: the slot's,
which takes its deliveries one by one and runs them, and the worker's keeper, which may
take back those not started (the task running now is long) or give up on the task
running (past its time limit). Each delivery is taken by exactly one of them: they pop
it from one deque (atomic in CPython), and the task running is ended by whoever first
pops its one-element *claim*. A task that returns past its limit before the keeper saw
it (the keeper was held up: the function held the GIL, or the process was starved) is
the slot's to end, and it fails that attempt all the same (``late``).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import NamedTuple

from distq.ending import Ending
from distq.envelope import NO_REPLY, Task
from distq.masters import MasterWatch
from distq.timelimits import TimeLimits
from distq.transport.base import Delivery

TARGET_BATCH_SECONDS = 0.005
HAND_BACK_AFTER_SECONDS = 10 * TARGET_BATCH_SECONDS


class BatchSizer:
    """The size of a slot's next fetch: about ``target`` seconds of work, 1 to ``prefetch``.

    The time per task is a moving average (each batch weighs half), so one slow or fast
    batch moves the size without swinging it from one extreme to the other.
    """

    def __init__(self, prefetch: int, target: float = TARGET_BATCH_SECONDS) -> None:
        self.prefetch, self.target = prefetch, target
        self.size = 1  # before any task ran: one, so a slow first task holds back nothing
        self.seconds_per_task = 0.0

    def ran(self, count: int, seconds: float) -> int:
        """Count a batch of ``count`` tasks that took ``seconds``; return the next size."""
        per_task = seconds / max(1, count)
        self.seconds_per_task = 0.5 * self.seconds_per_task + 0.5 * per_task
        if self.seconds_per_task > 0:
            fits = int(self.target / self.seconds_per_task)
            self.size = max(1, min(self.prefetch, fits))
        else:
            self.size = self.prefetch
        return self.size


class Batch:
    """A slot's batch while it runs; also the gate each task passes before it runs.

    ``masters`` says which reply queues have a live master; ``gone`` holds those the
    broker said are gone since this batch was fetched, whose tasks are dead-lettered
    unrun. A task of any other master stops the batch (:attr:`unchecked` names its reply
    queue) until the slot has asked the broker. With ``limits``, each task's start and
    limit are kept for the keeper (:attr:`running`).
    """

    def __init__(
        self,
        deliveries: Sequence[Delivery],
        masters: MasterWatch | None = None,
        limits: TimeLimits | None = None,
    ) -> None:
        self.waiting: deque[Delivery] = deque(deliveries)  # not started; popped by one side
        self.endings: list[Ending] = []
        self.endings_taken = 0  # settled early by the keeper (take_endings)
        self.started = time.monotonic()
        self.masters, self.limits = masters, limits or None
        self.gone: set[str] = set()
        self.unchecked: str | None = None
        self.claim: list[Delivery] = []  # the running task's delivery, until someone ends it
        self.running: Running | None = None  # a task with a time limit, while it runs
        self.abandoned = False  # the keeper gave up on the running task (time limit)
        # the keeper's hand-back of the tasks not started failed: they may be back in the
        # queue all the same (the call ran late), so the slot starts none, hands them back
        self.rest_in_doubt = False
        # the next task came back (it may be one that ends its worker): the slot settles
        # the endings so far before it runs it (run_batch)
        self.settle_first = False

    def admit(self, task: Task) -> bool | None:
        """Whether ``task`` may run now: True; False if its master is gone; None when its
        master must be asked first (the batch stops before it). A task nobody waits for
        (``reply_to`` :data:`~distq.envelope.NO_REPLY`) has no master to lose."""
        reply_to = task.reply_to
        if reply_to in self.gone:
            return False
        masters = self.masters
        if (
            masters is not None
            and reply_to != NO_REPLY
            and not masters.alive(reply_to, self.started)
        ):
            self.unchecked = reply_to
            return None
        if self.limits is not None:
            limit = self.limits.of(task)
            if limit is not None:
                self.running = Running(task, time.monotonic(), limit, self.claim)
        return True

    def take_endings(self) -> list[Ending]:
        """Take the endings made so far, for the keeper to settle now (the slot's thread
        may add one meanwhile: it stays, for the slot to settle)."""
        count = len(self.endings)
        taken = self.endings[:count]
        del self.endings[:count]
        self.endings_taken += count
        return taken

    def take_rest(self) -> list[Delivery]:
        """Take every delivery not started yet, in order (either thread)."""
        rest: list[Delivery] = []
        waiting = self.waiting
        while waiting:  # the usual batch ran whole: no IndexError raised to end the loop
            try:
                rest.append(waiting.pop())
            except IndexError:  # the other thread took the last one meanwhile
                break
        rest.reverse()
        return rest

    def put_back(self, rest: Sequence[Delivery] = (), endings: Sequence[Ending] = ()) -> None:
        """Undo :meth:`take_rest` and :meth:`take_endings` (the keeper could not hand them
        back or settle them): the slot settles those endings, and hands those deliveries
        back with them, unrun (:attr:`rest_in_doubt`): a hand-back that failed with no
        answer may still have run (a broker that stalled past the wait), and another
        worker run them; the slot ran them too (twice)."""
        if rest:
            self.rest_in_doubt = True
        self.waiting.extendleft(reversed(rest))
        self.endings[:0] = endings
        self.endings_taken -= len(endings)


Run = Callable[[Delivery, Batch], Ending | None]
#: The ending of a task that returned ``took`` seconds after it started, past its limit.
Late = Callable[[Delivery, "Running", float], Ending]


class Running(NamedTuple):
    """A task with a time limit, running: when it started (monotonic) and its claim."""

    task: Task
    started: float
    limit: float
    claim: list[Delivery]

    def take(self) -> Delivery | None:
        """The keeper's side: end this task; None if it has ended already."""
        try:
            return self.claim.pop()
        except IndexError:
            return None


def run_batch(
    batch: Batch,
    run: Run,
    stopping: threading.Event,
    abort: threading.Event,
    budget: float = HAND_BACK_AFTER_SECONDS,
    late: Late | None = None,
) -> list[Ending]:
    """Run the batch's deliveries in order as far as it goes; the rest stay in ``waiting``.

    It stops before the next task once ``budget`` seconds have passed since the batch
    was fetched (after one task at least), before the next task once ``stopping`` (a
    warm stop) is set, before any even (a batch fetched as the stop came goes back
    whole), at once on ``abort`` (a cold stop), before a task whose master is to be
    asked (``run`` returns None: the delivery goes back to the front of ``waiting``),
    and when the keeper gave up on the task that ran (``batch.abandoned``: its ending is
    the keeper's), and once the keeper's hand-back of the tasks not started failed
    (``batch.rest_in_doubt``), and before a task that came back (flagged redelivered)
    once others ran (``batch.settle_first``: the slot settles them, then runs on). A
    task with a time limit that returned past it, the keeper not having ended it, ends
    as ``late`` says instead of as it returned.

    A task that came back may be one that ends its worker's process each time it runs:
    with the tasks before it settled first, their results are not lost with it (a slot
    settled a batch at its end, so a batch ran and lost them at each start, and those
    tasks came back with it again).
    """
    endings = batch.endings
    started = batch.started  # the batch's, not this call's: it may be resumed (settle_first)
    waiting = batch.waiting
    while waiting:  # emptied: the usual end, with no IndexError raised (1 µs a batch)
        if abort.is_set() or stopping.is_set() or batch.rest_in_doubt:
            break
        if (endings or batch.endings_taken) and time.monotonic() - started > budget:
            break
        try:
            delivery = waiting.popleft()
        except IndexError:  # the keeper took the last one since
            break
        if delivery.redelivered and endings:
            waiting.appendleft(delivery)
            batch.settle_first = True
            break
        claim = batch.claim = [delivery]
        ending = run(delivery, batch)
        running, batch.running = batch.running, None  # this task's, if it has a limit
        try:
            claim.pop()
        except IndexError:  # the keeper ended it first: past its time limit
            batch.abandoned = True
            break
        if ending is None:
            waiting.appendleft(delivery)
            break
        if running is not None and late is not None:
            took = time.monotonic() - running.started
            if took > running.limit:
                ending = late(delivery, running, took)
        endings.append(ending)
    return endings
