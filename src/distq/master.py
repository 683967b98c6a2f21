"""The master: submit a job's tasks at a pace, collect each result once, report.

"Done" is never guessed from a quiet queue: the master knows every task id it
submitted and finishes when each has a result (ok or failed for good), or when
``timeout`` passes or it is stopped, naming what is missing (exit 1). A redelivered
duplicate counts once (:class:`~distq.collector.Collector`).

Broker outages: a call that fails starts one ``...; reconnecting`` line; the master
retries with capped exponential backoff and jitter (:class:`~distq.backoff.Backoff`)
until the broker answers, the job's ``timeout`` passes or it is stopped, and says when
it is back. Every ``RECONCILE_SECONDS`` and after every outage it asks the broker how
many of its tasks it still holds (:meth:`~distq.transport.Producer.reconcile`, which also
keeps its reply queue alive) and submits again what was lost (:mod:`distq.ledger`).

What the tasks are, how a result is checked and the per-task lines belong to a
:class:`Workload` (the tutorial's is :class:`distq.squares.Squares`); pacing, timeout,
drain, status lines and the report are the same for every workload, here. What a job
that ends short says (stopped, past its --timeout, results dropped, workers gone or holding
its tasks under leases) is worded in :mod:`distq.shortfall`, from the counts kept here.
"""

from __future__ import annotations

import abc
import itertools
import json
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Generic, TypeVar

from distq.backoff import Backoff, Outage
from distq.codec import Codec
from distq.collector import Collector
from distq.config import (
    MASTER_DRAIN_SECONDS,
    MESSAGE_BATCH,
    RECONCILE_SECONDS,
    STATUS_EVERY,
    TASKS,
)
from distq.console import Console
from distq.counts import counted
from distq.envelope import Result, Task, new_id, shown
from distq.errors import (
    CertificateRejected,
    ConfigError,
    DistqError,
    EnvelopeError,
    TransportError,
    UnverifiedRefusal,
)
from distq.errortext import MAX_MESSAGE_CHARS, cut
from distq.health import ProcessHealth
from distq.ledger import Entry, Ledger, forget_orphans, submit_again, withdraw_once
from distq.retries import retries_by_attempt
from distq.shortfall import (
    all_came_back_dropped,
    dropped_beside_read,
    held_under_lease,
    left_line,
    no_result_read,
    nobody_answered,
    short_reason,
)
from distq.telemetry import MasterTelemetry
from distq.transport.base import Producer, QueueStats, Transport

E = TypeVar("E")


@dataclass(frozen=True)
class JobSpec:
    """How many tasks, how fast and for how long: ``tasks`` (None: until stopped), at most
    ``rate`` per second and ``max_in_flight`` outstanding, giving up after ``timeout``."""

    tasks: int | None = TASKS
    timeout: float | None = None
    rate: float | None = None
    max_in_flight: int | None = None
    wait_workers: int | None = None  # start (and start the clock) once this many slots attach
    drain_seconds: float = (
        MASTER_DRAIN_SECONDS  # when stopped: how long to wait for results in flight
    )
    status_every: float = STATUS_EVERY  # rate mode: seconds between status lines

    @property
    def in_flight(self) -> int:
        """Most tasks outstanding: ``max_in_flight``, or :data:`IN_FLIGHT` without it."""
        return self.max_in_flight if self.max_in_flight is not None else IN_FLIGHT


class Workload(abc.ABC, Generic[E]):
    """What a job submits and how it reads the results; the :class:`Master` does the rest.

    Each task comes with an *entry* of type ``E``, kept until its result arrives: what
    the workload needs to check that result and to name the task.
    """

    @abc.abstractmethod
    def tasks(self, count: int, reply_to: str) -> list[tuple[Task, E]]:
        """The next ``count`` tasks (results to ``reply_to``), each with its entry."""

    @abc.abstractmethod
    def name(self, entry: E) -> str:
        """How problems and the missing list name a task, e.g. ``square(733)``."""

    def check(self, result: Result, entry: E) -> bool:
        """Whether an ok result's value is right; a wrong one fails the job."""
        return True

    def submitted_lines(self, tasks: Sequence[tuple[Task, E]]) -> Iterable[str]:
        """Lines for tasks just submitted (not counted on the progress bar)."""
        return ()

    def result_line(self, result: Result, entry: E) -> str:
        """The line for a right result."""
        return f"{self.name(entry)} [{result.task_id}] = {result.value!r}"

    def waiting_line(self) -> str | None:
        """A line printed once, when every task is submitted and the master only waits."""
        return None


@dataclass
class JobReport:
    """The outcome of one job; ``succeeded`` means every task is in and right."""

    transport: str
    tasks: int
    ok: int = 0
    failed: int = 0
    incorrect: int = 0
    duplicates: int = 0
    missing: int = 0
    elapsed_seconds: float = 0.0
    #: CPU seconds this process used over ``elapsed_seconds``, every thread counted
    #: (with manager, that includes serving the queues)
    cpu_seconds: float = 0.0
    throughput: float = 0.0
    latency_p50_seconds: float | None = None
    latency_p99_seconds: float | None = None
    #: what went wrong, oldest first: at most the latest 2 * KEEP_PROBLEMS
    problems: list[str] = field(default_factory=list)
    #: False when the job never began: its workers did not attach in time (--wait-workers)
    started: bool = True

    @property
    def answered(self) -> int:
        """Results in: ok, failed, or wrong (each task counted once)."""
        return self.ok + self.failed + self.incorrect

    @property
    def succeeded(self) -> bool:
        return self.started and self.failed == 0 and self.incorrect == 0 and self.missing == 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


#: A report keeps at least this many of its latest problems (and at most twice as many).
KEEP_PROBLEMS = 1000


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, nearest-rank."""
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]


#: Most tasks outstanding without ``--max-in-flight``: each is held until answered (about
#: 600 bytes), and ``--tasks 1000000000`` grew the master by 230 MB a second, unbounded.
IN_FLIGHT = 100_000

#: The most task ids of dropped refusals a job keeps (:meth:`_Run._came_back_dropped`):
#: past them it counts no more as came back, and says they may still run, as it did.
REFUSALS_KEPT = 100_000
#: A turn of the job's loop this much later than the one before (it waits 0.5 s at
#: most): the process stood still, and ``--rate`` resumes its pace without a burst.
STOOD_STILL_SECONDS = 1.0
#: How long a stop looks, after its drain, for the retries of its tasks in flight
RETRY_LOOK_SECONDS = 1.0


def allowance(spec: JobSpec, submitted: int, outstanding: int, elapsed: float) -> int:
    """How many tasks may be submitted now, ``elapsed`` s into the job's pace (may be <= 0)."""
    allowed = (spec.tasks - submitted) if spec.tasks is not None else 1 << 30
    allowed = min(allowed, spec.in_flight - outstanding)
    if spec.rate is not None:
        allowed = min(allowed, int(elapsed * spec.rate) + 1 - submitted)
    return allowed


class Master:
    """Runs jobs over ``transport``; their results come back on a queue of the master's own."""

    def __init__(
        self,
        transport: Transport,
        console: Console,
        telemetry: MasterTelemetry | None = None,
        codec: Codec | None = None,
        health: ProcessHealth | None = None,
    ) -> None:
        self.transport, self.console = transport, console
        self.telemetry = telemetry or MasterTelemetry()
        self.codec = codec or Codec()
        self.health = health or ProcessHealth("master")
        self.job_id = new_id()
        self.reply_to = transport.reply_queue(self.job_id)
        #: the setting the broker refused mid-job, which ended it (the CLI exits 2), or
        #: its certificate, refused as the master connected again (3, as at start)
        self.refused: ConfigError | CertificateRejected | None = None

    def run(
        self,
        spec: JobSpec,
        workload: Workload[E],
        stop: threading.Event | None = None,
        hurry: threading.Event | None = None,
        over: list[str] | None = None,
    ) -> JobReport:
        """Submit and collect until every task is in, ``timeout`` passes, or ``stop`` is
        set; then give results in flight ``drain_seconds``, unless ``hurry`` is set.

        ``over``: the job's end, decided once: whoever appends first, the job (why it
        ended on its own: "past its --timeout", "every result in") or the one that sets
        ``stop`` (""), says how it ends; a stop that comes after the job's end changes
        nothing of it. Without it, ``stop`` set as the loop ends is a stop."""
        producer = self.transport.producer(self.reply_to)
        stop = stop or threading.Event()
        producer.stop_waiting_on(stop)
        run = _Run(self, producer, spec, workload, stop, hurry or threading.Event())
        run.over = over
        try:
            return run.run()
        finally:
            self.refused = run.refused
            if run.hurry.is_set():  # a second signal: no close waits on the broker
                self.transport.hurry()
            if run.answering and run.answered_all():
                producer.close_answered()  # copies of its tasks may still be queued
            elif run.answering:
                producer.close()
            else:  # no call that would wait on a broker that just failed
                producer.abandon()


class _Run(Generic[E]):
    """One job's loop: submit what the pace allows, collect, repeat; then report."""

    def __init__(
        self,
        master: Master,
        producer: Producer,
        spec: JobSpec,
        workload: Workload[E],
        stop: threading.Event,
        hurry: threading.Event,
    ) -> None:
        self.master, self.producer, self.spec, self.stop = master, producer, spec, stop
        self.hurry = hurry
        self.workload, self.console = workload, master.console
        self.collector: Collector[E] = Collector(
            self._on_result,
            on_malformed=self._dropped,
            telemetry=master.telemetry,
            codec=master.codec,
        )
        self.ledger = Ledger()
        self.health, self.telemetry = master.health, master.telemetry
        self.link = master.health.readiness.link("producer")
        self.link.up()  # the producer is open: it reached the broker
        # around each of the job's broker calls: liveness counts no stall meanwhile (one
        # object for every call, not one made per call)
        self.waiting_job = master.health.liveness.waiting("job")
        self.lines: list[str] = []  # per-result lines of the current collect
        self.submitted = 0
        self.cpu_start = time.process_time()
        self.report = JobReport(transport=master.transport.name, tasks=0)
        self.deadline: float | None = None
        # --timeout counts from here: connected, the wait for workers included
        self.began = time.perf_counter()
        self.next_reconcile = time.perf_counter() + RECONCILE_SECONDS
        # one outage: from the first call that failed to the first that went through
        self.outage = Outage(time.perf_counter)
        # its delays grow over the whole outage, not afresh at each reconcile that went
        # through while the job's calls still fail (a broker refusing the tasks), nor at a
        # call that went through before the refusal was read (Backoff.through)
        self.backoff = Backoff()
        self.said_lost = False  # "the broker holds ... again": said once an outage
        self.lost_before = False  # the ledger counts from the last loss on (faults17)
        self.paced_from = self.began  # --rate's clock: moved on past an outage (_loop)
        # a setting the broker refused mid-job, or its certificate as it connected again
        self.refused: ConfigError | CertificateRejected | None = None
        self.lapsed = False  # its reply queue lapsed: look for orphans again at the end
        # a stop ended the job's loop: read as it ends, so a signal during the summary (a
        # job past its --timeout) does not make it "stopped", its own lines lost
        self.stopped = False
        self.over: list[str] | None = None  # its end, decided once (Master.run)
        # ids submitted again after a reconcile: the broker may hold two copies of each
        # (an unconfirmed publish that did arrive); a stop takes back every copy queued.
        # Each id: how many times it was submitted again
        self.resubmitted: Counter[str] = Counter()
        # taken back fewer times than submitted: a copy may be with a worker (_drain)
        self.unsure: set[str] = set()
        # taken back as a retry: it ran an attempt, so it was submitted (_never_submitted)
        self.retried: set[str] = set()
        # taken back by a stop or --timeout (a task, or its retry): it does not run after
        self.taken_back: set[str] = set()
        self.never_ran = 0  # of those, an endless --rate job's counted as never submitted
        # no call failed since the broker last answered (at start, or a reconnect): a
        # stop may take its tasks back; one that failed would wait on the broker again
        self.answering = True
        self.failed_with: TransportError | None = None  # the last call that failed
        self.first_dropped: str | None = None  # why the first result it dropped was
        self.first_dropped_short = ""  # that in short, for the end's line
        # the tasks it waits for of the workers' refusals it dropped (UnverifiedRefusal),
        # at most REFUSALS_KEPT: beside results read, the only dropped ones known to be a
        # waiting task's (:meth:`_came_back_dropped`)
        self.refusals: set[str] = set()
        # the broker's counts as a job passed its --timeout, before it took its tasks
        # back (which ends the sign that a worker had them): None when it did not look
        # (:meth:`_look_at_timeout`), or the broker did not answer
        self.at_timeout: QueueStats | None = None
        self.looked_at_timeout = False

    def run(self) -> JobReport:
        try:
            return self._run()
        finally:
            # the job's loop is over: its last beat, growing old while the process stops
            # (the summary, the report, the close), read as "stalled" on /healthz
            self.health.liveness.end("job")

    def _run(self) -> JobReport:
        spec = self.spec
        if spec.timeout is not None:
            self.deadline = self.began + spec.timeout
        try:
            attached = not spec.wait_workers or self._await_workers(spec.wait_workers)
        except ConfigError as exc:
            self._refused(exc)
            attached = False
        if not attached:
            self.stopped = self._stopped()
            self.report.started = False
            return self._finish(0.0)
        start, self.cpu_start = time.perf_counter(), time.process_time()
        self.paced_from = start
        try:
            self._loop(start)
            self.stopped = self._stopped()
            if self.stopped and self.collector.outstanding:
                self._drain()
            elif self.collector.outstanding and self.refused is None:  # past its --timeout
                self._look_at_timeout()
                self._withdraw(time.perf_counter() + self.spec.drain_seconds)  # no wait
        except ConfigError as exc:  # the broker refused a setting mid-job: a report all the same
            self.stopped |= self.stop.is_set()  # refused in its loop: read as it ends
            if self.collector.outstanding:  # the results in, before it stops
                self.collector.read_left(self.producer)
                self._print_results()
            self._refused(exc)
        if self.lapsed and self.answering:
            self._forget_orphans()
        elif self.lapsed:  # no call that would wait on a broker that just failed
            self.console.error(
                "did not look again for dead letters workers made of this job's tasks while "
                f"it seemed gone (the broker failed its last call: {self.failed_with}); "
                "`distq dead-letters` lists them"
            )
        return self._finish(time.perf_counter() - start)

    def _stopped(self) -> bool:
        """Whether a stop ended the job, read as its loop ends. A job past its --timeout,
        or with every result in, says so first (:attr:`over`): a signal from then on
        finds it ending (the master's line says so, not "results in flight get up to 5
        s"), and it ends as timed out or done; one that came first stops it, whatever
        the clock says."""
        over = self.over
        if over is None:  # a caller that sets ``stop`` itself: set, it stopped the job
            return self.stop.is_set()
        if self.deadline is not None and time.perf_counter() >= self.deadline:
            over.append("past its --timeout")
        elif self.spec.tasks is not None and self.collector.finished >= self.spec.tasks:
            over.append("every result in")  # nothing in flight to give time to
        return self.stop.is_set() and not (over and over[0])

    def _refused(self, exc: ConfigError | CertificateRejected) -> None:
        """Say why the job stops here (an ACL taken away, the queue's key made another
        type); its report is written as at any other ending, and the master exits 2."""
        self.refused = exc  # said with the job's other problems, by _finish
        self.report.problems.append(f"stopped: {exc}")

    def _loop(self, start: float) -> None:
        spec, total = self.spec, self.spec.tasks
        next_status = start + spec.status_every
        announced = False
        last = time.perf_counter()
        beat = self.health.liveness.beat
        while not self.stop.is_set():
            beat("job")
            now = time.perf_counter()
            if spec.rate is not None and now - last > STOOD_STILL_SECONDS:
                self._resume_pace(spec.rate)  # this process stood still (stopped, paused)
            last = now
            if self.deadline is not None and now >= self.deadline:
                break
            try:
                if now >= self.next_reconcile:  # a call only when due
                    self._reconcile_when_due(now)
                paced = now - self.paced_from
                more = self._allowance(paced)
                then_wait = 0.0
                if more > 0:
                    count = min(more, MESSAGE_BATCH)
                    # all it may have in flight: the wait for a result that follows rides
                    # in the submit's own round trip where the transport can (one at a time)
                    if count == more and spec.max_in_flight is not None and spec.rate is None:
                        then_wait = self._wait(now, paced, 0)
                    self._submit(count, then_wait)
                    if then_wait <= 0:  # else collected with the submit: ``more`` unused
                        more = self._allowance(paced)
                if total is not None and self.submitted >= total and not announced:
                    announced = True
                    line = self.workload.waiting_line()
                    if line is not None and spec.rate is None and spec.max_in_flight is None:
                        self.console.lines([line], count=0)
                if total is not None and self.collector.finished >= total:
                    if self.outage.ongoing:  # the last results came in after an outage
                        self._back()
                    break
                if then_wait <= 0:  # else collected with the submit
                    self._collect(self._wait(now, paced, more))
                if self.outage.ongoing:
                    self._back()
                if self.backoff.attempts:
                    self.backoff.through(now)
            except TransportError as exc:
                if not self._recover(exc):
                    break
                if spec.rate is not None:
                    self._resume_pace(spec.rate)
            if spec.rate is not None and now >= next_status:
                next_status = now + spec.status_every
                self._status(now - start)

    def _resume_pace(self, rate: float) -> None:
        """``--rate`` goes on at its pace from now: not with a burst of R times the time a
        broker outage, or a stop of this process (SIGSTOP, a paused VM), held it back."""
        owed_from = time.perf_counter() - self.submitted / rate
        self.paced_from = max(self.paced_from, owed_from)

    def _wait(self, now: float, elapsed: float, more: int) -> float:
        """How long the loop waits for results: not while it may submit ``more``, else up
        to 0.5 s, and not past the rate's next submit nor the deadline."""
        spec, total = self.spec, self.spec.tasks
        wait = 0.0 if more > 0 else 0.5
        if (
            spec.rate is not None
            and (total is None or self.submitted < total)
            and self.collector.outstanding < spec.in_flight  # else full: asked under --rate only
        ):
            # the next task is due when allowance() lets it go: submitted / rate s in
            # (with --max-in-flight full, a result must come first: no busy poll)
            wait = min(wait, max(0.0, self.submitted / spec.rate - elapsed))
        if self.deadline is not None:
            wait = min(wait, max(0.0, self.deadline - now))
        return wait

    # -- the broker: reconciles and outages ------------------------------------------
    def _reconcile_when_due(self, now: float) -> None:
        if now >= self.next_reconcile:
            self.next_reconcile = now + RECONCILE_SECONDS
            self._reconcile()

    def _reconcile(self) -> None:
        """Ask the broker what it holds (reconnecting if need be); submit what it lost.
        Readiness counts each of its calls on its own: a large lost batch goes again in
        many, each answered (as one, a far broker was "no answer" for seconds)."""
        with self.health.liveness.waiting("job"):
            with self.link.call():
                held = self.producer.reconcile()
            self._submit_lost(held)

    def _submit_again(self, bodies: list[bytes]) -> None:
        """One batch of tasks the broker lost, submitted again."""
        with self.link.call():
            self.producer.submit(bodies)

    def _submit_lost(self, held: int) -> None:
        """Submit again the tasks after the first ``held`` that still wait for a result.

        Results already in the reply queue answer their tasks: they are read first. After
        a long partition (the registration lapsed: ``held`` 0) most of a job's results
        may wait there, and without that read every task not yet read would run again."""
        total = self.ledger.total
        if held < total:
            with self.link.call():
                self.collector.read_waiting(self.producer)
            self._print_results()
        waiting = self.collector.waiting_ids().__contains__
        again = self.ledger.reconcile(held, waiting, self.collector.outstanding)
        if again:
            if not self.said_lost:  # a broker refusing writes: once, not every attempt
                self.said_lost = self.outage.ongoing
                since = "it last lost tasks" if self.lost_before else "the job began"
                self.console.error(
                    f"the broker holds {held:,} of the {counted(total, 'task')} sent since "
                    f"{since}; submitting the {counted(len(again), 'task')} among the others "
                    "that wait for a result again"
                )
            self.lost_before = True
            self.resubmitted = Counter(
                {tid: n for tid, n in self.resubmitted.items() if waiting(tid)}
            )
            self.resubmitted.update(task_id for task_id, _ in again)
            submit_again(self._submit_again, again)
        if self.producer.lapsed:
            self._forget_orphans()

    def _forget_orphans(self) -> None:
        """Remove the dead letters workers made of this job's tasks while it seemed gone
        (:meth:`~distq.transport.base.Transport.forget_orphans`): it submitted them
        again. Once more as the job ends (:meth:`run`), for a worker that dead-lettered
        one after this look; a failure is said and the job goes on."""
        self.lapsed = True
        with self.health.liveness.waiting("job"):  # a silent broker is no stall
            line = forget_orphans(self.master.transport, self.master.reply_to, "this job's")
        if line is not None:
            self.console.error(line)

    def _recover(self, exc: TransportError) -> bool:
        """Reconnect (backoff with jitter) and submit what the broker lost; False when the
        job ends first (stopped, or past its timeout)."""
        self.answering, self.failed_with = False, exc
        if self.stop.is_set():
            return False  # no reconnecting on the way out
        if isinstance(exc, CertificateRejected):  # no retry mends it: as at start
            self._refused(exc)
            return False
        if self.outage.lost(exc):  # one line an outage, however many calls fail in it
            self.console.error(f"{str(exc).rstrip('.')}; reconnecting")
        while True:
            delay = self.backoff.next()
            if self.deadline is not None:
                delay = min(delay, max(0.0, self.deadline - time.perf_counter()))
            with self.health.liveness.waiting("job"):  # waiting out the broker: not wedged
                if self.stop.wait(delay):
                    return False
            if self.deadline is not None and time.perf_counter() >= self.deadline:
                return False
            try:
                self._reconcile()
            except CertificateRejected as refused:
                self._refused(refused)
                return False
            except TransportError as again:
                if (line := self.outage.refused(again)) is not None:
                    self.console.error(line)
                continue
            self.backoff.reconnected(time.perf_counter())
            self.answering = True
            self.next_reconcile = time.perf_counter() + RECONCILE_SECONDS
            return True  # back once the job's next calls go through too (_back)

    def _back(self) -> None:
        """The job's calls went through after an outage: it is over; say so, once.
        Not at the reconnect: a broker that takes connections but refuses the work (Redis
        out of memory, a RabbitMQ alarm) would be "reconnected" every few seconds."""
        lasted = self.outage.back()
        self.said_lost = False
        if lasted is not None:
            self.console.info(
                f"reconnected to the broker after {lasted:.1f} s; "
                f"{counted(self.collector.outstanding, 'task')} outstanding"
            )

    def _allowance(self, elapsed: float) -> int:
        return allowance(self.spec, self.submitted, self.collector.outstanding, elapsed)

    def _await_workers(self, count: int) -> bool:
        """Wait (before the clock starts) until ``count`` worker slots are attached."""
        self.console.info(f"waiting for {count} worker slots to attach ...")
        seen = 0
        while not self.stop.is_set():
            self.health.beat("job")  # waiting for workers is not being wedged
            try:
                self._reconcile_when_due(time.perf_counter())
                with self.health.liveness.waiting("job"):  # a silent broker is no stall
                    seen = self.master.transport.stats().consumers
            except TransportError as exc:
                if not self._recover(exc):
                    break
                continue
            if self.outage.ongoing:
                self._back()
            if seen >= count:
                return True
            if self.deadline is not None and time.perf_counter() >= self.deadline:
                # out of time before any stop: a signal read after this does not hide it
                self.report.problems.append(f"only {seen} of {count} worker slots attached in time")
                return False
            time.sleep(0.05)  # before the job starts: a short poll costs nothing measured
        if not self.stop.is_set():  # the broker lost past the timeout; stopped: no problem
            self.report.problems.append(f"only {seen} of {count} worker slots attached in time")
        return False

    def _submit(self, count: int, then_wait: float = 0.0) -> None:
        """Make and submit ``count`` tasks; with ``then_wait``, collect after them in the
        same call, waiting up to that long for the first result (see _collect)."""
        # a round trip counts from the tasks' making, as a worker's queue wait does (from
        # each task's created_at): it is never the shorter of the two
        made_at = time.perf_counter()
        tasks = self.workload.tasks(count, self.master.reply_to)
        collector, telemetry = self.collector, self.telemetry
        # each task's name kept with it, for its JSON "result received" line
        if len(tasks) == 1:  # a lone task (--max-in-flight 1): no lists nor zips of one
            ((task, entry),) = tasks
            made, ids = [task], [task.id]
            collector.expect_named(((task.id, entry, task.name),), made_at)
        else:
            made = [task for task, _ in tasks]
            ids = [task.id for task in made]
            named = [(task.id, entry, task.name) for task, entry in tasks]
            collector.expect_named(named, made_at)
        bodies = self.master.codec.seal_tasks(made)
        # counted as submitted before the call: one that fails is an outage, and the
        # reconcile after it says whether the broker got them; the answered ones before
        # them forgotten now, not at the next reconcile: 2 s of a fast job's bodies were
        # 150,000 of them, whatever --max-in-flight said
        outstanding = collector.outstanding
        self.ledger.compact(collector.waiting_ids().__contains__, outstanding)
        self.ledger.record(zip(ids, bodies, strict=True))
        self.submitted += len(tasks)
        self.report.tasks = self.submitted
        if telemetry.metrics is not None or telemetry.log is not None:  # else a call of nothing
            telemetry.submitted(made, outstanding)
        if self.console.bar is None and self.submitted == len(tasks) and self.spec.tasks:
            self.console.start_progress(self.spec.tasks)
        if self.console.task_lines:  # at --quiet, no lines made to be dropped
            self.console.lines(self.workload.submitted_lines(tasks), count=0)
        with self.link.call(then_wait), self.waiting_job:
            if then_wait <= 0:
                self.producer.submit(bodies)
                return
            most = collector.wanted()
            collector.accept(self.producer.submit_then_results(bodies, most, then_wait))
        if self.lines:  # else no call: a quiet job's have none
            self._print_results()

    def _collect(self, wait: float) -> None:
        with self.link.call(wait), self.waiting_job:
            self.collector.collect(self.producer, wait)
        self._print_results()

    def _print_results(self) -> None:
        if self.lines:
            self.console.lines(self.lines)
            self.lines = []

    def _on_result(self, result: Result, entry: E, _round_trip: float) -> None:
        """Judge one task's first result and keep its line."""
        r = self.report
        if result.status == "error":
            r.failed += 1
            kind, why = _bounded(str(result.error_type)), _bounded(str(result.error_message))
            if not re.search(rf"(?<![\w.]){re.escape(kind)}(?::|$)", why):  # a worker's
                why = f"{kind}: {why}"  # reason names it ("last error: ValueError: ...")
            problem = f"task {self.workload.name(entry)} [{result.task_id}] failed for good: "
            problem += shown(why)
        elif not self.workload.check(result, entry):
            r.incorrect += 1
            problem = f"wrong result for {self.workload.name(entry)} [{result.task_id}]: "
            problem += cut(repr(result.value))
        else:
            r.ok += 1
            if self.console.task_lines:  # skips formatting the line, on the hot path
                self.lines.append(self.workload.result_line(result, entry))
            return
        r.problems.append(problem)
        if len(r.problems) > 2 * KEEP_PROBLEMS:  # --rate runs for days: keep the latest
            del r.problems[:-KEEP_PROBLEMS]
        self.lines.append(problem)

    def _withdraw(self, deadline: float) -> set[str]:
        """Stopping, or past its timeout: take the tasks no worker has taken yet back off
        the queue, where the transport can (not RabbitMQ). Left there, a worker took them
        during the drain and ran them, their results coming after the master had gone
        (with manager it serves its queue until it exits), or dead-lettered them unrun,
        their master gone. The ids taken back: they are missing, not waited for; in an
        endless ``--rate`` job, where a stop is its end, they count as never submitted
        unless a result for one comes during the drain (:meth:`_drain`): a copy of a task
        submitted again ran. Every copy of one submitted again is taken; then the retries
        of those not found, queued again or waiting out their delay (their bodies as a
        worker seals them: :func:`retries_by_attempt`). Newest first (on Redis they are nearest
        the list's head), until ``deadline``; a second signal, or a broker that fails or
        refuses, ends it, and so does one whose last call failed with no reconnect since
        (no call that would wait on it): the rest stay queued, and one line says so."""
        if not self.producer.takes_back:
            return set()
        entries = self.ledger.waiting(self.collector.waiting_ids().__contains__)
        entries.reverse()
        taken: set[str] = set()
        copies: Counter[str] = Counter()  # of each id taken back
        why: str | None
        if not self.answering:
            why = f"the broker failed its last call: {self.failed_with}"
        else:
            why = self._take_back(iter(entries), deadline, taken, copies)

            def every_copy_found(task_id: str) -> bool:
                return copies[task_id] > self.resubmitted[task_id]

            codec = self.master.codec
            sent_ago = self.collector.sent_ago
            retries = retries_by_attempt(codec, entries, every_copy_found, sent_ago)
            # whose retry was found: they ran, a copy of them queued or not (submitted again)
            retried: set[str] = set()
            for attempt in retries if why is None else ():
                why = self._take_back(iter(attempt), deadline, retried, copies)
                if why is not None:
                    break
            taken |= retried
            self.retried |= retried
        if why is not None:
            left = sum(1 for task_id in self.collector.waiting_ids() if task_id not in taken)
            if left:
                still = (
                    "if still queued, it stays" if left == 1 else "any of them still queued stays"
                )
                self.console.error(
                    f"did not take back the {counted(left, 'task')} not answered ({why}): "
                    f"{still} queued"
                )
        self.unsure = {tid for tid in taken if copies[tid] <= self.resubmitted[tid]}
        self.taken_back |= taken
        return taken

    def _take_back(
        self,
        entries: Iterator[Entry],
        deadline: float,
        taken: set[str],
        copies: Counter[str],
        seconds: float | None = None,
    ) -> str | None:
        """Withdraw ``entries``' bodies a batch at a time, into ``taken`` and ``copies``;
        why it stopped before their end, None when it got there. ``seconds``: the time
        it had, as said when ``deadline`` passes (the drain's by default)."""
        while batch := list(itertools.islice(entries, MESSAGE_BATCH)):
            try:
                while batch:  # again for the copies of a task submitted again
                    if self.hurry.is_set():
                        return "a second signal"
                    if time.perf_counter() >= deadline:
                        had = self.spec.drain_seconds if seconds is None else seconds
                        return f"its {had:g} s to do so ran out"
                    with self.link.call(), self.health.liveness.waiting("job"):
                        batch = withdraw_once(self.producer, batch, taken, copies, self.resubmitted)
            except DistqError as exc:  # no reconnecting on the way out, nor the drain's
                if isinstance(exc, TransportError):  # calls that would wait on it again
                    self.answering, self.failed_with = False, exc
                return f"the broker failed: {exc}"
        return None

    def _never_submitted(self, withdrawn: set[str]) -> None:
        """An endless ``--rate`` job's stop is its end: the tasks taken back and not
        answered during the drain never ran, and count as never submitted. Not one whose
        retry was taken back: it ran an attempt that failed, and counts as missing."""
        gone = [
            task_id
            for task_id in withdrawn
            if self.collector.is_waiting(task_id) and task_id not in self.retried
        ]
        if not gone:
            return
        for task_id in gone:
            self.collector.discard(task_id)
        self.submitted -= len(gone)
        self.never_ran += len(gone)
        self.report.tasks = self.submitted
        self.telemetry.collected(self.collector.outstanding)  # not outstanding any more

    def _drain(self) -> None:
        """Stopping: take back the tasks still queued (:meth:`_withdraw`), and give those
        in flight ``drain_seconds`` (the two together) to come back (they count as missing
        after that: a job stopped before its end failed); one submitted again and taken
        back fewer times than it was submitted too: a worker may hold a copy. None when
        the broker failed its last call: each call would wait on it again."""
        deadline = time.perf_counter() + self.spec.drain_seconds
        withdrawn = self._withdraw(deadline)
        try:
            while (
                self.answering  # no call that would wait on a broker that just failed
                and any(
                    task_id not in withdrawn or task_id in self.unsure
                    for task_id in self.collector.waiting_ids()
                )
                and time.perf_counter() < deadline
                and not self.hurry.is_set()
            ):
                try:
                    self._collect(min(0.5, deadline - time.perf_counter()))
                except TransportError as exc:  # no reconnecting on the way out, nor the
                    # look after the drain, nor a close that would wait on it again
                    self.answering, self.failed_with = False, exc
                    break
            else:
                withdrawn |= self._retried_in_drain(withdrawn)
        finally:  # a setting refused mid-drain too
            if self.spec.tasks is None:
                self._never_submitted(withdrawn)

    def _retried_in_drain(self, withdrawn: set[str]) -> set[str]:
        """After the drain, the retries of the tasks still unanswered that its first look
        did not take back (a worker held them), or took back fewer copies of than were
        submitted (a worker may hold one), taken back: a worker that failed one
        meanwhile sent its retry after that look, and it ran after the stop, or was
        dead-lettered, its master gone. The tasks themselves first: a worker that stalled
        or went away meanwhile held them, and its lapsed lease put them back on the queue
        (they ran an attempt: missing, not never submitted). Within
        :data:`RETRY_LOOK_SECONDS`; none when the broker failed its last call, or after a
        second signal."""
        if not (self.producer.takes_back and self.answering) or self.hurry.is_set():
            return set()
        left = self.ledger.waiting(
            lambda task_id: (
                self.collector.is_waiting(task_id)
                and (task_id not in withdrawn or task_id in self.unsure)
            )
        )
        taken: set[str] = set()
        copies: Counter[str] = Counter()
        deadline = time.perf_counter() + RETRY_LOOK_SECONDS
        # the tasks themselves first: put back on the queue as their worker's lease lapsed
        why = self._take_back(iter(left), deadline, taken, copies, RETRY_LOOK_SECONDS)
        retries = retries_by_attempt(
            self.master.codec, left, taken.__contains__, self.collector.sent_ago
        )
        for attempt in retries if why is None else ():
            why = self._take_back(iter(attempt), deadline, taken, copies, RETRY_LOOK_SECONDS)
            if why is not None:
                break
        if why is not None:
            self.console.error(
                f"did not look for all the retries of the {counted(len(left), 'task')} in flight "
                f"at the stop ({why}): one a worker sent, or a lapsed lease put back, "
                "stays queued"
            )
        self.retried |= taken
        self.taken_back |= taken
        return taken

    def _status(self, elapsed: float) -> None:
        r = self.report
        self.console.info(
            f"submitted {self.submitted}, results {r.answered} "
            f"(ok {r.ok}, failed {r.failed}, wrong {r.incorrect}), "
            f"in flight {self.collector.outstanding}, "
            f"{r.answered / max(elapsed, 1e-9):,.1f} tasks/s"
        )

    def _dropped(self, exc: EnvelopeError) -> None:
        """A result (or a message of them) the collector refused: said, the first kept."""
        if self.first_dropped is None:
            self.first_dropped, self.first_dropped_short = str(exc), short_reason(exc)
        if (  # unverified: the id of a task it waits for only, not any a message names
            isinstance(exc, UnverifiedRefusal)
            and len(self.refusals) < REFUSALS_KEPT
            and self.collector.is_waiting(exc.task_id)
        ):
            self.refusals.add(exc.task_id)
        self.console.error(f"dropped a result: {exc}")

    def _why_no_result(self) -> None:
        """A job past its --timeout that got no result at all: why. Results that came
        back and were dropped say the workers took its tasks
        (:func:`~distq.shortfall.no_result_read`); without any, whether any worker slot
        is attached to its queue (:meth:`_nobody_attached`)."""
        dropped = self.collector.malformed
        if not dropped:
            self._nobody_attached()
            return
        self.report.problems.append(no_result_read(dropped, self.first_dropped))

    def _look_at_timeout(self) -> None:
        """Past its --timeout: the broker's counts, before :meth:`_withdraw` takes back
        the tasks a worker had and gave up (queued again as its lease lapsed), which
        :meth:`_nobody_attached` reads of a job with no result read, and
        :meth:`_held_beside_read` of one with some. Not of one whose every result that
        came back was dropped: its line says why (:meth:`_why_no_result`); nor, beside
        results read, of a broker that tells no lease (RabbitMQ): a call for nothing,
        which a broker paused held for up to 15 s. A broker that fails the call gets none
        after it (:meth:`_withdraw`'s would wait on it again, a Redis paused its socket
        timeout, 6.7 s by default, twice)."""
        dropped_all = self.collector.malformed and not self.report.answered
        no_lease = self.report.answered and not self.master.transport.tells_leases
        if dropped_all or no_lease or not self.answering:
            return
        self.looked_at_timeout = True
        try:
            with self.health.liveness.waiting("job"):  # a silent broker is no stall
                self.at_timeout = self.master.transport.stats()
        except TransportError as exc:  # as a take-back that fails: no call after it
            self.answering, self.failed_with = False, exc
        except (DistqError, OSError):  # refused: the job's own lines said so
            pass

    def _queue_stats(self) -> QueueStats | None:
        """The broker's counts of the job's queue; None when it is away, or refuses (the
        job's own lines said so)."""
        try:
            with self.health.liveness.waiting("job"):  # a silent broker is no stall
                return self.master.transport.stats()
        except (DistqError, OSError):
            return None

    def _nobody_attached(self) -> None:
        """A job that got no result at all, nor dropped any: what the broker's counts of
        its queue say (:func:`~distq.shortfall.nobody_answered`), as it counted them at
        the job's --timeout, or now."""
        transport = self.master.transport
        stats = self.at_timeout if self.looked_at_timeout else self._queue_stats()
        if stats is None:
            return
        outstanding = self.collector.outstanding
        line = nobody_answered(stats, outstanding, transport.describe(), transport.unattached_note)
        if line is not None:
            self.report.problems.append(line)

    def _held_beside_read(self) -> None:
        """A job past its --timeout that read some results, not all: the tasks held under
        a lease not lapsed (:func:`~distq.shortfall.held_under_lease`), as the broker
        counted them at its --timeout. A worker SIGKILLed holding tasks after others had
        answered ended the job with "the 1 not taken back may still run, its result read
        by nobody", no word that a worker that may be dead holds it, nor until when."""
        stats = self.at_timeout
        if stats is not None and stats.consumers:
            line = held_under_lease(stats, self.master.transport.describe(), read=True)
            if line is not None:
                self.report.problems.append(line)

    def _finish(self, elapsed: float) -> JobReport:
        self.console.end_progress()  # the bar's last state stays, above the summary
        r, collector = self.report, self.collector
        waiting = collector.waiting()
        r.elapsed_seconds = elapsed
        r.cpu_seconds = time.process_time() - self.cpu_start
        r.duplicates = collector.duplicates
        if self.spec.tasks is not None:  # the job's size, not what it got to submit
            r.tasks = self.spec.tasks
        unsent = r.tasks - self.submitted
        r.missing = len(waiting) + unsent
        r.throughput = r.answered / elapsed if elapsed > 0 else 0.0
        if collector.latencies:
            ordered = sorted(collector.latencies)
            r.latency_p50_seconds = percentile(ordered, 0.50)
            r.latency_p99_seconds = percentile(ordered, 0.99)
        if waiting:
            shown = [f"{self.workload.name(entry)} [{tid}]" for tid, entry in waiting[:10]]
            more = len(waiting) - len(shown)
            r.problems.append(
                f"missing {counted(len(waiting), 'result')}: "
                f"{', '.join(shown)}" + (f" and {more:,} more" if more else "")
            )
        if unsent:
            r.problems.append(f"{unsent:,} of {r.tasks:,} tasks never submitted")
        timed_out = not (self.stopped or self.refused or self.outage.ongoing)
        if waiting and not r.answered and r.started and timed_out:
            self._why_no_result()
        elif waiting and r.started and timed_out and collector.malformed:
            r.problems.append(dropped_beside_read(collector.malformed, self.first_dropped))
        if waiting and r.answered and r.started and timed_out:
            self._held_beside_read()
        done = r.answered
        if r.succeeded:
            every = "the 1 result" if done == 1 else f"all {done:,} results"
            self.console.info(
                f"{every} in and correct in {elapsed:.2f} s "
                f"({_rate(r.throughput)} tasks/s); "
                f"{counted(r.duplicates, 'duplicate result')} ignored"
            )
            if self.refused is not None:  # all in before it stopped: why it exits 2 all the same
                self.console.error(f"stopped: {self.refused}")
        else:
            reason = "stopped" if self.stopped or self.refused else "timed out"
            if not r.started:  # no job clock: the time since the master's start
                reason, elapsed = "never started", time.perf_counter() - self.began
            elif r.missing == 0:
                reason = "finished with errors"
            waited = ""
            if reason == "timed out" and self.spec.wait_workers:  # its clock started later
                waited = (
                    f"; --timeout counts from the master's connection, and "
                    f"{time.perf_counter() - self.began - elapsed:.1f} s of it went to "
                    "waiting for workers"
                )
            self.console.info(
                f"job {reason} after {elapsed:.1f} s: {done:,} of {r.tasks:,} results in, "
                f"{r.ok:,} ok, {r.failed:,} failed, {r.incorrect:,} wrong, {r.missing:,} missing"
                f"{waited}"
            )
            for problem in r.problems[-10:]:
                self.console.error(problem)
        if r.started and (self.stopped or timed_out):
            self._say_left([tid for tid, _ in waiting], timed_out)
        return r

    def _say_left(self, waiting: list[str], timed_out: bool) -> None:
        """The end of a job stopped or past its --timeout, in one line
        (:func:`~distq.shortfall.left_line`): how many of the tasks not answered it took
        back, how many it did not; past --timeout, what to do. A job whose every task not
        answered came back with a result it dropped says that
        (:func:`~distq.shortfall.all_came_back_dropped`)."""
        line: str | None
        if self._answered_unread(waiting):
            line = all_came_back_dropped(len(waiting), timed_out, self.first_dropped_short)
        else:
            line = left_line(
                waiting=len(waiting),
                taken=self.never_ran + sum(1 for tid in waiting if tid in self.taken_back),
                never_ran=self.never_ran,
                came_back_dropped=self._came_back_dropped(waiting),
                takes_back=self.producer.takes_back,
                transport=self.report.transport,
                timed_out=timed_out,
                exits_1=self._endless_stop_exits_1(timed_out),
                first_short=self.first_dropped_short,
            )
        if line is not None:
            self.console.info(line)

    def _came_back_dropped(self, waiting: list[str]) -> int:
        """How many of the tasks ``waiting`` came back with a result the job dropped, as
        far as it can tell: with none read, every result dropped (each a waiting task's,
        or none's); beside results read, only the workers' refusals of waiting tasks. A
        dropped result may be a copy of a task read (one run again after a lease lapsed):
        counted, "the task not answered came back, its result dropped ... a longer
        --timeout reads it no better" was said of a task never answered, its worker
        running it still."""
        if not self.report.answered:
            return self.collector.malformed
        return len(self.refusals.intersection(waiting))

    def _answered_unread(self, waiting: list[str]) -> bool:
        """Whether every task not answered came back with a result the job dropped, as far
        as counts tell (:meth:`_why_no_result`'s case, none read; or beside results read,
        a worker with another signing key among those with the job's): its end said "the
        3 not taken back may still run, their results read by nobody; for every result,
        give the job a longer --timeout, or more workers", none of which held."""
        return (
            0 < len(waiting) <= self._came_back_dropped(waiting)
            and not self.never_ran
            and not self.taken_back.intersection(waiting)
        )

    def answered_all(self) -> bool:
        """Whether the job submitted tasks and every one has its result: a copy of one
        still queued need not be dead-lettered (:meth:`Producer.close_answered`). Not
        after a stop or --timeout took tasks back: an endless job's, counted as never
        submitted, are not outstanding, and a copy of one taken back fewer times than it
        was submitted would run after it, where its stop line says they do not run."""
        return (
            self.collector.finished > 0 and not self.collector.outstanding and not self.taken_back
        )

    def _endless_stop_exits_1(self, timed_out: bool) -> bool:
        """Whether this is an endless ``--rate`` job's stop, whose tasks not answered
        decide its exit (1): not past --timeout, nor with a setting the broker refused
        (exit 2) or its certificate (3), which the stop line called exit 1 all the same."""
        return self.spec.tasks is None and not timed_out and self.refused is None


def _bounded(text: str) -> str:
    """An error result's type or message as a problem keeps it: cut (:func:`cut`) when
    over twice :data:`MAX_MESSAGE_CHARS`. A distq worker's reason stays under that (its
    error's message cut to it, with a few words around it); another sender's (a worker of
    another version, a manager peer) was kept whole, megabytes in each of 2,000 problems."""
    return cut(text) if len(text) > 2 * MAX_MESSAGE_CHARS else text


def _rate(per_second: float) -> str:
    """Tasks per second as the summary line says it: whole numbers, and two significant
    digits below 10 (a job slower than one task in two seconds said "0 tasks/s")."""
    return f"{per_second:,.0f}" if per_second >= 10 else f"{per_second:.2g}"
