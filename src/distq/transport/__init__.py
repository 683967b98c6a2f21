"""Transports, chosen by ``DISTQ_TRANSPORT``; see :mod:`distq.transport.base` for the contract.

| transport | broker                         | a lease is held by                          |
|-----------|--------------------------------|---------------------------------------------|
| manager   | the master (multiprocessing)   | a per-consumer deadline in the master       |
| redis     | Redis >= 6.2 (list per queue)  | a per-consumer deadline in a sorted set     |
| rabbitmq  | RabbitMQ (AMQP 0-9-1 via pika) | the channel, kept alive by AMQP heartbeats  |
"""

from __future__ import annotations

from distq.config import Settings
from distq.transport.base import (
    Consumer,
    Delivery,
    Producer,
    QueueStats,
    Role,
    Settlement,
    Transport,
)

__all__ = [
    "Consumer",
    "Delivery",
    "Producer",
    "QueueStats",
    "Role",
    "Settlement",
    "Transport",
    "open_transport",
]


def open_transport(settings: Settings, role: Role) -> Transport:
    """Connect to the broker ``settings`` names (the master hosts it for ``manager``).

    Raises :class:`~distq.errors.ConnectionFailed` (or its subclass
    ``AuthenticationFailed``) with an actionable message when that fails.
    """
    if settings.transport == "manager":
        from distq.transport.manager import ManagerTransport

        return ManagerTransport(settings, role)
    if settings.transport == "redis":
        from distq.transport.redis import RedisTransport

        return RedisTransport(settings, role)
    from distq.transport.rabbitmq import RabbitMQTransport

    return RabbitMQTransport(settings, role)
