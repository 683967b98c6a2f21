"""The RabbitMQ transport's pure logic: result packing and the prefetch window policy."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pika.exceptions
import pytest

from distq.config import Settings
from distq.errors import ConfigError
from distq.framing import pack, unpack
from distq.transport import Settlement, rabbitmq_dead, rabbitmq_link
from distq.transport.base import Delivery
from distq.transport.rabbitmq import (
    LETTER_REFUSED_DELAY,
    PrefetchWindow,
    RabbitMQConsumer,
    RabbitMQTransport,
)
from distq.transport.rabbitmq_copies import BodySet
from distq.transport.rabbitmq_link import Broker


def test_packed_results_come_back_byte_for_byte() -> None:
    bodies = [b"", b"a", b'{"v":1}', bytes(range(256)) * 300]
    assert unpack(pack(bodies)) == bodies
    assert unpack(b"") == []


def test_a_truncated_pack_is_refused() -> None:
    with pytest.raises(ValueError, match="truncated"):
        unpack(pack([b"abc", b"def"])[:-1])


def test_the_first_fetch_starts_a_consumer_of_its_size() -> None:
    assert PrefetchWindow(64).resize(5, supply=0) == 5


def test_a_window_that_must_grow_at_least_doubles_up_to_the_prefetch() -> None:
    window = PrefetchWindow(64)
    sizes = [window.resize(want, supply=window.size) for want in range(1, 41)]
    assert [s for s in sizes if s is not None] == [1, 2, 4, 8, 16, 32, 64]
    assert window.resize(50, supply=64) is None
    assert PrefetchWindow(64).resize(100, supply=0) == 64  # never past DISTQ_PREFETCH
    jump = PrefetchWindow(64)
    jump.resize(2, supply=0)
    assert jump.resize(30, supply=2) == 30  # a big jump takes what is asked


def test_a_noisy_small_batch_keeps_the_window() -> None:
    window = PrefetchWindow(64)
    window.resize(64, supply=0)
    for want in (8, 64, 8, 8, 8, 64, 2, 8, 64):
        assert window.resize(want, supply=64) is None
    assert window.size == 64


def test_a_window_shrinks_to_the_batch_after_four_small_fetches_in_a_row() -> None:
    window = PrefetchWindow(64)
    window.resize(64, supply=0)
    assert [window.resize(8, supply=64) for _ in range(3)] == [None, None, None]
    assert window.resize(8, supply=64) == 8
    assert window.resize(8, supply=8) is None  # the count starts again
    assert window.resize(2, supply=8) is None  # 2 is a quarter of 8, but only once


def test_a_consumer_that_cannot_supply_the_batch_restarts_at_its_size() -> None:
    window = PrefetchWindow(64)
    window.resize(32, supply=0)
    assert window.resize(20, supply=10) == 20  # the caller still holds 22 of 32
    assert window.resize(20, supply=0) == 20  # no consumer (cancelled by the broker)


@pytest.mark.parametrize(
    ("path", "where"), [("/%2F", "127.0.0.1:5672"), ("/other", "127.0.0.1:5672 (vhost 'other')")]
)
def test_start_lines_name_a_vhost_other_than_the_default(path: str, where: str) -> None:
    """Master and workers on different vhosts waited in silence, and their start lines
    read alike (drift10)."""
    broker = Broker.from_url(f"amqp://u:p@127.0.0.1:5672{path}")
    for role, shown in (
        ("master", f"rabbitmq transport at {where}"),
        ("worker", f"rabbitmq at {where}"),
    ):
        assert RabbitMQTransport.describe(SimpleNamespace(_broker=broker, role=role)) == shown  # type: ignore[arg-type]


class _Refusing:
    """A connection whose channels refuse every declare with ``code``."""

    def __init__(self, code: int) -> None:
        self.code, self.deleted = code, list[str]()

    def channel(self) -> _Refusing:
        return self

    def queue_declare(self, queue: str, **_: object) -> None:
        raise pika.exceptions.ChannelClosedByBroker(self.code, "ACCESS_REFUSED - not allowed")

    is_open = False

    def queue_delete(self, queue: str) -> None:
        self.deleted.append(queue)


def test_a_user_who_may_not_declare_the_reader_queue_reads_the_dead_letters_without_it() -> None:
    """`<queue>.dead:reader` needs a configure permission on that name: a user allowed only
    distq's own queues got ACCESS_REFUSED, exit 3, where it read and requeued before
    (diff15a). It reads as before, unguarded; other refusals are raised."""
    connection = _Refusing(403)
    with rabbitmq_dead._reading(connection, "q.dead"):
        ran = True
    assert ran and connection.deleted == []
    with (
        pytest.raises(pika.exceptions.ChannelClosedByBroker),
        rabbitmq_dead._reading(_Refusing(406), "q.dead"),
    ):
        pass


@pytest.mark.parametrize("queue", ["distq", "jobs.v2", "a-b_c"])
def test_the_reader_queue_is_named_as_no_task_queue_can_be(queue: str) -> None:
    """``<queue>.dead.reader`` is a valid task queue's name: a job on it blocked the
    dead-letters and requeue-dead of ``<queue>`` for 30 s, then exit 3 "another distq
    ... has been reading" (regress11)."""
    lock = []

    class Recording(_Refusing):
        def queue_declare(self, queue: str, **_: object) -> None:
            lock.append(queue)

    with rabbitmq_dead._reading(Recording(0), f"{queue}.dead"):
        pass
    with pytest.raises(ConfigError, match=r"DISTQ_QUEUE is .*; use 1-100 letters"):
        Settings.load({"DISTQ_QUEUE": lock[0]})


def test_done_copies_are_taken_once_each_and_only_the_newest_are_kept() -> None:
    """The bodies of tasks done on a lost link: a copy met is acked unrun once (a second
    copy runs: it was submitted again); copies another worker took are never met, so
    only the newest ``keep`` are remembered."""
    copies = BodySet(keep=2)
    assert not copies
    copies.add([b"a", b"b"])
    assert copies.take(b"a") and not copies.take(b"a")
    copies.add([b"c", b"d"])  # b is the oldest: forgotten
    assert not copies.take(b"b") and copies.take(b"c") and copies.take(b"d")
    assert not copies


@pytest.mark.parametrize(
    ("refused", "said"),
    [
        (1, "refused 1 dead letter (full? "),
        (1, "; its task goes back to 'q' after 30 s, to run again, until it takes the letter"),
        (2, "refused 2 dead letters (full? "),
        (2, "; their tasks go back to 'q' after 30 s, to run again, until it takes them"),
    ],
)
def test_a_full_dead_letter_queue_is_said_in_the_number_it_refused(
    refused: int, said: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One refused letter was said as "refused 1 dead letter (...); the tasks go back ...
    until it takes them"."""
    sent: list[tuple[float, list[bytes]]] = []
    consumer = SimpleNamespace(
        bounced={},
        _said_letters_refused=False,
        _broker=SimpleNamespace(address="127.0.0.1:5672"),
        _transport=SimpleNamespace(dead_queue="q.dead", queue="q"),
        _link=None,
        _retries=SimpleNamespace(
            publish=lambda link, delay, bodies: sent.append((delay, [*bodies]))
        ),
    )
    settlements = [Settlement(Delivery(b"t%d" % i, i)) for i in range(refused)]
    with caplog.at_level(logging.WARNING, logger="distq.transport.rabbitmq"):
        RabbitMQConsumer._letters_refused(consumer, settlements)  # type: ignore[arg-type]
    assert sent == [(LETTER_REFUSED_DELAY, [b"t%d" % i for i in range(refused)])]
    (line,) = [r.getMessage() for r in caplog.records]
    assert said in line, line


@pytest.mark.parametrize(
    ("count", "said"),
    [
        (1, "RabbitMQ at h refused 1 task handed back to queue 'q' ("),
        (1, "); this worker keeps it and runs it itself"),
        (1_000, "RabbitMQ at h refused 1,000 tasks handed back to queue 'q' ("),
        (1_000, "); this worker keeps them and runs them itself"),
    ],
)
def test_tasks_refused_as_a_worker_hands_them_back_are_said_in_their_number(
    count: int, said: str, caplog: pytest.LogCaptureFixture
) -> None:
    """It said "refused 1 task(s) handed back ...; this worker keeps them"."""
    with caplog.at_level(logging.WARNING, logger="distq.transport.rabbitmq_link"):
        rabbitmq_link._Refusals().refused("RabbitMQ at h", "q", count)
    (line,) = [r.getMessage() for r in caplog.records]
    assert said in line, line
