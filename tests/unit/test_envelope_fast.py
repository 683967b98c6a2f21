"""The envelopes' fast path (msgspec) against the reference (the stdlib ``json``).

Whatever the fast path encodes, ``json`` would have encoded to the same JSON; whatever
it decodes, the reference decoder would have decoded the same way; whatever it is not
sure of goes to the reference, so values ``json`` refuses are still refused.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distq import envelope
from distq.envelope import Result, Task
from distq.errors import EnvelopeError

fast = settings(
    max_examples=400, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),  # any size: beyond 64 bits too
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["\x00", "\u2028", "\ud800", "é", '"\\', "\x7f"]),
)
values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=4), inner, max_size=3),
    ),
    max_leaves=12,
)


def reference_task(task: Task) -> bytes:
    """What distq wrote before the fast path: the stdlib encoder, these keys in order."""
    return envelope._dumps(
        {
            "v": 1,
            "id": task.id,
            "name": task.name,
            "args": task.args,
            "kwargs": task.kwargs,
            "reply_to": task.reply_to,
            "attempt": task.attempt,
            "max_attempts": task.max_attempts,
            "created_at": task.created_at,
        }
    ).encode()


def _has_float(value: Any) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, (list, tuple)):
        return any(_has_float(v) for v in value)
    if isinstance(value, dict):
        return any(_has_float(v) for v in value.values())
    return False


def outcome(call: Any) -> Any:
    """What a call returns, or the type and message of the error it raises."""
    try:
        return ("ok", call())
    except (EnvelopeError, ValueError, TypeError, OverflowError) as exc:
        return ("raised", type(exc).__name__, str(exc))


@fast
@given(args=st.lists(values, max_size=3), kwargs=st.dictionaries(st.text(max_size=3), values))
def test_tasks_encode_to_what_json_writes(args: list[Any], kwargs: dict[str, Any]) -> None:
    task = Task(name="square", args=args, kwargs=kwargs, reply_to="r", created_at=1.5)
    got, want = outcome(task.encode), outcome(lambda: reference_task(task))
    if want[0] == "raised":
        assert got == want  # refused as before, for the same reason
        return
    assert got[0] == "ok"
    if not _has_float((args, kwargs)):
        assert got[1] == want[1]  # byte for byte
    else:  # the same numbers; a float may be written in another notation (1e-05, 0.00001)
        assert _same(json.loads(got[1]), json.loads(want[1]))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@fast
@given(value=values)
def test_results_encode_to_what_json_writes(value: Any) -> None:
    result = Result(
        task_id="t", status="ok", worker="w", attempt=1, started_at=1.0, duration=2e-06, value=value
    )
    reference = {
        "v": 1,
        "task_id": "t",
        "status": "ok",
        "worker": "w",
        "attempt": 1,
        "started_at": 1.0,
        "duration": 2e-06,
        "value": value,
    }
    got, want = outcome(result.encode), outcome(lambda: envelope._dumps(reference).encode())
    if want[0] == "raised":
        assert got == want
        return
    assert _same(json.loads(got[1]), json.loads(want[1]))
    assert _same(Result.decode(got[1]).value, json.loads(want[1])["value"])


_TASK = json.loads(Task(name="square", args=[3], reply_to="r").encode())
_RESULT = json.loads(
    Result(task_id="t", status="error", worker="w", attempt=1, started_at=1.0, duration=0.5,
           error_type="E", error_message="m").encode()
)  # fmt: skip
_odd = st.one_of(
    values,
    st.sampled_from(
        [0, -1, True, 1.0, "", "x" * 256, "é" * 128, 10**400, {"type": 5}, {}, "ok", "error"]
    ),
)


def _changed(base: dict[str, Any], changes: list[tuple[str, Any]], drop: list[str]) -> bytes:
    obj = {k: v for k, v in base.items() if k not in drop}
    obj.update(changes)
    return json.dumps(obj).encode()


@fast
@given(
    changes=st.lists(st.tuples(st.sampled_from([*_TASK, "extra"]), _odd), max_size=3),
    drop=st.lists(st.sampled_from(list(_TASK)), max_size=2),
)
def test_tasks_decode_as_the_reference_decoder_does(
    changes: list[tuple[str, Any]], drop: list[str]
) -> None:
    body = _changed(_TASK, changes, drop)
    assert _outcomes_agree(
        outcome(lambda: Task.decode(body)), outcome(lambda: Task._decode_json(body))
    )


@fast
@given(
    changes=st.lists(st.tuples(st.sampled_from([*_RESULT, "value", "extra"]), _odd), max_size=3),
    drop=st.lists(st.sampled_from(list(_RESULT)), max_size=2),
)
def test_results_decode_as_the_reference_decoder_does(
    changes: list[tuple[str, Any]], drop: list[str]
) -> None:
    body = _changed(_RESULT, changes, drop)
    assert _outcomes_agree(
        outcome(lambda: Result.decode(body)), outcome(lambda: Result._decode_json(body))
    )


def _outcomes_agree(got: Any, want: Any) -> bool:
    if got[0] != want[0]:
        return False
    if got[0] == "raised":
        return bool(got == want)
    a, b = got[1], want[1]
    return type(a) is type(b) and all(
        _same(getattr(a, f), getattr(b, f)) for f in type(a).__struct_fields__
    )


@pytest.mark.parametrize("big", [2**64, 2**100, -(2**100), 10**40, [2**70, {"n": -(2**90)}]])
def test_integers_beyond_64_bits_round_trip_exactly(big: Any) -> None:
    result = Result(
        task_id="t", status="ok", worker="w", attempt=1, started_at=1.0, duration=0.1, value=big
    )
    assert Result.decode(result.encode()).value == big
    task = Task(name="square", args=[big], reply_to="r")
    assert Task.decode(task.encode()).args == [big]
    assert json.loads(task.encode())["args"] == [big]  # what any JSON reader gets


@pytest.mark.parametrize("value", [{1, 2}, b"bytes", dt.date(2024, 1, 1), {1: "int key"}])
def test_values_json_refuses_or_rewrites_are_treated_as_json_does(value: Any) -> None:
    result = Result(
        task_id="t", status="ok", worker="w", attempt=1, started_at=1.0, duration=0.1, value=value
    )
    reference = outcome(lambda: envelope._dumps({"value": value}))
    if reference[0] == "raised":
        with pytest.raises(TypeError):
            result.encode()
    else:  # json writes an int key as a string; msgspec must not be asked
        assert json.loads(result.encode())["value"] == json.loads(reference[1])["value"]


def test_nan_results_are_written_as_json_writes_them() -> None:
    result = Result(
        task_id="t", status="ok", worker="w", attempt=1, started_at=1.0, duration=0.1,
        value=[float("nan"), float("inf")],
    )  # fmt: skip
    assert b"[NaN,Infinity]" in result.encode()
    decoded = Result.decode(result.encode()).value
    assert math.isnan(decoded[0]) and decoded[1] == float("inf")


def test_a_task_without_keywords_is_encoded_without_a_look_into_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A master's usual task has no keywords: its empty dict is written as it is, with
    no call of ``_plain`` to look into it (a lone task's, issue 16); its arguments are
    still looked at, and an empty mapping of another type still takes the reference."""
    looked: list[object] = []
    plain = envelope._plain

    def counted(value: Any, depth: int = 0) -> bool:
        looked.append(value)
        return plain(value, depth)

    monkeypatch.setattr(envelope, "_plain", counted)
    task = Task("square", [3], "r")
    body = task.encode_shallow()
    assert body is not None and Task.decode(body) == task
    assert body == json.dumps(json.loads(body), separators=(",", ":")).encode()
    assert looked == [[3]]

    class Keywords(dict[str, Any]):
        pass

    assert Task("square", [3], "r", Keywords()).encode_shallow() is None
