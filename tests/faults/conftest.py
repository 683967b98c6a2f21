"""Fixtures of the fault suite: private brokers a test may kill, and scenarios.

Faults and how they are injected, all on 127.0.0.1:

* a broker crash: SIGKILL of a private ``redis-server`` / RabbitMQ node
  (``tests/launch``), restarted on the same port with its data (Redis: the last
  ``SAVE``; RabbitMQ: its durable queues) or empty (its data directory deleted first);
* a clean RabbitMQ restart: ``rabbitmqctl stop_app`` / ``start_app``;
* a frozen broker or worker: SIGSTOP, past the lease, then SIGCONT;
* a crashed worker or master: SIGKILL;
* a partition: the worker reaches its broker (or manager master) through a proxy
  that stops relaying in both directions and later relays again (:mod:`faults.proxy`);
* bad input: messages pushed straight into the task queue with the broker's own client.

Brokers that no fault touches are the session's (``tests/brokers.py``); each scenario
uses a queue of its own.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import Target
from distq.config import Settings
from faults.harness import Scenario
from launch import LocalRabbitMQ, LocalRedis

MakeScenario = Callable[[Target, str, str], Scenario]


def target_on(kind: str, url: str, **extra: str) -> Target:
    """A fresh queue on the broker at ``url`` (``kind`` is redis or rabbitmq)."""
    var = "DISTQ_REDIS_URL" if kind == "redis" else "DISTQ_AMQP_URL"
    settings = Settings.load({"DISTQ_TRANSPORT": kind, var: url, **extra})
    env = {"DISTQ_TRANSPORT": kind, var: url, **extra}
    return Target(kind, settings, env, {"DISTQ_TRANSPORT": kind, var: url}).fresh(lease_seconds=1.0)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[LocalRedis]:
    """A Redis of this test's own, to crash, freeze and restart."""
    with LocalRedis(tmp_path / "redis", password=secrets.token_hex(8)) as server:
        yield server.start()


@pytest.fixture(scope="module")
def private_rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRabbitMQ]:
    """A RabbitMQ node of this module's own (its tests take turns crashing it)."""
    with LocalRabbitMQ(tmp_path_factory.mktemp("rabbitmq")) as server:
        yield server.start()


@pytest.fixture
def scenario(tmp_path: Path) -> Iterator[MakeScenario]:
    """Make scenarios; whatever they started is ended when the test ends."""
    made: list[Scenario] = []

    def make(target: Target, fault: str, how: str) -> Scenario:
        made.append(Scenario(target, fault, how, tmp_path))
        return made[-1]

    yield make
    for one in made:
        one.close()
