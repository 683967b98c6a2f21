"""Packs of task bodies (distq.framing): what a worker's dead letter says of a message
that starts with a NUL byte."""

from __future__ import annotations

import pytest

from distq.ending import Endings
from distq.envelope import DeadLetter, Task
from distq.errors import EnvelopeError
from distq.framing import pack, pack_problem, unpack
from distq.transport import Delivery


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


def test_packs_of_tasks_are_still_said_to_be_packs() -> None:
    tasks = [Task("square", [n], "replies").encode() for n in range(3)]
    assert unpack(pack(tasks)) == tasks
    assert pack_problem(pack(tasks)) == (
        "a pack of 3 task(s) sent without the message type distq.tasks that says it is one"
    )
    cut = pack(tasks)[:-5]
    assert pack_problem(cut) == (
        "a pack of tasks (distq.tasks) cut short: its lengths run past its end"
    )
