"""distq: a distributed master/worker task system with at-least-once delivery.

One job is split into small tasks; a master hands them to workers over
``multiprocessing.managers`` (the embedded default), Redis or RabbitMQ, and collects
each result exactly once. From Python, :class:`Executor` submits your own functions
(marked with :func:`task` on the workers) as a :class:`concurrent.futures.Executor`.

The names below are imported when first used: the ``distq`` command imports this
package before it can hold its stop signals (:mod:`distq.startup`), and the executor's
modules took 0.17 s of its 0.2 s of imports, a window where a SIGTERM ended it unsaid.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

TYPE_CHECKING = False  # typing's own: its import is 0.02 s of the command's window
if TYPE_CHECKING:
    from typing import Any

    from distq.errors import BrokenExecutor, DistqError, RemoteError, TaskTimeout
    from distq.executor import DistqFuture, Executor
    from distq.tasks import task

#: Each public name, and the module that defines it.
_FROM = {
    "BrokenExecutor": "distq.errors",
    "DistqError": "distq.errors",
    "RemoteError": "distq.errors",
    "TaskTimeout": "distq.errors",
    "DistqFuture": "distq.executor",
    "Executor": "distq.executor",
    "task": "distq.tasks",
}

__all__ = [
    "BrokenExecutor",
    "DistqError",
    "DistqFuture",
    "Executor",
    "RemoteError",
    "TaskTimeout",
    "__version__",
    "task",
]


def __getattr__(name: str) -> Any:
    """``distq.Executor`` and the others, imported from their module on first use."""
    if name not in _FROM:
        raise AttributeError(f"module 'distq' has no attribute {name!r}")
    value = getattr(importlib.import_module(_FROM[name]), name)
    globals()[name] = value  # found at once from now on
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
