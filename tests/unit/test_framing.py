"""Packs of task bodies (distq.framing): what a worker's dead letter says of a message
that starts with a NUL byte."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable

import pytest

from distq.codec import Codec
from distq.config import Settings
from distq.ending import Endings
from distq.envelope import DeadLetter, Task
from distq.errors import EnvelopeError
from distq.framing import pack, pack_problem, unpack
from distq.limits import MAX_PREFETCH
from distq.transport import Delivery
from distq.transport.rabbitmq_packs import TASKS_TYPE, packed, task_bodies
from seam import dead_letter_reason


@pytest.mark.parametrize("encoding", ["utf-32-be", "utf-16-be"])
def test_a_whole_task_in_utf32_or_utf16_is_not_said_to_be_a_pack(encoding: str) -> None:
    """A task as any submitter writes it (some 200 bytes, 800 in UTF-32), not only a
    7-character one: UTF-32-BE JSON starts ``00 00 00 7b``, read as a first body of 123
    bytes, which a real task is longer than; its dead letter said "a pack of tasks
    (distq.tasks) cut short", losing the reason that names the encodings."""
    body = Task("square", [3], "replies").encode().decode().encode(encoding)
    assert pack_problem(body) is None
    endings = Endings("w1", "q")
    with pytest.raises(EnvelopeError) as caught:
        endings.codec.open_task(body)
    letter = endings.malformed(Delivery(body, 1), caught.value).settlement.dead_letter
    assert letter is not None
    reason = DeadLetter.decode(letter).reason
    assert "UTF-16 or UTF-32? distq reads UTF-8" in reason, reason


@pytest.mark.parametrize(
    ("before", "size", "limit"),
    [
        ("", 8_100_000, 16 << 20),
        ("\n", 700_000, 1 << 20),
        (" ", 2_200_000, 4 << 20),
        ("\n\U0001f600", 800_000, 1 << 20),  # a character of 4 bytes over the 4096th
        ("\na\U0001f600", 800_000, 1 << 20),
    ],
)
def test_a_large_task_in_utf16_is_not_said_to_be_a_pack(before: str, size: int, limit: int) -> None:
    """UTF-16-BE JSON's first two characters read as a first task's length: ``{"`` as
    8,060,962 bytes, a line break and ``{`` as 655,483 (within the default 1 MiB limit),
    a space and ``{`` as 2,097,275. A task that long, or longer, was said to be "a pack of
    tasks (distq.tasks) cut short", losing the reason that names the encodings."""
    emoji = "\U0001f600" in before  # its argument all 4-byte characters, from the start
    before, pad = ("\n", before[1:-1]) if emoji else (before, "")
    value = pad + "\U0001f600" * (size // 4) if emoji else "x" * (size // 2)
    text = before + Task("square", [value], "replies").encode().decode()
    body = text.encode("utf-16-be")
    assert len(body) <= limit
    endings = Endings("w1", "q", Codec(max_message_bytes=limit))
    with pytest.raises(EnvelopeError) as caught:
        endings.codec.open_task(body)
    letter = endings.malformed(Delivery(body, 1), caught.value).settlement.dead_letter
    assert letter is not None
    reason = DeadLetter.decode(letter).reason
    said = "not UTF-8" if emoji else "UTF-16 or UTF-32? distq reads UTF-8"
    assert said in reason and "a pack of" not in reason, reason[:200]
    assert pack_problem(body) is None
    big = Task("square", ["x" * size], "replies").encode()  # a first task as long, in a pack
    assert (pack_problem(pack([big, big])) or "").startswith("a pack of 2 tasks")


def test_packs_of_tasks_are_still_said_to_be_packs() -> None:
    tasks = [Task("square", [n], "replies").encode() for n in range(3)]
    assert unpack(pack(tasks)) == tasks
    assert pack_problem(pack(tasks), "rabbitmq") == (
        "a pack of 3 tasks sent without the message type distq.tasks that says it is one"
    )
    cut = pack(tasks)[:-5]
    assert pack_problem(cut, "rabbitmq") == (
        "a pack of tasks (distq.tasks) cut short: its lengths run past its end"
    )


def _peak_while(call: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_pack_of_millions_of_tiny_bodies_is_refused_without_reading_them_all() -> None:
    """A queue writer's message of type distq.tasks (or distq.results) holding 4 MiB of
    2-byte bodies: unpack read all 700,000 of them, some 37 MB (9 times the message;
    RabbitMQ 3 takes 128 MiB ones: over a GB, a worker limited to 256 MiB killed, and
    the next one that took the message too), before the consumer refused it for
    holding over 32 (a result pack: over a batch)."""
    body = ((2).to_bytes(4, "big") + b"ab") * ((4 << 20) // 6)
    assert _peak_while(lambda: task_bodies(TASKS_TYPE, body)) < 2 << 20
    assert task_bodies(TASKS_TYPE, body) == [body]  # refused whole, as before
    assert packed(body, MAX_PREFETCH) is None  # a master's read of a results pack
    assert _peak_while(lambda: pack_problem(body)) < 2 << 20
    assert pack_problem(body, "rabbitmq") == (
        "a pack of over 10,000 tasks (distq.tasks), over the 32 a worker takes from one "
        "message: pack at most that many, or send one per message"
    )


def test_a_pack_of_as_many_bodies_as_a_batch_still_unpacks() -> None:
    bodies = [b"{}"] * MAX_PREFETCH
    assert unpack(pack(bodies)) == bodies
    assert packed(pack(bodies), MAX_PREFETCH) == bodies


def _reason(endings: Endings, body: bytes) -> str:
    with pytest.raises(EnvelopeError) as caught:
        endings.codec.open_task(body)
    letter = endings.malformed(Delivery(body, 1), caught.value).settlement.dead_letter
    assert letter is not None
    return DeadLetter.decode(letter).reason


def _packs() -> list[bytes]:
    tasks = [Task("square", [n], "replies").encode() for n in range(40)]
    return [
        pack(tasks[:2]),
        pack(tasks[:33]),
        pack(tasks[:2])[:-5],
        pack([tasks[0], b""]),
        ((2).to_bytes(4, "big") + b"ab") * (MAX_PREFETCH + 1),
    ]


@pytest.mark.parametrize(("transport", "where"), [("redis", "Redis"), ("manager", "the manager")])
def test_a_pack_on_redis_or_the_manager_is_not_said_to_lack_a_message_type(
    transport: str, where: str
) -> None:
    """Only RabbitMQ's messages have a type: a framed pack on Redis or the manager (a
    queue writer's, or a RabbitMQ message moved there) was dead-lettered as "sent
    without the message type distq.tasks that says it is one", or told to "pack at most"
    32, where a worker takes one task per message whatever it is sent with. A worker
    the CLI starts has its codec from its settings (Codec.from_settings)."""
    endings = Endings("w1", "q", Codec.from_settings(Settings(transport=transport)))
    for body in _packs():
        reason = _reason(endings, body)
        assert "message type" not in reason and "pack at most" not in reason, reason
        assert reason.startswith("malformed message: a pack of "), reason
        assert reason.endswith(f": a worker on {where} takes one task per message"), reason


def test_a_pack_on_rabbitmq_is_said_as_before() -> None:
    endings = Endings("w1", "q", Codec.from_settings(Settings(transport="rabbitmq")))
    said = [_reason(endings, body) for body in _packs()]
    assert said == [
        "malformed message: a pack of 2 tasks sent without the message type distq.tasks "
        "that says it is one",
        "malformed message: a pack of 33 tasks (distq.tasks), over the 32 a worker takes "
        "from one message: pack at most that many, or send one per message",
        "malformed message: a pack of tasks (distq.tasks) cut short: its lengths run past its end",
        "malformed message: a pack of tasks (distq.tasks) holding an empty one",
        "malformed message: a pack of over 10,000 tasks (distq.tasks), over the 32 a worker "
        "takes from one message: pack at most that many, or send one per message",
    ]


KEY = b"0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("signed", [True, False])
def test_a_pack_reaching_a_worker_with_keys_is_said_to_be_a_pack_not_unsigned(
    signed: bool,
) -> None:
    """A signing master's pack of signed tasks, sent without its type (or on Redis), to
    a worker with the same keys: the message starts with a length, not a signature, so
    its dead letter said "refused: unsigned task: this process requires signatures",
    and the operator looked for a key that was there all along."""
    codec = Codec([KEY], transport="rabbitmq")
    sender = codec if signed else Codec()
    body = pack([sender.seal_task(Task("square", [n], "replies")) for n in range(2)])
    endings = Endings("w1", "q", codec)
    with pytest.raises(EnvelopeError) as caught:
        codec.open_task(body)
    ending = endings.malformed(Delivery(body, 1), caught.value)
    assert ending.settlement.result is None
    reason = dead_letter_reason(ending)
    assert reason == (
        "malformed message: a pack of 2 tasks sent without the message type distq.tasks "
        "that says it is one"
    ), reason
    assert ending.note == f"dead-lettered a {reason}"
    single = Codec().seal_task(Task("square", [1], "replies"))
    with pytest.raises(EnvelopeError) as caught:  # an unsigned task alone: refused as before
        codec.open_task(single)
    letter = endings.malformed(Delivery(single, 1), caught.value).settlement.dead_letter
    assert DeadLetter.decode(letter or b"").reason.startswith("refused: unsigned task")


def test_a_pack_of_one_task_is_said_in_the_singular() -> None:
    """It said "a pack of 1 task(s)" on every transport."""
    one = pack([Task("square", [1], "replies").encode()])
    assert pack_problem(one, "rabbitmq") == (
        "a pack of 1 task sent without the message type distq.tasks that says it is one"
    )
    assert (pack_problem(one, "redis") or "").startswith("a pack of 1 task, framed as RabbitMQ's")
    assert (pack_problem(one) or "").startswith("a pack of 1 task sent without the message type")
