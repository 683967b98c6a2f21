"""Task arguments must be JSON values: the first one that is not is named, with where."""

from __future__ import annotations

import datetime
import enum
from typing import Any

import pytest

from distq.jsonvalue import MAX_DEPTH, check_arguments, problem


class Color(enum.IntEnum):
    RED = 1


@pytest.mark.parametrize(
    "value",
    [None, True, 0, -5, 2**70, 1.5, "", "text", [], {}, (1, "a"), Color.RED, [1, {"a": [None]}]],
)
def test_json_values_pass(value: Any) -> None:
    assert problem(value, "argument 1") is None
    check_arguments("t", [value], {"k": value})


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (b"bytes", "argument 1 is of type bytes"),
        (object(), "argument 1 is of type object"),
        ({1, 2}, "argument 1 is of type set"),
        (datetime.date(2024, 1, 2), "argument 1 is of type datetime.date"),
        (float("nan"), "argument 1 is nan, which JSON cannot carry"),
        (float("inf"), "argument 1 is inf"),
        ({1: "a"}, "argument 1 has the key 1; JSON object keys are strings"),
        ([1, {"a": [2, b"x"]}], "argument 1[1]['a'][1] is of type bytes"),
    ],
)
def test_the_first_value_that_is_not_json_is_named_with_its_place(value: Any, says: str) -> None:
    found = problem(value, "argument 1")
    assert found is not None and found.startswith(says), found


def test_deep_or_cyclic_values_are_refused_without_a_recursion_error() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    assert "nested more than" in str(problem(cycle, "argument 1"))
    deep: Any = 1
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    assert "nested more than" in str(problem(deep, "argument 1"))
    fine: Any = 1
    for _ in range(MAX_DEPTH - 1):
        fine = [fine]
    assert problem(fine, "argument 1") is None


def test_check_arguments_names_the_task_and_the_argument() -> None:
    with pytest.raises(TypeError, match=r"^jobs:add: argument 2 is of type bytes; task arg"):
        check_arguments("jobs:add", [1, b"x"], {})
    with pytest.raises(TypeError, match=r"^jobs:add: keyword argument 'when' is of type datetime"):
        check_arguments("jobs:add", [1], {"when": datetime.datetime.now()})
