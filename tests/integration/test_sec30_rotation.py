"""Key rotation as the README's "Security" section describes it, on every transport:
``distq requeue-dead`` run while the old key is still accepted signs the letters anew
with the first key, so workers that have dropped the old key run them."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from conftest import Target
from distq.codec import Codec
from distq.envelope import DeadLetter, Task, new_id
from distq.signing import MAGIC, key_id
from distq.transport import Settlement, Transport
from seam import fetch_n

pytestmark = pytest.mark.integration

OLD = "rotation-old-key-0123456789abcdef"
NEW = "rotation-new-key-fedcba9876543210"


def _distq(target: Target, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "distq", *args],
        env=target.process_env(**env),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


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
        listed = _distq(target, "status", "--json")
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
