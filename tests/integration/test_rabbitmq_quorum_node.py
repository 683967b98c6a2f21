"""RabbitMQ behaviour that needs a node of this module's own, set up with ``rabbitmqctl``:
delivery limits (a policy's ``delivery-limit``, RabbitMQ 4's default of 20 on every
quorum queue) and a vhost whose default queue type is quorum.

The node is a plain ``rabbitmq-server`` process (``tests/launch``) on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pytest

from distq.config import Settings
from distq.envelope import DeadLetter
from distq.transport import rabbitmq
from distq.transport.base import Settlement
from distq.transport.rabbitmq import RabbitMQTransport
from distq.transport.rabbitmq_holds import record_queue
from launch import LocalRabbitMQ
from seam import fetch_n

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

Open = Callable[..., RabbitMQTransport]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRabbitMQ]:
    with LocalRabbitMQ(tmp_path_factory.mktemp("rabbitmq")) as server:
        yield server.start(120)


@pytest.fixture
def queue() -> str:
    return f"q-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def raw(node: LocalRabbitMQ) -> Iterator[Any]:
    connection = node.connect()
    channel = connection.channel()
    channel.confirm_delivery()
    yield channel
    if connection.is_open:
        connection.close()


@pytest.fixture
def open_transport(node: LocalRabbitMQ, queue: str) -> Iterator[Open]:
    opened: list[RabbitMQTransport] = []

    def _open(url: str = node.url, **more: Any) -> RabbitMQTransport:
        settings = Settings(
            transport="rabbitmq", amqp_url=url, queue=queue, lease_seconds=1.0, **more
        )
        transport = RabbitMQTransport(settings, "worker")
        opened.append(transport)
        return transport

    yield _open
    for transport in opened:
        transport.close()
    with node.connect() as connection:
        channel = connection.channel()
        for name in (queue, f"{queue}.dead"):
            channel.queue_delete(name)


def _delivery_limit(node: LocalRabbitMQ, pattern: str, limit: int) -> None:
    """A policy giving the queues named by ``pattern`` a delivery limit of ``limit``. Set
    before a test opens its links: rabbitmqctl is an Erlang VM of its own (tens of seconds
    on a loaded host), and a master's link left idle that long misses its heartbeats (15
    s; the broker closes it after two): "Connection reset by peer" at its next submit."""
    definition = json.dumps({"delivery-limit": limit})
    name = f"limit-{uuid.uuid4().hex[:6]}"
    node.ctl("set_policy", name, pattern, definition, "--apply-to", "queues")


@contextlib.contextmanager
def _quorum_vhost(node: LocalRabbitMQ) -> Iterator[tuple[str, str]]:
    """A vhost of ``node`` whose default queue type is quorum, open to its user: its name
    and the node's URL on it; deleted after."""
    vhost = f"v-{uuid.uuid4().hex[:6]}"
    node.ctl("add_vhost", vhost, "--default-queue-type", "quorum")
    try:
        node.ctl("set_permissions", "-p", vhost, node.user, ".*", ".*", ".*")
        yield vhost, node.url.replace("/%2F", f"/{vhost}")
    finally:
        node.ctl("delete_vhost", vhost)


def _ready(raw: Any, name: str) -> int:
    return int(raw.queue_declare(name, passive=True).method.message_count)


def test_reply_and_record_queues_are_classic_where_the_vhost_defaults_to_quorum(
    node: LocalRabbitMQ, open_transport: Open, queue: str
) -> None:
    """The README's topology: a master's reply queue and a worker's lease-record queue
    are always classic (a quorum queue younger than about 3 minutes does not come back
    from a crash on 3.10). Declared with no type, a vhost whose default queue type is
    quorum made them quorum queues (rmq31)."""
    with _quorum_vhost(node) as (vhost, url):
        t = open_transport(url)
        producer = t.producer(t.reply_queue("p"))
        consumer = t.consumer("c")
        producer.submit([b"t1"])
        producer.flush()
        assert len(fetch_n(consumer, 1)) == 1
        consumer.heartbeat()  # sees it held
        time.sleep(1.3)  # held for a lease: the next heartbeat records it
        consumer.heartbeat()
        listed = node.ctl("list_queues", "-p", vhost, "name", "type", "--no-table-headers", "-q")
        types = dict(line.split("\t")[:2] for line in listed.splitlines() if "\t" in line)
        assert types[t.reply_queue("p")] == "classic"
        assert types[record_queue(queue, consumer.consumer_id)] == "classic"
        consumer.close()
        producer.close()


def test_a_task_handed_back_past_a_delivery_limit_is_not_dropped_unanswered(
    node: LocalRabbitMQ, open_transport: Open, raw: Any, queue: str
) -> None:
    """A task a quorum queue dead-letters at its delivery limit (a policy's; RabbitMQ
    4's default is 20) gets no error result: its master waits until its --timeout.
    Hand-backs count as deliveries there: three stopping workers, each handing the task
    back unrun, and a limit of 2 dropped it (rmq31)."""
    _delivery_limit(node, f"^{queue}$", 2)
    t = open_transport(rabbitmq_queue_type="quorum")
    producer = t.producer(t.reply_queue("p"))
    producer.submit([b"t1"])
    producer.flush()
    for hand_back in range(1, 5):
        consumer = t.consumer("c")
        got = fetch_n(consumer, 1, within=5.0)
        assert [d.body for d in got] == [b"t1"], f"hand-back {hand_back}"
        assert consumer.release(got) == 1
        consumer.close()
    consumer = t.consumer("c")
    again = fetch_n(consumer, 1, within=5.0)
    results = producer.results(1, 0.5)
    assert [d.body for d in again] == [b"t1"] or results, (
        f"dropped unanswered: {_ready(raw, f'{queue}.dead')} dead letter(s)"
    )
    consumer.close()
    producer.close()


def test_forget_orphans_leaves_alone_a_dead_letter_queue_the_vhost_made_quorum(
    node: LocalRabbitMQ, open_transport: Open, queue: str
) -> None:
    """A master removes its orphans from the dead letters with a look that takes each
    and puts the others back: each look counts as a delivery on a quorum queue, so it
    makes no look there (diff16). It went by DISTQ_RABBITMQ_QUEUE_TYPE only: where the
    vhost's default queue type is quorum the dead-letter queue is quorum all the same,
    and a delivery limit dropped a letter that was no orphan after a few looks (rmq31)."""
    with _quorum_vhost(node) as (vhost, url):
        definition = json.dumps({"delivery-limit": 2})
        node.ctl("set_policy", "-p", vhost, "limit", ".*", definition, "--apply-to", "queues")
        t = open_transport(url)  # classic, as the settings say: declares the queues
        dead = f"{queue}.dead"
        with pika.BlockingConnection(pika.URLParameters(url)) as connection:
            channel = connection.channel()
            channel.confirm_delivery()
            channel.basic_publish("", dead, DeadLetter(b"x", "why", queue, "w").encode())
            for _ in range(4):
                assert t.forget_orphans(t.reply_queue("gone")) == 0
            time.sleep(0.5)
            assert _ready(channel, dead) == 1


def test_peeking_at_quorum_dead_letters_past_a_delivery_limit_loses_none(
    node: LocalRabbitMQ, open_transport: Open, raw: Any, queue: str
) -> None:
    """``distq dead-letters`` takes the letters it shows and puts them back: each put-back
    counted as a delivery on a quorum dead-letter queue, and at a delivery limit (a
    policy's; RabbitMQ 4's default of 20 on every quorum queue) the broker dropped the
    letters (the dead-letter queue dead-letters nowhere): a few peeks, and every dead
    letter was gone (rmq31)."""
    t = open_transport(rabbitmq_queue_type="quorum")
    _delivery_limit(node, rf"^{queue}\.dead$", 2)
    dead = f"{queue}.dead"
    for i in range(3):
        raw.basic_publish("", dead, DeadLetter(f"t{i}".encode(), "why", queue, "w").encode())
    for look in range(1, 6):
        letters = t.dead_letters(10)
        assert sorted(letter.body for letter in letters) == [b"t0", b"t1", b"t2"], f"look {look}"
    time.sleep(0.5)
    assert _ready(raw, dead) == 3
    assert t.requeue_dead(None) == 3  # and they are still letters requeue-dead reads


def test_a_task_pushed_to_closing_consumers_past_a_delivery_limit_is_not_dropped(
    node: LocalRabbitMQ, open_transport: Open, raw: Any, queue: str
) -> None:
    """A consumer closing with deliveries the broker pushed and its slot had not taken
    (a prefetch window wider than the slot's batch, the worker stopping) left them to
    the connection's close: a requeue, a delivery counted on a quorum queue each time,
    and at a delivery limit the task was dead-lettered unrun, its master never answered
    (rmq31): a hand-back publishes them again, as a release does."""
    _delivery_limit(node, f"^{queue}$", 2)
    t = open_transport(rabbitmq_queue_type="quorum")
    producer = t.producer(t.reply_queue("p"))
    producer.submit([b"t1"])
    producer.flush()
    for _ in range(4):
        consumer = t.consumer("c")
        consumer._size_window(1)  # consuming, as a fetch starts to
        deadline = time.monotonic() + 5
        while consumer.held < 1 and time.monotonic() < deadline:
            consumer.answers(0.2)  # the push arrives meanwhile, and is buffered
        held = consumer.held
        consumer.close()
        if not held:  # dropped: said below
            break
    consumer = t.consumer("c")
    again = fetch_n(consumer, 1, within=5.0)
    assert [d.body for d in again] == [b"t1"], (
        f"dropped unanswered: {_ready(raw, f'{queue}.dead')} dead letter(s)"
    )
    consumer.close()
    producer.close()


def test_a_task_handed_back_to_a_quorum_queue_comes_back_flagged_redelivered(
    open_transport: Open,
) -> None:
    """The contract: a task handed back comes back flagged redelivered (README:
    distq_worker_redeliveries_total counts those a worker handed back; a redelivered
    task is one a worker checks against its slots' tasks after a lost link). On a quorum
    queue a hand-back publishes the task again, and it came back as new (rmq31)."""
    t = open_transport(rabbitmq_queue_type="quorum")
    producer = t.producer(t.reply_queue("p"))
    producer.submit([b"t1", b"t2"])
    producer.flush()
    consumer = t.consumer("c")
    got = fetch_n(consumer, 2)
    assert [(d.body, d.redelivered) for d in got] == [(b"t1", False), (b"t2", False)]
    assert consumer.release(got[:1]) == 1
    again = fetch_n(consumer, 1, within=5.0)
    assert [(d.body, d.redelivered) for d in again] == [(b"t1", True)]
    consumer.settle([Settlement(d, reply_to=producer.reply_to, result=b"r") for d in again])
    assert consumer.fetch(1, 0.3) == []  # t2 was not handed back: held still
    consumer.close()
    producer.close()


def test_a_consumer_closing_on_a_quorum_queue_is_pushed_nothing_more(
    open_transport: Open, raw: Any, queue: str
) -> None:
    """A consumer closing on a quorum queue publishes what it holds again and acks it:
    still consuming, its window freed, the broker pushed it a task it never had, which
    the close requeued, a delivery counted for a task no worker took (rmq31)."""
    t = open_transport(rabbitmq_queue_type="quorum")
    producer = t.producer(t.reply_queue("p"))
    producer.submit([b"1", b"2", b"3"])
    producer.flush()
    leaving = t.consumer("leaves")
    assert len(fetch_n(leaving, 2)) == 2
    leaving.close()
    time.sleep(0.3)
    counts = {}
    for _ in range(3):
        method, props, body = raw.basic_get(queue, auto_ack=True)
        assert method is not None
        counts[body] = (props.headers or {}).get("x-delivery-count", 0)
    assert counts[b"3"] == 0, counts
    producer.close()


def test_a_peek_at_quorum_dead_letters_leaves_their_ttl_as_it_was(
    open_transport: Open, raw: Any, queue: str
) -> None:
    """Letters with a per-message TTL (put there by another tool): a peek at a quorum
    dead-letter queue that put them back as copies started each one's TTL afresh, and
    letters due to expire stayed (rmq31)."""
    t = open_transport(rabbitmq_queue_type="quorum")
    dead = f"{queue}.dead"
    expiring = pika.BasicProperties(expiration="2000")
    for i in range(3):
        raw.basic_publish("", dead, f"letter-{i}".encode(), expiring)
    time.sleep(1.2)
    assert len(t.dead_letters(10)) == 3
    time.sleep(1.3)  # 2.5 s after they came: expired
    assert t.dead_letters(10) == []
    assert _ready(raw, dead) == 0


def test_prefetch_resizes_on_a_quorum_queue_drop_no_task_at_a_delivery_limit(
    node: LocalRabbitMQ, open_transport: Open, raw: Any, queue: str
) -> None:
    """A consumer widened its prefetch window (cancel, ``basic_qos``, consume) when the
    batch asked for grew, as a worker's does from 1 to DISTQ_PREFETCH. What the broker
    had sent on its way when the cancel came went back to the queue (RabbitMQ returned
    it, or pika rejected it): a delivery counted on a quorum queue for a task no slot
    took, and at a delivery limit the task was dead-lettered unrun (rmq32)."""
    _delivery_limit(node, f"^{queue}$", 0)  # dead-lettered at its first requeue
    t = open_transport(rabbitmq_queue_type="quorum")
    producer = t.producer(t.reply_queue("p"))
    done: list[bytes] = []
    for batch in range(5):
        consumer = t.consumer("c")
        producer.submit([f"{batch}-{i}".encode() for i in range(3)])
        producer.flush()
        first = fetch_n(consumer, 1)  # a window of 1
        assert consumer.release(first) == 1  # acked: the broker sends the next one
        got = fetch_n(consumer, 3, within=3.0)  # a window of 3
        consumer.settle([Settlement(d, reply_to=producer.reply_to, result=b"r") for d in got])
        done += [d.body for d in got]
        consumer.close()
    time.sleep(0.5)
    assert (len(done), _ready(raw, f"{queue}.dead")) == (15, 0)
    producer.close()


def test_a_task_handed_back_where_the_vhost_defaults_to_quorum_is_not_dropped(
    node: LocalRabbitMQ, open_transport: Open, raw: Any, queue: str
) -> None:
    """Where the vhost's default queue type is quorum, the task queue is a quorum queue
    whatever DISTQ_RABBITMQ_QUEUE_TYPE says. A consumer took it for one only once a
    delivery carried ``x-delivery-count`` (RabbitMQ 3.10: from a message's first
    redelivery): until then its hand-backs requeued (nack), each counted as a delivery,
    and at a delivery limit the task was dead-lettered unrun (rmq32)."""
    with _quorum_vhost(node) as (vhost, url):
        definition = json.dumps({"delivery-limit": 0})  # dead-lettered at its first requeue
        node.ctl("set_policy", "-p", vhost, "limit", f"^{queue}$", definition)
        t = open_transport(url)  # classic, it says
        producer = t.producer(t.reply_queue("p"))
        producer.submit([b"t1"])
        producer.flush()
        consumer = t.consumer("c")
        got = fetch_n(consumer, 1)
        assert consumer.release(got) == 1
        again = fetch_n(consumer, 1, within=3.0)
        assert [(d.body, d.redelivered) for d in again] == [(b"t1", True)]
        consumer.settle([Settlement(d, reply_to=producer.reply_to, result=b"r") for d in again])
        consumer.close()
        producer.close()


def test_heartbeats_on_a_quorum_queue_drop_no_task_at_a_delivery_limit(
    node: LocalRabbitMQ, open_transport: Open, raw: Any, queue: str
) -> None:
    """A slot's heartbeat stops its consumer (the broker pushes nothing more to a busy
    slot) with ``basic_cancel``, and pika rejected (requeued) each delivery that arrived
    until the broker's Cancel-ok: a delivery counted on a quorum queue for a task no slot
    took, and at a delivery limit the task was dead-lettered unrun (3 to 8 of 80 here, rmq32).
    Such deliveries are taken in now, and handed back as the buffered ones are."""
    _delivery_limit(node, f"^{queue}$", 0)  # dead-lettered at its first requeue
    t = open_transport(rabbitmq_queue_type="quorum")
    producer = t.producer(t.reply_queue("p"))
    consumer = t.consumer("c")
    producer.submit([b"long"])
    producer.flush()
    assert len(fetch_n(consumer, 1)) == 1  # the slot's long task, held throughout
    done = 0
    for i in range(80):
        consumer.fetch(4, 0.0)  # consuming, a window of 4
        producer.submit([f"t{i}".encode()])
        producer.flush()
        consumer.heartbeat()  # the slot is busy: the consumer stops
        got = fetch_n(consumer, 1, within=1.0)
        consumer.settle([Settlement(d, reply_to=producer.reply_to, result=b"r") for d in got])
        done += len(got)
    time.sleep(0.5)
    assert (done, _ready(raw, f"{queue}.dead")) == (80, 0)
    consumer.close()
    producer.close()


def test_consumers_closing_on_a_quorum_queue_drop_no_task_at_a_delivery_limit(
    node: LocalRabbitMQ, open_transport: Open, raw: Any, queue: str
) -> None:
    """A stopping worker's close stops its consumer on a quorum queue as a heartbeat
    does. Without the heartbeat's wait for the window to fill, a task published just
    before it, its delivery still on its way when the cancel came, went back counted,
    and at a delivery limit it was dead-lettered unrun; without the cancel, the close's
    requeue counted each task pushed to it (rmq31). Each close here comes as a task is
    pushed to the closing consumer; the next consumer must get it."""
    _delivery_limit(node, f"^{queue}$", 0)  # dead-lettered at its first requeue
    t = open_transport(rabbitmq_queue_type="quorum")
    producer = t.producer(t.reply_queue("p"))
    done = 0
    for i in range(40):
        closing = t.consumer("closing")  # the queue's only consumer
        assert closing.fetch(4, 0.0) == []  # consuming, a window of 4, the queue empty
        producer.submit([f"t{i}".encode()])
        producer.flush()
        closing.close()  # the stopping worker's, as the task is pushed to it
        taker = t.consumer("taker")
        got = fetch_n(taker, 1, within=2.0)
        taker.settle([Settlement(d, reply_to=producer.reply_to, result=b"r") for d in got])
        taker.close()
        done += len(got)
    time.sleep(0.5)
    assert (done, _ready(raw, f"{queue}.dead")) == (40, 0)
    producer.close()


def test_a_prefetch_resize_on_an_empty_quorum_queue_does_not_wait_for_a_full_window(
    open_transport: Open, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the cancel of a resize a consumer on a quorum queue waits for its window
    to fill (what the broker pushes as the cancel goes through, RabbitMQ returns, and
    counts), up to ``_FILL_SECONDS``: on an empty queue, where nothing was on its way,
    each resize added that whole wait, 0.1 s, to its fetch. The wait is set to 20 s
    here: the fetch took 20 s."""
    monkeypatch.setattr(rabbitmq, "_FILL_SECONDS", 20.0)
    t = open_transport(rabbitmq_queue_type="quorum")
    producer = t.producer(t.reply_queue("p"))
    producer.submit([b"one"])  # a message of one task
    producer.flush()
    consumer = t.consumer("c")
    got = fetch_n(consumer, 1)
    consumer.settle([Settlement(d, reply_to=producer.reply_to, result=b"r") for d in got])
    assert consumer.fetch(1, 0.0) == []  # consuming, a window of 1, the queue empty
    started = time.monotonic()
    # a window of 3 (the estimate of a message's tasks came down from a pack's 32 to 24
    # with this one single): cancel, basic_qos, consume
    assert consumer.fetch(64, 0.0) == []
    assert time.monotonic() - started < 10.0
    assert consumer._window.size >= 2  # it did resize
    consumer.close()
    producer.close()
