"""Refused tasks and what their dead letters and answers say: a framed pack
over the size limit, a task of another envelope version over the limit or refused for
its signature."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import pytest

from distq import commands
from distq.codec import Codec
from distq.ending import Endings, Unsealed
from distq.envelope import NO_REPLY, DeadLetter, Result, Task
from distq.errors import EnvelopeError, MessageTooLarge, SignatureError
from distq.framing import pack
from distq.futures import DistqFuture
from distq.transport import Delivery

LIMIT = 2000
KEY = b"0123456789abcdef-key"


def _refused(endings: Endings, body: bytes) -> tuple[EnvelopeError, DeadLetter]:
    with pytest.raises(EnvelopeError) as caught:
        endings.codec.open_task(body)
    ending = endings.malformed(Delivery(body, 1), caught.value)
    assert ending.outcome == "malformed" and ending.settlement.dead_letter is not None
    return caught.value, DeadLetter.decode(ending.settlement.dead_letter)


@pytest.mark.parametrize("transport", [None, "rabbitmq", "redis", "manager"])
def test_a_pack_over_the_limit_is_dead_lettered_saying_it_is_a_pack(transport: str | None) -> None:
    """Refused for its size first, its letter said "task is 2,4xx bytes, over the limit":
    one task too large, where 3 small ones came packed in one message."""
    body = pack([Task("jobs.square", ["x" * 700], "replies").encode() for _ in range(3)])
    assert len(body) > LIMIT
    endings = Endings("w1", "q", Codec(max_message_bytes=LIMIT, transport=transport))
    error, letter = _refused(endings, body)
    assert isinstance(error, MessageTooLarge)
    assert "a pack of 3 tasks" in letter.reason, letter.reason
    assert f"{len(body):,} bytes, over the limit of {LIMIT:,}" in letter.reason, letter.reason
    assert "task is" not in letter.reason, letter.reason
    assert letter.body == body[:LIMIT] or letter.body == body  # its start, as any oversized


def _v2(task: Task) -> bytes:
    return task.encode().replace(b'{"v":1,', b'{"v":2,', 1)


@pytest.mark.parametrize("keys", [(), (KEY,)])
def test_a_task_of_another_version_over_the_limit_answers_its_submitter(
    keys: tuple[bytes, ...],
) -> None:
    """Refused for its size before its version was read, it got no answer where a v1
    task over the limit, or a v2 task within it, does: its master waited until its
    timeout."""
    sent = Task(name="jobs:thumb", args=["x" * 5000], reply_to="replies")
    envelope = _v2(sent)
    body = envelope if not keys else Codec(keys).signer.sign(envelope, "task")  # type: ignore[union-attr]
    endings = Endings("w1", "q", Codec(keys, max_message_bytes=LIMIT))
    with pytest.raises(MessageTooLarge) as caught:
        endings.codec.open_task(body)
    ending = endings.malformed(Delivery(body, 1), caught.value)
    s = ending.settlement
    assert s.reply_to == "replies" and s.result is not None, ending
    result = Result.decode(s.result)
    assert (result.task_id, result.status, result.error_type) == (
        sent.id,
        "error",
        "MessageTooLarge",
    )
    assert (result.error_message or "").startswith(f"refused: task is {len(body):,} bytes")


def test_a_task_of_another_version_refused_for_its_signature_answers_unsigned() -> None:
    """An unsigned v2 task at a worker with keys: a v1 one is answered with an unsigned
    refusal, a v2 one was not, and its submitter without keys waited until its timeout."""
    sent = Task(name="jobs:add", args=[1, 2], reply_to="replies")
    endings = Endings("w1", "q", Codec((KEY,)))
    error, letter = _refused(endings, _v2(sent))
    assert isinstance(error, SignatureError)
    ending = endings.malformed(Delivery(_v2(sent), 1), error)
    s = ending.settlement
    assert s.reply_to == "replies" and isinstance(s.result, Unsealed), ending
    result = Result.decode(bytes(s.result))
    assert (result.task_id, result.error_type) == (sent.id, "SignatureError")
    assert letter.reason.startswith("refused: unsigned task")


@pytest.mark.parametrize(
    "tasks",
    [2, 33],  # one a RabbitMQ worker takes with its type, one too many for any
)
def test_a_pack_at_a_worker_of_no_known_transport_is_not_said_as_rabbitmqs_alone(
    tasks: int,
) -> None:
    """A Worker made in Python gets a Codec without settings, so its transport is not
    known: its letter for a pack on Redis or the manager said "sent without the message
    type distq.tasks", which only RabbitMQ's messages have."""
    body = pack([Task("jobs.square", [n], "replies").encode() for n in range(tasks)])
    _, letter = _refused(Endings("w1", "q"), body)
    assert letter.reason.startswith(f"malformed message: a pack of {tasks} task"), letter.reason
    assert "a worker on Redis or the manager takes one task per message" in letter.reason, (
        letter.reason
    )


@pytest.mark.parametrize("version", [0, -1])
def test_a_message_of_no_envelope_version_refused_unread_is_answered_by_nobody(
    version: int,
) -> None:
    """A head of any version is read to answer a task refused before its version was
    (b63a722), but a "v" below 1 says no distq message: none is answered, as before."""
    sent = Task(name="jobs:thumb", args=["x" * 5000], reply_to="replies")
    body = sent.encode().replace(b'{"v":1,', b'{"v":%d,' % version, 1)
    for endings in (Endings("w1", "q", Codec((KEY,))), Endings("w1", "q", Codec((), LIMIT))):
        _, letter = _refused(endings, body)
        with pytest.raises(EnvelopeError) as caught:
            endings.codec.open_task(body)
        s = endings.malformed(Delivery(body, 1), caught.value).settlement
        assert (s.reply_to, s.result) == (None, None), letter.reason


OTHER_KEY = b"another-key-0123456"


@pytest.mark.parametrize(
    ("sender_keys", "worker_keys", "said"),
    [
        ((), (KEY,), "unsigned task: this process requires signatures"),
        ((OTHER_KEY,), (KEY,), "task signed with another key"),
        ((KEY,), (), "signed task, but this process has no signing key"),
    ],
)
def test_a_task_over_the_limit_whose_signature_is_refused_too_is_answered_unsigned(
    sender_keys: tuple[bytes, ...], worker_keys: tuple[bytes, ...], said: str
) -> None:
    """Either refusal alone is answered (over the limit: a verified result; its
    signature: an unsigned one), both together were not: with the keys set on one side
    only and the submitter's limit larger, its master waited until its timeout."""
    sent = Task(name="jobs:thumb", args=["x" * 5000], reply_to="replies")
    body = Codec(sender_keys).seal_task(sent)
    endings = Endings("w1", "q", Codec(worker_keys, max_message_bytes=LIMIT))
    error, letter = _refused(endings, body)
    assert isinstance(error, MessageTooLarge)
    ending = endings.malformed(Delivery(body, 1), error)
    s = ending.settlement
    assert s.reply_to == "replies" and s.result is not None, letter.reason
    assert isinstance(s.result, Unsealed) or not worker_keys  # never signed by this worker
    answer = Codec(max_message_bytes=LIMIT).open_result(
        endings.settlements([ending])[0].result or b""
    )
    assert (answer.task_id, answer.status, answer.error_type) == (
        sent.id,
        "error",
        "SignatureError",
    )
    message = answer.error_message or ""
    assert message.startswith(f"refused: task is {len(body):,} bytes, over the limit"), message
    assert said in message and "DISTQ_SIGNING_KEYS" in message, message
    assert letter.reason.startswith(f"refused: task is {len(body):,} bytes"), letter.reason


def test_a_pack_holding_a_task_nested_too_deeply_is_said_to_be_a_pack() -> None:
    """Read whole, a pack with one task nested past 64 levels was refused for that alone
    ("task nests JSON deeper than 64 levels"), unsaid that it is a pack no worker takes:
    sent as its transport sends packs, the worker would have run the other task."""
    deep: list[object] = [1]
    for _ in range(70):
        deep = [deep]
    tasks = [Task("jobs.square", [2], "replies").encode(), Task("jobs.square", [1], "r").encode()]
    tasks[1] = tasks[1].replace(b'"args":[1]', b'"args":' + repr(deep).replace(" ", "").encode())
    body = pack(tasks)
    error, letter = _refused(Endings("w1", "q", Codec(transport="redis")), body)
    assert isinstance(error, MessageTooLarge)  # NestedTooDeep
    assert letter.reason.startswith("malformed message: a pack of 2 tasks"), letter.reason
    assert "over the limit" not in letter.reason, letter.reason


@pytest.mark.parametrize("keys", [(), (KEY,)])
def test_a_task_nested_too_deeply_answers_its_submitter(keys: tuple[bytes, ...]) -> None:
    """Refused before it was read, as one over the limit is, it was dead-lettered
    unanswered where that one is answered: its master waited until its timeout."""
    deep: list[object] = [1]
    for _ in range(70):
        deep = [deep]
    sent = Task("jobs.square", [1], "replies")
    envelope = sent.encode().replace(
        b'"args":[1]', b'"args":' + repr(deep).replace(" ", "").encode()
    )
    body = envelope if not keys else Codec(keys).signer.sign(envelope, "task")  # type: ignore[union-attr]
    endings = Endings("w1", "q", Codec(keys))
    error, letter = _refused(endings, body)
    assert type(error).__name__ == "NestedTooDeep"
    [s] = endings.settlements([endings.malformed(Delivery(body, 1), error)])
    assert s.reply_to == "replies" and s.result is not None, letter.reason
    answer = Codec(keys).open_result(s.result)  # verified: its signature checked out
    assert (answer.task_id, answer.error_type) == (sent.id, "NestedTooDeep")
    assert answer.error_message == f"{letter.reason}; not run: flatten its arguments"
    assert letter.reason == "refused: task nests JSON deeper than 64 levels"


@pytest.mark.parametrize("keys", [(), (KEY,)])
@pytest.mark.parametrize(
    ("field", "bad"),
    [(b'"attempt":1', b'"attempt":0'), (b'"args":[1]', b'"args":"1"'), (b'"kwargs":{}', b"[]")],
)
def test_a_malformed_task_whose_head_reads_answers_its_submitter(
    keys: tuple[bytes, ...], field: bytes, bad: bytes
) -> None:
    """A version-1 task with a field of the wrong type, or attempt 0, was dead-lettered
    unanswered though its head (id, reply queue) reads, its signature checked out: its
    master waited until its timeout, where one too large or nested too deeply is
    answered. Answered now with a verified error result saying why."""
    sent = Task("jobs.square", [1], "replies")
    envelope = sent.encode()
    assert field in envelope
    envelope = envelope.replace(field, bad if bad.startswith(b'"') else b'"kwargs":' + bad)
    body = envelope if not keys else Codec(keys).signer.sign(envelope, "task")  # type: ignore[union-attr]
    endings = Endings("w1", "q", Codec(keys))
    error, letter = _refused(endings, body)
    assert type(error) is EnvelopeError
    assert letter.reason.startswith("malformed message: task field"), letter.reason
    [s] = endings.settlements([endings.malformed(Delivery(body, 1), error)])
    assert s.reply_to == "replies" and s.result is not None, letter.reason
    answer = Codec(keys).open_result(s.result)  # verified: its signature checked out
    assert (answer.task_id, answer.status, answer.error_type) == (sent.id, "error", "EnvelopeError")
    assert answer.error_message == f"{letter.reason}; not run"


def test_a_malformed_task_without_a_reply_or_forged_is_not_answered() -> None:
    """No answer for a task that asks for none, nor, signed with another key, a signed one."""
    quiet = Task("jobs.square", [1], NO_REPLY).encode().replace(b'"attempt":1', b'"attempt":0')
    endings = Endings("w1", "q", Codec())
    error, _ = _refused(endings, quiet)
    [s] = endings.settlements([endings.malformed(Delivery(quiet, 1), error)])
    assert s.result is None and s.reply_to is None
    forged_envelope = Task("jobs.square", [1], "replies").encode()
    forged = Codec((b"another-key-0123456789",)).signer.sign(  # type: ignore[union-attr]
        forged_envelope.replace(b'"attempt":1', b'"attempt":0'), "task"
    )
    endings = Endings("w1", "q", Codec((KEY,)))
    error, _ = _refused(endings, forged)
    assert isinstance(error, SignatureError)
    result = endings.malformed(Delivery(forged, 1), error).settlement.result
    assert result is None or isinstance(result, Unsealed)  # never signed


def _old_format(body: bytes) -> bytes:
    """``body`` (DQSIG2) as distq before the queue was bound signed it, as DQSIG1."""
    header, _, envelope = body.partition(b"\n")
    mac = hmac.new(KEY, envelope, hashlib.sha256).hexdigest().encode()
    return b"DQSIG1 " + header.split(b" ")[1] + b" " + mac + b"\n" + envelope


@pytest.mark.parametrize("sent_as", ["another queue", "DQSIG1", "DQSIG4"])
def test_a_task_refused_with_the_workers_own_key_is_not_answered_to_give_the_same_keys(
    sent_as: str,
) -> None:
    """Signed with a key the worker holds, for queue 'a' and moved onto 'b' (or in the
    format of an older distq, or of a newer one), its answer ended "give the workers and
    the process that submits tasks the same DISTQ_SIGNING_KEYS": the keys were the same
    already. It now says what would run it: submitting it to 'b' itself (or upgrading)."""
    sent = Task(name="jobs:add", args=[1, 2], reply_to="replies")
    body = Codec((KEY,), queue="a").seal_task(sent)
    if sent_as == "DQSIG1":
        body = _old_format(body)
    elif sent_as == "DQSIG4":  # a newer distq's format, whatever its signature
        body = b"DQSIG4" + body[len(b"DQSIG3") :]
    endings = Endings("w1", "b", Codec((KEY,), queue="b"))
    error, letter = _refused(endings, body)
    [s] = endings.settlements([endings.malformed(Delivery(body, 1), error)])
    answer = Codec().open_result(s.result or b"")
    message = answer.error_message or ""
    assert "same DISTQ_SIGNING_KEYS" not in message, message
    fix = "submit it to queue 'b' itself" if sent_as == "another queue" else "upgrade"
    for said in (message, letter.reason):
        assert fix in said, said


def _kept(futures: list[DistqFuture[Any]], wait: bool = True) -> list[bool]:
    return [False for _ in futures]


@pytest.mark.parametrize("sent_as", ["keys alike", "other keys", "a newer format"])
def test_a_wait_for_a_task_refused_with_the_workers_own_key_does_not_advise_keys(
    sent_as: str,
) -> None:
    """Signed with the worker's key for queue 'a', moved onto 'b' and refused there: the
    Executor's (and `submit --wait`'s) wait ended "give the workers and this process the
    same DISTQ_SIGNING_KEYS", and `submit --wait` "once the keys match, `distq
    requeue-dead` runs it": the keys were the same. With other keys, both still say so.
    Nor for a format newer than the worker reads (DQSIG4): upgrading it is the fix."""
    keys_alike = sent_as != "other keys"
    sent = Task(name="jobs:add", args=[1, 2], reply_to="replies")
    submitter = Codec((KEY if keys_alike else b"another-key-0123456789",), queue="a")
    endings = Endings("w1", "b", Codec((KEY,), queue="b"))
    body = submitter.seal_task(sent)
    if sent_as == "a newer format":
        body = b"DQSIG4" + body[len(b"DQSIG3") :]
    error, _ = _refused(endings, body)
    [s] = endings.settlements([endings.malformed(Delivery(body, 1), error)])
    answer = bytes(s.result or b"")
    with pytest.raises(SignatureError) as caught:
        submitter.open_results(answer)
    future: DistqFuture[int] = DistqFuture(_kept, sent.id, sent.name)
    future.refused = str(submitter.refusal_said(answer, caught.value))
    waited = future.waiting(1.0)
    assert "came back unsigned" in waited, waited
    assert ("same DISTQ_SIGNING_KEYS" in waited) is not keys_alike, waited
    then = commands._refused_then(future)
    assert ("once the keys match" in then) is not keys_alike, then


@pytest.mark.parametrize("sent_as", ["unsigned", "a malformed header"])
def test_a_task_refused_unsigned_or_with_a_malformed_header_has_its_fix_in_its_letter(
    sent_as: str,
) -> None:
    """Its answer said to give the workers and the submitter the same keys; its dead
    letter, which `distq dead-letters` shows, and the worker's line named no fix: only
    "unsigned task: this process requires signatures" or "malformed signature header"."""
    sent = Task(name="jobs:add", args=[1, 2], reply_to="replies")
    signed = Codec((KEY,)).seal_task(sent)
    body = sent.encode() if sent_as == "unsigned" else signed[:9] + b"\n" + sent.encode()
    endings = Endings("w1", "q", Codec((KEY,)))
    error, letter = _refused(endings, body)
    ending = endings.malformed(Delivery(body, 1), error)
    fix = "the same DISTQ_SIGNING_KEYS"
    for said in (letter.reason, ending.note or ""):
        assert fix in said, said
    [s] = endings.settlements([ending])
    if sent_as == "unsigned":  # a malformed header names no task to answer
        answer = Codec().open_result(s.result or b"").error_message or ""
        assert answer.count(fix) == 1, answer
