"""The manager transport's messages are bounded in size: a peer that knows DISTQ_AUTHKEY
(or answers in the master's place) and sends a length of its choosing is refused before
that much is allocated, in one line naming the size, the limit and the setting, and its
connection closed; batches of legitimate large tasks still cross."""

from __future__ import annotations

import os
import signal
import socket
import struct
import time
from dataclasses import replace
from multiprocessing import connection

import pytest

from distq.config import Settings
from distq.errors import TransportError
from distq.transport import Settlement, open_transport
from fake_master import fake_master, fake_settings, manager_env
from launch import free_port
from procs import Distq
from seam import fetch_n, results_n

pytestmark = pytest.mark.integration

#: a length no process can hold: 1 TiB, in the 8-byte form the stdlib reads after -1
HUGE = 1 << 40
HUGE_FRAME = struct.pack("!i", -1) + struct.pack("!Q", HUGE)


@pytest.mark.parametrize("most", [1 << 20, 128 << 20], ids=["1 MiB", "128 MiB"])
def test_a_reply_over_the_limit_is_refused_before_it_is_read(most: int) -> None:
    # multiprocessing's Connection read the length and then asked for that much memory
    # (a MemoryError out of the worker's slot), or waited for a gigabyte to arrive
    message = _fetch_refused(fake_settings("mgrsize33", max_message_bytes=most), HUGE_FRAME)
    assert f"{HUGE:,} bytes" in message, message
    assert f"over the limit of {2 * most + (64 << 20):,}" in message, message
    assert f"DISTQ_MAX_MESSAGE_BYTES, {most:,}" in message, message


def _fetch_refused(settings: Settings, reply: bytes, framed: bool = False) -> str:
    """What a worker's fetch raises when a master answers it ``reply`` (raw bytes on the
    wire unless ``framed``): a TransportError, its text returned."""
    with fake_master(settings, "fetch", reply, framed=framed):
        remote = open_transport(settings, "worker")
        try:
            consumer = remote.consumer("c1")
            with pytest.raises(TransportError) as caught:
                consumer.fetch(5, 0.1)
            consumer.close()
            return str(caught.value)
        finally:
            remote.close()


@pytest.mark.timeout(120)
def test_a_worker_that_refuses_a_reply_for_its_size_says_so_and_goes_on() -> None:
    settings = fake_settings("mgrsize33")
    env = manager_env(settings)
    with fake_master(settings, "fetch", HUGE_FRAME, framed=False):
        worker = Distq(["worker", "--concurrency", "2"], env)
        try:
            worker.wait_for(rf"{HUGE:,} bytes, over the limit of .*; reconnecting$")
            time.sleep(1)  # a few more refusals: reconnecting, not crashing
            worker.signal(signal.SIGTERM)
            assert worker.wait(60) == 0, worker.output()
            out = worker.output()
            assert "Traceback" not in out and "MemoryError" not in out, out
        finally:
            worker.stop()


def _settings(most: int = 1 << 20) -> Settings:
    return Settings(
        authkey=b"k" * 32, manager_address=("127.0.0.1", free_port()), max_message_bytes=most
    )


@pytest.mark.parametrize("first", [True, False], ids=["first request", "a later one"])
def test_a_request_over_the_limit_is_refused_logged_and_its_connection_closed(
    caplog: pytest.LogCaptureFixture, first: bool
) -> None:
    settings = _settings(2 << 20)
    assert settings.authkey is not None
    hosted = open_transport(settings, "master")
    try:
        conn = connection.Client(settings.manager_address, authkey=settings.authkey)
        with conn:
            if not first:  # as a proxy's connection starts: then served call after call
                conn.send((None, "accept_connection", ("distq-test",), {}))
                assert conn.recv() == ("#RETURN", None)
            with socket.socket(fileno=os.dup(conn.fileno())) as sock:
                sock.sendall(HUGE_FRAME)
                sock.settimeout(30)
                assert sock.recv(1) == b"", "the master kept the connection open"
        deadline = time.monotonic() + 30
        while f"{HUGE:,} bytes" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.05)
        [line] = [r.getMessage() for r in caplog.records if f"{HUGE:,} bytes" in r.getMessage()]
        assert f"over the limit of {2 * (2 << 20) + (64 << 20):,}" in line, line
        assert "DISTQ_MAX_MESSAGE_BYTES, 2,097,152" in line and "127.0.0.1:" in line, line
        worker = open_transport(replace(settings, queue=settings.queue), "worker")
        try:
            assert worker.stats().ready == 0  # the master serves the others still
        finally:
            worker.close()
    finally:
        hosted.close()


@pytest.mark.timeout(120)
def test_a_batch_of_large_tasks_and_results_crosses_within_the_limit() -> None:
    # 70 tasks of 1 MiB (DISTQ_MAX_MESSAGE_BYTES' default) are one put, one fetch and one
    # read of results over a message's limit: each goes as several messages
    settings = _settings()
    bodies = [bytes([i]) * (1 << 20) for i in range(70)]
    hosted = open_transport(settings, "master")
    remote = open_transport(settings, "client")
    try:
        reply_to = remote.reply_queue("big")
        producer = remote.producer(reply_to)
        producer.submit(bodies)
        consumer = remote.consumer("c1")
        got = fetch_n(consumer, len(bodies), within=60)
        assert sorted(d.body for d in got) == bodies
        for start in range(0, len(got), 10):  # a worker's settles: a batch's results each
            consumer.settle(
                [Settlement(d, reply_to=reply_to, result=d.body) for d in got[start : start + 10]]
            )
        assert sorted(results_n(producer, len(bodies), within=60)) == bodies
        consumer.close()
        producer.close()
    finally:
        remote.close()
        hosted.close()


#: a length no message has: the 4-byte form's negatives other than -1 (the long form's mark)
NEGATIVE_FRAME = struct.pack("!i", -2)


def test_a_reply_of_a_negative_length_is_refused_as_such() -> None:
    # read as no bytes, it was refused as "not a pickle: EOFError", the length unnamed
    settings = fake_settings("mgrneg")
    with fake_master(settings, "fetch", NEGATIVE_FRAME, framed=False):
        remote = open_transport(settings, "worker")
        try:
            consumer = remote.consumer("c1")
            with pytest.raises(TransportError, match="a message of -2 bytes"):
                consumer.fetch(5, 0.1)
            consumer.close()
        finally:
            remote.close()


def test_a_request_of_a_negative_length_is_refused_logged_and_its_connection_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    line = _sent_then_closed(caplog, NEGATIVE_FRAME, "dropped the connection")
    assert "it sent a message of -2 bytes" in line, line


def test_an_empty_reply_is_refused_as_such() -> None:
    # a message of 0 bytes was refused as "not a pickle: EOFError", which said neither
    # what came nor what to do
    settings = fake_settings("mgrempty")
    message = _fetch_refused(settings, b"", framed=True)
    assert "an empty message (0 bytes)" in message, message
    assert f"master at 127.0.0.1:{settings.manager_address[1]}" in message, message
    assert "EOFError" not in message and "DISTQ_MANAGER_ADDRESS" in message, message


def _sent_then_closed(caplog: pytest.LogCaptureFixture, sent: bytes, logged: str) -> str:
    """The master's log line after an authenticated peer sent ``sent`` and closed its
    side (or was dropped: ``logged`` a drop's): the
    one that holds ``logged``; the master serves the others still."""
    settings = _settings()
    assert settings.authkey is not None
    hosted = open_transport(settings, "master")
    try:
        conn = connection.Client(settings.manager_address, authkey=settings.authkey)
        with conn, socket.socket(fileno=os.dup(conn.fileno())) as sock:
            sock.sendall(sent)
            if not logged.startswith("dropped"):  # a close mid-message: the peer's
                sock.shutdown(socket.SHUT_WR)
            sock.settimeout(30)
            assert sock.recv(1) == b"", "the master kept the connection open"
        deadline = time.monotonic() + 30
        while logged not in caplog.text:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.05)
        [line] = [r.getMessage() for r in caplog.records if logged in r.getMessage()]
        assert "from 127.0.0.1:" in line, line
        worker = open_transport(settings, "worker")
        try:
            assert worker.stats().ready == 0
        finally:
            worker.close()
        return line
    finally:
        hosted.close()


def test_an_empty_request_is_refused_logged_and_its_connection_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    line = _sent_then_closed(caplog, struct.pack("!i", 0), "dropped the connection")
    assert "it sent an empty message (0 bytes)" in line and "EOFError" not in line, line
    assert "DISTQ_AUTHKEY" in line, line  # what to do: who holds the key and sends this


@pytest.mark.parametrize(
    ("sent", "arrived"),
    [
        (struct.pack("!i", 1000) + b"x" * 10, "10 of 1,000 bytes"),
        (struct.pack("!i", 1000)[:2], "2 of its length's 4 bytes"),
    ],
    ids=["body", "length"],
)
def test_a_peer_that_closes_mid_request_is_logged(
    caplog: pytest.LogCaptureFixture, sent: bytes, arrived: str
) -> None:
    # it ended the connection without a word in the master's log
    line = _sent_then_closed(caplog, sent, "closed mid-message")
    assert arrived in line, line
