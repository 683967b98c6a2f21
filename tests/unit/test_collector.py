"""Collecting results: each expected task's first result once, whatever else arrives."""

from __future__ import annotations

import io
import json
from functools import partial
from typing import Any

import pytest

from distq.codec import Codec
from distq.collector import Collector, Sample
from distq.envelope import Result, Status
from distq.errors import EnvelopeError
from distq.limits import DEFAULT_MAX_MESSAGE_BYTES
from distq.logs import JsonConsole
from distq.metrics import MasterMetrics
from distq.telemetry import MasterTelemetry


def result(task_id: str, value: object = 1, status: Status = "ok") -> bytes:
    fields: dict[str, Any] = {"value": value}
    if status == "error":
        fields = {"error_type": "E", "error_message": "m"}
    return Result(
        task_id=task_id,
        status=status,
        worker="w",
        attempt=1,
        started_at=0.0,
        duration=0.0,
        **fields,
    ).encode()


def test_each_expected_task_is_handed_on_once_with_its_entry() -> None:
    got: list[tuple[str, str, float]] = []
    errors: list[EnvelopeError] = []
    metrics = MasterMetrics("redis", "q")
    collector: Collector[str] = Collector(
        lambda r, entry, rtt: got.append((r.task_id, entry, rtt)),
        errors.append,
        MasterTelemetry(metrics),
    )
    collector.expect([("a", "entry-a"), ("b", "entry-b"), ("c", "entry-c")])
    assert collector.outstanding == 3
    firsts = collector.accept(
        [result("b"), result("b"), b"{not json", result("stranger"), result("a", status="error")]
    )
    assert firsts == 2
    assert [(task_id, entry) for task_id, entry, _ in got] == [("b", "entry-b"), ("a", "entry-a")]
    assert all(rtt >= 0 for _, _, rtt in got) and len(collector.latencies) == 2
    assert (collector.finished, collector.duplicates, collector.malformed) == (2, 1, 1)
    assert len(errors) == 1 and "not valid JSON" in str(errors[0])
    assert collector.accept([result("a")]) == 0  # a late copy of an answered task
    assert collector.duplicates == 2
    assert collector.waiting() == [("c", "entry-c")]
    waiting = collector.waiting_ids()  # live: what is_waiting says, for every id
    assert [collector.is_waiting(i) for i in "abcx"] == [i in waiting for i in "abcx"]
    assert list(waiting) == ["c"]
    collector.discard("c")
    assert "c" not in waiting and not collector.is_waiting("c")
    samples, labels = metrics.registry, {"transport": "redis", "queue": "q"}
    assert samples.get_sample_value("distq_master_duplicate_results_total", labels) == 2
    assert samples.get_sample_value("distq_master_results_total", {**labels, "status": "ok"}) == 1
    assert (
        samples.get_sample_value("distq_master_results_total", {**labels, "status": "error"}) == 1
    )
    assert samples.get_sample_value("distq_master_tasks_outstanding", labels) == 1


def test_forgotten_tasks_are_no_longer_waited_for_and_their_results_dropped() -> None:
    got: list[str] = []
    collector: Collector[int] = Collector(lambda r, entry, rtt: got.append(r.task_id))
    collector.expect([("a", 1), ("b", 2)])
    assert collector.forget() == 2
    assert collector.outstanding == 0 and collector.waiting() == []
    assert collector.accept([result("a")]) == 0
    assert got == [] and collector.duplicates == 0


def test_a_discarded_task_is_no_longer_waited_for_and_its_late_result_is_dropped() -> None:
    got: list[str] = []
    collector: Collector[str] = Collector(lambda r, entry, _rt: got.append(entry))
    collector.expect([("a", "entry-a"), ("b", "entry-b")])
    assert collector.entry("a") == "entry-a" and collector.entry("zz") is None
    assert collector.discard("a") == "entry-a"
    assert collector.discard("a") is None and collector.entry("a") is None
    assert collector.outstanding == 1
    assert collector.accept([result("a"), result("b")]) == 1
    assert got == ["entry-b"] and collector.duplicates == 0


def test_a_long_run_remembers_only_recent_answers_and_a_bounded_sample_of_round_trips() -> None:
    """A master in --rate mode or an executor kept open runs for days: what a collector
    keeps per answered task must stay bounded (remember=2: 2 to 4 ids; SAMPLE 3: 3 to 5
    round trips)."""
    got: list[str] = []
    collector: Collector[None] = Collector(lambda r, _e, _rt: got.append(r.task_id), remember=2)
    collector.latencies = Sample(3)
    ids = [f"t{n}" for n in range(40)]
    for task_id in ids:
        collector.expect([(task_id, None)])
        assert collector.accept([result(task_id)]) == 1
    assert got == ids and collector.finished == 40
    assert 3 <= len(collector.latencies) < 6  # spread over the whole run, not the last few
    assert collector.accept([result("t39"), result("t38")]) == 0  # recent: duplicates
    assert collector.duplicates == 2
    assert collector.accept([result("t0")]) == 0  # long forgotten: dropped as a stranger's
    assert collector.duplicates == 2 and got == ids


def test_a_sample_keeps_every_round_trip_then_an_even_spread_of_them() -> None:
    sample = Sample(4)
    sample.extend([0.0, 1.0, 2.0])
    assert sample == [0.0, 1.0, 2.0]  # fewer than 2 * 4: every one
    for start in range(3, 100, 7):  # batches of 7, as results come
        sample.extend(float(n) for n in range(start, min(start + 7, 100)))
        assert len(sample) < 8
        assert sample == [float(n) for n in range(0, start + 7, sample.stride)][: len(sample)]
    assert sample.stride == 16 and sample == [0.0, 16.0, 32.0, 48.0, 64.0, 80.0, 96.0]


def test_a_result_that_is_not_bytes_is_refused_not_a_crash() -> None:
    """A manager peer put a str on a master's reply queue: the master died with a
    TypeError traceback, and an Executor broke for good; a list, tuple or dict: the same
    with an AttributeError."""
    errors: list[EnvelopeError] = []
    got: list[str] = []
    collector: Collector[str] = Collector(
        lambda r, entry, rtt: got.append(r.task_id),
        errors.append,
        MasterTelemetry(MasterMetrics("manager", "q")),
    )
    collector.expect([("a", "entry-a")])
    junk: list[Any] = ['{"v": 1}', None, [b"x"], (b"y",), {"a": 1}, result("a")]
    assert sum(collector.accept([body]) for body in junk) == 1  # a line each: a read each
    assert got == ["a"] and collector.malformed == 5
    assert [str(e).split(",")[0] for e in errors] == [
        f"result is a {kind}" for kind in ("str", "NoneType", "list", "tuple", "dict")
    ]


def _results_of(size: int, count: int = 3) -> list[Result]:
    """``count`` results of ids t0, t1, ...; the middle one's value ``size`` bytes long."""
    values = ["x" * size if i == count // 2 else i for i in range(count)]
    return [
        Result(task_id=f"t{i}", status="ok", worker='w "1"', attempt=2, started_at=0.0,
               duration=0.0, value=value)
        for i, value in enumerate(values)
    ]  # fmt: skip


@pytest.mark.parametrize("keys", [(), (b"k" * 32,)], ids=["unsigned", "signed"])
def test_a_result_over_the_submitters_limit_fails_its_own_task_and_no_other(
    keys: tuple[bytes, ...],
) -> None:
    """A worker whose DISTQ_MAX_MESSAGE_BYTES is larger than the submitter's: the big
    result took the small ones packed with it down, none named, and every one of those
    tasks waited unanswered (a future for good, without a timeout)."""
    worker, submitter = Codec(keys, 64 * 2**20), Codec(keys)
    results = _results_of(2_000_000)
    messages = worker.seal_results([worker.encode_result(r) for r in results])
    assert [len(m) > DEFAULT_MAX_MESSAGE_BYTES for m in messages] == [False, True, False]
    got: dict[str, Result] = {}
    collector: Collector[str] = Collector(
        lambda r, entry, rtt: got.update({entry: r}), codec=submitter
    )
    collector.expect([(r.task_id, r.task_id) for r in results])
    assert collector.accept(messages) == 3
    assert [(got[i].status, got[i].value) for i in ("t0", "t2")] == [("ok", 0), ("ok", 2)]
    big = got["t1"]
    assert (big.status, big.error_type, big.worker, big.attempt) == (
        "error", "MessageTooLarge", 'w "1"', 2,
    )  # fmt: skip
    assert "over the 1,048,576 of this process's DISTQ_MAX_MESSAGE_BYTES" in str(big.error_message)


def test_a_pack_over_a_lower_limit_is_read_and_each_result_held_to_that_limit() -> None:
    """A submitter whose limit is below the default 1 MiB a worker packs up to: the
    whole pack was refused, every small result in it failing for good with it."""
    worker, submitter = Codec(), Codec(max_message_bytes=4096)
    results = _results_of(4500, count=4)
    (pack,) = worker.seal_results([worker.encode_result(r) for r in results])
    assert len(pack) > 4096
    got: dict[str, Result] = {}
    collector: Collector[str] = Collector(
        lambda r, entry, rtt: got.update({entry: r}), codec=submitter
    )
    collector.expect([(r.task_id, r.task_id) for r in results])
    assert collector.accept([pack]) == 4
    assert {i: (r.status, r.error_type) for i, r in got.items()} == {
        "t0": ("ok", None), "t1": ("ok", None), "t2": ("error", "MessageTooLarge"),
        "t3": ("ok", None),
    }  # fmt: skip


def _keep(got: dict[str, Result], result: Result, entry: str, _round_trip: float) -> None:
    got[entry] = result


def _fake_head(task_id: str) -> dict[str, Any]:
    """A value shaped like a result envelope's head, naming ``task_id``."""
    return {"v": 1, "task_id": task_id, "status": "ok", "worker": "forger", "attempt": 1,
            "started_at": 0.0}  # fmt: skip


def test_only_heads_where_envelopes_start_name_tasks_not_text_inside_a_value() -> None:
    """A value holding a dict shaped like a result's head failed the task it named, which
    had its own good result."""
    big = Result(task_id="t0", status="ok", worker="w", attempt=1, started_at=0.0,
                 duration=0.0, value=[_fake_head("t1"), "x" * 2_000_000])  # fmt: skip
    small = Result(task_id="t1", status="ok", worker="w", attempt=1, started_at=0.0,
                   duration=0.0, value=[_fake_head("t1")])  # fmt: skip
    worker, submitter = Codec((), 64 * 2**20), Codec()
    messages = worker.seal_results([worker.encode_result(r) for r in (big, small)])
    old_pack = b"[" + b",".join(worker.encode_result(r) for r in (small, big)) + b"]"
    for bodies in (messages, [old_pack]):  # a pack past 1 MiB: a worker before this one
        got: dict[str, Result] = {}
        collector: Collector[str] = Collector(partial(_keep, got), codec=submitter)
        collector.expect([("t0", "t0"), ("t1", "t1")])
        collector.accept(bodies)
        assert got["t0"].error_type == "MessageTooLarge", bodies is messages
        if bodies is messages:
            assert (got["t1"].status, got["t1"].value) == ("ok", [_fake_head("t1")])
        else:  # the pack is too large to open: its heads name its tasks, t1's too
            assert (got["t1"].error_type, got["t1"].worker) == ("MessageTooLarge", "w")


def test_a_forged_oversized_result_fails_no_task_when_signing_is_on() -> None:
    submitter = Codec((b"k" * 32,))
    forged = Codec((b"x" * 32,), 64 * 2**20)
    (message,) = forged.seal_results([forged.encode_result(_results_of(2_000_000, 1)[0])])
    errors: list[EnvelopeError] = []
    collector: Collector[str] = Collector(lambda r, e, t: None, errors.append, codec=submitter)
    collector.expect([("t0", "t0")])
    assert collector.accept([message]) == 0 and collector.is_waiting("t0")
    assert "over the limit" in str(errors[0])


def test_a_result_of_another_envelope_version_fails_its_task_saying_so() -> None:
    """A newer worker's result was "dropped a result: ... version 2", and its master (or
    a `submit --wait`) waited until its timeout, or for good (diff15a)."""
    got: list[Result] = []
    errors: list[EnvelopeError] = []
    collector: Collector[str] = Collector(
        lambda r, entry, rtt: got.append(r), errors.append, MasterTelemetry(MasterMetrics("r", "q"))
    )
    collector.expect([("a", "entry-a"), ("b", "entry-b")])
    newer = result("a").replace(b'{"v":1,', b'{"v":2,', 1)
    nameless = b'{"v":2,"id":"b"}'  # says no task as v1 does: dropped, as before
    assert collector.accept([newer, nameless]) == 1
    (failed,) = got
    assert (failed.task_id, failed.status, failed.error_type, failed.worker) == (
        "a",
        "error",
        "VersionMismatch",
        "w",
    )
    assert failed.error_message == (
        "ran, but its result could not be read: result has envelope version 2, and this "
        "distq reads version 1: its worker runs a newer distq than this process: upgrade "
        "this one"
    )
    assert len(errors) == 1 and "version 2" in str(errors[0])
    assert collector.waiting() == [("b", "entry-b")]


def test_a_result_line_names_its_task_as_expect_was_told_and_forgets_it_when_discarded() -> None:
    """A master's JSON ``result received`` line names its task from what the collector
    keeps with the task (given at ``expect``), not from a table of its own the telemetry
    kept per task: that table grew by every task discarded unanswered (a --timeout's)."""
    out = io.StringIO()
    collector: Collector[int] = Collector(
        lambda r, entry, rtt: None, telemetry=MasterTelemetry(log=JsonConsole("master", out=out))
    )
    collector.expect_named([("a", 1, "square"), ("b", 2, "jobs:add"), ("c", 3, "gone")], 0.0)
    assert collector.discard("c") == 3
    assert collector.accept([result("b"), result("a"), result("a"), result("c")]) == 2
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(line["event"], line["task_id"], line.get("task")) for line in lines] == [
        ("result received", "b", "jobs:add"),
        ("result received", "a", "square"),
        ("duplicate result", "a", None),
    ]
    assert collector.waiting() == []
