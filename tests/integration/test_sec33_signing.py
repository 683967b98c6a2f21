"""A signature binds the task queue: a signed task copied onto another queue whose
workers hold the same keys is refused there, dead-lettered and answered with that
reason, as the README's "Security" section says, on every transport."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from conftest import Target
from distq.codec import Codec
from distq.envelope import Result, Task
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
    worker = Distq(
        ["worker", "--exit-when-idle", "3"],
        target.process_env(DISTQ_SIGNING_KEYS=KEY.decode()),
    )
    try:
        answers: dict[str, Result] = {}
        deadline = time.monotonic() + 60
        while len(answers) < 2 and time.monotonic() < deadline:
            for body in producer.results(2, 0.2):
                codec = here if here.signing and body.startswith(b"DQSIG") else Codec()
                for envelope in codec.open_results(body):
                    result = Result.decode(envelope)
                    answers[result.task_id] = result
        assert worker.wait(60) == 0, worker.output()
        output = worker.output()
    finally:
        worker.stop()
    assert answers[meant.id].value == 4, (answers, output)
    assert replayed.id in answers and answers[replayed.id].status == "error", (answers, output)
    said = str(answers[replayed.id].error_message)
    assert "bad signature" in said and "another queue" in said, said
    reasons = [letter.reason for letter in hosted.dead_letters()]
    assert any("another queue" in reason for reason in reasons), reasons
    producer.close()
