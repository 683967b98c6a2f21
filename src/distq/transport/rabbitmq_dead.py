"""The dead-letter queue on RabbitMQ: its letters peeked at, requeued, and a gone
master's orphans among them removed.

Each reader of ``Q.dead`` is its only reader while it reads (:func:`_reading`: the
exclusive queue ``Q.dead:reader``). :func:`peek` takes up to a batch of letters with
``basic_get``, unacked, and puts them all back with one ``basic_nack``, which keeps
their order, then waits until the queue holds them again (:func:`_put_back`); on a
quorum queue, as copies published before the letters are acked.
:func:`requeue` takes letters, publishes their tasks to the task queue, waits for the
confirms and only then acks the letters. :func:`remove_orphans` acks only the orphans
of one master and puts every other message back. A message there is a letter of ours,
or what the broker dead-lettered from the task queue: a pack of tasks is a letter per
task (:func:`_decode`).

The transport calls these on its own connection: the public calls are
:class:`~distq.transport.rabbitmq.RabbitMQTransport`'s ``dead_letters``,
``requeue_dead`` and ``forget_orphans``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pika.exceptions

from distq.config import MESSAGE_BATCH
from distq.envelope import DeadLetter
from distq.errors import EnvelopeError, TransportError
from distq.framing import pack
from distq.transport.base import Revive, is_orphan_of, requeued_before
from distq.transport.rabbitmq_link import Link, PikaError, declared, exists
from distq.transport.rabbitmq_packs import TASKS_TYPE, task_bodies

#: How long a peek waits for RabbitMQ to put back the letters it held ...
REQUEUED_WITHIN = 10.0
#: ... and for one more of them after the last that came back.
REQUEUE_STALLED = 1.0


def _put_back(channel: Any, queue: str, last: int, held: int) -> None:
    """Nack every message this channel holds up to delivery tag ``last`` (``held`` of
    them) back into ``queue``, each at its original position, and wait until the queue
    holds them again (or :data:`REQUEUED_WITHIN` s): a nack's requeue is done by the
    queue after the nack's channel has moved on, a thousand letters over a few tenths of
    a second, so a ``requeue-dead`` or ``status`` run right after the peek found letters
    missing. It waits for what is ready before the nack plus those ``held``: a count read
    as the peek began is short by every letter that came in meanwhile (a peek of 1,005
    letters, some still arriving as it began, returned with 886 back)."""
    rest = channel.queue_declare(queue, passive=True).method.message_count
    channel.basic_nack(last, multiple=True, requeue=True)
    deadline = time.monotonic() + REQUEUED_WITHIN
    most, since = -1, time.monotonic()
    while True:
        back = channel.queue_declare(queue, passive=True).method.message_count
        now = time.monotonic()
        if back >= rest + held or now >= deadline:
            return
        if back > most:
            most, since = back, now
        elif now - since >= REQUEUE_STALLED:
            # no more come back: the queue dropped some (its length limit, their TTL),
            # and the wait ran out its 10 s in a master's loop (dead20)
            return
        time.sleep(0.02)


#: How long ``dead-letters`` and ``requeue-dead`` wait for another one reading the
#: dead letters of the same queue (:func:`_reading`).
READER_WAIT = 30.0
#: The same wait for :func:`remove_orphans`, which a master's loop runs
#: (:meth:`~distq.transport.rabbitmq.RabbitMQTransport.forget_orphans`).
ORPHANS_READER_WAIT = 2.0


@contextlib.contextmanager
def _reading(connection: Any, dead_queue: str, wait: float | None = None) -> Iterator[None]:
    """Be the only reader of ``dead_queue`` while the block runs: the exclusive queue
    ``<dead_queue>:reader`` is this connection's meanwhile (and goes with it if the
    process dies; the colon keeps it apart from every task queue's name and the names
    derived from one). A peek holds the letters it reads unacked, unseen by any other
    reader: a ``requeue-dead`` run meanwhile moved only the letters it could see and
    said it moved them all, and two peeks each showed a part, neither the oldest.

    Waits up to ``wait`` s (None: :data:`READER_WAIT`) for another reader, then raises
    :class:`TransportError` saying so. A user not allowed to declare that queue (a
    configure permission for distq's own queues only) reads as before, without it.
    """
    wait = READER_WAIT if wait is None else wait
    lock, deadline = f"{dead_queue}:reader", time.monotonic() + wait
    locked = True
    while True:
        channel = connection.channel()
        try:
            channel.queue_declare(lock, exclusive=True, auto_delete=True)
            break
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 403:  # ACCESS_REFUSED: this user may not; unguarded
                locked = False
                break
            if exc.reply_code != 405:  # RESOURCE_LOCKED: another connection's
                raise
        if time.monotonic() >= deadline:
            raise TransportError(
                f"another distq dead-letters or requeue-dead has been reading the dead "
                f"letters of {dead_queue!r} for {wait:.0f} s (it holds {lock!r}); "
                "run this again once it is done"
            )
        time.sleep(0.1)
    try:
        yield
    finally:
        with contextlib.suppress(*PikaError):
            if locked and channel.is_open:
                channel.queue_delete(lock)
                channel.close()


def peek(link: Link, queue: str, dead_queue: str, limit: int) -> list[DeadLetter]:
    """The first ``limit`` letters of ``dead_queue`` (the dead letters of ``queue``),
    read as its only reader: ``basic_get`` without acking, then all put back.

    On a queue that counts deliveries (a quorum queue: :func:`counts_deliveries`) they
    are put back as copies, published (confirmed) before the letters are acked: each
    nack counted as a delivery there, and at a delivery limit (a policy's; RabbitMQ 4's
    default is 20) the broker dropped the letters, a few peeks and all were gone
    (rmq31). There a nack puts them back at the end of the queue all the same. Letters
    with a per-message TTL (``expiration``: none of distq's, nor one RabbitMQ
    dead-lettered) are put back as before: a copy's TTL would start afresh."""
    channel = link.channel
    with _reading(channel.connection, dead_queue):
        got: list[tuple[Any, Any, bytes]] = []
        if declared(channel.connection, dead_queue) == [None]:  # not declared yet
            return []
        held = False  # the letters ``got`` are still this channel's to put back
        try:
            while len(got) < limit:
                method, props, body = channel.basic_get(dead_queue, auto_ack=False)
                if method is None:
                    break
                got.append((method, props, body))
                held = True
            # a copy's per-message TTL would start afresh: letters with one are put back
            expiring = any(props.expiration for _, props, _ in got)
            if got and not expiring and counts_deliveries(channel.connection, dead_queue):
                for _, props, body in got:  # a copy published already: there twice
                    link.publish(dead_queue, body, mandatory=True, properties=props)
                link.confirm()
                channel.basic_ack(got[-1][0].delivery_tag, multiple=True)
                held = False
        finally:
            if held and channel.is_open:
                _put_back(channel, dead_queue, got[-1][0].delivery_tag, len(got))
        return _letters(got, queue)[:limit]


def requeue(
    link: Link,
    queue: str,
    dead_queue: str,
    limit: int | None,
    revive: Revive,
    moved: list[int],
    declare_queue: Callable[[Any], None],
) -> None:
    """Move up to ``limit`` letters (None: all there now) of ``dead_queue`` to ``queue``,
    as their only reader, counting them in ``moved`` as they are acked.
    ``declare_queue(channel)`` declares ``queue`` if it is not there."""
    with _reading(link.connection, dead_queue):
        (dead,) = declared(link.connection, dead_queue)
        if dead is None:  # not declared yet: nothing to move
            return
        # at most the messages there now (a pack is a message of several letters)
        _move(link, queue, dead_queue, limit, dead.message_count, revive, moved, declare_queue)


def _move(
    link: Link,
    queue: str,
    dead_queue: str,
    limit: int | None,
    there: int,
    revive: Revive,
    moved: list[int],
    declare_queue: Callable[[Any], None],
) -> None:
    channel = link.channel
    target_ready = False
    while (limit is None or moved[0] < limit) and there > 0:
        got: list[tuple[Any, Any, bytes]] = []
        # letters, not messages, against the limit: a pack the broker dead-lettered
        # whole holds up to 32 (--limit 40 moved 10 packs of 30, 300 letters)
        letters_left = limit - moved[0] if limit is not None else None
        try:
            while len(got) < min(MESSAGE_BATCH, there) and (
                letters_left is None or letters_left > 0
            ):
                method, props, body = channel.basic_get(dead_queue, auto_ack=False)
                if method is None:
                    break
                got.append((method, props, body))
                if letters_left is not None:
                    letters_left -= len(task_bodies(props.type, body))
            if not got:
                return
            if not target_ready:
                # where they go, as it is: declaring it with the caller's
                # DISTQ_RABBITMQ_QUEUE_TYPE would be refused by queues of the other
                # type (PRECONDITION_FAILED); only a task queue not there is declared
                if not exists(link.connection, queue):
                    declare_queue(channel)
                target_ready = True
            letters = _letters(got, queue)
            first = link.sequence
            for letter in letters:
                link.publish(queue, revive(letter), mandatory=True)
            try:
                link.confirm()
            except TransportError as exc:  # refused some (a length limit): keep the rest
                confirmed = link.confirmed - first  # of this batch
                got = got[_ack_confirmed(link, queue, dead_queue, got, confirmed, moved) :]
                refused = TransportError(
                    f"{str(exc).rstrip('.')}; {requeued_before(moved[0])}, the rest stay "
                    "dead letters"
                )
                refused.moved = moved[0]  # type: ignore[attr-defined]  # as counting_moves's
                raise refused from exc
            channel.basic_ack(got[-1][0].delivery_tag, multiple=True)
            moved[0] += len(letters)
            there -= len(got)
            got = []
        finally:
            if got and channel.is_open:
                channel.basic_nack(got[-1][0].delivery_tag, multiple=True, requeue=True)


def _ack_confirmed(
    link: Link,
    queue: str,
    dead_queue: str,
    got: list[tuple[Any, Any, bytes]],
    confirmed: int,
    moved: list[int],
) -> int:
    """Ack the first messages of ``got`` whose every task is among the first
    ``confirmed`` publishes of their batch (the broker holds those): when it refused
    the rest, their letters stay, and a later run does not enqueue those tasks twice
    (cli16). A pack the broker dead-lettered whole that the refusal split goes back
    as a pack of its tasks not enqueued (confirmed first), and is acked: it went back
    whole, and its enqueued tasks were enqueued again (diff16). How many messages;
    their letters are counted in ``moved``."""
    count = letters = 0
    for _, props, body in got:
        size = len(_decode(props, body, queue))
        if letters + size > confirmed:
            break
        letters, count = letters + size, count + 1
    if count < len(got) and letters < confirmed:
        _, props, body = got[count]
        tasks, done = task_bodies(props.type, body), confirmed - letters
        if props.type == TASKS_TYPE and 0 < done < len(tasks):
            link.publish(dead_queue, pack(tasks[done:]), mandatory=True, properties=props)
            link.confirm()
            letters, count = letters + done, count + 1
    if count:
        link.channel.basic_ack(got[count - 1][0].delivery_tag, multiple=True)
        moved[0] += letters
    return count


def remove_orphans(channel: Any, queue: str, dead_queue: str, reply_to: str, most: int) -> int:
    """Ack the orphans of ``reply_to`` among the first ``most`` messages of
    ``dead_queue`` there when it starts, as its only reader; put every other one back.
    How many it removed."""
    needle = reply_to.encode()
    # a master waits for no operator's long peek: it says so, and looks again
    # as its job ends
    with _reading(channel.connection, dead_queue, ORPHANS_READER_WAIT):
        (before,) = declared(channel.connection, dead_queue)
        if before is None:  # not declared yet: no letters
            return 0
        if counts_deliveries(channel.connection, dead_queue):
            return 0
        removed, kept, held = 0, None, 0
        try:
            for _ in range(min(before.message_count, most)):
                method, props, body = channel.basic_get(dead_queue, auto_ack=False)
                if method is None:
                    break
                if needle in body and props.type != TASKS_TYPE:
                    letters = _decode(props, body, queue)
                    if len(letters) == 1 and is_orphan_of(letters[0], reply_to, queue):
                        channel.basic_ack(method.delivery_tag)
                        removed += 1
                        continue
                kept, held = method.delivery_tag, held + 1
        finally:
            if kept is not None and channel.is_open:
                _put_back(channel, dead_queue, kept, held)
        return removed


def counts_deliveries(connection: Any, queue: str, arguments: dict[str, Any] | None = None) -> bool:
    """Whether ``queue`` may count deliveries: a quorum queue, where each letter a look
    takes and puts back counts as one, and a delivery limit (a policy's, RabbitMQ 4's
    default of 20) drops letters after a few looks. A queue of the vhost's default type
    is one where that type is quorum, whatever ``DISTQ_RABBITMQ_QUEUE_TYPE`` says
    (rmq31). Asked by declaring it classic (with the ``arguments`` distq declares it
    with), on a channel of its own: RabbitMQ refuses that (PRECONDITION_FAILED) for any
    queue but a classic one declared as distq declares it, and takes it for that one. A
    user not allowed to declare it (a 403) looks as before."""
    channel = connection.channel()
    arguments = {**(arguments or {}), "x-queue-type": "classic"}
    try:
        channel.queue_declare(queue, durable=True, arguments=arguments)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 406:
            return True
        if exc.reply_code != 403:
            raise
        return False
    with contextlib.suppress(*PikaError):
        channel.close()
    return False


def _letters(got: list[tuple[Any, Any, bytes]], queue: str) -> list[DeadLetter]:
    """The letters in messages ``basic_get`` took from the dead-letter queue of ``queue``,
    in order."""
    return [letter for _, props, body in got for letter in _decode(props, body, queue)]


def _decode(props: Any, body: bytes, queue: str) -> list[DeadLetter]:
    """The letters one message of the dead-letter queue of ``queue`` holds: one of ours,
    or what the broker dead-lettered from the task queue (a rejection by another client,
    a policy's TTL or length limit), a pack of tasks as a letter per task. A message
    that is neither (no ``x-death`` header: published there by hand or another tool)
    is an unreadable letter (:meth:`DeadLetter.read`), not one the broker made; so is
    one whose ``x-death`` is not the broker's list of tables (a publisher can set it)."""
    headers = props.headers if isinstance(props.headers, dict) else {}
    deaths = headers.get("x-death")
    if not (isinstance(deaths, list) and deaths and isinstance(deaths[0], dict)):
        deaths = None
    if props.type != TASKS_TYPE:
        if not deaths:
            return [DeadLetter.read(body, queue)]
        with contextlib.suppress(EnvelopeError):
            return [DeadLetter.decode(body)]
    death = (deaths or [{}])[0]
    reason, where = death.get("reason", "dead-lettered"), death.get("queue", queue)
    return [
        DeadLetter(
            body=task,
            reason=f"dead-lettered by RabbitMQ ({_text(reason)})",
            queue=_text(where),
            worker="",
            at=_timestamp(death.get("time")),
        )
        for task in task_bodies(props.type, body)
    ]


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _timestamp(value: object) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    stamp = getattr(value, "timestamp", None)  # pika decodes AMQP timestamps to datetime
    return float(stamp()) if callable(stamp) else time.time()
