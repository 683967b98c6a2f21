"""Tasks that misbehave in ways the README names: the worker's exit code and output say
so, and no task is lost."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import Target
from distq.console import Console
from distq.envelope import Task
from distq.tasks import Registry
from distq.transport import Producer, Transport, open_transport
from distq.worker import Worker, WorkerOptions
from procs import REPO, Distq, checkout_env
from seam import results_of
from worker_tasks import fork_and_end

pytestmark = pytest.mark.integration


def test_a_task_that_calls_os_exit_0_ends_its_worker_with_a_failing_exit_code(
    target: Target, hosted: Transport, tmp_path: Path
) -> None:
    """``os._exit(0)`` in a task ended the worker's process with exit code 0, which a
    supervisor (a Kubernetes Job, ``restart: on-failure``, systemd's ``on-failure``)
    takes for a clean stop: no restart, the job counted done. Its tasks go back with
    their leases, and the next worker runs them."""
    producer = hosted.producer(hosted.reply_queue("exits"))
    marker = str(tmp_path / "exited")
    tasks = [
        Task(name="worker_tasks:exit_once", args=[0, marker], reply_to=producer.reply_to),
        Task(name="square", args=[3], reply_to=producer.reply_to),
    ]
    producer.submit([t.encode() for t in tasks])
    env = target.process_env()
    args = ["worker", "--task", "worker_tasks:exit_once", "--exit-when-idle", "2"]
    first = Distq(args, env)
    try:
        code = first.wait(30)
        assert Path(marker).exists(), first.output()
        assert code != 0, first.output()
    finally:
        first.stop(grace=0)
    second = Distq(args, env)
    try:
        results = {r.task_id: r for r in results_of(producer, 2, within=30)}
        assert second.wait(30) == 0, second.output()
    finally:
        second.stop(grace=0)
    assert [results[t.id].value for t in tasks if t.id in results] == ["ran", 9]
    producer.close()


def _ran(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """A ``distq`` worker run to its end (30 s at most): its exit status and output."""
    worker = Distq(args, env)
    try:
        return worker.wait(30), worker.output()
    finally:
        worker.stop(grace=0)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_worker_a_task_ends_with_os_exit_says_which_task_ended_it(
    target: Target, hosted: Transport, tmp_path: Path, log_format: str
) -> None:
    """A task's ``os._exit()`` ended its worker's process without a line saying why.
    README had the last ``Get task`` line name the task; with more than one slot it named
    another task, one that a slot beside it started after it (and JSON logs write a
    task's line only when it ends, never for this one). Its last lines now name the task,
    its status and its slot."""
    producer = hosted.producer(hosted.reply_queue("exits"))
    marker = str(tmp_path / "exited")
    ending = Task(name="worker_tasks:exit_after", args=[1.0, 7, marker], reply_to=producer.reply_to)
    others = [Task(name="square", args=[i], reply_to=producer.reply_to) for i in range(40)]
    producer.submit([t.encode() for t in [ending, *others]])
    args = ["worker", "--task", "worker_tasks:exit_after", "--concurrency", "2"]
    env = target.process_env(DISTQ_LOG_FORMAT=log_format)
    code, out = _ran([*args, "--exit-when-idle", "5"], env)
    assert code == 7 and Path(marker).exists(), out
    last = out.strip().splitlines()[-1]
    assert ending.id in last and "os._exit(7)" in last and "worker_tasks:exit_after" in last, out
    again = Distq([*args, "--exit-when-idle", "2"], target.process_env())
    try:  # its tasks went back: the next worker runs them
        assert again.wait(30) == 0, again.output()
    finally:
        again.stop(grace=0)
    producer.close()


def _one_exit(
    target: Target, hosted: Transport, tmp_path: Path, status: float, idle: str
) -> tuple[Producer, Task, int, str]:
    """A worker run to its end on one task that calls ``os._exit(status)`` at once: the
    producer that sent it, the task, the worker's exit status and output (the task ran)."""
    producer = hosted.producer(hosted.reply_queue("exits"))
    marker = tmp_path / "exited"
    task = Task(
        name="worker_tasks:exit_after", args=[0.0, status, str(marker)], reply_to=producer.reply_to
    )
    producer.submit([task.encode()])
    args = ["worker", "--task", "worker_tasks:exit_after", "--exit-when-idle", idle]
    code, out = _ran(args, target.process_env())
    assert marker.exists(), out
    return producer, task, code, out


@pytest.mark.parametrize(("given", "exits"), [(0, 1), (256, 1), (-1, 255)])
def test_a_worker_a_task_ends_with_os_exit_0_names_the_status_the_task_gave(
    target: Target, hosted: Transport, tmp_path: Path, given: int, exits: int
) -> None:
    """A task's ``os._exit(0)`` exits 1, and its line said the task "called os._exit(1)":
    the status the worker exits with, not the one in the task's code, which an operator
    searched for and did not find. The line names the task's status, then the exit: the
    one the system reads, its low 8 bits (``os._exit(256)`` said "(exit 256)" and exited
    0, a clean stop to a supervisor; ``os._exit(-1)`` said "(exit -1)" and exited 255)."""
    producer, ending, code, out = _one_exit(target, hosted, tmp_path, given, idle="5")
    assert code == exits, out
    last = out.strip().splitlines()[-1]
    assert ending.id in last and f"called os._exit({given})" in last, out
    assert f"(exit {exits})" in last, out
    producer.close()


def test_a_task_s_os_exit_that_raises_is_not_said_to_end_the_worker(
    target: Target, hosted: Transport, tmp_path: Path
) -> None:
    """``os._exit(1.5)`` raises TypeError (as for None, a str, an int past a C int) and
    ends nothing: the task fails, and is retried. The worker said first "task ... called
    os._exit(1.5) ...: the worker ends with it", and ran on."""
    producer, _, code, out = _one_exit(target, hosted, tmp_path, 1.5, idle="2")
    assert code == 0, out
    assert "os._exit(1.5)" not in out and "the worker ends with it" not in out, out
    assert [r.value for r in results_of(producer, 1, within=10)] == ["ran"], out
    producer.close()


#: A program running two workers of its own in one process (a master hosted in it too):
#: the first idle on a queue of its own, the second running a task that calls os._exit(7).
TWO_WORKERS = """
import dataclasses, secrets, sys, threading, time
from distq.config import Settings
from distq.console import Console
from distq.envelope import Task
from distq.tasks import Registry
from distq.transport import open_transport
from distq.worker import Worker, WorkerOptions, _running
from launch import free_port
from worker_tasks import exit_after

settings = Settings(authkey=secrets.token_bytes(8), manager_address=("127.0.0.1", free_port()))
producer = open_transport(settings, "master").producer("two.results")
registry = Registry()
registry.register("exit_after", exit_after)

def worker(name, settings):
    options = WorkerOptions(worker_id=name, exit_when_idle=30.0)
    console = Console(out=sys.stdout, err=sys.stdout)
    return Worker(open_transport(settings, "worker"), registry, options, console)

idle = worker("idle", dataclasses.replace(settings, queue="other"))
threading.Thread(target=idle.run, daemon=True).start()
while not _running:
    time.sleep(0.05)
task = Task(name="exit_after", args=[0.0, 7, sys.argv[1]], reply_to=producer.reply_to)
producer.submit([task.encode()])
print("task id", task.id, flush=True)
worker("ending", settings).run()
"""


def test_a_task_s_os_exit_is_named_by_its_worker_of_two_in_one_process(tmp_path: Path) -> None:
    """A program that runs two workers in one process: a task's ``os._exit()`` in the
    second was said by the first, which has no slot on that thread: "a task called
    os._exit(7) in thread distq-slot-0", the task unnamed. The worker whose slot called
    it says it."""
    marker = str(tmp_path / "exited")
    env = checkout_env(PYTHONPATH=os.pathsep.join([str(REPO / "tests"), str(REPO / "src")]))
    done = subprocess.run(
        [sys.executable, "-c", TWO_WORKERS, marker],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 7 and Path(marker).exists(), out
    task_id = re.search(r"task id (\w+)", out)
    assert task_id is not None, out
    last = out.strip().splitlines()[-1]
    assert f"task exit_after {task_id[1]} called os._exit(7) in slot 0" in last, out


def test_a_worker_a_task_crashes_in_c_code_says_where(target: Target, hosted: Transport) -> None:
    """A task that crashes in C code (a segfault, here through ``ctypes``) ended its
    worker with no line but its ``Get task`` line, which with more than one slot may be
    another task's: the worker's stderr now has Python's fatal error and the stack of
    each thread, the task's function in the one that crashed. Its task goes back."""
    producer = hosted.producer(hosted.reply_queue("crashes"))
    crashing = Task(name="worker_tasks:segfault", args=[], reply_to=producer.reply_to)
    producer.submit([crashing.encode()])
    args = ["worker", "--task", "worker_tasks:segfault", "--concurrency", "2"]
    code, out = _ran([*args, "--exit-when-idle", "5"], target.process_env())
    assert code == -signal.SIGSEGV, out
    assert "Fatal Python error: Segmentation fault" in out, out
    assert re.search(r"worker_tasks\.py\", line \d+ in segfault", out), out
    producer.close()


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_a_task_that_ends_its_worker_every_time_holds_back_no_other_task(
    target: Target, tmp_path: Path, queue_type: str
) -> None:
    """A task that ends its worker's process each time it runs (README: *Bad input never
    crashes a worker*, the exception) takes down each worker that takes it; the other
    tasks of the queue still run, each time a worker starts again, rather than wait
    behind it for good. On RabbitMQ they did not: the broker put the task back at the
    head of the queue the moment its worker's connection closed, and each worker that
    started took it first and ended (8 restarts of one worker ran none of 6 squares).
    Now the worker that gets it back publishes it again behind them; on quorum queues
    too, which count each delivery."""
    if queue_type == "quorum":  # RabbitMQ's: they count deliveries, tasks go back otherwise
        if target.name != "rabbitmq":
            pytest.skip("quorum queues are RabbitMQ's")
        target = replace(
            target,
            settings=replace(target.settings, rabbitmq_queue_type="quorum"),
            env=dict(target.env, DISTQ_RABBITMQ_QUEUE_TYPE="quorum"),
        )
    starts, runs, squares = _restarted_behind_a_crashing_task(target, tmp_path)
    assert squares == [i * i for i in range(6)], (
        f"{starts} worker starts ran {runs} times the task that ends its worker, and only "
        f"these of the 6 other tasks: {squares}"
    )


def test_a_task_that_ends_its_worker_costs_no_result_of_a_task_run_before_it(
    target: Target, tmp_path: Path
) -> None:
    """One slot, restarted after its lease lapsed (a supervisor's delay): the squares
    leased in a batch with the task that ends the worker, run before it, lost their
    results with the process and came back with it, behind the queue in the order leased:
    on manager each start ran one square alone (its first fetch) and lost the rest of
    them (6 squares took 7 starts). The slot now settles what ran before a task that
    came back, so the second start runs them all."""
    starts, runs, squares = _restarted_behind_a_crashing_task(
        target, tmp_path, ["--concurrency", "1"], delay=2.5
    )
    assert squares == [i * i for i in range(6)] and starts <= 3, (
        f"{starts} worker starts ran {runs} times the task that ends its worker, and these "
        f"of the 6 other tasks: {squares}"
    )


def _restarted_behind_a_crashing_task(
    target: Target, tmp_path: Path, args: Sequence[str] = (), delay: float = 0.0
) -> tuple[int, int, list[int]]:
    """A task that ends its worker each time, queued before 6 squares; a worker
    (``args``) started again after each end, ``delay`` s later, up to 8 times or until
    the 6 squares' results came: the starts, the crashing task's runs, the squares got."""
    hosted = open_transport(target.settings, "master")
    producer = hosted.producer(hosted.reply_queue("crashes"))
    runs = tmp_path / "runs"
    crashing = Task(name="worker_tasks:exit_always", args=[str(runs)], reply_to=producer.reply_to)
    squares = [Task(name="square", args=[i], reply_to=producer.reply_to) for i in range(6)]
    producer.submit([t.encode() for t in [crashing, *squares]])
    command = ["worker", "--task", "worker_tasks:exit_always", "--exit-when-idle", "2", *args]
    got: dict[str, object] = {}
    starts = 0
    while len(got) < len(squares) and starts < 8:  # a supervisor's restarts, bounded
        if starts:
            time.sleep(delay)
        starts += 1
        worker = Distq(command, target.process_env())
        try:
            worker.wait(30)
        finally:
            worker.stop(grace=0)
        got.update((r.task_id, r.value) for r in results_of(producer, len(squares), within=0.5))
    producer.close()
    hosted.close()
    assert runs.exists(), "the task that ends its worker never ran"
    values = sorted(v for v in got.values() if isinstance(v, int))
    return starts, runs.read_text().count("ran"), values


@pytest.mark.parametrize(("how", "code"), [("exit", 3), ("raise", 1), ("return", 0)])
def test_a_child_a_task_forks_ends_where_it_comes_back_out_of_the_task(
    transport: Transport, how: str, code: int
) -> None:
    """A forked child that calls ``sys.exit()`` (or raises, or returns) comes back out of
    the task into the worker's slot: it took that for the task's ending and went on as
    a worker of its own, on the worker's connections (the child ran on until killed).
    It ends there, with the exit code Python gives a script that ends so."""
    producer = transport.producer("fork.results")
    registry = Registry()
    registry.register("fork_and_end", fork_and_end)
    task = Task(name="fork_and_end", args=[how], reply_to=producer.reply_to, max_attempts=1)
    producer.submit([task.encode()])
    out = io.StringIO()
    options = WorkerOptions(worker_id="w", heartbeat_interval=0.3, exit_when_idle=1.0)
    assert Worker(transport, registry, options, Console(out=out, err=out)).run() == 0
    results = results_of(producer, 2, within=2)
    said = out.getvalue()
    assert [(r.status, r.value) for r in results] == [("ok", code)], said
    producer.close()
