"""distq: a distributed master/worker task system with at-least-once delivery.

One job is split into small tasks; a master hands them to workers over
``multiprocessing.managers`` (the embedded default), Redis or RabbitMQ, and collects
each result exactly once. From Python, :class:`Executor` submits your own functions
(marked with :func:`task` on the workers) as a :class:`concurrent.futures.Executor`.
"""

__version__ = "0.1.0"

from distq.errors import BrokenExecutor, DistqError, RemoteError, TaskTimeout
from distq.executor import DistqFuture, Executor
from distq.tasks import task

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
