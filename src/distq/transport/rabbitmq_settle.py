"""What a RabbitMQ worker publishes to settle a batch, and in which order.

A batch's settle publishes everything first, and acks its deliveries only once the
broker confirmed it all (:meth:`~distq.transport.rabbitmq.RabbitMQConsumer.settle`).
What it publishes, on one link, in this order (:class:`Outbox`):

1. each retry, to the task queue or to the retry queue of its delay (declared before
   any publish: :mod:`distq.transport.rabbitmq_retries`), and each dead letter, to the
   dead-letter queue, in the batch's order;
2. if any dead letter went, a wait for their confirms: a dead letter's error result
   goes only once the letter is the broker's. One the dead-letter queue refused sends
   its task back to run again (the consumer's part), and its error result, sent beside
   it, reached the master first, which then dropped the task's later ok result as a
   duplicate (late21b O2);
3. the results, those of the dead letters the broker took among them: one message per
   master however many (``type: distq.results``, packed as :func:`~distq.framing.pack`
   does), within a pack's byte budget, a fraction of the broker's work per task. Not
   mandatory: a reply queue deleted by its master means nobody waits, and the broker
   drops it (never creating the queue).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pika

from distq.framing import pack
from distq.transport.base import Settlement
from distq.transport.rabbitmq_link import Link
from distq.transport.rabbitmq_packs import RESULTS_TYPE, fill
from distq.transport.rabbitmq_retries import RetryQueues, delay_ms

_PACKED = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent.value, type=RESULTS_TYPE)


class Outbox:
    """One batch's publishes on one link: :meth:`publish`, :meth:`confirm_letters`, then
    :meth:`publish_results`; the caller waits for the confirms. Results go only to reply
    queues named with ``reply_prefix`` (a master's); dead letters to ``dead_queue``."""

    def __init__(
        self, link: Link, retries: RetryQueues, dead_queue: str, reply_prefix: str
    ) -> None:
        self.link = link
        self._retries = retries
        self._dead_queue = dead_queue
        self._prefix = reply_prefix
        self._replies: dict[str, list[bytes]] = {}  # results by reply queue
        self._letters: dict[int, Settlement] = {}  # dead letters by publish sequence

    def publish(self, settlements: Sequence[Settlement]) -> None:
        """Declare the retry queues the batch needs, then publish its retries and dead
        letters in its order; the results of the others wait for :meth:`publish_results`."""
        link, retries, prefix = self.link, self._retries, self._prefix
        for s in settlements:
            if s.retry is not None and s.retry_delay > 0:
                retries.declare(link, delay_ms(s.retry_delay))
        for s in settlements:
            if s.retry is not None:
                link.publish(retries.target(s.retry_delay), s.retry, mandatory=True)
            if s.dead_letter is not None:
                link.publish(self._dead_queue, s.dead_letter, mandatory=True)
                self._letters[link.sequence] = s
            elif s.result is not None and s.reply_to and s.reply_to.startswith(prefix):
                self._replies.setdefault(s.reply_to, []).append(s.result)

    def confirm_letters(self, refused: Callable[[list[Settlement]], None]) -> None:
        """Once the broker confirmed the dead letters (if any): hand ``refused`` those it
        refused, oldest first; the error results of those it took wait for
        :meth:`publish_results`."""
        letters, link = self._letters, self.link
        if not letters:
            return
        numbers = link.refused(letters)
        refused([letters[n] for n in sorted(numbers)])
        if link.returned_to(self._dead_queue):  # no such queue: none stored,
            letters = {}  # and the confirm after the results raises, naming it
        for n, s in letters.items():
            if n in numbers or s.result is None or not s.reply_to:
                continue
            if s.reply_to.startswith(self._prefix):
                self._replies.setdefault(s.reply_to, []).append(s.result)

    def publish_results(self, budget: int) -> None:
        """Publish the results, one message per master, each at most ``budget`` bytes
        (a result alone any size)."""
        link = self.link
        for reply_to, results in self._replies.items():
            for part in fill(results, len(results), budget):
                if len(part) == 1:
                    link.publish(reply_to, part[0], mandatory=False)
                else:
                    body = pack(part)
                    link.publish(reply_to, body, mandatory=False, properties=_PACKED)
