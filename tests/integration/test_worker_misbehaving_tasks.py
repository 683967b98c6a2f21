"""Tasks that misbehave in ways the README names: the worker's exit code and output say
so, and no task is lost."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import Target
from distq.envelope import Task
from distq.transport import Transport
from procs import Distq
from seam import results_of

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
