"""A worker slot's batches: how many tasks to fetch, and where a running batch stops."""

from __future__ import annotations

import threading
import time

from distq.batch import HAND_BACK_AFTER_SECONDS, TARGET_BATCH_SECONDS, BatchSizer, run_batch
from distq.ending import Ending
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


def ran(delivery: Delivery, seconds: float = 0.0) -> Ending:
    time.sleep(seconds)
    return Ending(Settlement(delivery), "ok")


def test_a_batch_of_fast_tasks_runs_whole() -> None:
    never = threading.Event()
    assert len(run_batch(deliveries(200), ran, never, never)) == 200


def test_a_batch_past_its_budget_stops_before_the_next_task() -> None:
    never = threading.Event()
    slow = {1}  # the second task runs past the budget; the three after it go back

    def run(delivery: Delivery) -> Ending:
        return ran(delivery, HAND_BACK_AFTER_SECONDS * 1.5 if delivery.tag in slow else 0.0)

    endings = run_batch(deliveries(5), run, never, never)
    assert [e.settlement.delivery.tag for e in endings] == [0, 1]


def test_a_warm_stop_finishes_the_running_task_and_a_cold_one_starts_none() -> None:
    warm, cold, never = threading.Event(), threading.Event(), threading.Event()

    def run_then_stop(delivery: Delivery) -> Ending:
        warm.set()  # a signal arrives while the first task runs
        return ran(delivery)

    assert len(run_batch(deliveries(5), run_then_stop, warm, never)) == 1
    assert len(run_batch(deliveries(5), ran, warm, never)) == 1  # stopping already: one task
    cold.set()
    assert run_batch(deliveries(5), ran, never, cold) == []
