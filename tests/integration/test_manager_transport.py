"""Manager-only behaviour; the contract suite covers what every transport shares."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from distq.config import Settings
from distq.envelope import Task
from distq.errors import TransportError
from distq.transport import Settlement, Transport, open_transport
from launch import free_port
from procs import Distq
from seam import fetch_n, results_n

pytestmark = pytest.mark.integration


def _settings(queue: str) -> Settings:
    return Settings(
        transport="manager",
        authkey=secrets.token_hex(16).encode(),
        manager_address=("127.0.0.1", free_port()),
        queue=queue,
    )


def _no_delay(conn: Any) -> bool:
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


@contextlib.contextmanager
def _master_and_worker(queue: str) -> Iterator[tuple[Transport, Transport]]:
    """A master's transport hosting ``queue`` and a worker's connected to it, closed after."""
    settings = _settings(queue)
    hosted = open_transport(settings, "master")
    remote = open_transport(settings, "worker")
    try:
        yield hosted, remote
    finally:
        remote.close()
        hosted.close()


def test_worker_connections_send_large_batches_without_nagle_delay() -> None:
    # multiprocessing writes a message over 16 KiB in two send() calls; with Nagle on,
    # the second waits ~40 ms for a delayed ACK, so every connection must be no-delay
    with _master_and_worker("nodelay") as (hosted, remote):
        producer = hosted.producer("nodelay.results")
        bodies = [bytes([65 + i % 26]) * 1000 for i in range(64)]
        producer.submit(bodies)
        consumer = remote.consumer("c1")
        got = fetch_n(consumer, 64)
        consumer.settle([Settlement(d, reply_to=producer.reply_to, result=d.body) for d in got])
        assert sorted(results_n(producer, 64)) == sorted(bodies)
        assert _no_delay(consumer._broker._tls.connection)  # type: ignore[attr-defined]
        consumer.close()
        producer.close()


def test_settle_then_fetch_is_one_call_to_the_master() -> None:
    with _master_and_worker("settlefetch") as (hosted, remote):
        producer = hosted.producer("settlefetch.results")
        producer.submit([b"a", b"b", b"c", b"d"])
        consumer = remote.consumer("c1")
        first = fetch_n(consumer, 2)
        calls: list[str] = []
        proxy = consumer._broker  # type: ignore[attr-defined]
        call = proxy._callmethod

        def counted(name: str, args: tuple[Any, ...] = ()) -> Any:
            calls.append(name)
            return call(name, args)

        proxy._callmethod = counted
        done = [Settlement(d, reply_to=producer.reply_to, result=b"r" + d.body) for d in first]
        nxt = consumer.settle_then_fetch(done, 5)
        assert calls == ["settle_fetch"]
        assert [d.body for d in nxt] == [b"c", b"d"]
        assert sorted(results_n(producer, 2)) == [b"ra", b"rb"]
        consumer.close()
        producer.close()


def test_a_master_stopping_under_a_waiting_fetch_reads_as_closed() -> None:
    settings = _settings("stopping")
    hosted = open_transport(settings, "master")
    remote = open_transport(settings, "worker")
    consumer = remote.consumer("c1")
    try:
        assert consumer.fetch(5, 0.1) == []
        threading.Timer(0.2, hosted.close).start()
        with pytest.raises(TransportError, match="closed the connection"):
            for _ in range(10):  # the fetch waiting when the master stops, then the next
                consumer.fetch(5, 0.5)
    finally:
        remote.close()


def test_a_worker_reconnects_to_a_master_restarted_at_the_same_address() -> None:
    # the masters are processes: a master restarts as a new process on the same port
    settings = _settings("restarted")
    assert settings.authkey is not None
    host, port = settings.manager_address
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTQ_")}
    env.update(
        DISTQ_TRANSPORT="manager",
        DISTQ_AUTHKEY=settings.authkey.decode(),
        DISTQ_MANAGER_ADDRESS=f"{host}:{port}",
        DISTQ_QUEUE=settings.queue,
        PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"),
    )
    first = Distq(["master", "--tasks", "1", "--timeout", "60"], env)
    try:
        first.wait_for(r"^master .* transport")
        remote = open_transport(settings, "worker")
        try:
            consumer = remote.consumer("c1")
            assert len(fetch_n(consumer, 1)) == 1
            first.signal(signal.SIGKILL)
            first.wait(10)
            with pytest.raises(TransportError):
                for _ in range(10):
                    consumer.fetch(5, 0.2)
            consumer.close()  # what a worker slot does after an error, on the same thread
            second = Distq(["master", "--tasks", "1", "--timeout", "60"], env)
            try:
                second.wait_for(r"^master .* transport")
                again = remote.consumer("c1")  # the slot's next consumer, same thread
                (task,) = fetch_n(again, 1)
                assert Task.decode(task.body).reply_to.startswith(f"{settings.queue}.results.")
                again.close()
            finally:
                second.stop(grace=0)  # no need to let it wait for its task
        finally:
            remote.close()
    finally:
        first.stop()
