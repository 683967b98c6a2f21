"""Dramatiq: ``dramatiq --processes 2 --threads THREADS`` (one supervisor, two workers).

Result mechanism (the master gets every result back):

* Redis broker: Dramatiq's own ``Results`` middleware with its ``RedisBackend`` on the
  same server; actor ``square(n)`` has ``store_results=True`` and the master calls
  ``message.get_result(block=True)`` for each sent message, in order.
* RabbitMQ broker: Dramatiq has no RabbitMQ result backend, so actor
  ``square_reply(reply_to, index, n)`` publishes its result as a Dramatiq message on
  queue ``reply_to`` through the worker's own broker (its per-thread channel); the
  master reads that queue with ``broker.consume(reply_to)`` and acks each message.
  Workers run with ``--queues <task queue>`` so none of them consumes replies.

Everything else is Dramatiq's default: JSON, default middleware, acks after the actor
ran, prefetch ``2 * threads`` per worker process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import dramatiq
from dramatiq.broker import Broker
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.message import Message
from dramatiq.results import Results
from dramatiq.results.backends.redis import RedisBackend

from contestants.base import (
    Collector,
    Contestant,
    Latency,
    RoundTimeout,
    expect_squares,
    venv_bin,
)

THREADS = 8


def square(n: int) -> int:
    return n * n


def square_reply(reply_to: str, index: int, n: int) -> None:
    broker = dramatiq.get_broker()
    broker.enqueue(
        Message(
            queue_name=reply_to,
            actor_name="bench_reply",
            args=(index, n * n),
            kwargs={},
            options={},
        )
    )


def setup(url: str, queue: str) -> tuple[Broker, Any]:
    """Make the broker for ``url`` the global one and declare this trial's actor."""
    broker: Broker
    actor: Any
    if url.startswith("redis"):
        backend = RedisBackend(url=url)
        broker = RedisBroker(url=url)
        broker.add_middleware(Results(backend=backend))
        dramatiq.set_broker(broker)
        actor = dramatiq.actor(actor_name="bench_square", queue_name=queue, store_results=True)(
            square
        )
    else:
        broker = RabbitmqBroker(url=url)
        dramatiq.set_broker(broker)
        actor = dramatiq.actor(actor_name="bench_square_reply", queue_name=queue)(square_reply)
    return broker, actor


if "BENCH_DRAMATIQ_BROKER" in os.environ:
    BROKER, ACTOR = setup(os.environ["BENCH_DRAMATIQ_BROKER"], os.environ["BENCH_QUEUE"])


class DramatiqPeer(Contestant):
    name = "dramatiq"

    def start_workers(self) -> None:
        self.broker, self.actor = setup(self.ctx.url, self.ctx.queue)
        self.broker.declare_queue(self.ctx.queue)
        env = {"BENCH_DRAMATIQ_BROKER": self.ctx.url, "BENCH_QUEUE": self.ctx.queue}
        self.workers.start(
            [
                venv_bin("dramatiq"),
                "contestants.dramatiq_peer",
                "--processes",
                str(self.ctx.workers),
                "--threads",
                str(THREADS),
                "--queues",
                self.ctx.queue,
            ],
            env=env,
        )
        self._wait_ready(min(60.0, self.ctx.remaining()))
        self.replies = f"{self.ctx.queue}.replies"
        if not self.ctx.url.startswith("redis"):
            self.consumer = self.broker.consume(self.replies, prefetch=256, timeout=1000)

    def _wait_ready(self, limit: float) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            self.workers.check_alive()
            text = self.workers.log_text(0)
            if text.count("Worker process is ready for action") >= self.ctx.workers:
                return
            time.sleep(0.05)
        raise RoundTimeout(f"dramatiq workers not ready within {limit:.0f} s")

    def _result(self, message: Message[Any]) -> Any:
        timeout_ms = max(1000, int(self.ctx.remaining() * 1000))
        return message.get_result(block=True, timeout=timeout_ms)

    def _collect(self, collector: Collector, want: int) -> None:
        while collector.count < want:
            self.ctx.check_deadline("dramatiq replies")
            reply = next(self.consumer)
            if reply is None:
                self.workers.check_alive()
                continue
            collector.add(*reply.args)
            self.consumer.ack(reply)

    def throughput(self, tasks: Sequence[int]) -> float:
        start = time.perf_counter()
        if self.ctx.url.startswith("redis"):
            sent = [self.actor.send(n) for n in tasks]
            expect_squares(tasks, [self._result(m) for m in sent])
        else:
            collector = Collector(tasks)
            for i, n in enumerate(tasks):
                self.actor.send(self.replies, i, n)
            self._collect(collector, len(tasks))
        return time.perf_counter() - start

    def latency(self, tasks: Sequence[int]) -> Latency:
        samples = []
        for n in tasks:
            start = time.perf_counter()
            if self.ctx.url.startswith("redis"):
                expect_squares([n], [self._result(self.actor.send(n))])
            else:
                collector = Collector([n])
                self.actor.send(self.replies, 0, n)
                self._collect(collector, 1)
            samples.append(time.perf_counter() - start)
        return Latency.from_samples(samples)

    def stop_workers(self) -> None:
        super().stop_workers()
        if hasattr(self, "consumer"):
            self.consumer.close()
        self.broker.close()
