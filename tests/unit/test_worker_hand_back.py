"""Tasks a worker hands back unrun, on the real manager transport hosted in this process:
a slot that handed a slow batch back leases no more in its settle, and deliveries the
queue refused to take back are no hand-back (mut17b)."""

from __future__ import annotations

import functools
import io
import time
from collections.abc import Sequence
from typing import Any

import pytest

import distq.worker as worker_module
from distq.batch import BatchSizer, run_batch
from distq.console import Console
from distq.ending import Ending
from distq.envelope import Task
from distq.errors import TransportError
from distq.slots import Slot
from distq.tasks import Registry
from distq.transport import Delivery, Transport
from distq.worker import Worker, WorkerOptions
from seam import results_of


def _fetch_the_prefetch(monkeypatch: pytest.MonkeyPatch) -> None:
    """After the first task, a slot fetches its whole prefetch: sized to 5 ms of work, a
    first task starved for 6 ms under load kept every fetch at one task, and nothing was
    ever handed back (CI)."""
    monkeypatch.setattr(worker_module, "BatchSizer", functools.partial(BatchSizer, target=60.0))


def test_a_batch_that_handed_tasks_back_leases_no_more_in_its_settle(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worker._settle leases more "nor after a batch that handed tasks back (they were
    too slow for one batch: idle workers may take them)": a slot that gave up on a slow
    batch claimed the next one before even handing the rest back (mut17b)."""
    kind = type(transport.consumer("probe"))
    events: list[tuple[str, int]] = []
    settle_then_fetch, release, settle = kind.settle_then_fetch, kind.release, kind.settle

    def spy_settle(self: Any, settlements: Any) -> None:
        events.append(("settle", len(settlements)))
        settle(self, settlements)

    def spy_settle_then_fetch(
        self: Any, settlements: Any, max_count: int, timeout: float = 0.0
    ) -> Any:
        events.append(("settle_then_fetch", max_count))
        return settle_then_fetch(self, settlements, max_count, timeout)

    def spy_release(self: Any, deliveries: Any) -> int:
        events.append(("release", len(deliveries)))
        return release(self, deliveries)

    monkeypatch.setattr(kind, "settle_then_fetch", spy_settle_then_fetch)
    monkeypatch.setattr(kind, "release", spy_release)
    monkeypatch.setattr(kind, "settle", spy_settle)
    # a batch is handed back after 0.05 s (not HAND_BACK_AFTER_SECONDS): tasks of 0.1 s
    monkeypatch.setattr(worker_module, "run_batch", functools.partial(run_batch, budget=0.05))
    _fetch_the_prefetch(monkeypatch)
    producer = transport.producer("w.results.job")
    registry = Registry()
    registry.register("nap", lambda seconds: time.sleep(seconds))
    naps = [0.0] + [0.1] * 8  # the instant first one grows the next fetch to the prefetch
    producer.submit([Task(name="nap", args=[s], reply_to="w.results.job").encode() for s in naps])
    out = io.StringIO()
    # the keeper hands back a batch running past a heartbeat interval, right after the
    # settle that fetched it: with 0.3 s, a 0.1 s nap starved under load looked like the
    # slot's own hand-back (CI; naps of 0.35 s always did)
    options = WorkerOptions(
        concurrency=1, prefetch=8, worker_id="w", exit_when_idle=0.5, heartbeat_interval=2.0
    )
    assert Worker(transport, registry, options, Console(out=out, err=out)).run() == 0
    assert any(event == "release" for event, _ in events), events  # tasks were handed back
    fetched_then_released = [
        i
        for i in range(1, len(events))
        if events[i][0] == "release" and events[i - 1][0] == "settle_then_fetch"
    ]
    assert fetched_then_released == [], events
    assert "9 ok" in out.getvalue(), out.getvalue()
    producer.close()


def test_deliveries_the_queue_refused_to_take_back_are_not_counted_released(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Consumer.release returns how many went back; the rest (a queue at its length
    limit refused them) the consumer keeps, and its next fetch takes them again. They
    are not counted released ("handed back unrun"), and leave the hand once: taken out
    twice, the hand went negative and --exit-when-idle never fired (mut17b)."""
    worker = Worker(transport, Registry(), WorkerOptions(worker_id="w"), Console())
    released: list[int] = []
    monkeypatch.setattr(
        worker.telemetry, "settled", lambda endings, count=0, at=None: released.append(count)
    )
    consumer = transport.consumer("probe")
    monkeypatch.setattr(consumer, "release", lambda deliveries: 1)  # one of them went back
    slot = Slot(0)
    slot.consumer = consumer
    worker.health.took(3)
    slot.in_hand = 3
    unstarted = [Delivery(body=b"t%d" % n, tag=n) for n in range(3)]
    assert worker._settle(slot, [], unstarted) == []
    assert [n for n in released if n] == [1]
    assert (slot.in_hand, worker.health.in_hand) == (0, 0)
    consumer.close()


def test_the_tasks_a_batch_ran_before_a_long_one_are_settled_while_it_runs(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fast tasks run before a long one in the same batch: their results waited for it
    to end (8 s behind an 8 s task, on every transport), and a worker killed meanwhile
    had them run again (lease17). The keeper settles them with its hand-back, a heartbeat
    interval into the batch."""
    kind = type(transport.consumer("probe"))
    settled: list[tuple[float, int]] = []
    settle = kind.settle

    def spy_settle(self: Any, settlements: Any) -> None:
        settled.append((time.monotonic(), len(settlements)))
        settle(self, settlements)

    settle_then_fetch = kind.settle_then_fetch

    def spy_settle_then_fetch(
        self: Any, settlements: Any, max_count: int, timeout: float = 0.0
    ) -> Any:
        settled.append((time.monotonic(), len(settlements)))
        return settle_then_fetch(self, settlements, max_count, timeout)

    monkeypatch.setattr(kind, "settle", spy_settle)
    monkeypatch.setattr(kind, "settle_then_fetch", spy_settle_then_fetch)
    ended: list[float] = []
    registry = Registry()
    registry.register("nap", lambda seconds: time.sleep(seconds))

    def long(seconds: float) -> None:
        time.sleep(seconds)
        ended.append(time.monotonic())

    registry.register("long", long)
    producer = transport.producer("w.results.job")
    tasks = [Task(name="nap", args=[0.0], reply_to="w.results.job")]  # grows the next fetch
    tasks += [Task(name="nap", args=[0.0], reply_to="w.results.job") for _ in range(5)]
    tasks.append(Task(name="long", args=[2.0], reply_to="w.results.job"))
    producer.submit([task.encode() for task in tasks])
    out = io.StringIO()
    options = WorkerOptions(
        concurrency=1, prefetch=8, worker_id="w", exit_when_idle=0.5, heartbeat_interval=0.3
    )
    assert Worker(transport, registry, options, Console(out=out, err=out)).run() == 0
    assert "7 ok" in out.getvalue(), out.getvalue()
    (long_ended,) = ended
    # the fast ones, while it ran: settled before it ended, not after (a margin of 1 s
    # failed when the keeper stood still 0.8 s before its hand-back, 0.3 s into the 2 s)
    early = [count for at, count in settled if at < long_ended]
    assert sum(early) >= 5, (settled, long_ended)
    assert sum(count for _, count in settled) == 7, settled  # each task settled once
    producer.close()


@pytest.mark.parametrize("failing", ["settle", "release"])
def test_a_hand_back_that_fails_leaves_its_tasks_to_the_slot(
    transport: Transport, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """The keeper's hand-back takes the tasks a long batch ran (to settle them) and those
    it has not started (to hand them back) out of the batch. When that call failed (the
    broker away a moment), they stayed held by the slot's consumer, their leases renewed
    by the keeper for good: never settled nor run, their results never sent while the
    worker lived. They go back to the batch now: the slot settles them, or hands them
    back unrun (the release may have run late: test_redis_stalls.py)."""
    kind = type(transport.consumer("probe"))
    original, failed = getattr(kind, failing), list[int]()

    def away_once(self: Any, items: Any) -> Any:
        if not failed:
            failed.append(len(items))
            raise TransportError("the broker went away a moment")
        return original(self, items)

    monkeypatch.setattr(kind, failing, away_once)
    if failing == "release":  # the batch hands back what it has not started after 0.05 s
        monkeypatch.setattr(worker_module, "run_batch", functools.partial(run_batch, budget=0.05))
    _fetch_the_prefetch(monkeypatch)
    registry = Registry()
    registry.register("nap", lambda seconds: time.sleep(seconds))
    producer = transport.producer("w.results.job")
    naps = [0.0] + [0.0] * 3 + [1.5] + [0.0] * 3  # the first grows the next fetch
    producer.submit([Task(name="nap", args=[s], reply_to="w.results.job").encode() for s in naps])
    out = io.StringIO()
    options = WorkerOptions(
        concurrency=1, prefetch=8, worker_id="w", exit_when_idle=1.0, heartbeat_interval=0.3
    )
    assert Worker(transport, registry, options, Console(out=out, err=out)).run() == 0
    assert failed, out.getvalue()
    results = results_of(producer, 8, within=5)
    assert len({r.task_id for r in results}) == 8, out.getvalue()
    assert "8 ok" in out.getvalue(), out.getvalue()
    producer.close()


def test_a_failed_check_of_a_master_between_tasks_keeps_the_tasks_that_ran(
    transport: Transport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch meets a task of a master the worker does not know alive yet and asks the
    broker (``consumer.gone``), which fails once: the slot dropped the batch, and the
    tasks that had run ran again (held19). The batch stops there instead: the slot
    settles what ran and hands back the rest."""
    kind = type(transport.consumer("probe"))
    gone, failed = kind.gone, list[int]()

    def away_once(self: Any, reply_to: Any) -> Any:
        if not failed and any(name.endswith(".B") for name in reply_to):
            failed.append(1)
            raise TransportError("the broker went away a moment")
        return gone(self, reply_to)

    monkeypatch.setattr(kind, "gone", away_once)
    runs: dict[str, int] = {}

    def nap(name: str) -> None:
        runs[name] = runs.get(name, 0) + 1

    registry = Registry()
    registry.register("nap", nap)
    a, b = transport.producer("w.results.A"), transport.producer("w.results.B")
    a.submit([Task(name="nap", args=[f"a{i}"], reply_to="w.results.A").encode() for i in range(5)])
    b.submit([Task(name="nap", args=[f"b{i}"], reply_to="w.results.B").encode() for i in range(3)])
    out = io.StringIO()
    options = WorkerOptions(
        concurrency=1, prefetch=8, worker_id="w", exit_when_idle=1.0, heartbeat_interval=0.3
    )
    assert Worker(transport, registry, options, Console(out=out, err=out)).run() == 0
    assert failed, out.getvalue()
    assert len({r.task_id for r in results_of(a, 5, within=5)}) == 5
    assert len({r.task_id for r in results_of(b, 3, within=5)}) == 3
    assert runs == {name: 1 for name in runs} and len(runs) == 8, (runs, out.getvalue())
    a.close()
    b.close()


@pytest.mark.parametrize(("released", "kept", "since"), [(0, 0, None), (2, 1, 5.0)])
def test_a_lone_tasks_ending_counts_as_one_of_a_batch_does(
    released: int, kept: int, since: float | None
) -> None:
    """A batch of one ok ending takes a shorter way through Worker._count: it counts one
    ok, takes it and the released ones out of the hand (not those kept), sets the idle
    clock as a batch does and tells the telemetry the same."""
    worker = Worker(None, Registry(), WorkerOptions(worker_id="w"), Console())  # type: ignore[arg-type]
    heard: list[tuple[int, int, float | None]] = []

    def settled(endings: Sequence[Ending], count: int = 0, at: float | None = None) -> None:
        heard.append((len(endings), count, at))

    worker.telemetry.settled = settled  # type: ignore[method-assign,assignment]
    task = Task(name="square", args=[3], reply_to="r")
    body = worker.runner.codec.seal_task(task)
    ending = worker.runner(Delivery(body, body))
    assert ending.outcome == "ok"
    slot = Slot(0)
    worker.health.took(1 + released)
    slot.in_hand = 1 + released
    health = worker.health
    before = health._last_activity
    worker._count(slot, [ending], released, at=1.5, kept=kept, since=since)
    assert (health.tasks_ok, health.tasks_failed, health.dead_lettered) == (1, 0, 0)
    assert (slot.in_hand, health.in_hand) == (0, 0)  # kept ones: in again when fetched
    assert heard == [(1, released - kept, 1.5)]
    if since is None:  # idle from now
        assert health._last_activity >= before
    else:
        assert health._last_activity == max(before, since)
