"""The stop of an endless job whose tasks were submitted twice (check32)."""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence

import pytest

from distq.backoff import Backoff
from distq.console import Console
from distq.envelope import Task
from distq.errors import TransportError
from distq.master import JobSpec, Master
from distq.squares import Squares
from distq.transport import Delivery, Settlement, Transport
from distq.transport.manager import ManagerProducer
from seam import ok_result


def test_a_copy_with_a_worker_of_a_task_whose_other_copy_was_taken_back_is_waited_for(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three tasks submitted twice (an unconfirmed publish that did arrive, then the
    reconcile's): a worker holds one copy of one of them. The stop takes back the other
    five copies; that task may still run (a copy of it was found fewer times than it was
    submitted), so the drain waits for it. It ended at once, every waiting task taken
    back: the task ran, and its result, back a second later, was dropped, the task counted
    as never submitted (report.tasks 0)."""
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
        if calls["submit"] == 4:  # the three submitted again: a worker takes one
            for _ in range(50):
                taken.extend(consumer.fetch(1, 0.1))
                if taken:
                    break
            stop.set()

    def unvouched(self: ManagerProducer) -> int:
        held = original_reconcile(self)
        return 0 if calls["submit"] == 3 else held

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
    spec = JobSpec(tasks=None, rate=20, status_every=10, drain_seconds=10)
    timer = threading.Timer(1.0, answer_later)
    timer.start()
    try:
        report = Master(transport, Console(out=out, err=out)).run(spec, Squares(seed=1), stop)
    finally:
        timer.join()
    said = out.getvalue()
    assert "submitting the 3 tasks among the others" in said, said
    assert len(taken) == 1, said
    assert transport.stats().ready == 0, said
    assert (report.tasks, report.ok, report.missing) == (1, 1, 0), said
    assert report.succeeded, said
