"""Throw-away Redis and RabbitMQ servers for one benchmark run.

They come from ``tests/launch/``, the project's one launcher: plain child processes
listening only on 127.0.0.1, on free ports, with all of their state in a temporary
directory, RabbitMQ with an ``epmd`` of its own. :meth:`Broker.stop` ends a server by
PID (SIGTERM, then SIGKILL after a grace period) and removes the directory; a server
also gets SIGTERM if the benchmark dies (``PR_SET_PDEATHSIG``), so none outlives it.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from launch import LocalRabbitMQ, LocalRedis


@dataclass
class Broker:
    """A running broker: its name (``redis`` or ``rabbitmq``), server and directory."""

    name: str
    server: LocalRedis | LocalRabbitMQ
    workdir: Path

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def version(self) -> str:
        return self.server.version

    def stop(self) -> None:
        self.server.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_redis(limit: float = 30.0) -> Broker:
    """Start ``redis-server`` with no persistence and no password."""
    workdir = Path(tempfile.mkdtemp(prefix="distq-bench-redis-"))
    broker = Broker("redis", LocalRedis(workdir, die_with_parent=True), workdir)
    return _started(broker, limit)


def start_rabbitmq(limit: float = 90.0) -> Broker:
    """Start one RabbitMQ node, logging warnings and worse only."""
    workdir = Path(tempfile.mkdtemp(prefix="distq-bench-rabbitmq-"))
    server = LocalRabbitMQ(
        workdir, extra_config=["log.console.level = warning"], die_with_parent=True
    )
    return _started(Broker("rabbitmq", server, workdir), limit)


def _started(broker: Broker, limit: float) -> Broker:
    try:
        broker.server.start(limit)
    except BaseException:
        broker.stop()
        raise
    return broker


STARTERS = {"redis": start_redis, "rabbitmq": start_rabbitmq}
