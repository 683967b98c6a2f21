"""Results and letters too large for their reader, on every transport: a result over the
master's DISTQ_MAX_MESSAGE_BYTES becomes its task's error result however its task and
worker are named, not a line and a task its master waits for until its timeout."""

from __future__ import annotations

import time

import pytest

from conftest import Target
from distq.collector import Collector
from distq.envelope import Result, Task, new_id
from distq.transport import Producer, Transport
from procs import Distq

pytestmark = pytest.mark.integration


def _answers(producer: Producer, tasks: list[Task], within: float) -> dict[str, Result]:
    """The results of ``tasks`` by task id, read as a master does until each came or
    ``within`` seconds passed."""
    got: dict[str, Result] = {}
    collector = Collector[None](lambda result, _, __: got.__setitem__(result.task_id, result))
    collector.expect((t.id, None) for t in tasks)
    deadline = time.monotonic() + within
    while collector.outstanding and time.monotonic() < deadline:
        collector.collect(producer, 0.5)
    return got


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
    got = _answers(producer, [plain, named, small], within=60)
    assert proc.wait(60) == 0, proc.output()
    producer.close()
    assert sorted(got) == sorted(t.id for t in [plain, named, small]), (got, proc.output())
    assert got[small.id].value == 2
    for task in (plain, named):
        result = got[task.id]
        assert (result.error_type, result.worker) == ("MessageTooLarge", worker_id), result
        assert "1,048,576" in (result.error_message or ""), result


@pytest.mark.timeout(180)
@pytest.mark.parametrize("target", ["manager"], indirect=True)
@pytest.mark.parametrize("cut", ["quotes", "mid-character"])
def test_a_dead_letter_over_the_masters_frames_is_kept_cut_and_its_task_answered(
    target: Target, hosted: Transport, workers: list[Distq], cut: str
) -> None:
    """A task of 40 MiB that fails for good, from a worker at 100 MiB to a master at the
    default 1 MiB (frames to 66 MiB): its dead letter writes each of its 20 Mi quotes in
    4 bytes (80 MiB), over the master's frames. The whole settle was refused, the
    connection dropped, and the task ran again, each time, never answered. Its cut at
    64 KiB fell in the middle of an 'é': the letter kept the task in base64, no longer
    text ('body' missing from `distq dead --json`); it is cut before that character."""
    reply = hosted.reply_queue(new_id())
    producer = hosted.producer(reply)
    quotes = '"' * (20 << 20)
    big = Task("jobs:fail_with", [quotes], reply, max_attempts=1)
    if cut == "mid-character":  # an 'é' whose second byte is the first one cut off
        pad = (64 << 10) - 1 - big.encode().index(b'\\"')
        big = Task("jobs:fail_with", ["x" * pad + "é" + quotes], reply, max_attempts=1)
        assert big.encode()[(64 << 10) - 1 :].startswith("é".encode())
    small = Task("jobs:add", [1, 1], reply)
    producer.submit([big.encode(), small.encode()])
    # a lease long enough for 80 MiB of JSON written in one C call on a loaded machine
    env = target.process_env(DISTQ_MAX_MESSAGE_BYTES=str(100 << 20), DISTQ_LEASE_SECONDS="10")
    proc = Distq(["worker", "--tasks", "jobs", "--exit-when-idle", "3"], env)
    workers.append(proc)
    got = _answers(producer, [big, small], within=60)
    assert proc.wait(60) == 0
    producer.close()
    output = "\n".join(line[:300] for line in proc.output().splitlines())  # not 20 Mi quotes
    assert sorted(got) == sorted([big.id, small.id]), output
    assert got[small.id].value == 2
    assert (got[big.id].status, got[big.id].error_type) == ("error", "ValueError"), got[big.id]
    [letter] = hosted.dead_letters()
    assert len(letter.body) <= 64 << 10 and big.encode().startswith(letter.body), len(letter.body)
    assert len(letter.body.decode()) >= (64 << 10) - 4, letter.body[-8:]  # text, as it came
    assert "1,048,576" in letter.reason and "DISTQ_MAX_MESSAGE_BYTES" in letter.reason, letter
    assert "1 failed for good" in output, output


@pytest.mark.timeout(120)
def test_a_task_whose_id_is_over_the_limit_is_answered_at_once_not_dropped(
    target: Target, hosted: Transport, workers: list[Distq]
) -> None:
    """A hand-made task whose id is 65 KiB, with 2 MiB of result from a worker at 8 MiB,
    read by a master at the default 1 MiB: the master looks for a too-large result's task
    id in its first 64 KiB only, found none, dropped the result with a line and waited for
    it to its timeout. A task id over 4,096 bytes is refused by the worker as malformed,
    unrun, and its submitter answered at once, saying the limit."""
    reply = hosted.reply_queue(new_id())
    producer = hosted.producer(reply)
    long_id = Task("jobs:repeat", ["x", 2 << 20], reply, id="i" * (65 << 10))
    small = Task("jobs:add", [1, 1], reply)
    producer.submit([long_id.encode(), small.encode()])
    env = target.process_env(DISTQ_MAX_MESSAGE_BYTES=str(8 << 20))
    proc = Distq(["worker", "--tasks", "jobs", "--exit-when-idle", "2"], env)
    workers.append(proc)
    got = _answers(producer, [long_id, small], within=30)
    producer.close()
    output = "\n".join(line[:300] for line in proc.output().splitlines())
    assert sorted(got) == sorted(t.id for t in [long_id, small]), output
    assert got[small.id].value == 2
    result = got[long_id.id]
    assert result.status == "error" and "4,096" in (result.error_message or ""), result
