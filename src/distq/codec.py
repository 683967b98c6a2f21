"""Envelopes to and from the wire: size limit, then signature, then decoding, in that order.

A master seals tasks and opens results; a worker opens tasks and seals results and
retries. Opening checks the size before anything reads the body, and the signature
before the JSON parser sees a byte; every refusal is an
:class:`~distq.errors.EnvelopeError` whose message is the reason (the worker puts it in
the dead letter, the master in its warning).

Results travel packed: a worker seals the results of one batch for one master as one
message (:meth:`Codec.seal_results`), a JSON array of their envelopes, signed once, so
a signature costs one HMAC per batch, not one per result. A message holding a single
result is that result's envelope, as before packing existed; a master reads both
(:meth:`Codec.open_results`). An envelope is always a JSON object, so a message whose
envelope starts with ``[`` is a pack.
"""

from __future__ import annotations

import bisect
import functools
import operator
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import msgspec

from distq.envelope import SHALLOW_NESTING, VERSION, Result, Task, fits_reply_to, shown
from distq.errors import (
    EnvelopeError,
    MessageTooLarge,
    NestedTooDeep,
    SignatureError,
    UnverifiedRefusal,
)
from distq.limits import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_NESTING,
    MAX_PREFETCH,
    OVERSIZED_KEPT_BYTES,
    check_nesting,
    check_size,
)
from distq.signing import HEADER_BYTES, SIGNED, Signer, unsigned

if TYPE_CHECKING:
    from distq.config import Settings

assert SHALLOW_NESTING <= MAX_NESTING  # what the fast path writes needs no counting

#: The head of a result envelope as distq writes it: its task id, worker and attempt.
#: Matched only where an envelope starts (a message's, or a pack item's), never inside
#: one: a value may hold anything, that text too. Of any envelope version, as
#: :meth:`Codec.versioned_stand_in` reads one: a newer worker's result over the limit
#: was refused unsaid, its task waiting until its timeout.
_RESULT_HEAD = re.compile(  # the task id and worker any JSON strings (--worker-id, a task's id)
    rb'\{"v":[1-9][0-9]{0,8},"task_id":"((?:[^"\\]|\\.)+)","status":"(?:ok|error)",'
    rb'"worker":"((?:[^"\\]|\\.)*)","attempt":([0-9]{1,9}),'
)
#: How far a head is looked for: a task id or worker name longer than this (nothing
#: distq makes) leaves the result unanswered, its master waiting to its --timeout.
_HEAD_BYTES = OVERSIZED_KEPT_BYTES
#: Whose limit a result a process could not read is over, as its stand-in says.
_READER = "this process's DISTQ_MAX_MESSAGE_BYTES and within its worker's"
#: What to do about it, when the reader is the process that submitted the task.
_FIX = "give the process that submits tasks at least the workers' limit"


class Codec:
    """Seals and opens messages with one process's signing keys and size limit.

    Without keys, a sealed message is the bare JSON envelope (what distq sent before
    signing existed) and an opened one must be unsigned; see :mod:`distq.signing`.
    """

    def __init__(
        self,
        signing_keys: Sequence[bytes] = (),
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        transport: str | None = None,
        queue: str = "distq",  # Settings' default
    ) -> None:
        #: signs and checks the tasks of task queue ``queue`` and their results
        self.signer = Signer(signing_keys, queue) if signing_keys else None
        self.queue = queue
        #: the transport the messages travel on, when known (DISTQ_TRANSPORT): how a
        #: worker's dead letter says a pack of tasks (:func:`distq.framing.pack_problem`)
        self.transport = transport
        #: the most a dead letter may be, once the broker refused a message (hold_to)
        self.letter_limit: int | None = None
        self._limit(max_message_bytes)

    def hold_to(self, limit: int) -> None:
        """Keep what this process sends within ``limit`` bytes from now on: the broker
        refused a message over it (RabbitMQ's ``max_message_size``, below what distq
        allows). A result over it fails its task for good, as one over
        DISTQ_MAX_MESSAGE_BYTES does, and a dead letter keeps the start of its body
        (:class:`~distq.ending.Endings`): they were refused again at each run of the
        task, which ran without end (input17)."""
        self.letter_limit = limit if self.letter_limit is None else min(self.letter_limit, limit)
        if limit < self.max_message_bytes:
            self._limit(limit)

    def _limit(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        # the longest envelope that is still within the limit once signed
        header = HEADER_BYTES if self.signer is not None else 0
        self._max_envelope = max_message_bytes - header
        # a pack of results stays within the default limit, the one a submitter most
        # likely reads with; a result too large for that travels alone (see
        # oversized_results), so it costs its own task at most, not its pack's
        self._pack_room = min(max_message_bytes, DEFAULT_MAX_MESSAGE_BYTES) - header - 2
        # so a pack that size is read even by a process whose own limit is lower: each
        # result in it is then held to that limit (see Collector)
        self._results_allowance = max(max_message_bytes, DEFAULT_MAX_MESSAGE_BYTES)

    @property
    def _broker_held(self) -> bool:
        """Whether the limit is the broker's, below DISTQ_MAX_MESSAGE_BYTES (hold_to): a
        message over it names that, not the setting, which raising would not help."""
        return self.letter_limit is not None and self.letter_limit <= self.max_message_bytes

    @classmethod
    def from_settings(cls, settings: Settings) -> Codec:
        # signing_key too: settings built by hand, not secured (config.secured moves it)
        return cls(
            settings.signing_keys or settings.signing_key,
            settings.max_message_bytes,
            settings.transport,
            settings.queue,
        )

    @property
    def signing(self) -> bool:
        return self.signer is not None

    def seal_task(self, task: Task) -> bytes:
        """The task as sent; :class:`MessageTooLarge` names the task when it is too big."""
        try:
            envelope = task.encode_shallow()  # no nesting to count
            if envelope is None:
                return self.seal(task.encode(), "task")
            return self._sign(envelope, "task")
        except MessageTooLarge as exc:
            advice = (
                "flatten its arguments"
                if isinstance(exc, NestedTooDeep)
                else "pass large data by reference (a path, a URL, a key)"
                + ("" if self._broker_held else " or raise DISTQ_MAX_MESSAGE_BYTES")
            )
            raise type(exc)(
                f"task {task.name} [{task.id}] cannot be submitted: {exc}; {advice}"
            ) from None

    def seal_tasks(self, tasks: Sequence[Task]) -> list[bytes]:
        """The tasks as sent, in order: each as :meth:`seal_task` makes it, in one frame
        (a master's batch), where two more calls a task were made; a task it cannot seal
        so (nested, or too large) goes through :meth:`seal_task`, which names it."""
        if self.signer is not None:
            return self._seal_signed_tasks(tasks, self.signer)
        most = self.max_message_bytes
        bodies = []
        for task in tasks:
            envelope = task.encode_shallow()  # no nesting to count
            if envelope is not None and len(envelope) <= most:
                bodies.append(envelope)
                continue
            bodies.append(self.seal_task(task))  # counts its nesting, or raises naming it
        return bodies

    def _seal_signed_tasks(self, tasks: Sequence[Task], signer: Signer) -> list[bytes]:
        """:meth:`seal_tasks` with keys: their envelopes signed in one call
        (:meth:`Signer.seal_tasks`); a batch with a task nested past the shallow encoding,
        or one too large once signed, goes task by task through :meth:`seal_task`, which
        counts its nesting or raises naming it."""
        bodies = signer.seal_tasks(tasks, Task.encode_shallow, self.max_message_bytes)
        if bodies is not None:
            return bodies
        return [self.seal_task(task) for task in tasks]

    def seal_result(self, result: Result, answering: bytes | None = None) -> bytes:
        """The result alone as sent: what :meth:`seal_results` makes of one envelope."""
        return self._sign(self.encode_result(result), "result", answering)

    def encode_result(self, result: Result) -> bytes:
        """The result's envelope, unsigned, refused as :meth:`seal_result` would refuse it
        (nested too deeply, or too large once signed): :meth:`seal_results` sends it."""
        envelope = result.encode_shallow()  # no nesting to count
        if envelope is None:
            envelope = result.encode()
            check_nesting(envelope, "result")
        if len(envelope) > self._max_envelope:
            self._sign(envelope, "result")  # raises, saying by how much
        return envelope

    def seal_results(
        self, envelopes: Sequence[bytes], answering: bytes | None = None
    ) -> list[bytes]:
        """Envelopes from :meth:`encode_result`, all for one master, as the messages to
        send: one envelope alone as itself (:meth:`seal_result`'s message); several as
        JSON arrays of them, each signed once and within the size limit (so as few
        messages as the limit allows, and never more than envelopes). Signed in the
        format of ``answering``, the message of one of their tasks (:meth:`Signer.sign`)."""
        if len(envelopes) == 1:  # a lone task's: its own message, no pack to make
            return [self._sign(envelopes[0], "result", answering)]
        messages: list[bytes] = []
        room = self._pack_room
        pack: list[bytes] = []
        size = -1  # no comma before the first
        for envelope in envelopes:
            if size + 1 + len(envelope) > room and pack:
                messages.append(self._pack(pack, answering))
                pack, size = [], -1
            pack.append(envelope)
            size += 1 + len(envelope)
        messages.append(self._pack(pack, answering))
        return messages

    def _pack(self, envelopes: list[bytes], answering: bytes | None) -> bytes:
        if len(envelopes) == 1:
            return self._sign(envelopes[0], "result", answering)
        envelope = b"".join((b"[", b",".join(envelopes), b"]"))
        return envelope if self.signer is None else self.signer.sign(envelope, "result", answering)

    def seal(self, envelope: bytes, kind: str, answering: bytes | None = None) -> bytes:
        """``envelope`` signed (when keys are set; in the format of ``answering``, the
        message it answers: :meth:`Signer.sign`) and checked against the limits."""
        check_nesting(envelope, kind)
        return self._sign(envelope, kind, answering)

    def seal_each(self, envelope: bytes, kind: str) -> list[bytes]:
        """``envelope`` as :meth:`seal` makes it, and as it would with each other key it
        accepts first (one, unsigned): the messages that hold it from any process of the
        keys' rotation."""
        first = self.seal(envelope, kind)
        if self.signer is None:
            return [first]
        return [first, *(m for m in self.signer.signed_by_each(envelope, kind) if m != first)]

    def _sign(self, envelope: bytes, kind: str, answering: bytes | None = None) -> bytes:
        """``envelope``, known to nest within the limit, signed and checked for size."""
        message = envelope if self.signer is None else self.signer.sign(envelope, kind, answering)
        if len(message) > self.max_message_bytes:
            which = (
                "the broker's max_message_size" if self._broker_held else "DISTQ_MAX_MESSAGE_BYTES"
            )
            raise MessageTooLarge(
                f"{kind} would be {len(message):,} bytes, over the limit of "
                f"{self.max_message_bytes:,} ({which})"
            )
        return message

    def open_task(self, message: bytes) -> Task:
        signer = self.signer
        if signer is None or len(message) > self.max_message_bytes:
            return Task.decode(self._open(message, "task"))
        return Task.decode(signer.verify(message, "task"))  # a worker's usual: one call less

    def open_result(self, message: bytes) -> Result:
        """The one result in ``message``; a pack of several is refused (see
        :meth:`open_results`)."""
        return Result.decode(self._open(message, "result"))

    def open_results(self, message: bytes) -> list[bytes]:
        """The result envelopes in ``message``, a single result or a pack, once its size
        and signature check out; each is read with :meth:`Result.decode`, so that a bad
        one costs only itself. :class:`EnvelopeError` if the message as a whole is refused."""
        envelope = self._open(message, "result", self._results_allowance)
        if envelope[:1] != b"[":
            if len(message) > self.max_message_bytes:
                check_size(message, self.max_message_bytes, "result")  # raises
            return [envelope]
        try:
            raws = _pack_items(envelope)
        except msgspec.DecodeError as exc:  # a pack that is not a JSON array
            raise EnvelopeError(f"result pack is not a JSON array: {exc}") from None
        except RecursionError:  # msgspec stops at its own depth
            raise MessageTooLarge(
                f"result pack nests JSON deeper than {MAX_NESTING} levels"
            ) from None
        if raws is not None and not raws:  # no worker's: it packs one result or more
            raise EnvelopeError("result pack holds no result: no distq worker sends one")
        if raws is None or len(raws) > MAX_PREFETCH:  # one line, not one per item
            held = f"{len(raws):,}" if raws is not None else f"over {MAX_PREFETCH:,}"
            raise MessageTooLarge(
                f"result pack holds {held} results; a worker packs at most "
                f"{MAX_PREFETCH:,} (a batch)"
            )
        return [bytes(raw) for raw in raws]

    def oversized_results(
        self, message: bytes, reader: str = _READER, fix: str = _FIX
    ) -> list[Result]:
        """For a result message :meth:`open_results` refused as too large, which a worker
        whose ``DISTQ_MAX_MESSAGE_BYTES`` is larger sends: an error result for each task
        it carries, named by its envelope's head (the signature checked first), so those
        tasks fail for good with the reason instead of waiting unanswered. Empty when the
        message says no task that way. ``reader``: whose limit it is over, and ``fix``:
        what to do about it, as said."""
        try:  # its signature, as any result's; its size is why it is here
            envelope = self._open(message, "result", most=len(message))
        except EnvelopeError:
            return []
        if envelope[:1] != b"[":
            lone = self.stand_in(envelope, len(message), reader, fix)
            return [] if lone is None else [lone]
        try:
            raws = _pack_items(envelope)
        except (msgspec.DecodeError, RecursionError):
            return []
        if raws is None:  # more than a worker packs: garbage, said as too large
            return []
        head = _HEAD_BYTES
        found = (self.stand_in(memoryview(raw)[:head], len(raw), reader, fix) for raw in raws)
        return [result for result in found if result is not None]

    def stand_in(
        self, head: bytes | memoryview, size: int, reader: str = _READER, fix: str = _FIX
    ) -> Result | None:
        """The error result for a result envelope of ``size`` bytes, over this process's
        limit (``reader``'s, as said, and ``fix`` to do), that starts with ``head``; None
        if ``head`` is not a result's."""
        found = _RESULT_HEAD.match(head, 0, _HEAD_BYTES)
        if found is None:
            return None
        try:
            task_id, worker = (_json_text(name) for name in found.group(1, 2))
        except msgspec.DecodeError:
            return None
        return _unread(
            task_id,
            worker,
            int(found[3]),
            "MessageTooLarge",
            f"ran, but its result was {size:,} bytes, over the {self.max_message_bytes:,} "
            f"of {reader}: {fix}",
        )

    def versioned_stand_in(self, envelope: bytes, error: EnvelopeError) -> Result | None:
        """The error result for a result envelope of another envelope version (a newer
        worker's), when its head names its task as version 1 does: the master and the
        Executor dropped it and waited for that task until their timeout, or for good."""
        try:
            head = _result_head(envelope)
        except (msgspec.DecodeError, RecursionError):
            return None
        if not head.task_id:
            return None
        message = f"ran, but its result could not be read: {error}"
        return _unread(head.task_id, head.worker, head.attempt, "VersionMismatch", message)

    def task_head(self, message: bytes, any_version: bool = False) -> Task | None:
        """For a task message a worker refuses to run: too large (a submitter whose
        ``DISTQ_MAX_MESSAGE_BYTES`` is larger sends it) or, with ``any_version``, of
        another envelope version whose head reads alike. The task without its arguments,
        read past them without keeping them (the signature checked first), so that the
        worker can answer whoever waits for it; None when the message says no task that way."""
        return self.checked_task_head(message, any_version)[0]

    def checked_task_head(
        self, message: bytes, any_version: bool = False
    ) -> tuple[Task | None, SignatureError | None]:
        """:meth:`task_head`, and why the signature of ``message`` is refused (None when
        it checks out), whatever its size: from one HMAC over it, where a task nobody
        waits for (up to the limit of its submitter) was hashed twice."""
        try:
            envelope = self._open(message, "task", most=len(message))
        except SignatureError as exc:
            return None, exc
        except EnvelopeError:
            return None, None
        return _head_task(envelope, any_version), None

    def unverified_task_head(self, message: bytes, most: int | None = None) -> Task | None:
        """The head of a task message whose signature this worker refused (unsigned where
        it requires one, signed with a key it lacks, or signed wrongly), read without
        trusting it: only to answer whoever waits for it with an unsigned refusal, which
        no process holding keys accepts (see :meth:`distq.ending.Endings.malformed`).
        None when no head reads (of any version: refused before its version was read),
        or the message is over the limit (or ``most`` bytes: a task over the limit whose
        signature is refused too)."""
        if len(message) > (self.max_message_bytes if most is None else most):
            return None
        envelope = message[HEADER_BYTES:] if message.startswith(SIGNED) else message
        return _head_task(envelope, any_version=True)

    def _open(self, message: bytes, kind: str, most: int | None = None) -> bytes:
        most = self.max_message_bytes if most is None else most
        if len(message) > most:
            check_size(message, most, kind)  # raises, saying by how much
        if self.signer is not None:
            return self.signer.verify(message, kind)
        if not message.startswith(SIGNED):
            return message  # the common case, without a call
        return unsigned(message, kind)  # refuses a signed message, saying why

    def refusal_said(self, message: bytes, error: SignatureError) -> SignatureError:
        """``error`` (``message`` refused as unsigned), or, when ``message`` is a worker's
        unsigned refusal of a task (a single result of type ``SignatureError``: keys on
        one side only, or other keys), an :class:`UnverifiedRefusal` naming the task and
        quoting the answer, shown as unverified: the line said only "unsigned result",
        and a submitter waited for its task until its timeout, told it was queued
        (input17)."""
        if message.startswith(SIGNED) or len(message) > self.max_message_bytes:
            return error
        try:
            result = Result.decode(message)
        except (EnvelopeError, msgspec.DecodeError, RecursionError):
            return error
        if result.status != "error" or result.error_type != "SignatureError":
            return error
        said = shown(result.error_message or "")[:400]
        return UnverifiedRefusal(
            f"{error}: an unsigned answer for task {shown(result.task_id)[:64]}, which "
            f"says (unverified) that worker {shown(result.worker)[:64]} refused it: {said}",
            result.task_id,
            said,
        )


def _head_task(envelope: bytes, any_version: bool = False) -> Task | None:
    """The task whose head ``envelope`` holds, without its arguments; None when no head
    reads, it is of another version (unless ``any_version``), or its reply queue does
    not fit (:meth:`Codec.task_head`, :meth:`Codec.unverified_task_head`)."""
    try:
        head = _task_head(envelope)
    except (EnvelopeError, msgspec.DecodeError, RecursionError):
        return None
    if head.v != VERSION and (not any_version or head.v < 1):  # below 1: no distq message
        return None
    if not fits_reply_to(head.reply_to):
        return None
    return Task(head.name, [], head.reply_to, {}, head.id, head.attempt, head.max_attempts)


_raw_list = msgspec.json.Decoder(list[msgspec.Raw]).decode


def _pack_items(envelope: bytes) -> Sequence[msgspec.Raw] | None:
    """The items of the JSON array ``envelope``, each as its JSON text; None when it holds
    more than :data:`MAX_PREFETCH`, told without making an object for each item past
    that: ``[0,0,...]`` made one of some 64 bytes per 2 bytes of message, 448 MB from 16
    MiB, before the count refused it. Raises as ``_raw_list``."""
    if envelope.count(b",") < MAX_PREFETCH:  # so at most MAX_PREFETCH items: the usual case
        return _raw_list(envelope)
    items = msgspec.structs.astuple(_bounded_pack()(envelope))
    if items[MAX_PREFETCH]:  # an item past MAX_PREFETCH (none is empty JSON text)
        return None
    return items[: bisect.bisect(items, False, key=operator.not_)]  # the items, then empties


_NO_ITEM = msgspec.Raw(b"")


@functools.cache
def _bounded_pack() -> Callable[[bytes], msgspec.Struct]:
    """A decoder of a JSON array into MAX_PREFETCH + 1 slots, each an item's JSON text or
    empty: msgspec reads the items past those without keeping them, so a pack of millions
    costs its parse, not an object each (made on first use: some 15 ms)."""
    slots = [(f"item{n}", msgspec.Raw, _NO_ITEM) for n in range(MAX_PREFETCH + 1)]
    pack = msgspec.defstruct("_BoundedPack", slots, array_like=True, gc=False)
    return msgspec.json.Decoder(pack).decode


def _json_text(string: bytes) -> str:
    """The text of a JSON string's bytes between its quotes, escapes read."""
    return msgspec.json.decode(b'"' + string + b'"', type=str)


def _unread(task_id: str, worker: str, attempt: int, error_type: str, message: str) -> Result:
    """The error result that stands in for a result this process could not read."""
    return Result(
        task_id=task_id,
        status="error",
        worker=worker,
        attempt=attempt,
        started_at=0.0,
        duration=0.0,
        error_type=error_type,
        error_message=message,
    )


class _ResultHead(msgspec.Struct):
    """What a result envelope of any version says of its task, if it says it as v1 does."""

    task_id: str
    worker: str = ""
    attempt: int = 1


_result_head = msgspec.json.Decoder(_ResultHead).decode


class _TaskHead(msgspec.Struct):
    """What a task envelope says of who waits for it: its arguments skipped, unkept."""

    v: int
    id: str
    name: str
    reply_to: str
    attempt: int
    max_attempts: int


_task_head = msgspec.json.Decoder(_TaskHead).decode
