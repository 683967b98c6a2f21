"""The master's stop right after an outage, and its endless jobs' stops (stop32)."""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence

import pytest

from distq.backoff import Backoff
from distq.console import Console
from distq.errors import TransportError
from distq.master import JobSpec, Master
from distq.squares import Squares
from distq.transport import Transport
from distq.transport.manager import ManagerProducer


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
