"""What only RabbitMQ has: its consumer timeout, and quorum queues across a crash.

The broker here checks ``consumer_timeout`` every second (``channel_tick_interval`` in
``advanced.config``; RabbitMQ 3.10 checks once a minute by default) and allows 5 s: a
delivery held longer closes its channel and goes to another consumer. Tasks three
times that long must still run once each: their leases move into lease records
(:mod:`distq.transport.rabbitmq_holds`).
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pika
import pika.exceptions
import pytest

from conftest import Target
from distq.config import Settings
from distq.console import Console
from distq.envelope import Result, Task
from distq.errors import MessageTooLarge, RemoteError
from distq.executor import Executor
from distq.master import JobReport, JobSpec, Master, Workload
from distq.transport import open_transport, rabbitmq, rabbitmq_link
from faults.conftest import MakeScenario, target_on
from faults.harness import FULL, assert_clean
from faults.proxy import Partition
from launch import LocalRabbitMQ
from procs import Distq

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.timeout(600)]

CONSUMER_TIMEOUT_MS = 5000
TICK = "[{rabbit, [{channel_tick_interval, 1000}]}].\n"


@pytest.fixture(scope="module")
def strict_rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRabbitMQ]:
    """A node that closes a channel holding a delivery for more than 5 s."""
    server = LocalRabbitMQ(
        tmp_path_factory.mktemp("strict-rabbitmq"),
        extra_config=[f"consumer_timeout = {CONSUMER_TIMEOUT_MS}"],
        advanced_config=TICK,
    )
    with server:
        yield server.start()


def test_the_broker_really_closes_a_channel_that_holds_a_delivery_too_long(
    strict_rabbitmq: LocalRabbitMQ,
) -> None:
    """The premise of the next test, checked with plain pika: it can fail."""
    connection = strict_rabbitmq.connect()
    try:
        channel = connection.channel()
        channel.queue_declare("premise")
        channel.basic_publish("", "premise", b"x")
        channel.basic_consume("premise", lambda *_: None)
        deadline = time.monotonic() + 3 * CONSUMER_TIMEOUT_MS / 1000
        while channel.is_open and time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.2)
        assert not channel.is_open, "the broker let a delivery be held past consumer_timeout"
    finally:
        connection.close()


def test_tasks_longer_than_the_consumer_timeout_run_once(
    strict_rabbitmq: LocalRabbitMQ, scenario: MakeScenario
) -> None:
    seconds = 3 * CONSUMER_TIMEOUT_MS / 1000
    s = scenario(
        target_on("rabbitmq", strict_rabbitmq.url),
        "tasks past consumer_timeout",
        f"tasks of {seconds:g} s on a broker whose consumer_timeout is "
        f"{CONSUMER_TIMEOUT_MS / 1000:g} s, checked every second",
    )
    master = s.master("--tasks", "3", "--task-delay", str(seconds), "--timeout", "120")
    workers = [s.worker() for _ in range(2)]
    figures = s.finish([master])
    assert_clean(figures, s)
    assert figures.duplicates_ignored == 0, s.outputs()  # no task ran twice
    for worker in workers:
        assert "timed out" not in worker.output() and "reconnecting" not in worker.output()


def test_a_message_over_the_brokers_max_message_size_fails_its_task_once(
    strict_rabbitmq: LocalRabbitMQ,
) -> None:
    """RabbitMQ refuses a message over its max_message_size (406, closing the channel)
    although DISTQ_MAX_MESSAGE_BYTES allows it: the task went back with the channel and
    ran again, without end (20 runs in 45 s); a failed task's dead letter, larger than
    the task, the same (input17). Now the worker learns the limit: the task runs once
    more and fails for good, saying why, and a dead letter keeps the start of the task."""
    limit = 65536
    target = target_on("rabbitmq", strict_rabbitmq.url)
    strict_rabbitmq.ctl("eval", f"application:set_env(rabbit, max_message_size, {limit}).")
    worker = Distq(["worker", "--tasks", "jobs"], target.process_env())
    try:
        with Executor(target.settings, task_timeout=90, max_attempts=1) as executor:
            big = executor.submit("jobs:repeat", "x", 100_000)
            with pytest.raises(RemoteError, match=r"over the limit of 65,536"):
                big.result(90)
            failed = executor.submit("jobs:fail_with", "y" * 63_000)  # its letter is larger
            with pytest.raises(RemoteError, match="ValueError"):
                failed.result(90)
            assert executor.submit("jobs:add", 1, 2).result(30) == 3
            # a task over the broker's limit: its future fails, the task is not sent again
            # and again (it was, 7 times a second, until its task_timeout)
            large = executor.submit("jobs:echo", "z" * 100_000)
            with pytest.raises(MessageTooLarge, match=r"over the 65,536 the broker takes"):
                large.result(30)
            with pytest.raises(MessageTooLarge):  # known now: refused at once
                executor.submit("jobs:echo", "z" * 100_000)
            assert executor.submit("jobs:add", 2, 3).result(30) == 5
        dead = subprocess.run(
            [sys.executable, "-m", "distq", "dead-letters", "--json"],
            env=target.process_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        refused = subprocess.run(
            [sys.executable, "-m", "distq", "submit", "jobs:add", "z" * 100_000, "1"],
            env=target.process_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )  # an input the broker refuses: exit 2, as one over DISTQ_MAX_MESSAGE_BYTES (diff17)
        assert refused.returncode == 2 and "max_message_size of 65,536" in refused.stderr, (
            refused.stderr
        )
        reasons = [letter["reason"] for letter in json.loads(dead.stdout)]
        assert len(reasons) == 2, reasons  # each task failed for good once
        assert any("ran, but its value cannot be sent back" in r for r in reasons), reasons
        assert any("the dead letter keeps the first" in r for r in reasons), reasons
        output = worker.output()  # before stop(), which removes it
    finally:
        worker.stop(grace=3.0)
        strict_rabbitmq.ctl("eval", "application:set_env(rabbit, max_message_size, 134217728).")
    assert output.count("the broker takes no message over 65,536 bytes") == 1, output[-3000:]
    assert output.count("Get task jobs:repeat") <= 2, output[-3000:]
    assert output.count("Get task jobs:fail_with") <= 2, output[-3000:]


def test_a_memory_alarm_is_said_when_it_blocks_publishing_and_when_it_clears(
    strict_rabbitmq: LocalRabbitMQ, caplog: pytest.LogCaptureFixture
) -> None:
    """A master whose broker raised a memory alarm sat silent for the 60 s a blocked
    publish waits, and a 20 s alarm passed without a word: nothing named the alarm."""
    settings = Settings(transport="rabbitmq", amqp_url=strict_rabbitmq.url, queue="alarmed")
    transport = open_transport(settings, "master")
    producer = transport.producer(transport.reply_queue("alarm"))
    enough = threading.Event()

    def publish() -> None:  # until told: the broker blocks a connection that publishes
        while not enough.is_set():
            producer.submit([b"x"])
            time.sleep(0.05)

    thread = threading.Thread(target=publish)
    try:
        strict_rabbitmq.ctl("set_vm_memory_high_watermark", "0.0001")
        try:
            thread.start()
            deadline = time.monotonic() + 30
            while "blocks publishing" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            enough.set()
            strict_rabbitmq.ctl("set_vm_memory_high_watermark", "0.4")
        thread.join(60)
        assert not thread.is_alive()
        deadline = time.monotonic() + 15
        while "takes publishing again" not in caplog.text and time.monotonic() < deadline:
            producer.reconcile()  # a call: the connection reads what the broker said
            time.sleep(0.2)
        said = [r.getMessage() for r in caplog.records if "publishing" in r.getMessage()]
        assert len(said) == 2, said
        assert said[0].startswith(f"RabbitMQ at 127.0.0.1:{strict_rabbitmq.port} blocks"), said
        assert said[1] == "RabbitMQ takes publishing again: its alarm cleared"
    finally:
        enough.set()
        producer.close()
        transport.close()


def test_an_alarm_longer_than_the_blocked_timeout_is_said_to_clear(
    strict_rabbitmq: LocalRabbitMQ,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An alarm outlasting pika's blocked-connection timeout (60 s; 2 s here): pika
    closes the blocked connection, the master reconnects and is blocked again. Before,
    the closed connection stayed among the blocked ones (a pika connection sits in
    reference cycles, and lives on), so the clearing was never said, nor the give-up."""
    monkeypatch.setattr(rabbitmq_link, "_BLOCKED_TIMEOUT", 2.0)
    settings = Settings(transport="rabbitmq", amqp_url=strict_rabbitmq.url, queue="alarmed2")
    transport = open_transport(settings, "master")
    producer = transport.producer(transport.reply_queue("alarm2"))
    assert isinstance(producer, rabbitmq.RabbitMQProducer)

    def until(done: Callable[[], bool], call: Callable[[], object], seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not done() and time.monotonic() < deadline:
            call()
            time.sleep(0.1)
        assert done(), caplog.text

    def said() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == rabbitmq.__name__]

    old = producer._link  # kept, as the reference cycles of pika's connection keep it
    try:
        strict_rabbitmq.ctl("set_vm_memory_high_watermark", "0.0001")
        try:  # publishing: the broker blocks the connection
            until(lambda: any("blocks" in m for m in said()), lambda: producer.submit([b"x"]), 30)
            producer.reconcile()  # waits for the confirms: pika gives up after 2 s; reconnects
            assert not old.connection.is_open and producer._link is not old
            blocked = rabbitmq_link._ALARM._blocked
            until(  # the new connection publishes, and is blocked too
                lambda: producer._link.connection._impl in blocked,
                lambda: producer.submit([b"y"]),
                30,
            )
        finally:
            strict_rabbitmq.ctl("set_vm_memory_high_watermark", "0.4")
        until(lambda: "takes publishing again" in caplog.text, producer.reconcile, 15)
        lines = said()
        assert [line.split(":")[-1] for line in lines][-1] == " its alarm cleared", lines
        gave_up = [line for line in lines if "gave up" in line]
        assert len(gave_up) == 1 and "blocked for 2 s" in gave_up[0], lines
    finally:
        old.close()
        producer.close()
        transport.close()


class Flaky(Workload[int]):
    """Tasks that fail once each (a retry through a delay queue), then succeed."""

    def tasks(self, count: int, reply_to: str) -> list[tuple[Task, int]]:
        self.next = getattr(self, "next", 0)
        out = []
        for _ in range(count):
            self.next += 1
            out.append((Task(name="jobs:flaky", args=[self.next], reply_to=reply_to), self.next))
        return out

    def name(self, entry: int) -> str:
        return f"flaky({entry})"

    def check(self, result: Result, entry: int) -> bool:
        return bool(result.value == entry * entry)


#: RabbitMQ 3.10 saves the registry of quorum queues (Ra's names) every 3 minutes: one
#: younger than that does not come back from a SIGKILL (see transport/rabbitmq.py).
RA_REGISTRY_SAVED_AFTER = 190.0


@pytest.mark.parametrize(
    "crash",
    [
        "restart",
        pytest.param(
            "sigkill",
            marks=pytest.mark.skipif(not FULL, reason="waits 3 minutes first: make faults"),
        ),
    ],
)
def test_quorum_queues_keep_retries_across_a_broker_restart(
    private_rabbitmq: LocalRabbitMQ, scenario: MakeScenario, tmp_path: Path, crash: str
) -> None:
    tasks = 200 if FULL else 60
    target = target_on("rabbitmq", private_rabbitmq.url, DISTQ_RABBITMQ_QUEUE_TYPE="quorum")
    how = {
        "restart": "quorum queues; the node restarted (SIGTERM, start) while retries wait "
        "in their delay queue",
        "sigkill": "quorum queues over 3 minutes old; SIGKILL of the node while retries wait "
        "in their delay queue, then restart",
    }[crash]
    s = scenario(target, f"broker {crash}, retries in flight (quorum)", how)
    if crash == "sigkill":
        _declare_then_age(target.settings)
    env = s.env(DISTQ_TEST_FLAKY_DIR=str(tmp_path))
    workers = [s.worker("--task", "jobs:flaky", env=env) for _ in range(2)]
    for worker in workers:  # both connected before the fault: none meets it at its start
        worker.wait_for(r"^Connect to rabbitmq")
    out = io.StringIO()
    report: list[JobReport] = []
    transport = open_transport(target.settings, "master")
    job = threading.Thread(
        target=lambda: report.append(
            Master(transport, Console(quiet=True, out=out, err=out)).run(
                JobSpec(tasks=tasks, timeout=180), Flaky()
            )
        )
    )
    job.start()
    try:
        _wait_for_retries(private_rabbitmq, target.settings)
        with s.fault():
            if crash == "sigkill":
                private_rabbitmq.kill()
            private_rabbitmq.restart()
        job.join(200)
    finally:
        transport.close()
    assert report, out.getvalue()
    f = s.figures
    f.tasks_submitted, f.tasks_lost = report[0].tasks, report[0].missing
    f.results_twice = max(0, report[0].ok + report[0].failed - report[0].tasks)
    f.duplicates_ignored = report[0].duplicates
    figures = s.finish([])
    assert (report[0].ok, report[0].missing, report[0].failed) == (tasks, 0, 0), (
        out.getvalue() + s.outputs()
    )
    assert_clean(figures, s)
    listing = private_rabbitmq.ctl("list_queues", "name", "type", "arguments")
    queue = target.settings.queue
    for name in (queue, f"{queue}.dead", f"{queue}.retry.500"):
        line = next(line for line in listing.splitlines() if line.startswith(name + "\t"))
        assert "\tquorum\t" in line, listing
    retry = next(line for line in listing.splitlines() if line.startswith(f"{queue}.retry.500\t"))
    assert '{"x-dead-letter-strategy","at-least-once"}' in retry, retry


def _declare_then_age(settings: Settings) -> None:
    """Declare the job's quorum queues (the retry queue too), then let RabbitMQ save them."""
    transport = open_transport(settings, "worker")
    try:
        consumer = transport.consumer("declare")
        consumer._retries.declare(consumer._link, 500)  # type: ignore[attr-defined]
        consumer.close()
    finally:
        transport.close()
    time.sleep(RA_REGISTRY_SAVED_AFTER)


def _wait_for_retries(server: LocalRabbitMQ, settings: Settings) -> None:
    """Until some retries wait in the 0.5 s delay queue (asked over AMQP: rabbitmqctl
    takes a second or two, longer than a retry waits there)."""
    name = f"{settings.queue}.retry.500"
    connection = server.connect()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            channel = connection.channel()
            try:
                if channel.queue_declare(name, passive=True).method.message_count > 0:
                    return
                channel.close()
            except pika.exceptions.ChannelClosedByBroker:
                pass  # not declared yet
            time.sleep(0.02)
    finally:
        connection.close()
    raise AssertionError(f"no retry waited in {name}")


HUNG_DRAIN_SECONDS = 3.0


@pytest.mark.parametrize("role", ["worker", "master"])
def test_sigterm_ends_a_process_whose_broker_hangs(
    private_rabbitmq: LocalRabbitMQ, role: str
) -> None:
    """A broker that hangs (paused, or a network cut without a reset: here a proxy that
    stops relaying) answers no Close: the worker (after ``worker exit``) and the master
    (first in a wait for confirms) used to block in pika's close until SIGKILLed. Each
    must exit 0 within its drain plus a few seconds of bounded closes."""
    target = target_on("rabbitmq", private_rabbitmq.url)
    with Partition(_port(target)) as partition:
        env = target.process_env(
            DISTQ_AMQP_URL=_via(target, partition.port),
            DISTQ_DRAIN_SECONDS=f"{HUNG_DRAIN_SECONDS:g}",
        )
        if role == "worker":
            proc = Distq(["worker", "--concurrency", "1"], env)
            started = r"^Connect to rabbitmq"
        else:  # no worker: the tasks wait in the queue, the master keeps submitting
            proc = Distq(["master", "--rate", "50", "--quiet"], env)
            started = r"^master .* transport"
        # the worker: its drain, then bounded closes (3 s each); the master: noticing the
        # stop (its I/O loop wakes every 5 s), its drain, a queue delete and closes
        bound = HUNG_DRAIN_SECONDS + 10 if role == "worker" else 25.0
        try:
            proc.wait_for(started, timeout=60)
            time.sleep(2.0)  # connected and at work
            partition.cut()
            time.sleep(2.0)
            proc.signal(signal.SIGTERM)
            began = time.monotonic()
            code = proc.wait(timeout=bound + 10)
            took = time.monotonic() - began
            out = proc.output()
        finally:
            proc.stop(grace=0)  # SIGKILL if still there: ours, by PID
    # the master's job was stopped before its end (no results: no worker): exit 1
    assert code == (0 if role == "worker" else 1), out
    assert took < bound, f"{took:.1f} s:\n{out}"


def _port(target: Target) -> int:
    port = urlsplit(target.env["DISTQ_AMQP_URL"]).port
    assert port is not None
    return port


def _via(target: Target, port: int) -> str:
    parts = urlsplit(target.env["DISTQ_AMQP_URL"])
    return urlunsplit(parts._replace(netloc=f"{parts.netloc.rpartition('@')[0]}@127.0.0.1:{port}"))


def test_long_tasks_in_lease_records_outlive_a_broker_restart(
    private_rabbitmq: LocalRabbitMQ,
) -> None:
    """Tasks running past their lease are held by lease records, which a worker renews
    on its slot's link. With the broker SIGKILLed and restarted (5 to 8 s here, within
    the records' two leases of life), the slots kept their broken links until their
    tasks ended: nobody renewed the records, they expired into the task queue, every
    task ran again in full, and the first runs' results were dropped (faults17: 4 tasks
    of 30 s, 8 runs, 62 s). Now the keeper connects again at its next renewal once the
    broker answers: each task runs once, and its result arrives."""
    delay = 40.0  # ends well after the broker is back: one that ends while it is away
    # cannot settle, and runs again (on every transport)
    env = target_on("rabbitmq", private_rabbitmq.url).process_env(DISTQ_LEASE_SECONDS="8")
    master = Distq(["master", "--tasks", "4", "--task-delay", str(delay), "--timeout", "150"], env)
    worker = Distq(["worker", "--concurrency", "4"], env)
    try:
        deadline = time.monotonic() + 30
        while worker.output().count("Get task") < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert worker.output().count("Get task") == 4, worker.output()
        # a lease and more: the keeper records a task at its first heartbeat a lease
        # after it first saw it (a heartbeat interval in), so each is in a record by now,
        # which lives 16 s from its last renewal: a restart of up to 10 s or so is within
        time.sleep(14.0)
        private_rabbitmq.kill()
        private_rabbitmq.restart()
        assert master.wait(timeout=120) == 0, master.output()
        took = float(master.wait_for(r"all 4 results in and correct in ([0-9.]+) s").group(1))
        output = worker.output()
    finally:
        worker.stop(grace=3.0)
        master.stop(grace=3.0)
    assert "reconnected to rabbitmq" in output, output
    assert output.count("Get task") == 4, output  # 8: each ran again in full
    assert took < 2 * delay, master.output()


def test_a_stopping_worker_settles_once_the_broker_is_back_within_its_drain(
    private_rabbitmq: LocalRabbitMQ, tmp_path: Path
) -> None:
    """SIGTERM while RabbitMQ was away, the task ending before it came back: the warm
    stop's drain did not wait for the broker (RabbitMQ's consumer could not settle on a
    new connection), the worker exited with "0 ok" and the result was dropped (rmq18b).
    It settles once the broker is back, within the drain, on a new link.

    The task ends on the test's cue, once ``stop_app`` has returned, and the drain is
    long: a 6 s task and the 20 s drain, on a loaded CI host whose ``rabbitmqctl`` calls
    take up to 20 s each, had no result in 60 s (the task may have ended before the
    SIGTERM, or the drain before ``start_app``)."""
    target = target_on("rabbitmq", private_rabbitmq.url)
    env = target.process_env(DISTQ_DRAIN_SECONDS="150")
    worker = Distq(["worker", "--tasks", "jobs", "--concurrency", "1"], env)
    cue = tmp_path / "end"
    try:
        worker.wait_for(r"^Connect to rabbitmq")
        with Executor(target.settings, task_timeout=180) as executor:
            future = executor.submit("jobs:wait_for_path", str(cue), "done")
            worker.wait_for(r"^Get task jobs:wait_for_path")
            worker.signal(signal.SIGTERM)  # a warm stop: the task runs to its end
            private_rabbitmq.ctl("stop_app")
            cue.touch()  # the task ends while RabbitMQ is away: its settle fails
            time.sleep(2.0)
            private_rabbitmq.ctl("start_app")
            assert future.exception(150) is None, worker.output()
            assert future.result() == "done"
        assert worker.wait(60) == 0
        output = worker.output()
    finally:
        worker.stop(grace=3.0)
    assert "worker exit. 1 ok" in output, output
    assert output.count("Get task jobs:wait_for_path") == 1, output
