"""Raw pika, no framework: the floor for anything built on RabbitMQ.

Queues ``<queue>.tasks`` and ``<queue>.results`` are durable and messages persistent
(delivery_mode 2), as every framework here uses them. A task body is
``b"<index>:<n>"``; a result ``b"<index>:<n*n>"``. Workers consume with
``basic_qos(prefetch_count=PREFETCH)`` and manual acks, publishing each result to the
results queue before acking its task. The master consumes results with auto-ack.

Three variants: without publisher confirms; with them (``confirm_delivery()`` on every
publishing channel, master and workers: each publish waits for the broker); and with
confirms and a master that acks each result it consumes (``raw-confirm-ack``), the
guarantees distq keeps, the way a plain pika user gets them.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Sequence

import pika
from pika.adapters.blocking_connection import BlockingChannel

from contestants.base import Collector, RawContestant, python

PREFETCH = 32
PERSISTENT = pika.BasicProperties(delivery_mode=2)


def _split(body: bytes) -> tuple[int, int]:
    left, _, right = body.partition(b":")
    return int(left), int(right)


def _declare(channel: BlockingChannel, queue: str) -> tuple[str, str]:
    tasks, results = f"{queue}.tasks", f"{queue}.results"
    channel.queue_declare(tasks, durable=True)
    channel.queue_declare(results, durable=True)
    return tasks, results


class RawRabbitmq(RawContestant):
    name = "raw"
    confirms = False
    acks = False  # the master acks each result (else it consumes them with auto-ack)

    def start_workers(self) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(self.ctx.url))
        self.channel = self.connection.channel()
        if self.confirms:
            self.channel.confirm_delivery()
        self.tasks_queue, self.results_queue = _declare(self.channel, self.ctx.queue)
        for _ in range(self.ctx.workers):
            self.workers.start(
                [
                    python(),
                    "-m",
                    "contestants.raw_rabbitmq",
                    self.ctx.url,
                    self.ctx.queue,
                    "confirm" if self.confirms else "no-confirm",
                ]
            )
        self.workers.wait_ready("ready", limit=min(30.0, self.ctx.remaining()))
        self.results = self.channel.consume(
            self.results_queue, auto_ack=not self.acks, inactivity_timeout=1.0
        )

    def collect(self, collector: Collector, want: int) -> None:
        while collector.count < want:
            self.ctx.check_deadline("raw rabbitmq results")
            method, _props, body = next(self.results)
            if method is None:
                self.workers.check_alive()
                continue
            collector.add(*_split(body))
            if self.acks:
                self.channel.basic_ack(method.delivery_tag)

    def throughput(self, tasks: Sequence[int]) -> float:
        collector = Collector(tasks)
        start = time.perf_counter()
        for i, n in enumerate(tasks):
            self.channel.basic_publish("", self.tasks_queue, f"{i}:{n}".encode(), PERSISTENT)
        self.collect(collector, len(tasks))
        return time.perf_counter() - start

    def send(self, index: int, n: int) -> None:
        self.channel.basic_publish("", self.tasks_queue, f"{index}:{n}".encode(), PERSISTENT)

    def stop_workers(self) -> None:
        super().stop_workers()
        if self.connection.is_open:
            self.channel.cancel()
            self.connection.close()


class RawRabbitmqConfirm(RawRabbitmq):
    name = "raw-confirm"
    confirms = True


class RawRabbitmqConfirmAck(RawRabbitmq):
    name = "raw-confirm-ack"
    confirms = True
    acks = True


def worker(url: str, queue: str, mode: str) -> None:
    """Square tasks until SIGTERM."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    if mode == "confirm":
        channel.confirm_delivery()
    tasks, results = _declare(channel, queue)
    channel.basic_qos(prefetch_count=PREFETCH)

    def on_task(
        ch: BlockingChannel, method: pika.spec.Basic.Deliver, _p: object, body: bytes
    ) -> None:
        index, n = _split(body)
        ch.basic_publish("", results, f"{index}:{n * n}".encode(), PERSISTENT)
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(tasks, on_task)
    print("ready", flush=True)
    channel.start_consuming()


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit("usage: python -m contestants.raw_rabbitmq URL QUEUE confirm|no-confirm")
    with contextlib.suppress(KeyboardInterrupt):
        worker(*sys.argv[1:])
