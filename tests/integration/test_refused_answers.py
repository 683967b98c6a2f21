"""A task a worker the CLI started refuses unread is answered on every transport:
one over its DISTQ_MAX_MESSAGE_BYTES whose signature it refuses too."""

from __future__ import annotations

import pytest

from conftest import Target
from distq.envelope import Task, new_id
from distq.transport import Transport
from procs import Distq
from seam import results_of

pytestmark = pytest.mark.integration

KEY = "0123456789abcdef0123456789abcdef"


def test_an_unsigned_task_over_a_signing_workers_limit_is_answered(
    target: Target, hosted: Transport, workers: list[Distq]
) -> None:
    """The keys set on the workers only, the submitter's limit larger: refused for its
    size and then for its signature, the task was dead-lettered unanswered, and its
    master waited until its timeout."""
    reply = hosted.reply_queue(new_id())
    producer = hosted.producer(reply)
    sent = Task("jobs.square", ["x" * 5000], reply)
    producer.submit([sent.encode()])  # unsigned, as a submitter without keys sends it
    env = target.process_env(DISTQ_MAX_MESSAGE_BYTES="2048", DISTQ_SIGNING_KEYS=KEY)
    proc = Distq(["worker", "--tasks", "jobs", "--exit-when-idle", "2"], env)
    workers.append(proc)
    assert proc.wait(90) == 0, proc.output()
    answers = results_of(producer, 1, within=30)
    producer.close()
    assert [(r.task_id, r.error_type) for r in answers] == [(sent.id, "SignatureError")]
    message = answers[0].error_message or ""
    assert "over the limit of 2,048" in message and "DISTQ_SIGNING_KEYS" in message, message


def test_a_task_with_a_field_it_cannot_run_with_is_answered(
    target: Target, hosted: Transport, workers: list[Distq]
) -> None:
    """A version-1 task whose head reads (attempt 0, args not a list): dead-lettered,
    and answered on every transport with why, where its master waited until
    its timeout."""
    reply = hosted.reply_queue(new_id())
    producer = hosted.producer(reply)
    zero, text = Task("jobs.square", [3], reply), Task("jobs.square", [4], reply)
    producer.submit(
        [
            zero.encode().replace(b'"attempt":1', b'"attempt":0'),
            text.encode().replace(b'"args":[4]', b'"args":"4"'),
        ]
    )
    proc = Distq(["worker", "--tasks", "jobs", "--exit-when-idle", "2"], target.process_env())
    workers.append(proc)
    assert proc.wait(90) == 0, proc.output()
    answers = results_of(producer, 2, within=30)
    producer.close()
    got = sorted((r.task_id, r.status, r.error_type) for r in answers)
    assert got == sorted((t.id, "error", "EnvelopeError") for t in (zero, text)), got
    assert len(hosted.dead_letters()) == 2
