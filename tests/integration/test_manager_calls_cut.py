"""Manager calls under way when their other end goes: a fetch whose worker left while it
waited for tasks, and a put whose master stopped while it was served."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import distq
from distq.config import Settings
from distq.envelope import NO_REPLY, Task, new_id
from distq.transport import Settlement, manager_wire, open_transport
from distq.transport.manager_broker import QueueBroker
from fake_master import fake_settings
from procs import Distq

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

_SRC = str(Path(distq.__file__).resolve().parents[1])


def _settings() -> Settings:
    return fake_settings(lease_seconds=60.0)


def _killed_while(settings: Settings, role: str, call: str, waiting: Callable[[], bool]) -> None:
    """A process that opens a transport of ``role`` to ``settings``'s master and makes
    ``call`` on it, SIGKILLed once ``waiting()`` says that call waits in the master;
    back once its close has reached the master."""
    host, port = settings.manager_address
    script = textwrap.dedent(
        f"""
        from distq.config import Settings
        from distq.transport import open_transport
        settings = Settings(transport="manager", authkey={settings.authkey!r},
                            manager_address=({host!r}, {port}), queue={settings.queue!r},
                            lease_seconds={settings.lease_seconds!r})
        open_transport(settings, {role!r}).{call}
        """
    )
    leaving = subprocess.Popen(
        [sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=_SRC)
    )
    try:
        deadline = time.monotonic() + 30
        while not waiting():
            assert leaving.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        leaving.kill()
        leaving.wait(10)
    time.sleep(0.5)  # its close reaches the master


def test_a_fetch_of_a_worker_that_left_hands_its_tasks_to_the_others_at_once() -> None:
    """A worker killed while its fetch waited for tasks: the master's thread serving it
    leased it the next task, and its reply went to a connection closed; the task waited
    out the 60 s lease while another worker fetched nothing. It goes back at once, and
    as it was: it came back flagged redelivered, though it had reached no worker, and the
    worker that got it counted one in distq_worker_redeliveries_total."""
    settings = _settings()
    hosted = open_transport(settings, "master")
    broker = hosted._broker  # type: ignore[attr-defined]
    assert isinstance(broker, QueueBroker)
    remote = None
    try:
        _killed_while(
            settings, "worker", 'consumer("gone").fetch(1, 60)', lambda: bool(broker._leases)
        )
        task = Task("jobs:add", [1, 2], NO_REPLY)
        hosted.producer(hosted.reply_queue(new_id())).submit([task.encode()])
        remote = open_transport(settings, "worker")
        got = remote.consumer("stays").fetch(1, 10)
        assert [d.body for d in got] == [task.encode()], broker.stats(settings.queue)
        assert [d.redelivered for d in got] == [False]
    finally:
        if remote is not None:
            remote.close()
        hosted.close()


def test_a_results_read_of_a_producer_that_left_puts_its_results_back_at_once() -> None:
    """A remote producer killed while its read of results waited: the master's thread
    serving it took the next result off its reply queue and sent it to a connection
    closed. The result goes back to the front of the reply queue, where the producer,
    connecting again (as an Executor does), reads it."""
    settings = _settings()
    hosted = open_transport(settings, "master")
    broker = hosted._broker  # type: ignore[attr-defined]
    assert isinstance(broker, QueueBroker)
    reply_to = hosted.reply_queue(new_id())
    remote = None
    try:
        _killed_while(
            settings,
            "client",
            f"producer({reply_to!r}).results(1, 60)",
            lambda: bool(getattr(broker._ready.get(reply_to), "_waiters", None)),
        )
        broker.put(reply_to, [b"the result"])
        time.sleep(0.5)  # the thread serving the producer that left takes it
        remote = open_transport(settings, "client")
        assert remote.producer(reply_to).results(1, 10) == [b"the result"]
    finally:
        if remote is not None:
            remote.close()
        hosted.close()


@pytest.mark.parametrize("taken", [True, False])
def test_a_submit_under_way_as_the_master_stops_says_whether_its_task_was_taken(
    taken: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`distq submit` whose put the master served as it stopped: the master cut the reply
    (a put that ran: its task taken, to end with the master unrun) or the call (one that
    came after the stop: not taken), and either way the submitter read "closed the
    connection ...; task T may be queued or not (`distq status` counts the ready tasks)",
    a status no master answers. The master now answers the put that it stopped, and
    whether it took the task."""
    settings = _settings()
    hosted = open_transport(settings, "master")
    broker = hosted._broker  # type: ignore[attr-defined]
    assert isinstance(broker, QueueBroker)
    entered, go = threading.Event(), threading.Event()
    put = broker.put

    def held_put(queue: str, bodies: list[bytes]) -> None:
        entered.set()
        assert go.wait(30)
        put(queue, bodies)

    host, port = settings.manager_address
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTQ_")}
    env.update(
        PYTHONPATH=_SRC,
        DISTQ_TRANSPORT="manager",
        DISTQ_MANAGER_ADDRESS=f"{host}:{port}",
        DISTQ_AUTHKEY=(settings.authkey or b"").decode(),
        DISTQ_QUEUE=settings.queue,
    )
    closing = threading.Thread(target=hosted.close)
    if taken:  # served before the stop, answered after it
        broker.put = held_put  # type: ignore[method-assign,assignment]
        submit = Distq(["submit", "jobs:add", "1", "2"], env)
        assert entered.wait(30), submit.output()
        closing.start()
        closing.join(30)
        go.set()
    else:  # the master stops as it receives the put: not served
        recv = manager_wire.ServedConnection.recv
        stopped = hosted._server.stop_event  # type: ignore[attr-defined]

        def stop_at_put(conn: manager_wire.ServedConnection) -> Any:
            request = recv(conn)
            if isinstance(request, tuple) and request[1:2] == ("put",):
                stopped.set()
            return request

        monkeypatch.setattr(manager_wire.ServedConnection, "recv", stop_at_put)
        submit = Distq(["submit", "jobs:add", "1", "2"], env)
    try:
        code = submit.wait(30)
        output = submit.output()
    finally:
        submit.stop(grace=3.0)
        if not taken:
            hosted.close()
    assert code == 3, output
    said = "it took its 1 task, which ends with it" if taken else "it did not take its 1 task"
    assert "task(s)" not in output, output
    assert f"the master at {host}:{port} stopped" in output and said in output, output
    assert "distq status" not in output, output


def _task_waiters(broker: QueueBroker, queue: str) -> bool:
    """Whether a call waits in the master for a task of ``queue``."""
    return bool(getattr(broker._ready.get(queue), "_waiters", None))


def test_a_settle_then_fetch_of_a_worker_that_left_as_it_waited_settled_and_holds_nothing() -> None:
    """A worker killed while its settle-then-fetch waited in the master for the next
    task (manlat36: one call where a lone task's worker made two): its settle ran before
    the wait (its result is out), and the task that came next goes to another worker
    at once, not after the 60 s lease of the one that left."""
    settings = _settings()
    hosted = open_transport(settings, "master")
    broker = hosted._broker  # type: ignore[attr-defined]
    assert isinstance(broker, QueueBroker)
    producer = hosted.producer(hosted.reply_queue(new_id()))
    settle = (
        '__import__("distq.transport").transport.Settlement('
        '__import__("distq.transport").transport.Delivery(body=b"t", tag=1), '
        f'reply_to={producer.reply_to!r}, result=b"r:gone")'
    )
    remote = None
    try:
        _killed_while(
            settings,
            "worker",
            f'consumer("gone").settle_then_fetch([{settle}], 1, 60)',
            lambda: _task_waiters(broker, settings.queue),
        )
        assert producer.results(1, 5) == [b"r:gone"]
        task = Task("jobs:add", [1, 2], NO_REPLY)
        producer.submit([task.encode()])
        remote = open_transport(settings, "worker")
        got = remote.consumer("stays").fetch(1, 10)
        assert [d.body for d in got] == [task.encode()], broker.stats(settings.queue)
    finally:
        if remote is not None:
            remote.close()
        hosted.close()


def test_a_settle_then_fetch_waiting_as_its_master_stops_is_told_its_batch_settled() -> None:
    """A master that stops while a worker's settle-then-fetch waits in it for the next
    task (its job done: the last result came in that settle) answers it, with no tasks:
    the settle ran. A connection closed instead told the worker nothing, and it counted
    its batch handed back, whose results had gone out."""
    settings = _settings()
    hosted = open_transport(settings, "master")
    broker = hosted._broker  # type: ignore[attr-defined]
    assert isinstance(broker, QueueBroker)
    producer = hosted.producer(hosted.reply_queue(new_id()))
    producer.submit([b"last"])
    remote = open_transport(settings, "worker")
    consumer = remote.consumer("w1")
    answers: list[object] = []
    try:
        (last,) = consumer.fetch(1, 10)
        done = [Settlement(last, reply_to=producer.reply_to, result=b"r:last")]

        def settle() -> None:
            try:
                answers.append(consumer.settle_then_fetch(done, 1, 20.0))
            except Exception as exc:
                answers.append(exc)

        waiting = threading.Thread(target=settle)
        waiting.start()
        assert producer.results(1, 10) == [b"r:last"]  # settled before the wait
        deadline = time.monotonic() + 10
        while not _task_waiters(broker, settings.queue):
            assert waiting.is_alive() and time.monotonic() < deadline, answers
            time.sleep(0.02)
        hosted.close()
        waiting.join(10)
        assert answers == [[]]
    finally:
        remote.close()
        hosted.close()
