"""Signing end to end, as the README's "Security" section says it, on every transport: a
worker with keys runs only tasks signed with one of them; an unsigned task, one signed
with another key and one altered after signing each go to the dead-letter queue with
that reason, and whoever waits for it gets an unsigned error result saying so."""

from __future__ import annotations

import time

import pytest

from conftest import Target
from distq.codec import Codec
from distq.envelope import Result, Task
from distq.signing import SIGNED, Signer
from distq.transport import Transport
from procs import Distq

pytestmark = pytest.mark.integration

KEY = b"sec32-signing-key-0123456789abcdef"
OTHER = b"sec32-another-key-fedcba9876543210"


def test_refused_tasks_are_dead_lettered_with_their_reason_and_answered(
    target: Target, hosted: Transport
) -> None:
    producer = hosted.producer(hosted.reply_queue("sec32"))
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
    worker = Distq(
        ["worker", "--exit-when-idle", "3"],
        target.process_env(DISTQ_SIGNING_KEYS=KEY.decode()),
    )
    try:
        answers: dict[str, Result] = {}
        deadline = time.monotonic() + 60
        while len(answers) < 4 and time.monotonic() < deadline:
            for body in producer.results(4, 0.2):
                codec = signed if body.startswith(SIGNED) else Codec()  # a pack: DQSIG2
                for envelope in codec.open_results(body):
                    result = Result.decode(envelope)
                    answers[result.task_id] = result
        assert worker.wait(60) == 0, worker.output()
        output = worker.output()
    finally:
        worker.stop()
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
