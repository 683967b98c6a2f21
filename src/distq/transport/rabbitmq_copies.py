"""Copies of the tasks a RabbitMQ worker runs on a lost link: which to run, which not.

A link lost (a broker restart, a network cut) gives back every delivery it held
unacknowledged: the broker requeues their messages while this worker's slots still run
their tasks, and another slot or worker may get a copy
(:meth:`~distq.transport.rabbitmq.RabbitMQConsumer._linked`). The settle of such a
*lost* task publishes nothing but the result of one done (:func:`results_only`): its
copy decides the rest. What a process's consumers share, so that a copy one of its
slots gets runs only when it must:

* :class:`RunningLost`: the tasks that still run here on a lost link; a copy of one
  waits (through a retry queue) until its original ends;
* :class:`BodySet`: the tasks done on a lost link, whose copies are acked unrun, and the
  copies that waited while their originals ran, acked unrun once those are done (and
  run if they failed).

And what one consumer keeps: its tasks lost with a link (:class:`LostTasks`). Which
tasks a fetch got are copies that wait (:func:`running_copies`), and which copies a
settle lets go unrun (:func:`deferred_done`), are decided here.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence

import msgspec

from distq.transport.base import Delivery, Settlement


def results_only(
    settlements: Sequence[Settlement], lost: set[int]
) -> tuple[list[Settlement], list[bytes], frozenset[int]]:
    """``settlements``, those of ``lost`` tasks (whose link was lost: see
    :meth:`~distq.transport.rabbitmq.RabbitMQConsumer._linked`) with nothing to publish
    but the result of one done (a result, no retry nor dead letter); the bodies of those
    done; the tags of those not done (:attr:`~distq.transport.base.Consumer.late`).
    Their messages went back to the queue with that link: a retry or a dead letter (and
    its error result) would run again, or fail, a task that is there again; the copy
    decides, as for a late settle on Redis and manager. The copy of a task done, when a
    slot of this worker gets it, is acked and not run again (:class:`BodySet`, once the
    results are confirmed: acked before, a copy whose original's result never went was
    lost, diff18); each long task ran twice, the job took twice as long."""
    done: list[bytes] = []
    kept: list[Settlement] = []
    late: set[int] = set()
    for s in settlements:
        if s.delivery.tag in lost:
            if s.retry is None and s.dead_letter is None:
                done.append(s.delivery.body)
            else:
                late.add(s.delivery.tag)
                s = msgspec.structs.replace(s, result=None, retry=None, dead_letter=None)
        kept.append(s)
    return kept, done, frozenset(late)


class BodySet:
    """Task bodies, each taken once (:meth:`take`), the newest ``keep`` at most; shared by
    a process's consumers, thread-safe. The transport keeps two: the tasks done on a lost
    link, whose copies the broker requeued (a slot that gets one acks it unrun; copies
    another worker took are never met, so only the newest are kept), and the copies
    deferred while their originals ran (acked unrun once those are done)."""

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._bodies: dict[bytes, None] = {}
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._bodies)  # a read without the lock: take() decides

    def add(self, bodies: Iterable[bytes]) -> None:
        with self._lock:
            self._bodies.update(dict.fromkeys(bodies))
            while len(self._bodies) > self._keep:
                del self._bodies[next(iter(self._bodies))]

    def take(self, body: bytes) -> bool:
        """Whether ``body`` is one of them; it is forgotten (one copy each). Most are not:
        they are looked up without the lock (a dict's lookup is atomic), which once any
        link was lost every fetch and settle of the process took per task for good."""
        if body not in self._bodies:
            return False
        with self._lock:
            return self._bodies.pop(body, False) is None

    def __contains__(self, body: object) -> bool:
        return body in self._bodies  # a dict's lookup is atomic: no lock to read

    def discard(self, body: bytes) -> None:
        with self._lock:
            self._bodies.pop(body, None)


class DigestSet(BodySet):
    """A :class:`BodySet` of the bodies' digests (16 bytes of BLAKE2b each), not the
    bodies: for one filled as a worker runs (every task it hands back), where the newest
    ``keep`` bodies held whole could be gigabytes (10,000 tasks of 1 MiB). Task bodies
    differ (each holds its own id), so a digest stands for its body."""

    def add(self, bodies: Iterable[bytes]) -> None:
        super().add(map(_digest, bodies))

    def take(self, body: bytes) -> bool:
        return super().take(_digest(body))

    def __contains__(self, body: object) -> bool:
        return isinstance(body, bytes) and super().__contains__(_digest(body))

    def discard(self, body: bytes) -> None:
        super().discard(_digest(body))


def _digest(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=16).digest()


class RunningLost:
    """Bodies of tasks that still run in this process on a lost link (their messages went
    back to the queue with it): a slot that gets a copy of one defers it
    (:meth:`~distq.transport.rabbitmq.RabbitMQConsumer._defer_running`). Shared by a
    process's consumers, a count per body (two slots may hold the same task),
    thread-safe."""

    def __init__(self) -> None:
        self._bodies: Counter[bytes] = Counter()
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._bodies)  # a read without the lock: a copy met just now runs

    def __contains__(self, body: object) -> bool:
        with self._lock:
            return body in self._bodies

    def add(self, bodies: Iterable[bytes]) -> None:
        with self._lock:
            self._bodies.update(bodies)

    def discard(self, bodies: Iterable[bytes]) -> None:
        with self._lock:
            for body in bodies:
                left = self._bodies[body] - 1
                if left > 0:
                    self._bodies[body] = left
                else:
                    self._bodies.pop(body, None)


class LostTasks:
    """The tasks one consumer handed out from messages of a link since lost (tag -> body):
    the broker took them back (see
    :meth:`~distq.transport.rabbitmq.RabbitMQConsumer._linked`); the results of those
    done still go (:func:`results_only`), nothing is acked. Their bodies are in the
    process's ``running`` (:class:`RunningLost`) while they are here. One thread at a
    time, like the consumer."""

    def __init__(self, running: RunningLost) -> None:
        self._running = running
        self._tasks: dict[int, bytes] = {}

    def __contains__(self, tag: object) -> bool:
        return tag in self._tasks

    def among(self, tags: Iterable[int]) -> set[int]:
        """Those of ``tags`` that are lost."""
        return self._tasks.keys() & tags

    def mark(self, lost: dict[int, bytes]) -> None:
        """These tasks (tag -> body) are lost with their link."""
        new = {tag: body for tag, body in lost.items() if tag not in self._tasks}
        self._tasks.update(new)
        self._running.add(new.values())

    def unmark(self, tags: Iterable[int]) -> None:
        """These tasks no longer run here (settled, handed back, or the consumer closed)."""
        bodies = [body for tag in tags if (body := self._tasks.pop(tag, None)) is not None]
        if bodies:
            self._running.discard(bodies)

    def clear(self) -> None:
        """None runs here any more: the consumer closed."""
        self.unmark(list(self._tasks))


def running_copies(
    got: Sequence[Delivery],
    again: Collection[object],
    running: RunningLost,
    deferred: BodySet,
    elsewhere: Callable[[], set[bytes]],
) -> list[Delivery]:
    """Those of ``got`` that are copies of tasks still running in this worker on a lost
    link (in ``running``: another slot's, see
    :meth:`~distq.transport.rabbitmq.RabbitMQConsumer._linked`), to wait before they run.
    Run at once, such a copy ran in full beside its original (a 3 s broker stop cost a
    second run of a 20 s task, rmq18b).

    A redelivered task, or one from an expired lease record (their tags in ``again``),
    or a deferred copy back from its retry queue (its body in ``deferred``), is such a
    copy also when another slot of this worker has it handed out or recorded still
    (``elsewhere()``, the bodies the process's other consumers hold: read only when one
    of ``got`` is suspect): its link is lost, though that slot has not connected again
    yet (an idle slot got the copy first after a partition or a frozen broker, every
    time, rmq19), or the slot renewed its record too late. A suspect that is no such
    copy runs now: it leaves ``deferred``."""
    # a deferred copy back from its retry queue is neither redelivered nor a record's
    suspects = [d for d in got if d.tag in again or d.body in deferred]
    held = elsewhere() if suspects else set()
    copies = [d for d in got if d.body in running or d.body in held]
    for delivery in suspects:
        if delivery.body not in held:  # runs now: not a copy to wait any more
            deferred.discard(delivery.body)
    return copies


def deferred_done(
    settlements: Sequence[Settlement], lost: Collection[int], deferred: BodySet
) -> list[bytes]:
    """The bodies of the tasks of ``settlements`` done (neither retried nor
    dead-lettered) whose copies wait deferred, taken from ``deferred``: none of those
    copies runs. Not a ``lost`` one: one that failed has no retry here, its copy decides."""
    return [
        s.delivery.body
        for s in settlements
        if s.delivery.tag not in lost
        and s.retry is None
        and s.dead_letter is None
        and deferred.take(s.delivery.body)
    ]
