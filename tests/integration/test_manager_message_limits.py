"""Message-size limits that differ between the ends of a manager connection: a task the
master took under its DISTQ_MAX_MESSAGE_BYTES and over a worker's is dead-lettered and
answered, not refused with every fetch reply holding it (the tasks behind it waiting for
good); and a worker's settle of large results goes in calls within the master's limit."""

from __future__ import annotations

import time

import pytest

from conftest import Target, hosted_and_remote
from distq.codec import Codec
from distq.collector import Collector
from distq.ending import Endings
from distq.envelope import Result, Task, new_id
from distq.errors import TransportError
from distq.transport import Consumer, Producer, Settlement, Transport, open_transport
from distq.transport import manager_wire as wire
from fake_master import fake_settings
from procs import Distq
from seam import fetch_n, results_n, results_of

pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
def test_a_task_within_a_workers_frames_goes_to_it_one_over_them_is_dead_lettered() -> None:
    # at the worker's 1 MiB, what it reads past 4 MiB of others is 61 MiB: one of 61 MiB is
    # its own to dead-letter (as on Redis and RabbitMQ: with its keys, its reason)
    settings = fake_settings(max_message_bytes=100 << 20)
    with hosted_and_remote(settings, "worker", 1 << 20) as (hosted, remote):
        most = 61 << 20  # 2 * 1 MiB + 64 MiB, less 4 MiB of others and 1 MiB to spare
        bodies = [b"x" * (4 << 20), b"y" * most, b"z" * (most + 1)]
        hosted.producer(hosted.reply_queue("edge")).submit(bodies)
        consumer = remote.consumer("c1")
        got = fetch_n(consumer, 2, within=30)
        assert [len(d.body) for d in got] == [4 << 20, most]
        assert consumer.fetch(5, 0.1) == []
        [letter] = hosted.dead_letters()
        assert f"task is {most + 1:,} bytes" in letter.reason, letter.reason
        consumer.close()


@pytest.mark.timeout(120)
def test_a_task_over_a_workers_limit_is_dead_lettered_answered_and_the_rest_run() -> None:
    # the master at 100 MiB, the worker at the default 1 MiB: its frames stop at 66 MiB,
    # and a fetch reply holding a task of 70 MiB was refused at every redelivery
    settings = fake_settings(max_message_bytes=100 << 20)
    with hosted_and_remote(settings, "worker", 1 << 20) as (hosted, remote):
        reply_to = hosted.reply_queue("big")
        producer = hosted.producer(reply_to)
        codec = Codec(max_message_bytes=100 << 20)
        big = Task(name="jobs:echo", args=["x" * (70 << 20)], reply_to=reply_to)
        small = [
            codec.seal_task(Task(name="jobs:add", args=[n, n], reply_to=reply_to)) for n in range(3)
        ]
        producer.submit([small[0], codec.seal_task(big), *small[1:]])
        consumer = remote.consumer("c1")
        got = fetch_n(consumer, 3, within=30)
        assert sorted(d.body for d in got) == sorted(small)
        [letter] = hosted.dead_letters()
        assert "1,048,576" in letter.reason and "104,857,600" in letter.reason, letter.reason
        assert len(letter.body) < 1 << 20  # its start only
        [answer] = results_n(producer, 1, within=10)
        assert big.id.encode() in answer and b"MessageTooLarge" in answer, answer[:500]
        assert b"1,048,576" in answer, answer[:500]
        assert hosted.stats().dead == 1 and consumer.fetch(5, 0.1) == []
        consumer.close()


@pytest.mark.timeout(120)
def test_a_settle_of_large_results_goes_in_calls_within_the_masters_limit() -> None:
    # 80 results of 1 MiB are one settle of 80 MiB, over the master's 66 MiB: the master
    # dropped the connection and the tasks ran again
    settings = fake_settings(max_message_bytes=1 << 20)
    with hosted_and_remote(settings, "client") as (hosted, remote):
        reply_to = remote.reply_queue("big")
        producer = remote.producer(reply_to)
        producer.submit([bytes([n]) for n in range(80)])
        consumer = remote.consumer("c1")
        got = fetch_n(consumer, 80, within=30)
        results = [bytes([n]) * (1 << 20) for n in range(80)]
        settled = [Settlement(d, reply_to=reply_to, result=d.body * (1 << 20)) for d in got]
        assert consumer.settle_then_fetch(settled, 5) == []
        assert sorted(results_n(producer, 80, within=60)) == results
        assert hosted.stats().in_flight == 0
        consumer.close()


def test_a_worker_fetches_from_a_master_that_takes_no_limit(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings = fake_settings(max_message_bytes=1 << 20)
    with hosted_and_remote(settings) as (hosted, remote):
        broker = hosted._broker  # type: ignore[attr-defined]
        before = broker.fetch

        def fetch(queue: str, consumer: str, count: int, timeout: float, lease: float) -> object:
            return before(queue, consumer, count, timeout, lease)  # a distq before limits33

        monkeypatch.setattr(broker, "fetch", fetch)
        hosted.producer(hosted.reply_queue("old")).submit([b"a", b"b"])
        consumer = remote.consumer("c1")
        assert [d.body for d in fetch_n(consumer, 2)] == [b"a", b"b"]
        assert consumer.most is None  # type: ignore[attr-defined]
        consumer.close()


def test_a_task_over_a_workers_limit_is_dead_lettered_even_if_its_answer_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def failing(*_: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Endings, "malformed", failing)
    settings = fake_settings(max_message_bytes=100 << 20)
    with hosted_and_remote(settings, "worker", 1 << 20) as (hosted, remote):
        hosted.producer(hosted.reply_queue("j")).submit([b"x" * (62 << 20), b"small"])
        consumer = remote.consumer("c1")
        assert [d.body for d in fetch_n(consumer, 1)] == [b"small"]
        [letter] = hosted.dead_letters()
        assert "65,011,712 bytes" in letter.reason and "not answered" in letter.reason
        consumer.close()


@pytest.mark.timeout(240)
def test_a_task_far_over_a_workers_limit_is_dead_lettered_answered_on_every_transport(
    target: Target, hosted: Transport, workers: list[Distq]
) -> None:
    """70 MiB, for a worker the CLI started at the default 1 MiB: on Redis and RabbitMQ
    it reads it and dead-letters it; on manager, too large for its frames, the master
    does (it stalled the queue there); every other task runs, on each alike."""
    reply = hosted.reply_queue(new_id())
    producer = hosted.producer(reply)
    big = Task("jobs:echo", ["x" * (70 << 20)], reply)
    small = [Task("jobs:add", [n, n], reply) for n in range(3)]
    producer.submit([small[0].encode(), big.encode(), *(t.encode() for t in small[1:])])
    # a lease of 10 s, not the tests' 1: a Redis reply of 70 MiB read on a loaded machine
    # (a clean-clone CI beside other work) took over 1 s, the wait a lease allows, and the
    # worker timed out and read it again for 84 s, still reconnecting at its idle exit
    env = target.process_env(DISTQ_LEASE_SECONDS="10")
    proc = Distq(["worker", "--tasks", "jobs", "--exit-when-idle", "2"], env)
    workers.append(proc)
    # results first: their reading keeps this master alive (a master that makes no call
    # for 10 s is gone, its results dropped: a worker slow with 70 MiB on a loaded machine)
    answers = results_of(producer, 4, within=150)
    producer.close()
    assert proc.wait(20) == 0, proc.output()
    got = sorted((r.task_id, r.status, r.error_type or "") for r in answers)
    expected = [(big.id, "error", "MessageTooLarge")] + [(t.id, "ok", "") for t in small]
    assert got == sorted(expected), got
    [letter] = hosted.dead_letters()
    assert "over the limit of 1,048,576 (DISTQ_MAX_MESSAGE_BYTES" in letter.reason, letter.reason


def _settled_with_a_large_result(
    consumer: Consumer, producer: Producer, reply_to: str, count: int, then_fetch: bool = False
) -> str:
    """``count`` tasks fetched by ``consumer`` and settled with their results, the second's
    of 70 MiB, the others' their position (1, 3, 4, ...), through a settle or, if
    ``then_fetch``, a settle_then_fetch that fetches nothing: each result read once by
    ``producer`` (at the default 1 MiB of DISTQ_MAX_MESSAGE_BYTES), the small ones as
    sent, the large one an error result ``MessageTooLarge`` that names its size, both
    ends' limits (1 MiB and 100 MiB) and DISTQ_MAX_MESSAGE_BYTES. Its message."""
    got = fetch_n(consumer, count, within=10)
    ids = [new_id() for _ in got]
    values: list[object] = [1, "x" * (70 << 20), *range(3, count + 1)]
    results = [
        Result(i, "ok", "w1", 1, 0.0, 0.0, value=v).encode()
        for i, v in zip(ids, values, strict=True)
    ]
    settled = [
        Settlement(d, reply_to=reply_to, result=r) for d, r in zip(got, results, strict=True)
    ]
    if then_fetch:
        assert consumer.settle_then_fetch(settled, 5) == []
    else:
        consumer.settle(settled)
    answers = results_of(producer, count, within=20)
    by_id = {r.task_id: r for r in answers}
    assert sorted(by_id) == sorted(ids), [r.task_id for r in answers]
    small = [i for n, i in enumerate(ids) if n != 1]
    assert [by_id[i].value for i in small] == [v for n, v in enumerate(values) if n != 1]
    big = by_id[ids[1]]
    assert big.status == "error" and big.error_type == "MessageTooLarge", big
    said = big.error_message or ""
    assert f"{len(results[1]):,} bytes" in said, said
    assert "1,048,576" in said and "104,857,600" in said, said
    assert "DISTQ_MAX_MESSAGE_BYTES" in said, said
    return said


@pytest.mark.timeout(120)
def test_a_result_over_a_producers_frames_is_an_error_result_and_the_rest_arrive() -> None:
    # the master at 100 MiB, a remote producer at the default 1 MiB: its frames stop at
    # 66 MiB, and a get reply holding a result of 70 MiB was refused at every call
    settings = fake_settings(max_message_bytes=100 << 20)
    with hosted_and_remote(settings, "client", 1 << 20) as (hosted, remote):
        reply_to = remote.reply_queue("big")
        producer = remote.producer(reply_to)
        producer.submit([b"a", b"b", b"c", b"d"])
        consumer = hosted.consumer("c1")
        _settled_with_a_large_result(consumer, producer, reply_to, 4)
        consumer.close()
        producer.close()


def test_a_producer_gets_from_a_master_that_takes_no_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = fake_settings(max_message_bytes=1 << 20)
    with hosted_and_remote(settings, "client") as (hosted, remote):
        broker = hosted._broker  # type: ignore[attr-defined]
        before = broker.get

        def get(queue: str, max_count: int, timeout: float) -> object:
            return before(queue, max_count, timeout)  # a distq before getlim33

        monkeypatch.setattr(broker, "get", get)
        reply_to = remote.reply_queue("old")
        producer = remote.producer(reply_to)
        hosted.producer(reply_to).submit([])  # nothing: the queue is the remote one's
        broker.put(reply_to, [b"r1", b"r2"])
        assert sorted(results_n(producer, 2)) == [b"r1", b"r2"]
        assert producer.most is None  # type: ignore[attr-defined]
        producer.close()


@pytest.mark.timeout(120)
def test_a_result_over_the_masters_frames_is_settled_as_an_error_result() -> None:
    # the master at the default 1 MiB (frames to 66 MiB), a worker at 100 MiB: its settle
    # of a 70 MiB result was refused whole, the connection dropped, the task ran again
    settings = fake_settings(max_message_bytes=1 << 20)
    with hosted_and_remote(settings, "worker", 100 << 20) as (hosted, remote):
        reply_to = hosted.reply_queue("big")
        producer = hosted.producer(reply_to)
        producer.submit([b"a", b"b", b"c"])
        consumer = remote.consumer("c1")
        said = _settled_with_a_large_result(consumer, producer, reply_to, 3, then_fetch=True)
        # the master's limit is the small one: the fix is the master's, not the submitter's
        assert "give the master at least" in said and "submits" not in said, said
        assert hosted.stats().in_flight == 0 and hosted.stats().ready == 0
        consumer.close()


@pytest.mark.timeout(180)
def test_a_result_over_the_masters_limit_is_an_error_result_on_every_transport(
    target: Target, hosted: Transport, workers: list[Distq]
) -> None:
    """70 MiB of result, from a worker the CLI started at 100 MiB, read by a master at
    the default 1 MiB: an error result for its task on Redis and RabbitMQ (the master
    reads its head) and on manager (too large for the master's frames, the worker sends
    it; its settle was refused and the task ran again, each time); the others arrive."""
    reply = hosted.reply_queue(new_id())
    producer = hosted.producer(reply)
    big = Task("jobs:repeat", ["x", 70 << 20], reply)
    small = [Task("jobs:add", [n, n], reply) for n in range(3)]
    producer.submit([small[0].encode(), big.encode(), *(t.encode() for t in small[1:])])
    env = target.process_env(DISTQ_MAX_MESSAGE_BYTES=str(100 << 20))
    proc = Distq(["worker", "--tasks", "jobs", "--exit-when-idle", "2"], env)
    workers.append(proc)
    got: dict[str, Result] = {}
    collector = Collector[None](lambda result, _, __: got.__setitem__(result.task_id, result))
    collector.expect((t.id, None) for t in [big, *small])
    deadline = time.monotonic() + 120
    while collector.outstanding and time.monotonic() < deadline:
        collector.collect(producer, 0.5)
    assert proc.wait(60) == 0, proc.output()
    producer.close()
    assert sorted(got) == sorted(t.id for t in [big, *small]), proc.output()
    assert [got[t.id].value for t in small] == [0, 2, 4]
    said = got[big.id].error_message or ""
    assert got[big.id].error_type == "MessageTooLarge", got[big.id]
    assert "1,048,576" in said and "DISTQ_MAX_MESSAGE_BYTES" in said, said
    assert "ran again" not in proc.output() and got[big.id].attempt == 1, proc.output()


def test_a_worker_settles_to_a_master_that_tells_no_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    # a master before getlim33 exposes no message_limit: a large result is sent as before
    older = tuple(name for name in wire.EXPOSED if name != "message_limit")
    monkeypatch.setattr(wire, "EXPOSED", older)
    settings = fake_settings(max_message_bytes=1 << 20)
    with hosted_and_remote(settings, "worker", 100 << 20) as (hosted, remote):
        reply_to = hosted.reply_queue("old")
        producer = hosted.producer(reply_to)
        producer.submit([b"a", b"b"])
        consumer = remote.consumer("c1")
        first, second = fetch_n(consumer, 2)
        large = Settlement(first, reply_to=reply_to, result=b"x" * (70 << 20))
        assert consumer._fitted([large]) == [large]  # type: ignore[attr-defined]
        consumer.settle([Settlement(second, reply_to=reply_to, result=b"r")])
        assert results_n(producer, 1) == [b"r"]
        consumer.close()


def test_a_producer_names_its_limit_again_to_a_master_restarted_in_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # an older master refused the limit, and the producer dropped it; the master upgraded
    # in place (a new one at the same address) is sent results over the producer's frames
    # unless named it again, each reply holding one refused, as before getlim33
    settings = fake_settings(max_message_bytes=1 << 20)
    older = open_transport(settings, "master")
    remote = open_transport(settings, "client")
    try:
        broker = older._broker  # type: ignore[attr-defined]
        before = broker.get

        def old_get(queue: str, max_count: int, timeout: float) -> object:
            return before(queue, max_count, timeout)  # a distq before getlim33

        monkeypatch.setattr(broker, "get", old_get)
        producer = remote.producer(remote.reply_queue("upgraded"))
        assert producer.results(1, 0.1) == []
        assert producer.most is None  # type: ignore[attr-defined]
        older.close()
        newer = open_transport(settings, "master")
        try:
            named: list[int | None] = []
            broker = newer._broker  # type: ignore[attr-defined]
            current = broker.get

            def get(queue: str, max_count: int, timeout: float, most: int | None = None) -> object:
                named.append(most)
                return current(queue, max_count, timeout, most=most)

            monkeypatch.setattr(broker, "get", get)
            producer.reconcile()  # the connection lost: connects afresh
            assert producer.results(1, 0.1) == []
            assert named == [1 << 20], named
            producer.close()
        finally:
            newer.close()
    finally:
        remote.close()


@pytest.mark.parametrize("then_fetch", [False, True], ids=["settle", "settle_then_fetch"])
def test_a_settle_in_calls_whose_last_fails_tells_which_were_settled(
    monkeypatch: pytest.MonkeyPatch, then_fetch: bool
) -> None:
    # 10 results of 1 MiB go in two calls; the first answered, the second failed: the
    # worker counted all 10 handed back, though 5 results had gone and their tasks were
    # done (not back with the lease: no run of them again would count them)
    settings = fake_settings(max_message_bytes=1 << 20)
    with hosted_and_remote(settings) as (hosted, remote):
        broker = hosted._broker  # type: ignore[attr-defined]
        last = "settle_fetch" if then_fetch else "settle"
        calls = {"settle": 0}
        before = broker.settle

        def settle(*args: object) -> object:
            calls["settle"] += 1
            if not then_fetch and calls["settle"] == 2:
                raise RuntimeError("the second call failed")
            return before(*args)

        def failed(*args: object, **named: object) -> object:
            raise RuntimeError("the last call failed")

        monkeypatch.setattr(broker, "settle", settle)
        if then_fetch:
            monkeypatch.setattr(broker, last, failed)
        reply_to = hosted.reply_queue("split")
        producer = hosted.producer(reply_to)
        producer.submit([bytes([n]) for n in range(10)])
        consumer = remote.consumer("c1")
        got = fetch_n(consumer, 10, within=10)
        settled = [Settlement(d, reply_to=reply_to, result=d.body * (1 << 20)) for d in got]
        with pytest.raises(TransportError):
            if then_fetch:
                consumer.settle_then_fetch(settled, 5)
            else:
                consumer.settle(settled)
        assert calls["settle"] == (1 if then_fetch else 2)
        first = {d.tag for d in got[:5]}
        assert set(consumer.settled_late) == first, consumer.settled_late
        assert sorted(results_n(producer, 5, within=10)) == [
            bytes([n]) * (1 << 20) for n in range(5)
        ]
        assert hosted.stats().in_flight == 5
        consumer.close()


def test_a_cancels_withdraw_on_a_master_that_takes_no_redelivered_flag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A master before left36 refuses withdraw's ``redelivered``: a cancel's withdraw
    (``redelivered=False``) falls back to the call without it, which takes every copy,
    as that master did."""
    settings = fake_settings(max_message_bytes=1 << 20)
    with hosted_and_remote(settings, "client") as (hosted, remote):
        broker = hosted._broker  # type: ignore[attr-defined]
        before = broker.withdraw
        calls: list[int] = []

        def withdraw(queue: str, bodies: list[bytes]) -> object:
            calls.append(len(bodies))
            return before(queue, bodies)  # a distq before left36

        monkeypatch.setattr(broker, "withdraw", withdraw)
        producer = remote.producer(remote.reply_queue("old"))
        producer.submit([b"a", b"b"])
        assert producer.withdraw([b"b", b"c"], False) == [True, False]
        assert producer.withdraw([b"a"]) == [True]
        assert calls == [2, 1]
        assert hosted.stats().ready == 0
