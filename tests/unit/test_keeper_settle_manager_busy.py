"""The keeper's settle of a long batch's early endings, over the real manager transport
(a master hosted in this process, a worker's transport connected to it), to a master too
busy to answer within the keeper's wait (a third of the lease: 1.7 s with the default 5
s lease): the settle fails, the slot settles those endings again with the rest of its
batch, and the master, once free, runs the first and takes the second as settled already
(:meth:`~distq.transport.manager_broker.QueueBroker.settle`)."""

from __future__ import annotations

import functools
import threading
import time
from typing import Any, NamedTuple

import pytest

import distq.worker as worker_module
from distq.batch import BatchSizer, run_batch
from distq.envelope import Task
from distq.health import HealthSnapshot
from distq.tasks import Registry
from distq.transport import Transport
from distq.worker import WorkerOptions
from seam import results_of, run_remote_worker

#: Characters of each large result: near the 1 MiB a message may hold by default.
LARGE = 900_000


class Ran(NamedTuple):
    results: list[str]  # the task id of each result the master received
    runs: int  # calls of the early tasks' function, over all attempts
    counts: HealthSnapshot
    out: str


def _run(transport: Transport, monkeypatch: pytest.MonkeyPatch, early: str) -> Ran:
    """Three ``early`` tasks then one that waits 3 s, in one batch; the third keeps the
    master busy (its broker's lock held) 2.5 s: the keeper settles them 0.3 s into the
    batch, and its settle waits for the master past its 1.7 s."""
    monkeypatch.setattr(worker_module, "BatchSizer", functools.partial(BatchSizer, target=60.0))
    monkeypatch.setattr(worker_module, "run_batch", functools.partial(run_batch, budget=60.0))
    broker: Any = transport._broker  # type: ignore[attr-defined]
    calls: list[int] = []
    registry = Registry()
    busy_for: list[threading.Thread] = []

    def busy(seconds: float) -> None:
        with broker._lock:  # the master busy: every call of a worker's waits
            time.sleep(seconds)

    def large(n: int, last: bool) -> str:
        calls.append(n)
        if last and not busy_for:  # once: not again at a retry
            busy_for.append(threading.Thread(target=busy, args=[2.5]))
            busy_for[-1].start()
        return "x" * n

    def fails(n: int, last: bool) -> None:
        large(n, last)
        raise ValueError("it fails")

    registry.register("large", large)
    registry.register("fails", fails)
    registry.register("nap", lambda seconds: time.sleep(seconds))
    producer = transport.producer("w.results.job")
    tasks = [Task(name="nap", args=[0.0], reply_to="w.results.job")]  # grows the next fetch
    tasks += [Task(name=early, args=[LARGE, n == 2], reply_to="w.results.job") for n in range(3)]
    tasks.append(Task(name="nap", args=[3.0], reply_to="w.results.job"))
    producer.submit([task.encode() for task in tasks])
    options = WorkerOptions(
        concurrency=1, prefetch=8, worker_id="w", exit_when_idle=1.0, heartbeat_interval=0.3
    )
    try:
        worker, said = run_remote_worker(transport, registry, options)
    finally:
        for thread in busy_for:
            thread.join()
    results = [r.task_id for r in results_of(producer, 20, within=2)]
    producer.close()
    assert "did not answer within 1.66667 s" in said, said  # it failed
    return Ran(results, len(calls), worker.health.snapshot(), said)


def test_a_keeper_settle_a_busy_master_ran_late_loses_nothing_and_runs_nothing_twice(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = _run(transport, monkeypatch, "large")
    assert len(set(ran.results)) == 5 and ran.runs == 3, ran
    assert ran.counts.tasks_ok == 5, ran


def test_a_keeper_settle_a_busy_master_ran_late_publishes_each_retry_once(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = _run(transport, monkeypatch, "fails")
    assert ran.runs == 9 and ran.counts.dead_lettered == 3, ran  # 3 attempts each, once
    assert len(set(ran.results)) == 5, ran


def test_a_keeper_settle_a_busy_master_ran_late_sends_each_result_once(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = _run(transport, monkeypatch, "large")
    assert len(ran.results) == len(set(ran.results)), ran  # 8 results of 5 tasks


def test_a_keeper_settle_a_busy_master_ran_late_counts_its_retries(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran = _run(transport, monkeypatch, "fails")
    assert ran.counts.tasks_retried == 6, ran  # 3 before
    assert "lease had lapsed first" not in ran.out, ran
