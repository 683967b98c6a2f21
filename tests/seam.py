"""Helpers for tests that drive a transport through the seam directly."""

from __future__ import annotations

import time

from distq.codec import Codec
from distq.envelope import Result, Task
from distq.transport import Consumer, Delivery, Producer


def ok_result(task: Task, value: object) -> bytes:
    """``task``'s result, ok with ``value``, as a worker "w" sends it."""
    return Result(
        task_id=task.id,
        status="ok",
        worker="w",
        attempt=1,
        started_at=0.0,
        duration=0.0,
        value=value,
    ).encode()


def fetch_n(consumer: Consumer, count: int, within: float = 10.0) -> list[Delivery]:
    """Fetch until ``count`` deliveries arrived or ``within`` seconds passed."""
    got: list[Delivery] = []
    deadline = time.monotonic() + within
    while len(got) < count and time.monotonic() < deadline:
        got += consumer.fetch(count - len(got), 0.2)
    return got


def results_n(producer: Producer, count: int, within: float = 10.0) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + within
    while len(got) < count and time.monotonic() < deadline:
        got += producer.results(count - len(got), 0.2)
    return got


def results_of(
    producer: Producer, count: int, within: float = 10.0, codec: Codec | None = None
) -> list[Result]:
    """A worker's results, until ``count`` arrived or ``within`` seconds passed: read as a
    master reads them, packs opened (a worker packs a batch's results for one master)."""
    codec = codec or Codec()
    got: list[Result] = []
    deadline = time.monotonic() + within
    while len(got) < count and time.monotonic() < deadline:
        for body in producer.results(count - len(got), 0.2):
            got += map(Result.decode, codec.open_results(body))
    return got
