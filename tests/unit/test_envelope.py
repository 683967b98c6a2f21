from __future__ import annotations

import gc
import json
import os

import pytest

from distq.envelope import DeadLetter, Result, Task, new_id, quoted
from distq.errors import EnvelopeError


def test_task_round_trip_and_next_attempt() -> None:
    task = Task(name="square", args=[7], kwargs={"delay": 0.1}, reply_to="r", max_attempts=4)
    again = Task.decode(task.encode())
    assert again == task
    later = again.next_attempt()
    assert (later.id, later.attempt, later.max_attempts) == (task.id, 2, 4)


def test_envelopes_are_json_not_pickle() -> None:
    body = Task(name="square", args=[3], reply_to="r").encode()
    assert json.loads(body)["v"] == 1


def test_result_round_trips() -> None:
    ok = Result(
        task_id="t", status="ok", worker="w", attempt=1, started_at=1.0, duration=0.5, value=9
    )
    assert Result.decode(ok.encode()) == ok
    bad = Result(
        task_id="t",
        status="error",
        worker="w",
        attempt=3,
        started_at=1.0,
        duration=0.5,
        error_type="RuntimeError",
        error_message="boom",
    )
    assert Result.decode(bad.encode()) == bad


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"v": 2}', "version"),
        (b'{"v": 1, "id": "x"}', "lacks the field"),
        (
            b'{"v":1,"id":"x","name":5,"args":[],"kwargs":{},"reply_to":"r","attempt":1,'
            b'"max_attempts":3,"created_at":0}',
            "wrong type",
        ),
        (
            b'{"v":1,"id":"x","name":"n","args":[],"kwargs":{},"reply_to":"r","attempt":true,'
            b'"max_attempts":3,"created_at":0}',
            "wrong type",
        ),
    ],
)
def test_malformed_tasks_say_why(body: bytes, reason: str) -> None:
    with pytest.raises(EnvelopeError, match=reason):
        Task.decode(body)


def test_dead_letter_keeps_binary_bodies_byte_for_byte() -> None:
    for body in (b"\xff\x00 raw", b'{"text": "fine"}'):
        letter = DeadLetter(body=body, reason="r", queue="q", worker="w")
        assert DeadLetter.decode(letter.encode()) == letter


def test_an_error_result_carries_the_remote_traceback_and_older_ones_still_decode() -> None:
    fields = dict(task_id="t", status="error", worker="w", attempt=3, started_at=1.0, duration=0.5)
    failed = Result(
        **fields,  # type: ignore[arg-type]
        error_type="ValueError",
        error_message="failed 3 of 3 attempts; last error: ValueError: x",
        error_traceback='Traceback (most recent call last):\n  File "a.py"\nValueError: x\n',
    )
    assert Result.decode(failed.encode()) == failed
    assert json.loads(failed.encode())["error"]["traceback"].endswith("ValueError: x\n")
    older = json.loads(failed.encode())
    del older["error"]["traceback"]  # as a worker without tracebacks sends it
    decoded = Result.decode(json.dumps(older))
    assert decoded.error_traceback is None and decoded.error_type == "ValueError"
    older["error"]["traceback"] = 7
    with pytest.raises(EnvelopeError, match=r"'error\.traceback' is not text"):
        Result.decode(json.dumps(older))
    # a type or message not text: a master printed "failed for good: ['x']: {'m': 1}", an
    # Executor's RemoteError.error_type was a list
    for name, wrong in (("type", ["x"]), ("message", {"m": 1}), ("type", 5)):
        forged = json.loads(failed.encode())
        forged["error"][name] = wrong
        with pytest.raises(EnvelopeError, match=rf"'error\.{name}' is not text: "):
            Result.decode(json.dumps(forged))


def test_an_unpaired_surrogate_escape_is_malformed_not_a_string_that_breaks_later() -> None:
    """json reads ``"\\ud800"`` into a str that no UTF-8 can hold: printing, logging or
    encoding it again would fail in the worker, every time it ran."""
    good = Task(name="square", args=[4], reply_to="r").encode()
    for bad in (b'"sq\\ud800"', b'"sq\\udfff"'):
        with pytest.raises(EnvelopeError, match="unpaired UTF-16 surrogate escape"):
            Task.decode(good.replace(b'"square"', bad))
    paired = Task.decode(good.replace(b'"square"', b'"sq\\ud83d\\ude00"'))
    assert paired.name == "sq\U0001f600"


def test_a_dead_letter_entry_that_is_none_is_read_as_unreadable_with_its_bytes() -> None:
    letter = DeadLetter(body=b"\xfftask", reason="r", queue="q", worker="w")
    assert DeadLetter.read(letter.encode(), "q") == letter and not letter.unreadable
    for raw, why in (
        (b"not a dead letter", "dead letter is not valid JSON"),
        (b'{"v": 99}', "dead letter has envelope version 99, and this distq reads version 1"),
        (b"{}", 'dead letter has no envelope version (a whole number in "v"; it has None)'),
        (b'{"v": 0}', 'dead letter has no envelope version (a whole number in "v"; it has 0)'),
        (
            b'{"v": "1"}',
            "dead letter has no envelope version (a whole number in \"v\"; it has '1')",
        ),
        (b'{"v": 1, "body": "x"}', "dead letter lacks the field"),
    ):
        got = DeadLetter.read(raw, "q")
        assert (got.body, got.queue, got.worker, got.at) == (raw, "q", "", 0.0)
        assert got.reason.startswith(f"unreadable dead letter: {why}") and got.unreadable
    long = DeadLetter.read(b'{"v": 1, "body": "", "reason": ' + b"1" * 1000 + b"}", "q")
    assert len(long.reason) < 400 and long.reason.endswith("...")


@pytest.mark.parametrize("entry", ["a str", None, 5, [b"x"], (b"y",), {"a": 1}])
def test_a_dead_letter_entry_that_is_not_bytes_is_read_as_unreadable(entry: object) -> None:
    """A manager peer can put any plain value on the dead-letter queue: dead-letters and
    requeue-dead died with a TypeError (or AttributeError) traceback on it."""
    got = DeadLetter.read(entry, "q")  # type: ignore[arg-type]
    assert (got.body, got.queue, got.worker, got.at) == (repr(entry).encode(), "q", "", 0.0)
    kind = type(entry).__name__
    assert got.unreadable and got.reason.startswith("unreadable dead letter: ")
    assert f"a {kind}, not bytes" in got.reason or kind == "str"


def test_a_value_whose_repr_raises_is_still_read_and_quoted() -> None:
    """An int of 5,000 digits (repr raises ValueError) or a list nested 2,000 deep
    (RecursionError) crashed dead-letters, requeue-dead and a master (diff13b)."""
    deep: list[object] = []
    for _ in range(2000):
        deep = [deep]
    for value in (10**5000, deep):
        letter = DeadLetter.read(value, "q")  # type: ignore[arg-type]
        assert letter.unreadable and b"that cannot be shown" in letter.body
        assert "that cannot be shown" in quoted(value)


def test_a_forked_child_makes_ids_its_parent_does_not() -> None:
    """Task ids and reply queue names (Executor, distq submit) come from new_id(): two
    processes forked from one must not make the same ones."""
    new_id()  # the counter is in use before the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.write(write, ",".join(new_id() for _ in range(3)).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 1000).decode().split(",")
    os.waitpid(pid, 0)
    parent = [new_id() for _ in range(3)]
    assert not set(child) & set(parent)


@pytest.mark.parametrize("reply_to", ["é" * 128, "\u20ac" * 86])  # 256, 258 bytes
def test_a_reply_queue_name_over_255_bytes_is_refused_by_both_decoders(reply_to: str) -> None:
    body = Task("square", [1], reply_to=reply_to).encode()
    with pytest.raises(Exception, match="1 to 255 bytes"):
        Task.decode(body)


@pytest.mark.parametrize("field", ["v", "name", "id"])
def test_a_huge_wrong_value_is_not_quoted_whole(field: str) -> None:
    """A 1 MB value in a mistyped field made a 1 MB reason, dead letter and log line."""
    fields = json.loads(Task(name="x", args=[1], reply_to="r").encode())
    fields[field] = ["x" * 1_000_000]
    with pytest.raises(EnvelopeError) as caught:
        Task.decode(json.dumps(fields).encode())
    assert len(str(caught.value)) < 400, str(caught.value)[:400]


def test_a_task_is_not_tracked_by_the_garbage_collector() -> None:
    """An executor holds a Task per unanswered task: tracked, each one made every full
    collection longer while a large map() waited. No cycle can pass through a Task (its
    arguments are JSON values, made before it)."""
    assert not gc.is_tracked(Task("square", [[1, {"a": [2]}]], "q", {"k": [3]}))
