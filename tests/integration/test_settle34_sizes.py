"""Results and letters too large for their reader, on every transport: a result over the
master's DISTQ_MAX_MESSAGE_BYTES becomes its task's error result however its task and
worker are named, not a line and a task its master waits for until its timeout."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from conftest import Target
from distq.collector import Collector
from distq.envelope import Result, Task, new_id
from distq.transport import Transport
from procs import Distq

pytestmark = pytest.mark.integration


@pytest.fixture
def workers() -> Iterator[list[Distq]]:
    started: list[Distq] = []
    yield started
    for proc in started:
        proc.stop(grace=3.0)


@pytest.mark.timeout(180)
def test_a_result_over_the_masters_limit_is_an_error_result_whatever_its_names(
    target: Target, hosted: Transport, workers: list[Distq]
) -> None:
    """2 MiB of result from a worker at 8 MiB whose --worker-id is 1,100 characters, read
    by a master at the default 1 MiB; one task of them with an id a hand-made task may
    have (a space, a slash, a non-ASCII letter). Their heads were read only for ids of
    [0-9A-Za-z_.:-] and worker names to 1,024 bytes: both results were dropped with a
    line, and the master waited for them to its timeout."""
    reply = hosted.reply_queue(new_id())
    producer = hosted.producer(reply)
    plain = Task("jobs:repeat", ["x", 2 << 20], reply)
    named = Task("jobs:repeat", ["y", 2 << 20], reply, id="job 1/é")
    small = Task("jobs:add", [1, 1], reply)
    producer.submit([plain.encode(), named.encode(), small.encode()])
    env = target.process_env(DISTQ_MAX_MESSAGE_BYTES=str(8 << 20))
    worker_id = "w" * 1100
    args = ["worker", "--tasks", "jobs", "--worker-id", worker_id, "--exit-when-idle", "2"]
    proc = Distq(args, env)
    workers.append(proc)
    got: dict[str, Result] = {}
    collector = Collector[None](lambda result, _, __: got.__setitem__(result.task_id, result))
    collector.expect((t.id, None) for t in [plain, named, small])
    deadline = time.monotonic() + 60
    while collector.outstanding and time.monotonic() < deadline:
        collector.collect(producer, 0.5)
    assert proc.wait(60) == 0, proc.output()
    producer.close()
    assert sorted(got) == sorted(t.id for t in [plain, named, small]), (got, proc.output())
    assert got[small.id].value == 2
    for task in (plain, named):
        result = got[task.id]
        assert (result.error_type, result.worker) == ("MessageTooLarge", worker_id), result
        assert "1,048,576" in (result.error_message or ""), result
