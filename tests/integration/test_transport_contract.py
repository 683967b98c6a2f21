"""The transport contract (distq.transport.base), proven on every transport and real broker.

Each test runs four times: manager (this process hosts the queues, consumers connect
over TCP), redis and rabbitmq (real servers from tests/brokers.py), and rabbitmq with
quorum queues (``target`` below). Every scenario the transports share lives here, once;
the per-transport files test only what is theirs. Every transport a test opens is
closed when it ends.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import pika
import pika.exceptions
import pytest
import redis

from conftest import TRANSPORTS, Target, target_named
from distq.config import Settings
from distq.envelope import DeadLetter, new_id
from distq.errors import AuthenticationFailed, ConnectionFailed, TransportError
from distq.retries import retry_delay
from distq.transport import Delivery, Settlement, Transport, open_transport
from distq.transport.base import orphaned_reason
from launch import free_port
from seam import dead_letter, fetch_n, results_n

pytestmark = pytest.mark.integration


#: Where RabbitMQ's quorum queues differ by design: test -> (why, whether it always does)
QUORUM_DIFFERENCES = {
    "test_release_hands_back_to_the_front[rabbitmq-quorum-1]": (
        "a quorum queue counts each requeue as a delivery, so a task handed back is "
        "published again, behind the tasks queued (RabbitMQConsumer._give_back)",
        True,
    ),
    "test_stats_count_ready_tasks[rabbitmq-quorum]": (
        "a quorum queue counts a cancelled consumer (a prefetch resize) among its "
        "consumers until the deliveries it was pushed are settled",
        False,  # only where fetch_n resized the window
    ),
    "test_forget_orphans_removes_only_that_masters_orphans_and_keeps_the_order[rabbitmq-quorum]": (
        "forget_orphans makes no look at a quorum dead-letter queue: each letter taken "
        "and put back counts as a delivery there (RabbitMQTransport.forget_orphans)",
        True,
    ),
}


@pytest.fixture(params=[*TRANSPORTS, "rabbitmq-quorum"])
def target(request: pytest.FixtureRequest) -> Target:
    """conftest's ``target``, and RabbitMQ once more with quorum queues
    (``DISTQ_RABBITMQ_QUEUE_TYPE=quorum``): they count deliveries, and distq hands tasks
    back to them otherwise (:data:`QUORUM_DIFFERENCES`: where that shows)."""
    if request.param != "rabbitmq-quorum":
        return target_named(request, request.param)
    if request.node.name in QUORUM_DIFFERENCES:
        reason, strict = QUORUM_DIFFERENCES[request.node.name]
        request.applymarker(pytest.mark.xfail(reason=reason, strict=strict))
    target = target_named(request, "rabbitmq")
    return replace(
        target,
        settings=replace(target.settings, rabbitmq_queue_type="quorum"),
        env=dict(target.env, DISTQ_RABBITMQ_QUEUE_TYPE="quorum"),
    )


@contextlib.contextmanager
def worker_side(target: Target) -> Iterator[Transport]:
    """Another worker's transport on ``target``, closed at the end of the block."""
    with contextlib.closing(open_transport(target.settings, "worker")) as transport:
        yield transport


@contextlib.contextmanager
def both_sides(target: Target) -> Iterator[tuple[Transport, Transport]]:
    """A master's and a worker's transport on a target of their own, closed at the end."""
    with (
        contextlib.closing(open_transport(target.settings, "master")) as master,
        worker_side(target) as worker,
    ):
        yield master, worker


def test_submit_fetch_settle_and_collect(hosted: Transport, remote: Transport) -> None:
    producer = hosted.producer(hosted.reply_queue(new_id()))
    bodies = [f"task-{i}".encode() for i in range(50)]
    producer.submit(bodies)
    consumer = remote.consumer("c1")
    deliveries = fetch_n(consumer, 50)
    assert sorted(d.body for d in deliveries) == sorted(bodies)
    consumer.settle(
        [Settlement(d, reply_to=producer.reply_to, result=b"done:" + d.body) for d in deliveries]
    )
    assert sorted(results_n(producer, 50)) == sorted(b"done:" + b for b in bodies)
    assert consumer.fetch(10, 0.2) == []
    consumer.close()
    producer.close()


def test_settle_then_fetch_settles_and_leases_each_task_once(
    hosted: Transport, remote: Transport
) -> None:
    """One call where the transport can (Redis, manager), settle then fetch where not."""
    producer = hosted.producer(hosted.reply_queue(new_id()))
    bodies = [f"task-{i}".encode() for i in range(12)]
    producer.submit(bodies)
    consumer = remote.consumer("c1")
    seen: list[bytes] = []
    batch = fetch_n(consumer, 3)
    for _ in range(20):
        seen += [d.body for d in batch]
        done = [Settlement(d, reply_to=producer.reply_to, result=b"r:" + d.body) for d in batch]
        batch = consumer.settle_then_fetch(done, 3)
        assert len(batch) <= 3
        if not batch and len(seen) < len(bodies):
            batch = consumer.fetch(3, 1.0)
        if not batch:
            break
    assert sorted(seen) == sorted(bodies)  # each task leased once: none lost, none twice
    assert sorted(results_n(producer, 12)) == sorted(b"r:" + b for b in bodies)
    assert consumer.settle_then_fetch([], 3) == []  # nothing to settle: nothing claimed
    assert consumer.fetch(3, 0.2) == []
    consumer.close()
    producer.close()


def test_submit_then_results_submits_and_reads_each_result_once(
    hosted: Transport, remote: Transport
) -> None:
    """One round trip where the transport can (Redis), a submit and a read where not: the
    tasks arrive once, and a result that comes while it waits is read, by it or by the
    read after it, once."""
    producer = hosted.producer(hosted.reply_queue(new_id()))
    consumer = remote.consumer("c1")

    def answer() -> None:
        for delivery in fetch_n(consumer, 2):
            result = b"r:" + delivery.body
            consumer.settle([Settlement(delivery, reply_to=producer.reply_to, result=result)])

    worker = threading.Timer(0.3, answer)
    worker.start()
    try:
        got = producer.submit_then_results([b"one", b"two"], 10, 5.0)
    finally:
        worker.join()
    got += results_n(producer, 2 - len(got)) if len(got) < 2 else []
    assert sorted(got) == [b"r:one", b"r:two"]
    assert producer.submit_then_results([b"three"], 10, 0.2) == []  # nothing answers it
    assert [d.body for d in fetch_n(consumer, 1)] == [b"three"]
    assert producer.results(10, 0.2) == [] and consumer.fetch(3, 0.2) == []
    consumer.close()
    producer.close()


def test_settle_then_fetch_that_may_wait_leases_a_task_that_comes_once(
    hosted: Transport, remote: Transport
) -> None:
    """With a timeout, a task submitted while the settle waits (Redis) or after it (the
    others) is leased once, by the settle or by the fetch after it, and results arrive."""
    producer = hosted.producer(hosted.reply_queue(new_id()))
    producer.submit([b"first"])
    consumer = remote.consumer("c1")
    (first,) = fetch_n(consumer, 1)
    done = [Settlement(first, reply_to=producer.reply_to, result=b"r:first")]
    timer = threading.Timer(0.3, producer.submit, [[b"second"]])
    timer.start()
    try:
        got = consumer.settle_then_fetch(done, 3, 5.0) or fetch_n(consumer, 1)
    finally:
        timer.join()
    assert [d.body for d in got] == [b"second"]
    done = [Settlement(got[0], reply_to=producer.reply_to, result=b"r:second")]
    assert consumer.settle_then_fetch(done, 3, 0.2) == []  # nothing comes: nothing leased
    assert sorted(results_n(producer, 2)) == [b"r:first", b"r:second"]
    assert consumer.fetch(3, 0.2) == []
    consumer.close()
    producer.close()


def test_tasks_come_out_in_submission_order(hosted: Transport, remote: Transport) -> None:
    producer = hosted.producer(hosted.reply_queue("order"))
    producer.submit([b"a", b"b", b"c"])
    consumer = remote.consumer("c1")
    assert [d.body for d in fetch_n(consumer, 3)] == [b"a", b"b", b"c"]


def test_results_come_out_oldest_first_and_at_most_as_many_as_asked(
    hosted: Transport, remote: Transport
) -> None:
    producer = hosted.producer(hosted.reply_queue("results"))
    producer.submit([f"task-{i}".encode() for i in range(5)])
    consumer = remote.consumer("c1")
    got = fetch_n(consumer, 5)
    consumer.settle([Settlement(d, reply_to=producer.reply_to, result=d.body + b"!") for d in got])
    first = results_n(producer, 3)
    assert first == [b"task-0!", b"task-1!", b"task-2!"]
    assert results_n(producer, 2) == [b"task-3!", b"task-4!"]
    assert producer.results(10, 0) == []


def test_waits_block_and_return_empty(hosted: Transport, remote: Transport) -> None:
    producer = hosted.producer(hosted.reply_queue("wait"))
    consumer = remote.consumer("c1")
    started = time.monotonic()
    assert consumer.fetch(5, 0.3) == []
    assert time.monotonic() - started >= 0.29  # waited; an upper bound is the next tests'
    started = time.monotonic()
    assert producer.results(5, 0.3) == []
    assert time.monotonic() - started >= 0.29
    started = time.monotonic()
    assert producer.results(5, 0) == []  # zero means "don't wait", never "wait forever"
    assert time.monotonic() - started < 5


def test_asking_the_broker_for_an_answer_leaves_the_deliveries_as_they_were(
    hosted: Transport, remote: Transport
) -> None:
    """``answers`` (a worker with --exit-when-idle, after each empty fetch) is a round
    trip and nothing more: the broker answers at once, and what the consumer holds and
    what comes next are unchanged. On RabbitMQ it is a ``basic_qos`` with a consumer
    running, and deliveries in flight."""
    producer = hosted.producer(hosted.reply_queue(new_id()))
    bodies = [f"task-{i}".encode() for i in range(20)]
    consumer = remote.consumer("c1")
    assert consumer.fetch(5, 0.1) == []
    assert consumer.answers(5.0) is None  # idle: nothing held
    producer.submit(bodies)
    first = fetch_n(consumer, 5)
    assert consumer.answers(5.0) is None  # five held, the rest on its way
    rest = fetch_n(consumer, 15)
    assert sorted(d.body for d in first + rest) == sorted(bodies)
    started = time.monotonic()
    assert consumer.answers(10.0) is None
    # the answer ends the wait, long before its 10 s (a bound of 1 s, with 5 s to wait,
    # failed when this process or the broker stalled a second)
    assert time.monotonic() - started < 5.0
    assert consumer.fetch(5, 0.2) == []
    consumer.settle([Settlement(d, reply_to=producer.reply_to, result=b"r") for d in first + rest])
    assert len(results_n(producer, 20)) == 20
    consumer.close()
    producer.close()


# A lease of 10 s for the wake-up tests: Redis re-blocks every lease/3 s (3.3 s here),
# so a transport that polled instead of waking would answer well after WOKE_WITHIN.
LONG_LEASE = 10.0
WOKE_WITHIN = 2.0


def test_a_waiting_consumer_wakes_when_a_task_arrives(target: Target) -> None:
    with both_sides(target.fresh(lease_seconds=LONG_LEASE)) as (master, worker):
        producer = master.producer(master.reply_queue("wake"))
        consumer = worker.consumer("c1")
        consumer.fetch(1, 0.05)  # set up the subscription where the transport has one
        submitted: list[float] = []

        def submit() -> None:
            submitted.append(time.monotonic())
            producer.submit([b"x"])

        timer = threading.Timer(0.3, submit)
        timer.start()
        got = consumer.fetch(1, 3 * LONG_LEASE)
        woke = time.monotonic()
        timer.join()
        assert [d.body for d in got] == [b"x"]
        assert woke - submitted[0] < WOKE_WITHIN


def test_a_waiting_producer_wakes_when_a_result_arrives(target: Target) -> None:
    with both_sides(target.fresh(lease_seconds=LONG_LEASE)) as (master, worker):
        producer = master.producer(master.reply_queue("wake-results"))
        producer.submit([b"x"])
        consumer = worker.consumer("c1")
        (delivery,) = fetch_n(consumer, 1)
        producer.results(1, 0.05)  # set up the subscription where the transport has one
        settled: list[float] = []

        def settle() -> None:
            settled.append(time.monotonic())
            consumer.settle([Settlement(delivery, reply_to=producer.reply_to, result=b"y")])

        timer = threading.Timer(0.3, settle)
        timer.start()
        got = producer.results(1, 3 * LONG_LEASE)
        woke = time.monotonic()
        timer.join()
        assert got == [b"y"]
        assert woke - settled[0] < WOKE_WITHIN


@pytest.mark.parametrize("held", [1, 3])
def test_release_hands_back_to_the_front(hosted: Transport, remote: Transport, held: int) -> None:
    """Also one task of several held: Redis hands back a few of many by another path (one
    LREM each), which lost the redelivered flag unseen (mutant R10 of mut14b)."""
    producer = hosted.producer(hosted.reply_queue("release"))
    bodies = [b"first", b"second", b"third"]
    producer.submit(bodies)
    consumer = remote.consumer("c1")
    taken = fetch_n(consumer, held)
    assert [d.body for d in taken] == bodies[:held]
    consumer.release(taken[:1])
    again = fetch_n(consumer, 4 - held)  # the one handed back, then those never taken
    assert [d.body for d in again] == [b"first", *bodies[held:]]
    assert again[0].redelivered and not any(d.redelivered for d in again[1:])


def test_a_waiting_consumer_gets_a_task_handed_back_flagged_redelivered(target: Target) -> None:
    """A slot waiting for a task (Redis: blocked in BLMOVE) got one another slot handed
    back unflagged (mutant R15 of mut14b): distq_worker_redeliveries_total undercounted.
    The hand back is a close: a release may go back to the releasing slot (RabbitMQ)."""
    fresh = target.fresh(lease_seconds=LONG_LEASE)
    with both_sides(fresh) as (master, worker), worker_side(fresh) as other:
        master.producer(master.reply_queue("handed-back")).submit([b"x"])
        holder = worker.consumer("holder")
        assert [d.body for d in fetch_n(holder, 1)] == [b"x"]
        waiting = other.consumer("waits")
        waiting.fetch(1, 0.05)  # set up the subscription where the transport has one
        timer = threading.Timer(0.5, holder.close)  # while it waits
        timer.start()
        try:
            got = waiting.fetch(1, 3 * LONG_LEASE)
        finally:
            timer.join()
        assert [(d.body, d.redelivered) for d in got] == [(b"x", True)]


def test_close_hands_back_what_the_consumer_held(target: Target, hosted: Transport) -> None:
    producer = hosted.producer(hosted.reply_queue("close"))
    producer.submit([b"1", b"2", b"3"])
    with worker_side(target) as leaving:
        consumer = leaving.consumer("leaves")
        assert len(fetch_n(consumer, 2)) == 2
        consumer.close()
    with worker_side(target) as staying:
        back = fetch_n(staying.consumer("stays"), 3)  # long before a lease could lapse
        assert sorted(d.body for d in back) == [b"1", b"2", b"3"]
        assert sum(d.redelivered for d in back) == 2


def test_expired_lease_goes_back_to_the_queue(
    target: Target, hosted: Transport, remote: Transport
) -> None:
    producer = hosted.producer(hosted.reply_queue("lease"))
    producer.submit([b"1", b"2", b"3"])
    dead = remote.consumer("dies")
    assert len(fetch_n(dead, 3)) == 3
    # "dies" never heartbeats again (lease 1 s): another consumer gets the tasks back
    with worker_side(target) as other:
        started = time.monotonic()
        again = fetch_n(other.consumer("survives"), 3, within=15)
        assert sorted(d.body for d in again) == [b"1", b"2", b"3"]
        assert all(d.redelivered for d in again)
        assert time.monotonic() - started < 10  # a few lease periods, not minutes


def test_an_expired_leases_tasks_go_behind_the_tasks_queued(
    target: Target, hosted: Transport, remote: Transport
) -> None:
    """A dead worker's tasks (its lease lapsed) run after those queued meanwhile: at the
    front, a task that ends its worker each time it runs went to each worker that
    started next with the tasks leased with it, and on manager 8 starts of a worker ran
    none of 6 tasks queued with it (test_worker_misbehaving_tasks). On RabbitMQ the
    broker puts them back at the head and the worker that gets them publishes them again
    behind the others."""
    producer = hosted.producer(hosted.reply_queue("behind"))
    producer.submit([b"1", b"2", b"3"])
    dead = remote.consumer("dies")
    assert [d.body for d in fetch_n(dead, 2)] == [b"1", b"2"]
    producer.submit([b"4"])
    with worker_side(target) as other:
        survives = other.consumer("survives")
        until = time.monotonic() + 2.5
        while time.monotonic() < until:  # "dies" renews nothing: its lease (1 s) lapses
            survives.heartbeat()  # a live worker's calls (Redis: a lapse found in a gap
            time.sleep(0.1)  # of its calls is taken for Redis frozen, its time given back)
        again = fetch_n(survives, 4, within=15)
        # in their order on Redis and manager; RabbitMQ requeued them either way round
        assert [d.body for d in again[:2]] == [b"3", b"4"]
        assert sorted(d.body for d in again[2:]) == [b"1", b"2"]
        assert [d.redelivered for d in again] == [False, False, True, True]


def test_a_slot_restarted_under_the_same_id_does_not_renew_the_dead_ones_lease(
    target: Target, hosted: Transport, remote: Transport
) -> None:
    """A worker SIGKILLed while holding tasks, restarted with the same --worker-id (a
    container: same host name, pid 1): on manager its heartbeats renewed the dead one's
    lease (mutant M11 of mut14b), and those tasks never came back while it lived."""
    producer = hosted.producer(hosted.reply_queue("restarted"))
    producer.submit([b"1", b"2"])
    killed = remote.consumer("host-1")
    assert len(fetch_n(killed, 2)) == 2  # then it is never called again
    with worker_side(target) as restarted_side:
        restarted = restarted_side.consumer("host-1")
        back: list[Delivery] = []
        deadline = time.monotonic() + 10  # ten leases
        while len(back) < 2 and time.monotonic() < deadline:
            back += restarted.fetch(2 - len(back), 0.2)
            restarted.heartbeat()
        assert sorted(d.body for d in back) == [b"1", b"2"]
        assert all(d.redelivered for d in back)


@pytest.mark.parametrize("call", ["settle", "settle_then_fetch"])
@pytest.mark.parametrize("late", ["retry", "dead letter"])
def test_a_late_retry_or_dead_letter_is_not_published_the_copy_decides(
    target: Target, hosted: Transport, remote: Transport, late: str, call: str
) -> None:
    """A worker stalled past its lease (stopped, paused, a task holding the GIL) settled
    late: on Redis and manager its retry started the task again after the copy's result,
    and its dead letter and error result failed a task the copy ran ok. The settle says
    which were late (``late``): the worker said "retrying" of a retry never sent."""
    producer = hosted.producer(hosted.reply_queue(new_id()))
    producer.submit([b"task"])
    stalled = remote.consumer("stalled")
    (delivery,) = fetch_n(stalled, 1)
    with worker_side(target) as other_side:
        other = other_side.consumer("other")
        (copy,) = fetch_n(other, 1, within=15)  # the lease (1 s) lapsed: the copy
        if late == "retry":
            settlement = Settlement(delivery, retry=b"task-attempt-2")
        else:
            reply_to, result = producer.reply_to, b"failed"
            settlement = Settlement(delivery, reply_to=reply_to, result=result, dead_letter=b"x")
        try:
            if call == "settle":
                stalled.settle([settlement])
            else:
                assert stalled.settle_then_fetch([settlement], 5) == []  # the copy is other's
        except TransportError:  # RabbitMQ: its connection is gone, and its deliveries
            assert target.name == "rabbitmq"
        else:
            assert stalled.late == {delivery.tag}
        other.settle([Settlement(copy, reply_to=producer.reply_to, result=b"ok")])
        assert not other.late
        assert results_n(producer, 1) == [b"ok"]
        assert other.fetch(1, 1.5) == []  # no retry of a task that is done
        assert hosted.stats().dead == 0
    stalled.close()
    producer.close()


def test_heartbeat_keeps_the_lease(target: Target, hosted: Transport, remote: Transport) -> None:
    producer = hosted.producer(hosted.reply_queue("heartbeat"))
    producer.submit([b"long"])
    holder = remote.consumer("holder")
    (delivery,) = fetch_n(holder, 1)
    with worker_side(target) as other_side:
        other = other_side.consumer("other")
        until = time.monotonic() + 3.0  # three lease periods, renewed about every 0.2 s
        while time.monotonic() < until:
            holder.heartbeat()
            assert other.fetch(1, 0.2) == []
        holder.settle([Settlement(delivery, reply_to=producer.reply_to, result=b"ok")])
        assert results_n(producer, 1) == [b"ok"]
        assert other.fetch(1, 1.5) == []  # settled: it never comes back


def test_one_heartbeat_keeps_the_leases_of_several_consumers(
    target: Target, hosted: Transport, remote: Transport
) -> None:
    """A worker's keeper renews every busy slot's lease at once (``Transport.heartbeat``):
    one round trip on Redis and manager, where renewing slot after slot outlasted the
    lease when many slots ran Python code (tasks ran 2 to 7 times). There a consumer
    closed meanwhile is not brought back: it would count as a slot for a lease more."""
    producer = hosted.producer(hosted.reply_queue("heartbeats"))
    producer.submit([b"a", b"b"])
    holders = [remote.consumer(f"holder{i}") for i in range(2)]
    deliveries = [fetch_n(holder, 1)[0] for holder in holders]
    with worker_side(target) as other_side:
        other = other_side.consumer("other")
        until = time.monotonic() + 3.0  # three lease periods, renewed about every 0.2 s
        while time.monotonic() < until:
            remote.heartbeat(holders)
            assert other.fetch(1, 0.2) == []
        for holder, delivery in zip(holders, deliveries, strict=True):
            holder.settle([Settlement(delivery, reply_to=producer.reply_to, result=delivery.body)])
        assert sorted(results_n(producer, 2)) == [b"a", b"b"]
        other.close()
    if remote.renews_apart:
        holders[0].close()
        remote.heartbeat(holders)
        assert hosted.stats().consumers == 1, "a closed consumer came back"


def test_retry_waits_its_delay(hosted: Transport, remote: Transport) -> None:
    producer = hosted.producer(hosted.reply_queue("retry"))
    producer.submit([b"try-1"])
    consumer = remote.consumer("c1")
    (delivery,) = fetch_n(consumer, 1)
    # timed from before the settle that sets the delay until the retry comes: timed from
    # after it, a stall of this process of 0.6 s between them failed a retry on time. One
    # that comes early still fails: the first fetch brings it, well before 1.2 s
    started = time.monotonic()
    consumer.settle([Settlement(delivery, retry=b"try-2", retry_delay=1.5)])
    (again,) = consumer.fetch(1, 0.5) or fetch_n(consumer, 1, within=10)
    assert time.monotonic() - started >= 1.2  # not before its delay
    assert again.body == b"try-2"


def test_a_retry_waiting_out_its_delay_counts_as_ready(
    hosted: Transport, remote: Transport
) -> None:
    """``stats().ready`` counts retries waiting out their delay (the queue-depth gauge
    and ``distq status`` say so), at every delay of the backoff schedule."""
    producer = hosted.producer(hosted.reply_queue("retry-counted"))
    delays = [retry_delay(attempt) for attempt in range(1, 8)]  # 0.5 s ... 30 s
    producer.submit([f"try-{i}".encode() for i in range(len(delays))])
    consumer = remote.consumer("c1")
    deliveries = fetch_n(consumer, len(delays))
    assert hosted.stats().ready == 0
    retries = [
        Settlement(delivery, retry=b"again-" + delivery.body, retry_delay=delay)
        for delivery, delay in zip(deliveries, delays, strict=True)
    ]
    consumer.settle(retries[3:4])  # 4 s: delays before and after it have no retry yet
    assert hosted.stats().ready == 1
    consumer.settle(retries[:3] + retries[4:])
    consumer.close()  # nothing comes back to it: the 0.5 s retry stays ready
    assert hosted.stats().ready == len(delays)
    producer.close()


def test_dead_letters_keep_body_and_reason_oldest_first_and_stay(
    hosted: Transport, remote: Transport
) -> None:
    producer = hosted.producer(hosted.reply_queue("dead"))
    producer.submit([b"\xff not json", b"second", b"third"])
    consumer = remote.consumer("c1")
    for i, delivery in enumerate(fetch_n(consumer, 3)):  # one settle each: a known order
        letter = DeadLetter(body=delivery.body, reason=f"why-{i}", queue="q", worker="w")
        consumer.settle([Settlement(delivery, dead_letter=letter.encode())])
    deadline = time.monotonic() + 5
    while len(hosted.dead_letters()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    found = [(letter.body, letter.reason) for letter in hosted.dead_letters()]
    assert found == [(b"\xff not json", "why-0"), (b"second", "why-1"), (b"third", "why-2")]
    assert [letter.reason for letter in hosted.dead_letters(limit=2)] == ["why-0", "why-1"]
    assert hosted.dead_letters(limit=0) == []
    assert hosted.stats().dead == 3  # reading them took none away


def test_results_reach_only_their_producer(hosted: Transport, remote: Transport) -> None:
    mine, theirs = (
        hosted.producer(hosted.reply_queue("mine")),
        hosted.producer(hosted.reply_queue("theirs")),
    )
    mine.submit([b"m"])
    theirs.submit([b"t"])
    consumer = remote.consumer("c1")
    consumer.settle(
        [
            Settlement(d, reply_to=(mine if d.body == b"m" else theirs).reply_to, result=d.body)
            for d in fetch_n(consumer, 2)
        ]
    )
    assert results_n(mine, 1) == [b"m"]
    assert results_n(theirs, 1) == [b"t"]
    assert mine.results(5, 0.3) == []


def test_results_for_a_reply_queue_no_live_master_holds_are_dropped(
    target: Target, hosted: Transport, remote: Transport
) -> None:
    """Never delivered, and never a new key or queue: neither a name no master made, nor
    the queue of a master that has closed (a late result)."""
    closed = hosted.producer(hosted.reply_queue("closed"))
    closed.submit([b"late", b"stranger"])
    closed.close()
    consumer = remote.consumer("c1")
    late, stranger = fetch_n(consumer, 2)
    nobody = hosted.reply_queue("nobody")
    assert consumer.gone([closed.reply_to, nobody]) == {closed.reply_to, nobody}
    consumer.settle(
        [
            Settlement(late, reply_to=closed.reply_to, result=b"r1"),
            Settlement(stranger, reply_to=nobody, result=b"r2"),
        ]
    )
    consumer.close()
    with worker_side(target) as other:
        again = other.consumer("c2")
        assert again.gone([closed.reply_to, nobody]) == {closed.reply_to, nobody}
        again.close()
    if target.name == "redis":
        with redis.Redis.from_url(target.settings.redis_url) as client:
            assert client.exists(closed.reply_to, nobody) == 0
    elif target.name == "rabbitmq":
        connection = pika.BlockingConnection(pika.URLParameters(target.settings.amqp_url))
        try:
            for name in (closed.reply_to, nobody):
                with pytest.raises(pika.exceptions.ChannelClosedByBroker, match="NOT_FOUND"):
                    connection.channel().queue_declare(name, passive=True)
        finally:
            connection.close()


def test_a_live_master_is_not_gone(hosted: Transport, remote: Transport) -> None:
    producer = hosted.producer(hosted.reply_queue("alive"))
    consumer = remote.consumer("c1")
    assert consumer.gone([producer.reply_to]) == set()
    assert consumer.gone([]) == set()
    assert producer.reconcile() == 0  # registered, nothing submitted yet
    producer.submit([b"a", b"b", b"c"])
    producer.flush()
    assert producer.reconcile() == 3  # the broker holds all three
    assert consumer.gone([producer.reply_to]) == set()
    producer.close()


def test_a_master_names_its_own_result_queue(hosted: Transport) -> None:
    job_a, job_b = new_id(), new_id()
    assert hosted.reply_queue(job_a) != hosted.reply_queue(job_b)
    assert job_a in hosted.reply_queue(job_a) and hosted.reply_queue(job_a) != job_a


def test_start_lines_name_the_transport_and_where_it_is(
    target: Target, hosted: Transport, remote: Transport
) -> None:
    if target.name == "manager":
        host, port = target.settings.manager_address
        assert hosted.describe() == f"manager transport on {host}:{port}"
        assert remote.describe() == f"master {host}:{port}"
    else:
        url = target.settings.redis_url if target.name == "redis" else target.settings.amqp_url
        address = url.rpartition("@")[2].split("/")[0]
        assert hosted.describe() == f"{target.name} transport at {address}"
        assert remote.describe() == f"{target.name} at {address}"


def test_a_delivery_of_another_kind_is_refused_by_name(
    hosted: Transport, remote: Transport
) -> None:
    hosted.producer(hosted.reply_queue("tags")).submit([b"mine"])
    consumer = remote.consumer("c1")
    (mine,) = fetch_n(consumer, 1)
    stranger = Delivery(body=b"x", tag=object())
    with pytest.raises(ValueError, match=r"delivery tag <object object at .*> was not handed"):
        consumer.settle([Settlement(stranger)])
    with pytest.raises(ValueError, match="was not handed out by a"):
        consumer.release([stranger])
    consumer.release([mine])  # the consumer still works
    assert [d.body for d in fetch_n(consumer, 1)] == [b"mine"]


def test_stats_count_ready_tasks(hosted: Transport, remote: Transport) -> None:
    producer = hosted.producer(hosted.reply_queue("stats"))
    producer.submit([b"1", b"2", b"3", b"4", b"5"])
    producer.flush()  # the broker holds them all now, even where confirms are asynchronous
    assert hosted.stats().ready == 5
    consumer = remote.consumer("c1")
    taken = fetch_n(consumer, 2)
    assert len(taken) == 2
    stats = hosted.stats()
    assert stats.ready + len(taken) == 5
    assert stats.consumers == 1
    other = remote.consumer("c2")
    other.fetch(1, 0.1)
    assert hosted.stats().consumers == 2
    # both abandoned (SIGKILLed slots): once their leases lapse (1 s) neither is counted,
    # though no claim swept them meanwhile (Redis counted them, mutant R19 of mut14b;
    # RabbitMQ drops them when their connections miss two heartbeats)
    deadline = time.monotonic() + 10
    while hosted.stats().consumers and time.monotonic() < deadline:
        time.sleep(0.1)
    assert hosted.stats().consumers == 0


def test_a_transport_that_tells_leases_tells_the_lease_of_a_task_held(
    hosted: Transport, remote: Transport
) -> None:
    """A master past its --timeout that read results asks the broker's counts only where
    they tell a lease (``tells_leases``): a transport that says so and tells none (or
    tells one and does not say so) would lose the master's line on tasks held under a
    lease, or make a call for nothing at its end."""
    producer = hosted.producer(hosted.reply_queue("leases"))
    producer.submit([b"1"])
    producer.flush()
    assert hosted.stats().lease_left is None  # none held
    consumer = remote.consumer("c1")
    assert len(fetch_n(consumer, 1)) == 1
    assert (hosted.stats().lease_left is not None) == hosted.tells_leases, hosted.name


def test_wrong_credentials_are_refused(target: Target, hosted: Transport) -> None:
    settings = Settings.load(target.bad_credentials_env)
    with pytest.raises(AuthenticationFailed):
        open_transport(settings, "worker")


def test_unreachable_broker_is_a_clear_and_quick_error(target: Target) -> None:
    port = free_port()
    env = dict(target.env)
    env.update(
        {
            "DISTQ_MANAGER_ADDRESS": f"127.0.0.1:{port}",
            "DISTQ_REDIS_URL": f"redis://127.0.0.1:{port}/0",
            "DISTQ_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{port}/%2F",
        }
    )
    started = time.monotonic()
    with pytest.raises(ConnectionFailed) as caught:
        open_transport(Settings.load(env), "worker")
    assert time.monotonic() - started < 5  # a refused port answers at once: no retry loop
    assert f"127.0.0.1:{port}" in str(caught.value)


def dead_lettered(hosted: Transport, remote: Transport, bodies: list[bytes]) -> None:
    """Put ``bodies`` through a consumer into the dead letters, in this order."""
    dead_letter(hosted, remote, [(body, f"why-{i}", "q") for i, body in enumerate(bodies)])


def test_forget_orphans_removes_only_that_masters_orphans_and_keeps_the_order(
    target: Target, hosted: Transport, remote: Transport
) -> None:
    """A master back from a lapse removes the letters workers made of its tasks while it
    seemed gone (it submitted those tasks again): not another master's, not a letter of
    its own task dead-lettered for another reason, not another queue's."""
    queue = target.settings.queue
    mine, theirs = hosted.reply_queue(new_id()), hosted.reply_queue(new_id())
    letters = [
        (b"a", orphaned_reason(mine), queue),
        (b"b", orphaned_reason(theirs), queue),
        (b"c " + mine.encode(), f"failed for good (a task of {mine})", queue),
        (b"d", orphaned_reason(mine), "another-queue"),
        (b"e", orphaned_reason(mine), queue),
        (b"\xff f", "why", queue),
    ]
    dead_letter(hosted, remote, letters)
    assert hosted.forget_orphans(mine) == 2
    kept = [b"b", b"c " + mine.encode(), b"d", b"\xff f"]
    assert [letter.body for letter in hosted.dead_letters()] == kept
    assert remote.forget_orphans(mine) == 0  # none left; a worker's side may ask too
    assert hosted.forget_orphans(theirs) == 1
    assert hosted.stats().dead == 3


def test_requeue_dead_puts_the_oldest_letters_back_as_revived(
    hosted: Transport, remote: Transport
) -> None:
    dead_lettered(hosted, remote, [b"one", b"\xfftwo", b"three"])
    assert hosted.requeue_dead(0) == 0
    moved = hosted.requeue_dead(2, lambda letter: letter.body + b"+" + letter.reason.encode())
    assert moved == 2
    assert [letter.body for letter in hosted.dead_letters()] == [b"three"]
    consumer = remote.consumer("c1")
    assert [d.body for d in fetch_n(consumer, 2)] == [b"one+why-0", b"\xfftwo+why-1"]
    assert remote.requeue_dead(10) == 1  # a client requeues too (manager: as a worker would)
    assert [d.body for d in fetch_n(consumer, 1)] == [b"three"]  # the body as it was
    assert hosted.stats().dead == 0 and hosted.requeue_dead(10) == 0


def test_an_unreadable_dead_letter_is_listed_raw_and_requeued_as_its_bytes(
    hosted: Transport, remote: Transport
) -> None:
    """An entry of the dead letters that is no distq dead letter (a hand edit, another
    tool, another version) neither stops listing nor requeueing, nor the letters after it."""
    raw = b"not a dead letter \xff\x00"
    producer = hosted.producer(hosted.reply_queue(new_id()))
    producer.submit([b"first", b"second"])
    consumer = remote.consumer("dies")
    first, second = fetch_n(consumer, 2)
    consumer.settle([Settlement(first, dead_letter=raw)])  # the bytes as they are
    letter = DeadLetter(body=second.body, reason="why", queue="q", worker="w")
    consumer.settle([Settlement(second, dead_letter=letter.encode())])
    deadline = time.monotonic() + 5
    while hosted.stats().dead < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    unreadable, readable = hosted.dead_letters()
    assert unreadable.reason.startswith("unreadable dead letter: dead letter is not valid JSON")
    assert unreadable.body == raw and unreadable.worker == "" and unreadable.at == 0.0
    assert (readable.body, readable.reason) == (b"second", "why")
    assert unreadable.unreadable and not readable.unreadable
    assert remote.requeue_dead(10) == 2  # the raw bytes go back as a task, then the next
    assert [d.body for d in fetch_n(consumer, 2)] == [raw, b"second"]
    assert hosted.stats().dead == 0
    consumer.close()
    producer.close()


def test_requeue_dead_from_two_clients_at_once_moves_each_letter_once(
    target: Target, hosted: Transport, remote: Transport
) -> None:
    letters = [f"letter-{i}".encode() for i in range(120)]
    dead_lettered(hosted, remote, letters)
    moved: list[int] = []
    with worker_side(target) as one, worker_side(target) as other:
        threads = [
            threading.Thread(target=lambda t=t: moved.append(t.requeue_dead(1000)))
            for t in (one, other)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert sum(moved) == 120
    back = fetch_n(remote.consumer("c1"), 121, within=5)
    assert sorted(d.body for d in back) == sorted(letters)  # none twice, none lost
    assert hosted.stats().dead == 0


def test_withdraw_takes_back_tasks_no_consumer_took(
    target: Target, hosted: Transport, remote: Transport
) -> None:
    producer = hosted.producer(hosted.reply_queue(new_id()))
    producer.submit([b"taken", b"waiting-1", b"waiting-2", b"stays"])
    producer.flush()
    consumer = remote.consumer("c1")
    assert [d.body for d in fetch_n(consumer, 1)] == [b"taken"]
    answers = producer.withdraw([b"taken", b"waiting-1", b"never-sent", b"waiting-2"])
    if target.name == "rabbitmq":  # AMQP cannot take a message back out of a queue
        assert answers == [False, False, False, False]
        return
    assert answers == [False, True, False, True]
    assert [d.body for d in fetch_n(consumer, 2, within=2)] == [b"stays"]
    many = [f"m{i}".encode() for i in range(50)]  # the bulk path of a transport, if it has one
    producer.submit(many)
    producer.flush()
    assert producer.withdraw(many[::2]) == [True] * 25
    assert [d.body for d in fetch_n(consumer, 50, within=2)] == many[1::2]
