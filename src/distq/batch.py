"""Batches of tasks in a worker slot: how many to fetch, and when to stop running one.

A slot fetches about ``TARGET_BATCH_SECONDS`` of work at once (:class:`BatchSizer`):
enough tasks per broker round trip for throughput, few enough that slow tasks do not
pile up in one worker. A batch still running after ``HAND_BACK_AFTER_SECONDS`` holds
tasks slower than it was sized for: :func:`run_batch` stops there, and the worker hands
the tasks not started back to the queue, for idle workers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from distq.ending import Ending
from distq.transport.base import Delivery

TARGET_BATCH_SECONDS = 0.005
HAND_BACK_AFTER_SECONDS = 10 * TARGET_BATCH_SECONDS


class BatchSizer:
    """The size of a slot's next fetch: about ``target`` seconds of work, 1 to ``prefetch``.

    The time per task is a moving average (each batch weighs half), so one slow or fast
    batch moves the size without swinging it from one extreme to the other.
    """

    def __init__(self, prefetch: int, target: float = TARGET_BATCH_SECONDS) -> None:
        self.prefetch, self.target = prefetch, target
        self.size = 1  # before any task ran: one, so a slow first task holds back nothing
        self.seconds_per_task = 0.0

    def ran(self, count: int, seconds: float) -> int:
        """Count a batch of ``count`` tasks that took ``seconds``; return the next size."""
        per_task = seconds / max(1, count)
        self.seconds_per_task = 0.5 * self.seconds_per_task + 0.5 * per_task
        if self.seconds_per_task > 0:
            fits = int(self.target / self.seconds_per_task)
            self.size = max(1, min(self.prefetch, fits))
        else:
            self.size = self.prefetch
        return self.size


def run_batch(
    deliveries: Sequence[Delivery],
    run: Callable[[Delivery], Ending],
    stopping: threading.Event,
    abort: threading.Event,
    budget: float = HAND_BACK_AFTER_SECONDS,
) -> list[Ending]:
    """Run ``deliveries`` in order as far as the batch goes; the rest are for handing back.

    It stops before the next task once ``budget`` seconds have passed (after one task at
    least), after one task when ``stopping`` (a warm stop) is set, and at once on
    ``abort`` (a cold stop).
    """
    endings: list[Ending] = []
    started = time.perf_counter()
    for delivery in deliveries:
        if abort.is_set() or (endings and stopping.is_set()):
            break
        if endings and time.perf_counter() - started > budget:
            break
        endings.append(run(delivery))
    return endings
