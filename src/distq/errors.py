"""The exceptions distq raises, as one small tree.

Driver exceptions (redis-py, pika, multiprocessing) are translated at the transport
boundary, so callers only ever catch these.
"""

from __future__ import annotations


class DistqError(Exception):
    """Base class of every error distq raises on purpose."""


class ConfigError(DistqError):
    """A setting is missing or malformed; the message names the variable and the fix."""


class TransportError(DistqError):
    """The broker (or the manager-hosting master) failed or went away mid-operation."""


class ConnectionFailed(TransportError):
    """The broker could not be reached at start; the message names the address."""


class AuthenticationFailed(ConnectionFailed):
    """The broker refused our credentials (wrong authkey, user or password)."""


class EnvelopeError(DistqError):
    """A message on the wire is not a valid distq envelope (bad JSON, wrong fields)."""


class UnknownTask(DistqError):
    """A task names a function this worker has not registered."""


class Shutdown(BaseException):
    """Raised in the worker on the second SIGTERM/SIGINT: stop now, hand tasks back.

    Derives from BaseException so that ``except Exception`` in task code cannot swallow it.
    """


class TimeLimitExceeded(DistqError):
    """A task ran past its time limit (``DISTQ_TASK_TIME_LIMIT``); the attempt failed."""
