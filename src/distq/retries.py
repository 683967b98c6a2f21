"""How long a task that failed waits before its next attempt: capped exponential backoff.

The worker's endings give each retry its delay (:mod:`distq.ending`), which a transport
takes from the retry's settlement. RabbitMQ also names its retry queues by the delays
of this schedule, and counts the tasks in them as ready
(:mod:`distq.transport.rabbitmq_retries`).
"""

from __future__ import annotations


def retry_delay(attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff before attempt ``attempt + 1``: 0.5 s, 1 s, 2 s, ... capped."""
    return float(min(cap, base * 2 ** min(attempt - 1, 64)))  # the wire may say 10**30
