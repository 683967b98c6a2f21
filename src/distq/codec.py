"""Envelopes to and from the wire: size limit, then signature, then decoding, in that order.

A master seals tasks and opens results; a worker opens tasks and seals results and
retries. Opening checks the size before anything reads the body, and the signature
before the JSON parser sees a byte; every refusal is an
:class:`~distq.errors.EnvelopeError` whose message is the reason (the worker puts it in
the dead letter, the master in its warning).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from distq.envelope import SHALLOW_NESTING, Result, Task
from distq.errors import MessageTooLarge
from distq.limits import DEFAULT_MAX_MESSAGE_BYTES, MAX_NESTING, check_nesting, check_size
from distq.signing import MAGIC, Signer, unsigned

if TYPE_CHECKING:
    from distq.config import Settings

assert SHALLOW_NESTING <= MAX_NESTING  # what the fast path writes needs no counting


class Codec:
    """Seals and opens messages with one process's signing keys and size limit.

    Without keys, a sealed message is the bare JSON envelope (what distq sent before
    signing existed) and an opened one must be unsigned; see :mod:`distq.signing`.
    """

    def __init__(
        self,
        signing_keys: Sequence[bytes] = (),
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.signer = Signer(signing_keys) if signing_keys else None
        self.max_message_bytes = max_message_bytes

    @classmethod
    def from_settings(cls, settings: Settings) -> Codec:
        return cls(settings.signing_keys, settings.max_message_bytes)

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
            raise MessageTooLarge(
                f"task {task.name} [{task.id}] cannot be submitted: {exc}; pass large data "
                "by reference (a path, a URL, a key) or raise DISTQ_MAX_MESSAGE_BYTES"
            ) from None

    def seal_result(self, result: Result) -> bytes:
        """The result as sent (see :meth:`seal`)."""
        envelope = result.encode_shallow()  # no nesting to count
        if envelope is None:
            return self.seal(result.encode(), "result")
        return self._sign(envelope, "result")

    def seal(self, envelope: bytes, kind: str) -> bytes:
        """``envelope`` signed (when keys are set) and checked against the limits."""
        check_nesting(envelope, kind)
        return self._sign(envelope, kind)

    def _sign(self, envelope: bytes, kind: str) -> bytes:
        """``envelope``, known to nest within the limit, signed and checked for size."""
        message = envelope if self.signer is None else self.signer.sign(envelope)
        if len(message) > self.max_message_bytes:
            raise MessageTooLarge(
                f"{kind} would be {len(message):,} bytes, over the limit of "
                f"{self.max_message_bytes:,} (DISTQ_MAX_MESSAGE_BYTES)"
            )
        return message

    def open_task(self, message: bytes) -> Task:
        return Task.decode(self._open(message, "task"))

    def open_result(self, message: bytes) -> Result:
        return Result.decode(self._open(message, "result"))

    def _open(self, message: bytes, kind: str) -> bytes:
        if len(message) > self.max_message_bytes:
            check_size(message, self.max_message_bytes, kind)  # raises, saying by how much
        if self.signer is not None:
            return self.signer.verify(message, kind)
        if not message.startswith(MAGIC):
            return message  # the common case, without a call
        return unsigned(message, kind)  # refuses a signed message, saying why
