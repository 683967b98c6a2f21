"""A worker's settle the master runs after that worker's consumer ended (closed by
another thread as the worker stopped, or its lease lapsed), over the real manager
transport: a master hosted in this process, a worker's transport connected to it. The
master takes it as it takes a settle sent again within the lease: what was settled
already is left alone, and a task whose result arrives late runs no more."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from conftest import hosted_and_remote
from distq.errors import TransportError
from distq.transport import Settlement, manager
from distq.transport.manager_broker import QueueBroker
from fake_master import fake_settings
from seam import fetch_n, results_n

pytestmark = pytest.mark.integration


def _closed_elsewhere(consumer: object) -> None:
    """``consumer`` closed in a thread of its own, as a worker's stop closes its slots'
    (``distq-close``): it tells the master, which puts back what the consumer held."""
    close = threading.Thread(target=consumer.close)  # type: ignore[attr-defined]
    close.start()
    close.join(10)


@pytest.mark.timeout(60)
def test_a_settle_run_after_its_consumer_closed_sends_its_result_once() -> None:
    # a keeper's settle waiting on a busy master while the worker stopped: the close ran
    # first, put the task back, and the settle then published its result; the copy ran
    # again and its result reached the master twice
    with hosted_and_remote(fake_settings()) as (hosted, remote):
        reply_to = hosted.reply_queue("late")
        producer = hosted.producer(reply_to)
        producer.submit([b"a", b"b"])
        consumer = remote.consumer("c1")
        first, _ = fetch_n(consumer, 2)
        _closed_elsewhere(consumer)
        consumer.settle([Settlement(first, reply_to=reply_to, result=b"ran a")])
        other = remote.consumer("c2")
        again = fetch_n(other, 2, within=1)
        assert [d.body for d in again] == [b"b"], again  # "a" is done: its copy went
        other.settle([Settlement(d, reply_to=reply_to, result=b"ran " + d.body) for d in again])
        assert sorted(results_n(producer, 3, within=1)) == [b"ran a", b"ran b"]
        other.close()


@pytest.mark.timeout(60)
def test_a_settle_sent_again_after_its_consumer_closed_is_settled_already() -> None:
    # the first settle answered (or a split settle's earlier calls), the consumer closed
    # since, and the same settle sent again (a keeper's late, or a stopping worker's retry
    # of a settle that failed part-way): its result went out a second time
    with hosted_and_remote(fake_settings()) as (hosted, remote):
        reply_to = hosted.reply_queue("again")
        producer = hosted.producer(reply_to)
        producer.submit([b"a"])
        consumer = remote.consumer("c1")
        [delivery] = fetch_n(consumer, 1)
        settled = [Settlement(delivery, reply_to=reply_to, result=b"ran a")]
        consumer.settle(settled)
        _closed_elsewhere(consumer)
        consumer.settle(settled)
        assert consumer.late == frozenset()
        assert results_n(producer, 2, within=1) == [b"ran a"]


def _waiting_in(method: object, within: float = 10.0) -> bool:
    """Whether a thread of this process comes to be in ``method`` (the master's server
    thread running a request) within ``within`` seconds."""
    code = method.__code__  # type: ignore[attr-defined]
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for frame in sys._current_frames().values():
            while frame is not None:
                if frame.f_code is code:
                    return True
                frame = frame.f_back  # type: ignore[assignment]
        time.sleep(0.01)
    return False


@pytest.mark.timeout(60)
@pytest.mark.parametrize("then_fetch", [False, True], ids=["settle", "settle-then-fetch"])
def test_a_settle_the_master_ran_as_it_stopped_is_answered(then_fetch: bool) -> None:
    # the master's stop flag set while a settle waited on a busy master: the settle ran,
    # its result went out, but its reply was withheld, and the worker counted the batch
    # handed back (its exit line, health, metrics)
    with hosted_and_remote(fake_settings()) as (hosted, remote):
        reply_to = hosted.reply_queue("stopping")
        producer = hosted.producer(reply_to)
        producer.submit([b"a", b"b"])
        consumer = remote.consumer("c1")
        [delivery] = fetch_n(consumer, 1)
        settled = [Settlement(delivery, reply_to=reply_to, result=b"ran a")]
        got: list[object] = []

        def settle() -> None:
            try:
                if then_fetch:
                    got.append(consumer.settle_then_fetch(settled, 5))
                else:
                    consumer.settle(settled)
                    got.append(None)
            except TransportError as exc:
                got.append(exc)

        with hosted._broker._lock:  # type: ignore[attr-defined]  # a busy master
            settling = threading.Thread(target=settle)
            settling.start()
            assert _waiting_in(QueueBroker.settle)
            hosted._server.stop_event.set()  # type: ignore[attr-defined]  # close()'s stop
        settling.join(10)
        assert results_n(producer, 2, within=1) == [b"ran a"]
        # answered; a fetch of a master that stopped leases nothing
        assert got[0] in ([], None), got


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("bad", "said"),
    [
        # a str as a retry's delay: the master raised mid-settle, after the task's lease
        # was dropped and before its retry was queued: the task was lost
        ({"retry": b"b retried", "retry_delay": "0.5"}, "a retry delay of str, not seconds"),
        # a list as a result's reply queue: the master raised looking it up, after the
        # task's lease was dropped and before anything was sent: the task lost, and the
        # settle's earlier result not remembered (sent again, sent twice)
        ({"reply_to": ["delay"], "result": b"ran b"}, "a reply_to of list, not text"),
    ],
    ids=["retry-delay", "reply-to"],
)
def test_a_settlement_field_that_is_not_what_distq_sends_fails_the_settle_clearly_and_loses_no_task(
    bad: dict[str, object], said: str
) -> None:
    """A peer holding the key sent a settlement the master cannot use: the settle fails
    saying which field, the rest of it is settled once (sent again, nothing twice), and
    the bad one's task runs again once its lease lapses."""
    with hosted_and_remote(fake_settings(lease_seconds=1.0)) as (hosted, remote):
        reply_to = hosted.reply_queue("delay")
        producer = hosted.producer(reply_to)
        producer.submit([b"a", b"b"])
        consumer = remote.consumer("c1")
        a, b = fetch_n(consumer, 2)
        settled = [Settlement(a, reply_to=reply_to, result=b"ran a"), Settlement(b, **bad)]  # type: ignore[arg-type]
        with pytest.raises(TransportError, match=said) as caught:
            consumer.settle(settled)
        assert "\n" not in str(caught.value) and "not settled" in str(caught.value)
        with pytest.raises(TransportError, match=said):
            consumer.settle(settled)  # sent again
        assert results_n(producer, 2, within=1) == [b"ran a"]
        other = remote.consumer("c2")
        again = fetch_n(other, 1, within=5)  # b, its lease lapsed: it runs again
        assert [d.body for d in again] == [b"b"], again
        other.settle([Settlement(again[0], reply_to=reply_to, result=b"ran b")])
        assert results_n(producer, 1, within=1) == [b"ran b"]
        other.close()


@pytest.mark.timeout(60)
def test_a_lease_that_never_ends_is_refused_and_leases_nothing() -> None:
    # a peer holding the key fetched with a lease of inf: the master leased the task till
    # a deadline that never passes, and had that worker died it was never put back
    with hosted_and_remote(fake_settings(lease_seconds=1.0)) as (hosted, remote):
        producer = hosted.producer(hosted.reply_queue("lease"))
        producer.submit([b"a"])
        consumer = remote.consumer("c1")
        consumer._lease = float("inf")  # type: ignore[attr-defined]  # distq: the setting's
        with pytest.raises(TransportError, match=r"a lease of inf s, not seconds"):
            consumer.fetch(1, 0.2)
        other = remote.consumer("c2")
        assert [d.body for d in fetch_n(other, 1)] == [b"a"]
        other.close()


@pytest.mark.timeout(60)
def test_a_queue_named_by_an_int_is_refused_and_the_master_closes() -> None:
    # a peer holding the key put a task in queue 5: the master made that queue, and its
    # close, which counts the dead letters and tasks it holds by name, failed on it
    # ("'int' object has no attribute 'endswith'") before it stopped serving
    with hosted_and_remote(fake_settings()) as (_, remote):
        broker = remote._endpoint()  # type: ignore[attr-defined]
        with pytest.raises(TransportError, match=r"a queue name of int, not text"):
            manager._call(remote.address, broker.put, 5, [b"a"])  # type: ignore[attr-defined]
