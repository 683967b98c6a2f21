"""The executor's thread: the one owner of its producer (pika is not thread-safe).

Other threads hand it commands through a queue: tasks to submit, futures to cancel, a
stop. It sends tasks in batches, waits for results (:class:`~distq.collector.Collector`
hands on each task's first one), resolves the futures, fails those past their
``task_timeout`` and withdraws what it can. Every ``RECONCILE_SECONDS``, idle or not, it
asks the broker what it holds, as a master does: that keeps the connection and the reply
queue alive, and finds the tasks a broker lost. A failed broker call is an outage: it
reconnects with backoff and submits again what the broker lost (:class:`~distq.ledger.
Ledger`). When it stops, for any reason, no future is left pending: a broker unreachable
for ``OUTAGE_SECONDS`` fails them with :class:`~distq.errors.BrokenExecutor`. A broker
that answers but refuses the tasks (a Redis at its ``maxmemory``) is not unreachable: the
thread reads the results it has and sends again as room comes back, as a master does.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import heapq
import logging
import queue
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from distq import executor_threads
from distq.backoff import Backoff
from distq.codec import Codec
from distq.collector import Collector
from distq.config import MESSAGE_BATCH, RECONCILE_SECONDS
from distq.counts import counted
from distq.envelope import Result, Task
from distq.errors import (
    BrokenExecutor,
    CertificateRejected,
    ConfigError,
    EnvelopeError,
    MessageRefused,
    MessageTooLarge,
    RemoteError,
    TransportError,
    UnverifiedRefusal,
)
from distq.futures import Callbacks, DistqFuture
from distq.ledger import Ledger, forget_orphans, submit_again, withdraw_once
from distq.overdue import DEADLINES_KEPT, Overdue, time_out
from distq.retries import retries_by_attempt
from distq.transport import Producer, Transport

log = logging.getLogger("distq.executor")

#: Shortest and longest wait for results before the thread looks at new commands: short
#: while things happen, longer while it only waits (fewer broker calls per second).
POLL_SECONDS = (0.005, 0.1)
#: Longest the thread sleeps with nothing outstanding before it looks around anyway.
IDLE_SECONDS = 1.0
#: Most commands handled in one turn: a thread submitting without pause must not keep
#: the executor from sending, reading results, reconciling and expiring.
COMMANDS_PER_TURN = 1000
#: How long the executor waits out a broker it cannot reach (reconnecting with backoff)
#: before it fails every unanswered future with BrokenExecutor.
OUTAGE_SECONDS = 30.0

#: Why an executor refuses work in a child made by fork(): its thread is the parent's.
FORKED = (
    "the executor belongs to the parent process (it was created before fork()); "
    "create a new distq.Executor in the child process"
)


@dataclass(slots=True)
class Entry:
    """A task submitted through the executor and not answered yet."""

    task: Task
    body: bytes  # as sent (sealed): what withdraw() finds on the broker
    future: DistqFuture[Any]
    deadline: float | None  # time.monotonic() after which it fails with TaskTimeout


@dataclass(slots=True)
class Submit:
    entries: list[Entry]


@dataclass(slots=True)
class CancelCommand:
    futures: list[DistqFuture[Any]]
    answers: list[bool] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)


@dataclass(slots=True)
class Stop:
    cancel_futures: bool
    abandon: str | None = None  # stop now, failing what is unanswered for this reason
    #: False from the finalizer of an executor collected without shutdown(): it finishes
    #: its futures, but at interpreter exit it is stopped like one left open
    wait_at_exit: bool = True


Command = Submit | CancelCommand | Stop


class Dispatcher(threading.Thread):
    """The executor's thread: owns the producer, sends tasks, resolves futures.

    Everything that touches the producer, the collector or an entry runs here; other
    threads only :meth:`put` commands (and wait for a cancel's answers).
    """

    def __init__(
        self, transport: Transport, producer: Producer, codec: Codec, callbacks: Callbacks
    ) -> None:
        super().__init__(name="distq-executor", daemon=True)
        self.transport, self.producer, self.callbacks = transport, producer, callbacks
        self.codec = codec
        self.collector: Collector[Entry] = Collector(
            self._on_result, self._on_malformed, codec=codec
        )
        self.broken: str | None = None  # why the thread stopped early, if it did
        self.broken_by: BaseException | None = None  # the error that stopped it, if any
        self._commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        # guards _ended and _not_sent against put() and cancel(); reentrant: a signal
        # handler's close() runs on the thread it interrupted, maybe in put() (a whole
        # map() under it), and its fail_stuck() takes it there (it hung for good)
        self._lock = threading.RLock()
        self._ended = False
        # the tasks of Submits put and not yet sent: a cancel() takes one back at once,
        # on its caller's thread, however long this thread waits for the broker
        self._not_sent: set[str] = set()
        # set at exit while this thread waited for a hung broker (fail_stuck): the futures
        # are failed; once back, the thread sends nothing more and ends
        self._given_up = False
        self.finishing = False  # told to stop once every future is answered (shutdown)
        self._unsent: dict[str, Entry] = {}  # submitted to us, not yet to the broker
        # every future submitted and still referenced: what a child made by fork() fails
        self.futures: weakref.WeakSet[DistqFuture[Any]] = weakref.WeakSet()
        self._unsent_order: deque[Entry] = deque()  # the same, oldest first (and cancelled)
        self._deadlines: list[tuple[float, str]] = []
        self.ledger = Ledger()  # what was sent, for the tasks a broker loses
        # how many times each task still waited for was sent again after a reconcile: so
        # many copies more of it may be queued, each taken back by a cancel
        self._resubmitted: Counter[str] = Counter()
        self._next_reconcile = time.monotonic() + RECONCILE_SECONDS
        self._offline = False  # waiting out an outage: nothing is asked of the broker
        self._answered = 0.0  # when the broker last answered a reconcile (monotonic)
        self._recovering = False  # in _recover: the lost tasks are said once, not each try
        # one outage's delays: they grow over recoveries whose calls fail again soon after
        # (a broker refusing the tasks, its nack read a call or a few later), reset once
        # the calls have gone through for a while (Backoff.through)
        self._backoff = Backoff()
        self._unconfirmed = False  # reconnected, and the calls not through a while since
        self._said_lost = False
        self._stopping = False
        # the error close()'s take-back met: as a stopping master, no call after it
        self._failed_with: TransportError | None = None
        # shutdown(cancel_futures=True) not yet done with a broker (its withdraw failed,
        # or came during an outage): done again once the broker answers
        self._cancel_all = False
        self._poll = POLL_SECONDS[0]
        self._lapsed = False  # its reply queue lapsed: look for orphans again as it closes
        # a task failed past its task_timeout that was not taken back (RabbitMQ): it may
        # still be queued, unanswered, so its close does not leave the reply queue for it
        # to run after (Producer.close_answered)
        self._kept_unanswered = False
        self._overdue = Overdue(self._lock, self._not_sent)
        self._finished = threading.Event()  # set as run() ends: see join()

    # -- any thread ------------------------------------------------------------
    def put(self, command: Command) -> bool:
        """Hand ``command`` to the thread; False when the thread has ended."""
        with self._lock:
            if self._ended:
                return False
            if isinstance(command, Stop) and command.abandon is None and command.wait_at_exit:
                self.finishing = True
            elif isinstance(command, Submit):
                self._not_sent.update(entry.task.id for entry in command.entries)
                self.futures.update(entry.future for entry in command.entries)
                for entry in command.entries:
                    if entry.deadline is not None:
                        self._overdue.watch(entry)
            self._commands.put(command)
            return True

    def forked(self) -> bool:
        """True in a child made by fork() after this executor was created."""
        return self.broken == FORKED

    def fork_in_child(self) -> None:
        """In a child made by fork(), where this thread does not exist: refuse commands
        (``submit`` raises :class:`BrokenExecutor`), fail the futures inherited (without
        their done-callbacks: they are the parent's) and close a listening socket
        inherited. Nothing is sent: the connections are the parent's."""
        self._lock = threading.RLock()  # another thread may have held it at the fork
        self._finished = threading.Event()  # a new one, set: its lock too
        self._finished.set()
        self.callbacks.forked()
        self._ended, self.broken = True, FORKED
        # every future submitted (fail_inherited skips those answered), those a parent
        # thread had in hand between the executor's structures at the fork too (a batch
        # being sent, a result being resolved: 308 stayed pending for good, exec18). A
        # cancel's waiter is a parent's thread: nothing here may wake it
        for future in list(self.futures):
            future.fail_inherited(BrokenExecutor(FORKED))
        try:
            self.transport.close_inherited()
        except Exception as exc:
            log.warning("could not close the executor's listener after fork(): %s", exc)

    def stop_at_exit(self, why: str) -> bool:
        """Stop without waiting for results, the futures failed saying ``why``; False
        when the thread has ended."""
        return self.put(Stop(cancel_futures=False, abandon=why))

    def cancel(self, futures: list[DistqFuture[Any]], wait: bool = True) -> list[bool]:
        """Cancel ``futures`` where possible; one answer each. A task not sent yet is
        taken back here, at once; one sent is withdrawn by the thread (a broker call),
        waited for unless ``wait`` is False (an event loop's thread): then its answer is
        False, and its future is cancelled once the thread has withdrawn its task."""
        with self._lock:
            taken = [f for f in futures if f.task_id in self._not_sent]
            self._not_sent.difference_update(f.task_id for f in taken)
        answers = {id(f): _cancelled(f) or f.cancelled() for f in taken}
        rest = [f for f in futures if id(f) not in answers]
        if rest:
            command = CancelCommand(rest)
            if threading.current_thread() is self:
                self._cancel(command)
            elif not wait:  # withdrawn by the thread meanwhile: not cancelled yet
                self.cancel_soon(rest)
                command.answers = [f.cancelled() for f in rest]
            elif self.put(command):
                command.done.wait()
            else:
                command.answers = [f.cancelled() for f in rest]
            answers.update(zip(map(id, rest), command.answers, strict=True))
        return [answers[id(f)] for f in futures]

    def cancel_soon(self, futures: list[DistqFuture[Any]]) -> None:
        """Cancel ``futures`` where possible, without waiting for the answers and without
        the lock: safe in a finalizer, which the garbage collector runs in whatever thread
        allocates, one inside the lock too (a map() iterator collected in put() waited
        there for the lock its own thread held, and the executor hung for good). Once the
        thread has ended, nothing is left to cancel."""
        self._commands.put(CancelCommand(futures))  # a SimpleQueue's put is reentrant

    def stop_soon(self) -> None:
        """Stop once every future is answered, as :meth:`put` of a ``Stop`` from a
        collected executor does, without the lock: its finalizer runs in whatever thread
        the garbage collector does, one inside the lock too (see :meth:`cancel_soon`)."""
        self._commands.put(Stop(False, wait_at_exit=False))

    def _sending(self, entry: Entry) -> bool:
        """Whether ``entry``, not sent yet, is still to be sent (not cancelled, not
        timed out): it leaves :attr:`_not_sent`, so a cancel() no longer takes it."""
        with self._lock:
            if entry.task.id not in self._not_sent:
                return False
            self._not_sent.discard(entry.task.id)
            return True

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end, at most ``timeout`` s, on an event of its own:
        ``Thread.join`` interrupted (Ctrl-C in a shutdown's wait) marks a thread still
        running as stopped (CPython releases the lock the running thread holds), and
        ``is_alive()`` then said False: a close() after it returned with every future
        pending, and the exit took the thread for ended."""
        self._finished.wait(timeout)

    def is_alive(self) -> bool:
        """Started and not yet ended (see :meth:`join`)."""
        return self.ident is not None and not self._finished.is_set()

    # -- the thread ------------------------------------------------------------
    def run(self) -> None:
        try:
            self._run()
        finally:
            # set while still among the running executors: a fork() meanwhile makes the
            # child's ended. Set after leaving them, in a child forked between the two
            # nothing set it: is_alive() said True there, stats() used the closed
            # connection and shutdown() waited 3 s for a thread the child lacks
            self._finished.set()
            executor_threads.ended(self)

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a lost broker, or a bug: no future may hang
            if isinstance(exc, ConfigError):  # a setting refused (a key of another type):
                self.collector.read_left(self.producer)  # the results in answer their futures
            self.broken, self.broken_by = f"the executor stopped: {exc}", exc
            log.error("%s", self.broken)
        finally:
            with self._lock:
                self._ended = True
                self._overdue.end()
            # each step whatever the one before did: no future may hang, nothing stay open;
            # after a broker's failure, no call that would wait on it again
            failed = self._failed_with
            if failed is None and isinstance(self.broken_by, TransportError):
                failed = self.broken_by
            answered = (
                self.collector.finished > 0
                and not self.collector.outstanding
                and not self._kept_unanswered
            )
            steps: list[tuple[Callable[[], None], str]] = [
                (lambda: self._fail_all(self.broken or "the executor has stopped"), "fail"),
                (lambda: self._look_again_for_orphans(failed), "tidy the letters of"),
                (lambda: self._close_producer(failed, answered), "close the producer of"),
                (self.transport.close, "close the connection of"),
            ]
            for step, what in steps:
                try:
                    step()
                except Exception as exc:  # closing must not hide why the loop ended
                    log.warning("could not %s the executor: %s", what, exc)
            self.callbacks.close()  # after the last future was resolved

    def _close_producer(self, failed: TransportError | None, answered: bool) -> None:
        """After a broker's failure, no call that would wait on it again; with every
        future answered by its result, a copy of a task still queued may run: see
        :meth:`~distq.transport.base.Producer.close_answered` (not after a task_timeout
        that left its task queued: that task is a gone master's, dead-lettered unrun)."""
        if failed is not None:
            self.producer.abandon()
        elif answered:
            self.producer.close_answered()
        else:
            self.producer.close()

    def _loop(self) -> None:
        while not self._given_up:
            idle = not self._unsent and not self.collector.outstanding
            if idle and self._stopping:
                return
            try:
                if not self._turn(idle):
                    return  # abandoned
                # the broker has taken the calls again for a while: the outage is over
                if self._unconfirmed and self._backoff.through(time.monotonic()):
                    self._unconfirmed = False
            except TransportError as exc:
                if isinstance(exc, MessageRefused):
                    self._refused_over(exc.limit, exc.fix)
                if not self._recover(exc):  # raises when the broker stays away
                    return  # abandoned meanwhile (close())

    def _turn(self, idle: bool) -> bool:
        """Take the commands, send, read results, reconcile when due, expire; False to
        stop at once (abandoned)."""
        commands = self._take(IDLE_SECONDS if idle else None)
        if commands is None:
            return False
        if self._cancel_all:  # back from an outage that met shutdown's cancel_futures
            self._cancel_every_future()
        sent = self._send() if self._unsent else None
        if self.collector.outstanding or sent:
            if sent is not None:  # read with the send, without a wait: back to commands
                answered = self.collector.accept(sent)
            else:
                wait = self._poll
                if self._deadlines:
                    wait = max(0.0, min(wait, self._deadlines[0][0] - time.monotonic()))
                answered = self.collector.collect(self.producer, wait)
            quiet = not commands and not answered
            self._poll = min(2 * self._poll, POLL_SECONDS[1]) if quiet else POLL_SECONDS[0]
        if time.monotonic() >= self._next_reconcile:
            self._reconcile()
        self._expire()
        return True

    def _refused_over(self, limit: int, fix: str | None = None) -> None:
        """The broker refused a message over ``limit`` bytes (its max_message_size, below
        DISTQ_MAX_MESSAGE_BYTES): a task over it can never be sent, so its future fails
        saying so; it was sent again without end, 7 times a second, the 406 never said
        (input17). The others go again, in packs within the limit; a task over it fails
        at submit() from now on (:meth:`Codec.hold_to`). ``fix``: what it says to do
        (the manager's: the master's limit is the one to raise)."""
        self.codec.hold_to(limit)
        fix = fix or (
            f"the broker takes in a message (its max_message_size): it cannot be sent; set "
            f"DISTQ_MAX_MESSAGE_BYTES to at most {limit:,}"
        )
        for task_id, entry in self.collector.waiting():
            if len(entry.body) > limit:
                self.collector.discard(task_id)
                error = MessageTooLarge(
                    f"task {entry.task.name} [{task_id}] is {len(entry.body):,} bytes, over "
                    f"the {limit:,} {fix}"
                )
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    entry.future.set_exception(error)

    def _reconcile(self) -> None:
        """Ask the broker what it holds (renewing the reply queue, reconnecting if need
        be); submit again the tasks it lost that are still waited for."""
        self._next_reconcile = time.monotonic() + RECONCILE_SECONDS
        held = self.producer.reconcile()
        self._answered = time.monotonic()  # a submit refused after it is no outage
        if self._given_up:  # back from a hung broker after the exit failed the futures
            return
        if held < self.ledger.total:  # the results there first: each answers its task
            self.collector.read_waiting(self.producer)
        waiting = self.collector.waiting_ids().__contains__
        again = self.ledger.reconcile(held, waiting, self.collector.outstanding)
        resubmitted = self._resubmitted
        self._resubmitted = Counter({tid: n for tid, n in resubmitted.items() if waiting(tid)})
        self._resubmitted.update(task_id for task_id, _ in again)
        if again:
            if not self._said_lost:  # a broker refusing them: once a recovery, not each try
                self._said_lost = self._recovering
                some, them = counted(len(again), "task"), "it" if len(again) == 1 else "them"
                log.warning(
                    "the broker does not hold %s the executor waits for (lost, or refused "
                    "when sent): sending %s again",
                    some,
                    them,
                )
            submit_again(self.producer.submit, again)
        if self.producer.lapsed:
            self._forget_orphans()

    def _forget_orphans(self) -> None:
        """Remove the dead letters workers made of the executor's tasks while it seemed
        gone (:meth:`~distq.transport.base.Transport.forget_orphans`): they were sent
        again. Done again when it closes, for one dead-lettered after this look."""
        self._lapsed = True
        line = forget_orphans(self.transport, self.producer.reply_to, "the executor's")
        if line is not None:
            log.warning("%s", line)

    def _look_again_for_orphans(self, failed: TransportError | None) -> None:
        """As it closes after a lapse, :meth:`_forget_orphans` once more (a letter made
        after the last look); after ``failed``, a broker's failure, no call that would
        wait on it: said instead, as a stopping master says it."""
        if not self._lapsed:
            return
        if failed is None:
            self._forget_orphans()
            return
        log.warning(
            "did not look again for dead letters workers made of the executor's tasks while "
            "it seemed gone (the broker failed its last call: %s); `distq dead-letters` "
            "lists them",
            failed,
        )

    def _recover(self, exc: TransportError) -> bool:
        """Reconnect (at once, then with backoff) and submit again what the broker lost,
        as a master does; True once back, False when close() came meanwhile (or a shutdown
        with nothing left to wait for). Raises once the broker has been away
        ``OUTAGE_SECONDS``: counted from the failure or from the broker's last answer
        (one that answers but refuses the tasks, a Redis at its ``maxmemory``, is waited
        for: the results it has are read meanwhile).

        Between attempts it handles commands and deadlines without the broker: new tasks
        wait to be sent, a cancel takes back only what was not sent, and a task past its
        ``task_timeout`` fails without being withdrawn."""
        log.warning("%s; reconnecting", str(exc).rstrip("."))
        started, backoff = time.monotonic(), self._backoff
        self._recovering = True
        try:
            # failed again soon after the last reconnect: the broker answers its reconcile
            # but refuses the calls after it; the first attempt waits too (it was made at
            # once, each time, as fast as the calls failed)
            if self._unconfirmed and not self._offline_until(time.monotonic() + backoff.next()):
                return False
            self._unconfirmed = self._reconnect(started, backoff)
            backoff.reconnected(time.monotonic())
            return self._unconfirmed
        finally:
            self._recovering = self._said_lost = False

    def _reconnect(self, started: float, backoff: Backoff) -> bool:
        """:meth:`_recover`'s attempts."""
        while True:
            try:
                self._reconcile()
            except CertificateRejected:  # no retry mends it: as at start
                raise
            except TransportError as again:
                if self._given_up:  # close() or the exit failed the futures meanwhile
                    return False
                away = time.monotonic() - max(started, self._answered)
                if away >= OUTAGE_SECONDS:
                    raise TransportError(
                        f"{str(again).rstrip('.')}; still unreachable after {away:.0f} s"
                    ) from again
                wait = min(backoff.next(), OUTAGE_SECONDS - away)
                if not self._offline_until(time.monotonic() + wait):
                    return False
                continue
            if self._given_up:
                return False
            log.warning("reconnected to the broker after %.1f s", time.monotonic() - started)
            return True

    def _offline_until(self, until: float) -> bool:
        """Handle commands and deadlines until ``until`` without the broker; False when
        told to stop at once, or to stop once answered with nothing left unanswered."""
        self._offline = True
        try:
            while (left := until - time.monotonic()) > 0:
                if self._stopping and not self._unsent and not self.collector.outstanding:
                    # shut down with every future answered: no broker is needed to end.
                    # It waited the outage out all the same (30 s), and logged it
                    return False
                if self._deadlines:
                    left = min(left, max(0.01, self._deadlines[0][0] - time.monotonic()))
                if self._take(left) is None:
                    return False
                self._expire()
            return True
        finally:
            self._offline = False

    def _take(self, block: float | None) -> int | None:
        """Handle the commands waiting (waiting up to ``block`` s for one); return how many,
        or None to stop at once (abandoned)."""
        try:
            command = self._commands.get(timeout=block) if block else self._commands.get_nowait()
        except queue.Empty:
            return 0
        count = 0
        while True:
            count += 1
            if isinstance(command, Submit):
                self._unsent_order.extend(command.entries)
                for entry in command.entries:
                    self._unsent[entry.task.id] = entry
                    if entry.deadline is not None:
                        heapq.heappush(self._deadlines, (entry.deadline, entry.task.id))
            elif isinstance(command, CancelCommand):
                self._cancel(command)
            else:
                self._stopping = True
                if command.cancel_futures:
                    self._cancel_all = True
                    try:  # close(): every copy, as a stopping master (nobody waits)
                        self._cancel_every_future(every_copy=command.abandon is not None)
                    except TransportError as exc:
                        if command.abandon is None:
                            raise
                        self._failed_with = exc  # as a stopping master: no call after it
                        # close(): it stops now all the same, failing what was not taken
                        # back (the failure ended the Stop here, and the thread reconnected
                        # and waited for every result, as after shutdown())
                if command.abandon is not None:
                    self.broken = command.abandon
                    return None
            if count >= COMMANDS_PER_TURN:
                return count  # the rest in the next turn, after a send and a read
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return count

    def _send(self) -> list[bytes]:
        """Submit the oldest unsent tasks, at most one batch, and start waiting for them;
        return the results already there, read in the same round trip where the
        transport can (:meth:`~distq.transport.base.Producer.submit_then_results`)."""
        batch: list[Entry] = []
        while self._unsent_order and len(batch) < MESSAGE_BATCH:
            entry = self._unsent_order.popleft()
            # else cancelled or late: on this thread (_unsent) or on the caller's
            if self._unsent.pop(entry.task.id, None) is not None and self._sending(entry):
                batch.append(entry)
        self.collector.expect((entry.task.id, entry) for entry in batch)
        bodies = [entry.body for entry in batch]
        # recorded first: a send that fails may have reached the broker (see _reconcile);
        # the answered ones forgotten now, not only at the next reconcile (as a master)
        self.ledger.compact(self.collector.waiting_ids().__contains__, self.collector.outstanding)
        self.ledger.record((entry.task.id, entry.body) for entry in batch)
        return self.producer.submit_then_results(bodies, MESSAGE_BATCH, 0.0)

    def _cancel_every_future(self, every_copy: bool = False) -> None:
        """shutdown(cancel_futures=True)'s cancel; to be done again, once the broker
        answers, when it could not withdraw (offline, or the broker failed meanwhile).
        ``every_copy`` (close()): see :meth:`_cancel`."""
        offline = self._offline
        self._cancel(CancelCommand(self._every_future()), every_copy)
        self._cancel_all = offline

    def _every_future(self) -> list[DistqFuture[Any]]:
        sent = [entry.future for _, entry in self.collector.waiting()]
        return sent + [entry.future for entry in self._unsent.values()]

    def _cancel(self, command: CancelCommand, every_copy: bool = False) -> None:
        """Cancel what was not sent; withdraw what was, where the transport can.
        ``every_copy`` (close(): nobody waits for a result after it) then takes back the
        copies a cancel leaves, queued again after a worker had them, their futures not
        cancelled (that worker's copy may still run), as a stopping master does."""
        try:
            answers: dict[int, bool] = {}
            withdraw: list[Entry] = []
            for future in command.futures:
                if future.done():
                    answers[id(future)] = future.cancelled()
                elif (entry := self._unsent.pop(future.task_id, None)) is not None:
                    mine = self._sending(entry)  # else a cancel() on its caller's thread
                    answers[id(future)] = _cancelled(future) if mine else future.cancelled()
                elif (entry := self.collector.entry(future.task_id)) is not None:
                    withdraw.append(entry)
                else:
                    answers[id(future)] = False
            taken: set[str] = set()
            try:
                self._withdraw(withdraw, taken, redelivered=False)
            finally:  # those taken back before a call failed too: they never run
                for entry in withdraw:
                    gone = entry.task.id in taken
                    if gone:
                        self.collector.discard(entry.task.id)
                    answers[id(entry.future)] = gone and _cancelled(entry.future)
            command.answers = [answers[id(future)] for future in command.futures]
            if every_copy:
                self._withdraw([entry for entry in withdraw if entry.task.id not in taken], set())
        finally:
            if len(command.answers) != len(command.futures):  # the broker failed meanwhile
                command.answers = [future.cancelled() for future in command.futures]
            command.done.set()

    def _expire(self) -> None:
        """Fail the futures of tasks past their ``task_timeout``, withdrawing them first."""
        now = time.monotonic()
        unsent: list[Entry] = []
        sent: list[Entry] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, task_id = heapq.heappop(self._deadlines)
            entry = self._unsent.pop(task_id, None)
            if entry is not None:
                if self._sending(entry):  # else a cancel() took it back meanwhile
                    unsent.append(entry)
            elif (entry := self.collector.entry(task_id)) is not None:
                sent.append(entry)
        self._prune_deadlines()
        never_sent = (
            "it was never sent: the broker is unreachable (the executor is reconnecting)"
            if self._recovering
            else "it was never sent: the executor was still sending earlier tasks"
        )
        for entry in unsent:
            _time_out(entry, never_sent)
        if not sent:
            return
        # withdrawn first: if the broker fails meanwhile, they are still waited for, and
        # time out again once it is back (or fail with BrokenExecutor if it stays away)
        withdrawn = "no worker took it; it was withdrawn from the queue and will not run"
        again = (
            "a worker had it before it was queued again (stalled past its lease, or handed "
            "back): the queued copy was withdrawn, but that worker's may still run; its "
            "result will be ignored"
        )
        taken: set[str] = set()
        held: set[str] = set()  # queued again after a worker had it: that copy may run
        try:
            self._withdraw(sent, taken, redelivered=False)
            self._withdraw([entry for entry in sent if entry.task.id not in taken], held)
        except TransportError:
            for entry in sent:
                if entry.task.id in taken or entry.task.id in held:  # before the failure
                    self.collector.discard(entry.task.id)
                    _time_out(entry, withdrawn if entry.task.id in taken else again)
                else:
                    heapq.heappush(self._deadlines, (now, entry.task.id))
            raise
        kept = (
            "the broker is unreachable, so it was not withdrawn: it may still run; its "
            "result will be ignored"
            if self._offline
            else "a worker has it, or the transport cannot withdraw it; its result will be ignored"
        )
        for entry in sent:
            task_id = entry.task.id
            self.collector.discard(task_id)
            if task_id not in taken and task_id not in held:
                self._kept_unanswered = True
            _time_out(entry, withdrawn if task_id in taken else again if task_id in held else kept)

    def _withdraw(self, entries: list[Entry], taken: set[str], redelivered: bool = True) -> None:
        """The producer's withdraw of ``entries``, where there is anything to ask and a
        broker to ask; for those not queued, of their retry, queued again or waiting out
        its delay (:func:`~distq.retries.retries_by_attempt`): a cancelled task that had
        failed once ran again after it, its retry left. Every copy of a task sent again
        after a reconcile is taken, then the retries of one found fewer times than it was
        sent (a worker may have failed a copy), as a stopped master does. The ids taken
        back go into ``taken`` call by call: those before a call that fails are gone all
        the same. ``redelivered=False`` (a cancel) leaves a task queued again after a
        worker had it: that copy may still run (:meth:`Producer.withdraw`)."""
        if not entries or self._offline or not self.producer.takes_back:
            return
        sent = [(entry.task.id, entry.body) for entry in entries]
        copies: Counter[str] = Counter()  # of each id taken back
        self._take_back(sent, taken, copies, redelivered)

        def every_copy_found(task_id: str) -> bool:
            return copies[task_id] > self._resubmitted[task_id]

        retries = retries_by_attempt(self.codec, sent, every_copy_found, self.collector.sent_ago)
        for attempt in retries:
            for start in range(0, len(attempt), MESSAGE_BATCH):
                self._take_back(attempt[start : start + MESSAGE_BATCH], taken, copies, redelivered)

    def _take_back(
        self,
        batch: list[tuple[str, bytes]],
        taken: set[str],
        copies: Counter[str],
        redelivered: bool,
    ) -> None:
        """Withdraw ``batch``'s bodies, into ``taken`` and ``copies``; those found of a
        task sent again, again until no copy is found: one withdraw takes one copy."""
        while batch:
            batch = withdraw_once(
                self.producer, batch, taken, copies, self._resubmitted, redelivered
            )

    def _prune_deadlines(self) -> None:
        """Drop the deadlines of tasks answered, cancelled or withdrawn before them.

        A deadline stays in the heap until it passes, answered or not; without this, an
        executor with ``task_timeout=T`` would hold one entry per task of the last T
        seconds. Rebuilt once the heap is more than twice the open tasks, so the cost per
        task stays constant and the heap stays bounded by the tasks still open.
        """
        open_tasks = len(self._unsent) + self.collector.outstanding
        if len(self._deadlines) <= max(DEADLINES_KEPT, 2 * open_tasks):
            return
        self._deadlines = [
            (deadline, task_id)
            for deadline, task_id in self._deadlines
            if task_id in self._unsent or self.collector.is_waiting(task_id)
        ]
        heapq.heapify(self._deadlines)

    def _on_result(self, result: Result, entry: Entry, _round_trip: float) -> None:
        future = entry.future
        if future.done():
            return
        with contextlib.suppress(concurrent.futures.InvalidStateError):  # see fail_stuck
            if result.status == "ok":
                future.set_result(result.value)
                return
            future.set_exception(
                RemoteError(
                    future.task_name,
                    result.task_id,
                    result.worker,
                    result.error_type or "Exception",
                    result.error_message or "",
                    result.error_traceback,
                )
            )

    def _on_malformed(self, error: EnvelopeError) -> None:
        log.warning("dropped a result: %s", error)
        if isinstance(error, UnverifiedRefusal):  # its wait, if it ends, says so
            entry = self.collector.entry(error.task_id)
            if entry is not None:
                entry.future.refused = str(error)

    def _fail_all(self, reason: str) -> None:
        """Fail every unanswered future, and answer every command left (the thread ends)."""
        with self._lock:  # a cancel() from now on waits for no one: this thread has ended
            self._not_sent.clear()
        entries = self._unanswered()
        self._unsent.clear()
        self._unsent_order.clear()
        self.collector.forget()
        self._fail([entry.future for entry in entries], reason)

    def _fail(self, futures: list[DistqFuture[Any]], reason: str) -> int:
        """Fail ``futures`` still pending with :class:`BrokenExecutor`; how
        many. One resolved meanwhile (a cancel() on its caller's thread, between any look
        and the set) stays as it is."""
        failed = 0
        for future in futures:
            error = BrokenExecutor(reason)
            error.__cause__ = self.broken_by  # ConfigError or TransportError: exit 2 or 3
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                future.set_exception(error)
                failed += 1
        return failed

    def fail_stuck(self, reason: str) -> int:
        """At exit, from the exiting thread, while this one is stuck in a broker call:
        take no more commands, answer the cancels waiting, and fail every unanswered
        future with :class:`BrokenExecutor` (their done-callbacks run); how many."""
        with self._lock:
            self._ended, self._given_up = True, True
            self._not_sent.clear()  # nothing more is sent
        try:
            entries = self._unanswered()
        except RuntimeError:  # changed while read: the thread is not stuck after all
            entries = []
        failed = self._fail([entry.future for entry in entries], reason)
        # and those the thread holds between its structures: a batch it took to send
        # when it stopped on the lock a thread a signal interrupted holds (a signal
        # handler's close(), the main thread in put()): they stayed pending for good
        try:
            held = [future for future in self.futures if not future.done()]
        except RuntimeError:  # changed while read: the thread is not stuck after all
            held = []
        failed += self._fail(held, reason)
        self.callbacks.close()  # they run, then its thread ends: the exit need not wait
        return failed

    def _unanswered(self) -> list[Entry]:
        """The entries not answered yet, those of the Submits still queued too; the queue
        is emptied, its cancels answered (with what they can be: done or not)."""
        entries = list(self._unsent.values()) + [e for _, e in self.collector.waiting()]
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return entries
            if isinstance(command, Submit):
                entries += command.entries
            elif isinstance(command, CancelCommand):
                command.answers = [f.cancelled() for f in command.futures]
                command.done.set()


def _cancelled(future: DistqFuture[Any]) -> bool:
    """Cancel a pending future and tell its waiters (``concurrent.futures.wait``) so."""
    if not concurrent.futures.Future.cancel(future):
        return False
    with contextlib.suppress(RuntimeError):  # told already: by a cancel on another thread
        future.set_running_or_notify_cancel()
    return True


def _time_out(entry: Entry, why: str) -> None:
    """Fail ``entry``'s future with :class:`TaskTimeout` saying ``why``."""
    time_out(entry.future, why)
