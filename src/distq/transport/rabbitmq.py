"""RabbitMQ transport: AMQP 0-9-1 through pika's ``BlockingConnection``.

``DISTQ_TRANSPORT=rabbitmq`` with ``DISTQ_AMQP_URL=amqp[s]://USER:PASSWORD@HOST[:PORT]/VHOST``.
Percent-encode the vhost (the default vhost ``/`` is ``%2F``). ``amqps`` checks the
server certificate against the system CAs unless pika's ``?ssl_options=`` says otherwise.
Other pika query arguments (``connection_attempts``, ``socket_timeout``...) are honoured;
``heartbeat`` is not: the lease sets it.

Topology, declared idempotently (``Q`` = ``DISTQ_QUEUE``; every queue is durable, fed
through the default exchange with persistent messages). ``DISTQ_RABBITMQ_QUEUE_TYPE``
picks the type of the task, retry and dead-letter queues: ``classic`` (the server's
default version) or ``quorum`` (replicated Raft log; their dead-lettering gets
``x-dead-letter-strategy: at-least-once`` with ``x-overflow: reject-publish``, so a
retry leaving its delay queue survives a broker crash: a classic queue dead-letters at
most once, and a crash at that moment loses the message). On RabbitMQ 3.10 a quorum
queue declared less than about 3 minutes before a node crashes comes back unusable
(publishes are refused): Ra saves its name registry every 3 minutes. A graceful
restart is not affected, nor a cluster that keeps a majority:

======================  =============================================  =====================
queue                   arguments                                      holds
======================  =============================================  =====================
``Q``                   ``x-dead-letter-exchange: ""``,                tasks, one or a
                        ``x-dead-letter-routing-key: Q.dead``          pack per message
``Q.dead``              none                                           DeadLetter envelopes,
                                                                       and anything
                                                                       rejected from Q
``Q.retry.<ms>``        ``x-message-ttl: <ms>``,                       retries waiting out
                        ``x-dead-letter-exchange: ""``,                their delay; then
                        ``x-dead-letter-routing-key: Q``,              back to Q
                        ``x-expires: <ms> + 1 h``
``Q.held.<consumer>``   ``x-message-ttl: <2 leases, ms>``,             long tasks' lease
                        dead-letters to ``Q``,                         records (below)
                        ``x-expires: <2 leases, ms> + 1 min``,
                        ``x-queue-type: classic`` (always, even
                        where a vhost's default type is quorum;
                        2 is ``RECORD_LEASES``)
``Q.results.<job>``     ``x-expires: <master ttl ms>``,                one master's results
                        ``x-queue-type: classic`` (always)
``Q.dead:reader``       exclusive (its connection's: gone with it)     none: held while a
                                                                       command reads Q.dead
======================  =============================================  =====================

One queue per retry delay (:mod:`distq.transport.rabbitmq_retries`), because RabbitMQ
expires messages only at the head of a queue: a 0.5 s retry never waits behind a 60 s
one. Retry queues go away an hour after their last use (``stats``, which counts their
messages as ready, is a use). A master's reply queue (named by
:meth:`RabbitMQTransport.reply_queue`) is durable so results outlive a broker restart;
``Producer.close`` deletes it, and ``x-expires`` removes it ``Settings.master_ttl``
after its master's consumer went away (the master died, or lost the broker for that
long). Workers treat a task whose reply queue is missing, or not named like one, as its
master's that is gone (:meth:`RabbitMQConsumer.gone`), and publish results only to names
like one: a publish to a missing queue is dropped by the broker and never creates it.

Leases: a delivery stays unacknowledged on its consumer's channel until settled or
released. A consumer's connection heartbeat is ``max(1, round(lease_seconds))`` s, so
RabbitMQ drops a frozen or vanished worker within about two leases and requeues what it
held; a SIGKILLed worker's TCP connection closes, and its deliveries return at once.
:meth:`RabbitMQConsumer.heartbeat` services the heartbeats while a task runs, stops the
consumer meanwhile (the broker pushes nothing more to a busy slot; the deliveries it
had pushed go back) and moves any delivery held for a lease into a lease record
(:mod:`distq.transport.rabbitmq_holds`), so that no delivery stays unacknowledged long
enough for the broker's ``consumer_timeout`` to close the channel under a long task.
The consumer's ``basic_qos`` prefetch follows the batch asked for, up to
``DISTQ_PREFETCH`` (:class:`PrefetchWindow`), so the backlog stays visible as ``ready``.
A worker whose connection is lost while its slots run connects again meanwhile
(:meth:`RabbitMQConsumer._linked`); the broker requeued what the old one held, and a
copy of a task still running here, or done on the lost link, that one of its slots gets
waits or is acked unrun (:mod:`distq.transport.rabbitmq_copies`).

Publisher confirms, batched: a worker publishes a whole batch's results, retries and
dead letters (:mod:`distq.transport.rabbitmq_settle`), waits once for all their
confirms, and only then acks the deliveries. A master waits only when more than
``_CONFIRM_WINDOW`` tasks are unconfirmed; a refused or unroutable task raises from its
next call. It acks its results one call later, cumulatively. After a lost connection, or
a task the broker refused (a length limit) or returned (its queue deleted),
:meth:`RabbitMQProducer.reconcile` reconnects (which declares the task queue again) and
counts as held the tasks confirmed before the first one lost (none when the reply queue
is gone: a new or reset node): the master submits the rest again. pika's
``BlockingChannel`` would wait per message: a link (the connection layer,
:mod:`distq.transport.rabbitmq_link`) goes through
:mod:`distq.transport.pika_internals`. Tasks, retries and dead letters are published
``mandatory``; results are not (a missing reply queue means nobody waits).

Results, batched: a worker settling several tasks of one master publishes their results
as one message (``type: distq.results``, each body after its 4-byte big-endian length);
the master's producer unpacks it. Tasks, packed: a master puts the tasks of a large
submit up to 32 to a message (``type: distq.tasks``, the same framing); a consumer hands
out one delivery per task, with tags of its own, and acks a message once every task in
it is settled (:mod:`distq.transport.rabbitmq_packs`). Either pack holds at most
``min(DISTQ_MAX_MESSAGE_BYTES, 16 MiB)`` (RabbitMQ 4.x refuses messages over 16 MiB by
default, its ``max_message_size``); more goes as further messages, and a task or result
too large to share one goes alone. So the broker's counts (``ready``,
unacknowledged, KEDA's queue length, ``basic_qos`` prefetch) are of messages, each of 1
to 32 tasks. A packed message that the broker dead-letters (a policy, or a client that
rejects it) lands in ``Q.dead`` whole; ``dead_letters()`` and ``requeue_dead()`` read it
as a letter per task.

``stats()``: ``ready`` (messages) and ``dead`` come from passive declares (a master
declares the retry queues it counts, as its workers do), and a queue not there yet
counts as empty: the operating commands (role ``client``: ``distq status``,
``dead-letters``) declare no queue they only read. AMQP does not report
unacknowledged counts (the management plugin does), so ``in_flight`` counts only the
deliveries held by this transport's own consumers. ``dead_letters()`` peeks with
``basic_get`` and requeues with one ``basic_nack``, which keeps the order.
``requeue_dead()`` takes letters with ``basic_get``, publishes their tasks, waits for
the confirms and only then acks the letters (:mod:`distq.transport.rabbitmq_dead`). A
producer cannot ``withdraw`` a task: AMQP has no way to take one message back out of a
queue.

Threading: pika is not thread-safe. Every producer and consumer owns its connection and
channel and is used by one thread; code that must reach a connection from another
thread has to use ``connection.add_callback_threadsafe``. The transport's own
connection (``stats``, ``dead_letters``) is guarded by a lock; it has no heartbeats, so a
call on it gives up on a broker silent for :data:`ADMIN_ANSWER_SECONDS` (paused, cut off).

The measurements behind these choices: ``bench/results/rabbitmq-design.md``.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import shlex
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Sequence
from functools import partial
from typing import Any

import pika
import pika.exceptions

from distq.config import MESSAGE_BATCH, Settings
from distq.counts import counted
from distq.envelope import DeadLetter
from distq.errors import ConfigError, TransportError
from distq.framing import TASKS_PER_MESSAGE, pack
from distq.limits import MAX_PREFETCH
from distq.transport.base import (
    Consumer,
    Delivery,
    Producer,
    QueueStats,
    Revive,
    Role,
    Settlement,
    Transport,
    counting_moves,
    original_body,
    tags_of,
)
from distq.transport.pika_internals import (
    AnswerWithin,
    cancel_forgotten,
    cancel_keeping,
    check_channel,
    closed_by_broker,
    server_version,
)
from distq.transport.rabbitmq_copies import (
    BodySet,
    DigestSet,
    LostTasks,
    RunningLost,
    deferred_done,
    results_only,
    running_copies,
)
from distq.transport.rabbitmq_dead import counts_deliveries, peek, remove_orphans, requeue
from distq.transport.rabbitmq_holds import LeaseRecords, from_a_record, record_queue
from distq.transport.rabbitmq_link import (
    CLOSE_SECONDS,
    HURRIED_CLOSE_SECONDS,
    REFUSALS,
    Broker,
    Link,
    PikaError,
    Try,
    blocked,
    declared,
    exists,
)
from distq.transport.rabbitmq_packs import (
    RESULTS_TYPE,
    TASKS_TYPE,
    HeldMessages,
    chunks,
    pack_bytes,
    packed,
    regroup,
    task_bodies,
)
from distq.transport.rabbitmq_retries import (
    RETRY_DELAYS_MS,
    RetryQueues,
    delay_ms,
    queue_arguments,
    retry_queue,
    retry_queues,
)
from distq.transport.rabbitmq_settle import Outbox

_PACKED_TASKS = pika.BasicProperties(
    delivery_mode=pika.DeliveryMode.Persistent.value, type=TASKS_TYPE
)
#: A task published again in place of a requeue (see RabbitMQConsumer._give_back): read
#: as redelivered
_HANDED_BACK = "distq-handed-back"
_AGAIN = pika.BasicProperties(
    delivery_mode=pika.DeliveryMode.Persistent.value, headers={_HANDED_BACK: 1}
)
_PACKED_AGAIN = pika.BasicProperties(
    delivery_mode=pika.DeliveryMode.Persistent.value, type=TASKS_TYPE, headers={_HANDED_BACK: 1}
)
_PROBE_TYPE = "distq.probe"  # a worker asking whether a reply queue exists; see gone()
# transient, and dropped at once unless a consumer takes it (expiration 0): it never piles up
_PROBE = pika.BasicProperties(type=_PROBE_TYPE, expiration="0")
_REPLY_PREFETCH = MESSAGE_BATCH  # what a master takes per call; it dedupes, so keep it full
_CONFIRM_WINDOW = 2000  # unconfirmed task publishes a master may have: bounds its buffer
_PRODUCER_HEARTBEAT = 15  # a master's connection holds no leases; a frozen broker shows in 30 s
_SHRINK_AFTER = 4  # fetches in a row wanting a quarter of the window before it shrinks
# at most this long a consumer on a quorum queue waits for its window to fill before a
# resize cancels it (see RabbitMQConsumer._size_window)
_FILL_SECONDS = 0.1
# between a worker's tries to connect a slot again (see RabbitMQConsumer._linked)
_RELINK_PAUSE = 1.0
_KEEPER_WAIT = 0.5  # the keeper's wait for a try it starts (a local broker takes ~20 ms)
# a slot waits this long at most for a try it did not start, then makes its own beside
# it: a try the keeper started while the broker did not answer waited out pika's 15 s
# after it was back, failed, and the slot's settle with it (diff18c)
_TRY_TRUSTED = 1.0
# bodies of tasks done on a lost link a worker remembers, to ack their copies unrun
_DONE_LOST_KEPT = 10_000
# after the broker refused a pack's split, the slot runs the rest of it for this long
# before it tries to split again: a full queue has work enough for idle workers
_SPLIT_PAUSE_S = 10.0

#: How long a task whose dead letter the dead-letter queue refused (full) waits to run
#: again (:meth:`RabbitMQConsumer._letters_refused`).
LETTER_REFUSED_DELAY = 30.0

#: How long a call on the transport's own connection (no heartbeats: it idles between
#: calls) waits for a broker that does not answer, then fails
#: (:meth:`RabbitMQTransport._with_admin`).
ADMIN_ANSWER_SECONDS = 15.0

log = logging.getLogger(__name__)


def _receive_until(connection: Any, buffer: deque[Any], wanted: int, timeout: float) -> list[Any]:
    """Up to ``wanted`` items from ``buffer``, filled by the connection's callbacks.

    Picks up what has already arrived, then blocks up to ``timeout`` s for the first
    item; ``process_data_events`` returns as soon as a delivery is dispatched.
    """
    if wanted <= 0:
        return []
    if len(buffer) < wanted:
        connection.process_data_events(time_limit=0)
    deadline = time.monotonic() + timeout
    while not buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        connection.process_data_events(time_limit=remaining)
    return [buffer.popleft() for _ in range(min(wanted, len(buffer)))]


class RabbitMQTransport(Transport):
    """Producers and consumers on one RabbitMQ task queue; see the module docstring."""

    name = "rabbitmq"
    #: A peek holds the letters it reads (unacked) and hands them back with one nack:
    #: RabbitMQ puts 20,000 back over a minute or more, while ``requeue-dead`` and other
    #: readers of the dead-letter queue wait and ``status`` counts fewer letters.
    most_peeked = MESSAGE_BATCH
    # the broker counts consumers: a slot that held a task past its lease stopped
    # consuming (README), and was said absent while it ran one of the job's tasks
    unattached_note = " (RabbitMQ: a slot running a task past its lease is not counted)"
    # a pack it dead-letters whole (a client's reject, a policy's TTL or length limit)
    dead_counts_messages = True

    def __init__(self, settings: Settings, role: Role) -> None:
        self.settings = settings
        self.role = role
        self.queue = settings.queue
        self.dead_queue = f"{settings.queue}.dead"
        self.reply_prefix = f"{settings.queue}.results."
        self.quorum = settings.rabbitmq_queue_type == "quorum"
        self.lease_ms = max(1, round(settings.lease_seconds * 1000))
        self._pack_bytes = pack_bytes(settings.max_message_bytes)
        self._broker = Broker.from_url(
            settings.amqp_url, settings.tls_files, settings.queue, settings.max_message_bytes
        )
        self._lock = threading.Lock()
        self._children: list[RabbitMQProducer | RabbitMQConsumer] = []
        self._admin: Link | None = None
        # the last producer's close that asked got no answer (a broker paused or cut off):
        # the closes after it do not wait for the broker (a stopping master waited
        # CLOSE_SECONDS twice); one answered since clears it
        self.unanswered = False
        self.close_seconds = CLOSE_SECONDS  # each close's wait for the broker (hurry)
        # tasks done on a lost link by any of this process's consumers (see
        # results_only): whichever slot gets a copy acks it
        self.done_copies = BodySet(_DONE_LOST_KEPT)
        # tasks that still run here on a lost link: a slot that gets a copy defers it
        self.running_lost = RunningLost()
        # copies deferred while their originals ran: acked unrun once those are done
        self.deferred = BodySet(_DONE_LOST_KEPT)
        # tasks this process handed back (a release, a heartbeat's), on a queue that takes
        # them back by a requeue: not sent behind when one of its slots gets them (see
        # RabbitMQConsumer._move_behind)
        self.handed_back = DigestSet(_DONE_LOST_KEPT)  # by digest: added as it runs
        self._keeper_waited_out = -_RELINK_PAUSE  # when a keeper's wait last ran out
        self._counts: bool | None = None  # see counting(); None: not asked yet
        # the retry queues a master's stats() declares (with their arguments), not asks
        self._made_retry_queues: dict[str, dict[str, Any]] = (
            {
                retry_queue(self.queue, ms): self.retry_queue_arguments(ms)
                for ms in (*RETRY_DELAYS_MS, delay_ms(self.defer_seconds))
            }
            if role == "master"
            else {}
        )
        with self._lock:
            self._admin_link()

    @property
    def broker_version(self) -> str | None:
        """RabbitMQ's version, as it said on the transport's own connection."""
        link = self._admin
        return None if link is None else server_version(link.connection)

    def keeper_wait(self, connecting: threading.Thread) -> None:
        """The keeper's wait for a reconnect try it started (:data:`_KEEPER_WAIT`): none
        while one ran out within :data:`_RELINK_PAUSE` (a broker that does not answer:
        one slot after another, 16 slots held the keeper 8 s)."""
        if time.monotonic() - self._keeper_waited_out < _RELINK_PAUSE:
            return
        connecting.join(_KEEPER_WAIT)
        if connecting.is_alive():
            self._keeper_waited_out = time.monotonic()

    @property
    def pack_bytes(self) -> int:
        """A pack's byte budget: within the broker's max_message_size too, once it refused
        a message over it (packs made to DISTQ_MAX_MESSAGE_BYTES were refused each time)."""
        refused = self._broker.refused_over
        return min(self._pack_bytes, *refused) if refused else self._pack_bytes

    def typed(self, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
        """``arguments`` of a task, retry, dead-letter or record queue, with its type."""
        return {**(arguments or {}), **({"x-queue-type": "quorum"} if self.quorum else {})}

    def dead_lettering(self, target: str) -> dict[str, Any]:
        """Arguments that dead-letter into ``target``: at least once on quorum queues."""
        arguments: dict[str, Any] = {
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": target,
        }
        if self.quorum:
            arguments.update(
                {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}
            )
        return self.typed(arguments)

    def task_queue_arguments(self) -> dict[str, Any]:
        return self.dead_lettering(self.dead_queue)

    def retry_queue_arguments(self, ms: int) -> dict[str, Any]:
        return queue_arguments(self.dead_lettering(self.queue), ms)

    def record_queue_arguments(self) -> dict[str, Any]:
        """Always classic: a consumer's record queue is new with each connection, and on
        RabbitMQ 3.10 a quorum queue younger than about 3 minutes does not come back
        from a node crash (its Ra name registry is saved every 3 minutes)."""
        return LeaseRecords.queue_arguments(self.lease_ms, self.queue)

    @property
    def defer_seconds(self) -> float:
        """How long a copy of a task still running in this worker waits before it comes
        back (:meth:`RabbitMQConsumer._defer_running`): a lease, and a second at least."""
        return max(1.0, self.settings.lease_seconds)

    def declare(self, channel: Any, dead_queue: bool = True) -> None:
        """Declare the task queue and (``dead_queue``) the dead-letter queue (idempotent)."""
        try:
            channel.queue_declare(self.queue, durable=True, arguments=self.task_queue_arguments())
            if dead_queue:
                channel.queue_declare(self.dead_queue, durable=True, arguments=self.typed())
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 406:
                raise
            # a setting, not an outage: no reconnect mends it (exit 2, a worker stops warm)
            if "inequivalent arg" not in exc.reply_text:  # a vhost's queue limit, say
                raise ConfigError(
                    f"RabbitMQ at {self._broker.address} refused to declare queue "
                    f"{self.queue!r} or {self.dead_queue!r} ({exc.reply_text}); see "
                    f"rabbitmqctl list_vhost_limits -p {shlex.quote(self._broker.vhost)}"
                ) from None
            raise ConfigError(
                f"RabbitMQ at {self._broker.address} already has queue {self.queue!r} or "
                f"{self.dead_queue!r} with other arguments ({exc.reply_text}); check "
                "DISTQ_RABBITMQ_QUEUE_TYPE, delete them (and its retry queues "
                f"{self.queue + '.retry.*'!r}, or they are used as they are until they "
                "expire an hour after their last retry) or choose another DISTQ_QUEUE"
            ) from None

    def _admin_link(self, fresh: bool = False) -> Link:
        """The transport's own connection (heartbeats off: it idles between calls)."""
        if self._admin is not None and not fresh and self._admin.is_open:
            return self._admin
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        link = Link(self._broker, 0, f"distq {self.role} admin")
        try:
            with self._broker.translated("declaring the queues"):
                if self.role != "client":  # a client only reads them: see ``stats``
                    self.declare(link.channel)
        except BaseException:
            link.close()
            raise
        self._admin = link
        return link

    def _with_admin(self, what: str, call: Callable[[Any], Any]) -> Any:
        """Run ``call(channel)`` on the admin link, reconnecting once if it went stale.

        A broker that does not answer for :data:`ADMIN_ANSWER_SECONDS` fails the call
        (the link has no heartbeats: pika waited for ever on a paused broker), without
        a reconnect: a broker that hangs would hold that one for its 15 s handshake."""
        return self._on_admin(what, lambda link: call(link.channel))

    def _on_admin(self, what: str, call: Callable[[Link], Any]) -> Any:
        """:meth:`_with_admin`, with ``call`` given the admin link itself."""
        with self._lock:
            link = self._admin_link()
            watch = AnswerWithin(link.connection, ADMIN_ANSWER_SECONDS, blocked)
            try:
                with watch:
                    return call(link)
            except PikaError:
                if watch.fired:
                    with self._broker.translated(what):
                        raise
            with self._broker.translated(what):
                link = self._admin_link(fresh=True)
                with AnswerWithin(link.connection, ADMIN_ANSWER_SECONDS, blocked):
                    return call(link)

    def hurry(self) -> None:
        self.close_seconds = HURRIED_CLOSE_SECONDS

    def describe(self) -> str:
        tls = " over TLS" if self._broker.url.startswith("amqps:") else ""
        vhost = self._broker.vhost
        where = f"{self._broker.address}{tls}" + (f" (vhost {vhost!r})" if vhost != "/" else "")
        if self.role == "master":
            return f"rabbitmq transport at {where}"
        return f"rabbitmq at {where}"

    def reply_queue(self, job_id: str) -> str:
        return f"{self.queue}.results.{job_id}"

    def producer(self, reply_to: str) -> RabbitMQProducer:
        producer = RabbitMQProducer(self, self._broker, reply_to)
        self._children.append(producer)
        return producer

    def consumer(self, consumer_id: str) -> RabbitMQConsumer:
        consumer = RabbitMQConsumer(self, self._broker, consumer_id)
        self._children.append(consumer)
        return consumer

    def handed_out_elsewhere(self, asker: RabbitMQConsumer) -> set[bytes]:
        """The bodies the consumers of this process other than ``asker`` have handed out
        to their slots or recorded (see :meth:`RabbitMQConsumer._defer_running`), read
        once per fetch: once per task, 16 slots cost 155 µs a task (diff19)."""
        out: set[bytes] = set()
        for child in list(self._children):
            if child is not asker and isinstance(child, RabbitMQConsumer):
                bodies = child.handed_out()
                if bodies is None:  # changed under the read: read again
                    bodies = child.handed_out() or set()
                out |= bodies
        return out

    def counting(self, connection: Any) -> bool:
        """Whether the task queue counts deliveries: a quorum queue, by
        ``DISTQ_RABBITMQ_QUEUE_TYPE`` or by the vhost's default queue type. Asked of the
        broker once, on ``connection`` (:func:`~distq.transport.rabbitmq_dead.counts_deliveries`):
        a consumer took a vhost's quorum queue for one only once a delivery carried
        ``x-delivery-count`` (RabbitMQ 3.10: from a message's first redelivery), and its
        hand-backs until then requeued, each counted, a task dead-lettered unrun at a
        delivery limit (rmq32)."""
        if self.quorum:
            return True
        if self._counts is None:
            arguments = self.task_queue_arguments()
            self._counts = counts_deliveries(connection, self.queue, arguments)
        return self._counts

    def forget(self, child: RabbitMQProducer | RabbitMQConsumer) -> None:
        with contextlib.suppress(ValueError):
            self._children.remove(child)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Peek: ``basic_get`` up to ``limit`` (at most :attr:`most_peeked` messages)
        without acking, then requeue them all.

        A nack with ``requeue=True`` puts messages back at their original positions, so
        the order is kept; while the peek lasts (until it returns), other readers do not
        see them. A pack of tasks the broker dead-lettered whole is a letter per task.
        """
        limit = min(limit, self.most_peeked)
        if limit <= 0:
            return []
        read = partial(peek, queue=self.queue, dead_queue=self.dead_queue, limit=limit)
        result: list[DeadLetter] = self._on_admin("reading dead letters", read)
        return result

    def requeue_dead(self, limit: int | None, revive: Revive = original_body) -> int:
        """Take letters (``basic_get``), publish their tasks, confirm, then ack the letters.

        As the only reader of the dead letters (:mod:`distq.transport.rabbitmq_dead`): a
        peek's letters, held unacked while it reads, are back, and counted in "all there
        now" (``limit`` None), which it counts once it reads alone.

        A failure before the ack hands the letters back (nack, or the broker requeues
        them when the connection dies): one whose task was published already is put back
        twice, never lost. A stale admin connection is replaced once; a broker silent for
        :data:`ADMIN_ANSWER_SECONDS` fails the call (:meth:`_with_admin`). A pack of tasks the
        broker dead-lettered whole goes back as a message per task, each counted.
        """
        moved = [0]
        move = partial(
            requeue,
            queue=self.queue,
            dead_queue=self.dead_queue,
            limit=limit,
            revive=revive,
            moved=moved,
            declare_queue=partial(self.declare, dead_queue=False),
        )
        try:
            self._on_admin("requeueing dead letters", move)
        except TransportError as exc:
            if hasattr(exc, "moved"):  # a refusal part-way: said so already, with the count
                raise
            with counting_moves(moved):  # cut off part-way: say how many moved, as Redis
                raise
        return moved[0]

    def forget_orphans(self, reply_to: str) -> int:
        """As the only reader of the dead letters (:mod:`distq.transport.rabbitmq_dead`):
        ``basic_get`` the messages there when it starts, oldest first (at most
        :attr:`most_peeked`, as a peek: RabbitMQ puts tens of thousands back only over
        minutes), ack each orphan of ``reply_to`` (a letter a worker published, a message
        of its own), and put every other message back with one nack, which requeues each
        at its original position. A failure (or the connection lost) puts back what was
        not acked: nothing but orphans is ever removed.

        Not on quorum queues (``DISTQ_RABBITMQ_QUEUE_TYPE=quorum``, or a dead-letter
        queue of a vhost whose default type is quorum): each letter taken and put back
        counts as a delivery there, and a delivery limit (RabbitMQ 4's default is 20)
        then drops letters that are not orphans (diff16)."""
        if self.quorum:
            return 0
        forget = partial(
            remove_orphans,
            queue=self.queue,
            dead_queue=self.dead_queue,
            reply_to=reply_to,
            most=self.most_peeked,
        )
        removed: int = self._with_admin("removing a master's orphaned dead letters", forget)
        return removed

    def ping(self) -> None:
        """One passive declare of the task queue: not :meth:`stats`'s retry queues."""
        self._with_admin("checking the task queue", self._declare_passively)

    def _declare_passively(self, channel: Any) -> None:
        channel.queue_declare(self.queue, passive=True)

    def stats(self) -> QueueStats:
        """``ready`` and ``dead`` from passive declares; ``in_flight`` is partial.

        ``ready`` counts the task queue and the retry queues of distq's backoff schedule
        (:data:`~distq.transport.rabbitmq_retries.RETRY_DELAYS_MS`): retries waiting out
        their delay, as on the other transports; and that of :attr:`defer_seconds`, where
        copies wait out a lease (``Q.retry.5000`` with the default lease was counted
        nowhere). AMQP does not report unacknowledged
        counts (only the management plugin does), so ``in_flight`` counts the deliveries
        held by this process's consumers. A queue that does not exist holds nothing: a
        client (``distq status``) declares none, as one it declared would have the
        caller's ``DISTQ_RABBITMQ_QUEUE_TYPE``: workers of the other type would then fail
        to declare it (``PRECONDITION_FAILED``) until it was deleted by hand. A master
        (its metrics sample every ``DISTQ_STATS_SECONDS``, its wait for workers) declares
        the retry queues as its workers do: asked passively, each not there closed a
        channel (8 a sample, 4 ms of the master's CPU and 5 of the broker's); one made
        otherwise, or that its user may not declare, is asked passively (see ``declared``).
        """

        def counts(channel: Any) -> tuple[int, int, int]:
            waits = retry_queues(self.queue, delay_ms(self.defer_seconds))
            queues = (self.queue, self.dead_queue, *waits)
            made = self._made_retry_queues
            tasks, dead, *retries = declared(channel.connection, *queues, making=made)
            ready = sum(int(q.message_count) for q in (tasks, *retries) if q is not None)
            consumers = int(tasks.consumer_count) if tasks is not None else 0
            return ready, int(dead.message_count) if dead is not None else 0, consumers

        ready, dead, consumers = self._with_admin("reading queue counts", counts)
        held = sum(c.held for c in list(self._children) if isinstance(c, RabbitMQConsumer))
        return QueueStats(
            ready=ready, in_flight=held, dead=dead, consumers=consumers, in_flight_known=False
        )

    def close(self) -> None:
        """Close every producer and consumer still open, then the admin connection.

        Call it after the threads using them are done: pika is not thread-safe. Within
        :data:`CLOSE_SECONDS` for the admin link, at once after a producer's close got no
        answer (:attr:`unanswered`).
        """
        for child in list(self._children):
            child.close()
        seconds = 0.01 if self.unanswered else self.close_seconds
        # a sampler thread may be stuck in an admin call to a hung broker (no heartbeats
        # there), holding the lock: then the admin link is left to the ending process
        if not self._lock.acquire(timeout=seconds):
            return
        try:
            if self._admin is not None:
                self._admin.close(seconds)
                self._admin = None
        finally:
            self._lock.release()


class RabbitMQProducer(Producer):
    """A master's link: publishes tasks, consumes its durable, self-expiring reply queue."""

    def __init__(self, transport: RabbitMQTransport, broker: Broker, reply_to: str) -> None:
        self.reply_to = reply_to
        self._transport = transport
        self._broker = broker
        self._results: deque[tuple[int, bytes]] = deque()
        self._ack_tag: int | None = None  # the newest result returned, not yet acked
        self._acked = 0  # the newest delivery tag acked or about to be
        self._held = 0  # tasks the broker confirmed on earlier links (see reconcile)
        self._cancelled = False  # the broker cancelled our consumer: the reply queue went
        self._packs: deque[tuple[int, int]] = deque()  # (message number, tasks in it - 1)
        self._extra = 0  # confirmed messages' tasks beyond one per message
        self._stop: threading.Event | None = None  # see stop_waiting_on
        self._link = self._connect()[0]

    def _connect(self) -> tuple[Link, bool]:
        """A new link consuming the reply queue, and whether that queue was there already."""
        link = Link(self._broker, _PRODUCER_HEARTBEAT, f"distq master {self.reply_to}")
        try:
            with self._broker.translated(f"declaring reply queue {self.reply_to!r}"):
                existed = exists(link.connection, self.reply_to)
                channel = link.channel
                self._transport.declare(channel)
                ttl = round(self._transport.settings.master_ttl * 1000)
                # classic by name: a vhost whose default queue type is quorum made it a
                # quorum queue (the README says always classic)
                arguments = {"x-expires": ttl, "x-queue-type": "classic"}
                if existed:  # taken as it is: made again meanwhile otherwise (an older
                    # distq's quorum queue), ours was refused (406), reconnecting for ever
                    channel.queue_declare(self.reply_to, passive=True)
                else:
                    channel.queue_declare(self.reply_to, durable=True, arguments=arguments)
                channel.basic_qos(prefetch_count=_REPLY_PREFETCH)
                channel.add_on_cancel_callback(self._on_cancelled)
                channel.basic_consume(self.reply_to, self._on_result, auto_ack=False)
        except BaseException:
            link.close()
            raise
        # delivery tags are the channel's: what the old one had buffered comes again
        self._results.clear()
        self._ack_tag, self._acked, self._cancelled = None, 0, False
        self._packs.clear()  # message numbers are the link's
        self._extra = 0
        return link, existed

    def _on_cancelled(self, _frame: Any) -> None:
        self._cancelled = True

    def reconcile(self) -> int:
        """The tasks confirmed so far; after a lost connection, reconnect first.

        A reply queue found missing on reconnecting means a new or reset node, or a
        master away longer than its queue lives (its tasks were dead-lettered): then
        none is held and the master submits every outstanding task again.
        """
        if self._alive():
            try:
                # a publish not confirmed yet is not lost: counting it so would submit
                # its task again (a duplicate run); wait for every confirm first
                confirmed = self._link.wait_for_confirms(self._stop)
            except PikaError:
                pass  # the link went meanwhile: reconnect below
            else:
                if not confirmed:  # stopping, the broker silent: no reconnecting now
                    raise TransportError(
                        f"RabbitMQ at {self._broker.address}: stopped while "
                        f"{counted(self._link.unconfirmed, 'message')} awaited the broker's confirm"
                    )
                if not self._link.failed:
                    self.lapsed = False
                    return self._held + self._confirmed_tasks()
        # a lost link, or one whose publish the broker refused or returned (its queue
        # deleted, a length limit): the broker keeps the prefix it confirmed before that;
        # a new link declares the task queue again, and the master submits the rest again
        held = self._held + self._confirmed_tasks()
        self._link.close()
        self._link, existed = self._connect()
        self._held = held if existed else 0
        self.lapsed = not existed  # or a node new or reset: then no letter names it
        return self._held

    def _confirmed_tasks(self) -> int:
        """Tasks in the messages confirmed on this link (a prefix: confirms are in order)."""
        confirmed = self._link.confirmed
        while self._packs and self._packs[0][0] <= confirmed:
            self._extra += self._packs.popleft()[1]
        return confirmed + self._extra

    def _alive(self) -> bool:
        try:
            self._link.check_open()
            self._link.connection.process_data_events(time_limit=0)
        except PikaError:
            return False
        return self._link.is_open and not self._cancelled

    def _on_result(self, _channel: Any, method: Any, props: Any, body: bytes) -> None:
        tag = method.delivery_tag
        if props.type == _PROBE_TYPE:  # a worker checking that we are here: nothing to hand up
            if not self._results and tag > self._acked:
                self._ack_tag = self._acked = tag  # acked with the next call, with the rest
            return
        if props.type == RESULTS_TYPE:  # at most a worker's batch: else handed up whole
            results = packed(body, MAX_PREFETCH)
            if results is not None:
                self._results.extend((tag, result) for result in results)
                return
        self._results.append((tag, body))  # the master reports it malformed

    def submit(self, bodies: Sequence[bytes]) -> None:
        """Publish and return; confirms are counted while results are awaited.

        Many tasks go packed, several to a message (:mod:`distq.transport.rabbitmq_packs`).
        Waits only when more than ``_CONFIRM_WINDOW`` publishes are unconfirmed. A task
        the broker refuses or cannot route raises :class:`TransportError` from this or
        a later call; a lost connection does too, so no task vanishes unnoticed.
        """
        with self._broker.translated("submitting tasks"):
            queue, link = self._transport.queue, self._link
            link.check_open()
            for chunk in chunks(bodies, self._transport.pack_bytes):
                if len(chunk) == 1:
                    link.publish(queue, chunk[0], mandatory=True)
                else:
                    link.publish(queue, pack(chunk), mandatory=True, properties=_PACKED_TASKS)
                    self._packs.append((link.sequence, len(chunk) - 1))
                if link.unconfirmed > _CONFIRM_WINDOW:
                    link.confirm(keep=_CONFIRM_WINDOW // 2)
            self._ack_results(flush=False)  # rides in the same write as the tasks
            link.send()
            link.check()

    def flush(self) -> None:
        with self._broker.translated("confirming tasks"):
            self._link.check_open()
            self._link.confirm()

    def results(self, max_count: int, timeout: float) -> list[bytes]:
        """Result bodies, oldest first.

        Acked (cumulatively) on the next call, after the tasks submitted meanwhile: the
        ack stays off the round trip, and the master dedupes a result seen twice.
        """
        with self._broker.translated("receiving results"):
            self._link.check_open()
            self._ack_results(flush=True)
            got = _receive_until(self._link.connection, self._results, max_count, timeout)
            if got:  # everything older is in ``got`` too, so one cumulative ack suffices
                tag = got[-1][0]
                if self._results and self._results[0][0] == tag:
                    tag -= 1  # part of that message is still to be returned: not yet
                if tag > self._acked:
                    self._ack_tag = self._acked = tag
            self._link.check()
        return [body for _, body in got]

    def _ack_results(self, flush: bool) -> None:
        if self._ack_tag is None:
            return
        if flush:
            self._link.channel.basic_ack(self._ack_tag, multiple=True)
        else:
            self._link.fast.ack(self._ack_tag, multiple=True)
        self._ack_tag = None

    def close(self) -> None:
        """Delete the reply queue (best effort: x-expires is the fallback) and disconnect,
        within :data:`CLOSE_SECONDS` in all: a broker that did not answer the delete
        (paused, cut off) is not waited for again to close (6 s, twice the bound)."""
        self._close(delete=True)

    def close_answered(self) -> None:
        """Disconnect, the reply queue left to its x-expires: see the base class. After a
        broker restart, copies of a job's last tasks (most likely handed back by a worker,
        the ack of their original lost with its link) were dead-lettered "its master is
        gone" as the job ended, every result in (test_rabbitmq_cancel_faults)."""
        self._close(delete=False)

    def _close(self, delete: bool) -> None:
        self._transport.forget(self)
        seconds = self._transport.close_seconds
        by = time.monotonic() + seconds
        answered: bool | None = None  # not asked: the link was lost, or refused the delete
        if delete and self._link.is_open:
            with contextlib.suppress(*PikaError):
                answered = self._link.fast.queue_delete(self.reply_to, seconds)
        self._link.close(max(0.01, by - time.monotonic()))
        if answered is not None:  # unanswered: nor will the transport's admin link be;
            # answered: the broker is back (a cut healed), its closes waited for again
            self._transport.unanswered = not answered

    def stop_waiting_on(self, stop: threading.Event) -> None:
        """:meth:`reconcile`'s wait for confirms ends (TransportError) once ``stop`` is set."""
        self._stop = stop


class RabbitMQConsumer(Consumer):
    """A worker thread's link: ``basic_consume`` with ``basic_qos`` prefetch, manual acks."""

    #: a settle made again connects again (see _linked): the results of tasks done go,
    #: recorded tasks keep their records; a stopping worker's drain waits for the broker
    #: (it exited with "0 ok", its tasks' results dropped, rmq18b)
    resettles = True

    def __init__(self, transport: RabbitMQTransport, broker: Broker, consumer_id: str) -> None:
        # a suffix per connection: its lease-record queue is its own (see rabbitmq_holds)
        self.consumer_id = f"{consumer_id}.{secrets.token_hex(3)}"
        self._transport = transport
        self._broker = broker
        self._buffer: deque[Delivery] = deque()  # tasks received, not handed out yet
        self._held = HeldMessages()  # delivered by the broker, not yet acked or nacked
        self._retries = RetryQueues(transport.queue, transport.retry_queue_arguments)
        self._tag: str | None = None  # the current basic_consume
        self._window = PrefetchWindow(transport.settings.prefetch)  # the consumer's prefetch
        self._current: set[int] = set()  # held messages that count against that window
        self._seen: dict[int, float] = {}  # held message -> when a heartbeat first saw it
        # tasks in the last message received; until one came, assume packs (no hoarding)
        self._per_message = TASKS_PER_MESSAGE
        # tasks a message holds, as the window counts them: see _received
        self._message_tasks = float(TASKS_PER_MESSAGE)
        self._records: LeaseRecords | None = None  # long tasks' leases, off the channel
        self._split_after = 0.0  # no splitting a pack before (see fetch)
        self._short = False  # the last fetch wanted fewer tasks than a pack holds
        self._last_want = 0  # the tasks the last fetch asked for
        self._said_letters_refused = False
        self._lost = LostTasks(transport.running_lost)  # tasks of a lost link (_linked)
        self._relink_after = 0.0  # no new link tried before (see _linked)
        self._opener = threading.get_ident()  # the slot's thread (see fetch); not the keeper's
        self._try: Try | None = None  # a try to connect afresh, under way or not taken yet
        self._again: set[object] = set()  # redelivered tasks not handed out yet
        # tasks of messages the broker requeued (flagged redelivered), not handed out yet:
        # they go behind the queue's other tasks (see _move_behind)
        self._requeued: set[object] = set()
        # whether the queue counts deliveries (a quorum queue's x-delivery-count): see
        # _give_back
        self._counting = transport.quorum
        self._link = self._open_link()

    def _open_link(self) -> Link:
        """A connection and channel for this consumer, the queues declared on it."""
        heartbeat = max(1, round(self._transport.settings.lease_seconds))
        link = Link(self._broker, heartbeat, f"distq worker {self.consumer_id}")
        try:
            with self._broker.translated("declaring the queues"):
                self._transport.declare(link.channel)  # a reconnect heals a deleted queue
                if self._transport.counting(link.connection):
                    self._counting = True
                link.channel.add_on_cancel_callback(self._on_cancelled)
        except BaseException:
            link.close()
            raise
        return link

    def _linked(self) -> None:
        """Connect again if the link was lost (a broker restart, a network cut) while a
        slot runs a batch: the keeper calls this at each heartbeat (and hand-back) until
        the broker answers, and the slot's own settle, release and reply-queue check do.

        The connection is made in a thread of its own (:meth:`_new_link`): the keeper
        waits for it 0.5 s at most, once a pause for all slots, and uses it once made (it
        serves every slot and enforces their time limits: a frozen broker, which takes
        TCP connections and never answers, held it 3 s a slot, rmq18); the slot's own
        calls (from the thread that fetches) wait for it (a settle that failed handed
        the batch back, its records left to expire, its results dropped).

        The lease records then live on (renewed on the new link, within their two leases
        of life), and so do the results of the tasks in them. Before, a slot in a long
        task kept its broken link until the task ended: nobody renewed the records, they
        expired into the task queue, every long task in progress ran again in full, and
        the first runs' results were dropped (faults17: 4 tasks of 30 s, a 5 s broker
        restart, 8 runs, 62 s). The messages the old link held unacknowledged went back
        to the queue with it: their tasks are *lost* here, and nothing is acked for them;
        the result of one done is still sent (late, as on Redis; the master keeps one),
        nothing of one that failed (the copy's own run decides: see
        :func:`~distq.transport.rabbitmq_copies.results_only`). Until then a copy another
        slot of this worker gets waits (:meth:`_defer_running`).

        A channel the broker closed for a reason of its own (a message over its
        ``max_message_size``) is not reopened:
        :meth:`~distq.transport.rabbitmq_link.Link.check_open` raises it.
        """
        if self._link.is_open or closed_by_broker(self._link.channel) is not None:
            return
        link = self._new_link(wait=threading.get_ident() == self._opener)
        if link is None:  # the keeper's: a try under way, or a pause after a failed one
            self._link.check_open()  # raises: the connection was closed
            return
        self._link.close()
        self._link = link
        buffered = {delivery.tag for delivery in self._buffer}
        self._lost.mark({t: b for t, b in self._held.bodies().items() if t not in buffered})
        self._held.clear()
        self._buffer.clear()
        self._again.clear()
        self._requeued.clear()
        self._current.clear()
        self._seen.clear()
        self._tag = None
        self._window = PrefetchWindow(self._transport.settings.prefetch)  # no basic_qos yet
        self._retries.forget()  # a broker restarted empty has none
        if self._records is not None:
            self._records.bind(*self._record_io(link), unsure=True)

    def _new_link(self, wait: bool) -> Link | None:
        """A link connected afresh by a try in a thread of its own
        (:class:`~distq.transport.rabbitmq_link.Try`), one try at a time; its error raised
        here. With ``wait`` (the slot), a try made now, waited for: one under way is waited
        for until it is :data:`_TRY_TRUSTED` old, then left to end unused, and one that
        failed is not taken for an answer (it failed while the broker was away: diff18b,
        diff18c). Without (the keeper), a try made at most :data:`_RELINK_PAUSE` after one
        failed, waited for up to :data:`_KEEPER_WAIT` when it starts (a broker that answers
        is back within it: the keeper's settle of a timed-out attempt failed, and the task
        ran again, diff18b), and None while it is under way."""
        tried = self._try
        if wait and tried is not None:
            tried.thread.join(max(0.0, _TRY_TRUSTED - tried.age))
            if tried.thread.is_alive() or isinstance(tried.made, BaseException):
                tried.drop()  # stale: try again, now
                self._try = None
        started = self._try is None
        if started:
            if not wait and time.monotonic() < self._relink_after:
                return None
            self._try = Try(self._open_link)
        trying = self._try
        assert trying is not None
        if wait:
            trying.thread.join()
        elif started:  # once per pause for all of a worker's slots, not 0.5 s each (diff18c)
            self._transport.keeper_wait(trying.thread)
        if trying.thread.is_alive():
            return None
        self._try, made = None, trying.made
        if isinstance(made, BaseException):
            self._relink_after = time.monotonic() + _RELINK_PAUSE
            raise made
        assert made is not None
        return made

    @property
    def held(self) -> int:
        """Tasks this consumer holds: unacknowledged (buffered or handed out) or recorded."""
        return len(self._held) + (len(self._records) if self._records is not None else 0)

    def _on_cancelled(self, _frame: Any) -> None:
        self._tag = None  # the broker cancelled us (queue deleted): consume anew, or fail

    def _on_task(self, _channel: Any, method: Any, props: Any, body: bytes) -> None:
        # a master's packs are up to its own budget: not this worker's, which may be less
        bodies = task_bodies(props.type, body)
        tag = method.delivery_tag
        headers = props.headers
        # a copy from an expired lease record is a new message, but back after a lease
        # lapsed: flagged as a requeued one is (the worker's redeliveries count it)
        redelivered = bool(method.redelivered) or bool(
            headers and (headers.get(_HANDED_BACK) or from_a_record(headers))
        )
        if headers and "x-delivery-count" in headers:
            self._counting = True  # a quorum queue (the vhost's default type, say)
        delivered = self._held.receive(tag, bodies, redelivered)
        self._buffer += delivered
        if redelivered:
            self._again.update(d.tag for d in delivered)  # maybe a copy: see _defer_running
            if method.redelivered:  # the broker's requeue: maybe it ended its worker
                self._requeued.update(d.tag for d in delivered)
        self._per_message = len(bodies)
        self._received(len(bodies))
        if method.consumer_tag == self._tag:
            self._current.add(tag)

    def _received(self, tasks: int) -> None:
        """Count a message of ``tasks`` in the estimate that sizes the window: up at once
        (a window too large hoards), down by a quarter of the difference. The last
        message's count swung it: packs of 32 with a split's message of 8 among them
        resized a 128-task batch's window 4 -> 16 -> 4 messages, 8 to 15 times a
        20,000-task job of two workers."""
        estimate = self._message_tasks
        self._message_tasks = max(float(tasks), estimate - (estimate - tasks) / 4)

    def fetch(self, max_count: int, timeout: float) -> list[Delivery]:
        """Tasks pushed by the broker, at most ``min(max_count, prefetch)`` at a time."""
        # the slot's thread: only it fetches. A slot goes on in a new thread after a time
        # limit, and that one's settle was taken for the keeper's (see _linked, diff18b)
        self._opener = threading.get_ident()
        want = max(1, min(max_count, self._transport.settings.prefetch))
        with self._broker.translated("fetching tasks"):
            self._link.check_open()  # not pika's bare ValueError on a closed connection
            if len(self._buffer) < want:
                self._size_window(want)
            got = _receive_until(self._link.connection, self._buffer, want, timeout)
            got, behind = self._checked(got, want)
            if behind:  # all went behind: wait on for others, as for an empty queue
                got = self._after_move(want, time.monotonic() + timeout)
            # a mixed job: a pack still buffered counts though a smaller message came
            # after it (the last message's count alone kept 30 tasks from idle workers)
            buffered, packed = self._buffer, self._per_message
            if want >= packed and len(buffered) > want:
                packed = max(packed, self._held.most_of_one_message(buffered))
            short, was_short = want < packed, self._short
            # an empty fetch (idle before a job) is no sign of slow tasks: it made the
            # first task's fetch split its pack, 31 tasks back one per message a worker
            self._short = short and bool(got)
            # one short fetch is no sign of slow tasks: after whole packs, one slow batch
            # of fast tasks (a process preempted for 40 ms; its split sent a 4,096-task
            # buffer back one task per message); as a slot's first, one task before any
            # ran (31 of its pack sent back one per message, that the next fetch of fast
            # tasks takes whole). A second in a row splits; until then a slow task's
            # neighbours wait for it at most a heartbeat, whose hand-back sends them back.
            # A slot whose prefetch is under a pack's never takes one whole: no waiting
            # for that (DISTQ_PREFETCH=1 held 31 tasks from idle workers a task long)
            # A slot whose batch grows (a worker's start: 1, 7, 14, 29 tasks after a slow
            # first task) takes its buffer whole soon: each of those split its pack, 50 to
            # 100 tasks of a 500-task job sent back. Only a fetch no larger than the last
            # splits. ``whole`` is judged by the buffered pack (``packed``): by the last
            # message's count, a single after it, DISTQ_PREFETCH=8 held 31 a slow task long
            whole = self._transport.settings.prefetch >= packed
            growing, self._last_want = want > self._last_want, want
            split = short and ((was_short and not growing) or not whole)
            if self._buffer and split and time.monotonic() >= self._split_after:
                # a slot taking fewer tasks than a pack holds runs slow ones: the rest of
                # the pack goes back in messages of what it takes, for idle workers. What
                # the broker refuses (a full queue) stays here, and runs in this slot
                rest = sorted(tags_of(self._buffer, int, "rabbitmq"))
                try:
                    kept = self._give_back(rest, whole=False, per_message=want)
                except BaseException:
                    self._put_back(got)  # the fetch fails: none of them is handed out
                    raise
                self._buffer.clear()
                if kept:
                    self._buffer.extend(kept)
                    self._split_after = time.monotonic() + _SPLIT_PAUSE_S
            return got

    def answers(self, timeout: float) -> float | None:
        """A ``basic_qos`` round trip: :meth:`fetch` only waits for what the broker
        pushes, and a paused broker pushes nothing, as an idle queue does, until the
        heartbeats time out (pika checks them every lease plus 5 s: 10 to 20 s of a
        pause with the default lease, docs23 M1). Sent without waiting on pika's
        blocking call, which a paused broker held for as long, and a stop with it (and
        the connection closed under that call by the stopping worker raised in pika,
        idle24): its answer is taken by this call or, later, by any that processes the
        connection's events. The qos changes nothing: the consumer running keeps the
        prefetch it started with, and the next ``basic_consume`` comes after a
        ``basic_qos`` of its own (:meth:`_size_window`)."""
        link = self._link
        with self._broker.translated("asking the broker for an answer"):
            link.check_open()
            if link.asked is None:
                link.asked = time.monotonic()
                window = max(1, self._window.size)
                check_channel(link.channel).basic_qos(prefetch_count=window, callback=link.answered)
            deadline = time.monotonic() + timeout
            while link.asked is not None and (left := deadline - time.monotonic()) > 0:
                link.connection.process_data_events(time_limit=left)
        return link.asked

    def _drop_done(self, got: list[Delivery]) -> list[Delivery]:
        """``got`` but the copies of tasks done on a lost link (see
        :func:`~distq.transport.rabbitmq_copies.results_only`), which are acked instead:
        their results went."""
        copies = self._transport.done_copies
        # redelivered, or not (a lease record expired into the queue is a new message)
        done = [d for d in got if copies.take(d.body)]
        if not done:
            return got
        try:
            return self._acked_out(got, done)
        except BaseException:
            # not acked: the broker gives them back with the link, still done (forgotten,
            # the copy given back ran a second time, its result sent already)
            copies.add(d.body for d in done)
            raise

    def _acked_out(self, got: list[Delivery], taken: list[Delivery]) -> list[Delivery]:
        """``got`` but ``taken``, settled here (their messages acked once all their tasks
        are): a copy acked unrun, or one published to wait (:meth:`_defer_running`)."""
        tags = self._tags_of(taken)
        acks = self._held.settle(tags)
        if acks:
            self._finish(acks, self._link.channel.basic_ack)
        dropped = set(tags)
        return [d for d in got if d.tag not in dropped]

    def _defer_running(self, got: list[Delivery]) -> list[Delivery]:
        """``got`` but the copies of tasks that still run in this worker on a lost link
        (:func:`~distq.transport.rabbitmq_copies.running_copies`), which go back to the
        task queue after ``transport.defer_seconds`` through a retry queue, published before
        they are acked. Back later, such a copy is acked unrun once its original's result
        went (:meth:`_drop_done`: the original's settle found it in ``transport.deferred``),
        and runs if the original failed."""
        transport, again = self._transport, self._again
        elsewhere = partial(transport.handed_out_elsewhere, self)
        copies = running_copies(got, again, transport.running_lost, transport.deferred, elsewhere)
        # no stale tags (a copy acked unrun, a pack split): each left one more fetch here
        self._again = {tag for tag in again if tag in self._held} - {d.tag for d in got}
        if not copies:
            return got
        self._retries.publish(self._link, transport.defer_seconds, (d.body for d in copies))
        self._link.confirm()
        transport.deferred.add(d.body for d in copies)
        return self._acked_out(got, copies)

    def _move_behind(self, got: list[Delivery], want: int) -> list[Delivery]:
        """``got`` but the tasks of messages the broker requeued, which are published
        again to the queue's tail in messages of at most
        ``want`` tasks (a pack's most), confirmed before their messages are acked
        (:meth:`_give_back`): the queue's other tasks run first.

        The broker puts a message back at the head of the queue, at once, when the
        connection that held it drops: a task that ends its worker's process each time it
        runs (``os._exit()``, a crash in C code, the OOM killer) came back first to each
        worker that started, which took it and ended, and no other task ran (8 restarts
        of a worker ran none of 6 tasks queued after it). In messages of what the slot
        takes, as a split does (see :meth:`fetch`): a worker that starts takes one task,
        and a pack whose first task ended its worker comes back apart, that task alone
        at its head; a busy worker's hand-back (a nack: requeued, flagged redelivered)
        that a slot taking whole packs gets stays a pack.
        Published again, each is flagged as handed back, read as redelivered (its
        original may still run in a slot that lost its link: see :meth:`_defer_running`),
        and runs when it comes back, unless the broker requeues it again. Those the
        broker refuses (a full queue) run here, as before. Not a task a slot of this
        process handed back by a requeue (a release, a heartbeat's hand-back: never run):
        it stays at the head, as a release puts it (another worker's slot sends it
        behind)."""
        held, ours = self._held, self._transport.handed_back
        # only what the fetch got, whose copies of tasks done or still running here were
        # taken out: a buffered copy of one went to the tail unchecked, and another worker
        # ran it beside its original. The buffered ones go with the fetches that get them
        requeued, got_tags = self._requeued, {d.tag for d in got}
        self._requeued = {tag for tag in requeued if tag in held and tag not in got_tags}
        moving = [
            d
            for d in got
            if d.tag in requeued and d.tag in held and not (ours and ours.take(d.body))
        ]
        if not moving:
            return got
        tags = sorted(tags_of(moving, int, "rabbitmq"))
        moved = set(tags)
        # no pack over what a worker takes as one (more is one malformed body)
        kept = self._give_back(tags, whole=False, per_message=min(want, TASKS_PER_MESSAGE))
        self._buffer.extendleft(reversed(kept))
        return [d for d in got if d.tag not in moved]

    def _after_move(self, want: int, until: float) -> list[Delivery]:
        """What :meth:`fetch` takes after it sent all it got behind (:meth:`_move_behind`):
        the tasks that come until ``until``. Returned empty, the fetch of a slot waiting
        for a task another slot or worker handed back (a close requeues it) ended before
        its timeout, with the task published again for it to take."""
        while (left := until - time.monotonic()) > 0:
            got = _receive_until(self._link.connection, self._buffer, want, left)
            got, _ = self._checked(got, want)
            if got:
                return got
        return []

    def _put_back(
        self,
        taken: list[Delivery],
        again: Collection[object] = (),
        requeued: Collection[object] = (),
    ) -> None:
        """A fetch failed after it took ``taken`` from the buffer (a copy's ack, a
        deferral's or a split's publish or confirm, on a link that died or a broker that
        returned it): those still held go back to the buffer's front, as they came, with
        the marks they had (among ``again``, ``requeued``, the sets before the fetch
        changed them), and tasks a failed split released leave it.
        Left out, they were held, never handed out nor settled: on a link that lived on,
        no fetch handed them out, the heartbeat kept them in lease records, until the
        consumer closed; after a reconnect they counted among the tasks that still ran on
        the lost link, and every copy of them was deferred for as long as the consumer
        lived."""
        held, buffer = self._held, self._buffer
        buffered = [d for d in buffer if d.tag in held]
        tags = {d.tag for d in buffered}
        back = [d for d in taken if d.tag in held and d.tag not in tags]
        buffer.clear()
        buffer += back
        buffer += buffered
        self._again.update(d.tag for d in back if d.tag in again)
        self._requeued.update(d.tag for d in back if d.tag in requeued)

    def _checked(self, got: list[Delivery], want: int) -> tuple[list[Delivery], bool]:
        """``got`` but the copies of tasks done or still running in this process
        (:meth:`_drop_done`, :meth:`_defer_running`) and the tasks the broker requeued
        (:meth:`_move_behind`), and whether ``got`` went behind whole: a fetch then waits
        on for others. None left of ``got`` as copies (deferred) is no such case: no wait
        (one waited out its fetch, each lease deferring again the copy back from its retry
        queue). Requeued tasks are looked for only among redelivered ones (in ``_again``).

        Failing, it puts those of ``got`` still held back in the buffer
        (:meth:`_put_back`), with the marks they had (redelivered, requeued), for the next
        fetch to look at again. Caught in the branches that can fail, not around every
        fetch (a try there cost a fetch of a buffered task 60 to 90 instructions more),
        and no closure here (one over ``self`` cost 250 more: a cell for it each call)."""
        transport = self._transport
        if transport.done_copies and got:
            try:
                got = self._drop_done(got)
            except BaseException:
                self._put_back(got)
                raise
        if got and (transport.running_lost or self._again or transport.deferred):
            checked, again, requeued = got, self._again, self._requeued
            try:
                got = self._defer_running(got)
                if self._requeued and got:
                    got = self._move_behind(got, want)
                    return got, not got
            except BaseException:
                self._put_back(checked, again, requeued)
                raise
        return got, False

    def handed_out(self) -> set[bytes] | None:
        """The bodies this consumer has handed out to its slot (held and not buffered, or
        recorded); None when they could not be read. Asked from another slot's thread:
        read from snapshots."""
        try:
            held = set(self._held.bodies().values())
            held.difference_update([delivery.body for delivery in list(self._buffer)])
            records = self._records
            if records is not None:
                held.update(list(records.bodies.values()))
        except RuntimeError:  # changed under the read
            return None
        return held

    def _size_window(self, want: int) -> None:
        """Consume with a ``basic_qos`` prefetch close to what the caller takes.

        A consumer's prefetch is fixed when it starts (global QoS, which could change it,
        is refused by RabbitMQ 4.3), so resizing means cancel, ``basic_qos``, consume:
        three round trips. :class:`PrefetchWindow` decides when that is worth it. The
        window counts messages: ``want`` tasks are as many messages as the estimate of
        the tasks one holds says (:meth:`_received`). What the broker pushed the old
        consumer until its Cancel-ok is kept, buffered for the slot (:meth:`_cancel`):
        pika's reject sent it back to the queue, flagged redelivered, 12 to 21 messages a
        20,000-task job of two workers.

        On a queue that counts deliveries (a quorum queue) the cancel waits up to
        :data:`_FILL_SECONDS` for the window to fill: what the broker had sent on its way
        when a cancel came went back to the queue (RabbitMQ returned it, or pika rejected
        it), a delivery counted for a task no slot took, and a few resizes of a worker's
        growing batch dead-lettered tasks unrun at a delivery limit (rmq32). A full
        window has nothing on its way.
        """
        per = max(1, round(self._message_tasks))
        free = self._window.size - len(self._current)  # the broker may still push this many
        consuming = self._tag is not None
        supply = -(-len(self._buffer) // per) + free if consuming else 0
        window = self._window.size
        size = self._window.resize(-(-want // per), supply)
        if size is None:
            return
        if consuming:
            self._link.connection.process_data_events(time_limit=0)  # buffer what arrived
            if self._counting:
                self._filled(window, time.monotonic() + _FILL_SECONDS)
            self._cancel(keep=True)
        self._consume(size)

    def _consume(self, size: int) -> None:
        """Start consuming with a ``basic_qos`` prefetch of ``size`` (no consumer runs).

        One that fails leaves none running, and :attr:`_tag` None: the next fetch
        consumes again. A ``basic_consume`` that failed after it went out, on a link that
        stays open, may have reached the broker: it is cancelled, what it was pushed
        buffered (:func:`~distq.transport.pika_internals.cancel_forgotten`). Left, it took
        tasks beside the next consumer, and each of them raised in pika (``KeyError``)."""
        channel = self._link.channel
        channel.basic_qos(prefetch_count=size)
        tag = f"ctag{channel.channel_number}.{secrets.token_hex(16)}"  # as pika names one
        try:
            channel.basic_consume(self._transport.queue, self._on_task, consumer_tag=tag)
        except BaseException:
            if self._link.is_open:
                with contextlib.suppress(*PikaError):  # the link went: the consumer with it
                    cancel_forgotten(channel, tag, self._on_task)
            raise
        self._tag, self._current = tag, set()

    def _filled(self, window: int, deadline: float) -> None:
        """Take in deliveries until the consumer's ``window`` is full, or ``deadline``; at
        once when the queue has none ready. RabbitMQ's channel returns, counted, each
        delivery it gets for a consumer it has cancelled already (RabbitMQ 3.10's
        ``rabbit_fifo_client``, issue 3729); those the queue pushed before its answer to
        the passive declare here reach the channel first and come before its Cancel-ok,
        taken in by :func:`~distq.transport.pika_internals.cancel_keeping`: only a task
        published meanwhile can still be on its way. An empty queue added the whole wait
        to each resize's fetch."""
        connection = self._link.connection
        if len(self._current) < window and not self._ready():
            return
        while len(self._current) < window:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            connection.process_data_events(time_limit=left)

    def _ready(self) -> int:
        """The tasks' messages the task queue holds ready (a round trip)."""
        declared = self._link.channel.queue_declare(self._transport.queue, passive=True)
        return int(declared.method.message_count)

    def _cancel(self, keep: bool = False) -> None:
        """Cancel the consumer :attr:`_tag`. pika rejects (requeues) the deliveries the
        broker pushed before the cancel took effect; with ``keep`` (a resize: the slot
        takes them next), or on a queue that counts deliveries, they are taken in instead
        (buffered, held), for the caller to hand out or give back: each reject counted as
        a delivery there, for a task no slot took (rmq32).

        :attr:`_tag` is None afterwards once pika has forgotten the consumer: also after a
        cancel that failed once it went out, on a link that stays open. Kept, the
        cancelled consumer's tag was taken for a consumer with room in its window (a
        resize whose ``basic_qos`` failed after its cancel, a heartbeat's cancel that
        failed): no fetch consumed again, and the slot waited for good beside the
        queue's tasks (rmq48). A cancel that failed before it went out leaves the
        consumer running, and its tag.
        """
        tag, channel = self._tag, self._link.channel
        assert tag is not None
        try:
            if keep or self._counting:
                cancel_keeping(channel, tag, self._on_task)
            else:
                channel.basic_cancel(tag)  # pika requeues those in flight
        finally:
            if tag not in channel.consumer_tags:
                self._tag, self._current = None, set()

    def heartbeat(self) -> None:
        """Service AMQP heartbeats while the slot is busy; keep no delivery for too long.

        The slot's batch runs long, so: stop consuming unless the consumer's window is
        full of what the slot runs (what the broker had pushed and the slot has not taken
        goes back to the queue, for idle workers; the next fetch consumes again) and move
        every delivery held for a lease into a lease record
        (:mod:`distq.transport.rabbitmq_holds`), renewing the records there are.

        On a queue that counts deliveries the cancel waits as a resize's does
        (:meth:`_filled`): a task published just before it, its delivery still on its way
        when the cancel came, went back counted, and at a delivery limit it was
        dead-lettered unrun (1 of 80 heartbeats in a loaded CI run, rmq32's test).
        """
        with self._broker.translated("heartbeat"):
            self._linked()
            # on a connection gone already, pika raises a bare ValueError ("Timeout closed
            # before call"): say the connection was closed instead
            self._link.check_open()
            self._link.connection.process_data_events(time_limit=0)
            # a consumer whose window is full of deliveries the slot runs gets nothing
            # more pushed: it stays (the broker still counts the slot as attached)
            full = self._window.size - len(self._current) <= 0
            if self._tag is not None and (self._buffer or not full):
                if self._counting:  # nothing on its way to the cancelled consumer
                    self._filled(self._window.size, time.monotonic() + _FILL_SECONDS)
                self._cancel()
            if self._buffer:
                rest = sorted(tags_of(self._buffer, int, "rabbitmq"))
                if not self._counting:  # requeued, maybe: see _move_behind
                    self._transport.handed_back.add(d.body for d in self._buffer)
                try:
                    kept = self._give_back(rest)  # what a full queue refused
                except BaseException:
                    # those still held stay buffered: cleared before, they were held,
                    # never handed out, and a reconnect counted them as running (their
                    # copies deferred for good)
                    self._put_back([])
                    raise
                self._buffer.clear()
                self._buffer.extend(kept)
            self._hold_long_ones()

    def _hold_long_ones(self) -> None:
        """Move into lease records the messages held a lease, and those partly settled:
        a pack whose finished tasks the keeper settled while a long one runs (the worker's
        hand-back) is acked, its open tasks in records, so a worker killed then has only
        those run again, not the whole pack (31 of 300 ran twice, diff17b)."""
        now, after = time.monotonic(), self._transport.settings.lease_seconds
        self._seen = {tag: self._seen.get(tag, now) for tag in self._held.messages}
        messages = self._held.messages
        due = sorted(
            tag for tag, seen in self._seen.items() if now - seen >= after or messages[tag].partial
        )
        if due:
            # confirmed: the acks below lose nothing
            self._lease_records().hold(self._held.take(due))
            self._finish(due, self._link.channel.basic_ack)
        elif self._records is not None and (self._records or self._records.unsure):
            self._records.renew()  # unsure: after a reconnect, the old ones out too

    def _lease_records(self) -> LeaseRecords:
        if self._records is None:
            self._records = LeaseRecords(
                *self._record_io(self._link),
                record_queue(self._transport.queue, self.consumer_id),
                self._transport.record_queue_arguments(),
                self._lost.mark,  # found gone back after a lost link: lost, as unacked ones
            )
        return self._records

    @staticmethod
    def _record_io(
        link: Link,
    ) -> tuple[Any, Callable[[str, bytes, Any], None], Callable[[], None]]:
        """What :class:`LeaseRecords` works through: ``link``'s channel, publish, confirm."""

        def publish(key: str, body: bytes, properties: Any) -> None:
            link.publish(key, body, mandatory=True, properties=properties)

        return link.channel, publish, link.confirm

    def gone(self, reply_to: Collection[str]) -> set[str]:
        """Reply queues not named like one, or that RabbitMQ does not have.

        Asked with a mandatory publish of a probe the broker returns when no queue has
        the name (and drops at once otherwise, unless the master takes it): a passive
        declare would count as using the queue and keep a dead master's queue from
        ever expiring.
        """
        prefix = self._transport.reply_prefix
        out = {name for name in reply_to if not name.startswith(prefix)}
        asked = set(reply_to) - out
        if asked:
            with self._broker.translated("checking reply queues"):
                self._linked()  # asked between a batch's tasks: its link may be a new one
                for name in asked:
                    self._link.publish(name, b"", mandatory=True, properties=_PROBE)
                out |= self._link.unroutable() & asked
        return out

    def settle(self, settlements: Sequence[Settlement]) -> None:
        self.late, self.bounced = frozenset(), {}
        if not settlements:
            return
        tags = self._tags_of(s.delivery for s in settlements)
        for s in settlements:
            if s.result is not None and not s.reply_to:
                raise ValueError(f"settlement of delivery {s.delivery.tag} has no reply_to")
        with self._broker.translated("settling tasks"):
            self._linked()  # a link lost under a long batch: connect again first
            try:
                self._settle(settlements, tags)
            except PikaError:
                # a link lost since the last call that read it: pika had not seen it go
                # (the keeper reads it at each heartbeat; the slot's settle came first),
                # the settle failed, and its results were dropped with the batch (diff18).
                # Once more on a new link (a failure after the confirm ends _settle
                # there, not here); what the first try published may come twice
                if self._link.is_open or closed_by_broker(self._link.channel) is not None:
                    raise
                self._linked()
                self._settle(settlements, tags)

    def _settle(self, settlements: Sequence[Settlement], tags: list[int]) -> None:
        """:meth:`settle` on the current link: publish, confirm, then ack."""
        self._check_records()
        transport, link = self._transport, self._link
        done: list[bytes] = []
        lost = self._lost.among(tags)
        self.late, self.bounced = frozenset(), {}
        if lost:  # their messages went back with a lost link: see results_only
            settlements, done, self.late = results_only(settlements, lost)
        outbox = Outbox(link, self._retries, transport.dead_queue, transport.reply_prefix)
        outbox.publish(settlements)  # retries and dead letters
        outbox.confirm_letters(self._letters_refused)
        outbox.publish_results(transport.pack_bytes)
        link.confirm()
        deferred = transport.deferred
        if deferred:  # done, a copy of theirs waiting (see _defer_running): none runs
            done += deferred_done(settlements, lost, deferred)
        if done:  # their results are the broker's now: a copy need not run
            transport.done_copies.add(done)
        self._ack_settled(link, settlements, tags, lost)

    def _ack_settled(
        self, link: Link, settlements: Sequence[Settlement], tags: list[int], lost: set[int]
    ) -> None:
        """Ack on ``link``, the settle's, the messages the settle of ``tags`` completes, and
        drop those tasks' lease records: what they ended with (``settlements``, confirmed)
        is the broker's."""
        try:
            acks = self._held.settle(tags)
            if acks:
                self._finish(acks, link.channel.basic_ack)
            self._drop_records(tags)
        except PikaError:
            # the link died before the acks (or the records' drop) went: the broker puts
            # these tasks back, though what they ended with is the broker's, so the settle
            # is done: their copies need not run (a lost one that failed published
            # nothing: its runs), and their records are not kept (renewed on the next
            # link, they brought a task back beside its retry, diff18c). Raised, the
            # drain's settle made again met tasks no longer held, and the worker said
            # "0 ok" of a task whose result was delivered (diff18c)
            self._transport.done_copies.add(
                s.delivery.body for s in settlements if s.delivery.tag not in lost
            )
            if self._records is not None:
                self._records.forget(tags)
        finally:
            self._lost.unmark(tags)

    def _letters_refused(self, settlements: list[Settlement]) -> None:
        """The dead-letter queue refused these dead letters (full: a length limit with
        overflow reject-publish): their tasks go back to the task queue after
        :data:`LETTER_REFUSED_DELAY` s (through a retry queue), to be dead-lettered once it
        has room, and the batch is settled (:attr:`bounced` names them). The refusal
        failed the whole batch, which went back with the connection, and the same
        message came first again: every worker on the queue reconnected once a second,
        no task behind it ran (input17); sent back at once, a task that failed for good
        ran 900 times in seconds (diff17b). Said once per consumer."""
        if not settlements:
            return
        self.bounced = dict.fromkeys((s.delivery.tag for s in settlements), LETTER_REFUSED_DELAY)
        if not self._said_letters_refused:
            self._said_letters_refused = True
            one = len(settlements) == 1
            log.warning(
                "RabbitMQ at %s: the queue %r refused %s (full? a length "
                "limit with overflow reject-publish: see `rabbitmqctl list_policies`); %s "
                "back to %r after %g s, to run again, until it takes %s",
                self._broker.address,
                self._transport.dead_queue,
                counted(len(settlements), "dead letter"),
                "its task goes" if one else "their tasks go",
                self._transport.queue,
                LETTER_REFUSED_DELAY,
                "the letter" if one else "them",
            )
        bodies = (s.delivery.body for s in settlements)
        self._retries.publish(self._link, LETTER_REFUSED_DELAY, bodies)

    def release(self, deliveries: Sequence[Delivery]) -> int:
        if not deliveries:
            return 0
        tags = self._tags_of(deliveries)
        if not self._counting:  # requeued, maybe: see _move_behind
            self._transport.handed_back.add(d.body for d in deliveries)
        with self._broker.translated("releasing tasks"):
            self._linked()
            try:  # what a full queue refused stays held: this consumer hands it out again
                kept = self._give_back(tags)
            except BaseException:
                self._lost_half_way(deliveries)
                raise
            self._buffer.extendleft(reversed(kept))
        return len(tags) - len(kept)

    def _lost_half_way(self, deliveries: Sequence[Delivery]) -> None:
        """A release failed half way (the link died, or the broker returned a publish):
        those of ``deliveries`` already out of :attr:`_held` are back in the queue or not
        for sure. Lost, as if their link went (see :meth:`_linked`): the worker puts them
        back in the batch, where their settle raised "not held" and tore a live consumer
        down (held19)."""
        records = self._records if self._records is not None else ()
        self._lost.mark(
            {
                d.tag: d.body
                for d in deliveries
                if isinstance(d.tag, int)  # tags_of checked that much already
                and d.tag not in self._held
                and d.tag not in records
            }
        )

    def _give_back(
        self, tags: list[int], whole: bool = True, per_message: int = 1
    ) -> list[Delivery]:
        """Put these tasks back in the queue: a message none of whose tasks was settled
        is nacked whole (if ``whole``); other tasks, and recorded ones, are published
        again, up to ``per_message`` of a message's to a message (recorded ones alone).

        Returns the tasks whose publish the broker refused (a queue at a length limit
        with overflow ``reject-publish``): still held, as before, for this consumer to
        hand out and run itself. Failing instead dropped the consumer, the broker
        requeued the whole message although some of its tasks were in the queue again,
        and the same refusal met it next time.

        On a queue that counts deliveries (a quorum queue) no message is nacked: each
        requeue counts as one, and at a delivery limit (a policy's; RabbitMQ 4's default
        is 20) the broker dead-letters the message, its master never answered. A few
        hand-backs of a task by stopping or busy workers dropped it so, unrun (rmq31).
        Published again, a task starts its count afresh; one that a requeue would have
        brought back, that came redelivered, or a recorded one, carries the header
        ``distq-handed-back``, read as redelivered.
        """
        self._check_records()
        link, queue = self._link, self._transport.queue
        records = self._records.bodies if self._records is not None else {}
        plan = self._held.release(tags, whole, requeue=not self._counting)
        sent: dict[int, list[Delivery]] = {}  # publish number -> its tasks
        for tag in tags:
            if tag in records:  # acked long ago; handed out (it may have run): flagged
                link.publish(queue, records[tag], mandatory=True, properties=_AGAIN)
                sent[link.sequence] = [Delivery(records[tag], tag, True)]
        # a copy from an expired lease record (its x-death is not published again) is
        # flagged as a redelivered one is: its original may still run in another slot
        suspects = plan.again | (self._again & set(tags))
        for message in regroup(plan.tasks, suspects, per_message, self._transport.pack_bytes):
            # as a requeue would, and as it came (it may have run): flagged redelivered
            again = message[0].redelivered or message[0].tag in suspects
            if len(message) > 1:
                properties = _PACKED_AGAIN if again else _PACKED_TASKS
                link.publish(
                    queue, pack([d.body for d in message]), mandatory=True, properties=properties
                )
            elif again:
                link.publish(queue, message[0].body, mandatory=True, properties=_AGAIN)
            else:
                link.publish(queue, message[0].body, mandatory=True)
            sent[link.sequence] = message
        kept: list[Delivery] = []
        if sent:  # confirmed before any ack
            refused = [task for number in sorted(link.refused(sent)) for task in sent[number]]
            link.check()  # returned (the queue deleted), or an older publish refused
            if refused:
                REFUSALS.refused(f"RabbitMQ at {self._broker.address}", queue, len(refused))
                kept = self._held.keep(plan, {task.tag for task in refused})
                kept += [task for task in refused if task.tag in records]
        if plan.ack:  # not cumulatively over the older ones being requeued
            self._finish(plan.ack, link.channel.basic_ack, also_held=plan.nack)
        if plan.nack:
            self._finish(plan.nack, link.channel.basic_nack)
        dropped = {delivery.tag for delivery in kept}
        self._drop_records([tag for tag in tags if tag not in dropped])
        self._lost.unmark(tags)  # back in the queue with their lost link
        return kept

    def _tags_of(self, deliveries: Iterable[Delivery]) -> list[int]:
        """Sorted tags, refusing any this consumer does not hold: acking a tag twice
        would close the channel."""
        tags = set(tags_of(deliveries, int, "rabbitmq"))
        records = self._records if self._records is not None else ()
        for tag in tags:
            if tag not in self._held and tag not in records and tag not in self._lost:
                raise ValueError(
                    f"delivery {tag!r} is not held by consumer {self.consumer_id!r} "
                    "(settled or released already?)"
                )
        return sorted(tags)

    def _check_records(self) -> None:
        """After a reconnect, find which lease records went before anything is published
        for their tasks: a task whose record expired into the task queue is lost (its copy
        decides). A settle on the new link came before the keeper's first renewal at
        times, published a failed task's retry while its record's copy ran too, and the
        task failed for good twice (rmq18b)."""
        if self._records is not None and self._records.unsure:
            self._records.renew()

    def _drop_records(self, tags: list[int]) -> None:
        """Drop the lease records of these tasks (their outcome is published already)."""
        if self._records is not None:
            recorded = [tag for tag in tags if tag in self._records]
            if recorded:
                self._records.drop(recorded)

    def _finish(
        self, tags: list[int], method: Callable[..., None], also_held: Sequence[int] = ()
    ) -> None:
        """Ack or nack (requeue) the messages ``tags`` (ascending, no longer held): one
        cumulative frame when no older message is held, nor in ``also_held`` (still
        on the channel, to be ended otherwise)."""
        self._current.difference_update(tags)
        top, held = tags[-1], self._held.messages
        if (not held or min(held) > top) and (not also_held or min(also_held) > top):
            method(top, multiple=True)
        else:
            for tag in tags:
                method(tag)

    def close(self) -> None:
        """Close the connection; RabbitMQ requeues every delivery still held.

        First, while the connection lives, the tasks held in messages partly settled go
        back as new messages and those messages are acked, so that the tasks settled in
        them do not run again; so do the tasks held by lease records (run past a lease),
        which otherwise came back only as their records expired, two leases later (a
        worker's cold stop said it handed them back). A connection already lost leaves
        the records to expire into the queue. On a queue that counts deliveries every
        task held goes back so (see :meth:`_give_back`): a requeue by the close counted
        as one, and a task pushed to a few stopping workers was dead-lettered unrun at a
        delivery limit (rmq31). The consumer stops first there: the acks freed its
        window, and the broker pushed it more tasks, for the close to requeue (counted);
        its cancel waits as a heartbeat's does (:meth:`_filled`), for a task on its way
        to it, which the broker returned counted once the cancel came.
        """
        if self._try is not None:  # a link a reconnect makes from now on is closed by it
            self._try.drop()
        self._transport.forget(self)
        if self._counting and self._tag is not None and self._link.is_open:
            with contextlib.suppress(*PikaError):
                self._link.connection.process_data_events(time_limit=0)  # held: given back
                self._filled(self._window.size, time.monotonic() + _FILL_SECONDS)
                self._cancel()
        partly = self._held.partly_settled() or (self._counting and len(self._held) > 0)
        records = list(self._records.bodies) if self._records is not None else []
        if (partly or records) and self._link.is_open:
            tags = self._held.tags() if partly else []
            with contextlib.suppress(*PikaError, TransportError):
                self._give_back(sorted({*tags, *records}))
        self._link.close(self._transport.close_seconds)
        self._held.clear()  # the broker requeued them when the connection closed
        self._current.clear()
        self._buffer.clear()
        self._again.clear()
        self._seen.clear()
        self._lost.clear()
        self._records = None


class PrefetchWindow:
    """When a worker's consumer should restart with another ``basic_qos`` prefetch.

    A window near the batch the worker takes keeps the backlog visible as ``ready`` and
    leaves long tasks to idle workers instead of a hoarding one. Restarting costs three
    round trips, and the batch size of fast tasks wanders (one preempted task divides
    it by ten), so: a window that must grow at least doubles, up to ``prefetch``; one
    shrinks to the batch only after ``_SHRINK_AFTER`` fetches in a row wanted a quarter
    of it or less; otherwise it stays. Only fetches that find too few deliveries
    buffered ask (:meth:`RabbitMQConsumer._size_window`): what is buffered is here anyway.
    """

    def __init__(self, prefetch: int) -> None:
        self.prefetch = prefetch
        self.size = 0  # 0: no consumer yet
        self._small = 0  # fetches in a row that wanted a quarter of the window or less

    def resize(self, want: int, supply: int) -> int | None:
        """The new prefetch for a fetch of ``want``, or None to keep the consumer.

        ``supply`` is how many deliveries the current consumer can still hand over
        (buffered plus what the broker may push); 0 when there is no consumer.
        """
        small = want <= self.size // 4
        self._small = self._small + 1 if small else 0
        if supply >= want and (not small or self._small < _SHRINK_AFTER):
            return None
        size = want
        if want > self.size:
            size = min(self.prefetch, max(want, 2 * self.size))
        self.size, self._small = size, 0
        return size
