"""RQ: two ``rq worker`` processes, in two variants.

``rq``: RQ's default ``rq.Worker``, which forks a work horse for every job (its
isolation model), so its throughput is bounded by ``fork()``; at a few dozen jobs/s it
would need many minutes for 20,000 tasks, so its throughput round is capped at
``TASK_CAP`` tasks (the table shows N). ``rq-simple``: ``rq.SimpleWorker``, which runs
jobs in the worker process itself (RQ's documented no-fork worker). RQ has no batch
worker. Jobs are enqueued
with ``Queue.enqueue_many`` in one pipeline (RQ's bulk API). Result mechanism: RQ's own
results stream; the master waits for each job in order with
``job.latest_result(timeout=...)`` (a blocking XREAD). JSON serializer on both sides.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import ClassVar

from redis import Redis
from rq import Queue, Worker
from rq.job import Job
from rq.results import Result
from rq.serializers import JSONSerializer

from contestants.base import (
    Contestant,
    Latency,
    RoundTimeout,
    VerifyError,
    timed_sequential,
    venv_bin,
)

TASK_CAP = 2000


def square(n: int) -> int:
    return n * n


class RqRedis(Contestant):
    name = "rq"
    worker_class = "rq.Worker"
    task_cap: ClassVar[int | None] = TASK_CAP

    def start_workers(self) -> None:
        self.redis = Redis.from_url(self.ctx.url)
        self.queue = Queue(self.ctx.queue, connection=self.redis, serializer=JSONSerializer)
        for i in range(self.ctx.workers):
            self.workers.start(
                [
                    venv_bin("rq"),
                    "worker",
                    "--url",
                    self.ctx.url,
                    "--name",
                    f"w{i}-{self.ctx.queue}",
                    "--worker-class",
                    self.worker_class,
                    "--serializer",
                    "json",
                    "--logging_level",
                    "WARNING",
                    "--disable-job-desc-logging",
                    self.ctx.queue,
                ]
            )
        self._wait_registered(min(60.0, self.ctx.remaining()))

    def _wait_registered(self, limit: float) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            self.workers.check_alive()
            if len(Worker.all(queue=self.queue)) >= self.ctx.workers:
                return
            time.sleep(0.1)
        raise RoundTimeout(f"rq workers did not register within {limit:.0f} s")

    def _value(self, job: Job) -> object:
        while True:
            self.ctx.check_deadline("rq results")
            result = job.latest_result(timeout=1)
            if result is None:
                self.workers.check_alive()
                continue
            if result.type != Result.Type.SUCCESSFUL:
                raise VerifyError(f"job {job.id} ended {result.type.name}: {result.exc_string}")
            return result.return_value

    def throughput(self, tasks: Sequence[int]) -> float:
        start = time.perf_counter()
        with self.redis.pipeline() as pipe:
            jobs = self.queue.enqueue_many(
                [Queue.prepare_data(square, (n,), result_ttl=600) for n in tasks],
                pipeline=pipe,
            )
            pipe.execute()
        for n, job in zip(tasks, jobs, strict=True):
            got = self._value(job)
            if got != n * n:
                raise VerifyError(f"square({n}) returned {got!r}, expected {n * n}")
        return time.perf_counter() - start

    def latency(self, tasks: Sequence[int]) -> Latency:
        return timed_sequential(
            tasks, lambda n: self._value(self.queue.enqueue(square, n, result_ttl=600))
        )

    def stop_workers(self) -> None:
        super().stop_workers()
        self.redis.close()


class RqSimpleRedis(RqRedis):
    name = "rq-simple"
    worker_class = "rq.SimpleWorker"
    task_cap = None
