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
