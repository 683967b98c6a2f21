"""A dict key that is not a string is named, whatever its repr does."""

from __future__ import annotations

import pytest

from distq.ending import Endings
from distq.envelope import Task
from distq.jsonvalue import check_arguments
from distq.transport import Delivery
from seam import dead_letter_reason


class Detached:
    """A key whose repr raises, as an ORM object's does once its session is gone."""

    def __hash__(self) -> int:
        return 1

    def __repr__(self) -> str:
        raise RuntimeError("instance is not bound to a session")


def test_a_key_whose_repr_raises_is_refused_as_a_key_not_a_crash() -> None:
    """check_arguments raised the key's RuntimeError, where it promises a TypeError
    naming the argument."""
    with pytest.raises(TypeError, match=r"^jobs:echo: argument 1 has the key <Detached>; JSON"):
        check_arguments("jobs:echo", [{Detached(): 1}], {})


def test_a_value_holding_such_a_key_fails_its_task_as_not_json_not_as_the_workers_fault() -> None:
    """A task that returned it was dead-lettered as "the worker could not handle it:
    RuntimeError: ..." (distq's own failure, error type WorkerError) once the repr
    raised in the worker's check: here, a value that is not JSON, said so."""
    task = Task("jobs:echo", [1], "replies")
    ending = Endings("w1", "q").ok(Delivery(task.encode(), 1), task, {Detached(): 1}, 0.0, 0.1)
    assert ending.outcome == "failed"
    reason = dead_letter_reason(ending)
    assert reason.startswith(
        "ran, but its value cannot be sent back: TypeError: its value has the key <Detached>; "
        "JSON object keys are strings"
    ), reason
