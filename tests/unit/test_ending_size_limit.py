"""Endings at DISTQ_MAX_MESSAGE_BYTES: an error result too large to send, and a malformed
message of exactly the limit (mut17b)."""

from __future__ import annotations

import pytest

from distq.codec import Codec
from distq.ending import Endings
from distq.envelope import DeadLetter, Result, Task
from distq.errors import EnvelopeError
from distq.transport import Delivery

LIMIT = 1024  # the smallest DISTQ_MAX_MESSAGE_BYTES


def test_a_failure_whose_error_result_is_too_large_still_answers_with_its_own_error() -> None:
    """A worker of a small limit, a task's last failure with a long message: its master
    still gets an error result of the task's own type, the reason kept in the dead
    letter. Without the fallback the ending raised, and the master was told WorkerError
    ("the worker could not handle it: MessageTooLarge") for an ordinary failure (mut17b)."""
    endings = Endings("w1", "q", Codec(max_message_bytes=LIMIT))
    t = Task(name="boom", args=[1], reply_to="replies", max_attempts=1)
    ending = endings.failed(
        Delivery(t.encode(), 1), t, ValueError("y" * 3000), 0.0, 0.1, retryable=True
    )
    s = ending.settlement
    assert ending.outcome == "failed" and s.reply_to == "replies" and s.result is not None
    answer = Result.decode(s.result)
    assert (answer.task_id, answer.status, answer.error_type) == (t.id, "error", "ValueError")
    assert "too large to send" in (answer.error_message or "")
    assert "y" * 100 in DeadLetter.decode(s.dead_letter or b"").reason


def test_a_malformed_message_of_exactly_the_limit_is_kept_whole_and_not_called_too_large() -> None:
    """Only a message over the limit has its dead letter cut to its start and is said
    too large; one of exactly DISTQ_MAX_MESSAGE_BYTES is within it (mut17b)."""
    codec = Codec(max_message_bytes=LIMIT)
    body = b"{not json" + b"x" * (LIMIT - 9)
    assert len(body) == LIMIT
    with pytest.raises(EnvelopeError) as caught:
        codec.open_task(body)
    ending = Endings("w1", "q", codec).malformed(Delivery(body, 1), caught.value)
    letter = DeadLetter.decode(ending.settlement.dead_letter or b"")
    assert letter.body == body
    assert "keeps its first" not in letter.reason
    assert "DISTQ_MAX_MESSAGE_BYTES" not in letter.reason


def _raised_deep() -> ValueError:
    """A short error raised 80 distinct frames deep: a traceback of about 7,000
    characters (each frame a line of its own, none repeated)."""
    source = "def f0():\n    raise ValueError('bad 5')\n" + "".join(
        f"def f{i}():\n    return f{i - 1}()  # {'c' * 60}\n" for i in range(1, 80)
    )
    space: dict[str, object] = {}
    exec(compile(source, "/srv/app/tasks_with_a_long_module_name.py", "exec"), space)
    try:
        space["f79"]()  # type: ignore[operator]
    except ValueError as error:
        return error
    raise AssertionError("f79 did not raise")


def test_a_failure_whose_traceback_alone_is_too_large_still_sends_its_reason() -> None:
    """At DISTQ_MAX_MESSAGE_BYTES 4096, "ValueError: bad 5" raised deep (a traceback of
    about 7,000 characters): the reason fits, only the traceback does not. The master
    was told "(too large to send; the dead letter has the reason)" and nothing of what
    failed; it now gets the reason, and is told its traceback was too large to send."""
    endings = Endings("w1", "q", Codec(max_message_bytes=4096))
    t = Task(name="boom", args=[1], reply_to="replies", max_attempts=1)
    error = _raised_deep()
    ending = endings.failed(Delivery(t.encode(), 1), t, error, 0.0, 0.1, retryable=True)
    answer = Result.decode(ending.settlement.result or b"")
    assert (answer.status, answer.error_type, answer.error_traceback) == (
        "error",
        "ValueError",
        None,
    )
    assert answer.error_message == (
        "failed 1 of 1 attempts; last error: ValueError: bad 5; its traceback was too large "
        "to send (this worker sends no message over 4,096 bytes)"
    )
    # with room for it, the traceback goes as before
    roomy = Endings("w1", "q").failed(Delivery(t.encode(), 1), t, error, 0.0, 0.1, retryable=True)
    whole = Result.decode(roomy.settlement.result or b"")
    assert whole.error_message == "failed 1 of 1 attempts; last error: ValueError: bad 5"
    assert whole.error_traceback is not None and len(whole.error_traceback) > 4096
