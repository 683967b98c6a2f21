"""A second stop signal that lands where ``Worker.run`` cannot raise ``Shutdown`` (before
its ``try``, or in its ``finally``): injected there, not raced."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from typing import Any

import pytest

from distq import worker as worker_module
from distq.console import Console
from distq.envelope import Task
from distq.slots import Slot
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


def test_a_second_signal_during_the_cold_stop_the_drain_began_does_not_restart_it(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drain ran out and its cold stop is under way (up to 2 s for the slots' locks,
    5 s for their consumers' close, 5 s for their threads): a second SIGTERM then, the
    user's "stop now", raised ``Shutdown`` into it wherever it was, and the cold stop
    began again. Landing as it had taken a slot's lock (injected there), it left that
    lock held for good: the second pass waited 2 s for it and skipped the slot, whose
    consumer nobody closed (its running task stayed leased, not back in the queue at
    once) and whose thread then hung on the lock. The cold stop under way is what the
    signal asks for: it is said, and the stop goes on."""
    registry = Registry()
    registry.register("nap", lambda seconds: time.sleep(seconds))
    producer = transport.producer("w.results.job")
    producer.submit([Task(name="nap", args=[5.0], reply_to="w.results.job").encode()])
    out = io.StringIO()
    options = WorkerOptions(worker_id="w", concurrency=1, drain_seconds=0.3)
    worker = Worker(transport, registry, options, Console(out=out, err=out))

    class SignalledLock:
        """A slot's lock; the second signal lands as the cold stop has taken it."""

        def __init__(self) -> None:
            self.lock = threading.Lock()

        def acquire(self, *args: Any, **kwargs: Any) -> bool:
            took = self.lock.acquire(*args, **kwargs)
            if took and worker._abort.is_set() and worker._signals == 1:
                worker._on_signal(signal.SIGTERM, None)
            return took

        def release(self) -> None:
            self.lock.release()

        def __enter__(self) -> bool:
            return self.lock.__enter__()

        def __exit__(self, *exc: Any) -> None:
            self.lock.__exit__(*exc)

    class SignalledSlot(Slot):
        def __init__(self, index: int) -> None:
            super().__init__(index)
            self.lock: Any = SignalledLock()

    monkeypatch.setattr(worker_module, "Slot", SignalledSlot)
    timer = threading.Timer(0.3, worker._on_signal, (signal.SIGTERM, None))  # the first
    timer.start()
    started = time.monotonic()
    try:
        assert worker.run() == 0
    finally:
        timer.cancel()
    took = time.monotonic() - started
    said = out.getvalue()
    assert "1 task still runs: handing back what is in hand" in said, said
    stats = transport.stats()
    assert (stats.ready, stats.in_flight) == (1, 0), (stats, said)
    assert took < 3.0, (took, said)
    assert "SIGTERM again: already handing back every task and exiting" in said, said
    producer.close()


class _Bug(BaseException):
    """No Exception: it ends a slot's thread (a slot goes on past an Exception)."""


def test_a_slot_that_ends_as_a_second_signal_stops_the_worker_is_said_exit_1(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slot's end is said by the main loop, which a second SIGTERM's stop at once leaves
    (Shutdown): a slot that ended on a bug as it came went unsaid, and the worker exited
    0 (only the thread's traceback, on stderr)."""
    producer = transport.producer("replies")
    producer.submit([Task(name="square", args=[3], reply_to="replies").encode()])
    registry = Registry()
    registry.register("square", lambda x: x * x)

    signalled = threading.Lock()

    def broken(self: Worker, slot: Slot, batch: Any) -> None:
        # once: the task this slot ends on is handed back, and the other slot may take it
        # and come here too; its two SIGTERMs then landed after run() had put the
        # default handler back, and killed pytest's process (a test after this one)
        if signalled.acquire(blocking=False):
            os.kill(os.getpid(), signal.SIGTERM)  # stop warm
            time.sleep(0.2)  # handled apart: two at once are one
            os.kill(os.getpid(), signal.SIGTERM)  # stop at once: Shutdown in the main loop
        raise _Bug("a bug in distq")

    monkeypatch.setattr(Worker, "_run", broken)
    monkeypatch.setattr("threading.excepthook", lambda args: None)  # the thread's traceback
    out = io.StringIO()
    options = WorkerOptions(concurrency=2, prefetch=1, exit_when_idle=6, worker_id="w")
    worker = Worker(transport, registry, options, Console(quiet=True, out=out, err=out))
    code = worker.run()
    said = out.getvalue()
    assert "SIGTERM again: handing back every task in hand and exiting" in said, said
    assert "stopped: _Bug: a bug in distq; the worker stops (exit 1)" in said, said
    assert code == 1, said
    producer.close()
