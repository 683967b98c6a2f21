"""The master on the real manager transport hosted in this process; pacing, by itself."""

from __future__ import annotations

import contextlib
import io
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import msgspec
import pytest

from distq import master as master_module
from distq.backoff import Backoff
from distq.codec import Codec
from distq.collector import Collector
from distq.console import Console
from distq.envelope import Result, Task
from distq.errors import ConfigError, TransportError
from distq.health import ProcessHealth
from distq.ledger import Entry, Ledger
from distq.master import (
    IN_FLIGHT,
    STOOD_STILL_SECONDS,
    JobReport,
    JobSpec,
    Master,
    Workload,
    _Run,
    allowance,
    percentile,
)
from distq.metrics import MasterMetrics
from distq.squares import Squares
from distq.telemetry import MasterTelemetry
from distq.transport import Settlement, Transport
from distq.transport.base import Producer, QueueStats
from distq.transport.manager import ManagerConsumer, ManagerProducer, ManagerTransport
from seam import error_result, job_a_worker_left, ok_result


def serve(
    transport: Transport,
    answer: Callable[[Task], list[bytes]],
    stop: threading.Event,
    codec: Codec | None = None,
) -> None:
    """A stand-in worker loop on the real transport: settle each task with ``answer``
    (tasks opened with ``codec``, a master's with signing keys)."""
    consumer = transport.consumer("test-worker")
    while not stop.is_set():
        for delivery in consumer.fetch(50, 0.1):
            task = (codec or Codec()).open_task(delivery.body)
            consumer.settle(
                [Settlement(delivery, reply_to=task.reply_to, result=body) for body in answer(task)]
                or [Settlement(delivery)]
            )


def result(task: Task, value: object) -> bytes:
    return ok_result(task, value)


def right(task: Task) -> list[bytes]:
    return [result(task, task.args[0] ** 2)]


def run(
    transport: Transport,
    spec: JobSpec,
    answer: Callable[[Task], list[bytes]],
    workload: Workload[int] | None = None,
    stop: threading.Event | None = None,
    quiet: bool = False,
    codec: Codec | None = None,
) -> tuple[str, JobReport]:
    out = io.StringIO()
    done = threading.Event()
    thread = threading.Thread(target=serve, args=(transport, answer, done, codec), daemon=True)
    thread.start()
    master = Master(transport, Console(quiet=quiet, out=out, err=out), codec=codec)
    try:
        report = master.run(spec, workload or Squares(seed=1), stop)
    finally:
        done.set()
        thread.join(5)
    return out.getvalue(), report


def test_the_tutorial_lines_and_duplicates_counted_once(transport: Transport) -> None:
    out, report = run(transport, JobSpec(tasks=5, timeout=20), lambda t: right(t) * 3)
    assert report.succeeded and report.ok == 5
    numbers = re.findall(r"^put task (\d+) into task_queue \.\.\.\.$", out, re.M)
    assert len(numbers) == 5 and "try to get result....\n" in out
    for n in numbers:
        assert f"Get result {n} * {n} = {int(n) ** 2} from result_queue.\n" in out
    assert out.count("Get result") == 5
    assert "all 5 results in and correct" in out


def test_a_job_of_one_task_says_its_1_result_is_in(transport: Transport) -> None:
    # its end said "all 1 results in and correct in 0.01 s (...)"
    out, report = run(transport, JobSpec(tasks=1, timeout=20), right)
    assert report.succeeded, out
    assert re.search(r"^the 1 result in and correct in [\d.]+ s \(", out, re.M), out


def test_counts_past_999_in_a_jobs_end_have_separators(transport: Transport) -> None:
    """A job's end said "1000 of 1000 results in, ..., 1000 wrong", where its stop line
    said "the 1,300 not taken back"."""
    wrong = JobSpec(tasks=1000, timeout=60)
    out, report = run(transport, wrong, lambda t: [result(t, -1)], quiet=True)
    assert report.incorrect == 1000, out
    assert "1,000 of 1,000 results in, 0 ok, 0 failed, 1,000 wrong, 0 missing" in out, out


def test_the_missing_results_past_those_named_are_counted_with_separators(
    transport: Transport,
) -> None:
    """Past the 10 it names, it said "and 1001 more" after "missing 1,011 results"."""
    unanswered = JobSpec(tasks=1011, timeout=1)
    out, report = run(transport, unanswered, lambda t: [], quiet=True)
    assert report.missing == 1011, out
    assert re.search(r"^distq: missing 1,011 results: .* and 1,001 more$", out, re.M), out


def test_a_job_of_1000_says_all_its_results_are_in_with_separators(transport: Transport) -> None:
    """A job's end said "all 1000 results in and correct" (the README's 1,000)."""
    out, report = run(transport, JobSpec(tasks=1000, timeout=60), right, quiet=True)
    assert report.succeeded, out
    assert re.search(r"^all 1,000 results in and correct in [\d.]+ s \(", out, re.M), out


def test_one_duplicate_result_is_said_in_the_singular(transport: Transport) -> None:
    """The end said "1 duplicate results ignored". The stand-in answers the first task,
    sends its body again and holds the other tasks' answers until it has answered that
    copy: the duplicate is on the result queue before the job's last result."""
    done = threading.Event()

    def first_twice() -> None:
        consumer = transport.consumer("test-worker")
        again = transport.producer(transport.reply_queue("again"))
        copied: bytes | None = None
        held: list[Settlement] | None = []
        while not done.is_set():
            for delivery in consumer.fetch(50, 0.1):
                task = Codec().open_task(delivery.body)
                answer = Settlement(delivery, reply_to=task.reply_to, result=right(task)[0])
                if copied is None:  # the first: answered, and its body sent again
                    copied = delivery.body
                    consumer.settle([answer])
                    again.submit([copied])
                elif held is not None and delivery.body != copied:
                    held.append(answer)
                else:  # the copy (then the rest as they come): its answer before theirs
                    consumer.settle([answer, *(held or [])])
                    held = None
        again.close()

    thread = threading.Thread(target=first_twice, daemon=True)
    thread.start()
    out = io.StringIO()
    try:
        report = Master(transport, Console(out=out, err=out)).run(
            JobSpec(tasks=5, timeout=20), Squares(seed=1)
        )
    finally:
        done.set()
        thread.join(5)
    assert report.succeeded and report.duplicates == 1, out.getvalue()
    assert re.search(r"\); 1 duplicate result ignored$", out.getvalue(), re.M), out.getvalue()


def test_wrong_values_fail_the_job(transport: Transport) -> None:
    out, report = run(transport, JobSpec(tasks=3, timeout=20), lambda t: [result(t, -1)])
    assert not report.succeeded and report.incorrect == 3
    assert "wrong result for square(" in out


def test_wrong_results_count_as_results_in(transport: Transport) -> None:
    """A wrong result came back: it is in (not missing), in the summary and throughput."""
    out, report = run(transport, JobSpec(tasks=3, timeout=20), lambda t: [result(t, -1)])
    assert report.answered == 3 and report.missing == 0 and report.throughput > 0
    assert "finished with errors" in out and "3 of 3 results in, 0 ok, 0 failed, 3 wrong" in out


@contextlib.contextmanager
def _stop_after(seconds: float) -> Iterator[threading.Event]:
    """A job's stop, set ``seconds`` s into the block; its timer joined after."""
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.start()
    try:
        yield stop
    finally:
        timer.join()


def test_rate_mode_status_lines_count_wrong_results(transport: Transport) -> None:
    spec = JobSpec(tasks=None, rate=50, status_every=0.2)
    with _stop_after(1.0) as stop:
        out, _ = run(transport, spec, lambda t: [result(t, -1)], stop=stop)
    status = re.findall(r"^submitted \d+, results (\d+) \(ok 0, failed 0, wrong (\d+)\)", out, re.M)
    assert status and all(results == wrong for results, wrong in status)
    assert int(status[-1][0]) > 0, out


def test_rate_mode_sends_one_task_every_period_not_pairs(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--rate 5 submits one task every 0.2 s (not two every 0.4 s)."""
    sizes = rate_batches(transport, monkeypatch, rate=5, seconds=1.1)
    assert 4 <= len(sizes) <= 7 and set(sizes) == {1}, sizes


def rate_batches(
    transport: Transport,
    monkeypatch: pytest.MonkeyPatch,
    rate: float,
    seconds: float,
    before: Callable[[list[int]], None] = lambda sizes: None,
) -> list[int]:
    """The sizes of the batches a ``--rate`` job submits in ``seconds``; ``before(sizes)``
    runs before each submit."""
    sizes: list[int] = []
    original = ManagerProducer.submit

    def counted(self: ManagerProducer, bodies: Sequence[bytes]) -> None:
        before(sizes)
        sizes.append(len(bodies))
        original(self, bodies)

    monkeypatch.setattr(ManagerProducer, "submit", counted)
    with _stop_after(seconds) as stop:
        run(transport, JobSpec(tasks=None, rate=rate, status_every=10), right, stop=stop)
    return sizes


def test_rate_with_max_in_flight_full_waits_for_a_result_without_polling(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--rate 50 --max-in-flight 1 with tasks that take 0.3 s: while the one in flight
    runs, the loop waits for its result; before, a task was due by the rate, so it
    polled with no wait at all, thousands of times."""
    waits: list[float] = []
    original = _Run._collect

    def counted(self: _Run[int], wait: float) -> None:
        waits.append(wait)
        original(self, wait)

    monkeypatch.setattr(_Run, "_collect", counted)

    def slow(task: Task) -> list[bytes]:
        time.sleep(0.3)
        return right(task)

    _, report = run(transport, JobSpec(tasks=3, rate=50, max_in_flight=1, timeout=20), slow)
    assert report.succeeded
    assert sum(1 for wait in waits if wait == 0) < 50, len(waits)


def test_timeout_names_what_is_missing(transport: Transport) -> None:
    out, report = run(transport, JobSpec(tasks=4, timeout=0.5), lambda t: [])
    assert report.missing == 4 and not report.succeeded
    assert "job timed out" in out and "missing 4 results: square(" in out
    assert "no worker slot is attached" not in out  # one is: it kept them


def _one_task_past_its_timeout(transport: Transport) -> tuple[str, JobReport]:
    """A job of one task, no worker: its lines and report past its --timeout (0.5 s)."""
    out = io.StringIO()
    master = Master(transport, Console(out=out, err=out))
    report = master.run(JobSpec(tasks=1, timeout=0.5), Squares(seed=1))
    return out.getvalue(), report


def test_a_job_past_its_timeout_with_one_task_queued_says_it_took_back_one_task(
    transport: Transport,
) -> None:
    # its lines said "missing 1 results" and "took back the 1 tasks still queued (or their
    # retries): they do not run"
    said, report = _one_task_past_its_timeout(transport)
    assert report.missing == 1, said
    assert re.search(r"^distq: missing 1 result: square\(\d+\) \[", said, re.M), said
    assert (
        "--timeout: took back the 1 task still queued (or its retry): it does not run; "
        "for every result, give the job a longer --timeout, or more workers\n"
    ) in said, said


def test_a_job_past_its_timeout_that_took_back_none_of_one_task_says_one_task(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a transport that takes nothing back (RabbitMQ's case) said "took back none of the 1
    # tasks not answered"
    monkeypatch.setattr(ManagerProducer, "takes_back", False)
    said, report = _one_task_past_its_timeout(transport)
    assert report.missing == 1, said
    assert (
        "--timeout: did not take back the 1 task not answered (the manager transport "
        "cannot take a task back off its queue)"
    ) in said, said


def test_a_job_past_its_timeout_whose_take_back_failed_says_one_task_it_left(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the broker failed the call to take it back: "did not take back the 1 tasks not
    # answered (...): any of them still queued stays queued"
    def failing(self: ManagerProducer, bodies: Sequence[bytes]) -> list[bool]:
        raise TransportError("the broker is away")

    monkeypatch.setattr(ManagerProducer, "withdraw", failing)
    said, report = _one_task_past_its_timeout(transport)
    assert report.missing == 1, said
    assert (
        "did not take back the 1 task not answered (the broker failed: the broker is away): "
        "if still queued, it stays queued"
    ) in said, said


def test_a_job_past_its_timeout_whose_broker_failed_its_look_makes_no_call_after_it(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job that read a result looks at the broker's counts at its --timeout (266e8530):
    a broker that failed that call (gone silent as the job ended: a Redis paused waits out
    its socket timeout, 6.7 s) was called again to take the tasks back, the same wait
    twice. As after a take-back that fails, no call follows one that failed."""
    withdrawn: list[int] = []
    real_withdraw = ManagerProducer.withdraw

    def failing(self: ManagerTransport) -> QueueStats:
        raise TransportError("the broker is away")

    def withdraw(self: ManagerProducer, bodies: Sequence[bytes]) -> list[bool]:
        withdrawn.append(len(bodies))
        return real_withdraw(self, bodies)

    monkeypatch.setattr(ManagerTransport, "stats", failing)
    monkeypatch.setattr(ManagerProducer, "withdraw", withdraw)
    answered: list[str] = []

    def first_only(task: Task) -> list[bytes]:  # the others taken and kept unanswered
        answered.append(task.id)
        return right(task) if len(answered) == 1 else []

    said, report = run(transport, JobSpec(tasks=3, timeout=1), first_only)
    assert report.answered == 1 and report.missing == 2, said
    assert withdrawn == [], said
    assert (
        "did not take back the 2 tasks not answered (the broker failed its last call: the "
        "broker is away): any of them still queued stays queued"
    ) in said, said


@pytest.mark.parametrize("tells_leases", [True, False])
def test_a_job_that_read_a_result_asks_the_counts_at_its_timeout_only_of_a_broker_with_leases(
    transport: Transport, monkeypatch: pytest.MonkeyPatch, tells_leases: bool
) -> None:
    """Beside results read, the counts at the --timeout serve the line on tasks held under
    a lease (266e8530), which a broker that tells no lease (RabbitMQ) never gets: it was
    asked all the same, a call at the job's end that a RabbitMQ paused then held for its
    15 s (ADMIN_ANSWER_SECONDS), where a job that read results made none before."""
    asked: list[int] = []
    real_stats = ManagerTransport.stats

    def stats(self: ManagerTransport) -> QueueStats:
        asked.append(1)
        return real_stats(self)

    monkeypatch.setattr(ManagerTransport, "stats", stats)
    monkeypatch.setattr(ManagerTransport, "tells_leases", tells_leases)
    answered: list[str] = []

    def first_only(task: Task) -> list[bytes]:
        answered.append(task.id)
        return right(task) if len(answered) == 1 else []

    said, report = run(transport, JobSpec(tasks=3, timeout=1), first_only)
    assert report.answered == 1 and report.missing == 2, said
    assert len(asked) == (1 if tells_leases else 0), said


@pytest.mark.parametrize("hurried", [False, True])
def test_a_stopped_job_waits_for_the_results_in_flight_unless_hurried(
    transport: Transport, hurried: bool
) -> None:
    """Stopped (SIGTERM) while its tasks run, the master waits up to 5 s for their
    results, as the README says, and exits 0 when all come in; a second signal (hurry)
    waits for none. Without the drain (mutant M4 of mut14a) every task in flight was
    "missing" at once and the master exited 1."""
    stop, hurry = threading.Event(), threading.Event()
    if hurried:
        hurry.set()

    def stopped_while_running(task: Task) -> list[bytes]:
        stop.set()  # the signal comes while the worker runs the task
        time.sleep(0.3)
        return right(task)

    out = io.StringIO()
    done = threading.Event()
    args = (transport, stopped_while_running, done)
    worker = threading.Thread(target=serve, args=args, daemon=True)
    worker.start()
    try:
        report = Master(transport, Console(out=out, err=out)).run(
            JobSpec(tasks=4, timeout=20), Squares(seed=1), stop, hurry
        )
    finally:
        done.set()
        worker.join(5)
    if hurried:
        assert report.missing >= 3 and not report.succeeded, out.getvalue()
    else:
        assert report.succeeded and report.ok == 4, out.getvalue()
        assert "all 4 results in and correct" in out.getvalue()


def test_a_job_no_worker_ever_answered_says_whether_any_is_attached(
    transport: Transport,
) -> None:
    """Workers on another queue, database, vhost or transport: both sides waited in
    silence, and their start lines read alike (drift10)."""
    out = io.StringIO()
    report = Master(transport, Console(out=out, err=out)).run(
        JobSpec(tasks=3, timeout=0.5), Squares(seed=1)
    )
    assert report.missing == 3
    assert (
        "no worker slot is attached to the job's queue at manager transport on 127.0.0.1:"
        in out.getvalue()
    ), out.getvalue()
    assert (
        "are the workers running, with this DISTQ_QUEUE, DISTQ_TRANSPORT and broker"
        in (report.problems[-1])
    )


def test_the_no_slot_line_carries_the_transports_own_note_on_counting_slots(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """How a broker counts worker slots is the transport's to say: the master keyed
    RabbitMQ's note on the name "rabbitmq", so a transport counting slots its own way
    (a new one, or one named otherwise) could not add its note to the line."""
    note = " (this broker: a slot past its lease is not counted)"
    monkeypatch.setattr(transport, "unattached_note", note)
    out = io.StringIO()
    report = Master(transport, Console(out=out, err=out)).run(
        JobSpec(tasks=1, timeout=0.5), Squares(seed=1)
    )
    assert f"queue at {transport.describe()}{note}: are the workers" in report.problems[-1]


def test_a_timeout_says_it_counted_the_wait_for_workers(transport: Transport) -> None:
    """--timeout bounds the whole run; the job's own clock starts once workers attach,
    so the summary says where the rest of the timeout went."""
    spec = JobSpec(tasks=2, timeout=0.5, wait_workers=1)
    out, report = run(transport, spec, lambda t: [])
    assert report.missing == 2 and report.started
    assert re.search(
        r"job timed out after [\d.]+ s: 0 of 2 results in, .* 2 missing; "
        r"--timeout counts from the master's connection, and [\d.]+ s of it went "
        r"to waiting for workers",
        out,
    ), out


def test_a_master_waiting_for_workers_is_live(transport: Transport) -> None:
    """Its wait never beat the job loop: with DISTQ_STALL_SECONDS under the 2 s between
    reconciles, /healthz went 503 "stalled" for a master that was only waiting."""
    # 1.5 s: still under those 2 s; with 0.3 s, a stall of this process over 0.3 s (its
    # wait beats every 0.05 s) was a stall, and the watcher said so
    health = ProcessHealth("master", stall_seconds=1.5)
    master = Master(transport, Console(out=io.StringIO()), health=health)
    verdicts: list[bool] = []
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.05):
            verdicts.append(health.live().ok)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:  # no worker: it waits its whole --timeout of 2.5 s
        report = master.run(JobSpec(tasks=1, timeout=2.5, wait_workers=1), Squares(seed=1))
    finally:
        done.set()
        watcher.join(5)
    assert not report.started and len(verdicts) > 30 and all(verdicts), verdicts


def test_max_in_flight_one_measures_round_trips(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One task at a time, each submit and the wait for its result are one call (one
    round trip where the transport can), and every result is judged and shown. Each asks
    for the one result it waits for, not a batch (Redis then reads it in the wait's own
    reply: issue 16)."""
    calls: list[tuple[int, int]] = []
    original = Producer.submit_then_results

    def counted(self: Producer, bodies: Sequence[bytes], count: int, wait: float) -> list[bytes]:
        calls.append((len(bodies), count))
        return original(self, bodies, count, wait)

    monkeypatch.setattr(Producer, "submit_then_results", counted)
    out, report = run(transport, JobSpec(tasks=20, max_in_flight=1, timeout=20), right)
    assert report.ok == 20 and report.latency_p50_seconds is not None
    assert calls == [(1, 1)] * 20 and out.count("Get result") == 20


def test_a_quiet_lone_task_job_asks_its_workload_for_no_submitted_lines(
    transport: Transport,
) -> None:
    """At --quiet no "put task ..." line is printed: a lone task's submit does not ask
    the workload for its lines (a generator made per task, then dropped: issue 16)."""
    asked: list[int] = []

    class Counted(Squares):
        def submitted_lines(self, tasks: Sequence[tuple[Task, int]]) -> Iterable[str]:
            asked.append(len(tasks))
            return super().submitted_lines(tasks)

    spec = JobSpec(tasks=5, max_in_flight=1, timeout=20)
    out, report = run(transport, spec, right, Counted(seed=1), quiet=True)
    assert report.ok == 5 and asked == [] and "put task" not in out
    out, report = run(transport, spec, right, Counted(seed=1))
    assert report.ok == 5 and asked == [1] * 5 and out.count("put task") == 5


def test_a_lone_task_job_asks_its_limits_once_a_task(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lone task's turn of the job loop asks how many may be in flight once (its
    allowance), and how many are outstanding only where it needs the number: the wait
    asks neither without --rate (issue 16)."""
    asked = {"in_flight": 0, "outstanding": 0}
    in_flight: property = vars(JobSpec)["in_flight"]
    outstanding: property = vars(Collector)["outstanding"]

    def counted_in_flight(spec: JobSpec) -> int:
        asked["in_flight"] += 1
        return in_flight.__get__(spec)  # type: ignore[no-any-return]

    def counted_outstanding(collector: Collector[int]) -> int:
        asked["outstanding"] += 1
        return outstanding.__get__(collector)  # type: ignore[no-any-return]

    monkeypatch.setattr(JobSpec, "in_flight", property(counted_in_flight))
    monkeypatch.setattr(Collector, "outstanding", property(counted_outstanding))
    _, report = run(transport, JobSpec(tasks=20, max_in_flight=1, timeout=20), right, quiet=True)
    assert report.ok == 20
    assert asked["in_flight"] <= 20 + 2, asked  # the allowance; the job's start and end
    assert asked["outstanding"] <= 3 * 20 + 4, asked  # allowance, wanted, the ledger's


def test_max_in_flight_bounds_the_bodies_the_master_holds_not_only_its_results(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ledger forgot answered bodies only at each reconcile (every 2 s): a fast job
    held 150,000 of them (145 MB) with --max-in-flight 100 (soak10)."""
    held: list[int] = []
    original = Ledger.record

    def record(self: Ledger, entries: Iterable[Entry]) -> None:
        original(self, entries)
        held.append(len(self))

    monkeypatch.setattr(Ledger, "record", record)
    monkeypatch.setattr(master_module, "RECONCILE_SECONDS", 3600.0)  # none in the job
    _, report = run(transport, JobSpec(tasks=3000, max_in_flight=10, timeout=30), right)
    assert report.ok == 3000
    assert len(held) >= 300 and max(held) <= 20, max(held)


def test_rate_mode_prints_a_status_line_every_status_every_seconds(transport: Transport) -> None:
    spec = JobSpec(tasks=None, rate=50, status_every=0.2)
    with _stop_after(1.0) as stop:
        out, report = run(transport, spec, right, stop=stop)
    status = re.findall(r"^submitted (\d+), results \d+ \(ok \d+, failed 0, wrong 0\)", out, re.M)
    assert 2 <= len(status) <= 6  # about 1 s / 0.2 s; never one per loop
    assert report.succeeded and 25 <= report.tasks <= 50 * report.elapsed_seconds + 1


class Echoes(Workload[int]):
    """A workload with no lines or checks of its own: the defaults a new workload gets."""

    def tasks(self, count: int, reply_to: str) -> list[tuple[Task, int]]:
        return [(Task(name="echo", args=[n], reply_to=reply_to), n) for n in range(count)]

    def name(self, entry: int) -> str:
        return f"echo({entry})"


def test_any_workload_runs_and_failures_are_named_by_it(transport: Transport) -> None:
    messages = {
        1: "no\nmaster exit\x1b[8m",  # no forged line, no escape
        2: "failed 3 of 3 attempts; last error: ValueError: boom",  # as a worker says it
        3: "MyValueError: a bad value",  # names another type
    }

    def answer(task: Task) -> list[bytes]:
        if task.args[0] in messages:
            return [error_result(task, "ValueError", messages[task.args[0]])]
        return [result(task, "anything")]

    out, report = run(transport, JobSpec(tasks=4, timeout=20), answer, Echoes())
    assert (report.ok, report.failed) == (1, 3)
    assert re.search(r"^echo\(0\) \[\w+\] = 'anything'$", out, re.M)
    assert re.search(r"task echo\(1\) \[\w+\] failed for good: ValueError: no\\nmaster", out)
    # the worker's reason names the type already: once, not "ValueError: failed ..."
    assert re.search(
        r"task echo\(2\) \[\w+\] failed for good: failed 3 of 3 attempts; "
        r"last error: ValueError: boom$",
        out,
        re.M,
    )
    assert re.search(r"\] failed for good: ValueError: MyValueError: a bad value$", out, re.M)
    assert "\x1b" not in out and not re.search("^master exit", out, re.M)
    assert "put task" not in out and "try to get result" not in out


def test_allowance_keeps_total_in_flight_and_rate() -> None:
    assert allowance(JobSpec(tasks=6), submitted=0, outstanding=0, elapsed=0) == 6
    assert allowance(JobSpec(tasks=6), submitted=6, outstanding=6, elapsed=9) == 0
    in_flight = JobSpec(tasks=100, max_in_flight=4)
    assert allowance(in_flight, submitted=10, outstanding=3, elapsed=0) == 1
    rate = JobSpec(tasks=None, rate=10)
    assert allowance(rate, submitted=0, outstanding=0, elapsed=0) == 1
    assert allowance(rate, submitted=1, outstanding=1, elapsed=0.05) == 0
    assert allowance(rate, submitted=1, outstanding=0, elapsed=1.0) == 10


def test_a_job_without_max_in_flight_holds_at_most_in_flight_tasks() -> None:
    """``--tasks 1000000000`` sent every task at once and held each until answered:
    230 MB of master a second, no bound."""
    huge = JobSpec(tasks=10**9)
    assert allowance(huge, submitted=0, outstanding=0, elapsed=0) == IN_FLIGHT
    assert allowance(huge, submitted=IN_FLIGHT, outstanding=IN_FLIGHT, elapsed=9) == 0
    assert allowance(huge, submitted=IN_FLIGHT, outstanding=IN_FLIGHT - 5, elapsed=9) == 5
    endless = JobSpec(tasks=None, rate=1000)
    assert allowance(endless, submitted=IN_FLIGHT, outstanding=IN_FLIGHT, elapsed=999) == 0


def test_a_rate_job_resumes_its_pace_after_an_outage_without_a_burst(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pace counted from the job's start: after an outage of T s the master sent
    about R * T tasks at once (69 in one second at --rate 10 after 6.5 s)."""
    sizes: list[tuple[float, int]] = []
    original = ManagerProducer.submit
    down_until = time.monotonic() + 0.5
    # an outage of 3 s: a burst past what a late turn may send (_MOST_AT_ONCE)
    monkeypatch.setattr("distq.master.Backoff", lambda: Backoff(3, 3))

    def failing(self: ManagerProducer, bodies: Sequence[bytes]) -> None:
        if time.monotonic() < down_until:
            raise TransportError("the broker is away")
        sizes.append((time.monotonic(), len(bodies)))
        original(self, bodies)

    monkeypatch.setattr(ManagerProducer, "submit", failing)
    with _stop_after(4.5) as stop:
        out, _ = run(transport, JobSpec(tasks=None, rate=10, status_every=10), right, stop=stop)
    assert "the broker is away; reconnecting" in out, out
    assert sizes and max(size for _, size in sizes) <= _MOST_AT_ONCE, sizes  # before: 27


def test_a_rate_job_that_stood_still_resumes_its_pace_without_a_burst(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The master stopped for S s (SIGSTOP, a paused VM) sent R * S tasks at once when it
    went on: 798 in one second at --rate 50 after 15 s."""

    def stands_still_once(sizes: list[int]) -> None:
        if len(sizes) == 2:
            time.sleep(1.5)  # as the process's stop would: a turn of the loop 1.5 s late

    sizes = rate_batches(transport, monkeypatch, rate=10, seconds=3.0, before=stands_still_once)
    assert len(sizes) > 3 and max(sizes) <= _MOST_AT_ONCE, sizes  # before: 15 at once


#: At --rate 10, what a turn of the loop late by less than ``STOOD_STILL_SECONDS`` sends
#: at once, paid back: a turn 0.3 s late (a loaded host) sent 3, past the 2 asserted.
_MOST_AT_ONCE = int(STOOD_STILL_SECONDS * 10) + 1


def test_a_square_of_another_type_is_a_wrong_result(transport: Transport) -> None:
    """``65536.0`` (or True for square(1)) is equal to the right int: it counted ok."""
    out, report = run(transport, JobSpec(tasks=3), lambda t: [result(t, float(t.args[0] ** 2))])
    assert report.incorrect == 3 and report.ok == 0 and not report.succeeded, out


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([3.0], 0.99) == 3.0


@pytest.mark.parametrize(
    ("per_second", "said"),
    [(0.498, "0.5"), (0.04, "0.04"), (1.99, "2"), (9.4, "9.4"), (12.4, "12"), (7802.2, "7,802")],
)
def test_the_summary_says_a_slow_jobs_rate_not_0_tasks_per_second(
    per_second: float, said: str
) -> None:
    assert master_module._rate(per_second) == said  # before: "0 tasks/s" below 0.5


def test_a_setting_refused_mid_job_still_collects_the_results_waiting(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refusal found by a reconcile (on Redis, a queue key made another type, once no
    task is leased) stopped the master at once: the results already in its reply queue
    were counted missing (1 of 2 in, the other's result sent as its lease ended)."""
    settled = 0
    refused = threading.Event()
    settle, results = ManagerConsumer.settle, ManagerProducer.results
    reconciled = ManagerProducer.reconcile

    def counted(self: ManagerConsumer, settlements: Sequence[Settlement]) -> None:
        nonlocal settled
        settle(self, settlements)
        settled += len(settlements)

    def held_back(self: ManagerProducer, max_count: int, timeout: float) -> list[bytes]:
        if not refused.is_set():  # read none before the refusal: all wait in the queue
            time.sleep(min(timeout, 0.05))
            return []
        return results(self, max_count, timeout)

    def reconcile(self: ManagerProducer) -> int:
        if settled < 4:
            return reconciled(self)
        refused.set()
        raise ConfigError("the queue's key holds a string")

    monkeypatch.setattr(ManagerConsumer, "settle", counted)
    monkeypatch.setattr(ManagerProducer, "results", held_back)
    monkeypatch.setattr(ManagerProducer, "reconcile", reconcile)
    monkeypatch.setattr(master_module, "RECONCILE_SECONDS", 0.05)
    out, report = run(transport, JobSpec(tasks=4, timeout=30), right)
    assert report.ok == 4 and report.missing == 0, out
    assert "stopped: the queue's key holds a string" in out, out


def _each_send_refused(monkeypatch: pytest.MonkeyPatch, calls_later: int) -> list[float]:
    """A broker that answers but refuses each send (RabbitMQ: a length limit with
    overflow reject-publish): ``ManagerProducer.submit`` keeps nothing, and the
    ``calls_later``-th ``results`` call after it raises the refusal (a nack read with the
    next call, or later). The times of the sends, appended as they happen."""
    sent: list[float] = []
    pending: list[int] = []  # calls left before the refusal is said, one a send unsaid
    original = ManagerProducer.results

    def dropped(self: ManagerProducer, bodies: Sequence[bytes]) -> None:
        sent.append(time.monotonic())
        pending.append(calls_later)

    def results(self: ManagerProducer, max_count: int, timeout: float) -> list[bytes]:
        if pending:
            pending[0] -= 1
            if pending[0] == 0:
                pending.clear()  # one refusal says every send so far
                raise TransportError("the broker refused 1 message(s)")
        return original(self, max_count, timeout)

    monkeypatch.setattr(ManagerProducer, "submit", dropped)
    monkeypatch.setattr(ManagerProducer, "results", results)
    return sent


def test_a_broker_that_keeps_refusing_the_job_is_retried_with_growing_backoff(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker that answers the reconcile but refuses the tasks it is sent (RabbitMQ: a
    length limit with overflow reject-publish, which nacks them after the publish) is one
    outage, retried with a delay that grows to its cap: each reconcile that went through
    started a new backoff at 0.1 s, and the master sent its lost tasks again about 20
    times a second for as long as the broker refused them (323 publishes in 12 s of 40
    tasks against a full RabbitMQ queue)."""
    monkeypatch.setattr("distq.master.Backoff", lambda: Backoff(rng=lambda: 1.0))
    sent = _each_send_refused(monkeypatch, 1)  # with the next call, as a nack does
    out, report = run(transport, JobSpec(tasks=5, timeout=3.0), right)
    assert report.missing == 5, out
    assert out.count("reconnecting") == 1, out
    # delays of 0.1, 0.2, 0.4, 0.8, 1.6 s within the 3 s: the first send and 5 again
    assert len(sent) <= 8, len(sent)


def test_a_refusal_read_a_call_later_still_grows_the_backoff(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same broker, its refusal read one call after the send instead of with the next
    (a RabbitMQ nack that comes after one result read): that call went through, so the
    master ended the outage and started its backoff again at 0.1 s each time (delays
    0.1, 0.1, 0.1, ... between sends). The backoff now resets only once the calls have
    gone through for its longest delay since the reconnect."""
    delays: list[float] = []

    class Recorded(Backoff):
        def next(self) -> float:
            delays.append(super().next())
            return delays[-1]

    monkeypatch.setattr("distq.master.Backoff", lambda: Recorded(rng=lambda: 1.0))
    _each_send_refused(monkeypatch, 2)  # said at the second call after the send
    out, report = run(transport, JobSpec(tasks=5, timeout=3.0), right)
    assert report.missing == 5, out
    assert len(delays) >= 3, out
    assert delays[:3] == [0.1, 0.2, 0.4], (delays, out)


def test_a_huge_wrong_value_is_cut_in_the_problems_as_an_error_is(transport: Transport) -> None:
    """A worker whose ``square`` returned 900 KB (under the 1 MiB message limit) made a
    900 KB problem line, printed and kept: 2,000 of them held by a --rate master were
    1.8 GB. An error's message is cut to 4,000 characters by its worker; a wrong value
    now is too, by the master."""
    out, report = run(transport, JobSpec(tasks=2, timeout=20), lambda t: [result(t, "x" * 900_000)])
    assert report.incorrect == 2 and len(report.problems) == 2
    for problem in report.problems:
        assert len(problem) < 4_200, len(problem)
        assert problem.startswith("wrong result for square(") and "'xxxx" in problem
        assert problem.endswith("... (896,002 characters cut)"), problem[-60:]
    assert len(out) < 50_000


def test_a_huge_error_message_is_cut_in_the_problems(transport: Transport) -> None:
    """A distq worker cuts an error's message to 4,000 characters, but an error result
    from any other sender (a worker of another version, a manager peer) was kept whole
    in the master's problem, its type too: 2,000 of 1 MB on a --rate master were 2 GB,
    where the README says each problem is cut to about 4,000 characters."""

    def huge(task: Task) -> list[bytes]:
        return [error_result(task, "E" * 20_000, "m" * 1_000_000, worker="other")]

    out, report = run(transport, JobSpec(tasks=2, timeout=20), huge)
    assert report.failed == 2 and len(report.problems) == 2, out[-2000:]
    for problem in report.problems:
        assert len(problem) < 10_000, len(problem)
        assert "... (996,000 characters cut)" in problem, problem[-60:]
    assert len(out) < 50_000


@pytest.mark.parametrize("tasks", [None, 30])
def test_a_stopped_job_takes_back_the_tasks_no_worker_took(
    transport: Transport, tasks: int | None
) -> None:
    """Stopped with tasks still queued (no worker here), the master takes them back off
    the queue: a worker took them during its wait for results in flight and ran them,
    their results dropped. With --tasks they count as missing (not waited for); an
    endless --rate job's stop is its end, and those never ran: not submitted, so it
    succeeds when every task a worker took came back (here none)."""
    out = io.StringIO()
    spec = JobSpec(tasks=tasks, rate=20, status_every=10)
    with _stop_after(1.0) as stop:
        report = Master(transport, Console(out=out, err=out)).run(spec, Squares(seed=1), stop)
    assert transport.stats().ready == 0, out.getvalue()
    if tasks is None:
        assert report.succeeded and report.tasks == 0, out.getvalue()
    else:
        assert report.tasks == 30 and report.missing == 30 and not report.succeeded


def test_a_finished_job_leaves_no_stale_beat_for_the_liveness_check(transport: Transport) -> None:
    """The job's loop beat "job" until it ended and never said it ended: while the master
    then drained, forgot orphans, wrote its summary and closed, /healthz read the last
    beat growing old and said "stalled" (503) once DISTQ_STALL_SECONDS passed."""
    health = ProcessHealth("master", stall_seconds=0.5)
    done = threading.Event()
    thread = threading.Thread(target=serve, args=(transport, right, done), daemon=True)
    thread.start()
    out = io.StringIO()
    try:
        report = Master(transport, Console(out=out, err=out), health=health).run(
            JobSpec(tasks=3, timeout=20), Squares(seed=1)
        )
    finally:
        done.set()
        thread.join(5)
    assert report.succeeded, out.getvalue()
    time.sleep(0.6)
    verdict = health.live()
    assert "job" not in verdict.body.get("loops", {}), verdict
    assert verdict.ok, verdict


def test_an_endless_jobs_stop_leaves_no_task_outstanding_on_its_metrics(
    transport: Transport,
) -> None:
    """An endless --rate job stopped with its tasks still queued takes them back, and
    they count as never submitted: none is outstanding any more. Its
    distq_master_tasks_outstanding still said all of them (20 at 20/s for 1 s), to
    the last scrape before the master exited: nothing set it after they went."""
    metrics = MasterMetrics("manager", "q")
    out = io.StringIO()
    spec = JobSpec(tasks=None, rate=20, status_every=10)
    with _stop_after(1.0) as stop:
        master = Master(transport, Console(out=out, err=out), MasterTelemetry(metrics))
        report = master.run(spec, Squares(seed=1), stop)
    assert report.succeeded and report.tasks == 0, out.getvalue()
    outstanding = metrics.registry.get_sample_value(
        "distq_master_tasks_outstanding", {"transport": "manager", "queue": "q"}
    )
    assert outstanding == 0, out.getvalue()


def test_a_seeded_squares_job_draws_the_same_numbers_one_task_at_a_time_as_in_batches() -> None:
    """``--seed`` fixes a job's numbers whatever its batches: a lone task's (``--max-in-flight
    1``) is drawn without random.choices' list, and must be the number choices() draws."""
    import random

    drawn = random.Random(7).choices(range(1, 1001), k=300)
    lone = Squares(seed=7)
    numbers = [n for _ in range(100) for _, n in lone.tasks(1, "r")]
    numbers += [n for _, n in lone.tasks(150, "r")] + [
        n for _ in range(50) for _, n in lone.tasks(1, "r")
    ]
    assert numbers == drawn
    task, n = Squares(seed=7, max_attempts=5, task_delay=0.5).tasks(1, "r")[0]
    assert (task.name, task.args, task.kwargs, task.max_attempts, task.reply_to) == (
        "square",
        [n],
        {"delay": 0.5},
        5,
        "r",
    )


def test_a_signal_just_after_the_wait_for_workers_ran_out_still_says_they_did_not_attach(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait read its stop after its deadline: a signal landing between the two (here
    inside the last count of slots, past the deadline) hid "attached in time", though
    the time had run out first."""
    stop = threading.Event()
    counted = transport.stats

    def late_signal() -> object:
        time.sleep(0.4)  # past the deadline of 0.2 s
        stop.set()
        return counted()

    monkeypatch.setattr(transport, "stats", late_signal)
    out = io.StringIO()
    report = Master(transport, Console(out=out, err=out)).run(
        JobSpec(tasks=1, timeout=0.2, wait_workers=1), Squares(seed=1), stop
    )
    assert not report.started
    assert "only 0 of 1 worker slots attached in time" in report.problems, report.problems


def test_a_job_whose_tasks_a_gone_worker_took_off_the_queue_says_so(
    transport: Transport,
) -> None:
    """A worker took the job's tasks, dead-lettered them without a result, and left: the
    job's end said "no worker slot is attached ...: are the workers running, with this
    DISTQ_QUEUE ...?", queue names that were right. Its tasks are no longer queued: the
    line says workers took them, and where the dead-lettered ones are listed."""
    said, taken = job_a_worker_left(transport, transport, take=2, dead_letter=True)
    assert taken == 2, said
    assert "no worker slot is attached to the job's queue" not in said, said
    assert (
        "no result came back, yet workers took tasks off the job's queue at manager transport "
        "on 127.0.0.1:"
    ) in said, said
    assert (
        "(2 of the 2 not answered are no longer queued: `distq dead-letters` lists those "
        "dead-lettered), and no worker slot is attached to it now"
    ) in said, said


def test_a_job_whose_tasks_a_gone_worker_handed_back_says_so_not_that_its_lease_lapsed(
    transport: Transport,
) -> None:
    """A worker took the job's tasks and handed them back unrun as it stopped (a second
    SIGTERM): the job's end said "the queue holds 2 a worker had and gave up unanswered,
    its lease lapsed", a lease that never lapsed. It says the worker handed them back or
    its lease lapsed, and counts them as tasks."""
    said, taken = job_a_worker_left(transport, transport, take=2, dead_letter=False)
    assert taken == 2, said
    assert (
        "(the queue holds 2 tasks a worker had and gave up unanswered: it handed them back, "
        "or its lease lapsed), and no worker slot is attached to it now"
    ) in said, said


def test_a_job_one_of_whose_tasks_a_gone_worker_took_says_one_is_no_longer_queued(
    transport: Transport,
) -> None:
    """A worker took one of the job's two tasks, dead-lettered it and left: the job's end
    said "1 of the 2 not answered are no longer queued". One is."""
    said, taken = job_a_worker_left(transport, transport, take=1, dead_letter=True)
    assert taken == 1, said
    assert "(1 of the 2 not answered is no longer queued: `distq dead-letters` lists" in said, said


def test_a_timed_out_job_tells_the_tasks_whose_results_it_dropped_from_those_that_may_run(
    transport: Transport,
) -> None:
    """Three tasks: one answered, one refused by a worker with another signing key (its
    unsigned answer the master drops), one taken and never answered. Its end said "the 2
    not taken back may still run, their results read by nobody; for every result, give
    the job a longer --timeout, or more workers": one of the two had come back, dropped,
    which no wait reads better."""
    codec = Codec([b"the-master-s-key-0123456789abcdef"])
    refused = "refused: task signed with another key, not one of DISTQ_SIGNING_KEYS"
    answers = iter(["refused", "read", "held"])

    def some_dropped(task: Task) -> list[bytes]:
        answer = next(answers)
        if answer == "refused":  # unsigned, as such a worker sends it
            return [error_result(task, "SignatureError", refused)]
        return [codec.seal_result(Result.decode(right(task)[0]))] if answer == "read" else []

    out, report = run(transport, JobSpec(tasks=3, timeout=1), some_dropped, codec=codec)
    assert report.answered == 1 and report.missing == 2, out
    assert "distq: 1 result that came back was dropped, the first one for: " in out, out
    assert re.search(
        r"^--timeout: 1 of the 2 not answered came back, its result dropped \(see the "
        r"warnings above, the first one for: unsigned result: a worker says \(unverified\) "
        r'"refused: task signed with another key, not one of DISTQ_SIGNING_KEYS"\): a longer '
        r"--timeout reads those no better; "
        r"fix what the first one's reason names; the other 1 not taken back may still run, "
        r"its result read by nobody; for the rest, give the job a longer --timeout, or more "
        r"workers$",
        out,
        re.M,
    ), out


def test_a_timed_out_job_that_dropped_a_copy_of_a_task_it_read_says_the_other_may_run(
    transport: Transport,
) -> None:
    """Two tasks: the first answered twice (run again, say, after its lease lapsed),
    once with a body the master drops and once read; the second never answered. Its end
    said "the task not answered came back, its result dropped (...): a longer --timeout
    reads it no better", of a task whose answer never came: the dropped one may be a
    copy of a task read, beside which only a worker's refusal names its task."""
    first: list[Task] = []

    def answer(task: Task) -> list[bytes]:
        first.append(task)  # the second's delivery carries the first's answer
        return [b"not a result"] if len(first) == 1 else right(first[0])

    out, report = run(transport, JobSpec(tasks=2, timeout=1), answer)
    assert report.answered == 1 and report.missing == 1, out
    assert "distq: 1 result that came back was dropped, the first one for: " in out, out
    assert "came back, its result dropped" not in out, out
    assert re.search(
        r"^--timeout: the 1 not taken back may still run, its result read by nobody; for "
        r"every result, give the job a longer --timeout, or more workers$",
        out,
        re.M,
    ), out


def test_a_refusal_naming_no_task_the_job_waits_for_is_not_kept(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unsigned refusal, unverified, names any task id it likes, up to a message's
    size: the job kept each one's (up to 100,000 of them, a megabyte each) to tell which
    of its tasks came back dropped. It keeps only those of tasks it waits for."""
    codec = Codec([b"the-master-s-key-0123456789abcdef"])
    forged = "f" * 100_000
    kept: list[set[str]] = []
    finish = _Run._finish

    def finishing(self: _Run[int], elapsed: float) -> JobReport:
        kept.append(set(self.refusals))
        return finish(self, elapsed)

    monkeypatch.setattr(_Run, "_finish", finishing)

    def refused(task: Task) -> list[bytes]:
        other = msgspec.structs.replace(task, id=forged)
        return [error_result(other, "SignatureError", "refused: task signed with another key")]

    out, report = run(transport, JobSpec(tasks=1, timeout=1), refused, codec=codec)
    assert "dropped a result: unsigned result" in out, out
    assert report.missing == 1 and kept == [set()], out
