"""How a delivery ends: ok, retried with backoff, failed for good, or malformed.

Pure decisions, no I/O: given what happened to a delivery (its task's value, the
error it raised, or why it could not be read), :class:`Endings` says what the consumer
publishes (a :class:`~distq.transport.base.Settlement`) and how it counts (an
:data:`Outcome`). The worker runs tasks (:mod:`distq.runner`) and settles; this module
only decides.

- the function returned a JSON value: ``ok``, an ok result;
- it raised and attempts are left: ``retried``, the next attempt after
  :func:`~distq.retries.retry_delay`;
- it raised on its last attempt: ``failed``, an error result and a dead letter;
- it cannot run (unknown name, arguments that do not fit), or it ran and returned a
  value it cannot send back (not a JSON value, too large): ``failed`` at once, as no
  retry would change that;
- distq's own handling of the task failed (a bug, or input no check foresaw):
  ``failed`` at once, dead-lettered (:meth:`Endings.unhandled`), never handed back to
  fail again;
- the body is not a task envelope, or is refused (unsigned, signed wrongly, over the
  size limit): ``malformed``, a dead letter, never run; a task over the limit, nested
  too deeply, of another envelope version, with a field it cannot run with, or refused
  for its signature (then in an unsigned result, see :meth:`Endings.malformed`) is
  answered with the reason where its head reads;
- its master is gone (stopped, or died and its reply queue lapsed): ``orphaned``, a dead
  letter only, the task not run (nobody would read its result);
- it ran past its time limit (:class:`~distq.errors.TimeLimitExceeded`): like any
  error, ``retried`` or ``failed`` (see :meth:`Endings.timed_out`).

Retries are sealed by the worker's :class:`~distq.codec.Codec`: signed when it has keys.
A result is encoded at once (one over the size limit fails its task for good) and
sealed with the rest of its batch: :meth:`Endings.settlements` packs the results of a
batch for one master into one message, signed once. An error result
carries the exception's traceback text when the task's own code raised, so whoever
waits for it (an executor's future) can show where. A task sent with ``reply_to``
:data:`~distq.envelope.NO_REPLY` ends the same way, without a result.
"""

from __future__ import annotations

import contextlib
import math
import time
import types
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

from distq.chunks import CHUNK_TASK
from distq.codec import Codec
from distq.envelope import NO_REPLY, DeadLetter, Result, Task, first_bytes, shown, wire_bytes
from distq.errors import (
    BadSignature,
    EnvelopeError,
    MessageTooLarge,
    NestedTooDeep,
    NewerSignature,
    OldSignature,
    SignatureError,
    TimeLimitExceeded,
    VersionMismatch,
)
from distq.errortext import describe, traceback_text
from distq.framing import pack_problem
from distq.jsonvalue import problem
from distq.limits import MAX_NESTING, OVERSIZED_KEPT_BYTES
from distq.retries import retry_delay
from distq.timelimits import said
from distq.transport.base import Delivery, Settlement, orphaned_reason

#: ``released``: back in the queue, unsettled by this worker: a task that ended after its
#: lease lapsed, whose retry or dead letter the settle did not send
#: (:attr:`distq.transport.base.Consumer.late`), or a malformed message or an orphan whose
#: dead letter the broker refused (:attr:`distq.transport.base.Consumer.bounced`).
Outcome = Literal["ok", "failed", "retried", "malformed", "orphaned", "released"]

#: Types of values that are JSON as they are: a result of one of them needs no check.
_PLAIN = frozenset({int, str, bool, type(None)})
#: The fix of a task refused unsigned or for another signing key: its letter and answer say it.
_SAME_KEYS = "give the workers and the process that submits tasks the same DISTQ_SIGNING_KEYS"


class Ending(NamedTuple):
    """How one delivery ended: what to settle, how it counts, and what to tell the operator.

    ``settlement.result``, if any, is the result's envelope, not yet sealed:
    :meth:`Endings.settlements` seals a batch's results together.
    ``task`` is None for a malformed message; ``started_at`` (wall clock) and
    ``duration`` (seconds the function ran, 0 if it never ran) describe the run;
    ``note`` is the error line to print, None when all went well. (A named tuple: one
    is made per task, and a frozen dataclass costs about three times as much to make.)
    """

    settlement: Settlement
    outcome: Outcome
    task: Task | None = None
    started_at: float = 0.0
    duration: float = 0.0
    note: str | None = None


_ending = tuple.__new__  # makes an Ending from all its fields, in order

#: What calling an ``async def`` or a generator function returns before its body runs.
_UNRUN = (types.CoroutineType, types.GeneratorType, types.AsyncGeneratorType)


def _unrun(value: Any, task: Task) -> TypeError | None:
    """The error for a call that returned a coroutine or a generator (in a chunk: any of
    its calls), each closed so that Python says nothing of it; None for any other value.
    A wrapper around an ``async def`` or a generator function gets past the check at
    registration (:func:`distq.tasks.not_plain`)."""
    if isinstance(value, _UNRUN):
        found, where = [value], "it"
    elif task.name == CHUNK_TASK and type(value) is list:
        found = [item for item in value if isinstance(item, _UNRUN)]
        if not found:
            return None
        where = f"call {next(n for n, v in enumerate(value, 1) if isinstance(v, _UNRUN))}"
    else:
        return None
    for item in found:  # an async generator never started says nothing: no aclose()
        if isinstance(item, types.CoroutineType | types.GeneratorType):
            with contextlib.suppress(Exception):
                item.close()
    kind = type(found[0]).__name__
    if isinstance(found[0], types.GeneratorType):  # a generator expression's, or a function's
        return TypeError(
            f"{where} returned a generator, not a JSON value: return a list (list(...)); a "
            "generator function's body runs only as it is iterated"
        )
    return TypeError(
        f"{where} returned a {kind}, so none of its body ran: a worker calls a task without "
        "awaiting it; register a plain function that runs it, e.g. "
        "def fetch_now(url): return asyncio.run(fetch(url))"
    )


def _called(task: Task) -> str:
    """How a line names ``task``: its name, or for a chunk the function it calls, as its
    metrics and its ``task settled`` line do (:func:`distq.telemetry.called`)."""
    from distq.telemetry import called  # telemetry imports this module

    return called(task)


class Unsealed(bytes):
    """A result envelope :meth:`Endings.settlements` sends as it is, never signed."""


def _settlement(s: Settlement, reply_to: str | None, result: bytes | None) -> Settlement:
    return Settlement(s.delivery, reply_to, result, s.retry, s.retry_delay, s.dead_letter)


class Endings:
    """The endings one worker gives its deliveries: results and dead letters name it."""

    def __init__(self, worker_id: str, queue: str, codec: Codec | None = None) -> None:
        self.worker_id, self.queue = worker_id, queue
        self.codec = codec or Codec()  # seals results and retries: signed, within the limit

    def ok(
        self, delivery: Delivery, task: Task, value: Any, started_at: float, duration: float
    ) -> Ending:
        """The function returned ``value``; it fails for good if ``value`` is not a JSON
        value (checked as arguments are: JSON would turn a dict's int keys into strings
        and write NaN, which is not JSON) or its result is too large."""
        kind = type(value)
        if kind not in _PLAIN and not (kind is float and math.isfinite(value)):
            unrun = _unrun(value, task)  # an async def's or a generator's: never iterated
            if unrun is not None:
                return self.failed(delivery, task, unrun, started_at, duration, returned=True)
            found = problem(value, "its value", MAX_NESTING - 1)  # the result's envelope: 1
            if found is not None:
                error = TypeError(f"{found}; a task must return a JSON value")
                return self.failed(delivery, task, error, started_at, duration, returned=True)
        result = Result(task.id, "ok", self.worker_id, task.attempt, started_at, duration, value)
        try:
            body = self.codec.encode_result(result)
        # too large, or not JSON after all: no retry will change that
        except (TypeError, ValueError, RecursionError, EnvelopeError) as exc:
            found = (
                None
                if isinstance(exc, EnvelopeError)
                else problem(value, "its value", MAX_NESTING - 1)
            )
            if found is not None:  # a plain str or int, unchecked above: said as checked
                exc = TypeError(f"{found}; a task must return a JSON value")
            elif isinstance(exc, MessageTooLarge) and task.name == CHUNK_TASK:
                exc = MessageTooLarge(  # the values of its calls, together: each may fit
                    f"{exc}; a chunk's result holds the values of all its calls: a smaller "
                    "map() chunksize sends fewer of them at a time"
                )
            return self.failed(delivery, task, exc, started_at, duration, returned=True)
        if task.reply_to == NO_REPLY:
            return Ending(Settlement(delivery), "ok", task, started_at, duration)
        settlement = Settlement(delivery, task.reply_to, body)
        # Ending(...) without its Python __new__: once per task
        return _ending(Ending, (settlement, "ok", task, started_at, duration, None))

    def failed(
        self,
        delivery: Delivery,
        task: Task,
        error: BaseException,
        started_at: float,
        duration: float,
        *,
        retryable: bool = False,
        returned: bool = False,
    ) -> Ending:
        """The task raised ``error`` (``retryable``), cannot run at all, or ``returned`` a
        value it cannot send back (neither is retried).

        The error result of a task that raised carries ``error``'s traceback text.
        """
        message = describe(error)
        retry, unsent = None, ""
        if retryable and task.attempt < task.max_attempts:
            try:  # a retry over the limit (its attempt one digit longer) fails for good
                retry = self.codec.seal(
                    self._as_sent(delivery, task).next_attempt().encode(), "task", delivery.body
                )
            except EnvelopeError as exc:
                unsent = f"; its retry cannot be sent ({exc}), so it is not retried"
        if retry is not None:
            delay = retry_delay(task.attempt)
            note = (
                f"task {shown(_called(task))} {shown(task.id)} attempt {task.attempt}/"
                f"{task.max_attempts} failed ({shown(message)}); retrying in {delay:g} s"
            )
            settlement = Settlement(delivery, retry=retry, retry_delay=delay)
            return Ending(settlement, "retried", task, started_at, duration, note)
        if retryable:
            reason = (
                f"failed {task.attempt} of {task.max_attempts} attempts; last error: "
                f"{message}{unsent}"
            )
        elif returned:
            reason = f"ran, but its value cannot be sent back: {message}"
        else:
            reason = f"cannot run: {message}"
        error_type = type(error).__name__
        traceback = traceback_text(error) if retryable else None
        result: bytes | None
        try:
            result = self._error(task, started_at, duration, error_type, reason, traceback)
        except EnvelopeError:  # too large: the reason alone, else the dead letter keeps it
            try:
                result = self._too_large(task, started_at, duration, error_type, reason, traceback)
            except EnvelopeError:
                # not even that: a task id or worker name near DISTQ_MAX_MESSAGE_BYTES.
                # Raised, it left the keeper's time limit a slot without a thread: the
                # dead letter alone, as a worker whose limit is below a result's does
                result = None
        nobody = task.reply_to == NO_REPLY or result is None
        settlement = Settlement(
            delivery,
            reply_to=None if nobody else task.reply_to,
            result=None if nobody else result,
            dead_letter=self._dead(delivery.body, reason),
        )
        note = f"task {shown(_called(task))} {shown(task.id)} dead-lettered: {shown(reason)}"
        return Ending(settlement, "failed", task, started_at, duration, note)

    def unhandled(self, delivery: Delivery, task: Task, error: BaseException) -> Ending:
        """distq's own handling of ``task`` raised ``error`` (printing its line, making
        its ending): it fails for good and is dead-lettered with the reason, since handed
        back it would fail the same way again, over and over; its master gets an error
        result when one can be made. Nothing here may raise in turn."""
        reason = f"the worker could not handle it: {describe(error)}"
        result: bytes | None = None
        if task.reply_to != NO_REPLY:
            with contextlib.suppress(Exception):
                result = self._error(task, 0.0, 0.0, "WorkerError", reason)
        settlement = Settlement(
            delivery,
            reply_to=None if result is None else task.reply_to,
            result=result,
            dead_letter=self._dead(delivery.body, reason),
        )
        note = f"task {shown(_called(task))} {shown(task.id)} dead-lettered: {shown(reason)}"
        return Ending(settlement, "failed", task, 0.0, 0.0, note)

    def timed_out(
        self,
        delivery: Delivery,
        task: Task,
        limit: float,
        started_at: float,
        duration: float,
        which: str = "",
    ) -> Ending:
        """The task ran past its ``limit`` (seconds): a failed attempt, retried per policy.
        ``which`` says which limit that was (:meth:`~distq.timelimits.TimeLimits.which`)."""
        why = f" ({which})" if which else ""
        error = TimeLimitExceeded(f"ran past its time limit of {said(limit)} s{why}")
        return self.failed(delivery, task, error, started_at, duration, retryable=True)

    def orphaned(self, delivery: Delivery, task: Task) -> Ending:
        """The task's master is gone: dead-lettered unrun, no result (nobody waits)."""
        reason = orphaned_reason(task.reply_to)
        settlement = Settlement(delivery, dead_letter=self._dead(delivery.body, reason))
        note = f"task {shown(_called(task))} {shown(task.id)} dead-lettered: {shown(reason)}"
        # started_at: when it was dead-lettered, so its line's queue_wait is how long it
        # waited (the metrics count no queue wait for it: it never started)
        return Ending(settlement, "orphaned", task, time.time(), note=note)

    def malformed(self, delivery: Delivery, error: EnvelopeError) -> Ending:
        """The body is not a task, or is refused (unsigned, forged, too large): never run,
        dead-lettered with the reason. Whoever waits for it gets the reason as its result
        where its head reads: a verified error result for a task too large, nested too
        deeply, of another envelope version or with a field of the wrong type (attempt
        0 among them), an unsigned one for a task refused for its
        signature (too large as well, or not: :meth:`_refusal`). An oversized body's dead
        letter keeps its first ``OVERSIZED_KEPT_BYTES``."""
        body = wire_bytes(delivery.body)  # a manager peer's str, None...: kept as its repr
        limit = self.codec.max_message_bytes
        # a pack of signed tasks starts with a length, not a signature: not "unsigned";
        # a pack holding a task nested too deeply is a pack all the same
        framed = pack_problem(body, self.codec.transport)
        if framed is not None and len(body) > limit:
            # refused for its size, as a whole: said as one task too large, it was several
            reason = (
                f"malformed message: {framed}; refused whole: it is {len(body):,} bytes, "
                f"over the limit of {limit:,} (DISTQ_MAX_MESSAGE_BYTES)"
            )
        elif framed is not None:
            reason = f"malformed message: {framed}"
        elif isinstance(error, MessageTooLarge | SignatureError):
            reason = f"refused: {error}"
            if type(error) is SignatureError:  # unsigned, a malformed header: its fix too
                reason += f"; {_SAME_KEYS}"
        else:
            reason = f"malformed message: {error}"
        waits = None
        if isinstance(error, VersionMismatch):
            waits = self._answer(body, f"{reason}; not run", "VersionMismatch", any_version=True)
        elif isinstance(error, SignatureError) and framed is None:
            waits = self._refusal(body, reason, error)
        elif isinstance(error, NestedTooDeep) and framed is None:  # refused unread, as
            why = f"{reason}; not run: flatten its arguments"  # one too large is
            waits = self._answer(body, why, "NestedTooDeep", any_version=True)
        elif type(error) is EnvelopeError and framed is None:  # its signature checked out
            # a field of the wrong type, attempt 0: answered where its head reads, as a
            # task refused for its size is, not left for its master to wait in vain
            waits = self._answer(body, f"{reason}; not run", "EnvelopeError")
        elif len(body) > limit:
            why = (
                f"{reason}; not run: give the workers at least the DISTQ_MAX_MESSAGE_BYTES "
                "of the process that submits tasks"
            )
            # of any version: refused for its size before its version was read; its
            # signature checked once, an HMAC over all of it, for the head and for this
            task, refused = self.codec.checked_task_head(body, any_version=True)
            waits = self._answered(task, why, "MessageTooLarge")
            if refused is not None:  # refused for its signature too: answered as such
                waits = self._refusal(
                    body,
                    f"{reason}; its signature was refused too ({refused})",
                    refused,
                    "give the workers at least the DISTQ_MAX_MESSAGE_BYTES of the process "
                    "that submits tasks",
                )
            body = first_bytes(body, OVERSIZED_KEPT_BYTES)
            reason += f"; the dead letter keeps its first {len(body):,} bytes"
        dead = self._dead(body, reason)
        kind = "" if reason.startswith("malformed") else "message, "
        if waits is None:
            settlement = Settlement(delivery, dead_letter=dead)
            return Ending(settlement, "malformed", note=f"dead-lettered a {kind}{shown(reason)}")
        task, result = waits
        settlement = Settlement(delivery, task.reply_to, result, dead_letter=dead)
        note = f"dead-lettered task {shown(_called(task))} {shown(task.id)}, {shown(reason)}"
        return Ending(settlement, "malformed", note=note)

    def _answer(
        self, body: bytes, why: str, error_type: str, any_version: bool = False
    ) -> tuple[Task, bytes] | None:
        """The task in ``body`` this worker does not run (too large for it, of another
        envelope version), and the error result ``why`` for whoever waits for it: it was
        refused unsaid, and its master waited until its timeout, or for good. None:
        nobody waits, or its head does not read."""
        return self._answered(self.codec.task_head(body, any_version), why, error_type)

    def _answered(self, task: Task | None, why: str, error_type: str) -> tuple[Task, bytes] | None:
        """:meth:`_answer` for the head ``task`` read already."""
        if task is None or task.reply_to == NO_REPLY:
            return None
        try:
            result = self._error(task, time.time(), 0.0, error_type, why)
        except EnvelopeError:  # a worker limit below a result's size: the dead letter says it
            return None
        return task, result

    def _refusal(
        self, body: bytes, reason: str, error: SignatureError, advice: str = ""
    ) -> tuple[Task, bytes] | None:
        """The task in ``body``, refused for its signature (``error``), and its error
        result, with ``advice`` and, unless the keys are alike (a bad signature by a key
        the worker holds, an older or a newer distq's format), to give both sides the
        same keys: unsigned and left unsealed (:class:`Unsealed`), since the task that names its
        master could not be trusted. A submitter without keys (the keys set on one side
        only) gets it at once, where it waited in vain; one with keys refuses it as
        unsigned and says so, as it refuses any unsigned result: no forged task makes a
        worker sign an answer."""
        task = self.codec.unverified_task_head(body, most=len(body))
        if task is None or task.reply_to == NO_REPLY:
            return None
        fixes = [advice] if advice else []
        # BadSignature, OldSignature, NewerSignature say their own fix; the reason may
        # have said this one
        alike = BadSignature | OldSignature | NewerSignature
        if not isinstance(error, alike) and _SAME_KEYS not in reason:
            fixes.append(_SAME_KEYS)
        why = f"{reason}; not run" + (f": {', and '.join(fixes)}" if fixes else "")
        try:  # the envelope, unsigned: sealing signs, and this one stays Unsealed
            result = self._error(task, time.time(), 0.0, "SignatureError", why)
        except EnvelopeError:  # a worker limit below the result's size: the letter says it
            return None
        return task, Unsealed(result)

    def _too_large(
        self,
        task: Task,
        started_at: float,
        duration: float,
        error_type: str,
        reason: str,
        traceback: str | None,
    ) -> bytes:
        """``task``'s error result once it was too large to send: the reason without its
        traceback (up to 8,000 characters, where a reason is most often a line), said
        so, where there was one and that fits; else that the dead letter has the reason."""
        if traceback is not None:
            most = self.codec.max_message_bytes
            note = (
                "; its traceback was too large to send (this worker sends no message over "
                f"{most:,} bytes)"
            )
            with contextlib.suppress(EnvelopeError):
                return self._error(task, started_at, duration, error_type, reason + note)
        too_large = "(too large to send; the dead letter has the reason)"
        return self._error(task, started_at, duration, error_type, too_large)

    def _error(
        self,
        task: Task,
        started_at: float,
        duration: float,
        error_type: str,
        message: str,
        traceback: str | None = None,
    ) -> bytes:
        """``task``'s error result, encoded; raises EnvelopeError when it is too large."""
        result = Result(
            task_id=task.id,
            status="error",
            worker=self.worker_id,
            attempt=task.attempt,
            started_at=started_at,
            duration=duration,
            error_type=error_type,
            error_message=message,
            error_traceback=traceback,
        )
        return self.codec.encode_result(result)

    def settlements(self, endings: Sequence[Ending]) -> list[Settlement]:
        """What to settle for ``endings``, in their order, results sealed.

        The results for one master go as few messages as the size limit allows
        (:meth:`Codec.seal_results`: one per batch, signed once), each carried by the
        settlement of one of them, the earliest: the transports publish a batch's
        results before they ack any of its deliveries, so no result is acked unsent.
        The error result of a task that failed for good goes alone, on its own
        settlement: a transport drops it with its dead letter when the task's lease
        lapsed first (the copy decides), and the batch's other results rode on it and
        were lost, their tasks counted done and their copies dropped (late21).
        """
        if len(endings) == 1:  # a lone task's: its result sealed alone, no grouping
            s = endings[0].settlement
            result = s.result
            if isinstance(result, Unsealed):
                return [_settlement(s, s.reply_to, bytes(result))]
            if result is None or s.reply_to is None:
                return [s]
            sealed = self.codec.seal_results([result], s.delivery.body)[0]
            return [_settlement(s, s.reply_to, sealed)]
        settlements = [ending.settlement for ending in endings]
        groups: dict[str | int, list[int]] = {}  # a master's, or one dead letter's
        for i, s in enumerate(settlements):
            if isinstance(s.result, Unsealed):  # sent as it is, a plain bytes object
                settlements[i] = _settlement(s, s.reply_to, bytes(s.result))
            elif s.result is not None and s.reply_to is not None:
                if s.dead_letter is not None:
                    groups[i] = [i]
                    continue
                group = groups.get(s.reply_to)
                if group is None:
                    groups[s.reply_to] = [i]
                else:
                    group.append(i)
        seal = self.codec.seal_results
        for at in groups.values():
            # in the format of the first one's task (DQSIG2, which every master reads, if so)
            messages = seal(
                [settlements[i].result for i in at],  # type: ignore[misc]
                settlements[at[0]].delivery.body,
            )
            for n, i in enumerate(at):
                s = settlements[i]
                if n < len(messages):
                    settlements[i] = _settlement(s, s.reply_to, messages[n])
                else:  # its result rides on an earlier settlement
                    settlements[i] = _settlement(s, None, None)
        return settlements

    def _as_sent(self, delivery: Delivery, task: Task) -> Task:
        """``task`` as its message holds it: the function got the very lists and dicts of
        ``task``, and may have changed them before it raised (``items.pop()``), or may be
        changing them still (past its time limit). A retry of those ran on what was left
        and could return a wrong value as ``ok``."""
        try:
            return self.codec.open_task(delivery.body)
        except EnvelopeError:  # it opened before; kept as it is, should that ever change
            return task

    def _dead(self, body: bytes, reason: str) -> bytes:
        letter = DeadLetter(body=body, reason=reason, queue=self.queue, worker=self.worker_id)
        encoded = letter.encode()
        limit = self.codec.letter_limit  # the broker's, once it refused a message over it
        if limit is None:
            return encoded
        room = min(len(body), OVERSIZED_KEPT_BYTES, limit // 4)
        while len(encoded) > limit and room > 0:
            # halved until it fits: JSON writes a control byte in 6 (diff17)
            kept, room = first_bytes(body, room), room // 2
            said = reason[: max(200, room)] + (
                f"; the dead letter keeps the first {len(kept):,} bytes of the task (the "
                f"broker takes no message over {limit:,})"
            )
            letter = DeadLetter(body=kept, reason=said, queue=self.queue, worker=self.worker_id)
            encoded = letter.encode()
        return encoded
