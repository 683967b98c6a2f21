"""A split's regrouped packs against a broker whose ``max_message_size`` is low.

The node is a plain ``rabbitmq-server`` process (``tests/launch``) of this module's own,
its ``max_message_size`` set in its ``rabbitmq.conf``.
"""

from __future__ import annotations

import io
import time
import uuid
from collections.abc import Iterator

import pika
import pytest

from distq.codec import Codec
from distq.config import Settings
from distq.console import Console
from distq.envelope import Task
from distq.errors import MessageRefused
from distq.framing import pack
from distq.tasks import Registry
from distq.transport.rabbitmq import RabbitMQTransport
from distq.transport.rabbitmq_packs import TASKS_TYPE
from distq.worker import Worker, WorkerOptions
from launch import LocalRabbitMQ
from seam import fetch_n

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

BROKER_MAX = 65_536  # the node's max_message_size


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRabbitMQ]:
    with LocalRabbitMQ(
        tmp_path_factory.mktemp("rabbitmq"), extra_config=[f"max_message_size = {BROKER_MAX}"]
    ) as server:
        yield server.start(120)


def test_a_split_over_the_brokers_limit_loses_no_task_and_names_both_limits(
    node: LocalRabbitMQ,
) -> None:
    """Regrouped, a split's packs reach DISTQ_MAX_MESSAGE_BYTES (1 MiB by default),
    which the README says to keep at most the broker's max_message_size: here it is
    not. A slot taking 3 tasks at a time, holding packs of 2 tasks of 30 KB each (60 KB:
    within the broker's 64 KiB), sends them back 3 to a message, 90 KB: RabbitMQ closes
    the channel (406). Its tasks go back with it, none lost, the next split is held to
    the broker's limit, and the error named only the broker's limit, not the setting
    above it that let the pack grow so large."""
    queue = f"t-{uuid.uuid4().hex[:10]}"
    settings = Settings(transport="rabbitmq", amqp_url=node.url, queue=queue, prefetch=128)
    t = RabbitMQTransport(settings, "worker")
    connection = pika.BlockingConnection(pika.URLParameters(node.url))
    try:
        slow = t.consumer("slow")
        assert slow.fetch(128, 0.2) == []  # a window of 4 messages, packs taken whole
        raw = connection.channel()
        raw.confirm_delivery()
        typed = pika.BasicProperties(type=TASKS_TYPE)
        small = [f"a-{i}".encode() for i in range(6)]
        large = [b"L%d-" % i + b"x" * 30_000 for i in range(4)]
        packed = [f"p-{i}".encode() for i in range(32)]
        for tasks in (small, large[:2], large[2:], packed):
            raw.basic_publish("", queue, pack(tasks), properties=typed)
        deadline = time.monotonic() + 5
        while len(slow._buffer) < 6 + 4 + 32 and time.monotonic() < deadline:
            slow._link.connection.process_data_events(time_limit=0.05)  # read by the slot
        assert [d.body for d in fetch_n(slow, 3)] == small[:3]
        with pytest.raises(MessageRefused) as refused:
            fetch_n(slow, 3)  # two short fetches in a row: a split, 3 to a message
        said = str(refused.value)
        assert "a message of 90,021 bytes, over its max_message_size of 65,536" in said
        assert "DISTQ_MAX_MESSAGE_BYTES is 1,048,576 here" in said, said
        assert "set DISTQ_MAX_MESSAGE_BYTES to at most 65,536 on every process" in said
        assert t.pack_bytes == BROKER_MAX  # the next split is held to it
        slow.close()  # as the worker drops it: its tasks went back with the channel
        back = fetch_n(t.consumer("other"), 6 + 4 + 32, within=10)
        assert sorted(d.body for d in back) == sorted(small + large + packed)
    finally:
        connection.close()
        t.close()


def test_a_worker_refused_a_result_names_its_own_limit_beside_the_brokers(
    node: LocalRabbitMQ,
) -> None:
    """A result of 100,000 bytes, within DISTQ_MAX_MESSAGE_BYTES (1 MiB) and over the
    broker's 64 KiB: the worker's line said only the broker's limit and "set
    DISTQ_MAX_MESSAGE_BYTES to at most 65,536", not that it was 1,048,576 here, as the
    transport's own refusal does."""
    queue = f"t-{uuid.uuid4().hex[:10]}"
    settings = Settings(transport="rabbitmq", amqp_url=node.url, queue=queue)
    t = RabbitMQTransport(settings, "worker")
    producer = t.producer(t.reply_queue("large"))
    try:
        registry = Registry()
        registry.register("large", lambda: "x" * 100_000)
        producer.submit([Task(name="large", args=[], reply_to=producer.reply_to).encode()])
        out = io.StringIO()
        options = WorkerOptions(worker_id="w", heartbeat_interval=0.3, exit_when_idle=2.0)
        codec = Codec.from_settings(settings)
        Worker(t, registry, options, Console(out=out, err=out), codec=codec).run()
        said = out.getvalue()  # the line of its own, beside the transport's refusal
        held = [line for line in said.splitlines() if "the broker takes no message" in line]
        assert len(held) == 1, said
        assert "over 65,536 bytes (its max_message_size)" in held[0]
        assert "DISTQ_MAX_MESSAGE_BYTES is 1,048,576 here" in held[0], held
        assert "set DISTQ_MAX_MESSAGE_BYTES to at most 65,536 on every process" in held[0]
    finally:
        producer.close()
        t.close()
