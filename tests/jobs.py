"""Task functions the tests register on workers with ``--task jobs:NAME``."""

from __future__ import annotations

import os
import time
from pathlib import Path


def always_fail(n: int) -> int:
    """A poison task: fails on every attempt."""
    raise RuntimeError(f"always_fail({n}) fails on purpose")


def echo(value: object) -> object:
    return value


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


def sleep(seconds: float) -> float:
    """Sleeps ``seconds`` (time.sleep: no thread can interrupt it), returns them."""
    time.sleep(seconds)
    return seconds


def spin(seconds: float) -> float:
    """Computes for ``seconds`` in Python, returns them."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass
    return seconds
