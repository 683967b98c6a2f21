"""A dead letter over a Redis server's ``proto-max-bulk-len`` (its largest argument): Redis
drops the connection on it, the settle fails and the task runs again, for ever. Here a
private server at the least it takes (1 MiB) stands for the default 512 MiB."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import REPO
from distq.collector import Collector
from distq.config import Settings
from distq.envelope import Result, Task, new_id
from distq.transport.redis import RedisTransport
from launch import LocalRedis
from procs import Distq

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalRedis]:
    with LocalRedis(tmp_path, extra_args=["--proto-max-bulk-len", "1mb"]).start() as started:
        yield started


def test_a_dead_letter_over_the_servers_largest_argument_keeps_the_start_of_its_task(
    server: LocalRedis,
) -> None:
    """A task of 300,000 quotes (600 KB on the wire) that fails for good: its letter writes
    each quote in 4 bytes (1.2 MB), over the server's 1 MiB. Redis dropped the connection
    on the settle, and the task ran again at each lease, never answered. Its letter now
    keeps the first 64 KiB of the task, saying how large it was, and the task ends once."""
    queue = f"t-{uuid.uuid4().hex[:10]}"
    settings = Settings(transport="redis", redis_url=server.url, queue=queue, lease_seconds=3)
    transport = RedisTransport(settings, "master")
    reply = transport.reply_queue(new_id())
    producer = transport.producer(reply)
    big = Task("jobs:fail_with", ['"' * 300_000], reply, max_attempts=1)
    small = Task("jobs:add", [1, 1], reply)
    producer.submit([big.encode(), small.encode()])
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTQ_")}
    env.update(DISTQ_TRANSPORT="redis", DISTQ_REDIS_URL=server.url, DISTQ_QUEUE=queue)
    env.update(DISTQ_LEASE_SECONDS="3", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), str(REPO / "src")])
    worker = Distq(["worker", "--tasks", "jobs", "--exit-when-idle", "3"], env)
    try:
        got: dict[str, Result] = {}
        collector = Collector[None](lambda result, _, __: got.__setitem__(result.task_id, result))
        collector.expect((t.id, None) for t in [big, small])
        deadline = time.monotonic() + 30
        while collector.outstanding and time.monotonic() < deadline:
            collector.collect(producer, 0.5)
        exited = worker.proc.wait(30) if not collector.outstanding else None
    finally:
        text = worker.output()
        worker.stop(grace=3.0)
        producer.close()
    output = "\n".join(line[:300] for line in text.splitlines())  # not the quotes
    assert exited == 0, output
    assert sorted(got) == sorted([big.id, small.id]), output
    assert (got[big.id].status, got[big.id].error_type) == ("error", "ValueError"), got[big.id]
    [letter] = transport.dead_letters()
    transport.close()
    assert len(letter.body) == 64 << 10 and big.encode().startswith(letter.body), letter.reason
    assert "the dead letter keeps the first 65,536 bytes of the task" in letter.reason, letter
    assert "1,048,576" in letter.reason and "proto-max-bulk-len" in letter.reason, letter
    assert "1 failed for good" in output and "a dead letter too large for Redis" in output, output


def test_a_redis_that_refuses_config_is_taken_to_take_its_default_largest_argument(
    tmp_path: Path,
) -> None:
    """CONFIG renamed away, as managed Redis services do: Redis's default 512 MiB, asked
    once, not an error that fails the settle."""
    renamed = ["--rename-command", "CONFIG", ""]
    with LocalRedis(tmp_path, extra_args=renamed).start() as renaming:
        settings = Settings(transport="redis", redis_url=renaming.url, queue="renamed")
        transport = RedisTransport(settings, "worker")
        try:
            assert transport.most_bulk(transport.client) == 512 << 20
        finally:
            transport.close()
