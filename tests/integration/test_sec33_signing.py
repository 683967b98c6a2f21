"""A signature binds the task queue: a signed task copied onto another queue whose
workers hold the same keys is refused there, dead-lettered and answered with that
reason, as the README's "Security" section says, on every transport; and every path that
signs anew (retries, chunks, result packs, `requeue-dead`) signs for the queue it uses."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import distq
import jobs
from conftest import Target, answers_of_a_signing_worker
from distq.codec import Codec
from distq.envelope import NO_REPLY, Task
from distq.transport import Transport
from procs import Distq

pytestmark = pytest.mark.integration

KEY = b"sec33-signing-key-0123456789abcdef"


def test_a_signed_task_replayed_onto_another_queue_is_refused_there(
    target: Target, hosted: Transport
) -> None:
    producer = hosted.producer(hosted.reply_queue("sec33"))
    here = Codec.from_settings(replace(target.settings, signing_keys=(KEY,)))
    elsewhere = Codec.from_settings(
        replace(target.settings, signing_keys=(KEY,), queue=target.settings.queue + "-other")
    )
    meant, replayed = (Task("square", [n], producer.reply_to) for n in (2, 3))
    producer.submit([here.seal_task(meant), elsewhere.seal_task(replayed)])
    answers, output = answers_of_a_signing_worker(target, producer, KEY, here, 2)
    assert answers[meant.id].value == 4, (answers, output)
    assert replayed.id in answers and answers[replayed.id].status == "error", (answers, output)
    said = str(answers[replayed.id].error_message)
    assert "bad signature" in said and "another queue" in said, said
    reasons = [letter.reason for letter in hosted.dead_letters()]
    assert any("another queue" in reason for reason in reasons), reasons
    producer.close()


def _distq(target: Target, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "distq", *args],
        env=target.process_env(DISTQ_SIGNING_KEYS=KEY.decode()),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def _quiet_letters(target: Target, count: int, after: float) -> list[dict[str, Any]]:
    """The dead letters once ``count`` are there, every one dead-lettered after ``after``,
    and nothing is ready or in flight (a requeued task ran to its end), within 60 s."""
    deadline = time.monotonic() + 60
    while True:
        status = json.loads(_distq(target, "status", "--json").stdout)
        letters: list[dict[str, Any]] = json.loads(_distq(target, "dead-letters", "--json").stdout)
        settled = status["ready"] == 0 and status["in_flight"] in (0, None)
        if settled and len(letters) == count and all(x["at"] > after for x in letters):
            return letters
        assert time.monotonic() < deadline, (status, letters)
        time.sleep(0.3)


def test_signed_retries_chunks_packs_and_a_requeued_letter_verify_on_every_transport(
    target: Target, tmp_path: Path
) -> None:
    """Every path that signs anew with the queue bound: a worker's retry (Redis's delayed
    retries, RabbitMQ's delay queues, the manager's), chunks, a batch's results packed,
    and `requeue-dead` starting a letter over on its own queue, where it runs again."""
    argv = ["worker", "--tasks", "jobs", "--task", "jobs:flaky", "--task", "jobs:always_fail"]
    env = target.process_env(DISTQ_SIGNING_KEYS=KEY.decode(), DISTQ_TEST_FLAKY_DIR=str(tmp_path))
    with distq.Executor(target.settings, signing_keys=(KEY,), max_attempts=2) as ex:
        worker = Distq([*argv, "--connect-timeout", "30", "--prefetch", "16"], env)
        try:
            flakies = [ex.submit("jobs:flaky", n) for n in range(3)]  # each retried once
            adds = [ex.submit(jobs.add, n, 1) for n in range(64)]  # results in packs
            chunked = list(ex.map(jobs.add, range(30), range(30), chunksize=7))
            assert chunked == [2 * n for n in range(30)], worker.output()
            assert [f.result(60) for f in flakies] == [0, 1, 4], worker.output()
            assert [f.result(60) for f in adds] == [n + 1 for n in range(64)]
            with pytest.raises(distq.RemoteError, match="failed 2 of 2 attempts"):
                ex.submit("jobs:always_fail", 5).result(60)
            [letter] = _quiet_letters(target, 1, 0.0)
            assert letter["task"]["attempt"] == 2, letter
            requeued_at = time.time()
            done = _distq(target, "requeue-dead")
            assert done.returncode == 0, (done.stdout, done.stderr)
            # run again (attempts 1 and 2, no one waiting), failed again: not refused
            [again] = _quiet_letters(target, 1, requeued_at)
            assert again["reason"].startswith("failed 2 of 2 attempts"), again
            assert again["task"]["id"] == letter["task"]["id"], (again, letter)
            assert "refused" not in worker.output(), worker.output()
        finally:
            worker.stop(grace=3.0)


def test_a_letter_moved_from_another_queue_is_not_signed_anew_by_requeue_dead(
    target: Target, hosted: Transport
) -> None:
    """Dead-lettered as signed for another queue, it goes back unchanged, the command
    saying why and what runs it, and a worker refuses it again: never re-signed as this
    queue's, which would run it."""
    producer = hosted.producer(hosted.reply_queue("sec33"))
    other = replace(target.settings, signing_keys=(KEY,), queue=target.settings.queue + "-other")
    producer.submit([Codec.from_settings(other).seal_task(Task("square", [3], NO_REPLY))])
    worker_args = ["worker", "--exit-when-idle", "3"]
    env = target.process_env(DISTQ_SIGNING_KEYS=KEY.decode())
    for run in range(2):
        worker = Distq(worker_args, env)
        try:
            assert worker.wait(60) == 0, worker.output()
        finally:
            worker.stop()
        [letter] = _quiet_letters(target, 1, 0.0)
        assert "another queue" in letter["reason"], letter
        if run == 1:
            break
        done = _distq(target, "requeue-dead")
        assert done.returncode == 1, (done.stdout, done.stderr)
        assert "1 of them could not be started over" in done.stdout, done.stdout
        assert f"submit it to queue {target.settings.queue!r} itself" in done.stdout, done.stdout
    producer.close()
