"""The master's ledger: every task body it submitted, in order, until answered.

A broker may lose tasks: restarted empty, restored from an older snapshot, or a publish
never confirmed before the connection went. :meth:`distq.transport.Producer.reconcile`
says how many of the bodies submitted so far, counted from the first, the broker still
holds; the ledger turns that number into the tasks to submit again: those after it that
still wait for a result. That rule cannot lose a task (anything the broker does not
vouch for and the master still needs goes again) and sends a duplicate only when the
broker held a task it could not vouch for (an unconfirmed publish that did arrive, or a
task of a master the broker had declared gone); the master counts a task's result once.

Answered tasks leave the front of the ledger as it goes, so it holds about the
outstanding tasks, not the whole job.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

#: (task id, encoded task) as submitted.
Entry = tuple[str, bytes]


class Ledger:
    """Bodies by position in the producer's sequence; positions below ``offset`` are answered."""

    def __init__(self) -> None:
        self._offset = 0
        self._entries: deque[Entry] = deque()

    @property
    def total(self) -> int:
        """How many bodies the producer was given, as it counts them."""
        return self._offset + len(self._entries)

    def record(self, entries: Iterable[Entry]) -> None:
        """These bodies go to the producer now (record first: a failed submit may have
        reached the broker, and the count is the broker's)."""
        self._entries.extend(entries)

    def compact(self, waiting: Callable[[str], bool]) -> None:
        """Forget the answered tasks at the front."""
        while self._entries and not waiting(self._entries[0][0]):
            self._entries.popleft()
            self._offset += 1

    def lost(self, held: int, waiting: Callable[[str], bool]) -> list[Entry]:
        """The broker holds the first ``held`` bodies: the tasks after them still
        ``waiting`` for a result, to submit again. The ledger counts them as submitted
        right after position ``held``, as the producer will."""
        if held >= self.total:
            return []
        keep = max(0, held - self._offset)
        entries = list(self._entries)
        again = [entry for entry in entries[keep:] if waiting(entry[0])]
        self._offset = min(self._offset, held)
        self._entries = deque(entries[:keep] + again)
        return again
