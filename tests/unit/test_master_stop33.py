"""The master's stop as a broker call fails, and what its stop says it left (stop33)."""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence

import pytest

from distq.console import Console
from distq.errors import TransportError
from distq.master import JobSpec, Master
from distq.squares import Squares
from distq.transport import Transport
from distq.transport.manager import ManagerProducer


def test_a_stop_as_a_call_fails_makes_no_call_to_take_back_and_says_what_it_left(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM as a call to the broker failed, with no outage before it: the stop's
    withdraw called the broker that had just failed (a paused one: a whole connect
    timeout's wait), and said nothing of the tasks it left queued."""
    stop = threading.Event()
    original_submit = ManagerProducer.submit
    calls = {"submit": 0, "withdraw": 0}

    def failing(self: ManagerProducer, bodies: Sequence[bytes]) -> None:
        calls["submit"] += 1
        if calls["submit"] == 3:  # two went through and were queued (no worker here)
            stop.set()  # SIGTERM as the broker goes away
            raise TransportError("the broker is away")
        original_submit(self, bodies)

    def counted(self: ManagerProducer, bodies: Sequence[bytes]) -> list[bool]:
        calls["withdraw"] += 1
        return [False] * len(bodies)

    monkeypatch.setattr(ManagerProducer, "submit", failing)
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
