"""Result packs: a worker's results of one batch for one master, one message signed once."""

from __future__ import annotations

from typing import Any

import pytest

from distq.codec import Codec
from distq.collector import Collector
from distq.ending import Endings
from distq.envelope import NO_REPLY, DeadLetter, Result, Task
from distq.errors import EnvelopeError, MessageTooLarge, SignatureError
from distq.signing import HEADER_BYTES, Signer
from distq.telemetry import MasterTelemetry
from distq.transport import Delivery

KEY = b"0123456789abcdef0123456789abcdef"
CODECS = {"plain": Codec(), "signed": Codec([KEY])}


def result(n: int, value: Any = None) -> Result:
    return Result(f"t{n}", "ok", "w", 1, 1000.0, 0.5, n * n if value is None else value)


def opened(codec: Codec, messages: list[bytes]) -> list[Result]:
    return [Result.decode(e) for m in messages for e in codec.open_results(m)]


@pytest.mark.parametrize("name", CODECS)
def test_a_batch_of_results_is_one_message_and_reads_back_in_order(name: str) -> None:
    codec = CODECS[name]
    results = [result(n) for n in range(100)]
    messages = codec.seal_results([codec.encode_result(r) for r in results])
    assert len(messages) == 1
    assert opened(codec, messages) == results
    envelope = messages[0][HEADER_BYTES:] if codec.signing else messages[0]
    assert envelope.startswith(b"[{") and envelope.endswith(b"}]")  # a JSON array of envelopes
    if codec.signing:  # one signature over the whole array (its format: test_signing)
        assert messages[0] == Signer([KEY]).sign(envelope, "result")


@pytest.mark.parametrize("name", CODECS)
def test_a_single_result_is_sent_as_itself_so_any_master_reads_it(name: str) -> None:
    codec = CODECS[name]
    alone = codec.seal_results([codec.encode_result(result(7))])
    assert alone == [codec.seal_result(result(7))]
    assert codec.open_result(alone[0]) == result(7)
    assert opened(codec, alone) == [result(7)]


@pytest.mark.parametrize("name", CODECS)
def test_packs_stay_within_the_size_limit(name: str) -> None:
    codec = Codec([KEY] if CODECS[name].signing else (), max_message_bytes=4096)
    results = [result(n, "x" * (n % 7 * 100)) for n in range(60)]
    messages = codec.seal_results([codec.encode_result(r) for r in results])
    assert 1 < len(messages) < len(results)
    assert all(len(m) <= 4096 for m in messages)
    assert opened(codec, messages) == results  # every one, in order
    big = result(1, "y" * 4000)  # fits alone, not once signed or beside another
    limit = 4096 - (HEADER_BYTES if codec.signing else 0)
    if len(big.encode()) <= limit:
        assert opened(codec, codec.seal_results([codec.encode_result(big)] * 2)) == [big, big]
    with pytest.raises(MessageTooLarge, match="over the limit"):
        codec.encode_result(result(1, "z" * 4096))


def test_a_signed_worker_checks_the_size_with_the_signature_in() -> None:
    limit = 2048
    plain, signed = Codec(max_message_bytes=limit), Codec([KEY], max_message_bytes=limit)
    value = "v" * 1800
    while len(result(1, value).encode()) + HEADER_BYTES <= limit:
        value += "v"
    plain.encode_result(result(1, value))  # fits unsigned
    with pytest.raises(MessageTooLarge):
        signed.encode_result(result(1, value))


def test_refused_packs_say_why() -> None:
    plain, signed = Codec(), Codec([KEY])
    pack = plain.seal_results([plain.encode_result(result(n)) for n in range(3)])[0]
    with pytest.raises(SignatureError, match="unsigned result"):
        signed.open_results(pack)
    sealed = signed.seal_results([signed.encode_result(result(n)) for n in range(3)])[0]
    with pytest.raises(SignatureError, match="bad signature"):
        signed.open_results(sealed.replace(b'"value":1', b'"value":2'))
    with pytest.raises(SignatureError, match="signed"):
        plain.open_results(sealed)
    with pytest.raises(EnvelopeError, match="not a JSON array"):
        plain.open_results(b'[{"v":1}')
    with pytest.raises(MessageTooLarge, match="deeper than"):
        plain.open_results(b"[" * 5000 + b"]" * 5000)
    with pytest.raises(MessageTooLarge, match="holds over 10,000 results; a worker packs at most"):
        plain.open_results(b"[" + b",".join([b"1"] * 10_001) + b"]")


def test_a_pack_of_many_bad_results_is_said_in_a_few_lines_not_one_each() -> None:
    """One 1 MB message ``[1,1,...]`` made 500,000 "dropped a result" lines."""
    errors: list[EnvelopeError] = []
    collector: Collector[None] = Collector(
        lambda r, entry, rtt: None, errors.append, MasterTelemetry(None)
    )
    collector.expect([("t0", None)])
    assert collector.accept([b"[" + b",".join([b"1"] * 10_000) + b"]"]) == 0
    assert collector.malformed == 10_000
    assert len(errors) == 4, [str(e) for e in errors]
    assert str(errors[-1]) == "and 9,997 more results refused in the same read"


def test_many_bad_results_in_one_read_are_said_in_a_few_lines_not_one_each() -> None:
    """A RabbitMQ pack of 10,000 junk items reaches the collector as 10,000 bodies (the
    transport unpacks it): 10,000 "dropped a result" lines, the cap per message bypassed."""
    errors: list[EnvelopeError] = []
    got: list[str] = []
    collector: Collector[None] = Collector(
        lambda r, entry, rtt: got.append(r.task_id), errors.append, MasterTelemetry(None)
    )
    collector.expect([("t0", None)])
    bodies = [b"x"] * 5_000 + [b"[1, 2]", b"{}", result(0).encode()] + [b"x"] * 4_998
    assert collector.accept(bodies) == 1 and got == ["t0"]
    assert collector.malformed == 10_001  # [1, 2]: two bad results
    kinds = [str(e).split(":")[0] for e in errors[:-1]]
    assert all(kinds.count(kind) <= 3 for kind in kinds) and len(kinds) < 10, kinds
    more = 10_001 - len(kinds)
    assert str(errors[-1]) == f"and {more:,} more results refused in the same read", errors


def test_a_bad_result_in_a_pack_costs_only_itself() -> None:
    codec = Codec()
    got: list[str] = []
    errors: list[EnvelopeError] = []
    collector: Collector[None] = Collector(
        lambda r, entry, rtt: got.append(r.task_id), errors.append, MasterTelemetry(None)
    )
    collector.expect([(f"t{n}", None) for n in range(4)])
    good = [codec.encode_result(result(n)) for n in range(4)]
    pack = b"[" + b",".join([good[0], b'{"v":1,"task_id":"t1"}', good[2], good[3]]) + b"]"
    assert collector.accept([pack, b"[nonsense", codec.seal_results(good[1:2])[0]]) == 4
    assert got == ["t0", "t2", "t3", "t1"]
    assert collector.malformed == 2 and len(errors) == 2


def ending_batch(endings: Endings) -> list[Any]:
    codec = endings.codec
    tasks = [Task("square", [n], reply_to="A" if n % 3 else "B") for n in range(9)]
    batch = []
    for n, t in enumerate(tasks):
        d = Delivery(codec.seal_task(t), tag=n)
        if n == 4:  # its last attempt fails: an error result and a dead letter
            last = Task("square", [n], reply_to="A", max_attempts=1)
            batch.append(endings.failed(d, last, ValueError("no"), 1000.0, 0.1, retryable=True))
        elif n == 5:  # retried: no result yet
            batch.append(endings.failed(d, t, ValueError("again"), 1000.0, 0.1, retryable=True))
        elif n == 7:  # nobody waits for it
            quiet = Task("square", [n], reply_to=NO_REPLY)
            batch.append(endings.ok(d, quiet, n * n, 1000.0, 0.1))
        else:
            batch.append(endings.ok(d, t, n * n, 1000.0, 0.1))
    return batch


@pytest.mark.parametrize("name", CODECS)
def test_a_batch_settles_with_one_message_per_master_on_its_earliest_delivery(name: str) -> None:
    codec = CODECS[name]
    endings = Endings("w", "q", codec)
    batch = ending_batch(endings)
    settlements = endings.settlements(batch)
    assert [s.delivery for s in settlements] == [e.settlement.delivery for e in batch]
    carriers = [(n, s.reply_to) for n, s in enumerate(settlements) if s.result is not None]
    # the first result of each master carries the others; the one with a dead letter, its own
    assert carriers == [(0, "B"), (1, "A"), (4, "A")]
    for n, s in enumerate(settlements):
        assert (s.retry is not None) == (n == 5)
        assert (s.dead_letter is not None) == (n == 4)
    assert DeadLetter.decode(settlements[4].dead_letter or b"").reason.startswith("failed 1 of 1")
    sent = {n: opened(codec, [s.result]) for n, s in enumerate(settlements) if s.result}
    assert [r.task_id for r in sent[1]] == [batch[n].task.id for n in (1, 2, 8)]
    assert [r.status for r in sent[1]] == ["ok", "ok", "ok"]
    assert [(r.task_id, r.status) for r in sent[4]] == [(batch[4].task.id, "error")]
    assert [r.value for r in sent[0]] == [0, 9, 36]  # 7 (nobody waits) sends none


def test_a_failed_ending_first_carries_only_its_own_result_with_its_dead_letter() -> None:
    """A transport drops a late dead letter with its result (its copy decides): the ok
    results that rode on it were lost, their tasks counted done (late21)."""
    endings = Endings("w", "q", Codec([KEY]))
    t = Task("square", [1], reply_to="A", max_attempts=1)
    first = endings.failed(Delivery(b"x", 1), t, ValueError("no"), 1000.0, 0.1, retryable=True)
    ok = [
        endings.ok(Delivery(b"y%d" % n, n), Task("square", [n], reply_to="A"), n * n, 1000.0, 0.1)
        for n in (2, 3)
    ]
    failed, carrier, other = endings.settlements([first, *ok])
    assert failed.dead_letter is not None and failed.reply_to == "A"
    assert [r.status for r in opened(endings.codec, [failed.result or b""])] == ["error"]
    assert carrier.dead_letter is None and carrier.reply_to == "A"
    assert [r.value for r in opened(endings.codec, [carrier.result or b""])] == [4, 9]
    assert (other.result, other.reply_to, other.dead_letter) == (None, None, None)


MUTATION_KEY = b"0123456789abcdef0123456789abcdef"


def _sized(codec: Codec, n: int, length: int) -> bytes:
    """An encoded result of exactly ``length`` bytes."""
    base = len(codec.encode_result(Result(f"t{n}", "ok", "w", 1, 1000.0, 0.5, "")))
    envelope = codec.encode_result(
        Result(f"t{n}", "ok", "w", 1, 1000.0, 0.5, "x" * (length - base))
    )
    assert len(envelope) == length
    return envelope


@pytest.mark.parametrize("keys", [(), (MUTATION_KEY,)])
@pytest.mark.parametrize("slack", [-1, 0, 1, 2])
def test_a_pack_at_the_size_limit_to_the_byte_stays_within_it(
    keys: tuple[bytes, ...], slack: int
) -> None:
    # a pack one or two bytes over the limit passed every test: its master refuses it
    # whole, with the tasks acked already
    codec = Codec(list(keys), max_message_bytes=4096)
    room = codec._max_envelope  # what one envelope may be
    first = _sized(codec, 1, 2000)
    # "[" first "," second "]" is room + slack bytes: over the limit for slack 1, 2
    second = _sized(codec, 2, room + slack - 3 - len(first))
    messages = codec.seal_results([first, second])
    assert all(len(m) <= 4096 for m in messages)
    assert len(messages) == (1 if slack <= 0 else 2)
    opened = [e for m in messages for e in codec.open_results(m)]
    assert opened == [first, second]


@pytest.mark.parametrize("name", CODECS)
def test_a_lone_tasks_result_is_sealed_without_a_pack(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch of one's result is its own message: sealed as it is, no pack loop nor
    pack made around it (issue 16); the message is seal_result's, signed in the format
    of the task it answers."""
    codec = CODECS[name]
    packed: list[int] = []
    pack = Codec._pack

    def counted(self: Codec, envelopes: list[bytes], answering: bytes | None) -> bytes:
        packed.append(len(envelopes))
        return pack(self, envelopes, answering)

    monkeypatch.setattr(Codec, "_pack", counted)
    task = Task("square", [7], "r")
    body = codec.seal_task(task)
    endings = Endings("w", "distq", codec)
    ending = endings.ok(Delivery(body, 1), task, 49, 1000.0, 0.5)
    (settlement,) = endings.settlements([ending])
    envelope = ending.settlement.result
    assert packed == [] and envelope is not None
    assert settlement.result == codec.seal_result(Result.decode(envelope), body)
    assert codec.open_result(settlement.result).value == 49


def test_one_more_bad_result_than_are_said_is_said_as_1_more_result() -> None:
    """A pack of 4 bad items: "and 1 more results refused in the same read"."""
    errors: list[EnvelopeError] = []
    collector: Collector[None] = Collector(
        lambda r, entry, rtt: None, errors.append, MasterTelemetry(None)
    )
    collector.expect([("t0", None)])
    assert collector.accept([b"[1,1,1,1]"]) == 0
    assert len(errors) == 4, [str(e) for e in errors]
    assert str(errors[-1]) == "and 1 more result refused in the same read"
