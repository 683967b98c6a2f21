"""distq through its Python API: ``distq.Executor.map`` over the same workers as ``distq``.

Workers: ``distq worker --quiet`` x 2, started exactly as for :class:`DistqCli`. Master:
one :class:`distq.Executor` in the trial process, opened once the workers run (with
manager it hosts the queues on the workers' address; they connect to it) and kept for
every round, as a program that uses it would. The clock starts once every worker slot
is attached (``Executor.stats().consumers``), like ``distq master --wait-workers``.
Throughput: ``list(executor.map("square", tasks))``, one task per call (chunksize 1),
verified in order. Latency: ``executor.submit("square", n).result()``, one at a time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import distq
from contestants.base import Latency, RoundTimeout, expect_squares, timed_sequential
from contestants.distq_cli import READY_LIMIT, DistqCli
from distq.config import Settings


class DistqExecutor(DistqCli):
    name = "distq-executor"

    def start_workers(self) -> None:
        super().start_workers()
        self.executor = distq.Executor(Settings.load(self.env))
        deadline = time.monotonic() + min(2 * READY_LIMIT, self.ctx.remaining())
        while self.executor.stats().consumers < self.ctx.workers:
            self.workers.check_alive()
            if time.monotonic() > deadline:
                raise RoundTimeout(f"{self.ctx.workers} worker slots not attached in time")
            time.sleep(0.05)

    def throughput(self, tasks: Sequence[int]) -> float:
        started = time.perf_counter()
        results = list(self.executor.map("square", tasks, timeout=self.ctx.remaining()))
        elapsed = time.perf_counter() - started
        expect_squares(tasks, results)
        return elapsed

    def latency(self, tasks: Sequence[int]) -> Latency:
        def one(n: int) -> object:
            return self.executor.submit("square", n).result(self.ctx.remaining())

        return timed_sequential(tasks, one)

    def stop_workers(self) -> None:
        executor = getattr(self, "executor", None)
        if executor is not None:
            executor.close()
        super().stop_workers()
