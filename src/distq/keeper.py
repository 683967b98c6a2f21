"""The worker's keeper: the thread that looks after batches that run long.

Every tick it renews the lease of each slot whose batch has run a heartbeat interval
since its last renewal, hands back the tasks such a batch has not started (for idle
workers) and settles those it ran already, and ends the attempt of a task past its time
limit, giving the slot a new thread (:mod:`distq.timelimits`). Its rules are those of
:class:`Keeper`; the worker (:class:`~distq.worker.Worker`) makes it and starts its
thread, and gives it what it needs of the worker as named callables.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

from distq import chunks
from distq.backoff import Outage
from distq.batch import Batch, Running
from distq.console import Console
from distq.ending import Ending
from distq.envelope import Task, shown
from distq.errors import CertificateRejected, ConfigError, TransportError
from distq.errortext import describe
from distq.health import WorkerHealth
from distq.slots import Slot
from distq.timelimits import TimeLimits, said
from distq.transport.base import Delivery, Transport

#: How often the keeper checks running tasks against their time limits.
TIME_LIMIT_TICK = 0.1
#: The keeper's tick while the broker is away: how soon a lease is renewed once it is back.
OUTAGE_TICK = 0.1


class Count(Protocol):
    """The worker's count of what left a slot's hands (:meth:`~distq.worker.Worker._count`)."""

    def __call__(
        self, slot: Slot, endings: list[Ending], released: int, *, kept: int = 0
    ) -> None: ...


class Keeper:
    """Renews long batches' leases, hands back their tasks not started, enforces time limits.

    Three kinds of thread act on a slot (:class:`~distq.slots.Slot`): its own, which
    fetches, runs and settles its batches (:class:`~distq.worker.Worker`); the keeper's
    (:meth:`keep`, one per worker, until the worker's run ends), which acts on a batch
    while it runs; and the main thread, whose cold stop closes the consumers under the
    running batches (:meth:`~distq.worker.Worker._stop_cold`).

    Locks: ``slot.lock`` guards every call on ``slot.consumer`` (pika is not
    thread-safe) and every change of it; tasks run outside it. The keeper's hand-back
    and its renewal on the slot's own link take it only if it is free
    (:meth:`_hand_back`, :meth:`_renew`): a slot in a broker call has its lease renewed
    by that call, and the keeper tries again at its next tick. Its give-up waits for it
    (:meth:`_give_up`); a cold stop waits 2 s for all the slots' locks, and a slot whose
    lock it did not get closes its consumer itself. Where the transport renews leases
    over a connection of its own (``renews_apart``: Redis, manager), the keeper hands
    back each due slot's tasks in its lock, then renews all their leases in one call
    outside the locks (:meth:`_renew_all`). The :class:`~distq.batch.Batch` a slot runs
    is shared with the keeper without a lock: each delivery is popped by one of them
    (:mod:`distq.batch`). What the keeper reads outside the lock (``slot.batch``), it
    checks again in it before it acts: ``slot.batch is batch`` (else the slot has moved
    on: it settled the batch, failed, or the keeper gave up on it) and ``slot.consumer
    is not None`` (else a call failed and the consumer was dropped, or a cold stop took
    it).

    The slot's flags, and who sets them:

    - ``batch``: the batch the slot runs, set by its thread before it runs it and
      cleared in the lock before it settles it; the keeper clears it when it gives up.
    - ``renewed``: when the lease was last renewed: by a fetch, by a settle that leased
      the next batch, or by the keeper. A renewal that failed sets it an interval back,
      to be tried again at the next tick (:meth:`_renew_failed`); any other failure, to
      now (one line an interval).
    - ``renew_failed_on``: the link the keeper last failed to renew on, so that a link's
      outage is said once; cleared by a renewal.
    - ``handed_back``: a cold stop took the consumer from under the running batch (in
      the lock), and the batch's tasks go back with its connection: the slot's thread
      settles nothing more and ends; the keeper, finding no consumer, leaves the slot
      alone. (It is not the keeper's hand-back of tasks not started, after which the
      batch runs on.)
    - ``generation``: counts the slot's threads, moved on by the keeper when it gives
      up. A thread works while its generation is the slot's; one whose generation is
      past was left behind in a task: it returns once the task does, and leaves the
      slot's consumer, which the new thread has taken over, alone.
    - ``replacing``: the slot's thread was left behind and the new one is not started
      yet: the worker counts the slot alive (:meth:`~distq.slots.Slot.alive`), though
      its old thread may end first.

    A hand-back (a batch whose lease has gone an interval unrenewed; where leases are
    renewed together, half of one once another slot is due: :meth:`_renew_after`), in
    the slot's lock (:meth:`_handed_back`): the tasks not started go back to the queue
    (those the broker refused to take back stay with the consumer, and are no
    hand-back), then the endings so far are settled. A call that fails puts what it took
    back in the batch, for the slot's own settle (else the consumer held them, and the
    keeper renewed their leases for good); the slot starts none of the tasks put back,
    but hands them back (a release that failed with no answer may run late: another
    worker ran them, and the slot too). Then the lease of the rest is renewed: on the
    slot's link in the same hold of its lock, or with the other due slots' once the
    tick's hand-backs are done.

    A give-up (a task past its time limit), in the slot's lock, in this order: take the
    running task's claim (none: the task has just ended, and the slot's thread settles
    it); set ``replacing``, then move ``generation`` on (from then on the old thread may
    end, and the worker must still see the slot alive); mark the batch abandoned (the
    old thread starts none of its tasks); clear ``slot.batch``; leave the old thread
    behind (a chunk there starts no more of its calls); settle the endings so far and
    the timed-out attempt, and hand back the tasks not started, on the slot's consumer
    (a settle that fails drops it: the task runs again). Then, whatever the settle did,
    the slot's replacement: a new thread of the new generation, on the slot's consumer
    (or a new one, if the settle dropped it), put in ``slot.thread`` once started; and
    only then is ``replacing`` cleared (also when the thread could not start: the worker
    stops then).
    """

    def __init__(
        self,
        transport: Transport,
        health: WorkerHealth,
        outage: Outage,
        console: Console,
        *,
        interval: float,
        limits: TimeLimits,
        stopping: threading.Event,
        settle: Callable[[Slot, list[Ending], Sequence[Delivery]], list[Delivery]],
        count: Count,
        drop_consumer: Callable[[Slot, str], int],
        timed_out: Callable[[Delivery, Task, float, float, float], Ending],
        start_slot: Callable[[Slot], None],
        cannot_start: Callable[[str, RuntimeError | MemoryError], None],
        lost: Callable[[Exception], None],
        back: Callable[[], None],
        refused: Callable[[ConfigError | CertificateRejected], None],
    ) -> None:
        """``interval``: the heartbeat interval; ``stopping``: set on a warm stop. The
        callables are the worker's: ``settle`` a slot's endings and hand back its
        deliveries not started, ``count`` those handed back, ``drop_consumer`` after a
        failed call, ``timed_out`` makes a timed-out attempt's ending, ``start_slot`` a
        slot's new thread or ``cannot_start`` says why not (the worker stops), and
        ``lost`` / ``back`` say an outage begins or ends (:class:`~distq.backoff.Outage`),
        ``refused`` stops the worker on a setting or certificate the broker refused."""
        self.transport, self.health, self.outage, self.console = transport, health, outage, console
        self.interval, self.limits = interval, limits
        self._stopping = stopping
        self._settle, self._count, self._drop_consumer = settle, count, drop_consumer
        self._timed_out = timed_out
        self._start_slot, self._cannot_start = start_slot, cannot_start
        self._lost, self._back, self._refused = lost, back, refused
        self.left_behind: list[threading.Thread] = []  # threads still in timed-out tasks
        self._said_late = False  # a renewal past the lease: said once
        self._renewal_took = 0.0  # how long the last batched renewal waited for its answer

    def keep(self, slots: list[Slot], done: threading.Event) -> None:
        """The keeper's thread: look after ``slots`` each tick until ``done`` is set."""
        # it beats liveness each tick: at most a third of the stall limit apart, or a long
        # lease (lease/12 between ticks) made /healthz say "stalled" while all was well
        tick = min(self.interval / 4, self.health.liveness.stall_seconds / 3)
        if self.limits:
            tick = min(tick, TIME_LIMIT_TICK)
        if self.transport.renews_apart:
            # a renewal of none names this thread to the transport, which bounds the
            # keeper's calls as its renewals (manager): known only from its first renewal,
            # which comes after a tick's hand-backs, the first hand-back on a master that
            # did not answer waited 30 s (REPLY_TIMEOUT), every running lease lapsing
            with self._keeping([]):
                self.transport.heartbeat([])
        # a broker away: leases are tried again every OUTAGE_TICK, so that one back just
        # before a lease's deadline still finds it (a tick of lease/12 came too late)
        while not done.wait(min(tick, OUTAGE_TICK) if self.outage.ongoing else tick):
            self.health.beat("leases")
            due: list[Slot] = []
            soon = self._renew_after(slots)
            for slot in slots:
                batch = slot.batch
                if batch is None:
                    continue
                with self._keeping([slot]):
                    running = batch.running
                    if running is not None and time.monotonic() - running.started > running.limit:
                        self._give_up(slot, batch, running)
                    elif time.monotonic() - slot.renewed >= soon:
                        if self.transport.renews_apart:  # all at once, below
                            if self._hand_back(slot, batch):
                                due.append(slot)
                        else:
                            self._renew(slot, batch)
            if due:
                self._renew_all(due)
        # done: its last beat, growing old while the process stops, read as "stalled"
        self.health.liveness.end("leases")

    @contextlib.contextmanager
    def _keeping(self, slots: list[Slot]) -> Iterator[None]:
        """The keeper's work on ``slots``, its failures said: a broker away, one line per
        outage; a setting or certificate it refused stops the worker, as in a slot (said
        at its exit; tried again an interval later, in silence, while it drains); anything
        else (the slot meets it again when it settles), once an interval."""
        try:
            yield
        except (ConfigError, CertificateRejected) as exc:
            # a slot in a long task left it to the keeper, which called it a bug in distq
            # once an interval (a certificate: an outage) and went on: the worker stopped
            # only once the task had ended
            self._refused(exc)
            for slot in slots:
                slot.renewed = time.monotonic()
        except TransportError as exc:
            self._renew_failed(slots, exc)
        except Exception as exc:  # not the broker's: distq's own
            self.console.error(
                f"keeping a long batch failed: {type(exc).__name__}: {exc} (a bug in distq: "
                "please report this line; the keeper tries again in an interval)"
            )
            for slot in slots:
                slot.renewed = time.monotonic()  # one line per interval, not a flood

    def _renewed(self, slots: list[Slot], at: float) -> None:
        """The leases of ``slots`` renewed at ``at``: an outage only the keeper saw ends."""
        for slot in slots:
            slot.renewed = at
            slot.renew_failed_on = None
        self._back()

    def _renew_after(self, slots: list[Slot]) -> float:
        """How long a slot's lease goes unrenewed before the keeper renews it: an interval;
        where leases are renewed all at once, half of one too once a slot is due, so that
        slots started apart are renewed in one call, not one each."""
        now = time.monotonic()
        if self.transport.renews_apart and any(
            slot.batch is not None and now - slot.renewed >= self.interval for slot in slots
        ):
            return self.interval / 2
        return self.interval

    def _renew_failed(self, slots: list[Slot], exc: TransportError) -> None:
        # an outage begins at a link's first failure, not at each: a slot in a long task
        # keeps its consumer until the task ends (on RabbitMQ it connects again at a
        # renewal once the broker answers), and each failed renewal on it began a new
        # outage once another slot's call had ended the last (a pair of lines every 1.3 s)
        for slot in slots:
            if slot.renew_failed_on is not slot.consumer:
                slot.renew_failed_on = slot.consumer
                self._lost(exc)
            # tried again at the next tick, not an interval later: that try fell on the
            # lease's deadline, and a broker back before it still lost the lease (7 of 8
            # running tasks ran twice)
            slot.renewed = time.monotonic() - self.interval

    def _hand_back(self, slot: Slot, batch: Batch) -> bool:
        """:meth:`_handed_back`, unless the slot is in a broker call (which renews the
        lease too): whether its lease is to be renewed."""
        if not slot.lock.acquire(blocking=False):
            return False
        try:
            return self._handed_back(slot, batch)
        finally:
            slot.lock.release()

    def _handed_back(self, slot: Slot, batch: Batch) -> bool:
        """A batch running longer than a heartbeat interval: settle the tasks it ran
        already and hand back what it has not started (the caller holds the slot's
        lock). False if the slot moved on. The results of the fast tasks before a long
        one waited for it to end (8 s behind an 8 s task), and a worker killed meanwhile
        had them run again (lease17)."""
        if slot.batch is not batch or slot.consumer is None:
            return False
        rest = batch.take_rest()
        if rest:  # what a full queue refused comes back to the slot: not released
            try:
                with self.health.liveness.waiting("leases"):  # a silent broker is no stall
                    back = slot.consumer.release(rest)
            except BaseException:
                # failed: they may have stayed held by the consumer, renewed by this keeper
                # for good, never run: the slot hands them back (not runs: see put_back)
                batch.put_back(rest=rest)
                raise
            self._count(slot, [], released=len(rest), kept=len(rest) - back)
        done = batch.take_endings()
        if done:
            try:
                with self.health.liveness.waiting("leases"):
                    self._settle(slot, done, [])
            except BaseException:
                batch.put_back(endings=done)  # the slot settles them with the rest
                slot.unconfirmed = []  # and counts them then
                raise
        return True

    def _renew_all(self, slots: list[Slot]) -> None:
        """Renew the leases of ``slots`` in one round trip, over the keeper's own
        connection: with many slots running Python code, the keeper waits for the GIL at
        each round trip, and one per slot outlasted the lease."""
        consumers = [slot.consumer for slot in slots if slot.consumer is not None]
        sent = time.monotonic()  # the broker's deadline runs from about now: not later
        late = max(sent - slot.renewed for slot in slots) - 3 * self.interval  # past the lease
        if late > 0 and not self._said_late:
            self._said_late = True
            took = self._renewal_took
            # most of it in the renewal before: a broker that did not answer (a paused
            # manager master blocks the call), or the GIL inside it; else this process
            why = (
                f"the renewal before it took {took:.1f} s to return (a broker that did not "
                "answer: stopped, paused, cut off; or the keeper waiting for the GIL behind "
                "slots that compute)"
                if took >= late / 2
                else "this process was held up: stopped, paused, starved of CPU, or its "
                "keeper waiting for the GIL behind slots that compute"
            )
            self.console.error(
                f"warning: renewing the leases of running tasks came {late:.1f} s past "
                f"the lease ({why}): those tasks may run again elsewhere; with tasks that "
                "compute in Python, run fewer slots (--concurrency) in more worker "
                "processes, or raise DISTQ_LEASE_SECONDS (said once)"
            )
        with self._keeping(slots):
            try:
                with self.health.liveness.waiting("leases"):  # a silent broker is no stall
                    self.transport.heartbeat(consumers)
            finally:
                self._renewal_took = time.monotonic() - sent
            self._renewed(slots, sent)

    def _renew(self, slot: Slot, batch: Batch) -> None:
        """Hand back what the batch has not started and renew the lease of the rest, on
        the slot's own connection, in the slot's lock."""
        if not slot.lock.acquire(blocking=False):
            return  # the slot is in a broker call, which renews the lease too
        try:
            if self._handed_back(slot, batch) and slot.consumer is not None:
                with self.health.liveness.waiting("leases"):  # a silent broker is no stall
                    slot.consumer.heartbeat()
                self._renewed([slot], time.monotonic())
        finally:
            slot.lock.release()

    def _give_up(self, slot: Slot, batch: Batch, running: Running) -> None:
        """A task ran past its time limit: settle that attempt as failed, hand back the
        batch's tasks not started, and go on in a new thread."""
        with slot.lock:
            if slot.batch is not batch or slot.consumer is None:
                return
            delivery = running.take()
            if delivery is None:
                return  # it has just ended
            # at once, and in this order: once the generation moves on, the old thread
            # may end (its function returns), and _wait must see a slot still alive
            slot.replacing = True
            slot.generation += 1
            batch.abandoned = True
            ran = time.monotonic() - running.started
            ending = self._timed_out(delivery, running.task, running.limit, time.time() - ran, ran)
            slot.batch = None
            if slot.thread is not None:
                chunks.give_up(slot.thread)  # a chunk there starts no more of its calls
                self.left_behind.append(slot.thread)
            self.left_behind = [thread for thread in self.left_behind if thread.is_alive()]
            goes_on = (  # stopping, the new thread ends at once (life16)
                "the worker is stopping"
                if self._stopping.is_set()
                else f"slot {slot.index} goes on in a new thread"
            )
            ending = ending._replace(  # the settle prints it
                note=f"{ending.note}; {goes_on}, leaving the old thread in the task "
                f"({len(self.left_behind)} left behind, still running)"
            )
            try:  # if this fails, the tasks go back when the lease runs out
                with self.health.liveness.waiting("leases"):  # a silent broker is no stall
                    self._settle(slot, [*batch.endings, ending], batch.take_rest())
            except Exception as exc:
                # The consumer goes, as after a slot's own failed settle: kept, it held the
                # task and the keeper renewed its lease for good, the task never ran again
                if self._drop_consumer(slot, str(exc)):
                    raise  # the settle ran late all the same: its note was said, counted
                # its note went with the settle: no line said it (rmq18b)
                task = running.task
                self.console.error(
                    f"task {shown(task.name)} {shown(task.id)} attempt {task.attempt}/"
                    f"{task.max_attempts} ran past its time limit of {said(running.limit)} s "
                    f"({self.limits.which(task)}); "
                    f"{goes_on}; that attempt was not settled ({describe(exc)}): the task "
                    "runs again"
                )
                raise
            finally:
                try:
                    self._start_slot(slot)
                # the tasks left behind hold the threads, or the memory (ulimit -v): a
                # MemoryError went to _keeping, said as a bug, and the slot was gone for good
                except (RuntimeError, MemoryError) as exc:
                    self._cannot_start(f"slot {slot.index} again after its time limit", exc)
                finally:  # a thread that cannot start must not keep the worker alive
                    slot.replacing = False
