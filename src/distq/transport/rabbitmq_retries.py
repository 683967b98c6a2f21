"""RabbitMQ's retry queues: a retry waits out its delay in ``Q.retry.<ms>``, one per delay.

RabbitMQ expires messages only at the head of a queue, so each delay has a queue of its
own (a 0.5 s retry never waits behind a 60 s one): its ``x-message-ttl`` is the delay,
and it dead-letters what expires back into the task queue ``Q``. A retry queue goes
away an hour after its last use (``x-expires``). A worker's consumer declares one before
it publishes into it, and again at most once a minute, which renews that hour
(:class:`RetryQueues`). ``stats`` counts the messages in the retry queues of distq's own
backoff schedule (:data:`RETRY_DELAYS_MS`), and of a copy's wait for its original (a
lease, a second at least), as ready; a master's declares them, with the same arguments.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any

import pika.exceptions

from distq.retries import retry_delay
from distq.transport.rabbitmq_link import Link, PikaError

_HOUR_MS = 3_600_000
_RETRY_REDECLARE_S = 60.0  # re-declaring renews x-expires; well inside its hour


def delay_ms(seconds: float) -> int:
    """A delay of ``seconds`` in whole ms, 1 at least: a retry queue's."""
    return max(1, round(seconds * 1000))


def retry_queue(queue: str, ms: int) -> str:
    """The retry queue of ``queue`` whose messages wait ``ms`` ms."""
    return f"{queue}.retry.{ms}"


#: The delays of distq's retries (:func:`distq.retries.retry_delay`, 0.5 s to 30 s), in
#: ms: the names of the retry queues a worker declares, which ``stats`` counts as ready.
RETRY_DELAYS_MS = tuple(sorted({delay_ms(retry_delay(attempt)) for attempt in range(1, 64)}))


def retry_queues(queue: str, *more_ms: int) -> list[str]:
    """``queue``'s retry queues (``Q.retry.<ms>``) of the backoff schedule, and those of
    ``more_ms`` not in it."""
    extra = sorted(set(more_ms) - set(RETRY_DELAYS_MS))
    return [retry_queue(queue, ms) for ms in (*RETRY_DELAYS_MS, *extra)]


def queue_arguments(dead_lettering: dict[str, Any], ms: int) -> dict[str, Any]:
    """Arguments of the retry queue of ``ms``, which dead-letters as ``dead_lettering``
    says (into the task queue)."""
    return {**dead_lettering, "x-message-ttl": ms, "x-expires": ms + _HOUR_MS}


class RetryQueues:
    """The retry queues of task queue ``queue`` that one consumer declared, and when.

    ``arguments(ms)`` are those of the queue of ``ms``. One thread at a time, like the
    consumer.
    """

    def __init__(self, queue: str, arguments: Callable[[int], dict[str, Any]]) -> None:
        self.queue = queue
        self._arguments = arguments
        self._declared: dict[int, float] = {}

    def target(self, seconds: float) -> str:
        """Where a retry of this delay goes: the task queue if none, else its retry queue."""
        return retry_queue(self.queue, delay_ms(seconds)) if seconds > 0 else self.queue

    def declare(self, link: Link, ms: int) -> None:
        """Declare the retry queue of ``ms`` on ``link``'s connection, unless this did
        within the last minute."""
        now, last = time.monotonic(), self._declared.get(ms)
        if last is not None and now - last < _RETRY_REDECLARE_S:
            return
        # on a channel of its own: a 406 closes the channel it came on, and on the
        # link's channel that would hand the whole batch back to run again, forever
        channel = link.connection.channel()
        try:
            channel.queue_declare(
                retry_queue(self.queue, ms),
                durable=True,
                arguments=self._arguments(ms),
            )
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 406:
                raise
            # declared with other arguments (another DISTQ_RABBITMQ_QUEUE_TYPE, within
            # the hour it lives): its delay and its target are the same, so it is used
            # as it is
        else:
            with contextlib.suppress(*PikaError):
                channel.close()
        self._declared[ms] = now

    def publish(self, link: Link, seconds: float, bodies: Iterable[bytes]) -> None:
        """Publish ``bodies`` (mandatory) on ``link`` to the retry queue of ``seconds``,
        declared first; confirmed by the caller."""
        ms = delay_ms(seconds)
        self.declare(link, ms)
        target = retry_queue(self.queue, ms)
        for body in bodies:
            link.publish(target, body, mandatory=True)

    def forget(self) -> None:
        """Declare each again before its next use: a new link, to a broker that may have
        restarted empty."""
        self._declared.clear()
