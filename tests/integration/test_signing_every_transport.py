"""Signing as the README's "Security" section describes it, on every transport.

A worker with keys runs only tasks signed with one of them; an unsigned task, one signed
with another key and one altered after signing each go to the dead-letter queue with
that reason, and whoever waits for it gets an unsigned error result saying so. A result
signed with a key the submitter does not hold is dropped with a warning line naming the
key id. A signature binds the task queue: a signed task copied onto another queue whose
workers hold the same keys is refused there; every path that signs anew (retries,
chunks, result packs, `requeue-dead`) signs for the queue it uses, and `requeue-dead` run
during a key rotation signs the letters anew with the first key."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import distq
import jobs
from conftest import Target, answers_of_a_signing_worker
from distq.codec import Codec
from distq.envelope import NO_REPLY, DeadLetter, Task, new_id
from distq.signing import MAGIC, Signer, key_id
from distq.transport import Settlement, Transport
from procs import Distq, run_distq
from seam import fetch_n

pytestmark = pytest.mark.integration

KEY = b"signing-key-0123456789abcdef0123"
OTHER = b"another-key-fedcba9876543210fedc"
#: a rotation's keys: the old one, then the new one
OLD = "rotation-old-key-0123456789abcdef"
NEW = "rotation-new-key-fedcba9876543210"


def test_a_signed_task_replayed_onto_another_queue_is_refused_there(
    target: Target, hosted: Transport
) -> None:
    producer = hosted.producer(hosted.reply_queue(new_id()))
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


def _distq(target: Target, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``distq *args`` run to its end, with ``env`` over the target's environment
    (DISTQ_SIGNING_KEYS: KEY unless given)."""
    return run_distq(args, target.process_env(**{"DISTQ_SIGNING_KEYS": KEY.decode(), **env}))


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
    producer = hosted.producer(hosted.reply_queue(new_id()))
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


def test_refused_tasks_are_dead_lettered_with_their_reason_and_answered(
    target: Target, hosted: Transport
) -> None:
    producer = hosted.producer(hosted.reply_queue(new_id()))
    signed = Codec([KEY], queue=target.settings.queue)

    def task(n: int) -> Task:
        return Task(name="square", args=[n], reply_to=producer.reply_to)

    good, unsigned, other, altered = task(2), task(3), task(4), task(5)
    forged = signed.seal_task(altered).replace(b"[5]", b"[6]")
    bodies = [
        signed.seal_task(good),
        unsigned.encode(),
        Signer([OTHER]).sign(other.encode(), "task"),
        forged,
    ]
    producer.submit(bodies)
    answers, output = answers_of_a_signing_worker(target, producer, KEY, signed, 4)
    assert answers[good.id].value == 4, (answers, output)
    reasons = {
        unsigned.id: "refused: unsigned task",
        other.id: "signed with another key",
        altered.id: "bad signature",
    }
    for task_id, said in reasons.items():
        assert task_id in answers, (task_id, answers, output)
        assert said in str(answers[task_id].error_message), (answers[task_id], output)
    letters = {}
    for letter in hosted.dead_letters():
        letters[letter.body] = letter.reason
    for body, said in zip(bodies[1:], reasons.values(), strict=True):
        assert said in letters.get(body, ""), (said, letters)
    producer.close()


def test_a_result_signed_with_another_key_is_dropped_with_a_warning(
    target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    ex = distq.Executor(target.settings, signing_keys=(OLD.encode(),))
    try:
        future = ex.submit(jobs.add, 1, 2)
        with _worker_with_new_key_first(target):
            deadline = time.monotonic() + 60
            said = "dropped a result: result signed with another key"
            while said not in caplog.text:
                assert time.monotonic() < deadline, caplog.text
                time.sleep(0.1)
            assert repr(key_id(NEW.encode())) in caplog.text, caplog.text
            assert not future.done()
    finally:
        ex.close()  # not waited for: the future never completes


@contextlib.contextmanager
def _worker_with_new_key_first(target: Target) -> Iterator[Distq]:
    """A worker that moved the new key first too early: it signs with NEW, accepts OLD."""
    args = ["worker", "--tasks", "jobs", "--connect-timeout", "30"]
    proc = Distq(args, target.process_env(DISTQ_SIGNING_KEYS=f"{NEW},{OLD}"))
    try:
        yield proc
    finally:
        proc.stop(grace=3.0)


def test_requeue_dead_during_rotation_signs_anew_with_the_first_key(
    target: Target, hosted: Transport, remote: Transport
) -> None:
    task = Task(name="jobs:add", args=[1, 2], reply_to="gone", attempt=3)
    letter = DeadLetter(
        body=Codec([OLD.encode()], queue=target.settings.queue).seal_task(task),
        reason="failed",
        queue="q",
        worker="w",
    )
    producer = hosted.producer(hosted.reply_queue(new_id()))
    producer.submit([b"task"])
    consumer = remote.consumer("dies")
    [delivery] = fetch_n(consumer, 1)
    consumer.settle([Settlement(delivery, dead_letter=letter.encode())])
    consumer.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        listed = _distq(target, "status", "--json", DISTQ_SIGNING_KEYS=OLD)
        if '"dead": 1' in listed.stdout:
            break
        time.sleep(0.1)

    # step 2 of the rotation: the new key first, the old one still accepted
    done = _distq(target, "requeue-dead", DISTQ_SIGNING_KEYS=f"{NEW},{OLD}")
    assert done.returncode == 0, (done.stdout, done.stderr)
    consumer = remote.consumer("runs")
    [requeued] = fetch_n(consumer, 1)
    consumer.close()
    producer.close()
    body = bytes(requeued.body)
    assert body.startswith(MAGIC + key_id(NEW.encode()).encode()), body[:40]
    opened = Codec([NEW.encode()], queue=target.settings.queue).open_task(
        body
    )  # a worker with the new key only
    assert (opened.name, opened.args, opened.attempt) == ("jobs:add", [1, 2], 1)
