"""Signing end to end, as the README's "Security" section says it, on every transport: a
worker with keys runs only tasks signed with one of them; an unsigned task, one signed
with another key and one altered after signing each go to the dead-letter queue with
that reason, and whoever waits for it gets an unsigned error result saying so."""

from __future__ import annotations

import pytest

from conftest import Target, answers_of_a_signing_worker
from distq.codec import Codec
from distq.envelope import Task
from distq.signing import Signer
from distq.transport import Transport

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
