"""A remote producer's task too large for its master's frames, over the real manager
transport (a master hosted in this process, an executor connected to it at a larger
DISTQ_MAX_MESSAGE_BYTES): refused at once, saying which limit to raise, not sent again
and again, each put dropped by the master."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from distq.config import Settings
from distq.errors import MessageRefused, MessageTooLarge
from distq.executor import Executor
from distq.transport import open_transport
from launch import free_port

pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
def test_a_task_over_the_masters_frames_fails_its_future_and_the_rest_are_queued(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # the master at 1 MiB reads messages to 66 MiB; an executor at 100 MiB sent a task of
    # 70 MiB: the master dropped each put, the executor reconnected and sent it again (21
    # times in 40 s), and its future waited out its timeout: "is a worker running?"
    settings = Settings(
        transport="manager",
        authkey=b"k" * 32,
        manager_address=("127.0.0.1", free_port()),
        max_message_bytes=1 << 20,
    )
    hosted = open_transport(settings, "master")
    try:
        with Executor(replace(settings, max_message_bytes=100 << 20), host=False) as executor:
            big = executor.submit("jobs:echo", "x" * (70 << 20))
            small = executor.submit("jobs:echo", "y")
            with pytest.raises(MessageTooLarge) as raised:
                big.result(timeout=20)
            said = str(raised.value)
            assert "1,048,576" in said and "DISTQ_MAX_MESSAGE_BYTES" in said, said
            assert "give the master at least" in said, said
            deadline = time.monotonic() + 10
            while hosted.stats().ready < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert hosted.stats().ready == 1  # the small one
            small.cancel()
            executor.shutdown(wait=False, cancel_futures=True)
        dropped = [r for r in caplog.records if "dropped the connection" in r.getMessage()]
        assert dropped == [], dropped[0].getMessage()
    finally:
        hosted.close()


@pytest.mark.timeout(120)
def test_a_producer_asks_the_limit_again_of_a_master_restarted_in_place() -> None:
    # refused by a master at 1 MiB, the task was refused again by the one restarted in its
    # place at 100 MiB, to take it: the producer kept the first one's limit
    settings = Settings(
        authkey=b"k" * 32, manager_address=("127.0.0.1", free_port()), max_message_bytes=1 << 20
    )
    remote_settings = replace(settings, max_message_bytes=100 << 20)
    older = open_transport(settings, "master")
    try:
        remote = open_transport(remote_settings, "client")
        producer = remote.producer(remote.reply_queue("upgraded"))
        with pytest.raises(MessageRefused):
            producer.submit([b"x" * (70 << 20)])
    finally:
        older.close()
    newer = open_transport(remote_settings, "master")
    try:
        producer.reconcile()  # the connection lost: connects afresh
        producer.submit([b"x" * (70 << 20)])
        assert newer.stats().ready == 1
        producer.close()
    finally:
        remote.close()
        newer.close()
