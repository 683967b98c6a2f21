"""The envelope version "v": a whole number, 1 here; anything else is said so."""

from __future__ import annotations

import json

import pytest

from distq.codec import Codec
from distq.envelope import DeadLetter, Result, Task
from distq.errors import EnvelopeError

TASK = json.loads(Task("square", [3], "replies", id="t1", created_at=1.0).encode())
RESULT = json.loads(Result("t1", "ok", "w", 1, 1.0, 0.5, 9).encode())
LETTER = json.loads(DeadLetter(b"x", "r", "q", "w", 1.0).encode())


@pytest.mark.parametrize("version", [True, 1.0, 2.0])
def test_a_version_that_is_not_a_whole_number_is_no_version_in_any_envelope(
    version: object,
) -> None:
    """JSON's ``true`` and ``1.0`` are not the whole number 1: the fast decoder refused
    them, and the reference one took them for version 1 (Python's ``True == 1.0 == 1``)
    and ran the task, while "v": 2.0 was said to be no version and "attempt": true the
    wrong type."""
    said = f'has no envelope version (a whole number in "v"; it has {version!r})'
    for envelope, decode, kind in (
        (TASK, Codec().open_task, "task"),
        (RESULT, Result.decode, "result"),
        (LETTER, DeadLetter.decode, "dead letter"),
    ):
        body = json.dumps({**envelope, "v": version}).encode()
        with pytest.raises(EnvelopeError) as caught:
            decode(body)
        assert str(caught.value).startswith(f"{kind} {said}"), caught.value


def test_version_1_still_reads() -> None:
    assert Codec().open_task(json.dumps(TASK).encode()).id == "t1"
    assert Result.decode(json.dumps(RESULT).encode()).value == 9
    assert DeadLetter.decode(json.dumps(LETTER).encode()).body == b"x"


def test_a_dead_letter_moved_into_the_task_queue_by_hand_is_said_to_be_one() -> None:
    """``redis-cli RPOPLPUSH distq:distq:dead distq`` (or a shovel of distq.dead into
    distq) puts dead letters where tasks go: each was dead-lettered again as "task lacks
    the field 'id'", wrapped in a new letter, its task never run, with nothing to say
    that it was a letter nor how letters go back (and requeue-dead of the new letter
    moves the old letter back, to be refused again)."""
    task = Task("square", [3], "replies", id="t1", created_at=1.0)
    for body in (task.encode(), b"\xff not UTF-8"):
        letter = DeadLetter(body, "failed 3 of 3 attempts", "distq", "w1", 1.0).encode()
        with pytest.raises(EnvelopeError) as caught:
            Codec().open_task(letter)
        assert str(caught.value) == (
            "task is a dead letter (of queue distq), not a task: `distq requeue-dead` "
            "moves dead letters back to their queue as tasks"
        ), caught.value
