"""A worker slot's batches: how many tasks to fetch, and where a running batch stops."""

from __future__ import annotations

import threading
import time

from distq.batch import (
    TARGET_BATCH_SECONDS,
    Batch,
    BatchSizer,
    Running,
    run_batch,
)
from distq.ending import Ending
from distq.envelope import Task
from distq.masters import MasterWatch
from distq.timelimits import TimeLimits
from distq.transport import Delivery, Settlement


def test_a_slot_starts_with_one_task() -> None:
    assert BatchSizer(128).size == 1


def test_fast_tasks_grow_the_batch_up_to_the_prefetch() -> None:
    sizer = BatchSizer(128)
    sizes = [sizer.ran(sizer.size, sizer.size * TARGET_BATCH_SECONDS / 1000) for _ in range(6)]
    assert sizes[0] > 1 and sizes[-1] == 128
    assert BatchSizer(128).ran(1, 0.0) == 128  # too fast to measure


def test_slow_tasks_shrink_it_to_one_without_swinging_on_one_batch() -> None:
    sizer = BatchSizer(128)
    assert sizer.ran(10, 10 * TARGET_BATCH_SECONDS / 20) == 40  # 20 a target; half weight
    assert sizer.ran(1, 1.0) == 1  # one task took 200 targets
    assert sizer.ran(40, 40 * TARGET_BATCH_SECONDS / 40) == 1  # one fast batch: no jump back


def deliveries(count: int) -> list[Delivery]:
    return [Delivery(body=str(i).encode(), tag=i) for i in range(count)]


def ran(delivery: Delivery, batch: Batch | None = None, seconds: float = 0.0) -> Ending:
    time.sleep(seconds)
    return Ending(Settlement(delivery), "ok")


# A budget no pause of the machine reaches, for tests that expect a batch to run on:
# the default (50 ms) is shorter than a pause a loaded CI machine can give this process.
ROOMY = 60.0


def test_a_batch_of_fast_tasks_runs_whole() -> None:
    never = threading.Event()
    batch = Batch(deliveries(200))
    assert len(run_batch(batch, ran, never, never, budget=ROOMY)) == 200
    assert batch.take_rest() == []


def test_a_batch_past_its_budget_stops_before_the_next_task() -> None:
    never = threading.Event()
    slow = {1}  # the second task runs past the budget; the three after it go back
    budget = 0.5  # the default's logic, with room for a pause of a loaded machine

    def run(delivery: Delivery, batch: Batch) -> Ending:
        return ran(delivery, seconds=budget * 1.5 if delivery.tag in slow else 0)

    batch = Batch(deliveries(5))
    endings = run_batch(batch, run, never, never, budget=budget)
    assert [e.settlement.delivery.tag for e in endings] == [0, 1]
    assert [d.tag for d in batch.take_rest()] == [2, 3, 4]


def test_a_warm_stop_finishes_the_running_task_and_a_cold_one_starts_none() -> None:
    warm, cold, never = threading.Event(), threading.Event(), threading.Event()

    def run_then_stop(delivery: Delivery, batch: Batch) -> Ending:
        warm.set()  # a signal arrives while the first task runs
        return ran(delivery)

    assert len(run_batch(Batch(deliveries(5)), run_then_stop, warm, never)) == 1
    # stopping already (a batch fetched as the signal came): no task starts, all go back
    batch = Batch(deliveries(5))
    assert run_batch(batch, ran, warm, never) == []
    assert [d.tag for d in batch.take_rest()] == [0, 1, 2, 3, 4]
    cold.set()
    assert run_batch(Batch(deliveries(5)), ran, never, cold) == []


def task(reply_to: str = "r", name: str = "square") -> Task:
    return Task(name=name, args=[1], reply_to=reply_to)


def test_a_task_of_a_master_not_known_alive_stops_the_batch_before_it() -> None:
    never = threading.Event()
    watch = MasterWatch()
    batch = Batch(deliveries(3), masters=watch)

    def run(delivery: Delivery, gate: Batch) -> Ending | None:
        return ran(delivery) if gate.admit(task("alive" if delivery.tag == 0 else "new")) else None

    watch.learn(["alive"], gone=[])
    endings = run_batch(batch, run, never, never, budget=ROOMY)
    assert [e.settlement.delivery.tag for e in endings] == [0]
    assert batch.unchecked == "new"
    assert [d.tag for d in batch.waiting] == [1, 2]  # the stopped one is back in front
    batch.gone.add("new")  # the broker said so, after this batch was fetched
    assert batch.admit(task("new")) is False


def test_a_task_that_came_back_runs_once_the_tasks_before_it_are_settled() -> None:
    """A task that came back (its worker died, or a worker handed it back) may be one
    that ends its worker's process each time it runs; a slot settled a batch at its end,
    so the tasks run before it in the batch lost their results with the process, and came
    back with it, to be lost again at each start. The batch stops before it once others
    ran, for the slot to settle them, and goes on from it after."""
    never = threading.Event()
    came_back = [Delivery(body=b"", tag=i, redelivered=i in (0, 2, 3)) for i in range(5)]
    batch = Batch(came_back)

    def run() -> list[object]:
        return [e.settlement.delivery.tag for e in run_batch(batch, ran, never, never, ROOMY)]

    assert run() == [0, 1]  # the first runs at once: nothing ran before it
    assert batch.settle_first and [d.tag for d in batch.waiting] == [2, 3, 4]
    assert [e.settlement.delivery.tag for e in batch.take_endings()] == [0, 1]  # settled
    batch.settle_first = False
    assert run() == [2]
    assert batch.settle_first and [d.tag for d in batch.waiting] == [3, 4]
    batch.take_endings()
    batch.settle_first = False
    assert run() == [3, 4]
    assert not batch.settle_first and not batch.waiting


def test_a_batch_of_tasks_that_came_back_still_stops_at_its_budget() -> None:
    """Settled before each task that came back, a batch of such tasks ran one task per
    call of ``run_batch``, each call with its budget afresh: slow tasks never went back
    for idle workers. The budget counts from the batch's fetch."""
    never = threading.Event()
    budget = 0.5  # the default's logic, with room for a pause of a loaded machine
    batch = Batch([Delivery(body=b"", tag=i, redelivered=True) for i in range(5)])

    def run(delivery: Delivery, batch: Batch) -> Ending:
        return ran(delivery, seconds=budget * 0.6)

    calls = 0
    while True:  # as the worker's _run: settle what ran, then run on
        run_batch(batch, run, never, never, budget=budget)
        calls += 1
        if not batch.settle_first:
            break
        batch.settle_first = False
        batch.take_endings()
    done = batch.endings_taken + len(batch.endings)
    assert done in (1, 2) and calls <= 2  # the third task would start past the budget
    assert [d.tag for d in batch.take_rest()] == list(range(done, 5))  # back, for others


def test_an_answer_that_a_master_is_alive_grows_old() -> None:
    now = [100.0]
    watch = MasterWatch(alive_seconds=2.0, clock=lambda: now[0])
    watch.learn(["a", "b"], gone=["b"])
    assert watch.alive("a", now=101.0) and not watch.alive("b", now=101.0)
    assert not watch.alive("a", now=102.5)


def test_the_keeper_and_the_slot_never_both_end_a_task() -> None:
    """Whoever pops the claim first ends the task: the keeper's give-up drops the slot's
    ending, and a task that ended first is not given up on."""
    never = threading.Event()
    limits = TimeLimits(default=0.1)
    batch = Batch(deliveries(3), limits=limits)
    taken: list[Delivery | None] = []

    def run(delivery: Delivery, gate: Batch) -> Ending:
        assert gate.admit(task())
        running = gate.running
        assert running is not None and running.limit == 0.1
        if delivery.tag == 1:
            taken.append(running.take())  # the keeper gives up while it runs
        return ran(delivery)

    endings = run_batch(batch, run, never, never, budget=ROOMY)
    assert [e.settlement.delivery.tag for e in endings] == [0]  # the slot's ending is dropped
    assert batch.abandoned and [d.tag for d in taken if d] == [1]
    assert [d.tag for d in batch.take_rest()] == [2]  # the keeper hands it back
    late = Batch(deliveries(1), limits=limits)
    run_batch(late, lambda d, g: (g.admit(task()), ran(d))[1], never, never)
    assert late.running is None and not late.abandoned


def test_a_task_that_returns_past_its_limit_unseen_by_the_keeper_ends_late() -> None:
    """No keeper acts here, as when the function held the GIL past its limit: the slot
    ends a task that returned past its limit as ``late`` says; a task within its limit,
    or one without a limit, ends as it returned."""
    never = threading.Event()
    limits = TimeLimits(per_name=(("nap", 0.1),))  # the shortest a limit can be
    names, seconds = {0: "nap", 1: "nap", 2: "square"}, {0: 0.0, 1: 0.2, 2: 0.2}
    lates: list[tuple[object, float, float]] = []

    def run(delivery: Delivery, gate: Batch) -> Ending:
        index = int(delivery.body)
        assert gate.admit(task(name=names[index]))
        return ran(delivery, seconds=seconds[index])

    def late(delivery: Delivery, running: Running, took: float) -> Ending:
        lates.append((delivery.tag, running.limit, took))
        return Ending(Settlement(delivery), "retried")

    batch = Batch(deliveries(3), limits=limits)
    endings = run_batch(batch, run, never, never, budget=ROOMY, late=late)
    assert [(e.settlement.delivery.tag, e.outcome) for e in endings] == [
        (0, "ok"),
        (1, "retried"),
        (2, "ok"),
    ]
    assert [(tag, limit) for tag, limit, _ in lates] == [(1, 0.1)] and lates[0][2] >= 0.2
    assert batch.running is None and not batch.abandoned


def test_unstarted_tasks_are_taken_by_one_side_only() -> None:
    """The keeper takes the rest from the right while the slot takes from the left."""
    for _ in range(50):
        batch = Batch(deliveries(2000))
        got: list[Delivery] = []
        thread = threading.Thread(target=lambda b=batch, g=got: g.extend(b.take_rest()))
        never = threading.Event()
        thread.start()
        endings = run_batch(batch, ran, never, never, budget=ROOMY)
        thread.join()
        mine = [e.settlement.delivery.body for e in endings]
        assert sorted(int(b) for b in mine + [d.body for d in got]) == list(range(2000))


def test_a_chunk_gets_its_functions_limit_once_per_call() -> None:
    """``Executor.map(chunksize=N)`` sends N calls of a function as one task: its limit
    is that function's, N times (before, a chunk had only the default, if any)."""
    from distq.chunks import CHUNK_TASK, chunk_arguments

    limits = TimeLimits(default=30.0, per_name=(("jobs:nap", 1.5),))
    chunk = Task(name=CHUNK_TASK, args=chunk_arguments("jobs:nap", [[1], [2], [3]]), reply_to="r")
    assert limits.of(chunk) == 4.5
    other = Task(name=CHUNK_TASK, args=chunk_arguments("jobs:other", [[1], [2]]), reply_to="r")
    assert limits.of(other) == 60.0
    assert TimeLimits(per_name=(("jobs:nap", 1.5),)).of(other) is None
    assert limits.of(Task(name=CHUNK_TASK, args=["bad"], reply_to="r")) == 30.0  # fails anyway
    assert limits.of(Task(name="jobs:nap", args=[1], reply_to="r")) == 1.5
