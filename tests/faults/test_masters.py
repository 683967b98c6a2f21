"""Masters that die or are stopped before their job ends.

A master SIGKILLed mid-job is replaced by a new one on the same queue: the new job must
complete, and the dead one's tasks still queued must not hold it up for long: once its
reply queue lapses (``Settings.master_ttl``, 10 s here), workers dead-letter them unrun,
naming the reason. A master stopped with SIGTERM before its end exits 1 naming what is
missing.
"""

from __future__ import annotations

import contextlib
import re
import signal
import time

import pika
import pytest
import redis

from conftest import Target
from distq.envelope import Task
from distq.transport import open_transport
from distq.transport.rabbitmq_packs import task_bodies
from faults.conftest import MakeScenario
from faults.harness import FULL, Master, Scenario, assert_clean
from procs import Distq

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(600)]

OLD_TASKS, NEW_TASKS = (600, 200) if FULL else (300, 60)
DELAY = 0.1


def wait_results(master: Master, count: int, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while master.results() < count and time.monotonic() < deadline:
        time.sleep(0.05)


def test_a_master_killed_mid_job_then_a_new_one(target: Target, scenario: MakeScenario) -> None:
    s = scenario(target, "master SIGKILL, new master", "SIGKILL of the master, a new one at once")
    old = s.master(
        "--tasks", str(OLD_TASKS), "--task-delay", str(DELAY), "--timeout", "240", expect_exit=None
    )
    for _ in range(2):
        s.worker()
    wait_results(old, 20)
    with s.fault():
        s.kill(old.proc)
    new = s.master("--tasks", str(NEW_TASKS), "--task-delay", "0.01", "--timeout", "240")
    figures = s.finish([new])
    assert_clean(figures, s)
    assert old.proc.proc.returncode == -signal.SIGKILL
    if target.name == "manager":
        return  # the dead master's queues died with it: nothing of its job is left
    transport = open_transport(target.settings, "master")
    try:
        reasons = [letter.reason for letter in transport.dead_letters(limit=OLD_TASKS)]
    finally:
        transport.close()
    gone = [r for r in reasons if r.startswith("its master is gone")]
    # the dead master's tasks still queued after its reply queue lapsed (10 s of its
    # 15 s of work): dead-lettered with the reason, not run
    assert gone and len(gone) == len(reasons), reasons[:3]
    ok = len(re.findall(r"^Get result", old.proc.output(), re.M))
    assert len(gone) < OLD_TASKS - ok


def test_a_master_stopped_before_its_end_exits_1_naming_what_is_missing(target: Target) -> None:
    master = Distq(["master", "--tasks", "5", "--timeout", "60"], target.process_env())
    try:
        master.wait_for(r"^try to get result")
        master.signal(signal.SIGTERM)
        code = master.proc.wait(30)
        out = master.output()
    finally:
        master.stop(grace=0)
    assert code == 1, out
    assert "job stopped after" in out and "0 of 5 results in" in out and "5 missing" in out
    assert "all 0 results in and correct" not in out and "Traceback" not in out


def test_a_master_that_lost_its_reply_queue_submits_its_tasks_again(
    target: Target, scenario: MakeScenario
) -> None:
    """The master's reply queue deleted from under it (as by a broker that forgot it, or
    after a master was away longer than its queue lives): workers dead-letter its queued
    tasks as a gone master's; it notices at its next reconcile and submits again what is
    outstanding."""
    if target.name == "manager":
        pytest.skip("a manager master hosts its queues: nothing deletes them under it")
    s, master = _a_job_under_way(
        target, scenario, "reply queue lost", "the master's reply queue deleted mid-job"
    )
    with s.fault():
        _forget_master(target)
    figures = s.finish([master])
    assert_clean(figures, s)
    assert "submitting" in master.proc.output(), master.proc.output()


def test_a_master_back_from_a_lapse_removes_the_letters_workers_made_meanwhile(
    target: Target, scenario: MakeScenario
) -> None:
    """Its registration gone for 4 s (longer than a worker remembers a live master), as
    during a pause past its time to live: workers dead-letter its queued tasks, "its
    master is gone"; back, it submits them again and removes those letters, which
    `requeue-dead` would run a second time (multi15). Copies left queued when the job
    ends are dead-lettered after it, as a gone master's: those stay."""
    if target.name == "manager":
        pytest.skip("a manager master hosts its queues: its own registration never lapses")
    s, master = _a_job_under_way(
        target, scenario, "lapse orphans", "the master's registration gone for 4 s mid-job"
    )
    reply_to = _reply_queue_of_a_queued_task(target)
    with s.fault():
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            _forget_master(target, reply_to)
            time.sleep(0.2)
    master.proc.proc.wait(120)
    ended = time.time()
    figures = s.finish([master])
    assert_clean(figures, s)
    output = master.proc.output()
    with contextlib.closing(open_transport(target.settings, "master")) as transport:
        letters = transport.dead_letters(1000)
    # the ones made while the master ran are gone (the margin: its last second, after the
    # last look, when it closes)
    kept = [x for x in letters if "master is gone" in x.reason and x.at < ended - 1.5]
    assert kept == [], output
    assert re.search(r"removed [\d,]+ dead letters? that workers made of this job", output), output


def _a_job_under_way(
    target: Target, scenario: MakeScenario, name: str, what: str
) -> tuple[Scenario, Master]:
    """Scenario ``name``: a master of 100 tasks of 0.05 s and a worker, 10 results in."""
    s = scenario(target, name, what)
    master = s.master("--tasks", "100", "--task-delay", "0.05", "--timeout", "120")
    s.worker()
    wait_results(master, 10)
    return s, master


def _reply_queue_of_a_queued_task(target: Target) -> str:
    """The reply queue of the master whose tasks are queued (its name is in any of
    them), read with the broker's own client."""
    queue = target.settings.queue
    if target.name == "redis":
        with redis.Redis.from_url(target.settings.redis_url) as client:
            body = client.lindex(queue, 0)
            assert body is not None
            return Task.decode(body).reply_to
    connection = pika.BlockingConnection(pika.URLParameters(target.settings.amqp_url))
    try:
        channel = connection.channel()
        method, props, body = channel.basic_get(queue)
        assert method is not None
        channel.basic_nack(method.delivery_tag, requeue=True)
        return Task.decode(task_bodies(props.type, body)[0]).reply_to
    finally:
        connection.close()


def _forget_master(target: Target, reply_to: str | None = None) -> None:
    """Delete the registration of the master ``reply_to`` (by default the one whose tasks
    are queued), with the broker's own client."""
    reply_to = reply_to or _reply_queue_of_a_queued_task(target)
    if target.name == "redis":
        with redis.Redis.from_url(target.settings.redis_url) as client:
            client.zrem(f"distq:{target.settings.queue}:masters", reply_to)
        return
    connection = pika.BlockingConnection(pika.URLParameters(target.settings.amqp_url))
    try:
        connection.channel().queue_delete(reply_to)
    finally:
        connection.close()
