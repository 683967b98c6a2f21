"""A worker's exit past the threads its tasks left running (``cli._bound_exit``): how long
it waits after a SIGTERM, and the exit code it ends with."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from conftest import Target
from distq.envelope import NO_REPLY, Task
from distq.transport import Transport
from procs import Distq

pytestmark = pytest.mark.integration

LEAVERS = """
import atexit
import os
import threading
import time

import distq


@distq.task
def outlast(seconds):
    # a thread left running for good, and the task itself runs past the drain
    threading.Thread(target=time.sleep, args=(600,), name="left-behind", daemon=False).start()
    time.sleep(seconds)
    return "done"


def _exit_0_in_the_exit(status=0):
    for _ in range(2400):  # until the main thread has ended: the process's exit is on
        if not threading.main_thread().is_alive():
            break
        time.sleep(0.05)
    time.sleep(0.5)
    os._exit(status)


@distq.task
def exit_0_later(status=0):
    threading.Thread(
        target=_exit_0_in_the_exit, args=(status,), name="exits-0", daemon=False
    ).start()
    return "started"


@distq.task
def exit_0_after(seconds):
    # in the task itself, once the worker has stopped for a setting the broker refused
    time.sleep(seconds)
    os._exit(0)


@distq.task
def exit_0_in_a_slow_atexit(name, daemon):
    # a thread the exit does not wait for: it calls os._exit(0) while atexit runs
    atexit.register(time.sleep, 3)
    threading.Thread(target=_exit_0_in_the_exit, name=name, daemon=daemon).start()
    return "started"


@distq.task
def exit_0_in_the_close():
    # the worker's transport takes 2 s to close (a broker slow to answer): a thread this
    # task left calls os._exit(0) then, after Worker.run() and before the exit's wait
    from distq.transport.redis import RedisTransport

    closing, close = threading.Event(), RedisTransport.close

    def slowly(self):
        closing.set()
        time.sleep(2)
        close(self)

    def exit_0():
        if closing.wait(120):
            os._exit(0)

    RedisTransport.close = slowly
    threading.Thread(target=exit_0, name="exits-0-in-close", daemon=True).start()
    return "started"
"""


def _env(target: Target, tmp_path: Path, **extra: str) -> dict[str, str]:
    (tmp_path / "leavers.py").write_text(LEAVERS)
    env = target.process_env(**extra)
    env["PYTHONPATH"] += os.pathsep + str(tmp_path)
    return env


def _refused_mid_task(
    target: Target, hosted: Transport, tmp_path: Path, reply: str, task: Task, *flags: str
) -> tuple[int, str]:
    """A worker (with ``flags``) running ``task`` (of ``LEAVERS``) when its queue turns into
    a string, which Redis refuses from the next fetch on (the worker exits 2): its exit
    code and output."""
    producer = hosted.producer(hosted.reply_queue(reply))
    producer.submit([task.encode()])
    worker = Distq(["worker", "--tasks", "leavers", *flags], _env(target, tmp_path))
    raw = redis.Redis.from_url(target.settings.redis_url)
    try:
        worker.wait_for(rf"Get task {task.name}")
        time.sleep(0.5)
        raw.delete(target.settings.queue)
        raw.set(target.settings.queue, "hello")  # refused from the next fetch: exit 2
        code = worker.wait(60)
        out = worker.output()
    finally:
        worker.stop(grace=0)
        raw.delete(target.settings.queue)
        raw.close()
        producer.close()
    return code, out


@contextlib.contextmanager
def _outlasting(
    target: Target, hosted: Transport, tmp_path: Path, reply: str, **env: str
) -> Iterator[Distq]:
    """A worker (with ``env``) half a second into ``leavers:outlast``, a task that leaves a
    thread running for good and runs 600 s itself; killed after."""
    producer = hosted.producer(hosted.reply_queue(reply))
    producer.submit([Task(name="leavers:outlast", args=[600], reply_to=NO_REPLY).encode()])
    worker = Distq(["worker", "--tasks", "leavers"], _env(target, tmp_path, **env))
    try:
        worker.wait_for(r"Get task leavers:outlast")
        time.sleep(0.5)
        yield worker
    finally:
        worker.stop(grace=0)
        producer.close()


@pytest.mark.parametrize("target", ["redis"], indirect=True)
def test_a_sigterm_whose_drain_is_spent_waits_no_more_for_a_tasks_threads(
    target: Target, hosted: Transport, tmp_path: Path
) -> None:
    """After a SIGTERM the drain ran out on a task that left a thread; the exit then
    waited DISTQ_DRAIN_SECONDS more for that thread (40 s from the SIGTERM with the
    default 20 s drain: past compose's 30 s grace, past the README's "drain plus 10 s"),
    the handed-back task still running on its slot's thread meanwhile. The wait is
    what is left of the drain."""
    drain = 8.0
    with _outlasting(
        target, hosted, tmp_path, "outlast", DISTQ_DRAIN_SECONDS=f"{drain:g}"
    ) as worker:
        started = time.monotonic()
        worker.signal(signal.SIGTERM)
        code = worker.wait(60)
        took = time.monotonic() - started
        out = worker.output()
    assert code == 0, out
    assert "the worker exits 0 now, without waiting any longer" in out, out
    assert took < 2 * drain - 1, f"{took:.1f} s from the SIGTERM to the exit:\n{out}"
    assert "s (what is left of DISTQ_DRAIN_SECONDS) for it to end" in out, out


@pytest.mark.parametrize("target", ["redis"], indirect=True)
@pytest.mark.parametrize("status", [0, 256, False])
def test_a_tasks_thread_that_calls_os_exit_0_keeps_a_refused_workers_exit_2(
    target: Target, hosted: Transport, tmp_path: Path, status: int
) -> None:
    """A thread a task left called ``os._exit(0)`` during the exit's wait, while the
    worker meant to exit 2 (the broker refused a setting mid-run): the process exited
    0, which a supervisor takes for a clean stop. So did ``os._exit(256)``, whose low 8
    bits, all the system reads, are 0; and ``os._exit(False)``, which os._exit reads as
    0 (an int's subclass), once 256 was judged by its type."""
    task = Task(name="leavers:exit_0_later", args=[status], reply_to=NO_REPLY)
    code, out = _refused_mid_task(target, hosted, tmp_path, "exit0", task)
    assert "1 thread that tasks started is alive (exits-0)" in out, out
    assert code == 2, out


@pytest.mark.parametrize("target", ["redis"], indirect=True)
@pytest.mark.parametrize(("name", "daemon"), [("a-daemon", True), ("distq-mine", False)])
def test_a_thread_the_exit_does_not_wait_for_that_calls_os_exit_0_keeps_exit_2(
    target: Target, hosted: Transport, tmp_path: Path, name: str, daemon: bool
) -> None:
    """A daemon thread, or one named ``distq-*``, that a task left called ``os._exit(0)``
    during a slow ``atexit`` while the worker meant to exit 2: the exit kept 2 only when a
    thread the exit waits for was left too, and here exited 0, a clean stop to a
    supervisor."""
    task = Task(name="leavers:exit_0_in_a_slow_atexit", args=[name, daemon], reply_to=NO_REPLY)
    code, out = _refused_mid_task(target, hosted, tmp_path, "exit0atexit", task)
    assert "that tasks started" not in out, out  # neither "1 thread ... is" nor "threads"
    assert code == 2, out


@pytest.mark.parametrize("target", ["redis"], indirect=True)
def test_a_tasks_thread_that_calls_os_exit_0_while_the_transport_closes_keeps_exit_2(
    target: Target, hosted: Transport, tmp_path: Path
) -> None:
    """A thread a task left called ``os._exit(0)`` after ``Worker.run()`` ended and before
    the exit's wait took over (the transport closing, 2 s here), while the worker meant to
    exit 2: ``os._exit`` was Python's own there, and the worker exited 0."""
    task = Task(name="leavers:exit_0_in_the_close", args=[], reply_to=NO_REPLY)
    code, out = _refused_mid_task(target, hosted, tmp_path, "exit0close", task)
    assert "worker exit." in out, out
    assert code == 2, out


@pytest.mark.parametrize("target", ["redis"], indirect=True)
def test_a_second_sigterm_waits_no_more_for_a_tasks_threads(
    target: Target, hosted: Transport, tmp_path: Path
) -> None:
    """A second signal hands back everything at once (README), the running task too,
    which runs again elsewhere: the exit then waited what was left of the drain (20 s)
    for a thread the task left, the handed-back task running on meanwhile."""
    with _outlasting(target, hosted, tmp_path, "outlast2") as worker:
        worker.signal(signal.SIGTERM)
        worker.wait_for(r"SIGTERM: finishing the tasks that run")
        time.sleep(1.0)
        started = time.monotonic()
        worker.signal(signal.SIGTERM)
        code = worker.wait(60)
        took = time.monotonic() - started
        out = worker.output()
    assert "SIGTERM again: handing back every task in hand and exiting" in out, out
    assert code == 0, out
    assert took < 10, f"{took:.1f} s from the second SIGTERM to the exit:\n{out}"


@pytest.mark.parametrize("target", ["redis"], indirect=True)
def test_a_task_that_calls_os_exit_0_while_a_refusal_stops_the_worker_says_the_refusal(
    target: Target, hosted: Transport, tmp_path: Path
) -> None:
    """A task's ``os._exit(0)`` while a setting the broker refused stopped the worker (its
    other slot's fetch): the worker exited 2, its line "called os._exit(0) ... (exit 2)",
    and the refusal, which ``distq worker`` says as it ends, was never said: exit 2, bad
    configuration, with no line naming it."""
    task = Task(name="leavers:exit_0_after", args=[3], reply_to=NO_REPLY)
    code, out = _refused_mid_task(
        target, hosted, tmp_path, "exit0refused", task, "--concurrency", "2"
    )
    assert "called os._exit(0)" in out, out
    assert code == 2, out
    assert "(exit 2, for the error said last)" in out, out
    last = out.strip().splitlines()[-1]
    assert "holds a string, not the list of ready tasks" in last, out  # the refusal, last
