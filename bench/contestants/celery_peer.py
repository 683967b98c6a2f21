"""Celery: two ``celery worker --pool solo`` processes (one OS process each).

Result mechanism (the master gets every result back):

* Redis broker: the Redis result backend on the same server. Celery subscribes to
  each task's result channel as it is sent; the master collects with
  ``ResultSet.join_native`` (the backend's batched, pub/sub-driven path).
* RabbitMQ broker: the ``rpc://`` result backend: workers publish each result to the
  master's own reply queue; the master collects the same way.

Settings chosen to match distq's semantics, otherwise Celery's defaults: JSON,
``task_acks_late`` (at-least-once: ack after the task ran) and
``worker_prefetch_multiplier = 32`` (as the raw pika rows' ``prefetch_count``; not
distq's default prefetch, which is 128, ``DISTQ_PREFETCH``). Gossip, mingle and
heartbeats are off (two workers need none of them). Tasks are sent one by one with
``apply_async`` over one producer connection; Celery has no bulk publish.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from celery import Celery
from celery.result import AsyncResult, ResultSet

from contestants.base import (
    Contestant,
    Latency,
    RoundTimeout,
    expect_squares,
    timed_sequential,
    venv_bin,
)

PREFETCH = 32

app = Celery("distq_bench")


def configure(broker_url: str, queue: str) -> dict[str, Any]:
    """Celery settings for this trial; workers read the same from the environment."""
    backend = "rpc://" if broker_url.startswith("amqp") else broker_url
    return {
        "broker_url": broker_url,
        "result_backend": backend,
        "task_default_queue": queue,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "worker_prefetch_multiplier": PREFETCH,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "result_expires": 600,
    }


if "BENCH_CELERY_BROKER" in os.environ:
    app.conf.update(configure(os.environ["BENCH_CELERY_BROKER"], os.environ["BENCH_QUEUE"]))


@app.task(name="bench.square")  # type: ignore[untyped-decorator]
def square(n: int) -> int:
    return n * n


class CeleryPeer(Contestant):
    name = "celery"

    def start_workers(self) -> None:
        app.conf.update(configure(self.ctx.url, self.ctx.queue))
        env = {"BENCH_CELERY_BROKER": self.ctx.url, "BENCH_QUEUE": self.ctx.queue}
        self.names = []
        for i in range(self.ctx.workers):
            name = f"w{i}-{self.ctx.queue}@localhost"
            self.names.append(name)
            self.workers.start(
                [
                    venv_bin("celery"),
                    "-A",
                    "contestants.celery_peer",
                    "worker",
                    "--pool",
                    "solo",
                    "--queues",
                    self.ctx.queue,
                    "--hostname",
                    name,
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    "--loglevel",
                    "WARNING",
                ],
                env=env,
            )
        self._wait_for_workers(min(60.0, self.ctx.remaining()))

    def _wait_for_workers(self, limit: float) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            self.workers.check_alive()
            replies = app.control.ping(destination=self.names, timeout=1.0)
            if len(replies) == len(self.names):
                return
        raise RoundTimeout(f"celery workers did not answer ping within {limit:.0f} s")

    def throughput(self, tasks: Sequence[int]) -> float:
        start = time.perf_counter()
        with app.producer_or_acquire() as producer:
            sent: list[AsyncResult] = [square.apply_async((n,), producer=producer) for n in tasks]
        values = ResultSet(sent).join_native(timeout=self.ctx.remaining())
        expect_squares(tasks, values)
        return time.perf_counter() - start

    def latency(self, tasks: Sequence[int]) -> Latency:
        return timed_sequential(
            tasks, lambda n: square.delay(n).get(timeout=max(1.0, self.ctx.remaining()))
        )
