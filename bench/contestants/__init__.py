"""Contestants: one module per framework, each a :class:`~contestants.base.Contestant`.

``REGISTRY`` maps ``(broker, contestant name)`` to ``"module:Class"`` so the
orchestrator can list and order trials without importing celery, dramatiq or rq.
"""

from __future__ import annotations

import importlib

from contestants.base import Contestant

BROKERS = ("redis", "rabbitmq", "manager")

#: (broker, contestant) -> "module:Class", in the order rows appear in the table.
REGISTRY: dict[tuple[str, str], str] = {
    ("redis", "raw"): "contestants.raw_redis:RawRedis",
    ("redis", "raw-per-task"): "contestants.raw_redis:RawRedisPerTask",
    ("redis", "celery"): "contestants.celery_peer:CeleryPeer",
    ("redis", "dramatiq"): "contestants.dramatiq_peer:DramatiqPeer",
    ("redis", "rq"): "contestants.rq_peer:RqRedis",
    ("redis", "rq-simple"): "contestants.rq_peer:RqSimpleRedis",
    ("redis", "distq"): "contestants.distq_cli:DistqCli",
    ("redis", "distq-metrics"): "contestants.distq_cli:DistqCliMetrics",
    ("redis", "distq-signed"): "contestants.distq_cli:DistqSigned",
    ("redis", "distq-executor"): "contestants.distq_executor:DistqExecutor",
    ("rabbitmq", "raw"): "contestants.raw_rabbitmq:RawRabbitmq",
    ("rabbitmq", "raw-confirm"): "contestants.raw_rabbitmq:RawRabbitmqConfirm",
    ("rabbitmq", "raw-confirm-ack"): "contestants.raw_rabbitmq:RawRabbitmqConfirmAck",
    ("rabbitmq", "celery"): "contestants.celery_peer:CeleryPeer",
    ("rabbitmq", "dramatiq"): "contestants.dramatiq_peer:DramatiqPeer",
    ("rabbitmq", "distq"): "contestants.distq_cli:DistqCli",
    ("rabbitmq", "distq-metrics"): "contestants.distq_cli:DistqCliMetrics",
    ("rabbitmq", "distq-signed"): "contestants.distq_cli:DistqSigned",
    ("rabbitmq", "distq-executor"): "contestants.distq_executor:DistqExecutor",
    ("manager", "raw"): "contestants.raw_manager:RawManager",
    ("manager", "distq"): "contestants.distq_cli:DistqCli",
    ("manager", "distq-metrics"): "contestants.distq_cli:DistqCliMetrics",
    ("manager", "distq-signed"): "contestants.distq_cli:DistqSigned",
    ("manager", "distq-executor"): "contestants.distq_executor:DistqExecutor",
}

CONTESTANTS = tuple(dict.fromkeys(name for _, name in REGISTRY))


def load(broker: str, name: str) -> type[Contestant]:
    """Import and return the contestant class for ``(broker, name)``."""
    module_name, _, class_name = REGISTRY[(broker, name)].partition(":")
    cls: type[Contestant] = getattr(importlib.import_module(module_name), class_name)
    assert issubclass(cls, Contestant)
    return cls
