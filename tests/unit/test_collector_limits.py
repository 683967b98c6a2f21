"""The collector at its size limit: a result of exactly DISTQ_MAX_MESSAGE_BYTES in a pack
read past it, and a message too large to open whose heads answer its tasks (mut17b)."""

from __future__ import annotations

from typing import Any

from distq.codec import Codec
from distq.collector import Collector
from distq.envelope import Result
from distq.errors import EnvelopeError

LIMIT = 4096


def _result(task_id: str, value: Any) -> Result:
    return Result(task_id=task_id, status="ok", worker="w", attempt=1, started_at=0.0,
                  duration=0.0, value=value)  # fmt: skip


def _of_exactly_the_limit(codec: Codec) -> str:
    """A value whose result, task id t1, is encoded in exactly ``LIMIT`` bytes."""
    value = ""
    while (size := len(codec.encode_result(_result("t1", value)))) != LIMIT:
        value = "x" * (len(value) + LIMIT - size)
    return value


def test_a_result_of_exactly_the_limit_in_a_pack_read_past_it_keeps_its_value() -> None:
    """A pack over the submitter's limit is read with each result held to the limit:
    only a result over it fails its task, not one of exactly DISTQ_MAX_MESSAGE_BYTES,
    whose value was lost to a MessageTooLarge error result (mut17b)."""
    worker, submitter = Codec(), Codec(max_message_bytes=LIMIT)
    big = _of_exactly_the_limit(worker)
    results = [_result("t0", 0), _result("t1", big), _result("t2", 2)]
    envelopes = [worker.encode_result(r) for r in results]
    assert len(envelopes[1]) == LIMIT
    (pack,) = worker.seal_results(envelopes)
    assert len(pack) > LIMIT
    got: dict[str, Result] = {}
    collector: Collector[str] = Collector(
        lambda r, entry, rtt: got.update({entry: r}), codec=submitter
    )
    collector.expect([(r.task_id, r.task_id) for r in results])
    assert collector.accept([pack]) == 3
    assert (got["t1"].status, got["t1"].value) == ("ok", big)
    assert collector.malformed == 0


def test_a_message_too_large_to_open_whose_heads_answer_its_tasks_is_not_also_refused() -> None:
    """Every task of an oversized pack got a stand-in from its head: nothing was refused
    unanswered, so the malformed count stays 0 and no "refused" line is said (mut17b)."""
    worker, submitter = Codec((), 64 * 2**20), Codec()
    results = [_result("t0", "x" * 2_000_000), _result("t1", 1)]
    old_pack = b"[" + b",".join(worker.encode_result(r) for r in results) + b"]"
    errors: list[EnvelopeError] = []
    got: dict[str, Result] = {}
    collector: Collector[str] = Collector(
        lambda r, entry, rtt: got.update({entry: r}), errors.append, codec=submitter
    )
    collector.expect([("t0", "t0"), ("t1", "t1")])
    assert collector.accept([old_pack]) == 2
    assert {i: r.error_type for i, r in got.items()} == {
        "t0": "MessageTooLarge", "t1": "MessageTooLarge",
    }  # fmt: skip
    assert (collector.malformed, errors) == (0, [])


def test_a_result_too_large_answers_its_task_whatever_its_id_and_worker() -> None:
    """A head was read only for task ids of [0-9A-Za-z_.:-] to 128 characters and worker
    names to 1,024 bytes: a result from a --worker-id of 1,100 characters, or of a task
    whose id has a space, was dropped with a line, its master waiting to its timeout."""
    worker, submitter = Codec((), 64 * 2**20), Codec(max_message_bytes=LIMIT)
    names = [("t0", "w" * 1100), ('job 1/é "q"', "w"), ("t" * 200, 'é\\"\n')]
    for task_id, name in names:
        result = Result(task_id, "ok", name, 3, 0.0, 0.0, value="x" * (2 * LIMIT))
        [stand_in] = submitter.oversized_results(worker.encode_result(result))
        assert (stand_in.task_id, stand_in.worker, stand_in.attempt) == (task_id, name, 3)
        assert stand_in.error_type == "MessageTooLarge"
