"""A stopped ``distq master``: what becomes of its tasks still queued."""

from __future__ import annotations

import dataclasses
import io
import re
import signal
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import redis

from conftest import Target
from distq.codec import Codec
from distq.config import Settings
from distq.console import Console
from distq.ending import Endings
from distq.errors import ConfigError
from distq.master import JobReport, JobSpec, Master, _Run
from distq.squares import Squares
from distq.transport import Settlement, Transport, open_transport
from distq.transport.rabbitmq import RabbitMQProducer
from distq.transport.rabbitmq_link import CLOSE_SECONDS, Link
from launch import LocalRedis
from procs import Spawn
from relay import SilentRelay
from seam import fetch_n, held_until_stopped, ok_result, retried

pytestmark = pytest.mark.integration

TAKEN = re.compile(r"Get task (\d+) from task_queue")


class Job(NamedTuple):
    """A master's squares job run in a thread (:func:`running`)."""

    run: threading.Thread
    reports: list[JobReport]  # its report, once the job ended
    stop: threading.Event
    out: io.StringIO  # the master's console
    master: Master


def running(
    transport: Transport,
    spec: JobSpec,
    stop: threading.Event | None = None,
    codec: Codec | None = None,
) -> Job:
    """A master on ``transport`` (with ``codec``, if given) running the squares job of
    ``spec`` in a thread, started, until ``stop`` (a new event if none) is set."""
    stop = threading.Event() if stop is None else stop
    out = io.StringIO()
    master = Master(transport, Console(out=out, err=out), codec=codec)
    reports: list[JobReport] = []
    run = threading.Thread(target=lambda: reports.append(master.run(spec, Squares(), stop)))
    run.start()
    return Job(run, reports, stop, out, master)


def first_look_over(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set once a stop's first look (its withdraw of the tasks queued and their retries,
    before the drain's wait) is over: what a test waits for, not a guess of its time."""
    over = threading.Event()
    withdraw = _Run._withdraw

    def withdraw_then_say(run: _Run[Any], deadline: float) -> set[str]:
        try:
            return withdraw(run, deadline)
        finally:
            over.set()

    monkeypatch.setattr(_Run, "_withdraw", withdraw_then_say)
    return over


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


# RabbitMQ cannot take a message back out of a queue (Producer.withdraw answers False)
@pytest.mark.parametrize("keys", ["unsigned", "rotated"])
@pytest.mark.parametrize("target", ["redis", "manager"], indirect=True)
def test_a_stopped_master_takes_back_its_retries_queued_or_waiting_out_their_delay(
    target: Target, hosted: Transport, remote: Transport, keys: str
) -> None:
    """Two of four tasks failed on a worker, each retried as its worker sends a retry:
    one queued again at once, one waiting out a 30 s delay. The stop took back the two
    tasks still queued and left both retries, for a worker to run (or, its master
    gone, dead-letter) after the stop: 2 ready where none should be. Mid-rotation too,
    the worker signing with the key the master accepts second (transports sign nothing
    themselves: the codecs do, as Codec.from_settings makes them)."""
    old, new = b"o" * 32, b"n" * 32
    signing = keys == "rotated"
    queue = target.settings.queue
    accepting = Codec([old, new], queue=queue) if signing else None
    run, reports, stop, out, _ = running(hosted, JobSpec(tasks=4, drain_seconds=3), codec=accepting)
    with held_until_stopped(remote.consumer("failing-worker"), stop, run) as consumer:
        taken = fetch_n(consumer, 2)
        assert len(taken) == 2, out.getvalue()
        codec = Codec([new, old], queue=queue) if signing else None
        endings = Endings("failing-worker", queue, codec)
        consumer.settle(retried(endings, taken, (0.0, 30.0)))
    assert reports and reports[0].missing == 4, out.getvalue()
    assert hosted.stats().ready == 0, out.getvalue()


# RabbitMQ cannot take a message back out of a queue (Producer.withdraw answers False)
@pytest.mark.parametrize("target", ["redis", "manager"], indirect=True)
def test_a_stop_takes_back_the_retries_its_tasks_in_flight_made_during_the_drain(
    target: Target, hosted: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two tasks in a worker's hands as the master stops; during the drain both fail,
    one retried at once, one after a 30 s delay. The stop looked for retries once, at
    its start: both were left for a worker to run (or, its master gone, dead-letter)
    after the stop, 2 ready where none should be. It looks again after the drain."""
    looked = first_look_over(monkeypatch)
    run, reports, stop, out, _ = running(hosted, JobSpec(tasks=2, drain_seconds=3))
    # a lease that does not lapse meanwhile (1 s, never renewed here, lapsed as a loaded
    # host settled late: a sweep put both tasks back, and the worker's retries were dropped)
    worker = open_transport(dataclasses.replace(target.settings, lease_seconds=30.0), "worker")
    with (
        closing(worker),
        held_until_stopped(worker.consumer("failing-worker"), stop, run) as consumer,
    ):
        taken = fetch_n(consumer, 2)
        assert len(taken) == 2, out.getvalue()
        stop.set()
        assert looked.wait(20), out.getvalue()  # nothing queued, both in hand
        endings = Endings("failing-worker", target.settings.queue, None)
        consumer.settle(retried(endings, taken, (0.0, 30.0)))
    assert reports and reports[0].missing == 2, out.getvalue()
    assert hosted.stats().ready == 0, out.getvalue()


# RabbitMQ cannot take a message back out of a queue (Producer.withdraw answers False)
@pytest.mark.parametrize("target", ["redis", "manager"], indirect=True)
def test_a_stop_takes_back_the_tasks_put_back_during_the_drain_as_their_leases_lapsed(
    target: Target, hosted: Transport, remote: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two tasks in the hands of a worker that stalls as the master stops (its 1 s lease
    not renewed): after the stop's first look the lease lapses during the drain and the
    two go back on the queue. The look after the drain looked for retries only: both
    stayed queued, for a worker to run (or, its master gone, dead-letter) after the
    stop, 2 ready where none should be."""
    looked = first_look_over(monkeypatch)
    run, reports, stop, out, _ = running(hosted, JobSpec(tasks=2, drain_seconds=5))
    with held_until_stopped(remote.consumer("stalled-worker"), stop, run) as consumer:
        assert len(fetch_n(consumer, 2)) == 2, out.getvalue()
        stop.set()
        assert looked.wait(20), out.getvalue()  # nothing queued, both in hand
        deadline = time.monotonic() + 20  # a lease of 1 s, then a sweep
        while hosted.stats().ready < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert run.is_alive(), out.getvalue()  # put back during the drain
        assert hosted.stats().ready == 2, out.getvalue()
    assert reports and reports[0].missing == 2, out.getvalue()
    assert hosted.stats().ready == 0, out.getvalue()


@pytest.mark.parametrize("target", ["redis"], indirect=True)
def test_a_look_for_retries_after_the_drain_that_runs_out_says_its_own_time(
    target: Target, hosted: Transport, remote: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The look after the drain has RETRY_LOOK_SECONDS, not the drain's time: run out, its
    line named the drain's ("its 3 s to do so ran out")."""
    monkeypatch.setattr("distq.master.RETRY_LOOK_SECONDS", 0.0)
    stop = threading.Event()
    out = io.StringIO()
    master = Master(hosted, Console(out=out, err=out))
    run = threading.Thread(
        target=lambda: master.run(JobSpec(tasks=1, drain_seconds=3), Squares(), stop)
    )
    run.start()
    with held_until_stopped(remote.consumer("holding-worker"), stop, run) as consumer:
        assert len(fetch_n(consumer, 1)) == 1, out.getvalue()  # in hand: not taken back
    assert (
        "did not look for all the retries of the 1 task in flight at the stop (its 0 s to do "
        "so ran out)" in out.getvalue()
    ), out.getvalue()


# RabbitMQ cannot take a message back out of a queue (Producer.withdraw answers False)
@pytest.mark.parametrize("target", ["redis", "manager"], indirect=True)
def test_an_endless_jobs_task_whose_retry_was_taken_back_counts_as_missing(
    target: Target, hosted: Transport, remote: Transport
) -> None:
    """An endless ``--rate`` job stopped as one of its tasks, failed once on a worker,
    waits out its retry delay: the stop took the retry back and counted the task as
    never submitted, as if it had never run, and its failed attempt was nowhere in the
    summary. It ran: it counts as submitted, and missing (no result came)."""
    spec = JobSpec(tasks=None, rate=4, drain_seconds=1, status_every=60)
    run, reports, stop, out, _ = running(hosted, spec)
    with held_until_stopped(remote.consumer("failing-worker"), stop, run) as consumer:
        [delivery] = fetch_n(consumer, 1)
        endings = Endings("failing-worker", target.settings.queue, None)
        task = endings.codec.open_task(delivery.body)
        consumer.settle(retried(endings, [delivery], [30.0]))
    said = out.getvalue()
    assert reports and reports[0].missing == 1, said
    assert f"missing 1 result: square({task.args[0]}) [{task.id}]" in said, said
    assert hosted.stats().ready == 0, said


@pytest.mark.parametrize("failed", ["in-the-drain", "before-the-stop"])
@pytest.mark.parametrize("tasks", [1, None], ids=["tasks", "endless"])
@pytest.mark.parametrize("target", ["redis"], indirect=True)
def test_a_stop_takes_back_the_retry_a_worker_made_of_a_task_submitted_again(
    target: Target,
    hosted: Transport,
    tasks: int | None,
    failed: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A task in a worker's hands, then the broker's count of the job's tasks lost (as a
    Redis restored from an older snapshot: ``submitted`` 0), so the reconcile submitted it
    again: a copy queued. The stop took that copy back and waited for the one in hand,
    which failed during the drain: the look for retries after the drain passed over the
    task (taken back once already) and left its retry queued, for a worker to run after
    the stop (1 ready where 0); an endless job counted it as never submitted, though it
    ran an attempt that failed (0 missing where 1). Failed before the stop, its retry was
    taken back with the copy, and an endless job counted it as never submitted all the
    same: only a task of which no copy was queued counted as retried."""
    looked = first_look_over(monkeypatch)
    spec = JobSpec(tasks=tasks, rate=None if tasks else 0.1, drain_seconds=2, status_every=60)
    run, reports, stop, out, master = running(hosted, spec)
    # a lease that does not lapse meanwhile: the copy is the reconcile's, not the sweep's
    worker = open_transport(dataclasses.replace(target.settings, lease_seconds=30.0), "worker")
    endings = Endings("failing-worker", target.settings.queue, None)
    with (
        closing(worker),
        held_until_stopped(worker.consumer("failing-worker"), stop, run) as consumer,
    ):
        [delivery] = fetch_n(consumer, 1)
        with redis.Redis.from_url(target.settings.redis_url) as client:
            client.hset(f"{master.reply_to}:state", "submitted", 0)
        deadline = time.monotonic() + 20  # reconciled every 2 s
        while hosted.stats().ready < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hosted.stats().ready == 1, out.getvalue()  # the copy submitted again
        if failed == "before-the-stop":
            consumer.settle(retried(endings, [delivery], [0.0]))
            assert hosted.stats().ready == 2, out.getvalue()  # the copy and the retry
        stop.set()
        if failed == "in-the-drain":
            # the first look took the copy; the drain waits for the other
            assert looked.wait(20), out.getvalue()
            consumer.settle(retried(endings, [delivery], [0.0]))
    said = out.getvalue()
    assert (
        "the broker holds 0 of the 1 task sent since the job began; submitting the 1 task "
        "among the others that wait for a result again"
    ) in said, said
    assert reports and reports[0].missing == 1, said
    assert hosted.stats().ready == 0, said


# RabbitMQ cannot take a message back out of a queue (Producer.withdraw answers False)
@pytest.mark.parametrize("target", ["redis", "manager"], indirect=True)
def test_a_master_past_its_timeout_takes_back_its_queued_tasks(
    target: Target, hosted: Transport
) -> None:
    """``--timeout`` ended a job with no worker attached: its four tasks stayed queued, for
    a worker that came later to dead-letter unrun (its master gone), where a stop took
    them back."""
    out = io.StringIO()
    spec = JobSpec(tasks=4, timeout=1)
    report = Master(hosted, Console(out=out, err=out)).run(spec, Squares())
    assert report.missing == 4 and not report.succeeded, out.getvalue()
    assert "job timed out" in out.getvalue(), out.getvalue()
    assert hosted.stats().ready == 0, out.getvalue()


def test_a_stop_cuts_short_a_call_under_way_to_a_paused_redis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM as the master waits on a Redis that stopped answering (SIGSTOP), in a
    reconcile or a wait for results: the call ran out its socket timeout (a block slice
    + 5 s: 10 s with a 30 s lease) before the stop went on. It waits a second past the
    stop at most now, and the stop says it took nothing back."""
    monkeypatch.setattr("distq.master.RECONCILE_SECONDS", 0.2)
    with LocalRedis(tmp_path).start() as server:
        settings = Settings(
            transport="redis", redis_url=server.url, lease_seconds=30.0, queue="paused"
        )
        transport = open_transport(settings, "master")
        run, reports, stop, out, _ = running(transport, JobSpec(tasks=4, drain_seconds=3))
        try:
            deadline = time.monotonic() + 10
            while transport.stats().ready < 4:  # submitted, no worker: it waits for results
                assert time.monotonic() < deadline, out.getvalue()
                time.sleep(0.05)
            server.pause()
            time.sleep(1.0)  # in a call now: a reconcile, or a wait for results
            stopped = time.monotonic()
            stop.set()
            run.join(30)
            took = time.monotonic() - stopped
        finally:
            stop.set()
            server.resume()
            run.join(30)
            transport.close()
    said = out.getvalue()
    assert reports and reports[0].missing == 4, said
    assert took < 3.0, f"the stop waited {took:.1f} s on the paused Redis: {said}"
    assert "did not take back the 4 tasks not answered (the broker failed its last call" in said


@pytest.mark.parametrize("target", ["rabbitmq"], indirect=True)
def test_a_stop_on_a_rabbitmq_cut_off_waits_for_one_close_not_for_each(target: Target) -> None:
    """A stop as RabbitMQ is cut off (nothing passes, no reset), before any call failed:
    after the drain, the producer's close waited CLOSE_SECONDS for the delete of its
    reply queue, then the transport's close as long again for its admin link (11.1 s
    from the signal to the exit, with the 5 s drain). Once one close got no answer, the
    next does not wait for the broker."""
    relay = SilentRelay.to_url(target.settings.amqp_url)
    settings = dataclasses.replace(target.settings, amqp_url=relay.url)
    stop = threading.Event()
    transport = open_transport(settings, "master")
    try:
        spec = JobSpec(tasks=4, drain_seconds=1)
        run, reports, _, out, _ = running(transport, spec, stop)
        deadline = time.monotonic() + 20
        while transport.stats().ready < 4:  # published, no worker: it waits for results
            assert time.monotonic() < deadline, out.getvalue()
            time.sleep(0.05)
        relay.silence()
        stopped = time.monotonic()
        stop.set()
        run.join(30)
        transport.close()
        took = time.monotonic() - stopped
    finally:
        stop.set()
        transport.close()
        relay.close()
    said = out.getvalue()
    assert reports and reports[0].missing == 4, said
    # the drain, then one close's wait: not a second one
    assert took < spec.drain_seconds + CLOSE_SECONDS + 1.5, f"the stop took {took:.1f} s: {said}"


@pytest.mark.parametrize("target", ["rabbitmq"], indirect=True)
def test_a_rabbitmq_transport_whose_broker_came_back_waits_for_its_closes_again(
    target: Target,
) -> None:
    """A producer's close that got no answer (the broker cut off) marked its transport
    unanswered for good: a transport that lived on (an Executor's, after the cut healed)
    closed its admin link at once later, on a broker that answered again (and left it
    open to a sampler's call holding its lock). A close answered since clears the mark."""
    relay = SilentRelay.to_url(target.settings.amqp_url)
    settings = dataclasses.replace(target.settings, amqp_url=relay.url)
    transport = open_transport(settings, "master")
    try:
        cut = transport.producer(transport.reply_queue("cut"))
        relay.silence()  # this link's: the ones made after pass, as once the cut heals
        cut.close()
        assert transport.unanswered  # type: ignore[attr-defined]
        healed = transport.producer(transport.reply_queue("healed"))
        healed.submit([b"t1"])
        healed.close()
        assert not transport.unanswered  # type: ignore[attr-defined]
    finally:
        transport.close()
        relay.close()


def _stopped_holding_four(
    tmp_path: Path,
    queue: str,
    started: Callable[[LocalRedis], None],
    stopping: Callable[[LocalRedis], None],
) -> tuple[float, list[Any], str]:
    """A master's job of 4 tasks (3 s drain) on a Redis of its own, every task held by a
    worker on a 30 s lease (the drain waits for them), then stopped: ``started(server)``
    once the server runs, ``stopping(server)`` right after the stop is set. The seconds
    from the stop to the job's end, its reports and its console; the server resumed."""
    with LocalRedis(tmp_path).start() as server:
        started(server)
        settings = Settings(
            transport="redis", redis_url=server.url, lease_seconds=30.0, queue=queue
        )
        transport = open_transport(settings, "master")
        worker = open_transport(settings, "worker")
        run, reports, stop, out, _ = running(transport, JobSpec(tasks=4, drain_seconds=3))
        consumer = worker.consumer(f"{queue}-worker")
        try:
            assert len(fetch_n(consumer, 4)) == 4, out.getvalue()  # held: the drain waits
            stopped = time.monotonic()
            stop.set()
            stopping(server)
            run.join(30)
            took = time.monotonic() - stopped
        finally:
            stop.set()
            server.resume()
            run.join(30)
            consumer.close()
            worker.close()
            transport.close()
    return took, reports, out.getvalue()


def test_a_stop_cuts_short_its_own_call_to_a_redis_paused_after_it_began(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis that stops answering (SIGSTOP) only once the stop began, as the drain
    waits for the results of tasks a worker holds: the drain's call, made after the stop,
    ran out its socket timeout (a block slice + 5 s), past the drain's time. It gives up
    a second past its own wait now, and the tasks count as missing."""
    looked = first_look_over(monkeypatch)

    def paused_after_the_look(server: LocalRedis) -> None:
        # the drain's withdraw done (a guessed second was not, on a loaded host): its
        # wait for results is a call made after the stop
        assert looked.wait(20)
        server.pause()

    took, reports, said = _stopped_holding_four(
        tmp_path, "pausedlate", lambda server: None, paused_after_the_look
    )
    assert reports and reports[0].missing == 4, said
    # the drain's wait for results, 0.5 s, cut short a second past it: not the socket
    # timeout (a block slice + 5 s), past the drain's 3 s
    assert took < 3 + 1.0, f"the stop waited {took:.1f} s on the paused Redis: {said}"
    assert "did not take back" not in said, said  # its withdraw was answered


def test_a_stop_whose_first_look_meets_a_paused_redis_makes_no_call_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis that stops answering (SIGSTOP) as the stop's first look begins, the loop's
    last call answered: the look's withdraw gave up a second on, and the drain then
    called the paused Redis again for the results, out to its socket timeout (a block
    slice + 5 s): 13.1 s from the stop with a 3 s drain. As a call fails, the stop makes
    no call that would wait on the broker (README)."""
    withdraw = _Run._withdraw

    def paused_at_the_first_look(server: LocalRedis) -> None:
        def paused_first(run: _Run[Any], deadline: float) -> set[str]:
            server.pause()
            return withdraw(run, deadline)

        monkeypatch.setattr(_Run, "_withdraw", paused_first)

    took, reports, said = _stopped_holding_four(
        tmp_path, "pausedlook", paused_at_the_first_look, lambda server: None
    )
    assert reports and reports[0].missing == 4, said
    # the loop's wait under way (0.5 s at most), the withdraw's second: no drain after it
    assert took < 3, f"the stop waited {took:.1f} s on the paused Redis: {said}"
    assert "did not take back the 4 tasks not answered (the broker failed: " in said, said


@pytest.mark.parametrize("target", ["rabbitmq"], indirect=True)
def test_a_stop_during_a_wait_for_rabbitmqs_confirms_still_waits_for_the_results_in_flight(
    target: Target, hosted: Transport, remote: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop came as a reconcile waited for the confirms of tasks just published, on a
    RabbitMQ that answers: the wait ended at once, and the master took it for a broker
    that failed its last call, so it skipped the wait for the results in flight (README:
    "waits 5 s for the results in flight"): a task a worker finished a second later
    counted as missing. The stop cuts the wait short; the drain still runs."""
    monkeypatch.setattr("distq.master.RECONCILE_SECONDS", 0.0)  # a reconcile each turn
    stop = threading.Event()
    armed = threading.Event()
    waited = Link.wait_for_confirms

    def stopped_meanwhile(link: Link, until: threading.Event | None = None) -> bool:
        if until is stop and armed.is_set() and link.unconfirmed:  # as the signal lands
            stop.set()
        return waited(link, until)

    monkeypatch.setattr(Link, "wait_for_confirms", stopped_meanwhile)
    spec = JobSpec(tasks=None, rate=400, drain_seconds=3, status_every=60)
    run, reports, _, out, _ = running(hosted, spec, stop)
    with held_until_stopped(remote.consumer("late-worker"), stop, run) as consumer:
        [delivery] = fetch_n(consumer, 1)
        task = Codec().open_task(delivery.body)
        armed.set()
        assert stop.wait(20), out.getvalue()  # a reconcile met unconfirmed tasks
        time.sleep(0.5)  # the task ends during the drain
        value = task.args[0] ** 2
        consumer.settle([Settlement(delivery, task.reply_to, ok_result(task, value))])
    said = out.getvalue()
    assert reports and reports[0].ok == 1, said


@pytest.mark.parametrize("target", ["rabbitmq"], indirect=True)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_endless_rate_job_on_rabbitmq_says_why_it_exits_1(
    target: Target, spawn: Spawn, sig: int
) -> None:
    """README: a stop ends an endless ``--rate`` job, the tasks taken back count as never
    submitted, so it exits 0 when every task it submitted came back; RabbitMQ takes
    nothing back. With tasks still queued at the stop (no worker here) it exited 1, its
    stop line naming none of that: the same job on Redis exits 0. Now the line says they
    count as missing, and how such a job ends with exit 0 on RabbitMQ."""
    master = spawn("master", "--rate", "200", "--status-every", "60")
    master.wait_for(r"put task", timeout=30)
    master.signal(sig)
    assert master.wait(30) == 1, master.output()
    said = master.output()
    found = re.search(r"job stopped after .*: 0 of ([\d,]+) results in, .*, ([\d,]+) missing", said)
    assert found and found[1] == found[2], said  # none taken back: all missing
    # one when the stop came before a second put (a loaded host); past 999 with separators
    sent = int(found[1].replace(",", ""))
    none = "did not take back the 1 task" if sent == 1 else f"took back none of the {sent:,} tasks"
    assert (
        f"the stop: {none} not answered (the rabbitmq transport cannot take a task back off "
        "its queue)" in said
    ), said
    assert (
        "they count as missing (exit 1), where an endless --rate job's tasks taken back do "
        "not: stop it once its workers have caught up, or give it --tasks" in said
    ), said


@pytest.mark.parametrize("target", ["rabbitmq"], indirect=True)
def test_a_stopped_endless_rate_job_the_broker_also_refused_says_no_exit_1(
    target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stopped endless ``--rate`` job on RabbitMQ whose broker refused a setting as it
    stopped (an ACL taken away: ConfigError) exits 2, the refusal said; its stop line
    said its queued tasks "count as missing (exit 1)" all the same. Now that note, and its
    advice, are said only when the refusal does not decide the exit."""
    with closing(open_transport(target.settings, "master")) as transport:
        job = running(transport, JobSpec(tasks=None, rate=50.0, drain_seconds=2.0))
        deadline = time.monotonic() + 20
        while job.out.getvalue().count("put task") < 3 and time.monotonic() < deadline:
            time.sleep(0.05)  # no worker: they stay queued

        def refused(*_args: Any) -> list[bytes]:
            raise ConfigError("RabbitMQ refused user 'u': access to queue denied")

        monkeypatch.setattr(RabbitMQProducer, "results", refused)
        job.stop.set()
        job.run.join(30)
        said = job.out.getvalue()
    assert job.master.refused is not None, said  # the CLI exits 2 (EXIT_CONFIG)
    assert "stopped: RabbitMQ refused user 'u'" in said, said
    assert "the stop: took back none of the" in said, said
    assert "(exit 1)" not in said, said
