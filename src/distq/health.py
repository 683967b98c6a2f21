"""The worker's health state: what a liveness probe or a status line asks about.

The worker updates one :class:`WorkerHealth`; readers take a :meth:`snapshot`. The
HTTP probe endpoint that serves it comes with the metrics and health issue.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass
class HealthSnapshot:
    connected: bool
    started_at: float
    last_activity_age: float
    tasks_ok: int
    tasks_failed: int
    tasks_retried: int
    dead_lettered: int
    in_hand: int


class WorkerHealth:
    """Counters and timestamps the worker's threads update; safe across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started_at = time.time()
        self._last_activity = time.monotonic()
        self._connected = 0
        self.tasks_ok = self.tasks_failed = self.tasks_retried = self.dead_lettered = 0
        self.in_hand = 0

    def connected(self, up: bool) -> None:
        with self._lock:
            self._connected += 1 if up else -1

    def took(self, count: int) -> None:
        with self._lock:
            self._last_activity = time.monotonic()
            self.in_hand += count

    def finished(
        self,
        ok: int = 0,
        failed: int = 0,
        retried: int = 0,
        malformed: int = 0,
        released: int = 0,
        orphaned: int = 0,
    ) -> None:
        """Count settled deliveries; each is exactly one of these outcomes.

        ``failed`` tasks got an error result and a dead letter; ``malformed`` messages
        and ``orphaned`` tasks (their master is gone) only a dead letter; ``released``
        ones went back to the queue unprocessed.
        """
        with self._lock:
            self._last_activity = time.monotonic()
            self.tasks_ok += ok
            self.tasks_failed += failed
            self.tasks_retried += retried
            self.dead_lettered += failed + malformed + orphaned
            self.in_hand -= ok + failed + retried + malformed + released + orphaned

    def idle_for(self) -> float:
        """Seconds since a task was last taken or finished (0 while tasks are in hand)."""
        with self._lock:
            return 0.0 if self.in_hand else time.monotonic() - self._last_activity

    def snapshot(self) -> HealthSnapshot:
        with self._lock:
            return HealthSnapshot(
                connected=self._connected > 0,
                started_at=self.started_at,
                last_activity_age=time.monotonic() - self._last_activity,
                tasks_ok=self.tasks_ok,
                tasks_failed=self.tasks_failed,
                tasks_retried=self.tasks_retried,
                dead_lettered=self.dead_lettered,
                in_hand=self.in_hand,
            )
