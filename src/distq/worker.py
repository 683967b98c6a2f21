"""The worker: lease tasks, run them, settle them, until told to stop.

Lifecycle (read :meth:`Worker.run` top to bottom): install signal handlers, start a
keeper and one thread per slot, wait until the slots end (a signal, or
``exit_when_idle``), restore the handlers and say what was done. Each slot loops with
its own consumer: connect, fetch a batch (:class:`~distq.batch.BatchSizer` sizes it),
run it on the slot's thread (:func:`~distq.batch.run_batch`, each task by the
:class:`~distq.runner.TaskRunner`, once its master is known alive:
:class:`~distq.masters.MasterWatch`), settle it in one call and hand back what did not
run. Short tasks never leave their thread, which keeps round trips short. The keeper
(:class:`~distq.keeper.Keeper`, whose docstring has the rules the slots and it keep)
looks after batches that run long: it renews their lease every heartbeat interval,
hands back the tasks they have not started (for idle workers), and enforces time
limits. Whatever is still in hand goes back to the queue on the way out.

Broker outages: a failed call closes the slot's consumer; the slot reconnects with
capped exponential backoff and jitter (:class:`~distq.backoff.Backoff`). The worker
prints one line when the broker is lost and one when it is back, whatever the number
of slots (:class:`~distq.backoff.Outage`).

Time limits (``DISTQ_TASK_TIME_LIMIT``, :mod:`distq.timelimits`): a task past its limit
fails that attempt (retried per policy, like an error) and its slot goes on. Python
cannot interrupt a thread, whether it computes, sleeps or waits on I/O, so the function
is not stopped: the keeper settles the attempt, hands back the batch's tasks not
started, and gives the slot a new thread with the same consumer. The old thread runs
on until the function returns, and its result is dropped; a function that never
returns keeps its thread (memory, and CPU if it computes) for the life of the process.
The worker says how many such threads it has left behind. A task that returns past its
limit before the keeper acted (:meth:`Worker._late`) fails that attempt too.

Shutdown, sized for Kubernetes' ``terminationGracePeriodSeconds`` (default 30 s): the
first SIGTERM/SIGINT is warm (stop fetching, finish the task running in each slot, hand
back the rest of its batch), bounded by ``DISTQ_DRAIN_SECONDS`` (default 20 s): tasks
still running then are handed back and the worker exits 0. The second signal is cold
(hand back everything in hand at once, including running tasks, which another worker
will run again).
"""

from __future__ import annotations

import contextlib
import operator
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, NoReturn, get_args

import msgspec

from distq.backoff import Backoff, Outage
from distq.batch import Batch, BatchSizer, Running, run_batch
from distq.codec import Codec
from distq.config import CONCURRENCY, DEFAULTS, Settings
from distq.console import Console, announce
from distq.counts import counted
from distq.ending import Ending, Endings, Outcome
from distq.envelope import Task, shown
from distq.errors import (
    CertificateRejected,
    ConfigError,
    MessageRefused,
    SettledThenFailed,
    SettledThenRefused,
    Shutdown,
    SignalExit,
    TransportError,
)
from distq.errortext import describe
from distq.health import WorkerHealth
from distq.keeper import Keeper
from distq.limits import worker_name_problem
from distq.masters import MasterWatch
from distq.runner import TaskRunner
from distq.signals import leave_if_asked, stop_signals
from distq.slots import FAILURES_FORGOTTEN_S, Slot
from distq.tasks import Registry
from distq.telemetry import WorkerTelemetry, called
from distq.timelimits import TimeLimits
from distq.transport.base import Consumer, Delivery, Settlement, Transport

#: A cold stop's bound on closing the slots' connections, all at once (a hung broker
#: held each close for seconds, one after the other: past Kubernetes' grace period).
CLOSE_SECONDS = 5.0
#: Past the drain, how long slots that hold no task may take to end their fetch.
IDLE_SLOTS_GRACE = 5.0
#: A fetch this long past its own wait has a broker that does not answer (frozen, paused,
#: cut off, before the call times out): no idle time for --exit-when-idle while it lasts,
#: and the idle time counts afresh once the broker answers (docs23 M1).
FETCH_OVERDUE_S = 1.0
#: The GIL's switch interval in a worker with several slots (Python's default: 5 ms).
#: Slots running Python code hold the GIL by turns; the keeper, which renews their
#: leases, waits for it at each step of a broker call, behind every one of them: with
#: 64 such slots even one renewal for all took seconds, past the 5 s lease (128 tasks
#: ran 176 times). At 1 ms each wait is a fifth as long (each ran once).
KEEPER_SWITCH = 0.001


#: The statuses a worker's lines state as it stops on an error (``distq worker``'s alike):
#: a slot's or the keeper's end, a setting the broker refused, a certificate refused.
EXIT_FAILED, EXIT_CONFIG, EXIT_UNREACHABLE = 1, 2, 3


def _refusal_status(exc: ConfigError | CertificateRejected) -> int:
    """The exit status of a worker a refusal stops (``distq worker``'s ``_exit_code``)."""
    return EXIT_UNREACHABLE if isinstance(exc, TransportError) else EXIT_CONFIG


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker runs; :meth:`from_settings` takes the shared settings' part."""

    concurrency: int = CONCURRENCY
    prefetch: int = DEFAULTS.prefetch
    heartbeat_interval: float = DEFAULTS.heartbeat_interval
    exit_when_idle: float | None = None
    worker_id: str = ""
    queue: str = DEFAULTS.queue
    drain_seconds: float = DEFAULTS.drain_seconds
    time_limits: TimeLimits = field(default_factory=TimeLimits)

    def __post_init__(self) -> None:
        problem = worker_name_problem(self.worker_id)  # as --worker-id's: one check
        if problem:
            raise ConfigError(f"worker_id {problem}")

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        concurrency: int = CONCURRENCY,
        exit_when_idle: float | None = None,
        worker_id: str = "",
    ) -> WorkerOptions:
        return cls(
            concurrency=concurrency,
            prefetch=settings.prefetch,
            heartbeat_interval=settings.heartbeat_interval,
            exit_when_idle=exit_when_idle,
            worker_id=worker_id,
            queue=settings.queue,
            drain_seconds=settings.drain_seconds,
            time_limits=settings.task_time_limit,
        )


def _poll(options: WorkerOptions) -> float:
    """How long a slot's fetch waits for tasks."""
    return min(options.heartbeat_interval, 1.0)


def _past_its_wait(since: float, wait: float, now: float) -> bool:
    """Whether a call begun at ``since`` that waits up to ``wait`` s for tasks is
    :data:`FETCH_OVERDUE_S` past that wait at ``now``: its broker did not answer meanwhile."""
    return now - since > wait + FETCH_OVERDUE_S


def _fetch_overdue(slots: list[Slot], poll: float) -> bool:
    """Whether a slot's fetch has run :data:`FETCH_OVERDUE_S` past its wait of ``poll``
    s, or a question it asked the broker (which waits for nothing but the answer) has
    gone unanswered that long: its broker does not answer."""
    now = time.monotonic()
    return any(
        (slot.fetching is not None and _past_its_wait(slot.fetching, poll, now))
        or (slot.unanswered is not None and now - slot.unanswered > FETCH_OVERDUE_S)
        for slot in slots
    )


class Worker:
    """Runs registered tasks from one transport with ``concurrency`` slots."""

    def __init__(
        self,
        transport: Transport,
        registry: Registry,
        options: WorkerOptions,
        console: Console,
        health: WorkerHealth | None = None,
        telemetry: WorkerTelemetry | None = None,
        codec: Codec | None = None,
    ) -> None:
        self.transport, self.options, self.console = transport, options, console
        self.health = health or WorkerHealth()
        self.telemetry = telemetry or WorkerTelemetry()
        self.id = options.worker_id or default_worker_id()
        # made in Python, without a codec: its letters still say its own transport's words
        codec = codec or Codec(transport=getattr(transport, "name", None))
        self.runner = TaskRunner(registry, Endings(self.id, options.queue, codec), console)
        # DISTQ_MAX_MESSAGE_BYTES, before a refusal holds the codec below it (_hold_to)
        self._max_message_bytes = codec.max_message_bytes
        self.limits = options.time_limits.with_registered(registry.time_limits())
        self._batch_limits = self.limits or None  # asked once, not of each batch
        self.masters = MasterWatch()
        self.outage = Outage()
        self._stopping = threading.Event()  # warm: finish what runs, take nothing new
        self._abort = threading.Event()  # cold: hand back everything now
        self._drain_until: float | None = None
        self._signals = 0
        self._hurried_at: float | None = None  # a second signal's time: "stop at once"
        # run()'s try, where a second signal's Shutdown is caught: raised before it or in
        # its finally, it escaped run() (no "worker exit" line, no exit code)
        self._catches_shutdown = False
        # a setting the broker refused, or its certificate refused: run() raises it
        self._fatal: ConfigError | CertificateRejected | None = None
        self._slot_error: str | None = None  # why a slot's thread ended, until said
        self._slot_failed = False  # a slot's thread ended on an error: exit 1
        # the exit status a line has stated (a slot's or the keeper's end): it holds, a
        # setting refused after it or a task's os._exit notwithstanding (_exit_status)
        self._exit_said: int | None = None
        self._keeper_error: str | None = None  # why the keeper's thread ended, until said
        self._slots: list[Slot] = []  # run()'s, for a task's os._exit to be named
        self.keeper = Keeper(
            transport,
            self.health,
            self.outage,
            console,
            interval=options.heartbeat_interval,
            limits=self.limits,
            stopping=self._stopping,
            settle=self._settle,
            count=self._count,
            drop_consumer=self._drop_consumer,
            timed_out=self._timed_out,
            start_slot=self._start_slot,
            cannot_start=self._cannot_start,
            lost=self._lost,
            back=self._back,
            refused=self._refused,
        )

    # -- lifecycle -------------------------------------------------------------
    def run(self, ended: Callable[[int, FrameType | None], object] | None = None) -> int:
        """Work until a signal or ``exit_when_idle``; return the exit code: 0, or 1 when
        a slot's thread ended on an error (a bug in distq: the others stop too). A
        setting or certificate the broker refused is raised (exit 2 or 3), unless a line
        stated another exit status before it (:meth:`_exit_status`): said, and that
        status returned.

        ``ended`` handles the stop signals once the task loop is over, in place of the
        handlers found, which are otherwise put back: ``distq worker``'s found one ends
        it "while connecting", and a signal before its own took over lost the summary
        line and the run's exit code (exit 0)."""
        started = time.monotonic()
        # --exit-when-idle counts from here: not the wait for the broker before the start
        self.health.took(0)
        slots = [Slot(i) for i in range(self.options.concurrency)]
        done = threading.Event()
        previous = self._install_signal_handlers()
        try:  # a stop swallowed before these handlers were in place: no loop to start
            leave_if_asked()
        except SignalExit:
            self._restore_signal_handlers(previous)
            raise
        self._slots = slots
        _exits_fail_while_running(self, True)
        switching = sys.getswitchinterval()
        if self.options.concurrency > 1:  # slots running Python code: see KEEPER_SWITCH
            sys.setswitchinterval(min(switching, KEEPER_SWITCH))
        try:
            self._catches_shutdown = True
            self._start(slots, done)
            self._wait(slots)
        except Shutdown:
            self._stop_cold(slots)
            # a slot or the keeper that ended as the second signal came: the main loop that
            # says it was left, and the worker exited 0 with no line (only a traceback)
            self._slot_stopped()
            self._keeper_ended()
        finally:
            self._catches_shutdown = False  # first: no call before it, where a signal lands
            done.set()  # the keeper ends
            _exits_fail_while_running(self, False)
            sys.setswitchinterval(switching)
            self._restore_signal_handlers(
                previous if ended is None else dict.fromkeys(previous, ended)
            )
        # the slots have ended: the last beat, growing old while the process stops
        # (waiting for threads its tasks left), read as "stalled" on /healthz
        self.health.liveness.end("main")
        snap = self.health.snapshot()
        self.console.info(
            f"worker exit. {snap.tasks_ok} ok, {snap.tasks_failed} failed for good, "
            f"{snap.tasks_retried} retried, {snap.dead_lettered} dead-lettered "
            f"in {time.monotonic() - started:.1f} s"
        )
        status, fatal = self._exit_status(), self._fatal
        if fatal is not None and status == _refusal_status(fatal):
            raise fatal  # said by the caller (``distq worker``: its last line)
        if fatal is not None:  # refused after a line said the exit status, which holds
            self.console.error(str(fatal))
        return status

    def _exit_status(self) -> int:
        """The status the worker exits with, as known now: the one a line has stated
        (:attr:`_exit_said`); else a setting the broker refused (2, its certificate 3,
        :func:`_refusal_status`); else 1 once a slot's or the keeper's thread ended on an
        error; else 0. A line that said "(exit 1)" of a slot's end while a refusal was
        under way was followed by exit 2 (the refusal's, raised at the end)."""
        if self._exit_said is not None:
            return self._exit_said
        if self._fatal is not None:
            return _refusal_status(self._fatal)
        return EXIT_FAILED if self._slot_failed else 0

    def _stating_exit(self) -> str:
        """A line's "(exit N...)" as the worker stops on an error: N its exit status
        (:meth:`_exit_status`), kept from now on; with a refusal's (a setting or
        certificate the broker refused, a thread that could not start), that its error
        is said last (``distq worker``'s last line)."""
        self._slot_failed = True
        status = self._exit_said = self._exit_status()
        if self._fatal is None or status == EXIT_FAILED:
            return f"(exit {status})"
        return f"(exit {status}, for the error said last)"

    def _ending_status(self, given: int) -> int:
        """The status a task's ``os._exit(given)`` ends the worker with: one a line has
        stated holds; else the status the process's parent reads (the low 8 bits: an
        ``os._exit(256)`` exited 0, which a supervisor takes for a clean stop, its line
        saying "exit 256"), and for 0 the worker's own, 1 at least."""
        if self._exit_said is not None:
            return self._exit_said
        return given % 256 or self._exit_status() or EXIT_FAILED

    @property
    def signal_deadline(self) -> float | None:
        """When the drain of a stop by signal runs out (``time.monotonic()``; a second
        signal's time, which ends it at once), or None if no signal stopped this worker:
        its process's exit waits no longer than that for threads its tasks left
        (``distq worker``)."""
        if self._hurried_at is not None:
            return self._hurried_at
        return self._drain_until if self._signals else None

    def _start(self, slots: list[Slot], done: threading.Event) -> None:
        """The keeper's thread and a thread per slot; a thread that cannot start (a limit
        on threads or memory) stops the worker warm, exit 2 naming it, not a traceback."""
        keeper = threading.Thread(
            target=self._keep, args=(slots, done), name="distq-keeper", daemon=True
        )
        which = "its keeper"
        try:
            keeper.start()
            for slot in slots:
                which = f"slot {slot.index + 1} of {len(slots)}"
                self._start_slot(slot)
        except (RuntimeError, MemoryError) as exc:  # "can't start new thread", ulimit -v
            self._cannot_start(which, exc)

    def _keep(self, slots: list[Slot], done: threading.Event) -> None:
        """The keeper's thread: an error that ends it (one outside its work on a slot, or
        no :class:`Exception`) is kept for the main loop to say (:meth:`_keeper_stopped`).
        It ended in silence: the worker ran on, its long tasks' leases lapsed (each ran
        again on another slot) and their time limits went unenforced, and it exited 0."""
        try:
            self.keeper.keep(slots, done)
        except BaseException as exc:
            self._keeper_error = describe(exc)
            raise

    def _cannot_start(self, which: str, exc: RuntimeError | MemoryError) -> None:
        """A thread the worker needs did not start: stop warm, exit 2 naming the limits."""
        self._refused(
            ConfigError(
                f"could not start {which} ({str(exc) or type(exc).__name__}): the process "
                "is at a limit on threads or memory (ulimit -u or -v, a container's pids or "
                "memory limit); lower --concurrency, or raise the limit"
            )
        )

    def _start_slot(self, slot: Slot) -> None:
        thread = threading.Thread(
            target=self._work,
            args=(slot, slot.generation),
            name=f"distq-slot-{slot.index}",
            daemon=True,
        )
        thread.start()
        slot.thread = thread  # started: the main loop joins it ("cannot join ... before
        # it is started" ended the worker when it met a replacement thread just made)

    def _wait(self, slots: list[Slot]) -> None:
        """Until every slot has ended; a warm stop when idle for ``exit_when_idle``, and a
        cold one when a warm stop outlasts ``drain_seconds``."""
        idle = self.options.exit_when_idle
        poll = _poll(self.options)
        # it beats liveness each round: at most a third of the stall limit apart, or a
        # limit under 0.2 s made a healthy worker's /healthz flip between 200 and 503
        beat = min(0.2, self.health.liveness.stall_seconds / 3)
        while True:
            threads = [slot.thread for slot in slots if slot.thread is not None]
            alive = any(slot.alive() for slot in slots)
            self._slot_stopped()  # after that check: a slot says why before its thread ends
            if self._keeper_stopped(slots) or not alive:
                return
            for thread in threads:
                thread.join(beat / len(threads))
                self.health.beat("main")
            if (
                idle is not None
                and not self._stopping.is_set()
                # a broker away is no empty queue; a manager master gone is a job ended
                and not (self.outage.ongoing and not self.transport.queues_in_master)
                and self.health.idle_for() >= idle
                and not _fetch_overdue(slots, poll)
            ):
                self.console.info("task_queue is empty")
                self._stop_warm()
            if self._drain_until is not None and time.monotonic() >= self._drain_until:
                busy = any(slot.batch is not None for slot in slots)
                if not busy and time.monotonic() < self._drain_until + IDLE_SLOTS_GRACE:
                    continue  # no task in hand: the slots end with their fetch
                if any(thread.is_alive() for thread in threads):
                    if busy:
                        self.console.info(_drain_ran_out(slots, self.options.drain_seconds))
                        self._stop_cold(slots)
                    else:  # slots still in a call, past their grace, with nothing in hand:
                        # nothing to hand back nor wait for (2 s for their locks and 5 s for
                        # their threads took a worker idle on a frozen manager master, its
                        # fetches held for REPLY_TIMEOUT, past its grace period)
                        self._abort.set()
                return

    def _exit_called(self, given: int, status: int, thread: threading.Thread) -> None:
        """Say which task ends the process with ``os._exit(given)``, called on
        ``thread``, just before the exit with ``status``: no line said why the worker
        ended, and the last ``Get task`` line, which README had name the task, named
        another with more than one slot (a task a slot beside it started since; JSON logs
        have no such line). ``given`` as the task gave it: its ``os._exit(0)`` exits 1,
        and a line that said "called os._exit(1)" sent the operator to look for that."""
        if thread is threading.main_thread():  # distq's own exit (a signal's), no task's
            return
        slot = next((slot for slot in self._slots if slot.thread is thread), None)
        batch = slot.batch if slot is not None else None
        claim = batch.claim[:1] if batch is not None else []  # the task it runs, if any
        named = "a task"
        if claim:
            with contextlib.suppress(Exception):  # it ran, so it opens; never stop the exit
                task = self.runner.codec.open_task(claim[0].body)
                named = f"task {shown(called(task))} {shown(task.id)}"
        where = f"slot {slot.index}" if slot is not None else f"thread {shown(thread.name)}"
        refusal = self._refusal_unsaid(given, status)
        self.console.error(
            f"{named} called os._exit({given}) in {where}: the worker ends with it (exit "
            f"{status}{'' if refusal is None else ', for the error said last'}), and the "
            "tasks it holds go back to the queue to run again"
        )
        if refusal is not None:
            self.console.error(str(refusal))

    def _refusal_unsaid(self, given: int, status: int) -> ConfigError | CertificateRejected | None:
        """The refusal whose status (2, 3) a task's ``os._exit(given)`` ends the worker with,
        ``given`` being 0 to the system (:meth:`_ending_status`), and which no line said:
        ``distq worker`` says it as it ends, which an ``os._exit`` skips. It exited 2 with
        no line naming the setting. None if there is none such."""
        fatal = self._fatal
        if fatal is None or self._exit_said is not None or given % 256:
            return None
        return fatal if status == _refusal_status(fatal) else None

    def _slot_stopped(self) -> None:
        """Say once that a slot's thread ended on an error, and stop the others."""
        error, self._slot_error = self._slot_error, None
        if error is not None:
            self.console.error(f"{error}; the worker stops {self._stating_exit()}")
            self._stop_warm()

    def _keeper_stopped(self, slots: list[Slot]) -> bool:
        """Whether the keeper's thread ended on an error: if so, say it and stop cold, exit
        1. Cold, not warm: with no keeper, the leases of the tasks in hand lapse (they run
        again elsewhere meanwhile) and no time limit ends a task that hangs; handed back
        now, they run once, elsewhere. A keeper that went on past such an error would
        renew nothing each tick the error came back, saying so while leases lapsed."""
        if not self._keeper_ended():
            return False
        self._stop_warm()  # first: /readyz says "stopping" meanwhile (the cold stop does not)
        self._stop_cold(slots)
        return True

    def _keeper_ended(self) -> bool:
        """Whether the keeper's thread ended on an error: if so, say it once, exit 1 (or
        the refusal's under way: :meth:`_stating_exit`; the stop is the caller's)."""
        if self._keeper_error is None:
            return False
        stated = self._stating_exit()  # first: a signal's Shutdown may land in the line below
        error, self._keeper_error = self._keeper_error, None
        self.console.error(
            f"the keeper stopped: {error} (a bug in distq: please report this line); without "
            "it no lease is renewed and no time limit enforced: the worker stops at once, "
            f"handing back the tasks it holds {stated}"
        )
        return True

    def _refused(self, exc: ConfigError | CertificateRejected) -> None:
        """The broker refused a setting mid-run (a key of another type, an ACL without
        distq's keys), or TLS refused its certificate as the worker connected again: no
        reconnect mends that, so stop warm and exit 2 (3 for the certificate, as at
        start) with its message, instead of a loop of "reconnecting" / "reconnected"."""
        if self._fatal is None:
            self._fatal = exc
        self._stop_warm()

    def _hold_to(self, limit: int) -> None:
        """The broker refused a message of this worker's over ``limit`` bytes (its own
        ``max_message_size``): the tasks go back with the connection, and when they run
        again their results and dead letters are held to it (:meth:`Codec.hold_to`), so
        a task whose result is too large fails for good, saying why, instead of running
        again without end (input17). Said once per limit."""
        codec = self.runner.codec
        if codec.letter_limit is None or limit < codec.letter_limit:
            self.console.error(
                f"the broker takes no message over {limit:,} bytes (its max_message_size); "
                f"DISTQ_MAX_MESSAGE_BYTES is {self._max_message_bytes:,} here: this worker "
                "holds its results and dead letters to the broker's limit from now on; set "
                f"DISTQ_MAX_MESSAGE_BYTES to at most {limit:,} on every process"
            )
        codec.hold_to(limit)

    def _stop_warm(self) -> None:
        if not self._stopping.is_set():
            self._drain_until = time.monotonic() + self.options.drain_seconds
            self._stopping.set()
            # not ready from now on, even while a slot still runs its task (the README's
            # "503 while stopping"): before, /readyz said so only once a slot had ended
            self.health.readiness.stopping()

    def _stop_cold(self, slots: list[Slot]) -> None:
        """Close the consumer under every running batch; its tasks go back."""
        self._abort.set()
        self._stopping.set()
        closing: list[Consumer] = []
        locks_by = time.monotonic() + 2.0  # for all the slots, not for each
        for slot in slots:
            if not slot.lock.acquire(timeout=max(0.0, locks_by - time.monotonic())):
                continue  # in a broker call; the slot closes its consumer itself
            try:
                if slot.batch is not None and slot.consumer is not None:
                    slot.handed_back = True
                    closing.append(slot.consumer)
                    slot.consumer = None
            finally:
                slot.lock.release()
        # the slots in a broker call end it (and close their consumer) meanwhile, within
        # the same bound: one after the other, 5 s of closes then 5 s of joins, the stop
        # took the drain plus 12 s on a hung broker, past the README's 10 s
        ending = [
            slot.thread
            for slot in slots
            if slot.thread is not None and not slot.handed_back  # else it is inside its task
        ]
        self._close_all(closing, ending)

    def _install_signal_handlers(self) -> dict[int, object]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, object] = {}
        for sig in stop_signals():
            previous[sig] = signal.signal(sig, self._on_signal)
        return previous

    def _restore_signal_handlers(self, previous: dict[int, object]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        name = signal.Signals(signum).name
        # the cold stop is under way (this second signal's, or the drain's that ran out):
        # raising into it broke it (a slot's lock it had just taken was held for good)
        if self._signals > 2 or (self._signals == 2 and self._abort.is_set()):
            announce(self.console, f"{name} again: already handing back every task and exiting")
            return
        if self._signals == 1:
            announce(
                self.console,
                f"{name}: finishing the tasks that run (for at most "
                f"{self.options.drain_seconds:g} s), handing back the rest "
                f"(send {name} again to stop at once)",
            )
            self._stop_warm()
        else:
            self._hurried_at = time.monotonic()
            self.transport.hurry()  # the closes to come: no wait on a broker that is away
            announce(self.console, f"{name} again: handing back every task in hand and exiting")
            if self._catches_shutdown:
                raise Shutdown
            # before the slots start (they end at once), or once they have ended: nothing
            # is in hand for a cold stop to hand back
            self._abort.set()
            self._stopping.set()

    # -- one slot: a consumer, and its tasks run on the slot's thread -------------
    def _work(self, slot: Slot, generation: int) -> None:
        """A slot's loop: connect, fetch a batch, run it, settle it; reconnect on errors.

        Returns at once when it finds itself left behind (``generation`` is past).
        """
        _threads_it_starts_are_not_daemons()
        try:
            self._work_on(slot, generation)
        except BaseException as exc:  # a bug: said, and the worker stops (not one slot fewer)
            self._slot_error = f"slot {slot.index} stopped: {describe(exc)}"
            raise
        finally:
            if slot.generation == generation:
                with slot.lock:
                    self._close(slot.consumer)
                    slot.consumer = None
                self.health.connected(False, f"{self.id}-{slot.index}", "worker stopping")

    def _work_on(self, slot: Slot, generation: int) -> None:
        sizer = BatchSizer(self.options.prefetch)
        poll = _poll(self.options)
        claimed: list[Delivery] = []  # the next batch, leased by the last settle
        while not self._stopping.is_set() and slot.generation == generation:
            if slot.consumer is None:
                consumer = self._connect(slot)
                with slot.lock:
                    slot.consumer = consumer
                continue
            try:
                if claimed:
                    deliveries, claimed = claimed, []
                else:
                    with slot.lock:
                        deliveries = self._fetch(slot, slot.consumer, sizer.size, poll)
                    if self.outage.ongoing:
                        self._back()
                if not deliveries:
                    continue
                self.telemetry.fetched(deliveries)
                count = len(deliveries)
                self.health.took(count)
                slot.in_hand += count
                started = time.perf_counter()
                batch = slot.batch = Batch(deliveries, self.masters, self._batch_limits)
                self._run(slot, batch)
                if slot.generation != generation:
                    return  # the keeper settled this batch: a task ran out of time
                sizer.ran(len(batch.endings) + batch.endings_taken, time.perf_counter() - started)
                with slot.lock:
                    slot.batch = None
                    if slot.handed_back or slot.consumer is None:
                        break  # a cold stop handed the whole batch back already
                    rest = batch.take_rest() if batch.waiting else ()  # ran whole: none left
                    claimed = self._settle(slot, batch.endings, rest, sizer.size, poll)
                    if slot.failing.attempts:  # a batch failed before: start afresh
                        slot.failing.reset()
                    if claimed:
                        slot.renewed = time.monotonic()
            except Exception as exc:  # a transport bug must not kill the slot either
                claimed = []  # held by the consumer closed below: they go back with it
                if slot.generation != generation:
                    return
                if isinstance(exc, ConfigError | CertificateRejected):
                    self._refused(exc)
                else:
                    self._lost(exc)
                with slot.lock:
                    slot.batch = None
                    self._drop_consumer(slot, str(exc))
                now = time.monotonic()
                if now - slot.failed_at > FAILURES_FORGOTTEN_S:  # not a repeat: afresh
                    slot.failing.reset()
                slot.failed_at = now
                self._stopping.wait(slot.failing.next())

    def _fetch(self, slot: Slot, consumer: Consumer, size: int, poll: float) -> list[Delivery]:
        """``consumer.fetch``, timed: one that answered :data:`FETCH_OVERDUE_S` past its
        wait had a broker away meanwhile, so the idle time counts from its answer. With
        ``--exit-when-idle`` an empty one asks the broker for an answer too (RabbitMQ's
        wait for deliveries asks it nothing: a paused broker was idle time), which may
        come in a later fetch: the same goes for it."""
        slot.fetching = started = time.monotonic()
        asked: float | None = None
        try:
            deliveries = consumer.fetch(size, poll)
            if not deliveries and self.options.exit_when_idle is not None:
                asked = consumer.answers(FETCH_OVERDUE_S / 2)
        finally:
            slot.fetching = None
        slot.renewed = now = time.monotonic()
        was, slot.unanswered = slot.unanswered, asked
        late = _past_its_wait(started, poll, now)  # the fetch's answer
        if late or (was is not None and asked is None and now - was > FETCH_OVERDUE_S):
            self.health.took(0)  # the broker answers again: idle from now, as on a reconnect
        return deliveries

    def _drop_consumer(self, slot: Slot, why: str) -> int:
        """A call on the slot's consumer failed: it is closed, what it held goes back with
        its lease, and the slot connects again (the caller holds the slot's lock). A
        settle that failed with no answer but that the close found had run all the same
        (:attr:`Consumer.settled_late`: Redis stalled past the wait, then ran it before
        the close) counts as settled: its results went out once, and its tasks do not
        come back. They counted as handed back, in the exit line, health and metrics.
        Returns how many it counted so."""
        consumer, slot.consumer = slot.consumer, None
        self._close(consumer)
        slot.unanswered = None  # a question of that link's: the reconnect answers for it
        unconfirmed, slot.unconfirmed = slot.unconfirmed, []
        late = consumer.settled_late if consumer is not None else frozenset()
        settled = [e for e in unconfirmed if e.settlement.delivery.tag in late]
        if settled:
            self._count(slot, settled, 0)
        self._count(slot, [], released=slot.in_hand)  # back with the lease
        self.health.connected(False, f"{self.id}-{slot.index}", why)
        return len(settled)

    def _run(self, slot: Slot, batch: Batch) -> None:
        """Run the batch, asking the broker about any master not known alive on the way,
        and settling what ran before a task that came back (:func:`~distq.batch.run_batch`)."""
        while True:
            run_batch(batch, self.runner.gated, self._stopping, self._abort, late=self._late)
            if batch.settle_first:  # a task that came back is next: settle what ran first
                batch.settle_first = False
                with slot.lock:
                    if slot.batch is not batch or slot.consumer is None or slot.handed_back:
                        return
                    done = batch.take_endings()  # none if the keeper's hand-back came first
                    if done:
                        self._settle(slot, done, [])
                continue
            name, batch.unchecked = batch.unchecked, None
            if name is None or batch.abandoned:
                return
            with slot.lock:
                if slot.consumer is None or slot.handed_back:
                    return
                try:
                    gone = slot.consumer.gone([name])
                except TransportError as exc:
                    # the batch stops here: the slot settles what ran and hands back the
                    # rest. Raised, it dropped the tasks that had run, which ran again
                    # (held19); a broker still away fails that settle as before
                    self._lost(exc)
                    return
            self.masters.learn([name], gone)
            batch.gone |= gone

    def _late(self, delivery: Delivery, running: Running, took: float) -> Ending:
        """A task that returned past its time limit before the keeper ended it (the keeper
        was held up: the function held the GIL, or the process was starved): that attempt
        fails all the same, and its value is dropped."""
        ending = self._timed_out(delivery, running.task, running.limit, time.time() - took, took)
        return ending._replace(
            note=f"{ending.note}; it returned after {took:.2f} s, its value dropped"
        )

    def _timed_out(
        self, delivery: Delivery, task: Task, limit: float, started_at: float, duration: float
    ) -> Ending:
        """The ending of an attempt past its time limit; one that distq's own handling
        failed to make is dead-lettered with the reason (:meth:`Endings.unhandled`), as
        the runner does with any task's: raised in the keeper, after it had moved the
        slot's generation on, it left the slot without a thread, and the worker never
        exited."""
        endings = self.runner.endings
        try:
            which = self.limits.which(task)  # here, not on the path of each task
            return endings.timed_out(delivery, task, limit, started_at, duration, which)
        except Exception as exc:
            return endings.unhandled(delivery, task, exc)

    def _connect(self, slot: Slot) -> Consumer | None:
        """A new consumer for the slot; None (after a backoff wait) while the broker is away."""
        consumer_id = f"{self.id}-{slot.index}"
        try:
            consumer = self.transport.consumer(consumer_id)
        except Exception as exc:  # TransportError; anything else must not end the slot either
            self.health.connected(False, consumer_id, str(exc))
            if isinstance(exc, ConfigError | CertificateRejected):
                self._refused(exc)
                return None
            self._lost(exc)
            self._stopping.wait(slot.backoff.next())
            return None
        slot.backoff.reset()  # the outage is over once a call goes through (_back)
        self.health.took(0)  # at work (again): --exit-when-idle counts from here
        self.health.connected(True, consumer_id)
        return consumer

    def _lost(self, exc: Exception) -> None:
        """A call failed on the broker: the first to see an outage says so, in one line
        per outage whatever the number of slots and attempts (see :meth:`_back`)."""
        if self.outage.lost(exc):
            self.console.error(f"{str(exc).rstrip('.')}; reconnecting")
        elif (line := self.outage.refused(exc)) is not None:
            self.console.error(line)

    def _back(self) -> None:
        """A call went through: the outage is over, and the first slot to see it says so.
        Not at the connect: a broker that takes connections but refuses the work (Redis
        out of memory) would be "reconnected" every second, one pair of lines a slot."""
        lasted = self.outage.back()
        if lasted is not None:
            self.health.took(0)  # --exit-when-idle counts afresh: the outage was no idleness
            self.console.info(f"reconnected to {self.transport.describe()} after {lasted:.1f} s")

    def _close_all(
        self, consumers: list[Consumer], ending: Sequence[threading.Thread] = ()
    ) -> None:
        """Close ``consumers`` side by side, and wait for the threads ``ending``, within
        :data:`CLOSE_SECONDS` in all; one still at it then is left to the ending process
        (its tasks go back with it)."""
        threads = [
            threading.Thread(target=self._close, args=(c,), name="distq-close", daemon=True)
            for c in consumers
        ]
        for thread in threads:
            thread.start()
        by = time.monotonic() + CLOSE_SECONDS
        for thread in [*threads, *ending]:
            thread.join(max(0.0, by - time.monotonic()))

    @staticmethod
    def _close(consumer: Consumer | None) -> None:
        if consumer is not None:
            with contextlib.suppress(Exception):  # a dead connection's leases expire anyway
                consumer.close()

    def _settle(
        self,
        slot: Slot,
        endings: list[Ending],
        unstarted: Sequence[Delivery],
        fetch: int = 0,
        wait: float = 0.0,
    ) -> list[Delivery]:
        """Settle what ran in one call, hand back what did not, and count both.

        With ``fetch``, a batch that ran to its end also leases up to that many more in
        the same call where the transport can (:meth:`Consumer.settle_then_fetch`),
        waiting up to ``wait`` s for the first where it can: they are returned, to run
        next. Not when stopping, nor after a batch that handed tasks back (they were too
        slow for one batch: idle workers may take them)."""
        assert slot.consumer is not None
        claimed: list[Delivery] = []
        sent = time.time()  # the lines' time: settle_then_fetch may wait for tasks after
        since: float | None = None  # when the slot went idle: now, unless it waited since
        if endings:
            settlements = self.runner.endings.settlements(endings)
            slot.unconfirmed = endings  # until the settle answers (see _drop_consumer)
            try:
                if fetch > 0 and not unstarted and not self._stopping.is_set():
                    began = self.health.now()
                    consumer, counted = slot.consumer, False

                    def settled() -> None:  # counted while the fetch waits for tasks
                        nonlocal counted
                        slot.fetching = time.monotonic()  # a wait for tasks, as a fetch's
                        slot.unconfirmed, counted = [], True
                        done = self._not_late(consumer, endings)
                        self._count(slot, done, 0, sent, since=self.health.now())

                    consumer.on_settled = settled
                    try:
                        claimed = consumer.settle_then_fetch(settlements, fetch, wait)
                    except (SettledThenFailed, SettledThenRefused):
                        slot.unconfirmed = []
                        if not counted:
                            endings = self._not_late(consumer, endings)
                            self._count(slot, endings, 0, sent)  # settled, not handed back
                        raise
                    finally:
                        consumer.on_settled = None
                        waited, slot.fetching = slot.fetching, None
                    if waited is not None and _past_its_wait(waited, wait, time.monotonic()):
                        self.health.took(0)  # the broker answers again: idle from now (_fetch)
                    if counted:
                        return claimed
                    # up to ``wait`` of the call was a wait for tasks (Redis): idle since
                    # its start at the latest; the settle itself (a broker that blocks it)
                    # is not
                    since = max(began, self.health.now() - wait)
                else:
                    self._settle_all(slot.consumer, settlements)
            except MessageRefused as exc:
                self._hold_to(exc.limit)
                raise
            slot.unconfirmed = []
            endings = self._not_late(slot.consumer, endings)
        self._count(slot, endings, 0, sent, since=since)
        if unstarted:
            back = slot.consumer.release(unstarted)
            self._count(slot, [], released=len(unstarted), at=sent, kept=len(unstarted) - back)
        return claimed

    @staticmethod
    def _not_late(consumer: Consumer, endings: list[Ending]) -> list[Ending]:
        """``endings``, those the settle found late (:attr:`Consumer.late`) made
        ``released``. Their retries and dead letters were not published: their tasks
        went back to the queue when their leases lapsed, and their copies decide. Each
        such line says so, and counts as handed back, not as retried or dead-lettered
        (it said "retrying" of a retry never sent, faults17, rmq19); in the metrics and
        the JSON lines under its task's name, its run time recorded (it counted under
        ``task="unknown"``, with no ``task settled`` line, late21 F3). Those whose dead
        letter the broker refused (:attr:`Consumer.bounced`) come back after a delay:
        said so; a task that failed for good counts as retried (it runs again), a
        malformed message or an orphan as released (back unrun), not as dead-lettered."""
        late, bounced = consumer.late, consumer.bounced
        if not late and not bounced:
            return endings
        out: list[Ending] = []
        for ending in endings:
            tag = ending.settlement.delivery.tag
            if tag in late:
                ending = ending._replace(outcome="released", note=_not_sent(ending, _LAPSED))
            elif tag in bounced and ending.outcome == "failed":  # a retry but in name
                delay = bounced[tag]
                why = _BOUNCED.format(delay)
                settlement = msgspec.structs.replace(ending.settlement, retry_delay=delay)
                ending = ending._replace(
                    settlement=settlement, outcome="retried", note=_not_sent(ending, why)
                )
            elif tag in bounced:  # malformed, orphaned: back unrun, to be dead-lettered again
                why = _BOUNCED_BACK.format(bounced[tag])
                ending = ending._replace(outcome="released", note=_not_sent(ending, why))
            out.append(ending)
        return out

    def _settle_all(self, consumer: Consumer, settlements: list[Settlement]) -> None:
        """``consumer.settle(settlements)``; while stopping warm, one that failed for the
        broker being away is made again (with backoff) until the drain runs out, where the
        consumer can settle on a connection made afresh (:attr:`Consumer.resettles`): the
        tasks ran, and a worker that dropped their results at once, its drain barely
        begun, had them run again elsewhere (life16)."""
        backoff: Backoff | None = None  # made on a failure only: a settle a batch
        while True:
            try:
                consumer.settle(settlements)
            except TransportError as exc:
                backoff = backoff or Backoff()
                delay = backoff.next()
                if (
                    not self._stopping.is_set()
                    or not consumer.resettles
                    or isinstance(exc, CertificateRejected)
                    or self._drain_until is None
                    or time.monotonic() + delay >= self._drain_until
                ):
                    raise
                self._lost(exc)
                if self._abort.wait(delay):  # stopped cold meanwhile: the tasks go back
                    raise
                continue
            if self.outage.ongoing:
                self._back()
            return

    def _count(
        self,
        slot: Slot,
        endings: list[Ending],
        released: int,
        at: float | None = None,
        kept: int = 0,
        since: float | None = None,
    ) -> None:
        """``endings`` were settled and ``released`` deliveries left the slot's hands,
        ``kept`` of them refused by the broker and kept by the consumer (they come back
        from its next fetch): those are no hand-back, and count as nothing now. Each
        ending's note is printed here, once it is true ("dead-lettered", "retrying")."""
        slot.in_hand -= len(endings) + released
        released -= kept
        if len(endings) == 1 and endings[0].outcome == "ok" and endings[0].note is None:
            # a lone task's: no table of outcomes to build and spread as keywords
            if released or kept:
                self.health.finished(ok=1, released=released, kept=kept, since=since)
            else:
                self.health.finished_ok(since)
            self.telemetry.settled(endings, released, at)
            return
        counts: dict[str, int] = dict.fromkeys(_OUTCOMES, 0)
        for ending in endings:
            counts[ending.outcome] += 1
            if ending.note is not None:
                self.console.error(ending.note)
        retry_in = 0.0  # a retry due later keeps --exit-when-idle waiting for it
        if counts["retried"]:
            retry_in = max(e.settlement.retry_delay for e in endings if e.outcome == "retried")
        late = counts.pop("released")  # settled, and back in the queue (see _not_late)
        self.health.finished(
            released=released + late, retry_in=retry_in, kept=kept, since=since, **counts
        )
        self.telemetry.settled(endings, released, at)  # those back among ``endings``


def _not_sent(ending: Ending, why: str) -> str:
    """The line of an ending whose retry or dead letter was not published (see
    :meth:`Worker._not_late`): its own line without "retrying in ..." or
    "dead-lettered", and ``why`` that did not happen (a grep for those words found it).
    The words taken out are distq's own, found by their place: a task's own error may
    say the same, earlier in the line (a first match took those out instead: the line
    said both "retrying in 0.5 s" and "not retried", code24 U5)."""
    note = ending.note or "a task ended"
    settlement, task = ending.settlement, ending.task
    if settlement.retry is not None:
        # Endings.failed's last words, before anything added since (a time limit's)
        head, said, tail = note.rpartition(f"; retrying in {settlement.retry_delay:g} s")
        return f"{head + tail if said else note}; not retried: its retry {why}"
    if note.startswith("dead-lettered "):  # a malformed message's
        note = note.removeprefix("dead-lettered ")
    elif task is not None:
        named = f"task {shown(called(task))} {shown(task.id)}"  # a chunk: its function
        if note.startswith(f"{named} dead-lettered: "):
            note = named + note.removeprefix(f"{named} dead-lettered")
    return f"{note}; not dead-lettered: its dead letter {why}"


#: Why a late ending's retry or dead letter was not sent.
_LAPSED = (
    "was not sent, its lease had lapsed first (this worker stood still past it, or lost "
    "its link to the broker): the task is back in the queue, and its copy runs instead"
)
#: Why a bounced one's dead letter was not kept; its delay in seconds fills it in.
_BOUNCED = (
    "was refused by the dead-letter queue (full: a length limit with overflow "
    "reject-publish), and no error result sent: the task runs again in {:g} s"
)
#: The same of a malformed message or an orphan: neither runs, each comes back.
_BOUNCED_BACK = (
    "was refused by the dead-letter queue (full: a length limit with overflow "
    "reject-publish): the message is back in the queue in {:g} s, unrun"
)


_OUTCOMES: tuple[str, ...] = get_args(Outcome)


def _drain_ran_out(slots: Sequence[Slot], drain_seconds: float) -> str:
    """What a warm stop that ran out finds in hand: tasks that still run, and slots whose
    tasks have ended but that wait on a broker call (a frozen or cut-off broker holds
    the keeper's renewal on their link, or their settle); it said "tasks still run" of
    those too (rmq18b)."""
    batches = [slot.batch for slot in slots if slot.batch is not None]
    running = sum(1 for batch in batches if batch.claim)
    waiting = len(batches) - running
    parts: list[str] = []
    if running:
        parts.append(f"{counted(running, 'task')} still {'runs' if running == 1 else 'run'}")
    if waiting == 1:  # "their tasks" of one slot had nothing to speak of
        parts.append(
            "1 slot whose tasks have ended still waits on the broker (it does not answer; "
            "the slot's tasks run again once their leases lapse)"
        )
    elif waiting:
        parts.append(
            f"{waiting:,} slots whose tasks have ended still wait on the broker (it does not "
            "answer; their tasks run again once their leases lapse)"
        )
    said = f", {' and '.join(parts)}" if parts else ""  # the batches may end meanwhile
    return f"after {drain_seconds:g} s (DISTQ_DRAIN_SECONDS){said}: handing back what is in hand"


def _stop_signals_default_in_a_forked_child() -> None:
    """A process a task forks (``multiprocessing`` on Linux) inherits the worker's signal
    handlers: it took ``Process.terminate()`` (SIGTERM) for a warm stop of a worker it is
    not, said "finishing the tasks that run", and ran on, orphaned once the task
    returned. There each stop signal the worker handles gets Python's default back."""
    for sig in stop_signals():
        handler = signal.getsignal(sig)
        if getattr(handler, "__func__", None) is Worker._on_signal:
            default = signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL
            with contextlib.suppress(ValueError):  # not its main thread: Python refuses
                signal.signal(sig, default)


os.register_at_fork(after_in_child=_stop_signals_default_in_a_forked_child)


def _threads_it_starts_are_not_daemons() -> None:
    """A slot's thread is a daemon (a hung task must not hold up the worker's exit), and
    a thread made without saying is a daemon if the thread that makes it is: so every
    plain ``threading.Thread()`` a task started was one, and the worker's exit neither
    named nor waited for it (its work was lost; README: a thread a task leaves running).
    Marked not a daemon once running, it makes threads that are not; the interpreter's
    exit, which took its daemon flag when it started, still does not wait for it."""
    thread: Any = threading.current_thread()
    thread._daemonic = False


#: How long a task's ``os._exit`` waits for its line (:meth:`Worker._exit_called`).
EXIT_LINE_WAIT = 1.0
#: ``os._exit`` as Python has it, which :func:`_exit_in_a_running_worker` calls.
_os_exit = os._exit
#: Workers running in this process, each with its pid then (a forked child's is another).
_running: list[tuple[int, Worker]] = []
#: ``os._exit`` as it was when the first of them started, put back once none runs
_before_running = [_os_exit]
_running_lock = threading.Lock()


def exit_status(status: Any) -> int | None:
    """``status`` as ``os._exit`` reads it (``True``, a numpy int: :func:`operator.index`);
    None for what it refuses (1.5, None, past a C int), which it raises for, ending
    nothing. The system reads the low 8 bits of it: ``os._exit(256)`` exits 0."""
    try:
        value = operator.index(status)
    except TypeError:
        return None
    return value if -(2**31) <= value < 2**31 else None


def _exit_in_a_running_worker(status: int) -> NoReturn:
    """``os._exit`` while a worker runs in this process: only a task calls it then (distq
    never does), and ends the process with its tasks in hand. ``os._exit(0)`` exited 0,
    which a supervisor (a Kubernetes Job, ``restart: on-failure``) took for a clean stop:
    in the worker's own process it exits 1 instead (a forked child's exit is its own),
    after a line naming the task (:meth:`Worker._exit_called`), which states the status
    the process exits with (:meth:`Worker._ending_status`)."""
    given = exit_status(status)
    if given is None:
        # os._exit raises for what it cannot take (1.5, None, past a C int) and ends
        # nothing: the task fails. The line said first that the worker ended with it.
        _os_exit(status)
    mine = [worker for pid, worker in _running if pid == os.getpid()]
    status = given
    caller = threading.current_thread()
    # the worker whose slot called it: the first, which a program running two has first,
    # found no slot on the second's thread and left the task unnamed
    theirs = [w for w in mine if any(slot.thread is caller for slot in w._slots)]
    for worker in (theirs or mine)[:1]:
        status = worker._ending_status(given)
        # said from a thread of its own, waited for EXIT_LINE_WAIT at most: a write held
        # up (a stdout whose reader stalls) must not hold up the exit
        with contextlib.suppress(Exception):  # a line, never a reason not to exit
            saying = threading.Thread(
                target=worker._exit_called,
                args=(given, status, caller),
                name="distq-exit-line",
                daemon=True,
            )
            saying.start()
            saying.join(EXIT_LINE_WAIT)
    _os_exit(status)


def _exits_fail_while_running(worker: Worker, running: bool) -> None:
    """Put :func:`_exit_in_a_running_worker` in ``os._exit``'s place while ``worker`` runs
    (``running``), and the one it found back once none does (unless someone replaced it
    since): ``distq worker``'s, which keeps its exit code as the transport closes."""
    with _running_lock:
        if running:
            if not _running and os._exit is not _exit_in_a_running_worker:
                _before_running[0] = os._exit
            _running.append((os.getpid(), worker))
            os._exit = _exit_in_a_running_worker
        else:
            _running.remove((os.getpid(), worker))
            if not _running and os._exit is _exit_in_a_running_worker:
                os._exit = _before_running[0]


class _ForkedChildEndings(Endings):
    """The endings of a process a task forked, which came back out of the task: a
    ``sys.exit()`` there (or a return, an exception) was the task's ending, and the child
    went on as a worker slot of its own: it settled, fetched and ran tasks on connections
    it shares with the worker. It ends there instead, as a child that raised the same out
    of its script would (its stdout and stderr flushed, ``atexit`` not run, as
    ``multiprocessing`` ends a child)."""

    def ok(self, *args: Any, **kwargs: Any) -> Ending:
        _end_forked_child(0)

    def failed(
        self, delivery: Delivery, task: Any, error: BaseException, *args: Any, **kwargs: Any
    ) -> Ending:
        if isinstance(error, SystemExit):
            code = error.code
            if code is None or isinstance(code, int):
                _end_forked_child(code or 0)
            with contextlib.suppress(Exception):
                print(code, file=sys.stderr)
        else:
            with contextlib.suppress(Exception):
                traceback.print_exception(error)
        _end_forked_child(1)

    def unhandled(self, *args: Any, **kwargs: Any) -> Ending:
        _end_forked_child(1)


def _end_forked_child(status: int) -> NoReturn:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    _os_exit(status)


def _forked_children_leave_the_tasks_they_come_back_from() -> None:
    """In a process a task forks, the worker's endings end it instead
    (:class:`_ForkedChildEndings`)."""
    for _, worker in _running:
        endings = worker.runner.endings
        worker.runner.endings = _ForkedChildEndings(endings.worker_id, endings.queue, endings.codec)


os.register_at_fork(after_in_child=_forked_children_leave_the_tasks_they_come_back_from)
