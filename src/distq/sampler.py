"""A timer thread that asks the broker for the queue's counts, off the task path.

In the master it feeds ``distq_queue_depth`` and ``distq_workers`` every
``DISTQ_STATS_SECONDS``; in a worker it only checks that the broker answers (a RabbitMQ
consumer that waits for deliveries cannot tell a paused broker from an idle queue).
In both, each sample's outcome keeps readiness's link ``broker``: down when the call
fails, hanging when it does not answer.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time

from distq.console import Console
from distq.health import Link
from distq.management import ManagementApi, ManagementError
from distq.metrics import MasterMetrics
from distq.transport.base import QueueStats, Transport

#: Seconds before a failed sample is tried again (at most ``interval``): the link turns
#: up once the broker answers, as the slots reconnect, not an interval later (a worker's
#: is a third of the lease: 40 s of 503 after the broker was back, at a 2-minute lease).
RETRY_SECONDS = 1.0
#: Most seconds a sample may take, as recent ones that answered did, before it counts
#: as hanging (HANG_SECONDS later): a broker that answered that slowly is not let off
#: longer than this.
MOST_ALLOWED_SECONDS = 10.0
#: How many answered samples' times a sample's allowance is the least of: one that
#: answered only after a paused broker resumed (8 s) does not let the next pause go
#: unseen that long; a far broker's samples, all slow, still allow what each took.
TIMED_SAMPLES = 3


class StatsSampler:
    """Samples the broker every ``interval`` seconds, on a daemon thread: ``stats()`` in
    a master, ``ping()`` in a worker (see :meth:`sample`)."""

    def __init__(
        self,
        transport: Transport,
        interval: float,
        link: Link,
        metrics: MasterMetrics | None = None,
        management: ManagementApi | None = None,
        console: Console | None = None,
    ) -> None:
        self.transport, self.interval, self.link = transport, interval, link
        self.metrics, self.management, self.console = metrics, management, console
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="distq-stats", daemon=True)
        self._management_failing = False
        # how long the last samples that answered took: a RabbitMQ master's is a dozen
        # round trips, 2.3 s in all to a broker 0.2 s away, each answered; counted as one
        # call expected at once, it was "no answer from the broker" after 2 s
        self._took: collections.deque[float] = collections.deque(maxlen=TIMED_SAMPLES)

    def start(self) -> StatsSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling; a sample stuck on a silent broker is left to die with the process."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(1.0)

    def _run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception as exc:  # one bad sample must not end the sampling for good
                if self.console is not None:
                    self.console.error(
                        f"sampling the broker failed: {type(exc).__name__}: {exc} (a bug in "
                        "distq: please report this line; sampling goes on)"
                    )
            wait = self.interval if self.link.is_up else min(self.interval, RETRY_SECONDS)
            if self._stop.wait(wait):
                return

    def sample(self) -> QueueStats | None:
        """One sample: the counts, or None when the broker failed (readiness says why).

        Without metrics to feed (a worker's sampler) it only asks the broker to answer
        (:meth:`~distq.transport.base.Transport.ping`), and returns None.
        """
        try:
            with self.link.call(min(self._took, default=0.0)):
                started = time.monotonic()
                if self.metrics is None and self.management is None:
                    self.transport.ping()
                    stats = None
                else:
                    stats = self.transport.stats()
                self._took.append(min(time.monotonic() - started, MOST_ALLOWED_SECONDS))
        except Exception:
            if self.metrics is not None:
                self.metrics.sampled(None)
            return None
        if stats is None:
            return None
        if not stats.in_flight_known and self.management is not None:  # RabbitMQ over AMQP
            stats = self._with_management(stats)
        if self.metrics is not None:
            self.metrics.sampled(stats)
        return stats

    def _with_management(self, stats: QueueStats) -> QueueStats:
        """``stats`` with the in-flight count of the management API; as is when it fails."""
        assert self.management is not None
        try:
            queue = self.management.read()
        except ManagementError as exc:
            if not self._management_failing and self.console is not None:
                self.console.error(f"{exc}; distq_queue_depth has no in_flight meanwhile")
            self._management_failing = True
            return stats
        if self._management_failing and self.console is not None:
            self.console.info(f"the RabbitMQ management API at {self.management.shown} answers")
        self._management_failing = False
        return dataclasses.replace(stats, in_flight=queue.in_flight, in_flight_known=True)
