"""Packed task messages on RabbitMQ: one AMQP message, several tasks.

RabbitMQ's own work per message (store, deliver, confirm, ack) dwarfs the work per
byte, so a master packs the tasks of a large submit into messages of up to
:data:`~distq.framing.TASKS_PER_MESSAGE` (``type: distq.tasks``, each body after its
4-byte big-endian length: :func:`~distq.framing.pack`), while keeping at least
:data:`MESSAGES_PER_SUBMIT` messages per submit, so that a small job still spreads over
the workers. A single task is a plain
message, as before packing existed.

Packs have a byte budget as well (:func:`pack_bytes`): a pack, its length prefixes
included, holds at most ``min(DISTQ_MAX_MESSAGE_BYTES, 16 MiB)``, so it is never larger
than a message distq accepts (a reader takes any message up to DISTQ_MAX_MESSAGE_BYTES)
nor than RabbitMQ 4.x's default ``max_message_size`` (16 MiB; 3.x: 128 MiB), which
refuses a larger message with ``406 PRECONDITION_FAILED``. A task that does not fit
beside others goes alone, as a plain message: as large as DISTQ_MAX_MESSAGE_BYTES
allows (keep that below the broker's ``max_message_size``). A worker packs the results
of a batch for one master the same way (:func:`fill`, with no count limit).

A worker's consumer splits each message into one :class:`~distq.transport.base.Delivery`
per task, tagged with a number of its own (:class:`HeldMessages`), and settles the
message only when every task in it is settled or released:

* every task settled: the message is acked (after the results were confirmed);
* every task released and none settled nor published again: the message is nacked,
  requeued whole, and comes back marked redelivered;
* some settled, the rest released: the released tasks are published again as new
  messages, confirmed, and then the message is acked. A message some of whose tasks
  were published again is never requeued whole after that: they would run twice.

A slot that asks for fewer tasks than a pack holds is running slow ones (its batch is
sized to a few milliseconds of work): the rest of the pack goes back at once, in
messages of as many tasks as the slot takes (one each for a slot taking one), so idle
workers take them instead of waiting behind it (:func:`regroup`). One task per message
cost the broker a message per task: a slot splitting a 412-task buffer in a slow moment
of fast tasks added 412 messages to a 625-message job. Once it took packs
whole, only the second such fetch in a row does: one slow batch of fast tasks (a
preempted process) is no sign of slow ones. A task whose
publish the broker refuses (a queue at a length limit with overflow ``reject-publish``)
stays held, in its message (:meth:`HeldMessages.keep`), and the slot runs it itself.

A worker that dies holding a message hands all of it back (the broker requeues it), so
tasks of it that were settled already run again: at-least-once, as for any delivery
whose ack was lost; the master keeps the first result of each task.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import groupby

from distq.framing import LENGTH_BYTES, TASKS_PER_MESSAGE, unpack
from distq.transport.base import Delivery

#: The ``type`` property of a message packing several tasks.
TASKS_TYPE = "distq.tasks"
#: ... and of one a worker packs several results into, for one master.
RESULTS_TYPE = "distq.results"
#: A master splits a submit into at least this many messages (fewer tasks: one each).
MESSAGES_PER_SUBMIT = 8
#: No pack is larger than this: RabbitMQ 4.x's default ``max_message_size``.
MAX_PACK_BYTES = 16 << 20


def packed(data: bytes, most: int) -> list[bytes] | None:
    """The bodies of ``data`` if it is a pack a distq process writes: one to ``most``
    bodies, none empty; None otherwise (a queue writer's, which is refused whole: one
    message must not become thousands of refusals and log lines)."""
    try:
        bodies = unpack(data)
    except ValueError:
        return None
    return bodies if 0 < len(bodies) <= most and b"" not in bodies else None


def task_bodies(message_type: str | None, body: bytes) -> list[bytes]:
    """The tasks one message of the task queue carries: a pack's bodies, else the body.

    A pack no master writes is one body, whole, which the worker finds malformed and
    dead-letters once: one that does not unpack, is empty, holds an empty body or more
    than :data:`~distq.framing.TASKS_PER_MESSAGE`. Without these limits a queue writer
    turned one 64 KiB message into 16,384 dead letters and as many log lines. Its size is no
    reason: each task is judged by the worker's own limit, and masters older than the
    :data:`MAX_PACK_BYTES` budget wrote packs up to 32 times a task's limit (taken whole
    as one task over the limit, all 32 tasks were dead-lettered cut to 64 KiB, lost).
    """
    if message_type == TASKS_TYPE:
        bodies = packed(body, TASKS_PER_MESSAGE)
        if bodies is not None:
            return bodies
    return [body]


def pack_bytes(max_message_bytes: int) -> int:
    """The byte budget of a pack, for a limit of ``max_message_bytes``
    (DISTQ_MAX_MESSAGE_BYTES) per task or result: no larger than what a reader accepts
    of any message, nor than :data:`MAX_PACK_BYTES`."""
    return min(max_message_bytes, MAX_PACK_BYTES)


def chunks(bodies: Sequence[bytes], max_bytes: int) -> list[Sequence[bytes]]:
    """How a submit of ``bodies`` goes out: the messages' contents, in order; a pack of
    several holds at most ``max_bytes`` (:func:`pack_bytes`), a task alone any size."""
    size = max(1, min(TASKS_PER_MESSAGE, len(bodies) // MESSAGES_PER_SUBMIT))
    return fill(bodies, size, max_bytes)


def fill(bodies: Sequence[bytes], per_message: int, max_bytes: int) -> list[Sequence[bytes]]:
    """``bodies`` in order, split into messages of at most ``per_message`` bodies whose
    :func:`~distq.framing.pack` is at most ``max_bytes`` long; a body that fits beside
    no other is a message of its own, whatever its size."""
    if not bodies:
        return []
    per_message = max(1, per_message)
    if per_message == 1 or per_message * (LENGTH_BYTES + max(map(len, bodies))) <= max_bytes:
        # every run of ``per_message`` fits: the common case, without a loop in Python
        return [bodies[i : i + per_message] for i in range(0, len(bodies), per_message)]
    out: list[Sequence[bytes]] = []
    start, size = 0, 0
    for i, body in enumerate(bodies):
        cost = LENGTH_BYTES + len(body)
        if i > start and (i - start >= per_message or size + cost > max_bytes):
            out.append(bodies[start:i])
            start, size = i, 0
        size += cost
    out.append(bodies[start:])
    return out


def regroup(
    tasks: Sequence[Delivery], again: Collection[object], per_message: int, max_bytes: int
) -> list[list[Delivery]]:
    """``tasks`` in order, as the messages that put them back in the queue: at most
    ``per_message`` to a message and ``max_bytes`` to a pack (:func:`fill`), the tasks
    of a message all flagged redelivered or all not: those in ``again`` (:class:`Release`'s,
    and copies from an expired lease record: their original may still run) and those
    delivered so (they may have run on a worker that lost them). An empty
    task (a queue writer's message) goes alone: a pack holding one is none a master
    writes, and a worker takes it whole, as one malformed task (:func:`packed`), the
    tasks beside it in its dead letter, never run."""

    def run_of(task: Delivery) -> tuple[bool, object]:
        return task.redelivered or task.tag in again, None if task.body else task.tag

    out: list[list[Delivery]] = []
    for _, same in groupby(tasks, run_of):
        run = list(same)
        for message in fill([task.body for task in run], per_message, max_bytes):
            out.append(run[: len(message)])
            run = run[len(message) :]
    return out


@dataclass
class _Message:
    tag: int  # the broker's delivery tag
    open: set[int] = field(default_factory=set)  # its tasks neither settled nor released
    # some task of it was settled or published again: never requeue it whole (that
    # would bring those tasks back a second time)
    partial: bool = False


@dataclass
class Release:
    """What releasing tasks takes, in this order: publish ``republish`` (confirmed), then
    ack ``ack`` and nack (requeue) ``nack``, message delivery tags, ascending.

    ``tasks`` are the deliveries whose bodies ``republish`` holds, in the same order: a
    publish the broker refuses puts its task back (:meth:`HeldMessages.keep`)."""

    republish: list[bytes] = field(default_factory=list)
    ack: list[int] = field(default_factory=list)
    nack: list[int] = field(default_factory=list)
    tasks: list[Delivery] = field(default_factory=list)
    #: tags of ``tasks`` published again in place of their message's requeue (a queue
    #: that counts deliveries): they come back as redelivered, as a requeued one does
    again: set[object] = field(default_factory=set)
    _of: dict[object, _Message] = field(default_factory=dict, repr=False)  # task tag -> message


class HeldMessages:
    """The messages a consumer holds unacknowledged, and the tasks they carry.

    Tasks are tagged with this object's own numbers (1, 2, ...), distinct from the
    broker's delivery tags, which name messages. One thread at a time.
    """

    def __init__(self) -> None:
        self._next = 0
        self.messages: dict[int, _Message] = {}  # delivery tag -> message, unacked
        self._tasks: dict[int, tuple[_Message, Delivery]] = {}  # task tag -> its message

    def __len__(self) -> int:
        """Tasks held, in messages still unacknowledged."""
        return len(self._tasks)

    def __contains__(self, tag: object) -> bool:
        return tag in self._tasks

    def most_of_one_message(self, deliveries: Iterable[Delivery]) -> int:
        """The most of ``deliveries`` (held ones) that share one message."""
        tasks = self._tasks
        counts = Counter(tasks[d.tag][0].tag for d in deliveries if d.tag in tasks)
        return max(counts.values(), default=0)

    def receive(
        self, delivery_tag: int, bodies: Sequence[bytes], redelivered: bool
    ) -> list[Delivery]:
        """A message's tasks (``bodies``), as deliveries to hand out."""
        message = _Message(delivery_tag)
        self.messages[delivery_tag] = message
        out = []
        for body in bodies:
            self._next += 1
            delivery = Delivery(body, self._next, redelivered)
            message.open.add(self._next)
            self._tasks[self._next] = (message, delivery)
            out.append(delivery)
        return out

    def settle(self, tags: Iterable[int]) -> list[int]:
        """Mark these tasks settled (their outcome is confirmed); the messages now done,
        to ack. Tags not held here are skipped."""
        done: list[int] = []
        for tag in tags:
            entry = self._tasks.pop(tag, None)
            if entry is None:
                continue
            message = entry[0]
            message.open.discard(tag)
            message.partial = True
            if not message.open:
                done.append(message.tag)
        for tag in done:
            del self.messages[tag]
        return sorted(done)

    def release(self, tags: Iterable[int], whole: bool = True, requeue: bool = True) -> Release:
        """Hand these tasks back: see :class:`Release` for what that takes. With
        ``whole=False`` no message is requeued whole: its tasks are published again
        (splitting a pack for workers that take few tasks at a time: :func:`regroup`). With
        ``requeue=False`` neither, but the tasks of a message that would have been are
        in ``again``."""
        touched: dict[int, list[Delivery]] = {}
        for tag in tags:
            entry = self._tasks.pop(tag, None)
            if entry is None:
                continue
            message, delivery = entry
            message.open.discard(tag)
            touched.setdefault(message.tag, []).append(delivery)
        out = Release()
        for tag in sorted(touched):
            message = self.messages[tag]
            if whole and not message.open and not message.partial and requeue:
                out.nack.append(tag)  # whole: the broker requeues it as it came
            else:
                if whole and not message.open and not message.partial:
                    out.again.update(delivery.tag for delivery in touched[tag])
                out.republish += [delivery.body for delivery in touched[tag]]
                out.tasks += touched[tag]
                out._of.update((delivery.tag, message) for delivery in touched[tag])
                message.partial = True
                if not message.open:
                    out.ack.append(tag)
        for tag in out.ack + out.nack:
            del self.messages[tag]
        return out

    def keep(self, plan: Release, tags: Iterable[object]) -> list[Delivery]:
        """Undo ``plan``'s release of these tasks (of ``plan.tasks``: the broker refused
        to take them back): held again, in their messages, which ``plan`` no longer
        acks. The deliveries, oldest first, for the consumer to hand out itself."""
        kept = set(tags)
        out = [delivery for delivery in plan.tasks if delivery.tag in kept]
        for delivery in out:
            assert isinstance(delivery.tag, int)  # this object's own numbers
            message = plan._of[delivery.tag]
            message.open.add(delivery.tag)  # still partial: never requeued whole
            self._tasks[delivery.tag] = (message, delivery)
            self.messages[message.tag] = message
            if message.tag in plan.ack:
                plan.ack.remove(message.tag)
        return out  # in ``plan.tasks``' order: by message, then as released

    def take(self, delivery_tags: Iterable[int]) -> dict[int, bytes]:
        """Stop tracking these messages; their open tasks (task tag -> body), which the
        caller keeps by other means before it acks the messages."""
        out: dict[int, bytes] = {}
        for tag in delivery_tags:
            message = self.messages.pop(tag)
            for task in message.open:
                out[task] = self._tasks.pop(task)[1].body
        return out

    def tags(self) -> list[int]:
        """Every task held, oldest first."""
        return sorted(self._tasks)

    def bodies(self) -> dict[int, bytes]:
        """Every task held: tag -> body, read from a list taken at once (another thread
        may read it)."""
        return {tag: delivery.body for tag, (_, delivery) in list(self._tasks.items())}

    def partly_settled(self) -> bool:
        """Whether some message held has tasks settled (or published again) and others
        not: closing must give those back one by one, not let the broker requeue it."""
        return any(message.partial for message in self.messages.values())

    def clear(self) -> None:
        self.messages.clear()
        self._tasks.clear()
