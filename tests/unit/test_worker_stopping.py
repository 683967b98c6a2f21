"""A worker's warm and cold stop, on the real manager transport hosted in this process:
the drain's settle made again (only where the consumer can, and saying the broker is
back), a rejected certificate met by it, and the hand-back of running tasks when the
drain runs out (mut17b)."""

from __future__ import annotations

import io
import threading
import time
from typing import Any

import pytest

from distq import worker as worker_module
from distq.batch import Batch
from distq.console import Console
from distq.envelope import Task
from distq.errors import CertificateRejected, TransportError
from distq.slots import Slot
from distq.tasks import Registry
from distq.transport import Producer, Transport
from distq.transport.base import Delivery
from distq.worker import Worker, WorkerOptions


def _napping(
    transport: Transport, count: int, seconds: float, **options: Any
) -> tuple[Producer, Worker, io.StringIO]:
    """``count`` tasks that sleep ``seconds`` queued, and a worker "w" made to run them
    (``options`` its WorkerOptions) saying its lines to the returned buffer."""
    producer = transport.producer("w.results.job")
    registry = Registry()
    registry.register("nap", lambda seconds: time.sleep(seconds))
    naps = [Task(name="nap", args=[seconds], reply_to="w.results.job") for _ in range(count)]
    producer.submit([t.encode() for t in naps])
    out = io.StringIO()
    worker = Worker(
        transport, registry, WorkerOptions(worker_id="w", **options), Console(out=out, err=out)
    )
    return producer, worker, out


def _run_stopped_warm(worker: Worker, after: float) -> int:
    """``worker.run()``, with a warm stop ``after`` s in: its exit code."""
    timer = threading.Timer(after, worker._stop_warm)
    timer.start()
    try:
        return worker.run()
    finally:
        timer.cancel()


def test_a_stopping_worker_does_not_settle_again_where_the_consumer_cannot(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A consumer whose deliveries die with its connection (``resettles`` False, as
    RabbitMQ's) is not asked to settle the same batch again through the drain: the
    broker has put those tasks back already, and their results and retries would be
    published twice (mut17b)."""
    kind = type(transport.consumer("probe"))
    monkeypatch.setattr(kind, "resettles", False)
    settle = kind.settle
    calls: list[tuple[Any, Any]] = []

    def away_a_moment(self: Any, settlements: Any) -> None:
        calls.append((self, settlements))
        if len(calls) <= 3:
            raise TransportError("the broker went away a moment")
        settle(self, settlements)

    monkeypatch.setattr(kind, "settle", away_a_moment)
    producer, worker, out = _napping(transport, 2, 0.5, concurrency=2, drain_seconds=20.0)
    _run_stopped_warm(worker, 0.2)
    repeated = [
        i
        for i, (consumer, settlements) in enumerate(calls)
        if any(c is consumer and s is settlements for c, s in calls[:i])
    ]
    assert calls and repeated == [], out.getvalue()
    producer.close()


def test_a_rejected_certificate_met_by_a_stopping_settle_is_not_retried(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No reconnect mends a certificate TLS refused: the stopping worker does not settle
    again through its drain (and exit 0 if a later settle got through) but stops, run()
    raising the rejection (the CLI's exit 3) as anywhere else (mut17b)."""
    kind = type(transport.consumer("probe"))
    assert kind.resettles
    settle = kind.settle
    calls: list[Any] = []

    def rejected(self: Any, settlements: Any) -> None:
        calls.append(settlements)
        if len(calls) <= 3:
            raise CertificateRejected("TLS refused the client certificate")
        settle(self, settlements)

    monkeypatch.setattr(kind, "settle", rejected)
    producer, worker, out = _napping(transport, 1, 0.5, concurrency=1, drain_seconds=20.0)
    with pytest.raises(CertificateRejected):
        _run_stopped_warm(worker, 0.2)
    assert len(calls) == 1, out.getvalue()
    producer.close()


def test_a_task_still_running_when_the_drain_runs_out_is_back_in_the_queue_at_once(
    transport: Transport,
) -> None:
    """README: the worker finishes its running tasks for at most DISTQ_DRAIN_SECONDS,
    "then hands them back and exits": the consumer under the running task is closed, so
    the task is ready again at once (not leased until its lease lapses), and the stop
    does not wait for the task's thread (mut17b)."""
    producer, worker, out = _napping(transport, 1, 5.0, concurrency=1, drain_seconds=0.3)
    started = time.monotonic()
    assert _run_stopped_warm(worker, 0.3) == 0
    took = time.monotonic() - started  # the task naps 5 s: the stop waits for no task
    said = out.getvalue()
    assert "1 task still runs: handing back what is in hand" in said, said
    stats = transport.stats()
    assert (stats.ready, stats.in_flight) == (1, 0), (stats, said)
    assert took < 3.0, (took, said)
    producer.close()


class _HungClose:
    """A consumer whose close waits on a broker that hangs (``seconds``)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def close(self) -> None:
        time.sleep(self.seconds)


def test_a_cold_stop_waits_for_its_closes_and_its_slots_within_one_bound(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cold stop on a hung broker: one slot's batch handed back (its close hangs), one
    slot in a broker call (its lock held, its thread still in the call). The stop waited
    for the closes (CLOSE_SECONDS), then for the slots' threads 5 s more: the drain plus
    2 + 5 + 5 s, past the README's "at least 10 s under the grace period". Both waits
    now share the one bound."""
    monkeypatch.setattr(worker_module, "CLOSE_SECONDS", 1.0)
    worker = Worker(transport, Registry(), WorkerOptions(worker_id="w"), Console())
    busy, calling = Slot(0), Slot(1)
    busy.batch = Batch([Delivery(b"t", 1)])
    busy.consumer = _HungClose(30.0)  # type: ignore[assignment]
    released = threading.Event()
    for slot in (busy, calling):
        slot.thread = threading.Thread(target=released.wait, args=(30.0,), daemon=True)
        slot.thread.start()
    calling.lock.acquire()  # in its fetch on the hung broker
    try:
        started = time.monotonic()
        worker._stop_cold([busy, calling])
        took = time.monotonic() - started
    finally:
        released.set()
        calling.lock.release()
    assert busy.handed_back and busy.consumer is None
    # 2 s for the locks, then 1 s for the close and the threads together (before: 8 s)
    assert took < 5.0, took
