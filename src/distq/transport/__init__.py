"""Transports, chosen by ``DISTQ_TRANSPORT``; see :mod:`distq.transport.base` for the contract.

| transport | broker                         | a lease is held by                            |
|-----------|--------------------------------|-----------------------------------------------|
| manager   | the master (multiprocessing)   | a per-consumer deadline in the master         |
| redis     | Redis >= 6.2 (list per queue)  | a per-consumer deadline in a sorted set       |
| rabbitmq  | RabbitMQ (AMQP 0-9-1 via pika) | the channel; a long task's: a lease record    |

Adding a transport is a module here with a :class:`Transport` subclass, and its line in
:data:`_CLASSES`; nothing outside this package names a transport.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from distq.errors import ConfigError
from distq.transport.base import (
    Consumer,
    Delivery,
    Producer,
    QueueStats,
    Revive,
    Role,
    Settlement,
    Transport,
    original_body,
)

if TYPE_CHECKING:  # distq.config reads TRANSPORTS from here: no import back at run time
    from distq.config import Settings

__all__ = [
    "TRANSPORTS",
    "Consumer",
    "Delivery",
    "Producer",
    "QueueStats",
    "Revive",
    "Role",
    "Settlement",
    "Transport",
    "open_transport",
    "original_body",
]

# name -> (module, class); a module is imported only when its transport is opened
_CLASSES: dict[str, tuple[str, str]] = {
    "manager": ("distq.transport.manager", "ManagerTransport"),
    "redis": ("distq.transport.redis", "RedisTransport"),
    "rabbitmq": ("distq.transport.rabbitmq", "RabbitMQTransport"),
}

#: The values ``DISTQ_TRANSPORT`` accepts; the first is the default.
TRANSPORTS: tuple[str, ...] = tuple(_CLASSES)


def open_transport(settings: Settings, role: Role) -> Transport:
    """Connect to the broker ``settings`` names (the master hosts it for ``manager``).

    Raises :class:`~distq.errors.ConnectionFailed` (or its subclass
    ``AuthenticationFailed``) with an actionable message when that fails, and
    :class:`~distq.errors.ConfigError` for a setting only the transport can judge.
    """
    if settings.transport not in _CLASSES:  # a Settings object built by hand, say
        raise ConfigError(
            f"transport {settings.transport!r} is not one of {', '.join(_CLASSES)} "
            "(DISTQ_TRANSPORT)"
        )
    module, name = _CLASSES[settings.transport]
    connect: Callable[[Settings, Role], Transport] = getattr(importlib.import_module(module), name)
    return connect(settings, role)
