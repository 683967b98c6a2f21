"""Task arguments must be JSON values: the first one that is not is named, with where."""

from __future__ import annotations

import datetime
import enum
from typing import Any

import pytest

from distq.codec import Codec
from distq.envelope import Task
from distq.errors import NestedTooDeep
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


@pytest.mark.parametrize(
    ("args", "kwargs", "says"),
    [
        (["\ud800"], {}, r"argument 1 holds the unpaired surrogate '\\ud800' at index 0"),
        ([["ok", "é\udc80"]], {}, r"argument 1\[1\] holds the unpaired surrogate '\\udc80' at"),
        (["caf\udce9"], {}, r"argument 1 holds .* at index 3 \(the byte 0xE9, not UTF-8: give it"),
        ([{"\udc00": 1}], {}, r"argument 1 has a key that holds the unpaired surrogate"),
        ([], {"\udc00": 1}, r"the keyword '\\udc00' holds the unpaired surrogate"),
        ([1, 10**5000], {}, r"argument 2 is an integer of more than 4,300 digits"),
        ([], {"n": [-(10**5000)]}, r"keyword argument 'n'\[0\] is an integer of more than"),
    ],
)
def test_text_the_wire_cannot_carry_is_named_before_anything_is_sent(
    args: list[Any], kwargs: dict[str, Any], says: str
) -> None:
    """A lone surrogate (from os.fsdecode of a non-UTF-8 name, say) has no UTF-8, and
    Python writes no int past its digit limit: both passed the check and failed deep in
    the encoding, a bare UnicodeEncodeError or ValueError naming no argument."""
    with pytest.raises(TypeError, match=rf"^t: {says}"):
        check_arguments("t", args, kwargs)
    check_arguments("t", ["é", 10**4000, {"ü": -(2**13_999)}], {"ключ": "ok"})  # these fit


@pytest.mark.parametrize("signed", [False, True])
def test_the_depth_limit_is_what_fits_in_a_task(signed: bool) -> None:
    """An argument the check passes must fit the envelope (64 levels in all): one 63 to
    100 levels deep passed, then failed as MessageTooLarge, advising a size setting."""
    codec = Codec(signing_keys=(b"k" * 32,) if signed else ())
    for wrap in (lambda v: [v], lambda v: {"k": v}):
        deepest: Any = 1
        for _ in range(MAX_DEPTH):
            deepest = wrap(deepest)
        check_arguments("t", [deepest], {"x": deepest})
        task = Task(name="t", args=[deepest], kwargs={"x": deepest}, reply_to="r")
        assert codec.open_task(codec.seal_task(task)).args == [deepest]
        with pytest.raises(TypeError, match=f"nested more than {MAX_DEPTH} levels"):
            check_arguments("t", [wrap(deepest)], {})
        with pytest.raises(NestedTooDeep, match=r"flatten its arguments$"):
            codec.seal_task(Task(name="t", args=[wrap(deepest)], reply_to="r"))
