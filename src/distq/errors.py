"""The exceptions distq raises, as one small tree.

Driver exceptions (redis-py, pika, multiprocessing) are translated at the transport
boundary, so callers only ever catch these.
"""

from __future__ import annotations

import concurrent.futures


class DistqError(Exception):
    """Base class of every error distq raises on purpose."""


class ConfigError(DistqError):
    """A setting is missing or malformed; the message names the variable and the fix."""


class TransportError(DistqError):
    """The broker (or the manager-hosting master) failed or went away mid-operation."""


class MessageRefused(TransportError):
    """The broker refused a message for its size (RabbitMQ's ``max_message_size``, below
    ``DISTQ_MAX_MESSAGE_BYTES``) and closed the channel, or would (a manager master's
    frames): ``limit`` is the most it takes; ``fix``, what a task over it says to do."""

    def __init__(self, message: str, limit: int, fix: str | None = None) -> None:
        super().__init__(message)
        self.limit = limit
        self.fix = fix


class MasterStopped(TransportError):
    """The manager's master stopped as it served a put: ``taken`` says whether it took
    the put's tasks (they end with it, unrun) or not."""

    def __init__(self, message: str, taken: bool) -> None:
        super().__init__(message)
        self.taken = taken


class SettledThenFailed(TransportError):
    """A settle went through and the fetch after it, in the same call, failed (the
    connection is gone): the batch is settled; only the next one was not leased."""


class SettledThenRefused(ConfigError):
    """A settle went through and the fetch after it, in the same call, was refused for a
    setting (Redis: the queue's key made another type, an ACL taken away): the batch is
    settled; the worker stops as for any :class:`ConfigError`."""


class ConnectionFailed(TransportError):
    """The broker could not be reached at start; the message names the address."""


class AuthenticationFailed(ConnectionFailed):
    """The broker refused our credentials (wrong authkey, user or password)."""


class CertificateRejected(AuthenticationFailed):
    """TLS failed on a certificate (untrusted CA, expired, wrong host name, client cert)."""


class EnvelopeError(DistqError):
    """A message on the wire is not a valid distq envelope (bad JSON, wrong fields)."""


class VersionMismatch(EnvelopeError):
    """A message of another envelope version: a newer or older distq sent it."""


class SignatureError(EnvelopeError):
    """A message is unsigned, signed with an unknown key, or its signature does not match."""


class UnverifiedRefusal(SignatureError):
    """An unsigned result a process with keys drops, which says a worker refused its task
    for its signature (:meth:`distq.ending.Endings.malformed`): unverified, so its task
    still waits, but the line names the task and what the answer says (``said``: the
    worker's reason, as quoted)."""

    def __init__(self, message: str, task_id: str, said: str = "") -> None:
        super().__init__(message)
        self.task_id, self.said = task_id, said


class BadSignature(SignatureError):
    """A message signed with a key this process holds does not verify: signed for another
    queue (or as another kind), altered, or forged; the keys are not what differs."""


class OldSignature(SignatureError):
    """A message signed as distq before the queue was bound (``DQSIG1``): refused."""


class NewerSignature(SignatureError):
    """A message signed in a format newer than this distq reads (``DQSIG4`` on): a newer
    distq sent it; upgrading this process reads it."""


class KeyMissing(SignatureError):
    """A message is signed with a key this process does not have (or it has none): not
    a forgery, a setting to fix."""


class MessageTooLarge(EnvelopeError):
    """A message is over ``DISTQ_MAX_MESSAGE_BYTES`` (or nests JSON too deeply)."""


class NestedTooDeep(MessageTooLarge):
    """A message nests JSON deeper than ``limits.MAX_NESTING``: no size setting helps."""


class UnknownTask(DistqError):
    """A task names a function this worker has not registered."""


class NoAttemptsLeft(DistqError):
    """A task arrived past its last attempt (``attempt`` over ``max_attempts``): a message
    made so by hand, since no task distq sends is one (a retry is at most the last, a
    requeued dead letter starts at 1). It is exhausted, so it is not run."""


class RemoteError(DistqError):
    """A task failed for good on a worker; the message carries the remote exception's type,
    message and traceback text.

    Attributes: ``task_name``, ``task_id``, ``worker``, ``error_type`` (the remote
    exception's class name), ``reason`` (``failed 3 of 3 attempts; last error: ...``,
    ``cannot run: ...`` when it never ran, ``ran, but its value cannot be sent back: ...``
    when its value is not JSON or too large) and ``remote_traceback`` (text; None unless
    the task's own code raised).
    """

    def __init__(
        self,
        task_name: str,
        task_id: str,
        worker: str,
        error_type: str,
        reason: str,
        remote_traceback: str | None,
    ) -> None:
        self.task_name, self.task_id, self.worker = task_name, task_id, worker
        self.error_type, self.reason, self.remote_traceback = error_type, reason, remote_traceback
        message = f"task {task_name} [{task_id}] failed on worker {worker}: {reason}"
        if remote_traceback:
            message += "\n\nRemote traceback:\n" + remote_traceback.rstrip("\n")
        super().__init__(message)

    def __reduce__(self) -> tuple[type[RemoteError], tuple[str, str, str, str, str, str | None]]:
        args = (self.task_name, self.task_id, self.worker, self.error_type, self.reason)
        return type(self), (*args, self.remote_traceback)


class TaskTimeout(DistqError, TimeoutError):
    """A task had no result within the executor's ``task_timeout``."""


class BrokenExecutor(DistqError, concurrent.futures.BrokenExecutor):
    """The executor lost its broker (or stopped); its unanswered futures fail with this."""


class SignalExit(SystemExit):
    """A SIGTERM or SIGINT before the master or worker is at work: it exits at once. Its
    own class, so that importing a task module does not take it for the module's error."""


class Shutdown(BaseException):
    """Raised in the worker on the second SIGTERM/SIGINT: stop now, hand tasks back.

    Derives from BaseException so that ``except Exception`` in task code cannot swallow it.
    """


class TimeLimitExceeded(DistqError):
    """A task ran past its time limit (``DISTQ_TASK_TIME_LIMIT``); the attempt failed."""
