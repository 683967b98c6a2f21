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
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Sequence

import msgspec

from distq.transport.base import Settlement


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
