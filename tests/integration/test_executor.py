"""The Executor contract, on every transport and real broker, with real worker processes.

Workers are ``python -m distq worker --tasks jobs`` subprocesses (tests/jobs.py marks
its tasks with ``@distq.task``). With the manager transport the executor hosts the
queues and the workers connect to it, so an executor is opened before its workers.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import os
import re
import secrets
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
import redis

import distq
import distq.dispatcher as dispatching
import distq.executor as executing
import jobs
from conftest import REPO, Target
from distq.config import Settings
from distq.ending import Endings
from distq.envelope import MOST_ATTEMPTS
from distq.errors import (
    BrokenExecutor,
    MessageTooLarge,
    RemoteError,
    SettledThenFailed,
    TaskTimeout,
)
from distq.futures import DistqFuture
from distq.retries import retry_delay
from distq.transport import Settlement
from launch import LocalRedis
from procs import Distq
from seam import fetch_n, ok_result, retried

pytestmark = pytest.mark.integration

Workers = Callable[..., Distq]
Open = Callable[..., distq.Executor]

# what cancel(), cancel_futures and task_timeout can do: take a task back before it runs
WITHDRAWS = {"manager": True, "redis": True, "rabbitmq": False}


@pytest.fixture
def workers(target: Target) -> Iterator[Workers]:
    """Start worker processes on ``target`` (``--tasks jobs``); each stopped at teardown."""
    started: list[Distq] = []

    def start(*extra: str, **env: str) -> Distq:
        args = ["worker", "--tasks", "jobs", "--connect-timeout", "30", *extra]
        proc = Distq(args, target.process_env(**env))
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop(grace=3.0)


@pytest.fixture
def executor(target: Target) -> Iterator[Open]:
    """Open executors on ``target``; each is closed (not waited for) at teardown."""
    opened: list[distq.Executor] = []

    def open_one(**options: Any) -> distq.Executor:
        made = distq.Executor(target.settings, **options)
        opened.append(made)
        return made

    yield open_one
    for made in opened:
        made.close()


def attached(ex: distq.Executor, slots: int = 1, within: float = 30.0) -> None:
    """Wait until ``slots`` worker slots are attached to the queue."""
    deadline = time.monotonic() + within
    while ex.stats().consumers < slots:
        assert time.monotonic() < deadline, f"no {slots} worker slots attached in {within} s"
        time.sleep(0.05)


def test_map_yields_results_in_order_by_function_object_and_by_name(
    executor: Open, workers: Workers
) -> None:
    ex = executor()
    workers("--concurrency", "2")
    workers()
    # later tasks finish first: the order is the order of the calls, not of the results
    delays = [0.3, 0.2, 0.1, 0.0] * 3
    assert list(ex.map(jobs.sleep_then, delays, range(12))) == list(range(12))
    assert list(ex.map("jobs:add", range(50), range(50))) == [2 * i for i in range(50)]
    assert ex.submit(jobs.add, 2, b=3).result(30) == 5
    assert ex.submit("square", 12).result(30) == 144  # a built-in name
    assert list(ex.map(jobs.add, [], [])) == []


def test_map_with_chunks_runs_every_call_once_in_order(executor: Open, workers: Workers) -> None:
    ex = executor()
    workers()
    assert list(ex.map(jobs.add, range(103), range(103), chunksize=10)) == [
        2 * i for i in range(103)
    ]
    results = ex.map(jobs.fail_with, ["a", "b"], chunksize=2)  # max_attempts 3: retried
    with pytest.raises(RemoteError, match=r"jobs:fail_with \(chunk of 2\) \[.*ValueError: a"):
        next(results)
    with pytest.raises(ValueError, match="chunksize must be >= 1, not 0"):
        ex.map(jobs.add, [1], [2], chunksize=0)


@pytest.mark.parametrize("target", ["redis"], indirect=True)
def test_a_map_timeout_or_chunksize_no_deadline_can_hold_is_refused_before_anything_is_sent(
    executor: Open,
) -> None:
    """Was: map(timeout=10**400) raised OverflowError, timeout=1e300 raised it from the
    iterator once a task was sent, nan timed out at once and chunksize=2.5 raised
    TypeError from a slice."""
    ex = executor()
    for timeout in (10**400, 1e300, float("nan"), -1, True):
        with pytest.raises(
            ValueError, match=r"^timeout is .*; use a number from 0 to 1000000000 seconds, or None"
        ):
            ex.map(jobs.add, [1], [2], timeout=timeout)
    for chunksize in (2.5, True):
        with pytest.raises(ValueError, match=r"^chunksize must be >= 1, not .*; use a whole"):
            ex.map(jobs.add, [1], [2], chunksize=chunksize)  # type: ignore[arg-type]
    assert ex.stats().ready == 0  # nothing was sent
    assert list(ex.map(jobs.add, [], [], timeout=float("inf"))) == []  # inf: no limit


def test_a_partial_sends_its_function_with_its_arguments_first(
    executor: Open, workers: Workers
) -> None:
    ex = executor()
    workers()
    # before: "functools.partial(...) is neither a task name nor a module-level function"
    assert ex.submit(functools.partial(jobs.add, 2), 3).result(30) == 5
    assert ex.submit(functools.partial(jobs.add, b=10), 1).result(30) == 11
    assert list(ex.map(functools.partial(jobs.add, b=1), range(5))) == [1, 2, 3, 4, 5]
    assert list(ex.map(functools.partial(jobs.add, 100), range(25), chunksize=10)) == [
        100 + i for i in range(25)
    ]
    with pytest.raises(TypeError, match="chunksize=2: a chunk's calls take no keywords"):
        ex.map(functools.partial(jobs.add, b=1), range(5), chunksize=2)


def test_a_chunk_runs_under_its_functions_time_limit(executor: Open, workers: Workers) -> None:
    ex = executor(max_attempts=1)
    # a chunk of 2: 2 s (with 0.5 s, 1 s: a worker held up 0.8 s failed the first chunk)
    workers(DISTQ_TASK_TIME_LIMIT="jobs:sleep_then=1")
    assert list(ex.map(jobs.sleep_then, [0.1, 0.1], ["a", "b"], chunksize=2)) == ["a", "b"]
    started = time.monotonic()
    results = ex.map(jobs.sleep_then, [3, 3], ["a", "b"], chunksize=2)
    with pytest.raises(RemoteError, match="TimeLimitExceeded: ran past its time limit of 2 s"):
        next(results)  # before: no limit at all, both ran, after 6 s
    assert time.monotonic() - started < 5


def test_a_task_past_its_time_limit_says_which_limit_it_ran_past(
    executor: Open, workers: Workers
) -> None:
    """With several limits set, the error said only "ran past its time limit of 1 s":
    not whether the default, the task's own or ``distq:chunk``'s had fired (for a chunk,
    its function's times its calls), so not which one to raise."""
    ex = executor(max_attempts=1)

    def error_of(future: concurrent.futures.Future[Any]) -> str:
        with pytest.raises(RemoteError) as raised:
            future.result(timeout=30)
        return str(raised.value)

    named = workers(DISTQ_TASK_TIME_LIMIT="30,jobs:sleep_then=0.5,distq:chunk=0.7")
    chunk = ex.map(jobs.sleep_then, [3, 3], ["a", "b"], chunksize=2)
    with pytest.raises(RemoteError) as raised:
        next(chunk)
    assert "time limit of 0.7 s (DISTQ_TASK_TIME_LIMIT distq:chunk=0.7)" in str(raised.value)
    error = error_of(ex.submit(jobs.sleep_then, 3, "a"))
    assert "time limit of 0.5 s (DISTQ_TASK_TIME_LIMIT jobs:sleep_then=0.5)" in error
    named.stop(grace=1.0)
    workers(DISTQ_TASK_TIME_LIMIT="0.4,jobs:add=30")
    error = error_of(ex.submit(jobs.sleep_then, 3, "a"))
    assert "time limit of 0.4 s (DISTQ_TASK_TIME_LIMIT 0.4: the default" in error
    chunk = ex.map(jobs.sleep_then, [3, 3], ["a", "b"], chunksize=2)
    with pytest.raises(RemoteError) as raised:
        next(chunk)
    assert "time limit of 0.8 s (2 calls x DISTQ_TASK_TIME_LIMIT 0.4" in str(raised.value)


def test_each_send_reads_the_results_there_in_the_same_call(
    executor: Open, workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One ``submit().result()`` at a time: each send is one call that also reads the
    results already there, without a wait (one round trip on Redis, not two)."""
    ex = executor()
    workers()
    kind = type(ex._dispatcher.producer)
    original = kind.submit_then_results
    calls: list[tuple[int, float]] = []

    def counted(self: Any, bodies: Any, max_count: int, timeout: float) -> list[bytes]:
        calls.append((len(bodies), timeout))
        return original(self, bodies, max_count, timeout)

    monkeypatch.setattr(kind, "submit_then_results", counted)
    assert [ex.submit(jobs.add, n, b=n).result(30) for n in range(5)] == [0, 2, 4, 6, 8]
    assert calls == [(1, 0.0)] * 5


def test_a_remote_exception_carries_its_type_message_and_traceback(
    executor: Open, workers: Workers
) -> None:
    ex = executor(max_attempts=2)
    workers()
    future = ex.submit(jobs.fail_with, "disk full")
    with pytest.raises(RemoteError) as caught:
        future.result(60)
    error = caught.value
    assert (error.task_name, error.task_id, error.error_type) == (
        "jobs:fail_with",
        future.task_id,
        "ValueError",
    )
    assert error.reason == "failed 2 of 2 attempts; last error: ValueError: disk full"
    text = str(error)
    assert "ValueError: disk full" in text and "Remote traceback:" in text
    assert "in fail_with" in text and "in _raise" in text  # the worker's frames
    assert isinstance(future.exception(0), RemoteError)
    # results in order: map raises at the failing call, after the ones before it
    results = ex.map(jobs.sleep_then, [0, 0], ["ok", "fine"])
    assert list(results) == ["ok", "fine"]


def test_only_registered_names_run(executor: Open, workers: Workers) -> None:
    ex = executor()
    workers()
    for fn in (jobs.not_a_task, "jobs:not_a_task", "os:system"):
        with pytest.raises(RemoteError, match=r"cannot run: UnknownTask: no task named"):
            ex.submit(fn, "x").result(30)
    with pytest.raises(RemoteError, match="cannot run: TypeError"):  # add(a, b) needs two
        ex.submit(jobs.add, 1).result(30)  # type: ignore[call-overload]


def test_arguments_that_are_not_json_are_refused_before_anything_is_sent(
    executor: Open,
) -> None:
    ex = executor()
    with pytest.raises(TypeError, match=r"jobs:add: argument 2 is of type bytes"):
        ex.submit(jobs.add, 1, b"2")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"keyword argument 'b'\[0\] is of type set"):
        ex.submit(jobs.add, 1, b=[{2}])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"call 3 of map\(\): jobs:add: argument 1 is nan"):
        ex.map(jobs.add, [1, 2, float("nan")], [1, 2, 3])
    with pytest.raises(TypeError, match="not a module-level function"):
        ex.submit(lambda: None)
    time.sleep(0.2)  # long enough for the executor's thread to have sent anything it had
    assert ex.stats().ready == 0  # not even the good calls of the map went out


def test_result_timeout_names_the_task_and_the_task_stays_submitted(
    executor: Open, workers: Workers
) -> None:
    ex = executor()
    future = ex.submit(jobs.add, 20, 22)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=rf"no result for task jobs:add \[{future.task_id}\]"):
        future.result(0.5)
    assert 0.4 < time.monotonic() - started < 10
    with pytest.raises(TimeoutError, match=r"after waiting 0\.2 s"):
        next(ex.map(jobs.add, [1], [1], timeout=0.2))
    results = ex.map(jobs.add, [1], [1], timeout=0.2)
    time.sleep(0.4)  # the map's time is up before its iterator is asked: still its timeout
    with pytest.raises(TimeoutError, match=r"^map\(\): no result .* after waiting 0\.2 s"):
        next(results)
    workers()  # a worker comes: the task was waiting all along
    assert future.result(60) == 42


def test_task_timeout_fails_a_late_task_and_withdraws_it_where_it_can(
    target: Target, executor: Open, workers: Workers
) -> None:
    ex = executor(task_timeout=2.0)
    future = ex.submit(jobs.add, 1, 1)
    with pytest.raises(TaskTimeout, match=r"jobs:add \[.*\] had no result after \d+\.\d s"):
        future.result(30)
    assert isinstance(future.exception(), TimeoutError)  # TaskTimeout is a TimeoutError
    if WITHDRAWS[target.name]:
        assert "withdrawn from the queue and will not run" in str(future.exception())
        assert ex.stats().ready == 0
    else:
        assert "the transport cannot withdraw it" in str(future.exception())
    workers()
    attached(ex)  # a worker starting on a loaded machine can take longer than the deadline
    assert ex.submit(jobs.add, 2, 2).result(60) == 4  # a fresh task has its own deadline


@pytest.mark.parametrize("target", ["rabbitmq"], indirect=True)
def test_a_task_past_its_task_timeout_that_rabbitmq_keeps_does_not_run_after_the_executor(
    target: Target, executor: Open, workers: Workers
) -> None:
    """RabbitMQ cannot take a task past its ``task_timeout`` back: it stays queued, its
    future failed. With every other future answered, the executor's close took that for
    "every future answered" and left its reply queue to expire (ef4821b's
    close_answered): a worker that came within ``master_ttl`` ran the task, a gone
    master's, its result dropped, where it is dead-lettered unrun (README)."""
    ex = executor(task_timeout=1.0)
    first = workers()
    attached(ex)
    assert ex.submit(jobs.add, 1, 1).result(60) == 2  # a result in: finished > 0
    first.stop()
    deadline = time.monotonic() + 30
    while ex.stats().consumers and time.monotonic() < deadline:
        time.sleep(0.05)
    late = ex.submit(jobs.sleep_then, 0, "after the executor")
    with pytest.raises(TaskTimeout, match="the transport cannot withdraw it"):
        late.result(30)
    ex.shutdown(wait=True)
    again = workers("--exit-when-idle", "2")
    assert again.wait(60) == 0, again.output()
    assert "after the executor" not in again.output()  # not run: its master is gone
    with contextlib.closing(distq.transport.open_transport(target.settings, "master")) as seen:
        letters = seen.dead_letters(10)
    assert [x.reason.startswith("its master is gone") for x in letters] == [True], letters


def test_cancel_of_a_task_not_started_keeps_it_from_running_where_the_transport_can(
    target: Target, executor: Open, workers: Workers
) -> None:
    ex = executor()
    doomed = ex.submit(jobs.sleep_then, 0, "cancelled one")
    kept = ex.submit(jobs.sleep_then, 0, "kept")
    deadline = time.monotonic() + 10
    while ex.stats().ready < 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # both are on the broker: cancel() has to take one back from there
    cancelled = doomed.cancel()
    assert cancelled is WITHDRAWS[target.name]
    assert doomed.cancelled() is cancelled and doomed.done() is cancelled
    worker = workers()
    assert kept.result(60) == "kept"
    if cancelled:
        with pytest.raises(concurrent.futures.CancelledError):
            doomed.result(0)
        assert concurrent.futures.wait([doomed], timeout=0).done == {doomed}
        assert "cancelled one" not in worker.output()
    else:  # RabbitMQ: the task runs, and the future has its result
        assert doomed.result(60) == "cancelled one"
    assert doomed.cancel() is cancelled and kept.cancel() is False  # done: nothing to cancel


def test_shutdown_waits_for_results_and_cancel_futures_cancels_what_it_can(
    target: Target, executor: Open, workers: Workers
) -> None:
    ex = executor()
    running = [ex.submit(jobs.sleep_then, 0.2, i) for i in range(3)]
    worker = workers()
    ex.shutdown(wait=True)
    assert [f.result(0) for f in running] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(jobs.add, 1, 2)
    worker.stop()

    second = executor()
    queued = [second.submit(jobs.add, i, i) for i in range(5)]
    deadline = time.monotonic() + 10
    while second.stats().ready < 5 and time.monotonic() < deadline:
        time.sleep(0.05)  # on the broker, none taken: no worker runs now
    second.shutdown(wait=False, cancel_futures=True)
    if WITHDRAWS[target.name]:
        concurrent.futures.wait(queued, timeout=10)
        assert all(f.cancelled() for f in queued)  # each one taken back off the broker
    else:  # RabbitMQ: they still run; shutdown's wait returns once they are answered
        workers()
        assert [f.result(60) for f in queued] == [0, 2, 4, 6, 8]
    second.shutdown(wait=True)


def test_a_slow_done_callback_holds_up_no_result(executor: Open, workers: Workers) -> None:
    """Callbacks run on a thread of their own: while one takes its time, results still
    come in (on Redis, the executor's thread also keeps its reply queue registered)."""
    ex = executor()
    workers()
    release = threading.Event()
    ran: list[object] = []

    def slow(future: concurrent.futures.Future[Any]) -> None:
        ran.append(threading.current_thread().name)
        release.wait(60)

    first = ex.submit(jobs.add, 1, 1)
    first.add_done_callback(slow)
    try:
        assert first.result(60) == 2
        later = ex.submit(jobs.sleep_then, 0.5, "later")
        later.add_done_callback(lambda f: ran.append(f.result()))
        # the slow callback holds its thread; before, it held the executor's, and these
        # results never came
        assert [ex.submit(jobs.add, i, 1).result(20) for i in range(3)] == [1, 2, 3]
        assert later.result(20) == "later"
    finally:
        release.set()
    ex.shutdown(wait=True)  # returns once every callback has run, in order
    assert ran == ["distq-executor-callbacks", "later"]


EXITS_AFTER_SHUTDOWN = """
    import atexit
    answered = []
    # registered before distq is imported, so it runs after distq's own exit hook
    atexit.register(lambda: print(f"answered {len(answered)}", flush=True))
    import distq
    import jobs
    executor = distq.Executor()
    for i in range(300):
        executor.submit(jobs.add, i, 1).add_done_callback(lambda f: answered.append(f.result()))
    executor.shutdown(wait=False)
    print("shut down, exiting", flush=True)
"""


def test_a_program_that_exits_after_shutdown_without_wait_waits_for_its_futures(
    target: Target, workers: Workers
) -> None:
    """As concurrent.futures: whatever ``wait`` was, the program exits once every
    pending future is done (before, the tasks not sent yet were dropped at exit)."""
    out, _ = run_program(EXITS_AFTER_SHUTDOWN, target.process_env(), 90, meanwhile=workers)
    assert out.splitlines()[-2:] == ["shut down, exiting", "answered 300"], out


def test_leaving_map_early_cancels_the_rest(
    target: Target, executor: Open, workers: Workers
) -> None:
    ex = executor()
    worker = workers(DISTQ_PREFETCH="1")  # takes one task at a time: the rest wait queued
    attached(ex)
    results = ex.map(jobs.sleep_then, [0.0] + [0.2] * 20, ["first"] + [f"n{i}" for i in range(20)])
    assert next(results) == "first"
    results.close()  # 4 s of tasks left; a worker has taken one or two of them
    ex.shutdown(wait=True)  # returns once what was not cancelled has come back
    runs = worker.output().count("Get task jobs:sleep_then")
    if WITHDRAWS[target.name]:
        assert runs < 21, worker.output()
    else:
        assert runs == 21, worker.output()  # RabbitMQ: every one runs


def test_an_executor_back_from_a_lapse_sends_its_tasks_again_and_removes_their_orphans(
    target: Target, executor: Open, workers: Workers, caplog: pytest.LogCaptureFixture
) -> None:
    """Its registration gone for a while (as during a pause past its time to live),
    workers dead-letter its queued tasks unrun; once back it sends them again and removes
    those letters, which ``requeue-dead`` would otherwise run a second time."""
    if target.name == "manager":
        pytest.skip("an executor hosting the queues never lapses; see the manager tests")
    ex = executor()
    workers()
    attached(ex)
    futures = [ex.submit(jobs.sleep_then, 0.05, i) for i in range(120)]
    assert futures[0].result(timeout=30) == 0
    # gone for 4 s, longer than a worker remembers a live master (2 s): the executor's
    # reconciles register it again, each deletion takes it away again
    deadline = time.monotonic() + 4.0
    if target.name == "redis":
        with redis.Redis.from_url(target.settings.redis_url) as client:
            while time.monotonic() < deadline:
                client.zrem(f"distq:{target.settings.queue}:masters", ex.reply_to)
                time.sleep(0.1)
    else:
        connection = pika.BlockingConnection(pika.URLParameters(target.settings.amqp_url))
        with contextlib.closing(connection):
            channel = connection.channel()
            while time.monotonic() < deadline:
                channel.queue_delete(ex.reply_to)
                time.sleep(0.1)
    assert [f.result(timeout=60) for f in futures] == list(range(120))
    # copies of tasks answered by the copies sent again may still be queued (a loaded
    # machine: the clean-clone CI of 84b38d5): run while it is here they are dropped
    # duplicates; left for after its shutdown, letters of a master gone for good
    deadline = time.monotonic() + 30
    while ex.stats().ready and time.monotonic() < deadline:
        time.sleep(0.1)
    ex.shutdown()  # a letter made after its last reconcile is removed as it closes
    with contextlib.closing(distq.transport.open_transport(target.settings, "master")) as seen:
        orphans = [x for x in seen.dead_letters(1000) if "master is gone" in x.reason]
    assert orphans == []
    assert "removed" in caplog.text  # there were some, and they went


def test_a_lost_broker_fails_the_futures_instead_of_hanging(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from launch import LocalRedis

    monkeypatch.setattr(dispatching, "OUTAGE_SECONDS", 2.0)  # waited out, then given up
    server = LocalRedis(tmp_path).start()
    try:
        ex = distq.Executor(
            transport="redis", redis_url=server.url, queue="lost", lease_seconds=1.0
        )
        future = ex.submit(jobs.add, 1, 2)  # no worker: it waits on the broker
        time.sleep(0.3)
        server.kill()
        with pytest.raises(
            BrokenExecutor, match=r"the executor stopped: Redis at .*; still unreachable after"
        ) as caught:
            future.result(30)
        # 2 s or more: its last attempt falls due at 2 s, and this process may stall in it
        away = re.search(r"still unreachable after (\d+) s", str(caught.value))
        assert away is not None and int(away.group(1)) >= 2, caught.value
        with pytest.raises(BrokenExecutor):
            ex.submit(jobs.add, 1, 2)
        ex.shutdown()
        with pytest.raises(  # why it stopped, and what to do
            RuntimeError,
            match=r"^the executor stopped: Redis at .*; its connection is closed: make a new",
        ):
            ex.stats()
    finally:
        server.stop()


def test_a_shutdown_with_nothing_unanswered_does_not_wait_for_a_lost_broker(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Every future answered (none here), the broker gone: shutdown() has nothing to
    wait for. It waited out the whole outage (30 s), then logged "the executor stopped:
    ... still unreachable after 30 s"."""
    server = LocalRedis(tmp_path).start()
    try:
        ex = distq.Executor(transport="redis", redis_url=server.url, queue="gone")
        server.kill()
        deadline = time.monotonic() + 20
        while "reconnecting" not in caplog.text:  # an idle reconcile found it gone
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.05)
        started = time.monotonic()
        ex.shutdown()
        assert time.monotonic() - started < 5  # a stall of this process may add some
        assert "the executor stopped" not in caplog.text, caplog.text
    finally:
        server.stop()


def test_an_idle_executor_whose_connection_was_dropped_reconnects(tmp_path: Any) -> None:
    """A broker that closes an idle client's connection (Redis's ``timeout``, a proxy's
    idle limit, missed RabbitMQ heartbeats, a restart) costs the executor a reconnect,
    not its life: before, the next submit failed with BrokenExecutor, and so did every
    one after it, the broker up all along."""
    from launch import LocalRedis

    server = LocalRedis(tmp_path).start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISTQ_")}
        env.update(DISTQ_TRANSPORT="redis", DISTQ_REDIS_URL=server.url, DISTQ_QUEUE="dropped")
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), str(REPO / "src")])
        worker = Distq(["worker", "--tasks", "jobs", "--connect-timeout", "30"], env)
        try:
            with distq.Executor(transport="redis", redis_url=server.url, queue="dropped") as ex:
                assert ex.submit(jobs.add, 1, 2).result(30) == 3
                killed = server.client().client_kill_filter(_type="normal", skipme=True)
                assert killed >= 1  # the executor's connections, and the worker's
                assert ex.submit(jobs.add, 2, 3).result(30) == 5
                assert ex.submit(jobs.add, 3, 4).result(30) == 7
        finally:
            worker.stop(grace=3.0)
    finally:
        server.stop()


def test_a_full_redis_holds_the_tasks_back_without_breaking_the_executor(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis at its ``maxmemory`` (``noeviction``) refuses submits, and answers reads:
    the executor took that for an outage and broke after 30 s ("command not allowed when
    used memory > 'maxmemory'; still unreachable after 33 s"), its workers draining all
    along. It waits now, and sends as room comes back, as a master does."""
    monkeypatch.setattr(dispatching, "OUTAGE_SECONDS", 2.0)  # the refusal lasts longer
    args = ["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"]
    server = LocalRedis(tmp_path, extra_args=args).start()
    try:
        if tuple(int(p) for p in server.version.split(".")[:2]) < (7, 0):
            pytest.skip(f"Redis {server.version}: allow-oom scripts need Redis 7")
        client = server.client()
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISTQ_")}
        env.update(DISTQ_TRANSPORT="redis", DISTQ_REDIS_URL=server.url, DISTQ_QUEUE="full")
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), str(REPO / "src")])
        worker = Distq(["worker", "--tasks", "jobs", "--quiet"], env)
        try:
            with distq.Executor(transport="redis", redis_url=server.url, queue="full") as ex:
                assert ex.submit(jobs.add, 1, 2).result(30) == 3  # the worker is attached
                fillers = [f"other{n}" for n in range(400)]
                with contextlib.suppress(redis.ResponseError):  # until Redis refuses: full
                    for name in fillers:
                        client.set(name, b"z" * 50_000)
                client.config_set("maxmemory", "3mb")  # and full it stays, whatever drains
                futures = [ex.submit(jobs.add, n, n) for n in range(20)]
                time.sleep(5)  # refused for longer than OUTAGE_SECONDS
                assert not any(f.done() for f in futures), [f.exception(0) for f in futures]
                client.config_set("maxmemory", "0")  # room again
                assert [f.result(30) for f in futures] == [2 * n for n in range(20)]
        finally:
            worker.stop(grace=3.0)
            client.close()
    finally:
        server.stop()


def test_with_signing_keys_tasks_and_results_are_signed_both_ways(
    executor: Open, workers: Workers
) -> None:
    key = "exec15-signing-key-0123456789abcdef"
    ex = executor(signing_keys=(key.encode(),))
    worker = workers(DISTQ_SIGNING_KEYS=key)
    assert ex.submit(jobs.add, 20, 22).result(60) == 42
    with pytest.raises(RemoteError, match=r"ValueError: signed too") as caught:
        ex.submit(jobs.fail_with, "signed too").result(60)
    assert caught.value.remote_traceback is not None
    assert "signed with key id" in worker.output()


def test_keys_on_the_workers_only_fail_the_future_at_once_with_the_reason(
    target: Target, executor: Open, workers: Workers, caplog: pytest.LogCaptureFixture
) -> None:
    """The keys set on one side only: the worker refuses the task for its signature and
    answers unsigned. An executor without keys fails the future with the reason at once
    (it waited for ever, exec16); one with keys the workers lack drops the unsigned
    answer, saying so, and its future waits (no unsigned result is taken as a worker's)."""
    key = "exec16-signing-key-0123456789abcdef"
    workers(DISTQ_SIGNING_KEYS=key)
    unsigned = executor()
    started = time.monotonic()
    with pytest.raises(RemoteError, match=r"unsigned task.*same DISTQ_SIGNING_KEYS"):
        unsigned.submit(jobs.add, 1, 2).result(60)
    assert time.monotonic() - started < 30
    # on manager the first one hosts the queues: the second connects to it
    host = {"host": False} if target.name == "manager" else {}
    other = executor(signing_keys=(b"exec16-another-key-0123456789abcdef",), **host)
    future = other.submit(jobs.add, 1, 2)
    deadline = time.monotonic() + 30
    # the line names the task, and its wait's end says it came back refused (input17)
    said = "dropped a result: unsigned result: this process requires signatures"
    while f"unsigned answer for task {future.task_id}, which says (unverified)" not in caplog.text:
        assert time.monotonic() < deadline, caplog.text
        time.sleep(0.1)
    assert said in caplog.text and "signed with another key" in caplog.text
    assert not future.done()
    with pytest.raises(TimeoutError, match="came back unsigned, refused by a worker"):
        future.result(0.1)


def manager_env(**extra: str) -> dict[str, str]:
    """A subprocess environment for an executor hosting a queue of its own (no worker)."""
    return (
        Target(
            "manager",
            Settings(transport="manager"),
            {"DISTQ_TRANSPORT": "manager", "DISTQ_AUTHKEY": secrets.token_hex(16)},
        )
        .fresh()
        .process_env(**extra)
    )


def run_program(
    source: str,
    env: dict[str, str],
    timeout: float = 30,
    meanwhile: Callable[[], object] = lambda: None,
) -> tuple[str, float]:
    """Run ``source`` in a fresh interpreter, and ``meanwhile()`` once it started (workers
    for it, say); its output, and how long it took (a program that does not end within
    ``timeout`` s, or exits other than 0, fails the test)."""
    started = time.monotonic()
    program = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(source)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its children too are killed if it hangs
    )
    try:
        meanwhile()
        out, _ = program.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(program.pid, signal.SIGKILL)
        out, _ = program.communicate()
        pytest.fail(f"the program did not end within {timeout} s; its output:\n{out}")
    finally:
        if program.poll() is None:  # meanwhile() failed
            os.killpg(program.pid, signal.SIGKILL)
            program.wait()
    assert program.returncode == 0, out
    return out, time.monotonic() - started


def killed_its_paused_redis(out: str) -> list[str]:
    """The lines of ``out``, a program's that printed ``server pid N`` of a Redis it
    paused (SIGSTOP): that Redis killed, as stopped it never took its SIGTERM (the one its
    parent's death sent) and would be left behind."""
    lines = out.splitlines()
    (pid,) = [int(line.split()[-1]) for line in lines if line.startswith("server pid ")]
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return lines


def test_executors_opened_one_after_another_on_a_master_do_not_break_each_other() -> None:
    """Executor(host=False) after Executor(host=False) in one process: the garbage
    collector ran an earlier executor's proxy finalizer in the live one's thread, which
    closed that thread's connection to the master, mid-send at times: "the executor
    stopped: 'NoneType' object cannot be interpreted as an integer" (at the 12th of 100)."""
    env = manager_env()
    master = Distq(["master", "--rate", "5", "--status-every", "600", "--quiet"], env)
    worker = Distq(["worker", "--tasks", "jobs", "--quiet", "--connect-timeout", "30"], env)
    try:
        master.wait_for("manager transport on")
        out, _ = run_program(
            """
            import distq, jobs
            for cycle in range(60):
                with distq.Executor(host=False) as ex:
                    assert ex.submit(jobs.add, cycle, 1).result(timeout=30) == cycle + 1
                    assert list(ex.map(jobs.add, range(20), range(20))) == list(range(0, 40, 2))
            print("60 cycles")
            """,
            env,
            timeout=120,
        )
        assert "60 cycles" in out and "stopped" not in out, out
    finally:
        worker.stop(grace=3.0)
        master.stop(grace=3.0)


FORKS = """
    import os, sys, time
    import distq
    import distq.errors
    ex = distq.Executor()
    inherited = ex.submit("jobs:add", 1, 2)  # no worker: pending at the fork
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # a child that lives on, like a multiprocessing pool's worker
        os.close(writer)
        started = time.monotonic()
        try:
            ex.submit("jobs:add", 2, 3)
            print("child submit: accepted", flush=True)
        except distq.BrokenExecutor as exc:
            print(f"child submit: BrokenExecutor {exc}", flush=True)
        try:
            list(ex.map("jobs:add", [1], [2], timeout=3))
        except distq.BrokenExecutor:
            print("child map: BrokenExecutor", flush=True)
        except TimeoutError:
            print("child map: no result", flush=True)
        try:
            inherited.result(3)
        except distq.BrokenExecutor:
            print("child inherited future: BrokenExecutor", flush=True)
        except TimeoutError:
            print("child inherited future: still pending", flush=True)
        print(f"child took {time.monotonic() - started:.1f} s", flush=True)
        os.read(reader, 1)  # until the parent is done
        sys.exit(0)  # a normal exit: the exit hooks run
    os.close(reader)
    time.sleep(0.5)  # the child is past the fork
    ex.close(cancel_futures=False)  # the parent's future fails: BrokenExecutor
    try:
        distq.Executor().close()
        print("parent reopens the address: ok", flush=True)
    except distq.errors.ConnectionFailed as exc:
        print(f"parent reopens the address: {exc}", flush=True)
    print("parent future:", type(inherited.exception(0)).__name__, flush=True)
    os.close(writer)
    _, status = os.waitpid(pid, 0)
    print("child exit status", status, flush=True)
"""


def test_an_executor_used_in_a_forked_child_refuses_work_and_frees_the_hosts_port() -> None:
    """After fork() the executor's thread exists in the parent only: the child's submit
    fails at once, saying so, its inherited futures fail, and its copy of the manager
    listener is closed, so the parent can listen on the address again once closed."""
    out, _ = run_program(FORKS, manager_env())
    lines = out.splitlines()
    assert any(
        line.startswith("child submit: BrokenExecutor the executor belongs to the parent process")
        and "created before fork()" in line
        and "in the child" in line
        for line in lines
    ), out
    assert "child map: BrokenExecutor" in lines, out
    assert "child inherited future: BrokenExecutor" in lines, out
    # at once, not after the map's or the future's 3 s (a stall of the child may add some)
    took = next(float(line.split()[2]) for line in lines if line.startswith("child took "))
    assert took < 1.5, out
    assert "parent reopens the address: ok" in lines, out
    assert "parent future: BrokenExecutor" in lines, out
    assert "child exit status 0" in lines, out


FORKS_WITH_A_WORKER = """
    import os, subprocess, sys, time
    import distq
    worker = subprocess.Popen(
        [sys.executable, "-m", "distq", "worker", "--tasks", "jobs", "--connect-timeout", "20"]
    )
    try:
        with distq.Executor() as ex:
            print("first:", ex.submit("jobs:add", 1, 2).result(30), flush=True)
            reader, writer = os.pipe()
            pid = os.fork()
            if pid == 0:  # a multiprocessing pool's worker, say: it outlives the executor
                os.close(writer)
                os.read(reader, 1)
                os._exit(0)
            os.close(reader)
        started = time.monotonic()
        with distq.Executor() as ex:  # the worker sees the first one go, and comes back
            print("second:", ex.submit("jobs:add", 2, 3).result(60), flush=True)
        print(f"second took {time.monotonic() - started:.0f} s", flush=True)
        os.close(writer)
        os.waitpid(pid, 0)
    finally:
        worker.terminate()
        worker.wait(20)
"""


def test_a_forked_child_does_not_hold_a_manager_executors_workers() -> None:
    """The child closed its copy of the listener, not of the workers' connections: while
    it lived, a worker did not see the parent's executor close, and came back to the next
    one on the address only about 30 s later (exec12)."""
    out, _ = run_program(FORKS_WITH_A_WORKER, manager_env(), timeout=120)
    lines = out.splitlines()
    assert "first: 3" in lines and "second: 5" in lines, out
    took = next(int(line.split()[2]) for line in lines if line.startswith("second took"))
    assert took < 10, out  # before: 30 to 33 s


def test_cancel_takes_back_a_task_not_sent_at_once_while_the_broker_hangs(
    tmp_path: Path,
) -> None:
    """The executor's thread waits in a read of a stopped Redis: a cancel() of a task not
    sent yet waited for that thread, about 12 s (exec12), blocking the event loop of an
    asyncio.wrap_future caller. It is taken back on the caller's thread now."""
    with LocalRedis(tmp_path).start() as server:
        ex = distq.Executor(transport="redis", redis_url=server.url, queue="hung")
        try:
            waiting = ex.submit("jobs:add", 1, 2)  # no worker: the thread reads results
            time.sleep(0.5)
            server.pause()
            time.sleep(1.0)  # the thread is in a read now
            late = ex.submit("jobs:add", 3, 4)
            started = time.monotonic()
            assert late.cancel() is True
            # before: about 12 s (a wait for the thread, whose read times out after 4 s or
            # more); a stall of this process here may add a second or two
            assert time.monotonic() - started < 3.0
            assert late.cancelled() and not waiting.done()
            server.resume()
            deadline = time.monotonic() + 30
            while ex.stats().ready != 1:  # the first task; the cancelled one is never sent
                assert time.monotonic() < deadline, ex.stats()
                time.sleep(0.1)
            time.sleep(0.5)
            assert ex.stats().ready == 1
        finally:
            ex.close()


def _pending_on_a_paused_redis(ex: distq.Executor, server: LocalRedis) -> list[DistqFuture[Any]]:
    """Three tasks ``ex`` submitted, no worker to run them, then its Redis paused."""
    futures = [ex.submit("jobs:add", n, 1) for n in range(3)]
    time.sleep(0.5)
    server.pause()
    return futures


def _failed_by_close(futures: list[DistqFuture[Any]], took: float, before: float = 0.0) -> None:
    """Each of ``futures`` failed (BrokenExecutor) by a close() given up after its
    CLOSE_WAIT_SECONDS, ``took`` seconds after a start ``before`` seconds ahead of it."""
    assert took < before + executing.CLOSE_WAIT_SECONDS + 3, took  # a stall may add some
    for future in futures:
        assert isinstance(future.exception(0), BrokenExecutor), future


def test_close_returns_soon_and_fails_the_futures_while_the_broker_hangs(
    tmp_path: Path,
) -> None:
    """close() is for a program that must not wait: with the executor's thread in a read
    of a stopped Redis it returned after about 20 s (the read's timeout, a reconnect, a
    withdraw and a delete of its result list, each waited out), 7 s with nothing
    pending; it returns after CLOSE_WAIT_SECONDS now, each future failed."""
    with LocalRedis(tmp_path).start() as server:
        ex = distq.Executor(transport="redis", redis_url=server.url, queue="hung")
        futures = _pending_on_a_paused_redis(ex, server)
        try:
            time.sleep(1.0)  # the thread is in a read now
            started = time.monotonic()
            ex.close()
            _failed_by_close(futures, time.monotonic() - started)
            for future in futures:
                assert "closed" in str(future.exception(0))
        finally:
            server.resume()


def test_the_end_of_a_with_block_after_close_does_not_wait_for_a_hung_broker(
    tmp_path: Path,
) -> None:
    """close() in a ``with`` block (a signal, a deadline) with the broker hung: close()
    returned after CLOSE_WAIT_SECONDS, every future failed, and then the block's end,
    shutdown(wait=True), waited for the executor's thread, still retrying the broker:
    about 45 s. Nothing is left to wait for: the futures are answered."""
    with LocalRedis(tmp_path).start() as server:
        try:
            with distq.Executor(transport="redis", redis_url=server.url, queue="hung") as ex:
                futures = _pending_on_a_paused_redis(ex, server)
                time.sleep(1.0)  # the thread is in a read now
                started = time.monotonic()
                ex.close()
            _failed_by_close(futures, time.monotonic() - started)
            ex.shutdown()  # again: as soon
            assert time.monotonic() - started < executing.CLOSE_WAIT_SECONDS + 3
        finally:
            server.resume()


def test_a_shutdown_waiting_on_a_hung_broker_returns_once_close_gives_up(
    tmp_path: Path,
) -> None:
    """shutdown(wait=True) bounded by a close() of the program's own (a timer, a
    watchdog thread), the broker hung: close() failed the futures after
    CLOSE_WAIT_SECONDS, but the shutdown went on waiting for the executor's thread,
    still retrying the broker: about 47 s."""
    with LocalRedis(tmp_path).start() as server:
        try:
            ex = distq.Executor(transport="redis", redis_url=server.url, queue="hung")
            futures = _pending_on_a_paused_redis(ex, server)
            timer = threading.Timer(1.0, ex.close)
            timer.start()
            started = time.monotonic()
            ex.shutdown(wait=True)
            took = time.monotonic() - started
            timer.join()
            _failed_by_close(futures, took, before=1.0)
        finally:
            server.resume()


LEAVES_WITH_ITS_BROKER_STOPPED = """
    import tempfile, time
    from pathlib import Path
    import distq
    from launch import LocalRedis
    server = LocalRedis(Path(tempfile.mkdtemp()), die_with_parent=True).start()
    ex = distq.Executor(transport="redis", redis_url=server.url, queue="stopped")
    future = ex.submit("jobs:add", 1, 2)  # no worker
    future.add_done_callback(
        lambda f: print("callback:", type(f.exception()).__name__, flush=True)
    )
    time.sleep(0.5)
    print("server pid", server.pid, flush=True)
    server.pause()  # SIGSTOP: the executor's thread waits in a read
    print("exiting", flush=True)
"""


def test_an_executor_left_open_fails_its_futures_at_exit_even_with_its_broker_hung() -> None:
    """The exit waited 5 s for the executor's thread, stuck in a read of a stopped
    Redis, then left: the future never failed and its done-callback never ran (exec12)."""
    out, took = run_program(LEAVES_WITH_ITS_BROKER_STOPPED, manager_env(), timeout=60)
    lines = killed_its_paused_redis(out)
    assert "callback: BrokenExecutor" in lines, out
    assert "unanswered futures failed without it" in out, out
    assert took < 30, out


CLOSES_AFTER_SHUTDOWN_WITHOUT_WAIT = """
    import tempfile, time
    from pathlib import Path
    import distq
    from launch import LocalRedis
    server = LocalRedis(Path(tempfile.mkdtemp()), die_with_parent=True).start()
    ex = distq.Executor(transport="redis", redis_url=server.url, queue="stopped")
    future = ex.submit("jobs:add", 1, 2)  # no worker
    time.sleep(0.5)
    print("server pid", server.pid, flush=True)
    ex.shutdown(wait=False)  # the exit is to wait for its futures...
    server.pause()  # SIGSTOP: the executor's thread waits in a read
    time.sleep(1.0)
    ex.close()  # ...until close() says not to wait any longer
    print("closed:", type(future.exception(0)).__name__, flush=True)
"""


def test_the_exit_does_not_wait_for_an_executor_closed_after_shutdown_without_wait() -> None:
    """shutdown(wait=False), then close() with the broker hung: close() failed the
    futures after 2 s, and then the exit waited for the executor's thread (told to
    finish by the shutdown), still retrying the broker: about 45 s."""
    out, took = run_program(CLOSES_AFTER_SHUTDOWN_WITHOUT_WAIT, manager_env(), timeout=90)
    lines = killed_its_paused_redis(out)
    assert "closed: BrokenExecutor" in lines, out
    assert took < 15, out  # before: about 48 s


FORGETS_AN_EXECUTOR = """
    import atexit
    seen = []
    # registered before distq is imported, so it runs after distq's own exit hook
    atexit.register(lambda: print("at exit:", type(seen[0].exception(0)).__name__, flush=True))
    import gc
    import distq

    def submit_one():
        ex = distq.Executor()
        return ex.submit("jobs:add", 1, 2)  # no worker: never answered

    seen.append(submit_one())
    gc.collect()  # the executor is gone; its future is kept
    print("exiting", flush=True)
"""


def test_an_executor_collected_without_shutdown_does_not_hold_up_the_exit() -> None:
    """Like an executor left open: its unanswered futures fail with BrokenExecutor at
    exit (before, its finalizer's shutdown(wait=False) had the exit wait for ever)."""
    out, took = run_program(FORGETS_AN_EXECUTOR, manager_env(), timeout=20)
    assert out.splitlines()[-2:] == ["exiting", "at exit: BrokenExecutor"], out
    assert took < 15, out


#: A program's start that prints its futures' states at its exit: registered before
#: distq is imported, so it runs after distq's own exit hook.
STATES_AT_EXIT = """
    import atexit
    futures = []
    atexit.register(lambda: print("at exit:", [
        type(f.exception()).__name__ if f.done() and not f.cancelled() else f._state
        for f in futures
    ], flush=True))
"""

INTERRUPTED_AT_THE_END_OF_A_WITH = (
    STATES_AT_EXIT
    + """
    import threading, time
    import distq

    def say_when_waiting(ex):  # the end of the block has told the executor to finish
        while not ex._dispatcher.finishing:
            time.sleep(0.01)
        print("waiting", flush=True)

    with distq.Executor() as ex:
        futures += [ex.submit("jobs:add", n, 1) for n in range(3)]  # no worker
        threading.Thread(target=say_when_waiting, args=(ex,), daemon=True).start()
"""
)


def test_one_ctrl_c_at_the_end_of_a_with_block_ends_the_program_every_future_resolved() -> None:
    """Ctrl-C in the wait at the end of a ``with`` block (no worker: results that never
    come) raised KeyboardInterrupt, and then the exit waited for the same results, for
    good, until a second Ctrl-C ("Exception ignored in atexit callback"), the futures
    still pending. One is enough now: the exit fails the unanswered futures, as for an
    executor left open, and the program ends as a KeyboardInterrupt ends it."""
    _one_ctrl_c_ends(INTERRUPTED_AT_THE_END_OF_A_WITH, settle=0.2)


INTERRUPTED_IN_A_WITH = (
    STATES_AT_EXIT
    + """
    import distq

    with distq.Executor() as ex:
        futures += [ex.submit("jobs:add", n, 1) for n in range(3)]  # no worker
        print("waiting", flush=True)
        futures[0].result()  # Ctrl-C here
"""
)


def test_one_ctrl_c_inside_a_with_block_ends_the_program_every_future_resolved() -> None:
    """Ctrl-C in the block's body (a wait for a result no worker will give) sent the
    block's end into shutdown(wait=True), waiting for those results for good: a second
    Ctrl-C was needed. The end of the block no longer waits after a Ctrl-C; the exit
    fails the unanswered futures, as for an executor left open."""
    _one_ctrl_c_ends(INTERRUPTED_IN_A_WITH, settle=0.3)


def _one_ctrl_c_ends(program_text: str, settle: float) -> None:
    """Run ``program_text`` (manager, no worker), send it one SIGINT ``settle`` s after
    it prints "waiting": it ends within 20 s as a KeyboardInterrupt ends a program, its
    3 futures withdrawn, cancelled (its exit hook prints their states)."""
    program = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(program_text)],
        env=manager_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # killed as a group if it hangs
    )
    try:
        assert program.stdout is not None
        assert program.stdout.readline() == "waiting\n"
        time.sleep(settle)
        program.send_signal(signal.SIGINT)
        try:
            out, _ = program.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(program.pid, signal.SIGKILL)
            out, _ = program.communicate()
            pytest.fail(f"one Ctrl-C did not end the program; its output:\n{out}")
    finally:
        if program.poll() is None:
            os.killpg(program.pid, signal.SIGKILL)
            program.wait()
    assert "KeyboardInterrupt" in out and "Exception ignored" not in out, out
    assert out.splitlines()[-1] == f"at exit: {[CANCELLED] * 3}", out
    assert program.returncode == -signal.SIGINT, out


CANCELLED = "CANCELLED_AND_NOTIFIED"  # a future's state once cancelled and its waiters told


INTERRUPTED_AS_SHUTDOWN_HANDS_OVER = (
    STATES_AT_EXIT
    + """
    import distq
    from distq.dispatcher import Stop

    try:
        with distq.Executor() as ex:
            futures += [ex.submit("jobs:add", n, 1) for n in range(3)]  # no worker
            put = ex._dispatcher.put

            def put_then_ctrl_c(command):  # Ctrl-C as the end's Stop is handed over
                handed = put(command)
                if isinstance(command, Stop):
                    del ex._dispatcher.put  # once: the exit's Stop goes through
                    raise KeyboardInterrupt
                return handed

            ex._dispatcher.put = put_then_ctrl_c
    except KeyboardInterrupt:
        print("interrupted", flush=True)
"""
)


def test_a_ctrl_c_as_the_end_of_a_with_block_hands_over_its_stop_does_not_hold_up_the_exit() -> (
    None
):
    """A Ctrl-C between shutdown()'s hand-over of its Stop (which marks the executor as
    finishing: the exit waits for its results) and its wait for them: only the wait
    undid that mark, so the exit waited for results no worker gives, for good (the
    Ctrl-C tests above send theirs 0.2 s after the hand-over, in the wait)."""
    out, _ = run_program(INTERRUPTED_AS_SHUTDOWN_HANDS_OVER, manager_env(), timeout=20)
    assert out.splitlines()[-2:] == ["interrupted", f"at exit: {[CANCELLED] * 3}"], out


CAUGHT_IN_A_WITH = """
    import distq

    futures = []
    try:
        with distq.Executor() as ex:
            futures += [ex.submit("jobs:add", n, 1) for n in range(3)]  # no worker
            raise KeyboardInterrupt  # a Ctrl-C in the block
    except KeyboardInterrupt:
        print("caught:", [f._state for f in futures], flush=True)
    with distq.Executor():  # the same address, as a notebook's next cell
        print("open again", flush=True)
"""


def test_a_program_that_catches_a_ctrl_c_in_a_with_block_finds_the_executor_closed() -> None:
    """A REPL or a notebook goes on after a Ctrl-C: the executor stayed open, its
    futures pending and, on manager, its address taken ("Address already in use" for
    the next Executor); the end of the block now closes it, as a Ctrl-C to ``distq
    submit --wait`` does."""
    out, _ = run_program(CAUGHT_IN_A_WITH, manager_env(), timeout=20)
    assert out.splitlines()[-2:] == [f"caught: {[CANCELLED] * 3}", "open again"], out


def test_a_submit_racing_shutdown_is_either_refused_or_waited_for() -> None:
    """The shutdown check and the hand-over to the executor's thread are one step: a
    submit that the shutdown overtakes raises RuntimeError, not BrokenExecutor."""
    env = manager_env()
    ex = distq.Executor(
        transport="manager",
        authkey=env["DISTQ_AUTHKEY"].encode(),
        manager_address=env["DISTQ_MANAGER_ADDRESS"],
    )
    sealing, go_on = threading.Event(), threading.Event()
    seal_task = ex._codec.seal_task

    def slow_seal(task: Any) -> bytes:  # the submit is past its first check, not yet sent
        sealing.set()
        assert go_on.wait(10)
        return seal_task(task)

    ex._codec.seal_task = slow_seal  # type: ignore[method-assign]
    outcome: list[BaseException | DistqFuture[Any]] = []

    def submit() -> None:
        try:
            outcome.append(ex.submit(jobs.add, 1, 2))
        except Exception as exc:
            outcome.append(exc)

    submitter = threading.Thread(target=submit)
    submitter.start()
    try:
        assert sealing.wait(10)
        ex.shutdown(wait=True)  # nothing to wait for: the executor's thread ends
    finally:
        go_on.set()
        submitter.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], RuntimeError), outcome
    assert "after shutdown" in str(outcome[0])


def test_the_executor_forgets_answered_bodies_as_it_sends(
    executor: Open, workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It forgot them only at each reconcile, every 2 s: a fast map() held every body it
    sent in that time (soak10)."""
    monkeypatch.setattr(dispatching, "RECONCILE_SECONDS", 3600.0)  # none meanwhile
    ex = executor()
    workers()
    for n in range(20):
        assert ex.submit(jobs.add, n, 1).result(30) == n + 1
    assert len(ex._dispatcher.ledger) == 1  # the last one, answered since it was sent


def test_a_chunk_is_checked_for_what_a_chunk_can_carry_and_says_the_fix(
    executor: Open,
) -> None:
    """A chunk nests its calls 2 levels deeper: arguments that fit alone were refused as
    NestedTooDeep naming distq:chunk; an oversized chunk named a task never sent and not
    the fix, a smaller chunksize (chunks10)."""
    ex = executor()
    deep: list[Any] = []
    for _ in range(60):
        deep = [deep]  # 61 levels with the outer list: fits alone, not in a chunk
    with pytest.raises(TypeError, match=r"^call 1 of map\(\): jobs:echo: argument 1.* is nested"):
        ex.map("jobs:echo", [deep, deep], chunksize=2)
    with pytest.raises(MessageTooLarge) as caught:
        ex.map("jobs:echo", ["y" * 1000] * 2000, chunksize=2000)
    assert str(caught.value).startswith(
        "map() of jobs:echo with chunksize=2000: a chunk of its calls would be too large to "
        "send (would be 2,0"
    ), caught.value
    assert str(caught.value).endswith(
        "over the limit of 1,048,576 (DISTQ_MAX_MESSAGE_BYTES)); nothing was sent: pass a "
        "smaller chunksize, or large data by reference"
    ), caught.value
    assert ex.stats().ready == 0
    # one call at a time: named by its number, not by the id of a task never sent (exec12)
    with pytest.raises(MessageTooLarge) as caught:
        ex.map("jobs:echo", ["a", "b", "y" * 1_100_000])
    assert str(caught.value).startswith(
        "map() of jobs:echo: call 3 cannot be submitted: task would be 1,1"
    ), caught.value
    assert str(caught.value).endswith("; nothing was sent"), caught.value
    assert ex.stats().ready == 0


def test_an_executor_hosting_the_queues_warns_as_distq_master_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An executor that hosts the manager queues said nothing of a 2-byte authkey, nor of
    listening beyond this machine, where `distq master` warns of both (diff14)."""
    from launch import free_port

    short: dict[str, Any] = {
        "transport": "manager",
        "authkey": "ab",
        "manager_address": f"127.0.0.1:{free_port()}",
    }
    with (
        caplog.at_level("WARNING", logger="distq"),
        distq.Executor(**short),
        distq.Executor(**short, host=False),  # a client of that master: not its to say
    ):
        pass
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert [line for line in said if line.startswith("DISTQ_AUTHKEY is 2 bytes long")], said
    assert len([line for line in said if line.startswith("DISTQ_AUTHKEY")]) == 1, said
    assert not any("not encrypted" in line for line in said), said  # on loopback: info only


FORK_UNDER_HELD_LOCKS = """
    import os, signal, sys, threading
    import distq
    from distq import executor_threads
    from distq.futures import DistqFuture
    ex = distq.Executor()  # no worker: its futures stay pending
    held = ex.submit("jobs:add", 1, 2)
    in_transit = DistqFuture(ex._dispatcher.cancel, "0" * 32, "jobs:add")
    ex._dispatcher.futures.add(in_transit)  # in no structure: as one a thread has in hand
    hold, forever = threading.Event(), threading.Event()

    def holder():  # a parent thread inside submit(), a future's lock, an executor ending
        with ex._lock, held._condition, executor_threads.ENDED_LOCK:
            hold.set()
            forever.wait()

    threading.Thread(target=holder, daemon=True).start()
    hold.wait()
    pid = os.fork()
    if pid == 0:
        signal.alarm(5)  # a hang ends the child: the parent sees the signal
        print("held:", type(held.exception(1)).__name__, flush=True)
        print("in transit:", type(in_transit.exception(1)).__name__, flush=True)
        ex.shutdown()
        with ex:
            pass
        ex.close()
        print("child shut down", flush=True)
        sys.exit(0)  # the exit hooks run: they wait for ended executors' callbacks
    _, status = os.waitpid(pid, 0)
    print("child status", status, flush=True)
    forever.set()
    ex.close(cancel_futures=False)
"""


def test_a_forked_child_fails_every_inherited_future_and_shuts_down_whatever_was_held() -> None:
    """fork() while a parent thread held the executor's lock (inside submit) and a
    future's lock, and while a future was in no structure of the executor's (a batch
    being sent, a result being resolved): the child hung in shutdown() (1 child in 30),
    in done() on the future whose lock was held, and 308 futures stayed pending for good
    (exec18). Every inherited future fails with BrokenExecutor now, at once, and
    shutdown(), close() and the end of a ``with`` block return; so does the child's exit
    with the lock over ended executors' callbacks held at the fork (it hung, diff18b)."""
    out, _ = run_program(FORK_UNDER_HELD_LOCKS, manager_env())
    lines = out.splitlines()
    assert "held: BrokenExecutor" in lines, out
    assert "in transit: BrokenExecutor" in lines, out
    assert "child shut down" in lines and "child status 0" in lines, out


COLLECTED_CALLBACK = """
    import subprocess, sys, time
    import distq
    worker = subprocess.Popen(
        [sys.executable, "-m", "distq", "worker", "--tasks", "jobs", "--connect-timeout", "20"]
    )

    def submit():
        ex = distq.Executor()  # collected without shutdown(): its futures still resolve
        future = ex.submit("jobs:add", 1, 2)

        def callback(f):
            time.sleep(1.5)  # still running at the exit
            print("callback ran:", f.result(), flush=True)

        future.add_done_callback(callback)
        return future

    try:
        print("result:", submit().result(60), flush=True)
    finally:
        worker.terminate()
        worker.wait(20)
    from distq import executor_threads  # the collected executor's thread ends meanwhile
    for _ in range(100):
        if not executor_threads.running:
            break
        time.sleep(0.1)
    print("executor threads running at the exit:", len(executor_threads.running), flush=True)
    print("main ends", flush=True)
"""


def test_the_exit_waits_for_the_callbacks_of_an_executor_collected_without_shutdown() -> None:
    """A collected executor resolves the futures it has; its thread then ends, and the
    exit waited only for the callbacks of executors still running: a callback of a
    future that had resolved was cut off (2 runs in 3, exec18)."""
    out, _ = run_program(COLLECTED_CALLBACK, manager_env())
    assert "executor threads running at the exit: 0" in out.splitlines(), out
    assert "callback ran: 3" in out.splitlines(), out


def test_shutdown_cancel_futures_met_by_a_broker_failure_still_cancels_once_back(
    target: Target, executor: Open
) -> None:
    """shutdown(cancel_futures=True) whose withdraw fails (the broker gone for a moment):
    the thread reconnects, and the cancel is to be done then. It was dropped: the thread
    waited for every result, and shutdown(wait=True) with no worker running for ever."""
    if not WITHDRAWS[target.name]:
        pytest.skip("RabbitMQ cannot take a task back: nothing to cancel once sent")
    ex = executor()
    queued = [ex.submit(jobs.add, i, i) for i in range(3)]
    deadline = time.monotonic() + 10
    while ex.stats().ready < 3:  # on the broker, none taken: no worker runs
        assert time.monotonic() < deadline, ex.stats()
        time.sleep(0.05)
    producer = ex._dispatcher.producer
    withdraw = producer.withdraw
    failed: list[int] = []

    def fails_once(bodies: Any, redelivered: bool = True) -> list[bool]:
        if not failed:
            failed.append(len(bodies))
            raise distq.errors.TransportError("the broker went away (injected)")
        return withdraw(bodies, redelivered)

    producer.withdraw = fails_once  # type: ignore[method-assign]
    ex.shutdown(wait=False, cancel_futures=True)
    pending = concurrent.futures.wait(queued, timeout=5).not_done
    assert failed == [3], failed  # the withdraw met the failure
    assert not pending, f"{len(pending)} futures still wait for their results"
    assert all(f.cancelled() for f in queued)
    ex.shutdown(wait=True)


# RabbitMQ cannot take a message back out of a queue (Producer.withdraw answers False)
@pytest.mark.parametrize("way", ["cancel", "shutdown", "close", "task_timeout"])
@pytest.mark.parametrize("target", ["redis", "manager"], indirect=True)
def test_a_cancel_takes_back_a_retry_queued_or_waiting_out_its_delay(
    target: Target, executor: Open, way: str
) -> None:
    """Two tasks failed on a worker, each retried as a worker sends a retry: one queued
    again at once, one waiting out a 30 s delay. ``cancel()``, ``shutdown(cancel_futures=
    True)`` and ``close()`` (Ctrl-C in ``distq submit --wait``) took neither back: the
    futures stayed pending (cancel() False) and both retries were left for a worker to
    run (or, nobody waiting, dead-letter) after the user cancelled them; ``task_timeout``
    left them too ("a worker has it")."""
    ex = executor(task_timeout=10.0 if way == "task_timeout" else None)
    futures = [ex.submit(jobs.add, i, i) for i in range(2)]
    with contextlib.closing(distq.transport.open_transport(target.settings, "worker")) as worker:
        with contextlib.closing(worker.consumer("failing-worker")) as consumer:
            taken = fetch_n(consumer, 2)
            assert len(taken) == 2
            endings = Endings("failing-worker", target.settings.queue, None)
            consumer.settle(retried(endings, taken, (0.0, 30.0)))
        assert ex.stats().ready == 2  # both retries on the broker, none leased
        if way == "cancel":
            assert [future.cancel() for future in futures] == [True, True]
            assert ex.stats().ready == 0
        elif way == "shutdown":
            ex.shutdown(wait=False, cancel_futures=True)
            concurrent.futures.wait(futures, timeout=10)
        elif way == "close":
            ex.close()
        else:
            concurrent.futures.wait(futures, timeout=30)
            for future in futures:
                with pytest.raises(TaskTimeout, match="it was withdrawn from the queue"):
                    future.result(0)
            assert ex.stats().ready == 0
            return
        assert all(future.cancelled() for future in futures), futures
        if target.name == "redis":  # on manager the queues closed with the executor
            assert worker.stats().ready == 0


def _fail_each(consumer: Any, endings: Endings, deliveries: list[Any]) -> None:
    """Settle each of ``deliveries`` as a worker settles a task that raised: its retry
    sent with its own delay (0.5 s after a first attempt, 1 s after a second)."""
    settlements = []
    for delivery in deliveries:
        task = endings.codec.open_task(delivery.body)
        failed = endings.failed(delivery, task, ValueError("no"), 0.0, 0.0, retryable=True)
        assert failed.settlement.retry_delay == retry_delay(task.attempt)
        settlements.append(failed.settlement)
    consumer.settle(settlements)


@pytest.mark.parametrize("target", ["redis"], indirect=True)
def test_a_cancel_of_tasks_of_the_most_attempts_takes_back_the_retries_they_made(
    target: Target, executor: Open
) -> None:
    """A take-back looks for a task's retries only up to the attempt that can exist by
    now, from the task's age and the delays before each attempt (10,000 attempts of a
    task a worker held took a cancel() 0.5 s on Redis): two tasks of
    ``max_attempts=10_000`` failed twice as a worker fails them, their third attempts
    waiting out their 1 s delay, and one failed once, its second waiting out its 0.5 s,
    are all still taken back by cancel()."""
    ex = executor(max_attempts=MOST_ATTEMPTS)
    twice = [ex.submit(jobs.add, i, i) for i in range(2)]
    with contextlib.closing(distq.transport.open_transport(target.settings, "worker")) as worker:
        with contextlib.closing(worker.consumer("failing-worker")) as consumer:
            endings = Endings("failing-worker", target.settings.queue, None)
            for attempt in (1, 2):  # the second attempts, once their 0.5 s is out
                taken = fetch_n(consumer, 2)
                assert [endings.codec.open_task(d.body).attempt for d in taken] == [attempt] * 2
                _fail_each(consumer, endings, taken)
            once = ex.submit(jobs.add, 2, 2)
            taken = fetch_n(consumer, 1)
            assert [endings.codec.open_task(d.body).attempt for d in taken] == [1]
            _fail_each(consumer, endings, taken)
        assert ex.stats().ready == 3  # the three retries, none leased
        assert [future.cancel() for future in [*twice, once]] == [True, True, True]
        assert worker.stats().ready == 0  # none left to run


@pytest.mark.parametrize("target", ["redis", "manager"], indirect=True)
def test_a_cancel_of_a_task_a_worker_holds_looks_only_for_the_retries_its_age_allows(
    target: Target, executor: Open
) -> None:
    """A cancel() of a task of ``max_attempts=10_000`` that a worker holds (not on the
    queue: its retries are looked for) asks the broker for the few retries that can
    exist a moment after the send, attempts 2 to 4, not all 9,999 (0.5 s a cancel on
    Redis). The unit tests of the search (test_retries_by_age) pass whatever age the
    executor gives it: this is the executor's, through its collector."""
    ex = executor(max_attempts=MOST_ATTEMPTS)
    future = ex.submit(jobs.add, 1, 1)
    producer = ex._dispatcher.producer
    withdraw = producer.withdraw
    asked: list[int] = []

    def counted(bodies: Any, redelivered: bool = True) -> list[bool]:
        asked.append(len(bodies))
        return withdraw(bodies, redelivered)

    worker = distq.transport.open_transport(target.settings, "worker")
    with contextlib.closing(worker), contextlib.closing(worker.consumer("holding")) as consumer:
        assert len(fetch_n(consumer, 1)) == 1  # held: a cancel looks for its retries
        producer.withdraw = counted  # type: ignore[method-assign]
        assert future.cancel() is False  # the worker's copy may still run
    assert sum(asked) <= 1 + 4, asked  # itself, attempts 2 to 4 (5 once a second old)


@pytest.mark.parametrize("way", ["cancel", "shutdown", "task_timeout"])
@pytest.mark.parametrize("target", ["redis"], indirect=True)
def test_a_cancel_takes_back_every_copy_of_a_task_submitted_again(
    target: Target, executor: Open, way: str
) -> None:
    """Two tasks queued, then the broker's count of them lost (as a Redis restored from
    an older snapshot: ``submitted`` 0), so the reconcile sent both again: each queued
    twice. ``cancel()``, ``shutdown(cancel_futures=True)`` and ``task_timeout`` took one
    copy of each back (cancel() True) and left the other for a worker to run after the
    user cancelled it."""
    # the timeout past the wait for the copies below: at 6 s it withdrew both tasks
    # before a reconcile on a loaded machine (a clean-clone CI) had queued them again
    ex = executor(task_timeout=24.0 if way == "task_timeout" else None)
    futures = [ex.submit(jobs.add, i, i) for i in range(2)]
    deadline = time.monotonic() + 20  # submit() returns before its thread sent them: a
    while ex.stats().ready < 2 and time.monotonic() < deadline:  # count lost before the
        time.sleep(0.05)  # send is counted again by it, and nothing is sent twice
    with redis.Redis.from_url(target.settings.redis_url) as client:
        client.hset(f"{ex.reply_to}:state", "submitted", 0)
    deadline = time.monotonic() + 20  # reconciled every 2 s
    while ex.stats().ready < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ex.stats().ready == 4  # each task queued twice
    if way == "cancel":
        assert [future.cancel() for future in futures] == [True, True]
    elif way == "shutdown":
        ex.shutdown(wait=False, cancel_futures=True)
        concurrent.futures.wait(futures, timeout=10)
        assert all(future.cancelled() for future in futures), futures
    else:
        concurrent.futures.wait(futures, timeout=50)
        for future in futures:
            with pytest.raises(TaskTimeout, match="it was withdrawn from the queue"):
                future.result(0)
    with contextlib.closing(distq.transport.open_transport(target.settings, "worker")) as seen:
        assert seen.stats().ready == 0  # no copy left to run


@contextlib.contextmanager
def _held_by_a_stalled_worker(
    ex: distq.Executor, target: Target, within: float
) -> Iterator[tuple[Any, Any, Any]]:
    """A worker's consumer that took the executor's one task and stalls past its 1 s
    lease: (the consumer, the delivery it holds, its transport) once the task is queued
    again (the lease lapsed and swept, ``within`` seconds at most); closed after."""
    with contextlib.closing(distq.transport.open_transport(target.settings, "worker")) as worker:
        stalled = worker.consumer("stalled")
        try:
            [held] = fetch_n(stalled, 1)
            deadline = time.monotonic() + within
            while ex.stats().ready < 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert ex.stats().ready == 1
            yield stalled, held, worker
        finally:
            stalled.close()


@pytest.mark.parametrize("target", ["redis", "manager"], indirect=True)
def test_a_cancel_of_a_task_whose_earlier_copy_a_stalled_worker_holds_says_it_may_run(
    target: Target, executor: Open
) -> None:
    """A worker stalled past its 1 s lease holding a task, which went back to the queue:
    cancel() took the queued copy back and answered True, though the stalled worker's
    copy ran and delivered its result, which the executor dropped (the future cancelled).
    The copy queued again is left: cancel() answers False, and the future gets the
    result of whichever copy ends first."""
    ex = executor()
    future = ex.submit(jobs.add, 1, 2)
    with _held_by_a_stalled_worker(ex, target, 20) as (stalled, held, _):
        assert future.cancel() is False
        task = distq.envelope.Task.decode(held.body)
        late = Settlement(held, task.reply_to, ok_result(task, 3))
        with contextlib.suppress(SettledThenFailed):  # its lease lapsed
            stalled.settle([late])
    assert future.result(10) == 3


def test_cancelling_a_wrapped_future_does_not_hold_up_the_event_loop_while_the_broker_hangs(
    tmp_path: Path,
) -> None:
    """asyncio.wrap_future's future, cancelled, cancels the DistqFuture in the event loop's
    thread: that cancel() of a task sent waited for the executor's thread, stuck in a read
    of a stopped Redis, and every coroutine of the program with it."""
    import asyncio

    with LocalRedis(tmp_path).start() as server:
        ex = distq.Executor(transport="redis", redis_url=server.url, queue="hung")
        try:
            future = ex.submit("jobs:add", 1, 2)  # no worker: it waits on the broker
            deadline = time.monotonic() + 10
            while ex.stats().ready < 1:
                assert time.monotonic() < deadline, ex.stats()
                time.sleep(0.05)
            server.pause()
            time.sleep(1.0)  # the thread is in a read now

            async def cancel_then_tick() -> float:
                wrapped = asyncio.wrap_future(future)
                started = time.monotonic()
                wrapped.cancel()
                await asyncio.sleep(0.05)  # the loop runs the cancel's callback first
                return time.monotonic() - started

            held = asyncio.run(cancel_then_tick())
            assert held < 1.5, f"the event loop was held up {held:.1f} s"
        finally:
            server.resume()
            ex.close()


def test_a_second_close_with_the_broker_hung_returns_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() gave up on the executor's thread, in a read of a stopped Redis, after
    CLOSE_WAIT_SECONDS; a second close() (a signal handler and a finally: both close)
    waited those seconds again for the same thread, nothing left to fail. The second
    close() is given a CLOSE_WAIT_SECONDS of 30 s: one that waited again takes seconds
    (its thread ends only once its calls to the stopped Redis time out), and a stall of
    this process cannot pass for that wait (a 0.5 s bound failed with a 0.6 s stall)."""
    with LocalRedis(tmp_path).start() as server:
        ex = distq.Executor(transport="redis", redis_url=server.url, queue="hung")
        future = ex.submit("jobs:add", 1, 2)  # no worker
        time.sleep(0.5)
        server.pause()
        try:
            time.sleep(1.0)  # the thread is in a read now
            ex.close()
            assert isinstance(future.exception(0), BrokenExecutor)
            monkeypatch.setattr(executing, "CLOSE_WAIT_SECONDS", 30.0)
            started = time.monotonic()
            ex.close()
            took = time.monotonic() - started
            assert took < 5.0, took  # before: CLOSE_WAIT_SECONDS, or until the thread ended
        finally:
            server.resume()


def test_a_shutdown_with_task_timeout_is_bounded_by_it_while_the_broker_hangs(
    tmp_path: Path,
) -> None:
    """task_timeout bounds shutdown(wait=True) (its docstring): with a stopped Redis the
    future failed at its deadline, but the shutdown waited for the executor's thread, a
    read, a reconnect and the delete of its result list each waited out: 20 s for a
    task_timeout of 1 s. Every future answered, it waits CLOSE_WAIT_SECONDS more for the
    connection, as close() does; the thread closes it once back."""
    with LocalRedis(tmp_path).start() as server:
        ex = distq.Executor(transport="redis", redis_url=server.url, queue="hung", task_timeout=1.0)
        future = ex.submit("jobs:add", 1, 2)  # no worker
        time.sleep(0.3)
        server.pause()
        try:
            started = time.monotonic()
            ex.shutdown(wait=True)
            took = time.monotonic() - started
            assert isinstance(future.exception(0), TaskTimeout), future
            # its deadline, the look each second, CLOSE_WAIT_SECONDS; a stall may add some
            assert took < 1.0 + 1.0 + executing.CLOSE_WAIT_SECONDS + 2.5, took
        finally:
            server.resume()


EXITS_AFTER_SHUTDOWN_WITHOUT_WAIT_WITH_TASK_TIMEOUT = """
    import tempfile, time
    from pathlib import Path
    import distq
    from launch import LocalRedis
    server = LocalRedis(Path(tempfile.mkdtemp()), die_with_parent=True).start()
    ex = distq.Executor(
        transport="redis", redis_url=server.url, queue="stopped", task_timeout=1.0
    )
    future = ex.submit("jobs:add", 1, 2)  # no worker
    future.add_done_callback(
        lambda f: print("callback:", type(f.exception()).__name__, flush=True)
    )
    time.sleep(0.3)
    print("server pid", server.pid, flush=True)
    server.pause()  # SIGSTOP: the executor's thread waits in a read
    ex.shutdown(wait=False)  # the exit waits for its futures: task_timeout bounds that
    print("exiting", flush=True)
"""


def test_the_exit_after_shutdown_without_wait_is_bounded_by_task_timeout_with_the_broker_hung() -> (
    None
):
    """The exit waits for the futures of an executor shut down without wait, as
    concurrent.futures does; task_timeout answered them after 1 s, but the exit waited
    for the executor's thread, in a read, a reconnect and the delete of its result list
    of a stopped Redis, each waited out: about 20 s."""
    out, took = run_program(
        EXITS_AFTER_SHUTDOWN_WITHOUT_WAIT_WITH_TASK_TIMEOUT, manager_env(), timeout=60
    )
    lines = killed_its_paused_redis(out)
    assert "callback: TaskTimeout" in lines, out
    assert took < 10, out  # before: about 20 s


CLOSES_FROM_A_SIGNAL = """
    import os, signal, sys, time
    import distq
    from distq.dispatcher import Submit
    LOCK, EXITS = {lock!r}, {exits!r}
    ex = distq.Executor()
    early = ex.submit("jobs:add", 1, 2)  # no worker: pending
    dispatcher = ex._dispatcher
    armed = [LOCK == "executor"]

    def signalled() -> None:
        if armed[0]:
            armed[0] = False
            os.kill(os.getpid(), signal.SIGTERM)  # its handler runs here, inside the lock

    def handler(signum, frame):
        started = time.monotonic()
        ex.close()
        print(f"closed in {{time.monotonic() - started:.1f}} s, early done: {{early.done()}}",
              flush=True)
        if EXITS:
            sys.exit(0)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    signal.signal(signal.SIGTERM, handler)
    if LOCK == "executor":  # put() is called under the executor's lock
        put = dispatcher.put
        def putting(command):
            if isinstance(command, Submit):
                signalled()
            return put(command)
        dispatcher.put = putting
    elif LOCK == "callbacks":  # inside the callbacks' lock: a cancel() on this thread
        import queue, threading
        class Queue(queue.SimpleQueue):
            def put(self, item, block=True, timeout=None):
                if threading.current_thread() is threading.main_thread():
                    signalled()
                super().put(item, block, timeout)
        ex._callbacks._queue = Queue()
        armed[0] = True
        for _ in range(200):  # until one is cancelled here, before the thread sent it
            future = ex.submit("jobs:add", 3, 4)
            future.add_done_callback(lambda f: None)
            future.cancel()
            if not armed[0]:
                break
        print("signalled:", not armed[0], flush=True)
    else:  # inside the dispatcher's lock, in put()
        class Signalling(type(dispatcher.futures)):
            def update(self, items):
                signalled()
                super().update(items)
        futures = Signalling()
        futures.update(dispatcher.futures)
        dispatcher.futures = futures
        armed[0] = True
    try:
        late = ex.submit("jobs:add", 2, 3)
    except Exception as exc:
        print("late submit:", type(exc).__name__, flush=True)
    else:
        print("late future:", type(late.exception(20)).__name__, flush=True)
"""


@pytest.mark.parametrize("lock", ["executor", "dispatcher", "callbacks"])
@pytest.mark.parametrize("exits", [True, False])
def test_close_from_a_signal_handler_interrupting_a_submit_does_not_hang(
    lock: str, exits: bool
) -> None:
    """close() is for "a program that must not wait (a signal, ...)": a SIGTERM handler
    calling close() while its main thread was in submit(), holding the executor's lock,
    the dispatcher's (put() loops over a whole map() under it) or the callbacks' (a
    cancel() handing on a future's done-callbacks), blocked for good on that lock. It
    returns now (after CLOSE_WAIT_SECONDS at most), and a submit it interrupted leaves no
    future pending."""
    source = CLOSES_FROM_A_SIGNAL.format(lock=lock, exits=exits)
    out, _ = run_program(source, manager_env(), timeout=40)
    assert "early done: True" in out, out
    if lock == "callbacks" and not exits:
        assert "signalled: True" in out, out
    if not exits:
        refused = (
            "late submit: RuntimeError" if lock == "callbacks" else "late submit: BrokenExecutor"
        )
        assert refused in out or "late future: BrokenExecutor" in out, out


@pytest.mark.parametrize("target", ["redis"], indirect=True)
def test_a_close_takes_back_the_copy_queued_again_of_a_task_a_stalled_worker_holds(
    target: Target, executor: Open
) -> None:
    """A worker stalled past its 1 s lease holding a task, which went back to the queue,
    then the executor closed (``close()``: Ctrl-C in ``distq submit --wait``). As a
    cancel, the close left the queued copy, for a worker to run or dead-letter with
    nobody waiting for it; a stopping master takes every copy. Now close() takes it too,
    and its future fails (the stalled worker's copy may still run): not cancelled."""
    ex = executor()
    future = ex.submit(jobs.add, 1, 2)
    with _held_by_a_stalled_worker(ex, target, 20) as (_, _, worker):
        ex.close()
        assert worker.stats().ready == 0  # no copy left to run
    assert not future.cancelled()
    with pytest.raises(distq.errors.BrokenExecutor, match="closed"):
        future.result(0)


@pytest.mark.parametrize("target", ["redis", "manager"], indirect=True)
def test_a_task_timeout_of_a_task_a_stalled_worker_holds_says_it_may_still_run(
    target: Target, executor: Open
) -> None:
    """A worker stalled past its 1 s lease holding a task, which went back to the queue,
    then the task's ``task_timeout``: the queued copy is taken back, and its TaskTimeout
    said "no worker took it; it was withdrawn from the queue and will not run", though
    the stalled worker's copy may still run (a user resubmitting it had it run twice)."""
    ex = executor(task_timeout=12.0)
    future = ex.submit(jobs.add, 1, 2)
    with _held_by_a_stalled_worker(ex, target, 11) as (_, _, worker):
        with pytest.raises(TaskTimeout) as timed_out:
            future.result(30)
        assert worker.stats().ready == 0  # the queued copy taken back
    said = str(timed_out.value)
    assert "will not run" not in said and "may still run" in said, said
