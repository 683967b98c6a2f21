"""Which masters still wait for their results, as a worker knows it.

A worker runs a task only if its master is known alive: it asks the broker
(:meth:`distq.transport.Consumer.gone`) about a reply queue it has not seen for
``ALIVE_SECONDS`` and remembers the answer for that long, so that a steady stream of one
master's tasks costs one question every few seconds, not one per batch. "Gone" is never
taken from memory: a master that was away may come back and submit its tasks again, so a
task is dead-lettered as its master's only on an answer given after it was fetched.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection

#: How long a "this master is alive" answer is trusted.
ALIVE_SECONDS = 2.0


class MasterWatch:
    """Reply queues known to have a live master, each until its answer grows old.

    Shared by a worker's slots (thread-safe). ``clock`` is monotonic seconds.
    """

    def __init__(
        self, alive_seconds: float = ALIVE_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.alive_seconds, self._clock = alive_seconds, clock
        self._until: dict[str, float] = {}  # reply queue -> when its "alive" answer expires
        self._lock = threading.Lock()

    def alive(self, reply_to: str, now: float) -> bool:
        """Whether ``reply_to``'s master was answered alive recently (as of ``now``)."""
        return self._until.get(reply_to, 0.0) > now  # a dict read: no lock needed

    def learn(self, asked: Collection[str], gone: Collection[str]) -> None:
        """The broker's answer: of the reply queues ``asked``, these are ``gone``."""
        until = self._clock() + self.alive_seconds
        with self._lock:
            for name in asked:
                if name in gone:
                    self._until.pop(name, None)
                else:
                    self._until[name] = until
            if len(self._until) > 1000:  # many masters came and went: drop the stale
                now = self._clock()
                self._until = {k: v for k, v in self._until.items() if v > now}
