"""The transport seam: the one small contract every broker implements.

A transport moves three kinds of message:

* tasks, from a master's :class:`Producer` to a worker's :class:`Consumer`;
* results, from a consumer back to the producer whose ``reply_to`` the task names;
* dead letters, messages taken out of circulation for good, with the reason; an
  operator reads them (:meth:`Transport.dead_letters`) and puts them back after a fix
  (:meth:`Transport.requeue_dead`).

Guarantee (the same on every transport): at-least-once delivery with leases.
A delivery handed out by :meth:`Consumer.fetch` stays leased to that consumer while it
calls :meth:`Consumer.heartbeat` at least every ``lease_seconds / 3``; if the consumer
dies (SIGKILL, lost machine) its deliveries go back to the ready queue within about
two lease periods. :meth:`Consumer.settle` publishes results, retries and dead letters
durably *before* it removes the deliveries, so a crash between the two repeats a task
and never loses one; masters drop the duplicate by task id.

Masters come and go (the same on every transport): a producer registers its reply queue
when it is made and :meth:`Producer.reconcile` renews it; a reply queue not renewed for
``Settings.master_ttl`` seconds is gone. Results addressed to a reply queue that no live
master holds are dropped (never creating one), and a worker asks :meth:`Consumer.gone`
before it runs tasks, so the tasks of a master that is gone are dead-lettered, unrun.

Broker outages: every call raises :class:`~distq.errors.TransportError` while the broker
is unreachable. A consumer is then closed and a new one made; a producer reconnects in
:meth:`Producer.reconcile`, which also says how many of the tasks submitted so far the
broker still holds, so that the master submits again what a broker restarted empty (or
from an older snapshot) lost.

Everything is batched: ``submit``, ``results``, ``fetch`` and ``settle`` take or
return many messages per broker round trip. Bodies are opaque ``bytes`` here; the
envelopes in :mod:`distq.envelope` give them meaning.

Threading: a ``Producer`` or ``Consumer`` is used by one thread at a time. A worker
with concurrency C opens C consumers.

A transport class is constructed as ``cls(settings, role)`` by
:func:`distq.transport.open_transport`, and connects (or, for a manager master, starts
listening) before it returns. ``client`` is the operating commands' role (``distq
status``, ``dead-letters``, ...): it connects as a worker does, but creates no queue
it only reads; one not there yet holds nothing.
"""

from __future__ import annotations

import abc
import contextlib
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, TypeVar

import msgspec

from distq.counts import counted
from distq.envelope import DeadLetter
from distq.errors import (
    ConfigError,
    ConnectionFailed,
    SettledThenFailed,
    SettledThenRefused,
    TransportError,
)

Role = Literal["master", "worker", "client"]

_Tag = TypeVar("_Tag")


class Delivery(msgspec.Struct, frozen=True):
    """A task body handed to a consumer, with the transport's handle to settle it.

    ``tag`` is opaque outside the transport. The one rule every consumer applies: only
    the consumer that fetched a delivery settles or releases it, and a consumer given a
    delivery whose tag is not of its own kind raises ``ValueError`` naming the tag
    (:func:`tags_of`). A transport that can tell also refuses a tag it no longer holds
    (RabbitMQ must: acking one twice closes the channel); Redis and manager accept
    it, so that a result computed after the lease ran out is still published.
    """

    body: bytes
    tag: object
    redelivered: bool = False


def tags_of(deliveries: Iterable[Delivery], kind: type[_Tag], transport: str) -> list[_Tag]:
    """The tags of ``deliveries``, each checked to be a ``kind``: see :class:`Delivery`."""
    tags = []
    for delivery in deliveries:
        tag = delivery.tag
        if not isinstance(tag, kind):
            raise ValueError(
                f"delivery tag {tag!r} was not handed out by a {transport} consumer; "
                "settle or release a delivery with the consumer that fetched it"
            )
        tags.append(tag)
    return tags


class Settlement(msgspec.Struct, frozen=True):
    """How one delivery ends; every field but ``delivery`` is optional.

    ``result`` goes to the queue ``reply_to``; ``retry`` (a new task body) is enqueued
    again after ``retry_delay`` seconds; ``dead_letter`` (an encoded
    :class:`~distq.envelope.DeadLetter`) goes to the dead-letter queue. Then the
    delivery is acknowledged.
    """

    delivery: Delivery
    reply_to: str | None = None
    result: bytes | None = None
    retry: bytes | None = None
    retry_delay: float = 0.0
    dead_letter: bytes | None = None


#: How :meth:`Transport.requeue_dead` turns a dead letter into the body it enqueues.
Revive = Callable[[DeadLetter], bytes]


def original_body(letter: DeadLetter) -> bytes:
    """The message exactly as it was dead-lettered."""
    return letter.body


@contextlib.contextmanager
def settled_already() -> Iterator[None]:
    """A block run after a settle that went through: what it raises becomes
    :class:`~distq.errors.SettledThenRefused` (a setting refused) or
    :class:`~distq.errors.SettledThenFailed`, so that the worker counts the batch settled
    (its results are out), not handed back (see :meth:`Consumer.settle_then_fetch`)."""
    try:
        yield
    except ConfigError as exc:
        raise SettledThenRefused(str(exc)) from None
    except TransportError as exc:
        raise SettledThenFailed(str(exc)) from None


def orphaned_reason(reply_to: str) -> str:
    """The reason a worker gives a task it dead-lettered unrun because no live master
    holds its reply queue ``reply_to``: also how :meth:`Transport.forget_orphans` finds
    the letters of a master that came back."""
    return (
        f"its master is gone (no live master holds reply queue {reply_to!r}: "
        "it stopped, or died and the queue lapsed); not run"
    )


def is_orphan_of(letter: DeadLetter, reply_to: str, queue: str) -> bool:
    """Whether ``letter`` is a task of ``queue`` dead-lettered unrun because the master
    holding ``reply_to`` seemed gone (:func:`orphaned_reason`)."""
    return letter.queue == queue and letter.reason == orphaned_reason(reply_to)


#: The most dead letters :meth:`Transport.forget_orphans` looks through: a master's
#: orphans are the letters its lapse made, recent ones.
ORPHANS_LOOKED_AT = 100_000
#: The longest a look for orphans goes on: the master's loop waits for it (well inside
#: the shortest time to live of a master's registration, 10 s).
ORPHANS_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class QueueStats:
    """Counts an operator cares about: waiting, leased, dead-lettered, and who takes them.

    ``consumers`` is the number of worker slots attached to the queue (a worker with
    ``--concurrency C`` has C), as far as the broker can tell. ``in_flight_known`` is
    False where the broker's protocol cannot count every lease (then ``in_flight``
    counts only this process's own). ``redelivered`` counts the tasks a worker had and
    gave up without settling (its lease lapsed: it crashed, or stalled; or it handed them
    back), waiting to run again: None where the broker cannot tell (RabbitMQ, a manager
    queue asked from another process). ``lease_left`` is the seconds until the last live
    lease holding a task of the queue lapses unless its worker renews it (a worker
    SIGKILLed holds its tasks that long): None where no live lease holds one, or the
    broker cannot tell (RabbitMQ, whose broker puts a dead worker's tasks back at once;
    a manager queue asked from another process).
    """

    ready: int
    in_flight: int
    dead: int
    consumers: int
    in_flight_known: bool = True
    redelivered: int | None = None
    lease_left: float | None = None


class Producer(abc.ABC):
    """A master's end: submits tasks and receives the results sent to ``reply_to``."""

    reply_to: str
    #: Whether the last :meth:`reconcile` found the reply queue had lapsed (the master
    #: away past its time to live: a pause, a partition) and made it again: workers may
    #: have dead-lettered its tasks meanwhile, "its master is gone"
    #: (:meth:`Transport.forget_orphans`). Not for tasks lost otherwise (a broker
    #: restarted, a publish refused).
    lapsed: bool = False
    #: Whether :meth:`withdraw` can take a task back (Redis, manager; not RabbitMQ)
    takes_back: bool = False

    @abc.abstractmethod
    def submit(self, bodies: Sequence[bytes]) -> None:
        """Enqueue task bodies.

        The broker may confirm them after this returns (RabbitMQ does, to keep the
        round trip short): a body it refuses or cannot route, or a connection lost
        first, raises :class:`~distq.errors.TransportError` from a later ``submit``,
        ``results`` or ``flush``, so no task is lost unnoticed.
        """

    def flush(self) -> None:  # noqa: B027 - a no-op where submit already waits
        """Block until the broker holds every body submitted so far, durably."""

    @abc.abstractmethod
    def results(self, max_count: int, timeout: float) -> list[bytes]:
        """Up to ``max_count`` result bodies; blocks up to ``timeout`` s for the first.

        At least once: a result whose reply was lost with the connection comes again
        from a later call (then perhaps more than ``max_count`` at once).
        """

    def submit_then_results(
        self, bodies: Sequence[bytes], max_count: int, timeout: float
    ) -> list[bytes]:
        """:meth:`submit`, then :meth:`results`, where the transport does both in one
        round trip (Redis does: a master that waits right after it submits, one task at a
        time, pays one round trip per task instead of two; an executor reads what is
        there, ``timeout`` 0, with each send). It may return before ``timeout`` with
        none, as :meth:`results` may not; the caller reads again. A
        failure raises as either call would: the bodies count as submitted as after a
        failed :meth:`submit` (:meth:`reconcile` says whether the broker has them)."""
        self.submit(bodies)
        return self.results(max_count, timeout)

    def stop_waiting_on(self, stop: threading.Event) -> None:  # noqa: B027 - optional
        """Let a long wait for the broker (:meth:`reconcile`'s) end, raising
        :class:`~distq.errors.TransportError`, once ``stop`` is set; where none can be
        long, nothing."""

    @abc.abstractmethod
    def reconcile(self) -> int:
        """Renew the reply queue (reconnecting first if the connection was lost) and say
        how many of the bodies submitted so far the broker still holds.

        The bodies passed to :meth:`submit` over this producer's life form one sequence;
        the broker holds (or has answered) a prefix of it, and this returns its length.
        Less than was submitted when the broker lost tasks (restarted empty or from an
        older snapshot, tasks never confirmed, or this master's reply queue lapsed and
        its tasks were dead-lettered): the caller submits again what it still needs,
        and the sequence goes on from that length. Call it every few seconds (well
        inside ``Settings.master_ttl``): it is what keeps the reply queue alive. Raises
        :class:`~distq.errors.TransportError` while the broker cannot be reached.
        """

    def withdraw(self, bodies: Sequence[bytes], redelivered: bool = True) -> list[bool]:
        """Take tasks submitted earlier back out of the ready queue, before any worker does.

        One answer per body: True when it was still waiting, queued or as a retry waiting
        out its delay, and is gone now (this copy will never run), False when a consumer
        has it (leased, running, settled) or the transport cannot take a message back
        (:attr:`takes_back`). Manager and Redis withdraw; RabbitMQ cannot (AMQP has no way
        to remove one message from a queue), so this default answers False for every body.
        ``redelivered=False`` leaves (False) each copy of a body queued redelivered: a
        worker had it (its lease lapsed while it stalled, or it handed it back), and the
        copy it had may still run: what an executor's ``cancel()`` may not answer True to.
        """
        return [False] * len(bodies)

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection and this producer's result queue."""

    def close_answered(self) -> None:
        """:meth:`close` once every task submitted has its result. Copies of its tasks
        may still be queued (at least once: a task handed back or redelivered across a
        lost link can be queued twice), and a worker that reaches one after a close
        dead-letters it unrun, "its master is gone", although its result is in.
        RabbitMQ, which cannot take them back (:meth:`withdraw`), leaves its reply queue
        to its ``x-expires`` (``master_ttl``) instead of deleting it: a copy that a worker
        reaches meanwhile runs, its result dropped with the queue. Redis leaves its
        registration to lapse (``master_ttl`` after its last renewal) likewise: a copy
        comes back there after the job, with no worker to take it back from, when a
        restore from a snapshot puts back an in-flight list whose lease then lapses.
        Elsewhere (manager: a copy is put back only as a lease lapses, and the original's
        settle drops it) :meth:`close`."""
        self.close()

    def abandon(self) -> None:
        """Close after the broker failed a call, with no call that would wait on it
        again: Redis makes none (its registration lapses instead); elsewhere
        :meth:`close`, whose wait is bounded (RabbitMQ's by ``CLOSE_SECONDS``) or none
        (manager's master holds its queues)."""
        self.close()


class Consumer(abc.ABC):
    """A worker's end: leases task deliveries and settles them."""

    #: Whether a settle that failed (the broker away a moment) may be made again by this
    #: consumer once the broker is back, on a connection made afresh, and reach it: its
    #: deliveries are the broker's records, not its connection's (Redis, manager), or
    #: its results go all the same and its long tasks' lease records live on (RabbitMQ,
    #: whose deliveries die with the connection: their copies decide).
    resettles: bool = False

    #: The tags of the last settle's deliveries found late: their lease had lapsed (the
    #: worker stood still past it) or their link was lost, so their tasks went back to
    #: the queue, and their retries and dead letters (with a dead letter's error result)
    #: were not published: the copies decide. Set by each :meth:`settle` and
    #: :meth:`settle_then_fetch`; a transport that never finds one late leaves it empty.
    late: Collection[object] = frozenset()

    #: The tags of the last settle's dead letters the broker refused (RabbitMQ: a full
    #: dead-letter queue, a length limit with overflow ``reject-publish``), each with the
    #: seconds after which its message is back in the queue (through a delay), to run
    #: again or be dead-lettered again; no error result went. Set by each :meth:`settle` and
    #: :meth:`settle_then_fetch` of a transport that can refuse one; empty elsewhere.
    bounced: Mapping[object, float] = MappingProxyType({})

    #: The tags of deliveries whose settle failed with no answer (a broker that stalled
    #: past the wait) and which :meth:`close` found it had settled all the same: it ran
    #: late, before the close. Their results went out once, and nothing of them goes back.
    #: Set by :meth:`close` of a transport that can tell (Redis); empty elsewhere.
    settled_late: Collection[object] = frozenset()

    #: Called, on the caller's thread, by a :meth:`settle_then_fetch` whose settle went
    #: through while it still waits for tasks (Redis: once the settle's answer is read,
    #: the BLMOVE behind it waiting), so the caller counts the batch in that wait, not
    #: on its way to the next task (issue 16). None, or a transport that never calls it:
    #: the caller counts once the call returns.
    on_settled: Callable[[], None] | None = None

    @abc.abstractmethod
    def fetch(self, max_count: int, timeout: float) -> list[Delivery]:
        """Lease up to ``max_count`` deliveries; blocks up to ``timeout`` s for the first.

        Returns an empty list on timeout so the caller regains control regularly.
        """

    def answers(self, timeout: float) -> float | None:
        """Ask the broker for an answer, for a caller that must tell an empty queue from a
        broker that does not answer (``--exit-when-idle``); wait up to ``timeout`` s for
        it. None once the broker answered; else since when (``time.monotonic()``) the
        question has gone unanswered: a later call asks nothing new, it waits for that
        answer. Raises as :meth:`fetch` would when it cannot ask. None by default: a
        fetch that asks the broker for tasks (Redis, manager) had an answer when it came
        back empty."""
        return None

    @abc.abstractmethod
    def heartbeat(self) -> None:
        """Renew the lease on every delivery this consumer holds."""

    @abc.abstractmethod
    def gone(self, reply_to: Collection[str]) -> set[str]:
        """Which of these reply queues no live master holds: its master stopped, or died
        and the queue lapsed, or no master ever made it. Its tasks are not to be run."""

    @abc.abstractmethod
    def settle(self, settlements: Sequence[Settlement]) -> None:
        """Publish results, retries and dead letters, then acknowledge the deliveries
        (see :attr:`late` for those whose lease lapsed first)."""

    def settle_then_fetch(
        self, settlements: Sequence[Settlement], max_count: int, timeout: float = 0.0
    ) -> list[Delivery]:
        """:meth:`settle`, then lease up to ``max_count`` more deliveries where the
        transport does both in one round trip; returns them. A transport may wait up to
        ``timeout`` seconds for the first when none is ready (Redis does), or not wait.
        By default it only settles and returns none: the caller fetches as usual. A
        failure raises as either call would, and leaves the settle as :meth:`settle`
        leaves it; :class:`~distq.errors.SettledThenFailed` when the settle is known to
        have gone through (the batch is settled) and what came after it failed,
        :class:`~distq.errors.SettledThenRefused` when it was refused for a setting."""
        self.settle(settlements)
        return []

    @abc.abstractmethod
    def release(self, deliveries: Sequence[Delivery]) -> int:
        """Hand unprocessed deliveries back to the front of the ready queue; how many went
        back: all of them, unless the broker refused some (RabbitMQ, a queue at a length
        limit), which this consumer keeps and hands out again from its next fetch."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the connection; deliveries still held return to the queue."""


class Transport(abc.ABC):
    """A connection to one broker and one task queue; a factory of producers and consumers."""

    name: str
    #: Whether a master process holds the queues (manager): a worker that loses it has
    #: most likely seen its job end, where a broker of its own is only away a while.
    queues_in_master = False
    #: Whether :meth:`heartbeat` renews leases over a connection of its own, so that the
    #: keeper need not wait for the consumers' threads (Redis, manager); otherwise it
    #: uses each consumer's connection, which the caller must hold (RabbitMQ).
    renews_apart = False
    #: What the master's "no worker slot is attached" line adds about how this broker
    #: counts slots (RabbitMQ's misses some that run a task): "" for nothing.
    unattached_note = ""
    #: Whether :meth:`stats` tells ``lease_left``, the seconds until the last live lease
    #: lapses (Redis, manager): beside results read, a master past its --timeout asks the
    #: counts for that alone (RabbitMQ tells none: no call).
    tells_leases = False
    #: Whether :meth:`stats`' ``dead`` counts the dead-letter queue's messages, and the
    #: broker dead-letters a pack of tasks whole, a letter per task (RabbitMQ): a count
    #: of letters read is then no part of it ("1 of 2" could be 1 of 5).
    dead_counts_messages = False

    @property
    def broker_version(self) -> str | None:
        """The broker's version as it said at connecting (RabbitMQ); None if none did."""
        return None

    def heartbeat(self, consumers: Sequence[Consumer]) -> None:
        """Renew the leases of ``consumers`` (made by this transport), from one thread.

        This default is one round trip per consumer. Redis and manager renew them all in
        one: a worker's keeper thread waits for the GIL at every round trip, and with many
        slots running Python code each wait took long enough that renewing the slots one
        by one outlasted the lease (tasks ran 2 to 7 times). There a consumer closed, or
        one whose lease lapsed and was swept, is not brought back.
        """
        for consumer in consumers:
            consumer.heartbeat()

    def hurry(self) -> None:  # noqa: B027 - optional
        """A second signal: "stop at once". The closes from then on wait for the broker
        a moment at most (RabbitMQ's: each its ``CLOSE_SECONDS``, on a paused node too);
        where no close waits for it (Redis, manager), nothing."""

    @abc.abstractmethod
    def describe(self) -> str:
        """How the start line names this connection.

        For a master: the transport, and where it listens or connects
        (``manager transport on 0.0.0.0:9000``); for a worker: what it connects to
        (``master 10.0.0.5:9000``, ``redis at 127.0.0.1:6379``).
        """

    @abc.abstractmethod
    def reply_queue(self, job_id: str) -> str:
        """The name of the result queue of a master's job, a producer's ``reply_to``."""

    @abc.abstractmethod
    def producer(self, reply_to: str) -> Producer:
        """A producer whose results arrive on the queue named ``reply_to``."""

    @abc.abstractmethod
    def consumer(self, consumer_id: str) -> Consumer:
        """A consumer named after ``consumer_id`` (unique per worker thread).

        A new consumer never takes over an earlier one's leases, even under the same
        name (a worker reconnecting, or restarted with the same ``--worker-id``): what
        that one held goes back to the queue when its lease runs out.
        """

    #: The most dead letters :meth:`dead_letters` reads at once, whatever its ``limit``;
    #: None for no bound of its own.
    most_peeked: int | None = None

    @abc.abstractmethod
    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Read (without removing) up to ``limit`` dead letters, oldest first."""

    @abc.abstractmethod
    def requeue_dead(self, limit: int | None, revive: Revive = original_body) -> int:
        """Put up to ``limit`` dead letters, oldest first, back on the task queue as
        ``revive(letter)``; return how many. At most the letters there when it starts
        (``None``: all of them): a letter that dies again meanwhile (a worker that cannot
        run it) waits for the next call, not moved twice.

        Each letter moves atomically: it leaves the dead letters only once its task is
        enqueued, so a crash (or a lost connection) never loses one; at worst a letter
        whose task was enqueued is put back twice (at-least-once, like every delivery).
        Two callers at once never move the same letter twice.
        """

    def forget_orphans(self, reply_to: str) -> int:
        """Remove the dead letters of the tasks workers dead-lettered unrun, "its master
        is gone", while the master holding ``reply_to`` was away past its time to live (a
        paused master, a long partition): it is back, and has submitted again every task
        it still waits for (its reconcile found :attr:`Producer.lapsed`), so those letters
        are copies nobody needs, which ``requeue-dead`` would run a second time.

        Looks through at most :data:`ORPHANS_LOOKED_AT` letters within
        :data:`ORPHANS_SECONDS` on Redis (the newest), the oldest 1,000 on RabbitMQ (the
        only ones a reader can take, as many as a peek holds; none on quorum queues,
        where each look counts as a delivery of every letter), all on manager (in the
        master's memory); returns how many it removed. Every transport removes them;
        this default (none) is for a transport whose masters never lapse."""
        return 0

    def dead_there(self, limit: int | None) -> int:
        """``limit`` (None: no limit), at most the dead letters there now: what a
        :meth:`requeue_dead` moves."""
        there = self.stats().dead
        return there if limit is None else min(limit, there)

    @abc.abstractmethod
    def stats(self) -> QueueStats:
        """Ready, in-flight and dead counts of this transport's queue."""

    def ping(self) -> None:
        """Raise (a :class:`~distq.errors.TransportError`) unless the broker answers: a
        worker's readiness asks this every heartbeat. :meth:`stats`, unless a transport
        has a cheaper question."""
        self.stats()

    @abc.abstractmethod
    def close(self) -> None:
        """Release every connection this transport opened."""

    def close_inherited(self) -> None:  # noqa: B027 - nothing to do for a client's
        """In a child made by fork(): close what must not stay open there (a listening
        socket) without sending anything: the connections are the parent's."""


def requeued_before(moved: int) -> str:
    """What a ``requeue_dead`` cut off part-way says it moved: "1 dead letter was requeued
    before that", not "1 dead letters were"."""
    return f"{counted(moved, 'dead letter')} {'was' if moved == 1 else 'were'} requeued before that"


@contextlib.contextmanager
def counting_moves(moved: list[int]) -> Iterator[None]:
    """Around a transport's ``requeue_dead``, which counts in ``moved[0]`` the letters it
    has moved and in ``moved[1]`` (where it keeps one) those of the call under way: cut
    off part-way (an outage's :class:`TransportError`), it says how many moved, which
    the error alone read as none; a refusal (credentials, a certificate) keeps its own
    type and exit code, as it is. A call under way when it was cut off may have moved
    its letters too (Redis runs a script it has read once it answers again)."""
    try:
        yield
    except TransportError as exc:
        if type(exc) not in (TransportError, ConnectionFailed):
            raise
        unsure = moved[1] if len(moved) > 1 else 0
        cut = f" (the {unsure} of the call it cut off may have been too)" if unsure else ""
        raised = type(exc)(
            f"{str(exc).rstrip('.')}; {requeued_before(moved[0])}{cut}, the rest stay dead letters"
        )
        raised.moved = moved[0]  # type: ignore[attr-defined]  # the command says what they were
        raise raised from exc
