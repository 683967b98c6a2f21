"""Versioned JSON envelopes: what travels between master, broker and worker.

Nothing on the wire is pickled. A task, a result and a dead letter are each a frozen
dataclass with ``encode() -> bytes`` and ``decode(bytes)``; ``decode`` raises
:class:`~distq.errors.EnvelopeError` with the reason on any malformed input.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from distq.errors import EnvelopeError
from distq.limits import check_nesting

VERSION = 1
MAX_ATTEMPTS = 3  # attempts a task gets unless its master says otherwise (distq master's default)
#: A task's ``reply_to`` when nobody waits for its result (``distq submit`` without
#: ``--wait``, a requeued dead letter): the worker runs it and publishes no result.
#: Not a name any transport gives a queue (those start with a letter or digit).
NO_REPLY = "(no reply)"

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class _Ids:
    """32 hex digits: 64 random bits per process, then a counter (a sixth of uuid4's cost)."""

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)  # a forked child must not repeat ids

    def reset(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.counter = itertools.count()

    def __call__(self) -> str:
        return f"{self.prefix}{next(self.counter):016x}"


#: A fresh unique identifier (32 hex digits) for a task or a job.
new_id = _Ids()


def _load(data: bytes | str, kind: str) -> dict[str, Any]:
    check_nesting(data if isinstance(data, bytes) else data.encode(errors="replace"), kind)
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise EnvelopeError(f"{kind} is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise EnvelopeError(f"{kind} must be a JSON object, got {type(obj).__name__}")
    if obj.get("v") != VERSION:
        raise EnvelopeError(f"{kind} has envelope version {obj.get('v')!r}, expected {VERSION}")
    return obj


def _field(obj: dict[str, Any], name: str, kind: str, typ: type | tuple[type, ...]) -> Any:
    if name not in obj:
        raise EnvelopeError(f"{kind} lacks the field {name!r}")
    value = obj[name]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise EnvelopeError(f"{kind} field {name!r} has the wrong type: {value!r}")
    return value


def _number(obj: dict[str, Any], name: str, kind: str) -> float:
    value = float(_field(obj, name, kind, (int, float)))  # an int too big raises OverflowError
    if value != value or value in (float("inf"), float("-inf")):
        raise EnvelopeError(f"{kind} field {name!r} is not a finite number")
    return value


def _count(obj: dict[str, Any], name: str, kind: str) -> int:
    value: int = _field(obj, name, kind, int)
    if value < 1:
        raise EnvelopeError(f"{kind} field {name!r} must be 1 or more, got {value}")
    return value


def _reply_to(obj: dict[str, Any], kind: str) -> str:
    value: str = _field(obj, "reply_to", kind, str)
    if not 0 < len(value.encode(errors="replace")) <= 255:  # a RabbitMQ queue name's limit
        raise EnvelopeError(f"{kind} field 'reply_to' must be 1 to 255 bytes long")
    return value


@dataclass(frozen=True, slots=True)
class Task:
    """One unit of work: call the registered function ``name`` with ``args``/``kwargs``.

    ``reply_to`` names the result queue of the master that submitted it (or is
    :data:`NO_REPLY`); ``attempt`` counts from 1 and grows on each retry after a failure.
    """

    name: str
    args: list[Any]
    reply_to: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=new_id)
    attempt: int = 1
    max_attempts: int = MAX_ATTEMPTS
    created_at: float = field(default_factory=time.time)

    def encode(self) -> bytes:
        return _dumps(
            {
                "v": VERSION,
                "id": self.id,
                "name": self.name,
                "args": self.args,
                "kwargs": self.kwargs,
                "reply_to": self.reply_to,
                "attempt": self.attempt,
                "max_attempts": self.max_attempts,
                "created_at": self.created_at,
            }
        ).encode()

    @classmethod
    def decode(cls, data: bytes | str) -> Task:
        kind = "task"
        obj = _load(data, kind)
        try:
            return cls(
                id=_field(obj, "id", kind, str),
                name=_field(obj, "name", kind, str),
                args=_field(obj, "args", kind, list),
                kwargs=_field(obj, "kwargs", kind, dict),
                reply_to=_reply_to(obj, kind),
                attempt=_count(obj, "attempt", kind),
                max_attempts=_count(obj, "max_attempts", kind),
                created_at=_number(obj, "created_at", kind),
            )
        except OverflowError:
            raise EnvelopeError(f"{kind} has a number too large for a float") from None

    def next_attempt(self) -> Task:
        """The same task, one attempt later (for a retry after a failure)."""
        return Task(
            name=self.name,
            args=self.args,
            kwargs=self.kwargs,
            reply_to=self.reply_to,
            id=self.id,
            attempt=self.attempt + 1,
            max_attempts=self.max_attempts,
            created_at=self.created_at,
        )


Status = Literal["ok", "error"]


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of a task, sent to its ``reply_to`` queue.

    ``status`` is ``"ok"`` with ``value`` set, or ``"error"`` (failed for good) with
    ``error_type`` and ``error_message`` set, and ``error_traceback`` (the remote
    traceback's text) when the task's function raised. ``error_traceback`` is optional on
    the wire (``error.traceback``), so results without it still decode.
    """

    task_id: str
    status: Status
    worker: str
    attempt: int
    started_at: float
    duration: float
    value: Any = None
    error_type: str | None = None
    error_message: str | None = None
    error_traceback: str | None = None

    def encode(self) -> bytes:
        obj: dict[str, Any] = {
            "v": VERSION,
            "task_id": self.task_id,
            "status": self.status,
            "worker": self.worker,
            "attempt": self.attempt,
            "started_at": self.started_at,
            "duration": self.duration,
        }
        if self.status == "ok":
            obj["value"] = self.value
        else:
            error = {"type": self.error_type, "message": self.error_message}
            if self.error_traceback is not None:
                error["traceback"] = self.error_traceback
            obj["error"] = error
        return _dumps(obj).encode()

    @classmethod
    def decode(cls, data: bytes | str) -> Result:
        kind = "result"
        obj = _load(data, kind)
        status = _field(obj, "status", kind, str)
        if status not in ("ok", "error"):
            raise EnvelopeError(f"result status must be 'ok' or 'error', got {status!r}")
        error = obj.get("error") if status == "error" else None
        if status == "error" and not isinstance(error, dict):
            raise EnvelopeError("error result lacks the 'error' object")
        traceback = error.get("traceback") if error else None
        if traceback is not None and not isinstance(traceback, str):
            raise EnvelopeError(f"result field 'error.traceback' is not text: {traceback!r}")
        try:
            return cls(
                task_id=_field(obj, "task_id", kind, str),
                status=status,
                worker=_field(obj, "worker", kind, str),
                attempt=_field(obj, "attempt", kind, int),
                started_at=_number(obj, "started_at", kind),
                duration=_number(obj, "duration", kind),
                value=obj.get("value"),
                error_type=error.get("type") if error else None,
                error_message=error.get("message") if error else None,
                error_traceback=traceback,
            )
        except OverflowError:
            raise EnvelopeError(f"{kind} has a number too large for a float") from None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message taken out of circulation for good, with the reason.

    ``body`` is the original message as sent; kept as text when it is UTF-8, else as
    base64 (``body_b64``), so a malformed message is preserved byte for byte.
    """

    body: bytes
    reason: str
    queue: str
    worker: str
    at: float = field(default_factory=time.time)

    def encode(self) -> bytes:
        obj: dict[str, Any] = {
            "v": VERSION,
            "reason": self.reason,
            "queue": self.queue,
            "worker": self.worker,
            "at": self.at,
        }
        try:
            obj["body"] = self.body.decode()
        except UnicodeDecodeError:
            obj["body_b64"] = base64.b64encode(self.body).decode()
        return _dumps(obj).encode()

    @classmethod
    def decode(cls, data: bytes | str) -> DeadLetter:
        kind = "dead letter"
        obj = _load(data, kind)
        try:
            if "body_b64" in obj:
                body = base64.b64decode(_field(obj, "body_b64", kind, str), validate=True)
            else:
                body = _field(obj, "body", kind, str).encode()
            return cls(
                body=body,
                reason=_field(obj, "reason", kind, str),
                queue=_field(obj, "queue", kind, str),
                worker=_field(obj, "worker", kind, str),
                at=_number(obj, "at", kind),
            )
        except (ValueError, OverflowError) as exc:  # binascii.Error is a ValueError
            raise EnvelopeError(f"{kind} is malformed: {exc}") from None
