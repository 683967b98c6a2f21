"""Signed envelopes, size and nesting limits: the codec, the worker's and the master's use."""

from __future__ import annotations

import hashlib
import hmac
import io
import itertools
import json
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from distq.codec import Codec
from distq.config import Settings
from distq.console import Console
from distq.ending import Ending, Endings
from distq.envelope import SHALLOW_NESTING, DeadLetter, Result, Task
from distq.errors import (
    EnvelopeError,
    MessageTooLarge,
    NewerSignature,
    SignatureError,
    UnverifiedRefusal,
)
from distq.limits import MAX_NESTING, OVERSIZED_KEPT_BYTES, check_nesting
from distq.master import JobSpec, Master
from distq.runner import TaskRunner
from distq.signing import (
    HEADER_BYTES,
    MAGIC,
    MIN_KEY_LENGTH,
    SIGNED,
    Signer,
    context,
    key_id,
    parse_key,
    parse_keys,
)
from distq.squares import Squares
from distq.tasks import Registry
from distq.transport import Delivery, Settlement, open_transport
from launch import free_port

OLD, NEW, OTHER = (secrets.token_hex(16).encode() for _ in range(3))


def task(*args: Any, name: str = "square", **kw: Any) -> Task:
    return Task(name=name, args=list(args), reply_to="replies", **kw)


def boom(n: int) -> int:
    raise ValueError(f"bad {n}")


class Runner:
    """A worker's task runner with ``codec``; ``process`` gives (settlement, outcome)."""

    def __init__(self, codec: Codec, ran: list[Any] | None = None) -> None:
        self.registry = Registry()
        self.registry.register("boom", boom)
        self.registry.register("echo", lambda value: value)
        self.registry.register("grow", lambda text: text * 3)
        self.registry.register("nest", lambda value: [[[[value]]]])
        self.err = io.StringIO()
        self.console = Console(quiet=True, out=io.StringIO(), err=self.err)
        self.runner = TaskRunner(self.registry, Endings("w1", "q", codec), self.console)

    def process(self, delivery: Delivery) -> tuple[Settlement, str]:
        ending: Ending = self.runner(delivery)
        (settlement,) = self.runner.endings.settlements([ending])  # as the worker sends it
        if ending.note is not None:  # the worker prints it once settled
            self.console.error(ending.note)
        return settlement, ending.outcome


def worker(codec: Codec) -> tuple[Runner, io.StringIO]:
    runner = Runner(codec)
    return runner, runner.err


def dead_reason(settlement: Settlement) -> str:
    assert settlement.dead_letter is not None and settlement.result is None
    assert settlement.retry is None
    return DeadLetter.decode(settlement.dead_letter).reason


# --- the wire format ---------------------------------------------------------------


def test_without_keys_a_message_is_the_bare_envelope() -> None:
    t = task(3)
    assert Codec().seal_task(t) == t.encode()
    assert Codec().open_task(t.encode()) == t


def test_signature_covers_the_exact_envelope_bytes() -> None:
    t = task(3)
    sealed = Codec([NEW]).seal_task(t)
    header, envelope = sealed.split(b"\n", 1)
    assert envelope == t.encode()  # the JSON is untouched: signature outside it
    assert header.startswith(MAGIC) and header.split()[1] == key_id(NEW).encode()
    assert len(header.split()[2]) == 64
    assert Codec([NEW]).open_task(sealed) == t


def test_key_id_does_not_reveal_the_key() -> None:
    assert key_id(NEW) != key_id(OLD) and key_id(NEW).encode() not in NEW


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (lambda: task(3).encode(), "unsigned task"),
        (lambda: Codec([OTHER]).seal_task(task(3)), "signed with another key"),
        (lambda: Codec([NEW]).seal_task(task(3)).replace(b"[3]", b"[4]"), "bad signature"),
        (lambda: Codec([NEW]).seal_task(task(3))[:-1] + b" ", "bad signature"),
        (lambda: MAGIC + b"abc\n{}", "malformed signature header"),
        (lambda: MAGIC, "malformed signature header"),
        (lambda: Codec([NEW]).seal_task(task(3))[:60], "malformed signature header"),
        (lambda: Codec([NEW]).seal_task(task(3)).replace(b"\n", b" ", 1), "malformed"),
        (lambda: (lambda m: m[:15] + b"-" + m[16:])(Codec([NEW]).seal_task(task(3))), "malformed"),
    ],
)
def test_refused_messages_say_why(message: Any, reason: str) -> None:
    with pytest.raises(SignatureError, match=reason):
        Codec([NEW]).open_task(message())


def test_rotation_signs_with_the_first_key_and_accepts_every_key() -> None:
    rotating = Codec([NEW, OLD])
    assert rotating.open_task(Codec([OLD]).seal_task(task(1))).args == [1]
    assert rotating.open_task(Codec([NEW]).seal_task(task(2))).args == [2]
    sealed = rotating.seal_task(task(3))
    assert Codec([NEW]).open_task(sealed).args == [3]
    with pytest.raises(SignatureError, match="another key"):
        Codec([OLD]).open_task(sealed)


def test_a_process_without_keys_refuses_a_signed_message() -> None:
    with pytest.raises(SignatureError, match="no signing key"):
        Codec().open_result(Codec([NEW]).seal(b"{}", "result"))


def test_signer_needs_a_key() -> None:
    with pytest.raises(ValueError):
        Signer([])


# --- limits ------------------------------------------------------------------------


def test_submitting_a_task_over_the_limit_names_it() -> None:
    t = task("x" * 2000, name="jobs:big")
    with pytest.raises(MessageTooLarge) as caught:
        Codec(max_message_bytes=1024).seal_task(t)
    message = str(caught.value)
    assert f"task jobs:big [{t.id}]" in message and "DISTQ_MAX_MESSAGE_BYTES" in message
    assert "1,024" in message


def test_the_limit_counts_the_signature() -> None:
    t = task("x" * 800)
    assert len(t.encode()) < 1024 < len(Codec([NEW]).seal_task(t)) + 200
    Codec(max_message_bytes=1024).seal_task(t)
    padded = task("x" * (1024 - len(t.encode()) + 800))
    with pytest.raises(MessageTooLarge):
        Codec([NEW], max_message_bytes=1024).seal_task(padded)


def test_an_oversized_message_is_refused_before_any_decoding() -> None:
    body = b"\xff" * 5000  # not JSON, not even UTF-8: refused for its size alone
    with pytest.raises(MessageTooLarge, match="5,000 bytes"):
        Codec(max_message_bytes=4096).open_task(body)


def test_a_message_of_exactly_the_limit_opens_and_one_byte_more_is_refused() -> None:
    """The limit is the most bytes a message may have: one over it was decoded, not
    refused, had the check been off by one (mutant LI1 of mut14a), for tasks and results."""

    def task_of(text: str) -> bytes:
        return Codec().seal_task(task(text, 1, id="t1", created_at=1.5))

    def result_of(text: str) -> bytes:
        return Result("t1", "ok", "w", 1, 0.0, 0.0, value=text).encode()

    def sized(make: Callable[[str], bytes], size: int) -> bytes:
        message = make("x" * (size - len(make(""))))
        assert len(message) == size
        return message

    codec = Codec(max_message_bytes=2000)
    assert codec.open_task(sized(task_of, 2000)).id == "t1"
    assert codec.open_result(sized(result_of, 2000)).task_id == "t1"
    assert len(codec.open_results(sized(result_of, 2000))) == 1
    over = "is 2,001 bytes, over the limit of 2,000"
    with pytest.raises(MessageTooLarge, match=f"task {over}"):
        codec.open_task(sized(task_of, 2001))
    for read in (codec.open_result, codec.open_results):
        with pytest.raises(MessageTooLarge, match=f"result {over}"):
            read(sized(result_of, 2001))


def deep(levels: int) -> Any:
    value: Any = 1
    for i in range(levels):
        value = [value] if i % 2 else {"k": value}
    return value


def test_nesting_is_limited_before_the_parser_recurses() -> None:
    ok = json.dumps(deep(MAX_NESTING - 1)).encode()
    check_nesting(ok, "task")
    with pytest.raises(MessageTooLarge, match=f"deeper than {MAX_NESTING}"):
        check_nesting(json.dumps([deep(MAX_NESTING)]).encode(), "task")
    with pytest.raises(MessageTooLarge):  # far past the interpreter's recursion limit
        check_nesting(b"[" * 200_000 + b"]" * 200_000, "task")
    check_nesting(json.dumps(["[" * 500, "{" * 500]).encode(), "task")  # inside strings
    check_nesting(json.dumps(['\\"[[' * 100]).encode(), "task")  # escapes inside strings
    check_nesting(json.dumps([[i] for i in range(5000)]).encode(), "task")  # wide, not deep


def test_a_deeply_nested_task_is_refused_as_an_envelope_error() -> None:
    body = task(deep(MAX_NESTING)).encode()
    with pytest.raises(EnvelopeError, match="deeper than"):
        Task.decode(body)


def _task_text(depth: int) -> str:
    """A task whose args hold U+2241 (``A"`` in UTF-16-LE) and then ``depth`` nested lists."""
    return (
        '{"v":1,"id":"a","name":"f","args":["\u2241",' + "[" * depth + "]" * depth + ',"x"],'
        '"kwargs":{},"reply_to":"q","attempt":1,"max_attempts":3,"created_at":1.0}'
    )


@pytest.mark.parametrize("depth", [MAX_NESTING, 500, 980])
@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16", "utf-32"])
def test_a_task_not_in_utf_8_is_refused_however_deep(depth: int, encoding: str) -> None:
    """Was: json.loads guessed UTF-16, whose ``0x22`` bytes inside other characters hid
    every bracket from the nesting count: a task 980 levels deep reached its function."""
    body = _task_text(depth).encode(encoding)
    signed = Signer([NEW]).sign(body, "task")  # a signature proves the sender, not the encoding
    for decode, message in (
        (Task.decode, body),
        (Codec().open_task, body),
        (Codec([NEW]).open_task, signed),
    ):
        with pytest.raises(EnvelopeError, match="task is not valid JSON"):
            decode(message)
    # in UTF-8 the same task is refused for its depth, as the README says
    with pytest.raises(MessageTooLarge, match=f"deeper than {MAX_NESTING}"):
        Task.decode(_task_text(depth).encode())


@pytest.mark.parametrize("encoding", ["utf-16", "utf-32"])
def test_results_and_dead_letters_not_in_utf_8_are_refused(encoding: str) -> None:
    ok = Result("t", "ok", "w", 1, 1.0, 0.5, value=["\u2241", [[[1]]]])
    with pytest.raises(EnvelopeError, match="result is not valid JSON"):
        Result.decode(ok.encode().decode().encode(encoding))
    letter = DeadLetter(b"body", "why", "q", "w").encode()
    with pytest.raises(EnvelopeError, match="dead letter is not valid JSON"):
        DeadLetter.decode(letter.decode().encode(encoding))


def test_what_is_utf_8_decodes_as_before() -> None:
    task = Task("f", ["\u2241", [[1]], "\U0001f600"], "q")
    for body in (task.encode(), b"\xef\xbb\xbf" + task.encode()):  # a UTF-8 BOM: as json did
        assert Task.decode(body) == task and Task._decode_json(body) == task
    assert Task._decode_json(task.encode().decode()) == task  # text, as a test may pass
    with pytest.raises(EnvelopeError, match=r"task is not valid JSON: not UTF-8 .*0xff"):
        Task.decode(task.encode().replace(b"\xe2", b"\xff"))


@pytest.mark.parametrize("depth", [0, 1, SHALLOW_NESTING - 2, SHALLOW_NESTING - 1, 20])
@pytest.mark.parametrize("codec", [Codec(), Codec([NEW])])
def test_sealing_skips_the_nesting_count_only_for_what_the_fast_path_writes(
    depth: int, codec: Codec
) -> None:
    value = deep(depth)
    t = task(value, kwargs={"k": value})
    r = Result(t.id, "ok", "w", 1, 1.0, 0.5, value)
    for shallow, encoded, sealed, kind in (
        (t.encode_shallow(), t.encode(), codec.seal_task(t), "task"),
        (r.encode_shallow(), r.encode(), codec.seal_result(r), "result"),
    ):
        assert sealed == codec.seal(encoded, kind)  # the same message either way
        if shallow is not None:  # written by the fast path: within the bound, uncounted
            assert shallow == encoded
            assert _nesting(encoded) <= SHALLOW_NESTING <= MAX_NESTING
        else:
            assert depth >= SHALLOW_NESTING - 1  # only deeper values take the stdlib's path
    assert (t.encode_shallow() is None) == (depth >= SHALLOW_NESTING - 1)


def test_sealing_still_refuses_what_nests_too_deeply() -> None:
    codec = Codec()
    with pytest.raises(MessageTooLarge, match="deeper than"):
        codec.seal_task(task(deep(MAX_NESTING)))
    with pytest.raises(MessageTooLarge, match="deeper than"):
        codec.seal_result(Result("id", "ok", "w", 1, 1.0, 0.5, deep(MAX_NESTING)))
    error = Result("id", "error", "w", 1, 1.0, 0.5, None, "E", "m")
    assert error.encode_shallow() is None  # error results take the stdlib's path
    assert codec.seal_result(error) == codec.seal(error.encode(), "result")


def _nesting(data: bytes) -> int:
    level = top = 0
    for char in json.dumps(json.loads(data)):  # no brackets inside these strings
        level += (char in "[{") - (char in "]}")
        top = max(top, level)
    return top


# --- the worker --------------------------------------------------------------------


def test_a_signing_worker_runs_signed_tasks_and_signs_results_and_retries() -> None:
    w, _ = worker(Codec([NEW, OLD]))
    settlement, outcome = w.process(Delivery(Codec([OLD]).seal_task(task(7)), 1))
    assert outcome == "ok" and settlement.result is not None
    assert Codec([NEW]).open_result(settlement.result).value == 49
    with pytest.raises(SignatureError):
        Codec().open_result(settlement.result)
    settlement, outcome = w.process(Delivery(Codec([NEW]).seal_task(task(1, name="boom")), 2))
    assert outcome == "retried" and settlement.retry is not None
    assert Codec([NEW]).open_task(settlement.retry).attempt == 2


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (lambda: task(7).encode(), "refused: unsigned task"),
        (lambda: Codec([OTHER]).seal_task(task(7)), "refused: task signed with another key"),
        (lambda: Codec([NEW]).seal_task(task(7)).replace(b"[7]", b"[8]"), "bad signature"),
    ],
)
def test_a_task_not_signed_right_is_never_run_and_is_dead_lettered(body: Any, reason: str) -> None:
    ran: list[int] = []
    w, err = worker(Codec([NEW]))
    w.registry.register("square", lambda n: ran.append(n))
    message = body()
    settlement, outcome = w.process(Delivery(message, 1))
    assert outcome == "malformed" and not ran
    assert reason in dead_reason_of(settlement)
    assert settlement.retry is None
    assert DeadLetter.decode(settlement.dead_letter or b"").body == message
    assert reason in err.getvalue()


@pytest.mark.parametrize(
    ("keys", "body", "reason"),
    [
        ([NEW], lambda t: t.encode(), "refused: unsigned task"),
        ([NEW], lambda t: Codec([OTHER]).seal_task(t), "signed with another key"),
        ([], lambda t: Codec([NEW]).seal_task(t), "this process has no signing key"),
        ([NEW], lambda t: Codec([NEW]).seal_task(t).replace(b"[7]", b"[8]"), "bad signature"),
    ],
)
def test_a_task_refused_for_its_signature_is_answered_unsigned(
    keys: list[bytes], body: Any, reason: str
) -> None:
    """Keys on one side only left an executor's future pending for ever, the task
    dead-lettered unanswered (exec16). The answer is never signed: a submitter without
    keys takes it, one with keys refuses it as any unsigned result (no forged task makes
    a worker sign an answer)."""
    w, _ = worker(Codec(keys))
    sent = task(7)
    settlement, outcome = w.process(Delivery(body(sent), 1))
    assert outcome == "malformed" and settlement.reply_to == "replies"
    assert type(settlement.result) is bytes  # plain bytes on the wire, not the marker
    assert not settlement.result.startswith(SIGNED)  # in no format
    answer = Codec().open_result(settlement.result)
    assert (answer.status, answer.error_type) == ("error", "SignatureError")
    message = answer.error_message or ""
    # a key it holds signed it (altered, or signed for another queue): the keys are alike
    fix = (
        "submit it to queue 'distq' itself"
        if reason == "bad signature"
        else "same DISTQ_SIGNING_KEYS"
    )
    assert reason in message and fix in message, message
    assert answer.task_id == sent.id
    with pytest.raises(SignatureError, match="unsigned result") as caught:
        Codec([NEW]).open_result(settlement.result)
    # said with its task and what it says, as unverified (input17: "unsigned result" only)
    said = Codec([NEW]).refusal_said(settlement.result, caught.value)
    assert isinstance(said, UnverifiedRefusal) and said.task_id == sent.id
    assert str(said).startswith("unsigned result")
    assert f"answer for task {sent.id}, which says (unverified)" in str(said)
    assert reason in str(said)
    forged = Codec().encode_result(Result(sent.id, "error", "w", 1, 0.0, 0.0, error_type="X"))
    assert Codec([NEW]).refusal_said(forged, caught.value) is caught.value  # no refusal


def test_a_refusal_is_not_packed_with_the_batchs_signed_results() -> None:
    w, _ = worker(Codec([NEW]))
    ok = Delivery(Codec([NEW]).seal_task(task(3, name="echo")), 1)
    refused = Delivery(task(4).encode(), 2)
    endings = [w.runner(ok), w.runner(refused)]
    sent = w.runner.endings.settlements(endings)
    assert [s.reply_to for s in sent] == ["replies", "replies"]
    assert Codec([NEW]).open_result(sent[0].result or b"").value == 3
    assert Codec().open_result(sent[1].result or b"").error_type == "SignatureError"


def test_an_task_head_is_dead_lettered_with_its_head_kept() -> None:
    w, _ = worker(Codec(max_message_bytes=4096))
    body = task("y" * (OVERSIZED_KEPT_BYTES * 2)).encode()
    settlement, outcome = w.process(Delivery(body, 1))
    reason = dead_reason_of(settlement)
    assert outcome == "malformed" and "over the limit of 4,096" in reason
    assert f"keeps its first {OVERSIZED_KEPT_BYTES:,} bytes" in reason
    assert DeadLetter.decode(settlement.dead_letter or b"").body == body[:OVERSIZED_KEPT_BYTES]
    assert settlement.result is not None  # its submitter is told (see test_ending)
    assert Result.decode(settlement.result).error_type == "MessageTooLarge"


def test_a_result_over_the_limit_fails_the_task_for_good() -> None:
    w, _ = worker(Codec(max_message_bytes=2048))
    settlement, outcome = w.process(Delivery(task("z" * 1000, name="grow").encode(), 1))
    assert outcome == "failed" and settlement.retry is None
    assert settlement.result is not None and len(settlement.result) <= 2048
    assert "over the limit" in dead_reason_of(settlement)
    assert Result.decode(settlement.result).status == "error"


def dead_reason_of(settlement: Settlement) -> str:
    assert settlement.dead_letter is not None
    return DeadLetter.decode(settlement.dead_letter).reason


def test_a_result_nested_too_deeply_fails_the_task_for_good() -> None:
    w, _ = worker(Codec())
    payload = json.loads(json.dumps(deep(MAX_NESTING - 3)))  # fits a task, not a result
    settlement, outcome = w.process(Delivery(task(payload, name="nest").encode(), 1))
    assert outcome == "failed" and "nested more than 63 levels" in dead_reason_of(settlement)


# --- the master --------------------------------------------------------------------


def test_the_master_drops_results_that_are_not_signed_right() -> None:
    settings = Settings(authkey=secrets.token_bytes(8), manager_address=("127.0.0.1", free_port()))
    transport = open_transport(settings, "master")
    out = io.StringIO()
    stop = threading.Event()

    def serve() -> None:  # answers each task three times: forged, unsigned, then signed right
        consumer = transport.consumer("w")
        while not stop.is_set():
            for delivery in consumer.fetch(10, 0.1):
                t = Codec([NEW]).open_task(delivery.body)
                ok = Result(t.id, "ok", "w", 1, 0.0, 0.0, value=t.args[0] ** 2).encode()
                bodies = [Codec([OTHER]).seal(ok, "result"), ok, Codec([NEW]).seal(ok, "result")]
                consumer.settle([Settlement(delivery, reply_to=t.reply_to, result=bodies[0])])
                # the master's own process hosts the queues: push the other two straight in
                transport._broker.put(t.reply_to, bodies[1:])  # type: ignore[attr-defined]

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        master = Master(transport, Console(out=out, err=out), codec=Codec([NEW]))
        report = master.run(JobSpec(tasks=2, timeout=20), Squares())
    finally:
        stop.set()
        thread.join(5)
        transport.close()
    text = out.getvalue()
    assert report.succeeded and report.ok == 2, text
    assert text.count("dropped a result: result signed with another key") == 2
    assert text.count("dropped a result: unsigned result") == 2


def test_the_signature_is_keyed_blake2b_of_the_exact_envelope_bytes() -> None:
    """The wire format, checked against the standard library's one-shot hashes, from
    several threads at once (the signer reuses one keyed state per key)."""
    signer = Signer([NEW, OLD])
    envelopes = [task(n).encode() for n in range(200)]
    seen: list[bytes] = []

    def sign_all() -> None:
        seen.extend(signer.sign(envelope, "task") for envelope in envelopes)

    threads = [threading.Thread(target=sign_all) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 4 * len(envelopes)
    for message in seen:
        envelope = message.partition(b"\n")[2]
        assert message == dqsig3(NEW, envelope)
        assert signer.verify(message, "task") == envelope
    assert key_id(NEW) == hmac.new(NEW, b"distq key id", hashlib.sha256).hexdigest()[:8]
    old = Signer([OLD]).sign(envelopes[0], "task")
    assert signer.verify(old, "task") == envelopes[0]  # the second key verifies too


@pytest.mark.parametrize("length", [16, 63, 64, 65, 200])
def test_keys_of_any_length_sign_as_the_standard_library_does(length: int) -> None:
    """BLAKE2b takes keys of up to 64 bytes: a longer one signs through its derived key,
    and an older process's DQSIG2 (an HMAC, of any key's length) verifies."""
    key = bytes(range(256))[:length] if length <= 256 else b"k" * length
    envelope = task(7).encode()
    signer = Signer([key], "q")
    assert signer.sign(envelope, "task") == dqsig3(key, envelope, "task", "q")
    assert signer.verify(dqsig2(key, envelope, "task", "q"), "task") == envelope


def test_a_key_of_exactly_the_minimum_length_is_accepted() -> None:
    """The README's "at least 16 characters": 16 is enough (mut17: untested boundary)."""
    key = "k" * MIN_KEY_LENGTH
    assert parse_keys(key) == parse_key(key) == (key.encode(),)
    with pytest.raises(ValueError, match="15 characters long"):
        parse_keys(key[1:])


@pytest.mark.parametrize("reply_to", ["", "q" * 300])
def test_a_refused_task_whose_reply_queue_does_not_fit_is_answered_nowhere(reply_to: str) -> None:
    """A task refused unread (too large for this worker, another version, a signature it
    refuses) is answered at its head's reply queue only if a broker takes that name
    (1 to 255 bytes), not at "" or a 300-byte name read from an unverified message (mut17)."""
    body = Task(name="square", args=[3], reply_to="r").encode()
    body = body.replace(b'"reply_to":"r"', b'"reply_to":"%s"' % reply_to.encode())
    assert b'"reply_to":"%s"' % reply_to.encode() in body
    small = Codec(max_message_bytes=1024)
    big = body.replace(b'"args":[3]', b'"args":["%s"]' % (b"x" * 2000))
    assert small.task_head(big) is None
    assert small.unverified_task_head(body) is None
    assert small.task_head(body.replace(b'{"v":1', b'{"v":2'), any_version=True) is None
    fits = Task(name="square", args=[3], reply_to="r").encode()
    assert small.unverified_task_head(fits) is not None  # the same, with a name that fits


def test_a_message_of_exactly_the_limit_passes_and_one_byte_more_does_not() -> None:
    """DISTQ_MAX_MESSAGE_BYTES: a message *over* it is refused (mut17: the boundary was
    untested on sealing and on opening)."""
    task = Task(name="square", args=[3], reply_to="r")
    size = len(Codec().seal_task(task))
    assert Codec(max_message_bytes=size).open_task(Codec(max_message_bytes=size).seal_task(task))
    with pytest.raises(MessageTooLarge):
        Codec(max_message_bytes=size - 1).seal_task(task)
    with pytest.raises(EnvelopeError):
        Codec(max_message_bytes=size - 1).open_task(Codec().seal_task(task))


def test_over_a_limit_the_broker_set_names_the_broker_not_the_setting() -> None:
    """Once held to the broker's max_message_size, a message over it said to raise
    DISTQ_MAX_MESSAGE_BYTES, which cannot help (diff17)."""
    codec = Codec()
    codec.hold_to(1000)
    with pytest.raises(MessageTooLarge) as caught:
        codec.seal_task(task("x" * 2000))
    said = str(caught.value)
    assert "over the limit of 1,000 (the broker's max_message_size)" in said
    assert "DISTQ_MAX_MESSAGE_BYTES" not in said
    with pytest.raises(MessageTooLarge, match=r"\(DISTQ_MAX_MESSAGE_BYTES\)"):
        Codec(max_message_bytes=1000).seal_task(task("x" * 2000))


def test_a_byte_order_mark_in_front_of_the_keys_is_not_part_of_the_first_key(
    tmp_path: Path,
) -> None:
    """A keys file saved by an editor that writes a UTF-8 BOM (Notepad) kept U+FEFF in
    the first key: a master whose file had it and workers whose file did not signed with
    different keys and refused each other's messages."""
    key = "k" * MIN_KEY_LENGTH + "-first"
    assert parse_keys("\ufeff" + key + "\nsecond-key-0123456789") == (
        key.encode(),
        b"second-key-0123456789",
    )
    assert parse_key("\ufeff" + key) == (key.encode(),)
    for name, variable in (("keys", "DISTQ_SIGNING_KEYS"), ("key", "DISTQ_SIGNING_KEY")):
        path = tmp_path / name
        path.write_bytes(b"\xef\xbb\xbf" + key.encode() + b"\r\n")
        redis = {"DISTQ_TRANSPORT": "redis"}
        loaded = Settings.load({**redis, f"{variable}_FILE": str(path)})
        assert loaded.signing_keys == Settings.load({**redis, variable: key}).signing_keys


# --- what a signature binds ---------------------------------------------------------


def test_a_task_signed_for_one_queue_is_refused_on_another_with_the_same_keys() -> None:
    sealed = Codec([NEW], queue="a").seal_task(task(3))
    assert Codec([NEW], queue="a").open_task(sealed).args == [3]
    with pytest.raises(SignatureError, match=r"bad signature .* another queue than 'b'"):
        Codec([NEW], queue="b").open_task(sealed)


def test_a_signed_task_does_not_open_as_a_result_nor_a_result_as_a_task() -> None:
    codec = Codec([NEW])
    as_task = codec.seal_task(task(3))
    as_result = codec.seal_result(Result("t1", "ok", "w", 1, 1.0, 0.5, value=1))
    with pytest.raises(SignatureError, match="bad signature"):
        codec.open_results(as_task)
    with pytest.raises(SignatureError, match="bad signature"):
        codec.open_task(as_result)


def test_a_signature_of_the_format_before_queues_were_bound_is_refused_saying_so() -> None:
    envelope = task(3).encode()
    mac = hmac.new(NEW, envelope, hashlib.sha256).hexdigest().encode()
    old = b"DQSIG1 " + key_id(NEW).encode() + b" " + mac + b"\n" + envelope
    with pytest.raises(SignatureError, match=r"DQSIG1.*upgrade"):
        Codec([NEW]).open_task(old)
    with pytest.raises(SignatureError, match="no signing key"):
        Codec().open_task(old)  # not read as a bare envelope


def test_the_context_fills_whole_blocks_and_tells_every_pair_apart() -> None:
    pairs = [(kind, queue) for kind in ("task", "result") for queue in ("a", "ab", "a" * 60, "b")]
    contexts = {context(kind, queue) for kind, queue in pairs}
    assert len(contexts) == len(pairs)
    assert all(len(c) % hashlib.sha256().block_size == 0 for c in contexts)


def test_the_context_counts_a_queue_in_bytes_so_no_two_queues_share_one() -> None:
    """Was: the length prefix counted characters, so 'é' and a NUL (2 characters, 3 bytes)
    and the two bytes of 'é' given as escaped bytes (2 characters) made the same context
    once zero-padded: a task signed for one queue verified on the other. Queue names
    outside the settings' check reach it in a Settings built field by field."""
    same_count = ("\u00e9\0", "\udcc3\udca9")  # 'é' + NUL; b"\xc3\xa9" as os.environ holds it
    assert context("task", same_count[0]) != context("task", same_count[1])
    sealed = Codec([NEW], queue=same_count[0]).seal_task(task(3))
    with pytest.raises(SignatureError, match="another queue"):
        Codec([NEW], queue=same_count[1]).open_task(sealed)
    for queue in ("distq", "t-1.a_b", "q" * 100):  # an ASCII name: a byte per character
        text = f"distq task {len(queue)}:{queue}".encode()
        assert context("task", queue) == text.ljust(-(-len(text) // 64) * 64, b"\0")


# --- the format: DQSIG3, and DQSIG2 during a rolling upgrade ---------------------------


def dqsig3(key: bytes, envelope: bytes, kind: str = "task", queue: str = "distq") -> bytes:
    """``envelope`` signed as the README says DQSIG3, with the standard library alone."""
    derived = hmac.new(key, b"distq DQSIG3 " + context(kind, queue), hashlib.sha256).digest()
    mac = hashlib.blake2b(envelope, key=derived, digest_size=32).hexdigest()
    return b"DQSIG3 " + key_id(key).encode() + b" " + mac.encode() + b"\n" + envelope


def dqsig2(key: bytes, envelope: bytes, kind: str = "task", queue: str = "distq") -> bytes:
    """``envelope`` as distq before DQSIG3 signed it (an older process mid-upgrade)."""
    mac = hmac.new(key, context(kind, queue) + envelope, hashlib.sha256).hexdigest()
    return b"DQSIG2 " + key_id(key).encode() + b" " + mac.encode() + b"\n" + envelope


@pytest.mark.parametrize("queue", ["distq", "q" * 300, "\u00e9\0"])
@pytest.mark.parametrize("kind", ["task", "result"])
def test_this_distq_signs_keyed_blake2b_as_dqsig3(kind: str, queue: str) -> None:
    envelope = task(7).encode()
    signer = Signer([NEW], queue)
    assert signer.sign(envelope, kind) == dqsig3(NEW, envelope, kind, queue)
    assert Signer([NEW], queue).verify(dqsig3(NEW, envelope, kind, queue), kind) == envelope
    assert len(dqsig3(NEW, envelope)) - len(envelope) == HEADER_BYTES  # as DQSIG2's


def old_master_reads(message: bytes, kind: str = "result") -> bytes:
    """The envelope of ``message`` as a master before DQSIG3 reads it: DQSIG2 alone (it
    refuses DQSIG3 as unsigned), with the standard library alone."""
    header, _, envelope = message.partition(b"\n")
    magic, kid, mac = header.split(b" ")
    assert (magic, kid) == (b"DQSIG2", key_id(NEW).encode()), f"an older master drops {header!r}"
    signed = hmac.new(NEW, context(kind, "distq") + envelope, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(mac, signed.encode()), "an older master drops a bad signature"
    return envelope


def test_a_worker_answers_each_master_in_the_format_its_own_tasks_came_in() -> None:
    """Workers upgraded first, masters after: an older master reads only DQSIG2. A
    worker signed its results DQSIG3 once it had read any DQSIG3 task, so an older
    master beside an upgraded one on the same queue dropped its lone results;
    each result now goes out in the format of the task it answers, lone or in a batch."""
    w = Runner(Codec([NEW]))
    newer = Delivery(dqsig3(NEW, Task("echo", [1], "new").encode()), 1)
    older = Delivery(dqsig2(NEW, Task("echo", [2], "old").encode()), 2)
    for deliveries in ([newer, older], [older, newer]):
        lone = [w.process(delivery)[0] for delivery in deliveries]  # each alone
        batch = w.runner.endings.settlements([w.runner(d) for d in deliveries])
        for settlements in (lone, batch):
            sent = {s.reply_to: s.result or b"" for s in settlements}
            assert Result.decode(old_master_reads(sent["old"])).value == 2
            assert sent["new"].startswith(MAGIC)
            assert Codec([NEW]).open_result(sent["new"]).value == 1
    assert Signer([NEW]).sign(b"{}", "task") == dqsig3(NEW, b"{}", "task")  # tasks: DQSIG3


def test_a_retry_goes_out_in_the_format_its_task_came_in() -> None:
    """Mid-upgrade, workers not yet upgraded read only DQSIG2: an upgraded worker's retry
    of an older master's task, signed DQSIG3, was dead-lettered by each of them."""
    w = Runner(Codec([NEW]))
    older = Delivery(dqsig2(NEW, task(3, name="boom", max_attempts=2).encode()), 1)
    settlement, outcome = w.process(older)
    assert outcome == "retried"
    assert Task.decode(old_master_reads(settlement.retry or b"", "task")).attempt == 2
    newer = Delivery(dqsig3(NEW, task(3, name="boom", max_attempts=2).encode()), 2)
    retry = w.process(newer)[0].retry or b""
    assert retry.startswith(MAGIC) and Codec([NEW]).open_task(retry).attempt == 2


def test_a_dqsig2_message_of_an_older_process_still_verifies() -> None:
    """A rolling upgrade: masters and workers not yet upgraded sign DQSIG2."""
    rotating = Codec([NEW, OLD])
    for key in (NEW, OLD):
        assert rotating.open_task(dqsig2(key, task(3).encode())).args == [3]
    ok = Result("t1", "ok", "w", 1, 1.0, 0.5, value=9).encode()
    assert rotating.open_result(dqsig2(OLD, ok, "result")).value == 9
    assert Codec([NEW]).open_results(dqsig2(NEW, b"[" + ok + b"," + ok + b"]", "result"))


@pytest.mark.parametrize("sign", [dqsig3, dqsig2])
@pytest.mark.parametrize(
    ("made", "reason"),
    [
        (lambda sign: sign(NEW, task(3).encode(), "task", "a"), "bad signature .* than 'distq'"),
        (lambda sign: sign(NEW, task(3).encode(), "result"), "bad signature"),
        (lambda sign: sign(NEW, task(3).encode()).replace(b"[3]", b"[4]"), "bad signature"),
        (lambda sign: (lambda m: m[:20] + bytes([m[20] ^ 1]) + m[21:])(sign(NEW, b"{}")), "bad"),
        (lambda sign: sign(OTHER, task(3).encode()), "signed with another key"),
        (lambda sign: sign(NEW, task(3).encode()).replace(b"\n", b" ", 1), "malformed"),
    ],
)
def test_a_message_signed_for_another_queue_or_kind_or_altered_is_refused_in_either_format(
    sign: Callable[..., bytes], made: Callable[[Callable[..., bytes]], bytes], reason: str
) -> None:
    with pytest.raises(SignatureError, match=reason):
        Codec([NEW]).open_task(made(sign))


def test_a_key_rotation_works_across_the_formats() -> None:
    """Add the new key at the end, move it first, drop the old one: each step's processes
    read the others', in DQSIG3 and from a process still on DQSIG2."""
    envelope = task(5).encode()
    steps = [Codec([OLD]), Codec([OLD, NEW]), Codec([NEW, OLD]), Codec([NEW])]
    for before, after in itertools.pairwise(steps):
        for sender, reader in ((before, after), (after, before)):
            assert reader.open_task(sender.seal_task(task(5))).args == [5]
    assert steps[2].seal_task(task(5)).startswith(b"DQSIG3 " + key_id(NEW).encode())
    for message in (dqsig2(OLD, envelope), dqsig3(OLD, envelope)):
        assert steps[2].open_task(message).args == [5]
        with pytest.raises(SignatureError, match="signed with another key"):
            steps[3].open_task(message)


@pytest.mark.parametrize("magic", [b"DQSIG4", b"DQSIG12"])
def test_a_format_newer_than_this_distq_is_refused_saying_to_upgrade_it(magic: bytes) -> None:
    """Was: a future format read as "unsigned task: this process requires signatures",
    as if the sender had no keys; it is signed, by a newer distq."""
    message = dqsig3(NEW, task(3).encode()).replace(b"DQSIG3", magic, 1)
    with pytest.raises(NewerSignature) as caught:
        Codec([NEW]).open_task(message)
    said = str(caught.value)
    assert f"format {magic.decode()}" in said and "newer distq" in said, said
    assert "upgrade every master and worker of queue 'distq'" in said, said
    assert "DQSIG2 and DQSIG3" in said, said


@pytest.mark.parametrize("kind", ["task", "result"])
def test_an_envelope_over_512_bytes_is_signed_dqsig2_which_hashes_long_ones_faster(
    kind: str,
) -> None:
    """Where SHA-256 runs on the CPU's SHA extensions, hashlib's BLAKE2b costs more per
    byte: a result pack of 19 KB was sealed in 32 µs, not 22, and a signed 8 KB task
    checked in 9.3 µs, not 5.9. Up to 512 bytes, DQSIG3; longer, DQSIG2."""
    signer = Signer([NEW, OLD])
    short, long = b"x" * 512, b"x" * 513
    assert signer.sign(short, kind) == dqsig3(NEW, short, kind)
    assert signer.sign(long, kind) == dqsig2(NEW, long, kind)
    assert signer.signed_by_each(long, kind) == [dqsig2(key, long, kind) for key in (NEW, OLD)]
    assert signer.signed_by_each(short, kind) == [dqsig3(key, short, kind) for key in (NEW, OLD)]
    for envelope in (short, long):
        assert signer.verify(signer.sign(envelope, kind), kind) == envelope
    results = [Result(f"t{n}", "ok", "w", 1, 1.0, 0.5, value=n).encode() for n in range(50)]
    (pack,) = Codec([NEW]).seal_results(results)
    assert pack.startswith(b"DQSIG2 ") and Codec([NEW]).open_results(pack) == results


@pytest.mark.parametrize("keys", [[NEW], []])
def test_a_batch_of_tasks_is_sealed_as_each_alone(keys: list[bytes]) -> None:
    """A master seals a batch's tasks in one call (Codec.seal_tasks), where two more calls
    a task were made: each as seal_task makes it, one nested past the shallow encoding
    too, and one too large refused as seal_task refuses it, naming the task."""
    codec = Codec(keys, max_message_bytes=1024)
    tasks = [task(n) for n in range(3)] + [task([[[[[[1]]]]]]), task("é" * 40)]
    assert codec.seal_tasks(tasks) == [codec.seal_task(t) for t in tasks]
    large = task("x" * 1024)
    with pytest.raises(MessageTooLarge, match=rf"^task square \[{large.id}\] cannot be submitted"):
        codec.seal_tasks([*tasks, large])


def test_a_signers_batch_of_tasks_is_each_signed_as_alone_or_none() -> None:
    """Signer.seal_tasks, the batch's MACs made where the format is: each envelope as
    sign makes it (DQSIG3 up to 512 bytes, DQSIG2 longer); None for a batch with an
    envelope not made or over the size limit once signed, which the caller seals alone."""
    signer = Signer([NEW, OLD])
    envelopes = [b"x" * 100, b"y" * 512, b"z" * 513]
    assert signer.seal_tasks(envelopes, bytes, 1024) == [dqsig3(NEW, e) for e in envelopes[:2]] + [
        dqsig2(NEW, envelopes[2])
    ]
    assert signer.seal_tasks([b"x", None], lambda e: e, 1024) is None
    assert signer.seal_tasks(envelopes, bytes, 512 + HEADER_BYTES) is None
    # the longest exactly at the limit is within it: each signed here, none sealed again
    assert signer.seal_tasks(envelopes, bytes, 513 + HEADER_BYTES) == [
        signer.sign(e, "task") for e in envelopes
    ]
    # a short envelope over a limit below 512 bytes once signed: that batch too
    short = [b"x" * 100]
    assert signer.seal_tasks(short, bytes, 99 + HEADER_BYTES) is None
    assert signer.seal_tasks(short, bytes, 100 + HEADER_BYTES) == [dqsig3(NEW, short[0])]
    assert signer.seal_tasks(short, bytes, HEADER_BYTES - 1) is None


def refused(signer: Signer, message: bytes) -> tuple[str, str]:
    with pytest.raises(SignatureError) as caught:
        signer.verify(message, "result")
    return type(caught.value).__name__, str(caught.value)


@pytest.mark.parametrize("sign", [dqsig3, dqsig2])
def test_a_dqsig2_message_is_refused_as_a_dqsig3_one_is(sign: Callable[..., bytes]) -> None:
    """Both formats read by one lookup of the header: each refusal of either said alike
    (altered, cut inside or right after its header, no newline, another key's)."""
    signer = Signer([NEW])
    message = sign(NEW, b'{"v":1}', "result")
    altered = message[:-1] + b"]"
    no_newline = message[: HEADER_BYTES - 1] + b" " + message[HEADER_BYTES:]
    said = [
        refused(signer, m) for m in (altered, message[:40], message[: HEADER_BYTES - 1], no_newline)
    ]
    assert said[0][0] == "BadSignature" and "altered after signing" in said[0][1]
    assert said[1:] == [("SignatureError", "result has a malformed signature header")] * 3
    assert refused(signer, sign(OTHER, b'{"v":1}', "result"))[0] == "KeyMissing"
    assert signer.verify(message, "result") == b'{"v":1}'


@pytest.mark.parametrize("envelope", [b'{"v":1}', b"x" * 600])
def test_a_signature_verifies_only_under_its_own_format_and_in_lowercase(envelope: bytes) -> None:
    """One lookup finds either format's key by the header: a MAC of one format under the
    other's header, the same MAC in uppercase hex, or a byte more before the newline is
    refused as altered or malformed, never read; a key's rotation partner verifies."""
    signer = Signer([NEW, OLD])
    for sign, other in ((dqsig3, b"DQSIG2 "), (dqsig2, b"DQSIG3 ")):
        message = sign(OLD, envelope, "result")
        head, sig = message[:16], message[16:80]
        assert signer.verify(message, "result") == envelope  # the second key's too
        swapped = other + message[7:]
        upper = head + sig.upper() + message[80:]
        longer = head + sig + b"0" + message[80:]
        assert [refused(signer, m)[0] for m in (swapped, upper)] == ["BadSignature"] * 2
        assert refused(signer, longer) == (
            "SignatureError",
            "result has a malformed signature header",
        )


PINNED_KEY = b"pinned-key-0123456789abcdef"


def test_signed_tasks_and_packs_keep_their_exact_bytes_for_a_fixed_key() -> None:
    """The wire format byte for byte, as literals: a change to how signing is computed
    (its speed-ups) must not change one byte a process of another version reads."""
    codec = Codec([PINNED_KEY], queue="q1")
    made = Task("square", [7], "replies", {}, "t-1", 1, 3, 1700000000.5)
    envelope = (
        b'{"v":1,"id":"t-1","name":"square","args":[7],"kwargs":{},"reply_to":"replies",'
        b'"attempt":1,"max_attempts":3,"created_at":1700000000.5}'
    )
    header = b"DQSIG3 69f9c6ee ba2961322f47f2a2bc30819cab1f21c3c4f2ee05f39c06248be1e48945fb1559\n"
    assert codec.seal_tasks([made]) == [codec.seal_task(made)] == [header + envelope]
    assert codec.open_task(header + envelope) == made
    results = [
        Result(f"t-{n}", "ok", "w", 1, 1700000000.25, 0.5, value=n).encode() for n in range(6)
    ]
    short = b"DQSIG3 69f9c6ee 42768a4ff3aba47467234584ecbd28f8dc8996b4aa8cd27f82fa088c90406b6f\n"
    long = b"DQSIG2 69f9c6ee 3ae845ad699c8979398e68812b6946fd479e11ca49cd41fc9f2d43224925b993\n"
    for pack, signed in ((results[:2], short), (results, long)):
        sealed = b"".join((signed, b"[", b",".join(pack), b"]"))
        assert codec.seal_results(pack) == [sealed]
        assert codec.open_results(sealed) == pack
