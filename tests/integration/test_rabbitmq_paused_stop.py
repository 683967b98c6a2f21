"""A second SIGTERM to a master or worker whose RabbitMQ stopped answering (SIGSTOP of a
node this test starts): the process ends at once, not after its connections' closes."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from conftest import Target
from distq.config import Settings
from launch import LocalRabbitMQ
from procs import Distq

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRabbitMQ]:
    server = LocalRabbitMQ(tmp_path_factory.mktemp("paused-rabbitmq"))
    with server:
        yield server.start()


def _env(node: LocalRabbitMQ) -> dict[str, str]:
    """A distq process's environment on ``node``, on a queue of its own."""
    settings = Settings(transport="rabbitmq", amqp_url=node.url, lease_seconds=30.0)
    target = Target(
        "rabbitmq", settings, {"DISTQ_TRANSPORT": "rabbitmq", "DISTQ_AMQP_URL": node.url}
    )
    return target.fresh().process_env(DISTQ_DRAIN_SECONDS="20")


def _stopped_twice(node: LocalRabbitMQ, proc: Distq, first: str) -> float:
    """``proc``'s seconds from its second SIGTERM to its exit, the node paused before the
    first (``first``: what it says to that)."""
    node.pause()
    try:
        proc.signal(signal.SIGTERM)
        proc.wait_for(first)
        hurried = time.monotonic()
        proc.signal(signal.SIGTERM)
        proc.wait_for(r"SIGTERM again")
        proc.wait(30)
        return time.monotonic() - hurried
    finally:
        node.resume()


def test_a_masters_second_sigterm_on_a_paused_rabbitmq_ends_it_at_once(
    node: LocalRabbitMQ,
) -> None:
    """The master waited in its producer's close: the delete of its reply queue, 3 s
    (CLOSE_SECONDS) on a node that does not answer."""
    master = Distq(["master", "--tasks", "2", "--timeout", "90"], _env(node))
    try:
        master.wait_for(r"^master .* transport")
        time.sleep(1.0)  # its tasks published, it waits for results
        took = _stopped_twice(node, master, r"SIGTERM: stopping the job")
        said = master.output()
    finally:
        master.stop(grace=0)
    assert took < 2.0, f"{took:.1f} s after the second SIGTERM:\n{said}"


def test_a_workers_second_sigterm_on_a_paused_rabbitmq_ends_it_at_once(
    node: LocalRabbitMQ,
) -> None:
    """The worker's cold stop closed its consumers, each waiting on the node, then its
    transport's admin link."""
    env = _env(node)
    master = Distq(["master", "--tasks", "1", "--task-delay", "60", "--timeout", "90"], env)
    worker = Distq(["worker", "--tasks", "jobs"], env)
    try:
        worker.wait_for(r"Get task \d+ from task_queue")
        took = _stopped_twice(node, worker, r"SIGTERM: finishing")
        said = worker.output()
    finally:
        worker.stop(grace=0)
        master.stop(grace=0)
    assert took < 2.0, f"{took:.1f} s after the second SIGTERM:\n{said}"
