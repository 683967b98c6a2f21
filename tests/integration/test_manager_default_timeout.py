"""Manager connections in a process whose code set ``socket.setdefaulttimeout`` (a
task's HTTP client, a library at import, a program that embeds an Executor): each end
reads its connection's descriptor with ``os.read``, which must keep blocking."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from conftest import hosted_and_remote
from distq.envelope import new_id
from distq.transport import Settlement
from fake_master import fake_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def default_timeout() -> Iterator[None]:
    was = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10.0)
    try:
        yield
    finally:
        socket.setdefaulttimeout(was)


@pytest.mark.usefixtures("default_timeout")
def test_calls_that_wait_in_the_master_are_answered_under_a_default_socket_timeout() -> None:
    # a socket object made on a dup of a connection's descriptor (to set no-delay, its
    # timeouts, keepalive) set O_NONBLOCK on it under a default timeout, shared with the
    # connection: its next os.read found nothing yet and raised EAGAIN, read as "did not
    # answer within 30 s" (or the handshake's "no answer") at once
    settings = fake_settings()
    with hosted_and_remote(settings) as (_hosted, remote):
        producer = remote.producer(remote.reply_queue(new_id()))
        consumer = remote.consumer("c1")
        assert consumer.fetch(1, 0.5) == []  # waits in the master, then answers
        producer.submit([b"task"])
        (delivery,) = consumer.fetch(1, 10.0)
        consumer.settle([Settlement(delivery, reply_to=producer.reply_to, result=b"r")])
        assert producer.results(1, 10.0) == [b"r"]
        consumer.close()
