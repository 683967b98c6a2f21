"""How each delivery ends: the worker's decisions, with no task run and no broker."""

from __future__ import annotations

import json
from typing import Any

import pytest

from distq.chunks import CHUNK_TASK
from distq.codec import Codec
from distq.ending import Ending, Endings
from distq.envelope import NO_REPLY, DeadLetter, Result, Task
from distq.errors import EnvelopeError, MessageTooLarge, VersionMismatch
from distq.errortext import MAX_MESSAGE_CHARS, MAX_TRACEBACK_CHARS, describe, traceback_text
from distq.framing import TASKS_PER_MESSAGE, pack, pack_problem
from distq.retries import retry_delay
from distq.transport import Delivery, Settlement
from seam import dead_letter_reason

ENDINGS = Endings("w1", "q")


def delivery(task: Task) -> Delivery:
    return Delivery(body=task.encode(), tag=1)


def task(name: str = "square", *args: Any, **kw: Any) -> Task:
    return Task(name=name, args=list(args), reply_to="replies", **kw)


def test_a_value_is_an_ok_result_for_the_master_and_nothing_else() -> None:
    t = task("square", 12)
    ending = ENDINGS.ok(delivery(t), t, 144, started_at=1000.0, duration=0.25)
    s = ending.settlement
    assert (ending.outcome, ending.task, ending.note) == ("ok", t, None)
    assert (ending.started_at, ending.duration) == (1000.0, 0.25)
    assert s.reply_to == "replies" and s.retry is None and s.dead_letter is None
    assert s.result is not None
    result = Result.decode(s.result)
    assert (result.task_id, result.status, result.value, result.worker) == (t.id, "ok", 144, "w1")
    assert (result.started_at, result.duration, result.attempt) == (1000.0, 0.25, 1)
    # made without Ending's __new__: the very record the constructor makes
    assert type(ending) is Ending and ending._fields == Ending._fields
    made = Ending(
        Settlement(ending.settlement.delivery, "replies", s.result), "ok", t, 1000.0, 0.25
    )
    assert ending == made and ending._asdict() == made._asdict()


def test_an_error_with_attempts_left_is_retried_after_a_backoff() -> None:
    t = task("boom", 5, max_attempts=3)
    ending = ENDINGS.failed(delivery(t), t, ValueError("bad 5"), 0.0, 0.1, retryable=True)
    s = ending.settlement
    assert ending.outcome == "retried" and s.result is None and s.dead_letter is None
    assert s.retry is not None and s.retry_delay == retry_delay(1) == 0.5
    again = Task.decode(s.retry)
    assert (again.id, again.attempt, again.args) == (t.id, 2, [5])
    assert ending.note == (
        f"task boom {t.id} attempt 1/3 failed (ValueError: bad 5); retrying in 0.5 s"
    )


@pytest.mark.parametrize("codec", [Codec(), Codec([b"0123456789abcdef-key"])])
def test_a_retry_carries_the_arguments_as_sent_not_as_the_function_left_them(
    codec: Codec,
) -> None:
    sent = Task(name="drain", args=[[1, 2, 3]], kwargs={"d": {"k": 1}}, reply_to="r")
    body = codec.seal_task(sent)
    ran = codec.open_task(body)  # what the function got, and changed before it raised
    ran.args[0].clear()
    ran.kwargs["d"]["k"] = 2
    endings = Endings("w1", "q", codec)
    ending = endings.failed(Delivery(body, 1), ran, ValueError("x"), 0.0, 0.1, retryable=True)
    assert ending.settlement.retry is not None
    again = codec.open_task(ending.settlement.retry)
    assert (again.id, again.attempt, again.args, again.kwargs) == (
        sent.id,
        2,
        [[1, 2, 3]],
        {"d": {"k": 1}},
    )


def test_a_retry_over_the_size_limit_fails_for_good_saying_so() -> None:
    """A task within a byte of DISTQ_MAX_MESSAGE_BYTES grew a byte at attempt 10: its
    retry was refused unsaid, and it was dead-lettered "failed 9 of 20 attempts", with
    attempts left and no word of the limit (retries11)."""
    t = Task(name="boom", args=[""], reply_to="replies", attempt=9, max_attempts=20)
    t.args[0] = "x" * (2000 - len(t.encode()))
    assert len(t.encode()) == 2000
    codec = Codec(max_message_bytes=2000)
    ending = Endings("w1", "q", codec).failed(
        Delivery(t.encode(), 1), t, ValueError("bad"), 0.0, 0.1, retryable=True
    )
    letter = DeadLetter.decode(ending.settlement.dead_letter or b"")
    assert ending.outcome == "failed" and ending.settlement.retry is None
    assert letter.reason == (
        "failed 9 of 20 attempts; last error: ValueError: bad; its retry cannot be sent "
        "(task would be 2,001 bytes, over the limit of 2,000 (DISTQ_MAX_MESSAGE_BYTES)), so it "
        "is not retried"
    ), letter.reason


def test_an_error_on_the_last_attempt_fails_for_good() -> None:
    t = task("boom", 5, max_attempts=3, attempt=3)
    ending = ENDINGS.failed(delivery(t), t, ValueError("bad 5"), 0.0, 0.1, retryable=True)
    s = ending.settlement
    assert ending.outcome == "failed" and s.retry is None
    assert s.result is not None and s.dead_letter is not None and s.reply_to == "replies"
    result = Result.decode(s.result)
    assert (result.status, result.error_type, result.attempt) == ("error", "ValueError", 3)
    letter = DeadLetter.decode(s.dead_letter)
    assert letter.reason == "failed 3 of 3 attempts; last error: ValueError: bad 5"
    assert (letter.body, letter.queue, letter.worker) == (t.encode(), "q", "w1")
    assert ending.note == f"task boom {t.id} dead-lettered: {letter.reason}"


def test_what_no_retry_can_fix_fails_at_the_first_attempt() -> None:
    t = task("square", 1, 2, max_attempts=5)
    ending = ENDINGS.failed(delivery(t), t, TypeError("too many"), 0.0, 0.0, retryable=False)
    assert ending.outcome == "failed" and ending.settlement.retry is None
    reason = dead_letter_reason(ending)
    assert reason == "cannot run: TypeError: too many"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ({1}, "its value is of type set"),
        ({1: "a"}, "its value has the key 1; JSON object keys are strings"),  # json: {"1": "a"}
        (float("nan"), "its value is nan, which JSON cannot carry"),  # json: NaN, not JSON
        ([1, {"x": float("inf")}], "its value[1]['x'] is inf, which JSON cannot carry"),
        # plain str and int skip the check: the encoder's own words, "position 172" of the
        # envelope, or advice to call sys.set_int_max_str_digits()
        ("a\ud800", "its value holds the unpaired surrogate '\\ud800' at index 1"),
        pytest.param(10**5000, "its value is an integer of more than 4,300 digits", id="bigint"),
    ],
)
def test_a_value_that_is_not_json_fails_for_good_saying_the_task_ran(value: Any, why: str) -> None:
    t = task("unjsonable", 1, max_attempts=3)
    ending = ENDINGS.ok(delivery(t), t, value, 0.0, 0.0)
    assert ending.outcome == "failed" and ending.settlement.retry is None
    assert ending.settlement.result is not None and ending.settlement.dead_letter is not None
    result = Result.decode(ending.settlement.result)
    assert result.error_type == "TypeError"
    message = result.error_message or ""
    assert message.startswith(f"ran, but its value cannot be sent back: TypeError: {why}")
    assert message.endswith("; a task must return a JSON value"), message


def test_plain_values_are_sent_as_they_are() -> None:
    t = task("fine", 1)
    for value in [1, -(10**18), "s", True, None, 2.5, [1, "a", None], {"k": [1.5, {"n": None}]}]:
        ending = ENDINGS.ok(delivery(t), t, value, 0.0, 0.0)
        assert ending.outcome == "ok" and ending.settlement.result is not None
        assert Result.decode(ending.settlement.result).value == value


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("a bug in __str__")


def test_an_error_that_cannot_be_printed_is_retried_and_fails_like_any_other() -> None:
    # a broken __str__; an int too long to print; text UTF-8 cannot carry
    for error in [Unprintable(), ValueError(2**20000), ValueError("x\ud800y")]:
        t = task("boom", 5, max_attempts=2)
        ending = ENDINGS.failed(delivery(t), t, error, 0.0, 0.1, retryable=True)
        assert ending.outcome == "retried" and ending.note is not None
        last = t.next_attempt()
        ending = ENDINGS.failed(delivery(last), last, error, 0.0, 0.1, retryable=True)
        assert ending.outcome == "failed"
        reason = dead_letter_reason(ending)
        assert reason.startswith("failed 2 of 2 attempts; last error: ")
    assert reason.endswith("ValueError: x\\ud800y")  # escaped: UTF-8 cannot carry it
    ending = ENDINGS.failed(delivery(t), t, Unprintable(), 0.0, 0.1)
    assert ending.note is not None and "Unprintable: <exception str() failed>" in ending.note


class Interrupting(Exception):
    def __str__(self) -> str:
        raise KeyboardInterrupt  # a BaseException: it went through, and ended the slot


def test_an_error_whose_text_raises_a_base_exception_is_an_error_like_any_other() -> None:
    t = task("boom", 5, max_attempts=1)
    ending = ENDINGS.failed(delivery(t), t, Interrupting(), 0.0, 0.1, retryable=True)
    assert ending.outcome == "failed" and ending.note is not None
    assert "Interrupting: <exception str() failed>" in ending.note


def test_an_error_without_a_message_is_its_type_alone() -> None:
    """Was ``KeyboardInterrupt: `` (a colon, then nothing) in lines and dead letters."""
    assert describe(KeyboardInterrupt()) == "KeyboardInterrupt"
    assert describe(ValueError("")) == "ValueError"
    assert describe(ValueError("x")) == "ValueError: x"


def test_a_task_distq_could_not_handle_is_dead_lettered_with_an_error_result() -> None:
    t = task("odd", 1)
    ending = ENDINGS.unhandled(delivery(t), t, UnicodeEncodeError("utf-8", "\ud800", 0, 1, "no"))
    s = ending.settlement
    assert ending.outcome == "failed" and s.retry is None and s.reply_to == "replies"
    assert s.dead_letter is not None and s.result is not None
    reason = DeadLetter.decode(s.dead_letter).reason
    assert reason.startswith("the worker could not handle it: UnicodeEncodeError: ")
    assert Result.decode(s.result).error_message == reason
    assert ending.note == f"task odd {t.id} dead-lettered: {reason}"


def test_a_malformed_message_is_dead_lettered_byte_for_byte_without_a_result() -> None:
    d = Delivery(body=b"\xffgarbage", tag=1)
    ending = ENDINGS.malformed(d, EnvelopeError("task is not valid JSON"))
    s = ending.settlement
    assert (ending.outcome, ending.task, s.result, s.reply_to) == ("malformed", None, None, None)
    assert s.dead_letter is not None
    letter = DeadLetter.decode(s.dead_letter)
    assert letter.body == b"\xffgarbage"
    assert letter.reason == "malformed message: task is not valid JSON"
    assert ending.note == "dead-lettered a malformed message: task is not valid JSON"


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (pack([b"{}"] * (TASKS_PER_MESSAGE + 1)), "a pack of 33 tasks (distq.tasks), over the 32"),
        (pack([b"{}"]) + b"\x00\x00\x10\x00abc", "a pack of tasks (distq.tasks) cut short"),
        (pack([b"{}", b""]), "a pack of tasks (distq.tasks) holding an empty one"),
        (pack([b"{}", b"{}"]), "a pack of 2 tasks sent without the message type distq.tasks"),
    ],
)
def test_a_pack_no_worker_takes_is_dead_lettered_saying_why(body: bytes, said: str) -> None:
    """RabbitMQ's worker takes a pack no master writes whole, as one malformed message:
    its reason said "not UTF-8 ... byte 0x94 in position 3", the length's low byte (input17)."""
    with pytest.raises(EnvelopeError) as caught:
        ENDINGS.codec.open_task(body)
    ending = ENDINGS.malformed(Delivery(body, 1), caught.value)
    reason = dead_letter_reason(ending)
    assert reason.startswith(f"malformed message: {said}"), reason


def test_json_that_starts_with_a_nul_byte_is_not_said_to_be_a_pack() -> None:
    """UTF-16 or UTF-32 JSON starts with a NUL byte too: said to be a pack cut short, it
    lost the reason that names those encodings (diff17)."""
    for encoding in ("utf-16-be", "utf-32-be"):
        assert pack_problem('{"v":1}'.encode(encoding)) is None


def test_a_chunks_result_too_large_says_a_smaller_chunksize_sends_fewer_values() -> None:
    endings = Endings("w1", "q", Codec(max_message_bytes=4096))
    chunk = Task(name=CHUNK_TASK, args=["echo", [["x"], ["y"], ["z"]]], reply_to="r")
    ending = endings.ok(delivery(chunk), chunk, ["v" * 2000] * 3, 0.0, 0.1)
    assert ending.outcome == "failed"
    reason = dead_letter_reason(ending)
    assert reason.startswith("ran, but its value cannot be sent back: MessageTooLarge: ")
    assert reason.endswith(
        "; a chunk's result holds the values of all its calls: a smaller map() chunksize "
        "sends fewer of them at a time"
    ), reason


KEY = b"0123456789abcdef-key"


@pytest.mark.parametrize("keys", [(), (KEY,)])
def test_a_task_over_the_workers_limit_answers_its_submitter_with_the_reason(
    keys: tuple[bytes, ...],
) -> None:
    """Within its submitter's larger DISTQ_MAX_MESSAGE_BYTES, it was dead-lettered
    unanswered: the master waited until its timeout, or for good (drift10)."""
    sent = Task(name="jobs:thumb", args=["x" * 5000], reply_to="replies", attempt=2)
    body = Codec(keys).seal_task(sent)  # the submitter's default limit
    endings = Endings("w1", "q", Codec(keys, max_message_bytes=2000))
    error = MessageTooLarge(f"task is {len(body):,} bytes, over the limit of 2,000")
    ending = endings.malformed(Delivery(body, 1), error)
    s = ending.settlement
    assert (ending.outcome, s.reply_to) == ("malformed", "replies")
    assert s.result is not None and s.dead_letter is not None
    result = Result.decode(s.result)  # an envelope: signed with its pack when sent
    assert (result.task_id, result.status, result.attempt, result.worker) == (
        sent.id,
        "error",
        2,
        "w1",
    )
    assert result.error_type == "MessageTooLarge"
    assert result.error_message == (
        f"refused: task is {len(body):,} bytes, over the limit of 2,000; not run: give the "
        "workers at least the DISTQ_MAX_MESSAGE_BYTES of the process that submits tasks"
    )
    letter = DeadLetter.decode(s.dead_letter)
    assert letter.reason.startswith(f"refused: task is {len(body):,} bytes, over the limit")
    assert ending.note is not None and ending.note.startswith(
        f"dead-lettered task jobs:thumb {sent.id}, refused: task is "
    )


@pytest.mark.parametrize(
    ("version", "hint"),
    [
        (2, "its submitter runs a newer distq than this process: upgrade this one"),
    ],
)
def test_a_task_of_another_envelope_version_answers_its_submitter_saying_what_to_upgrade(
    version: int, hint: str
) -> None:
    """A task with "v": 2 (a newer submitter, in a rolling upgrade) read as any malformed
    message: "expected 1", no word of which side to upgrade, and its master waited until
    its timeout (upgrade11)."""
    sent = Task(name="jobs:add", args=[1, 2], reply_to="replies")
    body = sent.encode().replace(b'{"v":1,', b'{"v":%d,' % version, 1)
    codec = Codec()
    with pytest.raises(VersionMismatch) as caught:
        codec.open_task(body)
    ending = Endings("w1", "q", codec).malformed(Delivery(body, 1), caught.value)
    s = ending.settlement
    assert s.reply_to == "replies" and s.result is not None and s.dead_letter is not None
    result = Result.decode(s.result)
    assert (result.task_id, result.status, result.error_type) == (
        sent.id,
        "error",
        "VersionMismatch",
    )
    reason = (
        f"malformed message: task has envelope version {version}, and this distq reads "
        f"version 1: {hint}"
    )
    assert result.error_message == f"{reason}; not run"
    assert DeadLetter.decode(s.dead_letter).reason == reason
    assert ending.note == f"dead-lettered task jobs:add {sent.id}, {reason}"


def test_an_task_head_nobody_waits_for_or_forged_is_answered_by_nobody_or_unsigned() -> None:
    """A forged task over the limit is answered only unsigned, as one within it is: no
    forged task makes a worker sign an answer."""
    endings = Endings("w1", "q", Codec((KEY,), max_message_bytes=2000))
    nobody = Task(name="t", args=["x" * 5000], reply_to=NO_REPLY)
    forged = Task(name="t", args=["x" * 5000], reply_to="replies")
    body = Codec((KEY,)).seal_task(nobody)
    ending = endings.malformed(Delivery(body, 1), MessageTooLarge("task is too large"))
    s = ending.settlement
    assert (s.result, s.reply_to) == (None, None) and s.dead_letter is not None
    body = Codec((b"another-key-0123456",)).seal_task(forged)
    ending = endings.malformed(Delivery(body, 1), MessageTooLarge("task is too large"))
    [s] = endings.settlements([ending])
    assert s.result is not None and not s.result.startswith(b"DQSIG")  # unsigned, in any format
    assert Result.decode(s.result).error_type == "SignatureError"


@pytest.mark.parametrize(
    ("attempt", "delay"), [(1, 0.5), (2, 1.0), (3, 2.0), (7, 30.0), (50, 30.0)]
)
def test_backoff_doubles_and_is_capped(attempt: int, delay: float) -> None:
    assert retry_delay(attempt) == delay


def raised(error: Exception) -> Exception:
    """``error`` with a traceback, as a task's own code leaves it."""
    try:
        raise error
    except Exception as caught:
        return caught


def test_a_task_that_failed_for_good_sends_its_traceback_text() -> None:
    t = task("boom", 5, max_attempts=1)
    ending = ENDINGS.failed(delivery(t), t, raised(ValueError("bad 5")), 0.0, 0.1, retryable=True)
    assert ending.settlement.result is not None
    result = Result.decode(ending.settlement.result)
    assert result.error_traceback is not None
    assert result.error_traceback.startswith("Traceback (most recent call last):")
    assert "in raised" in result.error_traceback
    assert result.error_traceback.rstrip().endswith("ValueError: bad 5")
    cannot = ENDINGS.failed(delivery(t), t, TypeError("too many"), 0.0, 0.0, retryable=False)
    assert cannot.settlement.result is not None
    assert Result.decode(cannot.settlement.result).error_traceback is None  # it never ran


def test_a_long_traceback_keeps_its_start_and_its_end() -> None:
    """The end alone was only the message, when that was long: no frame, file or line."""
    text = traceback_text(raised(ValueError("x" * 20_000)))
    assert len(text) <= MAX_TRACEBACK_CHARS + 40
    assert text.startswith("Traceback (most recent call last):\n  File ")
    assert ", in raised\n" in text and "characters cut)\n" in text
    assert text.rstrip().endswith("x" * 100)


def test_a_task_nobody_waits_for_ends_without_a_result() -> None:
    t = Task(name="boom", args=[5], reply_to=NO_REPLY, max_attempts=1)
    done = ENDINGS.ok(delivery(t), t, 25, 0.0, 0.1)
    assert done.outcome == "ok"
    assert (done.settlement.result, done.settlement.reply_to) == (None, None)
    failed = ENDINGS.failed(delivery(t), t, raised(ValueError("x")), 0.0, 0.1, retryable=True)
    assert failed.outcome == "failed" and failed.settlement.dead_letter is not None
    assert (failed.settlement.result, failed.settlement.reply_to) == (None, None)


FORGED = "square\ndistq: worker exit. 0 ok\x1b[8m"


def test_a_name_and_id_from_the_wire_cannot_forge_log_lines() -> None:
    """A queue writer put a line break and a terminal escape in a task's name: the text
    log showed a forged "worker exit" line and hid the rest of the terminal's output."""
    t = Task(name=FORGED, id="id\r\n1", args=[3], reply_to="replies", max_attempts=2)
    notes = [
        ENDINGS.failed(delivery(t), t, ValueError("x"), 0.0, 0.1, retryable=True).note,
        ENDINGS.failed(delivery(t), t, ValueError("x"), 0.0, 0.1, retryable=False).note,
        ENDINGS.orphaned(delivery(t), t).note,
        ENDINGS.unhandled(delivery(t), t, ValueError("x")).note,
    ]
    for note in notes:
        assert note is not None
        assert "\n" not in note and "\r" not in note and "\x1b" not in note, note
        assert note.startswith(r"task square\ndistq: worker exit. 0 ok\x1b[8m id\r\n1 "), note


def test_an_exception_message_cannot_forge_log_lines_either() -> None:
    """A task that puts its argument into its exception's message wrote it raw."""
    t = task("boom", 5, max_attempts=2)
    error = ValueError("bad\ndistq: worker exit. 0 ok\x1b[8m")
    retried = ENDINGS.failed(delivery(t), t, error, 0.0, 0.1, retryable=True)
    failed = ENDINGS.failed(delivery(t), t, error, 0.0, 0.1, retryable=False)
    for ending in (retried, failed):
        assert ending.note is not None
        assert "\n" not in ending.note and "\x1b" not in ending.note, ending.note
        assert r"ValueError: bad\ndistq: worker exit. 0 ok\x1b[8m" in ending.note
    assert failed.settlement.dead_letter is not None  # the dead letter keeps the text
    assert DeadLetter.decode(failed.settlement.dead_letter).reason.endswith("0 ok\x1b[8m")


def test_a_huge_exception_message_is_cut_in_every_reason() -> None:
    """A 5 MB message went whole into the log line, the dead letter and the error result:
    on RabbitMQ the dead letter was over max_message_size, refused, and the task ran again
    for good, writing 250 MB of log."""
    huge = ValueError("x" * 5_000_000)
    assert describe(huge) == f"ValueError: {'x' * MAX_MESSAGE_CHARS}... (4,996,000 characters cut)"
    t = task("boom", 5, max_attempts=1)
    ending = ENDINGS.failed(delivery(t), t, huge, 0.0, 0.1, retryable=True)
    assert ending.note is not None and len(ending.note) < MAX_MESSAGE_CHARS + 500
    assert ending.settlement.dead_letter is not None
    assert len(ending.settlement.dead_letter) < 2 * MAX_MESSAGE_CHARS + MAX_TRACEBACK_CHARS


def test_results_too_many_for_one_message_ride_on_several_settlements_none_lost() -> None:
    codec = Codec(max_message_bytes=4096)
    endings = Endings("w", "q", codec)
    tasks = [Task("square", [n], reply_to="A") for n in range(30)]
    batch = [
        endings.ok(Delivery(codec.seal_task(t), tag=n), t, "x" * 500, 1000.0, 0.1)
        for n, t in enumerate(tasks)
    ]
    settlements = endings.settlements(batch)
    carriers = [s for s in settlements if s.result is not None]
    assert len(carriers) > 1 and all(len(s.result or b"") <= 4096 for s in carriers)
    # the packs ride on the earliest settlements, in order, and hold every result once
    assert [s is c for s, c in zip(settlements, carriers, strict=False)] == [True] * len(carriers)
    got = [Result.decode(e).task_id for s in carriers for e in codec.open_results(s.result or b"")]
    assert got == [t.id for t in tasks]


def test_a_long_traceback_keeps_its_last_line() -> None:
    # the test before passed whether the cut kept the start or the end
    try:
        try:
            raise KeyError("c" * 20_000)
        except KeyError as cause:
            raise ValueError("the-last-line") from cause
    except ValueError as error:
        text = traceback_text(error)
    assert "characters cut)\n" in text
    assert text.rstrip().endswith("ValueError: the-last-line")


@pytest.mark.parametrize("byte", [b"\x01", "é".encode()])
def test_a_dead_letter_is_held_to_the_limit_the_broker_refused_over(byte: bytes) -> None:
    """Once the broker refused a message over its max_message_size, a dead letter keeps
    the start of its task, within that limit: cut to a quarter of it, a body of control
    bytes (6 each in JSON) was still over, refused at each delivery (diff17)."""
    codec = Codec()
    codec.hold_to(65536)
    endings = Endings("w1", "q", codec)
    body = byte * 60_000
    ending = endings.malformed(Delivery(body, 1), EnvelopeError("task is not valid JSON"))
    letter = ending.settlement.dead_letter
    assert letter is not None and len(letter) <= 65536
    kept = DeadLetter.decode(letter)
    assert body.startswith(kept.body) and len(kept.body) > 1000
    assert "the dead letter keeps the first" in kept.reason


def test_a_dead_letter_held_to_the_brokers_limit_keeps_whole_characters() -> None:
    """Held to a broker's 65,536 (a quarter of it: 16,384 bytes, then halved), a task
    of an 'x' and then 'é's was cut in the middle of one: its letter kept it in base64
    ('body_b64'), no longer text. It is cut before that 'é'."""
    codec = Codec()
    codec.hold_to(65536)
    body = b"x" + "é".encode() * 60_000
    ending = Endings("w1", "q", codec).malformed(Delivery(body, 1), EnvelopeError("not valid JSON"))
    letter = json.loads(ending.settlement.dead_letter or b"")
    assert "body_b64" not in letter, letter["reason"]
    assert body.startswith(letter["body"].encode()) and len(letter["body"]) == 8192
    assert "the dead letter keeps the first 16,383 bytes" in letter["reason"], letter["reason"]


def test_a_chunks_lines_name_the_function_it_calls_as_its_metrics_do() -> None:
    """A chunk's text and JSON ``message`` lines said ``task distq:chunk <id> ...`` for
    every function mapped in chunks, where its metrics and its ``task settled`` line name
    the function it calls (telemetry.called): an operator sent by an alert on that
    function to its error lines found none naming it."""
    chunk = Task(name=CHUNK_TASK, args=["mod:resize", [[1], [2]]], reply_to="r", max_attempts=2)
    error = ValueError("bad")
    retried = ENDINGS.failed(delivery(chunk), chunk, error, 0.0, 0.0, retryable=True)
    last = chunk.next_attempt()
    failed = ENDINGS.failed(delivery(last), last, error, 0.0, 0.0, retryable=True)
    unhandled = ENDINGS.unhandled(delivery(chunk), chunk, error)
    orphaned = ENDINGS.orphaned(delivery(chunk), chunk)
    for ending in (retried, failed, unhandled, orphaned):
        assert (ending.note or "").startswith(f"task mod:resize {chunk.id} ")
    odd = Task(name=CHUNK_TASK, args=["x"], reply_to="r")  # its arguments name no function
    note = ENDINGS.orphaned(delivery(odd), odd).note or ""
    assert note.startswith(f"task {CHUNK_TASK} {odd.id} ")


def test_a_lone_endings_settlement_is_what_it_would_be_in_a_batch() -> None:
    """A batch of one takes a shorter way to its settlement (no grouping by master): each
    kind of ending, alone, settles as it does among others, its result sealed (signed)
    alone, sent as it is (unsigned, a refusal), or not at all (nobody waits)."""
    key = b"0123456789abcdef-key"
    codec = Codec([key])
    endings = Endings("w", "q", codec)
    unsigned = Task(name="square", args=[3], reply_to="R").encode()
    lone = [
        endings.ok(Delivery(codec.seal_task(t), tag=1), t, 9, 1000.0, 0.1)
        for t in (Task("square", [3], reply_to="A"), Task("square", [3], reply_to=NO_REPLY))
    ]
    failed = Task("square", [3], reply_to="A", attempt=3, max_attempts=3)
    lone.append(
        endings.failed(Delivery(b"x", 2), failed, ValueError("no"), 0.0, 0.1, retryable=True)
    )
    lone.append(endings.malformed(Delivery(unsigned, 3), codec_refusal(codec, unsigned)))
    other = endings.ok(Delivery(b"o", 9), Task("square", [2], reply_to="B"), 4, 0.0, 0.1)
    for ending in lone:
        alone = endings.settlements([ending])
        assert alone == endings.settlements([ending, other])[:1], ending
        assert type(alone[0].result) in (bytes, type(None)), ending  # no Unsealed left
    assert [s.result is None for s in endings.settlements(lone)] == [False, True, False, False]


def codec_refusal(codec: Codec, body: bytes) -> EnvelopeError:
    """The error ``codec`` refuses ``body`` with."""
    with pytest.raises(EnvelopeError) as refused:
        codec.open_task(body)
    return refused.value


def test_a_text_one_character_too_long_says_1_character_cut() -> None:
    """It said "(1 characters cut)"."""
    assert describe(ValueError("x" * (MAX_MESSAGE_CHARS + 1))).endswith("(1 character cut)")
    assert describe(ValueError("x" * (MAX_MESSAGE_CHARS + 2))).endswith("(2 characters cut)")

    def raised(text: str) -> BaseException:
        try:
            raise ValueError(text)
        except ValueError as exc:
            return exc

    plain = traceback_text(raised(""))  # "ValueError\n": one of text, "ValueError: x...\n"
    odd = traceback_text(raised("x" * (MAX_TRACEBACK_CHARS // 2 * 2 + 1 - len(plain) - 2)))
    assert "\n... (1 character cut)\n" in odd, odd[MAX_TRACEBACK_CHARS // 2 - 20 :][:80]
