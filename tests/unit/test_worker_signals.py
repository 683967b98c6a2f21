"""A second stop signal that lands where ``Worker.run`` cannot raise ``Shutdown`` (before
its ``try``, or in its ``finally``): injected there, not raced."""

from __future__ import annotations

import io
import os
import signal
from typing import Any

import pytest

from distq import worker as worker_module
from distq.console import Console
from distq.tasks import Registry
from distq.transport import Transport
from distq.worker import Worker, WorkerOptions


@pytest.mark.parametrize("where", ["before its try", "in its finally"])
def test_a_second_signal_outside_the_wait_does_not_escape_run(
    transport: Transport, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """The second SIGTERM raises ``Shutdown`` for a cold stop, which ``run()`` catches
    around its wait only: landing in its ``finally`` (the slots ended, a microsecond
    window) it escaped ``run()``, which said no "worker exit" line and returned no code
    (a traceback and exit 1, not 0); landing just before the ``try`` it escaped too,
    with the worker's signal handlers and ``os._exit`` left in place."""
    out = io.StringIO()
    options = WorkerOptions(worker_id="w", heartbeat_interval=0.3, exit_when_idle=0.5)
    worker = Worker(transport, Registry(), options, Console(out=out, err=out))
    real_exit, handler = os._exit, signal.getsignal(signal.SIGTERM)
    exits_fail = worker_module._exits_fail_while_running

    def two_signals_there(running_worker: Any, running: bool) -> None:
        exits_fail(running_worker, running)
        if running == (where == "before its try"):
            worker._on_signal(signal.SIGTERM, None)  # warm
            worker._on_signal(signal.SIGTERM, None)  # cold: raises Shutdown

    monkeypatch.setattr(worker_module, "_exits_fail_while_running", two_signals_there)
    try:
        code = worker.run()
    finally:
        monkeypatch.undo()
        leftover = [w for _, w in worker_module._running if w is worker]
        if leftover:  # escaped before its finally: undo what run() left behind
            exits_fail(worker, False)
            signal.signal(signal.SIGTERM, handler)
    assert code == 0, out.getvalue()
    assert "worker exit." in out.getvalue()
    assert "SIGTERM again: handing back every task in hand and exiting" in out.getvalue()
    assert os._exit is real_exit
    assert signal.getsignal(signal.SIGTERM) is handler
