"""A worker's slot: one consumer, the batch it runs, and the lock that serialises its calls.

The slot's own thread (:class:`~distq.worker.Worker`) and the keeper
(:class:`~distq.keeper.Keeper`) both act on a slot; the keeper's docstring says which
flag means what, which lock guards what, and in which order they act.
"""

from __future__ import annotations

import threading

from distq.backoff import Backoff
from distq.batch import Batch
from distq.ending import Ending
from distq.transport.base import Consumer

#: A failed batch this long after the last one starts the slot's backoff afresh.
FAILURES_FORGOTTEN_S = 60.0


class Slot:
    """One consumer, the batch it runs, and the lock that serialises its calls.

    Tasks run on the slot's own thread, outside the lock; meanwhile the keeper may take
    the lock to renew the lease (pika is not thread-safe, so no two threads ever call
    one consumer at once). ``generation`` counts the slot's threads: a thread whose
    generation is past was left behind in a task that ran out of time.
    """

    def __init__(self, index: int) -> None:
        self.index = index
        self.consumer: Consumer | None = None
        self.lock = threading.Lock()
        self.batch: Batch | None = None  # running (outside the lock)
        self.renewed = 0.0  # monotonic time of the last call that renewed the lease
        self.handed_back = False  # a cold stop closed the consumer under the running batch
        self.thread: threading.Thread | None = None
        self.replacing = False  # its thread was left behind; the new one is not started yet
        self.renew_failed_on: Consumer | None = None  # the link the keeper last failed on
        self.generation = 0
        self.backoff = Backoff()
        # between a failed batch and the next: a failure that repeats (a settle the broker
        # always refuses) must not rerun the batch as fast as the broker answers
        self.failing = Backoff(base=0.5)
        self.failed_at = -FAILURES_FORGOTTEN_S  # monotonic time of the last failed batch
        self.in_hand = 0  # deliveries fetched and not yet settled or handed back
        self.fetching: float | None = None  # monotonic start of the fetch under way
        # since when a question to the broker went unanswered (Consumer.answers), or None
        self.unanswered: float | None = None
        # the endings of the settle under way, or of the last that failed: if the consumer
        # closed after it finds that it ran all the same (Consumer.settled_late), they
        # count as settled, not handed back
        self.unconfirmed: list[Ending] = []

    def alive(self) -> bool:
        """Whether the slot still works: its thread runs, or a task that ran out of time
        is having it replaced (the old thread may end during the settle before the new
        one starts: the worker exited 0 then, its queue still full). The thread is read
        first: one that ended for that reason did so after ``replacing`` was set, and a
        new one is in ``self.thread`` before it is cleared."""
        thread = self.thread
        if thread is not None and thread.is_alive():
            return True
        return self.replacing or self.thread is not thread
