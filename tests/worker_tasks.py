"""Task functions that misbehave, for the worker's review tests: ``--task worker_tasks:NAME``."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path


def exit_once(code: int, marker: str) -> str:
    """Ends its whole process with ``os._exit(code)`` the first time it runs for
    ``marker`` (a file it creates), as a task that ends its worker; then returns."""
    try:
        Path(marker).touch(exist_ok=False)
    except FileExistsError:
        return "ran"
    os._exit(code)


def fork_and_end(how: str) -> object:
    """Forks a child that ends by ``how`` (``exit``: ``sys.exit(3)``, ``raise``: an
    exception, ``return``: it returns) and returns the child's exit code, or says that
    the child ran on past that (it is killed then)."""
    pid = os.fork()
    if pid == 0:
        if how == "exit":
            sys.exit(3)
        if how == "raise":
            raise RuntimeError("the child fails")
        return "the child's value"
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "the child ran on"


def exit_always(runs: str) -> None:
    """Ends its whole process every time it runs, as a task that crashes its worker in C
    code would (a segfault, the OOM killer): a line in the file ``runs`` for each run."""
    with open(runs, "a") as out:
        out.write("ran\n")
    os._exit(1)


def exit_after(seconds: float, code: int, marker: str) -> str:
    """As :func:`exit_once`, ``seconds`` into its run: a slot beside it runs other tasks
    meanwhile, whose ``Get task`` lines come after its own."""
    try:
        Path(marker).touch(exist_ok=False)
    except FileExistsError:
        return "ran"
    time.sleep(seconds)
    os._exit(code)


def segfault() -> None:
    """Ends its whole process with a segmentation fault, as a crash in C code does."""
    import ctypes

    ctypes.string_at(0)
