"""What the master's stop takes back off the queue, and what it says it left: as a broker
call fails, right after an outage, and at the end of an endless job."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Sequence

import pytest

from distq.backoff import Backoff
from distq.codec import Codec
from distq.console import Console
from distq.ending import Endings
from distq.envelope import MOST_ATTEMPTS, Task
from distq.errors import TransportError
from distq.master import JobReport, JobSpec, Master
from distq.retries import retry_bodies
from distq.squares import Squares
from distq.transport import Consumer, Delivery, Settlement, Transport
from distq.transport.manager import ManagerProducer, ManagerTransport
from seam import fetch_n, held_until_stopped, ok_result, retried


def _third_submit_fails(
    monkeypatch: pytest.MonkeyPatch, stop: threading.Event, calls: dict[str, int]
) -> None:
    """``ManagerProducer.submit`` counted in ``calls["submit"]``: two go through and are
    queued (no worker here), the third sets ``stop`` (SIGTERM as the broker goes away)
    and fails."""
    submit = ManagerProducer.submit

    def failing(self: ManagerProducer, bodies: Sequence[bytes]) -> None:
        calls["submit"] += 1
        if calls["submit"] == 3:
            stop.set()
            raise TransportError("the broker is away")
        submit(self, bodies)

    monkeypatch.setattr(ManagerProducer, "submit", failing)


def test_a_stop_as_a_call_fails_makes_no_call_to_take_back_and_says_what_it_left(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM as a call to the broker failed, with no outage before it: the stop's
    withdraw called the broker that had just failed (a paused one: a whole connect
    timeout's wait), and said nothing of the tasks it left queued."""
    stop = threading.Event()
    calls = {"submit": 0, "withdraw": 0}

    def counted(self: ManagerProducer, bodies: Sequence[bytes]) -> list[bool]:
        calls["withdraw"] += 1
        return [False] * len(bodies)

    _third_submit_fails(monkeypatch, stop, calls)
    monkeypatch.setattr(ManagerProducer, "withdraw", counted)
    out = io.StringIO()
    spec = JobSpec(tasks=10, rate=20, status_every=10, drain_seconds=0.5)
    report = Master(transport, Console(out=out, err=out)).run(spec, Squares(seed=1), stop)
    said = out.getvalue()
    assert calls["submit"] == 3 and calls["withdraw"] == 0, said
    assert report.missing == 10, said
    assert (
        "did not take back the 3 tasks not answered (the broker failed its last call: "
        "the broker is away): any of them still queued stays queued" in said
    ), said


@pytest.mark.parametrize("keys", [(), (b"k" * 32,), (b"k" * 32, b"o" * 32)])
def test_retry_bodies_are_the_bytes_a_worker_sends_as_the_retries(keys: tuple[bytes, ...]) -> None:
    """A stop takes retries back by body: a worker's retry of each attempt, as
    Endings.failed seals it, is the body retry_bodies made for that attempt, for awkward
    arguments (a float, non-ASCII text, keys out of order, nesting) and with signing."""
    task = Task(
        name="jobs:f",
        args=[0.1, 1e300, -0.0, "é\u2028\x00", {"b": [None, True], "a": 2**70}],
        kwargs={"z": 1, "y": "x"},
        reply_to="distq:q:results:j",
        max_attempts=4,
    )
    master = Codec(list(keys))
    body = master.seal_task(task)
    made = [bodies[0] for bodies in retry_bodies(master, body)]  # each by the first key
    assert len(made) == 3
    endings = Endings("w", "q", Codec(list(keys)))
    sent = body
    for attempt, want in enumerate(made, start=2):
        delivery = Delivery(body=sent, tag=attempt)
        opened = endings.codec.open_task(sent)
        ending = endings.failed(delivery, opened, ValueError("no"), 0.0, 0.0, retryable=True)
        assert ending.settlement.retry == want, attempt
        sent = want
    assert list(retry_bodies(master, made[-1])) == []  # its last attempt: no retry
    if keys:  # a body the master cannot open (signed with a key it lacks): none
        assert list(retry_bodies(Codec([b"x" * 32]), body)) == []


def test_a_stop_as_a_call_fails_after_a_lapse_makes_no_last_look_for_orphans(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job whose reply queue lapsed once looks for its orphans again as it ends: stopped
    as a call to the broker failed, that last look called the broker that had just
    failed (a paused one: a whole connect timeout's wait past the drain)."""
    stop = threading.Event()
    original_reconcile = ManagerProducer.reconcile
    calls = {"submit": 0, "forget": 0, "forget stopped": 0}

    def lapsed(self: ManagerProducer) -> int:
        held = original_reconcile(self)
        self.lapsed = True  # found lapsed, and made again: workers may have orphaned some
        return held

    def counted(self: ManagerTransport, reply_to: str) -> int:
        calls["forget stopped" if stop.is_set() else "forget"] += 1
        return 0

    monkeypatch.setattr("distq.master.RECONCILE_SECONDS", 0.01)
    _third_submit_fails(monkeypatch, stop, calls)
    monkeypatch.setattr(ManagerProducer, "reconcile", lapsed)
    monkeypatch.setattr(ManagerTransport, "forget_orphans", counted)
    out = io.StringIO()
    spec = JobSpec(tasks=10, rate=20, status_every=10, drain_seconds=0.5)
    Master(transport, Console(out=out, err=out)).run(spec, Squares(seed=1), stop)
    assert calls["submit"] == 3, out.getvalue()
    assert calls["forget"] >= 1, out.getvalue()  # at the lapse, in the job
    assert calls["forget stopped"] == 0, out.getvalue()
    assert "did not look again for dead letters workers made" in out.getvalue()


def test_a_stop_as_a_call_fails_waits_for_no_result_on_the_broker_that_just_failed(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped as a call failed, the drain still asked that broker for results, call after
    call: on a paused Redis each waited out the socket's timeout (a stop took 13.3 s, its
    5 s drain and the close each a 6.4 s timeout), past the drain."""
    stop = threading.Event()
    original_results = ManagerProducer.results
    calls = {"submit": 0, "results stopped": 0}

    def results(self: ManagerProducer, max_count: int, timeout: float) -> list[bytes]:
        if stop.is_set():
            calls["results stopped"] += 1
        return original_results(self, max_count, timeout)

    _third_submit_fails(monkeypatch, stop, calls)
    monkeypatch.setattr(ManagerProducer, "results", results)
    out = io.StringIO()
    spec = JobSpec(tasks=10, rate=20, status_every=10, drain_seconds=1)
    report = Master(transport, Console(out=out, err=out)).run(spec, Squares(seed=1), stop)
    assert calls["submit"] == 3 and report.missing == 10, out.getvalue()
    assert calls["results stopped"] == 0, out.getvalue()


def test_a_stop_as_a_call_fails_closes_its_producer_without_a_call_to_the_broker(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped as a call failed, the master closed its producer as at any end: on Redis
    a script (its registration and result list deleted) on the broker that had just
    failed, which on a paused one waited out the socket's timeout (6.4 s) after the job.
    It abandons the producer now (Producer.abandon: no call; the registration lapses)."""
    stop = threading.Event()
    calls = {"submit": 0, "close": 0, "abandon": 0}

    def counted(name: str) -> Callable[[ManagerProducer], None]:
        def call(self: ManagerProducer) -> None:
            calls[name] += 1

        return call

    _third_submit_fails(monkeypatch, stop, calls)
    monkeypatch.setattr(ManagerProducer, "close", counted("close"))
    monkeypatch.setattr(ManagerProducer, "abandon", counted("abandon"), raising=False)
    out = io.StringIO()
    spec = JobSpec(tasks=10, rate=20, status_every=10, drain_seconds=1)
    Master(transport, Console(out=out, err=out)).run(spec, Squares(seed=1), stop)
    assert calls["submit"] == 3, out.getvalue()
    assert (calls["close"], calls["abandon"]) == (0, 1), out.getvalue()


def test_a_stop_with_the_broker_answering_closes_its_producer(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop with no call failed closes the producer as before (registration removed)."""
    stop = threading.Event()
    calls = {"close": 0, "abandon": 0}
    original_close = ManagerProducer.close

    def close(self: ManagerProducer) -> None:
        calls["close"] += 1
        original_close(self)

    def abandon(self: ManagerProducer) -> None:
        calls["abandon"] += 1

    def close_answered(self: ManagerProducer) -> None:
        calls["answered"] = calls.get("answered", 0) + 1
        original_close(self)

    monkeypatch.setattr(ManagerProducer, "close", close)
    monkeypatch.setattr(ManagerProducer, "abandon", abandon, raising=False)
    monkeypatch.setattr(ManagerProducer, "close_answered", close_answered, raising=False)
    threading.Timer(0.3, stop.set).start()
    out = io.StringIO()
    spec = JobSpec(tasks=10, rate=20, status_every=10, drain_seconds=0.5)
    Master(transport, Console(out=out, err=out)).run(spec, Squares(seed=1), stop)
    assert calls == {"close": 1, "abandon": 0}, out.getvalue()  # tasks unanswered


def _counted_closes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each call of a manager producer's close ("close") and close_answered ("answered"),
    in order, in the list returned (neither closes anything)."""
    calls: list[str] = []
    monkeypatch.setattr(ManagerProducer, "close", lambda self: calls.append("close"))
    monkeypatch.setattr(
        ManagerProducer, "close_answered", lambda self: calls.append("answered"), raising=False
    )
    return calls


def _answer(consumer: Consumer, count: int) -> None:
    """A worker's part: ``count`` tasks fetched and answered, each with its square."""
    for delivery in fetch_n(consumer, count, within=10):
        task = Task.decode(delivery.body)
        result = ok_result(task, task.args[0] ** 2)
        consumer.settle([Settlement(delivery, reply_to=task.reply_to, result=result)])


def test_a_job_with_every_result_in_closes_its_producer_as_answered(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every task answered: the master closes with close_answered, which on RabbitMQ
    leaves its reply queue to expire, so that a copy of a task still queued runs rather
    than being dead-lettered "its master is gone" (after a broker restart, one was)."""
    calls = _counted_closes(monkeypatch)
    stop = threading.Event()
    run = threading.Thread(target=lambda: _answer(consumer, 4))
    with held_until_stopped(transport.consumer("w"), stop, run) as consumer:
        run.start()
        out = io.StringIO()
        spec = JobSpec(tasks=4, timeout=20, status_every=10)
        report = Master(transport, Console(out=out, err=out)).run(spec, Squares(seed=1))
    assert report.ok == 4 and calls == ["answered"], out.getvalue()


def test_an_endless_job_stopped_with_its_queued_tasks_taken_back_closes_as_not_answered(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An endless --rate job's stop takes its queued tasks back and counts them never
    submitted: nothing outstanding, results in, so the master took it for "every result
    in" and closed with close_answered (ef4821b), which on RabbitMQ and Redis leaves its
    reply queue or registration to lapse: a copy of one it took back fewer times than it
    submitted (submitted again after a reconcile) would run after it, where its stop
    line says the tasks taken back do not run."""
    calls = _counted_closes(monkeypatch)
    stop = threading.Event()

    def answer() -> None:
        _answer(consumer, 2)
        threading.Timer(0.5, stop.set).start()  # more queued meanwhile, none taken

    run = threading.Thread(target=answer)
    with held_until_stopped(transport.consumer("w"), stop, run) as consumer:
        run.start()
        out = io.StringIO()
        spec = JobSpec(tasks=None, rate=20, status_every=10, drain_seconds=0.5)
        report = Master(transport, Console(out=out, err=out)).run(spec, Squares(seed=1), stop)
    said = out.getvalue()
    assert report.ok == 2 and report.missing == 0, said
    assert "not counted as submitted" in said, said  # taken back: none outstanding
    assert calls == ["close"], said


def test_retry_bodies_hold_a_retry_signed_by_any_key_the_master_accepts() -> None:
    """Mid-rotation (the new key moved first on the workers, not yet on the master, or
    the other way) a worker signs its retries with a key the master accepts but does not
    sign with: retry_bodies made only the master's own, and a stop left such retries
    queued, to run after it (or be dead-lettered, their master gone)."""
    old, new = b"o" * 32, b"n" * 32
    task = Task(name="jobs:f", args=[1], kwargs={}, reply_to="distq:q:results:j", max_attempts=3)
    master = Codec([old, new], queue="q")
    body = master.seal_task(task)
    worker = Endings("w", "q", Codec([new, old], queue="q"))
    opened = worker.codec.open_task(body)
    delivery = Delivery(body=body, tag=1)
    failed = worker.failed(delivery, opened, ValueError("no"), 0.0, 0.0, retryable=True)
    retry = failed.settlement.retry
    assert retry is not None and not retry.startswith(master.seal(b"", "task")[:12])
    made = list(retry_bodies(master, body))
    assert [len(bodies) for bodies in made] == [2, 2]  # attempts 2 and 3, by either key
    assert retry in made[0], made
    assert list(retry_bodies(Codec(queue="q"), task.encode())) == [  # unsigned: one each
        [task.next_attempt().encode()],
        [task.next_attempt().next_attempt().encode()],
    ]


def withdraws_asked(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many bodies each of the manager producer's withdraws asks for, from now on
    (each still withdraws them)."""
    asked: list[int] = []
    original = ManagerProducer.withdraw

    def counted(self: ManagerProducer, bodies: Sequence[bytes]) -> list[bool]:
        asked.append(len(bodies))
        return original(self, bodies)

    monkeypatch.setattr(ManagerProducer, "withdraw", counted)
    return asked


def started_job(
    transport: Transport, spec: JobSpec, work: Squares
) -> tuple[threading.Event, threading.Thread, io.StringIO, list[JobReport]]:
    """A master's job of ``spec`` and ``work`` on ``transport``, started in a thread: the
    event that stops it, the thread, what the master says, and the list its report goes
    in as it ends."""
    stop = threading.Event()
    out = io.StringIO()
    master = Master(transport, Console(out=out, err=out))
    reports: list[JobReport] = []
    run = threading.Thread(target=lambda: reports.append(master.run(spec, work, stop)))
    run.start()
    return stop, run, out, reports


def test_a_stop_looks_for_every_tasks_next_attempt_before_any_later_one(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tasks of --max-attempts 100, each with its second attempt waiting out its delay:
    the stop looked for attempts 2 to 100 of one task before the next task's, 99 bodies
    each where one was there; 20,000 such tasks ran out of the stop's 5 s with 6,757
    (Redis) and 11,070 (manager) of their retries left queued. Every task's second
    attempt is now looked for before any third: one body a task here."""
    tasks = 50
    asked = withdraws_asked(monkeypatch)
    spec = JobSpec(tasks=tasks, drain_seconds=0.5)
    stop, run, out, reports = started_job(transport, spec, Squares(max_attempts=100))
    with held_until_stopped(transport.consumer("failing-worker"), stop, run) as consumer:
        taken = fetch_n(consumer, tasks)
        assert len(taken) == tasks, out.getvalue()
        endings = Endings("failing-worker", "distq")  # the fixture's queue: the default
        consumer.settle(retried(endings, taken, [30.0] * len(taken)))
    assert reports and reports[0].missing == tasks, out.getvalue()
    assert transport.stats().ready == 0, out.getvalue()
    assert sum(asked) == 2 * tasks, asked  # each task's body, then its second attempt's


def test_a_stop_looks_only_for_the_retries_its_tasks_age_allows(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tasks of --max-attempts 10,000 a worker holds at the stop: the stop's take-back and
    its look after the drain ask for the few retries that can exist a moment after the
    send (attempts 2 to 4 or 5, each look), not all 9,999 of each task. The unit tests of
    the search give it an age by hand: this is the master's, through its collector."""
    tasks = 5
    asked = withdraws_asked(monkeypatch)
    spec = JobSpec(tasks=tasks, drain_seconds=0.2)
    stop, run, out, reports = started_job(transport, spec, Squares(max_attempts=MOST_ATTEMPTS))
    with held_until_stopped(transport.consumer("holding-worker"), stop, run) as consumer:
        assert len(fetch_n(consumer, tasks)) == tasks, out.getvalue()
    assert reports and reports[0].missing == tasks, out.getvalue()
    assert 0 < sum(asked) <= 2 * tasks * (1 + 4), asked  # each look: a task, 4 retries


@pytest.mark.parametrize("tasks", [None, 10])
def test_a_job_stopped_right_after_it_reconnected_takes_back_its_queued_tasks(
    transport: Transport, monkeypatch: pytest.MonkeyPatch, tasks: int | None
) -> None:
    """Stopped as its reconnect went through, before the job's next call did, the master
    still counted the outage as ongoing and took nothing back off the queue, though the
    broker had just answered it: its queued tasks stayed for a worker to run after the
    stop (a stop in a real outage makes no call that would wait on the broker)."""
    monkeypatch.setattr("distq.master.Backoff", lambda: Backoff(0.05, 0.05))
    stop = threading.Event()
    original_submit, original_reconcile = ManagerProducer.submit, ManagerProducer.reconcile
    calls = {"submit": 0}

    def failing_once(self: ManagerProducer, bodies: Sequence[bytes]) -> None:
        calls["submit"] += 1
        if calls["submit"] == 3:  # two went through and were queued (no worker here)
            raise TransportError("the broker is away")
        original_submit(self, bodies)

    def reconcile_then_stop(self: ManagerProducer) -> int:
        held = original_reconcile(self)
        if calls["submit"] >= 3:  # the reconnect: SIGTERM arrives now
            stop.set()
        return held

    monkeypatch.setattr(ManagerProducer, "submit", failing_once)
    monkeypatch.setattr(ManagerProducer, "reconcile", reconcile_then_stop)
    out = io.StringIO()
    spec = JobSpec(tasks=tasks, rate=20, status_every=10, drain_seconds=2)
    report = Master(transport, Console(out=out, err=out)).run(spec, Squares(seed=1), stop)
    assert "the broker is away; reconnecting" in out.getvalue(), out.getvalue()
    assert transport.stats().ready == 0, out.getvalue()
    if tasks is None:
        assert report.succeeded and report.tasks == 0, out.getvalue()
    else:
        assert report.missing == tasks and not report.succeeded, out.getvalue()


def _stop_with_tasks_queued_twice(
    transport: Transport, monkeypatch: pytest.MonkeyPatch, held: int, drain: float
) -> tuple[JobReport, list[Delivery], str]:
    """An endless job whose publish of three tasks arrived unconfirmed, then was submitted
    again after the reconcile (the broker could not vouch for it): each of those tasks
    queued twice. A worker takes ``held`` copies, the master is stopped, and the worker
    answers a second later. The master's report, the copies taken, what it said."""
    monkeypatch.setattr("distq.master.Backoff", lambda: Backoff(0.05, 0.05))
    # a task a submit, however late the pace runs: under load (CI) it caught up with two
    # in one call, the broker away at the call of the third and fourth, four queued twice
    monkeypatch.setattr("distq.master.MESSAGE_BATCH", 1)
    stop = threading.Event()
    original_submit, original_reconcile = ManagerProducer.submit, ManagerProducer.reconcile
    calls = {"submit": 0}
    consumer = transport.consumer("test-worker")
    taken: list[Delivery] = []

    def unconfirmed(self: ManagerProducer, bodies: Sequence[bytes]) -> None:
        calls["submit"] += 1
        original_submit(self, bodies)
        if calls["submit"] == 3:  # it arrived, unconfirmed
            raise TransportError("the broker is away")
        if calls["submit"] == 4:  # the three submitted again: a worker takes `held`
            for _ in range(50):
                taken.extend(consumer.fetch(held - len(taken), 0.1))
                if len(taken) >= held:
                    break
            stop.set()

    def unvouched(self: ManagerProducer) -> int:
        vouched = original_reconcile(self)
        return 0 if calls["submit"] == 3 else vouched

    def answer_later() -> None:
        consumer.settle(
            [
                Settlement(d, reply_to=t.reply_to, result=ok_result(t, t.args[0] ** 2))
                for d in taken
                for t in [Task.decode(d.body)]
            ]
        )

    monkeypatch.setattr(ManagerProducer, "submit", unconfirmed)
    monkeypatch.setattr(ManagerProducer, "reconcile", unvouched)
    out = io.StringIO()
    spec = JobSpec(tasks=None, rate=20, status_every=10, drain_seconds=drain)
    timer = threading.Timer(1.0, answer_later)
    timer.start()
    try:
        report = Master(transport, Console(out=out, err=out)).run(spec, Squares(seed=1), stop)
    finally:
        timer.join()
    said = out.getvalue()
    assert "submitting the 3 tasks among the others" in said, said
    assert transport.stats().ready == 0, said
    return report, taken, said


@pytest.mark.parametrize("held", [1, 4])
def test_an_endless_jobs_stop_with_tasks_queued_twice_takes_every_copy_and_counts_what_ran(
    transport: Transport, monkeypatch: pytest.MonkeyPatch, held: int
) -> None:
    """The stop's withdraw took one copy of each task queued twice and counted the task
    as never submitted: the other copy stayed queued to run after the stop (2 left
    ready), or, with a worker, ran and its result, come back during the drain, was
    dropped unsaid (1 of 3 results counted where all 3 ran)."""
    report, taken, said = _stop_with_tasks_queued_twice(transport, monkeypatch, held, 3)
    if held == 4:  # every task ran (the first twice): every result counts
        ran = {Task.decode(d.body).id for d in taken}
        assert len(ran) == 3
        assert (report.tasks, report.ok, report.missing) == (3, 3, 0), said
        assert report.succeeded, said


def test_a_job_stopped_as_a_call_fails_after_a_reconnect_makes_no_call_to_take_back(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reconnected, then the job's next call failed as the stop came: the broker is away
    again, and the stop makes no call that would wait on it (as a stop in any outage)."""
    monkeypatch.setattr("distq.master.Backoff", lambda: Backoff(0.05, 0.05))
    stop = threading.Event()
    original_submit, original_results = ManagerProducer.submit, ManagerProducer.results
    original_reconcile = ManagerProducer.reconcile
    calls = {"submit": 0, "withdraw": 0, "after": 0}

    def away_again() -> None:
        if calls["after"]:
            calls["after"] += 1
            stop.set()  # SIGTERM as the broker goes away again
            raise TransportError("the broker is away")

    def failing(self: ManagerProducer, bodies: Sequence[bytes]) -> None:
        away_again()
        calls["submit"] += 1
        original_submit(self, bodies)
        if calls["submit"] == 3:
            raise TransportError("the broker is away")

    def results(self: ManagerProducer, max_count: int, timeout: float) -> list[bytes]:
        away_again()
        return original_results(self, max_count, timeout)

    def reconcile(self: ManagerProducer) -> int:
        held = original_reconcile(self)
        if calls["submit"] == 3:
            calls["after"] = 1
        return held

    def counted(self: ManagerProducer, bodies: Sequence[bytes]) -> list[bool]:
        calls["withdraw"] += 1
        return [False] * len(bodies)

    monkeypatch.setattr(ManagerProducer, "submit", failing)
    monkeypatch.setattr(ManagerProducer, "results", results)
    monkeypatch.setattr(ManagerProducer, "reconcile", reconcile)
    monkeypatch.setattr(ManagerProducer, "withdraw", counted)
    out = io.StringIO()
    spec = JobSpec(tasks=10, rate=20, status_every=10, drain_seconds=0.5)
    Master(transport, Console(out=out, err=out)).run(spec, Squares(seed=1), stop)
    assert calls["after"] >= 2, out.getvalue()
    assert calls["withdraw"] == 0, out.getvalue()


def test_a_copy_with_a_worker_of_a_task_whose_other_copy_was_taken_back_is_waited_for(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker holds one copy of one of the three tasks queued twice: the stop takes back
    the other five copies; that task may still run (a copy of it was found fewer times
    than it was submitted), so the drain waits for it. It ended at once, every
    waiting task taken back: the task ran, and its result, back a second later, was
    dropped, the task counted as never submitted (report.tasks 0)."""
    report, taken, said = _stop_with_tasks_queued_twice(transport, monkeypatch, 1, 10)
    assert len(taken) == 1, said
    assert (report.tasks, report.ok, report.missing) == (1, 1, 0), said
    assert report.succeeded, said
