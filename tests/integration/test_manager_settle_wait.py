"""A manager worker's settle-then-fetch that waits in the master for the next task
(manlat36): a lone task's worker settled, was answered "none yet" and fetched again, a
second request, which the master's next task waited for."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from distq.config import Settings
from distq.envelope import new_id
from distq.transport import Settlement, Transport, open_transport
from distq.transport.manager_broker import QueueBroker, Wire, WireSettlement
from fake_master import fake_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_a_settle_then_fetch_that_may_wait_leases_the_next_task_in_the_same_call() -> None:
    """Its result goes out before the wait (the producer reads it while the call waits),
    and the task submitted then comes back in the call's own reply."""
    settings = fake_settings()
    hosted = open_transport(settings, "master")
    remote = open_transport(settings, "worker")
    try:
        producer = hosted.producer(hosted.reply_queue(new_id()))
        producer.submit([b"first"])
        consumer = remote.consumer("c1")
        (first,) = consumer.fetch(1, 10)
        read: list[bytes] = []

        def answer_then_submit() -> None:
            read.extend(producer.results(1, 10))
            producer.submit([b"second"])

        other = threading.Thread(target=answer_then_submit)
        other.start()
        try:
            done = [Settlement(first, reply_to=producer.reply_to, result=b"r:first")]
            got = consumer.settle_then_fetch(done, 3, 10.0)
        finally:
            other.join(20)
        assert read == [b"r:first"]
        assert [d.body for d in got] == [b"second"]
        consumer.close()
    finally:
        remote.close()
        hosted.close()


def test_a_master_whose_settle_fetch_takes_no_wait_settles_once_and_is_not_asked_again() -> None:
    """A master of a distq before manlat36 refuses the wait (a TypeError, read unsettled):
    the worker settles and claims without it, once, and names no wait from then on."""
    settings = fake_settings()
    hosted = open_transport(settings, "master")
    broker = hosted._broker  # type: ignore[attr-defined]
    assert isinstance(broker, QueueBroker)
    named: list[dict[str, Any]] = []

    def older(
        queue: str,
        consumer: str,
        items: list[WireSettlement],
        max_count: int,
        lease: float,
        most: int | None = None,
        **wait: Any,
    ) -> list[Wire]:
        named.append(wait)
        if wait:
            raise TypeError("settle_fetch() got an unexpected keyword argument 'wait'")
        return QueueBroker.settle_fetch(broker, queue, consumer, items, max_count, lease, most)

    broker.settle_fetch = older  # type: ignore[method-assign,assignment]
    _settled_one_by_one(settings, hosted, 5.0, named)
    assert named == [{"wait": 5.0}, {}, {}]


def _settled_one_by_one(
    settings: Settings, hosted: Transport, wait: float, named: list[Any]
) -> int:
    """Two tasks through a worker's consumer one at a time (a fetch, then two lone
    settle-then-fetches waiting up to ``wait``), each settled once; closes ``hosted``.
    Returns how many calls ``named`` had recorded by the first settle's end."""
    remote = open_transport(settings, "worker")
    try:
        producer = hosted.producer(hosted.reply_queue(new_id()))
        producer.submit([b"one", b"two"])
        consumer = remote.consumer("c1")
        (one,) = consumer.fetch(1, 10)
        got = consumer.settle_then_fetch([Settlement(one, producer.reply_to, b"r:one")], 1, wait)
        assert [d.body for d in got] == [b"two"]
        first = len(named)
        second = Settlement(got[0], producer.reply_to, b"r:two")
        assert consumer.settle_then_fetch([second], 1, wait) == []
        assert sorted(producer.results(2, 10)) == [b"r:one", b"r:two"]
        assert hosted.stats().in_flight == 0
        consumer.close()
        return first
    finally:
        remote.close()
        hosted.close()


@pytest.mark.parametrize("takes", [{"most"}, {"wait"}, set()], ids=["no-wait", "no-most", "none"])
def test_a_lone_settle_to_a_master_refusing_most_or_wait_settles_once_and_learns_both(
    takes: set[str],
) -> None:
    """A lone task's settle goes straight to its call, naming ``most`` and ``wait``: a
    master that takes either not (Python's own refusal, naming one at a time) is asked
    again without each it refused, its task settled once, and not asked of them again."""
    settings = fake_settings()
    hosted = open_transport(settings, "master")
    broker = hosted._broker  # type: ignore[attr-defined]
    assert isinstance(broker, QueueBroker)
    named: list[list[str]] = []

    def older(
        queue: str, consumer: str, items: list[WireSettlement], count: int, lease: float
    ) -> list[Wire]:
        return QueueBroker.settle_fetch(broker, queue, consumer, items, count, lease)

    def with_most(
        queue: str, consumer: str, items: list[WireSettlement], count: int, lease: float, most: Any
    ) -> list[Wire]:
        return QueueBroker.settle_fetch(broker, queue, consumer, items, count, lease, most)

    def with_wait(
        queue: str, consumer: str, items: list[WireSettlement], count: int, lease: float, wait: Any
    ) -> list[Wire]:
        return QueueBroker.settle_fetch(broker, queue, consumer, items, count, lease, wait=wait)

    served: dict[frozenset[str], Callable[..., list[Wire]]] = {
        frozenset(): older,
        frozenset({"most"}): with_most,
        frozenset({"wait"}): with_wait,
    }
    own = served[frozenset(takes)]

    def asked(*args: Any, **kwargs: Any) -> list[Wire]:
        named.append(sorted(kwargs))
        return own(*args, **kwargs)

    broker.settle_fetch = asked  # type: ignore[method-assign]
    first = _settled_one_by_one(settings, hosted, 0.5, named)
    assert named[0] == ["most", "wait"]
    assert named[first:] == [sorted(takes)]  # learnt: asked as it takes at once
