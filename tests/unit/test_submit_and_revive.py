"""Submit, dead-letters and requeue-dead, in process: arguments from the shell,
revived tasks, the JSON list, the end of a wait."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import io
import json
import math
import re
import secrets
import threading
import time
from typing import Any

import pytest

from distq import dispatcher
from distq.codec import Codec
from distq.commands import (
    EXIT_UNREACHABLE,
    _dead_letters,
    _describe_body,
    _kwargs,
    _requeue_dead,
    _shown_failure,
    _submit_and_wait,
    _when,
    parse_argument,
    reviver,
    run,
    say_array,
)
from distq.config import Settings
from distq.console import Console
from distq.envelope import NO_REPLY, DeadLetter, Task
from distq.errors import (
    ConfigError,
    MessageTooLarge,
    RemoteError,
    SignatureError,
    TransportError,
)
from distq.jsonvalue import check_arguments
from distq.transport import QueueStats, open_transport
from distq.transport.base import counting_moves
from launch import free_port

KEY = b"0123456789abcdef-key"


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", 1),
        ("-2.5", -2.5),
        ("true", True),
        ("null", None),
        ('"7"', "7"),
        ("[1, 2]", [1, 2]),
        ('{"a": 1}', {"a": 1}),
        ("hello", "hello"),
        ("photo.jpg", "photo.jpg"),
        ("", ""),
        # Python's json reads these, JSON has not: strings, as the help says (they were
        # read as floats, then refused as values JSON cannot carry)
        ("NaN", "NaN"),
        ("-Infinity", "-Infinity"),
        ("[1, NaN]", "[1, NaN]"),
        ("1e999", "1e999"),  # past a float's range: read as inf, then refused (diff14)
        ("[-1e400]", "[-1e400]"),
        ("0.1e-999", 0.0),
    ],
)
def test_arguments_are_json_values_or_else_strings(text: str, value: object) -> None:
    assert parse_argument(text) == value


def test_a_number_past_pythons_digit_limit_is_refused_not_sent_as_a_string() -> None:
    """json.loads refuses it with a ValueError that is not a JSONDecodeError: it was taken
    for "not JSON", and the task got the digits as a string, with no message."""
    with pytest.raises(ConfigError, match=r"^ARG '7{20}\.\.\.7{10}' \(5,000 characters\): "):
        parse_argument("7" * 5000)
    assert parse_argument("7" * 4000) == int("7" * 4000)
    assert parse_argument(f'"{"7" * 5000}"') == "7" * 5000  # quoted: the string it asks for


def test_arguments_nested_past_pythons_own_limit_are_refused_not_a_traceback() -> None:
    """json.loads raises RecursionError (not a ValueError) past about 1,000 levels."""
    deep = "[" * 5000 + "]" * 5000
    with pytest.raises(ConfigError, match=r"is nested too deep; .* 62 levels at most"):
        parse_argument(deep)
    with pytest.raises(ConfigError, match=r"^--kwargs .* is nested too deep"):
        _kwargs('{"a": ' + deep + "}")


def test_a_revived_task_starts_over_and_nobody_waits_for_its_result() -> None:
    task = Task(name="jobs:add", args=[1, 2], reply_to="q.results.gone", attempt=3, created_at=5.0)
    letter = DeadLetter(body=task.encode(), reason="failed 3 of 3", queue="q", worker="w")
    revived = Task.decode(reviver(Codec())(letter))
    assert (revived.id, revived.name, revived.args) == (task.id, "jobs:add", [1, 2])
    assert (revived.attempt, revived.max_attempts, revived.reply_to) == (1, 3, NO_REPLY)
    assert revived.created_at > time.time() - 60


def test_a_malformed_letter_goes_back_as_it_was_and_is_told() -> None:
    """`requeue-dead` put back letters no worker can run (malformed, or cut to 64 KiB when
    refused for size) and said only "requeued 8", exit 0; each died again at once under
    another reason (upgrade11). The command is told, to say so and exit 1."""
    letter = DeadLetter(body=b"\xffgarbage", reason="malformed", queue="q", worker="w")
    told: list[str] = []
    assert reviver(Codec(), malformed=told.append)(letter) == b"\xffgarbage"
    assert len(told) == 1 and told[0].startswith("task is not valid JSON: not UTF-8"), told


def test_a_task_that_grows_past_the_limit_as_it_starts_over_goes_back_as_it_was() -> None:
    """A new ``created_at`` (and attempt, reply_to) can make a task that fitted a few bytes
    longer than the limit: its MessageTooLarge stopped the whole requeue-dead at that
    letter, run after run, nothing behind it moved (cli16). Told, and back as it was."""
    codec = Codec(max_message_bytes=1024)
    task = Task(name="square", args=["y"], reply_to="r", created_at=5.0)
    pad = 1024 - len(task.encode())
    task = Task(name="square", args=["y" * (1 + pad)], reply_to="r", id=task.id, created_at=5.0)
    assert len(task.encode()) == 1024  # fits now; longer once started over
    letter = DeadLetter(body=task.encode(), reason="x", queue="q", worker="w")
    told: list[str] = []
    assert reviver(codec, unopened=told.append)(letter) == letter.body
    assert len(told) == 1 and "over the limit of 1,024 bytes once started over" in told[0]
    assert "raise DISTQ_MAX_MESSAGE_BYTES for this command and the workers" in told[0]


def test_a_signed_task_is_opened_and_signed_anew() -> None:
    codec = Codec([KEY])
    task = Task(name="jobs:add", args=[1, 2], reply_to="r", attempt=3)
    letter = DeadLetter(body=codec.seal_task(task), reason="x", queue="q", worker="w")
    body = reviver(codec)(letter)
    revived = codec.open_task(body)  # verifies: signed with the key
    assert (revived.id, revived.attempt, revived.reply_to) == (task.id, 1, NO_REPLY)
    with pytest.raises(SignatureError):
        Codec().open_task(body)
    other = Codec([b"another-key-0123456789"])
    assert reviver(other)(letter) == letter.body  # cannot open it: back as it was


def test_a_keyword_name_from_the_wire_cannot_forge_dead_letter_lines() -> None:
    """Names, ids and reasons were escaped; keyword names printed raw: a queued task
    could write fake letters and terminal escapes into `dead-letters`."""
    task = Task(name="t", args=[], kwargs={"x\nfake letter\x1b[2J": 1}, reply_to=NO_REPLY)
    line = _describe_body(task.encode(), Codec())
    assert "\n" not in line and "\x1b" not in line and "fake letter" in line, line


def test_a_task_name_that_is_not_utf_8_is_refused_by_name() -> None:
    """Bytes from a shell that are not UTF-8 (surrogates in argv): an encoder's traceback."""
    with pytest.raises(TypeError, match=r"the task name '\\udcff\\udcfe' holds the unpaired"):
        check_arguments("\udcff\udcfe", [], {})


def test_a_long_kwargs_or_argument_is_quoted_by_its_ends_in_an_error() -> None:
    """A typo in a 100 KB --kwargs made a 100 KB error line."""
    for text in ("{" + "x" * 100_000, "[" + "1," * 50_000 + "]"):
        with pytest.raises(ConfigError) as caught:
            _kwargs(text)
        assert len(str(caught.value)) < 300 and "characters)" in str(caught.value)


def test_a_long_task_or_keyword_name_is_quoted_by_its_ends_in_an_error() -> None:
    """The name checks quoted the whole name: a 100 KB name made a 100 KB line."""
    for name, kwargs in (("\udcff" + "n" * 100_000, {}), ("t", {"k\udcff" + "k" * 100_000: 1})):
        with pytest.raises(TypeError) as caught:
            check_arguments(name, [], kwargs)
        assert len(str(caught.value)) < 400 and "characters)" in str(caught.value)


def test_a_long_key_inside_an_argument_is_quoted_by_its_ends_in_an_error() -> None:
    """Only the top-level names were shortened: a NaN under a 100 KB key inside an
    argument still made a 100 KB line; a huge int key had no repr at all."""
    for value in ({"k" * 100_000: float("nan")}, [{10**5000: 1}]):
        with pytest.raises(TypeError) as caught:
            check_arguments("t", [value], {})
        assert len(str(caught.value)) < 400, str(caught.value)[:500]


def test_a_dead_letters_time_is_utc_and_says_so_whatever_the_shells_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In local time without a zone, the same letter read 02:23:27 or 21:23:27 by the
    shell's TZ, while the log lines about it say UTC."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert _when(1_796_178_207.13) == "2026-12-02 02:23:27Z"
    finally:
        monkeypatch.undo()
        time.tzset()


class PacksDeadLettered:
    """A RabbitMQ whose dead-letter queue holds 2 messages: a letter, and a pack of 4
    tasks the broker dead-lettered whole (a letter per task)."""

    name, most_peeked, dead_counts_messages = "rabbitmq", 1000, True

    def dead_letters(self, limit: int) -> list[DeadLetter]:
        letters = [DeadLetter(b"t%d" % i, "why", "q", "w", at=1.0) for i in range(5)]
        return letters[:limit]

    def stats(self) -> QueueStats:
        return QueueStats(ready=0, in_flight=0, dead=2, consumers=0)


@pytest.mark.parametrize(
    ("limit", "header"),
    [
        (20, "5 dead letters in the oldest of the 2 messages of the dead-letter queue"),
        (1, "1 of 2 dead letters, oldest first"),
    ],
)
def test_the_dead_letters_header_never_says_more_of_fewer(
    limit: int, header: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """RabbitMQ counts messages, the listing letters: "43 of 11 dead letters" (cli16)."""
    args = argparse.Namespace(limit=limit, json=False)
    console = Console(out=io.StringIO(), err=io.StringIO())
    assert _dead_letters(args, PacksDeadLettered(), Settings(), console) == 0  # type: ignore[arg-type]
    assert capsys.readouterr().out.splitlines()[0].startswith(header)


class PacksDeadLetteredByAnotherName(PacksDeadLettered):
    """A broker that dead-letters packs whole as RabbitMQ does, named otherwise; its
    letters are the broker's (no worker's)."""

    name = "other"

    def dead_letters(self, limit: int) -> list[DeadLetter]:
        return [DeadLetter(b"t%d" % i, "why", "q", "", at=1.0) for i in range(5)][:limit]


def test_the_dead_letters_header_of_a_broker_counting_messages_is_its_transports_to_say(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """ "1 of 2" could be 1 of 5 letters where the broker dead-letters packs whole: that
    was keyed on the name "rabbitmq", so a transport counting messages its own way (a
    new one, or one named otherwise) said "1 of 2 dead letters"."""
    args = argparse.Namespace(limit=1, json=False)
    console = Console(out=io.StringIO(), err=io.StringIO())
    transport = PacksDeadLetteredByAnotherName()
    assert _dead_letters(args, transport, Settings(), console) == 0  # type: ignore[arg-type]
    header = "1 dead letter in the oldest of the 2 messages of the dead-letter queue"
    assert capsys.readouterr().out.splitlines()[0].startswith(header)


@pytest.mark.parametrize(
    "items",
    [
        [],
        [{}],
        [{"at": 1.5, "reason": 'a "quoted"\nline', "task": {"args": [1, [2, {}]], "kwargs": {}}}],
        [{"a": 1}, [], {"b": [1, 2]}, "x", None],
    ],
)
def test_dead_letters_json_is_said_letter_by_letter_as_one_array(
    items: list[object], capsys: pytest.CaptureFixture[str]
) -> None:
    say_array(iter(items))
    out = capsys.readouterr().out
    assert out == json.dumps(items, indent=2) + "\n"  # what one json.dumps of them printed


def test_submit_wait_whose_manager_master_went_says_the_task_went_with_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On manager the queue is in the master: "it stays there ... `distq requeue-dead`
    runs it" sent the user after a queue that no longer existed (identity10)."""
    monkeypatch.setattr(dispatcher, "OUTAGE_SECONDS", 1.0)
    settings = Settings(authkey=secrets.token_bytes(8), manager_address=("127.0.0.1", free_port()))
    hosted = open_transport(settings, "master")
    out = io.StringIO()
    args = argparse.Namespace(task_name="square", max_attempts=3, timeout=20.0)
    timer = threading.Timer(1.0, hosted.close)  # the master ends, the task still queued
    timer.start()
    try:
        code = _submit_and_wait(args, settings, Console(out=out, err=out), [3], {})
    finally:
        timer.cancel()
        hosted.close()
    assert code == 3, out.getvalue()
    assert re.search(
        r"^distq: task [0-9a-f]{32} has no result\. On the manager transport its queue lives "
        r"in the master: if that master has gone, the task went with it \(submit it again once "
        r"one runs\); if it is only unreachable, the task stays queued there, and with nobody "
        r"waiting, a worker dead-letters it unrun \(`distq requeue-dead` runs it\)$",
        out.getvalue(),
        re.M,
    ), out.getvalue()


class _Taken:
    """A transport whose every letter another requeue-dead took first: it revives them
    (reads them) and moves none."""

    def __init__(self, letters: list[DeadLetter]) -> None:
        self.letters = letters

    def requeue_dead(self, limit: int | None, revive: Any) -> int:
        for letter in self.letters:
            revive(letter)
        return 0


class PackDeadLetteredAlone(PacksDeadLetteredByAnotherName):
    """A dead-letter queue of 1 message: a pack of 3 tasks the broker dead-lettered whole."""

    def dead_letters(self, limit: int) -> list[DeadLetter]:
        return super().dead_letters(limit)[:3]

    def stats(self) -> QueueStats:
        return QueueStats(ready=0, in_flight=0, dead=1, consumers=0)


@pytest.mark.parametrize(
    ("limit", "header"),
    [
        (20, "3 dead letters in the 1 message of the dead-letter queue (a pack of tasks"),
        (1, "1 dead letter in the 1 message of the dead-letter queue (a pack of tasks"),
    ],
)
def test_the_dead_letters_header_of_one_message_or_one_letter_says_them_in_the_singular(
    limit: int, header: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """It said "3 dead letters in the oldest of the 1 messages" and "1 dead letters"."""
    args = argparse.Namespace(limit=limit, json=False)
    console = Console(out=io.StringIO(), err=io.StringIO())
    assert _dead_letters(args, PackDeadLetteredAlone(), Settings(), console) == 0  # type: ignore[arg-type]
    assert capsys.readouterr().out.splitlines()[0].startswith(header)


class _Moves(_Taken):
    """A transport whose dead letters all move."""

    def requeue_dead(self, limit: int | None, revive: Any) -> int:
        super().requeue_dead(limit, revive)
        return len(self.letters)


def test_requeue_dead_of_one_letter_says_it_in_the_singular(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """It said "requeued 1 dead letters onto queue 'distq'"."""
    task = Task(name="square", args=[3], reply_to="r")
    letters = [DeadLetter(body=task.encode(), reason="failed", queue="q", worker="w")]
    args = argparse.Namespace(limit=None)
    code = _requeue_dead(args, _Moves(letters), Settings(), Console())  # type: ignore[arg-type]
    assert code == 0
    assert capsys.readouterr().out == "requeued 1 dead letter onto queue 'distq'\n"


class _CutOffAfterOne(_Taken):
    """A transport whose broker went away once it had moved the first letter."""

    def requeue_dead(self, limit: int | None, revive: Any) -> int:
        moved = [0]
        with counting_moves(moved):
            revive(self.letters[0])
            moved[0] += 1
            raise TransportError("Redis at 127.0.0.1:1: Connection closed by server.")
        return moved[0]  # pragma: no cover - raised above


def test_requeue_dead_cut_off_after_one_letter_says_it_in_the_singular() -> None:
    """It said "; 1 dead letters were requeued before that, the rest stay dead letters"."""
    task = Task(name="square", args=[3], reply_to="r")
    letters = [DeadLetter(body=task.encode(), reason="failed", queue="q", worker="w")] * 2
    err = io.StringIO()
    args = argparse.Namespace(limit=None)
    code = _requeue_dead(args, _CutOffAfterOne(letters), Settings(), Console(err=err))  # type: ignore[arg-type]
    assert code == EXIT_UNREACHABLE
    assert err.getvalue().splitlines()[0] == (
        "distq: Redis at 127.0.0.1:1: Connection closed by server; 1 dead letter was requeued "
        "before that, the rest stay dead letters"
    ), err.getvalue()


def test_requeue_dead_that_moved_nothing_says_nothing_more_and_exits_0(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two at once: the one that lost said "requeued 0", then "0 of them are not tasks
    any worker can run", exit 1 (diff15a)."""
    letters = [DeadLetter(body=b"\xffgarbage", reason="malformed", queue="q", worker="w")]
    args = argparse.Namespace(limit=None)
    code = _requeue_dead(args, _Taken(letters), Settings(), Console())  # type: ignore[arg-type]
    assert code == 0
    assert capsys.readouterr().out == "requeued 0 dead letters onto queue 'distq'\n"


def test_a_task_of_another_envelope_version_goes_back_as_one_a_setting_keeps_from_running() -> None:
    """requeue-dead called it "not tasks any worker can run" and, in the same line, said
    to upgrade this process: a worker of its version runs it (diff15a)."""
    body = Task(name="t", args=[], reply_to="r").encode().replace(b'{"v":1,', b'{"v":2,', 1)
    letter = DeadLetter(body=body, reason="malformed", queue="q", worker="w")
    unopened: list[str] = []
    malformed: list[str] = []
    assert reviver(Codec(), unopened.append, malformed.append)(letter) == body
    assert malformed == [] and len(unopened) == 1
    assert unopened[0].startswith("task has envelope version 2, and this distq reads version 1")


def test_a_failure_from_the_wire_is_printed_with_its_control_characters_escaped() -> None:
    """submit --wait printed a task's exception message raw: an escape cleared the
    operator's screen, a line break forged a line (the master escaped it; input17)."""
    error = RemoteError(
        "esc",
        "t1",
        "w\x1b[31m",
        "ValueError",
        "failed 1 of 1 attempts; last error: ValueError: \x1b[2Jred\nFAKE LINE\r",
        'Traceback (most recent call last):\n  File "t.py", line 1\nValueError: \x1b[2J\n',
    )
    text = _shown_failure(error)
    assert "\x1b" not in text and "\r" not in text
    lines = text.split("\n")
    assert lines[0].endswith("ValueError: \\x1b[2Jred\\nFAKE LINE\\r")
    assert lines[0].startswith("task esc [t1] failed on worker w\\x1b[31m: failed 1 of 1")
    assert lines[2:] == [
        "Remote traceback:",
        "Traceback (most recent call last):",
        '  File "t.py", line 1',
        "ValueError: \\x1b[2J",
    ]


def test_a_letter_whose_task_carried_nan_is_listed_as_json_without_it() -> None:
    """dead-letters --json wrote a bare NaN, which is not JSON (input17)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        say_array([{"reason": "r", "body": '{"args":[NaN]}', "task": {"args": [math.nan]}}])
    assert json.loads(out.getvalue(), parse_constant=lambda c: pytest.fail(c)) == [
        {"reason": "r", "body": '{"args":[NaN]}'}
    ]


def test_submit_wait_of_a_task_over_the_size_limit_is_refused_as_without_wait() -> None:
    """A task over DISTQ_MAX_MESSAGE_BYTES is input to change (exit 2, as `submit`
    without --wait refuses it); with --wait one that fit only without a reply queue
    (up to some 40 bytes under the limit) passed the check made before connecting and
    failed in the executor's submit: exit 1, "the task failed", for the same line."""
    settings = Settings(
        authkey=secrets.token_bytes(8),
        manager_address=("127.0.0.1", free_port()),
        max_message_bytes=2048,
    )
    codec = Codec.from_settings(settings)
    text = "x" * 1500
    with contextlib.suppress(MessageTooLarge):
        while codec.seal_task(Task("square", [text + "x"], NO_REPLY)):
            text += "x"  # the longest argument that fits with nobody to reply to
    hosted = open_transport(settings, "master")
    out = io.StringIO()
    args = argparse.Namespace(
        role="submit",
        task_name="square",
        args=[text],
        kwargs=None,
        max_attempts=3,
        wait=True,
        timeout=5.0,
    )
    try:
        with pytest.raises(ConfigError, match="over the limit of 2,048"):
            run(args, settings, Console(out=out, err=out))
    finally:
        hosted.close()


def test_a_letter_signed_before_the_upgrade_is_not_said_to_need_one() -> None:
    """A DQSIG1 letter (distq before the queue was bound) that requeue-dead cannot start
    over was said as "upgrade every master and worker that signs", by the upgraded
    command itself: no upgrade starts it over; its task must be submitted anew."""
    task = Task(name="jobs:add", args=[1, 2], reply_to="r", attempt=3)
    header, _, envelope = Codec([KEY]).seal_task(task).partition(b"\n")
    mac = hmac.new(KEY, envelope, hashlib.sha256).hexdigest().encode()
    old = b"DQSIG1 " + header.split(b" ")[1] + b" " + mac + b"\n" + envelope
    letter = DeadLetter(body=old, reason="x", queue="q", worker="w")
    told: list[str] = []
    assert reviver(Codec([KEY]), unopened=told.append)(letter) == old
    [said] = told
    assert "DQSIG1" in said and "upgrade every" not in said, said
    assert "submit it anew" in said and "distq dead-letters --json" in said, said


@pytest.mark.parametrize("keys", [[KEY], []])
def test_a_letter_signed_in_a_newer_format_is_said_to_need_the_newer_distq(
    keys: list[bytes],
) -> None:
    """A DQSIG4 letter (a newer distq's) was said as any refused signature: "workers with
    signing keys refuse it again" (its workers run it), or, without keys, to set
    DISTQ_SIGNING_KEYS (no key reads it here). Said as a worker says it, and what to do."""
    task = Task(name="jobs:add", args=[1, 2], reply_to="r", attempt=3)
    newer = Codec([KEY]).seal_task(task).replace(b"DQSIG3", b"DQSIG4", 1)
    letter = DeadLetter(body=newer, reason="x", queue="q", worker="w")
    told: list[str] = []
    assert reviver(Codec(keys), told.append, told.append)(letter) == newer
    [said] = told
    assert said.startswith(
        "task signed in format DQSIG4, which a newer distq writes and this one does not "
        "read (it reads DQSIG2 and DQSIG3): upgrade every master and worker of queue "
        "'distq' to the distq that sent it"
    ), said
    assert said.endswith(
        "workers of this distq refuse it again, at once: `distq requeue-dead` of that "
        "distq starts it over"
    ), said


class ManyDeadLetters:
    """A Redis whose dead-letter queue holds 1,500 letters, each a worker's."""

    name, most_peeked, dead_counts_messages = "redis", None, False

    def dead_letters(self, limit: int) -> list[DeadLetter]:
        return [DeadLetter(b"t%d" % i, "why", "q", "w", at=1.0) for i in range(min(limit, 1_500))]

    def stats(self) -> QueueStats:
        return QueueStats(ready=0, in_flight=0, dead=1_500, consumers=0)


def test_the_dead_letters_header_says_counts_past_999_with_separators(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """It said "1200 of 1500 dead letters", where its other header says "the oldest of the
    1,500 messages" and the line on stderr "at most 1,000 dead letters"."""
    args = argparse.Namespace(limit=1_200, json=False)
    console = Console(out=io.StringIO(), err=io.StringIO())
    assert _dead_letters(args, ManyDeadLetters(), Settings(), console) == 0  # type: ignore[arg-type]
    assert capsys.readouterr().out.splitlines()[0] == "1,200 of 1,500 dead letters, oldest first"
