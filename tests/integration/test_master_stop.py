"""A stopped ``distq master``: what becomes of its tasks still queued."""

from __future__ import annotations

import re
import signal
import time

import pytest

from conftest import Target
from procs import Spawn

pytestmark = pytest.mark.integration

TAKEN = re.compile(r"Get task (\d+) from task_queue")


# RabbitMQ cannot take a message back out of a queue (Producer.withdraw answers False)
@pytest.mark.parametrize("target", ["redis", "manager"], indirect=True)
def test_a_stopped_master_takes_back_its_queued_tasks(target: Target, spawn: Spawn) -> None:
    """SIGTERM to a master with tasks still queued: none of them starts on a worker
    after the stop. They did: during the master's 5 s wait for results in flight a
    worker took them one after another and ran them (on manager the master serves its
    queue until it exits), and the results that came after it were dropped."""
    env = target.process_env(DISTQ_LEASE_SECONDS="20", DISTQ_PREFETCH="1")
    master = spawn("master", "--tasks", "6", "--task-delay", "3", "--timeout", "90", env=env)
    master.wait_for(r"^master .* transport")
    worker = spawn("worker", "--worker-id", "only", env=env)
    worker.wait_for(TAKEN.pattern)  # one task in hand, five queued
    master.signal(signal.SIGTERM)
    master.wait_for(r"SIGTERM: stopping the job")
    before = TAKEN.findall(worker.output())
    assert master.wait(30) == 1, master.output()
    time.sleep(3)  # a worker that took one more as the master ended says so by now
    after = TAKEN.findall(worker.output())
    assert after == before, (master.output(), worker.output())
    # the five taken back count as missing (the task in hand too, on a host too slow to
    # finish it within the 5 s wait)
    said = re.search(
        r"job stopped after .*: [01] of 6 results in, .* ([56]) missing", master.output()
    )
    assert said is not None, master.output()
