"""``distq submit``, ``status``, ``dead-letters`` and ``requeue-dead`` end to end, on every
transport: real brokers, the commands and workers as subprocesses.

With the manager transport the test process hosts the queues (the ``hosted`` fixture),
as a running master would, and every command connects to it as a worker does.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

import jobs
from conftest import REPO, Target, requeue_dead_stopped_at
from distq import Executor, RemoteError
from distq.codec import Codec
from distq.config import MESSAGE_BATCH, Settings
from distq.envelope import NO_REPLY, DeadLetter, Task, new_id
from distq.framing import pack
from distq.transport import Settlement, Transport, open_transport
from distq.transport.rabbitmq_packs import TASKS_TYPE
from launch import LocalRedis
from procs import Distq, run_distq
from seam import fetch_n

pytestmark = pytest.mark.integration


def distq(
    target: Target, *args: str, timeout: float = 90, **env: str
) -> subprocess.CompletedProcess[str]:
    return run_distq(args, target.process_env(**env), timeout)


def status(target: Target) -> dict[str, Any]:
    done = distq(target, "status", "--json")
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def start_worker(target: Target, started: list[Distq], *extra: str) -> Distq:
    proc = Distq(["worker", "--tasks", "jobs", *extra], target.process_env())
    started.append(proc)
    return proc


def test_submit_status_dead_letters_and_requeue(
    target: Target, hosted: Transport, workers: list[Distq]
) -> None:
    assert status(target) == {
        "transport": target.name,
        "queue": target.settings.queue,
        "ready": 0,
        "in_flight": None if target.name == "rabbitmq" else 0,  # AMQP cannot tell a client
        "dead": 0,
        "workers": 0,
    }
    doomed = distq(target, "submit", "jobs:fail_with", "boom", "--max-attempts", "1")
    assert doomed.returncode == 0, doomed.stderr
    task_id = doomed.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{32}", task_id), doomed.stdout
    for args in (["1", "2"], ["--kwargs", '{"a": 3, "b": 4}']):
        assert distq(target, "submit", "jobs:add", *args).returncode == 0
    assert status(target)["ready"] == 3

    worker = start_worker(target, workers, "--exit-when-idle", "2")
    assert worker.wait(60) == 0, worker.output()
    assert "2 ok, 1 failed for good" in worker.output()
    assert re.search(r"Get task jobs:add\[1, 2\]", worker.output())
    after = status(target)
    assert (after["ready"], after["dead"]) == (0, 1)

    shown = distq(target, "dead-letters")
    assert shown.returncode == 0, shown.stderr
    assert "1 of 1 dead letters, oldest first" in shown.stdout
    assert "failed 1 of 1 attempts; last error: ValueError: boom" in shown.stdout
    assert f'task jobs:fail_with("boom") [{task_id}]' in shown.stdout
    (letter,) = json.loads(distq(target, "dead-letters", "--json").stdout)
    assert (letter["task"]["id"], letter["task"]["name"]) == (task_id, "jobs:fail_with")
    assert letter["reason"] == "failed 1 of 1 attempts; last error: ValueError: boom"

    requeued = distq(target, "requeue-dead")
    assert requeued.returncode == 0, requeued.stderr
    assert requeued.stdout.strip() == f"requeued 1 dead letter onto queue {target.settings.queue!r}"
    again = status(target)
    assert (again["ready"], again["dead"]) == (1, 0)
    assert json.loads(distq(target, "dead-letters", "--json").stdout) == []
    assert distq(target, "requeue-dead", "--limit", "5").stdout.startswith("requeued 0 ")


@pytest.mark.parametrize("target", ["rabbitmq"], indirect=True)
def test_dead_letters_past_what_rabbitmq_lists_at_once_says_so(
    target: Target, hosted: Transport
) -> None:
    """A peek holds what it shows: 20,000 letters came back over a minute, and a
    `requeue-dead` right after waited silently for them."""
    hosted.dead_letters()  # declares the queues
    connection = pika.BlockingConnection(pika.URLParameters(target.settings.amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()
    for i in range(1_003):
        channel.basic_publish("", f"{target.settings.queue}.dead", b"letter %d" % i)
    connection.close()
    shown = distq(target, "dead-letters", "--limit", "5000")
    assert shown.returncode == 0, shown.stderr
    assert "1,000 of 1,003 dead letters, oldest first" in shown.stdout
    assert "rabbitmq lists at most 1,000 dead letters at a time" in shown.stderr
    assert status(target)["dead"] == 1_003  # all back


def _dead_letter(
    target: Target, hosted: Transport, remote: Transport, letters: list[bytes]
) -> None:
    """Put ``letters`` (dead-letter entries, as bytes) into the dead letters, in order, as
    a worker settling tasks would; return once ``status`` counts them."""
    producer = hosted.producer(hosted.reply_queue(new_id()))
    producer.submit([b"task-%d" % n for n in range(len(letters))])
    consumer = remote.consumer("dies")
    for delivery, letter in zip(fetch_n(consumer, len(letters)), letters, strict=True):
        consumer.settle([Settlement(delivery, dead_letter=letter)])
    consumer.close()
    producer.close()
    deadline = time.monotonic() + 10
    while status(target)["dead"] < len(letters) and time.monotonic() < deadline:
        time.sleep(0.1)


def test_an_unreadable_dead_letter_is_listed_and_requeued_as_its_bytes(
    target: Target, hosted: Transport, remote: Transport, workers: list[Distq]
) -> None:
    """An entry of the dead letters that is no distq dead letter (a hand edit, another
    tool) is listed as unreadable with its bytes escaped; requeue-dead moves it and every
    letter after it, and a worker dead-letters its bytes again, readably, as malformed. A
    letter whose task is malformed goes back too, said, exit 1: it dies again at once."""
    raw = b"not a dead letter \x1b[2J"
    letter = DeadLetter(body=b"garbage", reason="why", queue="q", worker="w")
    _dead_letter(target, hosted, remote, [raw, letter.encode()])  # the raw bytes, oldest

    shown = distq(target, "dead-letters")
    assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
    assert "2 of 2 dead letters, oldest first" in shown.stdout
    unreadable = "time unknown          worker -  unreadable dead letter: dead letter is not"
    assert f"{unreadable} valid JSON" in shown.stdout
    assert r"body b'not a dead letter \x1b[2J'" in shown.stdout  # escaped, not sent raw
    listed = json.loads(distq(target, "dead-letters", "--json").stdout)
    assert [(entry["body"], entry["reason"][:22]) for entry in listed] == [
        (raw.decode(), "unreadable dead letter"),
        ("garbage", "why"),
    ]
    # no time and no worker, as the text says: not 1970-01-01 and "" (cli16)
    assert (listed[0]["at"], listed[0]["worker"]) == (None, None)
    assert listed[1]["worker"] == "w" and listed[1]["at"] > 0

    requeued = distq(target, "requeue-dead")
    assert requeued.returncode == 1 and "Traceback" not in requeued.stderr, requeued.stderr
    moved, malformed, why = requeued.stdout.strip().splitlines()
    assert moved == f"requeued 2 dead letters onto queue {target.settings.queue!r}"
    assert malformed == (
        "1 of them is not a task any worker can run: it went back as it was, and a "
        "worker dead-letters it again at once (with that reason: see `distq "
        "dead-letters`); the first: task is not valid JSON: Expecting value: line 1 "
        "column 1 (char 0)"
    ), malformed
    # it said "1 of them are not tasks ...: they went back", "their raw bytes went back as tasks"
    assert why.startswith("1 of them unreadable (not a distq dead letter): its raw bytes went ")
    assert "went back as a task, which a worker" in why, why
    assert (status(target)["ready"], status(target)["dead"]) == (2, 0)

    worker = start_worker(target, workers, "--exit-when-idle", "2")
    assert worker.wait(60) == 0, worker.output()
    again = json.loads(distq(target, "dead-letters", "--json").stdout)
    assert sorted(entry["body"] for entry in again) == ["garbage", raw.decode()]
    assert all(entry["reason"].startswith("malformed message") for entry in again), again


def test_a_letter_with_a_time_past_any_clock_is_listed_with_the_others(
    target: Target, hosted: Transport, remote: Transport
) -> None:
    """A letter whose "at" is finite but past the platform's clock (1e300) raised
    OverflowError: the listing printed only a traceback, hiding every other letter."""
    odd = DeadLetter(body=b"odd", reason="from another tool", queue="q", worker="w", at=1e300)
    fine = DeadLetter(body=b"fine", reason="why", queue="q", worker="w")
    _dead_letter(target, hosted, remote, [odd.encode(), fine.encode()])
    shown = distq(target, "dead-letters")
    assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
    assert "at 1e+300" in shown.stdout and "from another tool" in shown.stdout
    assert "why" in shown.stdout, shown.stdout


def test_a_reader_that_leaves_early_is_no_failure(target: Target, hosted: Transport) -> None:
    """`| head -1`: every command ended in a BrokenPipeError traceback, exit 1, and
    `submit`, whose task was queued, told a script to submit it again."""
    env = target.process_env()
    for args in (["submit", "jobs:add", "1", "2"], ["status"], ["dead-letters", "--json"]):
        done = subprocess.run(  # stdout a pipe whose reader has gone: a write gets EPIPE
            f"{sys.executable} -m distq {' '.join(args)} | true",
            shell=True,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            executable="/bin/bash",
        )
        assert "Traceback" not in done.stderr, (args, done.stderr)
    queued = status(target)["ready"]
    assert queued >= 1  # the task submit queued, though its id had no reader


@pytest.mark.parametrize("command", ["dead-letters", "requeue-dead"])
def test_a_limit_past_what_brokers_take_is_refused_naming_it(command: str, target: Target) -> None:
    """99999999999999999999 was a traceback on manager, and exit 3, "the broker cannot
    be reached", on Redis."""
    done = distq(target, command, "--limit", "99999999999999999999")
    assert done.returncode == 2 and "--limit" in done.stderr and "Traceback" not in done.stderr


def test_requeue_dead_without_the_signing_key_says_so_and_exits_1(
    target: Target, hosted: Transport, remote: Transport
) -> None:
    """Without the workers' key, requeue-dead cannot start a signed task over: it goes
    back unchanged (its old master, its old attempt) and is dead-lettered again at once,
    while the command said "requeued 1" and exited 0."""
    key = "requeue-key-0123456789abcdef"
    signed = Codec([key.encode()], queue=target.settings.queue)
    letters = [
        DeadLetter(
            body=signed.seal_task(Task(name="jobs:add", args=[n, 2], reply_to="gone", attempt=3)),
            reason="failed",
            queue="q",
            worker="w",
        ).encode()
        for n in range(2)
    ]
    _dead_letter(target, hosted, remote, letters)

    keyless = distq(target, "requeue-dead", "--limit", "1")
    assert keyless.returncode == 1, (keyless.stdout, keyless.stderr)
    moved, why = keyless.stdout.strip().splitlines()
    assert moved.startswith("requeued 1 dead letter onto ")
    assert why.startswith("1 of them could not be started over: it went back unchanged")
    assert "with its old master and attempt, and a worker dead-letters it again unless" in why
    assert "signed task, but this process has no signing key" in why
    assert why.endswith("set the workers' DISTQ_SIGNING_KEYS for this command")

    keyed = distq(target, "requeue-dead", DISTQ_SIGNING_KEYS=key)
    assert keyed.returncode == 0, keyed.stderr
    assert keyed.stdout.strip() == (
        f"requeued 1 dead letter onto queue {target.settings.queue!r}"
    ), keyed.stdout
    assert (status(target)["ready"], status(target)["dead"]) == (2, 0)


def test_requeue_dead_with_signing_on_says_so_of_letters_from_before_it(
    target: Target, hosted: Transport, remote: Transport
) -> None:
    """A letter that died before signing was turned on went back with "requeued 1" and
    exit 0, and workers that sign refused it again at once."""
    unsigned = DeadLetter(
        body=Task(name="jobs:add", args=[1, 2], reply_to="gone").encode(),
        reason="failed",
        queue="q",
        worker="w",
    ).encode()
    _dead_letter(target, hosted, remote, [unsigned])
    done = distq(target, "requeue-dead", DISTQ_SIGNING_KEYS="requeue-key-0123456789abcdef")
    assert done.returncode == 1, (done.stdout, done.stderr)
    moved, why = done.stdout.strip().splitlines()
    assert moved.startswith("requeued 1 dead letter onto ")
    assert why.startswith("1 of them could not be started over") and "unsigned" in why, why
    assert why.endswith("workers with signing keys refuse it again, at once")


def test_submit_wait_prints_the_result_or_the_remote_error(
    target: Target, hosted: Transport, workers: list[Distq]
) -> None:
    start_worker(target, workers)
    done = distq(target, "submit", "jobs:add", "20", "22", "--wait", "--timeout", "60")
    assert done.returncode == 0, done.stderr
    task_id, value = done.stdout.split()
    assert re.fullmatch(r"[0-9a-f]{32}", task_id) and value == "42"
    kwargs = distq(
        target, "submit", "jobs:sleep_then", "--kwargs", '{"seconds": 0, "value": [1]}', "--wait"
    )
    assert kwargs.returncode == 0 and kwargs.stdout.split()[1:] == ["[1]"], kwargs.stderr

    failed = distq(target, "submit", "jobs:fail_with", "disk full", "--wait", "--max-attempts", "1")
    assert failed.returncode == 1
    assert "failed 1 of 1 attempts; last error: ValueError: disk full" in failed.stderr
    assert "Remote traceback:" in failed.stderr and "in _raise" in failed.stderr

    late = distq(target, "submit", "jobs:sleep_then", "5", "x", "--wait", "--timeout", "0.5")
    assert late.returncode == 1
    assert "no result for task jobs:sleep_then" in late.stderr and "Traceback" not in late.stderr


def test_submit_wait_refused_by_workers_with_other_keys_says_so(
    target: Target, hosted: Transport, workers: list[Distq]
) -> None:
    """Other keys than the workers': the worker refuses the task and answers unsigned, which
    the submitter drops. Its wait said "dropped a result: unsigned result", then, at its
    timeout, that the task "stays queued", asking whether a worker has it registered:
    the task was dead-lettered at once (input17)."""
    key = "input17-workers-key-0123456789abcdef"
    worker = Distq(["worker", "--tasks", "jobs"], target.process_env(DISTQ_SIGNING_KEYS=key))
    workers.append(worker)
    other = "input17-another-key-0123456789abcdef"
    late = distq(
        target, "submit", "jobs:add", "1", "2", "--wait", "--timeout", "8", DISTQ_SIGNING_KEYS=other
    )
    assert late.returncode == 1, late.stderr
    task_id = late.stdout.strip()
    assert f"unsigned answer for task {task_id}, which says (unverified)" in late.stderr
    assert "came back unsigned, refused by a worker for its signature" in late.stderr
    assert "A refused task is dead-lettered" in late.stderr and "stays queued" not in late.stderr
    (letter,) = json.loads(distq(target, "dead-letters", "--json", DISTQ_SIGNING_KEYS=key).stdout)
    assert task_id in letter["body"] and "signed with another key" in letter["reason"]


def test_submit_wait_past_its_timeout_leaves_the_task_queued(
    target: Target, hosted: Transport, workers: list[Distq]
) -> None:
    """As --timeout says: exit 1 and the task stays queued (it was withdrawn before); nobody
    waits for it any more, so a worker dead-letters it unrun, and requeue-dead runs it."""
    late = distq(target, "submit", "jobs:add", "1", "2", "--wait", "--timeout", "0.5")
    assert late.returncode == 1, late.stderr
    assert "no result for task jobs:add" in late.stderr and "Traceback" not in late.stderr
    assert status(target)["ready"] == 1
    assert "It stays queued" in late.stderr

    worker = start_worker(target, workers, "--exit-when-idle", "2")
    assert worker.wait(60) == 0, worker.output()
    (letter,) = json.loads(distq(target, "dead-letters", "--json").stdout)
    assert letter["task"]["id"] == late.stdout.strip()
    assert letter["reason"].startswith("its master is gone")

    assert distq(target, "requeue-dead").returncode == 0
    again = start_worker(target, workers, "--exit-when-idle", "2")
    assert again.wait(60) == 0, again.output()
    assert "1 ok" in again.output()
    assert (status(target)["ready"], status(target)["dead"]) == (0, 0)


def test_submit_wait_stopped_by_sigterm_is_interrupted_as_by_ctrl_c(
    target: Target, hosted: Transport
) -> None:
    """SIGTERM (timeout(1), kill, a container stop) ended the wait with exit 143, no word,
    and the task left queued for a worker to dead-letter; Ctrl-C said "interrupted",
    exited 1 and took the task back where the transport can."""
    submit = Distq(["submit", "jobs:add", "1", "2", "--wait"], target.process_env())
    try:
        submit.wait_for(r"^[0-9a-f]{32}$")  # queued, no worker: it waits
        submit.signal(signal.SIGTERM)
        assert submit.wait(30) == 1, submit.output()
        out = submit.output()
    finally:
        submit.stop(grace=0)
    assert "distq: interrupted" in out and "Traceback" not in out, out
    if target.name != "rabbitmq":  # RabbitMQ cannot take a published message back
        assert status(target)["ready"] == 0


def _rabbitmq_queues(target: Target, *names: str) -> list[str]:
    """Those of ``names`` that exist on ``target``'s RabbitMQ (a passive declare each)."""
    found = []
    with pika.BlockingConnection(pika.URLParameters(target.settings.amqp_url)) as connection:
        for name in names:
            try:
                connection.channel().queue_declare(name, passive=True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                assert exc.reply_code == 404, exc
                continue
            found.append(name)
    return found


@pytest.mark.parametrize("target", ["rabbitmq"], indirect=True)
def test_status_json_says_why_in_flight_is_null_when_the_management_api_fails(
    target: Target,
) -> None:
    """Set and failing, it printed null as when unset, and said nothing (docs12)."""
    done = distq(target, "status", "--json", DISTQ_RABBITMQ_MANAGEMENT_URL="http://127.0.0.1:9")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["in_flight"] is None
    assert done.stderr.startswith("distq: in_flight is null: "), done.stderr
    assert "DISTQ_RABBITMQ_MANAGEMENT_URL" in done.stderr, done.stderr
    unset = distq(target, "status", "--json")  # not set: null, as documented, and no line
    assert json.loads(unset.stdout)["in_flight"] is None and unset.stderr == ""


@pytest.mark.parametrize("target", ["rabbitmq"], indirect=True)
def test_reading_commands_create_no_rabbitmq_queue_for_quorum_workers_to_trip_on(
    target: Target,
) -> None:
    """``status``, ``dead-letters`` and ``requeue-dead`` with nothing to move declare no
    queue: one declared with this caller's type (classic, the default) would make a
    quorum deployment's workers fail to declare it (PRECONDITION_FAILED, exit 2)."""
    queues = (target.settings.queue, f"{target.settings.queue}.dead")
    quorum = replace(target.settings, rabbitmq_queue_type="quorum")
    try:
        assert status(target) == {
            "transport": "rabbitmq",
            "queue": target.settings.queue,
            "ready": 0,
            "in_flight": None,  # AMQP cannot tell a client
            "dead": 0,
            "workers": 0,
        }
        shown = distq(target, "dead-letters")
        assert shown.returncode == 0, shown.stderr
        assert "0 of 0 dead letters" in shown.stdout
        assert json.loads(distq(target, "dead-letters", "--json").stdout) == []
        for limit in ([], ["--limit", "5"]):  # the count, then the transport, finds none
            requeued = distq(target, "requeue-dead", *limit)
            assert requeued.returncode == 0, requeued.stderr
            assert requeued.stdout.startswith("requeued 0 "), requeued.stdout
        assert _rabbitmq_queues(target, *queues) == []

        worker = open_transport(quorum, "worker")  # declares them, quorum
        try:
            assert worker.stats().ready == 0
        finally:
            worker.close()
        assert _rabbitmq_queues(target, *queues) == list(queues)
        assert status(target)["workers"] == 0  # the classic caller reads quorum queues
    finally:
        with pika.BlockingConnection(pika.URLParameters(target.settings.amqp_url)) as connection:
            channel = connection.channel()
            for name in queues:
                channel.queue_delete(name)


@pytest.mark.parametrize("target", ["rabbitmq"], indirect=True)
def test_requeue_dead_moves_a_quorum_deployments_letters_from_any_caller(
    target: Target,
) -> None:
    """``requeue-dead`` from a shell without DISTQ_RABBITMQ_QUEUE_TYPE=quorum publishes to
    the quorum task queue as it is: declaring it with the caller's type was refused
    (PRECONDITION_FAILED, exit 2). A task queue not there is declared, the dead-letter
    queue left as it is."""
    task_queue, dead_queue = target.settings.queue, f"{target.settings.queue}.dead"
    quorum = replace(target.settings, rabbitmq_queue_type="quorum")
    url = target.settings.amqp_url
    try:
        worker = open_transport(quorum, "worker")  # declares them, quorum
        worker.close()
        with pika.BlockingConnection(pika.URLParameters(url)) as connection:
            channel = connection.channel()
            channel.confirm_delivery()  # in the queue before `status` counts them
            for n in (1, 2):
                task = Task(name="jobs:add", args=[n, n], reply_to="gone")
                letter = DeadLetter(body=task.encode(), reason="bad", queue=task_queue, worker="w")
                channel.basic_publish("", dead_queue, letter.encode())
        assert status(target)["dead"] == 2  # the classic caller reads quorum queues

        requeued = distq(target, "requeue-dead", "--limit", "1")
        assert requeued.returncode == 0, requeued.stderr
        assert requeued.stdout.startswith("requeued 1 "), requeued.stdout
        with pika.BlockingConnection(pika.URLParameters(url)) as connection:
            channel = connection.channel()
            method, _, body = channel.basic_get(task_queue, auto_ack=True)
            assert method is not None and Task.decode(body).args == [1, 1]
            channel.queue_delete(task_queue)  # gone: requeue-dead declares it again
        requeued = distq(target, "requeue-dead")
        assert requeued.returncode == 0, requeued.stderr
        assert requeued.stdout.startswith("requeued 1 "), requeued.stdout
        assert (status(target)["ready"], status(target)["dead"]) == (1, 0)
    finally:
        with pika.BlockingConnection(pika.URLParameters(url)) as connection:
            channel = connection.channel()
            for name in (task_queue, dead_queue):
                channel.queue_delete(name)


def test_commands_name_an_unreachable_broker(target: Target) -> None:
    done = distq(target, "status")  # nothing hosts a manager master; brokers: wrong port below
    if target.name != "manager":
        bad = dict(target.process_env())
        bad["DISTQ_REDIS_URL"] = "redis://127.0.0.1:1/0"
        bad["DISTQ_AMQP_URL"] = "amqp://guest:guest@127.0.0.1:1/%2F"
        done = run_distq(["status"], bad, timeout=60)
    assert done.returncode == 3, done.stderr
    assert "cannot reach" in done.stderr and "Traceback" not in done.stderr
    assert ".;" not in done.stderr, done.stderr  # the broker's sentence, then the hint


@pytest.mark.parametrize("made", ["not a daemon", "without saying"])
def test_a_worker_exits_though_a_task_left_a_thread_running(
    target: Target, hosted: Transport, workers: list[Distq], made: str
) -> None:
    """Python joins non-daemon threads at exit: the worker said "worker exit" and stayed
    up for the thread's 60 s, each SIGTERM only "the worker is stopping already" (tasks10).
    It waits at most DISTQ_DRAIN_SECONDS for them now. A thread made without saying was a
    daemon, as the slot's thread that made it is: neither named nor waited for (gil13)."""
    kwargs = '{"daemon": null}' if made == "without saying" else "{}"
    queued = distq(target, "submit", "jobs:leave_thread", "60", "--kwargs", kwargs)
    assert queued.returncode == 0, queued.stderr
    env = target.process_env(DISTQ_DRAIN_SECONDS="2")
    worker = Distq(["worker", "--tasks", "jobs", "--exit-when-idle", "1"], env)
    workers.append(worker)
    assert worker.wait(15) == 0, worker.output()
    out = worker.output()
    assert re.search(r"^worker exit\. 1 ok, ", out, re.M), out
    assert re.search(
        r"^1 thread that tasks started is alive \(left-behind\): the worker waits at "
        r"most 2 s \(DISTQ_DRAIN_SECONDS\) for it to end, or a signal$",
        out,
        re.M,
    ), out
    assert "distq: the worker exits 0 now, without waiting any longer" in out


POOL = """
import atexit
import concurrent.futures
import threading
import time

import distq

OUT = __file__ + ".out"
POOL = concurrent.futures.ThreadPoolExecutor(1)
POOL.submit(lambda: None).result()  # its thread started at import, idle after


def _upload(n):
    time.sleep(0.5)
    with open(OUT, "a") as out:
        out.write(f"uploaded {n}\\n")


@distq.task
def record(n):
    POOL.submit(_upload, n)  # fire and forget
    return n


@atexit.register
def _done():
    with open(OUT, "a") as out:
        out.write("atexit ran\\n")
"""


SLOW_EXIT = """
import atexit
import threading
import time

import distq

OUT = __file__ + ".out"


def _past_main(seconds):
    # alive until the main thread has ended (the exit has begun), then `seconds` more: a
    # sleep of 1.9 s from the import was over before the exit when the worker was held
    # up for a second after it (a loaded machine), and the exit waited for nothing
    while threading.main_thread().is_alive():
        time.sleep(0.05)
    time.sleep(seconds)


# at import; ends within the exit's wait of 2 s (DISTQ_DRAIN_SECONDS): 0.5 s into the exit
threading.Thread(target=_past_main, args=(0.5,), daemon=False).start()


@distq.task
def nothing():
    return None


@atexit.register
def _slow():
    time.sleep(3.0)  # past DISTQ_DRAIN_SECONDS, once the thread has ended
    with open(OUT, "a") as out:
        out.write("atexit done\\n")
"""


def test_a_worker_exit_waits_for_a_modules_thread_but_never_cuts_atexit_short(
    target: Target, hosted: Transport, tmp_path: Path
) -> None:
    """The exit's wait went on after the thread had ended and cut a running atexit
    handler short (diff14)."""
    (tmp_path / "slowexit.py").write_text(SLOW_EXIT)
    env = target.process_env(DISTQ_DRAIN_SECONDS="2")
    env["PYTHONPATH"] += os.pathsep + str(tmp_path)
    out = _exits_0(Distq(["worker", "--tasks", "slowexit", "--exit-when-idle", "0.5"], env))
    assert "the worker waits at most 2 s (DISTQ_DRAIN_SECONDS)" in out, out
    assert "without waiting any longer" not in out, out
    assert (tmp_path / "slowexit.py.out").read_text() == "atexit done\n", out


def test_a_worker_stopped_while_connecting_waits_for_a_modules_thread_as_bounded(
    tmp_path: Path,
) -> None:
    """A SIGTERM while connecting skipped the bounded wait: a thread the task module
    started at its import held the worker past DISTQ_DRAIN_SECONDS (diff14)."""
    (tmp_path / "slowexit.py").write_text(SLOW_EXIT.replace("args=(0.5,)", "args=(60.0,)"))
    with socket.create_server(("127.0.0.1", 0)) as silent:  # takes connections, says nothing
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISTQ_")}
        env.update(
            DISTQ_TRANSPORT="redis",
            DISTQ_REDIS_URL=f"redis://127.0.0.1:{silent.getsockname()[1]}/0",
            DISTQ_DRAIN_SECONDS="2",
            PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO / "src")]),
        )
        worker = Distq(["worker", "--tasks", "slowexit"], env)
        worker.wait_for(r"^tasks: ")
        time.sleep(0.5)
        started = time.monotonic()
        worker.signal(signal.SIGTERM)
        out = _exits_0(worker)
    assert time.monotonic() - started < 10, out
    assert "SIGTERM while connecting: worker exit" in out, out
    assert "the worker exits 0 now, without waiting any longer" in out, out


def _exits_0(worker: Distq) -> str:
    """``worker``'s output once it exited 0 (within 20 s)."""
    try:
        assert worker.wait(20) == 0, worker.output()
        return worker.output()
    finally:
        worker.stop(grace=0)


def test_a_worker_exit_lets_a_tasks_pool_finish_and_atexit_run(
    target: Target, hosted: Transport, workers: list[Distq], tmp_path: Path
) -> None:
    """Exiting past a task's threads at once lost the work queued on a pool the module
    used, and its atexit handlers (diff13)."""
    (tmp_path / "poolmod.py").write_text(POOL)
    for n in (1, 2, 3):
        assert distq(target, "submit", "poolmod:record", str(n)).returncode == 0
    env = target.process_env()
    env["PYTHONPATH"] += os.pathsep + str(tmp_path)
    worker = Distq(["worker", "--tasks", "poolmod", "--exit-when-idle", "0.5"], env)
    workers.append(worker)
    assert worker.wait(30) == 0, worker.output()
    assert "3 ok" in worker.output()
    done = (tmp_path / "poolmod.py.out").read_text().splitlines()
    assert done == ["uploaded 1", "uploaded 2", "uploaded 3", "atexit ran"], worker.output()


def test_a_task_over_the_workers_size_limit_fails_for_its_submitter_at_once(
    target: Target, hosted: Transport, workers: list[Distq]
) -> None:
    """Within the submitter's limit and over the worker's: dead-lettered unanswered, and
    `submit --wait` waited its whole timeout, then said "queued, running or retrying"."""
    env = target.process_env()
    env["DISTQ_MAX_MESSAGE_BYTES"] = "2000"
    worker = Distq(["worker", "--tasks", "jobs"], env)
    workers.append(worker)
    started = time.monotonic()
    done = distq(target, "submit", "jobs:add", "x" * 5000, "1", "--wait", "--timeout", "60")
    assert done.returncode == 1, done.stderr
    assert time.monotonic() - started < 30, done.stderr
    assert re.search(
        r"^distq: task jobs:add \[[0-9a-f]{32}\] failed on worker [^:]+: refused: task is "
        r"5,\d{3} bytes, over the limit of "
        r"2,000 \(DISTQ_MAX_MESSAGE_BYTES\); it was not decoded; not run: give the workers at "
        r"least the DISTQ_MAX_MESSAGE_BYTES of the process that submits tasks",
        done.stderr,
    ), done.stderr
    assert status(target)["dead"] == 1


@pytest.mark.timeout(180)
def test_a_result_over_the_submitters_limit_fails_its_wait_at_once(
    target: Target, workers: list[Distq]
) -> None:
    """A 70 MiB result, from a worker at 100 MiB, for `submit --wait` at the default
    1 MiB: an error result saying both sizes. On manager, with its master at 100 MiB,
    the result was too large for the submitter's frames: each read of results was
    refused, and it waited its whole timeout."""
    master = open_transport(replace(target.settings, max_message_bytes=100 << 20), "master")
    try:
        env = target.process_env(DISTQ_MAX_MESSAGE_BYTES=str(100 << 20))
        workers.append(Distq(["worker", "--tasks", "jobs"], env))
        started = time.monotonic()
        done = distq(
            target, "submit", "jobs:repeat", "x", str(70 << 20), "--wait", "--timeout", "90"
        )
        assert done.returncode == 1, done.stderr
        assert time.monotonic() - started < 60, done.stderr
        assert "MessageTooLarge" in done.stderr or "over the 1,048,576" in done.stderr, done.stderr
        assert "1,048,576" in done.stderr and "DISTQ_MAX_MESSAGE_BYTES" in done.stderr, done.stderr
    finally:
        master.close()


@pytest.mark.parametrize(
    ("log_format", "closed"), [("text", False), ("json", False), ("text", True)]
)
def test_a_worker_whose_stdout_reader_has_gone_still_runs_tasks_that_print(
    target: Target, hosted: Transport, tmp_path: Path, log_format: str, closed: bool
) -> None:
    """`distq worker | head -1`: each task's print() raised BrokenPipeError, and a task
    that printed failed for good (signals10); a worker started with stdout closed
    (`>&-`) failed them with AttributeError (diff14)."""
    env = target.process_env(DISTQ_LOG_FORMAT=log_format)
    command = [sys.executable, "-m", "distq", "worker", "--tasks", "jobs", "--quiet"]
    with (tmp_path / "err").open("w") as err:
        if closed:
            worker = subprocess.Popen(command, env=env, stderr=err, preexec_fn=lambda: os.close(1))
        else:
            worker = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=err)
            assert worker.stdout is not None
            worker.stdout.close()  # the reader gone before the worker's first line
    try:
        with distq_executor(target) as ex:
            assert list(ex.map(jobs.chatter, [3, 3, 3], timeout=60)) == [3, 3, 3]
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(30)
    said = (tmp_path / "err").read_text()
    assert code == 0, said
    assert "BrokenPipeError" not in said and "AttributeError" not in said, said


def test_a_worker_and_dead_letters_under_an_ascii_locale_escape_what_it_lacks(
    target: Target, hosted: Transport, tmp_path: Path
) -> None:
    """Under an ASCII (or Latin-1) locale one character outside it in a task's arguments
    sent a worker's every later line to /dev/null ("stdout cannot be written any more"),
    failed a task that printed it, and stopped `dead-letters` with a traceback (env11)."""
    env = target.process_env(PYTHONIOENCODING="ascii")
    command = [sys.executable, "-m", "distq", "worker", "--tasks", "jobs", "--worker-id", "wörker"]
    with (tmp_path / "out").open("w") as out, (tmp_path / "err").open("w") as err:
        worker = subprocess.Popen(command, env=env, stdout=out, stderr=err)
    try:
        with Executor(target.settings, host=False, max_attempts=1) as ex:
            assert ex.submit(jobs.say, "café").result(60) == "café"
            with pytest.raises(RemoteError, match="grüße"):
                ex.submit(jobs.fail_with, "grüße").result(60)
            assert ex.submit(jobs.say, "plain").result(60) == "plain"
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(30)
    said, printed = (tmp_path / "err").read_text(), (tmp_path / "out").read_text()
    assert code == 0, said
    assert "cannot be written" not in said and "Traceback" not in said, said
    assert "caf\\xe9\n" in printed and "plain\n" in printed, printed  # the task's own print()
    assert "worker exit." in printed, printed
    listed = run_distq(["dead-letters"], env)
    assert listed.returncode == 0, listed.stderr
    assert "w\\xf6rker" in listed.stdout and "gr\\xfc\\xdfe" in listed.stdout, listed.stdout


def test_commands_and_a_worker_run_over_a_redis_unix_socket(tmp_path: Path) -> None:
    """``unix://`` is a documented DISTQ_REDIS_URL: no TCP-only option may reach the socket."""
    sock = tmp_path / "r.sock"
    with LocalRedis(tmp_path, extra_args=["--unixsocket", str(sock)]) as server:
        server.start()
        url = f"unix://{sock}?db=0"
        target = Target(
            "redis",
            Settings(transport="redis", redis_url=url, lease_seconds=1.0),
            {"DISTQ_TRANSPORT": "redis", "DISTQ_REDIS_URL": url},
        ).fresh()
        assert status(target)["ready"] == 0
        queued = distq(target, "submit", "jobs:add", "1", "2")
        assert queued.returncode == 0, queued.stderr
        assert status(target)["ready"] == 1
        worker = Distq(["worker", "--tasks", "jobs", "--exit-when-idle", "2"], target.process_env())
        try:
            assert worker.wait(60) == 0, worker.output()
            assert "1 ok" in worker.output()
        finally:
            worker.stop(grace=3.0)
        assert status(target)["ready"] == 0
    gone = distq(target, "status")  # the server and its socket are gone
    assert gone.returncode == 3, gone.stderr
    assert f"cannot reach Redis at {sock}" in gone.stderr and "rediss://" not in gone.stderr


def test_a_redis_database_the_server_does_not_have_exits_2(tmp_path: Path) -> None:
    """A configuration error, not an outage: it exited 3 with the server's words alone."""
    with LocalRedis(tmp_path, password="pw-xyz", extra_args=["--databases", "4"]) as server:
        server.start()
        url = server.url.removesuffix("/0") + "/4"
        target = Target(
            "redis",
            Settings(transport="redis", redis_url=url),
            {"DISTQ_TRANSPORT": "redis", "DISTQ_REDIS_URL": url},
        )
        done = distq(target, "status")
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("distq: DISTQ_REDIS_URL (redis://:***@127.0.0.1:"), done.stderr
    assert "names database 4, which Redis at 127.0.0.1:" in done.stderr
    assert "pw-xyz" not in done.stderr and "Traceback" not in done.stderr


def distq_executor(target: Target) -> Executor:
    """An executor of the target's queue; on manager, a client of the hosted queues."""
    return Executor(target.settings, host=False)


@pytest.mark.parametrize("target", ["rabbitmq"], indirect=True)
def test_dead_letters_on_rabbitmq_never_counts_messages_as_letters(
    target: Target, hosted: Transport
) -> None:
    """A pack of tasks RabbitMQ dead-lettered whole (a client's reject, a policy's TTL)
    is one message and a letter per task: `dead-letters --limit 1` said "1 of 2 dead
    letters" of the 5 that `requeue-dead` then moved."""
    hosted.dead_letters()  # declares the queues
    codec, queue = Codec(), target.settings.queue
    bodies = [
        codec.seal_task(Task(name="jobs:add", args=[n, n], kwargs={}, reply_to=NO_REPLY))
        for n in range(5)
    ]
    with pika.BlockingConnection(pika.URLParameters(target.settings.amqp_url)) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish("", queue, bodies[0])
        packed = pika.BasicProperties(type=TASKS_TYPE)  # as a master packs many tasks
        channel.basic_publish("", queue, pack(bodies[1:]), properties=packed)
        for _ in range(2):  # rejected by a client: the broker dead-letters each whole
            method, _, _ = channel.basic_get(queue, auto_ack=False)
            assert method is not None
            channel.basic_reject(method.delivery_tag, requeue=False)
    deadline = time.monotonic() + 10
    while status(target)["dead"] < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status(target)["dead"] == 2  # messages: RabbitMQ counts no more
    shown = distq(target, "dead-letters", "--limit", "1")
    assert shown.returncode == 0, shown.stderr
    header = shown.stdout.splitlines()[0]
    assert "1 of 2 dead letters" not in header, header
    assert "of the 2 messages of the dead-letter queue" in header, header
    requeued = distq(target, "requeue-dead")
    assert requeued.stdout.startswith("requeued 5 dead letters"), requeued.stdout


def test_requeue_dead_cut_off_half_way_says_what_became_of_the_letters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Redis stopped after the first batch of letters moved: the command said only the
    transport's error, nothing of the letters moved already nor of the rest."""
    with LocalRedis(tmp_path) as server:
        server.start()
        settings = Settings(transport="redis", redis_url=server.url)
        server.client().rpush(
            f"distq:{settings.queue}:dead", *[b"raw %d" % n for n in range(MESSAGE_BATCH * 3 // 2)]
        )
        # in the second batch
        said = requeue_dead_stopped_at(monkeypatch, settings, MESSAGE_BATCH + 100, server.stop)
    assert "cannot reach Redis" in said or "Connection refused" in said, said
    assert f"; {MESSAGE_BATCH:,} dead letters were requeued before that" in said, said
    assert "the rest stay dead letters" in said, said
    # what those moved were, as a run to its end says: raw bytes, not distq's letters
    out = capsys.readouterr().out
    assert f"{MESSAGE_BATCH:,} of them unreadable (not a distq dead letter)" in out, out
