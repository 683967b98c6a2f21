"""Versioned JSON envelopes: what travels between master, broker and worker.

Nothing on the wire is pickled. A task, a result and a dead letter are each a frozen
record with ``encode() -> bytes`` and ``decode(bytes)``; ``decode`` raises
:class:`~distq.errors.EnvelopeError` with the reason on any malformed input.

Tasks and results cross the wire once or twice per task, so they take a fast path:
they are ``msgspec`` structs (built in C, a tenth of a frozen dataclass's cost), encoded
and decoded by ``msgspec.json`` through wire structs that fix the keys and their order
and check every field's type in C. The stdlib ``json`` remains the reference: it encodes
whatever the fast path does not know to be plain JSON (see :func:`_plain`), and it
decodes whatever the fast path refuses, so that every error message, and every oddity
``json`` accepts (``NaN``, a UTF-8 byte order mark), stays as it was. Both read UTF-8
only (``json`` alone would take UTF-16 and UTF-32, whose nesting is not counted). Both
write the same JSON: the same keys in the same order, the same strings, integers of any
size; only a float may be written in another notation (``1e-05`` or ``0.00001``: the
same number).
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec

from distq.errors import EnvelopeError, VersionMismatch
from distq.limits import MAX_NAME_BYTES, OVERSIZED_KEPT_BYTES, check_nesting

VERSION = 1
MAX_ATTEMPTS = 3  # attempts a task gets unless its master says otherwise (distq master's default)
#: Most attempts a task may be given (``--max-attempts``, ``Executor(max_attempts=)``):
#: some 3.5 days of retries 30 s apart, far inside what every reader of a task takes (a
#: result head's attempt of 9 digits). Taking back a task not found (a cancel, a
#: timeout, a stop) looks for its retries attempt by attempt, up to the last that can
#: exist by the task's age (:func:`distq.retries.retry_bodies`): 4 bodies for a task
#: sent a second ago, 126 an hour after, all 9,999 only some 3.5 days after. A cancel()
#: of one a worker held looked for all of them whatever its age: 0.5 s on Redis; given
#: 10**23 (a typo), it never returned.
MOST_ATTEMPTS = 10_000
#: A task's ``reply_to`` when nobody waits for its result (``distq submit`` without
#: ``--wait``, a requeued dead letter): the worker runs it and publishes no result.
#: Not a name any transport gives a queue (those start with a letter or digit).
NO_REPLY = "(no reply)"

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_encode = msgspec.json.Encoder().encode
_FAST_ERRORS = (msgspec.MsgspecError, ValueError, TypeError, OverflowError, RecursionError)
#: Types whose JSON text ``msgspec`` and ``json`` write alike (floats: when finite).
_SCALARS = frozenset({str, int, bool, type(None)})
_PLAIN_DEPTH = 8  # deeper values take the stdlib encoder (no recursion limit to mind)
#: Deepest nesting of an envelope the fast path writes: the envelope, then a value that
#: :func:`_plain` accepts (containers at depths 0 to ``_PLAIN_DEPTH - 1`` of it).
SHALLOW_NESTING = 1 + _PLAIN_DEPTH


def _plain(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` is made only of exact JSON types, finite floats, lists, tuples and
    dicts with string keys: then ``msgspec`` writes the JSON ``json`` would.

    Anything else takes the stdlib encoder, which refuses what is not JSON (``msgspec``
    would quietly write a set, bytes or a datetime) and writes NaN as ``json`` does.
    """
    kind = type(value)
    if kind in _SCALARS:
        return True
    if kind is float:
        return math.isfinite(value)
    if depth >= _PLAIN_DEPTH:
        return False
    if kind is list or kind is tuple:
        for item in value:
            if type(item) not in _SCALARS and not _plain(item, depth + 1):
                return False
        return True
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                return False
            if type(item) not in _SCALARS and not _plain(item, depth + 1):
                return False
        return True
    return False


class _Ids:
    """32 hex digits: 64 random bits per process, then a counter (a tenth of uuid4's cost)."""

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)  # a forked child must not repeat ids

    def reset(self) -> None:
        self.counter = itertools.count(int.from_bytes(os.urandom(8), "big") << 64)

    def __call__(self) -> str:
        return "%032x" % next(self.counter)  # noqa: UP031 - the fastest spelling, per task


_ids = _Ids()


def new_id() -> str:
    """A fresh unique identifier (32 hex digits) for a task or a job."""
    return "%032x" % next(_ids.counter)  # noqa: UP031 - the fastest spelling, per task


def shown(text: str) -> str:
    """Text from the wire (a task's name or id) made safe for a line of a text log: line
    breaks, terminal escapes and other unprintable characters escaped, as in repr(), so
    a message cannot forge log lines or drive the operator's terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def fits_reply_to(value: str) -> bool:
    """Whether ``value`` is a reply queue name a task may carry: 1 to 255 bytes (a
    RabbitMQ queue name's limit), known without encoding it up to 63 characters."""
    return 0 < len(value) <= 63 or 0 < len(value.encode(errors="replace")) <= 255


class _TaskWire(msgspec.Struct):
    """A task as it is on the wire: these keys, in this order."""

    v: Literal[1]
    id: str
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    reply_to: str
    attempt: Annotated[int, msgspec.Meta(ge=1)]
    max_attempts: Annotated[int, msgspec.Meta(ge=1)]
    created_at: float


class _ErrorWire(msgspec.Struct):
    type: str | None = None
    message: str | None = None
    traceback: str | None = None


class _ResultWire(msgspec.Struct):
    """A result as it is read: ``value`` for ok results, ``error`` for failed ones."""

    v: Literal[1]
    task_id: str
    status: Literal["ok", "error"]
    worker: str
    attempt: int
    started_at: float
    duration: float
    value: Any = None
    error: _ErrorWire | None = None


class _OkResultWire(msgspec.Struct):
    """An ok result as it is written: ``value`` always present, ``null`` included."""

    v: int
    task_id: str
    status: str
    worker: str
    attempt: int
    started_at: float
    duration: float
    value: Any


_task_wire = msgspec.json.Decoder(_TaskWire).decode
_result_wire = msgspec.json.Decoder(_ResultWire).decode


def _load(data: bytes | str, kind: str) -> dict[str, Any]:
    if isinstance(data, bytes):
        # UTF-8 only, what distq writes: json.loads would also take UTF-16 and UTF-32,
        # whose bytes check_nesting cannot count (a 0x22 inside another character reads
        # as a quote and hides the brackets after it). A UTF-8 BOM is skipped, as json did.
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise EnvelopeError(f"{kind} is not valid JSON: not UTF-8 ({exc})") from None
        check_nesting(data, kind)
    else:
        text = data
        check_nesting(data.encode(errors="replace"), kind)
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError) as exc:
        hint = " (NUL characters: UTF-16 or UTF-32? distq reads UTF-8)" if "\0" in text else ""
        raise EnvelopeError(f"{kind} is not valid JSON: {exc}{hint}") from None
    if not isinstance(obj, dict):
        raise EnvelopeError(f"{kind} must be a JSON object, got {type(obj).__name__}")
    try:  # json accepts an unpaired surrogate escape (msgspec does not): no text can hold it
        json.dumps(obj, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise EnvelopeError(
            f"{kind} has an unpaired UTF-16 surrogate escape (\\ud800 to \\udfff alone), "
            "which is not a character: a sender must escape a character outside the BMP as a pair"
        ) from None
    version = obj.get("v")
    if version != VERSION or type(version) is not int:  # not true, nor 1.0
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise EnvelopeError(
                f'{kind} has no envelope version (a whole number in "v"; it has '
                f"{quoted(version)}): it is not a distq message"
            )
        raise VersionMismatch(version_mismatch(kind, version))
    return obj


#: Who sends each kind of message, for :func:`version_mismatch`.
SENDERS = {"task": "submitter", "result": "worker", "dead letter": "worker"}


def version_mismatch(kind: str, version: int) -> str:
    """Why a message of envelope ``version`` is not read here, and what to upgrade."""
    sender = SENDERS.get(kind, "sender")
    if version > VERSION:
        hint = f"its {sender} runs a newer distq than this process: upgrade this one"
    else:  # none yet: version 1 is the first
        hint = f"its {sender} runs an older distq than this process: upgrade the {sender}"
    return (
        f"{kind} has envelope version {quoted(version)}, and this distq reads version "
        f"{VERSION}: {hint}"
    )


#: Longest repr of a wrong value an envelope error quotes (a 1 MB one made a 1 MB reason).
QUOTED_CHARS = 200


def quoted(value: object) -> str:
    """``repr(value)``, its first :data:`QUOTED_CHARS` characters when longer: a value
    from the wire, quoted in an error."""
    text = safe_repr(value)
    return text if len(text) <= QUOTED_CHARS else text[:QUOTED_CHARS] + "..."


def safe_repr(value: object) -> str:
    """``repr(value)``, or what it is when that raises: a manager peer can put an int of
    more than 4,300 digits (ValueError) or a list nested thousands deep (RecursionError),
    which wedged a worker's slot and crashed a master where their repr was asked for."""
    try:
        return repr(value)
    except Exception:  # any value a peer can build
        return f"<a {type(value).__name__} that cannot be shown>"


def not_bytes(message: object, kind: str) -> EnvelopeError:
    """The error for a message that is not bytes at all: a manager peer can put any
    picklable value on a queue (a str, None, a list), which the codec's checks raise TypeError or
    AttributeError on."""
    return EnvelopeError(f"{kind} is a {type(message).__name__}, not bytes: {quoted(message)}")


def wire_bytes(message: object) -> bytes:
    """A message as bytes: itself, or (not bytes at all: see :func:`not_bytes`) its repr,
    to keep in a dead letter."""
    if isinstance(message, bytes):
        return message
    return safe_repr(message).encode("utf-8", "backslashreplace")


def first_bytes(body: bytes, most: int) -> bytes:
    """The first ``most`` bytes of ``body`` (a task, for its dead letter), without a UTF-8
    character cut at their end: cut in the middle of one, a text task's letter kept it in
    base64 (``body_b64``), no longer text. Bytes never text are cut where they fall."""
    kept = body[:most]
    if len(kept) == len(body):
        return kept
    try:
        kept.decode()
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data":  # a character cut, not bytes never text
            return kept[: exc.start]
    return kept


def _field(obj: dict[str, Any], name: str, kind: str, typ: type | tuple[type, ...]) -> Any:
    if name not in obj:
        raise EnvelopeError(f"{kind} lacks the field {name!r}")
    value = obj[name]
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise EnvelopeError(f"{kind} field {name!r} has the wrong type: {quoted(value)}")
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


def _task_id(obj: dict[str, Any], kind: str) -> str:
    value: str = _field(obj, "id", kind, str)
    size = len(value.encode(errors="replace"))
    if size > MAX_NAME_BYTES:  # a result too large for its master could not name it
        raise EnvelopeError(
            f"{kind} field 'id' is {size:,} bytes, over the {MAX_NAME_BYTES:,} a task id may "
            "be: give the task a shorter id"
        )
    return value


class Task(msgspec.Struct, frozen=True, gc=False):
    """One unit of work: call the registered function ``name`` with ``args``/``kwargs``.

    ``reply_to`` names the result queue of the master that submitted it (or is
    :data:`NO_REPLY`); ``attempt`` counts from 1 and grows on each retry after a failure.
    A frozen ``msgspec`` struct: change one with ``msgspec.structs.replace``.
    """

    name: str
    args: list[Any]
    reply_to: str
    kwargs: dict[str, Any] = msgspec.field(default_factory=dict)
    id: str = msgspec.field(default_factory=new_id)
    attempt: int = 1
    max_attempts: int = MAX_ATTEMPTS
    created_at: float = msgspec.field(default_factory=time.time)

    def encode(self) -> bytes:
        fast = self.encode_shallow()
        if fast is not None:
            return fast
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

    def encode_shallow(self) -> bytes | None:
        """:meth:`encode` by the fast path, whose JSON nests at most :data:`SHALLOW_NESTING`
        levels (so no need to count them); None when the task takes the stdlib's."""
        kwargs = self.kwargs  # most often none: an empty dict needs no look inside
        if (
            _plain(self.args)
            and ((type(kwargs) is dict and not kwargs) or _plain(kwargs))
            and math.isfinite(self.created_at)
        ):
            wire = _TaskWire(
                1,
                self.id,
                self.name,
                self.args,
                self.kwargs,
                self.reply_to,
                self.attempt,
                self.max_attempts,
                self.created_at,
            )
            try:
                return _encode(wire)
            except _FAST_ERRORS:
                pass  # e.g. a lone surrogate in a string: json says why
        return None

    @classmethod
    def decode(cls, data: bytes | str) -> Task:
        check_nesting(data if isinstance(data, bytes) else data.encode(errors="replace"), "task")
        try:
            w = _task_wire(data)
        except _FAST_ERRORS:
            return cls._decode_json(data)  # the reference decoder: accepts, or says why
        if (
            not fits_reply_to(w.reply_to)
            or not math.isfinite(w.created_at)
            or len(w.id) > MAX_NAME_BYTES // 4  # within the limit, however encoded
        ):
            return cls._decode_json(data)
        return cls(
            w.name, w.args, w.reply_to, w.kwargs, w.id, w.attempt, w.max_attempts, w.created_at
        )

    @classmethod
    def _decode_json(cls, data: bytes | str) -> Task:
        kind = "task"
        obj = _load(data, kind)
        if "id" not in obj and _is_dead_letter(obj):
            queue = obj.get("queue")
            of = f" (of queue {shown(queue)[:200]})" if isinstance(queue, str) else ""
            raise EnvelopeError(
                f"task is a dead letter{of}, not a task: `distq requeue-dead` moves dead "
                "letters back to their queue as tasks"
            )
        try:
            return cls(
                id=_task_id(obj, kind),
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
        return msgspec.structs.replace(self, attempt=self.attempt + 1)


Status = Literal["ok", "error"]


class Result(msgspec.Struct, frozen=True):
    """The outcome of a task, sent to its ``reply_to`` queue.

    ``status`` is ``"ok"`` with ``value`` set, or ``"error"`` (failed for good) with
    ``error_type`` and ``error_message`` set, and ``error_traceback`` (the remote
    traceback's text) when the task's function raised. ``error_traceback`` is optional on
    the wire (``error.traceback``), so results without it still decode. A frozen
    ``msgspec`` struct, like :class:`Task`.
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
        fast = self.encode_shallow()
        if fast is not None:
            return fast
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

    def encode_shallow(self) -> bytes | None:
        """:meth:`encode` by the fast path (ok results), whose JSON nests at most
        :data:`SHALLOW_NESTING` levels; None when the result takes the stdlib's."""
        if (
            self.status == "ok"
            and _plain(self.value)
            and math.isfinite(self.started_at)
            and math.isfinite(self.duration)
        ):
            wire = _OkResultWire(
                1,
                self.task_id,
                self.status,
                self.worker,
                self.attempt,
                self.started_at,
                self.duration,
                self.value,
            )
            try:
                return _encode(wire)
            except _FAST_ERRORS:
                pass  # json says why
        return None

    @classmethod
    def decode(cls, data: bytes | str) -> Result:
        check_nesting(data if isinstance(data, bytes) else data.encode(errors="replace"), "result")
        try:
            w = _result_wire(data)
        except _FAST_ERRORS:
            return cls._decode_json(data)  # the reference decoder: accepts, or says why
        error = w.error if w.status == "error" else None
        if (
            (w.status == "error" and error is None)
            or not math.isfinite(w.started_at)
            or not math.isfinite(w.duration)
        ):
            return cls._decode_json(data)
        if error is None:
            return cls(w.task_id, w.status, w.worker, w.attempt, w.started_at, w.duration, w.value)
        return cls(
            w.task_id,
            w.status,
            w.worker,
            w.attempt,
            w.started_at,
            w.duration,
            w.value,
            error.type,
            error.message,
            error.traceback,
        )

    @classmethod
    def _decode_json(cls, data: bytes | str) -> Result:
        kind = "result"
        obj = _load(data, kind)
        status = _field(obj, "status", kind, str)
        if status not in ("ok", "error"):
            raise EnvelopeError(f"result status must be 'ok' or 'error', got {quoted(status)}")
        error = obj.get("error") if status == "error" else None
        if status == "error" and not isinstance(error, dict):
            raise EnvelopeError("error result lacks the 'error' object")
        texts = [error.get(name) if error else None for name in _ERROR_TEXTS]
        for name, text in zip(_ERROR_TEXTS, texts, strict=True):
            if text is not None and not isinstance(text, str):
                raise EnvelopeError(f"result field 'error.{name}' is not text: {quoted(text)}")
        error_type, error_message, traceback = texts
        try:
            return cls(
                task_id=_field(obj, "task_id", kind, str),
                status=status,
                worker=_field(obj, "worker", kind, str),
                attempt=_field(obj, "attempt", kind, int),
                started_at=_number(obj, "started_at", kind),
                duration=_number(obj, "duration", kind),
                value=obj.get("value"),
                error_type=error_type,
                error_message=error_message,
                error_traceback=traceback,
            )
        except OverflowError:
            raise EnvelopeError(f"{kind} has a number too large for a float") from None


def _is_dead_letter(obj: dict[str, Any]) -> bool:
    """Whether ``obj`` reads as a :class:`DeadLetter`'s envelope: what a dead-letter queue
    moved by hand into a task queue holds."""
    return "reason" in obj and "worker" in obj and ("body" in obj or "body_b64" in obj)


#: The fields of a result's ``error`` object, each text or absent (null).
_ERROR_TEXTS = ("type", "message", "traceback")

#: How the reason of a dead-letter entry that is not a readable letter starts.
UNREADABLE = "unreadable dead letter: "
#: ... and at most how much of why it is unreadable follows.
UNREADABLE_WHY_CHARS = 300


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

    @classmethod
    def read(cls, data: bytes, queue: str) -> DeadLetter:
        """An entry of ``queue``'s dead letters, whatever it holds: decoded, or else (a
        hand edit, another tool, another envelope version) an *unreadable* letter, with
        the entry's bytes as its body, the reason ``unreadable dead letter: <why>``, no
        worker and no time (``at`` 0). So listing shows it, and requeueing moves its bytes
        back as a task (a worker dead-letters them again, as a letter it can read) instead
        of stopping at it: every transport reads its dead letters through this."""
        try:
            if not isinstance(data, bytes | str):  # a manager peer can put any plain value
                raise not_bytes(data, "dead letter")
            return cls.decode(data)
        except EnvelopeError as exc:
            why = str(exc)
            if len(why) > UNREADABLE_WHY_CHARS:
                why = why[:UNREADABLE_WHY_CHARS] + "..."
            reason = UNREADABLE + why
            return cls(body=wire_bytes(data), reason=reason, queue=queue, worker="", at=0.0)

    @property
    def unreadable(self) -> bool:
        """Whether :meth:`read` found this entry unreadable (its body is the raw entry)."""
        return self.at == 0.0 and not self.worker and self.reason.startswith(UNREADABLE)


def cut_letter(encoded: bytes, too_large: str) -> tuple[bytes, str]:
    """A dead letter (``encoded``) too large for where it goes, keeping the first
    :data:`~distq.limits.OVERSIZED_KEPT_BYTES` of its task (:func:`first_bytes`), and why,
    which its reason ends with: how large it was, ``too_large`` saying for what. Sent
    whole, it was refused and its task ran again, each time (a letter writes each quote
    of a task's text in 4 bytes: four times a task that a broker took)."""
    letter = DeadLetter.decode(encoded)
    kept = first_bytes(letter.body, OVERSIZED_KEPT_BYTES)
    why = (
        f"the dead letter keeps the first {len(kept):,} bytes of the task: whole, it was "
        f"{len(encoded):,} bytes, {too_large}"
    )
    cut = DeadLetter(kept, f"{letter.reason}; {why}", letter.queue, letter.worker, letter.at)
    return cut.encode(), why
