"""``os._exit`` while a worker runs (:func:`distq.worker._exits_fail_while_running`)."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

from distq import worker
from distq.ending import Endings


def test_a_forked_childs_exit_is_its_own_while_a_worker_runs() -> None:
    """Only the worker's own process exits 1 for ``os._exit(0)``: a child a task forks
    (``multiprocessing`` ends each with ``os._exit``) still exits 0."""
    real = os._exit
    running: Any = SimpleNamespace(runner=SimpleNamespace(endings=Endings("w", "q")))
    worker._exits_fail_while_running(running, True)
    try:
        assert os._exit is not real
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        worker._exits_fail_while_running(running, False)
    assert os._exit is real


def test_the_os_exit_found_when_a_worker_started_is_put_back_as_it_ends(
    monkeypatch: Any,
) -> None:
    """``distq worker`` puts one of its own in ``os._exit``'s place before the run (a
    thread's ``os._exit(0)`` exits the code the worker means): the run's end put Python's
    own back, and a thread a task left calling ``os._exit(0)`` as the run ended exited 0."""

    def kept(status: int) -> None:
        raise AssertionError("not called")

    monkeypatch.setattr(os, "_exit", kept)
    running: Any = SimpleNamespace(runner=SimpleNamespace(endings=Endings("w", "q")))
    worker._exits_fail_while_running(running, True)
    assert os._exit is worker._exit_in_a_running_worker
    worker._exits_fail_while_running(running, False)
    assert os._exit is kept
