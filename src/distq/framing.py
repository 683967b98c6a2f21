"""Several bodies in one message, each after its 4-byte big-endian length (:func:`pack`).

RabbitMQ's transport sends tasks and results so, several to a message: a master packs
at most :data:`TASKS_PER_MESSAGE` tasks into one, and a worker takes no more from one
(:mod:`distq.transport.rabbitmq_packs`). A worker that finds no task in a message,
whichever transport brought it, says why when the message starts as a pack does
(:func:`pack_problem`, in its dead letter: :mod:`distq.ending`).
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from typing import TypeVar

from distq.counts import counted
from distq.limits import MAX_PREFETCH

#: A master packs at most this many tasks into one message; a worker takes no
#: more from one.
TASKS_PER_MESSAGE = 32
#: What :func:`pack` adds per body: its length.
LENGTH_BYTES = 4
#: Most bodies a pack distq writes holds (a worker's batch of results; tasks: 32), and
#: so most :func:`unpack` reads: a queue writer's 16 MiB of 2-byte bodies made 2.8
#: million of them, 150 MB (128 MiB, RabbitMQ 3's limit: over a GB), before it was
#: refused for holding over 32, and a worker limited to 256 MiB was killed.
MAX_BODIES = MAX_PREFETCH


#: What :func:`unpack` reads: bytes, or a view of them (bodies read without a copy).
_Data = TypeVar("_Data", bytes, memoryview)


class TooManyBodies(ValueError):
    """A pack of more than :data:`MAX_BODIES` bodies: no pack distq writes."""


def pack(bodies: Sequence[bytes]) -> bytes:
    """Several bodies as one message body: each one after its 4-byte length."""
    return b"".join(len(body).to_bytes(4, "big") + body for body in bodies)


def unpack(data: _Data) -> list[_Data]:
    """The bodies :func:`pack` packed; ``ValueError`` if ``data`` is not such
    (:class:`TooManyBodies` past :data:`MAX_BODIES`, read no further)."""
    bodies: list[_Data] = []
    at, end = 0, len(data)
    while at < end:
        if len(bodies) == MAX_BODIES:
            raise TooManyBodies(f"a pack of over {MAX_BODIES:,} bodies")
        size = int.from_bytes(data[at : at + 4], "big")
        if at + 4 + size > end:
            raise ValueError("truncated pack")
        bodies.append(data[at + 4 : at + 4 + size])
        at += 4 + size
    return bodies


#: How a dead letter names a transport whose worker takes one task per message.
_ONE_PER_MESSAGE = {"redis": "Redis", "manager": "the manager"}


def pack_problem(data: bytes, transport: str | None = None) -> str | None:
    """Why ``data``, a message some worker found no task in, is no pack a distq master
    writes, when it starts as one does (a 4-byte length, so a NUL byte: no JSON text
    does); None when it does not. What a worker's dead letter says instead of "not
    UTF-8 at position 3", the low byte of the length (input17). On Redis and the
    manager (``transport``), which have no message types and take no packs, it says
    so: not a missing type (RabbitMQ's). When the transport is not known (a codec made
    without settings, as a ``Worker`` made in Python has), it says both."""
    if not data.startswith(b"\x00") or 4 + int.from_bytes(data[:4], "big") > len(data):
        return None  # not even its first task: UTF-16 or UTF-32 JSON, say (diff17)
    if _utf32_text(data):  # "{" is 00 00 00 7b: a first task of 123 bytes, as long as any
        return None
    if _utf16_text(data):  # '{"' is 00 7b 00 22: a first task of 8,060,962 bytes
        return None
    where = _ONE_PER_MESSAGE.get(transport or "")
    if where is not None:
        return (
            f"{_held(data)}, framed as RabbitMQ's transport frames them (each after its "
            f"4-byte length): a worker on {where} takes one task per message"
        )
    said = _on_rabbitmq(data)
    if transport is None:  # said as RabbitMQ's alone, it misled a worker on Redis
        return f"{said} (on RabbitMQ; a worker on Redis or the manager takes one task per message)"
    return said


def _on_rabbitmq(data: bytes) -> str:
    """Why the pack ``data`` is none a master on RabbitMQ writes (:func:`pack_problem`)."""
    try:  # views: a copy of each body doubled what a pack over the size limit holds
        bodies = unpack(memoryview(data))
    except TooManyBodies:
        return (
            f"a pack of over {MAX_BODIES:,} tasks (distq.tasks), over the {TASKS_PER_MESSAGE} "
            "a worker takes from one message: pack at most that many, or send one per message"
        )
    except ValueError:
        return "a pack of tasks (distq.tasks) cut short: its lengths run past its end"
    if b"" in bodies:
        return "a pack of tasks (distq.tasks) holding an empty one"
    if len(bodies) > TASKS_PER_MESSAGE:
        return (
            f"a pack of {counted(len(bodies), 'task')} (distq.tasks), over the {TASKS_PER_MESSAGE} "
            "a worker takes from one message: pack at most that many, or send one per message"
        )
    return (
        f"a pack of {counted(len(bodies), 'task')} sent without the message type distq.tasks "
        "that says it is one"
    )


def _held(data: bytes) -> str:
    """What the pack ``data`` holds, said where no worker takes a pack at all."""
    try:
        bodies = unpack(memoryview(data))
    except TooManyBodies:
        return f"a pack of over {MAX_BODIES:,} tasks"
    except ValueError:
        return "a pack of tasks cut short"
    return f"a pack of {counted(len(bodies), 'task')}" + (
        ", one of them empty" if b"" in bodies else ""
    )


def _utf32_text(data: bytes) -> bool:
    """Whether ``data`` is UTF-32-BE text, which no pack is: its second 4 bytes, a task's
    first (``{"v"``, or a signature's ``DQSI``), are no code point. Its start tells."""
    if len(data) % 4:
        return False
    try:
        data[:4096].decode("utf-32-be")
    except UnicodeDecodeError:
        return False
    return True


def _utf16_text(data: bytes) -> bool:
    """Whether ``data`` is UTF-16-BE text, which no pack is: its first two characters
    read as a first task's length of 589,824 bytes or more (a line break and ``{``:
    655,483), and that task starts with a NUL byte, the third character's high byte, as
    no task (``{"v"``) nor signature (``DQSI``) does. Its start tells."""
    if len(data) % 2 or data[1] == 0 or data[4] != 0:
        return False
    try:  # not final: a character of two 16-bit units may straddle the 4096th byte
        codecs.utf_16_be_decode(data[:4096], "strict", False)
    except UnicodeDecodeError:
        return False
    return True
