"""A quorum queue's delivery limit against lost connections (RabbitMQ before 4.3, which
counts every return): a message comes back counted once for each consumer connection
that held it as it went down, and a message one of them returns can be pushed at once to
another going down in the same cut, before the broker has seen that one go. So a worker
crash or a network cut counts a task up to once per slot connection lost with it; the
README asks for a delivery limit above that, and a worker warns at start when its
queue's limit (read from the management API) is not above its ``--concurrency``.

The node is a plain ``rabbitmq-server`` process with ``rabbitmq_management``
(``tests/launch``) on 127.0.0.1, of this module's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from distq.config import Settings
from distq.transport.rabbitmq import RabbitMQTransport
from faults.proxy import Partition
from launch import LocalRabbitMQ
from procs import Distq

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SRC = Path(__file__).resolve().parents[2] / "src"
CONNECTIONS = 4  # cut at once: a message can be counted once by each


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRabbitMQ]:
    with LocalRabbitMQ(
        tmp_path_factory.mktemp("rabbitmq"), plugins=["rabbitmq_management"]
    ) as server:
        yield server.start(120)


@contextlib.contextmanager
def _limited(node: LocalRabbitMQ, queue: str, limit: int) -> Iterator[None]:
    """A policy's ``delivery-limit`` of ``limit`` on ``queue`` while the block runs."""
    policy = f"limit-{queue}"
    node.ctl(
        "set_policy",
        policy,
        f"^{queue}$",
        json.dumps({"delivery-limit": limit}),
        "--apply-to",
        "queues",
    )
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            node.ctl("clear_policy", policy)


def _count(channel: Any, queue: str) -> int:
    return int(channel.queue_declare(queue, passive=True).method.message_count)


def test_a_cut_counts_a_message_at_most_once_per_connection_lost_with_it(
    node: LocalRabbitMQ,
) -> None:
    """Four consumer connections cut at once, each message delivered once, to one of
    them; two have room for more (as a worker's idle slots do). At a delivery limit of
    4 (the connections cut) no message is dead-lettered, and none comes back counted
    more than 4 times. A limit of 1 dead-lettered 1 to 4 of the 4 in each of 6 runs:
    the messages the first connection seen gone returned went to the others, still
    taken for alive, and came back counted again with them."""
    queue = f"l-{uuid.uuid4().hex[:10]}"
    with _limited(node, queue, CONNECTIONS), node.connect() as admin:
        channel = admin.channel()
        channel.queue_declare(f"{queue}.dead", durable=True, arguments={"x-queue-type": "quorum"})
        channel.queue_declare(
            queue,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": f"{queue}.dead",
            },
        )
        port = int(node.url.rpartition(":")[2].split("/")[0])
        got: list[bytes] = []
        for _ in range(3):  # a cut, the messages back, again
            got.clear()
            for i in range(CONNECTIONS):
                channel.basic_publish("", queue, f"m{i}".encode())
            with Partition(port) as partition:
                url = partition.through(node.url)
                connections = [
                    pika.BlockingConnection(pika.URLParameters(url)) for _ in range(CONNECTIONS)
                ]
                for i, connection in enumerate(connections):
                    consumer = connection.channel()
                    consumer.basic_qos(prefetch_count=1 if i < 2 else 3)
                    consumer.basic_consume(queue, lambda _c, _m, _p, body: got.append(body))
                deadline = time.monotonic() + 10
                while len(got) < CONNECTIONS and time.monotonic() < deadline:
                    for connection in connections:
                        connection.process_data_events(time_limit=0.02)
                assert sorted(got) == [f"m{i}".encode() for i in range(CONNECTIONS)], got
                partition.reset()  # the cut, the proxy still running: its own close is not it
                deadline = time.monotonic() + 10
                while _count(channel, queue) + _count(channel, f"{queue}.dead") < CONNECTIONS:
                    assert time.monotonic() < deadline, "the cut's messages did not come back"
                    time.sleep(0.05)
                for connection in connections:  # each consumer's end saw it too
                    with pytest.raises(pika.exceptions.AMQPConnectionError):
                        connection.process_data_events(time_limit=1)
            assert _count(channel, f"{queue}.dead") == 0
            counts = []
            for _ in range(CONNECTIONS):
                method, props, _body = channel.basic_get(queue, auto_ack=True)
                assert method is not None
                counts.append(int((props.headers or {}).get("x-delivery-count", 0)))
            assert min(counts) >= 1 and max(counts) <= CONNECTIONS, counts


def _worker(node: LocalRabbitMQ, queue: str, concurrency: int) -> str:
    """What a quorum queue's worker of ``concurrency`` slots says as it starts."""
    env = {
        **os.environ,
        "PYTHONPATH": str(SRC),
        "DISTQ_TRANSPORT": "rabbitmq",
        "DISTQ_AMQP_URL": node.url,
        "DISTQ_QUEUE": queue,
        "DISTQ_RABBITMQ_QUEUE_TYPE": "quorum",
        "DISTQ_RABBITMQ_MANAGEMENT_URL": str(node.management_url),
    }
    worker = Distq(["worker", "--concurrency", str(concurrency)], env)
    try:
        worker.wait_for(r"Connect to rabbitmq", timeout=60)  # said after the limit's check
        return worker.output()
    finally:
        worker.stop(5.0)


@pytest.mark.parametrize("limit", [1, 3])
def test_a_worker_warns_of_a_delivery_limit_its_own_crash_can_reach(
    node: LocalRabbitMQ, limit: int
) -> None:
    queue = f"w-{uuid.uuid4().hex[:10]}"
    with _limited(node, queue, limit):
        said = _worker(node, queue, concurrency=3)
    assert (
        f"warning: RabbitMQ quorum queue {queue!r} has a delivery-limit of {limit}, and this "
        "worker 3 slots (--concurrency 3)"
    ) in said, said
    assert "--concurrency 3" in said and "at least 4" in said, said


def test_a_worker_says_nothing_of_a_delivery_limit_above_its_slots(node: LocalRabbitMQ) -> None:
    queue = f"w-{uuid.uuid4().hex[:10]}"
    with _limited(node, queue, 4):
        said = _worker(node, queue, concurrency=3)
    assert "delivery-limit" not in said, said


def test_a_worker_of_more_slots_than_rabbitmq_4s_default_says_nothing_on_3_x(
    node: LocalRabbitMQ,
) -> None:
    """No policy sets a limit: RabbitMQ 4.x would apply 20 (see the unit test of the
    decision), 3.x applies none, and the worker reads the version the broker says."""
    queue = f"w-{uuid.uuid4().hex[:10]}"
    settings = Settings(transport="rabbitmq", amqp_url=node.url, queue=queue)
    transport = RabbitMQTransport(settings, "client")
    try:
        version = transport.broker_version
    finally:
        transport.close()
    assert version is not None and version.startswith("3."), version
    said = _worker(node, queue, concurrency=25)
    assert "delivery-limit" not in said, said
