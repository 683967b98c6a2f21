"""The worker's lifecycle on the real manager transport hosted in this process."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import re
import secrets
import signal
import threading
import time
from datetime import datetime
from typing import Any

import pytest

from distq.backoff import Backoff
from distq.batch import Batch
from distq.chunks import CHUNK_TASK, chunk_arguments
from distq.config import Settings
from distq.console import Console
from distq.ending import Endings
from distq.envelope import Task
from distq.errors import ConfigError, SettledThenFailed, SettledThenRefused, TransportError
from distq.framing import pack
from distq.health import WorkerHealth
from distq.keeper import Keeper
from distq.logs import JsonConsole
from distq.slots import Slot
from distq.tasks import Registry
from distq.telemetry import WorkerTelemetry
from distq.timelimits import TimeLimits
from distq.transport import Producer, Transport, open_transport
from distq.transport.base import Delivery
from distq.worker import _LAPSED, Worker, WorkerOptions, _drain_ran_out, _not_sent
from launch import free_port
from seam import results_n, results_of


def _quick_backoffs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every backoff 0.05 s: the slots' (reconnects, failed batches) and a warm stop's
    settle's."""

    def quick(base: float = 0.1, cap: float = 0.1) -> Backoff:
        return Backoff(0.05, 0.05)

    monkeypatch.setattr("distq.slots.Backoff", quick)
    monkeypatch.setattr("distq.worker.Backoff", quick)


def run_for(worker: Worker, seconds: float) -> None:
    """Run ``worker`` until a warm stop ``seconds`` from now; it exits 0."""
    timer = threading.Timer(seconds, worker._stop_warm)
    timer.start()
    try:
        assert worker.run() == 0
    finally:
        timer.cancel()


def boom(n: int) -> int:
    raise ValueError(f"bad {n}")


def _queued(transport: Transport, *squares: int) -> tuple[Producer, type[Any]]:
    """A producer with a square task per number queued, and the consumer class to patch."""
    producer = transport.producer("replies")
    producer.submit([Task(name="square", args=[n], reply_to="replies").encode() for n in squares])
    return producer, type(transport.consumer("probe"))


def test_a_worker_settles_every_kind_of_task_and_exits_when_idle(transport: Transport) -> None:
    producer = transport.producer("replies")
    good = [Task(name="square", args=[n], reply_to="replies") for n in range(1, 41)]
    failing = Task(name="boom", args=[1], reply_to="replies", max_attempts=2)
    producer.submit([t.encode() for t in good] + [failing.encode(), b"{not json"])
    registry = Registry()
    registry.register("boom", boom)
    out = io.StringIO()
    # idle for 1 s (counted from when the retry falls due); a short poll so the exit follows soon
    options = WorkerOptions(
        concurrency=2, exit_when_idle=1.0, worker_id="w", heartbeat_interval=0.3
    )
    worker = Worker(transport, registry, options, Console(out=out, err=out))

    assert worker.run() == 0

    results = {r.task_id: r for r in results_of(producer, 41, within=5)}
    assert {t.id: results[t.id].value for t in good} == {t.id: t.args[0] ** 2 for t in good}
    assert results[failing.id].status == "error" and results[failing.id].attempt == 2
    assert len(transport.dead_letters()) == 2  # the failing task and the garbage
    assert transport.stats().in_flight == 0 and transport.stats().ready == 0
    lines = out.getvalue()
    assert len(re.findall(r"^Get task \d+ from task_queue\.$", lines, re.M)) == 40
    assert "task_queue is empty" in lines
    assert re.search(
        r"^worker exit\. 40 ok, 1 failed for good, 1 retried, 2 dead-lettered in ", lines, re.M
    )
    producer.close()


def test_a_retry_runs_the_call_as_submitted_not_what_the_failed_attempt_left(
    transport: Transport,
) -> None:
    producer = transport.producer("replies")
    tries: list[list[int]] = []

    def total(items: list[int], seen: dict[str, int]) -> int:
        tries.append(list(items))
        seen["n"] = seen.get("n", 0) + 1  # kwargs change too
        added = 0
        while items:
            item = items.pop()
            if item == 3 and len(tries) == 1:
                raise ConnectionError("flaky backend, try again")
            added += item
        return added

    job = Task(name="total", args=[[1, 2, 3, 4]], kwargs={"seen": {}}, reply_to="replies")
    producer.submit([job.encode()])
    registry = Registry()
    registry.register("total", total)
    out = io.StringIO()
    options = WorkerOptions(exit_when_idle=0.5, worker_id="w", heartbeat_interval=0.3)
    assert Worker(transport, registry, options, Console(out=out, err=out)).run() == 0

    (result,) = results_of(producer, 1, within=5)
    assert (result.status, result.attempt, result.value) == ("ok", 2, 10), out.getvalue()
    assert tries == [[1, 2, 3, 4], [1, 2, 3, 4]]
    producer.close()


def test_a_chunk_past_its_time_limit_starts_none_of_its_remaining_calls(
    transport: Transport,
) -> None:
    """The thread left behind ran the chunk's later calls once its slow one returned,
    beside the retry and after the task had failed for good (chunks10)."""
    producer = transport.producer("replies")
    started: list[float] = []

    def sleepy(seconds: float) -> float:
        started.append(seconds)
        time.sleep(seconds)
        return seconds

    calls = [[2.5], [0.0], [0.0], [0.0]]  # 4 calls: the chunk's limit is 4 x 0.5 s
    chunk = Task(
        name=CHUNK_TASK, args=chunk_arguments("sleepy", calls), reply_to="replies", max_attempts=1
    )
    producer.submit([chunk.encode()])
    registry = Registry()
    registry.register("sleepy", sleepy)
    out = io.StringIO()
    options = WorkerOptions(
        exit_when_idle=0.5,
        worker_id="w",
        heartbeat_interval=0.3,
        time_limits=TimeLimits.parse("sleepy=0.5"),
    )
    began = time.monotonic()
    assert Worker(transport, registry, options, Console(out=out, err=out)).run() == 0
    (result,) = results_of(producer, 1, within=5)
    assert result.status == "error" and result.error_type == "TimeLimitExceeded"
    time.sleep(max(0.0, began + 3.5 - time.monotonic()))  # the slow call has returned
    assert started == [2.5], out.getvalue()
    producer.close()


def test_a_batch_settled_before_its_next_fetch_failed_counts_as_settled(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A settle that went through, then a failed wait for the next batch in the same call
    (Redis: the connection dropped in the wait), counts its tasks ok, not handed back."""
    producer = transport.producer("replies")
    tasks = [Task(name="square", args=[n], reply_to="replies") for n in range(1, 6)]
    producer.submit([t.encode() for t in tasks])
    kind = type(transport.consumer("probe"))
    original = kind.settle_then_fetch
    settled: list[int] = []

    def settle_then_fail(self: Any, settlements: Any, max_count: int, timeout: float = 0) -> Any:
        if settled:
            return original(self, settlements, max_count, timeout)
        self.settle(settlements)
        settled.append(len(settlements))
        raise SettledThenFailed("the broker went away after the settle")

    monkeypatch.setattr(kind, "settle_then_fetch", settle_then_fail)
    out = io.StringIO()
    options = WorkerOptions(concurrency=1, exit_when_idle=0.5, worker_id="w", prefetch=2)
    assert Worker(transport, Registry(), options, Console(quiet=True, out=out, err=out)).run() == 0
    results = results_of(producer, 5, within=5)
    assert sorted(r.value for r in results) == [1, 4, 9, 16, 25]
    assert settled and "broker went away after the settle; reconnecting" in out.getvalue()
    assert re.search(r"^worker exit\. 5 ok, ", out.getvalue(), re.M), out.getvalue()
    producer.close()


def test_a_batch_settled_before_its_next_fetch_was_refused_counts_as_settled(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, when what came after the settle was refused for a setting (Redis: the
    queue's key made another type): the worker stops, exit 2, its tasks counted ok."""
    producer, kind = _queued(transport, 2)

    def settle_then_refuse(self: Any, settlements: Any, max_count: int, timeout: float = 0) -> Any:
        self.settle(settlements)
        raise SettledThenRefused("the queue's key is another type now")

    monkeypatch.setattr(kind, "settle_then_fetch", settle_then_refuse)
    out = io.StringIO()
    options = WorkerOptions(concurrency=1, exit_when_idle=0.5, worker_id="w", prefetch=2)
    worker = Worker(transport, Registry(), options, Console(quiet=True, out=out, err=out))
    with pytest.raises(ConfigError, match="another type now"):
        worker.run()
    assert [r.value for r in results_of(producer, 1, within=5)] == [4]
    assert re.search(r"^worker exit\. 1 ok, ", out.getvalue(), re.M), out.getvalue()
    producer.close()


def test_a_settle_the_broker_held_up_is_no_idle_time_for_exit_when_idle(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A settle a broker held up (a RabbitMQ alarm, a Redis stall) is not idleness: the
    worker counted it as such and quit as the broker let go, leaving the tasks that came
    then queued (diff12a, a regression of this session's own fix). Only the wait for
    tasks after the settle counts (Redis settles and waits in one round trip: a worker
    there exited about 2 s after the others, diff12)."""
    producer, kind = _queued(transport, 3)
    original = kind.settle_then_fetch
    calls: list[float] = []

    def held_up_once(self: Any, settlements: Any, max_count: int, timeout: float = 0) -> Any:
        calls.append(time.monotonic())
        if len(calls) > 1:
            return original(self, settlements, max_count, timeout)
        time.sleep(3.0)  # the broker holds the settle
        self.settle(settlements)
        time.sleep(timeout)  # then the wait for tasks: none yet
        threading.Timer(0.5, producer.submit, [[later.encode()]]).start()  # one comes
        return []

    later = Task(name="square", args=[4], reply_to="replies")
    monkeypatch.setattr(kind, "settle_then_fetch", held_up_once)
    out = io.StringIO()
    options = WorkerOptions(concurrency=1, exit_when_idle=2.0, worker_id="w", prefetch=2)
    assert Worker(transport, Registry(), options, Console(quiet=True, out=out, err=out)).run() == 0
    assert sorted(r.value for r in results_of(producer, 2, within=5)) == [9, 16], out.getvalue()
    assert re.search(r"^worker exit\. 2 ok, ", out.getvalue(), re.M), out.getvalue()
    producer.close()


def test_a_settle_that_always_fails_does_not_rerun_its_batch_in_a_hot_loop(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker that refuses every settle (RabbitMQ's 406 on a queue declared otherwise,
    say) hands the batch back each time; before, the slot ran it again at once, thousands
    of times a second. Now the retries back off (0.5 s, 1 s, ... up to 5 s, jittered)."""
    _, kind = _queued(transport, 3)
    calls: list[float] = []

    def refuse(self: Any, settlements: Any, max_count: int, timeout: float = 0) -> Any:
        calls.append(time.monotonic())
        raise TransportError("PRECONDITION_FAILED, every time")

    monkeypatch.setattr(kind, "settle_then_fetch", refuse)
    out = io.StringIO()
    options = WorkerOptions(concurrency=1, worker_id="w", heartbeat_interval=0.3)
    worker = Worker(transport, Registry(), options, Console(quiet=True, out=out, err=out))
    run_for(worker, 3.0)
    assert 1 <= len(calls) <= 12, len(calls)  # before: thousands in 3 s


def test_a_failure_is_said_once_it_is_settled_not_when_the_settle_then_fails(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker said "dead-lettered" (or "retrying") when the task ended, before the
    settle: a settle that failed left the line wrong (the task stays queued and runs
    again), and the rerun said it a second time."""
    producer = transport.producer("replies")
    once = Task(name="boom", args=[1], reply_to="replies", max_attempts=1)
    twice = Task(name="boom", args=[2], reply_to="replies", max_attempts=2)
    producer.submit([once.encode(), twice.encode()])
    registry = Registry()
    registry.register("boom", boom)
    kind = type(transport.consumer("probe"))
    original = kind.settle_then_fetch
    refused: list[int] = []

    def refuse_twice(self: Any, settlements: Any, max_count: int, timeout: float = 0) -> Any:
        if len(refused) < 2:
            refused.append(len(settlements))
            raise TransportError("the broker went away before the settle")
        return original(self, settlements, max_count, timeout)

    monkeypatch.setattr(kind, "settle_then_fetch", refuse_twice)
    _quick_backoffs(monkeypatch)
    out = io.StringIO()
    options = WorkerOptions(concurrency=1, exit_when_idle=1.0, worker_id="w", prefetch=1)
    assert Worker(transport, registry, options, Console(out=out, err=out)).run() == 0
    lines = out.getvalue()
    assert len(refused) == 2, lines
    assert lines.count(f"task boom {once.id} dead-lettered: ") == 1, lines
    assert lines.count(f"task boom {twice.id} attempt 1/2 failed") == 1, lines
    assert lines.count(f"task boom {twice.id} dead-lettered: ") == 1, lines
    assert len(transport.dead_letters()) == 2
    producer.close()


def test_a_retry_the_master_refused_as_late_is_said_so_not_counted_as_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A task that failed after its lease lapsed (the worker's renewals did not come): the
    master refuses its retry (the copy requeued at the lapse decides), and the worker
    said "retrying" all the same and counted it retried (faults17, diff18, rmq19). It
    says the retry was not sent now, and the copy runs as the same attempt."""
    settings = Settings(
        authkey=secrets.token_bytes(8),
        manager_address=("127.0.0.1", free_port()),
        lease_seconds=1.0,
    )
    transport = open_transport(settings, "master")
    monkeypatch.setattr(type(transport), "heartbeat", lambda self, consumers: None)
    runs: list[float] = []

    def fails_after_its_lease_once() -> int:
        runs.append(time.monotonic())
        if len(runs) == 1:
            time.sleep(2.5)  # its lease (1 s) lapses: the master requeues the task
            raise ValueError("too late to be retried")
        return 42

    registry = Registry()
    registry.register("late", fails_after_its_lease_once)
    producer = transport.producer("replies")
    task = Task(name="late", args=[], reply_to="replies", max_attempts=3)
    try:
        producer.submit([task.encode()])
        out = io.StringIO()
        options = WorkerOptions(concurrency=1, exit_when_idle=1.0, worker_id="w")
        assert Worker(transport, registry, options, Console(out=out, err=out)).run() == 0
        (result,) = results_of(producer, 1, within=5)
        said = out.getvalue()
        assert (result.value, result.attempt, len(runs)) == (42, 1, 2), said
        assert (
            f"task late {task.id} attempt 1/3 failed (ValueError: too late to be retried); "
            "not retried: its retry was not sent, its lease had lapsed first"
        ) in said, said
        assert "retrying" not in said, said
        assert re.search(r"^worker exit\. 1 ok, 0 failed for good, 0 retried, ", said, re.M), said
        assert transport.dead_letters() == [] and transport.stats().ready == 0
    finally:
        producer.close()
        transport.close()


def test_a_line_not_sent_keeps_the_words_of_the_tasks_own_error() -> None:
    """A late ending's line loses distq's "retrying in ..." or "dead-lettered", found by
    their place: the first match took them out of the task's own error instead, and the
    line said both "retrying in 0.5 s" and "not retried" (code24 U5)."""
    endings = Endings("w1", "q")
    task = Task(name="up", args=[], reply_to="r", max_attempts=3)
    error = ValueError("upstream busy; retrying in 5 s, dead-lettered: never")
    retried = endings.failed(Delivery(task.encode(), 1), task, error, 0.0, 0.1, retryable=True)
    assert retried.note is not None and retried.note.endswith("; retrying in 0.5 s")
    assert _not_sent(retried, _LAPSED) == (
        f"task up {task.id} attempt 1/3 failed (ValueError: upstream busy; retrying in 5 s, "
        f"dead-lettered: never); not retried: its retry {_LAPSED}"
    )
    last = Task(name="up", args=[], reply_to="r", attempt=3, max_attempts=3, id=task.id)
    failed = endings.failed(Delivery(last.encode(), 2), last, error, 0.0, 0.1, retryable=True)
    assert _not_sent(failed, _LAPSED) == (
        f"task up {task.id}: failed 3 of 3 attempts; last error: ValueError: upstream busy; "
        f"retrying in 5 s, dead-lettered: never; not dead-lettered: its dead letter {_LAPSED}"
    )


def test_ok_results_settled_late_beside_a_dead_letter_reach_the_master(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch [fails for good, ok, ok] settled after its lease lapsed (the worker stood
    still: no renewal, no hand-back): the ok results rode on the failed task's message,
    which the master drops with a late dead letter (its copy decides), and were lost,
    their tasks counted done and their copies dropped (late21)."""
    settings = Settings(
        authkey=secrets.token_bytes(8),
        manager_address=("127.0.0.1", free_port()),
        lease_seconds=1.0,
        prefetch=10,
    )
    transport = open_transport(settings, "master")
    monkeypatch.setattr(type(transport), "heartbeat", lambda self, consumers: None)
    monkeypatch.setattr(Keeper, "_hand_back", lambda self, slot, batch: False)
    runs: dict[int, int] = {}

    def ok(n: int) -> int:
        runs[n] = runs.get(n, 0) + 1
        if n == 3 and runs[n] == 1:
            time.sleep(2.5)  # the batch's lease (1 s) lapses here
        return n

    registry = Registry()
    registry.register("ok", ok)
    registry.register("boom", boom)
    producer = transport.producer("replies")
    failing = Task(name="boom", args=[1], reply_to="replies", max_attempts=1)
    tasks = [Task(name="ok", args=[1], reply_to="replies")]  # sizes the next batch up
    tasks += [failing, *(Task(name="ok", args=[n], reply_to="replies") for n in (2, 3))]
    try:
        producer.submit([t.encode() for t in tasks])
        out = io.StringIO()
        options = WorkerOptions(concurrency=1, prefetch=10, exit_when_idle=1.5, worker_id="w")
        assert Worker(transport, registry, options, Console(out=out, err=out)).run() == 0
        said = out.getvalue()
        got = {r.task_id: r for r in results_of(producer, 4, within=5)}
        assert sorted(r.value for r in got.values() if r.status == "ok") == [1, 2, 3], said
        assert got[failing.id].status == "error", said
        assert (
            f"task boom {failing.id}: failed 1 of 1 attempts; last error: ValueError: bad 1; "
            "not dead-lettered: its dead letter was not sent"
        ) in said, said
        assert len(transport.dead_letters()) == 1 and transport.stats().ready == 0
    finally:
        producer.close()
        transport.close()


class Poison(Exception):
    def __str__(self) -> str:
        raise SystemExit(3)


def poison() -> None:
    raise Poison


def test_a_task_error_whose_text_raises_systemexit_is_dead_lettered_not_a_dead_slot(
    transport: Transport,
) -> None:
    """It went through the worker's handling and ended the slot's thread; the task went
    back, ended the next slot, and the worker said "worker exit." and exited 0."""
    producer = transport.producer("replies")
    bad = Task(name="poison", args=[], reply_to="replies", max_attempts=1)
    producer.submit([bad.encode(), Task(name="square", args=[3], reply_to="replies").encode()])
    registry = Registry()
    registry.register("poison", poison)
    out = io.StringIO()
    options = WorkerOptions(concurrency=2, exit_when_idle=0.5, worker_id="w")
    assert Worker(transport, registry, options, Console(out=out, err=out)).run() == 0
    assert "Poison: <exception str() failed>" in out.getvalue()
    assert re.search(r"^worker exit\. 1 ok, 1 failed for good, ", out.getvalue(), re.M)
    assert len(transport.dead_letters()) == 1
    producer.close()


def test_a_slot_that_ends_on_a_bug_stops_the_worker_with_exit_1(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slot's thread that died left the worker running with one slot fewer, unsaid; the
    last one dead, it exited 0 as if stopped."""

    def broken(prefetch: int) -> None:
        raise RuntimeError("a bug in distq")

    monkeypatch.setattr("distq.worker.BatchSizer", broken)
    monkeypatch.setattr("threading.excepthook", lambda args: None)  # the thread's traceback
    out = io.StringIO()
    options = WorkerOptions(concurrency=2, worker_id="w")
    worker = Worker(transport, Registry(), options, Console(out=out, err=out))
    assert worker.run() == 1
    lines = out.getvalue()
    assert "slot 0 stopped: RuntimeError: a bug in distq; the worker stops (exit 1)" in lines or (
        "slot 1 stopped: RuntimeError: a bug in distq; the worker stops (exit 1)" in lines
    ), lines
    assert "worker exit." in lines


def test_a_slot_that_ends_on_a_bug_while_a_setting_is_refused_says_the_exit_that_follows(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slot that ended on a bug while a setting the broker refused stopped the worker
    said "the worker stops (exit 1)", and the worker exited 2: the refusal, raised at the
    end, decides. The line states 2 now, and what for."""
    workers: list[Worker] = []

    def broken(prefetch: int) -> None:
        workers[0]._refused(ConfigError("the broker refused a setting (a test's)"))
        raise RuntimeError("a bug in distq")

    monkeypatch.setattr("distq.worker.BatchSizer", broken)
    monkeypatch.setattr("threading.excepthook", lambda args: None)  # the thread's traceback
    out = io.StringIO()
    options = WorkerOptions(concurrency=1, worker_id="w")
    workers.append(Worker(transport, Registry(), options, Console(out=out, err=out)))
    with pytest.raises(ConfigError):  # `distq worker`: its line, then exit 2
        workers[0].run()
    lines = out.getvalue()
    assert (
        "slot 0 stopped: RuntimeError: a bug in distq; the worker stops (exit 2, for the "
        "error said last)"
    ) in lines, lines
    assert "(exit 1)" not in lines, lines


def test_a_broker_that_connects_but_refuses_the_work_is_one_outage_said_once(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis out of memory takes connections and refuses every write: each slot printed
    "...; reconnecting" and "reconnected ... after 0.1 s" for every refused fetch (56 pairs
    in 30 s from an idle 4-slot worker). The outage ends when a call goes through."""
    kind = type(transport.consumer("probe"))
    fetch = kind.fetch
    refusals = [6]

    def refusing(self: Any, max_count: int, timeout: float) -> Any:
        if refusals[0] > 0:
            refusals[0] -= 1
            raise TransportError("OOM command not allowed when used memory > 'maxmemory'")
        return fetch(self, max_count, timeout)

    monkeypatch.setattr(kind, "fetch", refusing)
    _quick_backoffs(monkeypatch)
    out = io.StringIO()
    options = WorkerOptions(concurrency=2, worker_id="w", heartbeat_interval=0.3)
    worker = Worker(transport, Registry(), options, Console(out=out, err=out))
    run_for(worker, 3.0)
    lines = out.getvalue()
    assert refusals[0] == 0, lines
    assert lines.count("; reconnecting") == 1 and lines.count("reconnected to ") == 1, lines


def _run_till_idle(transport: Transport, idle: float) -> str:
    """A one-slot worker run until idle for ``idle`` s (exit 0); what it printed."""
    out = io.StringIO()
    options = WorkerOptions(
        concurrency=1, exit_when_idle=idle, worker_id="w", heartbeat_interval=0.1
    )
    worker = Worker(transport, Registry(), options, Console(out=out, err=out))
    assert worker.run() == 0
    return out.getvalue()


@pytest.mark.parametrize("in_master", [False, True], ids=["own-broker", "queues-in-master"])
def test_exit_when_idle_does_not_count_a_broker_outage_as_nothing_to_do(
    transport: Transport, monkeypatch: pytest.MonkeyPatch, in_master: bool
) -> None:
    """A broker frozen mid-job for longer than --exit-when-idle: the worker said
    "task_queue is empty" and exited 0 while the broker was still away, the tasks
    waiting in it and the master waiting until its --timeout. Where the queues are in
    the master (manager), its end is most likely the job's: there it still counts."""
    kind = type(transport.consumer("probe"))
    fetch = kind.fetch
    away_until = time.monotonic() + 2.0

    def away(self: Any, max_count: int, timeout: float) -> Any:
        if time.monotonic() < away_until:
            time.sleep(0.1)  # a socket timeout's wait, shortened
            raise TransportError("Timeout reading from 127.0.0.1:6379")
        return fetch(self, max_count, timeout)

    def unreachable(consumer_id: str) -> Any:
        if time.monotonic() < away_until:
            time.sleep(0.1)
            raise TransportError("Timeout connecting to 127.0.0.1:6379")
        return connect(consumer_id)

    connect = transport.consumer
    monkeypatch.setattr(kind, "fetch", away)
    monkeypatch.setattr(transport, "consumer", unreachable)
    monkeypatch.setattr(transport, "queues_in_master", in_master)
    _quick_backoffs(monkeypatch)
    producer = transport.producer("w.results.job")
    tasks = [Task(name="square", args=[n], reply_to="w.results.job") for n in range(3)]
    producer.submit([t.encode() for t in tasks])
    said = _run_till_idle(transport, 0.5)
    if in_master:  # gone for S seconds: the job is over, as before
        assert time.monotonic() < away_until and "task_queue is empty" in said, said
        producer.close()
        return
    assert time.monotonic() >= away_until, said  # not while the broker was away
    assert sorted(r.value for r in results_of(producer, 3, within=5)) == [0, 1, 4], said
    assert said.index("reconnected to ") < said.index("task_queue is empty"), said
    producer.close()


@pytest.mark.parametrize("hangs", ["fetch", "answers"])
def test_exit_when_idle_does_not_count_a_broker_that_hangs_as_nothing_to_do(
    transport: Transport, monkeypatch: pytest.MonkeyPatch, hangs: str
) -> None:
    """A broker that hangs (frozen, paused: no error until a call times out, 5 s on
    Redis) counted as idle time: the worker said "task_queue is empty" during the hang
    and exited as the broker came back, leaving what was queued meanwhile (docs23 M1).
    A fetch overdue by FETCH_OVERDUE_S is no idleness; the S seconds count from its
    answer. Where the fetch only waits for what the broker pushes (RabbitMQ), an empty
    one asks the broker for an answer, and it is that answer which does not come: a
    question unanswered that long is no idleness either."""
    kind = type(transport.consumer("probe"))
    away_until = time.monotonic() + 3.0
    asked: list[float] = []
    if hangs == "fetch":
        fetch = kind.fetch

        def hangs_once(self: Any, max_count: int, timeout: float) -> Any:
            if not asked:
                asked.append(time.monotonic())
                time.sleep(away_until - time.monotonic())  # the broker answers after 3 s
                return []
            return fetch(self, max_count, timeout)

        monkeypatch.setattr(kind, "fetch", hangs_once)
    else:

        def unanswered(self: Any, timeout: float) -> float | None:
            asked.append(time.monotonic())
            if time.monotonic() >= away_until:
                return None  # the broker answers after 3 s
            time.sleep(timeout)  # waits for the answer, as long as it may
            return asked[0]

        monkeypatch.setattr(kind, "answers", unanswered)
    producer = transport.producer("w.results.job")
    tasks = [Task(name="square", args=[n], reply_to="w.results.job") for n in range(3)]
    threading.Timer(2.5, producer.submit, [[t.encode() for t in tasks]]).start()
    said = _run_till_idle(transport, 1.5)
    assert asked, said
    assert sorted(r.value for r in results_of(producer, 3, within=5)) == [0, 1, 4], said
    assert time.monotonic() >= away_until + 1.5, said  # S counted from the answer
    producer.close()


def test_an_unanswered_question_holds_the_idle_verdict_a_second_after_it_was_asked(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A question waits for nothing but its answer: a second without one is a broker
    that does not answer. Held to a fetch's measure instead (its wait of up to 1 s plus
    a second), a question asked as the broker paused counted as idle for 2 s, and the
    worker said "task_queue is empty" 2.0 s into a pause, with S 3 s run out 1.8 s in
    (idle24b)."""
    kind = type(transport.consumer("probe"))
    asked: list[float] = []
    answers_at = time.monotonic() + 3.5

    def unanswered(self: Any, timeout: float) -> float | None:
        asked.append(time.monotonic())
        return None if time.monotonic() >= answers_at else asked[0]

    monkeypatch.setattr(kind, "answers", unanswered)
    producer = transport.producer("w.results.job")
    tasks = [Task(name="square", args=[n], reply_to="w.results.job") for n in range(3)]
    threading.Timer(3.0, producer.submit, [[t.encode() for t in tasks]]).start()
    out = io.StringIO()
    # fetches of 1 s: the first question about 1 s in, S run out 2.5 s in
    options = WorkerOptions(
        concurrency=1, exit_when_idle=2.5, worker_id="w", heartbeat_interval=3.0
    )
    assert Worker(transport, Registry(), options, Console(out=out, err=out)).run() == 0
    assert sorted(r.value for r in results_of(producer, 3, within=5)) == [0, 1, 4], out.getvalue()
    producer.close()


def test_a_worker_without_exit_when_idle_asks_the_broker_nothing_more(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The round trip of an empty fetch is for --exit-when-idle's verdict alone: an
    idle worker without it (every slot of every worker, once per fetch) sends none."""
    kind = type(transport.consumer("probe"))
    asked = threading.Event()
    monkeypatch.setattr(kind, "answers", lambda self, timeout: asked.set())
    options = WorkerOptions(concurrency=2, worker_id="w", heartbeat_interval=0.1)
    run_for(Worker(transport, Registry(), options, Console(out=io.StringIO())), 1.0)
    assert not asked.is_set()
    _run_till_idle(transport, 0.5)
    assert asked.is_set()  # the same worker with it asks


def _naps(transport: Transport, count: int, seconds: float) -> tuple[Producer, Registry]:
    """``count`` tasks that sleep ``seconds`` queued, and a registry that runs them."""
    producer = transport.producer("w.results.job")
    registry = Registry()
    registry.register("nap", lambda seconds: time.sleep(seconds))
    naps = [Task(name="nap", args=[seconds], reply_to="w.results.job") for _ in range(count)]
    producer.submit([t.encode() for t in naps])
    return producer, registry


def _two_slots_napping(
    transport: Transport, count: int, seconds: float, stop_after: float, **options: Any
) -> tuple[Producer, str]:
    """A worker of two slots run on ``count`` naps of ``seconds`` until a warm stop
    ``stop_after`` s in: the producer, and what the worker said."""
    producer, registry = _naps(transport, count, seconds)
    out = io.StringIO()
    settings = WorkerOptions(concurrency=2, worker_id="w", **options)
    run_for(Worker(transport, registry, settings, Console(out=out, err=out)), stop_after)
    return producer, out.getvalue()


def test_a_stopping_worker_settles_again_while_its_drain_lasts(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM while the broker was away a moment: the tasks ran to their end, their
    settle failed, and the worker dropped their results and exited at once, its drain
    barely begun; they ran again elsewhere (life16). It settles again now, until the
    drain runs out, and the results reach the master; the settle that goes through says
    the broker is back, once, as any call that goes through does (mut17b)."""
    kind = type(transport.consumer("probe"))
    assert kind.resettles
    settle = kind.settle
    failures: list[float] = []

    def away_a_moment(self: Any, settlements: Any) -> None:
        if len(failures) < 3:
            failures.append(time.monotonic())
            raise TransportError("the broker went away a moment")
        settle(self, settlements)

    monkeypatch.setattr(kind, "settle", away_a_moment)
    producer, said = _two_slots_napping(transport, 2, 0.5, 0.2, drain_seconds=20.0)
    assert len(failures) == 3, said
    assert "2 ok" in said and "went away a moment; reconnecting" in said, said
    assert said.count("; reconnecting") == 1, said
    assert said.count("reconnected to manager transport") == 1, said
    assert len(results_n(producer, 2)) == 2
    producer.close()


def test_a_lease_renewal_the_broker_refused_is_tried_again_soon_and_said_once(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker away while slots run long tasks: each slot's keeper line came every
    interval (24 lines for 8 slots and 6 s), with no "reconnected", and the next try
    an interval after a failure fell on the lease's deadline (7 of 8 tasks ran twice)."""
    kind = type(transport)  # manager: the keeper renews every slot's lease in one call
    assert kind.renews_apart
    heartbeat = kind.heartbeat
    seen: dict[str, float] = {}

    def away_a_while(self: Any, consumers: Any) -> None:
        if not consumers:  # the keeper naming its thread (test_keeper_manager): no renewal
            return heartbeat(self, consumers)
        now = time.monotonic()
        first = seen.setdefault("first", now)
        if now < first + 1.2:
            raise TransportError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        seen.setdefault("back", now)
        heartbeat(self, consumers)

    monkeypatch.setattr(kind, "heartbeat", away_a_while)
    producer, registry = _naps(transport, 2, 3.5)
    out = io.StringIO()
    options = WorkerOptions(concurrency=2, worker_id="w", heartbeat_interval=1.0)
    worker = Worker(transport, registry, options, Console(out=out, err=out))
    run_for(worker, 5.0)
    said = out.getvalue()
    assert said.count("Connection refused; reconnecting") == 1, said
    assert said.count("reconnected to ") == 1 and "keeping a long batch" not in said, said
    # the first try past the outage came soon after it (0.1 s), not an interval (1 s) later
    assert seen["back"] - (seen["first"] + 1.2) < 0.6, seen
    producer.close()


def test_the_keeper_renews_every_busy_slots_lease_in_one_call(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slot after slot, one round trip each: with 32 slots running Python code the keeper
    waited for the GIL at every one, a round of renewals outlasted the 5 s lease, and 64
    tasks ran 115 times. Now one call renews every slot that is due."""
    kind = type(transport)
    heartbeat = kind.heartbeat
    calls: list[int] = []

    def counted(self: Any, consumers: Any) -> None:
        calls.append(len(consumers))
        heartbeat(self, consumers)

    monkeypatch.setattr(kind, "heartbeat", counted)
    producer, registry = _naps(transport, 4, 1.5)
    out = io.StringIO()
    options = WorkerOptions(concurrency=4, worker_id="w", heartbeat_interval=0.3, prefetch=1)
    run_for(Worker(transport, registry, options, Console(out=out, err=out)), 2.5)
    assert len(results_of(producer, 4, within=5)) == 4
    assert calls and max(calls) == 4, calls  # the four slots, together
    assert len(calls) <= 12, calls  # about one a heartbeat interval, not one per slot
    producer.close()


def test_a_renewal_that_came_past_the_lease_is_said_once(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing said that the keeper, starved of the GIL by slots running Python code,
    renewed the leases too late and their tasks ran again elsewhere."""
    kind = type(transport)
    heartbeat = kind.heartbeat
    calls: list[float] = []

    def slow_first(self: Any, consumers: Any) -> None:
        if not consumers:  # the keeper naming its thread (test_keeper_manager): no renewal
            return heartbeat(self, consumers)
        calls.append(time.monotonic())
        if len(calls) == 1:
            time.sleep(1.2)  # past a lease of three 0.3 s intervals, counted from before
        heartbeat(self, consumers)

    monkeypatch.setattr(kind, "heartbeat", slow_first)
    producer, said = _two_slots_napping(transport, 1, 3.0, 3.5, heartbeat_interval=0.3)
    assert said.count("warning: renewing the leases of running tasks came ") == 1, said
    assert "run fewer slots (--concurrency)" in said and len(calls) >= 3, said
    # the time went in the renewal before, not in this process: said so, not only "this
    # process was held up" (a paused manager master blocked the call: obs16). Its 1.2 s
    # and the call's own time: "took 1.2 s" failed once at load 16 ("came 0.5 s past")
    took = re.search(r"the renewal before it took (\d+\.\d) s to return \(a broker that", said)
    assert took is not None and float(took[1]) >= 1.2, said
    assert "this process was held up" not in said, said
    producer.close()


def test_slots_switch_the_gil_often_enough_for_the_keeper(transport: Transport) -> None:
    """The keeper waited for the GIL behind every slot running Python code at each step of
    a renewal, 5 ms a turn: 128 tasks on 64 slots ran 176 times; at 1 ms, once each.
    The interval is the process's own again once the worker returns."""
    import sys

    seen: list[float] = []
    registry = Registry()
    registry.register("switch", lambda: seen.append(sys.getswitchinterval()))
    producer = transport.producer("w.results.job")
    producer.submit([Task(name="switch", args=[], reply_to="w.results.job").encode()])
    before = sys.getswitchinterval()
    options = WorkerOptions(concurrency=2, worker_id="w", heartbeat_interval=0.3)
    run_for(Worker(transport, registry, options, Console(out=io.StringIO())), 1.0)
    assert seen == [0.001] and sys.getswitchinterval() == before
    producer.close()


def test_a_broken_link_under_a_long_task_is_one_outage_while_other_slots_work(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RabbitMQ: a slot in a long task keeps its broken link until the task ends. Each
    failed renewal on it began a new outage once another slot's call had ended the last:
    a "reconnecting" / "reconnected" pair every 1.3 s while the broker was up."""
    monkeypatch.setattr(transport, "renews_apart", False)  # as RabbitMQ: slot by slot
    kind = type(transport.consumer("probe"))
    heartbeat = kind.heartbeat
    broken: set[int] = set()

    def on_a_broken_link(self: Any) -> None:
        if id(self) in broken:
            raise TransportError("RabbitMQ at 127.0.0.1:5672: heartbeat failed: Connection reset")
        heartbeat(self)

    monkeypatch.setattr(kind, "heartbeat", on_a_broken_link)
    registry = Registry()

    slots: list[Any] = []  # the worker's, once it starts them

    def long_one(seconds: float) -> None:
        for slot in slots:  # this slot's link breaks
            if threading.current_thread().name == f"distq-slot-{slot.index}":
                broken.add(id(slot.consumer))
        time.sleep(seconds)

    registry.register("long_one", long_one)
    producer = transport.producer("w.results.job")
    out = io.StringIO()
    options = WorkerOptions(concurrency=2, worker_id="w", heartbeat_interval=0.3)
    worker = Worker(transport, registry, options, Console(out=out, err=out))
    start = worker._start

    def seen_start(started: Any, done: Any) -> None:
        slots.extend(started)
        start(started, done)

    monkeypatch.setattr(worker, "_start", seen_start)
    producer.submit([Task(name="long_one", args=[3.0], reply_to="w.results.job").encode()])

    def quick_ones() -> None:  # the other slot works all along: its calls go through
        for n in range(25):
            producer.submit([Task(name="square", args=[n], reply_to="w.results.job").encode()])
            time.sleep(0.1)

    feeder = threading.Thread(target=quick_ones)
    feeder.start()
    run_for(worker, 3.5)
    feeder.join()
    said = out.getvalue()
    assert broken, said
    assert said.count("; reconnecting") <= 1 and said.count("reconnected to ") <= 1, said
    producer.close()


def test_exit_when_idle_counts_from_the_start_not_from_before_it(transport: Transport) -> None:
    """The time before ``run`` (the CLI's wait for a broker that is down) is not idle
    time: before, a worker built 1.5 s earlier exited 0.2 s into ``run``, its
    --exit-when-idle 1 used up, whatever waited in the queue."""
    out = io.StringIO()
    # short fetches (0.1 s), so the exit follows the idle check closely
    options = WorkerOptions(
        concurrency=1, exit_when_idle=1.0, worker_id="w", heartbeat_interval=0.1
    )
    worker = Worker(transport, Registry(), options, Console(out=out, err=out))
    time.sleep(1.5)
    started = time.monotonic()
    assert worker.run() == 0
    assert time.monotonic() - started >= 0.9, out.getvalue()


def test_a_third_signal_during_the_cold_stop_does_not_break_it(transport: Transport) -> None:
    """Ctrl-C three times: the first is a warm stop, the second a cold one, and the third
    (arriving while the cold stop waits for an idle slot's fetch) is only noted. Before,
    it raised out of the cold stop: two tracebacks, no summary, exit 1."""
    out = io.StringIO()
    options = WorkerOptions(concurrency=1, worker_id="w", heartbeat_interval=1.0)  # 1 s fetches
    worker = Worker(transport, Registry(), options, Console(out=out, err=out))
    ignored = signal.signal(signal.SIGINT, lambda *_: None)  # a late signal must not hit pytest

    def three_interrupts() -> None:
        time.sleep(0.5)
        for _ in range(3):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)

    sender = threading.Thread(target=three_interrupts)
    sender.start()
    try:
        assert worker.run() == 0
    finally:
        sender.join()
        signal.signal(signal.SIGINT, ignored)
    lines = out.getvalue()
    assert "SIGINT again: already handing back every task and exiting" in lines, lines
    assert re.search(r"^worker exit\. 0 ok, ", lines, re.M), lines


def test_task_settled_lines_carry_the_time_of_the_settle_not_of_the_wait_after_it(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """settle_then_fetch settles, then waits up to a second for the next tasks: the
    ``task settled`` line is stamped when the settle was sent, not when the wait ended."""
    producer, kind = _queued(transport, 3)
    original = kind.settle_then_fetch
    returned: list[float] = []

    def settle_then_wait(self: Any, settlements: Any, max_count: int, timeout: float = 0) -> Any:
        claimed = original(self, settlements, max_count, timeout)
        time.sleep(0.5)  # the wait for the next task, as on an idle Redis queue
        returned.append(time.time())
        return claimed

    monkeypatch.setattr(kind, "settle_then_fetch", settle_then_wait)
    out = io.StringIO()
    log = JsonConsole("worker", out=out, err=out, worker="w")
    options = WorkerOptions(concurrency=1, exit_when_idle=0.5, worker_id="w", prefetch=2)
    worker = Worker(transport, Registry(), options, log, telemetry=WorkerTelemetry(log=log))
    assert worker.run() == 0
    [settled] = [
        line
        for line in map(json.loads, out.getvalue().splitlines())
        if line.get("event") == "task settled"
    ]
    stamped = datetime.fromisoformat(settled["timestamp"].replace("Z", "+00:00")).timestamp()
    assert returned and stamped <= returned[0] - 0.4, (settled, returned)
    producer.close()


def test_an_idle_worker_past_a_short_drain_says_no_task_still_runs(transport: Transport) -> None:
    """DISTQ_DRAIN_SECONDS=0: idle slots waiting in their fetch counted as tasks that
    still ran ("tasks still run after 0 s: handing them back") on every idle exit."""
    out = io.StringIO()
    options = WorkerOptions(
        concurrency=2, exit_when_idle=0.3, worker_id="w", heartbeat_interval=0.3, drain_seconds=0
    )
    worker = Worker(transport, Registry(), options, Console(out=out, err=out))
    assert worker.run() == 0
    assert "task_queue is empty" in out.getvalue()
    assert "still run" not in out.getvalue(), out.getvalue()
    assert "DISTQ_DRAIN_SECONDS" not in out.getvalue(), out.getvalue()


def test_a_drain_that_runs_out_tells_tasks_running_from_slots_held_by_the_broker() -> None:
    """A warm stop against a frozen broker said "tasks still run" of slots whose tasks
    had ended, held in a broker call (rmq18b): each is said as what it is."""
    running, ended, idle = Slot(0), Slot(1), Slot(2)
    for slot in (running, ended):
        slot.batch = Batch([Delivery(b"t", 1)])
    assert running.batch is not None
    running.batch.claim = [Delivery(b"t", 1)]  # as run_batch holds the task it runs
    said = _drain_ran_out([running, ended, idle], 20)
    assert said.startswith("after 20 s (DISTQ_DRAIN_SECONDS), 1 task still runs and 1 slot ")
    assert "1 slot whose tasks have ended still waits on the broker" in said
    assert _drain_ran_out([running], 5) == (
        "after 5 s (DISTQ_DRAIN_SECONDS), 1 task still runs: handing back what is in hand"
    )
    assert "still run" not in _drain_ran_out([ended], 5)


def test_a_drain_that_runs_out_says_one_task_and_one_slot_in_the_singular() -> None:
    """It said "1 task(s) still run and 1 slot(s) whose tasks have ended still wait"; of
    more, the plural."""
    slots = [Slot(i) for i in range(4)]
    for slot in slots:
        slot.batch = Batch([Delivery(b"t", 1)])
        slot.batch.claim = [Delivery(b"t", 1)] if slot.index < 2 else []
    assert _drain_ran_out(slots, 5) == (
        "after 5 s (DISTQ_DRAIN_SECONDS), 2 tasks still run and 2 slots whose tasks have "
        "ended still wait on the broker (it does not answer; their tasks run again once "
        "their leases lapse): handing back what is in hand"
    )
    assert _drain_ran_out(slots[1:3], 5) == (  # "their tasks" of one slot: the slot's
        "after 5 s (DISTQ_DRAIN_SECONDS), 1 task still runs and 1 slot whose tasks have "
        "ended still waits on the broker (it does not answer; the slot's tasks run again "
        "once their leases lapse): handing back what is in hand"
    )


def _slots_running(running: int, of: int) -> list[Slot]:
    """``of`` slots each holding a batch, the first ``running`` running its task."""
    slots = [Slot(i) for i in range(of)]
    for slot in slots:
        slot.batch = Batch([Delivery(b"t", 1)])
        slot.batch.claim = [Delivery(b"t", 1)] if slot.index < running else []
    return slots


def test_a_drain_that_runs_out_counts_past_999_with_separators() -> None:
    """Of a worker's 1,024 slots (DISTQ_CONCURRENCY's most) it said "1010 tasks still
    run" and "1012 slots whose tasks have ended"."""
    said = _drain_ran_out(_slots_running(1010, 1024), 5)
    assert ", 1,010 tasks still run and 14 slots whose tasks have ended " in said, said
    said = _drain_ran_out(_slots_running(12, 1024), 5)
    assert ", 12 tasks still run and 1,012 slots whose tasks have ended " in said, said


class _SlowClose:
    """A consumer whose close takes 1 s, as a hung broker's did (3 s each)."""

    def __init__(self) -> None:
        self.closed = 0.0

    def close(self) -> None:
        time.sleep(1.0)
        self.closed = time.monotonic()


def test_a_cold_stop_closes_the_slots_side_by_side(transport: Transport) -> None:
    """One close after another: with 4 slots on a hung broker, 12 s of closes after the
    drain, past Kubernetes' grace period."""
    worker = Worker(transport, Registry(), WorkerOptions(worker_id="w"), Console())
    consumers = [_SlowClose() for _ in range(4)]
    started = time.monotonic()
    worker._close_all(consumers)  # type: ignore[arg-type]
    assert time.monotonic() - started < 2.0
    assert all(c.closed for c in consumers)


def test_a_slot_whose_thread_cannot_start_stops_the_worker_naming_the_limit(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under `ulimit -v` (or a container's pids limit) `thread.start()` raised "can't
    start new thread" out of the worker: a traceback, exit 1, no line saying what to
    change (env11). Now the slots started stop warm and run() raises a ConfigError
    (exit 2) naming the slot and the limits; the tasks stay queued."""
    producer = transport.producer("replies")
    producer.submit([Task(name="square", args=[n], reply_to="replies").encode() for n in (1, 2)])
    original, started = threading.Thread.start, list[str]()

    def start(self: threading.Thread) -> None:
        if self.name.startswith("distq-slot-") and len(started) == 3:  # the keeper, 2 slots
            raise RuntimeError("can't start new thread")
        started.append(self.name)
        original(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    out = io.StringIO()
    options = WorkerOptions(concurrency=4, worker_id="w", prefetch=1)
    worker = Worker(transport, Registry(), options, Console(quiet=True, out=out, err=out))
    with pytest.raises(ConfigError) as caught:
        worker.run()
    assert str(caught.value) == (
        "could not start slot 3 of 4 (can't start new thread): the process is at a limit on "
        "threads or memory (ulimit -u or -v, a container's pids or memory limit); lower "
        "--concurrency, or raise the limit"
    )
    assert re.search(r"^worker exit\. ", out.getvalue(), re.M), out.getvalue()
    producer.close()


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (RuntimeError("can't start new thread"), "can't start new thread"),
        (MemoryError(), "MemoryError"),
    ],
)
def test_a_slot_that_cannot_start_again_after_a_time_limit_stops_the_worker_naming_it(
    transport: Transport, monkeypatch: pytest.MonkeyPatch, error: BaseException, said: str
) -> None:
    """Past a time limit a slot goes on in a new thread; when that one could not start
    the keeper said "keeping a long batch: can't start new thread", the slot was gone,
    and the worker exited 0, tasks still queued (diff15b). For want of memory (``ulimit
    -v``) rather than threads it said "keeping a long batch failed: MemoryError (a bug in
    distq ...)" and tried nothing again."""
    producer = transport.producer("replies")
    tasks = [Task(name="sleepy", args=[s], reply_to="replies", max_attempts=1) for s in (2, 0)]
    producer.submit([task.encode() for task in tasks])
    registry = Registry()
    registry.register("sleepy", time.sleep)
    original, slots = threading.Thread.start, list[str]()

    def start(self: threading.Thread) -> None:
        if self.name.startswith("distq-slot-"):
            slots.append(self.name)
            if len(slots) > 1:  # the slot's second thread, after the time limit
                raise error
        original(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    out = io.StringIO()
    options = WorkerOptions(
        worker_id="w",
        prefetch=1,
        heartbeat_interval=0.2,
        time_limits=TimeLimits.parse("sleepy=0.5"),
    )
    worker = Worker(transport, registry, options, Console(quiet=True, out=out, err=out))
    with pytest.raises(ConfigError) as caught:
        worker.run()
    assert str(caught.value).startswith(
        f"could not start slot 0 again after its time limit ({said}): the process is at a "
        "limit on threads or memory"
    ), out.getvalue()
    assert "keeping a long batch" not in out.getvalue(), out.getvalue()
    producer.close()


def test_a_keeper_failure_of_its_own_is_said_as_a_bug_and_tried_again(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure in the keeper that is not the broker's (a bug) is said once an interval
    with what to do, and the keeper goes on: the long batch's task still ends ok. The
    line said only "keeping a long batch: boom", no kind, nothing to do (code24 E4)."""
    producer = transport.producer("replies")
    producer.submit([Task(name="sleepy", args=[1.2], reply_to="replies").encode()])
    registry = Registry()
    registry.register("sleepy", time.sleep)
    original, calls = Keeper._hand_back, list[int]()

    def hand_back(self: Keeper, slot: Slot, batch: Batch) -> bool:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("boom")
        return original(self, slot, batch)

    monkeypatch.setattr(Keeper, "_hand_back", hand_back)
    out = io.StringIO()
    options = WorkerOptions(worker_id="w", prefetch=1, heartbeat_interval=0.2, exit_when_idle=1.5)
    worker = Worker(transport, registry, options, Console(quiet=True, out=out, err=out))
    worker.run()
    said = out.getvalue()
    assert (
        said.count(
            "keeping a long batch failed: ValueError: boom (a bug in distq: please report this "
            "line; the keeper tries again in an interval)"
        )
        == 1
    ), said
    assert len(calls) > 1, said  # tried again
    (result,) = results_of(producer, 1, within=5)
    assert (result.status, result.attempt) == ("ok", 1), result
    producer.close()


def test_a_time_limit_whose_settle_fails_says_the_attempt_failed(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A time limit that fired while the broker was away: its settle failed, and no line
    said the attempt had run out of time (only "reconnecting", rmq18b). It says so, and
    that the attempt was not settled; and the task runs again (the slot kept its
    consumer, which held the task, its lease renewed for good: it never ran again)."""
    producer = transport.producer("replies")
    late = Task(name="sleepy", args=[1.5], reply_to="replies", id="t-late", max_attempts=2)
    producer.submit([late.encode()])
    registry = Registry()
    registry.register("sleepy", time.sleep)
    kind = type(transport.consumer("probe"))
    settle, failed = kind.settle, list[int]()

    def away_once(self: Any, settlements: Any) -> None:
        if not failed:
            failed.append(len(settlements))
            raise TransportError("the broker went away a moment")
        settle(self, settlements)

    monkeypatch.setattr(kind, "settle", away_once)
    out = io.StringIO()
    options = WorkerOptions(
        worker_id="w",
        exit_when_idle=2.5,
        prefetch=1,
        heartbeat_interval=0.2,
        time_limits=TimeLimits.parse("sleepy=0.5"),
    )
    assert Worker(transport, registry, options, Console(out=out, err=out)).run() == 0
    said = out.getvalue()
    assert failed == [1], said
    assert (
        "task sleepy t-late attempt 1/2 ran past its time limit of 0.5 s "
        "(('sleepy', 0.5) in TimeLimits(per_name=...)); slot 0 goes "
        "on in a new thread; that attempt was not settled (TransportError: the broker went "
        "away a moment): the task runs again"
    ) in said, said
    assert said.count("Get task sleepy[1.5]") == 3, said  # its attempts 1 (twice) and 2
    assert "0 ok, 1 failed for good, 1 retried" in said, said
    (result,) = results_of(producer, 1, within=5)
    assert (result.status, result.attempt, result.error_type) == ("error", 2, "TimeLimitExceeded")
    producer.close()


def test_worker_options_take_every_worker_setting_from_the_settings() -> None:
    """``distq worker`` builds its options with ``from_settings``: a setting it dropped
    was silently its default. ``DISTQ_PREFETCH=4`` gave 128 (mutant W7 of mut14a),
    and the lease (heartbeat), queue, drain and time limits were as unchecked."""
    settings = Settings.load(
        {
            "DISTQ_AUTHKEY": "secret",
            "DISTQ_PREFETCH": "4",
            "DISTQ_LEASE_SECONDS": "6",
            "DISTQ_QUEUE": "images",
            "DISTQ_DRAIN_SECONDS": "7.5",
            "DISTQ_TASK_TIME_LIMIT": "30,square=2",
        }
    )
    options = WorkerOptions.from_settings(
        settings, concurrency=3, exit_when_idle=1.5, worker_id="w9"
    )
    assert (options.prefetch, options.heartbeat_interval) == (4, 2.0)
    assert (options.queue, options.drain_seconds) == ("images", 7.5)
    assert options.time_limits.describe() == "30,square=2"
    assert (options.concurrency, options.exit_when_idle, options.worker_id) == (3, 1.5, "w9")
    defaults = WorkerOptions()  # none of the values above is a default
    assert defaults.prefetch != 4 and defaults.heartbeat_interval != 2.0
    assert defaults.queue != "images" and defaults.drain_seconds != 7.5
    assert not defaults.time_limits


def _run_forever() -> None:
    while True:
        time.sleep(0.05)


def _a_helper_process_terminated() -> list[Any]:
    """A task that forks a helper process (multiprocessing's default on Linux), then
    stops it with ``terminate()`` (SIGTERM), as ``with multiprocessing.Pool()`` does:
    the helper's exit code, and its pid for the test to clean up after."""
    helper = multiprocessing.get_context("fork").Process(target=_run_forever, daemon=True)
    helper.start()
    time.sleep(0.2)
    helper.terminate()
    helper.join(3)
    return [helper.exitcode, helper.pid]


def test_a_process_a_task_forks_dies_of_sigterm_not_of_the_workers_handler(
    transport: Transport,
) -> None:
    """A process a task forks must not inherit the worker's SIGTERM handler: the child
    took a ``terminate()`` for a warm stop of a worker it is not (a "finishing the tasks
    that run" line, and no exit), so ``Process.terminate()`` and ``Pool.terminate()`` left
    it running, orphaned once the task returned."""
    producer = transport.producer("replies")
    producer.submit([Task(name="helper", args=[], reply_to="replies", max_attempts=1).encode()])
    registry = Registry()
    registry.register("helper", _a_helper_process_terminated)
    out = io.StringIO()
    options = WorkerOptions(exit_when_idle=0.5, worker_id="w", heartbeat_interval=0.3)
    worker = Worker(transport, registry, options, Console(out=out, err=out))
    assert threading.current_thread() is threading.main_thread()  # it installs its handlers
    assert worker.run() == 0
    (result,) = results_of(producer, 1, within=5)
    assert result.status == "ok", result
    exitcode, pid = result.value
    if exitcode is None:  # still running: not left behind by the test
        os.kill(pid, signal.SIGKILL)
    assert exitcode == -signal.SIGTERM, out.getvalue()


def test_a_chunks_line_not_sent_says_not_dead_lettered_only() -> None:
    """A chunk's (Executor.map(chunksize=N)) line names the function it calls; the late
    line looked for ``task distq:chunk <id> dead-lettered`` to take the word out, found
    none, and said both "dead-lettered" and "not dead-lettered"."""
    endings = Endings("w1", "q")
    chunk = Task(name="distq:chunk", args=["mod:f", [[1], [2]]], reply_to="r")
    orphan = endings.orphaned(Delivery(chunk.encode(), 1), chunk)
    assert _not_sent(orphan, _LAPSED).startswith(f"task mod:f {chunk.id}: its master is gone"), (
        _not_sent(orphan, _LAPSED)
    )
    assert f"{chunk.id} dead-lettered" not in _not_sent(orphan, _LAPSED)


def test_a_worker_that_ended_leaves_no_stale_beat_for_the_liveness_check(
    transport: Transport,
) -> None:
    """The worker's main loop and its keeper beat until they ended and never said they
    ended: while the process then stopped (waiting for threads its tasks left, up to
    DISTQ_DRAIN_SECONDS), /healthz read their last beats growing old and said "stalled"."""
    health = WorkerHealth(stall_seconds=0.5, slots=1)
    out = io.StringIO()
    options = WorkerOptions(exit_when_idle=0.3, worker_id="w", heartbeat_interval=0.3)
    worker = Worker(transport, Registry(), options, Console(out=out, err=out), health=health)
    assert worker.run() == 0, out.getvalue()
    time.sleep(0.6)
    verdict = health.live()
    assert not verdict.body.get("loops"), verdict
    assert verdict.ok, verdict


def test_a_worker_made_in_python_says_a_pack_as_its_own_transport_does(
    transport: Transport,
) -> None:
    """A Worker made without a codec (in Python, not by the CLI) knew no transport: its
    letter for a pack said RabbitMQ's and Redis's wording both, on the manager."""
    producer = transport.producer("replies")
    producer.submit(
        [pack([Task(name="square", args=[n], reply_to="replies").encode() for n in (1, 2)])]
    )
    out = io.StringIO()
    options = WorkerOptions(exit_when_idle=0.5, worker_id="w", heartbeat_interval=0.3)
    assert Worker(transport, Registry(), options, Console(out=out, err=out)).run() == 0
    (letter,) = transport.dead_letters()
    assert "a worker on the manager takes one task per message" in letter.reason, letter.reason
    assert "RabbitMQ;" not in letter.reason, letter.reason
    producer.close()


def test_a_worker_name_over_the_limit_is_refused_by_worker_options() -> None:
    """A 65 KiB ``worker_id`` through the Python API (the CLI's --worker-id was checked):
    the worker ran, and its 2 MiB result to a master at 1 MiB, known by its head, was
    dropped unnamed, its master waiting for it to its timeout. Now refused as --worker-id
    is, with the same words."""
    with pytest.raises(ConfigError) as refused:
        WorkerOptions(worker_id="w" * (65 << 10))
    assert "worker_id 'wwww" in str(refused.value)
    assert "is 66,560 bytes, over the 4,096 a worker name may be" in str(refused.value)
    assert WorkerOptions(worker_id="w" * 4096).worker_id == "w" * 4096


@pytest.mark.parametrize(
    ("worker_id", "said"),
    [
        ("w1\nw2", "is not a name: use text on one line, without control characters"),
        ("w\udcff", "holds bytes that are not UTF-8 (at 1)"),
        (None, "worker_id must be text, not NoneType"),
    ],
)
def test_a_worker_name_the_cli_refuses_is_refused_by_worker_options(
    worker_id: object, said: str
) -> None:
    """--worker-id refuses a name on two lines or not UTF-8 (which no broker protocol
    sends: the worker reconnected, its job never run); WorkerOptions took them, and
    worker_id=None raised an AttributeError from inside the length check. Now each is a
    ConfigError with the CLI's words."""
    with pytest.raises(ConfigError) as refused:
        WorkerOptions(worker_id=worker_id)  # type: ignore[arg-type]
    assert said in str(refused.value)
