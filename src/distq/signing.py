"""Signed envelopes: a keyed BLAKE2b over the exact bytes of a task or result.

With ``DISTQ_SIGNING_KEYS`` set, every message a master or worker sends is::

    DQSIG3 <key id> <signature>\\n<envelope>

``<envelope>`` is the JSON envelope, byte for byte as without signing; ``<signature>``
is keyed BLAKE2b-256 of the envelope in 64 lowercase hex digits, under a key derived
once per process from the key and a context (:func:`context`) that names the kind of
message (task or result) and the task queue: HMAC-SHA256(key, b"distq DQSIG3 " +
context). Another queue or kind is another derived key, so a task copied onto another
queue, or a task read as a result, does not verify. Keyed BLAKE2b is the hashlib docs'
"faster and simpler replacement for HMAC": one hash state copied per message, where
HMAC-SHA256 copies two and hashes twice. ``<key id>`` is the first 8 hex digits of
HMAC-SHA256(key, b"distq key id"), which names the key without revealing it (it lets a
reader say "signed with a key I do not have" instead of "altered"). The signature sits
outside the signed bytes, so a reader verifies exactly the bytes it received and decodes
only bytes that verified. Without keys, messages are the bare JSON envelope, as before
signing existed.

An envelope over ``BLAKE2B_MOST`` (512) bytes, such as a pack of results, is signed
``DQSIG2`` instead: HMAC-SHA256(key, context + envelope), the context zero-padded to
whole SHA-256 blocks (and hashed once per process), as distq before DQSIG3 signed every
message; where SHA-256 runs on the CPU's SHA extensions it hashes long messages faster.
Formats read: ``DQSIG3`` and ``DQSIG2``, so messages of processes not yet upgraded
verify during an upgrade. A worker signs a result, or a retry, in the format of the
task it answers (``answering`` in :meth:`Signer.sign`): a master that signs DQSIG3 reads
it; an older one, and an older worker, reads only DQSIG2. So upgrading the workers of a
queue first, then its masters, never leaves a message unread. ``DQSIG1`` (before the
queue was bound: the HMAC of the envelope alone) is refused, saying so; a format newer
than these (a future ``DQSIG4``) is refused saying to upgrade every process of the queue
to it.

Rotation: the first key signs, every key verifies. Add the new key at the end
everywhere, then move it first everywhere, then drop the old one.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from distq.counts import counted
from distq.errors import BadSignature, KeyMissing, NewerSignature, OldSignature, SignatureError

_Item = TypeVar("_Item")
#: The header of the format this distq signs (keyed BLAKE2b).
MAGIC = b"DQSIG3 "
#: The header of the format before it (HMAC-SHA256), still read: a rolling upgrade.
HMAC_MAGIC = b"DQSIG2 "
#: The header of the format before the context was signed (a replay across queues ran).
OLD_MAGIC = b"DQSIG1 "
#: What every signed message starts with, of any format: no JSON envelope does.
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
_NEWLINE_AT = _HEADER_LENGTH - 1
#: Compares a signature with the one made, in a time that does not say where they differ.
_same = hmac.compare_digest
#: The longest envelope signed DQSIG3: BLAKE2b's fixed cost per message is less than
#: HMAC-SHA256's, its cost per byte more where SHA-256 runs on the CPU's SHA extensions
#: (most x86 and ARM servers): a longer envelope (a pack of results) is signed DQSIG2.
#: Verify by envelope size on such a host, µs: 100 bytes 1.08 HMAC, 0.77 BLAKE2b; 400
#: 1.25, 1.18; 700 1.46, 1.46; 2,000 2.23, 2.87; 8,000 5.92, 9.31.
BLAKE2B_MOST = 512
#: The header of a format newer than this distq reads: "DQSIG" and a number from 4.
_FORMAT = re.compile(rb"DQSIG([4-9]|[1-9][0-9]{1,5}) ")
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
                f"has key {number} of {len(keys)} {length_said(len(key), 'character')}; "
                "use at least "
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
            f"has a key {length_said(len(key), 'character')}; use at least {MIN_KEY_LENGTH} random "
            "characters, e.g. $(python3 -c 'import secrets; print(secrets.token_hex(32))')"
        )
    return (key.encode(errors="surrogateescape"),) if key else ()


def length_said(count: int, unit: str) -> str:
    """A short key's length as its error says it: "1 character long", "5 characters long"."""
    return f"{counted(count, unit)} long"


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
    """What a signature binds besides the envelope: the kind of message and the task
    queue, prefixed with its length in bytes (so no two pairs run into each other; in
    characters, 'é' and a NUL read as the two bytes of 'é' escaped) and zero-padded to
    whole SHA-256 blocks (DQSIG2 hashes it in front of the envelope, once per process)."""
    name = queue.encode(errors="surrogateescape")  # as os.environ gives a name's bytes
    text = b"distq %s %d:%s" % (kind.encode(), len(name), name)
    return text.ljust(-(-len(text) // _BLOCK) * _BLOCK, b"\0")


def _blake2b(keyed: hashlib.blake2b) -> Callable[[bytes], bytes]:
    """DQSIG3's MAC of a key's :func:`_keyed` state, in lowercase hex, as bytes: the
    state copied per message."""
    copy = keyed.copy

    def mac(data: bytes) -> bytes:
        state = copy()
        state.update(data)
        return state.hexdigest().encode()

    return mac


def _keyed(key: bytes, kind: str, queue: str) -> hashlib.blake2b:
    """The DQSIG3 hash state of ``key`` for messages of ``kind`` on ``queue``, copied per
    message: keyed BLAKE2b-256 under HMAC-SHA256(key, b"distq DQSIG3 " + context), a
    key of its own per kind and queue (and of any key's length: BLAKE2b takes at most
    64 bytes). No DQSIG2 context starts "DQSIG3", so no DQSIG2 signature, which a
    reader sees, is ever a derived key."""
    derived = hmac.new(key, b"distq DQSIG3 " + context(kind, queue), hashlib.sha256).digest()
    return hashlib.blake2b(key=derived, digest_size=_SIG_LENGTH // 2)


class Signer:
    """Signs with the first of ``keys`` and accepts a signature by any of them, for the
    messages of task queue ``queue`` (the tasks, and the results of its tasks): signs
    DQSIG3 (DQSIG2 an envelope over ``BLAKE2B_MOST`` bytes), reads DQSIG3 and DQSIG2."""

    def __init__(self, keys: Sequence[bytes], queue: str = "distq") -> None:
        if not keys:
            raise ValueError("a Signer needs at least one key")
        self.queue = queue
        named = {key_id(key).encode(): key for key in keys}  # one given twice counts once
        first = key_id(keys[0]).encode()
        # per kind, each key's two states, its key hashed once per process: DQSIG3's
        # (keyed BLAKE2b) and DQSIG2's (HMAC-SHA256), by their headers up to the signature
        # (magic, key id, space: one lookup)
        blake2b = {
            kind: {MAGIC + kid + b" ": _keyed(key, kind, queue) for kid, key in named.items()}
            for kind in KINDS
        }
        hmacs = {
            kind: {
                HMAC_MAGIC + kid + b" ": _Keyed(key, context(kind, queue))
                for kid, key in named.items()
            }
            for kind in KINDS
        }
        # per kind, the MAC of each key in each format by its header
        self._macs: dict[str, dict[bytes, Callable[[bytes], bytes]]] = {
            kind: {
                **{header: _blake2b(keyed) for header, keyed in blake2b[kind].items()},
                **{header: keyed.hexdigest for header, keyed in hmacs[kind].items()},
            }
            for kind in KINDS
        }
        # per kind, a state of each key by its header, made and read alike in both formats:
        # the MAC made inline, without a call (most messages), and a DQSIG2 message (a pack
        # of results) verified without a KeyError raised and caught first
        self._states: dict[str, dict[bytes, Callable[[], _State]]] = {
            kind: {
                **{header: keyed.copy for header, keyed in blake2b[kind].items()},
                **{header: keyed.state for header, keyed in hmacs[kind].items()},
            }
            for kind in KINDS
        }
        # per kind, the first key's DQSIG3 header and its hash state's copy: what signs
        # an envelope up to ``BLAKE2B_MOST`` bytes
        self._signing = {
            kind: (MAGIC + first + b" ", blake2b[kind][MAGIC + first + b" "].copy) for kind in KINDS
        }
        # per kind, the first key's DQSIG2 header and MAC: what signs a longer envelope
        self._hmac_signing = {
            kind: (HMAC_MAGIC + first + b" ", hmacs[kind][HMAC_MAGIC + first + b" "].hexdigest)
            for kind in KINDS
        }

    def sign(self, envelope: bytes, kind: str, answering: bytes | None = None) -> bytes:
        """``envelope``, a ``kind`` (task or result), with its signature header in front;
        in the format of ``answering``, the message of the task it answers (its result or
        retry), when that came DQSIG2: an older master, and an older worker, reads only
        DQSIG2 (workers are upgraded first, beside older masters)."""
        if len(envelope) <= BLAKE2B_MOST and (answering is None or answering.startswith(MAGIC)):
            header, copy = self._signing[kind]
            state = copy()
            state.update(envelope)
            return b"".join((header, state.hexdigest().encode(), b"\n", envelope))
        header, mac = self._hmac_signing[kind]
        return b"".join((header, mac(envelope), b"\n", envelope))

    def seal_tasks(
        self, tasks: Sequence[_Item], envelope_of: Callable[[_Item], bytes | None], most: int
    ) -> list[bytes] | None:
        """The envelope of each of ``tasks`` (``envelope_of``, called here: one call less
        a task than through ``map``), as :meth:`sign` makes it (a master's batch): the
        header and hash state bound once per batch, each DQSIG3 MAC made inline. None
        when an envelope is None (not made) or would be over ``most`` bytes once signed:
        the caller seals the tasks one by one, saying which: a sequence, since that
        retry reads ``tasks`` again from its start."""
        header, copy = self._signing["task"]
        sign, join = self.sign, b"".join
        # an envelope up to this long is signed DQSIG3 and within ``most`` once signed:
        # one length checked a task, not the envelope's and then the message's
        inline = min(BLAKE2B_MOST, most - _HEADER_LENGTH)
        sealed = []
        for task in tasks:
            envelope = envelope_of(task)
            if envelope is None:
                return None
            if len(envelope) <= inline:
                state = copy()
                state.update(envelope)
                sealed.append(join((header, state.hexdigest().encode(), b"\n", envelope)))
                continue
            body = sign(envelope, "task")
            if len(body) > most:
                return None
            sealed.append(body)
        return sealed

    def signed_by_each(self, envelope: bytes, kind: str) -> list[bytes]:
        """``envelope`` as :meth:`sign` makes it with each key accepted, the first key's
        first: what a process signing with any of them sends (a key rotation's middle)."""
        magic = MAGIC if len(envelope) <= BLAKE2B_MOST else HMAC_MAGIC
        return [
            b"".join((header, mac(envelope), b"\n", envelope))
            for header, mac in self._macs[kind].items()
            if header.startswith(magic)
        ]

    def verify(self, message: bytes, kind: str) -> bytes:
        """The envelope inside ``message`` once its signature checks out as a ``kind``.

        Raises :class:`SignatureError` saying whether ``message`` is unsigned, signed
        with a key this process does not hold, signed wrongly (for another queue,
        altered, or forged), or in a format this distq does not read. One MAC at most
        per call, however it ends: a message may be 128 MiB.
        """
        # the header up to the signature names a key of ours in DQSIG3 or DQSIG2 (magic,
        # key id and space in one lookup), and a newline ends it; else refused
        try:
            new = self._states[kind][message[:_SIG_AT]]
            newline = message[_NEWLINE_AT]
        except (KeyError, IndexError):  # IndexError: shorter than a header
            raise self._refusal(message, kind) from None
        if newline != 0x0A:
            raise self._refusal(message, kind)
        envelope = message[_HEADER_LENGTH:]
        state = new()
        state.update(envelope)
        if _same(state.hexdigest().encode(), message[_SIG_AT:_NEWLINE_AT]):
            return envelope
        raise self._bad(kind, message[_ID_AT:_ID_END])

    def _refusal(self, message: bytes, kind: str) -> SignatureError:
        """Why :meth:`verify` refuses ``message``, which is not a well-formed message of
        a key of ours in a format this distq reads."""
        if message.startswith(OLD_MAGIC):
            return OldSignature(_old_format(kind))
        if not message.startswith(SIGNED):
            return SignatureError(
                f"unsigned {kind}: this process requires signatures (DISTQ_SIGNING_KEYS is set)"
            )
        newer = newer_format(message, kind, self.queue)
        if newer is not None:
            return newer
        known = message.startswith(MAGIC) or message.startswith(HMAC_MAGIC)
        header = message[:_HEADER_LENGTH]
        if (
            not known
            or len(header) < _HEADER_LENGTH
            or header[_ID_END] != 0x20
            or header[-1] != 0x0A
        ):
            return SignatureError(f"{kind} has a malformed signature header")
        shown = header[_ID_AT:_ID_END].decode(errors="replace")
        return KeyMissing(
            f"{kind} signed with another key (key id {shown!r}), "
            "not one of this process's DISTQ_SIGNING_KEYS"
        )

    def _bad(self, kind: str, kid: bytes) -> BadSignature:
        # what runs it: the keys are the same (a task moved between queues, most likely)
        fix = f"; submit it to queue {self.queue!r} itself" if kind == "task" else ""
        return BadSignature(
            f"{kind} has a bad signature for key id {kid.decode()!r}: signed for "
            f"another queue than {self.queue!r} (or not as a {kind}), altered after "
            f"signing, or forged{fix}"
        )


class _Keyed:
    """DQSIG2's HMAC-SHA256 under one key (RFC 2104), its padded key blocks and context
    hashed once: per message it copies two ``hashlib`` states, half the cost of copying
    an ``hmac.HMAC``; the digest is the same, checked against :func:`hmac.new` by the
    tests."""

    def __init__(self, key: bytes, context: bytes = b"") -> None:
        if len(key) > _BLOCK:
            key = hashlib.sha256(key).digest()
        key = key.ljust(_BLOCK, b"\0")
        self._inner = hashlib.sha256(key.translate(_IPAD))
        self._inner.update(context)  # whole blocks: nothing left buffered to copy
        self._outer = hashlib.sha256(key.translate(_OPAD))

    def state(self) -> _KeyedState:
        """A state to feed a message and read its HMAC from, as a ``hashlib`` one's."""
        return _KeyedState(self._inner.copy(), self._outer)

    def hexdigest(self, data: bytes) -> bytes:
        """The HMAC of ``data`` in lowercase hex, as bytes."""
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest().encode()


class _State(Protocol):
    """A hash state a message is fed to and its MAC read from, of either format."""

    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


class _KeyedState:
    """:class:`_Keyed`'s HMAC of one message, as a ``hashlib`` state is read: fed, then
    read once."""

    __slots__ = ("_inner", "_outer")

    def __init__(self, inner: hashlib._Hash, outer: hashlib._Hash) -> None:
        self._inner, self._outer = inner, outer

    def update(self, data: bytes) -> None:
        self._inner.update(data)

    def hexdigest(self) -> str:
        outer = self._outer.copy()
        outer.update(self._inner.digest())
        return outer.hexdigest()


_BLOCK = hashlib.sha256().block_size
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def _old_format(kind: str) -> str:
    return (
        f"{kind} signed by an older distq (format DQSIG1, whose signature does not bind "
        "its queue), which this one refuses: upgrade every master and worker that "
        "signs (the README's upgrade notes)"
    )


def newer_format(message: bytes, kind: str, queue: str) -> NewerSignature | None:
    """Why ``message``, a ``kind`` of task queue ``queue``, is refused when a newer distq
    signed it (``DQSIG4`` on), whatever keys a process holds; None for any other."""
    newer = _FORMAT.match(message)
    if newer is None:
        return None
    return NewerSignature(
        f"{kind} signed in format DQSIG{newer[1].decode()}, which a newer distq writes and "
        "this one does not read (it reads DQSIG2 and DQSIG3): upgrade every master and "
        f"worker of queue {queue!r} to the distq that sent it"
    )


def unsigned(message: bytes, kind: str) -> bytes:
    """What a process without keys reads: bare envelopes; a signed one is refused."""
    if message.startswith(SIGNED):
        raise KeyMissing(
            f"signed {kind}, but this process has no signing key: set DISTQ_SIGNING_KEYS "
            "to the keys of the process that sent it"
        )
    return message
