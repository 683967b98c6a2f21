"""Long tasks on RabbitMQ: their leases move off the channel into lease records.

RabbitMQ closes a channel that keeps a delivery unacknowledged longer than the broker's
``consumer_timeout`` (30 minutes by default; RabbitMQ 3.10 checks it on each channel
tick, once a minute) and requeues the delivery: another worker would run the task
while the first one still does. So a consumer does not hold a long task's delivery
that long. Once it has held one for a lease (``after``), it writes the task into a
*lease record* and acknowledges the delivery:

* the record is a copy of the task body in the consumer's own queue
  ``<queue>.held.<consumer id>``, whose ``x-message-ttl`` is :data:`RECORD_LEASES`
  leases and whose dead-letter target is the task queue: a record not renewed within
  that (the worker died, froze, or lost the broker) expires back into the task queue,
  where another worker takes it, as a lapsed lease does on Redis (and as RabbitMQ takes
  back the deliveries of a connection whose heartbeats stopped: within about two
  leases);
* :meth:`LeaseRecords.renew` (every heartbeat) publishes a fresh generation of
  records, waits for their confirms, then takes the previous generation out with
  ``basic_get`` + ack, so a task always has a record, or two for a moment;
* settling or releasing such a task publishes what it must (result, retry, or the
  body back to the task queue) first, then drops its record the same way.

The record queue is a classic queue (see ``RabbitMQTransport.record_queue_arguments``)
and expires two leases and a minute after its last use (``RECORD_LEASES``), so a dead
worker leaves nothing behind once its records have expired.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable
from typing import Any

import pika

_GENERATION = "x-distq-generation"
_EXPIRES_AFTER_MS = 60_000  # the record queue outlives its last record's lease by this
#: A record's life, in leases. One keeper renews every slot's records in turn, a few
#: round trips each: with a lease of one, 16 slots running CPU-bound Python (each round
#: trip waiting for the GIL) renewed some too late, and their tasks ran twice.
RECORD_LEASES = 2
#: AMQP's limit on a queue name, in bytes (a "short string").
MAX_QUEUE_NAME_BYTES = 255


def record_queue(queue: str, consumer_id: str) -> str:
    """The name of a consumer's lease-record queue, ``<queue>.held.<consumer id>``, kept
    within AMQP's 255 bytes: a longer one (a long ``--worker-id`` or host name) ends in a
    hash of the whole instead. Declaring a longer one failed on every heartbeat, so a task
    past RabbitMQ's ``consumer_timeout`` would have run a second time."""
    name = f"{queue}.held.{consumer_id}"
    raw = name.encode(errors="backslashreplace")  # an id from non-UTF-8 bytes as well
    if len(raw) <= MAX_QUEUE_NAME_BYTES and raw.decode() == name:
        return name
    digest = "~" + hashlib.sha256(raw).hexdigest()[:16]
    head = raw[: MAX_QUEUE_NAME_BYTES - len(digest)].decode(errors="ignore")  # whole chars
    return head + digest


def from_a_record(headers: dict[str, Any]) -> bool:
    """Whether a message's headers say it expired from a lease record queue into the
    task queue (RabbitMQ's ``x-death``): a copy of a task some worker held past a lease."""
    deaths = headers.get("x-death")
    return isinstance(deaths, list) and any(
        isinstance(death, dict) and ".held." in str(death.get("queue", "")) for death in deaths
    )


class LeaseRecords:
    """One consumer's lease records: task bodies by delivery tag, kept in its own queue.

    ``publish(routing_key, body, properties)`` queues a confirmed publish and
    ``confirm()`` waits for every confirm (they are the consumer's link's); ``channel``
    is its ``BlockingChannel``. One thread at a time, like the consumer.
    """

    def __init__(
        self,
        channel: Any,
        publish: Callable[[str, bytes, Any], None],
        confirm: Callable[[], None],
        name: str,
        arguments: dict[str, Any],
        on_gone: Callable[[dict[int, bytes]], None] = lambda gone: None,
    ) -> None:
        self._unsure = False  # whether older records may be more than counted: take out all
        self._unsure_of: set[int] = set()  # the tasks held when it became unsure
        self._on_gone = on_gone
        self.bind(channel, publish, confirm)
        self.name = name
        self._arguments = arguments
        self._generation = 0
        self._in_queue = 0  # records of the current generation published to the queue
        self.bodies: dict[int, bytes] = {}  # delivery tag -> body of each task held here

    def bind(
        self,
        channel: Any,
        publish: Callable[[str, bytes, Any], None],
        confirm: Callable[[], None],
        unsure: bool = False,
    ) -> None:
        """Work through this link from now on (the consumer's new one, after it lost
        the last). ``unsure``: a renewal may have failed on the old one half done, so
        the next takes out every record of an older generation, however many, and a task
        none of whose records it finds is no longer held here: its record expired into
        the task queue meanwhile (an outage longer than a record's life), or it never had
        one (its delivery, not acked, went back with the old link). Its copy is in the
        task queue: ``on_gone`` is told its tag and body, and its record is not kept (renewed, it
        brought the task back a second time once the worker died, rmq18)."""
        self._channel, self._publish, self._confirm = channel, publish, confirm
        if unsure:  # the tasks held now: one recorded later has no older record (renew)
            self._unsure_of |= set(self.bodies)
            self._unsure = True

    @property
    def unsure(self) -> bool:
        """Whether the next renewal checks which records went (see :meth:`bind`)."""
        return self._unsure

    @staticmethod
    def queue_arguments(lease_ms: int, task_queue: str) -> dict[str, Any]:
        """Arguments of a record queue: records expire after :data:`RECORD_LEASES` leases
        into ``task_queue``."""
        return {
            "x-message-ttl": RECORD_LEASES * lease_ms,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": task_queue,
            # after its records: an expired queue drops its messages, dead-lettering none
            "x-expires": RECORD_LEASES * lease_ms + _EXPIRES_AFTER_MS,
            # by name: a vhost whose default queue type is quorum made it a quorum queue
            "x-queue-type": "classic",
        }

    def __contains__(self, tag: object) -> bool:
        return tag in self.bodies

    def __len__(self) -> int:
        return len(self.bodies)

    def hold(self, taken: dict[int, bytes]) -> None:
        """Give these deliveries (tag -> body) records; the caller acks them afterwards."""
        self.bodies.update(taken)
        self.renew()

    def forget(self, tags: Iterable[int]) -> None:
        """Stop holding these tasks, their records left as they are (the link is gone):
        the next renewal, on a new link, publishes a generation without them."""
        for tag in tags:
            self.bodies.pop(tag, None)

    def drop(self, tags: Iterable[int]) -> None:
        """Remove these tasks' records (their outcome is published already)."""
        for tag in tags:
            self.bodies.pop(tag, None)
        self.renew()

    def renew(self) -> None:
        """Publish a fresh generation of every record, confirmed, then take the old one out.

        The record queue is declared first, every time (idempotent, one round trip a
        heartbeat): one deleted under a long task (by an operator, a clean-up script)
        holds the task's record again from the next heartbeat on. Before, it was declared
        once: every renew went to no queue, and a worker crash then lost the task (no
        record left to expire, its delivery acked long ago).
        """
        old = self._in_queue
        if not self.bodies and not old and not self._unsure:
            return
        self._channel.queue_declare(self.name, durable=True, arguments=self._arguments)
        self._generation += 1
        properties = pika.BasicProperties(
            delivery_mode=pika.DeliveryMode.Persistent.value,
            headers={_GENERATION: self._generation},
        )
        for body in self.bodies.values():
            self._publish(self.name, body, properties)
        self._confirm()
        self._in_queue = len(self.bodies)
        if not self._unsure:
            self._take_out(old)  # unused from now on, the queue expires
            return
        self._unsure, unsure_of, self._unsure_of = False, self._unsure_of, set()
        found = self._take_out(None)
        gone = {t: b for t, b in self.bodies.items() if t in unsure_of and b not in found}
        if gone:
            for tag in gone:
                del self.bodies[tag]
            self.renew()  # a generation without them: theirs is taken out
            self._on_gone(gone)

    def _take_out(self, count: int | None) -> set[bytes]:
        """Ack up to ``count`` records of older generations from the head of the queue
        (every one, if None); the bodies taken out.

        Fewer are there when some expired (this consumer was too late to renew them:
        their tasks went back to the task queue); a current one met first goes back.
        """
        found: set[bytes] = set()
        for _ in range(count) if count is not None else itertools.count():
            method, properties, body = self._channel.basic_get(self.name, auto_ack=False)
            if method is None:
                break
            headers = properties.headers or {}
            if headers.get(_GENERATION) == self._generation:
                self._channel.basic_nack(method.delivery_tag, requeue=True)
                break
            self._channel.basic_ack(method.delivery_tag)
            found.add(body)
        return found
