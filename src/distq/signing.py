"""Signed envelopes: an HMAC-SHA256 over the exact bytes of a task or result.

With ``DISTQ_SIGNING_KEYS`` set, every message a master or worker sends is::

    DQSIG2 <key id> <signature>\\n<envelope>

``<envelope>`` is the JSON envelope, byte for byte as without signing; ``<signature>``
is HMAC-SHA256(key, context + envelope) in 64 lowercase hex digits, where the context
(:func:`context`) names the kind of message (task or result) and the task queue, so a
task copied onto another queue, or a task read as a result, does not verify; ``<key
id>`` is the first 8 hex digits of HMAC-SHA256(key, b"distq key id"), which names the
key without revealing it (it lets a reader say "signed with a key I do not have"
instead of "altered"). The signature sits outside the signed bytes, so a reader
verifies exactly the bytes it received and decodes only bytes that verified. Without
keys, messages are the bare JSON envelope, as before signing existed. ``DQSIG1`` (distq
before the queue was bound: the HMAC of the envelope alone) is refused, saying so.

Rotation: the first key signs, every key verifies. Add the new key at the end
everywhere, then move it first everywhere, then drop the old one.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence

from distq.errors import BadSignature, KeyMissing, OldSignature, SignatureError

MAGIC = b"DQSIG2 "
#: The header of the format before the context was signed (a replay across queues ran).
OLD_MAGIC = b"DQSIG1 "
#: What every signed message starts with, of either format: no JSON envelope does.
SIGNED = b"DQSIG"
#: The kinds of message a signature tells apart.
KINDS = ("task", "result")
_ID_LENGTH = 8
_SIG_LENGTH = 64
_HEADER_LENGTH = len(MAGIC) + _ID_LENGTH + 1 + _SIG_LENGTH + 1
#: How many bytes signing adds to a message: the header in front of the envelope.
HEADER_BYTES = _HEADER_LENGTH
_ID_AT, _ID_END = len(MAGIC), len(MAGIC) + _ID_LENGTH
_SIG_AT = _ID_END + 1
MIN_KEY_LENGTH = 16
#: A UTF-8 byte order mark as text: some editors write one at the start of a file.
_BOM = "\ufeff"


def parse_keys(text: str) -> tuple[bytes, ...]:
    """Keys separated by commas or newlines (a file may hold one per line); first signs.

    Each key must be at least ``MIN_KEY_LENGTH`` characters; the ``ValueError`` for one
    that is not never shows it. An empty ``text`` is no keys (signing off); a ``text``
    of only separators and whitespace is a ``ValueError``: someone meant to set a key.
    A UTF-8 byte order mark in front (an editor's) is not part of the first key.
    """
    keys = [key.strip() for key in re.split(r"[,\n]", text.removeprefix(_BOM))]
    keys = [key for key in keys if key]
    if not keys and text:
        raise ValueError(_no_key("commas, line breaks or whitespace"))
    for number, key in enumerate(keys, 1):
        if len(key) < MIN_KEY_LENGTH:
            raise ValueError(
                f"has key {number} of {len(keys)} {len(key)} characters long; use at least "
                f"{MIN_KEY_LENGTH} random characters, e.g. "
                "$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
            )
    return tuple(key.encode(errors="surrogateescape") for key in keys)  # as os.environb


def parse_key(text: str) -> tuple[bytes, ...]:
    """One key (``DISTQ_SIGNING_KEY``): all of ``text`` but the whitespace around it, a
    comma or a line break inside included; empty is no key (signing off), whitespace
    only a ``ValueError``, as :func:`parse_keys` says them; a byte order mark in front
    is not part of it, as there."""
    key = text.removeprefix(_BOM).strip()
    if not key and text:
        raise ValueError(_no_key("whitespace"))
    if key and len(key) < MIN_KEY_LENGTH:
        raise ValueError(
            f"has a key {len(key)} characters long; use at least {MIN_KEY_LENGTH} random "
            "characters, e.g. $(python3 -c 'import secrets; print(secrets.token_hex(32))')"
        )
    return (key.encode(errors="surrogateescape"),) if key else ()


def _no_key(only: str) -> str:
    return (
        f"holds no key, only {only}, so nothing would be signed; set it to keys of at "
        f"least {MIN_KEY_LENGTH} random characters, e.g. "
        "$(python3 -c 'import secrets; print(secrets.token_hex(32))'), or unset it "
        "to turn signing off"
    )


def key_id(key: bytes) -> str:
    """The public name of ``key``: 8 hex digits of an HMAC under it, not the key itself."""
    return hmac.new(key, b"distq key id", hashlib.sha256).hexdigest()[:_ID_LENGTH]


def context(kind: str, queue: str) -> bytes:
    """What a signature covers in front of the envelope: the kind of message and the task
    queue, prefixed with its length in bytes (so no two pairs run into each other; in
    characters, 'é' and a NUL read as the two bytes of 'é' escaped) and zero-padded to
    whole SHA-256 blocks, which :class:`_Keyed` hashes once per process, not per message."""
    name = queue.encode(errors="surrogateescape")  # as os.environ gives a name's bytes
    text = b"distq %s %d:%s" % (kind.encode(), len(name), name)
    return text.ljust(-(-len(text) // _BLOCK) * _BLOCK, b"\0")


class Signer:
    """Signs with the first of ``keys`` and accepts a signature by any of them, for the
    messages of task queue ``queue`` (the tasks, and the results of its tasks)."""

    def __init__(self, keys: Sequence[bytes], queue: str = "distq") -> None:
        if not keys:
            raise ValueError("a Signer needs at least one key")
        self.queue = queue
        # an HMAC keyed once per key and kind and copied per message: the key's inner
        # block and the context are hashed once, not per message
        self._signing = {kind: _Keyed(keys[0], context(kind, queue)) for kind in KINDS}
        self._prefix = MAGIC + key_id(keys[0]).encode() + b" "
        self._keys = {
            kind: {key_id(key).encode(): _Keyed(key, context(kind, queue)) for key in keys}
            for kind in KINDS
        }
        self._headers = {
            kind: {MAGIC + kid + b" ": keyed for kid, keyed in by_id.items()}
            for kind, by_id in self._keys.items()
        }

    def sign(self, envelope: bytes, kind: str) -> bytes:
        """``envelope``, a ``kind`` (task or result), with its signature header in front."""
        mac = self._signing[kind].hexdigest(envelope)
        return b"".join((self._prefix, mac, b"\n", envelope))

    def signed_by_each(self, envelope: bytes, kind: str) -> list[bytes]:
        """``envelope`` as :meth:`sign` makes it with each key accepted, the first key's
        first: what a process signing with any of them sends (a key rotation's middle)."""
        return [
            b"".join((MAGIC, kid, b" ", keyed.hexdigest(envelope), b"\n", envelope))
            for kid, keyed in self._keys[kind].items()
        ]

    def verify(self, message: bytes, kind: str) -> bytes:
        """The envelope inside ``message`` once its signature checks out as a ``kind``.

        Raises :class:`SignatureError` saying whether ``message`` is unsigned, signed
        with a key this process does not hold, or signed wrongly (for another queue,
        altered, or forged).
        """
        # the common case, in few steps: the header up to the signature names a key of
        # ours (magic, key id and space in one lookup); slices, so a short message fails
        key = self._headers[kind].get(message[:_SIG_AT])
        envelope = message[_HEADER_LENGTH:]
        if (
            key is not None
            and message[_HEADER_LENGTH - 1 : _HEADER_LENGTH] == b"\n"
            and hmac.compare_digest(key.hexdigest(envelope), message[_SIG_AT : _HEADER_LENGTH - 1])
        ):
            return envelope
        if message.startswith(OLD_MAGIC):
            raise OldSignature(_old_format(kind))
        if not message.startswith(MAGIC):
            raise SignatureError(
                f"unsigned {kind}: this process requires signatures (DISTQ_SIGNING_KEYS is set)"
            )
        header = message[:_HEADER_LENGTH]
        kid, mac = header[len(MAGIC) : len(MAGIC) + _ID_LENGTH], header[-_SIG_LENGTH - 1 : -1]
        if (
            len(header) < _HEADER_LENGTH
            or header[len(MAGIC) + _ID_LENGTH] != 0x20
            or header[-1] != 0x0A
        ):
            raise SignatureError(f"{kind} has a malformed signature header")
        key = self._keys[kind].get(kid)
        if key is None:
            shown = kid.decode(errors="replace")
            raise KeyMissing(
                f"{kind} signed with another key (key id {shown!r}), "
                "not one of this process's DISTQ_SIGNING_KEYS"
            )
        envelope = message[_HEADER_LENGTH:]
        if not hmac.compare_digest(key.hexdigest(envelope), mac):
            # what runs it: the keys are the same (a task moved between queues, most likely)
            fix = f"; submit it to queue {self.queue!r} itself" if kind == "task" else ""
            raise BadSignature(
                f"{kind} has a bad signature for key id {kid.decode()!r}: signed for "
                f"another queue than {self.queue!r} (or not as a {kind}), altered after "
                f"signing, or forged{fix}"
            )
        return envelope


class _Keyed:
    """HMAC-SHA256 under one key (RFC 2104), its padded key blocks hashed once.

    Per message it copies two ``hashlib`` states, half the cost of copying an
    ``hmac.HMAC`` (a Python object around the same two states); the digest is the same,
    checked against :func:`hmac.new` by the tests.
    """

    def __init__(self, key: bytes, context: bytes = b"") -> None:
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(key.translate(_IPAD))
        self._inner.update(context)  # whole blocks: nothing left buffered to copy
        self._outer = hashlib.sha256(key.translate(_OPAD))

    def hexdigest(self, data: bytes) -> bytes:
        """The HMAC of ``data`` in lowercase hex, as bytes."""
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest().encode()


_BLOCK = hashlib.sha256().block_size
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def _old_format(kind: str) -> str:
    return (
        f"{kind} signed by an older distq (format DQSIG1, whose signature does not bind "
        "its queue), which this one refuses: upgrade every master and worker that "
        "signs (the README's upgrade notes)"
    )


def unsigned(message: bytes, kind: str) -> bytes:
    """What a process without keys reads: bare envelopes; a signed one is refused."""
    if message.startswith(SIGNED):
        raise KeyMissing(
            f"signed {kind}, but this process has no signing key: set DISTQ_SIGNING_KEYS "
            "to the keys of the process that sent it"
        )
    return message
