"""A framed pack of tasks reaching a worker the CLI started: its dead letter names what
the transport it came on does with packs (only RabbitMQ's messages have a type), and
says it is a pack when it is over the size limit; a task of another envelope version
over the limit is answered, as a version-1 one is, and its letter keeps whole characters.
"""

from __future__ import annotations

import json
import time

import pytest

from conftest import Target
from distq.envelope import NO_REPLY, Task, new_id
from distq.framing import pack
from distq.transport import Transport
from procs import Distq, run_distq
from seam import results_of

pytestmark = pytest.mark.integration

SAID = {
    "rabbitmq": "sent without the message type distq.tasks that says it is one",
    "redis": "a worker on Redis takes one task per message",
    "manager": "a worker on the manager takes one task per message",
}


def _letters(target: Target) -> list[dict[str, object]]:
    done = run_distq(["dead-letters", "--json"], target.process_env())
    assert done.returncode == 0, done.stderr
    found: list[dict[str, object]] = json.loads(done.stdout)
    return found


def _letters_within(target: Target, count: int) -> list[dict[str, object]]:
    """The queue's dead letters once ``count`` are there, or as they are after 30 s."""
    letters: list[dict[str, object]] = []
    deadline = time.monotonic() + 30
    while len(letters) < count and time.monotonic() < deadline:
        letters = _letters(target)
        if len(letters) < count:
            time.sleep(0.2)
    return letters


def _worker_until_idle(target: Target, workers: list[Distq], **env: str) -> None:
    """A worker of the CLI (``--tasks jobs``, with ``env``) run until idle 2 s: asserts it
    exits 0."""
    proc = Distq(["worker", "--tasks", "jobs", "--exit-when-idle", "2"], target.process_env(**env))
    workers.append(proc)
    assert proc.wait(90) == 0, proc.output()


def test_a_pack_of_tasks_is_dead_lettered_saying_what_its_transport_does_with_one(
    target: Target, hosted: Transport, workers: list[Distq]
) -> None:
    """On Redis and the manager the letter said "sent without the message type
    distq.tasks", which only RabbitMQ's messages have."""
    body = pack([Task("jobs.square", [n], NO_REPLY).encode() for n in range(2)])
    producer = hosted.producer(hosted.reply_queue(new_id()))
    producer.submit([body])  # one body, as a message of its own: no type on RabbitMQ
    _worker_until_idle(target, workers)
    producer.close()
    letters = _letters_within(target, 1)
    assert len(letters) == 1, letters
    reason = str(letters[0]["reason"])
    assert reason.startswith("malformed message: a pack of 2 tasks"), reason
    assert SAID[target.name] in reason, reason
    others = [said for name, said in SAID.items() if name != target.name]
    assert not any(said in reason for said in others), reason


def test_a_pack_or_a_newer_task_over_the_limit_is_said_so_and_answered(
    target: Target, hosted: Transport, workers: list[Distq]
) -> None:
    """At a worker of DISTQ_MAX_MESSAGE_BYTES=2048: a pack of 3 small tasks was
    dead-lettered as "task is 2,6xx bytes, over the limit", one task too large; a task
    of envelope version 2 and 5 KB was dead-lettered unanswered, its master waiting
    until its timeout."""
    reply = hosted.reply_queue(new_id())
    producer = hosted.producer(reply)
    body = pack([Task("jobs.square", ["x" * 700], NO_REPLY).encode() for _ in range(3)])
    newer = Task("jobs.square", ["x" * 5000], reply)
    producer.submit([body, newer.encode().replace(b'{"v":1,', b'{"v":2,', 1)])
    _worker_until_idle(target, workers, DISTQ_MAX_MESSAGE_BYTES="2048")
    answers = results_of(producer, 1, within=30)
    producer.close()
    assert [(r.task_id, r.error_type) for r in answers] == [(newer.id, "MessageTooLarge")]
    letters = _letters_within(target, 2)
    reasons = sorted(str(letter["reason"]) for letter in letters)
    assert len(reasons) == 2, reasons
    assert reasons[0].startswith("malformed message: a pack of 3 tasks"), reasons[0]
    assert f"refused whole: it is {len(body):,} bytes, over the limit of 2,048" in reasons[0]
    assert reasons[1].startswith("refused: task is "), reasons[1]


def test_a_task_over_the_limit_cut_in_a_character_keeps_its_letter_text(
    target: Target, hosted: Transport, workers: list[Distq]
) -> None:
    """At a worker of DISTQ_MAX_MESSAGE_BYTES=65536: a task of 100 KB whose 'é' spans
    bytes 65,535-65,536. Its dead letter kept the first 64 KiB, half of that 'é': the
    task in base64, no longer text (no 'body' in `distq dead-letters --json`)."""
    reply = hosted.reply_queue(new_id())
    producer = hosted.producer(reply)
    head = Task("jobs.square", [""], reply).encode()
    pad = (64 << 10) - 1 - head.index(b'[""]') - 2  # the 'é' from byte 65,535
    sent = Task("jobs.square", ["x" * pad + "é" + "y" * 40_000], reply)
    body = sent.encode()
    assert body[(64 << 10) - 1 :].startswith("é".encode()), body.index("é".encode())
    producer.submit([body])
    _worker_until_idle(target, workers, DISTQ_MAX_MESSAGE_BYTES=str(64 << 10))
    answers = results_of(producer, 1, within=30)
    producer.close()
    assert [(r.task_id, r.error_type) for r in answers] == [(sent.id, "MessageTooLarge")]
    letters = _letters_within(target, 1)
    [letter] = letters
    assert "body_b64" not in letter, str(letter["reason"])
    kept = str(letter["body"]).encode()
    assert kept == body[: (64 << 10) - 1], len(kept)  # cut before the 'é', not in it
    assert "the dead letter keeps its first 65,535 bytes" in str(letter["reason"]), letter
