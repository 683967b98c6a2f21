"""What the worker and the master report about tasks: metrics and JSON task events.

The worker and the master call these at a few points of their loops; each object
does nothing when neither metrics nor JSON logs are on. A worker's tasks are counted
when their batch is settled: a batch whose settle fails runs again, so counting it
would count twice.
"""

from __future__ import annotations

import time
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Sequence
from math import floor
from operator import attrgetter

from msgspec import Raw

from distq.chunks import CHUNK_TASK
from distq.ending import Ending, Outcome
from distq.envelope import Result, Task
from distq.logs import JsonConsole, Line
from distq.metrics import UNKNOWN, UNREGISTERED, MasterMetrics, WorkerMetrics
from distq.transport.base import Delivery


# The per-task events of JSON logs, their keys in the order they are written after a
# line's head (timestamp, level, role, a worker's name, event: logs.Line).
class TaskSettled(Line):
    """A decoded task's ``task settled`` line; its ``outcome`` comes right after the
    event, in its head (:meth:`JsonConsole.head`)."""

    task_id: str
    task: str
    attempt: int
    queue_wait: float
    duration: float


class UndecodedSettled(Line):
    outcome: str
    task: str


class TasksReleased(Line):
    count: int


class TaskSubmitted(Line):
    task_id: str
    task: str
    attempt: int


class ResultReceived(Line):
    task_id: str
    task: str
    attempt: int
    duration: float
    outcome: str
    round_trip: float
    worker: str


class DuplicateResult(Line):
    task_id: str
    worker: str


_redelivered = attrgetter("redelivered")

#: A master's result as telemetry takes it: with its round trip, or None for a duplicate,
#: and its task's name (as the collector kept it with the task; "" for a duplicate).
Received = tuple[Result, float | None, str]

#: The fewest endings a worker counts by columns: the columns and their sorts cost about
#: 40k instructions a batch, the task-by-task count about 7k a task (callgrind, a batch
#: of one name: by columns 13.8k / 7.1k / 4.4k a task at 4 / 8 / 16, task by task 8.2k /
#: 7.4k / 7.1k).
COLUMNS_FROM = 8

#: The fewest first results a master counts by a list of their statuses (in C) and
#: ``HistogramTable.observe``: fewer, one by one, with neither made (callgrind, a
#: collection of one: 10.7k instructions a result that way, 8.3k this one).
FEW_RESULTS = 8

#: A batch by columns: its one task name, then each ending's outcome, queue wait (its
#: start less its task's ``created_at``), duration.
Columns = tuple[str, tuple[Outcome, ...], list[float], tuple[float, ...]]


def _one_name(endings: Sequence[Ending]) -> Columns | None:
    """``endings`` by columns when each has a decoded task and all one name, else None.

    The name checked in the pass that takes the waits: one comprehension, not two (a set
    of names, then the waits); a field read in bytecode costs less than by ``map()`` of
    ``attrgetter()`` (a msgspec struct's field: a generic lookup in C)."""
    if not endings:
        return None
    _, outcomes, tasks, starts, durations, _ = zip(*endings, strict=True)
    first = tasks[0]
    if first is None or first.name == CHUNK_TASK:  # undecoded; a chunk's label: its function's
        return None
    name = first.name
    try:  # rather than ``None in tasks``, which compares every task with None
        waits = [
            start - task.created_at
            for start, task in zip(starts, tasks, strict=True)
            if task.name == name
        ]
    except AttributeError:  # an undecoded task (None) has no name
        return None
    if len(waits) != len(tasks):  # several names
        return None
    return name, outcomes, waits, durations


def called(task: Task) -> str:
    """``task``'s name, or for a chunk (``Executor.map(chunksize=N)``) the function it
    calls: as ``distq:chunk``, no alert, panel or log line could say which function failed
    or slowed."""
    name = task.name
    if name == CHUNK_TASK:
        args = task.args
        if len(args) == 2 and isinstance(args[0], str) and args[0] != CHUNK_TASK:
            name = args[0]
    return name


def label_of(task: Task, known: frozenset[str]) -> str:
    """The ``task`` label of ``task``'s metrics: its name (:func:`called`: a chunk counts
    under the function it calls, once per chunk) if this worker registered it, else
    ``(unregistered)``."""
    name = called(task)
    return name if name in known else UNREGISTERED


#: The longest queue wait the metrics count, in seconds (a year). A wait below 0 (the
#: worker's clock behind its master's) or longer (a ``created_at`` of 0, or of -1e308,
#: from a hand-written producer: one such task made the histogram's sum +Inf until the
#: worker restarted) counts as 0.
LONGEST_WAIT = 366 * 86400.0

#: A batch as metrics count it: queue waits, run times by task label (only of functions
#: that ran), and how many tasks by (label, outcome).
Tally = tuple[list[float], dict[str, list[float]], dict[tuple[str, str], int]]


def _tally_columns(known: frozenset[str], columns: Columns) -> Tally:
    """The tally of a batch of one name (:func:`_one_name`, its waits taken there), in C."""
    name, outcomes, waits, durations = columns
    label = name if name in known else UNREGISTERED
    # both sorted here, where their least and greatest are then read without a pass of
    # min() or max() each, and the histograms (HistogramTable.observe) take them as they
    # are, without a sorted copy
    ran = sorted(durations)
    if ran[0] <= 0:  # 0: the function never ran (unknown name, bad arguments, orphaned)
        ran = ran[bisect_right(ran, 0.0) :]  # and such a task has no queue wait either
        waits = [wait for wait, seconds in zip(waits, durations, strict=True) if seconds > 0]
    waits.sort()
    if waits and (waits[0] < 0 or waits[-1] > LONGEST_WAIT):  # clocks not ours
        waits = sorted([wait if 0 < wait <= LONGEST_WAIT else 0.0 for wait in waits])
    outcome = outcomes[0]
    counts: dict[tuple[str, str], int]
    if outcomes.count(outcome) == len(outcomes):  # one outcome (all ok): no Counter
        counts = {(label, outcome): len(outcomes)}
    else:
        counts = {(label, outcome): count for outcome, count in Counter(outcomes).items()}
    return waits, ({label: ran} if ran else {}), counts


def micros(seconds: float) -> float:
    """``seconds`` to the microsecond, for a log line: ``round(seconds, 6)`` at about half
    of its cost, and the same number but where the 7th digit is a 5 (a half rounds up).

    Floored by :func:`math.floor`: the number ``int()`` gives, exactly below 2**53, for
    about 140 instructions a time less than a float's ``// 1`` and 540 less than ``int()``."""
    if 0.0 <= seconds < 1e9:  # not NaN, not negative nor huge (a worker's clock is not ours)
        return floor(seconds * 1e6 + 0.5) / 1e6
    return round(seconds, 6)


class WorkerTelemetry:
    """Per-task metrics and events of one worker; slots call it from their own threads."""

    def __init__(self, metrics: WorkerMetrics | None = None, log: JsonConsole | None = None):
        self.metrics = metrics
        self.log = log if log is not None and not log.quiet else None

    def fetched(self, deliveries: Sequence[Delivery]) -> None:
        """A slot took a batch: count its redeliveries."""
        metrics = self.metrics
        if metrics is not None:
            again = sum(map(_redelivered, deliveries))
            if again:
                with metrics.lock:
                    metrics.redeliveries.add(metrics.base, again)

    def settled(
        self, endings: Sequence[Ending], released: int = 0, at: float | None = None
    ) -> None:
        """A batch is settled as ``endings`` say; ``released`` deliveries went back unrun.

        ``at`` (a ``time.time()``) is when the settle was sent, the lines' timestamp: the
        call that settles may also wait for the next tasks before it returns."""
        metrics = self.metrics
        if metrics is not None:
            if len(endings) < COLUMNS_FROM:  # a small batch: straight in, a frame less
                self._count_each(metrics, endings, released)
            else:
                self._count(metrics, endings, released)
        if self.log is not None:
            self._log(self.log, endings, released, at)

    @staticmethod
    def _count(metrics: WorkerMetrics, endings: Sequence[Ending], released: int) -> None:
        """A batch of :data:`COLUMNS_FROM` or more into the counter and both histograms:
        tallied by columns, in C, when all are decoded and of one name (the common case)."""
        columns = _one_name(endings)
        if columns is not None:
            tally = _tally_columns(metrics.known, columns)
            WorkerTelemetry._record(metrics, tally, released, ordered=True)
            return
        WorkerTelemetry._count_each(metrics, endings, released)

    @staticmethod
    def _count_each(metrics: WorkerMetrics, endings: Sequence[Ending], released: int) -> None:
        """:meth:`_count` task by task, straight into the series: any batch (several names,
        undecoded), and a small one, with no list, dict or labels made for it. A registered
        name's series are found by (name, outcome) in one lookup (``metrics.by_name``)."""
        by_name, waits, tasks, base = metrics.by_name, metrics.waits, metrics.tasks, metrics.base
        run_bounds, wait_bounds = metrics.task_seconds.bounds, metrics.queue_wait.bounds
        with metrics.lock:
            for _, outcome, task, started_at, duration, _ in endings:
                if task is None:
                    tasks.cell((*base, UNKNOWN, outcome))[0] += 1
                    continue
                series = by_name.get((task.name, outcome))
                if series is None:  # a chunk (its function's label), a name not registered
                    label = label_of(task, metrics.known)
                    tasks.cell((*base, label, outcome))[0] += 1
                    if duration <= 0.0:
                        continue
                    runs = metrics.task_seconds.series((*base, label))
                else:
                    series[0][0] += 1
                    runs = series[1]
                # 0: the function never ran (orphaned, unknown name, bad arguments): no run
                # time, and no queue wait, which ends when a run starts (obs16)
                if duration > 0.0:  # floats both: compared in bytecode
                    runs[bisect_left(run_bounds, duration)] += 1  # "less or equal"
                    runs[-1] += duration
                    wait = started_at - task.created_at
                    if not 0.0 < wait <= LONGEST_WAIT:  # clocks not ours
                        wait = 0.0
                    waits[bisect_left(wait_bounds, wait)] += 1
                    waits[-1] += wait
            if released:
                metrics.released[0] += released

    @staticmethod
    def _record(metrics: WorkerMetrics, tally: Tally, released: int, ordered: bool = False) -> None:
        """A batch's tally into the metrics, under one lock; ``ordered``: its waits and
        run times are sorted (:func:`_tally_columns`), not to be sorted again."""
        waits, runs, counts = tally
        base, queue_wait, task_seconds = metrics.base, metrics.queue_wait, metrics.task_seconds
        with metrics.lock:
            queue_wait.observe(metrics.waits, waits, ordered)
            for label, seconds in runs.items():
                task_seconds.observe(task_seconds.series((*base, label)), seconds, ordered)
            for key, count in counts.items():
                metrics.tasks.add((*base, *key), count)
            if released:
                metrics.released[0] += released

    @staticmethod
    def _log(
        log: JsonConsole, endings: Sequence[Ending], released: int, sent: float | None
    ) -> None:
        worker, at = log.worker, time.time() if sent is None else sent  # one for the batch
        # a head by outcome, the outcome in it (TaskSettled); the rarer ones made at the
        # first of each: a head() call a batch for each
        heads = {"ok": log.head("info", "task settled", worker, at, "ok")}
        lines: list[Line] = []
        # an Ending unpacked as the tuple it is, micros() written out, the names the loop
        # calls in locals: a named field read, a call or a global's lookup cost more per
        # task than the rest of its line but its encoding
        add, settled, chunk, longest, fl = (
            lines.append,
            TaskSettled,
            CHUNK_TASK,
            LONGEST_WAIT,
            floor,
        )
        for _, outcome, task, started_at, duration, _ in endings:
            if task is None:
                add(
                    UndecodedSettled(_head(log, heads, outcome, worker, at, None), outcome, UNKNOWN)
                )
                continue
            try:
                head = heads[outcome]
            except KeyError:
                head = _head(log, heads, outcome, worker, at, outcome)
            wait = started_at - task.created_at
            name = task.name
            if name == chunk:  # its function's, as its metrics and alerts name it
                name = called(task)
            add(
                settled(
                    head,
                    task.id,
                    name,
                    task.attempt,
                    # as the metric counts it: 0 outside (0, LONGEST_WAIT], else micros()
                    fl(wait * 1e6 + 0.5) / 1e6 if 0.0 < wait <= longest else 0.0,
                    fl(duration * 1e6 + 0.5) / 1e6 if 0.0 <= duration < 1e9 else micros(duration),
                )
            )
        if released:
            add(TasksReleased(log.head("info", "tasks released", worker, at), released))
        log.write_lines(lines)


def _head(
    log: JsonConsole,
    heads: dict[str, Raw],
    outcome: str,
    worker: str,
    at: float,
    carried: str | None,
) -> Raw:
    """The head of a batch's ``task settled`` line of ``outcome`` at ``at``, made at its
    first line and kept in ``heads`` for the rest: with the outcome in it (``carried``,
    :class:`TaskSettled`), or without (None: an undecoded message's line, which has the
    outcome as a field of its own, :class:`UndecodedSettled`)."""
    key = outcome if carried is not None else f"undecoded {outcome}"
    head = heads.get(key)
    if head is None:
        level = "info" if outcome in _INFO else "error"
        head = heads[key] = log.head(level, "task settled", worker, at, carried)
    return head


#: The outcomes of a settled task's line at level "info"; the others (failed, orphaned,
#: malformed) are at "error". Released: back in the queue to run again, as a retry (out22).
_INFO = frozenset({"ok", "retried", "released"})


class MasterTelemetry:
    """Per-task metrics and events of one master (one thread: its job loop)."""

    def __init__(self, metrics: MasterMetrics | None = None, log: JsonConsole | None = None):
        self.metrics = metrics
        self.log = log if log is not None and not log.quiet else None

    def submitted(self, tasks: Sequence[Task], outstanding: int) -> None:
        metrics = self.metrics
        if metrics is not None:
            with metrics.lock:  # with the count, as one scrape reads them
                metrics.submitted_now[0] += len(tasks)
                metrics.outstanding_now[0] = outstanding
        log = self.log
        if log is not None:
            head = log.head("info", "task submitted")
            log.write_lines([TaskSubmitted(head, t.id, t.name, t.attempt) for t in tasks])

    def collected(
        self,
        outstanding: int,
        received: Sequence[Received] = (),
        firsts: Sequence[Result] = (),
        round_trips: Sequence[float] = (),
        duplicates: int = 0,
    ) -> None:
        """A batch of results is handled; ``outstanding`` tasks still have none. For the
        log lines, ``received`` holds them in the order they came, each with its round
        trip, or None for a duplicate (a task's result came before), and its task's name
        (the collector keeps it with the task: no table here); for the metrics,
        ``firsts`` the first results among them, ``round_trips`` theirs (in that order),
        and ``duplicates`` how many were not first: as the collector has them, with no
        pair made per result for the metrics. Counted, and written with one timestamp,
        a batch at a time, as a worker's are: a call per result costs more than the rest."""
        metrics = self.metrics
        if metrics is not None:
            if len(firsts) < FEW_RESULTS:  # none (the outstanding count alone) or a few
                self._count_each(metrics, firsts, round_trips, duplicates, outstanding)
            else:
                self._count(metrics, firsts, round_trips, duplicates, outstanding)
        log = self.log
        if log is not None and received:
            at = time.time()  # one for the batch
            ok = log.head("info", "result received", at=at)
            # the heads of the rarer lines made at the first of each: a head() call a batch
            error: Raw | None = None
            duplicate: Raw | None = None
            lines: list[Line] = []
            add = lines.append
            for r, trip, name in received:  # micros() written out, as in a worker's lines
                if trip is None:
                    if duplicate is None:
                        duplicate = log.head("info", "duplicate result", at=at)
                    add(DuplicateResult(duplicate, r.task_id, r.worker))
                    continue
                run, status = r.duration, r.status
                if status == "ok":
                    head = ok
                else:
                    if error is None:
                        error = log.head("error", "result received", at=at)
                    head = error
                add(
                    ResultReceived(
                        head,
                        r.task_id,
                        name,
                        r.attempt,
                        floor(run * 1e6 + 0.5) / 1e6 if 0.0 <= run < 1e9 else micros(run),
                        status,
                        floor(trip * 1e6 + 0.5) / 1e6 if 0.0 <= trip < 1e9 else micros(trip),
                        r.worker,
                    )
                )
            log.write_lines(lines)

    @staticmethod
    def _count(
        metrics: MasterMetrics,
        firsts: Sequence[Result],
        round_trips: Sequence[float],
        duplicates: int,
        outstanding: int,
    ) -> None:
        """A batch of :data:`FEW_RESULTS` or more: its results by status, their round trips
        and its duplicates, in C when it has one status (the common batch); ``outstanding``
        under the same lock, so that a scrape sees it with them."""
        statuses = [result.status for result in firsts]  # in bytecode: less than map()
        ok = statuses.count("ok")
        with metrics.lock:  # each series as kept: no labels hashed
            metrics.by_status["ok"][0] += ok
            if ok < len(statuses):  # errors (a status of another name: a series of its own)
                for status, count in Counter(statuses).items():
                    if status != "ok":
                        metrics.results.cell((*metrics.base, status))[0] += count
            if round_trips:
                metrics.round_trip.observe(metrics.round_trips, round_trips)
            if duplicates:
                metrics.duplicates_now[0] += duplicates
            metrics.outstanding_now[0] = outstanding

    @staticmethod
    def _count_each(
        metrics: MasterMetrics,
        firsts: Sequence[Result],
        round_trips: Sequence[float],
        duplicates: int,
        outstanding: int,
    ) -> None:
        """:meth:`_count` result by result, for a few: no list of statuses made, and the
        round trips bisected here, as ``HistogramTable.observe`` does a few (in the same
        order: the same sum), without its call."""
        ok, trips, bounds = metrics.by_status["ok"], metrics.round_trips, metrics.round_trip.bounds
        with metrics.lock:
            for result in firsts:
                status = result.status
                if status == "ok":
                    ok[0] += 1
                else:  # errors (a status of another name: a series of its own)
                    metrics.results.cell((*metrics.base, status))[0] += 1
            for trip in round_trips:
                trips[bisect_left(bounds, trip)] += 1  # "less or equal"
                trips[-1] += trip
            if duplicates:
                metrics.duplicates_now[0] += duplicates
            metrics.outstanding_now[0] = outstanding
