"""The raw contestants' rounds against real brokers (tests/brokers.py): each squares a
few tasks in its throughput round and its latency round, results verified."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from contestants.base import Context, RawContestant
from contestants.raw_manager import RawManager
from contestants.raw_rabbitmq import RawRabbitmqConfirmAck
from contestants.raw_redis import RawRedis, RawRedisPerTask

if TYPE_CHECKING:
    from brokers import Broker

pytest_plugins = ["brokers"]  # redis_broker, rabbitmq_broker


def _rounds(raw: RawContestant) -> None:
    raw.start_workers()
    try:
        assert raw.throughput(list(range(1, 41))) >= 0.0  # Collector verifies each square
        assert raw.latency([3, 4, 5]).count == 3  # timed_sequential verifies each
    finally:
        raw.stop_workers()


def _context(broker: str, url: str, tmp_path: Path) -> Context:
    deadline = time.monotonic() + 60
    return Context(broker, url, f"raw-{broker}", 2, tmp_path, deadline)


def test_raw_manager_squares_its_rounds(tmp_path: Path) -> None:
    _rounds(RawManager(_context("manager", "", tmp_path)))


@pytest.mark.parametrize("kind", [RawRedis, RawRedisPerTask])
def test_raw_redis_squares_its_rounds(
    kind: type[RawRedis], redis_broker: Broker, tmp_path: Path
) -> None:
    _rounds(kind(_context("redis", redis_broker.url, tmp_path)))


def test_raw_rabbitmq_squares_its_rounds(rabbitmq_broker: Broker, tmp_path: Path) -> None:
    _rounds(RawRabbitmqConfirmAck(_context("rabbitmq", rabbitmq_broker.url, tmp_path)))
