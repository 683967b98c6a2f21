"""Manager-only behaviour; the contract suite covers what every transport shares."""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import gc
import io
import logging
import os
import pickle
import re
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from multiprocessing import connection, managers
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

import distq
from conftest import REPO, hosted_and_remote, requeue_dead_stopped_at
from distq import commands
from distq.config import CONNECT_TIMEOUT, Settings
from distq.console import Console
from distq.envelope import NO_REPLY, DeadLetter, Task
from distq.errors import AuthenticationFailed, ConfigError, ConnectionFailed, TransportError
from distq.transport import Settlement, Transport, manager, manager_wire, open_transport
from endpoints import link_local_or_skip
from fake_master import accepting, fake_master, fake_settings, manager_env
from launch import every_thread_stopped, free_port
from procs import Distq
from relay import SilentRelay
from seam import fetch_n, results_n

pytestmark = pytest.mark.integration


#: Where this run imports distq from: its subprocesses run the same code.
_SRC = str(Path(distq.__file__).resolve().parents[1])


def _settings(queue: str) -> Settings:
    return fake_settings(queue)


def _no_delay(conn: Any) -> bool:
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def _master_and_worker(
    queue: str | Settings,
) -> contextlib.AbstractContextManager[tuple[Transport, Transport]]:
    """A master's transport hosting ``queue`` (or on these settings) and a worker's
    connected to it, closed after."""
    return hosted_and_remote(_settings(queue) if isinstance(queue, str) else queue)


def test_worker_connections_send_large_batches_without_nagle_delay() -> None:
    # multiprocessing writes a message over 16 KiB in two send() calls; with Nagle on,
    # the second waits ~40 ms for a delayed ACK, so every connection must be no-delay
    with _master_and_worker("nodelay") as (hosted, remote):
        producer = hosted.producer("nodelay.results")
        bodies = [bytes([65 + i % 26]) * 1000 for i in range(64)]
        producer.submit(bodies)
        consumer = remote.consumer("c1")
        got = fetch_n(consumer, 64)
        consumer.settle([Settlement(d, reply_to=producer.reply_to, result=d.body) for d in got])
        assert sorted(results_n(producer, 64)) == sorted(bodies)
        assert _no_delay(consumer._broker._tls.connection)  # type: ignore[attr-defined]
        consumer.close()
        producer.close()


def test_a_master_that_ends_holding_dead_letters_or_tasks_says_they_end_with_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """On manager the queues live in the hosting master's memory: a job's failures
    vanished with it, and `dead-letters` / `requeue-dead` after a fix found nothing,
    without a word (Redis and RabbitMQ keep them); so did the tasks `distq submit`
    queued on a master whose own job then ended, though `submit` had printed their ids
    (identity10)."""
    with _master_and_worker("ending") as (hosted, remote):
        producer = hosted.producer("ending.results")
        mine = b'{"args":[{"reply_to":"elsewhere"}],"reply_to":"ending.results","attempt":1}'
        producer.submit([b"a", b"b", b"c", b"d", b"e", b"f", mine])  # the host's own: not counted
        consumer = remote.consumer("c1")
        got = fetch_n(consumer, 5)  # f and mine stay ready
        consumer.settle([Settlement(d, dead_letter=b"letter") for d in got[:2]])
        consumer.settle([Settlement(got[2], reply_to=producer.reply_to, result=b"r")])
        consumer.settle([Settlement(got[3], retry=b"d2", retry_delay=60.0)])  # delayed
        # got[4] stays leased; the result waits in the reply queue: not a task
        producer.close()
        caplog.clear()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [
        "2 dead letters of queue 'ending' end with this process: on the manager transport "
        "they live in the memory of the master that hosts the queues. Read or requeue them "
        "while it runs (distq dead-letters, distq requeue-dead), or use Redis or RabbitMQ, "
        "which keep them",
        "3 tasks of queue 'ending', queued or running, end with this process: on the "
        "manager transport the queues live in the memory of the master that hosts them, so a "
        "task another client submits (distq submit, an executor) runs only while it runs (a "
        "--rate master, an open Executor); Redis and RabbitMQ keep them",
    ]
    caplog.clear()
    with _master_and_worker("clean"):
        pass  # none held: nothing said
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    with _master_and_worker("one") as (hosted, remote):  # it said "1 dead letter(s) ... end"
        producer = hosted.producer("one.results")
        producer.submit([b"a", b"b"])
        consumer = remote.consumer("c1")
        got = fetch_n(consumer, 2)
        consumer.settle([Settlement(got[0], dead_letter=b"letter")])  # got[1] stays leased
        producer.close()
        caplog.clear()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert [line.split(": on the")[0] for line in warned] == [
        "1 dead letter of queue 'one' ends with this process",
        "1 task of queue 'one', queued or running, ends with this process",
    ], warned


def _calls_of(consumer: Any) -> list[str]:
    """The names of the calls ``consumer`` makes to its master from now on."""
    calls: list[str] = []
    proxy = consumer._broker
    call = proxy._callmethod

    def counted(name: str, args: tuple[Any, ...] = (), kwds: dict[str, Any] | None = None) -> Any:
        calls.append(name)
        return call(name, args, kwds or {})

    proxy._callmethod = counted
    return calls


def test_settle_then_fetch_is_one_call_to_the_master() -> None:
    with _master_and_worker("settlefetch") as (hosted, remote):
        producer = hosted.producer("settlefetch.results")
        producer.submit([b"a", b"b", b"c", b"d"])
        consumer = remote.consumer("c1")
        first = fetch_n(consumer, 2)
        calls = _calls_of(consumer)
        done = [Settlement(d, reply_to=producer.reply_to, result=b"r" + d.body) for d in first]
        nxt = consumer.settle_then_fetch(done, 5)
        assert calls == ["settle_fetch"]
        assert [d.body for d in nxt] == [b"c", b"d"]
        assert sorted(results_n(producer, 2)) == [b"ra", b"rb"]
        consumer.close()
        producer.close()


@pytest.mark.parametrize("older", [False, True])
def test_a_batch_with_a_retry_is_one_call_that_says_which_were_late(
    monkeypatch: pytest.MonkeyPatch, older: bool
) -> None:
    """A batch with a retry or dead letter asks which were late (their retries not
    published); it took a settle and a fetch, two calls, each time (late21 F2). A master
    from before that call (``older``) is asked in two calls, once it refused the one."""
    if older:
        exposed = tuple(name for name in manager_wire.EXPOSED if name != "settle_fetch_late")
        monkeypatch.setattr(manager_wire, "EXPOSED", exposed)
    with _master_and_worker(replace(_settings("late"), lease_seconds=1.0)) as (hosted, remote):
        producer = hosted.producer("late.results")
        producer.submit([b"a", b"b", b"c"])
        stalled = remote.consumer("stalled")
        (late,) = fetch_n(stalled, 1)
        consumer = remote.consumer("c1")
        (other,) = fetch_n(consumer, 1)
        consumer.settle_then_fetch([Settlement(other, retry=b"b-again")], 1)  # in time
        assert not consumer.late
        consumer.close()
        calls = _calls_of(stalled)
        # its lease (1 s) lapses: the master's reaper puts it back beside "c" and "b-again".
        # Waited for, not slept past (1.6 s): this process (the master) stopped over half
        # a lease around the deadline stood still, and the lease gets its time back
        # (once), so after 1.6 s it had not lapsed yet (stopped 0.8 s from 0.85 s on)
        deadline = time.monotonic() + 10
        while hosted.stats().ready < 3:
            assert time.monotonic() < deadline, "the lease never lapsed"
            time.sleep(0.05)
        copies = stalled.settle_then_fetch([Settlement(late, retry=b"a-again")], 5)
        assert stalled.late == {late.tag}
        expected = ["settle_fetch_late", "settle", "fetch"] if older else ["settle_fetch_late"]
        assert calls == expected and sorted(d.body for d in copies) == [b"a", b"b-again", b"c"]
        del calls[:]
        settled = [Settlement(d, reply_to=producer.reply_to, result=b"r") for d in copies[1:]]
        stalled.settle_then_fetch([Settlement(copies[0], retry=b"x"), *settled], 5)  # in time
        assert calls == (["settle", "fetch"] if older else ["settle_fetch_late"])
        assert not stalled.late
        stalled.close()
        producer.close()


def test_a_master_stopping_under_a_waiting_fetch_reads_as_closed() -> None:
    settings = _settings("stopping")
    hosted = open_transport(settings, "master")
    remote = open_transport(settings, "worker")
    consumer = remote.consumer("c1")
    try:
        assert consumer.fetch(5, 0.1) == []
        threading.Timer(0.2, hosted.close).start()
        with pytest.raises(TransportError, match="closed the connection"):
            for _ in range(10):  # the fetch waiting when the master stops, then the next
                consumer.fetch(5, 0.5)
    finally:
        remote.close()


def test_a_fetch_waiting_as_its_master_closes_reads_as_closed_not_as_answered() -> None:
    # a fetch waiting for tasks as its master closed was answered after (an empty batch):
    # a worker whose other slot had lost that master took it for back, and said
    # "reconnected to master ... after 0.0 s" after the master's "master exit"
    settings = _settings("closingwait")
    hosted = open_transport(settings, "master")
    remote = open_transport(settings, "worker")
    consumer = remote.consumer("c1")
    try:
        assert consumer.fetch(5, 0.1) == []  # connected
        threading.Timer(0.3, hosted.close).start()
        with pytest.raises(TransportError, match="closed the connection"):
            consumer.fetch(5, 3.0)  # waiting as the master closes
    finally:
        remote.close()


def test_a_closing_master_answers_no_first_request() -> None:
    # a connection authenticated before the master closed had its first request (a
    # worker's connect, its proxy's creation) answered after it: a reconnect that went
    # through to a master that had left
    settings = _settings("closingfirst")
    hosted = open_transport(settings, "master")
    with _authenticated(settings) as late:
        hosted.close()
        late.send((None, "dummy", (), {}))
        try:
            answer: object = late.recv()
        except (EOFError, ConnectionResetError) as exc:
            answer = exc
    assert isinstance(answer, EOFError | ConnectionResetError), answer


def test_a_closed_master_serves_no_request_of_a_connected_worker() -> None:
    # a connection being served when the master closed took one more request: a worker's
    # next fetch leased it a task of the master that had left, and ran it for nobody
    settings = _settings("closing")
    hosted = open_transport(settings, "master")
    remote = open_transport(settings, "worker")
    consumer = remote.consumer("c1")
    try:
        assert consumer.fetch(5, 0.1) == []  # connected, and idle
        hosted.producer(hosted.reply_queue("gone")).submit([b"t1", b"t2"])
        hosted.close()
        got: list[Any] = []
        with pytest.raises(TransportError, match="closed the connection"):
            for _ in range(3):
                got += consumer.fetch(5, 0.1)
        assert got == []
    finally:
        remote.close()


def test_a_settle_after_its_master_stopped_reads_as_closed_not_as_done() -> None:
    # the stopping master ended a connection with one stray reply (None), which the next
    # call read as its own: a settle took it for done, its results never published
    settings = _settings("settling")
    hosted = open_transport(settings, "master")
    remote = open_transport(settings, "worker")
    consumer = remote.consumer("c1")
    try:
        producer = hosted.producer(hosted.reply_queue("job"))
        producer.submit([b"t1"])
        (delivery,) = consumer.fetch(1, 1.0)
        threading.Timer(0.2, hosted.close).start()
        with pytest.raises(TransportError, match="closed the connection"):
            consumer.fetch(5, 0.6)  # waiting when the master stopped: no answer
        with pytest.raises(TransportError):  # closed, or refused: the master is gone
            consumer.settle([Settlement(delivery, reply_to=producer.reply_to, result=b"r")])
    finally:
        remote.close()


def test_a_submit_after_its_master_stopped_reads_as_closed_not_as_queued() -> None:
    # the stray reply answered a remote producer's next put: `distq submit` printed the
    # id of a task never queued
    settings = _settings("submitting")
    hosted = open_transport(settings, "master")
    remote = open_transport(settings, "worker")
    producer = remote.producer(remote.reply_queue("job"))
    try:
        threading.Timer(0.2, hosted.close).start()
        with pytest.raises(TransportError, match="closed the connection"):
            producer.results(5, 0.6)  # waiting when the master stopped: no answer
        with pytest.raises(TransportError):  # closed, or refused: the master is gone
            producer.submit([b"t1"])
    finally:
        producer.close()
        remote.close()


@pytest.mark.timeout(90)
def test_a_keepers_renewal_on_a_connection_gone_silent_goes_out_again_within_the_lease() -> None:
    # the keeper renews every running slot's lease on one connection of its own; gone
    # silent (no RST: a NAT's state lost, a vanished host), its renewal waited for the
    # whole REPLY_TIMEOUT (30 s), and every running task's lease lapsed meanwhile: a
    # copy of each went to other workers, which ran it too
    settings = replace(_settings("silentkeeper"), lease_seconds=3.0)
    hosted = open_transport(settings, "master")
    relay = SilentRelay(settings.manager_address)
    remote = open_transport(replace(settings, manager_address=relay.address), "worker")
    try:
        hosted.producer(hosted.reply_queue("job")).submit([b"long"])
        consumer = remote.consumer("c1")
        assert len(consumer.fetch(1, 1.0)) == 1
        remote.heartbeat([consumer])  # the keeper's connection
        relay.silence()
        started = time.monotonic()
        renewed = None
        while renewed is None and time.monotonic() - started < 40:
            try:
                remote.heartbeat([consumer])  # as the keeper does, each tick until it goes out
            except TransportError:
                time.sleep(0.1)
            else:
                renewed = time.monotonic() - started
        assert renewed is not None and renewed < settings.lease_seconds - 1
        other = hosted.consumer("c2")
        time.sleep(settings.lease_seconds - renewed)  # past the lease it had before
        assert other.fetch(1, 0.5) == []  # not lapsed: the task runs once
    finally:
        remote.close()
        relay.close()
        hosted.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("call", ["release", "settle"])
def test_a_keepers_hand_back_on_a_connection_gone_silent_gives_up_within_the_lease(
    call: str,
) -> None:
    # the keeper hands back a long batch's tasks not started (release) and settles those
    # it ran (settle) on its thread's connection, which its renewals use too; gone silent,
    # a renewal gave up within a third of the lease, but a hand-back waited the whole
    # REPLY_TIMEOUT (30 s): the worker's other leases lapsed meanwhile (their tasks ran
    # again elsewhere), and a SIGTERM waited for it
    settings = replace(_settings("silenthandback"), lease_seconds=3.0)
    hosted = open_transport(settings, "master")
    relay = SilentRelay(settings.manager_address)
    remote = open_transport(replace(settings, manager_address=relay.address), "worker")
    keeper = concurrent.futures.ThreadPoolExecutor(1)  # one thread, as a worker's keeper
    try:
        producer = hosted.producer(hosted.reply_queue("job"))
        producer.submit([b"ran", b"not started"])
        consumer = remote.consumer("c1")
        ran, rest = fetch_n(consumer, 2)
        keeper.submit(remote.heartbeat, [consumer]).result(10)  # each tick, as the keeper
        relay.silence()
        settled = [Settlement(ran, reply_to=producer.reply_to, result=b"r")]
        started = time.monotonic()
        with pytest.raises(TransportError, match="did not answer within"):
            if call == "release":
                keeper.submit(consumer.release, [rest]).result(60)
            else:
                keeper.submit(consumer.settle, settled).result(60)
        took = time.monotonic() - started
        assert took < settings.lease_seconds - 1, f"{took:.1f} s"
        keeper.submit(remote.heartbeat, [consumer]).result(10)  # on a new connection
    finally:
        keeper.shutdown()
        remote.close()
        relay.close()
        hosted.close()


_env = manager_env


@contextlib.contextmanager
def _killed_after(process: Distq) -> Iterator[Distq]:
    """``process`` for the block, killed after (it need not finish its work)."""
    try:
        yield process
    finally:
        process.stop(grace=0)


@contextlib.contextmanager
def _master_process(env: dict[str, str], *args: str) -> Iterator[Distq]:
    """A ``distq master`` process serving on ``env``'s address, with ``args`` (by default
    one task and a 60 s timeout), once it says its transport; killed after."""
    with _killed_after(Distq(["master", *(args or _ONE_TASK)], env)) as master:
        master.wait_for(r"^master .* transport")
        yield master


_ONE_TASK = ("--tasks", "1", "--timeout", "60")
#: A master that waits for workers that never come: its tasks stay queued.
_WAITING = ("--tasks", "1", "--wait-workers", "99", "--timeout", "170")


def test_a_worker_reconnects_to_a_master_restarted_at_the_same_address() -> None:
    # the masters are processes: a master restarts as a new process on the same port
    settings = _settings("restarted")
    env = _env(settings)
    with (
        _master_process(env) as first,
        contextlib.closing(open_transport(settings, "worker")) as remote,
    ):
        consumer = remote.consumer("c1")
        assert len(fetch_n(consumer, 1)) == 1
        first.signal(signal.SIGKILL)
        first.wait(10)
        with pytest.raises(TransportError):
            for _ in range(10):
                consumer.fetch(5, 0.2)
        consumer.close()  # what a worker slot does after an error, on the same thread
        with _master_process(env):
            again = remote.consumer("c1")  # the slot's next consumer, same thread
            (task,) = fetch_n(again, 1)
            assert Task.decode(task.body).reply_to.startswith(f"{settings.queue}.results.")
            again.close()


def test_a_transport_opened_after_one_closed_on_a_master_gone_answers_its_first_call() -> None:
    """A worker-side transport closed after its master was SIGKILLed, a consumer of it
    never closed: the calling thread's connection to that address stayed open, shared by
    every proxy of the address, and the first call of the next transport this thread
    opened to a master started again there (another key, another job) failed on it:
    "closed the connection", where that master was up (a test starting masters on a port
    an earlier one used failed so, under load)."""
    first_settings = _settings("gone")
    with _master_process(_env(first_settings)) as first:
        remote = open_transport(first_settings, "worker")
        assert len(fetch_n(remote.consumer("c0"), 1)) == 1
        first.signal(signal.SIGKILL)
        first.wait(10)
        remote.close()  # its consumer left as it was
    settings = replace(_settings("again"), manager_address=first_settings.manager_address)
    with (
        _master_process(_env(settings)),
        contextlib.closing(open_transport(settings, "worker")) as again,
    ):
        consumer = again.consumer("c0")
        assert len(fetch_n(consumer, 1)) == 1
        consumer.close()


def test_a_producer_and_a_consumer_close_quietly_once_their_master_restarted() -> None:
    # closed after a call failed as their master went, with another master up by then
    # (an executor closed, `distq submit --wait` interrupted, in its reconnect's backoff):
    # the close's call reached the new master, which knows no object of theirs, and its
    # RemoteError, a multi-line remote traceback, went on to the caller ("could not close
    # the producer of the executor: ... Traceback ..."), where a master gone was quiet
    settings = _settings("closedlate")
    env = _env(settings)
    with (
        _master_process(env) as first,
        contextlib.closing(open_transport(settings, "client")) as remote,
    ):
        producer = remote.producer(remote.reply_queue("late"))
        consumer = remote.consumer("c1")
        first.signal(signal.SIGKILL)
        first.wait(10)
        with pytest.raises(TransportError):
            producer.results(1, 0.1)
        with _master_process(env):  # the master, started again
            producer.close()
            consumer.close()


@contextlib.contextmanager
def _killed_with_a_task(
    settings: Settings, env: dict[str, str]
) -> Iterator[tuple[Any, Any, concurrent.futures.ThreadPoolExecutor]]:
    """A worker-side transport, a consumer of it holding a task of a master process, and
    a keeper thread (one, as a worker's) that renewed that lease once; then the master
    SIGKILLed. Yields (transport, consumer, keeper)."""
    keeper = concurrent.futures.ThreadPoolExecutor(1)
    try:
        with (
            _master_process(env) as first,
            contextlib.closing(open_transport(settings, "worker")) as remote,
        ):
            old = remote.consumer("c0")
            assert len(fetch_n(old, 1)) == 1
            keeper.submit(old.heartbeat).result(10)
            first.signal(signal.SIGKILL)
            first.wait(10)
            yield remote, old, keeper
    finally:
        keeper.shutdown()


def test_one_renewal_for_all_slots_passes_over_a_slot_of_the_master_before() -> None:
    """The keeper renews every slot at once; it sent the call through the first slot's
    proxy: one still in a task of the master before a restart made every renewal fail,
    and the other slots' tasks ran twice. An id the new master does not know is passed
    over, and the keeper's own proxy is made again after its failure."""
    # a 2 s lease: renewed every 0.25 s, it outlives a stall of this process of 1.75 s
    # (the master, a process of its own, runs on); a 1 s lease lapsed in one of 0.75 s
    settings = replace(_settings("batched"), lease_seconds=2.0)
    env = _env(settings)
    with _killed_with_a_task(settings, env) as (remote, old, keeper), _master_process(env):
        with contextlib.suppress(TransportError):  # this thread's connection, stale
            remote.consumer("c-probe").fetch(1, 0)
        new = remote.consumer("c1")
        (held,) = fetch_n(new, 1)
        other = remote.consumer("c2")
        for _ in range(12):  # three seconds, a lease and a half: renewed every 0.25 s
            with contextlib.suppress(TransportError):  # the keeper's stale proxy, once
                keeper.submit(remote.heartbeat, [old, new]).result(10)
            assert other.fetch(1, 0.25) == [], "the renewed task went to another slot"
        new.release([held])
        for consumer in (new, other):
            consumer.close()


def test_a_workers_keeper_thread_renews_leases_again_after_its_master_restarted() -> None:
    """The keeper renews long batches' leases from its own thread, over that thread's
    connection. A connection lost with its master was kept: after a restart every renewal
    failed ("Broken pipe") for the worker's life, so each task longer than the lease ran
    again and again; and a call for a consumer of the old master printed its traceback."""
    settings = _settings("kept")
    env = _env(settings)
    with _killed_with_a_task(settings, env) as (remote, old, keeper):
        with pytest.raises(TransportError):
            keeper.submit(old.heartbeat).result(10)
        with _master_process(env):
            with pytest.raises(TransportError) as unknown:
                keeper.submit(old.heartbeat).result(10)
            assert "no longer knows this consumer: it restarted since" in str(unknown.value)
            assert "Traceback" not in str(unknown.value)
            with contextlib.suppress(TransportError):
                old.close()  # the slot's close after its error
            new = remote.consumer("c1")
            assert len(fetch_n(new, 1)) == 1
            keeper.submit(new.heartbeat).result(10)  # before: BrokenPipeError, for good
            new.close()


def test_requeue_dead_with_a_limit_past_the_letters_moves_each_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A worker that cannot run a task dead-letters it again at once: with ``--limit``
    above the letters there, the command met it again, moved it again and said
    "requeued 3 dead letters" of 2 (one task run up to N times)."""
    settings = _settings("again")
    with _master_and_worker(settings) as (hosted, remote):
        producer = hosted.producer(hosted.reply_queue("job"))
        bodies = [Task(name="nosuch", args=[n], reply_to=NO_REPLY).encode() for n in (1, 2)]
        producer.submit(bodies)
        consumer = remote.consumer("w")

        def dead_letter_what_is_queued() -> None:  # what a worker without the task does
            deliveries = consumer.fetch(10, 0.0)
            consumer.settle(
                [
                    Settlement(d, dead_letter=DeadLetter(d.body, "unknown", "again", "w").encode())
                    for d in deliveries
                ]
            )

        dead_letter_what_is_queued()
        assert remote.stats().dead == 2
        plain = commands.reviver

        def racing(codec: Any, unopened: Any, malformed: Any) -> Callable[[DeadLetter], bytes]:
            revive = plain(codec, unopened, malformed)

            def each(letter: DeadLetter) -> bytes:
                dead_letter_what_is_queued()  # the letter moved before dies again
                return revive(letter)

            return each

        monkeypatch.setattr(commands, "reviver", racing)
        args = argparse.Namespace(limit=5)
        console = Console(out=io.StringIO(), err=io.StringIO())
        commands._requeue_dead(args, remote, settings, console)
        assert "requeued 2 dead letters onto queue 'again'" in capsys.readouterr().out
        consumer.close()
        producer.close()


def test_requeue_dead_cut_off_part_way_counts_the_letters_moved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The master stopped after 3 of 7 letters moved: the command said "any letters moved
    before that", not how many (the transport's count was lost with the error; Redis's
    and RabbitMQ's errors carry it)."""
    settings = _settings("cutoff")
    hosted = open_transport(settings, "master")
    try:
        broker = hosted._broker  # type: ignore[attr-defined]
        broker.put(f"{settings.queue}.dead", [b"raw %d" % n for n in range(7)])
        # 3 moved: the master closes as the 4th goes
        said = requeue_dead_stopped_at(monkeypatch, settings, 4, hosted.close)
    finally:
        hosted.close()
    assert "closed the connection" in said, said
    assert "; 3 dead letters were requeued before that, the rest stay dead letters" in said, said


def test_requeue_dead_cut_off_part_way_says_what_the_letters_moved_were(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Cut off after 3 of 7 letters moved, of which 2 malformed and 1 unreadable: the
    command said how many moved, not that those went back as they were (a run to its end
    says so, and exits 1 for the malformed)."""
    settings = _settings("cutoffsaid")
    hosted = open_transport(settings, "master")
    try:
        broker = hosted._broker  # type: ignore[attr-defined]
        malformed = DeadLetter(body=b"garbage", reason="why", queue="q", worker="w").encode()
        letters = [malformed, b"raw", malformed, *[malformed] * 4]
        broker.put(f"{settings.queue}.dead", letters)
        # 3 moved: the master closes as the 4th goes
        said = requeue_dead_stopped_at(monkeypatch, settings, 4, hosted.close)
    finally:
        hosted.close()
    assert "; 3 dead letters were requeued before that" in said, said
    said = capsys.readouterr().out
    assert "2 of them are not tasks any worker can run: they went back as they" in said, said
    assert "1 of them unreadable (not a distq dead letter)" in said, said


@contextlib.contextmanager
def _silent_listener(address: tuple[str, int]) -> Iterator[None]:
    """A TCP server on ``address`` that accepts every connection and never sends a byte:
    what a frozen master, or another service on the port (e.g. Redis), looks like."""
    held: list[socket.socket] = []
    try:
        with accepting(address, held.append):
            yield
    finally:
        for conn in held:
            conn.close()


@contextlib.contextmanager
def _stopped(master: Distq) -> Iterator[None]:
    """``master`` frozen with SIGSTOP (its port still accepts connections), then resumed.

    Frozen means every thread of it stopped: the kernel stops them one by one, and on a
    loaded machine one may still answer a request sent right after the signal."""
    master.signal(signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 10
        while not every_thread_stopped(master.proc.pid):
            assert time.monotonic() < deadline, "the master did not stop within 10 s"
            time.sleep(0.01)
        yield
    finally:
        master.signal(signal.SIGCONT)


#: Each command's arguments, and how long it may take to give up (generous: CI is loaded).
#: The commands have the default connect timeout; a worker its --connect-timeout, and an
#: attempt in progress when that runs out ends after manager_wire.CONNECT_TIMEOUT.
_WORKER_PATIENCE = 2.0
_GIVING_UP: dict[str, tuple[list[str], float]] = {
    "status": (["status"], 4 * CONNECT_TIMEOUT),
    "submit": (["submit", "mod:fn", "1"], 4 * CONNECT_TIMEOUT),
    "dead-letters": (["dead-letters"], 4 * CONNECT_TIMEOUT),
    "requeue-dead": (["requeue-dead"], 4 * CONNECT_TIMEOUT),
    "worker": (
        ["worker", "--connect-timeout", f"{_WORKER_PATIENCE:g}"],
        4 * max(_WORKER_PATIENCE, manager_wire.CONNECT_TIMEOUT),
    ),
}


def _give_up_on(env: dict[str, str], commands: list[str]) -> None:
    """Run ``commands`` of :data:`_GIVING_UP` at once: each must exit 3 within its bound
    with one line saying the master did not answer, and no traceback."""
    started = time.monotonic()
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "distq", *_GIVING_UP[name][0]],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in commands
    }
    try:
        for name, proc in procs.items():
            bound = _GIVING_UP[name][1]
            try:
                _, err = proc.communicate(timeout=max(0.1, started + bound - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"distq {name} still connecting after {bound:g} s") from None
            assert proc.returncode == 3, (name, err)
            assert "Traceback" not in err, (name, err)
            (line,) = [line for line in err.splitlines() if "no answer" in line]
            assert "no answer to the authentication handshake" in line, (name, err)
            assert env["DISTQ_MANAGER_ADDRESS"] in line and "distq master" in line, (name, err)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


def test_commands_and_workers_give_up_on_a_port_that_accepts_and_never_answers() -> None:
    settings = _settings("silent")
    with _silent_listener(settings.manager_address):
        _give_up_on(_env(settings), list(_GIVING_UP))


def test_commands_and_workers_give_up_on_a_stopped_master() -> None:
    settings = _settings("frozen")
    env = _env(settings)
    with _master_process(env, "--tasks", "1", "--timeout", "120") as master, _stopped(master):
        _give_up_on(env, ["status", "submit", "worker"])


@pytest.mark.timeout(120)
def test_a_connected_worker_detects_a_stopped_master_then_reconnects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # every call is bounded: a frozen master is an error a slot recovers from, not a hang
    monkeypatch.setattr(manager_wire, "REPLY_TIMEOUT", 2.0)  # 30 s in production
    settings = _settings("frozenmidjob")
    with (
        _master_process(_env(settings), "--tasks", "3", "--timeout", "120") as master,
        contextlib.closing(open_transport(settings, "worker")) as remote,
    ):
        consumer = remote.consumer("c1")
        assert len(fetch_n(consumer, 1)) == 1
        with _stopped(master):
            started = time.monotonic()
            with pytest.raises(TransportError, match="did not answer within 2 s"):
                consumer.fetch(1, 0.1)
            consumer.close()  # what a slot does after an error; its connection is gone
            with pytest.raises(ConnectionFailed, match="no answer to the authentication"):
                remote.consumer("c1")  # the slot's reconnect, while the master is stopped
            assert time.monotonic() - started < 4 * (2.0 + 2 * manager_wire.CONNECT_TIMEOUT)
        again = remote.consumer("c1")  # resumed: the next reconnect works
        assert len(fetch_n(again, 1)) == 1
        again.close()


@pytest.mark.timeout(120)
def test_a_consumer_closes_within_a_third_of_its_lease_on_a_frozen_master() -> None:
    # a slot closes its consumer as its worker stops (and after a failed call): the close
    # tells the master to take back what it holds, which the lease does anyway. Against a
    # master frozen after the slot's last call, it waited the whole REPLY_TIMEOUT (30 s)
    # for the answer, the slot's thread and the worker's stop with it
    settings = replace(_settings("frozenclose"), lease_seconds=6.0)  # a bound of 2 s
    with (
        _master_process(_env(settings)) as master,
        contextlib.closing(open_transport(settings, "worker")) as remote,
    ):
        consumer = remote.consumer("c1")
        assert len(fetch_n(consumer, 1)) == 1  # its connection, open and answered
        with _stopped(master):
            started = time.monotonic()
            consumer.close()
            took = time.monotonic() - started
        assert took < settings.lease_seconds - 1, f"{took:.1f} s"
        again = remote.consumer("c1")  # the master resumed: the thread connects afresh
        again.fetch(1, 0.1)  # answered
        again.close()


def _stops_within_its_grace(worker: Distq, master: Distq, drain: float) -> None:
    """SIGTERM ``worker`` while ``master`` is frozen: it exits 0 within the README's grace
    period, the drain plus 10 s."""
    with _stopped(master):
        worker.signal(signal.SIGTERM)
        started = time.monotonic()
        code = worker.wait(120)
        took = time.monotonic() - started
    assert code == 0, worker.output()
    assert took < drain + 10, f"{took:.1f} s:\n{worker.output()}"


@pytest.mark.timeout(180)
def test_a_worker_stopped_while_its_master_is_frozen_exits_within_its_drain() -> None:
    # the README: the grace period, the drain plus 10 s, covers a stop while the broker
    # hangs too. Each of the worker's proxies (one a slot, the keeper's) told the master it
    # was gone as the process exited, a connection each, one after the other: 5 s each
    # against a frozen master, so 4 slots took the drain plus 30 s (SIGKILLed at 45 s)
    settings = _settings("frozenstop")
    drain = 2.0
    env = dict(_env(settings), DISTQ_DRAIN_SECONDS=f"{drain:g}")
    with (
        _master_process(env, "--tasks", "8", "--task-delay", "120", "--timeout", "170") as master,
        _killed_after(
            Distq(["worker", "--concurrency", "4", "--connect-timeout", "30"], env)
        ) as worker,
    ):
        deadline = time.monotonic() + 60
        while worker.output().count("Get task") < 4:  # every slot in a task
            assert time.monotonic() < deadline and worker.proc.poll() is None, worker.output()
            time.sleep(0.05)
        _stops_within_its_grace(worker, master, drain)


@pytest.mark.timeout(180)
def test_an_idle_worker_stopped_while_its_master_is_frozen_exits_within_its_drain() -> None:
    # idle slots wait on the frozen master for a reply to their fetch (30 s, REPLY_TIMEOUT):
    # past the drain and the 5 s given to idle slots, the worker still waited 2 s for their
    # locks and 5 s for their threads, with nothing in hand: the drain plus 12.6 s (drain
    # 20 s: SIGKILLed by compose's 30 s grace)
    settings = _settings("frozenidle")
    drain = 2.0
    env = dict(_env(settings), DISTQ_DRAIN_SECONDS=f"{drain:g}")
    with (
        _master_process(env, *_WAITING) as master,
        _killed_after(
            Distq(["worker", "--concurrency", "2", "--connect-timeout", "30"], env)
        ) as worker,
    ):
        worker.wait_for(r"^Connect to master")
        remote = open_transport(settings, "worker")
        try:  # both slots attached, each in a fetch
            deadline = time.monotonic() + 30
            while remote.stats().consumers < 2:
                assert time.monotonic() < deadline, worker.output()
                time.sleep(0.05)
        finally:
            remote.close()
        _stops_within_its_grace(worker, master, drain)


def test_a_proxy_dropped_while_its_master_is_frozen_holds_no_thread() -> None:
    # a proxy's finalizer told the master it was gone on a connection of its own, in the
    # thread that dropped it: a worker's slot reconnecting (its consumer's proxy dropped),
    # its keeper or readiness (their proxy dropped after a failure) waited out
    # CONNECT_TIMEOUT (5 s) there against a master that does not answer
    settings = _settings("frozendrop")
    with (
        _master_process(_env(settings), *_WAITING) as master,
        contextlib.closing(open_transport(settings, "worker")) as remote,
    ):
        consumer = remote.consumer("c1")
        with _stopped(master):
            started = time.monotonic()
            del consumer  # what a slot's reconnect does with the consumer it closed
            gc.collect()
            took = time.monotonic() - started
        assert took < 1.0, f"{took:.1f} s"


def test_a_new_proxy_waits_for_no_decref_of_its_master(monkeypatch: pytest.MonkeyPatch) -> None:
    # a worker's proxy of the broker (a slot that reconnects, its keeper, its readiness)
    # was made with three connections to the master, each with its handshake: create,
    # then the proxy's incref, then a decref; a master that froze after the first held
    # the slot's thread at each: 5 s, or 30 s once it had answered the handshake
    settings = _settings("decref")
    with _master_and_worker(settings) as (hosted, remote):
        server = hosted._server  # type: ignore[attr-defined]
        thawed = threading.Event()

        def frozen(*args: object) -> None:  # the master stops as it reads the decref
            thawed.wait(20)

        monkeypatch.setattr(server, "decref", frozen)
        started = time.monotonic()
        try:
            consumer = remote.consumer("c1")
        finally:
            took = time.monotonic() - started
            thawed.set()
        assert took < 3.0, f"{took:.1f} s"
        hosted.producer(hosted.reply_queue("job")).submit([b"t1"])
        assert len(fetch_n(consumer, 1)) == 1  # the proxy works
        consumer.close()


@pytest.mark.timeout(120)
def test_a_remote_producers_reply_queue_outlives_its_master_being_frozen() -> None:
    # a master stopped (SIGSTOP, a paused VM or container) past master_ttl dropped every
    # remote producer's reply queue as it resumed, though none could renew it meanwhile: a
    # result settled then was dropped, and `distq submit --wait` or Executor(host=False)
    # found its queue lapsed and submitted its tasks again (each ran twice; those still
    # queued were dead-lettered unrun, "its master is gone")
    settings = replace(_settings("frozenreply"), lease_seconds=1.0)
    ttl = settings.master_ttl  # 10 s, the shortest there is
    env = dict(_env(settings), DISTQ_LEASE_SECONDS="1")
    with _master_process(env, *_WAITING) as master:
        client = open_transport(settings, "client")
        remote = open_transport(settings, "worker")
        try:
            reply_to = client.reply_queue("frozen")
            producer = client.producer(reply_to)
            producer.submit([b"task"])
            consumer = remote.consumer("c1")
            (delivery,) = fetch_n(consumer, 1)
            time.sleep(0.5)  # its reaper at work, as in any job (a first reap starts its clock)
            with _stopped(master):
                time.sleep(ttl + 1)
            time.sleep(1.0)  # the master's reaper runs first, as it would in a job
            consumer.settle([Settlement(delivery, reply_to=reply_to, result=b"done")])
            assert results_n(producer, 1, within=5) == [b"done"]
            assert producer.reconcile() == 1 and not producer.lapsed
            consumer.close()
            producer.close()
        finally:
            remote.close()
            client.close()


@pytest.mark.timeout(120)
def test_submit_whose_master_stops_answering_as_it_queues_names_the_task(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `distq submit` (no --wait) whose master stopped answering once the task was sent
    # said only that the master did not answer, exit 3, as if nothing were queued: the
    # master, resumed, ran the task, which the user had no id of (and submitted again)
    monkeypatch.setattr(manager_wire, "REPLY_TIMEOUT", 2.0)  # 30 s in production
    settings = _settings("frozenput")
    frozen = contextlib.ExitStack()
    with _master_process(_env(settings), *_WAITING) as master, frozen:
        submit = manager.ManagerProducer.submit

        def stopped_as_it_queues(self: manager.ManagerProducer, bodies: list[bytes]) -> None:
            frozen.enter_context(_stopped(master))
            submit(self, bodies)

        monkeypatch.setattr(manager.ManagerProducer, "submit", stopped_as_it_queues)
        args = argparse.Namespace(
            role="submit",
            task_name="square",
            args=["3"],
            kwargs=None,
            wait=False,
            timeout=None,
            max_attempts=3,
        )
        err = io.StringIO()
        code = commands.run(args, settings, Console(out=io.StringIO(), err=err))
        frozen.close()  # resumed: the task it was sent is queued
        assert code == 3, err.getvalue()
        client = open_transport(settings, "client")
        try:
            assert client.stats().ready == 1
            (letter,) = [Task.decode(body) for body in client._endpoint().peek("frozenput", 1)]  # type: ignore[attr-defined]
        finally:
            client.close()
        assert capsys.readouterr().out == ""
        assert f"task {letter.id} may be queued or not" in err.getvalue(), err.getvalue()


# -- a master under limits: silent peers, no threads, no file descriptors ----------------
#: A master in a process of its own (argv: port, key, limit, amount) whose thread or file
#: descriptor budget runs out after ``amount`` MiB of address space or open files.
_LIMITED_MASTER = """
import os, resource, sys, time
from distq.config import Settings
from distq.transport import open_transport
port, key, limit, amount = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
settings = Settings(transport="manager", authkey=key.encode(),
                    manager_address=("127.0.0.1", port), queue="limited")
master = open_transport(settings, "master")
if limit == "memory":  # thread stacks are 8 MiB: a few threads more, then no more
    with open("/proc/self/status") as status:
        vm = next(int(line.split()[1]) for line in status if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, ((vm << 10) + (amount << 20), resource.RLIM_INFINITY))
else:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + amount, hard))
print("master up", flush=True)
time.sleep(120)
"""


@contextlib.contextmanager
def _limited_master(limit: str, amount: int) -> Iterator[tuple[Settings, subprocess.Popen[str]]]:
    settings = _settings("limited")
    assert settings.authkey is not None
    port, key = str(settings.manager_address[1]), settings.authkey.decode()
    proc = subprocess.Popen(
        [sys.executable, "-c", _LIMITED_MASTER, port, key, limit, str(amount)],
        env=dict(os.environ, PYTHONPATH=_SRC),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "master up\n", proc.stderr and proc.stderr.read()
        yield settings, proc
    finally:
        proc.kill()  # ours, by PID
        proc.wait(10)


def _silent_peers(address: tuple[str, int], count: int) -> list[socket.socket]:
    """``count`` TCP connections to ``address`` that never send a byte (as many as connect)."""
    peers = []
    for _ in range(count):
        try:
            peers.append(socket.create_connection(address, timeout=5))
        except OSError:  # the master's backlog is full: enough of them
            break
    return peers


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _connects_within(settings: Settings, seconds: float) -> bool:
    """Whether a worker connects (and the master answers a call) within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            remote = open_transport(settings, "worker")
        except ConnectionFailed:
            continue
        try:
            remote.stats()
            return True
        except TransportError:
            continue
        finally:
            remote.close()
    return False


def test_the_master_drops_a_connection_that_never_authenticates() -> None:
    # each silent peer held a master thread and file descriptor for good
    settings = _settings("silentpeers")
    with _master_process(_env(settings)) as master:
        before = len(list(Path(f"/proc/{master.proc.pid}/task").iterdir()))
        peers = _silent_peers(settings.manager_address, 20)
        assert len(peers) == 20
        bound = time.monotonic() + 20.0  # the master gives up on each after 5 s
        try:
            for peer in peers:
                peer.settimeout(max(0.1, bound - time.monotonic()))
                with contextlib.suppress(ConnectionResetError):
                    while peer.recv(4096):  # the challenge, then the master's close
                        pass
        finally:
            for peer in peers:
                peer.close()
        # the peers' threads end a moment after their close: give them 5 s, not none
        threads = Path(f"/proc/{master.proc.pid}/task")
        settled = time.monotonic() + 5.0
        while (after := len(list(threads.iterdir()))) > before + 2:
            if time.monotonic() > settled:
                break
            time.sleep(0.1)
        assert after <= before + 2, (before, after)
        assert _connects_within(settings, 10)


def test_silent_peers_that_reconnect_do_not_keep_workers_out() -> None:
    """A peer without the key held every one of the places for a handshake with silent
    connections, opening each again as the master cut it after 5 s: workers waited in
    the listen backlog past their own 5 s, and none got in (sec14). Handshakes unfinished
    after 2 s are cut now to make room, the oldest of the host with the most first, so a
    worker (here from the same host, the harder case) gets in while the flood goes on;
    the master says so, once."""
    settings = _settings("flooded")
    stop = threading.Event()
    opened = [0]

    def flood() -> None:  # bounded: 3,000 connections, and until stopped
        peers = _silent_peers(settings.manager_address, 400)  # past the 256 places
        opened[0] += len(peers)
        while not stop.wait(0.05) and opened[0] < 3000:
            for i, peer in enumerate(peers):
                peer.setblocking(False)
                try:
                    if peer.recv(4096) != b"":
                        continue  # the challenge: stay silent
                except BlockingIOError:
                    continue
                except OSError:
                    pass
                peer.close()  # cut by the master: open another
                with contextlib.suppress(OSError):
                    peers[i] = socket.create_connection(settings.manager_address, timeout=2)
                    opened[0] += 1
        for peer in peers:
            peer.close()

    with _master_process(_env(settings)) as master:
        flooder = threading.Thread(target=flood)
        flooder.start()
        try:
            time.sleep(3)  # every place taken
            assert opened[0] >= 256
            assert _connects_within(settings, 10)
        finally:
            stop.set()
            flooder.join(30)
        master.wait_for("connections were authenticating at once; cut the oldest of 127.0.0.1")
        said = master.output()
        assert said.count("were authenticating at once") == 1, said  # once a minute


def test_only_handshakes_unfinished_for_a_while_are_cut_to_make_room() -> None:
    """A worker far away (3 round trips a handshake) with many slots had more handshakes
    under way than there were places, all from its host: cutting the oldest of the host
    with the most cut its own slots, one per connection, and a 256-slot worker at 200 ms
    never attached (diff14). Young handshakes are never cut: the next connection waits."""
    deadlines = manager_wire.Deadlines()
    pairs = [socket.socketpair() for _ in range(4)]
    conns = [Connection(os.dup(ours.fileno())) for ours, _ in pairs]
    try:
        for conn in conns[:3]:
            deadlines.add(conn, 5.0, "10.0.0.1")  # a far worker's slots, just begun
        assert deadlines.make_room(3, silent=2.0) == (False, None)  # none cut: wait
        assert deadlines.make_room(4, silent=2.0) == (True, None)
        deadlines.add(conns[3], 5.0, "10.0.0.2")
        assert deadlines.make_room(4, silent=0.0) == (True, "10.0.0.1")  # all stalled now
        assert pairs[0][1].recv(1) == b""  # the oldest of the host with the most: cut
        pairs[1][1].settimeout(0.1)
        with pytest.raises(TimeoutError):
            pairs[1][1].recv(1)  # the others untouched
    finally:
        deadlines.stop()
        for conn in conns:
            conn.close()
        for ours, theirs in pairs:
            ours.close()
            theirs.close()


def test_the_master_says_a_peer_failed_the_handshake_once_a_minute() -> None:
    """A worker with another DISTQ_AUTHKEY (a master restarted with a new key, a guess
    at a short one) was dropped without a word on the master's side (restart14, sec14)."""
    settings = _settings("wrongkey")
    with _master_process(_env(settings)) as master:
        wrong = dataclasses.replace(settings, authkey=b"not-the-masters-key")
        for _ in range(3):
            with pytest.raises(AuthenticationFailed):
                open_transport(wrong, "worker")
        line = r"a connection from 127\.0\.0\.1:\d+ failed the authentication handshake: its "
        master.wait_for(line + "DISTQ_AUTHKEY is not this master's")
        said = master.output()
        assert said.count("failed the authentication handshake") == 1, said


def test_the_master_drops_a_peer_that_trickles_its_handshake() -> None:
    # the 5 s bound was per read: a peer sending one byte of its answer every 2 s kept
    # its connection (and a master thread) for as long as it liked
    settings = _settings("tricklers")
    hosted = open_transport(settings, "master")
    try:
        with socket.create_connection(settings.manager_address, timeout=5) as peer:
            peer.recv(4096)  # the challenge
            peer.sendall(struct.pack("!i", 200))  # an answer of 200 bytes, announced...
            started = time.monotonic()
            dropped = None
            while time.monotonic() - started < 14:  # ...and sent a byte every 2 s
                time.sleep(2)
                try:
                    peer.sendall(b"x")
                    peer.settimeout(0.01)
                    if peer.recv(1) == b"":
                        dropped = time.monotonic() - started
                        break
                except TimeoutError:
                    pass
                except OSError:
                    dropped = time.monotonic() - started
                    break
                finally:
                    peer.settimeout(5)
        assert dropped is not None and dropped < 9, dropped
    finally:
        hosted.close()


def test_the_master_keeps_accepting_when_it_cannot_start_a_thread() -> None:
    # the accept thread died on "can't start new thread": no worker got in ever again
    with _limited_master("memory", 40) as (settings, proc):
        peers = _silent_peers(settings.manager_address, 30)
        time.sleep(1)  # the master has tried to start a thread for each
        for peer in peers:
            peer.close()
        assert _connects_within(settings, 15)
        proc.kill()
        _, err = proc.communicate(timeout=10)
    assert "cannot start a thread" in err and "pids limit" in err, err
    assert err.count("cannot start a thread") == 1, err  # logged once, not per connection


def test_the_master_backs_off_at_the_open_file_limit() -> None:
    # accept() failing with EMFILE was retried at once, forever: a core at 100 %, and
    # no worker got in while the silent peers held their connections
    with _limited_master("files", 24) as (settings, proc):
        peers = _silent_peers(settings.manager_address, 60)
        try:
            time.sleep(0.5)
            cpu = _cpu_seconds(proc.pid)
            time.sleep(2)
            assert _cpu_seconds(proc.pid) - cpu < 0.5
            assert _connects_within(settings, 20)  # the silent ones are dropped meanwhile
        finally:
            for peer in peers:
                peer.close()
        proc.kill()
        _, err = proc.communicate(timeout=10)
    assert "Too many open files" in err and "ulimit -n" in err, err
    assert err.count("Too many open files") == 1, err


# -- a remote producer that dies --------------------------------------------------------
_REMOTE_PRODUCER = """
import time
from distq import Executor
executor = Executor(host=False)
futures = [executor.submit("square", n) for n in (2, 3)]
print(executor.reply_to, flush=True)
time.sleep(120)
"""


@pytest.mark.timeout(60)
def test_a_killed_remote_producers_reply_queue_lapses_its_task_dead_lettered_unrun() -> None:
    # a SIGKILLed `distq submit --wait` or Executor(host=False) kept its reply queue in the
    # master for good: its tasks ran, and the results for it were kept forever
    settings = replace(_settings("remote"), lease_seconds=1.0)
    ttl = settings.master_ttl  # 10 s, the shortest there is
    env = _env(settings)
    hosted = open_transport(settings, "master")
    broker = hosted._broker  # type: ignore[attr-defined]
    producer = subprocess.Popen(
        [sys.executable, "-c", _REMOTE_PRODUCER],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert producer.stdout is not None
        reply_to = producer.stdout.readline().strip()
        remote = open_transport(settings, "worker")
        consumer = remote.consumer("c1")
        first, second = fetch_n(consumer, 2)
        producer.kill()  # ours, by PID
        producer.wait(10)
        time.sleep(0.5)  # its last call, a wait for results (0.1 s at most), has ended
        consumer.settle([Settlement(first, reply_to=reply_to, result=b"held")])
        consumer.release([second])
        assert len(broker._queues[reply_to]) == 1
        assert consumer.gone([reply_to]) == set()  # until master_ttl has passed
        consumer.close()
        remote.close()
        time.sleep(ttl + 1)
        assert reply_to not in broker._queues  # the held result went with the queue
        worker = Distq(["worker", "--exit-when-idle", "1"], env)
        try:
            assert worker.wait(30) == 0, worker.output()
            out = worker.output()
        finally:
            worker.stop()
        assert "0 ok" in out and "1 dead-lettered" in out, out
        (letter,) = hosted.dead_letters()
        assert letter.reason.startswith("its master is gone"), letter.reason
        assert Task.decode(letter.body).args == [3]
    finally:
        if producer.poll() is None:
            producer.kill()
            producer.wait(10)
        hosted.close()


def test_the_masters_own_reply_queue_and_a_remote_one_of_a_longer_lease_stay_open() -> None:
    # a remote producer renewed every quarter of ITS master_ttl: one with a 60 s lease
    # (every 45 s) lost its queue to a master on 1 s leases (master_ttl 10 s) after 10 s,
    # results and all; and the master's own queue could lapse if its loop was held up
    settings = replace(_settings("longer"), lease_seconds=1.0)
    hosted = open_transport(settings, "master")
    remote = open_transport(replace(settings, lease_seconds=60.0), "worker")
    try:
        own = hosted.producer("own-replies")
        theirs = remote.producer("their-replies")
        consumer = remote.consumer("c1")
        deadline = time.monotonic() + settings.master_ttl + 2
        while time.monotonic() < deadline:  # a remote executor waiting for its results
            assert theirs.results(10, 0.5) == []
        assert consumer.gone(["own-replies", "their-replies"]) == set()
        consumer.close()
        own.close()
        theirs.close()
    finally:
        remote.close()
        hosted.close()


# -- where the master listens -----------------------------------------------------------
def _serves_a_worker(settings: Settings, listening: str) -> None:
    """A ``distq master`` of 2 tasks on ``settings``, whose start line matches
    ``listening``, and a worker that runs them: asserts both exit 0."""
    env = _env(settings)
    with _killed_after(Distq(["master", "--tasks", "2", "--timeout", "60"], env)) as master:
        master.wait_for(listening)
        worker = Distq(["worker", "--exit-when-idle", "1"], env)
        try:
            assert worker.wait(60) == 0, worker.output()
        finally:
            worker.stop()
        assert master.wait(60) == 0, master.output()


def test_a_master_on_ipv6_serves_workers_over_ipv6() -> None:
    # the master could not listen on an IPv6 address ("Address family for hostname not
    # supported; pick a free port"), while workers connected over IPv6
    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::1", 0))
        port = probe.getsockname()[1]
    settings = replace(_settings("six"), manager_address=("::1", port))
    _serves_a_worker(settings, rf"^master .* transport on \[::1\]:{port}")


def test_a_master_on_a_scoped_ipv6_address_serves_workers_there() -> None:
    # DISTQ_MANAGER_ADDRESS=[fe80::1%eth0]:P (the setting takes a scoped address; workers
    # reached it) failed at start: "cannot listen on ...: Invalid argument", the zone not
    # given to bind()
    address, interface = link_local_or_skip()
    settings = replace(_settings("zone"), manager_address=(f"{address}%{interface}", free_port()))
    _serves_a_worker(settings, r"^master .* transport on \[fe80:")


def test_a_master_that_cannot_listen_says_why() -> None:
    # every failure said "pick a free port or stop what uses it", the port free or not
    settings = _settings("listen")
    taken = pytest.raises(ConnectionFailed, match="pick a free port or stop what uses it")
    with socket.create_server(settings.manager_address), taken:  # the port is in use
        open_transport(settings, "master")
    elsewhere = replace(settings, manager_address=("192.0.2.1", free_port()))  # TEST-NET-1
    with pytest.raises(ConnectionFailed) as failed:
        open_transport(elsewhere, "master")
    message = str(failed.value)
    assert "not one of this machine's; use 0.0.0.0" in message, message
    assert "192.0.2.1" in message and "free port" not in message, message


def test_a_workers_stats_calls_reuse_one_connection_to_the_master() -> None:
    # a worker's readiness asks every heartbeat; each call made a fresh proxy: about four
    # connections to the master, each a handshake and a thread there
    with _master_and_worker("pings") as (hosted, remote):
        listener = hosted._server.listener  # type: ignore[attr-defined]
        accept, accepted = listener.accept, []

        def counted() -> Any:
            conn = accept()
            accepted.append(conn)
            return conn

        listener.accept = counted
        remote.stats()
        before = len(accepted)
        hosted.producer("pings.results").submit([b"a", b"b", b"c"])
        assert [remote.stats().ready for _ in range(10)] == [3] * 10  # the master's answers
        gc.collect()  # a dropped proxy's finalizer connects to decref it
        assert len(accepted) == before, len(accepted) - before


def test_a_workers_ping_does_not_wait_on_the_masters_queues() -> None:
    # a worker's readiness pings every heartbeat (with DISTQ_METRICS_PORT): a ping was
    # stats(), which counted every task in flight under the lock every serving thread
    # takes, 1 ms at 10,000 held, per worker per heartbeat; a ping needs only an answer
    with _master_and_worker("pinged") as (hosted, remote):
        remote.ping()  # connected
        broker = hosted._broker  # type: ignore[attr-defined]
        pinged = threading.Event()

        def ping() -> None:
            remote.ping()
            pinged.set()

        pinger = threading.Thread(target=ping, daemon=True)
        with broker._lock:  # a serving thread's hold, as long as the ping may take
            pinger.start()
            answered = pinged.wait(10)
        pinger.join(10)
        assert answered, "the ping waited for the broker's lock"
        hosted.close()
        with pytest.raises(TransportError):  # and a master gone is still no answer
            remote.ping()


def test_a_workers_ping_is_answered_by_a_master_without_message_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a master before getlim33 refuses message_limit: a refusal is its answer
    older = tuple(name for name in manager_wire.EXPOSED if name != "message_limit")
    monkeypatch.setattr(manager_wire, "EXPOSED", older)
    with _master_and_worker("older") as (_hosted, remote):
        remote.ping()
        remote.ping()


def test_a_remote_executor_reconnects_to_a_master_started_again() -> None:
    """``Executor(host=False)`` (and ``distq submit --wait``) outlives its master's
    restart on the same address: before, it kept calling over the dead connection until
    OUTAGE_SECONDS, then failed with BrokenExecutor (and, before the outage handling,
    at once)."""
    import jobs

    key = secrets.token_hex(16)
    settings = Settings(
        transport="manager",
        authkey=key.encode(),
        manager_address=("127.0.0.1", free_port()),
        queue="restarted",
    )
    host = open_transport(settings, "master")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISTQ_")}
    env.update(
        DISTQ_TRANSPORT="manager",
        DISTQ_AUTHKEY=key,
        DISTQ_MANAGER_ADDRESS=f"127.0.0.1:{settings.manager_address[1]}",
        DISTQ_QUEUE="restarted",
        PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO / "src")]),
    )
    worker = Distq(["worker", "--tasks", "jobs", "--connect-timeout", "30"], env)
    try:
        with distq.Executor(settings, host=False) as ex:
            assert ex.submit(jobs.add, 1, 2).result(30) == 3
            host.close()
            host = open_transport(settings, "master")  # the master, started again
            assert ex.submit(jobs.add, 2, 3).result(30) == 5
    finally:
        worker.stop(grace=3.0)
        host.close()


class _MakesDir:
    """A pickle that, loaded, creates ``path`` (``os.mkdir``): code run by whoever loads
    it, as an attacker's ``os.system`` would be."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.mkdir, (str(self.path),)


def _makes_dir_reply(marker: Path) -> bytes:
    """A master's reply (for a :func:`fake_master`) holding a pickle that creates
    ``marker`` when loaded."""
    return pickle.dumps(("#RETURN", _MakesDir(marker)))


def _authenticated(settings: Settings) -> Connection:
    """A connection to ``settings``' master that passed the HMAC handshake, as any
    DISTQ_AUTHKEY holder can open: the stdlib's, which pickles and unpickles anything."""
    assert settings.authkey is not None
    sock = socket.create_connection(settings.manager_address, timeout=5)
    sock.setblocking(True)
    conn = manager_wire.bounded(Connection(sock.detach()), 10)  # a read or write: 10 s at most
    connection.answer_challenge(conn, settings.authkey)
    connection.deliver_challenge(conn, settings.authkey)
    return conn


@pytest.mark.parametrize("when", ["first request", "a later request"])
def test_an_authkey_holder_cannot_run_code_in_the_master(
    when: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # the master unpickled whatever an authenticated peer sent: any DISTQ_AUTHKEY holder
    # (every worker host) ran code in it, signing keys or not
    settings, marker = _settings("nopickle"), tmp_path / "ran"
    with _master_and_worker(settings) as (hosted, remote):
        producer = hosted.producer("nopickle.results")
        consumer = remote.consumer("c1")  # a worker connected before the attack
        producer.submit([b"a"])
        assert [d.body for d in fetch_n(consumer, 1)] == [b"a"]
        with _authenticated(settings) as attacker:
            if when == "a later request":  # on a connection the master serves already
                attacker.send((None, "accept_connection", ("attacker",), {}))
                assert attacker.recv() == ("#RETURN", None)
            attacker.send((None, "dummy", (_MakesDir(marker),), {}))
            try:
                answer: object = attacker.recv()
            except (EOFError, ConnectionResetError) as exc:
                answer = exc
        assert not marker.exists(), "the attacker's pickle ran in the master"
        assert isinstance(answer, EOFError | ConnectionResetError), answer  # dropped, unanswered
        # the master serves its workers still, the one connected before and a new one
        producer.submit([b"b"])
        assert [d.body for d in fetch_n(consumer, 1)] == [b"b"]
        later = open_transport(settings, "worker")
        try:
            assert later.stats().in_flight == 2
        finally:
            later.close()
        consumer.close()
        producer.close()
    dropped = [r.getMessage() for r in caplog.records if "dropped the connection" in r.message]
    assert len(dropped) == 1, dropped  # said once, with the peer's address and what it sent
    assert "from 127.0.0.1:" in dropped[0] and "posix.mkdir" in dropped[0], dropped


def test_an_authkey_holder_sending_garbage_is_dropped_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A refused pickle was logged; bytes that are no pickle at all were dropped without
    a word, leaving a misconfigured client no trace in the master's log."""
    settings = _settings("garbage")
    with _master_and_worker(settings) as (_, remote):
        with _authenticated(settings) as peer:
            peer.send_bytes(b"\x80\x05garbage, not a pickle")
            with pytest.raises((EOFError, ConnectionResetError)):
                peer.recv()
        assert remote.stats().ready == 0  # it serves on
    dropped = [r.getMessage() for r in caplog.records if "dropped the connection" in r.message]
    assert len(dropped) == 1 and "from 127.0.0.1:" in dropped[0], dropped
    assert "(not a pickle: " in dropped[0], dropped


def test_a_dropped_connection_is_logged_before_it_is_closed(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The master closed a refused connection, then logged why: a peer (or a test) that
    looked in the master's log as soon as it saw the close could find no line."""
    settings = _settings("dropped-order")
    order: list[str] = []
    closing = manager_wire.ServedConnection.close

    def close(conn: manager_wire.ServedConnection) -> None:
        if conn.refused is not None and not conn.closed:
            order.append("close")
        closing(conn)

    class Said(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "dropped the connection" in record.getMessage():
                order.append("log")

    monkeypatch.setattr(manager_wire.ServedConnection, "close", close)
    said = Said()
    logging.getLogger("distq.transport.manager").addHandler(said)
    try:
        with _master_and_worker(settings) as (_, remote):
            with _authenticated(settings) as peer:
                peer.send_bytes(b"\x80\x05garbage, not a pickle")
                with pytest.raises((EOFError, ConnectionResetError)):
                    peer.recv()
                deadline = time.monotonic() + 30
                while len(order) < 2:
                    assert time.monotonic() < deadline, order
                    time.sleep(0.01)
            assert remote.stats().ready == 0
    finally:
        logging.getLogger("distq.transport.manager").removeHandler(said)
    assert order == ["log", "close"], order


def test_sixty_slots_connecting_at_once_all_get_in() -> None:
    # the listen backlog was the stdlib server's 16: with 60 slots at once (a worker of
    # --concurrency 60, or every slot after a master's restart) 17 failed their
    # handshake 5 s later, "is a running `distq master` ... there?"
    with _master_and_worker("burst") as (_hosted, remote):
        go, failed = threading.Event(), []
        consumers: list[Any] = []

        def slot(i: int) -> None:
            go.wait()
            try:
                consumer = remote.consumer(f"burst-{i}")
                consumers.append(consumer)
                consumer.fetch(1, 0.0)
            except Exception as exc:
                failed.append(repr(exc))

        threads = [threading.Thread(target=slot, args=(i,)) for i in range(60)]
        for thread in threads:
            thread.start()
        go.set()
        for thread in threads:
            thread.join(30)
        for consumer in consumers:
            consumer.close()
        assert failed == [], failed


def test_a_service_with_a_short_framed_greeting_is_named_not_a_traceback() -> None:
    # the stdlib handshake asserts on a greeting not its own: worker, submit and status
    # ended with an AssertionError traceback, exit 1
    settings = _settings("greeter")

    def greet(peer: socket.socket) -> None:
        with peer:
            peer.sendall(struct.pack("!i", 5) + b"hello")
            time.sleep(0.2)

    with (
        accepting(settings.manager_address, greet),
        pytest.raises(ConnectionFailed, match="something other than a distq master"),
    ):
        open_transport(settings, "worker").stats()


def test_an_authkey_holder_cannot_stop_the_master_serving() -> None:
    # the stdlib server takes "shutdown" from any authenticated peer: after one, new
    # connections got None replies and a new worker's stats() raised TypeError
    settings = _settings("noshutdown")
    with _master_and_worker(settings):
        for name in ("shutdown", "debug_info"):
            with _authenticated(settings) as attacker:
                attacker.send((None, name, (), {}))
                try:
                    answer: object = attacker.recv()
                except (EOFError, ConnectionResetError) as exc:
                    answer = exc
            assert isinstance(answer, EOFError | ConnectionResetError), (name, answer)
        later = open_transport(settings, "worker")
        try:
            assert later.stats().ready == 0
        finally:
            later.close()


def test_a_fake_master_cannot_run_code_in_a_worker_as_it_connects(tmp_path: Path) -> None:
    # a worker unpickled the master's replies: whoever holds DISTQ_AUTHKEY and answers on
    # the master's address (or in its place) ran code in every worker that connected
    settings, marker = _settings("fakemaster"), tmp_path / "ran"
    with fake_master(settings, "dummy", _makes_dir_reply(marker)):
        try:
            open_transport(settings, "worker").close()
            failed = ""
        except ConnectionFailed as exc:
            failed = str(exc)
    assert not marker.exists(), "the fake master's pickle ran in the worker"
    assert re.search(r"refused the reply .*posix\.mkdir is not among", failed), failed


def test_a_fake_master_cannot_run_code_in_a_worker_with_a_reply(tmp_path: Path) -> None:
    settings, marker = _settings("fakereply"), tmp_path / "ran"
    with fake_master(settings, "fetch", _makes_dir_reply(marker)):
        remote = open_transport(settings, "worker")
        try:
            consumer = remote.consumer("c1")
            with pytest.raises(TransportError) as failed:
                consumer.fetch(5, 0.1)
            assert not marker.exists(), "the fake master's pickle ran in the worker"
            assert re.search(r"refused a reply .*posix\.mkdir is not among", str(failed.value))
            consumer.close()
        finally:
            remote.close()


def test_the_manager_protocol_unpickles_plain_data_and_builtin_exceptions_only() -> None:
    settle = [(1, "q.results.j", b"x" * 70_000, None, 0.5, None), (2, None, None, b"t", 0.0, b"")]
    request: tuple[Any, ...] = ("7f01", "settle_fetch", ("q", "w1.ab12", settle, 128, 30.0), {})
    other: Any = [None, True, -(2**70), 1.5e300, "\u00e9", {"a": {1, 2}}, frozenset({b""})]
    for plain in (request, other, ("#RETURN", [(3, b"body", False)]), ("#TRACEBACK", "...")):
        for reader in (manager_wire.RequestUnpickler, manager_wire.ReplyUnpickler):
            assert reader(io.BytesIO(pickle.dumps(plain))).load() == plain
    reply = ("#ERROR", TypeError("fetch() takes 6 positional arguments but 7 were given"))
    kind, error = manager_wire.ReplyUnpickler(io.BytesIO(pickle.dumps(reply))).load()
    assert kind == "#ERROR" and isinstance(error, TypeError), error
    refused: list[tuple[type[pickle.Unpickler], object, str]] = [
        (
            manager_wire.RequestUnpickler,
            KeyError("a master is never sent an exception"),
            "KeyError",
        ),
        (manager_wire.RequestUnpickler, range(3), "builtins.range"),
        (manager_wire.ReplyUnpickler, SystemExit(0), "builtins.SystemExit"),  # would end a worker
        (manager_wire.ReplyUnpickler, managers.Token("distq_broker", None, "1"), "managers.Token"),
        (manager_wire.ReplyUnpickler, ("#RETURN", eval), "builtins.eval"),
    ]
    for unpickler, data, named in refused:
        with pytest.raises(pickle.UnpicklingError, match=f"{named} is not among"):
            unpickler(io.BytesIO(pickle.dumps(data))).load()


@pytest.mark.parametrize("authkey", [None, b""])
def test_settings_without_an_authkey_are_a_configuration_error(authkey: bytes | None) -> None:
    """A program's own Settings without an authkey (Settings.load refuses them first):
    a ConnectionFailed, as if the master could not be reached (exit 3), and an empty
    key passed; a ConfigError now (exit 2), saying what to set."""
    settings = Settings(authkey=authkey, manager_address=("127.0.0.1", free_port()))
    for role in ("master", "worker"):
        with pytest.raises(ConfigError, match=r"^DISTQ_AUTHKEY is not set; .* set the same"):
            open_transport(settings, role)


@pytest.mark.timeout(180)
def test_submit_wait_stopped_while_its_master_is_frozen_exits_within_seconds() -> None:
    # Ctrl-C, a container stop: a `distq submit --wait` whose master is frozen closes its
    # executor within CLOSE_WAIT_SECONDS (2 s), then exits; its proxy, still open, told the
    # master it was gone as the process exited, waiting out CONNECT_TIMEOUT: 7 s in all
    settings = _settings("frozensubmit")
    env = _env(settings)
    with (
        _master_process(env, *_WAITING) as master,
        _killed_after(Distq(["submit", "--wait", "square", "3"], env)) as submit,
    ):
        submit.wait_for(r"^[0-9a-f]{32}$")
        time.sleep(0.5)  # in its wait for the result
        with _stopped(master):
            submit.signal(signal.SIGTERM)
            started = time.monotonic()
            code = submit.wait(120)
            took = time.monotonic() - started
        assert code == 1, submit.output()
        assert "interrupted" in submit.output() and "Traceback" not in submit.output()
        assert took < 5, f"{took:.1f} s:\n{submit.output()}"
