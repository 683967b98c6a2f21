"""Task functions the tests register on workers: ``--task jobs:NAME``, or ``--tasks jobs``
for those marked ``@distq.task``."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import distq


def always_fail(n: int) -> int:
    """A poison task: fails on every attempt."""
    raise RuntimeError(f"always_fail({n}) fails on purpose")


def echo(value: object) -> object:
    return value


def exits(code: int) -> None:
    """A task that ends its process the wrong way: ``sys.exit`` inside a worker slot."""
    sys.exit(code)


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("a bug in __str__")


def raises_unprintable() -> None:
    """A task whose exception cannot be turned into text."""
    raise _Unprintable


def flaky(n: int) -> int:
    """Fails the first time it runs for each ``n``, then returns ``n * n``.

    It remembers which ``n`` failed by a file in ``$DISTQ_TEST_FLAKY_DIR``, so the retry,
    wherever it runs, succeeds.
    """
    marker = Path(os.environ["DISTQ_TEST_FLAKY_DIR"]) / f"failed-{n}"
    try:
        marker.touch(exist_ok=False)
    except FileExistsError:
        return n * n
    raise RuntimeError(f"flaky({n}) fails once on purpose")


@distq.task
def add(a: int, b: int) -> int:
    return a + b


@distq.task
def fail_with(message: str) -> None:
    """Raises ValueError(message), from a nested call (so the traceback has two frames)."""
    _raise(message)


def _raise(message: str) -> None:
    raise ValueError(message)


@distq.task
def sleep_then(seconds: float, value: object) -> object:
    time.sleep(seconds)
    return value


@distq.task
def wait_for_path(path: str, value: object, limit: float = 300.0) -> object:
    """Returns ``value`` once ``path`` exists (a test's cue: the task ends when the test
    says, whatever the host's load), or after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


@distq.task
def leave_thread(seconds: float, daemon: bool | None = False) -> str:
    """Starts a thread that outlives the task by ``seconds``: not a daemon, or made
    without saying (``daemon`` None), as most code makes its threads."""
    threading.Thread(target=time.sleep, args=(seconds,), name="left-behind", daemon=daemon).start()
    return "started"


@distq.task
def chatter(lines: int) -> int:
    """Prints ``lines`` lines to stdout and to stderr, as a task's own output."""
    for n in range(lines):
        print(f"out line {n}")
        print(f"err line {n}", file=sys.stderr)
    return lines


@distq.task
def say(text: str) -> str:
    """Prints ``text`` on stdout, as a task's own output, and returns it."""
    print(text)
    return text


def not_a_task(value: object) -> object:
    """A module-level function without @distq.task: --tasks jobs does not register it."""
    return value


@distq.task
def repeat(text: str, times: int) -> str:
    """A result far larger than its task."""
    return text * times
