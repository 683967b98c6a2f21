"""A worker's exit past the threads its tasks left running (``cli._bound_exit``): how long
it waits after a SIGTERM, and the exit code it ends with."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import redis

from conftest import Target
from distq.envelope import NO_REPLY, Task
from distq.transport import Transport
from procs import Distq

pytestmark = pytest.mark.integration

LEAVERS = """
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


def _exit_0_in_the_exit():
    for _ in range(2400):  # until the main thread has ended: the process's exit is on
        if not threading.main_thread().is_alive():
            break
        time.sleep(0.05)
    time.sleep(0.5)
    os._exit(0)


@distq.task
def exit_0_later():
    threading.Thread(target=_exit_0_in_the_exit, name="exits-0", daemon=False).start()
    return "started"
"""


def _env(target: Target, tmp_path: Path, **extra: str) -> dict[str, str]:
    (tmp_path / "leavers.py").write_text(LEAVERS)
    env = target.process_env(**extra)
    env["PYTHONPATH"] += os.pathsep + str(tmp_path)
    return env


@pytest.mark.parametrize("target", ["redis"], indirect=True)
def test_a_tasks_thread_that_calls_os_exit_0_keeps_a_refused_workers_exit_2(
    target: Target, hosted: Transport, tmp_path: Path
) -> None:
    """A thread a task left called ``os._exit(0)`` during the exit's wait, while the
    worker meant to exit 2 (the broker refused a setting mid-run): the process exited
    0, which a supervisor takes for a clean stop."""
    producer = hosted.producer(hosted.reply_queue("exit0"))
    producer.submit([Task(name="leavers:exit_0_later", args=[], reply_to=NO_REPLY).encode()])
    worker = Distq(["worker", "--tasks", "leavers"], _env(target, tmp_path))
    raw = redis.Redis.from_url(target.settings.redis_url)
    try:
        worker.wait_for(r"Get task leavers:exit_0_later")
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
    assert "thread(s) that tasks started are alive (exits-0)" in out, out
    assert code == 2, out
