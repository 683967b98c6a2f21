"""The master's stop right after an outage, and its endless jobs' stops (stop32)."""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence

import pytest

from distq.backoff import Backoff
from distq.console import Console
from distq.envelope import Task
from distq.errors import TransportError
from distq.master import JobReport, JobSpec, Master
from distq.squares import Squares
from distq.transport import Delivery, Settlement, Transport
from distq.transport.manager import ManagerProducer
from seam import ok_result


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
    than it was submitted), so the drain waits for it (check32). It ended at once, every
    waiting task taken back: the task ran, and its result, back a second later, was
    dropped, the task counted as never submitted (report.tasks 0)."""
    report, taken, said = _stop_with_tasks_queued_twice(transport, monkeypatch, 1, 10)
    assert len(taken) == 1, said
    assert (report.tasks, report.ok, report.missing) == (1, 1, 0), said
    assert report.succeeded, said
