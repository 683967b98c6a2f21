"""Helpers for tests that drive a transport through the seam directly."""

from __future__ import annotations

import time

from distq.transport import Consumer, Delivery, Producer


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
