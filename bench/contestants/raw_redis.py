"""Raw redis-py, no framework: the floor for anything built on Redis.

Wire format: a task is ``b"<index>:<n>"`` on list ``<queue>:tasks``; a result is
``b"<index>:<n*n>"`` on list ``<queue>:results``. The master LPUSHes tasks in batches
of ``BATCH`` in one pipeline and RPOPs results up to ``BATCH`` at a time (BRPOP when
the list is empty). Two kinds of worker:

- ``raw`` (batch): takes up to ``BATCH`` tasks per RPOP and LPUSHes all their results
  in one command: the ceiling, about two commands per 500 tasks.
- ``raw-per-task``: the loop a plain redis-py user writes, one BRPOP per task and one
  LPUSH per result (the master side stays pipelined and batched).

No acknowledgement in either: a task taken by a worker that dies is lost (this is the
floor, not a design).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Sequence
from typing import cast

import redis

from contestants.base import Collector, RawContestant, python

BATCH = 500


def _split(item: bytes) -> tuple[int, int]:
    left, _, right = item.partition(b":")
    return int(left), int(right)


def pop_batch(client: redis.Redis[bytes], key: str) -> list[bytes]:
    """Up to ``BATCH`` items from the tail of list ``key``; waits up to 1 s for one."""
    items = cast("list[bytes] | None", client.rpop(key, BATCH))
    if items:
        return items
    popped = client.brpop([key], timeout=1)
    return [popped[1]] if popped else []


class RawRedis(RawContestant):
    name = "raw"
    worker_mode = "batch"

    def start_workers(self) -> None:
        self.client = redis.Redis.from_url(self.ctx.url)
        self.tasks_key = f"{self.ctx.queue}:tasks"
        self.results_key = f"{self.ctx.queue}:results"
        for _ in range(self.ctx.workers):
            self.workers.start(
                [
                    python(),
                    "-m",
                    "contestants.raw_redis",
                    self.ctx.url,
                    self.tasks_key,
                    self.results_key,
                    self.worker_mode,
                ]
            )
        self.workers.wait_ready("ready", limit=min(30.0, self.ctx.remaining()))

    def collect(self, collector: Collector, want: int) -> None:
        while collector.count < want:
            self.ctx.check_deadline("raw redis results")
            items = pop_batch(self.client, self.results_key)
            if not items:
                self.workers.check_alive()
            for item in items:
                collector.add(*_split(item))

    def throughput(self, tasks: Sequence[int]) -> float:
        collector = Collector(tasks)
        start = time.perf_counter()
        pipe = self.client.pipeline(transaction=False)
        for first in range(0, len(tasks), BATCH):
            chunk = tasks[first : first + BATCH]
            pipe.lpush(self.tasks_key, *(f"{first + i}:{n}" for i, n in enumerate(chunk)))
        pipe.execute()
        self.collect(collector, len(tasks))
        return time.perf_counter() - start

    def send(self, index: int, n: int) -> None:
        self.client.lpush(self.tasks_key, f"{index}:{n}")

    def stop_workers(self) -> None:
        super().stop_workers()
        self.client.close()


class RawRedisPerTask(RawRedis):
    name = "raw-per-task"
    worker_mode = "per-task"


def worker(url: str, tasks_key: str, results_key: str, mode: str) -> None:
    """Square tasks until SIGTERM."""
    client = redis.Redis.from_url(url)
    client.ping()
    print("ready", flush=True)
    if mode == "per-task":
        while True:
            popped = client.brpop([tasks_key], timeout=1)
            if popped:
                index, n = _split(popped[1])
                client.lpush(results_key, f"{index}:{n * n}")
    while True:
        out = []
        for item in pop_batch(client, tasks_key):
            index, n = _split(item)
            out.append(f"{index}:{n * n}")
        if out:
            client.lpush(results_key, *out)


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[4] not in ("batch", "per-task"):
        raise SystemExit(
            "usage: python -m contestants.raw_redis URL TASKS_KEY RESULTS_KEY batch|per-task"
        )
    with contextlib.suppress(KeyboardInterrupt):
        worker(*sys.argv[1:])
