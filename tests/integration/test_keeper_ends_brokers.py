"""A worker whose keeper's thread ends on an error, on each transport's real broker: it
stops at once, saying why, exit 1, and the task it ran goes back, run once meanwhile."""

from __future__ import annotations

import io
import time
from dataclasses import replace

import pytest

from conftest import Target
from distq.console import Console
from distq.envelope import Task
from distq.keeper import Keeper
from distq.slots import Slot
from distq.tasks import Registry
from distq.transport import Transport
from distq.worker import Worker, WorkerOptions

pytestmark = pytest.mark.integration

RAN: list[str] = []  # the tasks ``runs`` ran, in order


def runs(task_id: str, *, seconds: float) -> None:
    RAN.append(task_id)
    time.sleep(seconds)


@pytest.mark.timeout(90)
def test_a_keeper_that_ends_stops_the_worker_before_its_task_runs_twice(
    target: Target, hosted: Transport, remote: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its thread ended in silence: the worker ran on, the 4 s task's lease (1 s) lapsed
    and the other slot ran it again, and the worker exited 0."""
    RAN.clear()
    reply = hosted.reply_queue("job")  # a master alive: its producer holds the queue
    producer = hosted.producer(reply)
    long = Task(name="runs", args=["t-long"], kwargs={"seconds": 4.0}, reply_to=reply)
    producer.submit([long.encode()])
    registry = Registry()
    registry.register("runs", runs)
    original = Keeper._renew_after

    def broken(self: Keeper, slots: list[Slot]) -> float:
        if any(slot.batch is not None for slot in slots):
            raise ValueError("boom")
        return original(self, slots)

    monkeypatch.setattr(Keeper, "_renew_after", broken)
    monkeypatch.setattr("threading.excepthook", lambda args: None)  # the thread's traceback
    out = io.StringIO()
    options = replace(
        WorkerOptions.from_settings(target.settings, 2, exit_when_idle=8, worker_id="w"),
        prefetch=1,
    )
    worker = Worker(remote, registry, options, Console(quiet=True, out=out, err=out))
    code = worker.run()
    said = out.getvalue()
    assert code == 1, said
    assert RAN == ["t-long"], said
    assert "the keeper stopped: ValueError: boom (a bug in distq: " in said, said
    back = remote.consumer("after")  # handed back: queued again at once
    assert len(back.fetch(1, 3.0)) == 1, said
    back.close()
    producer.close()
